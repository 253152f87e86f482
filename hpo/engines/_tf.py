"""TensorFlow set-up shared by the engines: quiet logs, thread counts, imported on first use."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["import_keras", "tensorflow_versions"]

_quieted = False
_threads_set = False


def import_keras(threads: int = 0) -> Any:
    """Import Keras on the TensorFlow backend with ``threads`` intra/inter-op threads (0 = TF's).

    The thread count can only be set before TensorFlow runs its first op, so the first caller
    that asks for a count wins; a plain import (``threads=0``) does not use up that chance.
    """
    global _quieted, _threads_set
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import tensorflow as tf

    if not _quieted:
        _quieted = True
        tf.get_logger().setLevel("ERROR")  # retracing chatter from one model per fold
    if threads > 0 and not _threads_set:
        _threads_set = True
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # TF already initialised its thread pools in this process
            pass
    return keras


def tensorflow_versions() -> dict[str, str]:
    keras = import_keras()
    import tensorflow as tf

    return {"tensorflow": tf.__version__, "keras": keras.__version__}
