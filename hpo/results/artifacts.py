"""Artifacts of trials for optuna-dashboard and the report: per-fold table, confusion matrix, model.

:class:`ArtifactRecorder` is the worker's ``on_result`` callback. Files are made for the trials a
user looks at: the study's final best ``[artifacts] top_k``. While training, a process keeps its
own best ``top_k`` results in memory (out-of-fold predictions, first fold's weights: a few KiB
each); :meth:`ArtifactRecorder.finalize` at the end of the run writes each final best trial's
per-fold table (CSV), out-of-fold confusion matrix (PNG) and model file. Writing them for every
trial as it finished cost more than training a trial at small epochs, and most of them were for
trials that ended up nowhere near the best.

``[artifacts] live = true`` brings the files forward: every trial gets its per-fold table, and a
trial among the study's best ``top_k`` when it finishes its confusion matrix, at once (through
Optuna's own artifact API while the trial is still running, so the dashboard shows them during the
run and a worker killed later loses nothing).

Model files always wait for the end of a run: every Keras model built in a process stays in its
memory, even after ``clear_session`` (see bench/README.md), so a long-running worker must not
build one per good trial. ``model = "fold"`` saves the first fold's weights (an engine that
returns none gets the first fold trained again by the reference protocol, same plan and seed);
``model = "refit"`` retrains each of the study's final best on all rows.

The store is the study's (:mod:`hpo.study.stores`): its database, an S3 bucket or a folder, as
``[artifacts] store`` named when the study was created. :func:`read_trial_artifacts` reads them
back for the report and the dashboard, saying for each file that cannot be read which and why.
"""

from __future__ import annotations

import csv
import json
import math
import mimetypes
import re
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo import stops
from hpo.data import Dataset, FoldSet, Preprocessor
from hpo.engines.contract import EvaluationResult
from hpo.engines.keras_model import import_keras
from hpo.engines.network import build_model
from hpo.engines.reference import fit_fold
from hpo.lazy import lazy_import
from hpo.log import get_logger
from hpo.results.spec_text import ensure_spec_note
from hpo.seeds import fold_seed
from hpo.space import RegularizationPlan
from hpo.spec import StudySpec
from hpo.study import optuna_compat as compat
from hpo.study.record import (
    FINISHED_ARTIFACT_PREFIX,
    LIVE_ARTIFACT_PREFIX,
    SPEC_ATTR,
    stored_plan,
    stored_seed,
)
from hpo.study.storage import error_text, outage_reason
from hpo.study.stores import (
    FOLDER,
    ArtifactPlace,
    default_store,
    folder_for,
    folder_store,
    open_place,
    read_error,
    study_place,
)

if TYPE_CHECKING:
    import matplotlib.figure as mpl_figure
    import numpy as np
    import optuna
    import optuna.artifacts as optuna_artifacts
    from matplotlib.figure import Figure
else:
    np = lazy_import("numpy")
    mpl_figure = lazy_import("matplotlib.figure")
    optuna = lazy_import("optuna")
    optuna_artifacts = lazy_import("optuna.artifacts")

__all__ = [
    "ArtifactRead",
    "ArtifactRecorder",
    "TrialArtifact",
    "artifact_dir_for",
    "confusion_counts",
    "confusion_figure",
    "open_artifact_store",
    "read_trial_artifacts",
    "trial_artifacts",
]

_log = get_logger("artifacts")


def artifact_dir_for(storage_url: str, spec: StudySpec | None) -> Path:
    """The folder of a study's ``"folder"`` store: ``[artifacts] path``, else beside the SQLite
    file (``hpo.db`` -> ``hpo-artifacts``), else ``./artifacts``."""
    return folder_for(storage_url, spec)


def open_artifact_store(directory: Path, *, create: bool) -> Any:
    """A file-system artifact store on ``directory`` (created when ``create``)."""
    return folder_store(directory, create=create)


@dataclass(frozen=True)
class TrialArtifact:
    artifact_id: str
    filename: str
    mimetype: str


def trial_artifacts(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> list[TrialArtifact]:
    """Every artifact attached to ``trial``, wherever optuna-dashboard looks for them."""
    storage, trial_id = compat.storage_of(study), compat.trial_id(trial)
    metas: list[dict[str, Any]] = []
    for key, value in storage.get_trial_system_attrs(trial_id).items():
        if key.startswith(LIVE_ARTIFACT_PREFIX) and value:
            metas.append(json.loads(value))
    prefix = f"{FINISHED_ARTIFACT_PREFIX}{trial_id}:"
    for key, value in storage.get_study_system_attrs(compat.study_id(study)).items():
        if key.startswith(prefix) and value:
            metas.append(json.loads(value))
    return [
        TrialArtifact(m["artifact_id"], m["filename"], m["mimetype"])
        for m in metas
        if m is not None
    ]


@dataclass(frozen=True)
class ArtifactRead:
    """One artifact of a trial, read back: its ``data``, or why it cannot be read."""

    trial: int
    artifact: TrialArtifact
    data: bytes | None
    problem: str | None

    def line(self, place: ArtifactPlace) -> str:
        """ "trial 3: trial-3-confusion.png (artifact 1234abcd) cannot be read from ...: why"."""
        return (
            f"trial {self.trial}: {self.artifact.filename} (artifact "
            f"{self.artifact.artifact_id[:8]}) cannot be read from {place.where}: {self.problem}"
        )


def read_trial_artifacts(
    study: optuna.Study,
    trials: Sequence[optuna.trial.FrozenTrial],
    place: ArtifactPlace,
    *,
    wanted: Callable[[TrialArtifact], bool] = lambda artifact: True,
) -> list[ArtifactRead]:
    """Every artifact of ``trials`` (those ``wanted``: their bytes; the others are checked as
    far as their first byte), each with why it cannot be read when it cannot."""
    reads = []
    for trial in trials:
        for artifact in trial_artifacts(study, trial):
            data: bytes | None = None
            problem: str | None = None
            try:
                with place.store.open_reader(artifact.artifact_id) as fh:
                    data = bytes(fh.read() if wanted(artifact) else fh.read(1))
            except Exception as exc:
                problem = read_error(exc)
            reads.append(
                ArtifactRead(trial.number, artifact, data if wanted(artifact) else None, problem)
            )
    return reads


def confusion_counts(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts ``[true, predicted]``; rows never predicted (pruned or diverged folds) are left out."""
    keep = (predictions >= 0) & (labels >= 0)
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (labels[keep], predictions[keep]), 1)
    return counts


# Beyond this many classes a cell is too small for its count (and one text artist per cell took
# minutes to draw at 504 classes): colour only, and at most this many labelled ticks per axis.
CONFUSION_MAX_WRITTEN = 30


def _natural_key(text: str) -> tuple[tuple[int, int, str], ...]:
    """Digits compare as numbers, the rest as text."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part)
        for part in re.split(r"(\d+)", text)
        if part
    )


def confusion_figure(counts: np.ndarray, classes: Sequence[str], title: str) -> Figure:
    """A confusion matrix, colour = share of the true class's rows; up to
    ``CONFUSION_MAX_WRITTEN`` classes the counts are written in the cells, beyond that every
    k-th class is labelled. One image whatever the class count, so drawing stays cheap.
    Classes are shown in natural order (``2`` before ``10``, ``class-2`` before ``class-10``),
    whatever order the labels were numbered in."""
    order = sorted(range(len(classes)), key=lambda i: _natural_key(classes[i]))
    counts = counts[np.ix_(order, order)]
    classes = [classes[i] for i in order]
    n = len(classes)
    size = min(11.0, 3.2 + 0.65 * n)  # inches: bounded, however many classes
    fig = mpl_figure.Figure(figsize=(size + 1.2, size), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    if n <= CONFUSION_MAX_WRITTEN:
        fontsize = 9 if n <= 20 else 7
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    str(counts[i, j]),
                    ha="center",
                    va="center",
                    fontsize=fontsize,
                    color="white" if shares[i, j] > 0.55 else "black",
                )
    step = math.ceil(n / CONFUSION_MAX_WRITTEN) if n else 1
    ticks = list(range(0, n, step))
    labels = [c if len(c) <= 14 else c[:13] + "…" for c in (classes[t] for t in ticks)]
    ax.set_xticks(ticks, labels, rotation=40 if n > 3 else 0, ha="right" if n > 3 else "center")
    ax.set_yticks(ticks, labels)
    if step > 1:
        ax.tick_params(labelsize=7)
    shown = f" (labels on {len(ticks)} of {n})" if step > 1 else ""
    ax.set_xlabel(f"predicted class{shown}")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=11)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class's rows")
    return fig


class ArtifactRecorder:
    """The ``on_result`` callback that leaves artifacts on trials (see the module docstring).

    ``dataset`` (the rows the folds were cut from) is needed only for ``model = "refit"``.
    Artifact failures are logged, never raised: a trial's result matters more than its files.
    """

    def __init__(
        self,
        spec: StudySpec,
        storage_url: str,
        fold_set: FoldSet,
        *,
        dataset: Dataset | None = None,
        artifact_dir: str | Path | None = None,
        refit_here: bool = True,
    ) -> None:
        if spec.artifacts.model == "refit" and dataset is None:
            raise ValueError('[artifacts] model = "refit" needs the rows: pass dataset=')
        self.spec = spec
        self.storage_url = storage_url
        # ``artifact_dir``: a folder of the caller's choosing. Else the study's own store, opened
        # at the first file (the study's stored spec names it); a folder is made now, so that a
        # bad path fails before any training.
        self._place: ArtifactPlace | None = None
        self.directory: Path | None = None
        if artifact_dir is not None:
            self.directory = Path(artifact_dir)
            self._place = ArtifactPlace(
                FOLDER,
                str(self.directory),
                folder_store(self.directory, create=True),
                self.directory,
            )
        elif spec.artifacts.store in (None, FOLDER) and default_store(spec, storage_url) == FOLDER:
            self.directory = artifact_dir_for(storage_url, spec)
            folder_store(self.directory, create=True)
        self._dataset = dataset
        self._classes = fold_set.classes
        first = fold_set.repeats[0]
        self._n_features = first[0].n_features
        n_rows = sum(len(f.valid_rows) for f in first)
        self._labels = np.full(n_rows, -1, dtype=np.int64)
        for fold in first:
            self._labels[fold.valid_rows] = fold.y_valid
        self._first_fold = first[0]
        self._fold_rows = [len(f.valid_rows) for rep in fold_set.repeats for f in rep]
        self._n_folds = fold_set.n_folds
        self._noted = False
        # This process's best top_k trials, by number, until finalize writes their files.
        self._kept: dict[int, EvaluationResult] = {}
        # False in the other processes of an `hpo run`: the run's own process refits, once.
        self._refit_here = refit_here

    def place(self, study: optuna.Study) -> ArtifactPlace:
        """The store this recorder writes to: the study's (as its stored spec names it)."""
        if self._place is None:
            if SPEC_ATTR in study.user_attrs:
                self._place = study_place(study, self.storage_url, create=True)
            else:  # a study hpo did not create: the default for this spec and storage
                self._place = open_place(
                    default_store(self.spec, self.storage_url),
                    url=self.storage_url,
                    spec=self.spec,
                    storage=compat.storage_of(study),
                    create=True,
                )
            if self._place.directory is not None:
                self.directory = self._place.directory
        return self._place

    @property
    def where(self) -> str:
        """The store, for messages (before the first file: the folder, or "the study's store")."""
        if self._place is not None:
            return self._place.where
        return str(self.directory) if self.directory is not None else "the study's artifact store"

    # --- the hot path ----------------------------------------------------------------------

    def __call__(self, trial: optuna.Trial, result: EvaluationResult) -> None:
        try:
            self._record(trial, result)
        except Exception as exc:
            if outage_reason(exc) is not None:
                raise  # the worker's storage guard retries this call once the database is back
            _log.warning(
                "trial %d: artifacts not saved to %s (%s)",
                trial.number,
                self.where,
                error_text(exc),
            )
            _log.debug("artifact failure", exc_info=True)

    def _record(self, trial: optuna.Trial, result: EvaluationResult) -> None:
        if not self._noted:
            ensure_spec_note(trial.study, self.spec)
            self._noted = True
        if result.pruned or not math.isfinite(result.accuracy):
            if self.spec.artifacts.live:
                with tempfile.TemporaryDirectory(prefix="hpo-artifacts-") as tmp:
                    folds = self._write_folds_csv(Path(tmp), trial.number, result)
                    self._upload_live(trial, folds)
            return
        if self.spec.artifacts.live:
            with tempfile.TemporaryDirectory(prefix="hpo-artifacts-") as tmp:
                folder = Path(tmp)
                self._upload_live(trial, self._write_folds_csv(folder, trial.number, result))
                if self._among_best(trial, result.accuracy):
                    self._upload_live(trial, self._write_confusion(folder, trial.number, result))
        self._kept[trial.number] = replace(result, probabilities=None)
        ranked = sorted(self._kept.items(), key=lambda kv: (-kv[1].accuracy, kv[0]))
        self._kept = dict(ranked[: self.spec.artifacts.top_k])

    def _among_best(self, trial: optuna.Trial, accuracy: float) -> bool:
        """Whether ``accuracy`` would rank within ``top_k`` of the study's complete trials."""
        top_k = self.spec.artifacts.top_k
        if top_k == 0:
            return False
        better = 0
        complete = (optuna.trial.TrialState.COMPLETE,)
        for other in trial.study.get_trials(deepcopy=False, states=complete):
            if other.number != trial.number and other.value is not None and other.value > accuracy:
                better += 1
                if better >= top_k:
                    return False
        return True

    def _upload_live(self, trial: optuna.Trial, path: Path) -> None:
        optuna_artifacts.upload_artifact(
            artifact_store=self.place(trial.study).store, file_path=str(path), study_or_trial=trial
        )

    def _write_folds_csv(self, folder: Path, number: int, result: EvaluationResult) -> Path:
        path = folder / f"trial-{number}-folds.csv"
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["repeat", "fold", "rows", "accuracy"])
            for i, accuracy in enumerate(result.fold_accuracies):
                rows = self._fold_rows[i] if i < len(self._fold_rows) else ""
                writer.writerow(
                    [i // self._n_folds + 1, i % self._n_folds + 1, rows, f"{accuracy:.6f}"]
                )
        return path

    def _write_confusion(self, folder: Path, number: int, result: EvaluationResult) -> Path:
        counts = confusion_counts(self._labels, np.asarray(result.predictions), len(self._classes))
        title = f"trial {number}: out-of-fold predictions (accuracy {result.accuracy:.4f})"
        path = folder / f"trial-{number}-confusion.png"
        confusion_figure(counts, self._classes, title).savefig(path)
        return path

    # --- the end of a run ------------------------------------------------------------------

    def finalize(self, study: optuna.Study) -> int:
        """End-of-run work: the spec note, and for each of the study's final top ``top_k``
        trials the files it lacks: per-fold table, confusion matrix and first fold's model
        (``"fold"``) for trials this process trained, a refit on all rows (``"refit"``) for any.
        Returns the files written. Like the hot path it logs failures (a database gone at the
        end, say) and never raises."""
        written: list[str] = []
        try:
            self._finalize(study, written)
        except stops.Stopped as exc:
            # A model file is uploaded whole or not at all (written aside, then stored), so
            # stopping here leaves no half file, only fewer files.
            _log.warning(
                "stopped by %s while saving model files: %d written, the rest skipped",
                exc,
                len(written),
            )
        except Exception as exc:
            _log.warning("model files not written to %s (%s)", self.where, error_text(exc))
        return len(written)

    def _finalize(self, study: optuna.Study, written: list[str]) -> None:
        ensure_spec_note(study, self.spec)
        self._noted = True
        top_k = self.spec.artifacts.top_k
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        for trial in sorted(complete, key=lambda t: (-(t.value or 0.0), t.number))[:top_k]:
            have = {a.filename for a in trial_artifacts(study, trial)}
            for name, make in self._files_of(trial):
                if name in have:
                    continue
                stops.check()  # between files: a stop leaves no half file, only fewer files
                with tempfile.TemporaryDirectory(prefix="hpo-artifacts-") as tmp:
                    try:
                        path = make(Path(tmp) / name)
                        self._upload_finished(study, trial, path)
                    except stops.Stopped:
                        raise
                    except Exception as exc:
                        _log.warning(
                            "trial %d: %s not saved (%s)", trial.number, name, error_text(exc)
                        )
                        continue
                written.append(name)
                if name.endswith(".keras"):
                    _log.info("trial %d: saved %s to %s", trial.number, name, self.where)

    def _files_of(
        self, trial: optuna.trial.FrozenTrial
    ) -> list[tuple[str, Callable[[Path], Path]]]:
        """The files of final best ``trial`` this process can make: name and maker."""
        n, model = trial.number, self.spec.artifacts.model
        files: list[tuple[str, Callable[[Path], Path]]] = []
        kept = self._kept.get(n)
        if kept is not None:  # trained here; another process's trials are its own to save
            files += [
                (f"trial-{n}-folds.csv", lambda p: self._write_folds_csv(p.parent, n, kept)),
                (f"trial-{n}-confusion.png", lambda p: self._write_confusion(p.parent, n, kept)),
            ]
            if model == "fold":
                files.append((f"trial-{n}-fold1.keras", lambda p: self._fold_model(trial, kept, p)))
        if model == "refit" and self._refit_here:
            files.append((f"trial-{n}-refit.keras", lambda p: self._refit(trial, p)))
        return files

    def _fold_model(
        self, trial: optuna.trial.FrozenTrial, result: EvaluationResult, path: Path
    ) -> Path:
        self._save_fold_model(trial, result.weights or self._retrain_first_fold(trial), path)
        return path

    @staticmethod
    def _plan(trial: optuna.trial.FrozenTrial) -> RegularizationPlan:
        plan = stored_plan(trial)
        if plan is None:
            raise ValueError(f"trial {trial.number} has no recorded plan")
        return plan

    def _save_fold_model(
        self, trial: optuna.trial.FrozenTrial, weights: list[np.ndarray], path: Path
    ) -> None:
        net = build_model(
            self._plan(trial),
            self.spec.model,
            n_features=self._n_features,
            n_classes=len(self._classes),
        )
        net.set_weights(weights)
        # An unbuilt optimizer saves 2 of its variables and loading warns about the mismatch.
        net.optimizer.build(net.trainable_variables)
        net.save(path)
        del net
        import_keras().backend.clear_session(free_memory=True)

    def _retrain_first_fold(self, trial: optuna.trial.FrozenTrial) -> list[np.ndarray]:
        """The first fold's weights by the reference protocol, for engines that return none."""
        fold = self._first_fold
        _log.info(
            "trial %d: the engine kept no weights; training fold 1 again with the reference "
            "engine (%d epochs) for its model file",
            trial.number,
            self.spec.model.epochs,
        )
        fitted = fit_fold(
            self._plan(trial),
            self.spec.model,
            fold,
            len(self._classes),
            fold_seed(stored_seed(trial, self.spec), fold.index),
            True,
            True,
        )
        assert fitted.weights is not None
        return fitted.weights

    def _refit(self, trial: optuna.trial.FrozenTrial, path: Path) -> Path:
        assert self._dataset is not None
        keras = import_keras()
        prep = Preprocessor(self._dataset.categorical).fit(self._dataset.features)
        x = prep.transform(self._dataset.features)
        y = self._dataset.labels
        keras.utils.set_random_seed(fold_seed(stored_seed(trial, self.spec), 0))
        net = build_model(
            self._plan(trial), self.spec.model, n_features=x.shape[1], n_classes=len(self._classes)
        )
        _log.info(
            "trial %d: refitting on all %d rows (%d epochs)",
            trial.number,
            len(y),
            self.spec.model.epochs,
        )
        net.fit(
            x,
            y,
            batch_size=self.spec.model.batch_size,
            epochs=self.spec.model.epochs,
            shuffle=True,
            verbose=0,
        )
        net.save(path)
        del net
        keras.backend.clear_session(free_memory=True)
        return path

    def _upload_finished(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial, path: Path
    ) -> None:
        artifact_id = str(uuid.uuid4())
        with path.open("rb") as fh:
            self.place(study).store.write(artifact_id, fh)
        mimetype, encoding = mimetypes.guess_type(path.name)
        meta = {
            "artifact_id": artifact_id,
            "filename": path.name,
            "mimetype": mimetype or "application/octet-stream",
            "encoding": encoding,
        }
        compat.storage_of(study).set_study_system_attr(
            compat.study_id(study),
            f"{FINISHED_ARTIFACT_PREFIX}{compat.trial_id(trial)}:{artifact_id}",
            json.dumps(meta),
        )
