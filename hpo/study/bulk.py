"""A batch of trials written in one transaction each: sampled parameters, attributes, results.

Optuna writes every parameter, every user attribute and every result as a transaction of its
own: a look-up of the trial, a state check and an insert or upsert, then a commit; a tell reads
the whole trial back twice. A stacked batch of eight trials of the course study was about 200
statements and 100 commits, which on a shared PostgreSQL made hpo's own cost, not training,
the limit of how many trials a cluster finishes per second. Here each step of a batch is one
transaction: the trials' states are checked in one query, and the rows are one multi-row
insert (SQLite and PostgreSQL both have ``INSERT ... ON CONFLICT`` and ``UPDATE ... RETURNING``).

What is written is exactly what Optuna would have written (same tables, same rows, same
encodings), so every reader, Optuna's dashboard included, sees the same study.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
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

__all__ = [
    "ParamBuffer",
    "SampledParam",
    "complete_trials",
    "record_heartbeats",
    "record_sampled",
    "set_trial_user_attrs",
]


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
        if param_rows:
            # Optuna refuses to change a trial's parameter; a repeat writes the same value.
            model = _models.TrialParamModel
            session.execute(
                _insert(rdb, model)
                .values(param_rows)
                .on_conflict_do_nothing(index_elements=[model.trial_id, model.param_name])
            )
        _upsert_user_attrs(session, rdb, user_attrs)


def set_trial_user_attrs(
    storage: optuna.storages.BaseStorage, attrs: Mapping[int, Mapping[str, Any]]
) -> None:
    """Write user attributes of many trials (trial id -> key -> value) in one transaction.

    A trial finished meanwhile (failed as stale) raises Optuna's ``UpdateFinishedTrialError``
    before anything is written.
    """
    if not any(attrs.values()):
        return
    rdb = unwrap_rdb(storage)
    with _optuna_rdb._create_scoped_session(rdb.scoped_session) as session:
        _check_unfinished(session, list(attrs))
        _upsert_user_attrs(session, rdb, attrs)


def complete_trials(
    storage: optuna.storages.BaseStorage, values: Mapping[int, float]
) -> dict[int, optuna.trial.TrialState]:
    """Tell many RUNNING trials COMPLETE with their (finite) values in one transaction, as
    ``study.tell`` does one at a time; the state each trial ends in. A trial another worker
    failed as stale meanwhile stays FAIL (its result is then the caller's to drop).

    The state changes in one conditional ``UPDATE ... WHERE state = 'RUNNING' RETURNING``:
    a worker failing stale trials concurrently either finishes its change first (the trial is
    no longer RUNNING here) or waits for this transaction's row locks and then finds it
    finished, never a COMPLETE trial turned FAIL or the other way round.
    """
    if not values:
        return {}
    TrialState = optuna.trial.TrialState
    rdb = unwrap_rdb(storage)
    trials, trial_values = _models.TrialModel.__table__.c, _models.TrialValueModel
    # Optuna's RDB storage keeps trial times as naive UTC (and shows them in local time).
    now = datetime.now(UTC).replace(tzinfo=None)
    with _optuna_rdb._create_scoped_session(rdb.scoped_session) as session:
        done = {
            int(row[0])
            for row in session.execute(
                sqlalchemy.update(_models.TrialModel.__table__)
                .where(trials.trial_id.in_(list(values)), trials.state == TrialState.RUNNING)
                .values(state=TrialState.COMPLETE, datetime_complete=now)
                .returning(trials.trial_id)
            )
        }
        rows = []
        for trial_id in sorted(done):
            stored, value_type = trial_values.value_to_stored_repr(float(values[trial_id]))
            rows.append(
                {"trial_id": trial_id, "objective": 0, "value": stored, "value_type": value_type}
            )
        if rows:
            session.execute(sqlalchemy.insert(trial_values).values(rows))
        states = {trial_id: TrialState.COMPLETE for trial_id in done}
        others = [trial_id for trial_id in values if trial_id not in done]
        if others:
            query = sqlalchemy.select(trials.trial_id, trials.state).where(
                trials.trial_id.in_(others)
            )
            states.update({int(t): TrialState(s) for t, s in session.execute(query)})
    return states


def record_heartbeats(storage: optuna.storages.BaseStorage, trial_ids: Iterable[int]) -> None:
    """Record a heartbeat for each trial now, by the database's clock, in one statement (what
    Optuna's ``record_heartbeat`` does for one trial in a read and a write)."""
    ids = sorted(set(trial_ids))
    if not ids:
        return
    rdb = unwrap_rdb(storage)
    model = _models.TrialHeartbeatModel
    insert = _insert(rdb, model).values([{"trial_id": trial_id} for trial_id in ids])
    with _optuna_rdb._create_scoped_session(rdb.scoped_session) as session:
        session.execute(
            insert.on_conflict_do_update(
                index_elements=[model.trial_id],
                set_={"heartbeat": sqlalchemy.func.current_timestamp()},
            )
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
    if not rows:
        return
    model = _models.TrialUserAttributeModel
    insert = _insert(rdb, model).values(rows)
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
