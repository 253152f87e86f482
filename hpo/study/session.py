"""One training session of a process on a study: the path ``hpo run`` and ``hpo worker`` share.

Both commands end the same way once they hold a study and its folds: make the engine, train
under signal handling until the budget is done, release the engine, and (unless stopped) let the
recorder finish its files. The recorder is passed in, so this layer needs no knowledge of what
it records (``hpo.results.artifacts.ArtifactRecorder`` in practice).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

from hpo import stops
from hpo.data import FoldSet
from hpo.engines import make_engine
from hpo.engines.batching import choose
from hpo.engines.contract import Engine, EvaluationResult
from hpo.engines.keras_model import tensorflow_versions
from hpo.log import get_logger
from hpo.spec import StudySpec
from hpo.study.budget import nothing_to_train, trials_to_run
from hpo.study.pool import RUN_PROCESSES, WorkerPool
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
    pool: WorkerPool | None = None,
    in_team: bool = False,
) -> RunSummary:
    """Train trials of ``study`` in this process until its budget of ``n_trials`` is finished,
    ``timeout`` seconds pass, or SIGINT/SIGTERM stops it (then ``summary.interrupted`` says
    which, and the trials in flight are failed). ``storage_url`` is shown in outage messages.

    ``pool``: worker processes started on the same study, waited for before the recorder's
    end-of-run work, their trials counted in the summary. ``in_team``: this process is one of
    such a pool.
    """
    with stops.stop_on_signals():
        if pool is None and not in_team and nothing_to_train(study, n_trials):
            # A finished study (a resumed run, a late worker): no TensorFlow, no engine, which
            # cost seconds of start-up for nothing; the recorder still adds missing files.
            if recorder is not None:
                recorder.finalize(study)
            return RunSummary()
        team = in_team or pool is not None
        processes = pool.size + 1 if pool is not None else int(os.environ.get(RUN_PROCESSES, 1))
        try:
            # Nothing held yet: a stop need not wait for TensorFlow's import (seconds). A run's
            # worker processes are then told to stop by the abort hook.
            stop_pool = stops.on_abort(pool.stop) if pool is not None else contextlib.nullcontext()
            with stop_pool, stops.at_once():
                versions = tensorflow_versions()
            engine = _engine(spec, folds, study, n_trials, processes if team else 1, in_team)
        except stops.Stopped as exc:  # before any trial (the batch size is timed): none to fail
            summary = RunSummary(interrupted=str(exc))
            if pool is not None:
                _join(pool, study, summary)
            return summary
        try:
            summary = optimize(
                study,
                spec,
                folds,
                engine,
                n_trials=n_trials,
                timeout=timeout,
                versions=versions,
                on_result=recorder,
                guard=StorageGuard(storage_url),
                in_team=team,
                team=processes if team else 1,
                # One process of a run measures the "auto" windows; the others wait for them.
                measure_windows=not in_team,
            )
        finally:
            engine.close()
        if pool is not None:
            _join(pool, study, summary)
        if not summary.interrupted and stops.requested():
            # A stop after the last check point: the work is done, but the caller (a notebook:
            # the block's end forgets the request) must still hear that it was asked to stop.
            summary.interrupted = stops.requested()
        if recorder is not None and not summary.interrupted:
            recorder.finalize(study)  # a signal meanwhile skips the rest, and says so
        elif recorder is not None and summary.completed and not in_team:  # the run says it
            _log.warning(
                # Not "stopped by ...": the run's summary says that once, after this.
                "the best trials' files (fold tables, confusion matrices, models) were not "
                "written: %s stopped the run",
                summary.interrupted,
            )
    return summary


def _engine(
    spec: StudySpec,
    folds: FoldSet,
    study: optuna.Study,
    n_trials: int | None,
    processes: int,
    in_team: bool,
) -> Engine:
    """The study's engine, with the stacked engine's batch size for this machine (measured
    once per machine and shape, under the load of the run's ``processes``)."""
    batch = choose(spec, folds, trials_to_run=trials_to_run(study, n_trials), processes=processes)
    if batch.how != "set":
        # Every process of a run measures for itself (under the others' load); one says so.
        _log.log(logging.DEBUG if in_team else logging.INFO, "stacked engine: %s", batch.text())
    return make_engine(replace(spec.engine, trials_per_batch=batch.trials))


def _join(pool: WorkerPool, study: optuna.Study, summary: RunSummary) -> None:
    """Wait for the pool's workers (stopping them if this process was stopped) and add their
    trials to ``summary``."""
    waited = time.monotonic()
    if summary.interrupted:  # in sessions of their own, the workers get no signal but ours
        codes = pool.close()
    else:
        try:
            codes = pool.finish()
        except stops.Stopped as exc:  # stopped while waiting for them: they stop too
            summary.interrupted = str(exc)
            codes = pool.close()
    summary.seconds += time.monotonic() - waited
    counts = pool.counts(study)
    summary.completed += counts.get("COMPLETE", 0)
    summary.pruned += counts.get("PRUNED", 0)
    summary.failed += counts.get("FAIL", 0)
    failed = sum(1 for code in codes if code not in (0, None))
    if failed and not summary.interrupted:
        _log.warning(
            "%d of the %d other worker processes ended with an error (see above); the study "
            "retries their trials",
            failed,
            len(codes),
        )
