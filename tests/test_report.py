"""`hpo report`: one self-contained HTML page whose plots are real PNGs, and graceful gaps."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from conftest import NAME, BuiltStudy, hpo, load

from hpo.results.report import write_report
from hpo.results.spec_text import spec_sections
from hpo.space import LayerPenalty, RegularizationPlan
from hpo.spec import DataSpec, StudySpec, spec_to_dict
from hpo.study.record import SPEC_ATTR

PLOTS = ("history", "importances", "placement", "alphas", "folds", "rerun")
CHROMIUM = Path("/usr/bin/chromium")
_WINDOW_HEIGHT = 6000  # px; the whole test page fits, so one screenshot shows every section


class Page(HTMLParser):
    """The parts of the report a test checks: sections, images, anything fetched at view time."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: dict[str, bytes] = {}
        self.fetched: list[str] = []
        self.tags: set[str] = set()
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.tags.add(tag)
        if tag == "section":
            self.sections.append(values["id"])
        for key in ("src", "href"):
            if values.get(key) and not values[key].startswith(("data:", "#")):
                self.fetched.append(values[key])
        if tag == "img" and values["src"].startswith("data:image/png;base64,"):
            self.images[values["alt"]] = base64.b64decode(values["src"].split(",", 1)[1])


def _png_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()  # decodes every byte: a truncated file fails here
    return image.size


def test_report_is_one_offline_page_with_every_plot(built: BuiltStudy, tmp_path: Path) -> None:
    from hpo.results.rerun import RerunStats, record_reruns

    url = built.copy(tmp_path)
    study = load(url)
    ranked = sorted(study.get_trials(), key=lambda t: -t.value)
    first, second = ranked[0], ranked[1]
    record_reruns(
        study,
        [
            RerunStats(
                trial=first.number, original=first.value, accuracies=(0.52, 0.55, 0.53),
                seeds=(1, 2, 3), repeats=1, folds=3, epochs=2, engine="reference",
            ),
            RerunStats(
                trial=second.number, original=second.value, accuracies=(0.41, 0.43, 0.42),
                seeds=(1, 2, 3), repeats=1, folds=3, epochs=2, engine="reference",
            ),
        ],
    )  # fmt: skip
    out = tmp_path / "report"
    result = hpo("report", NAME, "--storage", url, "--out", out, "--artifacts", built.artifact_dir)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"wrote {out}/report.html with 7 plots; open it in a browser\n"
    assert result.stderr == ""  # nothing was skipped

    text = (out / "report.html").read_text()
    page = Page(text)
    assert page.sections == ["best", "baseline", *PLOTS, "top", "artifacts", "settings"]
    assert page.fetched == [] and "script" not in page.tags and "link" not in page.tags
    titles = {
        "Optimization history": "history",
        "What matters": "importances",
        "Accuracy by placement": "placement",
        "L1 vs L2 alpha": "alphas",
        "Per-fold spread of the best trials": "folds",
        "Reruns: beyond noise?": "rerun",
    }
    assert set(page.images) == {*titles, "confusion matrix of the best trial"}
    for title, name in titles.items():
        embedded = page.images[title]
        assert embedded == (out / f"{name}.png").read_bytes()
        width, height = _png_size(embedded)
        assert width >= 800 and height >= 250, (name, width, height)
    assert _png_size(page.images["confusion matrix of the best trial"])[0] >= 400

    assert f"Best trial: #{first.number}, accuracy {first.value:.4f}</h2>" in text
    assert "How to read it." in text and "<h3>Search space</h3>" in text
    assert "0.5333" in text and "0.4200" in text  # the rerun means
    assert f"verdict: trial {first.number} is better than the others beyond noise" in text


def _add_complete_trials(
    study: Any,
    scores: list[tuple[float, float]],
    *,
    seconds: float,
    first_seed: int | None = None,
) -> None:
    """One complete trial per ``(accuracy, L1 kernel alpha of layer 1)``, as hpo records it."""
    import optuna

    for i, (value, l1) in enumerate(scores):
        plan = RegularizationPlan(
            (LayerPenalty(l1_kernel=l1, l2_activity=1e-5), LayerPenalty(l2_kernel=1e-2))
        )
        attrs: dict[str, Any] = {
            "plan": plan.to_dict(),
            "fold_accuracies": [value - 0.02, value, value + 0.02],
            "seconds": seconds + i,
        }
        if first_seed is not None:
            attrs["seed"] = first_seed + i
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs=attrs))


def _synthetic_study(url: str) -> Any:
    """A plain Optuna study (no hpo spec) with 3 complete and 1 pruned trial; no training."""
    import optuna

    study = optuna.create_study(study_name="plain", storage=url, direction="maximize")
    _add_complete_trials(study, [(0.6, 1e-4), (0.7, 1e-3), (0.65, 0.0)], seconds=1.0)
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.PRUNED, intermediate_values={1: 0.3}
        )
    )
    return study


def test_too_few_trials_explain_the_missing_plots(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/plain.db"
    _synthetic_study(url)
    out = tmp_path / "r"
    result = hpo("report", "plain", "--storage", url, "--out", out)
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "not drawn: importances (needs at least 5 complete trials; this study has 3)",
        "not drawn: rerun (no reruns recorded)",
    ]
    text = (out / "report.html").read_text()
    assert "Not drawn: needs at least 5 complete trials; this study has 3." in text
    assert "<code>hpo rerun plain --top 3 --seeds 5</code>" in text
    assert sorted(p.name for p in out.glob("*.png")) == [
        "alphas.png",
        "folds.png",
        "history.png",
        "placement.png",
    ]
    page = Page(text)
    assert "settings" not in page.sections  # no stored spec: no settings section, no crash
    assert "Best trial: #1, accuracy 0.7000" in text


def test_an_unreadable_artifact_is_named_with_why_not_left_out(
    built: BuiltStudy, tmp_path: Path
) -> None:
    """The study's own store (here its folder beside the database copy), read without
    --artifacts; the best trial's confusion matrix is gone from it."""
    import shutil

    from hpo.results.artifacts import trial_artifacts

    url = built.copy(tmp_path)
    shutil.copytree(built.artifact_dir, tmp_path / "copy-artifacts")
    study = load(url)
    best = study.best_trial
    png = next(a for a in trial_artifacts(study, best) if a.filename.endswith("-confusion.png"))
    (tmp_path / "copy-artifacts" / png.artifact_id).unlink()
    out = tmp_path / "r"
    result = hpo("report", NAME, "--storage", url, "--out", out)
    assert result.exit_code == 0, result.output
    line = (
        f"trial {best.number}: trial-{best.number}-confusion.png (artifact "
        f"{png.artifact_id[:8]}) cannot be read from {tmp_path}/copy-artifacts: not found"
    )
    assert f"not read: {line}" in result.stderr.splitlines()
    assert sum(x.startswith("not read") for x in result.stderr.splitlines()) == 1
    page = Page((out / "report.html").read_text())
    assert "confusion matrix of the best trial" not in page.images
    assert html.escape(line) in (out / "report.html").read_text()
    assert "artifacts" in page.sections
    # The dashboard logs the same line when it starts (it writes nothing to say so).
    from hpo.results.dashboard import unreadable_artifacts
    from hpo.study.storage import open_storage

    assert unreadable_artifacts(open_storage(url, access="read"), url) == [
        f"study {NAME!r}: {line}"
    ]


def test_report_of_an_unknown_study_names_what_is_there(built: BuiltStudy) -> None:
    result = hpo("report", "ghost", "--storage", built.url, "--out", "x")
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: no study named 'ghost' in {built.url}; studies there: {NAME}\n"
    )


def test_placement_of_a_layer() -> None:
    from hpo.results.report import placement_of

    assert placement_of(LayerPenalty(l1_activity=1e-3)) == "activity"
    assert placement_of(LayerPenalty(l2_kernel=1e-3)) == "kernel"
    assert placement_of(LayerPenalty(l1_activity=1e-3, l2_kernel=1e-4)) == "both"
    assert placement_of(LayerPenalty()) == "none"


# --- layout, in a real browser ----------------------------------------------------------------

# Injected into a copy of the page only (the report itself has no scripts). For every table it
# finds the part that shows (clipped by any scrolling ancestor) and the box the table belongs to
# (its cell of the settings grid, else its section), and records spills and overlaps in the DOM.
_MEASURE = """<script>
addEventListener("load", () => {
  const problems = [], scrolled = [];
  const shown = [...document.querySelectorAll("main table")].map((table) => {
    const box = table.closest(".grid > *") || table.closest("section");
    const name = box.querySelector("h3, h2").textContent;
    const r = table.getBoundingClientRect();
    let left = r.left, right = r.right;
    for (let a = table.parentElement; a; a = a.parentElement) {
      if (getComputedStyle(a).overflowX !== "visible") {
        const clip = a.getBoundingClientRect();
        left = Math.max(left, clip.left);
        right = Math.min(right, clip.right);
      }
    }
    const b = box.getBoundingClientRect();
    if (right > b.right + 0.5 || left < b.left - 0.5) problems.push(`${name}: spills out of its box`);
    if (r.width > right - left + 0.5) scrolled.push(name);
    return {name, left, right, top: r.top, bottom: r.bottom};
  });
  shown.forEach((a, i) => shown.slice(i + 1).forEach((b) => {
    const x = Math.min(a.right, b.right) - Math.max(a.left, b.left);
    const y = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
    if (x > 0.5 && y > 0.5) problems.push(`${a.name}: overlaps ${b.name}`);
  }));
  const settings = document.getElementById("settings").getBoundingClientRect();
  document.body.dataset.layout = JSON.stringify({
    tables: shown.map((t) => t.name), problems, scrolled,
    settings: [settings.top + scrollY, settings.bottom + scrollY],
    bottom: document.querySelector("main").getBoundingClientRect().bottom + scrollY,
  });
});
</script>"""


def _chromium(width: int, height: int, *args: str) -> subprocess.CompletedProcess[bytes]:
    with tempfile.TemporaryDirectory(prefix="hpo-chromium-") as profile:
        return subprocess.run(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                *args,
            ],
            capture_output=True,
            timeout=120,
            check=True,
        )


def _study_with_spec() -> tuple[Any, StudySpec]:
    """An in-memory study created from a spec with the default two hidden layers; no training."""
    import optuna

    spec = StudySpec(
        name="layout",
        description="Settings laid out in a browser",
        data=DataSpec(path="/srv/course/data/heart-disease/processed.cleveland.csv", target="num"),
    )
    study = optuna.create_study(study_name="layout", direction="maximize")
    study.set_user_attr(SPEC_ATTR, spec_to_dict(spec))
    _add_complete_trials(
        study, [(0.61, 1e-4), (0.72, 1e-3), (0.66, 0.0)], seconds=10.0, first_seed=100
    )
    return study, spec


def _layout(page: Path, width: int, shot: Path) -> dict[str, Any]:
    """What the measuring copy of ``page`` reports at ``width``, and a screenshot of it."""
    measured = page.with_name(f"measured-{width}.html")
    measured.write_text(page.read_text().replace("</body>", _MEASURE + "</body>"))
    # The script only sets an attribute: the screenshot shows the page as written.
    run = _chromium(width, _WINDOW_HEIGHT, "--dump-dom", f"--screenshot={shot}", measured.as_uri())
    found = re.search(r'<body data-layout="([^"]*)"', run.stdout.decode())
    assert found, f"the measuring script did not run at {width} px"
    layout: dict[str, Any] = json.loads(html.unescape(found.group(1)))
    return layout


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_no_table_spills_over_another_in_a_browser(tmp_path: Path) -> None:
    from PIL import Image

    study, spec = _study_with_spec()
    page = write_report(study, tmp_path / "report").html_path
    tables = [
        "Best trial: #1, accuracy 0.7200",
        "Top 3 trials",
        "Search space",
        *(title for title, _ in spec_sections(spec)),
    ]
    widths = [1400, 1920]
    with ThreadPoolExecutor(len(widths)) as pool:  # one browser per width, side by side
        layouts = list(pool.map(lambda w: _layout(page, w, tmp_path / f"{w}.png"), widths))
    for width, layout in zip(widths, layouts, strict=True):
        assert layout["tables"] == tables, width  # every table was measured
        assert layout["problems"] == [], (width, layout["problems"])
        assert layout["scrolled"] == [], (width, layout["scrolled"])  # wide enough to show all

        image = Image.open(tmp_path / f"{width}.png")
        assert image.format == "PNG"
        image.load()
        assert image.size == (width, _WINDOW_HEIGHT) and layout["bottom"] <= _WINDOW_HEIGHT
        top, bottom = (round(y) for y in layout["settings"])
        settings = list(image.convert("RGB").crop((0, top, width, bottom)).getdata())
        ink = sum(1 for p in settings if min(p) < 128) / len(settings)
        assert len(set(settings)) > 50 and ink > 0.005, (width, len(set(settings)), ink)
