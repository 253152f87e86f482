"""The Keras side of training: TensorFlow set up once per process, and the trial's Keras model.

TensorFlow reads its logging settings at import and its thread counts before its first op, so
both are set here, by whichever engine gets there first. ``build_model`` is the network of one
trial as the study file describes it, with real ``keras.regularizers`` where the plan puts them;
the reference engine fits it, the artifacts save it, and the stacked engine is checked against it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from hpo.lazy import lazy_import
from hpo.space import LayerPenalty, RegularizationPlan
from hpo.spec import ModelSpec

__all__ = ["build_model", "import_keras", "regularizer", "tensorflow_versions", "tf"]


def _environment() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")


if TYPE_CHECKING:
    import keras
    import tensorflow as tf
else:
    keras = lazy_import("keras", before=_environment)
    tf = lazy_import("tensorflow", before=_environment)


class _Setup:
    quieted = False
    threads_set = False


def import_keras(threads: int = 0) -> Any:
    """Keras on the TensorFlow backend with ``threads`` intra/inter-op threads (0 = TF's).

    The thread count can only be set before TensorFlow runs its first op, so the first caller
    that asks for a count wins; a plain import (``threads=0``) does not use up that chance.
    """
    if not _Setup.quieted:
        _Setup.quieted = True
        tf.get_logger().setLevel("ERROR")  # retracing chatter from one model per fold
    if threads > 0 and not _Setup.threads_set:
        _Setup.threads_set = True
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # TF already initialised its thread pools in this process
            pass
    return keras


def tensorflow_versions() -> dict[str, str]:
    import_keras()
    return {"tensorflow": tf.__version__, "keras": keras.__version__}


def regularizer(l1: float, l2: float) -> Any:
    """The Keras regularizer for these coefficients: L1, L2, L1L2, or None when both are 0."""
    if l1 > 0 and l2 > 0:
        return keras.regularizers.L1L2(l1=l1, l2=l2)
    if l1 > 0:
        return keras.regularizers.L1(l1)
    if l2 > 0:
        return keras.regularizers.L2(l2)
    return None


def build_model(
    plan: RegularizationPlan, model: ModelSpec, *, n_features: int, n_classes: int
) -> Any:
    """The compiled Keras model of one trial: Dense hidden layers as the plan regularizes them."""
    import_keras()
    if len(plan.layers) != len(model.hidden):
        raise ValueError(
            f"the plan has {len(plan.layers)} layers but the model has {len(model.hidden)} hidden layers"
        )
    layers: list[Any] = [keras.Input(shape=(n_features,))]
    for units, penalty in zip(model.hidden, plan.layers, strict=True):
        layers.append(_dense(units, model.activation, penalty))
    layers.append(keras.layers.Dense(n_classes, activation="softmax"))
    net = keras.Sequential(layers)
    net.compile(
        optimizer=_optimizer(model),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return net


def _dense(units: int, activation: str, penalty: LayerPenalty) -> Any:
    return keras.layers.Dense(
        units,
        activation=activation,
        kernel_regularizer=regularizer(penalty.l1_kernel, penalty.l2_kernel),
        activity_regularizer=regularizer(penalty.l1_activity, penalty.l2_activity),
    )


def _optimizer(model: ModelSpec) -> Any:
    classes = {
        "adam": keras.optimizers.Adam,
        "sgd": keras.optimizers.SGD,
        "rmsprop": keras.optimizers.RMSprop,
    }
    return classes[model.optimizer](learning_rate=model.learning_rate)
