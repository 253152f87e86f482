"""Data: load rows (CSV path, cached URL download, or a data set shipped inside a package), cut
them into cross-validation folds, and preprocess each fold as the course does.

The preprocessing (one-hot for text columns, median fill and z-score for numbers) is fitted on
each fold's training rows only, so nothing about the held-out rows leaks into training. Output is
plain numpy, ready for any engine.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hpo.errors import HpoError
from hpo.lazy import lazy_import
from hpo.log import get_logger
from hpo.seeds import split_seed
from hpo.spec import CVSpec, DataSpec

if TYPE_CHECKING:
    import urllib.request as urllib_request

    import numpy as np
    import pandas as pd
    import sklearn.datasets as sklearn_datasets
    import sklearn.model_selection as sklearn_splits
else:
    urllib_request = lazy_import("urllib.request")
    np = lazy_import("numpy")
    pd = lazy_import("pandas")
    sklearn_datasets = lazy_import("sklearn.datasets")
    sklearn_splits = lazy_import("sklearn.model_selection")

__all__ = [
    "Dataset",
    "Fold",
    "FoldSet",
    "Preprocessor",
    "cache_dir",
    "load_dataset",
    "load_folds",
    "make_fold_set",
    "make_folds",
]

_log = get_logger("data")


@dataclass(frozen=True)
class Dataset:
    """Raw feature columns (target and dropped columns removed) and integer class labels."""

    features: pd.DataFrame
    labels: np.ndarray
    classes: tuple[str, ...]
    source: str

    @property
    def n_rows(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Fold:
    """One fold, preprocessed with statistics of its own training rows."""

    index: int
    train_rows: np.ndarray
    valid_rows: np.ndarray
    x_train: np.ndarray
    y_train: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])


@dataclass(frozen=True)
class FoldSet:
    """The K folds of every repeat (repeated K-fold reshuffles the rows once per repeat)."""

    repeats: tuple[tuple[Fold, ...], ...]
    classes: tuple[str, ...]

    @property
    def n_folds(self) -> int:
        return len(self.repeats[0])

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def cache_dir() -> Path:
    """Where downloads are cached: ``$HPO_DATA_DIR`` or ``./data``."""
    return Path(os.environ.get("HPO_DATA_DIR", "data"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, dest: Path, sha256: str | None) -> None:
    _log.info("downloading %s -> %s", url, dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with (
            urllib_request.urlopen(url, timeout=60) as response,
            tempfile.NamedTemporaryFile(dir=dest.parent, delete=False, suffix=".part") as tmp,
        ):
            shutil.copyfileobj(response, tmp)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise HpoError(
            f"{url}: download failed ({reason}); download it yourself and pass --data PATH"
        ) from None
    tmp_path = Path(tmp.name)
    if sha256 is not None and (actual := _sha256(tmp_path)) != sha256.lower():
        tmp_path.unlink()
        raise HpoError(f"{url}: sha256 is {actual}, but the study file expects {sha256}")
    tmp_path.replace(dest)


def _resolve_csv(spec: DataSpec) -> Path:
    """The local CSV for ``spec``: its path, or the URL's cached download (fetched once)."""
    if spec.url is None:
        assert spec.path is not None
        return Path(spec.path)
    cached = Path(spec.path) if spec.path else cache_dir() / Path(spec.url.split("?")[0]).name
    if not cached.exists():
        _download(spec.url, cached, spec.sha256)
    return cached


def _read_csv(path: Path, na_values: tuple[str, ...]) -> pd.DataFrame:
    if path.is_dir():
        raise HpoError(f"{path}: is a directory, not a CSV file")
    try:
        return pd.read_csv(path, na_values=list(na_values) or None)
    except FileNotFoundError:
        raise HpoError(
            f"{path}: data file not found; fix [data] path or pass --data PATH"
        ) from None
    except PermissionError:
        raise HpoError(f"{path}: data file is not readable (permission denied)") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HpoError(f"{path}: cannot parse as CSV ({first})") from None


def _load_package_dataset(name: str) -> pd.DataFrame:
    """``sklearn:wine`` -> the frame of ``sklearn.datasets.load_wine``, class names as target."""
    short = name.split(":", 1)[1]
    loader = getattr(sklearn_datasets, f"load_{short}", None)
    if loader is None or short in ("files", "sample_image", "sample_images", "svmlight_file"):
        raise HpoError(
            f"dataset {name!r} is not a data set shipped with scikit-learn; "
            "try sklearn:wine, sklearn:iris, sklearn:breast_cancer or sklearn:digits"
        )
    bunch = loader(as_frame=True)
    frame = bunch.frame.copy()
    names = getattr(bunch, "target_names", None)
    if names is not None and len(names):
        frame["target"] = [str(names[i]) for i in frame["target"]]
    return frame


def load_dataset(spec: DataSpec, *, path_override: str | Path | None = None) -> Dataset:
    """Load and check the rows ``spec`` names (``path_override`` wins over path/url/dataset)."""
    if path_override is not None:
        source = str(path_override)
        frame = _read_csv(Path(path_override), spec.na_values)
    elif spec.dataset is not None:
        source = spec.dataset
        frame = _load_package_dataset(spec.dataset)
    else:
        csv = _resolve_csv(spec)
        source = str(csv)
        frame = _read_csv(csv, spec.na_values)

    if spec.target not in frame.columns:
        raise HpoError(
            f"{source}: target column {spec.target!r} not found; columns are "
            + ", ".join(map(str, frame.columns))
        )
    missing = [c for c in spec.drop if c not in frame.columns]
    if missing:
        raise HpoError(f"{source}: column {missing[0]!r} listed in [data] drop is not in the data")
    target = frame[spec.target]
    if target.isna().any():
        raise HpoError(
            f"{source}: target column {spec.target!r} has {int(target.isna().sum())} missing values; "
            "drop those rows first"
        )
    classes = tuple(sorted(map(str, target.unique())))
    if len(classes) < 2:
        raise HpoError(
            f"{source}: target column {spec.target!r} has a single class ({classes[0]!r}); "
            "classification needs at least 2"
        )
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[str(v)] for v in target], dtype=np.int32)
    features = frame.drop(columns=[spec.target, *spec.drop])
    if features.shape[1] == 0:
        raise HpoError(
            f"{source}: no feature columns left after dropping the target and {list(spec.drop)}"
        )
    return Dataset(features=features, labels=labels, classes=classes, source=source)


class Preprocessor:
    """Course preprocessing, fitted on training rows: one-hot text, median-fill + z-score numbers.

    The category list of each text column is the column's schema (``categories``, taken from all
    rows so every fold has the same input width); only statistics of values (medians, means,
    standard deviations) come from the training rows. A constant column scales by 1.
    """

    def __init__(self) -> None:
        self.numeric: list[str] = []
        self.categorical: dict[str, list[str]] = {}
        self.medians: dict[str, float] = {}
        self.means: dict[str, float] = {}
        self.stds: dict[str, float] = {}

    def fit(
        self, frame: pd.DataFrame, *, categories: dict[str, list[str]] | None = None
    ) -> Preprocessor:
        for column in frame.columns:
            values = frame[column]
            if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
                self.numeric.append(column)
                median = values.median()
                median = 0.0 if pd.isna(median) else float(median)
                filled = values.fillna(median).astype(float)
                self.medians[column] = median
                self.means[column] = float(filled.mean())
                std = float(filled.std(ddof=0))
                self.stds[column] = std if std > 0 else 1.0
            else:
                known = categories.get(column) if categories else None
                self.categorical[column] = known or sorted(map(str, values.dropna().unique()))
        return self

    @property
    def feature_names(self) -> list[str]:
        names = list(self.numeric)
        for column, categories in self.categorical.items():
            names += [f"{column}_{c}" for c in categories]
        return names

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        blocks = []
        for column in self.numeric:
            values = frame[column].fillna(self.medians[column]).to_numpy(dtype=np.float64)
            blocks.append(((values - self.means[column]) / self.stds[column])[:, None])
        for column, categories in self.categorical.items():
            values = frame[column].astype("string").to_numpy(dtype=object)
            blocks.append(
                (values[:, None] == np.array(categories, dtype=object)[None, :]).astype(np.float64)
            )
        return np.hstack(blocks).astype(np.float32)


def make_folds(dataset: Dataset, cv: CVSpec, *, repeat: int = 0) -> list[Fold]:
    """K folds as scikit-learn's (Stratified)KFold cuts them; ``repeat`` reshuffles (seed + repeat)."""
    if cv.folds > dataset.n_rows:
        raise HpoError(
            f"{dataset.source}: folds={cv.folds} is more than the {dataset.n_rows} rows; use fewer folds"
        )
    seed = split_seed(cv.seed, repeat) if cv.shuffle else None
    if cv.stratified:
        counts = np.bincount(dataset.labels, minlength=len(dataset.classes))
        smallest = int(np.argmin(counts))
        if counts[smallest] < cv.folds:
            raise HpoError(
                f"{dataset.source}: class {dataset.classes[smallest]!r} has {counts[smallest]} rows, "
                f"fewer than folds={cv.folds}; use fewer folds or set [cv] stratified = false"
            )
        splitter: sklearn_splits.KFold | sklearn_splits.StratifiedKFold = sklearn_splits.StratifiedKFold(
            cv.folds, shuffle=cv.shuffle, random_state=seed
        )
    else:
        splitter = sklearn_splits.KFold(cv.folds, shuffle=cv.shuffle, random_state=seed)
    schema = Preprocessor().fit(dataset.features).categorical
    folds = []
    for i, (train_rows, valid_rows) in enumerate(splitter.split(dataset.features, dataset.labels)):
        train = dataset.features.iloc[train_rows]
        prep = Preprocessor().fit(train, categories=schema)
        folds.append(
            Fold(
                index=i,
                train_rows=train_rows,
                valid_rows=valid_rows,
                x_train=prep.transform(train),
                y_train=dataset.labels[train_rows],
                x_valid=prep.transform(dataset.features.iloc[valid_rows]),
                y_valid=dataset.labels[valid_rows],
            )
        )
    return folds


def load_folds(
    spec: DataSpec, cv: CVSpec, *, path_override: str | Path | None = None
) -> tuple[Dataset, FoldSet]:
    """The rows ``spec`` names and their folds (every repeat), ready to train on."""
    dataset = load_dataset(spec, path_override=path_override)
    return dataset, make_fold_set(dataset, cv)


def make_fold_set(dataset: Dataset, cv: CVSpec) -> FoldSet:
    """Every repeat's folds, each preprocessed on its own training rows."""
    repeats = tuple(tuple(make_folds(dataset, cv, repeat=r)) for r in range(cv.repeats))
    return FoldSet(repeats=repeats, classes=dataset.classes)
