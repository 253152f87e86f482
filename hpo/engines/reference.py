"""The reference engine: the course protocol, one plain Keras ``model.fit`` per fold.

Slow (per-step overhead dominates a network this small), but it is ground truth: every other
engine is checked against it. Regularizers are real ``keras.regularizers`` objects attached where
the plan says, so Keras' own semantics apply (activity losses are divided by the batch size in
Keras >= 3.14).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import multiprocessing
import signal
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from hpo import stops
from hpo.data import Fold
from hpo.engines.contract import EvaluationResult, Monitor, NullMonitor, oof_accuracy
from hpo.engines.keras_model import import_keras
from hpo.engines.network import build_model
from hpo.errors import HpoError
from hpo.lazy import lazy_import
from hpo.log import configure, get_logger
from hpo.seeds import fold_seed
from hpo.space import RegularizationPlan
from hpo.spec import ModelSpec

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy_import("numpy")

__all__ = ["ReferenceEngine", "fit_fold"]

# How often the parent looks for a stop request while the training child fits a fold.
_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class _FittedFold:
    predicted: np.ndarray | None  # None: the loss or the outputs went non-finite
    epochs: int
    weights: list[np.ndarray] | None


def fit_fold(
    plan: RegularizationPlan,
    model: ModelSpec,
    fold: Fold,
    n_classes: int,
    seed: int,
    shuffle: bool,
    keep_weights: bool,
) -> _FittedFold:
    """Build, ``fit`` and predict one fold: the course protocol, nothing else.

    ``model.fit`` takes the fold's matrix, so it is made here (:attr:`Fold.x_train`, from the
    shared table and the fold's scaling), in the training process, one fold at a time, and
    dropped with the model; the parent sends the fold (the table and row positions) and holds
    no matrix of its own."""
    keras = import_keras()
    keras.utils.set_random_seed(seed)
    net = build_model(plan, model, n_features=fold.n_features, n_classes=n_classes)
    history = net.fit(
        fold.x_train,
        fold.y_train,
        batch_size=model.batch_size,
        epochs=model.epochs,
        shuffle=shuffle,
        verbose=0,
        callbacks=[keras.callbacks.TerminateOnNaN(), _stop_callback(keras)],
    )
    stops.check()  # the callback ended the fit early: this fold has no result
    losses = history.history["loss"]
    # A direct call, not predict(): predict() traces one more tf.function per model.
    probabilities = np.asarray(net(fold.x_valid, training=False))
    finite = bool(np.isfinite(losses[-1]) and np.all(np.isfinite(probabilities)))
    fitted = _FittedFold(
        predicted=probabilities.argmax(axis=1).astype(np.int32) if finite else None,
        epochs=len(losses),
        weights=net.get_weights() if keep_weights else None,
    )
    del net
    keras.backend.clear_session(free_memory=True)
    return fitted


@functools.cache
def _stop_callback_class(keras: Any) -> Any:
    """A callback class that ends ``fit`` after the batch during which a stop was requested, as
    Keras' own ``stop_training`` does (in the training child, the parent stops it instead).
    Made once per process: Keras is imported lazily, so the class cannot be defined at import."""

    class StopOnRequest(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            if stops.requested() is not None:
                self.model.stop_training = True

    return StopOnRequest


def _stop_callback(keras: Any) -> Any:
    return _stop_callback_class(keras)()


def _child_init(log_level: int) -> None:
    # Ctrl-C reaches the whole process group, and `docker stop` or a supervisor may signal
    # it too: the parent decides what to do, and kills us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # A parent killed with SIGKILL cannot clean up: have the kernel end us with it (Linux).
    with contextlib.suppress(OSError, AttributeError):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    # A spawned child starts with logging unset: log at the parent's level, so that ``hpo -v``
    # also shows the child's TensorFlow start-up lines (logged at DEBUG by its import).
    configure()
    get_logger().setLevel(log_level)
    import_keras()


class ReferenceEngine:
    """Trials one after another, folds one after another, each a fresh ``model.fit``.

    Pruning checkpoints come at fold ends: step ``k`` reports the mean accuracy of the first
    ``k`` folds.

    Keras 3 on TensorFlow keeps memory for every model built and fitted, even after
    ``clear_session`` (see bench/README.md), so a worker would grow with every trial. With
    ``isolate`` (the default) the
    fits run in a child process that is replaced every ``folds_per_process`` folds, so a long
    study's memory stays flat; ``isolate=False`` fits in this process (tests, one-off runs).
    """

    name = "reference"
    trials_per_batch = 1  # trials train one after another; a larger batch gains nothing
    batch_seeded = False  # each plan trains from its own seed

    def __init__(
        self,
        *,
        checkpoint_every: int = 0,
        shuffle: bool = True,
        isolate: bool = True,
        folds_per_process: int = 50,
    ) -> None:
        self.checkpoint_every = checkpoint_every
        self.shuffle = shuffle
        self.isolate = isolate
        self.folds_per_process = folds_per_process
        self._pool: ProcessPoolExecutor | None = None

    def evaluate(
        self,
        plans: Sequence[RegularizationPlan],
        folds: Sequence[Fold],
        *,
        model: ModelSpec,
        n_classes: int,
        seeds: Sequence[int],
        monitor: Monitor | None = None,
        weight_seeds: Sequence[int] | None = None,
    ) -> list[EvaluationResult]:
        # ``weight_seeds`` matters to batch-seeded engines only: every plan here trains from
        # its own seed already.
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
        started = time.perf_counter()
        fold_predictions: list[np.ndarray] = []
        diverged_folds: list[int] = []
        first_fold_weights: list[np.ndarray] | None = None
        epochs_run = 0
        for fold in folds:
            fitted = self._fit(plan, model, fold, n_classes, seed, first_fold_weights is None)
            epochs_run = max(epochs_run, fitted.epochs)
            if fitted.predicted is None:
                diverged_folds.append(fold.index)
                predicted = np.full(len(fold.y_valid), -1, dtype=np.int32)  # counts as wrong
            else:
                predicted = fitted.predicted
            fold_predictions.append(predicted)
            if first_fold_weights is None:
                first_fold_weights = fitted.weights
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

    def _fit(
        self,
        plan: RegularizationPlan,
        model: ModelSpec,
        fold: Fold,
        n_classes: int,
        seed: int,
        keep_weights: bool,
    ) -> _FittedFold:
        args = (
            plan,
            model,
            fold,
            n_classes,
            fold_seed(seed, fold.index),
            self.shuffle,
            keep_weights,
        )
        if not self.isolate:
            return fit_fold(*args)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_child_init,
                initargs=(get_logger().getEffectiveLevel(),),
                max_tasks_per_child=self.folds_per_process,
            )
        try:
            return self._result_of(self._pool.submit(fit_fold, *args))
        except BrokenProcessPool:
            self.close()
            stops.check()  # a stop signal that reached the child as well: a stop, not an error
            raise HpoError(
                "the reference engine's training process ended before finishing a fold "
                "(killed, out of memory, or it failed at start-up: a script that calls "
                'hpo.optimize must do so under `if __name__ == "__main__":`, since the '
                "training process imports the script again)"
            ) from None
        except (stops.Stopped, Exception):
            self.close()  # a stop or a dead child: never leave a training process behind
            raise

    @staticmethod
    def _result_of(future: Future[_FittedFold]) -> _FittedFold:
        """The child's fold, waited for in short steps: a stop request ends the wait (the
        caller then kills the child)."""
        while True:
            try:
                return future.result(timeout=_POLL_SECONDS)
            except FutureTimeout:
                stops.check()

    def close(self) -> None:
        """Stop the training process, if any (the next fold starts a fresh one)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        for process in list(getattr(pool, "_processes", {}).values()):
            process.kill()
        pool.shutdown(wait=True, cancel_futures=True)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()

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
        return EvaluationResult(
            accuracy=accuracy,
            fold_accuracies=per_fold,
            predictions=predictions,
            epochs=epochs,
            seconds=time.perf_counter() - started,
            diverged=bool(diverged_folds),
            pruned=pruned,
            diverged_folds=tuple(diverged_folds),
        )


def _mean_so_far(folds: Sequence[Fold], fold_predictions: list[np.ndarray]) -> float:
    return oof_accuracy(folds[: len(fold_predictions)], fold_predictions)[0]
