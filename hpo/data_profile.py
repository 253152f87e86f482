"""The data as a user should see it before training: what each column is, and what looks wrong.

``profile_dataset`` describes every column (its kind, gaps, distinct values, input width after
preprocessing) and raises warnings for columns that would silently mislead a study: an
identifier, a text column with very many categories, a column that alone predicts the target
far better than plausible (a leak), and a numeric column read as text because of one marker.
``hpo check`` prints it all; ``hpo run`` and ``hpo worker`` print the warnings and store them on
the study. Warnings never stop a run: the user decides, and ``[data] ignore_warnings`` silences
them for a column kept on purpose.

Thresholds, and why:

* **Identifier.** A numeric column that strictly increases or decreases along the rows (a
  shuffled measurement is strictly monotone by chance with probability ``2 / n!``: never, at
  ``n >= 10``), or, in any order, a text or whole-number column whose distinct values are at
  least ``_ID_SHARE`` (90%) of the rows (at least ``_MIN_ROWS`` rows). Codes are text or whole
  numbers (text that is mostly numbers, read as text because of a marker, is judged as the
  numbers); a column with decimals is a measurement, nearly unique per row by nature (a float
  with 4 significant digits over 300 rows repeats few values), so decimals are never named for
  being unique. 90%, not 100%: a register number repeats for a patient seen twice (horse-colic's
  ``hospital_num``: 283 values in 299 rows). A whole-number measurement spread over many times
  more values than rows (an amount in cents) is named too: the warning is a question, and
  ``ignore_warnings`` answers it.
* **Many categories.** A text column with more distinct values than half the rows, or more than
  ``_MANY_CATEGORIES`` (300): one-hot encoding makes each value an input column, most of them
  seen in a handful of rows, so they cost input width and time and teach the network little.
* **Leak.** Each feature alone is scored with the study's own folds (first repeat), by the
  simplest model that can express it: for a numeric column a decision tree on that one column
  with at most two leaves per class (enough to carve a sorted row id into one interval per
  class, too few to memorise noise); for a text or categorical column the majority class of
  each value in the training rows. The column is flagged when its out-of-fold accuracy is at
  least ``_LEAK_ACCURACY`` (0.95) **and** it removes at least ``_LEAK_LIFT`` (80%) of the errors
  of always predicting the majority class. The second condition keeps a column from being
  flagged on data where the majority class alone is already near 0.95. Real features rarely
  reach both: on scikit-learn's wine and breast-cancer data the best single column scores 0.79
  and 0.92. Some do (iris' petal width, 0.95): the message is a question, and
  ``ignore_warnings`` answers it. Rows beyond ``_LEAK_ROWS`` (10,000) are sampled, so the check
  stays within seconds on any number of rows.
* **Small classes.** In a split that is not stratified, a class with fewer rows than folds (or,
  before a ``[cv] holdout`` is set aside, fewer than ``folds / (1 - holdout)``): some folds
  train without it, and its held-out rows there are always wrong. A stratified split refuses
  such classes instead (:func:`hpo.data.fold_rows`); both name every one, and the
  ``[data] drop_classes`` / ``merge_classes`` that would remove them.
* **Numbers read as text.** A text column in which at least 80% of the values are numbers and
  at most three distinct tokens are not: almost always a missing-value marker such as ``?``
  that ``[data] na_values`` does not name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hpo.data import (
    Dataset,
    Preprocessor,
    class_fix,
    fold_rows,
    quoted,
    row_count,
    tiny_classes,
    too_few,
)
from hpo.errors import HpoError
from hpo.lazy import lazy_import
from hpo.seeds import split_seed
from hpo.spec import CVSpec

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import sklearn.tree as sklearn_tree
else:
    np = lazy_import("numpy")
    pd = lazy_import("pandas")
    sklearn_tree = lazy_import("sklearn.tree")

__all__ = [
    "KINDS",
    "LEAK_PHRASE",
    "ColumnProfile",
    "DataProfile",
    "DataWarning",
    "profile_dataset",
]

KINDS = ("numeric", "categorical", "identifier", "constant", "empty")

LEAK_PHRASE = "alone predicts the target"
"""In every leak warning's message: how a stored warning (a message only) is known as a leak."""

_MIN_ROWS = 10
_ID_SHARE = 0.9
_MANY_CATEGORIES = 300
_LEAK_ACCURACY = 0.95
_LEAK_LIFT = 0.8
_LEAK_ROWS = 10_000
_NUMERIC_SHARE = 0.8
_MAX_MARKERS = 3


@dataclass(frozen=True)
class ColumnProfile:
    """One feature column: its kind, gaps, distinct values and one-hot or numeric width."""

    name: str
    kind: str
    missing: int
    distinct: int
    width: int
    one_hot: bool


@dataclass(frozen=True)
class DataWarning:
    """Something about ``column`` the user should decide on before trusting the study."""

    column: str
    # leak | constant | identifier | numbers-as-text | many-categories | small-classes
    kind: str
    message: str


@dataclass(frozen=True)
class DataProfile:
    source: str
    n_rows: int
    columns: tuple[ColumnProfile, ...]
    classes: tuple[tuple[str, int], ...]
    input_width: int
    dropped: tuple[str, ...]
    notes: tuple[str, ...]
    warnings: tuple[DataWarning, ...]
    ignored: tuple[DataWarning, ...]


def profile_dataset(
    dataset: Dataset, cv: CVSpec, *, ignore: Sequence[str] = (), target: str = "target"
) -> DataProfile:
    """Describe ``dataset`` and warn about columns that look like identifiers or leaks, and
    about classes too small for the folds.

    ``ignore``: columns whose warnings the user silenced (they come back in ``ignored``);
    ``target``: the target column's name (its warning is silenced by naming it there).
    """
    features = dataset.features
    prep = Preprocessor(dataset.categorical).fit(features)
    leaks = _single_column_accuracies(dataset, cv, prep)
    majority = float(np.bincount(dataset.labels).max()) / dataset.n_rows
    columns = []
    found: list[DataWarning] = []
    for name in features.columns:
        values = features[name]
        numeric = name in prep.numeric
        column = _Column(
            name=name,
            values=values,
            numeric=numeric,
            missing=int(values.isna().sum()),
            distinct=int(values.nunique()),
            width=1 if numeric else prep.categorical[name].width,
        )
        identifier = _identifier(column)
        columns.append(
            ColumnProfile(
                name=name,
                kind=_kind(column, identifier),
                missing=column.missing,
                distinct=column.distinct,
                width=column.width,
                one_hot=not numeric,
            )
        )
        warning = _warning(column, identifier, prep.width, leaks.get(name), majority)
        if warning is not None:
            found.append(warning)
    small = _small_classes(dataset, cv, target)
    if small is not None:
        found.append(small)
    counts = np.bincount(dataset.labels, minlength=len(dataset.classes))
    return DataProfile(
        source=dataset.source,
        n_rows=dataset.n_rows,
        columns=tuple(columns),
        classes=tuple((c, int(n)) for c, n in zip(dataset.classes, counts, strict=True)),
        input_width=prep.width,
        dropped=dataset.dropped,
        notes=dataset.notes,
        warnings=tuple(w for w in found if w.column not in ignore),
        ignored=tuple(w for w in found if w.column in ignore),
    )


@dataclass(frozen=True)
class _Column:
    """One feature column and the counts every rule needs (each computed once)."""

    name: str
    values: pd.Series
    numeric: bool
    missing: int
    distinct: int
    width: int


def _kind(column: _Column, identifier: str | None) -> str:
    if column.distinct == 0:
        return "empty"
    if column.distinct == 1:
        return "constant"
    if identifier is not None:
        return "identifier"
    return "numeric" if column.numeric else "categorical"


def _identifier(column: _Column) -> str | None:
    """Why the column looks like a row identifier, or None (the rule: module docstring)."""
    n_rows = len(column.values)
    if n_rows < _MIN_ROWS or column.distinct < _ID_SHARE * n_rows:
        return None
    if column.numeric and not column.missing and column.distinct == n_rows:
        if column.values.is_monotonic_increasing:
            return "it increases strictly with row order"
        if column.values.is_monotonic_decreasing:
            return "it decreases strictly with row order"
    if not _code_like(column.values):
        return None
    share = column.distinct / n_rows
    # Never "100%" unless it is: 299 values in 300 rows reads 99%.
    shown = "100%" if column.distinct == n_rows else f"{min(share, 0.99):.0%}"
    return f"{column.distinct} distinct values in {n_rows} rows ({shown})"


def _code_like(values: pd.Series) -> bool:
    """Whether the values could be codes: whole numbers, or text that is not
    mostly numbers (numbers read as text because of a marker are judged as numbers)."""
    present = values.dropna()
    numbers = pd.to_numeric(present.astype("string").str.strip(), errors="coerce").dropna()
    if len(numbers) < _NUMERIC_SHARE * len(present):
        return True  # text
    found = numbers.to_numpy(dtype=np.float64)
    return bool(np.all(found == np.round(found)))


def _warning(
    column: _Column,
    identifier: str | None,
    total_width: int,
    accuracy: float | None,
    majority: float,
) -> DataWarning | None:
    """At most one warning per column, the gravest first: leak, constant, identifier, markers,
    width."""
    name, n_rows = column.name, len(column.values)
    fix = "add it to [data] drop, or to [data] ignore_warnings to keep it on purpose"
    if accuracy is not None and _looks_like_leak(accuracy, majority):
        also = f" ({identifier})" if identifier else ""
        return DataWarning(
            name,
            "leak",
            f"column {name!r} {LEAK_PHRASE} with {accuracy:.2f} CV accuracy "
            f"(always guessing the commonest class: {majority:.2f}){also}: an identifier, or a "
            "leak recorded with or after the outcome? If it is a real measurement available "
            "when predicting, keep it with [data] ignore_warnings; otherwise add it to "
            "[data] drop",
        )
    if column.distinct <= 1:
        what = (
            "is empty (every value is missing)"
            if column.distinct == 0
            else f"has a single value ({_plain(column.values.dropna().iloc[0])!r})"
        )
        return DataWarning(
            name, "constant", f"column {name!r} {what}: it tells the network nothing; {fix}"
        )
    cost = (
        ""
        if column.numeric
        else f"; it is {column.width} of the {total_width} input columns after one-hot encoding"
    )
    if identifier is not None:
        return DataWarning(
            name,
            "identifier",
            f"column {name!r} looks like an identifier: {identifier}{cost}; {fix}",
        )
    markers = None if column.numeric else _markers(column.values)
    if markers:
        tokens, rows = markers
        return DataWarning(
            name,
            "numbers-as-text",
            f"column {name!r} holds numbers but is read as text because of {quoted(tokens)} "
            f"({rows} rows){cost}; if that marks a missing value, add it to [data] na_values",
        )
    many = column.distinct > n_rows / 2 or column.distinct > _MANY_CATEGORIES
    if not column.numeric and many:
        per_value = float(column.values.value_counts().median())
        return DataWarning(
            name,
            "many-categories",
            f"column {name!r} has {column.distinct} distinct values in {n_rows} rows (a "
            f"median of {row_count(per_value)} each){cost}; {fix}",
        )
    return None


def _small_classes(dataset: Dataset, cv: CVSpec, target: str) -> DataWarning | None:
    """Classes with fewer rows than folds, in a split that is not stratified (a stratified one
    refuses them before this): some folds then train without such a class, and its held-out
    rows there are always wrong."""
    if cv.stratified:
        return None
    need, short = tiny_classes(dataset, cv)
    if not short:
        return None
    them, their = ("it", "its") if len(short) == 1 else ("them", "their")
    return DataWarning(
        target,
        "small-classes",
        f"target {target!r}: {too_few(short, need)}: some folds train without {them}, and "
        f"{their} held-out rows there are always wrong; {class_fix(short)}",
    )


def _plain(value: object) -> object:
    """A NumPy scalar as the Python number it holds (``7``, not ``np.int64(7)``)."""
    return value.item() if isinstance(value, np.generic) else value


def _looks_like_leak(accuracy: float, majority: float) -> bool:
    if majority >= 1.0:
        return False
    lift = (accuracy - majority) / (1.0 - majority)
    return accuracy >= _LEAK_ACCURACY and lift >= _LEAK_LIFT


def _markers(values: pd.Series) -> tuple[list[str], int] | None:
    """The few non-numeric tokens of a text column that is otherwise numbers, and their rows."""
    text = values.dropna().astype(str).str.strip()
    if text.empty:
        return None
    numbers = pd.to_numeric(text, errors="coerce")
    other = text[numbers.isna()]
    if len(other) > (1 - _NUMERIC_SHARE) * len(text) or other.nunique() > _MAX_MARKERS:
        return None
    if other.empty:
        return None
    return sorted(other.unique()), len(other)


def _single_column_accuracies(dataset: Dataset, cv: CVSpec, prep: Preprocessor) -> dict[str, float]:
    """Out-of-fold accuracy of each feature column alone (see the module docstring)."""
    labels = dataset.labels
    rows = np.arange(dataset.n_rows)
    if len(rows) > _LEAK_ROWS:
        rng = np.random.default_rng(split_seed(cv.seed, 0))
        rows = np.sort(rng.choice(rows, _LEAK_ROWS, replace=False))
    labels = labels[rows]
    try:
        folds = fold_rows(labels, cv)
    except HpoError:  # the same split fails with its own message when the folds are cut
        return {}
    n_classes = len(dataset.classes)
    scores = {}
    for name in dataset.features.columns:
        values = dataset.features[name].iloc[rows]
        if name in prep.numeric:
            predicted = _tree_predictions(values, labels, folds, n_classes)
        else:
            predicted = _lookup_predictions(values, labels, folds, n_classes)
        scores[name] = float((predicted == labels).mean())
    return scores


def _tree_predictions(
    values: pd.Series,
    labels: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    n_classes: int,
) -> np.ndarray:
    x = values.to_numpy(dtype=np.float64)
    predicted = np.empty(len(labels), dtype=labels.dtype)
    for train, valid in folds:
        column = x[train]
        median = np.nanmedian(column) if np.isfinite(column).any() else 0.0
        tree = sklearn_tree.DecisionTreeClassifier(
            max_leaf_nodes=max(2, 2 * n_classes), random_state=0
        )
        tree.fit(np.nan_to_num(column, nan=median)[:, None], labels[train])
        predicted[valid] = tree.predict(np.nan_to_num(x[valid], nan=median)[:, None])
    return predicted


def _lookup_predictions(
    values: pd.Series,
    labels: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    n_classes: int,
) -> np.ndarray:
    """Each held-out row gets the commonest class of its value among the training rows (a value
    never seen in training gets the commonest class overall); a gap is a value."""
    codes, _ = pd.factorize(values.astype("string"), use_na_sentinel=False)
    predicted = np.empty(len(labels), dtype=labels.dtype)
    for train, valid in folds:
        table = np.zeros((codes.max() + 1, n_classes), dtype=np.int64)
        np.add.at(table, (codes[train], labels[train]), 1)
        fallback = int(np.bincount(labels[train], minlength=n_classes).argmax())
        best = np.where(table.sum(axis=1) > 0, table.argmax(axis=1), fallback)
        predicted[valid] = best[codes[valid]]
    return predicted
