"""Reading a study into plain records: the trials, their ranking, the reruns and the stored spec.

Everything the plots and the page show comes from here, so neither reads the study itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hpo.log import get_logger
from hpo.results.artifacts import ArtifactRead, TrialArtifact, read_trial_artifacts
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
from hpo.study.stores import ArtifactPlace

if TYPE_CHECKING:
    import optuna

__all__ = [
    "PLACEMENT_ORDER",
    "TOP_N",
    "StudyData",
    "Trial",
    "artifact_reads",
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


def artifact_reads(
    study: optuna.Study, data: StudyData, place: ArtifactPlace
) -> list[ArtifactRead]:
    """The artifacts of the study's final best ``[artifacts] top_k`` trials (the best one's
    confusion matrix read whole, the others checked as far as their first byte), each with why
    it cannot be read when it cannot."""
    top_k = data.spec.artifacts.top_k if data.spec is not None else 3
    numbers = {t.number for t in ranked_trials(data.trials)[:top_k]}
    best = data.best.number if data.best is not None else None
    trials = [t for t in study.get_trials(deepcopy=False) if t.number in numbers]
    trials.sort(key=lambda t: (-(t.value or 0.0), t.number))

    def wanted(artifact: TrialArtifact) -> bool:
        return artifact.filename == f"trial-{best}-confusion.png"

    return read_trial_artifacts(study, trials, place, wanted=wanted)
