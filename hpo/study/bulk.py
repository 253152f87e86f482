"""A batch of trials written in one transaction each: sampled parameters, attributes, results.

Optuna writes every parameter, every user attribute and every result as a transaction of its
own: a look-up of the trial, a state check and an insert or upsert, then a commit; a tell reads
the whole trial back twice. A trial of the course study was about 50 statements and 10
commits, which on a shared PostgreSQL made hpo's own cost, not training, the limit of how many
trials a cluster finishes per second. Here each step of a batch is one
transaction: the trials' states are checked in one query, and the rows are one multi-row
insert (SQLite and PostgreSQL both have ``INSERT ... ON CONFLICT``).

What is written is exactly what Optuna would have written (same tables, same rows, same
encodings), so every reader, Optuna's dashboard included, sees the same study. This module
decides what a batch writes and when; the statements on Optuna's tables are in
``hpo.study.optuna_compat``, the one module that knows Optuna's schema and private names.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from hpo.lazy import lazy_import
from hpo.study import optuna_compat as compat
from hpo.study.storage import unwrap_rdb

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution
else:
    optuna = lazy_import("optuna")

__all__ = [
    "ParamBuffer",
    "SampledParam",
    "complete_trials",
    "create_trials",
    "record_heartbeats",
    "record_sampled",
    "set_durations",
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
    sid = compat.study_id(study)
    with compat.transaction(unwrap_rdb(compat.storage_of(study))) as tx:
        by_state = compat.lock_and_count_trials(tx, sid)
        first = sum(by_state.values())
        if budget is not None:
            count = min(count, budget - sum(by_state.get(state, 0) for state in counted))
        if count < 1:
            return []
        started = datetime.now()  # what Optuna gives a new trial (local time)
        ids = compat.insert_running_trials(tx, sid, first, count, started)
        compat.insert_trial_system_attrs(tx, [tid for _, tid in ids], system_attrs or {})
    frozen = [
        _new_frozen_trial(number, tid, started, dict(system_attrs or {})) for number, tid in ids
    ]
    compat.cache_new_trials(study, frozen)
    compat.forget_cached_trials(study)  # as study.ask() does: the next read is fresh
    return [compat.trial_from_frozen(study, trial) for trial in frozen]


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
        self._inner = storage
        self.params: dict[int, list[SampledParam]] = {}

    def set_trial_param(
        self, trial_id: int, param_name: str, param_value_internal: float, distribution: Any
    ) -> None:
        self.params.setdefault(trial_id, []).append(
            SampledParam(param_name, param_value_internal, distribution)
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


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
    with compat.transaction(unwrap_rdb(storage)) as tx:
        study_ids = compat.unfinished_study_ids(tx, trial_ids)
        rows = []
        for trial_id, sampled in params.items():
            for param in sampled:
                as_json = optuna.distributions.distribution_to_json(param.distribution)
                _check_compatible(tx, study_ids[trial_id], param, as_json)
                rows.append((trial_id, param.name, param.internal, as_json))
        compat.insert_params(tx, rows)
        compat.upsert_trial_user_attrs(tx, user_attrs)


def complete_trials(
    storage: optuna.storages.BaseStorage, values: Mapping[int, float]
) -> dict[int, optuna.trial.TrialState]:
    """Tell many RUNNING trials COMPLETE with their (finite) values in one transaction, as
    ``study.tell`` does one at a time; the state each trial ends in. A trial another worker
    failed as stale meanwhile stays FAIL (its result is then the caller's to drop); a repeat
    (the database went away after the commit) changes nothing.

    The state changes in one conditional update of the RUNNING ones, which locks the rows it
    changes: a worker failing stale trials concurrently either finished its change first (the
    trial is no longer RUNNING here) or waits for this transaction and then finds the trial
    finished (:func:`hpo.study.optuna_compat.complete_running_trials`).
    """
    if not values:
        return {}
    # Optuna's RDB storage keeps trial times as naive UTC (and shows them in local time).
    now = datetime.now(UTC).replace(tzinfo=None)
    with compat.transaction(unwrap_rdb(storage)) as tx:
        return compat.complete_running_trials(tx, values, now)


def set_durations(storage: optuna.storages.BaseStorage, seconds: Mapping[int, float]) -> None:
    """Store each finished trial's own training time (by trial id) as its duration: the
    dashboard's end - start (see :func:`hpo.study.optuna_compat.set_trial_durations`), in one
    transaction; repeating it changes nothing."""
    if seconds:
        with compat.transaction(unwrap_rdb(storage)) as tx:
            compat.set_trial_durations(tx, seconds)


def record_heartbeats(storage: optuna.storages.BaseStorage, trial_ids: Iterable[int]) -> None:
    """Record a heartbeat for each trial now, by the database's clock, in one transaction (what
    Optuna's ``record_heartbeat`` does for one trial in a read and a write)."""
    ids = sorted(set(trial_ids))
    if not ids:
        return
    with compat.transaction(unwrap_rdb(storage)) as tx:
        compat.beat_trials(tx, ids)


def _check_compatible(
    tx: compat.Transaction, study_id: int, param: SampledParam, as_json: str
) -> None:
    """Optuna's rule: a parameter keeps the kind (and choices) of its first distribution in a
    study. Asked of the database once per process and distribution."""
    key = (tx.rdb.url, study_id, param.name, as_json)
    if key in _COMPATIBLE:
        return
    previous = compat.first_distribution_json(tx, study_id, param.name)
    if previous is not None:
        optuna.distributions.check_distribution_compatibility(
            optuna.distributions.json_to_distribution(previous), param.distribution
        )
    _COMPATIBLE.add(key)
