"""Reading a study into plain records: the trials, their ranking, the reruns and the stored spec.

Everything the plots and the page show comes from here, so neither reads the study itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hpo.log import get_logger
from hpo.results.artifacts import open_artifact_store, trial_artifacts
from hpo.results.baseline import BaselineGain, baseline_gain
from hpo.results.holdout import HoldoutEvaluation, load_evaluation
from hpo.results.rerun import RerunStats, load_reruns
from hpo.results.spec_text import with_study_windows
from hpo.space import LayerPenalty, RegularizationPlan
from hpo.spec import StudySpec
from hpo.study.record import (
    read_trial,
    stored_data_source,
    stored_data_warnings,
    stored_spec,
)
from hpo.study.stopping import stored_stop

if TYPE_CHECKING:
    import optuna

__all__ = [
    "PLACEMENT_ORDER",
    "TOP_N",
    "StudyData",
    "Trial",
    "best_confusion",
    "collect",
    "complete_trials",
    "l1_alpha",
    "l2_alpha",
    "placement_of",
    "ranked_trials",
]

_log = get_logger("report")
TOP_N = 10  # trials in the per-fold plot and the top table
PLACEMENT_ORDER = ("activity", "kernel", "both", "none")


def placement_of(layer: LayerPenalty) -> str:
    """Where a layer's penalty sits: activity, kernel, both, or none."""
    if layer.has_activity and layer.has_kernel:
        return "both"
    if layer.has_activity:
        return "activity"
    if layer.has_kernel:
        return "kernel"
    return "none"


def l1_alpha(layer: LayerPenalty) -> float:
    """The layer's L1 coefficient, wherever it sits (0 when off)."""
    return max(layer.l1_activity, layer.l1_kernel)


def l2_alpha(layer: LayerPenalty) -> float:
    """The layer's L2 coefficient, wherever it sits (0 when off)."""
    return max(layer.l2_activity, layer.l2_kernel)


@dataclass(frozen=True)
class Trial:
    """One trial as the report sees it; ``value`` is None unless the trial completed."""

    number: int
    state: str
    value: float | None
    plan: RegularizationPlan | None
    folds: tuple[float, ...]
    seconds: float
    seed: int | None
    last_step_value: float | None


@dataclass(frozen=True)
class StudyData:
    """What the report is drawn from. ``n_layers``/``n_folds`` come from the spec when stored."""

    name: str
    spec: StudySpec | None
    trials: tuple[Trial, ...]
    reruns: tuple[RerunStats, ...]
    n_layers: int
    n_folds: int
    data_warnings: tuple[str, ...] = ()
    baseline: BaselineGain | None = None
    holdout: HoldoutEvaluation | None = None
    early_stop: str | None = None
    data_source: dict[str, str] | None = None  # where the latest run read the rows (record.py)

    @property
    def best(self) -> Trial | None:
        top = ranked_trials(self.trials)
        return top[0] if top else None


def _trial(t: optuna.trial.FrozenTrial) -> Trial:
    stored = read_trial(t)
    steps = sorted(t.intermediate_values)
    return Trial(
        number=t.number,
        state=t.state.name,
        value=t.value if t.state.name == "COMPLETE" else None,
        plan=stored.plan,
        folds=stored.fold_accuracies,
        seconds=stored.seconds or 0.0,
        seed=stored.seed,
        last_step_value=t.intermediate_values[steps[-1]] if steps else None,
    )


def collect(study: optuna.Study) -> StudyData:
    """Read ``study``: its trials, reruns and stored spec."""
    spec = stored_spec(study)
    if spec is not None:
        spec = with_study_windows(study, spec)
    early = stored_stop(study, spec)
    trials = tuple(_trial(t) for t in study.get_trials(deepcopy=False))
    with_plan = [t for t in complete_trials(trials) if t.plan is not None]
    if spec is not None:
        n_layers = len(spec.search.layers)
    else:
        first = with_plan[0].plan if with_plan else None
        n_layers = len(first.layers) if first is not None else 1
    n_folds = spec.cv.folds if spec is not None else max((len(t.folds) for t in trials), default=1)
    return StudyData(
        name=study.study_name,
        spec=spec,
        trials=trials,
        reruns=tuple(load_reruns(study).values()),
        n_layers=n_layers,
        n_folds=n_folds,
        data_warnings=tuple(stored_data_warnings(study)),
        baseline=baseline_gain(study),
        holdout=load_evaluation(study),
        early_stop=None if early is None else str(early.get("message")),
        data_source=stored_data_source(study),
    )


def complete_trials(trials: Sequence[Trial]) -> list[Trial]:
    """The trials with a finite score."""
    return [t for t in trials if t.value is not None and math.isfinite(t.value)]


def ranked_trials(trials: Sequence[Trial]) -> list[Trial]:
    """The complete trials, best first (ties: lower trial number first)."""
    return sorted(complete_trials(trials), key=lambda t: (-(t.value or 0.0), t.number))


def best_confusion(study: optuna.Study, number: int, artifact_dir: Path | None) -> bytes | None:
    """The confusion-matrix PNG that trial ``number`` left in the artifact store, if readable."""
    if artifact_dir is None or not artifact_dir.is_dir():
        return None
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    for artifact in trial_artifacts(study, trial):
        if artifact.filename.endswith("-confusion.png"):
            store = open_artifact_store(artifact_dir, create=False)
            try:
                with store.open_reader(artifact.artifact_id) as fh:
                    return bytes(fh.read())
            except Exception:  # a store moved or cleaned: the report goes on without it
                _log.debug("confusion matrix of trial %d not readable", number, exc_info=True)
    return None
