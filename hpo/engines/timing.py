"""How long one trial of a study takes on this machine, measured rather than guessed.

Machines differ several-fold in speed, so ``hpo check`` times the study's own engine on the
study's own folds: a warm-up call (TensorFlow start-up, graph compilation, the reference
engine's child process), then the same batch at 1 epoch and at 2, 4, 8, ... epochs until a call
takes a second (at most 32 epochs, or the study's own). The difference gives the cost of one
epoch, the 1-epoch call the fixed cost per batch, and the two together the time of a full trial. The plan regularizes every layer on activity and kernel with L1 and
L2, the costliest a search can draw.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from hpo.data import FoldSet
from hpo.engines import make_engine
from hpo.engines.contract import Engine
from hpo.engines.evaluation import evaluate_plans
from hpo.space import RegularizationPlan
from hpo.spec import StudySpec

__all__ = ["TrialTime", "time_trial"]

_MAX_TIMED_EPOCHS = 32
_LONG_ENOUGH = 1.0  # seconds: timer and scheduling noise are well under 1% of it


@dataclass(frozen=True)
class TrialTime:
    """Seconds per trial once running (a batch's time shared by its trials), the one-off
    start-up of a process (TensorFlow, graph compilation), and how it was measured."""

    seconds: float
    startup: float
    trials_per_batch: int
    measured_epochs: int


def time_trial(spec: StudySpec, folds: FoldSet) -> TrialTime:
    """Measure the seconds one trial of ``spec`` takes with its engine (see the module doc)."""
    engine = make_engine(spec.engine)
    try:
        n = engine.trials_per_batch
        plan = RegularizationPlan.uniform(
            len(spec.search.layers), l1=1e-4, l2=1e-4, placement="both", names=spec.search.names
        )
        epochs = spec.model.epochs
        first = _seconds(engine, spec, folds, [plan] * n, 1)  # start-up and compilation
        one = _seconds(engine, spec, folds, [plan] * n, 1)
        # Double the epochs until a call is long enough to time well, within the study's own.
        timed, several = 1, one
        while timed < min(epochs, _MAX_TIMED_EPOCHS) and several - one < _LONG_ENOUGH:
            timed = min(timed * 2, epochs, _MAX_TIMED_EPOCHS)
            several = _seconds(engine, spec, folds, [plan] * n, timed)
        per_epoch = max(several - one, 0.0) / (timed - 1) if timed > 1 else 0.0
        batch = one + per_epoch * (epochs - 1)
        return TrialTime(
            seconds=batch / n,
            startup=max(first - one, 0.0),
            trials_per_batch=n,
            measured_epochs=timed,
        )
    finally:
        engine.close()


def _seconds(
    engine: Engine, spec: StudySpec, folds: FoldSet, plans: list[RegularizationPlan], epochs: int
) -> float:
    start = time.perf_counter()
    evaluate_plans(
        engine,
        plans,
        folds,
        model=replace(spec.model, epochs=epochs),
        seeds=[spec.trial_seed(i) for i in range(len(plans))],
        replicas=spec.cv.seeds,  # a trial of a `[cv] seeds = S` study trains S times
    )
    return time.perf_counter() - start
