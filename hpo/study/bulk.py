"""A batch of trials written in one transaction each: sampled parameters, attributes, results.

Optuna writes every parameter, every user attribute and every result as a transaction of its
own: a look-up of the trial, a state check and an insert or upsert, then a commit; a tell reads
the whole trial back twice. A trial of the course study was about 50 statements and 10
commits, which on a shared PostgreSQL made hpo's own cost, not training, the limit of how many
trials a cluster finishes per second. Here each step of a batch is one
transaction: the trials' states are checked in one query, and the rows are one multi-row
insert (SQLite and PostgreSQL both have ``INSERT ... ON CONFLICT``).

What is written is exactly what Optuna would have written (same tables, same rows, same
encodings), so every reader, Optuna's dashboard included, sees the same study.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from hpo.lazy import lazy_import
from hpo.study.storage import unwrap_rdb

if TYPE_CHECKING:
    import optuna
    import sqlalchemy
    import sqlalchemy.dialects.postgresql as sqlalchemy_postgresql
    import sqlalchemy.dialects.sqlite as sqlalchemy_sqlite
    from optuna.distributions import BaseDistribution
else:
    optuna = lazy_import("optuna")
    sqlalchemy = lazy_import("sqlalchemy")
    sqlalchemy_postgresql = lazy_import("sqlalchemy.dialects.postgresql")
    sqlalchemy_sqlite = lazy_import("sqlalchemy.dialects.sqlite")
# Optuna's own session helper (its error translation) and table models: these writes have no
# batch form in its storage API.
_optuna_rdb = lazy_import("optuna.storages._rdb.storage")
_models = lazy_import("optuna.storages._rdb.models")
# Optuna's cache of a study's trials, which its own create_new_trial fills with each new trial.
_cached = lazy_import("optuna.storages._cached_storage")

__all__ = [
    "ParamBuffer",
    "SampledParam",
    "complete_trials",
    "create_trials",
    "record_heartbeats",
    "record_sampled",
]


def create_trials(
    study: optuna.Study,
    count: int,
    system_attrs: Mapping[str, Any] | None = None,
    *,
    budget: int | None = None,
    counted: Collection[str] = (),
) -> list[optuna.Trial]:
    """Up to ``count`` new RUNNING trials of ``study`` in one transaction, numbered on, each
    with ``system_attrs``; with ``budget``, no more than leave at most ``budget`` trials in the
    ``counted`` states (names such as ``"RUNNING"``), counted in the same transaction.

    Optuna's ``create_new_trial`` makes one trial a transaction of four statements and a
    commit, and ``optuna.Trial`` then reads the new trial back whole (six queries); a claim
    does this under the study lock, where every other worker waits for it. Here the study's
    row is locked ``FOR UPDATE`` as Optuna does (so that a trial Optuna itself creates
    meanwhile, such as a queued one, cannot take the same number), the study's trials are
    counted once and the new ones inserted with the next numbers, then read back by number
    for their ids. The trials go into Optuna's cache as its own ``create_new_trial`` puts them.

    The budget is checked here as well as by the caller's count under the study lock: that
    lock can be lost mid-claim (its database session ends) while another worker counts, and
    this row lock is the one every creator of trials waits for.
    """
    if count < 1:
        return []
    TrialState = optuna.trial.TrialState
    rdb = unwrap_rdb(study._storage)
    trials = _models.TrialModel.__table__
    study_id = study._study_id
    with _optuna_rdb._create_scoped_session(rdb.scoped_session) as session:
        if rdb.engine.dialect.name == "sqlite":
            # SQLite locks no rows, and a read takes no lock that keeps writers out: write
            # first, which takes the database's write lock, so that no other process creates
            # a trial between the count and the insert.
            studies = _models.StudyModel.__table__
            session.execute(
                sqlalchemy.update(studies)
                .where(studies.c.study_id == study_id)
                .values(study_name=studies.c.study_name)
            )
        _models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)
        by_state = {
            TrialState(state).name: int(n)
            for state, n in session.execute(
                sqlalchemy.select(trials.c.state, sqlalchemy.func.count(trials.c.trial_id))
                .where(trials.c.study_id == study_id)
                .group_by(trials.c.state)
            )
        }
        first = sum(by_state.values())
        if budget is not None:
            count = min(count, budget - sum(by_state.get(state, 0) for state in counted))
        if count < 1:
            return []
        started = datetime.now()  # what Optuna gives a new trial (local time)...
        stored = started.astimezone(UTC).replace(tzinfo=None)  # ... and stores (naive UTC)
        rows = [
            {
                "study_id": study_id,
                "number": first + i,
                "state": TrialState.RUNNING,
                "datetime_start": stored,
            }
            for i in range(count)
        ]
        for chunk in _chunks(rows):
            session.execute(sqlalchemy.insert(trials).values(chunk))
        ids = session.execute(
            sqlalchemy.select(trials.c.number, trials.c.trial_id)
            .where(
                trials.c.study_id == study_id,
                trials.c.number >= first,
                trials.c.number < first + count,
            )
            .order_by(trials.c.number)
        ).all()
        if len(ids) != count:  # numbers taken twice: the count did not see every trial
            raise RuntimeError(
                f"study {study_id}: expected {count} new trials numbered from {first}, "
                f"found {len(ids)}"
            )
        attrs = [
            {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
            for _, trial_id in ids
            for key, value in (system_attrs or {}).items()
        ]
        for chunk in _chunks(attrs):
            session.execute(sqlalchemy.insert(_models.TrialSystemAttributeModel).values(chunk))
    frozen = [
        _new_frozen_trial(int(number), int(trial_id), started, dict(system_attrs or {}))
        for number, trial_id in ids
    ]
    cache = study._storage
    if isinstance(cache, _cached._CachedStorage):
        with cache._lock:
            cache._studies.setdefault(study_id, _cached._StudyInfo())
            cache._add_trials_to_cache(study_id, frozen)
    study._thread_local.cached_all_trials = None  # as study.ask() does: the next read is fresh
    return [_trial(study, trial) for trial in frozen]


def _new_frozen_trial(
    number: int, trial_id: int, started: datetime, system_attrs: dict[str, Any]
) -> optuna.trial.FrozenTrial:
    return optuna.trial.FrozenTrial(
        number=number,
        state=optuna.trial.TrialState.RUNNING,
        value=None,
        values=None,
        datetime_start=started,
        datetime_complete=None,
        params={},
        distributions={},
        user_attrs={},
        system_attrs=system_attrs,
        intermediate_values={},
        trial_id=trial_id,
    )


def _trial(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> optuna.Trial:
    """What ``optuna.Trial(study, trial_id)`` makes, without its read of a trial that was just
    created empty. tests/test_bulk.py compares the two, so an Optuna that changes its
    ``Trial`` fails there instead of here."""
    trial = optuna.Trial.__new__(optuna.Trial)
    trial.study = study
    trial._trial_id = frozen._trial_id
    trial.storage = study._storage
    trial._cached_frozen_trial = frozen
    study.sampler.before_trial(optuna.pruners._filter_study(study, frozen), frozen)
    trial.relative_search_space = None
    trial._relative_params = None
    trial._fixed_params = frozen.system_attrs.get("fixed_params", {})
    return trial


@dataclass(frozen=True)
class SampledParam:
    """One parameter as ``Trial.suggest_*`` hands it to the storage."""

    name: str
    internal: float  # the distribution's internal representation (a choice's index)
    distribution: BaseDistribution


class ParamBuffer:
    """A trial's storage while its batch is sampled: ``Trial.suggest_*`` hands each parameter
    to ``set_trial_param``, which keeps it here (to go to the database with the batch's other
    writes, :func:`record_sampled`); everything else goes straight to the storage.

    >>> buffer = ParamBuffer(storage=None)
    >>> buffer.set_trial_param(7, "alpha", 0.5, distribution=None)
    >>> [p.name for p in buffer.params[7]]
    ['alpha']
    """

    def __init__(self, storage: Any) -> None:
        self._storage = storage
        self.params: dict[int, list[SampledParam]] = {}

    def set_trial_param(
        self, trial_id: int, param_name: str, param_value_internal: float, distribution: Any
    ) -> None:
        self.params.setdefault(trial_id, []).append(
            SampledParam(param_name, param_value_internal, distribution)
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)


# (database URL, study id, parameter name, distribution JSON) found compatible with what the
# study stores: checked once per process, as Optuna's cache does.
_COMPATIBLE: set[tuple[str, int, str, str]] = set()


def record_sampled(
    storage: optuna.storages.BaseStorage,
    params: Mapping[int, Sequence[SampledParam]],
    user_attrs: Mapping[int, Mapping[str, Any]],
) -> None:
    """Write the sampled parameters and user attributes of many trials (by trial id) in one
    transaction. Repeating it writes nothing new (a retry after an outage); a trial finished
    meanwhile (failed as stale) raises Optuna's ``UpdateFinishedTrialError`` before anything is
    written, and a distribution that conflicts with the study's raises Optuna's ``ValueError``.
    """
    trial_ids = sorted({*params, *user_attrs})
    if not trial_ids:
        return
    rdb = unwrap_rdb(storage)
    with _optuna_rdb._create_scoped_session(rdb.scoped_session) as session:
        study_ids = _check_unfinished(session, trial_ids)
        param_rows = []
        for trial_id, sampled in params.items():
            for param in sampled:
                as_json = optuna.distributions.distribution_to_json(param.distribution)
                _check_compatible(session, rdb.url, study_ids[trial_id], param, as_json)
                param_rows.append(
                    {
                        "trial_id": trial_id,
                        "param_name": param.name,
                        "param_value": param.internal,
                        "distribution_json": as_json,
                    }
                )
        model = _models.TrialParamModel
        for chunk in _chunks(param_rows):
            # Optuna refuses to change a trial's parameter; a repeat writes the same value.
            session.execute(
                _insert(rdb, model)
                .values(chunk)
                .on_conflict_do_nothing(index_elements=[model.trial_id, model.param_name])
            )
        _upsert_user_attrs(session, rdb, user_attrs)


def complete_trials(
    storage: optuna.storages.BaseStorage, values: Mapping[int, float]
) -> dict[int, optuna.trial.TrialState]:
    """Tell many RUNNING trials COMPLETE with their (finite) values in one transaction, as
    ``study.tell`` does one at a time; the state each trial ends in. A trial another worker
    failed as stale meanwhile stays FAIL (its result is then the caller's to drop); a repeat
    (the database went away after the commit) changes nothing.

    The state changes in one conditional ``UPDATE ... WHERE state = 'RUNNING'``, which locks the
    rows it changes: a worker failing stale trials concurrently either finished its change first
    (the trial is no longer RUNNING here) or waits for this transaction and then finds the
    trial finished. The trials this transaction completed are then the COMPLETE ones without a
    value yet (every other COMPLETE trial got its value in the transaction that completed it).
    """
    if not values:
        return {}
    TrialState = optuna.trial.TrialState
    rdb = unwrap_rdb(storage)
    trials, trial_values = _models.TrialModel.__table__, _models.TrialValueModel
    ids = sorted(values)
    # Optuna's RDB storage keeps trial times as naive UTC (and shows them in local time).
    now = datetime.now(UTC).replace(tzinfo=None)
    with _optuna_rdb._create_scoped_session(rdb.scoped_session) as session:
        session.execute(
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
        for trial_id, state, value_id in session.execute(query):
            states[int(trial_id)] = TrialState(state)
            if state == TrialState.COMPLETE and value_id is None:
                stored, kind = trial_values.value_to_stored_repr(float(values[trial_id]))
                rows.append(
                    {"trial_id": trial_id, "objective": 0, "value": stored, "value_type": kind}
                )
        for chunk in _chunks(rows):
            session.execute(sqlalchemy.insert(trial_values).values(chunk))
    return states


def record_heartbeats(storage: optuna.storages.BaseStorage, trial_ids: Iterable[int]) -> None:
    """Record a heartbeat for each trial now, by the database's clock, in one transaction (what
    Optuna's ``record_heartbeat`` does for one trial in a read and a write).

    An update of the rows that exist and an insert of the others, not one ``INSERT ... ON
    CONFLICT DO UPDATE``: on PostgreSQL that would draw a number from the table's 4-byte id
    sequence (shared by every study in the database) for every beat of every trial, and run it
    out within months of heartbeats every 10 s.
    """
    ids = sorted(set(trial_ids))
    if not ids:
        return
    rdb = unwrap_rdb(storage)
    beats = _models.TrialHeartbeatModel.__table__
    with _optuna_rdb._create_scoped_session(rdb.scoped_session) as session:
        # Only a trial's own worker beats for it: no other process inserts these rows meanwhile.
        existing = {
            int(trial_id)
            for (trial_id,) in session.execute(
                sqlalchemy.select(beats.c.trial_id).where(beats.c.trial_id.in_(ids))
            )
        }
        if existing:
            session.execute(
                sqlalchemy.update(beats)
                .where(beats.c.trial_id.in_(sorted(existing)))
                .values(heartbeat=sqlalchemy.func.current_timestamp())
            )
        missing = [{"trial_id": trial_id} for trial_id in ids if trial_id not in existing]
        for chunk in _chunks(missing):
            session.execute(
                _insert(rdb, _models.TrialHeartbeatModel)
                .values(chunk)
                .on_conflict_do_nothing(index_elements=[beats.c.trial_id])
            )


def _check_unfinished(session: Any, trial_ids: Iterable[int]) -> dict[int, int]:
    """The study id of each trial; Optuna's ``UpdateFinishedTrialError`` if one is finished."""
    trials = _models.TrialModel
    query = sqlalchemy.select(trials.trial_id, trials.state, trials.study_id).where(
        trials.trial_id.in_(list(trial_ids))
    )
    study_ids = {}
    for trial_id, state, study_id in session.execute(query):
        if state.is_finished():
            raise optuna.exceptions.UpdateFinishedTrialError(
                f"trial {trial_id} is already finished ({state.name}); it is left as it is"
            )
        study_ids[int(trial_id)] = int(study_id)
    return study_ids


def _check_compatible(
    session: Any, url: str, study_id: int, param: SampledParam, as_json: str
) -> None:
    """Optuna's rule: a parameter keeps the kind (and choices) of its first distribution in a
    study. Asked of the database once per process and distribution."""
    key = (url, study_id, param.name, as_json)
    if key in _COMPATIBLE:
        return
    params, trials = _models.TrialParamModel, _models.TrialModel
    query = (
        sqlalchemy.select(params.distribution_json)
        .join(trials, trials.trial_id == params.trial_id)
        .where(trials.study_id == study_id, params.param_name == param.name)
        .limit(1)
    )
    previous = session.execute(query).scalar_one_or_none()
    if previous is not None:
        optuna.distributions.check_distribution_compatibility(
            optuna.distributions.json_to_distribution(previous), param.distribution
        )
    _COMPATIBLE.add(key)


def _upsert_user_attrs(
    session: Any, rdb: optuna.storages.RDBStorage, attrs: Mapping[int, Mapping[str, Any]]
) -> None:
    rows = [
        {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
        for trial_id, items in attrs.items()
        for key, value in items.items()
    ]
    model = _models.TrialUserAttributeModel
    for chunk in _chunks(rows):
        insert = _insert(rdb, model).values(chunk)
        session.execute(
            insert.on_conflict_do_update(
                index_elements=[model.trial_id, model.key],
                set_={"value_json": insert.excluded.value_json},
            )
        )


def _insert(rdb: optuna.storages.RDBStorage, model: Any) -> Any:
    """The dialect's ``INSERT`` (with ``ON CONFLICT``) into ``model``'s table."""
    sqlite = rdb.engine.dialect.name == "sqlite"
    return (sqlalchemy_sqlite if sqlite else sqlalchemy_postgresql).insert(model)


def _chunks(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """``rows`` in slices of at most 900 bound values a statement: SQLite before 3.32 takes no
    more than 999 (a batch of 32 trials' result attributes is about 1,500)."""
    if not rows:
        return
    size = max(1, 900 // len(rows[0]))
    for start in range(0, len(rows), size):
        yield rows[start : start + size]
