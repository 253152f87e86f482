"""One training session of a process on a study: the path ``hpo run`` and ``hpo worker`` share.

Both commands end the same way once they hold a study and its folds: make the engine, train
under signal handling until the budget is done, release the engine, and (unless stopped) let the
recorder finish its files. The recorder is passed in, so this layer needs no knowledge of what
it records (``hpo.results.artifacts.ArtifactRecorder`` in practice).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from hpo.data import FoldSet
from hpo.engines import make_engine
from hpo.engines.keras_model import tensorflow_versions
from hpo.log import get_logger
from hpo.objective import EvaluationResult
from hpo.spec import StudySpec
from hpo.study.signals import stop_on_signals
from hpo.study.storage import StorageGuard
from hpo.study.worker import RunSummary, optimize

if TYPE_CHECKING:
    import optuna

__all__ = ["Recorder", "train"]

_log = get_logger("session")


class Recorder(Protocol):
    """Keeps what a finished trial leaves besides its score (called on the hot path)."""

    def __call__(self, trial: optuna.Trial, result: EvaluationResult) -> None: ...

    def finalize(self, study: optuna.Study) -> int:
        """End-of-run work; never raises (a stop signal ends it early, with a line)."""
        ...


def train(
    study: optuna.Study,
    spec: StudySpec,
    folds: FoldSet,
    *,
    storage_url: str,
    n_trials: int | None,
    timeout: float | None,
    recorder: Recorder | None = None,
) -> RunSummary:
    """Train trials of ``study`` in this process until its budget of ``n_trials`` is finished,
    ``timeout`` seconds pass, or SIGINT/SIGTERM stops it (then ``summary.interrupted`` says
    which, and the trials in flight are failed). ``storage_url`` is shown in outage messages."""
    with stop_on_signals():
        engine = make_engine(spec.engine)
        try:
            summary = optimize(
                study,
                spec,
                folds,
                engine,
                n_trials=n_trials,
                timeout=timeout,
                versions=tensorflow_versions(),
                on_result=recorder,
                guard=StorageGuard(storage_url),
            )
        finally:
            engine.close()
        if recorder is not None:
            if summary.interrupted and summary.completed:
                _log.warning(
                    "stopped by %s: the best trials' model files were not written (their "
                    "fold tables and confusion matrices are stored)",
                    summary.interrupted,
                )
            elif summary.interrupted:
                pass  # nothing finished here, so no model file was due
            else:
                recorder.finalize(study)  # a signal meanwhile skips the rest, and says so
    return summary
