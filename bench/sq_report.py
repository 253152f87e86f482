"""The table and plot of ``bench/search_quality.py``, from its results file only."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from search_quality import BUDGETS, TOP_SWEEP, picks, plan_key, sweep_rows, zero_coeffs
from sq_tasks import TASKS

METHOD_ORDER = ("hpo", "hpo-random-startup", "before", "random", "sobol")


def _holdout(results: dict[str, dict[str, Any]], task: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in results.values():
        if r["phase"] in ("attainable", "picked") and r["task"] == task:
            out.update(r["result"])
    return out


def _paired_gain(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float]:
    """Mean holdout accuracy of ``a`` minus ``b`` over the same seeds, and its standard error
    over the held-out rows (paired: each row's share of seeds right, ``a`` minus ``b``)."""
    gain = statistics.mean(a["accuracies"]) - statistics.mean(b["accuracies"])
    rows = np.mean(np.array(a["hits"]), axis=0) - np.mean(np.array(b["hits"]), axis=0)
    return gain, float(np.std(rows, ddof=1) / np.sqrt(len(rows)))


def _spread(values: list[float], fmt: str = "{:+.3f}") -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    return f"{fmt.format(med)} [{fmt.format(min(values))}, {fmt.format(max(values))}]"


def report(results: dict[str, dict[str, Any]], plot: Path) -> None:
    rows_out = []
    panels: dict[str, dict[str, Any]] = {}
    print("task | attainable gain (holdout, best of the sweep's top 5 by CV) | baseline holdout")
    for task in TASKS:
        scores = _holdout(results, task)
        base_key = plan_key(zero_coeffs(task))
        sweep = sweep_rows(results, task)
        if base_key not in scores or not sweep:
            continue
        top = sorted(sweep, key=lambda p: -p["accuracy"])[:TOP_SWEEP]
        gains = [
            (_paired_gain(scores[plan_key(p["coeffs"])], scores[base_key]), p)
            for p in top
            if plan_key(p["coeffs"]) in scores
        ]
        if not gains:
            continue
        (attainable, att_se), _ = max(gains, key=lambda g: g[0][0])
        base_mean = statistics.mean(scores[base_key]["accuracies"])
        print(
            f"{task} | {attainable:+.4f} (row SE {att_se:.4f}) | {base_mean:.4f} "
            f"({TASKS[task].what})"
        )
        per: dict[tuple[str, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in results.values():
            if r["phase"] != "search" or r["task"] != task:
                continue
            res = r["result"]
            method = res["method"]
            for budget, trial in picks(r).items():
                key = plan_key(trial["coeffs"])
                if key not in scores:
                    continue
                gain, _ = _paired_gain(scores[key], scores[base_key])
                cell = per[(method, budget)]
                cell["seed"].append(res["seed"])
                cell["gain"].append(gain)
                cell["fraction"].append(gain / attainable if attainable > 0 else float("nan"))
                cell["cv"].append(trial["value"])
            sampled = [t for t in res["trials"] if not t["baseline"] and t["state"] == "COMPLETE"]
            if any("noop" in t for t in sampled):
                cell = per[(method, res["budget"])]
                cell["noop"].append(sum(t.get("noop", False) for t in sampled) / len(sampled))
                cell["collapsed"].append(sum(bool(t["collapsed"]) for t in sampled) / len(sampled))
            stop = res.get("stop")
            if stop is not None and res["budget"] == max(BUDGETS):
                per[(method, res["budget"])]["stopped_at"].append(
                    stop["stopped_at"] or res["budget"]
                )
        panels[task] = {"attainable": attainable, "per": per}
        for method in METHOD_ORDER:
            for budget in BUDGETS:
                cell = per.get((method, budget))
                if not cell or not cell["gain"]:
                    continue
                rows_out.append(
                    (
                        task,
                        budget,
                        method,
                        len(cell["gain"]),
                        _spread(cell["gain"]),
                        _spread([f for f in cell["fraction"]], "{:.2f}")
                        if attainable > 0
                        else "n/a",
                        _spread(cell["noop"], "{:.2f}") if cell["noop"] else "",
                        _spread(cell["collapsed"], "{:.2f}") if cell["collapsed"] else "",
                        _spread(cell["stopped_at"], "{:.0f}") if cell["stopped_at"] else "",
                    )
                )
    header = ("task", "budget", "method", "seeds", "holdout gain median [min, max]",
              "share of attainable", "no-op share", "collapsed share", "early stop at")  # fmt: skip
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows_out:
        print("| " + " | ".join(str(c) for c in row) + " |")
    _verdicts(panels)
    _stops(panels, results)
    _plot(panels, plot)


def _verdicts(panels: dict[str, Any]) -> None:
    """What the issue asks per task: does hpo's default at 32 trials reach 80% of the attainable
    gain, and does it beat random search (and a random start-up) at equal budget, seed by seed?"""
    print()
    print("per task at 32 trials: hpo's share of attainable; hpo vs random / vs random start-up")
    for task, panel in panels.items():
        per = panel["per"]
        mine = per.get(("hpo", 32), {})
        hpo_by_seed = dict(zip(mine.get("seed", []), mine.get("gain", []), strict=True))
        hpo32 = list(hpo_by_seed.values())
        if not hpo32:
            continue
        share = (
            f"{statistics.median(hpo32) / panel['attainable']:.2f}"
            if panel["attainable"] > 0
            else "n/a (nothing attainable)"
        )
        parts = [f"  {task}: median share {share}"]
        for other in ("random", "hpo-random-startup", "sobol", "before"):
            cell = per.get((other, 32), {})
            theirs = dict(zip(cell.get("seed", []), cell.get("gain", []), strict=True))
            seeds = sorted(set(theirs) & set(hpo_by_seed))
            if not seeds:
                continue
            wins = sum(hpo_by_seed[k] > theirs[k] for k in seeds)
            ties = sum(hpo_by_seed[k] == theirs[k] for k in seeds)
            diff = statistics.median(hpo_by_seed[k] - theirs[k] for k in seeds)
            parts.append(
                f"vs {other}: {wins} wins, {ties} ties of {len(seeds)}, "
                f"median paired difference {diff:+.4f}"
            )
        print("; ".join(parts))


def _stops(panels: dict[str, Any], results: dict[str, dict[str, Any]]) -> None:
    """The stop rule on hpo's 64-trial runs: trials saved and holdout gain lost."""
    print()
    print("early stop (hpo, budget 64): trials run, saved, holdout gain at the stop vs at 64")
    for task in panels:
        scores = _holdout(results, task)
        base = scores[plan_key(zero_coeffs(task))]
        saved, lost = [], []
        for r in results.values():
            if r["phase"] != "search" or r["task"] != task:
                continue
            res = r["result"]
            if res["method"] != "hpo" or res["budget"] != max(BUDGETS) or not res.get("stop"):
                continue
            chosen = picks(r)
            at = res["stop"]["stopped_at"]
            full = _paired_gain(scores[plan_key(chosen[max(BUDGETS)]["coeffs"])], base)[0]
            if at:
                early = _paired_gain(scores[plan_key(chosen[-at]["coeffs"])], base)[0]
                saved.append(max(BUDGETS) - at)
                lost.append(full - early)
            else:
                saved.append(0)
                lost.append(0.0)
        if saved:
            print(
                f"  {task}: trials saved {_spread(saved, '{:.0f}')}, "
                f"holdout gain lost {_spread(lost)} (mean saved {statistics.mean(saved):.1f})"
            )


def _plot(panels: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.7), sharey=False)
    axes = np.atleast_1d(axes)
    for ax, (task, panel) in zip(axes, panels.items(), strict=True):
        for i, method in enumerate(METHOD_ORDER):
            xs, ys, lo, hi = [], [], [], []
            for budget in BUDGETS:
                cell = panel["per"].get((method, budget))
                if not cell or not cell["gain"]:
                    continue
                g = cell["gain"]
                xs.append(budget * (1 + 0.03 * (i - 2)))
                ys.append(statistics.median(g))
                lo.append(statistics.median(g) - min(g))
                hi.append(max(g) - statistics.median(g))
            if xs:
                ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=2, label=method)
        ax.axhline(panel["attainable"], color="k", linestyle="--", linewidth=1)
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(BUDGETS), [str(b) for b in BUDGETS])
        ax.set_title(task)
        ax.set_xlabel("trials")
    axes[0].set_ylabel("holdout gain over the baseline")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.suptitle("Picked plan's holdout gain (median, min-max over seeds); dashed: attainable")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"\nplot: {path}")


if __name__ == "__main__":
    import sys

    with open(sys.argv[1]) as lines:
        records = [json.loads(line) for line in lines]
    report({r["key"]: r for r in records}, Path(sys.argv[2]))
