"""The examples run as a user would run them: the notebook-style script, and the builder study
from another directory (its module is found next to the study file)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.mark.slow
def test_the_notebook_script_runs_a_study_on_a_dataframe(tmp_path: Path) -> None:
    shutil.copy(EXAMPLES / "notebook.py", tmp_path)
    done = subprocess.run(
        [sys.executable, "notebook.py"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "best trial " in done.stdout
    assert "same plan, seed 7: " in done.stdout
    assert "winner trained on all rows: training accuracy " in done.stdout
    assert "Traceback" not in done.stderr
    study = optuna.load_study(
        study_name="wine-notebook", storage=f"sqlite:///{tmp_path}/notebook.db"
    )
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 10


@pytest.mark.slow
def test_the_builder_study_runs_from_any_directory(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hpo",
            "run",
            str(EXAMPLES / "own-model.toml"),
            "--n-trials",
            "2",
            "--epochs",
            "2",
        ],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        "model: models:wide_and_deep (your own); searching layers 'wide', 'deep_1', 'deep_2'; "
        "reference engine (the stacked engine trains only the built-in network)"
    ) in done.stderr
    study = optuna.load_study(study_name="own-model", storage=f"sqlite:///{tmp_path}/hpo.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert {"wide_l1", "wide_l2"} & set(study.trials[1].params)
    assert study.trials[1].params.get("wide_placement", "kernel") == "kernel"
