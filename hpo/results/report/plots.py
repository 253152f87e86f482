"""The report's figures, drawn with matplotlib's object API (no pyplot state, Agg canvas).

Each drawer returns a Figure, or a sentence saying why it drew nothing (too few trials, no reruns)
so the page can show that gap instead of an empty plot.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from hpo.lazy import lazy_import
from hpo.results.report.collect import (
    PLACEMENT_ORDER,
    TOP_N,
    StudyData,
    Trial,
    complete_trials,
    l1_alpha,
    l2_alpha,
    placement_of,
    ranked_trials,
)
from hpo.results.rerun import RerunStats

if TYPE_CHECKING:
    import matplotlib
    import numpy as np
    import optuna
    from matplotlib import colors as mpl_colors
    from matplotlib import figure as mpl_figure
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from optuna import distributions as optuna_distributions
else:
    np = lazy_import("numpy")
    matplotlib = lazy_import("matplotlib")
    mpl_colors = lazy_import("matplotlib.colors")
    mpl_figure = lazy_import("matplotlib.figure")
    optuna = lazy_import("optuna")
    optuna_distributions = lazy_import("optuna.distributions")

__all__ = [
    "FIGURES",
    "MIN_TRIALS_FOR_IMPORTANCE",
    "PLACEMENT_COLORS",
    "alphas_figure",
    "folds_figure",
    "history_figure",
    "importances_figure",
    "placement_figure",
    "png",
    "rerun_figure",
]

MIN_TRIALS_FOR_IMPORTANCE = 5
PLACEMENT_COLORS = {
    "activity": "#1f77b4",
    "kernel": "#ff7f0e",
    "both": "#2ca02c",
    "none": "#7f7f7f",
}


def _figure(width: float, height: float) -> Figure:
    return mpl_figure.Figure(figsize=(width, height), dpi=100, layout="constrained")


def _tidy(ax: Axes) -> None:
    ax.grid(True, color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def png(fig: Figure) -> bytes:
    """``fig`` as PNG bytes on a white background."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor="white")
    return buffer.getvalue()


def history_figure(trials: Sequence[Trial]) -> Figure | str:
    """Each trial's score in trial order, pruned trials where they stopped, the best so far."""
    complete = complete_trials(trials)
    if not complete:
        return "no complete trial yet"
    fig = _figure(9.0, 4.0)
    ax = fig.add_subplot()
    _tidy(ax)
    xs = [t.number for t in complete]
    ys = [float(t.value or 0.0) for t in complete]
    ax.scatter(xs, ys, s=28, color="#1f77b4", alpha=0.8, label="complete trial", zorder=3)
    pruned = [t for t in trials if t.state == "PRUNED" and t.last_step_value is not None]
    if pruned:
        ax.scatter(
            [t.number for t in pruned],
            [float(t.last_step_value or 0.0) for t in pruned],
            marker="x",
            s=26,
            color="#999999",
            label="pruned (accuracy when stopped)",
            zorder=2,
        )
    best, best_x, best_y = -math.inf, [], []
    for t in sorted(complete, key=lambda t: t.number):
        best = max(best, t.value or -math.inf)
        best_x.append(t.number)
        best_y.append(best)
    last = max(t.number for t in trials)
    if last > best_x[-1]:  # carry the best on over the trials that did not beat it
        best_x.append(last)
        best_y.append(best)
    ax.step(best_x, best_y, where="post", color="#d62728", linewidth=2, label="best so far")
    ax.set_xlabel("trial number")
    ax.set_ylabel("out-of-fold accuracy")
    ax.set_title("Optimization history")
    ax.legend(loc="lower right", frameon=False)
    return fig


def _derived_features(
    complete: Sequence[Trial], n_layers: int
) -> tuple[list[str], list[dict[str, Any]], dict[str, Any]]:
    """Per layer: placement, log10 L1 and log10 L2 alpha ('off' = below the smallest seen)."""
    names: list[str] = []
    rows: list[dict[str, Any]] = [{} for _ in complete]
    dists: dict[str, Any] = {}
    for i in range(n_layers):
        layers = [t.plan.layers[i] for t in complete if t.plan is not None]
        placements = [placement_of(p) for p in layers]
        if len(set(placements)) > 1:
            name = f"layer {i + 1} placement"
            choices = tuple(p for p in PLACEMENT_ORDER if p in placements)
            dists[name] = optuna_distributions.CategoricalDistribution(choices)
            for row, value in zip(rows, placements, strict=True):
                row[name] = value
            names.append(name)
        for label, get in (("L1", l1_alpha), ("L2", l2_alpha)):
            alphas = np.array([get(p) for p in layers])
            on = alphas[alphas > 0]
            if len(on) == 0 or (len(on) == len(alphas) and np.ptp(np.log10(on)) == 0):
                continue
            off_value = float(np.log10(on.min())) - 1.0
            logs = np.where(alphas > 0, np.log10(np.where(alphas > 0, alphas, 1.0)), off_value)
            name = f"layer {i + 1} {label} alpha"
            dists[name] = optuna_distributions.FloatDistribution(
                float(logs.min()), float(logs.max())
            )
            for row, value in zip(rows, logs, strict=True):
                row[name] = float(value)
            names.append(name)
    return names, rows, dists


def importances_figure(trials: Sequence[Trial], n_layers: int) -> Figure | str:
    """fANOVA importance of each layer's placement and log alphas."""
    complete = [t for t in complete_trials(trials) if t.plan is not None]
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        return (
            f"needs at least {MIN_TRIALS_FOR_IMPORTANCE} complete trials; "
            f"this study has {len(complete)}"
        )
    names, rows, dists = _derived_features(complete, n_layers)
    if not names:
        return "every complete trial used the same settings"
    # Optuna's own importance works on trial params, but the alphas are conditional params
    # (absent when a penalty is off) and would drop out; a throwaway in-memory study with one
    # complete row of derived settings per trial keeps them in.
    shadow = optuna.create_study(direction="maximize")
    for trial, row in zip(complete, rows, strict=True):
        shadow.add_trial(
            optuna.trial.create_trial(
                params=row, distributions={k: dists[k] for k in row}, value=trial.value
            )
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            scores = optuna.importance.get_param_importances(
                shadow, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
            )
        except (RuntimeError, ValueError) as exc:
            return f"importance could not be computed ({exc})"
    items = sorted(scores.items(), key=lambda kv: kv[1])
    fig = _figure(8.0, 1.4 + 0.42 * len(items))
    ax = fig.add_subplot()
    _tidy(ax)
    colors = [
        PLACEMENT_COLORS["both"] if "placement" in k else "#6a51a3" if "L1" in k else "#e6550d"
        for k, _ in items
    ]
    ax.barh([k for k, _ in items], [v for _, v in items], color=colors)
    for y, (_, v) in enumerate(items):
        ax.text(v, y, f" {v:.2f}", va="center", fontsize=9)
    ax.set_xlim(0, max(1e-9, max(v for _, v in items)) * 1.18)
    ax.set_xlabel("share of the accuracy variation explained (fANOVA)")
    ax.set_title(f"What matters: setting importances over {len(complete)} complete trials")
    return fig


def _layer_title(trials: Sequence[Trial], index: int) -> str:
    """``hidden layer 2``, or a builder model's Keras layer name (``layer 'wide'``)."""
    names = next((t.plan.names for t in trials if t.plan is not None and t.plan.names), ())
    return f"layer {names[index]!r}" if index < len(names) else f"hidden layer {index + 1}"


def placement_figure(trials: Sequence[Trial], n_layers: int) -> Figure | str:
    """Per hidden layer, the scores grouped by where the penalty sits."""
    complete = [t for t in complete_trials(trials) if t.plan is not None]
    if not complete:
        return "no complete trial with a recorded plan"
    fig = _figure(min(14.0, 1.0 + 4.2 * n_layers), 4.0)
    axes = fig.subplots(1, n_layers, sharey=True, squeeze=False)[0]
    rng = np.random.default_rng(0)
    for i, ax in enumerate(axes):
        _tidy(ax)
        groups: dict[str, list[float]] = {}
        for t in complete:
            assert t.plan is not None
            groups.setdefault(placement_of(t.plan.layers[i]), []).append(float(t.value or 0.0))
        names = [p for p in PLACEMENT_ORDER if p in groups]
        ax.boxplot(
            [groups[p] for p in names],
            positions=range(len(names)),
            widths=0.5,
            showfliers=False,
            medianprops={"color": "black"},
        )
        for x, p in enumerate(names):
            values = groups[p]
            ax.scatter(
                x + rng.uniform(-0.15, 0.15, len(values)),
                values,
                s=22,
                alpha=0.75,
                color=PLACEMENT_COLORS[p],
                zorder=3,
            )
        ax.set_xticks(range(len(names)), [f"{p}\n(n={len(groups[p])})" for p in names])
        ax.set_title(_layer_title(complete, i))
        if i == 0:
            ax.set_ylabel("out-of-fold accuracy")
    fig.suptitle("Accuracy by where the penalty sits")
    return fig


def alphas_figure(trials: Sequence[Trial], n_layers: int) -> Figure | str:
    """Per hidden layer, L1 against L2 alpha coloured by score; off alphas on their own line."""
    complete = [t for t in complete_trials(trials) if t.plan is not None]
    if not complete:
        return "no complete trial with a recorded plan"
    values = np.array([t.value for t in complete], dtype=float)
    norm = mpl_colors.Normalize(
        vmin=float(values.min()), vmax=float(max(values.max(), values.min() + 1e-9))
    )
    best = ranked_trials(complete)[0]
    fig = _figure(min(15.0, 1.2 + 4.6 * n_layers), 4.3)
    axes = fig.subplots(1, n_layers, squeeze=False)[0]
    scatter = None
    for i, ax in enumerate(axes):
        _tidy(ax)
        layers = [t.plan.layers[i] for t in complete if t.plan is not None]
        l1 = np.array([l1_alpha(p) for p in layers])
        l2 = np.array([l2_alpha(p) for p in layers])
        on = np.concatenate([l1[l1 > 0], l2[l2 > 0]])
        low = float(on.min()) if len(on) else 1e-6
        off = low / 10**0.8  # "off" sits just below the smallest alpha, on its own line
        xs, ys = np.where(l1 > 0, l1, off), np.where(l2 > 0, l2, off)
        order = np.argsort(values)  # best drawn last, on top
        scatter = ax.scatter(
            xs[order], ys[order], c=values[order], cmap="viridis", norm=norm, s=34, zorder=3
        )
        b = complete.index(best)
        ax.scatter(
            [xs[b]],
            [ys[b]],
            marker="*",
            s=260,
            facecolor="none",
            edgecolor="#d62728",
            linewidth=1.6,
            zorder=4,
            label=f"best (trial {best.number})",
        )
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis_line in (ax.axvline, ax.axhline):
            axis_line(off * 10**0.4, color="#bbbbbb", linestyle="--", linewidth=0.8)
        ax.set_xlabel("L1 alpha (left of the dashed line: off)")
        ax.set_ylabel("L2 alpha (below the dashed line: off)")
        ax.set_title(_layer_title(complete, i))
        ax.legend(loc="upper right", frameon=False, fontsize=8)
    assert scatter is not None
    fig.colorbar(scatter, ax=list(axes), label="out-of-fold accuracy", shrink=0.9)
    fig.suptitle("L1 vs L2 alpha, coloured by accuracy")
    return fig


def folds_figure(trials: Sequence[Trial], n_folds: int) -> Figure | str:
    """The single-fold accuracies of the best trials next to their out-of-fold score."""
    top = [t for t in ranked_trials(trials) if t.folds][:TOP_N]
    if not top:
        return "no complete trial with per-fold accuracies"
    palette = matplotlib.colormaps["tab10"]
    fig = _figure(9.0, 1.5 + 0.5 * len(top))
    ax = fig.add_subplot()
    _tidy(ax)
    k = max(1, n_folds)
    for y, t in enumerate(top):
        folds = np.array(t.folds)
        ax.hlines(y, folds.min(), folds.max(), color="#cccccc", linewidth=3, zorder=1)
        for j, a in enumerate(folds):
            ax.scatter(
                a,
                y,
                s=26,
                color=palette(j % k % 10),
                zorder=2,
                label=f"fold {j % k + 1}" if y == 0 and j < k else None,
            )
        ax.scatter(
            float(t.value or 0.0),
            y,
            marker="D",
            s=48,
            color="black",
            zorder=3,
            label="out-of-fold accuracy" if y == 0 else None,
        )
    ax.set_yticks(range(len(top)), [f"trial {t.number}" for t in top])
    ax.invert_yaxis()
    ax.set_xlabel("validation accuracy")
    ax.set_title(f"Per-fold spread of the best {len(top)} trials")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=8)
    return fig


def rerun_figure(reruns: Sequence[RerunStats]) -> Figure | str:
    """Rerun scores per trial with their mean, 95% interval and the score in the search."""
    if not reruns:
        return "no reruns recorded"
    ordered = sorted(reruns, key=lambda r: (-r.mean, r.trial))
    fig = _figure(9.0, 1.6 + 0.55 * len(ordered))
    ax = fig.add_subplot()
    _tidy(ax)
    rng = np.random.default_rng(1)
    for y, r in enumerate(ordered):
        ax.scatter(
            r.accuracies,
            y + rng.uniform(-0.12, 0.12, len(r.accuracies)),
            s=20,
            color="#1f77b4",
            alpha=0.7,
            zorder=2,
            label="rerun score (one seed)" if y == 0 else None,
        )
        if r.ci95 is not None:
            ax.errorbar(
                r.mean,
                y,
                xerr=[[r.mean - r.ci95[0]], [r.ci95[1] - r.mean]],
                fmt="s",
                color="black",
                capsize=5,
                zorder=3,
                label="mean and 95% CI" if y == 0 else None,
            )
        else:
            ax.scatter(r.mean, y, marker="s", color="black", zorder=3)
        if r.original is not None:
            ax.scatter(
                r.original,
                y,
                s=70,
                facecolor="none",
                edgecolor="#d62728",
                linewidth=1.5,
                zorder=4,
                label="score in the search" if y == 0 else None,
            )
    ax.set_yticks(range(len(ordered)), [f"trial {r.trial}" for r in ordered])
    ax.invert_yaxis()
    ax.set_xlabel("out-of-fold accuracy")
    seeds = max(len(r.accuracies) for r in ordered)
    ax.set_title(f"Reruns with {seeds} fresh seeds")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=8)
    return fig


FIGURES: dict[str, Callable[[StudyData], Figure | str]] = {
    "history": lambda data: history_figure(data.trials),
    "importances": lambda data: importances_figure(data.trials, data.n_layers),
    "placement": lambda data: placement_figure(data.trials, data.n_layers),
    "alphas": lambda data: alphas_figure(data.trials, data.n_layers),
    "folds": lambda data: folds_figure(data.trials, data.n_folds),
    "rerun": lambda data: rerun_figure(data.reruns),
}
"""Every figure of the report by name, in page order."""
