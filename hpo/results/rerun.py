"""Rerun trials with fresh seeds: is the winner's edge real or run-to-run noise?

A trial's score comes from one seed (initial weights, batch order) and, being the best of many,
is biased upward. Rerunning a trial's plan with S new seeds (optionally on R reshuffled K-fold
splits) gives S unbiased scores: their mean, standard deviation and a 95% confidence interval
(Student t). Every trial rerun in one call gets the same seeds, so trials are compared under the
same initial weights and batch orders (common random numbers), and the best is compared with
each other trial by Welch's t-test.

Optuna does not allow changing the user attributes of a finished trial, so each result is stored
as the study user attribute ``rerun:<trial number>`` (and, for people, as the trial's note in
optuna-dashboard).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpo import seeds as seed_formulas
from hpo.data import FoldSet
from hpo.engines.contract import Engine
from hpo.engines.evaluation import evaluate_plans
from hpo.log import get_logger
from hpo.results.notes import write_trial_note_section
from hpo.results.stats import Scores, summarize, welch_p
from hpo.spec import StudySpec
from hpo.study import optuna_compat as compat
from hpo.study.record import RERUN_ATTR_PREFIX, stored_plan
from hpo.study.storage import error_text

if TYPE_CHECKING:
    import optuna

__all__ = [
    "RERUN_ATTR_PREFIX",
    "Comparison",
    "RerunStats",
    "compare",
    "compare_pair",
    "load_reruns",
    "record_reruns",
    "rerun_seeds",
    "rerun_trials",
    "summarize",
    "verdict",
    "weaker_rerun",
]

_NOTE_HEADER = "### Rerun"
_log = get_logger("rerun")


@dataclass(frozen=True, kw_only=True)
class RerunStats(Scores):
    """One trial's rerun: the scores of its plan under fresh seeds, and their summary."""

    trial: int
    original: float | None
    seeds: tuple[int, ...]
    repeats: int
    folds: int
    epochs: int
    engine: str
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "seeds": list(self.seeds),
            "repeats": self.repeats,
            "folds": self.folds,
            "epochs": self.epochs,
            "engine": self.engine,
            **self.stats_dict(),
            "original": self.original,
            "seconds": round(self.seconds, 3),
        }

    @classmethod
    def from_dict(cls, trial: int, data: Mapping[str, Any]) -> RerunStats:
        return cls(
            trial=trial,
            original=data.get("original"),
            accuracies=tuple(float(a) for a in data["accuracies"]),
            seeds=tuple(int(s) for s in data.get("seeds", ())),
            repeats=int(data.get("repeats", 1)),
            folds=int(data.get("folds", 0)),
            epochs=int(data.get("epochs", 0)),
            engine=str(data.get("engine", "")),
            seconds=float(data.get("seconds", 0.0)),
        )


@dataclass(frozen=True, kw_only=True)
class Comparison:
    """The best rerun trial against one other: difference of means and Welch's t-test."""

    best: int
    other: int
    difference: float
    p_value: float | None
    cis_overlap: bool | None

    @property
    def beyond_noise(self) -> bool | None:
        """True when the difference is significant at 5%; None when it cannot be judged."""
        return None if self.p_value is None else self.p_value < 0.05


def compare_pair(best: RerunStats, other: RerunStats) -> Comparison:
    """``best`` against ``other``: difference of rerun means, Welch's p, overlap of the CIs."""
    overlap = None
    if best.ci95 is not None and other.ci95 is not None:
        overlap = best.ci95[0] <= other.ci95[1] and other.ci95[0] <= best.ci95[1]
    return Comparison(
        best=best.trial,
        other=other.trial,
        difference=best.mean - other.mean,
        p_value=welch_p(best.accuracies, other.accuracies),
        cis_overlap=overlap,
    )


def compare(results: Sequence[RerunStats]) -> list[Comparison]:
    """The best trial (highest rerun mean) against each other trial, best-first order."""
    if len(results) < 2:
        return []
    ordered = sorted(results, key=lambda r: (-r.mean, r.trial))
    return [compare_pair(ordered[0], other) for other in ordered[1:]]


def verdict(results: Sequence[RerunStats]) -> list[str]:
    """Plain sentences: per pair, then one conclusion about the top trials."""
    if not results:
        return []
    if any(r.ci95 is None for r in results):
        return ["one seed gives no spread: rerun with --seeds 2 or more to judge noise"]
    comparisons = compare(results)
    if not comparisons:
        only = results[0]
        return [
            f"trial {only.trial}: rerun mean {only.mean:.4f}, 95% CI "
            f"[{only.ci95[0]:.4f}, {only.ci95[1]:.4f}]"  # type: ignore[index]
        ]
    lines = []
    for c in comparisons:
        # The test alone decides: two 95% intervals can overlap while the difference of the
        # means is significant at 5%, so naming the overlap beside the verdict read as a
        # contradiction ("CIs overlap -> beyond noise").
        judged = "< 0.05: beyond noise" if c.beyond_noise else ">= 0.05: within noise"
        lines.append(
            f"trial {c.best} vs trial {c.other}: {c.difference:+.4f}, "
            f"Welch p = {c.p_value:.3g} {judged}"
        )
    best = comparisons[0].best
    tied = [c.other for c in comparisons if not c.beyond_noise]
    beaten = [c.other for c in comparisons if c.beyond_noise]
    if not tied:
        lines.append(f"verdict: trial {best} is better than the others beyond noise")
    elif not beaten:
        lines.append(
            f"verdict: the top {len(results)} do not differ beyond noise with "
            f"{len(results[0].accuracies)} seeds; trial {best}'s lead may be luck"
        )
    else:
        lines.append(
            f"verdict: trial {best} beats trial{'s' if len(beaten) > 1 else ''} "
            f"{', '.join(map(str, beaten))} beyond noise, but not trial{'s' if len(tied) > 1 else ''} "
            f"{', '.join(map(str, tied))}"
        )
    return lines


def rerun_seeds(spec: StudySpec, n: int) -> list[int]:
    """``n`` seeds no trial of the study trains with, the same for every trial rerun."""
    return seed_formulas.rerun_seeds(spec.base_seed, n)


class _RerunMonitor:
    """Progress lines for a batch of (trial, seed) evaluations; never prunes."""

    def __init__(self, labels: list[str], n_folds: int) -> None:
        self.labels = labels
        self.n_folds = n_folds

    def on_fold_end(self, member: int, fold: int, accuracy: float) -> None:
        _log.info(
            "%s: fold %d/%d accuracy %.4f", self.labels[member], fold + 1, self.n_folds, accuracy
        )

    def on_checkpoint(self, step: int, accuracies: Mapping[int, float]) -> set[int]:
        return set()


def rerun_trials(
    trials: Sequence[optuna.trial.FrozenTrial],
    spec: StudySpec,
    folds: FoldSet,
    engine: Engine,
    *,
    seeds: Sequence[int],
    batch: int,
) -> list[RerunStats]:
    """Evaluate every (trial, seed) pair; one result per trial.

    Each engine call holds one seed and up to ``batch`` trials. The stacked engine gives every
    plan of a call the initial weights and batch order of the call's first seed, so mixing seeds
    in a call would quietly rerun every trial with one draw; one seed per call gives each trial
    each seed's draw, and all trials the same draws (common random numbers).
    """
    found = {t.number: stored_plan(t) for t in trials}
    plans = {number: plan for number, plan in found.items() if plan is not None}
    if len(plans) < len(found):
        raise ValueError(f"trials {sorted(set(found) - set(plans))} have no recorded plan")
    scores: dict[int, list[float]] = {t.number: [] for t in trials}
    seconds: dict[int, float] = {t.number: 0.0 for t in trials}
    size = max(1, batch)
    for s, seed in enumerate(seeds):
        for start in range(0, len(trials), size):
            chunk = trials[start : start + size]
            labels = [f"trial {t.number} seed {s + 1}/{len(seeds)}" for t in chunk]
            results = evaluate_plans(
                engine,
                [plans[t.number] for t in chunk],
                folds,
                model=spec.model,
                seeds=[seed] * len(chunk),
                monitor=_RerunMonitor(labels, folds.n_folds),
            )
            for trial, result in zip(chunk, results, strict=True):
                scores[trial.number].append(result.accuracy)
                seconds[trial.number] += result.seconds
                _log.info(
                    "trial %d seed %d/%d: accuracy %.4f",
                    trial.number,
                    s + 1,
                    len(seeds),
                    result.accuracy,
                )
    return [
        RerunStats(
            trial=t.number,
            original=t.value,
            accuracies=tuple(scores[t.number]),
            seeds=tuple(seeds),
            repeats=len(folds.repeats),
            folds=folds.n_folds,
            epochs=spec.model.epochs,
            engine=engine.name,
            seconds=seconds[t.number],
        )
        for t in trials
    ]


def _note_text(stats: RerunStats) -> str:
    ci = (
        f"95% CI [{stats.ci95[0]:.4f}, {stats.ci95[1]:.4f}]"
        if stats.ci95 is not None
        else "no CI (one seed)"
    )
    std = "n/a" if math.isnan(stats.std) else f"{stats.std:.4f}"
    original = "-" if stats.original is None else f"{stats.original:.4f}"
    return (
        f"{_NOTE_HEADER}\n\n"
        f"{len(stats.accuracies)} fresh seeds x {stats.repeats} repeat(s) of {stats.folds}-fold CV "
        f"({stats.engine} engine, {stats.epochs} epochs): mean **{stats.mean:.4f}**, std {std}, "
        f"{ci}; the search scored {original}.\n\n"
        f"Accuracies: {', '.join(f'{a:.4f}' for a in stats.accuracies)}\n"
    )


def record_reruns(study: optuna.Study, results: Sequence[RerunStats]) -> None:
    """Store each result as study user attr ``rerun:<trial>`` and as the trial's dashboard note."""
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    for stats in results:
        study.set_user_attr(f"{RERUN_ATTR_PREFIX}{stats.trial}", stats.to_dict())
        trial = by_number.get(stats.trial)
        if trial is not None:
            try:
                write_trial_note_section(
                    study, compat.trial_id(trial), _NOTE_HEADER, _note_text(stats)
                )
            except Exception as exc:  # the note is a convenience; the attr is the record
                _log.warning("trial %d: rerun note not written (%s)", stats.trial, error_text(exc))


def weaker_rerun(
    study: optuna.Study, trials: Sequence[int], seeds: int
) -> tuple[list[int], int] | None:
    """The trials among ``trials`` whose recorded rerun has more seeds than ``seeds``, and the
    most seeds among them; None when a rerun with ``seeds`` replaces nothing stronger."""
    recorded = load_reruns(study)
    stronger = [n for n in trials if n in recorded and len(recorded[n].accuracies) > seeds]
    if not stronger:
        return None
    return sorted(stronger), max(len(recorded[n].accuracies) for n in stronger)


def load_reruns(study: optuna.Study) -> dict[int, RerunStats]:
    """Every recorded rerun of ``study``, by trial number."""
    found = {}
    for key, value in study.user_attrs.items():
        if key.startswith(RERUN_ATTR_PREFIX) and isinstance(value, Mapping):
            try:
                number = int(key[len(RERUN_ATTR_PREFIX) :])
                found[number] = RerunStats.from_dict(number, value)
            except (KeyError, TypeError, ValueError):
                _log.warning("study attr %r is not a rerun record; ignored", key)
    return found
