"""hpo from Python: the same studies as the command line, for notebooks and scripts.

``optimize`` is what ``hpo run`` does (``hpo run`` is a thin command over :func:`run_study`):
the same storage default, budget, records and artifacts, so a study started here can be
resumed, joined by ``hpo worker``, viewed in the dashboard and reported like any other.
Progress goes to the ``hpo`` logger (``logging.getLogger("hpo")``; nothing is printed) and every
user error raises :class:`hpo.HpoError` with the command line's message.

Example (``examples/notebook.py`` is a complete one)::

    import hpo, pandas as pd

    frame = pd.read_csv("jh-simple-dataset.csv")
    study = hpo.optimize("studies/jh-simple.toml", data=frame, n_trials=20)
    plan = hpo.best_plan("jh-simple")
    hpo.evaluate_plan("studies/jh-simple.toml", plan, frame).accuracy
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from hpo import stops
from hpo.data import Dataset, FoldSet, load_folds
from hpo.data_profile import profile_dataset
from hpo.engines import make_engine
from hpo.engines.batching import FALLBACK
from hpo.engines.builder import resolve
from hpo.engines.contract import EvaluationResult
from hpo.engines.evaluation import evaluate_plans
from hpo.engines.network import build_model as _network
from hpo.errors import HpoError
from hpo.lazy import lazy_import
from hpo.log import get_logger
from hpo.results.artifacts import ArtifactRecorder
from hpo.results.spec_text import refresh_spec_note
from hpo.space import RegularizationPlan, plan_from_params, zero_plan
from hpo.spec import ENGINES, StudySpec, apply_overrides, load_spec, spec_from_dict
from hpo.study.budget import trials_to_run
from hpo.study.creation import (
    check_holdout,
    create_or_load_study,
    find_study,
    load_study,
    update_stored_spec,
)
from hpo.study.pool import WorkerPool, usable_cores, workers_for
from hpo.study.record import (
    best_trial,
    data_warning_line,
    leak_first,
    read_trial,
    store_data_source,
    store_data_warnings,
    stored_spec,
)
from hpo.study.session import train
from hpo.study.storage import checked_storage_url, open_storage, sqlite_file
from hpo.study.stores import (
    FOLDER,
    check_new_store,
    check_rows,
    fixed_store,
    read_data_to_store,
    rows_here,
    store_data,
    store_setting,
    study_place,
    with_study_store,
)
from hpo.study.worker import RunSummary

if TYPE_CHECKING:
    import keras
    import optuna
    import pandas as pd
else:
    optuna = lazy_import("optuna")

__all__ = [
    "PlanScore",
    "RunOutcome",
    "StudyInput",
    "best_plan",
    "build_model",
    "evaluate_plan",
    "optimize",
    "run_study",
    "study_spec",
]

_log = get_logger("api")

StudyInput = str | Path | StudySpec | Mapping[str, Any]
"""A study: a study file's path, a :class:`StudySpec`, or a dict shaped like a study file."""


def study_spec(study: StudyInput) -> StudySpec:
    """The validated spec of ``study`` (a path, a spec, or a dict shaped like a study file).

    >>> study_spec({"study": {"name": "wine"},
    ...             "data": {"dataset": "sklearn:wine", "target": "target"}}).cv.folds
    5
    """
    if isinstance(study, StudySpec):
        return study
    if isinstance(study, str | Path):
        return load_spec(study)
    if isinstance(study, Mapping):
        return spec_from_dict(study, origin="<dict>")
    raise HpoError(
        f"study must be a study file's path, a StudySpec or a dict, but got {type(study).__name__}"
    )


def _data(spec: StudySpec, data: Any) -> tuple[Dataset, FoldSet]:
    """The search rows and their folds: from ``data`` (a CSV path or a DataFrame), else the
    study's own source."""
    if data is None or isinstance(data, str | Path):
        return load_folds(spec.data, spec.cv, path_override=data)
    return load_folds(spec.data, spec.cv, frame=data)


@dataclass(frozen=True)
class RunOutcome:
    """What :func:`run_study` did: the study, whether it was created, and the session."""

    study: optuna.Study
    spec: StudySpec
    created: bool
    summary: RunSummary
    storage_url: str


def run_study(
    spec: StudySpec,
    *,
    data: Any = None,
    storage: str | None = None,
    say: Callable[[str], None] = _log.info,
    warn: Callable[[str], None] = _log.warning,
    stopped: str = "trials in flight marked FAIL; the study is intact",
    workers: int | None = 1,
) -> RunOutcome:
    """Create or resume ``spec``'s study and train it here to its budget (``hpo run``).

    ``say`` receives each progress line (storage, data, model, study), ``warn`` the data's
    notes and warnings; the engine's per-trial lines go to the ``hpo`` logger. ``workers``:
    training processes, this one and ``workers - 1`` ``hpo worker`` processes on the study
    (fewer when the trials left would not keep them busy); None: one per usable core with the
    stacked engine (one thread a process is its fastest), 1 with the reference engine (its
    TensorFlow already uses every core).
    """
    from_file = data is None or isinstance(data, str | Path)
    if workers is not None and workers > 1 and not from_file:
        raise HpoError(
            f"workers={workers} needs the data as a CSV file (the other processes read it "
            "themselves); give data a path, or use workers=1 with a DataFrame"
        )
    if spec.data.store and not from_file:
        raise HpoError(
            "[data] store = true needs the data as a CSV file, not a DataFrame (the study keeps "
            "the file's bytes for its workers); give data a path"
        )
    # A malformed URL or an unusable SQLite path fails before any data is read.
    url, line = checked_storage_url(storage, "create")
    say(line)  # before the storage is opened: an unreachable server is named after this line
    # A study that exists already may keep its rows in its store: a machine without the
    # study file's CSV trains on that copy, as `hpo worker` does.
    rdb, existing = _existing_study(spec.name, url)
    rows, from_store = rows_here(existing, spec, data, url)
    dataset, folds = _data(spec, rows)
    stops.check()  # reading a large CSV takes a while: the first point a stop is seen
    if existing is not None:
        check_rows(existing, dataset)
    spec = with_model(spec, folds, say)
    if workers is None:  # after with_model: a builder's model trains on the reference engine
        workers = usable_cores() if spec.engine.name == "stacked" and from_file else 1
    if rdb is None:
        rdb = open_storage(url)
    first = folds.repeats[0][0]
    say(
        f"data: {dataset.source}: {dataset.rows_text()}, {dataset.features.shape[1]} feature "
        f"columns ({first.n_features} network inputs), {len(dataset.classes)} classes; "
        f"{spec.cv.folds}-fold CV"
        + (f" x {spec.cv.repeats} repeats" if spec.cv.repeats > 1 else "")
    )
    found = data_findings(dataset, spec, warn)
    to_store = None
    if existing is None:
        # Before the study exists: a store this machine cannot write to and read from (a bad
        # bucket or credentials, an unwritable folder), or rows that cannot be stored, are one
        # line, and leave no half-made study behind.
        check_new_store(spec, url, rdb)
        if spec.data.store:
            to_store = read_data_to_store(spec, None if data is None else str(data))
    study, created = create_or_load_study(spec, rdb)
    check_holdout(study, dataset.holdout)
    stored = stored_spec(study)
    if stored is not None:  # files go to the study's store, fixed when it was created
        _say_other_folder(spec, stored, url, warn)
        spec = with_study_store(spec, stored)
    recorder = ArtifactRecorder(spec, url, folds, dataset=dataset)  # a bad folder fails here
    if spec.data.store:
        record, now = store_data(
            study,
            spec,
            study_place(study, url, create=True),
            data_path=None if data is None else str(data),
            read=to_store,
        )
        if now:
            say(f"data: stored {record.name} (sha256 {record.sha256[:12]}) with the study")
    check_rows(study, dataset)
    store_data_warnings(study, found)
    if not from_store:
        # Read from the study's stored copy, the rows are the stored ones: the source recorded
        # by the machine that read them from their origin stays.
        store_data_source(study, dataset.origin())
    if not created:
        # `hpo status` and workers read the budget stored on the study: keep it the one in use.
        changes = update_stored_spec(study, spec)
        if changes:
            say(
                f"study {spec.name!r}: updated "
                + ", ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changes)
            )
    refresh_spec_note(study, spec)  # before training: the dashboard shows it from the start
    left = trials_to_run(study, spec.budget.n_trials)
    say(
        f"study {spec.name!r}: {'created' if created else 'resumed'}; "
        f"{spec.budget.n_trials} trials budgeted, {left} to run"
    )
    pool = _pool(spec, url, data, workers, left, say)
    try:
        if pool is not None:
            pool.start()
        summary = train(
            study,
            spec,
            folds,
            storage_url=url,  # outage lines show the URL as the user gave it
            n_trials=spec.budget.n_trials,
            timeout=spec.budget.timeout,
            recorder=recorder,
            pool=pool,
        )
    finally:
        if pool is not None:
            pool.close()  # whatever ended this process's training: no worker outlives it
    if summary.interrupted:
        say(f"stopped by {summary.interrupted}: {stopped}")
    return RunOutcome(study, spec, created, summary, url)


def _existing_study(
    name: str, url: str
) -> tuple[optuna.storages.RDBStorage | None, optuna.Study | None]:
    """The storage and study ``name`` when it exists already; (None, None) for a SQLite file
    not made yet (it is made once the data has been read: a bad CSV leaves no empty file)."""
    database = sqlite_file(url)
    if database is not None and not database.exists():
        return None, None
    rdb = open_storage(url)
    return rdb, find_study(name, rdb)


def _say_other_folder(
    spec: StudySpec, stored: StudySpec, url: str, warn: Callable[[str], None]
) -> None:
    """Say so when the study's folder (fixed at its creation) is not the one this study file
    names from here: the files go to the study's, as every other process's do."""
    if stored.artifacts.path is None or store_setting(stored) != FOLDER:
        return
    if spec.artifacts.store not in (None, FOLDER):
        return
    here = fixed_store(spec, url)
    if here.artifacts.store != FOLDER or here.artifacts.path in (None, stored.artifacts.path):
        return
    warn(
        f"note: artifacts go to {stored.artifacts.path}, the study's folder since it was "
        f"created (this study file's [artifacts] path is {here.artifacts.path} from here)"
    )


def _stop_the_caller(signal_name: str) -> NoReturn:
    """Cleaned up (trials in flight failed, nothing left RUNNING): now stop the caller as the
    signal would have without hpo."""
    if signal_name == "SIGINT":
        raise KeyboardInterrupt
    raise SystemExit(128 + 15)


def _pool(
    spec: StudySpec,
    url: str,
    data: Any,
    workers: int,
    left: int,
    say: Callable[[str], None],
) -> WorkerPool | None:
    """The other training processes of this run, if more than one is worth starting."""
    setting = spec.engine.trials_per_batch
    per_process = (
        1 if spec.engine.name == "reference" else FALLBACK if setting == "auto" else int(setting)
    )
    count = workers_for(workers, left, per_process)
    if workers > 1:
        cut = (
            f" (of {workers}: {left} trial{'' if left == 1 else 's'} to run, {per_process} a batch)"
            if count < workers
            else ""
        )
        say(f"workers: {count} training process{'es' if count > 1 else ''}{cut}")
    if count == 1:
        return None
    builder_home = [str(Path(spec.source).resolve().parent)] if spec.model.builder else []
    return WorkerPool(
        spec.name,
        url,
        count - 1,
        data_path=None if data is None else str(data),
        timeout=spec.budget.timeout,
        import_paths=builder_home,
    )


def with_model(spec: StudySpec, folds: FoldSet, say: Callable[[str], None]) -> StudySpec:
    """``spec`` with a builder's searched layers resolved on this data's shape (the model
    checked before any training), said in one line; a spec without a builder as is."""
    resolved = resolve(spec, folds.repeats[0][0].n_features, folds.n_classes)
    if resolved is not spec:
        switched = (
            " (the stacked engine trains only the built-in network)"
            if spec.engine.name != resolved.engine.name
            else ""
        )
        say(
            f"model: {spec.model.builder} (your own); searching layers "
            f"{', '.join(map(repr, resolved.search.names))}; reference engine{switched}"
        )
    return resolved


def data_findings(dataset: Dataset, spec: StudySpec, say: Callable[[str], None]) -> list[str]:
    """Say what loading changed and the data's warnings; return the warnings."""
    for note in dataset.notes:
        say(f"note: {note}")
    profile = profile_dataset(
        dataset, spec.cv, ignore=spec.data.ignore_warnings, target=spec.data.target
    )
    found = leak_first(w.message for w in profile.warnings)
    for message in found:
        say(data_warning_line(message))
    return found


def _refuse_reentry(what: str) -> None:
    """Refuse to train inside the reference engine's training process while it imports the
    user's script again (a spawned process imports ``__main__`` as ``__mp_main__``): an
    unguarded call there would join the study as a second worker and wait on the first."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__") == "__mp_main__" and frame.f_code.co_name == "<module>":
            raise HpoError(
                f"{what} ran again inside hpo's training process, which imports your script: "
                'call it under `if __name__ == "__main__":`'
            )
        frame = frame.f_back  # type: ignore[assignment]


def optimize(
    study: StudyInput,
    *,
    data: str | Path | pd.DataFrame | None = None,
    storage: str | None = None,
    n_trials: int | None = None,
    epochs: int | None = None,
    engine: str | None = None,
    name: str | None = None,
    timeout: float | None = None,
    workers: int = 1,
) -> optuna.Study:
    """Create or resume a study and train it until its budget is done, in this process (and
    ``workers - 1`` ``hpo worker`` processes).

    Args:
        study: a study file's path, a :class:`StudySpec`, or a dict shaped like a study file.
        data: a CSV path or a pandas DataFrame with the target column named as in the study;
            default: the study's own ``[data]`` source.
        storage: an Optuna storage URL; default ``$HPO_STORAGE``, else ``sqlite:///hpo.db``.
        n_trials: the study's global budget (finished plus running trials), as ``--n-trials``.
        epochs, engine, name, timeout: as the command line's options of the same names.
        workers: training processes, as ``hpo run --workers`` (default 1 here: a notebook's
            DataFrame cannot reach other processes; with a CSV path, more use more cores).

    Returns:
        The Optuna study (``study.best_trial``, ``study.trials_dataframe()``, ...).

    Raises:
        HpoError: with the message ``hpo run`` would print, for any bad input.
    """
    _refuse_reentry("hpo.optimize")
    if engine is not None and engine not in ENGINES:
        raise HpoError(f"engine must be one of {', '.join(map(repr, ENGINES))}, but got {engine!r}")
    spec = apply_overrides(
        study_spec(study),
        n_trials=n_trials,
        epochs=epochs,
        engine=engine,
        name=name,
        timeout=timeout,
    )
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # hpo says what Optuna would
    try:
        with warnings.catch_warnings():
            # TPE's `group` option is hpo's choice, not the caller's: its warning is noise.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            outcome = run_study(spec, data=data, storage=storage, workers=workers)
    except stops.Stopped as exc:  # stopped before training began (loading the data, say)
        _stop_the_caller(str(exc))
    finally:
        optuna.logging.set_verbosity(verbosity)
    summary = outcome.summary
    if summary.interrupted:
        _stop_the_caller(summary.interrupted)
    _log.info(
        "ran %d trial%s (%d pruned, %d failed) in %.1f s",
        summary.completed,
        "" if summary.completed == 1 else "s",
        summary.pruned,
        summary.failed,
        summary.seconds,
    )
    return outcome.study


@dataclass(frozen=True)
class PlanScore:
    """One plan's cross-validated score: ``accuracy`` out of fold (every row predicted once by
    the model that did not train on it), ``fold_accuracies`` per fold, and the engine's full
    :class:`~hpo.engines.contract.EvaluationResult`."""

    accuracy: float
    fold_accuracies: tuple[float, ...]
    seed: int
    result: EvaluationResult


def _plan(spec: StudySpec, plan: RegularizationPlan | Mapping[str, Any]) -> RegularizationPlan:
    if isinstance(plan, RegularizationPlan):
        return plan
    if isinstance(plan, Mapping):  # a trial's params, e.g. study.best_params
        if not plan:  # the baseline trial has none
            return zero_plan(spec.search)
        if spec.search.auto and spec.search.windows is None:
            raise HpoError(
                'these are parameters of an "auto" search space: their alphas are positions in '
                "windows measured by the study; give the trained plan instead, "
                'hpo.best_plan("STUDY_NAME") (or a RegularizationPlan)'
            )
        try:
            return plan_from_params(spec.search, plan)
        except KeyError as exc:
            raise HpoError(
                f"plan parameters lack {exc.args[0]!r}; give a trial's params (e.g. "
                "study.best_params) or a RegularizationPlan"
            ) from None
    raise HpoError(
        f"plan must be a RegularizationPlan or a dict of trial params, not {type(plan).__name__}"
    )


def evaluate_plan(
    study: StudyInput,
    plan: RegularizationPlan | Mapping[str, Any],
    data: str | Path | pd.DataFrame | None = None,
    *,
    seed: int | None = None,
    epochs: int | None = None,
) -> PlanScore:
    """Score one plan with the study's cross-validation, on the study's search rows (held-out
    rows stay unseen), trained with ``seed`` (default: trial 0's seed).

    ``plan``: a :class:`RegularizationPlan` (e.g. from :func:`best_plan`) or a trial's params
    (``study.best_params``).
    """
    _refuse_reentry("hpo.evaluate_plan")
    spec = apply_overrides(study_spec(study), epochs=epochs)
    _, folds = _data(spec, data)
    spec = resolve(spec, folds.repeats[0][0].n_features, folds.n_classes)
    chosen = _plan(spec, plan)
    trial_seed = spec.trial_seed(0) if seed is None else seed
    engine = make_engine(spec.engine)
    try:
        (result,) = evaluate_plans(
            engine, [chosen], folds, model=spec.model, seeds=[trial_seed], replicas=spec.cv.seeds
        )
    finally:
        engine.close()
    return PlanScore(result.accuracy, result.fold_accuracies, trial_seed, result)


def build_model(
    study: StudyInput,
    plan: RegularizationPlan | Mapping[str, Any],
    n_features: int,
    n_classes: int,
) -> keras.Model:
    """The compiled Keras model of ``plan`` (untrained), to train the winner your own way.

    It takes ``n_features`` preprocessed inputs (one-hot and z-scored as hpo does) and gives
    ``n_classes`` probabilities; ``hpo export`` makes one that takes the raw columns.
    """
    spec = study_spec(study)
    if not isinstance(plan, RegularizationPlan) or (spec.model.builder and not plan.names):
        spec = resolve(spec, n_features, n_classes)
    return _network(_plan(spec, plan), spec.model, n_features=n_features, n_classes=n_classes)


def best_plan(name: str, *, storage: str | None = None) -> RegularizationPlan:
    """The plan of study ``name``'s best trial, as stored (layer names included for a
    builder's model)."""
    url, _ = checked_storage_url(storage, "read")
    study = load_study(name, url)
    trial = best_trial(study)
    if trial is None:
        raise HpoError(f"study {name!r} has no complete trial yet")
    plan = read_trial(trial).plan
    if plan is None:
        raise HpoError(f"study {name!r}: trial {trial.number} has no stored plan")
    return plan
