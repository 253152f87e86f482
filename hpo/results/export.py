"""``hpo export`` and ``hpo predict``: the chosen plan as one Keras model that reads raw rows.

Why this exists: a trial's ``.keras`` artifact is the network alone. Its inputs are preprocessed
columns (z-scores, one-hot blocks) whose statistics were fitted on one fold's training rows and
kept nowhere, so nobody can feed it new rows. An export trains the plan once more on the rows the
search used (the search rows; every row when there is no holdout), with the trial's seed and the
reference protocol (one ``model.fit``, as the ``refit`` artifacts do), and puts the preprocessing
fitted on those same rows in front of the network as Keras layers, so that
``keras.models.load_model`` alone predicts from raw values, without hpo installed.

The layers compute exactly what :meth:`hpo.data.Preprocessor.transform` computes:

- a numeric column: a gap (NaN) becomes the median, then ``Normalization`` with the mean and the
  (population) standard deviation, in float64 like the preprocessor, cast to float32 at the end;
- a text column: ``StringLookup`` one-hot over the sorted categories, with its out-of-vocabulary
  slot sliced off, so an unseen value is all zeros, as in hpo; a gap (``""``) is the category of
  its own ``(missing)`` when the training rows had gaps, else all zeros too;
- a numeric-coded ``[data] categorical`` column: one equality test per category value (hpo
  spells ``2.0`` as ``"2"``, and compares text; comparing the numbers is the same test), plus
  the missing slot;
- the numeric block first, then the one-hot blocks, in column order (``feature_names``).

The per-column operations sit in a nested model (``hpo_preprocess``) whose inputs have names of
hpo's choosing: Keras names operations after their kind (``where``, ``cast``), and a column
called ``cast`` would otherwise clash with one. The outer model's inputs are named after the
columns (a ``/``, which Keras refuses in names, becomes ``_``); the card maps each column to its
input.

Files of an export folder: ``model.keras`` and ``model-card.json`` (study, trial, plan, classes
in order, columns with their kinds and categories, scores, versions, rows trained on).
"""

from __future__ import annotations

import json
import os
import platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo.data import (
    Dataset,
    Fold,
    Preprocessor,
    category_text,
    check_classes,
    check_numbers,
    clean_table,
    load_dataset,
    quoted,
    read_csv,
    split_holdout,
)
from hpo.engines.keras_model import import_keras, tensorflow_versions, tf
from hpo.engines.network import build_model
from hpo.engines.reference import fit_fold
from hpo.errors import HpoError
from hpo.lazy import lazy_import
from hpo.results.holdout import load_evaluation
from hpo.seeds import fold_seed
from hpo.spec import StudySpec, spec_to_dict
from hpo.study.creation import check_holdout
from hpo.study.record import (
    HOLDOUT_ATTR,
    best_trial,
    is_baseline,
    read_trial,
    stored_plan,
    stored_seed,
)

if TYPE_CHECKING:
    import numpy as np
    import optuna
    import pandas as pd
else:
    np = lazy_import("numpy")
    optuna = lazy_import("optuna")
    pd = lazy_import("pandas")

__all__ = [
    "CARD_FILE",
    "CARD_FORMAT",
    "MODEL_FILE",
    "Export",
    "ExportColumn",
    "ExportedModel",
    "check_export_dir",
    "default_export_dir",
    "export_trial",
    "load_export",
    "model_inputs",
    "pick_trial",
    "predict_frame",
    "predict_rows",
    "read_rows",
    "select_rows",
    "training_rows",
]

MODEL_FILE = "model.keras"
CARD_FILE = "model-card.json"
CARD_FORMAT = "hpo-export"  # the card's "format": how a folder is known as an export of hpo
CARD_VERSION = 1
# Names of the export's own parts; a column input never takes one of them.
_PREPROCESS = "hpo_preprocess"
_OUTER = "hpo_export"
# StringLookup's token for values outside the vocabulary: a NUL, which no real text value
# holds, so a category spelled "[UNK]" (Keras' default token) stays a category.
_UNSEEN = "\x00"
# Below this, Normalization would divide by Keras' epsilon (1e-7) instead of the deviation.
_TINY_STD = 1e-6
_PREDICT_BATCH = 1024
_PARTIAL = ".partial-"  # a file being written, moved into place when whole


# --- which trial, which rows, which folder ---------------------------------------------------


def pick_trial(study: optuna.Study, number: int | None) -> optuna.trial.FrozenTrial:
    """Trial ``number`` (default: the best); it must be complete and have a recorded plan.

    A pruned or failed trial has no score the card could stand on, so it is refused; the
    unregularized baseline is a complete trial like any other.
    """
    name = study.study_name
    if number is None:
        best = best_trial(study)
        if best is None:
            raise HpoError(f"study {name!r} has no complete trial to export yet")
        chosen = best
    else:
        trials = study.get_trials(deepcopy=False)
        found = [t for t in trials if t.number == number]
        if not found:
            have = (
                "no trials"
                if not trials
                else "only trial 0"
                if len(trials) == 1
                else f"trials 0 to {len(trials) - 1}"
            )
            raise HpoError(f"study {name!r} has no trial {number} (it has {have})")
        chosen = found[0]
        if chosen.state != optuna.trial.TrialState.COMPLETE:
            complete = [
                str(t.number) for t in trials if t.state == optuna.trial.TrialState.COMPLETE
            ]
            raise HpoError(
                f"study {name!r}: trial {number} is {chosen.state.name}, not COMPLETE; "
                f"complete trials: {', '.join(complete) or 'none'}"
            )
    if stored_plan(chosen) is None:
        raise HpoError(
            f"study {name!r}: trial {chosen.number} has no recorded plan (user attr 'plan'), "
            "so it cannot be rebuilt"
        )
    return chosen


def training_rows(
    study: optuna.Study, spec: StudySpec, *, data_path: str | Path | None = None
) -> Dataset:
    """The rows the search trained on: the study's data minus its ``[cv] holdout`` (or the
    outer test fold of ``hpo nested``), refused if those held-out rows are not the recorded ones.

    Nothing held out may reach the exported model either: its holdout score stays honest.
    """
    dataset = load_dataset(spec.data, path_override=data_path)
    check_classes(dataset, spec.cv, spec.data.target)
    split = split_holdout(dataset, spec.cv)
    if split is None:
        return dataset
    if HOLDOUT_ATTR in study.user_attrs:  # compare only: an export never writes to the study
        check_holdout(study, split)
    return replace(dataset.subset(split.search_rows), holdout=split)


def default_export_dir(study_name: str, trial_number: int) -> Path:
    """``./NAME-trial-N``, with characters a folder name should not hold replaced by ``_``."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", study_name).strip(".") or "study"
    return Path(f"{safe}-trial-{trial_number}")


def _read_card(path: Path) -> dict[str, Any] | None:
    """The card at ``path`` if it is one of hpo's (None for anything else)."""
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        return None
    return card


def check_export_dir(directory: Path) -> dict[str, Any] | None:
    """Refuse a folder an export must not write into; return the card of a previous export
    there (which the new one replaces), else None.

    Only an empty or missing folder, or a previous export, is written into: ``--out .`` by
    mistake must not drop files among someone's project.
    """
    if not directory.exists():
        return None
    if not directory.is_dir():
        raise HpoError(f"{directory}: exists and is not a folder; choose another --out")
    try:
        # A partial file is what an export killed while writing left (it cleans up otherwise).
        entries = [p for p in directory.iterdir() if not p.name.startswith(_PARTIAL)]
    except OSError as exc:
        raise HpoError(f"{directory}: cannot list the folder ({exc.strerror})") from None
    if not entries:
        return None
    card = _read_card(directory / CARD_FILE)
    if card is None:
        raise HpoError(
            f"{directory}: folder is not empty and holds no hpo export ({CARD_FILE}); "
            "choose another --out or empty it"
        )
    return card


# --- the export ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportColumn:
    """One raw column as the exported model takes it.

    ``input``: the model's input name for it. ``dtype``: what the input holds, ``float64``
    (NaN = missing) or ``string`` (``""`` = missing; values stripped of surrounding whitespace).
    Numeric columns carry their fill value and z-score statistics, categorical ones their
    categories in one-hot order and whether a gap has a slot of its own.
    """

    name: str
    input: str
    kind: str  # "numeric" | "categorical"
    dtype: str  # "float64" | "string"
    median: float | None = None
    mean: float | None = None
    std: float | None = None
    categories: tuple[str, ...] = ()
    missing_category: bool = False

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "input": self.input,
            "kind": self.kind,
            "dtype": self.dtype,
        }
        if self.kind == "numeric":
            data.update(median=self.median, mean=self.mean, std=self.std)
        else:
            data.update(categories=list(self.categories), missing_category=self.missing_category)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExportColumn:
        return cls(
            name=str(data["name"]),
            input=str(data["input"]),
            kind=str(data["kind"]),
            dtype=str(data["dtype"]),
            median=data.get("median"),
            mean=data.get("mean"),
            std=data.get("std"),
            categories=tuple(str(c) for c in data.get("categories", ())),
            missing_category=bool(data.get("missing_category", False)),
        )


@dataclass(frozen=True)
class Export:
    """What :func:`export_trial` wrote: the folder, its card, the card it replaced (if any)."""

    directory: Path
    card: dict[str, Any]
    replaced: dict[str, Any] | None

    @property
    def model_path(self) -> Path:
        return self.directory / MODEL_FILE

    @property
    def card_path(self) -> Path:
        return self.directory / CARD_FILE


def _columns(dataset: Dataset, prep: Preprocessor, reserved: set[str]) -> list[ExportColumn]:
    """Each feature column, in the data's order, with what the preprocessor fitted for it."""
    taken = set(reserved)
    columns = []
    for name in dataset.features.columns:
        key = _input_name(str(name), taken)
        taken.add(key)
        if name in prep.numeric:
            columns.append(
                ExportColumn(
                    name=str(name),
                    input=key,
                    kind="numeric",
                    dtype="float64",
                    median=prep.medians[name],
                    mean=prep.means[name],
                    std=prep.stds[name],
                )
            )
            continue
        categories = prep.categorical[name]
        values = dataset.features[name]
        numeric_coded = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(
            values
        )
        columns.append(
            ExportColumn(
                name=str(name),
                input=key,
                kind="categorical",
                dtype="float64" if numeric_coded else "string",
                categories=categories.values,
                missing_category=categories.missing,
            )
        )
    return columns


def _input_name(column: str, taken: set[str]) -> str:
    """The column's name as a Keras input name: Keras refuses ``/``; unique among ``taken``."""
    base = column.replace("/", "_") or "column"
    key, n = base, 1
    while key in taken:
        n += 1
        key = f"{base}_{n}"
    return key


def _numeric_block(x: Any, column: ExportColumn, index: int, keras: Any) -> Any:
    ops = keras.ops
    assert column.median is not None and column.mean is not None and column.std is not None
    filled = ops.where(ops.isnan(x), column.median, x)
    if column.std >= _TINY_STD:
        scaled = keras.layers.Normalization(
            mean=column.mean, variance=column.std**2, dtype="float64", name=f"z_{index}"
        )(filled)
    else:  # Normalization would divide by max(std, 1e-7); hpo divides by std itself
        scaled = ops.divide(ops.subtract(filled, column.mean), column.std)
    return ops.cast(scaled, "float32")


def _categorical_block(x: Any, column: ExportColumn, index: int, keras: Any) -> Any:
    ops = keras.ops
    blocks = []
    if column.dtype == "string":
        vocabulary = list(column.categories) + ([""] if column.missing_category else [])
        if column.categories:
            lookup = keras.layers.StringLookup(
                vocabulary=vocabulary,
                num_oov_indices=1,
                oov_token=_UNSEEN,
                output_mode="one_hot",
                name=f"one_hot_{index}",
            )
            return lookup(x)[:, 1:]  # slot 0 counts unseen values; hpo gives them all zeros
        # No value at all, only gaps (StringLookup takes no vocabulary of "" alone).
        return ops.cast(ops.equal(x, ""), "float32")
    if column.categories:
        codes = np.array([[float(v) for v in column.categories]], dtype=np.float64)
        blocks.append(ops.cast(ops.equal(x, codes), "float32"))
    if column.missing_category:
        blocks.append(ops.cast(ops.isnan(x), "float32"))
    return blocks[0] if len(blocks) == 1 else ops.concatenate(blocks, axis=-1)


def _preprocessing_model(columns: Sequence[ExportColumn], keras: Any) -> Any:
    """Raw columns (in the data's order) in, the network's input row out."""
    inputs = [keras.Input(shape=(1,), name=f"in_{i}", dtype=c.dtype) for i, c in enumerate(columns)]
    numeric = [
        _numeric_block(x, c, i, keras)
        for i, (x, c) in enumerate(zip(inputs, columns, strict=True))
        if c.kind == "numeric"
    ]
    one_hot = [
        _categorical_block(x, c, i, keras)
        for i, (x, c) in enumerate(zip(inputs, columns, strict=True))
        if c.kind == "categorical"
    ]
    blocks = numeric + one_hot  # Preprocessor.feature_names: the numbers, then the one-hots
    features = blocks[0] if len(blocks) == 1 else keras.layers.Concatenate(name="features")(blocks)
    return keras.Model(inputs=inputs, outputs=features, name=_PREPROCESS)


def _holdout_score(study: optuna.Study, trial_number: int) -> dict[str, Any] | None:
    """The trial's row of the latest ``hpo evaluate``, if it was evaluated."""
    evaluation = load_evaluation(study)
    if evaluation is None:
        return None
    for score in evaluation.plans:
        if score.trial == trial_number:
            return {
                "mean": round(score.mean, 6),
                "ci95": [round(v, 6) for v in score.ci95] if score.ci95 is not None else None,
                "accuracies": [round(a, 6) for a in score.accuracies],
                "holdout_rows": evaluation.holdout_rows,
                "trained_on_rows": evaluation.train_rows,
                "epochs": evaluation.epochs,
                "verdict": evaluation.verdict(),
            }
    return None


def _rows_trained_on(dataset: Dataset) -> dict[str, Any]:
    rows: dict[str, Any] = {"rows": dataset.n_rows, "source": dataset.source}
    split = dataset.holdout
    if split is None:
        rows["which"] = "all rows (the study has no holdout)"
        rows["of"] = dataset.n_rows
        return rows
    held = len(split.holdout_rows)
    rows["of"] = dataset.n_rows + held
    rows["which"] = (
        f"the search rows of outer fold {split.outer[0]} of {split.outer[1]}"
        if split.outer is not None
        else f"the search rows ({held} held out for `hpo evaluate`, never trained on)"
    )
    rows["holdout_sha256"] = split.fingerprint
    return rows


def _versions() -> dict[str, str]:
    try:
        hpo_version = metadata.version("hpo")
    except metadata.PackageNotFoundError:
        hpo_version = "unknown"
    return {"hpo": hpo_version, **tensorflow_versions(), "python": platform.python_version()}


def export_trial(
    study: optuna.Study,
    spec: StudySpec,
    trial: optuna.trial.FrozenTrial,
    dataset: Dataset,
    directory: Path,
) -> Export:
    """Train ``trial``'s plan on ``dataset`` and save it, preprocessing included, to ``directory``.

    The training is :func:`hpo.engines.reference.fit_fold` on one fold whose training rows are
    all of ``dataset`` (seed: ``fold_seed(trial seed, 0)``, as the ``refit`` artifacts), so
    what is exported is the reference protocol's network; the preprocessing is a
    :class:`Preprocessor` fitted on the same rows, turned into layers.
    """
    replaced = check_export_dir(directory)
    plan = stored_plan(trial)
    if plan is None:
        raise HpoError(f"study {study.study_name!r}: trial {trial.number} has no recorded plan")
    keras = import_keras(spec.engine.threads)
    prep = Preprocessor(dataset.categorical).fit(dataset.features)
    x = prep.transform(dataset.features)
    y = dataset.labels
    n_classes = len(dataset.classes)
    seed = stored_seed(trial, spec)
    everything = np.arange(dataset.n_rows)
    fold = Fold(0, everything, everything, x, y, x, y)
    fitted = fit_fold(plan, spec.model, fold, n_classes, fold_seed(seed, 0), True, True)
    if fitted.predicted is None or fitted.weights is None:
        raise HpoError(
            f"study {study.study_name!r}: trial {trial.number} diverged when trained on its "
            f"{dataset.n_rows} rows (the loss went non-finite); nothing exported"
        )
    train_accuracy = float(np.mean(fitted.predicted == y))

    net = build_model(plan, spec.model, n_features=x.shape[1], n_classes=n_classes)
    net.set_weights(fitted.weights)
    # An unbuilt optimizer saves 2 of its variables, and loading warns about the mismatch.
    net.optimizer.build(net.trainable_variables)
    columns = _columns(dataset, prep, {_PREPROCESS, _OUTER, str(net.name)})
    preprocess = _preprocessing_model(columns, keras)
    inputs = {c.input: keras.Input(shape=(1,), name=c.input, dtype=c.dtype) for c in columns}
    outputs = net(preprocess([inputs[c.input] for c in columns]))
    model = keras.Model(inputs=inputs, outputs=outputs, name=_OUTER)

    stored = read_trial(trial)
    card: dict[str, Any] = {
        "format": CARD_FORMAT,
        "format_version": CARD_VERSION,
        "model_file": MODEL_FILE,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "study": study.study_name,
        "trial": trial.number,
        "baseline": is_baseline(trial),
        "plan": {
            "regularization": plan.to_dict(),
            "params": dict(trial.params),
            "model": spec_to_dict(spec)["model"],
        },
        "seed": {"trial": seed, "training": fold_seed(seed, 0)},
        "target": spec.data.target,
        "classes": list(dataset.classes),
        "columns": [c.to_dict() for c in columns],
        "features": prep.feature_names,
        "dropped": list(spec.data.drop),
        "na_values": list(spec.data.na_values),
        "column_na_values": {name: list(m) for name, m in spec.data.column_na_values},
        "trained_on": _rows_trained_on(dataset),
        "scores": {
            "cv_accuracy": trial.value,
            "fold_accuracies": list(stored.fold_accuracies),
            "holdout": _holdout_score(study, trial.number),
            "train_accuracy": round(train_accuracy, 6),
        },
        "versions": _versions(),
        "usage": (
            "keras.models.load_model(model_file).predict({input: tf.constant(values)}) with one "
            "entry per column's 'input': float64 numbers (NaN = missing) or strings stripped of "
            "surrounding whitespace ('' = missing); the output is one probability per class, "
            "in the order of 'classes'"
        ),
    }
    _write(directory, model, card)
    keras.backend.clear_session(free_memory=True)
    return Export(directory=directory, card=card, replaced=replaced)


def _write(directory: Path, model: Any, card: dict[str, Any]) -> None:
    """Both files, each written aside and then moved into place (never half a file)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HpoError(f"{directory}: cannot create the folder ({exc.strerror})") from None
    partial_model = directory / f"{_PARTIAL}{MODEL_FILE}"  # Keras wants the .keras suffix
    partial_card = directory / f"{_PARTIAL}{CARD_FILE}"
    try:
        model.save(partial_model)
        partial_card.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        os.replace(partial_model, directory / MODEL_FILE)
        os.replace(partial_card, directory / CARD_FILE)
    except OSError as exc:
        raise HpoError(f"{directory}: cannot write the export ({exc.strerror or exc})") from None
    finally:
        for partial in (partial_model, partial_card):
            partial.unlink(missing_ok=True)


# --- predict ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportedModel:
    """An export folder, read back: its card and the columns it takes."""

    directory: Path
    card: dict[str, Any]
    columns: tuple[ExportColumn, ...]
    classes: tuple[str, ...]

    @property
    def model_path(self) -> Path:
        return self.directory / str(self.card.get("model_file", MODEL_FILE))

    @property
    def na_values(self) -> tuple[str, ...]:
        return tuple(str(v) for v in self.card.get("na_values", ()))

    @property
    def column_na_values(self) -> dict[str, tuple[str, ...]]:
        """Each column's own markers (``[data] na_values = { column = [...] }``)."""
        raw = self.card.get("column_na_values", {})
        return {str(k): tuple(str(v) for v in m) for k, m in raw.items()}

    @property
    def ignored(self) -> tuple[str, ...]:
        """Columns of the study's data the model does not take: the target and the dropped."""
        return (str(self.card.get("target", "")), *(str(c) for c in self.card.get("dropped", ())))


def load_export(directory: str | Path) -> ExportedModel:
    """The export in ``directory``, or one line saying why it is not one."""
    folder = Path(directory)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "no such folder"
        raise HpoError(f"{folder}: {what}; give the folder `hpo export` wrote")
    card = _read_card(folder / CARD_FILE)
    if card is None:
        raise HpoError(
            f"{folder}: not an hpo export (no readable {CARD_FILE}); make one with "
            "`hpo export NAME`"
        )
    version = card.get("format_version")
    if not isinstance(version, int) or version > CARD_VERSION:
        raise HpoError(
            f"{folder / CARD_FILE}: export format version {version!r} is newer than this hpo "
            f"reads ({CARD_VERSION}); update hpo"
        )
    try:
        columns = tuple(ExportColumn.from_dict(c) for c in card["columns"])
        classes = tuple(str(c) for c in card["classes"])
    except (KeyError, TypeError, ValueError) as exc:
        raise HpoError(f"{folder / CARD_FILE}: damaged model card ({exc!r} unreadable)") from None
    exported = ExportedModel(folder, card, columns, classes)
    if not exported.model_path.is_file():
        raise HpoError(f"{folder}: {exported.model_path.name} is missing; export the trial again")
    return exported


def read_rows(path: str | Path, exported: ExportedModel) -> tuple[pd.DataFrame, list[str]]:
    """The model's columns of the CSV at ``path``, read as hpo reads a study's data (same
    missing-value markers, header and value stripping); the notes say what reading changed.
    See :func:`select_rows` for what is refused."""
    source = str(path)
    if not Path(path).exists():
        raise HpoError(f"{source}: no such file")
    return select_rows(read_csv(Path(path), exported.na_values), exported, source=source)


def select_rows(
    frame: pd.DataFrame, exported: ExportedModel, *, source: str = "DataFrame"
) -> tuple[pd.DataFrame, list[str]]:
    """``frame`` cleaned as hpo cleans a study's rows (names and text stripped, the study's
    missing-value markers made gaps), cut to the model's columns in its order, and checked.

    The study's target and dropped columns are ignored when present; a column the model needs
    that is absent, or one it was never trained on, is an error naming them all (one line: a
    renamed column shows as both). A number float32 cannot hold is refused as in training.
    """
    frame, notes = clean_table(
        frame, exported.na_values, source, column_na_values=exported.column_na_values
    )
    names = [c.name for c in exported.columns]
    missing = [n for n in names if n not in frame.columns]
    unexpected = [
        str(c) for c in frame.columns if c not in names and str(c) not in exported.ignored
    ]
    problems = []
    if missing:
        problems.append(f"missing column{'s' if len(missing) > 1 else ''} {quoted(missing)}")
    if unexpected:
        problems.append(
            f"unexpected column{'s' if len(unexpected) > 1 else ''} {quoted(unexpected)}"
        )
    if problems:
        raise HpoError(
            f"{source}: {'; '.join(problems)}; the model takes the columns {quoted(names)}"
        )
    if frame.empty:
        raise HpoError(f"{source}: the data has a header but no rows")
    frame = frame[names]
    check_numbers(frame, source)
    return frame, notes


def model_inputs(
    frame: pd.DataFrame,
    columns: Sequence[ExportColumn],
    *,
    source: str = "data",
    na_values: Sequence[str] = (),
) -> dict[str, np.ndarray]:
    """The exported model's inputs for ``frame``'s rows: float64 numbers with NaN for a gap,
    text as hpo spells it (``2.0`` reads ``"2"``) with ``""`` for a gap; one ``(rows, 1)``
    array per column input."""
    inputs = {}
    for column in columns:
        values = frame[column.name]
        if column.dtype == "string":
            text = category_text(values).fillna("")
            inputs[column.input] = text.to_numpy(dtype=str)[:, None]
            continue
        numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        numbers = values if numeric else pd.to_numeric(values.astype("string"), errors="coerce")
        bad = np.flatnonzero(values.notna().to_numpy() & numbers.isna().to_numpy())
        if len(bad):
            raise HpoError(
                f"{source}: column {column.name!r} holds numbers, but data row {bad[0] + 1} "
                f"has {values.iloc[bad[0]]!r}; a missing value is an empty cell"
                + (f" or one of {quoted(na_values)}" if na_values else "")
            )
        inputs[column.input] = numbers.to_numpy(dtype=np.float64, na_value=np.nan)[:, None]
    return inputs


def predict_rows(
    exported: ExportedModel, frame: pd.DataFrame, *, source: str = "data"
) -> pd.DataFrame:
    """One row per input row: its number (1 = the first data row), the predicted class's
    label, and each class's probability (``p_<class>``, in the card's class order)."""
    keras = import_keras()
    inputs = model_inputs(frame, exported.columns, source=source, na_values=exported.na_values)
    model = _load_model(keras, exported.model_path)
    # Strings as tensors: Keras' numpy adapter refuses text arrays.
    tensors = {key: tf.constant(values) for key, values in inputs.items()}
    probabilities = np.asarray(
        model.predict(tensors, batch_size=_PREDICT_BATCH, verbose=0), dtype=np.float64
    )
    del model
    keras.backend.clear_session(free_memory=True)
    if probabilities.shape != (len(frame), len(exported.classes)):
        raise HpoError(
            f"{exported.model_path}: the model gives {probabilities.shape[-1]} probabilities "
            f"per row, but the card lists {len(exported.classes)} classes; export again"
        )
    out = pd.DataFrame(
        {
            "row": np.arange(1, len(frame) + 1),
            "predicted": [exported.classes[i] for i in probabilities.argmax(axis=1)],
        }
    )
    for j, name in enumerate(exported.classes):
        out[f"p_{name}"] = probabilities[:, j]
    return out


def _load_model(keras: Any, path: Path) -> Any:
    """The exported Keras model, or one line if the file is damaged (truncated, overwritten):
    Keras' own error is a traceback of its loader's internals."""
    try:
        return keras.models.load_model(path, compile=False)
    except Exception:
        raise HpoError(
            f"{path}: not a readable Keras model file (damaged or cut short); export the trial "
            "again with `hpo export`"
        ) from None


def predict_frame(directory: str | Path, frame: pd.DataFrame) -> pd.DataFrame:
    """The predictions of the export in ``directory`` for a DataFrame of raw rows (a notebook's
    way to what ``hpo predict`` does for a CSV): see :func:`select_rows`, :func:`predict_rows`."""
    exported = load_export(directory)
    rows, _ = select_rows(frame.reset_index(drop=True), exported)
    return predict_rows(exported, rows, source="DataFrame")
