"""``[cv] holdout`` and ``hpo evaluate``: rows the search never sees, and the honest score.

The engine is spied on (its ``evaluate`` records the folds it is handed, then trains for real),
so the tests assert on the very rows and arrays each trial, rerun and evaluation received.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import optuna_dashboard
import pandas as pd
import pytest
import scipy.stats
from conftest import hpo, make_frame, one_line_error

from hpo.data import Fold, Preprocessor, load_dataset, split_holdout
from hpo.engines.stacked import StackedEngine
from hpo.spec import CVSpec, load_spec
from hpo.study.record import store_data_warnings
from hpo.study.storage import open_storage

WriteStudy = Callable[..., Path]
HOLDOUT = "[cv]\nholdout = 0.25\nstratified = true\n"


@pytest.fixture
def received(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[list[Fold]]]:
    """Every fold list the stacked engine is handed, in order."""
    calls: list[list[Fold]] = []
    original = StackedEngine.evaluate

    def spy(self: StackedEngine, plans: Any, folds: Any, **kwargs: Any) -> Any:
        calls.append(list(folds))
        return original(self, plans, folds, **kwargs)

    monkeypatch.setattr(StackedEngine, "evaluate", spy)
    yield calls


def _held_study(write_study: WriteStudy, *, n_trials: int = 3) -> Path:
    """The tiny study with a quarter of its rows held out; ``[cv]`` replaced by ours."""
    path = write_study(engine="stacked", epochs=3, n_trials=n_trials)
    text = path.read_text().replace("[cv]\n", HOLDOUT, 1)
    path.write_text(text)
    return path


def _original_rows(study_file: Path) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The loaded features, and the search and held-out rows as positions in them."""
    spec = load_spec(study_file)
    dataset = load_dataset(spec.data)
    split = split_holdout(dataset, spec.cv)
    assert split is not None
    return dataset.features, split.search_rows, split.holdout_rows


@pytest.mark.slow  # a study with real training
def test_the_split_is_stratified_seeded_and_recorded(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    study_file = _held_study(write_study)
    spec = load_spec(study_file)
    dataset = load_dataset(spec.data)
    split = split_holdout(dataset, spec.cv)
    assert split is not None
    assert len(split.holdout_rows) == math.ceil(0.25 * dataset.n_rows)
    assert set(split.search_rows).isdisjoint(split.holdout_rows)
    assert len(split.search_rows) + len(split.holdout_rows) == dataset.n_rows
    # Stratified: each class's share of the holdout is its share of the data (within a row).
    everywhere = np.bincount(dataset.labels) / dataset.n_rows
    held = np.bincount(dataset.labels[split.holdout_rows], minlength=3)
    assert np.all(np.abs(held - everywhere * len(split.holdout_rows)) <= 1)
    # Seeded by [cv] seed: the same rows again, other rows with another seed.
    assert split_holdout(dataset, spec.cv).fingerprint == split.fingerprint  # type: ignore[union-attr]
    other = split_holdout(dataset, CVSpec(folds=3, seed=2, stratified=True, holdout=0.25))
    assert other is not None and other.fingerprint != split.fingerprint

    url = f"sqlite:///{tmp_path / 'h.db'}"
    result = hpo("run", study_file, "--storage", url)
    assert result.exit_code == 0, result.output
    assert "67 rows (23 more held out for `hpo evaluate`)" in result.stderr
    attrs = optuna.load_study(study_name="tiny", storage=open_storage(url)).user_attrs
    assert attrs["hpo_holdout"] == {
        "fraction": 0.25,
        "rows": 23,
        "of": 90,
        "sha256": split.fingerprint,
    }


@pytest.mark.slow  # a study, then reruns or evaluations with real training
def test_no_trial_preprocessing_rerun_or_evaluation_sees_a_held_out_row(
    write_study: WriteStudy, tmp_path: Path, received: list[list[Fold]]
) -> None:
    study_file = _held_study(write_study)
    features, search_rows, holdout_rows = _original_rows(study_file)
    url = f"sqlite:///{tmp_path / 'h.db'}"
    assert hpo("run", study_file, "--storage", url).exit_code == 0
    assert hpo("rerun", "tiny", "--storage", url, "--top", "1", "--seeds", "2").exit_code == 0
    searched = len(received)
    assert searched >= 3  # trials, then reruns
    for folds in received:
        for fold in folds:
            # Positions in the search rows; as rows of the loaded data, none is held out.
            train = search_rows[fold.train_rows]
            valid = search_rows[fold.valid_rows]
            assert set(train).isdisjoint(holdout_rows) and set(valid).isdisjoint(holdout_rows)
            # The arrays are those rows, preprocessed with statistics of the training rows
            # alone (the one-hot schema from the search rows alone).
            schema = Preprocessor().fit(features.iloc[search_rows]).categorical
            prep = Preprocessor().fit(features.iloc[train], categories=schema)
            # (A float32 step apart: the folds rescale one table of all search rows, stored
            # with their median and quartiles; the Preprocessor scales the raw columns.)
            np.testing.assert_allclose(
                fold.x_train, prep.transform(features.iloc[train]), rtol=0, atol=1e-6
            )
            np.testing.assert_allclose(
                fold.x_valid, prep.transform(features.iloc[valid]), rtol=0, atol=1e-6
            )

    leak = "column 'code' alone predicts the target with 1.00 CV accuracy"
    store_data_warnings(optuna.load_study(study_name="tiny", storage=url), [leak])
    result = hpo("evaluate", "tiny", "--storage", url, "--top", "1", "--seeds", "2")
    assert result.exit_code == 0, result.output
    # The study's data warnings lead the scores they question.
    assert result.stdout.splitlines()[0] == (
        f"warning (possible leak: the score may be inflated): {leak}"
    )
    assert result.stdout.splitlines()[1].startswith("trial ")
    evaluation = received[searched:]
    assert evaluation, "evaluate trained nothing"
    for folds in evaluation:
        (fold,) = folds  # one fold: every search row against the held-out rows
        assert len(fold.train_rows) == len(search_rows)
        assert len(fold.valid_rows) == len(holdout_rows)
        prep = Preprocessor().fit(features.iloc[search_rows])
        np.testing.assert_allclose(fold.x_train, prep.transform(features.iloc[search_rows]))
        np.testing.assert_allclose(fold.x_valid, prep.transform(features.iloc[holdout_rows]))


@pytest.mark.slow  # a study, then reruns or evaluations with real training
def test_evaluate_statistics_match_a_hand_computation(
    write_study: WriteStudy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    assert hpo("run", _held_study(write_study, n_trials=4), "--storage", url).exit_code == 0
    # Keep what the engine returns to `evaluate`: each plan's predictions of the held-out rows.
    returned: list[tuple[Fold, list[Any]]] = []
    original = StackedEngine.evaluate

    def spy(self: StackedEngine, plans: Any, folds: Any, **kwargs: Any) -> Any:
        results = original(self, plans, folds, **kwargs)
        returned.append((folds[0], results))
        return results

    monkeypatch.setattr(StackedEngine, "evaluate", spy)
    result = hpo("evaluate", "tiny", "--storage", url, "--top", "2", "--seeds", "4")
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny", storage=open_storage(url))
    stored = study.user_attrs["holdout:evaluation"]
    assert stored["holdout_rows"] == 23 and stored["train_rows"] == 67
    plans = stored["plans"]
    assert len(plans) == 3 and sum(p["baseline"] for p in plans) == 1  # top 2 and the baseline
    # Per plan (in the order evaluated) and seed: which held-out rows it got right.
    order = [p["trial"] for p in plans]
    hits: dict[int, list[np.ndarray]] = {n: [] for n in order}
    flat = [(fold, r) for fold, results in returned for r in results]  # seed by seed, in order
    assert len(flat) == 4 * len(order)
    for k, (fold, r) in enumerate(flat):
        hits[order[k % len(order)]].append(r.predictions[fold.valid_rows] == fold.y_valid)
    per_row = {n: np.mean(np.stack(h), axis=0) for n, h in hits.items()}
    for p in plans:
        accuracies = np.array(p["accuracies"])
        assert len(accuracies) == 4
        assert accuracies == pytest.approx([h.mean() for h in hits[p["trial"]]], abs=1e-6)
        mean, std = accuracies.mean(), accuracies.std(ddof=1)
        row_se = per_row[p["trial"]].std(ddof=1) / math.sqrt(23)
        half = 1.959964 * math.sqrt(std**2 / 4 + row_se**2)
        assert p["mean"] == pytest.approx(mean, abs=1e-6)
        assert p["std"] == pytest.approx(std, abs=1e-6)
        assert p["row_se"] == pytest.approx(row_se, abs=1e-6)
        # (cut to [0, 1]: an accuracy interval cannot leave it)
        assert p["ci95"] == pytest.approx([max(0, mean - half), min(1, mean + half)], abs=1e-6)
        trial = study.trials[p["trial"]]
        assert p["search_cv"] == pytest.approx(trial.value, abs=1e-6)
        assert p["optimism"] == pytest.approx(trial.value - mean, abs=1e-6)
    winner = max(plans, key=lambda p: (p["search_cv"], -p["trial"]))
    baseline = next(p for p in plans if p["baseline"])
    assert stored["verdict"].startswith(f"trial {winner['trial']}: holdout {winner['mean']:.4f}")
    if winner is not baseline:
        d = per_row[winner["trial"]] - per_row[baseline["trial"]]
        if d.std() > 0:
            t = d.mean() / (d.std(ddof=1) / math.sqrt(23))
            p_value = 2 * scipy.stats.t.sf(abs(t), 22)
            assert winner["p_vs_baseline"] == pytest.approx(p_value, rel=1e-6)
            assert f"paired over rows p = {p_value:.3g}" in stored["verdict"]
            # `best` (and status, the report) judge the gain over the baseline by it now.
            shown = hpo("best", "tiny", "--storage", url).output
            difference = winner["mean"] - baseline["mean"]
            assert f"holdout: {difference:+.4f}, paired over rows p = {p_value:.3g}" in shown
    assert stored["verdict"] in result.output
    # The table: one row per plan, the baseline marked.
    assert f"{baseline['trial']} (baseline)" in result.output
    # And each trial's dashboard note has its section.
    notes = study._storage.get_study_system_attrs(study._study_id)
    assert sum("### Holdout" in str(v) for v in notes.values()) == 3
    # The study's note in optuna-dashboard leads with it.
    assert f"- holdout (`hpo evaluate`): {stored['verdict']}" in optuna_dashboard.get_note(study)
    # The report shows the same table and verdict.
    report = hpo("report", "tiny", "--storage", url, "--out", tmp_path / "report")
    assert report.exit_code == 0, report.output
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Holdout: what the winner scores on new rows" in page
    assert html.escape(stored["verdict"]) in page
    assert f"{winner['mean']:.4f}" in page


@pytest.mark.slow  # a study with real training
def test_evaluate_refuses_a_study_without_a_holdout(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'n.db'}"
    assert hpo("run", write_study(epochs=1, n_trials=1), "--storage", url).exit_code == 0
    one_line_error(
        hpo("evaluate", "tiny", "--storage", url),
        "study 'tiny' has no holdout: rows must be set aside before the search, so start a new "
        "study with `holdout = 0.2` in its [cv] table; for data too small to spare rows, nested "
        "cross-validation is the alternative",
    )


@pytest.mark.slow  # a study, then reruns or evaluations with real training
def test_changed_data_is_refused_before_it_can_train_on_held_out_rows(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    study_file = _held_study(write_study, n_trials=1)
    url = f"sqlite:///{tmp_path / 'c.db'}"
    assert hpo("run", study_file, "--storage", url).exit_code == 0
    fingerprint = optuna.load_study(study_name="tiny", storage=open_storage(url)).user_attrs[
        "hpo_holdout"
    ]["sha256"]
    changed = tmp_path / "changed.csv"
    make_frame(n_rows=90, seed=5).to_csv(changed, index=False)  # same shape, other labels
    spec = load_spec(study_file)
    other = split_holdout(load_dataset(spec.data, path_override=changed), spec.cv)
    assert other is not None
    expected = (
        "study 'tiny': the rows held out from the search are not the ones recorded on the "
        f"study (23 of 90 rows, sha256 {fingerprint[:12]}; this data gives 23 of 90, sha256 "
        f"{other.fingerprint[:12]}): the data changed since the search began; use the data "
        "the study was searched on"
    )
    for command in (
        ["run", study_file, "--n-trials", "2"],
        ["worker", "tiny"],
        ["rerun", "tiny", "--seeds", "2"],
        ["evaluate", "tiny"],
    ):
        one_line_error(hpo(*command, "--storage", url, "--data", changed), expected)
    # The same labels with one feature column gone, or one held-out value edited: refused too.
    original = pd.read_csv(spec.data.path)  # type: ignore[arg-type]
    split = split_holdout(load_dataset(spec.data), spec.cv)
    assert split is not None
    edited = original.copy()
    edited.loc[int(split.holdout_rows[0]), "size"] += 1.0
    for variant in (original.drop(columns=["weight"]), edited):
        variant.to_csv(changed, index=False)
        result = hpo("evaluate", "tiny", "--storage", url, "--data", changed)
        assert result.exit_code == 1
        assert "the rows held out from the search are not the ones recorded" in result.stderr


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            "holdout = 0.7",
            "`holdout` is the fraction of rows set aside, 0 (none) to 0.5, e.g. 0.2, but got 0.7",
        ),
        (
            "holdout = -0.1",
            "`holdout` is the fraction of rows set aside, 0 (none) to 0.5, e.g. 0.2, but got -0.1",
        ),
        ('holdout = "20%"', "`cv.holdout` must be a number, but got '20%'"),
    ],
)
def test_a_bad_holdout_is_one_line(
    write_study: WriteStudy, tmp_path: Path, table: str, message: str
) -> None:
    path = write_study()
    path.write_text(path.read_text().replace("[cv]\n", f"[cv]\n{table}\n", 1))
    result = hpo("run", path, "--storage", f"sqlite:///{tmp_path / 'x.db'}")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1


def test_a_holdout_that_leaves_a_class_too_few_rows_for_the_folds_is_refused_by_check_and_run(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    kinds = ["x"] * 40 + ["y"] * 40 + ["z"] * 5
    csv = tmp_path / "rare.csv"
    pd.DataFrame({"size": rng.normal(size=85), "kind": kinds}).to_csv(csv, index=False)
    study = tmp_path / "rare.toml"
    study.write_text(
        f'[study]\nname = "rare"\n[data]\npath = "{csv}"\ntarget = "kind"\n'
        "[cv]\nfolds = 5\nstratified = true\nholdout = 0.2\n[model]\nhidden = [4]\nepochs = 1\n"
        "[search]\nbaseline = false\n"
    )
    expected = (
        f"{csv}: class 'z' has 5 rows; holdout=0.2 sets 1 of them aside, leaving 4, fewer "
        'than folds=5; drop it ([data] drop_classes = ["z"]) or merge it into another class '
        '([data] merge_classes = { NAME = ["z"] }), use fewer folds, a smaller holdout, or set '
        "[cv] stratified = false"
    )
    one_line_error(hpo("check", study, "--no-estimate"), expected)
    one_line_error(hpo("run", study, "--storage", f"sqlite:///{tmp_path / 'r.db'}"), expected)
