"""The study report: one self-contained HTML page and its PNG plots, readable offline.

A study's results should be shareable without a database or a dashboard server: the report is a
folder with ``report.html`` and one PNG per plot, the PNGs also embedded in the page so it can be
mailed or opened from disk with nothing fetched at view time. :mod:`.collect` reads the study into
plain records, :mod:`.plots` draws the figures from them, :mod:`.page` fills the HTML template.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hpo.errors import HpoError
from hpo.results.artifacts import ArtifactRead
from hpo.results.report.collect import artifact_reads, collect, placement_of
from hpo.results.report.page import plots_for, render
from hpo.results.report.plots import FIGURES, MIN_TRIALS_FOR_IMPORTANCE, png

if TYPE_CHECKING:
    import optuna

    from hpo.study.stores import ArtifactPlace

__all__ = ["MIN_TRIALS_FOR_IMPORTANCE", "Report", "placement_of", "write_report"]


@dataclass
class Report:
    """What :func:`write_report` wrote."""

    html_path: Path
    pngs: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    # The top trials' artifacts that could not be read: one line each, saying which and why.
    unreadable: list[str] = field(default_factory=list)


def write_report(
    study: optuna.Study,
    out_dir: str | Path,
    *,
    shown_storage: str = "",
    artifacts: ArtifactPlace | None = None,
) -> Report:
    """Write ``out_dir/report.html`` and its PNGs for ``study``; ``artifacts``: the study's
    artifact store, to draw the best trial's confusion matrix from and check the top trials'
    files in (None: no artifacts)."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HpoError(
            f"{out}: cannot create the report folder ({exc.strerror}); pick --out"
        ) from None
    data = collect(study)
    report = Report(html_path=out / "report.html")
    plots = plots_for(data)
    for plot in plots:
        drawn = FIGURES[plot.name](data)
        if isinstance(drawn, str):
            plot.missing = drawn
            report.skipped[plot.name] = drawn
            continue
        plot.png = png(drawn)
        path = out / f"{plot.name}.png"
        path.write_bytes(plot.png)
        report.pngs.append(path)

    best = data.best
    reads: list[ArtifactRead] = [] if artifacts is None else artifact_reads(study, data, artifacts)
    confusion = next(
        (
            r.data
            for r in reads
            if best is not None
            and r.data is not None
            and r.artifact.filename == f"trial-{best.number}-confusion.png"
        ),
        None,
    )
    if confusion is not None:
        path = out / "best-confusion.png"
        path.write_bytes(confusion)
        report.pngs.append(path)
    if artifacts is not None:
        report.unreadable = [r.line(artifacts) for r in reads if r.problem is not None]
    report.html_path.write_text(
        render(data, plots, confusion, shown_storage, reads=reads, artifacts=artifacts),
        encoding="utf-8",
    )
    return report
