"""The tasks of ``bench/search_quality.py``: study specs and their data, offline and seeded.

Each task is a study file's worth of settings plus a DataFrame. Two are the course data (its
own network at 500 epochs; a wider one that overfits more), the others ship with scikit-learn or
are generated: digits on a small training subset, a task with many pure-noise features (where an
L1 penalty on the first layer's weights should matter), and wine (where little can be gained).
Every task sets rows aside (``[cv] holdout``) so that the plan a search picks can be scored on
rows no trial saw.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
COURSE_CSV = ROOT.parent / "shared" / "data" / "jh-simple-dataset.csv"


@dataclass(frozen=True)
class Task:
    name: str
    what: str
    study: dict[str, Any]
    frame: Callable[[], pd.DataFrame]


def _course_frame() -> pd.DataFrame:
    if not COURSE_CSV.exists():
        raise SystemExit(f"the course data is needed at {COURSE_CSV}")
    return pd.read_csv(COURSE_CSV, na_values=["NA", "?"], keep_default_na=True)


def _digits_frame() -> pd.DataFrame:
    from sklearn.datasets import load_digits

    bunch = load_digits(as_frame=True)
    frame = bunch.frame.rename(columns={"target": "digit"})
    # A small training subset: 600 rows, half of them held out (300 searched).
    return frame.sample(n=600, random_state=0).reset_index(drop=True)


def _noise_frame() -> pd.DataFrame:
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=600,
        n_features=100,
        n_informative=8,
        n_redundant=0,
        n_repeated=0,
        n_classes=3,
        n_clusters_per_class=2,
        flip_y=0.02,
        class_sep=1.0,
        shuffle=True,
        random_state=0,
    )
    frame = pd.DataFrame(x, columns=[f"x{i:03d}" for i in range(x.shape[1])])
    frame["label"] = np.array(["a", "b", "c"])[y]
    return frame


def _wine_frame() -> pd.DataFrame:
    from sklearn.datasets import load_wine

    return load_wine(as_frame=True).frame


def _study(
    name: str,
    target: str,
    *,
    hidden: list[int],
    epochs: int,
    holdout: float,
    stratified: bool,
    drop: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "study": {"name": name},
        "data": {"path": "bench-data.csv", "target": target, "drop": drop or []},
        "cv": {
            "folds": 5,
            "shuffle": True,
            "seed": 42,
            "stratified": stratified,
            "holdout": holdout,
        },
        "model": {"hidden": hidden, "epochs": epochs, "batch_size": 32},
        "engine": {"name": "stacked", "trials_per_batch": 8, "threads": 1},
        "artifacts": {"top_k": 0, "model": "none"},
    }


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            "course",
            "course data, Dense 50-25, 500 epochs; 1,600 rows searched, 400 held out",
            _study(
                "course",
                "product",
                hidden=[50, 25],
                epochs=500,
                holdout=0.2,
                stratified=False,
                drop=["id"],
            ),
            _course_frame,
        ),
        Task(
            "course-wide",
            "course data, Dense 256-128 (overfits more), 30 epochs; 1,600 / 400 rows",
            _study(
                "course-wide",
                "product",
                hidden=[256, 128],
                epochs=30,
                holdout=0.2,
                stratified=False,
                drop=["id"],
            ),
            _course_frame,
        ),
        Task(
            "digits",
            "scikit-learn digits, 300 rows searched, 300 held out, Dense 64-32, 200 epochs",
            _study("digits", "digit", hidden=[64, 32], epochs=200, holdout=0.5, stratified=True),
            _digits_frame,
        ),
        Task(
            "noise",
            "make_classification: 8 informative of 100 features, 3 classes; 300 / 300 rows, "
            "Dense 50-25, 200 epochs",
            _study("noise", "label", hidden=[50, 25], epochs=200, holdout=0.5, stratified=True),
            _noise_frame,
        ),
        Task(
            "wine",
            "scikit-learn wine, 124 rows searched, 54 held out, Dense 32-16, 100 epochs",
            _study("wine", "target", hidden=[32, 16], epochs=100, holdout=0.3, stratified=True),
            _wine_frame,
        ),
    )
}
