"""The study report: one self-contained HTML page and its PNG plots, readable offline.

Plots (matplotlib, Agg, no pyplot state): optimization history, setting importances, accuracy by
placement, L1 vs L2 alpha by accuracy, the best trials' per-fold spread, and reruns when there
are any. Each is written to ``DIR/<name>.png`` and embedded in ``DIR/report.html`` as base64, so
the page can be mailed or opened from disk with nothing fetched at view time.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hpo._errors import HpoError
from hpo._logging import get_logger
from hpo.space import LayerPenalty, RegularizationPlan
from hpo.spec import StudySpec

if TYPE_CHECKING:
    import optuna
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from hpo.rerun import RerunStats

__all__ = ["MIN_TRIALS_FOR_IMPORTANCE", "Report", "placement_of", "write_report"]

_log = get_logger("report")
MIN_TRIALS_FOR_IMPORTANCE = 5
_TOP_N = 10
_PLACEMENT_ORDER = ("activity", "kernel", "both", "none")
_PLACEMENT_COLORS = {
    "activity": "#1f77b4",
    "kernel": "#ff7f0e",
    "both": "#2ca02c",
    "none": "#7f7f7f",
}


def placement_of(layer: LayerPenalty) -> str:
    """Where a layer's penalty sits: activity, kernel, both, or none."""
    if layer.has_activity and layer.has_kernel:
        return "both"
    if layer.has_activity:
        return "activity"
    if layer.has_kernel:
        return "kernel"
    return "none"


def _l1(layer: LayerPenalty) -> float:
    return max(layer.l1_activity, layer.l1_kernel)


def _l2(layer: LayerPenalty) -> float:
    return max(layer.l2_activity, layer.l2_kernel)


@dataclass(frozen=True)
class _Trial:
    number: int
    state: str
    value: float | None
    plan: RegularizationPlan | None
    folds: tuple[float, ...]
    seconds: float
    seed: int | None
    last_step_value: float | None


@dataclass
class _Plot:
    name: str
    title: str
    how_to_read: str
    png: bytes | None = None
    missing: str = ""


@dataclass
class Report:
    """What :func:`write_report` wrote."""

    html_path: Path
    pngs: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


# --- data -----------------------------------------------------------------------------------


def _collect(study: optuna.Study) -> list[_Trial]:
    out = []
    for t in study.get_trials(deepcopy=False):
        raw_plan = t.user_attrs.get("plan")
        try:
            plan = RegularizationPlan.from_dict(raw_plan) if raw_plan else None
        except (KeyError, TypeError, ValueError):
            plan = None
        steps = sorted(t.intermediate_values)
        out.append(
            _Trial(
                number=t.number,
                state=t.state.name,
                value=t.value if t.state.name == "COMPLETE" else None,
                plan=plan,
                folds=tuple(float(a) for a in t.user_attrs.get("fold_accuracies", ())),
                seconds=float(t.user_attrs.get("seconds", 0.0) or 0.0),
                seed=t.user_attrs.get("seed"),
                last_step_value=t.intermediate_values[steps[-1]] if steps else None,
            )
        )
    return out


def _complete(trials: Sequence[_Trial]) -> list[_Trial]:
    return [t for t in trials if t.value is not None and math.isfinite(t.value)]


def _ranked(trials: Sequence[_Trial]) -> list[_Trial]:
    return sorted(_complete(trials), key=lambda t: (-(t.value or 0.0), t.number))


# --- figures ---------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _tidy(ax: Axes) -> None:
    ax.grid(True, color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor="white")
    return buffer.getvalue()


def _history(trials: Sequence[_Trial]) -> Figure | str:
    complete = _complete(trials)
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
    complete: Sequence[_Trial], n_layers: int
) -> tuple[list[str], list[dict[str, Any]], dict[str, Any]]:
    """Per layer: placement, log10 L1 and log10 L2 alpha ('off' = below the smallest seen)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    names: list[str] = []
    rows: list[dict[str, Any]] = [{} for _ in complete]
    dists: dict[str, Any] = {}
    for i in range(n_layers):
        layers = [t.plan.layers[i] for t in complete if t.plan is not None]
        placements = [placement_of(p) for p in layers]
        if len(set(placements)) > 1:
            name = f"layer {i + 1} placement"
            choices = tuple(p for p in _PLACEMENT_ORDER if p in placements)
            dists[name] = CategoricalDistribution(choices)
            for row, value in zip(rows, placements, strict=True):
                row[name] = value
            names.append(name)
        for label, get in (("L1", _l1), ("L2", _l2)):
            alphas = np.array([get(p) for p in layers])
            on = alphas[alphas > 0]
            if len(on) == 0 or (len(on) == len(alphas) and np.ptp(np.log10(on)) == 0):
                continue
            off_value = float(np.log10(on.min())) - 1.0
            logs = np.where(alphas > 0, np.log10(np.where(alphas > 0, alphas, 1.0)), off_value)
            name = f"layer {i + 1} {label} alpha"
            dists[name] = FloatDistribution(float(logs.min()), float(logs.max()))
            for row, value in zip(rows, logs, strict=True):
                row[name] = float(value)
            names.append(name)
    return names, rows, dists


def _importances(trials: Sequence[_Trial], n_layers: int) -> Figure | str:
    import warnings

    import optuna

    complete = [t for t in _complete(trials) if t.plan is not None]
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
        _PLACEMENT_COLORS["both"] if "placement" in k else "#6a51a3" if "L1" in k else "#e6550d"
        for k, _ in items
    ]
    ax.barh([k for k, _ in items], [v for _, v in items], color=colors)
    for y, (_, v) in enumerate(items):
        ax.text(v, y, f" {v:.2f}", va="center", fontsize=9)
    ax.set_xlim(0, max(1e-9, max(v for _, v in items)) * 1.18)
    ax.set_xlabel("share of the accuracy variation explained (fANOVA)")
    ax.set_title(f"What matters: setting importances over {len(complete)} complete trials")
    return fig


def _placement(trials: Sequence[_Trial], n_layers: int) -> Figure | str:
    complete = [t for t in _complete(trials) if t.plan is not None]
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
        names = [p for p in _PLACEMENT_ORDER if p in groups]
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
                color=_PLACEMENT_COLORS[p],
                zorder=3,
            )
        ax.set_xticks(range(len(names)), [f"{p}\n(n={len(groups[p])})" for p in names])
        ax.set_title(f"hidden layer {i + 1}")
        if i == 0:
            ax.set_ylabel("out-of-fold accuracy")
    fig.suptitle("Accuracy by where the penalty sits")
    return fig


def _alphas(trials: Sequence[_Trial], n_layers: int) -> Figure | str:
    from matplotlib import colors as mcolors

    complete = [t for t in _complete(trials) if t.plan is not None]
    if not complete:
        return "no complete trial with a recorded plan"
    values = np.array([t.value for t in complete], dtype=float)
    norm = mcolors.Normalize(
        vmin=float(values.min()), vmax=float(max(values.max(), values.min() + 1e-9))
    )
    best = _ranked(complete)[0]
    fig = _figure(min(15.0, 1.2 + 4.6 * n_layers), 4.3)
    axes = fig.subplots(1, n_layers, squeeze=False)[0]
    scatter = None
    for i, ax in enumerate(axes):
        _tidy(ax)
        layers = [t.plan.layers[i] for t in complete if t.plan is not None]
        l1 = np.array([_l1(p) for p in layers])
        l2 = np.array([_l2(p) for p in layers])
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
        ax.set_title(f"hidden layer {i + 1}")
        ax.legend(loc="upper right", frameon=False, fontsize=8)
    assert scatter is not None
    fig.colorbar(scatter, ax=list(axes), label="out-of-fold accuracy", shrink=0.9)
    fig.suptitle("L1 vs L2 alpha, coloured by accuracy")
    return fig


def _folds(trials: Sequence[_Trial], n_folds: int) -> Figure | str:
    top = [t for t in _ranked(trials) if t.folds][:_TOP_N]
    if not top:
        return "no complete trial with per-fold accuracies"
    from matplotlib import colormaps

    palette = colormaps["tab10"]
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


def _rerun_figure(reruns: Sequence[RerunStats]) -> Figure | str:
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


# --- HTML ------------------------------------------------------------------------------------

_CSS = """
body{margin:0;background:#f4f5f7;color:#1d2330;font:15px/1.5 system-ui,-apple-system,"Segoe UI",
Roboto,Helvetica,Arial,sans-serif}
main{max-width:1080px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:28px;margin:8px 0 4px}h2{font-size:20px;margin:0 0 6px}
code{background:#eef0f4;padding:1px 5px;border-radius:4px;font-size:92%}
.muted{color:#5d6676}.desc{font-size:17px;margin:4px 0 10px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:18px 0}
.card{background:#fff;border-radius:10px;padding:12px 16px;min-width:130px;
box-shadow:0 1px 3px rgba(0,0,0,.08)}
.card b{display:block;font-size:22px}.card span{color:#5d6676;font-size:13px}
section{background:#fff;border-radius:10px;padding:18px 22px;margin:18px 0;
box-shadow:0 1px 3px rgba(0,0,0,.08)}
.how{background:#f7f9fc;border-left:4px solid #7aa2d6;padding:8px 12px;margin:8px 0 12px;
color:#33404f}
img{max-width:100%;height:auto;display:block;margin:8px auto}
table{border-collapse:collapse;margin:8px 0;font-size:14px}
th,td{padding:4px 10px;border-bottom:1px solid #e6e8ec;text-align:left;vertical-align:top}
th{background:#f7f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:4px 24px}
.verdict{font-weight:600}.missing{color:#8a6d3b;background:#fcf8e3;padding:8px 12px;
border-radius:6px}
"""


def _esc(text: object) -> str:
    return html.escape(str(text))


def _table(
    header: Sequence[str], rows: Sequence[Sequence[object]], numeric: set[int] | None = None
) -> str:
    numeric = numeric or set()
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{_esc(c)}</td>' if i in numeric else f"<td>{_esc(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _alpha(value: float) -> str:
    return "-" if value == 0 else f"{value:.2e}"


def _plan_rows(plan: RegularizationPlan) -> list[list[str]]:
    return [
        [
            str(i),
            placement_of(p),
            _alpha(p.l1_activity),
            _alpha(p.l2_activity),
            _alpha(p.l1_kernel),
            _alpha(p.l2_kernel),
        ]
        for i, p in enumerate(plan.layers, 1)
    ]


def _plan_summary(plan: RegularizationPlan | None) -> str:
    if plan is None:
        return "-"
    parts = []
    for i, p in enumerate(plan.layers, 1):
        terms = [f"L1 {_l1(p):.1e}" if _l1(p) else "", f"L2 {_l2(p):.1e}" if _l2(p) else ""]
        body = " + ".join(t for t in terms if t) or "none"
        parts.append(f"h{i}: {body} ({placement_of(p)})")
    return "; ".join(parts)


def _img(plot: _Plot) -> str:
    if plot.png is None:
        return f'<p class="missing">Not drawn: {_esc(plot.missing)}.</p>'
    data = base64.b64encode(plot.png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_esc(plot.title)}">'


def _section(plot: _Plot) -> str:
    return (
        f'<section id="{plot.name}"><h2>{_esc(plot.title)}</h2>'
        f'<p class="how"><b>How to read it.</b> {plot.how_to_read}</p>{_img(plot)}</section>'
    )


def _rerun_section(plot: _Plot, reruns: Sequence[RerunStats], name: str) -> str:
    from hpo.rerun import verdict

    if not reruns:
        return (
            f'<section id="rerun"><h2>{_esc(plot.title)}</h2><p class="missing">No reruns yet. '
            f"Run <code>hpo rerun {_esc(name)} --top 3 --seeds 5</code> to see whether the best "
            "trials differ beyond run-to-run noise, then write the report again.</p></section>"
        )
    ordered = sorted(reruns, key=lambda r: (-r.mean, r.trial))
    rows = [
        [
            r.trial,
            "-" if r.original is None else f"{r.original:.4f}",
            f"{r.mean:.4f}",
            "-" if math.isnan(r.std) else f"{r.std:.4f}",
            "-" if r.ci95 is None else f"{r.ci95[0]:.4f} – {r.ci95[1]:.4f}",
            f"{len(r.accuracies)} x {r.repeats}",
        ]
        for r in ordered
    ]
    table = _table(
        ["trial", "search score", "rerun mean", "std", "95% CI", "seeds x repeats"],
        rows,
        numeric={1, 2, 3},
    )
    lines = "".join(
        f'<li class="{"verdict" if line.startswith("verdict") else ""}">{_esc(line)}</li>'
        for line in verdict(ordered)
    )
    return (
        f'<section id="rerun"><h2>{_esc(plot.title)}</h2>'
        f'<p class="how"><b>How to read it.</b> {plot.how_to_read}</p>{_img(plot)}{table}'
        f"<ul>{lines}</ul></section>"
    )


def _spec_html(spec: StudySpec) -> str:
    from hpo.dashboard import search_rows, spec_sections

    rows = search_rows(spec)
    blocks = [f"<div><h3>Search space</h3>{_table(rows[0], rows[1:])}</div>"]
    for title, items in spec_sections(spec):
        blocks.append(f"<div><h3>{_esc(title)}</h3>{_table(['setting', 'value'], items)}</div>")
    return (
        '<section id="settings"><h2>Study settings</h2><p class="muted">As stored on the study '
        "when it was created; every trial used them.</p>"
        f'<div class="grid">{"".join(blocks)}</div></section>'
    )


def _best_confusion(study: optuna.Study, number: int, artifact_dir: Path | None) -> bytes | None:
    from hpo.artifacts import open_artifact_store, trial_artifacts

    if artifact_dir is None or not artifact_dir.is_dir():
        return None
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    for artifact in trial_artifacts(study, trial):
        if artifact.filename.endswith("-confusion.png"):
            store = open_artifact_store(artifact_dir, create=False)
            try:
                with store.open_reader(artifact.artifact_id) as fh:
                    return bytes(fh.read())
            except Exception:  # a store moved or cleaned: the report goes on without it
                _log.debug("confusion matrix of trial %d not readable", number, exc_info=True)
    return None


def write_report(
    study: optuna.Study,
    out_dir: str | Path,
    *,
    shown_storage: str = "",
    artifact_dir: Path | None = None,
) -> Report:
    """Write ``out_dir/report.html`` and its PNGs for ``study``."""
    from hpo.rerun import load_reruns
    from hpo.worker import stored_spec

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HpoError(
            f"{out}: cannot create the report folder ({exc.strerror}); pick --out"
        ) from None
    spec = stored_spec(study)
    trials = _collect(study)
    complete = _complete(trials)
    with_plan = [t for t in complete if t.plan is not None]
    n_layers = (
        len(spec.model.hidden)
        if spec is not None
        else (len(with_plan[0].plan.layers) if with_plan and with_plan[0].plan else 1)
    )
    n_folds = spec.cv.folds if spec is not None else max((len(t.folds) for t in trials), default=1)
    reruns = list(load_reruns(study).values())
    start_up = spec.sampler.n_startup_trials if spec is not None else 0

    plots = [
        _Plot(
            "history",
            "Optimization history",
            "Each blue dot is one trial's out-of-fold accuracy, in the order the trials started; "
            "the red line is the best so far. "
            + (f"The first {start_up} trials are random start-up trials; " if start_up else "")
            + "after that the sampler (TPE) proposes settings near the good ones. A line that has "
            "stopped rising means more trials of this search are unlikely to help. Grey crosses "
            "are pruned trials at the accuracy they had when stopped.",
        ),
        _Plot(
            "importances",
            "What matters",
            "How much of the variation in accuracy each setting explains (fANOVA over the complete "
            "trials; the bars add up to 1). Alphas are read on a log scale, an alpha that is off "
            "counting as smaller than any used. Importance says which knob matters, not which "
            "value is better: the two plots below show that. With few trials these shares are "
            "rough.",
        ),
        _Plot(
            "placement",
            "Accuracy by placement",
            "Trials grouped, per hidden layer, by where its penalty sits: on the layer's outputs "
            "(<i>activity</i>), on its weights (<i>kernel</i>), or <i>both</i>. Each dot is a "
            "trial; the box spans the middle half of the trials, the black line is the median. "
            "A group whose box sits higher works better; groups with few trials say little.",
        ),
        _Plot(
            "alphas",
            "L1 vs L2 alpha",
            "Each point is a trial, placed by the L1 and L2 coefficient it used on that layer "
            "(log scales; points beyond the dashed lines had that penalty off) and coloured by "
            "accuracy, yellow best. The red star is the best trial. A bright cluster marks the "
            "alpha region that works; a random mix of colours means the alphas hardly matter "
            "within the range searched.",
        ),
        _Plot(
            "folds",
            "Per-fold spread of the best trials",
            "One row per trial, best first. Coloured dots are the validation accuracies of the "
            "single folds, the black diamond is the trial's out-of-fold accuracy (the score the "
            "search maximizes). The grey bar spans the folds. When the best trials differ by less "
            "than their folds spread, the ranking may be noise: rerun them.",
        ),
        _Plot(
            "rerun",
            "Reruns: beyond noise?",
            "Each row is a trial rerun with fresh seeds (new initial weights and batch order). "
            "Blue dots are the rerun scores, the black square and bar their mean and 95% "
            "confidence interval, the open red circle the score the trial got in the search. "
            "Search scores tend to sit right of the rerun mean because the best of many noisy "
            "scores was picked. Trials whose intervals overlap are not clearly different; the "
            "verdict below uses Welch's t-test at 5%.",
        ),
    ]
    drawers = {
        "history": lambda: _history(trials),
        "importances": lambda: _importances(trials, n_layers),
        "placement": lambda: _placement(trials, n_layers),
        "alphas": lambda: _alphas(trials, n_layers),
        "folds": lambda: _folds(trials, n_folds),
        "rerun": lambda: _rerun_figure(reruns),
    }
    report = Report(html_path=out / "report.html")
    for plot in plots:
        drawn = drawers[plot.name]()
        if isinstance(drawn, str):
            plot.missing = drawn
            report.skipped[plot.name] = drawn
            continue
        plot.png = _png(drawn)
        path = out / f"{plot.name}.png"
        path.write_bytes(plot.png)
        report.pngs.append(path)

    ranked = _ranked(trials)
    best = ranked[0] if ranked else None
    confusion = _best_confusion(study, best.number, artifact_dir) if best else None
    if confusion is not None:
        path = out / "best-confusion.png"
        path.write_bytes(confusion)
        report.pngs.append(path)
    report.html_path.write_text(
        _page(study, spec, trials, best, plots, reruns, confusion, shown_storage),
        encoding="utf-8",
    )
    return report


def _page(
    study: optuna.Study,
    spec: StudySpec | None,
    trials: Sequence[_Trial],
    best: _Trial | None,
    plots: Sequence[_Plot],
    reruns: Sequence[RerunStats],
    confusion: bytes | None,
    shown_storage: str,
) -> str:
    name = study.study_name
    counts = {s: sum(1 for t in trials if t.state == s) for s in ("COMPLETE", "PRUNED", "FAIL")}
    hours = sum(t.seconds for t in trials) / 3600
    cards = [
        ("best accuracy", f"{best.value:.4f}" if best and best.value is not None else "-"),
        ("best trial", f"#{best.number}" if best else "-"),
        ("complete trials", str(counts["COMPLETE"])),
        ("pruned / failed", f"{counts['PRUNED']} / {counts['FAIL']}"),
        ("training time", f"{hours:.2f} h" if hours >= 1 else f"{hours * 60:.1f} min"),
    ]
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>hpo report: {_esc(name)}</title><style>{_CSS}</style></head><body><main>",
        f"<header><h1>Study <code>{_esc(name)}</code></h1>",
    ]
    if spec is not None and spec.description:
        parts.append(f'<p class="desc">{_esc(spec.description)}</p>')
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    where = f" from {_esc(shown_storage)}" if shown_storage else ""
    parts.append(f'<p class="muted">Report written {generated}{where} by <code>hpo report</code>.')
    if spec is not None:
        parts.append(
            f" Every trial: {spec.cv.folds}-fold cross-validation, {spec.model.epochs} epochs, "
            "scored by out-of-fold accuracy."
        )
    parts.append("</p></header>")
    parts.append(
        '<div class="cards">'
        + "".join(f"<div class=card><b>{_esc(v)}</b><span>{_esc(k)}</span></div>" for k, v in cards)
        + "</div>"
    )
    parts.append(_best_section(best, confusion))
    for plot in plots:
        if plot.name == "rerun":
            parts.append(_rerun_section(plot, reruns, name))
        else:
            parts.append(_section(plot))
    parts.append(_top_section(trials))
    if spec is not None:
        parts.append(_spec_html(spec))
    parts.append("</main></body></html>")
    return "\n".join(parts)


def _best_section(best: _Trial | None, confusion: bytes | None) -> str:
    if best is None:
        return '<section id="best"><h2>Best trial</h2><p class="missing">No complete trial yet.</p></section>'
    parts = [
        f'<section id="best"><h2>Best trial: #{best.number}, accuracy {best.value:.4f}</h2>',
    ]
    if best.plan is not None:
        parts.append(
            '<p class="how"><b>How to read it.</b> The regularization this trial trained with: '
            "for every hidden layer, the L1 and L2 coefficients on the layer's outputs "
            "(activity) and on its weights (kernel); a dash means that term is off.</p>"
        )
        parts.append(
            _table(
                ["layer", "placement", "L1 activity", "L2 activity", "L1 kernel", "L2 kernel"],
                _plan_rows(best.plan),
                numeric={2, 3, 4, 5},
            )
        )
    if best.folds:
        folds = ", ".join(f"{a:.4f}" for a in best.folds)
        parts.append(
            f"<p>Per-fold accuracies: {folds} (std {np.std(best.folds):.4f}); seed {best.seed}.</p>"
        )
    if confusion is not None:
        data = base64.b64encode(confusion).decode("ascii")
        parts.append(
            "<p>Its out-of-fold confusion matrix (from the artifact store): rows are true classes, "
            "columns predicted ones; off-diagonal cells are the mistakes.</p>"
            f'<img src="data:image/png;base64,{data}" alt="confusion matrix of the best trial" '
            'style="max-width:560px">'
        )
    parts.append("</section>")
    return "".join(parts)


def _top_section(trials: Sequence[_Trial]) -> str:
    top = _ranked(trials)[:_TOP_N]
    if not top:
        return ""
    rows = [
        [
            rank,
            t.number,
            f"{t.value:.4f}",
            f"{np.std(t.folds):.4f}" if t.folds else "-",
            _plan_summary(t.plan),
            f"{t.seconds:.1f}",
        ]
        for rank, t in enumerate(top, 1)
    ]
    return (
        f'<section id="top"><h2>Top {len(top)} trials</h2>'
        + _table(
            ["rank", "trial", "accuracy", "fold std", "regularization", "seconds"],
            rows,
            numeric={0, 1, 2, 3, 5},
        )
        + "</section>"
    )
