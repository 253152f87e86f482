"""The statistics of scores over seeds, shared by ``rerun``, ``evaluate`` and ``nested``.

>>> Scores(accuracies=(0.70, 0.72, 0.71)).mean
0.71
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hpo.lazy import lazy_import

if TYPE_CHECKING:
    import numpy as np
    from scipy import stats as scipy_stats
else:
    np = lazy_import("numpy")
    scipy_stats = lazy_import("scipy.stats")

__all__ = [
    "Scores",
    "clip_accuracy",
    "combined_ci",
    "paired_p",
    "rows_paired_p",
    "summarize",
    "welch_p",
]


def summarize(accuracies: Sequence[float]) -> tuple[float, float, tuple[float, float] | None]:
    """Mean, sample standard deviation and 95% t-interval of the mean (None below 2 values)."""
    values = np.asarray(accuracies, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, None
    std = float(values.std(ddof=1))
    half = float(scipy_stats.t.ppf(0.975, len(values) - 1)) * std / math.sqrt(len(values))
    return mean, std, (mean - half, mean + half)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided Welch t-test p of two independent samples; None below two values each."""
    if len(a) < 2 or len(b) < 2:
        return None
    if np.std(a) == 0 and np.std(b) == 0:  # t is undefined; identical runs differ or they don't
        return 1.0 if np.mean(a) == np.mean(b) else 0.0
    return float(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue)


def paired_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided paired t-test p of ``a - b`` (seed by seed); None below two pairs.

    >>> paired_p([0.70, 0.71, 0.72], [0.60, 0.62, 0.61]) < 0.05
    True
    """
    if len(a) != len(b) or len(a) < 2:
        return None
    differences = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if np.std(differences) == 0:  # t is undefined: the same difference every seed
        return 1.0 if differences[0] == 0 else 0.0
    return float(scipy_stats.ttest_rel(a, b).pvalue)


def rows_paired_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided paired t-test p over rows of two plans' per-row scores (1 when they never
    differ, 0 when they differ by the same amount on every row).

    >>> rows_paired_p([1, 1, 0, 1], [1, 1, 0, 1])
    1.0
    """
    differences = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if np.std(differences) == 0:
        return 1.0 if differences[0] == 0 else 0.0
    return float(scipy_stats.ttest_1samp(differences, 0.0).pvalue)


def combined_ci(mean: float, seed_std: float, n_seeds: int, row_se: float) -> tuple[float, float]:
    """95% interval (normal approximation) for a score averaged over ``n_seeds`` training seeds
    on one fixed set of rows: the seeds' spread shrinks with more seeds, the rows' sampling
    error (``row_se``, the standard error over the scored rows) does not.

    >>> lo, hi = combined_ci(0.70, 0.01, 4, 0.02)
    >>> round(hi - lo, 4)
    0.0808
    """
    seed_var = 0.0 if n_seeds < 2 or math.isnan(seed_std) else seed_std**2 / n_seeds
    half = 1.959964 * math.sqrt(seed_var + row_se**2)
    return clip_accuracy((mean - half, mean + half))


def clip_accuracy(interval: tuple[float, float]) -> tuple[float, float]:
    """An interval for an accuracy, cut to [0, 1] (the normal approximation can overshoot)."""
    return max(0.0, interval[0]), min(1.0, interval[1])


@dataclass(frozen=True, kw_only=True)
class Scores:
    """Accuracies under several seeds, with their mean, std and 95% CI."""

    accuracies: tuple[float, ...]
    mean: float = field(init=False)
    std: float = field(init=False)
    ci95: tuple[float, float] | None = field(init=False)

    def __post_init__(self) -> None:
        mean, std, ci = summarize(self.accuracies)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "ci95", ci)

    def ci_text(self) -> str:
        if self.ci95 is None:
            return "no CI (one seed)"
        return f"[{self.ci95[0]:.4f}, {self.ci95[1]:.4f}]"

    def stats_dict(self) -> dict[str, Any]:
        """The accuracies and their summary, rounded for storage."""
        return {
            "accuracies": [round(a, 6) for a in self.accuracies],
            "mean": round(self.mean, 6),
            "std": None if math.isnan(self.std) else round(self.std, 6),
            "ci95": None if self.ci95 is None else [round(v, 6) for v in self.ci95],
        }
