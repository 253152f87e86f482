"""The report's HTML: ``page.html`` beside this module (skeleton and CSS) filled with sections.

The page stays self-contained: PNGs are embedded as base64, and there are no scripts, style
sheets or fonts to fetch, so it opens from disk or a mail attachment as it was written.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from string import Template
from typing import TYPE_CHECKING

from hpo.lazy import lazy_import
from hpo.results.baseline import BaselineGain
from hpo.results.holdout import HoldoutEvaluation
from hpo.results.report.collect import (
    TOP_N,
    StudyData,
    Trial,
    l1_alpha,
    l2_alpha,
    placement_of,
    ranked_trials,
)
from hpo.results.rerun import RerunStats, verdict
from hpo.results.spec_text import search_rows, spec_sections
from hpo.space import RegularizationPlan
from hpo.spec import StudySpec
from hpo.study.record import LEAK_LABEL, is_leak_warning, leak_first

if TYPE_CHECKING:
    import numpy as np

    from hpo.results.artifacts import ArtifactRead
    from hpo.study.stores import ArtifactPlace
else:
    np = lazy_import("numpy")

__all__ = ["Plot", "plots_for", "render"]


@dataclass
class Plot:
    """One figure's place on the page; ``png`` once drawn, else ``missing`` says why not."""

    name: str
    title: str
    how_to_read: str  # HTML
    png: bytes | None = None
    missing: str = ""


def plots_for(data: StudyData) -> list[Plot]:
    """The page's figures in page order, with their titles and how-to-read notes."""
    # The spec as the study searches it (with_study_windows): the recorded start-up count.
    start_up = data.spec.sampler.n_startup_trials if data.spec is not None else 0
    kind = "quasi-random (Sobol)" if data.spec and data.spec.sampler.startup == "qmc" else "random"
    return [
        Plot(
            "history",
            "Optimization history",
            "Each blue dot is one trial's out-of-fold accuracy, in the order the trials started; "
            "the red line is the best so far. "
            + (f"The first {start_up} trials are {kind} start-up trials; " if start_up else "")
            + "after that the sampler (TPE) proposes settings near the good ones. A line that has "
            "stopped rising means more trials of this search are unlikely to help. Grey crosses "
            "are pruned trials at the accuracy they had when stopped.",
        ),
        Plot(
            "importances",
            "What matters",
            "How much of the variation in accuracy each setting explains (fANOVA over the complete "
            "trials; the bars add up to 1). Alphas are read on a log scale, an alpha that is off "
            "counting as smaller than any used. Importance says which knob matters, not which "
            "value is better: the two plots below show that. With few trials these shares are "
            "rough.",
        ),
        Plot(
            "placement",
            "Accuracy by placement",
            "Trials grouped, per hidden layer, by where its penalty sits: on the layer's outputs "
            "(<i>activity</i>), on its weights (<i>kernel</i>), or <i>both</i>. Each dot is a "
            "trial; the box spans the middle half of the trials, the black line is the median. "
            "A group whose box sits higher works better; groups with few trials say little.",
        ),
        Plot(
            "alphas",
            "L1 vs L2 alpha",
            "Each point is a trial, placed by the L1 and L2 coefficient it used on that layer "
            "(log scales; points beyond the dashed lines had that penalty off) and coloured by "
            "accuracy, yellow best. The red star is the best trial. A bright cluster marks the "
            "alpha region that works; a random mix of colours means the alphas hardly matter "
            "within the range searched.",
        ),
        Plot(
            "folds",
            "Per-fold spread of the best trials",
            "One row per trial, best first. Coloured dots are the validation accuracies of the "
            "single folds, the black diamond is the trial's out-of-fold accuracy (the score the "
            "search maximizes). The grey bar spans the folds. When the best trials differ by less "
            "than their folds spread, the ranking may be noise: rerun them.",
        ),
        Plot(
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


@cache
def _template() -> Template:
    return Template(resources.files(__package__).joinpath("page.html").read_text("utf-8"))


def render(
    data: StudyData,
    plots: Sequence[Plot],
    confusion: bytes | None,
    shown_storage: str,
    *,
    reads: Sequence[ArtifactRead] = (),
    artifacts: ArtifactPlace | None = None,
) -> str:
    """The whole page: header, data warnings and cards, the best trial, every plot, the top
    trials, settings."""
    spec, trials, best = data.spec, data.trials, data.best
    counts = {s: sum(1 for t in trials if t.state == s) for s in ("COMPLETE", "PRUNED", "FAIL")}
    hours = sum(t.seconds for t in trials) / 3600
    cards = [
        ("best accuracy", f"{best.value:.4f}" if best and best.value is not None else "-"),
        ("best trial", f"#{best.number}" if best else "-"),
        ("complete trials", str(counts["COMPLETE"])),
        ("pruned / failed", f"{counts['PRUNED']} / {counts['FAIL']}"),
        ("training time", f"{hours:.2f} h" if hours >= 1 else f"{hours * 60:.1f} min"),
    ]
    if data.baseline is not None:
        cards.insert(1, ("over no regularization", f"{data.baseline.gain:+.4f}"))
    sections = [
        _early_stop_section(data.early_stop),
        _best_section(best, confusion),
        _baseline_section(data.baseline, data.name),
        _holdout_section(data.holdout, data.spec, data.name),
    ]
    for plot in plots:
        if plot.name == "rerun":
            sections.append(_rerun_section(plot, data.reruns, data.name))
        else:
            sections.append(_section(plot))
    sections.append(_top_section(trials))
    if artifacts is not None:
        sections.append(_artifacts_section(reads, artifacts))
    if spec is not None:
        sections.append(_settings_section(spec, data.data_source))
    return _template().substitute(
        name=_esc(data.name),
        description=(
            f'<p class="desc">{_esc(spec.description)}</p>\n'
            if spec is not None and spec.description
            else ""
        ),
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        storage=f" from {_esc(shown_storage)}" if shown_storage else "",
        every_trial=(
            f" Every trial: {spec.cv.folds}-fold cross-validation, {spec.model.epochs} epochs, "
            "scored by out-of-fold accuracy."
            if spec is not None
            else ""
        ),
        # Above the cards: the warnings question every score on the page, a leak most of all.
        warnings=_warnings_section(data.data_warnings),
        cards="".join(
            f"<div class=card><b>{_esc(v)}</b><span>{_esc(k)}</span></div>" for k, v in cards
        ),
        sections="\n".join(s for s in sections if s),
    )


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
    return (
        f'<div class="table"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _alpha(value: float) -> str:
    return "-" if value == 0 else f"{value:.2e}"


def _plan_rows(plan: RegularizationPlan) -> list[list[str]]:
    return [
        [
            name.removeprefix("h") if not plan.names else name,
            placement_of(p),
            _alpha(p.l1_activity),
            _alpha(p.l2_activity),
            _alpha(p.l1_kernel),
            _alpha(p.l2_kernel),
        ]
        for name, p in plan.by_name().items()
    ]


def _plan_summary(plan: RegularizationPlan | None) -> str:
    if plan is None:
        return "-"
    parts = []
    for name, p in plan.by_name().items():
        l1, l2 = l1_alpha(p), l2_alpha(p)
        terms = [f"L1 {l1:.1e}" if l1 else "", f"L2 {l2:.1e}" if l2 else ""]
        body = " + ".join(t for t in terms if t) or "none"
        parts.append(f"{name}: {body} ({placement_of(p)})")
    return "; ".join(parts)


def _img(plot: Plot) -> str:
    if plot.png is None:
        return f'<p class="missing">Not drawn: {_esc(plot.missing)}.</p>'
    data = base64.b64encode(plot.png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_esc(plot.title)}">'


def _section(plot: Plot) -> str:
    return (
        f'<section id="{plot.name}"><h2>{_esc(plot.title)}</h2>'
        f'<p class="how"><b>How to read it.</b> {plot.how_to_read}</p>{_img(plot)}</section>'
    )


def _rerun_section(plot: Plot, reruns: Sequence[RerunStats], name: str) -> str:
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


def _warnings_section(warnings: Sequence[str]) -> str:
    if not warnings:
        return ""
    items = "".join(
        f'<li class="leak"><strong>{_esc(LEAK_LABEL)}:</strong> {_esc(w)}</li>'
        if is_leak_warning(w)
        else f"<li>{_esc(w)}</li>"
        for w in leak_first(warnings)
    )
    return (
        '<section id="data-warnings"><h2>Data warnings</h2><p class="muted">Found in the data '
        "before training (<code>hpo check</code> shows them too); decide on each before "
        f"trusting the scores below.</p><ul>{items}</ul></section>"
    )


def _early_stop_section(message: str | None) -> str:
    if not message:
        return ""
    return (
        '<section id="early-stop"><h2>Early stop</h2><p>'
        f'{_esc(message)} (<code>[budget] early_stop = "within-noise"</code>).</p></section>'
    )


def _settings_section(spec: StudySpec, source: dict[str, str] | None) -> str:
    rows = search_rows(spec)
    blocks = [f'<div class="full"><h3>Search space</h3>{_table(rows[0], rows[1:])}</div>']
    for title, items in spec_sections(spec, source):
        blocks.append(f"<div><h3>{_esc(title)}</h3>{_table(['setting', 'value'], items)}</div>")
    return (
        '<section id="settings"><h2>Study settings</h2><p class="muted">As stored on the study '
        "when it was created; every trial used them.</p>"
        f'<div class="grid">{"".join(blocks)}</div></section>'
    )


def _holdout_section(
    evaluation: HoldoutEvaluation | None, spec: StudySpec | None, name: str
) -> str:
    if evaluation is None:
        if spec is None or spec.cv.holdout == 0:
            return ""
        return (
            '<section id="holdout"><h2>Holdout</h2><p class="missing">This study holds out '
            f"{spec.cv.holdout:.0%} of its rows; run <code>hpo evaluate {_esc(name)}</code> to "
            "score the top plans on them, then write the report again.</p></section>"
        )
    rows = [
        [
            f"#{p.trial}" + (" (baseline)" if p.baseline else ""),
            f"{p.search_cv:.4f}",
            f"{p.mean:.4f}",
            p.ci_text(),
            f"{p.optimism:+.4f}",
        ]
        for p in sorted(evaluation.plans, key=lambda p: (-p.search_cv, p.trial))
    ]
    return (
        '<section id="holdout"><h2>Holdout: what the winner scores on new rows</h2>'
        '<p class="how"><b>How to read it.</b> Each plan was trained on all '
        f"{evaluation.train_rows} search rows with {len(evaluation.seeds)} fresh seeds and "
        f"scored on the {evaluation.holdout_rows} rows set aside before the search, which no "
        "trial saw. Optimism is the search's CV score minus the holdout mean: how much picking "
        "the best of many noisy scores flattered it.</p>"
        + _table(
            ["trial", "search CV", "holdout mean", "95% CI", "optimism"], rows, numeric={1, 2, 4}
        )
        + f"<p>{_esc(evaluation.verdict())}</p></section>"
    )


def _baseline_section(gain: BaselineGain | None, name: str) -> str:
    if gain is None:
        return ""
    return (
        '<section id="baseline"><h2>Regularization against none</h2><p class="how"><b>How to '
        "read it.</b> The baseline trial trains the same network on the same folds with every "
        "penalty off. One CV score against another is noisy: the difference counts only when "
        f"the holdout (<code>hpo evaluate {_esc(name)}</code>) or reruns with fresh seeds "
        f"(<code>hpo rerun {_esc(name)}</code>) put it beyond noise.</p>"
        f"<p>{_esc(gain.line(name))}</p></section>"
    )


def _best_section(best: Trial | None, confusion: bytes | None) -> str:
    if best is None:
        return (
            '<section id="best"><h2>Best trial</h2>'
            '<p class="missing">No complete trial yet.</p></section>'
        )
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


def _artifacts_section(reads: Sequence[ArtifactRead], place: ArtifactPlace) -> str:
    """The files the top trials left in the artifact store, and which of them cannot be read."""
    parts = [
        '<section id="artifacts"><h2>Artifacts of the best trials</h2>',
        f"<p>From the study's artifact store: {_esc(place.where)}.</p>",
    ]
    if not reads:
        parts.append('<p class="missing">The best trials have no artifacts recorded.</p>')
    else:
        rows = [
            [
                str(r.trial),
                r.artifact.filename,
                "readable" if r.problem is None else f"cannot be read: {r.problem}",
            ]
            for r in reads
        ]
        parts.append(_table(["trial", "file", "state"], rows))
    bad = [r for r in reads if r.problem is not None]
    if bad:
        parts.append(
            f'<p class="missing">{len(bad)} of {len(reads)} files cannot be read: '
            + "; ".join(_esc(r.line(place)) for r in bad)
            + "</p>"
        )
    parts.append("</section>")
    return "".join(parts)


def _top_section(trials: Sequence[Trial]) -> str:
    top = ranked_trials(trials)[:TOP_N]
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
