from __future__ import annotations

import os
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

ROOT = Path(__file__).resolve().parents[1]
SHARED_CSV = ROOT.parent / "shared" / "data" / "jh-simple-dataset.csv"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's HPO_STORAGE or writes into the repository."""
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    monkeypatch.setenv("HPO_DATA_DIR", str(tmp_path / "data-cache"))
    monkeypatch.chdir(tmp_path)


def make_frame(n_rows: int = 90, seed: int = 0) -> pd.DataFrame:
    """A small learnable table: two numbers (one with gaps), one text column, three classes."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, n_rows)
    frame = pd.DataFrame(
        {
            "row": np.arange(n_rows),
            "size": label * 2.0 + rng.normal(0, 0.7, n_rows),
            "weight": label * -1.0 + rng.normal(0, 0.7, n_rows) + 10,
            "color": np.where(
                label == 2, "red", np.where(rng.random(n_rows) < 0.5, "blue", "green")
            ),
            "kind": np.array(["x", "y", "z"])[label],
        }
    )
    frame.loc[frame.index % 7 == 3, "weight"] = np.nan
    return frame


@pytest.fixture
def tiny_csv(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.csv"
    make_frame().to_csv(path, index=False)
    return path


@pytest.fixture
def write_study(tmp_path: Path, tiny_csv: Path) -> Callable[..., Path]:
    """Write a study file over ``tiny.csv``; ``extra`` TOML is appended, ``**sections`` replace."""

    def write(
        extra: str = "",
        *,
        name: str = "tiny",
        epochs: int = 3,
        engine: str = "reference",
        data: str | None = None,
        n_trials: int = 3,
    ) -> Path:
        data_table = (
            data
            if data is not None
            else (f'[data]\npath = "{tiny_csv}"\ntarget = "kind"\ndrop = ["row"]\n')
        )
        text = textwrap.dedent(
            f"""
            [study]
            name = "{name}"

            {data_table}

            [cv]
            folds = 3
            seed = 1

            [model]
            hidden = [8, 4]
            epochs = {epochs}
            batch_size = 16

            [engine]
            name = "{engine}"
            trials_per_batch = 2

            [sampler]
            seed = 3
            n_startup_trials = 2

            [budget]
            n_trials = {n_trials}
            """
        ) + textwrap.dedent(extra)
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        return path

    return write
