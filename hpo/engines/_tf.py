"""TensorFlow set-up shared by the engines: quiet logs, thread counts, imported on first use."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["import_keras", "tensorflow_versions"]

_configured = False


def import_keras(threads: int = 0) -> Any:
    """Import Keras on the TensorFlow backend, once, with ``threads`` intra-op threads (0 = TF's)."""
    global _configured
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import tensorflow as tf

    if not _configured:
        _configured = True
        tf.get_logger().setLevel("ERROR")  # retracing chatter from one model per fold
        if threads > 0:
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
