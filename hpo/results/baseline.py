"""What regularization bought: the best trial against the study's unregularized baseline.

The baseline (trial 0 unless ``[search] baseline = false``) trains the same network, folds and
epochs with every penalty off. The difference of two single CV scores is noisy, so it is judged
against noise only where ``hpo rerun`` has rerun both trials with fresh seeds (Welch's test on
the rerun scores); otherwise the line says how to find out.

>>> BaselineGain(best=7, best_value=0.7, baseline=0, baseline_value=0.68, rerun=None).gain
0.02
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hpo.lazy import lazy_import
from hpo.results.rerun import Comparison, compare_pair, load_reruns
from hpo.study.record import baseline_trial, best_trial, is_baseline

if TYPE_CHECKING:
    import optuna
else:
    optuna = lazy_import("optuna")

__all__ = ["BaselineGain", "baseline_gain"]


@dataclass(frozen=True, kw_only=True)
class BaselineGain:
    """The search's best trial against the baseline; ``rerun``: both rerun with fresh seeds."""

    best: int
    best_value: float
    baseline: int
    baseline_value: float
    rerun: Comparison | None

    @property
    def gain(self) -> float:
        return round(self.best_value - self.baseline_value, 10)

    @property
    def beyond_noise(self) -> bool | None:
        """True/False by the reruns' Welch test; None when there are no reruns of both."""
        return None if self.rerun is None else self.rerun.beyond_noise

    def line(self, study_name: str) -> str:
        """One sentence for ``best``, ``status`` and the report."""
        if self.best == self.baseline:
            return (
                f"baseline: the unregularized network (trial {self.baseline}) is the best trial; "
                "no regularization tried so far beat it"
            )
        head = (
            f"baseline: regularization {self.gain:+.4f} over the unregularized network "
            f"(trial {self.baseline}, {self.baseline_value:.4f})"
        )
        if self.rerun is None:
            return (
                f"{head}; not yet judged against noise: `hpo rerun {study_name}` reruns the best "
                "trials and the baseline with fresh seeds"
            )
        if not self.rerun.beyond_noise:
            judged = "within noise"
        elif self.rerun.difference > 0:
            judged = "beyond noise"
        else:
            judged = "the baseline is better, beyond noise"
        p = "n/a" if self.rerun.p_value is None else f"{self.rerun.p_value:.3g}"
        return f"{head}; reruns: {self.rerun.difference:+.4f}, Welch p = {p} -> {judged}"

    def to_dict(self) -> dict[str, object]:
        return {
            "best": self.best,
            "baseline": self.baseline,
            "baseline_value": self.baseline_value,
            "gain": self.gain,
            "beyond_noise": self.beyond_noise,
            "rerun_p_value": None if self.rerun is None else self.rerun.p_value,
        }


def baseline_gain(study: optuna.Study) -> BaselineGain | None:
    """The best trial against the finished baseline; None without both."""
    best, baseline = best_trial(study), baseline_trial(study)
    if best is None or baseline is None or best.value is None or baseline.value is None:
        return None
    if is_baseline(best):
        best = baseline  # a retry of the baseline counts as the baseline itself
    assert best.value is not None
    reruns = load_reruns(study)
    rerun = None
    if best.number != baseline.number and best.number in reruns and baseline.number in reruns:
        rerun = compare_pair(reruns[best.number], reruns[baseline.number])
    return BaselineGain(
        best=best.number,
        best_value=float(best.value),
        baseline=baseline.number,
        baseline_value=float(baseline.value),
        rerun=rerun,
    )
