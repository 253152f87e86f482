"""The reference engine: the course protocol, one plain Keras ``model.fit`` per fold.

Slow (per-step overhead dominates a network this small), but it is ground truth: every other
engine is checked against it. Regularizers are real ``keras.regularizers`` objects attached where
the plan says, so Keras' own semantics apply (activity losses are divided by the batch size in
Keras >= 3.14).
"""

from __future__ import annotations

import time
from dataclasses import replace
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hpo._logging import get_logger
from hpo.data import Fold
from hpo.engines._tf import import_keras
from hpo.engines.base import EvaluationResult, Monitor, NullMonitor, fold_seed, oof_accuracy
from hpo.space import LayerPenalty, RegularizationPlan
from hpo.spec import ModelSpec

__all__ = ["ReferenceEngine", "build_model", "regularizer"]

_log = get_logger("engines.reference")


def regularizer(l1: float, l2: float) -> Any:
    """The Keras regularizer for these coefficients: L1, L2, L1L2, or None when both are 0."""
    keras = import_keras()
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
    keras = import_keras()
    if len(plan.layers) != len(model.hidden):
        raise ValueError(
            f"the plan has {len(plan.layers)} layers but the model has {len(model.hidden)} hidden layers"
        )
    layers: list[Any] = [keras.Input(shape=(n_features,))]
    for units, penalty in zip(model.hidden, plan.layers, strict=True):
        layers.append(_dense(keras, units, model.activation, penalty))
    layers.append(keras.layers.Dense(n_classes, activation="softmax"))
    net = keras.Sequential(layers)
    net.compile(
        optimizer=_optimizer(keras, model),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return net


def _dense(keras: Any, units: int, activation: str, penalty: LayerPenalty) -> Any:
    return keras.layers.Dense(
        units,
        activation=activation,
        kernel_regularizer=regularizer(penalty.l1_kernel, penalty.l2_kernel),
        activity_regularizer=regularizer(penalty.l1_activity, penalty.l2_activity),
    )


def _optimizer(keras: Any, model: ModelSpec) -> Any:
    classes = {
        "adam": keras.optimizers.Adam,
        "sgd": keras.optimizers.SGD,
        "rmsprop": keras.optimizers.RMSprop,
    }
    return classes[model.optimizer](learning_rate=model.learning_rate)


class ReferenceEngine:
    """Trials one after another, folds one after another, each a fresh ``model.fit``.

    Pruning checkpoints come at fold ends: step ``k`` reports the mean accuracy of the first
    ``k`` folds.
    """

    name = "reference"

    def __init__(self, *, checkpoint_every: int = 0, shuffle: bool = True) -> None:
        self.checkpoint_every = checkpoint_every
        self.shuffle = shuffle

    def evaluate(
        self,
        plans: Sequence[RegularizationPlan],
        folds: Sequence[Fold],
        *,
        model: ModelSpec,
        n_classes: int,
        seeds: Sequence[int],
        monitor: Monitor | None = None,
    ) -> list[EvaluationResult]:
        monitor = monitor or NullMonitor()
        return [
            self._evaluate_one(member, plan, folds, model, n_classes, seed, monitor)
            for member, (plan, seed) in enumerate(zip(plans, seeds, strict=True))
        ]

    def _evaluate_one(
        self,
        member: int,
        plan: RegularizationPlan,
        folds: Sequence[Fold],
        model: ModelSpec,
        n_classes: int,
        seed: int,
        monitor: Monitor,
    ) -> EvaluationResult:
        keras = import_keras()
        started = time.perf_counter()
        fold_predictions: list[np.ndarray] = []
        diverged_folds: list[int] = []
        first_fold_weights: list[np.ndarray] | None = None
        epochs_run = 0
        for fold in folds:
            keras.utils.set_random_seed(fold_seed(seed, fold.index))
            net = build_model(plan, model, n_features=fold.n_features, n_classes=n_classes)
            history = net.fit(
                fold.x_train,
                fold.y_train,
                batch_size=model.batch_size,
                epochs=model.epochs,
                shuffle=self.shuffle,
                verbose=0,
                callbacks=[keras.callbacks.TerminateOnNaN()],
            )
            losses = history.history["loss"]
            epochs_run = max(epochs_run, len(losses))
            # A direct call, not predict(): predict() traces a new tf.function per model.
            probabilities = np.asarray(net(fold.x_valid, training=False))
            if not np.isfinite(losses[-1]) or not np.all(np.isfinite(probabilities)):
                diverged_folds.append(fold.index)
                predicted = np.full(len(fold.y_valid), -1, dtype=np.int32)  # counts as wrong
            else:
                predicted = probabilities.argmax(axis=1).astype(np.int32)
            fold_predictions.append(predicted)
            if first_fold_weights is None:
                first_fold_weights = net.get_weights()
            del net
            keras.backend.clear_session(free_memory=True)
            accuracy = float((predicted == fold.y_valid).mean())
            monitor.on_fold_end(member, fold.index, accuracy)
            done = len(fold_predictions)
            if self.checkpoint_every and done < len(folds) and done % self.checkpoint_every == 0:
                running = _mean_so_far(folds, fold_predictions)
                if member in monitor.on_checkpoint(done, {member: running}):
                    return self._result(
                        folds, fold_predictions, epochs_run, started, diverged_folds, pruned=True
                    )
        result = self._result(
            folds, fold_predictions, epochs_run, started, diverged_folds, pruned=False
        )
        return replace(result, weights=first_fold_weights)

    def _result(
        self,
        folds: Sequence[Fold],
        fold_predictions: list[np.ndarray],
        epochs: int,
        started: float,
        diverged_folds: list[int],
        *,
        pruned: bool,
    ) -> EvaluationResult:
        done = folds[: len(fold_predictions)]
        accuracy, per_fold, predictions = oof_accuracy(done, fold_predictions)
        details: Mapping[str, Any] = {"diverged_folds": diverged_folds} if diverged_folds else {}
        return EvaluationResult(
            accuracy=accuracy,
            fold_accuracies=per_fold,
            predictions=predictions,
            epochs=epochs,
            seconds=time.perf_counter() - started,
            diverged=bool(diverged_folds),
            pruned=pruned,
            details=details,
        )


def _mean_so_far(folds: Sequence[Fold], fold_predictions: list[np.ndarray]) -> float:
    return oof_accuracy(folds[: len(fold_predictions)], fold_predictions)[0]
