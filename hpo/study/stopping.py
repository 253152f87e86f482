"""Stop a study once nothing is left to find (``[budget] early_stop = "within-noise"``).

Each trial's score is a cross-validated accuracy, and two runs of one plan differ by about the
CV noise. Once no plan is expected to beat the best by more than that noise, further trials can
only pick a luckier re-roll. The rule is the one of Makarova et al., "Automatic Termination for
Hyperparameter Optimization" (AutoML 2022), which Optuna's ``terminator`` implemented:

* **regret bound**: a Gaussian process fitted to the best half of the complete trials (at least
  20, at most :data:`MAX_FITTED`); the bound is the highest upper confidence bound over the
  space (the fitted trials and :data:`CANDIDATES` random plans) minus the highest lower bound
  among the fitted trials, with the paper's ``beta`` (delta 0.1, scaled by 1/5 as in Optuna);
* **noise**: the best trial's CV error, ``sqrt((1/k + 1/(k-1)) * var(fold accuracies))`` over
  its ``k`` fold scores (Nadeau and Bengio's corrected variance, as Optuna's
  ``CrossValidationErrorEvaluator``);
* stop when ``bound <= noise``, checked before each claim once :func:`min_trials` trials are
  complete.

Optuna's own terminator is deprecated (removed in Optuna 6) and fits its GP with PyTorch; this
one uses scikit-learn's GP, which hpo already installs. A plan is described to the GP by its
coefficients, not its parameters: per layer and penalty kind, ``log10(alpha)`` mapped onto
``[0, 1]`` over 1e-8 ... 10, and 0 for a penalty that is off. So the baseline is a point of the
same space (every penalty off) and takes part like any other trial.

The decision is recorded on the study (``hpo_early_stop``, with the budget it was made under)
by the worker that makes it; every worker reads it before its next claim and ends, and
``status``, ``best``, the report and the dashboard note say why the study ended. Raising the
budget asks the rule again; ``early_stop = "none"`` trains the rest. The rule is evaluated
again only when more trials have completed, and an error in it (never an outage) turns it off
for the run with a warning instead of ending the worker.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpo.lazy import lazy_import
from hpo.space import RegularizationPlan, random_plan
from hpo.spec import PENALTY_KINDS, StudySpec
from hpo.study.record import EARLY_STOP_ATTR, stored_plan

if TYPE_CHECKING:
    import numpy as np
    import optuna
else:
    np = lazy_import("numpy")
    optuna = lazy_import("optuna")

__all__ = [
    "CANDIDATES",
    "MAX_FITTED",
    "StopCheck",
    "check_stop",
    "cv_noise",
    "encode",
    "min_trials",
    "record_stop",
    "stored_stop",
]

CANDIDATES = 2048
MAX_FITTED = 100  # the GP's cost grows with the cube of its points; the best 100 are enough
_MIN_FITTED = 20
_LOG_LOW, _LOG_HIGH = -8.0, 1.0
_DELTA = 0.1


@dataclass(frozen=True)
class StopCheck:
    """One evaluation of the rule: over ``trials`` complete trials, the best value, the bound on
    what any plan may still gain over it, and the best trial's CV noise."""

    trials: int
    best: float
    bound: float
    noise: float

    @property
    def stop(self) -> bool:
        # <=: a flat objective scored without any noise (bound 0, noise 0) has nothing left.
        return self.bound <= self.noise

    def message(self) -> str:
        return (
            f"stopped after {self.trials} complete trials: no plan is expected to beat "
            f"{self.best:.4f} "
            f"by more than the CV noise {self.noise:.3f} (regret bound {self.bound:.3f})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "trials": self.trials,
            "best": round(self.best, 6),
            "bound": round(self.bound, 6),
            "noise": round(self.noise, 6),
            "message": self.message(),
        }


def min_trials(startup: int) -> int:
    """Complete trials before the rule may stop a study: twice the start-up, at least 12."""
    return max(12, 2 * startup)


def cv_noise(fold_accuracies: Sequence[float], folds: int | None = None) -> float:
    """The standard error of a CV score with the training-set overlap corrected for
    (Nadeau and Bengio: ``1/n`` for the ``n`` scores plus ``n_test/n_train = 1/(folds-1)``;
    with ``[cv] repeats`` the scores are folds x repeats, the ratio still one draw's).

    >>> round(cv_noise([0.70, 0.66, 0.68, 0.72, 0.64]), 3)
    0.019
    """
    k = len(fold_accuracies)
    folds = folds or k
    if k < 2 or folds < 2:
        return 0.0
    return float(math.sqrt((1 / k + 1 / (folds - 1)) * float(np.var(fold_accuracies))))


def encode(plan: RegularizationPlan) -> list[float]:
    """A plan as GP inputs: per layer and kind, log10(alpha) on [0, 1] over 1e-8 ... 10; 0 off."""
    out = []
    for layer in plan.layers:
        for kind in PENALTY_KINDS:
            alpha = getattr(layer, kind)
            if alpha <= 0:
                out.append(0.0)
            else:
                scaled = (math.log10(alpha) - _LOG_LOW) / (_LOG_HIGH - _LOG_LOW)
                out.append(min(1.0, max(0.0, scaled)))
    return out


def _beta(n_params: int, n_trials: int) -> float:
    return 2 * math.log(n_params * n_trials**2 * math.pi**2 / 6 / _DELTA) / 5


def regret_bound(x: np.ndarray, y: np.ndarray, candidates: np.ndarray, *, seed: int = 0) -> float:
    """The GP's bound on how much the best point of the space may beat the best of ``x``."""
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    keep = min(len(y), max(_MIN_FITTED, len(y) // 2), MAX_FITTED)
    top = np.argsort(-y, kind="stable")[:keep]
    x, y = x[top], y[top]
    if float(np.ptp(y)) == 0.0:
        return 0.0  # every fitted trial scored the same: nothing suggests any plan does better
    scale = float(np.std(y))
    z = (y - float(np.mean(y))) / scale
    signal = ConstantKernel(1.0, (1e-3, 1e3)) * Matern(
        length_scale=np.full(x.shape[1], 0.5), length_scale_bounds=(1e-2, 1e2), nu=2.5
    )
    gp = GaussianProcessRegressor(
        signal + WhiteKernel(0.1, (1e-6, 1e1)), n_restarts_optimizer=2, random_state=seed
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence notes on flat or tiny data
        gp.fit(x, z)
    beta = math.sqrt(_beta(x.shape[1], len(z)))
    ucb = max(_bound(gp, x, beta).max(), _bound(gp, candidates, beta).max())
    lcb = _bound(gp, x, -beta).max()
    return float(ucb - lcb) * scale


def _bound(gp: Any, x: np.ndarray, beta: float) -> np.ndarray:
    """mean + beta * std of the *function* (the fitted noise left out)."""
    kernel = gp.kernel_.k1  # the signal part; k2 is the white noise
    cross = kernel(x, gp.X_train_)
    mean = cross @ gp.alpha_
    v = np.linalg.solve(gp.L_, cross.T)
    var = np.clip(kernel.diag(x) - np.einsum("ij,ij->j", v, v), 0.0, None)
    return mean + beta * np.sqrt(var)


def check_stop(
    trials: Sequence[optuna.trial.FrozenTrial], spec: StudySpec, *, startup: int
) -> StopCheck | None:
    """The rule on ``trials`` (None while fewer than :func:`min_trials` are complete)."""
    complete = [
        t
        for t in trials
        if t.state == optuna.trial.TrialState.COMPLETE
        and t.value is not None
        and stored_plan(t) is not None
    ]
    if len(complete) < min_trials(startup) or not spec.search.resolved:
        return None
    best = max(complete, key=lambda t: float(t.value or 0.0))
    noise = cv_noise(
        [float(a) for a in best.user_attrs.get("fold_accuracies", [])], folds=spec.cv.folds
    )
    x = np.array([encode(stored_plan(t)) for t in complete])  # type: ignore[arg-type]
    y = np.array([float(t.value or 0.0) for t in complete])
    rng = np.random.default_rng(len(complete))
    candidates = np.array([encode(random_plan(spec.search, rng)) for _ in range(CANDIDATES)])
    # No plan beats an accuracy of 1: a best that scores 1 on every fold (no noise at all) has
    # nothing left to find, whatever the GP's confidence band says.
    bound = min(regret_bound(x, y, candidates), 1.0 - float(best.value or 0.0))
    return StopCheck(trials=len(complete), best=float(best.value or 0.0), bound=bound, noise=noise)


def stored_stop(study: optuna.Study, spec: StudySpec | None) -> dict[str, Any] | None:
    """The recorded early stop, if it still holds: ``[budget] early_stop`` is on and the budget
    is the one it was decided under (a larger budget asks the rule again)."""
    raw = study.user_attrs.get(EARLY_STOP_ATTR)
    if not isinstance(raw, dict) or spec is None or spec.budget.early_stop == "none":
        return None
    return raw if raw.get("n_trials") == spec.budget.n_trials else None


def record_stop(study: optuna.Study, check: StopCheck, n_trials: int | None) -> None:
    """Record the decision (idempotent: the first worker's stands for its budget)."""
    raw = study.user_attrs.get(EARLY_STOP_ATTR)
    if not isinstance(raw, dict) or raw.get("n_trials") != n_trials:
        study.set_user_attr(EARLY_STOP_ATTR, {**check.to_dict(), "n_trials": n_trials})
