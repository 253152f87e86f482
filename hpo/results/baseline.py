"""What regularization bought: the best trial against the study's unregularized baseline.

The baseline (trial 0 unless ``[search] baseline = false``) trains the same network, folds and
epochs with every penalty off. The difference of two single CV scores is noisy, so it is judged
against noise only with more evidence: ``hpo evaluate``'s holdout (paired over held-out rows),
else ``hpo rerun``'s fresh seeds (paired over seeds when both were rerun together, else Welch's
test); otherwise the line says how to find out.

>>> BaselineGain(best=7, best_value=0.7, baseline=0, baseline_value=0.68).gain
0.02
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hpo.lazy import lazy_import
from hpo.results.holdout import load_evaluation
from hpo.results.rerun import compare_pair, load_reruns
from hpo.results.stats import paired_p
from hpo.study.record import baseline_trial, best_trial, is_baseline

if TYPE_CHECKING:
    import optuna
else:
    optuna = lazy_import("optuna")

__all__ = ["BaselineGain", "Evidence", "baseline_gain"]


@dataclass(frozen=True, kw_only=True)
class Evidence:
    """A difference (best - baseline) measured beyond one CV score each, and its test."""

    source: str  # "holdout" (hpo evaluate) or "reruns" (hpo rerun)
    test: str  # "paired over rows", "paired over seeds", "Welch"
    difference: float
    p_value: float | None

    @property
    def beyond_noise(self) -> bool | None:
        return None if self.p_value is None else self.p_value < 0.05


@dataclass(frozen=True, kw_only=True)
class BaselineGain:
    """The search's best trial against the baseline; ``evidence``: the holdout's or the
    reruns' comparison of the two, when there is one."""

    best: int
    best_value: float
    baseline: int
    baseline_value: float
    evidence: Evidence | None = None

    @property
    def gain(self) -> float:
        return round(self.best_value - self.baseline_value, 10)

    @property
    def beyond_noise(self) -> bool | None:
        """True/False by the holdout's or the reruns' test; None without either."""
        return None if self.evidence is None else self.evidence.beyond_noise

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
        e = self.evidence
        if e is None:
            return (
                f"{head}; not yet judged against noise: `hpo rerun {study_name}` reruns the best "
                "trials and the baseline with fresh seeds (or `hpo evaluate` with a holdout)"
            )
        if e.p_value is None:
            # No spread to test against (a rerun with one seed): a number, never a verdict.
            return (
                f"{head}; {e.source}: {e.difference:+.4f}, not judged against noise (one seed "
                f"gives no spread): `hpo rerun {study_name} --seeds 3` tests it"
            )
        if not e.beyond_noise:
            judged = "within noise"
        elif e.difference > 0:
            judged = "beyond noise"
        else:
            judged = "the baseline is better, beyond noise"
        return f"{head}; {e.source}: {e.difference:+.4f}, {e.test} p = {e.p_value:.3g} -> {judged}"

    def to_dict(self) -> dict[str, object]:
        e = self.evidence
        return {
            "best": self.best,
            "baseline": self.baseline,
            "baseline_value": self.baseline_value,
            "gain": self.gain,
            "beyond_noise": self.beyond_noise,
            "judged_by": None if e is None else e.source,
            "difference": None if e is None else e.difference,
            "p_value": None if e is None else e.p_value,
        }


def baseline_gain(study: optuna.Study) -> BaselineGain | None:
    """The best trial against the finished baseline; None without both."""
    best, baseline = best_trial(study), baseline_trial(study)
    if best is None or baseline is None or best.value is None or baseline.value is None:
        return None
    if is_baseline(best):
        best = baseline  # a retry of the baseline counts as the baseline itself
    assert best.value is not None
    evidence = None
    if best.number != baseline.number:
        evidence = _holdout_evidence(study, best.number, baseline.number) or _rerun_evidence(
            study, best.number, baseline.number
        )
    return BaselineGain(
        best=best.number,
        best_value=float(best.value),
        baseline=baseline.number,
        baseline_value=float(baseline.value),
        evidence=evidence,
    )


def _holdout_evidence(study: optuna.Study, best: int, baseline: int) -> Evidence | None:
    evaluation = load_evaluation(study)
    if evaluation is None:
        return None
    scores = {p.trial: p for p in evaluation.plans}
    if best not in scores or baseline not in scores or scores[best].p_vs_baseline is None:
        return None  # not both evaluated (or by an hpo that did not compare them row by row)
    return Evidence(
        source="holdout",
        test="paired over rows",
        difference=scores[best].mean - scores[baseline].mean,
        p_value=scores[best].p_vs_baseline,
    )


def _rerun_evidence(study: optuna.Study, best: int, baseline: int) -> Evidence | None:
    reruns = load_reruns(study)
    if best not in reruns or baseline not in reruns:
        return None
    a, b = reruns[best], reruns[baseline]
    if a.seeds and a.seeds == b.seeds and a.repeats == b.repeats:
        # Rerun together: the same seeds, so the two are compared seed by seed.
        return Evidence(
            source="reruns",
            test="paired over seeds",
            difference=a.mean - b.mean,
            p_value=paired_p(a.accuracies, b.accuracies),
        )
    comparison = compare_pair(a, b)
    return Evidence(
        source="reruns",
        test="Welch",
        difference=comparison.difference,
        p_value=comparison.p_value,
    )
