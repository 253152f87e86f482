"""`hpo report`: one self-contained HTML page whose plots are real PNGs, and graceful gaps."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from test_artifacts import NAME, BuiltStudy, load, results_study

from hpo.cli import cli
from hpo.space import LayerPenalty, RegularizationPlan

PLOTS = ("history", "importances", "placement", "alphas", "folds", "rerun")


def hpo(*args: str) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltStudy:
    return results_study(tmp_path_factory)


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
    from hpo.rerun import RerunStats, record_reruns

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
    assert page.sections == ["best", *PLOTS, "top", "settings"]
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


def _synthetic_study(url: str) -> Any:
    """A plain Optuna study (no hpo spec) with 3 complete and 1 pruned trial; no training."""
    import optuna

    study = optuna.create_study(study_name="plain", storage=url, direction="maximize")
    for i, (value, l1) in enumerate([(0.6, 1e-4), (0.7, 1e-3), (0.65, 0.0)]):
        plan = RegularizationPlan(
            (LayerPenalty(l1_kernel=l1, l2_activity=1e-5), LayerPenalty(l2_kernel=1e-2))
        )
        study.add_trial(
            optuna.trial.create_trial(
                value=value,
                user_attrs={
                    "plan": plan.to_dict(),
                    "fold_accuracies": [value - 0.02, value, value + 0.02],
                    "seconds": 1.0 + i,
                },
            )
        )
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


def test_report_of_an_unknown_study_names_what_is_there(built: BuiltStudy) -> None:
    result = hpo("report", "ghost", "--storage", built.url, "--out", "x")
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: no study named 'ghost' in {built.url}; studies there: {NAME}\n"
    )


def test_placement_of_a_layer() -> None:
    from hpo.report import placement_of

    assert placement_of(LayerPenalty(l1_activity=1e-3)) == "activity"
    assert placement_of(LayerPenalty(l2_kernel=1e-3)) == "kernel"
    assert placement_of(LayerPenalty(l1_activity=1e-3, l2_kernel=1e-4)) == "both"
    assert placement_of(LayerPenalty()) == "none"
