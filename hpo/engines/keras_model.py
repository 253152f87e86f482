"""The Keras side of training: TensorFlow set up once per process, and the trial's Keras model.

TensorFlow reads its logging settings at import and its thread counts before its first op, so
both are set here, by whichever engine gets there first. Its start-up lines (absl's notice that
logging is not initialised yet, oneDNN's INFO line) come out while its libraries load, before
``TF_CPP_MIN_LOG_LEVEL`` applies, so the import runs with fd 2 held: those lines go to the
``hpo`` log at DEBUG (``hpo -v`` shows them), anything else it printed is passed through.
``dense_model`` is the built-in network of one trial as the study file describes it, with real
``keras.regularizers`` where the plan puts them; the reference engine fits it (through
``hpo.engines.network``, which also builds a user's own model), the artifacts save it, and the
stacked engine is checked against it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from hpo.lazy import lazy_import
from hpo.log import get_logger
from hpo.space import LayerPenalty, RegularizationPlan
from hpo.spec import ModelSpec

__all__ = [
    "compile_model",
    "dense_model",
    "import_keras",
    "regularizer",
    "tensorflow_versions",
    "tf",
]

_log = get_logger("tensorflow")

# Printed by TensorFlow 2.21 while its shared libraries load: a static initializer
# (threadpool_device.cc) calls IsMklEnabled(), which logs oneDNN's INFO line through absl before
# TF has applied TF_CPP_MIN_LOG_LEVEL, and absl first prints its notice. Both come twice: the
# profiler plugin (_pywrap_profiler_plugin.so) links its own copy of the framework and of absl.
_ABSL_NOTICE = re.compile(rb"WARNING: All log messages before absl::InitializeLog\(\) is called")
_ABSL_INFO = re.compile(rb"I\d{4} [\d:.]+ +\d+ \S+:\d+\] ")  # absl's INFO prefix


def _environment() -> None:
    """Runs before the first use of ``tf`` or ``keras``: TF's settings, then TF itself."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if "tensorflow" in sys.modules:
        return
    # Imported here, not by the lazy module after this hook, so the capture spans the import.
    if os.environ["TF_CPP_MIN_LOG_LEVEL"].strip() in ("", "0"):
        importlib.import_module("tensorflow")  # the user asked for TF's INFO lines
    else:
        with _start_up_lines_to_debug():
            importlib.import_module("tensorflow")


@contextlib.contextmanager
def _start_up_lines_to_debug() -> Iterator[None]:
    """Route this process's fd 2 (C and Python writes alike) through a pipe while the block
    runs: absl's start-up lines are kept and logged at DEBUG at the end; every other line goes
    on to the real stderr as soon as it is complete, so a fatal message printed just before the
    process aborts (TF's CPU check, say) is still seen."""
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 at all (a daemon): nothing to keep clean
        yield
        return
    read_end, write_end = os.pipe()
    noise: list[bytes] = []
    reader = threading.Thread(
        target=_forward, args=(read_end, saved, noise), name="hpo-stderr", daemon=True
    )
    reader.start()
    try:
        _flush_stderr()
        os.dup2(write_end, 2)
        try:
            yield
        finally:
            _flush_stderr()  # what Python still buffers belongs to the captured text
            os.dup2(saved, 2)
            os.close(write_end)  # the reader sees the end of the pipe ...
            reader.join()  # ... and has written everything on before we go on
    finally:
        os.close(saved)
        for line in noise:  # also when the import failed
            _log.debug("TensorFlow start-up: %s", line.decode(errors="replace").rstrip())


def _flush_stderr() -> None:
    if sys.stderr is not None:
        sys.stderr.flush()


def _is_noise(line: bytes) -> bool:
    return bool(_ABSL_NOTICE.match(line) or _ABSL_INFO.match(line))


def _forward(read_end: int, out: int, noise: list[bytes]) -> None:
    """Read the pipe until its end: start-up lines into ``noise``, the rest on to ``out``."""
    pending = b""
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if _is_noise(line):
                    noise.append(line)
                else:
                    _write_all(out, line + b"\n")
    if pending:  # an unfinished last line (a print without its newline): ended, so what
        _write_all(out, pending + b"\n")  # comes next (a log line, say) starts a line of its own


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:  # os.write may take only part of it
        view = view[os.write(fd, view) :]


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


def dense_model(
    plan: RegularizationPlan, model: ModelSpec, *, n_features: int, n_classes: int
) -> Any:
    """The compiled built-in model of one trial: Dense hidden layers as the plan regularizes
    them."""
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
    compile_model(net, model)
    return net


def compile_model(net: Any, model: ModelSpec, *, optimizer: Any = None) -> None:
    """Compile for the objective: integer class labels, probabilities out, accuracy.
    ``optimizer``: one the user's model came with, else the study's."""
    net.compile(
        optimizer=optimizer if optimizer is not None else _optimizer(model),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


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
