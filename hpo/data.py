"""Data: load rows (CSV path, cached URL download, or a data set shipped inside a package), cut
them into cross-validation folds, and preprocess each fold as the course does.

Loading refuses what would make a study silently wrong, each with one line naming the file,
column and value: a column name that appears twice (pandas would rename it, and a second copy
of the target would become a perfect feature), a target that looks like a regression target,
a class structure that makes K-fold accuracy meaningless, a missing target (unless
``missing_target = "drop"``), a number float32 cannot hold. What it fixes on the way (stray
whitespace in names and text values) it reports in :attr:`Dataset.notes`.

The preprocessing (one-hot for text columns, median fill and z-score for numbers) is fitted on
each fold's training rows only, so nothing about the held-out rows leaks into training. Output is
plain numpy, ready for any engine, and memory grows with the rows, not with folds x copies: the
folds of every repeat are row positions in one float32 :class:`Table`, each with its own
:class:`Scaling` (its training rows' statistics), applied where a fold's rows are formed (by the
stacked engine in its graph, batch by batch; by :attr:`Fold.x_train` for ``model.fit``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import urllib.error
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from hpo.errors import HpoError
from hpo.lazy import lazy_import
from hpo.log import get_logger
from hpo.seeds import holdout_seed, outer_seed, split_seed
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
    "MAX_NUMERIC_CLASSES",
    "MISSING_CATEGORY",
    "Categories",
    "Dataset",
    "Fold",
    "FoldSet",
    "Holdout",
    "Preprocessor",
    "Scaling",
    "Table",
    "aligned_empty",
    "cache_dir",
    "category_text",
    "check_classes",
    "check_numbers",
    "class_fix",
    "clean_table",
    "file_sha256",
    "fold_rows",
    "holdout_fold_set",
    "is_aligned",
    "load_dataset",
    "load_folds",
    "load_holdout",
    "make_fold_set",
    "make_folds",
    "quoted",
    "read_csv",
    "row_count",
    "source_bytes",
    "split_holdout",
    "tiny_classes",
    "too_few",
]

_log = get_logger("data")


@dataclass(frozen=True)
class Dataset:
    """Raw feature columns (target and dropped columns removed) and integer class labels.

    ``categorical``: the numeric-coded columns the study file says are categories.
    ``dropped``: the columns ``[data] drop`` removed. ``notes``: what loading changed, in plain
    words (names stripped of whitespace, rows without a target dropped), for the user to see.
    ``url``: where a downloaded file came from; ``sha256``: the SHA-256 of the file read (a
    CSV, not a package data set or a DataFrame), so a study records the exact data it used.
    """

    features: pd.DataFrame
    labels: np.ndarray
    classes: tuple[str, ...]
    source: str
    categorical: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    holdout: Holdout | None = None
    url: str | None = None
    sha256: str | None = None

    def origin(self) -> dict[str, str]:
        """Where the rows were read from, as a study records it: ``path`` (or ``dataset``, or
        ``frame``), ``url`` when downloaded, and the file's ``sha256``."""
        if self.sha256 is None:
            key = "dataset" if self.source.startswith("sklearn:") else "frame"
            return {key: self.source}
        return {
            "path": self.source,
            **({"url": self.url} if self.url is not None else {}),
            "sha256": self.sha256,
        }

    @property
    def n_rows(self) -> int:
        return len(self.labels)

    def rows_text(self) -> str:
        """``1600 rows (400 more held out ...)``: the rows searched on, and those set aside."""
        if self.holdout is None:
            return f"{self.n_rows} rows"
        held = len(self.holdout.holdout_rows)
        if self.holdout.outer is not None:
            fold, of = self.holdout.outer
            return f"{self.n_rows} rows ({held} more held out: outer fold {fold} of {of})"
        return f"{self.n_rows} rows ({held} more held out for `hpo evaluate`)"

    def subset(self, rows: np.ndarray) -> Dataset:
        """These rows only, in this order (numbered from 0 again)."""
        return replace(
            self,
            features=self.features.iloc[rows].reset_index(drop=True),
            labels=self.labels[rows],
            holdout=None,
        )


@dataclass(frozen=True)
class Holdout:
    """The rows ``[cv] holdout`` sets aside before the search, as positions in the loaded data.

    ``fingerprint``: a SHA-256 of those positions, their labels, the feature columns' names and
    the held-out rows' values, recorded on the study, so a later run on changed data (whose
    held-out rows could differ, and might then be trained on) is refused.
    """

    fraction: float
    search_rows: np.ndarray
    holdout_rows: np.ndarray
    fingerprint: str
    outer: tuple[int, int] | None = None  # (fold, of): the outer test fold of ``hpo nested``

    def to_dict(self) -> dict[str, object]:
        return {
            "fraction": round(self.fraction, 6),
            "rows": len(self.holdout_rows),
            "of": len(self.search_rows) + len(self.holdout_rows),
            "sha256": self.fingerprint,
        }


# Where a matrix starts: 64 bytes is the alignment TensorFlow needs to use numpy memory in place.
_ALIGN_BYTES = 64


def aligned_empty(shape: tuple[int, ...], dtype: type | np.dtype | None = None) -> np.ndarray:
    """An uninitialized C-contiguous array (float32 unless ``dtype`` says) whose first byte
    sits on a 64-byte boundary, so an engine can hand it to TensorFlow without copying it (see
    :func:`is_aligned`)."""
    dtype = np.float32 if dtype is None else dtype  # not a default: numpy loads lazily
    itemsize = np.dtype(dtype).itemsize
    count = int(np.prod(shape, dtype=np.int64))
    raw = np.empty(count * itemsize + _ALIGN_BYTES, dtype=np.uint8)
    start = -raw.ctypes.data % _ALIGN_BYTES
    return raw[start : start + count * itemsize].view(dtype).reshape(shape)


def is_aligned(array: np.ndarray) -> bool:
    """C-contiguous and on a 64-byte boundary: what :func:`aligned_empty` gives."""
    return bool(array.flags.c_contiguous) and array.ctypes.data % _ALIGN_BYTES == 0


@dataclass(frozen=True, eq=False)
class Table:
    """The rows every fold of a :class:`FoldSet` reads: one float32 matrix, one label vector.

    ``x`` ``[rows, features]`` is the network's input columns in :attr:`Preprocessor.feature_names`
    order: one-hot columns as 0/1, numeric columns as ``(value - center) / spread`` with a gap left
    as NaN. ``center`` and ``spread`` are the mean and standard deviation of the rows the folds
    train on (all rows of a K-fold split); they only keep float32's precision where the values
    are (a year column, 2000 +- 10, would lose its decimals around 2000) and cancel out of what
    a fold sees, which its :class:`Scaling` decides from its own training rows. One matrix
    serves every fold and repeat, so memory grows with the rows, not with folds x copies.

    ``x`` is 64-byte aligned (engines may use it in place) and never written after it is built.
    """

    x: np.ndarray
    labels: np.ndarray

    @property
    def n_rows(self) -> int:
        return int(self.x.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.x.shape[1])

    @property
    def gaps(self) -> bool:
        """Whether any cell is a gap (NaN), to be filled per fold."""
        return bool(np.isnan(self.x).any())


@dataclass(frozen=True, eq=False)
class Scaling:
    """A fold's preprocessing of :attr:`Table.x`, fitted on its training rows: a column's value
    becomes ``(x - shift) / scale`` (float32, two roundings), a gap becomes ``fill`` (the fold's
    median, standardized). One-hot columns pass through (shift 0, scale 1).

    Each is a float32 vector over the table's columns; :meth:`apply` is the formula, and the
    stacked engine computes the same float32 operations on each batch it forms.
    """

    shift: np.ndarray
    scale: np.ndarray
    fill: np.ndarray

    @classmethod
    def identity(cls, n_features: int) -> Scaling:
        zeros = np.zeros(n_features, np.float32)
        return cls(zeros, np.ones(n_features, np.float32), zeros)

    def apply(self, x: np.ndarray, *, in_place: bool = False) -> np.ndarray:
        """The fold's network input for raw table rows ``x``: a new float32 array, or ``x``
        itself rewritten with ``in_place`` (a fresh gather of rows, so a fold's matrix is made
        without a second temporary of its size)."""
        gaps = np.isnan(x)
        z = x if in_place else np.empty_like(x)
        np.subtract(x, self.shift, out=z)
        np.divide(z, self.scale, out=z)
        if gaps.any():
            np.copyto(z, np.broadcast_to(self.fill, z.shape), where=gaps)
        return z


@dataclass(frozen=True, eq=False, init=False)
class Fold:
    """One fold: which rows of the shared :class:`Table` it trains on and holds out, and its
    :class:`Scaling`, fitted on its own training rows.

    ``train_rows`` and ``valid_rows`` are positions in the rows the folds were cut from (and in
    the table, which holds those rows in that order). The fold holds no matrix of its own:
    :attr:`x_train` and :attr:`x_valid` are made on each access (rare callers: the reference
    engine's ``model.fit``, export, tests), while the stacked engine forms its batches from the
    table. The arrays-in form ``Fold(index, train_rows, valid_rows, x_train, y_train, x_valid,
    y_valid)`` still works (see :meth:`from_arrays`).
    """

    index: int
    train_rows: np.ndarray
    valid_rows: np.ndarray
    table: Table
    scaling: Scaling

    def __init__(
        self,
        index: int,
        train_rows: np.ndarray,
        valid_rows: np.ndarray,
        *arrays: np.ndarray,
        table: Table | None = None,
        scaling: Scaling | None = None,
    ) -> None:
        if arrays:
            if len(arrays) != 4 or table is not None or scaling is not None:
                raise TypeError(
                    "Fold takes (index, train_rows, valid_rows, table=, scaling=) or "
                    "(index, train_rows, valid_rows, x_train, y_train, x_valid, y_valid)"
                )
            made = Fold.from_arrays(index, train_rows, valid_rows, *arrays)
            table, scaling = made.table, made.scaling
        if table is None or scaling is None:
            raise TypeError("Fold needs a table and a scaling (or the four arrays)")
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "train_rows", train_rows)
        object.__setattr__(self, "valid_rows", valid_rows)
        object.__setattr__(self, "table", table)
        object.__setattr__(self, "scaling", scaling)

    @classmethod
    def from_arrays(
        cls,
        index: int,
        train_rows: np.ndarray,
        valid_rows: np.ndarray,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_valid: np.ndarray,
        y_valid: np.ndarray,
    ) -> Fold:
        """A fold over ready-made network inputs (already preprocessed: the scaling is the
        identity). The rows go into a table at their positions ``train_rows`` and
        ``valid_rows``; a row in both (``hpo export`` trains and scores on every row) is written
        once from each, so both must agree."""
        train_rows = np.asarray(train_rows)
        valid_rows = np.asarray(valid_rows)
        n_rows = 1 + max(int(train_rows.max(initial=-1)), int(valid_rows.max(initial=-1)))
        n_features = int(np.shape(x_train)[1])
        x = aligned_empty((n_rows, n_features))
        x[...] = 0.0
        labels = np.zeros(n_rows, np.int32)
        x[train_rows], labels[train_rows] = x_train, y_train
        x[valid_rows], labels[valid_rows] = x_valid, y_valid
        table = Table(x=x, labels=labels)
        return cls(index, train_rows, valid_rows, table=table, scaling=Scaling.identity(n_features))

    @property
    def x_train(self) -> np.ndarray:
        """The training rows as the network sees them (a new float32 array, made now)."""
        return self.scaling.apply(self.table.x[self.train_rows], in_place=True)

    @property
    def x_valid(self) -> np.ndarray:
        """The held-out rows as the network sees them (a new float32 array, made now)."""
        return self.scaling.apply(self.table.x[self.valid_rows], in_place=True)

    @property
    def y_train(self) -> np.ndarray:
        return self.table.labels[self.train_rows]

    @property
    def y_valid(self) -> np.ndarray:
        return self.table.labels[self.valid_rows]

    @property
    def n_features(self) -> int:
        return self.table.n_features


@dataclass(frozen=True)
class FoldSet:
    """The K folds of every repeat (repeated K-fold reshuffles the rows once per repeat), all
    reading one :class:`Table`."""

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


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read a MiB at a time (data files can be large)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, dest: Path, sha256: str | None) -> None:
    """``url`` into ``dest``; a failed download leaves nothing behind, not even the folders
    made for it (``hpo check`` touches no storage, even when it fails)."""
    _log.info("downloading %s -> %s", url, dest)
    made = [folder for folder in (dest.parent, *dest.parent.parents) if not folder.exists()]
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        _fetch(url, dest, sha256)
    except BaseException:
        for folder in made:  # deepest first; only if still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _fetch(url: str, dest: Path, sha256: str | None) -> None:
    tmp_path: Path | None = None
    try:
        with (
            urllib_request.urlopen(url, timeout=60) as response,
            tempfile.NamedTemporaryFile(dir=dest.parent, delete=False, suffix=".part") as tmp,
        ):
            tmp_path = Path(tmp.name)
            shutil.copyfileobj(response, tmp)
    except BaseException as exc:  # a stop mid-download too: no half file is left
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
        if not isinstance(exc, urllib.error.URLError | OSError | ValueError):
            raise
        reason = getattr(exc, "reason", exc)
        raise HpoError(
            f"{url}: download failed ({reason}); download it yourself and pass --data PATH"
        ) from None
    if sha256 is not None and (actual := file_sha256(tmp_path)) != sha256.lower():
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


def source_bytes(spec: DataSpec, *, path_override: str | Path | None = None) -> tuple[bytes, str]:
    """The bytes of the rows ``spec`` names, as a CSV, and what they came from: the file (a
    URL's cached download, fetched if missing), or a package data set written as CSV (which
    :func:`read_csv` reads back into the same table). ``[data] store`` keeps these bytes."""
    if path_override is None and spec.dataset is not None:
        text = _load_package_dataset(spec.dataset).to_csv(index=False)
        return text.encode("utf-8"), f"{spec.dataset} (as CSV)"
    path = Path(path_override) if path_override is not None else _resolve_csv(spec)
    try:
        return path.read_bytes(), str(path)
    except FileNotFoundError:
        raise HpoError(f"{path}: data file not found") from None
    except OSError as exc:
        raise HpoError(f"{path}: cannot read the data file ({exc.strerror})") from None


def read_csv(path: Path, na_values: tuple[str, ...]) -> pd.DataFrame:
    """The CSV's rows, with the header's cells exactly as written (pandas would rename a
    repeated name to ``name.1`` and hide it; :func:`_clean_names` decides instead).

    ``index_col=False``: a delimiter at the end of every data row (a common export) would
    otherwise make pandas take the first column as the index and shift every name by one.
    """
    if path.is_dir():
        raise HpoError(f"{path}: is a directory, not a CSV file")
    try:
        with warnings.catch_warnings():
            # The one line this function raises says it better (a ';' file: header vs rows).
            warnings.simplefilter("ignore", pd.errors.ParserWarning)
            frame = pd.read_csv(path, na_values=list(na_values) or None, index_col=False)
        header = pd.read_csv(
            path,
            header=None,
            nrows=1,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            index_col=False,
        )
    except FileNotFoundError:
        raise HpoError(
            f"{path}: data file not found"
            + ("" if path.is_absolute() else f" (relative to the working directory {Path.cwd()})")
            + "; fix [data] path or pass --data PATH"
        ) from None
    except PermissionError:
        raise HpoError(f"{path}: data file is not readable (permission denied)") from None
    except UnicodeDecodeError as exc:
        raise HpoError(f"{path}: cannot parse as CSV ({exc}); save it as UTF-8") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HpoError(f"{path}: cannot parse as CSV ({first})") from None
    written = list(header.iloc[0])[: frame.shape[1]] if len(header) else []
    if len(written) == frame.shape[1]:
        # A blank header cell gets pandas' name for an empty one, so it can be dropped by name.
        frame.columns = [w if w.strip() else f"Unnamed: {i}" for i, w in enumerate(written)]
        # A blank name over a column with no value at all is a delimiter at the end of every
        # line, header included: an artifact of the export, not a column.
        artifacts = [
            c
            for c, w in zip(frame.columns, written, strict=True)
            if not w.strip() and frame[c].isna().all()
        ]
        frame = frame.drop(columns=artifacts)
    return frame


def _clean_cells(
    frame: pd.DataFrame,
    na_values: tuple[str, ...],
    column_na_values: Mapping[str, tuple[str, ...]],
) -> tuple[pd.DataFrame, list[str]]:
    """Text cells stripped of surrounding whitespace, then the missing-value markers applied
    again (``column_na_values``: a column's own, besides ``na_values``); a column that is all
    numbers once stripped becomes numeric.

    UCI-style files write ``39, ?, <=50K``: without this, ``' ?'`` would not match the marker
    ``?``, and every class name would start with a space.
    """
    changed = []
    marked: dict[str, int] = {}
    frame = frame.copy(deep=False)
    for column in frame.columns:
        values = frame[column]
        own = column_na_values.get(column, ())
        if pd.api.types.is_bool_dtype(values):
            continue
        if pd.api.types.is_numeric_dtype(values):
            if own:  # a number marker ("0") is that value, however the file wrote it ("0.0")
                hits = values.isin(_numbers(own))
                marked[column] = int(hits.sum())
                frame[column] = values.mask(hits)
            continue
        markers = set(na_values) | {""}
        text = values.astype("string")
        stripped = text.str.strip()
        if own:
            hits = stripped.isin(set(own) - markers) | pd.to_numeric(
                stripped, errors="coerce"
            ).isin(_numbers(own))
            marked[column] = int(hits.sum())
            stripped = stripped.mask(hits)
        stripped = stripped.mask(stripped.isin(markers))
        if not stripped.equals(text):
            changed.append(column)
        numbers = pd.to_numeric(stripped, errors="coerce")
        present = int(stripped.notna().sum())
        if present and int(numbers.notna().sum()) == present:
            frame[column] = numbers
        else:
            frame[column] = stripped
    notes = []
    if changed:
        notes.append(
            f"stripped surrounding whitespace from the values of {len(changed)} text "
            f"column{'s' if len(changed) > 1 else ''}: {quoted(changed[:5])}"
            + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        )
    if marked:
        counts = ", ".join(
            f"{count} value{'' if count == 1 else 's'} in {column!r}"
            for column, count in marked.items()
        )
        notes.append(f"read as missing by [data] na_values per column: {counts}")
    return frame, notes


def _numbers(markers: Iterable[str]) -> list[float]:
    """The markers that are numbers, as numbers."""
    found = []
    for marker in markers:
        with contextlib.suppress(ValueError):
            found.append(float(marker))
    return found


def check_numbers(frame: pd.DataFrame, source: str, *, skip: tuple[str, ...] = ()) -> None:
    """Refuse a number the network cannot take: infinite, or beyond float32's range
    (``skip``: columns that are dropped anyway)."""
    limit = float(np.finfo(np.float32).max)
    for column in frame.columns:
        if column in skip:
            continue
        values = frame[column]
        if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            continue
        numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.flatnonzero(np.isinf(numbers) | (np.abs(np.nan_to_num(numbers)) > limit))
        if len(bad):
            raise HpoError(
                f"{source}: column {column!r} has {len(bad)} value(s) that are infinite or too "
                f"large for float32 (first {numbers[bad[0]]:g}, in data row {bad[0] + 1}); fix "
                "them, mark them missing with [data] na_values, or drop the column"
            )


def _clean_names(frame: pd.DataFrame, source: str) -> tuple[pd.DataFrame, list[str]]:
    """Column names stripped of surrounding whitespace; a name that appears twice is an error.

    A repeated name is never renamed: a second copy of the target would otherwise become a
    feature that predicts it perfectly.
    """
    written = [str(c) for c in frame.columns]
    names = [w.strip() for w in written]
    first_at: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in first_at:
            j = first_at[name]
            spelled = (
                f" (written {written[j]!r} and {written[i]!r})" if written[j] != written[i] else ""
            )
            raise HpoError(
                f"{source}: column name {name!r} appears twice in the header, as columns "
                f"{j + 1} and {i + 1}{spelled}; rename or remove one"
            )
        first_at[name] = i
    changed = [(w, n) for w, n in zip(written, names, strict=True) if w != n]
    notes = []
    if changed:
        shown = ", ".join(f"{w!r} -> {n!r}" for w, n in changed[:5])
        more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        notes.append(
            f"stripped surrounding whitespace from {len(changed)} column "
            f"name{'s' if len(changed) > 1 else ''}: {shown}{more}"
        )
    frame = frame.copy(deep=False)
    frame.columns = names
    return frame, notes


def clean_table(
    frame: pd.DataFrame,
    na_values: tuple[str, ...],
    source: str,
    *,
    column_na_values: Mapping[str, tuple[str, ...]] | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """A raw table cleaned as every study's rows are (names and text values stripped, a name
    twice refused, ``na_values`` markers, and each column's ``column_na_values``, made gaps,
    all-number text made numeric), and notes saying what that changed. ``hpo predict`` cleans
    new rows with it too."""
    frame, notes = _clean_names(frame, source)
    frame, cell_notes = _clean_cells(frame, na_values, column_na_values or {})
    return frame, notes + cell_notes


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


def row_count(n: float) -> str:
    """``1 row``, ``2 rows``, ``1.5 rows``."""
    return f"{n:g} row" if n == 1 else f"{n:g} rows"


def quoted(names: Iterable[object]) -> str:
    """Column names as the user must type them: quoted, so whitespace shows."""
    return ", ".join(repr(str(n)) for n in names)


# A numeric target with more distinct values than this looks like a count or a measurement.
MAX_NUMERIC_CLASSES = 20


def _labels_text(values: pd.Series) -> pd.Series:
    """Class names: whole numbers without a trailing ``.0`` (a gap made the column float)."""
    if pd.api.types.is_float_dtype(values):
        return values.map(_number_text).astype(str)
    return values.astype(str)


def _check_target_kind(target: pd.Series, spec: DataSpec, source: str) -> None:
    """Refuse a target that looks like a regression target, unless declared as classes."""
    if spec.target_kind == "classes":
        return
    if not pd.api.types.is_numeric_dtype(target) or pd.api.types.is_bool_dtype(target):
        return
    distinct = target.nunique()
    fix = (
        "it looks like a regression target, but hpo's objective is classification accuracy; "
        'if the values really are classes, set [data] target_kind = "classes"'
    )
    fractional = target[target != target.round()]
    if len(fractional):
        raise HpoError(
            f"{source}: target column {spec.target!r} has {distinct} distinct values, not all "
            f"whole numbers (e.g. {float(fractional.iloc[0])!r}): {fix}"
        )
    if distinct > MAX_NUMERIC_CLASSES:
        raise HpoError(
            f"{source}: target column {spec.target!r} has {distinct} distinct whole numbers "
            f"(more than {MAX_NUMERIC_CLASSES}): {fix}"
        )


def _check_columns(frame: pd.DataFrame, spec: DataSpec, source: str) -> None:
    if spec.target not in frame.columns:
        hint = ""
        if frame.shape[1] == 1:
            only = str(frame.columns[0])
            other = next((sep for sep in (";", "\t", "|") if sep in only), None)
            if other is not None:
                hint = f" (the header looks {other!r}-separated; hpo reads comma-separated CSV)"
        raise HpoError(
            f"{source}: target column {spec.target!r} not found; columns are "
            f"{quoted(frame.columns)}{hint}"
        )
    per_column = [name for name, _ in spec.column_na_values]
    for key, names in (
        ("drop", spec.drop),
        ("categorical", spec.categorical),
        ("ignore_warnings", spec.ignore_warnings),
        ("na_values", per_column),
    ):
        absent = [c for c in names if c not in frame.columns]
        if absent:
            raise HpoError(
                f"{source}: column {absent[0]!r} listed in [data] {key} is not in the data; "
                f"columns are {quoted(frame.columns)}"
            )


def load_dataset(
    spec: DataSpec,
    *,
    path_override: str | Path | None = None,
    frame: pd.DataFrame | None = None,
) -> Dataset:
    """Load and check the rows ``spec`` names. ``path_override`` (a CSV) or ``frame`` (a pandas
    DataFrame, as in a notebook) win over path/url/dataset; a frame goes through the same
    checks as a CSV's rows (names stripped, markers in ``na_values`` made missing, ...)."""
    read: Path | None = None  # the CSV file the rows come from
    if frame is not None:
        if not isinstance(frame, pd.DataFrame):
            raise HpoError(f"data must be a CSV path or a pandas DataFrame, but got {type(frame)}")
        source = f"DataFrame ({frame.shape[0]} rows x {frame.shape[1]} columns)"
        frame = frame.reset_index(drop=True)
    elif path_override is not None:
        read = Path(path_override)
        source = str(path_override)
        frame = read_csv(read, spec.na_values)
    elif spec.dataset is not None:
        source = spec.dataset
        frame = _load_package_dataset(spec.dataset)
    else:
        read = _resolve_csv(spec)
        source = str(read)
        frame = read_csv(read, spec.na_values)
    frame, notes = clean_table(
        frame, spec.na_values, source, column_na_values=dict(spec.column_na_values)
    )
    _check_columns(frame, spec, source)
    check_numbers(frame, source, skip=spec.drop)
    if frame.empty:
        raise HpoError(f"{source}: the data has a header but no rows")

    missing = frame[spec.target].isna()
    if missing.any():
        count = int(missing.sum())
        if spec.missing_target == "error":
            raise HpoError(
                f"{source}: target column {spec.target!r} has {count} missing values; drop those "
                'rows first, or set [data] missing_target = "drop"'
            )
        if count == len(frame):
            raise HpoError(
                f"{source}: target column {spec.target!r} is missing in every one of the "
                f"{count} rows; is {spec.target!r} the right column?"
            )
        frame = frame.loc[~missing].reset_index(drop=True)
        notes.append(
            f"dropped {count} of {len(missing)} rows whose target {spec.target!r} is missing "
            '([data] missing_target = "drop")'
        )
    target = frame[spec.target]
    _check_target_kind(target, spec, source)
    names = _labels_text(target)
    frame, names = _drop_and_merge_classes(frame, names, spec, source, notes)
    classes = tuple(sorted(names.unique()))
    if len(classes) < 2:
        shown = f" ({classes[0]!r})" if classes else ""
        raise HpoError(
            f"{source}: target column {spec.target!r} has a single class{shown}; "
            "classification needs at least 2"
        )
    index = {c: i for i, c in enumerate(classes)}
    labels = names.map(index).to_numpy(dtype=np.int32)
    features = frame.drop(columns=[spec.target, *spec.drop])
    if features.shape[1] == 0:
        raise HpoError(
            f"{source}: no feature columns left after dropping the target and {list(spec.drop)}"
        )
    categorical = spec.categorical
    if spec.all_integer_categorical:
        categorical = _whole_number_columns(features)
        shown = quoted(categorical[:10]) + (
            f" and {len(categorical) - 10} more" if len(categorical) > 10 else ""
        )
        notes.append(
            f'[data] categorical = "all-integer": one-hot encoding {len(categorical)} '
            f"whole-number column{'' if len(categorical) == 1 else 's'}"
            + (f": {shown}" if categorical else "")
        )
    return Dataset(
        features=features,
        labels=labels,
        classes=classes,
        source=source,
        categorical=categorical,
        dropped=spec.drop,
        notes=tuple(notes),
        url=spec.url if read is not None and path_override is None else None,
        sha256=None if read is None else file_sha256(read),
    )


def _whole_number_columns(features: pd.DataFrame) -> tuple[str, ...]:
    """The numeric columns whose values (gaps aside) are all whole numbers: integer codes."""
    found = []
    for column in features.columns:
        values = features[column]
        if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            continue
        present = values.dropna().to_numpy(dtype=np.float64)
        if len(present) and bool(np.all(present == np.round(present))):
            found.append(str(column))
    return tuple(found)


def _drop_and_merge_classes(
    frame: pd.DataFrame, names: pd.Series, spec: DataSpec, source: str, notes: list[str]
) -> tuple[pd.DataFrame, pd.Series]:
    """The rows and class names after ``[data] drop_classes`` and ``merge_classes``, each said
    in a note; a class named there that the target does not hold is an error."""
    present = set(names.unique())
    listed = [(c, "drop_classes") for c in spec.drop_classes] + [
        (c, f"merge_classes.{new}") for new, old in spec.merge_classes for c in old
    ]
    for name, key in listed:
        if name not in present:
            raise HpoError(
                f"{source}: class {name!r} listed in [data] {key} is not in the target column "
                f"{spec.target!r}; its classes are {quoted(sorted(present))}"
            )
    if spec.drop_classes:
        dropped = names.isin(spec.drop_classes)
        notes.append(
            f"dropped {row_count(int(dropped.sum()))} of class"
            f"{'es' if len(spec.drop_classes) > 1 else ''} {quoted(spec.drop_classes)} "
            "([data] drop_classes)"
        )
        keep = ~dropped.to_numpy()
        frame = frame.loc[keep].reset_index(drop=True)
        names = names.loc[keep].reset_index(drop=True)
    for new, old in spec.merge_classes:
        merged = names.isin(old)
        notes.append(
            f"merged classes {quoted(old)} into {new!r} ({row_count(int(merged.sum()))}; "
            "[data] merge_classes)"
        )
        names = names.mask(merged, new)
    return frame, names


def check_classes(dataset: Dataset, cv: CVSpec, target: str) -> None:
    """Refuse a class structure that makes K-fold accuracy meaningless.

    When most classes have fewer rows than folds, most classes cannot be both trained on and
    held out, so nearly every held-out row is of a class its model never saw (about one class
    per row is the extreme: an identifier used as the target).
    """
    counts = np.bincount(dataset.labels, minlength=len(dataset.classes))
    rare = int((counts < cv.folds).sum())
    if rare * 2 > len(counts):
        raise HpoError(
            f"{dataset.source}: target column {target!r} has {len(counts)} classes in "
            f"{dataset.n_rows} rows, and {rare} of them have fewer rows than folds={cv.folds}, "
            "so cross-validated accuracy would be meaningless; merge or drop rare classes, or "
            "check that this column is the target"
        )


@dataclass(frozen=True)
class Categories:
    """A one-hot column's schema: its values in output order, and whether a gap is a value."""

    values: tuple[str, ...]
    missing: bool = False

    @property
    def width(self) -> int:
        return len(self.values) + int(self.missing)


MISSING_CATEGORY = "(missing)"


def _number_text(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def category_text(values: pd.Series) -> pd.Series:
    """A categorical column's values as strings (gaps stay missing): ``2.0`` reads ``"2"``.

    Each number is written on its own, so any subset of rows (a fold) spells a value as the
    whole column does.
    """
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        numbers = values.astype("float64")
        return numbers.map(_number_text, na_action="ignore").astype("string")
    return values.astype("string")


class Preprocessor:
    """Course preprocessing, fitted on training rows: one-hot text, median-fill + z-score numbers.

    The category list of each text column (and each numeric column named in ``categorical``) is
    the column's schema (``categories``, taken from all rows so every fold has the same input
    width); only statistics of values (medians, means, standard deviations) come from the
    training rows. A gap in a text column is a category of its own, ``(missing)``, when the
    column has any gap. A constant column scales by 1.

    >>> frame = pd.DataFrame({"size": [1.0, 3.0], "color": ["red", None]})
    >>> Preprocessor().fit(frame).feature_names
    ['size', 'color_red', 'color_(missing)']
    """

    def __init__(self, categorical: Iterable[str] = ()) -> None:
        self.declared = frozenset(categorical)
        self.numeric: list[str] = []
        self.categorical: dict[str, Categories] = {}
        self.medians: dict[str, float] = {}
        self.means: dict[str, float] = {}
        self.stds: dict[str, float] = {}
        # Where a Table stores each number column: (center, spread), see table_matrix.
        self.storage: dict[str, tuple[float, float]] = {}

    def is_numeric(self, values: pd.Series) -> bool:
        return (
            values.name not in self.declared
            and pd.api.types.is_numeric_dtype(values)
            and not pd.api.types.is_bool_dtype(values)
        )

    def fit(
        self,
        frame: pd.DataFrame,
        *,
        categories: dict[str, Categories] | None = None,
        rows: np.ndarray | None = None,
    ) -> Preprocessor:
        """Fit on ``frame``'s rows, or on its rows at positions ``rows`` only (taken column by
        column, so a fold's statistics never need a copy of its whole training table)."""
        for column in frame.columns:
            values = frame[column] if rows is None else frame[column].iloc[rows]
            if self.is_numeric(values):
                self.numeric.append(column)
                median = values.median()
                median = 0.0 if pd.isna(median) else float(median)
                filled = values.fillna(median).astype(float)
                self.medians[column] = median
                self.means[column] = float(filled.mean())
                std = float(filled.std(ddof=0))
                self.stds[column] = std if std > 0 else 1.0
                quartiles = values.quantile([0.25, 0.75])
                spread = float(quartiles.iloc[1] - quartiles.iloc[0])
                if not spread > 0 or not math.isfinite(spread):
                    spread = self.stds[column]
                self.storage[column] = (median, spread)
            elif categories and column in categories:
                self.categorical[column] = categories[column]
            else:
                text = category_text(values)
                self.categorical[column] = Categories(
                    values=tuple(sorted(text.dropna().unique())), missing=bool(text.isna().any())
                )
        return self

    @property
    def feature_names(self) -> list[str]:
        names = list(self.numeric)
        for column, categories in self.categorical.items():
            names += [f"{column}_{c}" for c in categories.values]
            names += [f"{column}_{MISSING_CATEGORY}"] if categories.missing else []
        return names

    @property
    def width(self) -> int:
        return len(self.numeric) + sum(c.width for c in self.categorical.values())

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """The network's input for ``frame``: float32, gaps filled with the medians, numbers
        standardized (each column computed in float64 and rounded once, written straight into
        the float32 result: no float64 copy of the whole table)."""
        return self._encode(frame, fill=True)

    def table_matrix(self, frame: pd.DataFrame, out: np.ndarray | None = None) -> np.ndarray:
        """``frame`` as a :class:`Table` matrix: numeric columns ``(value - median) / IQR``
        (the interquartile range; the std where it is 0), gaps left NaN (each fold fills them
        with its own median); one-hot columns as :meth:`transform` writes them. Written into
        ``out`` when given, else into a new aligned array (:func:`aligned_empty`).

        Robust statistics, not the mean and std: float32 keeps about 7 digits of each stored
        value, and a fold multiplies that error by the table's spread over its own std. One
        outlier (a 1e9 sentinel among values of 0 to 1) makes the std of all rows huge and
        would leave a fold without that row a few distinct inputs; the quartiles ignore it.
        """
        return self._encode(frame, fill=False, out=out)

    def _encode(
        self, frame: pd.DataFrame, *, fill: bool, out: np.ndarray | None = None
    ) -> np.ndarray:
        if out is None:
            out = aligned_empty((len(frame), self.width))
        for j, column in enumerate(self.numeric):
            values = frame[column]
            if fill:
                values = values.fillna(self.medians[column])
            numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
            center, spread = (
                (self.means[column], self.stds[column]) if fill else self.storage[column]
            )
            out[:, j] = (numbers - center) / spread
        start = len(self.numeric)
        for column, categories in self.categorical.items():
            block = out[:, start : start + categories.width]
            self._one_hot(frame[column], categories, block)
            start += categories.width
        return out

    def scaling(self, table: Preprocessor) -> Scaling:
        """This fold's statistics as a :class:`Scaling` of a table made by
        :meth:`table_matrix` of ``table`` (same columns): ``(v - c) / s`` stored (``c``, ``s``:
        ``table.storage``), so the fold's
        ``(v - mean) / std`` is ``(x - (mean - c) / s) / (std / s)``; a gap is the median's
        ``(median - mean) / std``, computed in float64 as :meth:`transform` computes it."""
        n = self.width
        shift, scale, fill = np.zeros(n), np.ones(n), np.zeros(n)
        if self.numeric != table.numeric:
            raise ValueError("the fold's numeric columns differ from the table's")
        for j, column in enumerate(self.numeric):
            center, spread = table.storage[column]
            mean, std = self.means[column], self.stds[column]
            shift[j] = (mean - center) / spread
            scale[j] = std / spread
            fill[j] = (self.medians[column] - mean) / std
        return Scaling(
            shift=shift.astype(np.float32),
            scale=scale.astype(np.float32),
            fill=fill.astype(np.float32),
        )

    @staticmethod
    def _one_hot(values: pd.Series, categories: Categories, out: np.ndarray) -> None:
        """Rows of 0/1 into ``out``; a value outside the schema is all zeros, a gap is
        ``(missing)``."""
        text = category_text(values)
        codes = pd.Categorical(text, categories=list(categories.values)).codes
        out[...] = 0.0
        known = codes >= 0
        out[np.flatnonzero(known), codes[known]] = 1.0
        if categories.missing:
            out[text.isna().to_numpy(), len(categories.values)] = 1.0


def fold_rows(
    labels: np.ndarray,
    cv: CVSpec,
    *,
    repeat: int = 0,
    seed: int | None = None,
    source: str = "data",
    class_names: Sequence[str] = (),
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(training rows, held-out rows) of each fold, as scikit-learn's (Stratified)KFold cuts
    them; ``repeat`` reshuffles (seed + repeat); ``seed`` replaces that shuffling seed."""
    n_rows = len(labels)
    if cv.folds > n_rows:
        raise HpoError(
            f"{source}: folds={cv.folds} is more than the {n_rows} rows; use fewer folds"
        )
    if seed is None:
        seed = split_seed(cv.seed, repeat) if cv.shuffle else None
    if cv.stratified:
        classes, counts = np.unique(labels, return_counts=True)
        short = [
            (str(class_names[int(c)]) if class_names else str(int(c)), int(n))
            for c, n in zip(classes, counts, strict=True)
            if n < cv.folds
        ]
        if short:
            raise HpoError(
                f"{source}: {too_few(short, f'folds={cv.folds}')}; stratified folds need every "
                f"class in each fold: {class_fix(short)}, use fewer folds, or set [cv] "
                "stratified = false"
            )
        splitter: sklearn_splits.KFold | sklearn_splits.StratifiedKFold = (
            sklearn_splits.StratifiedKFold(cv.folds, shuffle=cv.shuffle, random_state=seed)
        )
    else:
        splitter = sklearn_splits.KFold(cv.folds, shuffle=cv.shuffle, random_state=seed)
    # int32 positions as each fold is cut (scikit-learn's are int64: K of them per repeat).
    return [
        (_index(train), _index(valid))
        for train, valid in splitter.split(np.zeros((n_rows, 1)), labels)
    ]


def make_folds(dataset: Dataset, cv: CVSpec, *, repeat: int = 0) -> list[Fold]:
    """K folds as scikit-learn's (Stratified)KFold cuts them; ``repeat`` reshuffles (seed + repeat)."""
    table_prep, table = _table(dataset)
    return _folds(dataset, cv, repeat, table_prep, table)


def _table(dataset: Dataset) -> tuple[Preprocessor, Table]:
    """The one matrix of ``dataset``'s rows every fold reads, and the statistics it is stored
    with (all rows: each row is a training row of some fold). The one-hot schema comes from all
    rows too, so every fold has the same input width."""
    prep = Preprocessor(dataset.categorical).fit(dataset.features)
    labels = np.ascontiguousarray(dataset.labels, dtype=np.int32)
    return prep, Table(x=prep.table_matrix(dataset.features), labels=labels)


def _index(rows: np.ndarray) -> np.ndarray:
    """Row positions as int32 (half of scikit-learn's int64: K of them per repeat)."""
    return rows.astype(np.int32) if rows.max(initial=0) < np.iinfo(np.int32).max else rows


def _folds(
    dataset: Dataset, cv: CVSpec, repeat: int, table_prep: Preprocessor, table: Table
) -> list[Fold]:
    """One repeat's folds over ``table``, each scaled by statistics of its own training rows."""
    rows = fold_rows(
        dataset.labels, cv, repeat=repeat, source=dataset.source, class_names=dataset.classes
    )
    schema = table_prep.categorical
    folds = []
    for i, (train_rows, valid_rows) in enumerate(rows):
        prep = Preprocessor(dataset.categorical).fit(
            dataset.features, categories=schema, rows=train_rows
        )
        folds.append(
            Fold(
                i,
                train_rows,
                valid_rows,
                table=table,
                scaling=prep.scaling(table_prep),
            )
        )
    return folds


def split_holdout(dataset: Dataset, cv: CVSpec) -> Holdout | None:
    """The rows ``[cv] holdout`` sets aside (stratified when ``[cv] stratified``); None if 0.

    >>> from hpo.spec import CVSpec
    >>> labels = np.array([0, 1] * 10)
    >>> data = Dataset(pd.DataFrame({"x": range(20)}), labels, ("a", "b"), "demo")
    >>> split = split_holdout(data, CVSpec(holdout=0.2, stratified=True))
    >>> len(split.holdout_rows), np.bincount(labels[split.holdout_rows]).tolist()
    (4, [2, 2])
    """
    if cv.outer_folds:
        return _outer_fold(dataset, cv)
    if cv.holdout == 0:
        return None
    n_rows = dataset.n_rows
    n_out = int(np.ceil(cv.holdout * n_rows))
    if n_out >= n_rows or n_rows - n_out < cv.folds:
        raise HpoError(
            f"{dataset.source}: holdout={cv.holdout} sets {n_out} of {n_rows} rows aside, "
            f"leaving too few for folds={cv.folds}; use a smaller holdout"
        )
    stratify = dataset.labels if cv.stratified else None
    if stratify is not None:
        counts = np.bincount(dataset.labels, minlength=len(dataset.classes))
        short = [(dataset.classes[i], int(n)) for i, n in enumerate(counts) if n < 2]
        if short:
            raise HpoError(
                f"{dataset.source}: {too_few(short, '2')}, too few to put some in the "
                f"holdout and some in the search: {class_fix(short)}, or set [cv] "
                "stratified = false"
            )
    try:
        search, held = sklearn_splits.train_test_split(
            np.arange(n_rows),
            test_size=n_out,
            random_state=holdout_seed(cv.seed),
            stratify=stratify,
        )
    except ValueError as exc:  # stratified: fewer held-out rows than classes
        raise HpoError(
            f"{dataset.source}: holdout={cv.holdout} cannot be stratified ({exc}); "
            "use a larger holdout or set [cv] stratified = false"
        ) from None
    if stratify is not None:
        _check_left_for_folds(dataset, search, cv, f"holdout={cv.holdout} sets")
    return _holdout(cv.holdout, dataset, search, held)


def _check_left_for_folds(dataset: Dataset, search: np.ndarray, cv: CVSpec, what: str) -> None:
    """Stratified folds need every class ``folds`` times among the rows left to search."""
    total = np.bincount(dataset.labels, minlength=len(dataset.classes))
    left = np.bincount(dataset.labels[search], minlength=len(dataset.classes))
    short = [i for i in range(len(total)) if left[i] < cv.folds]
    if not short:
        return
    names = [(dataset.classes[i], int(total[i])) for i in short]
    if len(short) == 1:
        i = short[0]
        said = (
            f"class {dataset.classes[i]!r} has {row_count(total[i])}; {what} "
            f"{total[i] - left[i]} of them aside, leaving {left[i]}, fewer than folds={cv.folds}"
        )
    else:
        each = ", ".join(
            f"{dataset.classes[i]!r} ({left[i]} of {row_count(total[i])} left)" for i in short
        )
        said = (
            f"{len(short)} classes have fewer rows than folds={cv.folds} left once {what} "
            f"some aside: {each}"
        )
    raise HpoError(
        f"{dataset.source}: {said}; {class_fix(names)}, use fewer folds, a smaller holdout, "
        "or set [cv] stratified = false"
    )


def too_few(classes: Sequence[tuple[str, int]], need: str) -> str:
    """``class 'z' has 1 row, fewer than NEED`` or ``2 classes have fewer rows than NEED: 'a'
    (1 row), 'b' (4 rows)``."""
    if len(classes) == 1:
        (name, count), *_ = classes
        return f"class {name!r} has {row_count(count)}, fewer than {need}"
    each = ", ".join(f"{name!r} ({row_count(count)})" for name, count in classes)
    return f"{len(classes)} classes have fewer rows than {need}: {each}"


def class_fix(classes: Sequence[tuple[str, int]]) -> str:
    """The ``[data]`` keys that drop or merge ``classes``, spelled as the study file takes them
    (TOML strings read JSON's escapes)."""
    names = json.dumps([name for name, _ in classes])
    them = "it" if len(classes) == 1 else "them"
    return (
        f"drop {them} ([data] drop_classes = {names}) or merge {them} into another class "
        f"([data] merge_classes = {{ NAME = {names} }})"
    )


def tiny_classes(dataset: Dataset, cv: CVSpec) -> tuple[str, list[tuple[str, int]]]:
    """The classes with fewer rows than the folds need (counted before the holdout is set
    aside, when it is not yet: then a class needs folds / (1 - holdout) rows), and that need in
    words."""
    need: float = cv.folds
    said = f"folds={cv.folds}"
    share = cv.holdout if dataset.holdout is None else 0.0
    if share:
        need = math.ceil(cv.folds / (1 - share))
        said = f"the {need} that folds={cv.folds} need after holdout={cv.holdout}"
    counts = np.bincount(dataset.labels, minlength=len(dataset.classes))
    return said, [(dataset.classes[i], int(n)) for i, n in enumerate(counts) if n < need]


def _holdout(fraction: float, dataset: Dataset, search: np.ndarray, held: np.ndarray) -> Holdout:
    search, held = np.sort(search), np.sort(held)
    digest = hashlib.sha256(held.astype(np.int64).tobytes())
    digest.update(dataset.labels[held].astype(np.int64).tobytes())
    # And what the held-out rows hold: a column dropped or a value edited is other data too.
    digest.update("\x1f".join(map(str, dataset.features.columns)).encode())
    rows = dataset.features.iloc[held]
    digest.update(pd.util.hash_pandas_object(rows, index=False).to_numpy().tobytes())
    return Holdout(fraction, search, held, digest.hexdigest())


def _outer_fold(dataset: Dataset, cv: CVSpec) -> Holdout:
    """Nested cross-validation: outer fold ``cv.outer_fold`` is held out, the rest searched."""
    outer = replace(cv, folds=cv.outer_folds, shuffle=True, repeats=1, outer_folds=0, outer_fold=0)
    splits = fold_rows(
        dataset.labels,
        outer,
        seed=outer_seed(cv.seed),
        source=dataset.source,
        class_names=dataset.classes,
    )
    search, held = splits[cv.outer_fold]
    if cv.stratified:
        _check_left_for_folds(dataset, search, cv, f"outer fold {cv.outer_fold + 1} sets")
    split = _holdout(len(held) / dataset.n_rows, dataset, search, held)
    return replace(split, outer=(cv.outer_fold + 1, cv.outer_folds))


def load_holdout(
    spec: DataSpec,
    cv: CVSpec,
    *,
    path_override: str | Path | None = None,
    frame: pd.DataFrame | None = None,
) -> tuple[Dataset, Dataset]:
    """The search rows and the held-out rows, both as datasets (the search one carries the
    :class:`Holdout` to check against the study)."""
    dataset = load_dataset(spec, path_override=path_override, frame=frame)
    check_classes(dataset, cv, spec.target)
    split = split_holdout(dataset, cv)
    if split is None:
        raise ValueError("this study has no [cv] holdout")
    search = replace(dataset.subset(split.search_rows), holdout=split)
    return search, dataset.subset(split.holdout_rows)


def holdout_fold_set(search: Dataset, held: Dataset) -> FoldSet:
    """One fold that trains on every search row and scores the held-out rows, preprocessed
    with statistics (and one-hot schema) of the search rows only.

    The table stores both with the search rows' statistics, so the fold's scaling is the
    identity and its inputs are exactly :meth:`Preprocessor.transform`'s."""
    prep = Preprocessor(search.categorical).fit(search.features)
    # The one fold's statistics are the table's own: stored with them, its inputs are exactly
    # what transform() gives (a table cut into K folds stores robust ones: table_matrix).
    prep.storage = {column: (prep.means[column], prep.stds[column]) for column in prep.numeric}
    n_search, n_held = search.n_rows, held.n_rows
    x = aligned_empty((n_search + n_held, prep.width))
    prep.table_matrix(search.features, out=x[:n_search])
    prep.table_matrix(held.features, out=x[n_search:])
    labels = np.concatenate([search.labels, held.labels]).astype(np.int32)
    fold = Fold(
        0,
        _index(np.arange(n_search)),
        _index(np.arange(n_search, n_search + n_held)),
        table=Table(x=x, labels=labels),
        scaling=prep.scaling(prep),
    )
    return FoldSet(repeats=((fold,),), classes=search.classes)


def load_folds(
    spec: DataSpec,
    cv: CVSpec,
    *,
    path_override: str | Path | None = None,
    frame: pd.DataFrame | None = None,
) -> tuple[Dataset, FoldSet]:
    """The rows ``spec`` names and their folds (every repeat), ready to train on.

    With ``[cv] holdout``, the held-out rows are gone before anything else sees the data: the
    dataset returned, its folds and every preprocessing statistic are the search rows only.
    """
    dataset = load_dataset(spec, path_override=path_override, frame=frame)
    check_classes(dataset, cv, spec.target)
    split = split_holdout(dataset, cv)
    if split is not None:
        dataset = replace(dataset.subset(split.search_rows), holdout=split)
    return dataset, make_fold_set(dataset, cv)


def make_fold_set(dataset: Dataset, cv: CVSpec) -> FoldSet:
    """Every repeat's folds, each preprocessed on its own training rows, all reading one
    :class:`Table` of the rows (a repeat is another cut of the same rows)."""
    table_prep, table = _table(dataset)
    repeats = tuple(tuple(_folds(dataset, cv, r, table_prep, table)) for r in range(cv.repeats))
    return FoldSet(repeats=repeats, classes=dataset.classes)
