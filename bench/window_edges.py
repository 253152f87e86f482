"""Whether narrower "auto" windows would remove wine's last no-op trials, and at what cost.

The ladder (``hpo.study.windows``) steps a whole decade at a time; on wine every penalty kind
changes the network, if at all, within one decade of its collapse, so its window sits a quarter
step around the last sound decade. This compares those windows against windows read off a
ladder refined to quarter decades on both sides of that decade (12 more plans per kind at most),
on ``bench/search_quality.py``'s wine task: ``--plans`` random plans over each, trained in
stacked batches of 8 beside the unregularized network with the batch's seed. It prints, per
kind of window, the no-op trials (predictions equal to that network's on every row) and the
collapsed ones (one class predicted), the collapsed plans, and how often two unregularized
networks from different initial weights agree on every row (the chance level of a no-op).

    python bench/window_edges.py --plans 64
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

import numpy as np
from search_quality import _setup

from hpo.engines.evaluation import evaluate_plans
from hpo.space import RegularizationPlan, random_plan
from hpo.spec import PENALTY_KINDS
from hpo.study import windows as W


def quarter_points(ladder: W.Ladder, kind: str) -> list[float]:
    """Quarter decades each side of a kind's last sound decade, where its window is that decade
    alone (a whole window needs no refining)."""
    low, high = ladder.bounds(kind)
    alphas = sorted(a for a, *_ in ladder.steps[kind])
    if high is None or (low is not None and low != high):
        return []
    i = alphas.index(high)
    edges = [(alphas[i - 1], high)] if i else []
    edges += [(high, alphas[i + 1])] if i + 1 < len(alphas) else []
    return [a * (b / a) ** (j / 4) for a, b in edges for j in (1, 2, 3)]


def refined(setup: dict[str, Any], ladder: W.Ladder) -> W.Ladder:
    spec, folds, engine = setup["spec"], setup["folds"], setup["engine"]
    extra = [(k, a) for k in PENALTY_KINDS for a in quarter_points(ladder, k)]
    if not extra:
        return ladder
    more = W._measure(spec, folds, engine, W.probe_folds(folds), extra)
    return replace(
        ladder, steps={k: sorted(ladder.steps[k] + more.steps[k]) for k in PENALTY_KINDS}
    )


def outcomes(setup: dict[str, Any], windows: Any, n: int) -> tuple[int, int, list[str]]:
    """No-op and collapsed trials of ``n`` random plans over ``windows``; the collapsed plans."""
    spec = setup["spec"].replace(search=replace(setup["spec"].search, windows=windows))
    rng = np.random.default_rng(0)
    plans = [random_plan(spec.search, rng) for _ in range(n)]
    zero = RegularizationPlan.uniform(len(spec.search.layers), names=spec.search.names)
    noops, collapsed = 0, []
    for start in range(0, n, 8):
        batch = plans[start : start + 8]
        results = evaluate_plans(
            setup["engine"], [zero, *batch], setup["folds"], model=spec.model,
            seeds=[100 + start] * (len(batch) + 1),
        )  # fmt: skip
        for plan, result in zip(batch, results[1:], strict=True):
            noops += bool(np.array_equal(result.predictions, results[0].predictions))
            if len(np.unique(result.predictions)) == 1:
                collapsed.append(plan.text())
    return noops, len(collapsed), collapsed


def chance(setup: dict[str, Any], seeds: int = 12) -> tuple[int, int]:
    spec, folds = setup["spec"], setup["folds"]
    zero = RegularizationPlan.uniform(len(spec.search.layers), names=spec.search.names)
    results = setup["engine"].evaluate(
        [zero] * seeds, folds.repeats[0], model=spec.model, n_classes=folds.n_classes,
        seeds=[7] * seeds, weight_seeds=list(range(100, 100 + seeds)),
    )  # fmt: skip
    p = [np.asarray(r.predictions) for r in results]
    pairs = [(i, j) for i in range(seeds) for j in range(i + 1, seeds)]
    return sum(np.array_equal(p[i], p[j]) for i, j in pairs), len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plans", type=int, default=64)
    args = parser.parse_args()
    setup = _setup("wine")
    ladder = W.measure_windows(setup["spec"], setup["folds"], setup["engine"])
    finer = refined(setup, ladder)
    agree, pairs = chance(setup)
    print(f"chance: unregularized networks from different initial weights agree on every row "
          f"in {agree} of {pairs} pairs ({agree / pairs:.0%})")  # fmt: skip
    for name, lad in (("ladder windows", ladder), ("quarter-decade edges", finer)):
        noops, n_collapsed, plans = outcomes(setup, lad.windows(), args.plans)
        print(f"{name}: {lad.windows().text()}")
        print(f"  {noops} no-ops, {n_collapsed} collapsed of {args.plans} random plans")
        for plan in plans:
            print(f"    collapsed: {plan}")


if __name__ == "__main__":
    main()
