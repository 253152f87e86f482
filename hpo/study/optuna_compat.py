"""Every use of Optuna's private names, and every statement on Optuna's tables, in one place.

hpo needs a few things Optuna's public API does not offer, or offers at a cost the claim path
cannot pay (``bench/claims.py``: at least 25 trials/s with 10,000 trials stored and 16 workers): a
study's storage and id, a trial's id, a batch of rows written in one transaction, reads of a
study's trials past Optuna's caches, and a hook into TPE. Each function here says which private
name it touches, why no public API serves, and what breaks if Optuna changes it.
``tests/test_optuna_compat.py`` exercises every one of them on SQLite and PostgreSQL against the
pinned Optuna (constraints.txt) and the oldest that pyproject.toml allows (``.ci/run``), and fails
if any other module of hpo uses one of these names or writes SQL on Optuna's tables.

The SQL follows Optuna's schema (``optuna/storages/_rdb/models.py``), which Optuna versions
and checks when a storage is opened; rows written here are exactly those Optuna's own
one-at-a-time calls would write, so every reader (the dashboard included) sees the same study.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Collection, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from hpo.lazy import lazy_import

if TYPE_CHECKING:
    import optuna
    import optuna.storages._cached_storage as _cached
    import optuna.storages._rdb.models as _models
    import optuna.storages._rdb.storage as _optuna_rdb
    import optuna_dashboard._note as _dashboard_note
    import sqlalchemy
    import sqlalchemy.dialects.postgresql as sqlalchemy_postgresql
    import sqlalchemy.dialects.sqlite as sqlalchemy_sqlite
    import sqlalchemy.orm as sqlalchemy_orm
    from optuna.distributions import BaseDistribution
    from optuna.trial import FrozenTrial

    _TPEBase = optuna.samplers.TPESampler
else:
    optuna = lazy_import("optuna")
    sqlalchemy = lazy_import("sqlalchemy")
    sqlalchemy_postgresql = lazy_import("sqlalchemy.dialects.postgresql")
    sqlalchemy_sqlite = lazy_import("sqlalchemy.dialects.sqlite")
    sqlalchemy_orm = lazy_import("sqlalchemy.orm")
    # Optuna's session helper (its error translation) and table models.
    _optuna_rdb = lazy_import("optuna.storages._rdb.storage")
    _models = lazy_import("optuna.storages._rdb.models")
    # Optuna's cache of a study's trials, which its own create_new_trial fills.
    _cached = lazy_import("optuna.storages._cached_storage")
    # optuna-dashboard's trial notes (a private module of Optuna's dashboard).
    _dashboard_note = lazy_import("optuna_dashboard._note")
    # A mixin at run time (Optuna loads only when a sampler is made); TPE to type checkers.
    _TPEBase = object

__all__ = [
    "LIAR_KEY",
    "DensityHook",
    "TPEStudyView",
    "Transaction",
    "beat_trials",
    "bound_connection",
    "bound_to",
    "cache_new_trials",
    "complete_running_trials",
    "count_trial_states",
    "failed_trials",
    "first_distribution_json",
    "foreign_tables",
    "forget_cached_trials",
    "forget_study_cache",
    "frozen_of",
    "has_optuna_tables",
    "insert_params",
    "insert_running_trials",
    "insert_trial_system_attrs",
    "lock_and_count_trials",
    "rdb_backend",
    "read_trial_note",
    "running_with_system_attr",
    "running_without_heartbeat",
    "save_trial_note",
    "schema_complete",
    "set_trial_durations",
    "storage_of",
    "study_id",
    "transaction",
    "trial_from_frozen",
    "trial_id",
    "uncached_trials",
    "underlying_study",
    "unfinished_study_ids",
    "upsert_trial_user_attrs",
    "user_attr_values",
]

# --- a study's and a trial's handles -----------------------------------------------------------


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """``study._storage``: the storage (Optuna's cache around the RDB storage) a study reads
    and writes through. No public attribute exposes it, and hpo writes system attributes and
    batches through it; a trial's public ``Trial.storage`` is the same object, but many callers
    hold no trial. If Optuna renames it, every claim and write fails with AttributeError."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """``study._study_id``. The public way, ``storage.get_study_id_from_name(study_name)``,
    is a database query, and the id is needed on every claim, heartbeat record and count (the
    claim path's hot loop). If Optuna renames it, every claim fails with AttributeError."""
    return int(study._study_id)


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """``trial._trial_id`` (of a live ``Trial`` or a ``FrozenTrial``): the key of every
    storage call on a trial (``BaseStorage.set_trial_system_attr`` and the rest take it), which
    Optuna exposes under no public name. If renamed, every write about a trial fails."""
    return int(trial._trial_id)


def frozen_of(trial: optuna.Trial) -> FrozenTrial:
    """``trial._cached_frozen_trial``: the trial's own up-to-date copy, where Optuna keeps its
    parameters as suggested and its user attributes as set. Updated in place by hpo when a
    batch writes them past the trial (bulk writes), so that ``trial.user_attrs`` and the
    sampler see them; the public ``trial.params`` returns copies. If renamed, sampling fails."""
    return trial._cached_frozen_trial


def rdb_backend(storage: Any) -> optuna.storages.RDBStorage | None:
    """The RDB storage under ``storage`` (``_CachedStorage._backend``; ``storage`` itself if it
    is one), None for another kind. Optuna wraps an RDB storage in its cache and exposes the
    one inside under no public name; hpo's locks and batch writes need the engine. If renamed,
    this returns None and hpo refuses the storage as not SQL."""
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, optuna.storages.RDBStorage) else None


# --- Optuna's per-process caches -----------------------------------------------------------------


def forget_cached_trials(study: optuna.Study) -> None:
    """Drop the study's thread-local list of all trials (``study._thread_local
    .cached_all_trials``), as ``study.ask`` and ``study.tell`` do after a change: hpo
    creates and completes trials past them (bulk writes), and TPE must not read the stale
    list. No public call does only this. If renamed, the attribute set here is ignored and a
    sampler may see a study without the batch's trials."""
    study._thread_local.cached_all_trials = None


def cache_new_trials(study: optuna.Study, frozen: Sequence[FrozenTrial]) -> None:
    """Put trials created past Optuna (``insert_running_trials``) into its storage cache as its
    own ``create_new_trial`` does (``_CachedStorage._lock``, ``._studies``, ``_StudyInfo``,
    ``._add_trials_to_cache``): the cache answers for them without a query, and some of its
    writes (``set_trial_param``) look a trial up there and fail for one it does not know. No
    public call adds a trial to the cache. If these names change, claims fail with
    AttributeError (tests/test_optuna_compat.py names the function)."""
    cache = storage_of(study)
    if not isinstance(cache, _cached._CachedStorage):
        return
    sid = study_id(study)
    with cache._lock:
        cache._studies.setdefault(sid, _cached._StudyInfo())
        cache._add_trials_to_cache(sid, list(frozen))


def trial_from_frozen(study: optuna.Study, frozen: FrozenTrial) -> optuna.Trial:
    """What ``optuna.Trial(study, trial_id)`` makes, without its read of a trial that was just
    created empty: its private fields set as its ``__init__`` sets them (``_trial_id``,
    ``_cached_frozen_trial``, ``_relative_params``, ``_fixed_params``; the sampler's
    ``before_trial`` called with ``optuna.pruners._filter_study``). The public constructor costs
    six queries a trial under the study lock. tests/test_bulk.py and
    tests/test_optuna_compat.py compare the two field by field."""
    trial = optuna.Trial.__new__(optuna.Trial)
    trial.study = study
    trial._trial_id = frozen._trial_id
    trial.storage = storage_of(study)
    trial._cached_frozen_trial = frozen
    study.sampler.before_trial(optuna.pruners._filter_study(study, frozen), frozen)
    trial.relative_search_space = None
    trial._relative_params = None
    trial._fixed_params = frozen.system_attrs.get("fixed_params", {})
    return trial


def forget_study_cache(study: optuna.Study) -> None:
    """Drop everything Optuna's storage cache holds about ``study`` (``_CachedStorage._lock``,
    ``._studies``, ``._trial_id_to_study_id_and_number``, ``._study_id_and_number_to_trial_id``)
    and its thread-local list of trials: after a claim's transaction was rolled back, the cache
    may hold trials that were never stored, or states that were undone. The next read fills it
    again from the database (once, for the whole study). No public call empties the cache. If
    these names change, claims after a rolled-back one fail with AttributeError."""
    forget_cached_trials(study)
    cache = storage_of(study)
    if not isinstance(cache, _cached._CachedStorage):
        return
    sid = study_id(study)
    with cache._lock:
        info = cache._studies.pop(sid, None)
        if info is None:
            return
        for number, trial in info.trials.items():
            cache._trial_id_to_study_id_and_number.pop(trial._trial_id, None)
            cache._study_id_and_number_to_trial_id.pop((sid, number), None)


# --- one transaction for everything a thread writes under a lock -----------------------------

# Per thread: id(RDB storage) -> the connection whose open transaction holds a lock.
_bound = threading.local()


def bound_connection(rdb: optuna.storages.RDBStorage) -> Any:
    """The connection this thread's writes to ``rdb`` go through while it holds a lock
    (:func:`bound_to`), else None."""
    found: dict[int, Any] = getattr(_bound, "connections", {})
    return found.get(id(rdb))


@contextlib.contextmanager
def bound_to(rdb: optuna.storages.RDBStorage, conn: Any) -> Iterator[None]:
    """Make every read and write of ``rdb`` in this thread run in ``conn``'s open transaction.

    Optuna's storage calls take this thread's session from ``rdb.scoped_session`` (a public
    attribute, but how Optuna uses it is not part of its API): for the duration, that session
    is one bound to ``conn`` that opens a SAVEPOINT for each of Optuna's transactions, so that
    its commit releases the savepoint and its rollback undoes only that call (an integrity
    error Optuna expects, such as a study name taken) while the outer transaction, and the
    lock in it, stay open. hpo's own reads here (:func:`count_trial_states` and the others)
    use ``conn`` as well: with one pooled connection per process, a second checkout in this
    thread would wait for the one it holds. Other threads keep their own sessions (and wait for
    the connection). If Optuna stops taking its sessions from ``scoped_session``, its writes
    under a lock commit on their own, as before this existed: the budget stays exact through
    the study row's lock in :func:`lock_and_count_trials`, but a claim is no longer atomic.
    """
    registry = rdb.scoped_session.registry
    previous = registry() if registry.has() else None
    session = sqlalchemy_orm.Session(bind=conn, join_transaction_mode="create_savepoint")
    registry.set(session)
    connections: dict[int, Any] = getattr(_bound, "connections", {})
    _bound.connections = {**connections, id(rdb): conn}
    try:
        yield
    finally:
        _bound.connections = connections
        with contextlib.suppress(Exception):  # a dead connection: its transaction is gone
            session.close()
        if previous is not None:
            registry.set(previous)
        else:
            registry.clear()


@contextlib.contextmanager
def _connect(storage: optuna.storages.RDBStorage) -> Iterator[Any]:
    """A connection for a read: the one this thread holds a lock on, else one of the pool."""
    conn = bound_connection(storage)
    if conn is not None:
        yield conn
        return
    with storage.engine.connect() as conn:
        yield conn


# --- TPE -------------------------------------------------------------------------------------

# Where TPE keeps the constant liar's copy of a running trial's parameters
# (optuna.samplers._tpe.sampler._RELATIVE_PARAMS_KEY, followed by ":0", ":1", ...). If Optuna
# changes it, hpo's sampler stores those copies again (a write a trial, nothing lost);
# tests/test_optuna_compat.py checks that TPE still writes under this key.
LIAR_KEY = "tpe:relative_params"


def uncached_trials(
    study: optuna.Study, states: Container[optuna.trial.TrialState]
) -> list[FrozenTrial]:
    """``study._get_trials(deepcopy=False, states=..., use_cache=False)``: the trials as TPE
    reads them, all of them. The public ``get_trials`` reads the same for a plain study, but
    Hyperband hands the sampler a per-bracket view whose ``get_trials`` keeps only its bracket,
    where TPE (and so hpo's sampler) reads every trial through ``_get_trials``."""
    return study._get_trials(deepcopy=False, states=states, use_cache=False)


def underlying_study(study: Any) -> Any:
    """The study beneath the wrappers a sampler may be handed: Hyperband's per-bracket view and
    :class:`TPEStudyView` both keep it as ``_study``. If Optuna renames it, each bracket view
    counts as a study of its own (a sampler reads the history once more per bracket)."""
    while hasattr(study, "_study"):
        study = study._study
    return study


class _WithoutLiarCopies:
    """A study's storage that drops TPE's copy of each trial's relatively sampled parameters
    (:data:`LIAR_KEY`); hpo's sampler stores a batch's parameters itself, one write a batch."""

    def __init__(self, storage: Any) -> None:
        self._inner = storage

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        if not key.startswith(LIAR_KEY):
            self._inner.set_trial_system_attr(trial_id, key, value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class TPEStudyView:
    """The study as TPE sees it: a fixed list of ``trials``, everything else the study's.

    TPE reads a study's trials through its private ``_get_trials`` and writes the liar's copy
    through its private ``_storage``; this view answers both (and the public ``get_trials``)
    from the list, and drops those writes (:class:`_WithoutLiarCopies`). If TPE starts reading
    through another name, it reads the study itself: slower, the batch snapshot and the
    bounded history are lost; tests/test_optuna_compat.py checks that TPE samples on this view
    without a query."""

    def __init__(self, study: optuna.Study, trials: list[FrozenTrial]) -> None:
        self._study = study
        self.trials = trials
        self._storage = _WithoutLiarCopies(storage_of(study))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[optuna.trial.TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        del deepcopy, use_cache  # a snapshot: never copied, never re-read
        if states is None:
            return list(self.trials)
        return [t for t in self.trials if t.state in states]

    def get_trials(
        self,
        deepcopy: bool = True,
        states: Container[optuna.trial.TrialState] | None = None,
    ) -> list[FrozenTrial]:
        return self._get_trials(deepcopy, states)


class DensityHook(_TPEBase):
    """A mixin for a ``TPESampler`` subclass (listed before it) that routes TPE's private
    ``_build_parzen_estimator`` (its Parzen estimator of a set of trials) through the public
    name :meth:`fit_density`, which the subclass overrides to reuse fits. TPE has no public
    hook there. If Optuna renames the method, the override is never called: TPE fits every
    estimator itself (slower, same proposals)."""

    def _build_parzen_estimator(
        self,
        study: optuna.Study,
        search_space: dict[str, BaseDistribution],
        trials: list[FrozenTrial],
        handle_below: bool,
    ) -> Any:
        return self.fit_density(study, search_space, trials, handle_below)

    def fit_density(
        self,
        study: optuna.Study,
        search_space: dict[str, BaseDistribution],
        trials: list[FrozenTrial],
        handle_below: bool,
    ) -> Any:
        """TPE's own estimator of ``trials``."""
        return super()._build_parzen_estimator(study, search_space, trials, handle_below)


# --- optuna-dashboard's trial notes ------------------------------------------------------------


def read_trial_note(study: optuna.Study, trial_id: int) -> tuple[str, int]:
    """A trial's dashboard note and its version. optuna-dashboard keeps notes in study system
    attributes (``optuna_dashboard._note``); its public ``save_note()`` needs a live trial,
    which a finished one is not. If the module moves, notes fail (callers log and go on)."""
    attrs = storage_of(study).get_study_system_attrs(study_id(study))
    note = _dashboard_note.get_note_from_system_attrs(attrs, trial_id)
    return str(note["body"]), int(note["version"])


def save_trial_note(study: optuna.Study, trial_id: int, version: int, body: str) -> None:
    """Store ``body`` as version ``version`` of a trial's dashboard note (see
    :func:`read_trial_note`)."""
    _dashboard_note.save_note_with_version(
        storage_of(study), study_id(study), trial_id, version, body
    )


# --- transactions on Optuna's tables -----------------------------------------------------------


@dataclass(frozen=True)
class Transaction:
    """One database transaction of an RDB storage (the session, and the storage it is of)."""

    session: Any
    rdb: optuna.storages.RDBStorage

    @property
    def sqlite(self) -> bool:
        return bool(self.rdb.engine.dialect.name == "sqlite")


@contextlib.contextmanager
def transaction(rdb: optuna.storages.RDBStorage) -> Iterator[Transaction]:
    """A transaction committed at the end (rolled back on error) through Optuna's own
    ``_create_scoped_session``, so that errors are translated as Optuna's storage calls
    translate them (``StorageInternalError``). Optuna's storage API has no batch form; if the
    helper moves, every batch write fails with AttributeError."""
    with _optuna_rdb._create_scoped_session(rdb.scoped_session) as session:
        yield Transaction(session, rdb)


def lock_and_count_trials(tx: Transaction, study_id: int) -> dict[str, int]:
    """Lock the study's row against other creators of trials, as Optuna's ``create_new_trial``
    does, and count its trials by state name. SQLite locks no rows, and a read takes no lock
    that keeps writers out: there the row is written first, which takes the database's write
    lock, so that no other process creates a trial between the count and the insert."""
    studies, trials = _models.StudyModel.__table__, _models.TrialModel.__table__
    if tx.sqlite:
        tx.session.execute(
            sqlalchemy.update(studies)
            .where(studies.c.study_id == study_id)
            .values(study_name=studies.c.study_name)
        )
    _models.StudyModel.find_or_raise_by_id(study_id, tx.session, for_update=True)
    rows = tx.session.execute(
        sqlalchemy.select(trials.c.state, sqlalchemy.func.count(trials.c.trial_id))
        .where(trials.c.study_id == study_id)
        .group_by(trials.c.state)
    )
    return {optuna.trial.TrialState(state).name: int(n) for state, n in rows}


def insert_running_trials(
    tx: Transaction, study_id: int, first: int, count: int, started: datetime
) -> list[tuple[int, int]]:
    """Insert ``count`` RUNNING trials numbered from ``first``, started at ``started`` (local
    time, what Optuna gives a new trial; stored as naive UTC, as Optuna stores it); their
    (number, trial id) by number. Raises RuntimeError if the numbers were taken twice (the
    caller's count missed a trial)."""
    trials = _models.TrialModel.__table__
    stored = started.astimezone(UTC).replace(tzinfo=None)  # local time in, naive UTC stored
    rows = [
        {
            "study_id": study_id,
            "number": first + i,
            "state": optuna.trial.TrialState.RUNNING,
            "datetime_start": stored,
        }
        for i in range(count)
    ]
    for chunk in _chunks(rows):
        tx.session.execute(sqlalchemy.insert(trials).values(chunk))
    ids = tx.session.execute(
        sqlalchemy.select(trials.c.number, trials.c.trial_id)
        .where(
            trials.c.study_id == study_id,
            trials.c.number >= first,
            trials.c.number < first + count,
        )
        .order_by(trials.c.number)
    ).all()
    if len(ids) != count:
        raise RuntimeError(
            f"study {study_id}: expected {count} new trials numbered from {first}, found {len(ids)}"
        )
    return [(int(number), int(trial_id)) for number, trial_id in ids]


def insert_trial_system_attrs(
    tx: Transaction, trial_ids: Iterable[int], attrs: Mapping[str, Any]
) -> None:
    """The same system attributes (JSON-encoded, as Optuna stores them) for each new trial."""
    rows = [
        {"trial_id": tid, "key": key, "value_json": json.dumps(value)}
        for tid in trial_ids
        for key, value in attrs.items()
    ]
    for chunk in _chunks(rows):
        tx.session.execute(sqlalchemy.insert(_models.TrialSystemAttributeModel).values(chunk))


def unfinished_study_ids(tx: Transaction, trial_ids: Collection[int]) -> dict[int, int]:
    """The study id of each trial; Optuna's ``UpdateFinishedTrialError`` if one is finished."""
    trials = _models.TrialModel
    query = sqlalchemy.select(trials.trial_id, trials.state, trials.study_id).where(
        trials.trial_id.in_(list(trial_ids))
    )
    study_ids = {}
    for tid, state, sid in tx.session.execute(query):
        if state.is_finished():
            raise optuna.exceptions.UpdateFinishedTrialError(
                f"trial {tid} is already finished ({state.name}); it is left as it is"
            )
        study_ids[int(tid)] = int(sid)
    return study_ids


def first_distribution_json(tx: Transaction, study_id: int, name: str) -> str | None:
    """The stored distribution (Optuna's JSON) of one trial's parameter ``name`` in a study,
    None if no trial has it yet: what Optuna checks a new distribution against."""
    params, trials = _models.TrialParamModel, _models.TrialModel
    query = (
        sqlalchemy.select(params.distribution_json)
        .join(trials, trials.trial_id == params.trial_id)
        .where(trials.study_id == study_id, params.param_name == name)
        .limit(1)
    )
    found = tx.session.execute(query).scalar_one_or_none()
    return None if found is None else str(found)


def insert_params(tx: Transaction, rows: Sequence[tuple[int, str, float, str]]) -> None:
    """Parameters as (trial id, name, internal value, distribution JSON); a parameter a trial
    already has is left alone (Optuna refuses to change one; a repeat writes the same)."""
    model = _models.TrialParamModel
    values = [
        {"trial_id": tid, "param_name": name, "param_value": value, "distribution_json": js}
        for tid, name, value, js in rows
    ]
    for chunk in _chunks(values):
        tx.session.execute(
            _insert(tx, model)
            .values(chunk)
            .on_conflict_do_nothing(index_elements=[model.trial_id, model.param_name])
        )


def upsert_trial_user_attrs(tx: Transaction, attrs: Mapping[int, Mapping[str, Any]]) -> None:
    """User attributes by trial id, JSON-encoded; an existing one is replaced, as Optuna's
    ``set_trial_user_attr`` does."""
    rows = [
        {"trial_id": tid, "key": key, "value_json": json.dumps(value)}
        for tid, items in attrs.items()
        for key, value in items.items()
    ]
    model = _models.TrialUserAttributeModel
    for chunk in _chunks(rows):
        insert = _insert(tx, model).values(chunk)
        tx.session.execute(
            insert.on_conflict_do_update(
                index_elements=[model.trial_id, model.key],
                set_={"value_json": insert.excluded.value_json},
            )
        )


def complete_running_trials(
    tx: Transaction, values: Mapping[int, float], now: datetime
) -> dict[int, optuna.trial.TrialState]:
    """Mark the RUNNING ones of these trials COMPLETE at ``now`` (naive UTC) and store their
    values; the state each trial is in after. One conditional ``UPDATE ... WHERE state =
    'RUNNING'`` locks the rows it changes; the trials it completed are then the COMPLETE ones
    without a value yet (every other COMPLETE trial got its value in the transaction that
    completed it). Values are stored as Optuna encodes them (``value_to_stored_repr``)."""
    TrialState = optuna.trial.TrialState
    trials, trial_values = _models.TrialModel.__table__, _models.TrialValueModel
    ids = sorted(values)
    tx.session.execute(
        sqlalchemy.update(trials)
        .where(trials.c.trial_id.in_(ids), trials.c.state == TrialState.RUNNING)
        .values(state=TrialState.COMPLETE, datetime_complete=now)
    )
    value_of = trial_values.__table__.c
    query = (
        sqlalchemy.select(trials.c.trial_id, trials.c.state, value_of.trial_value_id)
        .select_from(
            trials.outerjoin(
                trial_values.__table__,
                (value_of.trial_id == trials.c.trial_id) & (value_of.objective == 0),
            )
        )
        .where(trials.c.trial_id.in_(ids))
    )
    states, rows = {}, []
    for tid, state, value_id in tx.session.execute(query):
        states[int(tid)] = TrialState(state)
        if state == TrialState.COMPLETE and value_id is None:
            stored, kind = trial_values.value_to_stored_repr(float(values[tid]))
            rows.append({"trial_id": tid, "objective": 0, "value": stored, "value_type": kind})
    for chunk in _chunks(rows):
        tx.session.execute(sqlalchemy.insert(trial_values).values(chunk))
    return states


def set_trial_durations(tx: Transaction, seconds: Mapping[int, float]) -> None:
    """Move each finished trial's start to its end less ``seconds[trial id]``, never earlier
    than it started: optuna-dashboard shows end - start as a trial's duration, which for the
    trials of a claim or batch, created together and told together, was the whole wait. Both
    columns hold naive UTC (see :func:`insert_running_trials`); a trial not yet finished is
    left alone."""
    trials = _models.TrialModel.__table__
    rows = tx.session.execute(
        sqlalchemy.select(
            trials.c.trial_id, trials.c.datetime_start, trials.c.datetime_complete
        ).where(trials.c.trial_id.in_(sorted(seconds)), trials.c.datetime_complete.is_not(None))
    ).all()
    moves = []
    for tid, start, end in rows:
        moved = end - timedelta(seconds=max(0.0, float(seconds[int(tid)])))
        if start is None or moved > start:
            moves.append({"tid": tid, "moved": moved})
    if moves:  # one statement for the batch (executemany), not a round trip per trial
        tx.session.execute(
            sqlalchemy.update(trials)
            .where(trials.c.trial_id == sqlalchemy.bindparam("tid"))
            .values(datetime_start=sqlalchemy.bindparam("moved")),
            moves,
        )


def beat_trials(tx: Transaction, trial_ids: Sequence[int]) -> None:
    """A heartbeat now, by the database's clock, for each trial: an update of the rows that
    exist and an insert of the others. Not one ``INSERT ... ON CONFLICT DO UPDATE``: on
    PostgreSQL that draws a number from the table's 4-byte id sequence (shared by every study
    in the database) for every beat, and would run it out within months of beats every 10 s.
    Only a trial's own worker beats for it: no other process inserts its row meanwhile."""
    beats, trials = _models.TrialHeartbeatModel.__table__, _models.TrialModel.__table__
    # The trials that exist, and which of them have a heartbeat row. A trial held by this
    # worker may not exist: its claim's transaction was rolled back after the heartbeat thread
    # read the held trials (it then waited for the connection the claim held).
    found = tx.session.execute(
        sqlalchemy.select(trials.c.trial_id, beats.c.trial_id)
        .select_from(trials.outerjoin(beats, beats.c.trial_id == trials.c.trial_id))
        .where(trials.c.trial_id.in_(trial_ids))
    ).all()
    existing = {int(tid) for tid, beat in found if beat is not None}
    if existing:
        tx.session.execute(
            sqlalchemy.update(beats)
            .where(beats.c.trial_id.in_(sorted(existing)))
            .values(heartbeat=sqlalchemy.func.current_timestamp())
        )
    missing = [{"trial_id": int(tid)} for tid, beat in found if beat is None]
    for chunk in _chunks(missing):
        tx.session.execute(
            _insert(tx, _models.TrialHeartbeatModel)
            .values(chunk)
            .on_conflict_do_nothing(index_elements=[beats.c.trial_id])
        )


def _insert(tx: Transaction, model: Any) -> Any:
    """The dialect's ``INSERT`` (with ``ON CONFLICT``) into ``model``'s table."""
    return (sqlalchemy_sqlite if tx.sqlite else sqlalchemy_postgresql).insert(model)


def _chunks(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """``rows`` in slices of at most 900 bound values a statement: SQLite before 3.32 takes no
    more than 999 (a batch of 32 trials' result attributes is about 1,500)."""
    if not rows:
        return
    size = max(1, 900 // len(rows[0]))
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


# --- reads of Optuna's tables, past its caches ------------------------------------------------


def count_trial_states(storage: optuna.storages.RDBStorage, study_id: int) -> dict[str, int]:
    """Trials of a study by state name, straight from the database (no cache): Optuna's only
    way reads every trial whole, seconds at 10,000 trials, on every claim."""
    query = sqlalchemy.text("SELECT state, COUNT(*) FROM trials WHERE study_id = :s GROUP BY state")
    with _connect(storage) as conn:
        rows = conn.execute(query, {"s": study_id}).all()
    return {str(state): int(count) for state, count in rows}


def failed_trials(
    storage: optuna.storages.RDBStorage, study_id: int, *, system_attr: str
) -> list[tuple[int, int, Any]]:
    """(trial id, number, the value of system attribute ``system_attr`` or None) of each FAIL
    trial of a study, by number: what deciding on a retry needs, without reading the study's
    every trial (Optuna's only way to find failed trials), which took seconds at 10,000."""
    query = sqlalchemy.text(
        "SELECT t.trial_id, t.number, a.value_json FROM trials t "
        "LEFT JOIN trial_system_attributes a ON a.trial_id = t.trial_id AND a.key = :k "
        "WHERE t.study_id = :s AND t.state = 'FAIL' ORDER BY t.number"
    )
    with _connect(storage) as conn:
        rows = conn.execute(query, {"s": study_id, "k": system_attr}).all()
    return [
        (int(tid), int(number), None if value is None else json.loads(value))
        for tid, number, value in rows
    ]


def running_with_system_attr(
    storage: optuna.storages.RDBStorage, study_id: int, key: str, value: Any
) -> list[int]:
    """The ids of a study's RUNNING trials whose system attribute ``key`` is ``value``, by
    number (a claim's trials found again after an outage; Optuna has no filtered read)."""
    query = sqlalchemy.text(
        "SELECT t.trial_id FROM trials t "
        "JOIN trial_system_attributes a ON a.trial_id = t.trial_id "
        "WHERE t.study_id = :s AND t.state = 'RUNNING' AND a.key = :k AND a.value_json = :v "
        "ORDER BY t.number"
    )
    with _connect(storage) as conn:
        rows = conn.execute(query, {"s": study_id, "k": key, "v": json.dumps(value)}).all()
    return [int(tid) for (tid,) in rows]


def user_attr_values(storage: optuna.storages.RDBStorage, study_id: int, key: str) -> list[Any]:
    """The values of user attribute ``key`` over the trials of a study that have it (without
    reading every trial whole, Optuna's only way)."""
    query = sqlalchemy.text(
        "SELECT a.value_json FROM trial_user_attributes a "
        "JOIN trials t ON t.trial_id = a.trial_id WHERE t.study_id = :s AND a.key = :k"
    )
    with _connect(storage) as conn:
        rows = conn.execute(query, {"s": study_id, "k": key}).all()
    return [json.loads(value) for (value,) in rows]


def running_without_heartbeat(
    storage: optuna.storages.RDBStorage, study_id: int
) -> tuple[float, list[int]]:
    """The database's clock (seconds since the epoch, UTC) and the ids of RUNNING trials that
    never recorded a heartbeat.

    Optuna's stale check skips such trials, so a worker that died between creating a trial and
    its first heartbeat would leave it RUNNING forever. Their start times cannot judge them:
    they come from the clock of whichever machine created the trial (and Optuna before 5.0
    stored local times, hours off for a worker in another time zone). The database's own clock
    is the one clock every worker shares.
    """
    query = sqlalchemy.text(
        "SELECT t.trial_id FROM trials t "
        "LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
        "WHERE t.study_id = :s AND t.state = 'RUNNING' AND h.trial_id IS NULL"
    )
    clock = sqlalchemy.text(
        "SELECT (julianday('now') - 2440587.5) * 86400.0"
        if storage.engine.dialect.name == "sqlite"
        else "SELECT EXTRACT(EPOCH FROM CURRENT_TIMESTAMP)"
    )
    with _connect(storage) as conn:
        now = float(conn.execute(clock).scalar_one())
        rows = conn.execute(query, {"s": study_id}).all()
    return now, [int(tid) for (tid,) in rows]


def has_optuna_tables(conn: sqlite3.Connection) -> bool:
    """Whether a SQLite database holds Optuna's study table: a reader's check, on a read-only
    connection, that a file is an Optuna database before Optuna would initialize it."""
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'studies'"
    ).fetchall()
    return bool(rows)


def foreign_tables(conn: sqlite3.Connection) -> list[str]:
    """The tables of a SQLite database that are not Optuna's, when it holds no Optuna study
    table (else none): another application's file, which Optuna would add its tables to. Read
    on the caller's (read-only) connection; Optuna's table names are its models' (private)."""
    names = [
        str(name)
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name"
        )
    ]
    if "studies" in names:
        return []
    optuna_names = {*_models.BaseModel.metadata.tables, "alembic_version"}
    return [name for name in names if name not in optuna_names]


def schema_complete(conn: Any) -> bool:
    """Whether Optuna's tables and both of its version records (``version_info``, and
    alembic's ``alembic_version``) exist on a PostgreSQL connection: the last things Optuna's
    RDB storage writes when it creates the schema; a storage made after a True answer only
    reads the schema. If Optuna renames these tables, the answer is False and every process
    takes the slower path that makes a schema (opening Optuna's storage once more)."""
    found = conn.execute(
        sqlalchemy.text(
            "SELECT to_regclass('studies') IS NOT NULL AND to_regclass('version_info') IS NOT "
            "NULL AND to_regclass('alembic_version') IS NOT NULL"
        )
    ).scalar()
    if not found:
        return False
    query = sqlalchemy.text(
        "SELECT EXISTS (SELECT 1 FROM version_info) AND EXISTS (SELECT 1 FROM alembic_version)"
    )
    return bool(conn.execute(query).scalar())
