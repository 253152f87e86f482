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
from hpo.results.report.collect import best_confusion, collect, placement_of
from hpo.results.report.page import plots_for, render
from hpo.results.report.plots import FIGURES, MIN_TRIALS_FOR_IMPORTANCE, png

if TYPE_CHECKING:
    import optuna

__all__ = ["MIN_TRIALS_FOR_IMPORTANCE", "Report", "placement_of", "write_report"]


@dataclass
class Report:
    """What :func:`write_report` wrote."""

    html_path: Path
    pngs: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def write_report(
    study: optuna.Study,
    out_dir: str | Path,
    *,
    shown_storage: str = "",
    artifact_dir: Path | None = None,
) -> Report:
    """Write ``out_dir/report.html`` and its PNGs for ``study``."""
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
    confusion = best_confusion(study, best.number, artifact_dir) if best else None
    if confusion is not None:
        path = out / "best-confusion.png"
        path.write_bytes(confusion)
        report.pngs.append(path)
    report.html_path.write_text(render(data, plots, confusion, shown_storage), encoding="utf-8")
    return report
