"""``hpo nested``: K inner studies on disjoint outer folds, K outer scores, resumable."""

from __future__ import annotations

import math
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import optuna_dashboard
import pytest
import scipy.stats
from conftest import hpo, make_frame, one_line_error, tiny_data_table
from optuna.trial import TrialState
from pg import HpoProcesses, hpo_env

from hpo.data import load_dataset, split_holdout
from hpo.results.artifacts import trial_artifacts
from hpo.results.stats import summarize
from hpo.study.record import stored_spec
from hpo.study.storage import open_storage

WriteStudy = Callable[..., Path]
pytestmark = pytest.mark.slow  # three inner studies with real training


def _study(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url))


def _nested(write_study: WriteStudy) -> Path:
    return write_study(name="nest", engine="stacked", epochs=3, n_trials=3)


def fold_rows(held: list[dict[str, int]], fold: int) -> int:
    return held[fold - 1]["rows"]


def test_nested_records_k_outer_scores_on_disjoint_outer_folds(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'n.db'}"
    result = hpo("nested", _nested(write_study), "--outer", "3", "--seeds", "2", "--storage", url)
    assert result.exit_code == 0, result.output
    names = [f"nest.outer-{i}" for i in (1, 2, 3)]
    studies = [_study(url, name) for name in names]
    # The outer test folds partition the 90 rows.
    held = [s.user_attrs["hpo_holdout"] for s in studies]
    assert sum(h["rows"] for h in held) == 90 and {h["of"] for h in held} == {90}
    assert len({h["sha256"] for h in held}) == 3
    # And as rows: each inner study's held-out rows are one part of a partition of the data.
    parts = []
    for study in studies:
        spec = stored_spec(study)
        assert spec is not None
        split = split_holdout(load_dataset(spec.data), spec.cv)
        assert split is not None and split.fingerprint == study.user_attrs["hpo_holdout"]["sha256"]
        assert set(split.search_rows).isdisjoint(split.holdout_rows)
        parts.append(set(split.holdout_rows.tolist()))
    assert sorted(set().union(*parts)) == list(range(90)) and sum(map(len, parts)) == 90
    summary = studies[0].user_attrs["nested:summary"]
    assert all(s.user_attrs["nested:summary"] == summary for s in studies)
    assert [f["study"] for f in summary["folds"]] == names
    outer_scores = []
    for study, fold in zip(studies, summary["folds"], strict=True):
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
        evaluation = study.user_attrs["holdout:evaluation"]
        winner = max(evaluation["plans"], key=lambda p: (p["search_cv"], -p["trial"]))
        assert fold["winner"] == winner["trial"] == study.best_trial.number
        assert fold["outer"] == pytest.approx(winner["mean"], abs=1e-6)
        assert fold["search_cv"] == pytest.approx(study.best_value, abs=1e-6)
        assert evaluation["holdout_rows"] == fold_rows(held, fold["fold"])
        outer_scores.append(fold["outer"])
    mean, std, _ = summarize(outer_scores)
    # Nadeau-Bengio: the folds' training sets overlap, so the variance of the mean is
    # std^2 * (1/K + 1/(K-1)), not std^2 / K.
    half = scipy.stats.t.ppf(0.975, 2) * std * math.sqrt(1 / 3 + 1 / 2)
    assert summary["mean"] == pytest.approx(mean, abs=1e-6)
    assert summary["ci95"] == pytest.approx([max(0, mean - half), min(1, mean + half)], abs=1e-5)
    assert f"nested CV (3 outer folds): tuned network {mean:.4f}" in result.output
    for study in studies:  # each inner study's dashboard note leads with the summary
        assert summary["summary"][0] in optuna_dashboard.get_note(study)
    assert "plans chosen:" in result.output
    assert np.isfinite(std)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_nested_resumes_after_a_kill_without_redoing_finished_folds(
    write_study: WriteStudy, processes: HpoProcesses, tmp_path: Path, sig: int
) -> None:
    study_file = write_study(name="nest", engine="stacked", epochs=150, n_trials=3)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    env = hpo_env(url)
    command = [
        "nested", str(study_file), "--outer", "3", "--seeds", "2",
        "--heartbeat-interval", "1", "--grace-period", "4",
    ]  # fmt: skip
    first = processes.start(command, env=env, log="first.log")
    first.wait_for(r"outer fold 2/3: study 'nest.outer-2' created")
    first.wait_for(r"training trial")
    if sig == signal.SIGKILL:
        first.kill_group(sig)  # like a machine dying: its trials stay RUNNING until stale
    else:
        first.proc.send_signal(sig)
        assert first.finish(timeout=60) == 0, first.text()
        assert "stopped by SIGTERM" in first.text()
        assert "`hpo nested` again resumes at outer fold 2" in first.text()

    second = processes.start(command, env=env, log="second.log")
    assert second.finish() == 0, second.text()
    text = second.text()
    assert "outer fold 1/3: study 'nest.outer-1' resumed" in text
    assert "0 of 3 trials to run" in text  # fold 1 is not trained again ...
    evaluated = sum(  # ... nor evaluated: folds 2 and 3 only (2 seeds per plan)
        2 * len(_study(url, f"nest.outer-{i}").user_attrs["holdout:evaluation"]["plans"])
        for i in (2, 3)
    )
    assert text.count("on the held-out rows") == evaluated
    assert "outer fold 2/3: study 'nest.outer-2' resumed" in text
    for i in (1, 2, 3):
        states = [t.state for t in _study(url, f"nest.outer-{i}").trials]
        assert states.count(TrialState.COMPLETE) == 3, (i, states)
        assert TrialState.RUNNING not in states
    assert len(_study(url, "nest.outer-3").user_attrs["nested:summary"]["folds"]) == 3
    assert "Traceback" not in first.text() + text


def test_nested_refusals(write_study: WriteStudy, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    for outer in ("0", "1"):  # the same rule for both (0 once said ">= 1")
        one_line_error(
            hpo("nested", _nested(write_study), "--outer", outer, "--storage", url),
            f"--outer must be 2 or more, but got {outer}",
        )
    held = write_study(name="held")
    held.write_text(held.read_text().replace("[cv]\n", "[cv]\nholdout = 0.2\n", 1))
    one_line_error(
        hpo("nested", held, "--outer", "3", "--storage", url),
        f"{held}: [cv] holdout and nested cross-validation both set rows aside; remove "
        "holdout for `hpo nested`",
    )


def test_nested_says_and_stores_a_leak_and_writes_no_model_files(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    frame = make_frame()
    frame["code"] = frame["kind"].map({"x": 10, "y": 20, "z": 30})  # the target, recoded
    frame.to_csv(tmp_path / "leaky.csv", index=False)
    study_file = write_study(
        name="leaky",
        engine="stacked",
        epochs=1,
        n_trials=2,
        data=tiny_data_table(tmp_path / "leaky.csv"),
    )
    url = f"sqlite:///{tmp_path / 'l.db'}"
    result = hpo("nested", study_file, "--outer", "2", "--seeds", "1", "--storage", url)
    assert result.exit_code == 0, result.output
    leak = (
        "column 'code' alone predicts the target with 1.00 CV accuracy (always guessing the "
        "commonest class: 0.38): an identifier, or a leak recorded with or after the outcome? "
        "If it is a real measurement available when predicting, keep it with [data] "
        "ignore_warnings; otherwise add it to [data] drop"
    )
    # Said once, at the start, marked as beside the estimate.
    assert f"warning (possible leak: the score may be inflated): {leak}\n" in result.stderr
    assert result.stderr.count(leak) == 1
    assert (
        "inner studies save no model files (each outer fold retrains its winner on its own "
        "rows; --save-models keeps them)\n"
    ) in result.stderr
    # Beside the estimate, first, marked as what makes the score suspect.
    lines = result.stdout.splitlines()
    assert lines[0] == f"warning (possible leak: the score may be inflated): {leak}"
    assert lines[1].startswith("outer fold")
    for name in ("leaky.outer-1", "leaky.outer-2"):
        study = _study(url, name)
        assert study.user_attrs["hpo_data_warnings"] == [leak]
        assert study.user_attrs["nested:summary"]["data_warnings"] == [leak]
        assert stored_spec(study).artifacts.model == "none"  # type: ignore[union-attr]
        # The best trials' tables and confusion matrices (cheap, shown in the dashboard), no
        # model file.
        files = [a.filename for t in study.trials for a in trial_artifacts(study, t)]
        assert files and not [f for f in files if f.endswith(".keras")], files
    best = hpo("best", "leaky.outer-1", "--storage", url)
    assert best.stdout.splitlines()[0] == (
        f"warning (possible leak: the score may be inflated): {leak}"
    )
    assert best.stdout.splitlines()[1].startswith("best: trial ")


def test_nested_stores_the_rows_once_and_every_inner_study_refers_to_them(
    write_study: WriteStudy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``[data] store = true`` the inner studies live in one storage and train on the same
    rows: one stored copy, recorded by hash on each, so `hpo worker NAME.outer-I` and `hpo
    nested` itself run on a machine without the CSV."""
    import hashlib

    import sqlalchemy

    from hpo.study import stores
    from hpo.study.record import ARTIFACT_TABLE, DATA_ATTR

    study_file = write_study(
        '[artifacts]\nstore = "database"\n', name="kept", engine="stacked", epochs=1, n_trials=2
    )
    study_file.write_text(study_file.read_text().replace("[data]\n", "[data]\nstore = true\n"))
    url = f"sqlite:///{tmp_path / 'k.db'}"
    result = hpo("nested", study_file, "--outer", "2", "--seeds", "1", "--storage", url)
    assert result.exit_code == 0, result.output
    csv = tmp_path / "tiny.csv"
    content = csv.read_bytes()
    records = [_study(url, f"kept.outer-{i}").user_attrs[DATA_ATTR] for i in (1, 2)]
    assert records[0] == records[1]  # the same copy, referred to by both
    assert records[0]["sha256"] == hashlib.sha256(content).hexdigest()
    with sqlalchemy.create_engine(url).connect() as conn:
        ids = list(
            conn.execute(
                sqlalchemy.text(f"SELECT DISTINCT artifact_id FROM {ARTIFACT_TABLE}")
            ).scalars()
        )
    store = stores.DatabaseArtifactStore(open_storage(url).engine)
    copies = []
    for artifact_id in ids:
        with store.open_reader(artifact_id) as fh:
            if fh.read() == content:
                copies.append(artifact_id)
    assert copies == [records[0]["artifact_id"]]  # stored once, beside the trials' files

    csv.unlink()  # machine B: the study file and the storage, no CSV
    monkeypatch.setenv("HPO_DATA_DIR", str(tmp_path / "b-data"))
    fetched = stores.data_for(_study(url, "kept.outer-2"), None, url=url)
    assert fetched is not None and Path(fetched).read_bytes() == content
    again = hpo("nested", study_file, "--outer", "2", "--seeds", "1", "--storage", url)
    assert again.exit_code == 0, again.output  # resumed on the stored copy
    assert again.stdout == result.stdout
