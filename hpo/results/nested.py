"""Nested cross-validation: the honest estimate of the whole tuning procedure.

Each of K outer folds holds out its rows and runs a full inner study on the rest (an ordinary
study, named ``NAME.outer-<i>``, that can be resumed and joined by ``hpo worker``). The inner
winner, and the baseline, are then trained on the outer training rows with S seeds and scored on
the outer test rows (:mod:`hpo.results.holdout` does that part). The K outer scores estimate
what "run this search, ship its winner" scores on new rows; the plans the folds chose show how
stable the search's answer is.

>>> outer_study_name("jh-simple", 2)
'jh-simple.outer-2'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from hpo.lazy import lazy_import
from hpo.results.holdout import HoldoutEvaluation
from hpo.results.stats import clip_accuracy, summarize
from hpo.space import RegularizationPlan
from hpo.spec import StudySpec
from hpo.study.record import stored_plan

if TYPE_CHECKING:
    import optuna
    from scipy import stats as scipy_stats
else:
    scipy_stats = lazy_import("scipy.stats")

__all__ = [
    "NestedSummary",
    "OuterResult",
    "corrected_interval",
    "outer_spec",
    "outer_study_name",
]


def outer_study_name(name: str, fold: int) -> str:
    """The inner study of outer fold ``fold`` (1-based)."""
    return f"{name}.outer-{fold}"


def outer_spec(spec: StudySpec, folds: int, fold: int) -> StudySpec:
    """The inner study's spec for outer fold ``fold`` (1-based) of ``folds``."""
    return spec.replace(
        name=outer_study_name(spec.name, fold),
        cv=replace(spec.cv, outer_folds=folds, outer_fold=fold - 1),
    )


def corrected_interval(values: Sequence[float]) -> tuple[float, tuple[float, float] | None]:
    """Mean and 95% interval of K outer scores, widened for their overlapping training sets.

    The K outer training sets share most of their rows, so the scores are correlated and a
    plain t-interval is too narrow. Nadeau and Bengio's correction multiplies the variance of
    the mean by (1/K + n_test/n_train) instead of 1/K; for K-fold, n_test/n_train = 1/(K-1).

    >>> mean, (lo, hi) = corrected_interval([0.70, 0.72, 0.68, 0.71, 0.69])
    >>> round(hi - lo, 4)
    0.0589
    """
    mean, std, _ = summarize(values)
    k = len(values)
    if k < 2 or math.isnan(std):
        return mean, None
    half = float(scipy_stats.t.ppf(0.975, k - 1)) * std * math.sqrt(1 / k + 1 / (k - 1))
    return mean, clip_accuracy((mean - half, mean + half))


@dataclass(frozen=True, kw_only=True)
class OuterResult:
    """One outer fold: its inner winner's plan and scores, and the baseline's outer score."""

    fold: int
    study: str
    winner: int
    params: Mapping[str, Any]
    search_cv: float
    outer: float
    baseline: float | None
    # The winner's coefficients: with "auto" alphas its params are positions in its own inner
    # study's windows, which differ between outer folds.
    plan: RegularizationPlan | None = None

    @classmethod
    def from_evaluation(
        cls, fold: int, study: optuna.Study, evaluation: HoldoutEvaluation
    ) -> OuterResult:
        winner = evaluation.winner
        base = evaluation.baseline
        return cls(
            fold=fold,
            study=study.study_name,
            winner=winner.trial,
            params=dict(study.trials[winner.trial].params),
            plan=stored_plan(study.trials[winner.trial]),
            search_cv=winner.search_cv,
            outer=winner.mean,
            baseline=None if base is None else base.mean,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "fold": self.fold,
            "study": self.study,
            "winner": self.winner,
            "params": dict(self.params),
            "plan": None if self.plan is None else self.plan.to_dict(),
            "search_cv": round(self.search_cv, 6),
            "outer": round(self.outer, 6),
            "baseline": None if self.baseline is None else round(self.baseline, 6),
        }


@dataclass(frozen=True, kw_only=True)
class NestedSummary:
    """The K outer scores: mean and 95% CI of the winners, and of the baseline."""

    results: tuple[OuterResult, ...]
    # The data warnings of the search data, leaks first: stored with the estimate they question.
    data_warnings: tuple[str, ...] = ()

    def _stats(self, values: Sequence[float]) -> tuple[float, tuple[float, float] | None]:
        return corrected_interval(values)

    @property
    def outer_scores(self) -> tuple[float, ...]:
        return tuple(r.outer for r in self.results)

    def lines(self) -> list[str]:
        """The estimate, the baseline's, and how much the search overstated itself."""
        mean, ci = self._stats(self.outer_scores)
        ci_text = (
            "no CI (one fold)"
            if ci is None
            else f"95% CI [{ci[0]:.4f}, {ci[1]:.4f}] (corrected for overlapping folds)"
        )
        search = sum(r.search_cv for r in self.results) / len(self.results)
        lines = [
            f"nested CV ({len(self.results)} outer folds): tuned network {mean:.4f}, {ci_text}; "
            f"the inner searches' best CV averaged {search:.4f} (optimism {search - mean:+.4f})"
        ]
        baselines = [r.baseline for r in self.results if r.baseline is not None]
        if len(baselines) == len(self.results):
            b_mean, b_ci = self._stats(baselines)
            b_text = "" if b_ci is None else f", 95% CI [{b_ci[0]:.4f}, {b_ci[1]:.4f}]"
            lines.append(
                f"baseline (no regularization) {b_mean:.4f}{b_text}; tuning bought "
                f"{mean - b_mean:+.4f}"
            )
        distinct = {
            r.plan.text() if r.plan is not None else tuple(sorted(r.params.items()))
            for r in self.results
        }
        lines.append(
            f"plans chosen: {len(distinct)} different in {len(self.results)} folds"
            + (" (the search's answer is not stable)" if len(distinct) > 1 else "")
        )
        return lines

    def to_dict(self) -> dict[str, Any]:
        mean, std, _ = summarize(self.outer_scores)
        _, ci = corrected_interval(self.outer_scores)
        return {
            "folds": [r.to_dict() for r in self.results],
            "mean": round(mean, 6),
            "std": None if math.isnan(std) else round(std, 6),
            "ci95": None if ci is None else [round(v, 6) for v in ci],
            "summary": self.lines(),
            "data_warnings": list(self.data_warnings),
        }
