"""Where a penalty starts to matter and where it collapses the network: the data behind hpo's
search space, for ``bench/search_quality.py``.

``ladder``: every kind of penalty alone (L1 or L2, on the outputs or on the weights of every
hidden layer) at alphas 1e-8 ... 1, each trained beside the unregularized network with the same
initial weights and batch order (the stacked engine's batches share them), so that "the same
predictions as the baseline" means the penalty did nothing at all.

``sweep``: random plans over a space wider than any method searches, same pairing; the
attainable gain and the no-op and collapse shares of any sub-range are read from it.

Run through ``search_quality.py`` (it owns the worker processes and the results file).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

LADDER_ALPHAS = tuple(10.0**e for e in range(-8, 1))
KINDS = ("l1_activity", "l2_activity", "l1_kernel", "l2_kernel")
WIDE = (1e-8, 1.0)  # the sweep's alpha range, wider than any searched one on both sides
PLACEMENTS = ("activity", "kernel", "both")
PENALTIES = ("l1", "l2", "l1l2")
PER_BATCH = 7  # plans per stacked batch, beside the baseline


def ladder_plans(n_layers: int) -> list[dict[str, Any]]:
    """One penalty kind on every hidden layer at each alpha: plans as coefficient dicts."""
    plans = []
    for kind in KINDS:
        for alpha in LADDER_ALPHAS:
            coeffs = {k: [alpha if k == kind else 0.0] * n_layers for k in KINDS}
            plans.append({"kind": kind, "alpha": alpha, "coeffs": coeffs})
    return plans


def random_params(
    rng: np.random.Generator, n_layers: int, low: float, high: float
) -> dict[str, Any]:
    """A random draw of hpo's parameters (placement, penalty, alphas) per layer, log-uniform."""
    params: dict[str, Any] = {}
    for n in range(1, n_layers + 1):
        params[f"h{n}_placement"] = PLACEMENTS[int(rng.integers(3))]
        penalty = PENALTIES[int(rng.integers(3))]
        params[f"h{n}_penalty"] = penalty
        if penalty in ("l1", "l1l2"):
            params[f"h{n}_l1"] = float(math.exp(rng.uniform(math.log(low), math.log(high))))
        if penalty in ("l2", "l1l2"):
            params[f"h{n}_l2"] = float(math.exp(rng.uniform(math.log(low), math.log(high))))
    return params


def coeffs_of(params: dict[str, Any], n_layers: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in KINDS}
    for n in range(1, n_layers + 1):
        placement = params[f"h{n}_placement"]
        l1 = params.get(f"h{n}_l1", 0.0)
        l2 = params.get(f"h{n}_l2", 0.0)
        act = placement in ("activity", "both")
        ker = placement in ("kernel", "both")
        out["l1_activity"].append(l1 if act else 0.0)
        out["l2_activity"].append(l2 if act else 0.0)
        out["l1_kernel"].append(l1 if ker else 0.0)
        out["l2_kernel"].append(l2 if ker else 0.0)
    return out


def sweep_plans(n: int, n_layers: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    plans = []
    for _ in range(n):
        params = random_params(rng, n_layers, *WIDE)
        plans.append({"params": params, "coeffs": coeffs_of(params, n_layers)})
    return plans


def paired_records(
    plans: list[dict[str, Any]], results: list[Any], baseline: Any, n_classes: int
) -> list[dict[str, Any]]:
    """Each plan's score and how it relates to the baseline trained beside it."""
    out = []
    base = np.asarray(baseline.predictions)
    for plan, result in zip(plans, results, strict=True):
        pred = np.asarray(result.predictions)
        out.append(
            {
                **{k: v for k, v in plan.items() if k != "coeffs"},
                "coeffs": plan["coeffs"],
                "accuracy": float(result.accuracy),
                "folds": [float(a) for a in result.fold_accuracies],
                "base_accuracy": float(baseline.accuracy),
                "disagree": float(np.mean(pred != base)),
                "noop": bool(np.array_equal(pred, base)),
                "collapsed": bool(len(np.unique(pred)) == 1),
                "classes_predicted": len(np.unique(pred)),
                "diverged": bool(result.diverged),
            }
        )
    return out
