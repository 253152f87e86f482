"""A batch's writes in one transaction each (``hpo.study.bulk``), on SQLite and PostgreSQL.

The contract: the rows are the ones Optuna's own one-at-a-time calls would have written (every
reader, the dashboard included, sees the same trial), a batch is written whole or not at all,
a repeat after an outage changes nothing, and a trial another worker failed stays failed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from conftest import in_time_zone
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.samplers._tpe import sampler as tpe
from optuna.trial import TrialState
from pg import pg_database

from hpo.study import sampler as sampling
from hpo.study.bulk import (
    ParamBuffer,
    complete_trials,
    create_trials,
    record_heartbeats,
    record_sampled,
)
from hpo.study.optuna_compat import LIAR_KEY, failed_trials, user_attr_values
from hpo.study.storage import normalize_url, open_storage, unwrap_rdb


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def study(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[optuna.Study]:
    """An empty study in an empty database of each kind."""
    if request.param == "sqlite":
        yield optuna.create_study(
            storage=open_storage(f"sqlite:///{tmp_path}/bulk.db"), direction="maximize"
        )
        return
    with pg_database() as url:
        yield optuna.create_study(storage=open_storage(url), direction="maximize")


def _suggest(trial: optuna.Trial) -> None:
    trial.suggest_categorical("placement", ["activity", "kernel"])
    trial.suggest_float("alpha", 1e-6, 1e-1, log=True)


def _comparable(frozen: optuna.trial.FrozenTrial) -> tuple[object, ...]:
    return (
        frozen.state,
        frozen.values,
        frozen.params,
        frozen.distributions,
        frozen.user_attrs,
        {k: v for k, v in frozen.system_attrs.items() if not k.startswith("tpe:")},
    )


@pytest.fixture
def far_from_utc() -> Iterator[None]:
    """The process in UTC+14, where a local time stored as if it were UTC is 14 hours off."""
    with in_time_zone("Pacific/Kiritimati"):
        yield


def test_a_batch_writes_the_rows_optunas_own_calls_write(
    study: optuna.Study, far_from_utc: None
) -> None:
    by_optuna, by_hpo = study.ask(), study.ask()
    _suggest(by_optuna)
    by_optuna.set_user_attr("worker", "w")
    study.tell(by_optuna, 0.75)

    buffer = ParamBuffer(study._storage)
    by_hpo.storage = buffer  # as the worker samples a batch
    # The same values as the first trial, through the buffer.
    by_hpo.suggest_categorical("placement", ["activity", "kernel"])
    by_hpo.suggest_float("alpha", 1e-6, 1e-1, log=True)
    by_hpo.storage = study._storage
    assert [p.name for p in buffer.params[by_hpo._trial_id]] == ["placement", "alpha"]
    assert study._storage.get_trial(by_hpo._trial_id).params == {}  # nothing written yet
    record_sampled(study._storage, buffer.params, {by_hpo._trial_id: {"worker": "w"}})
    states = complete_trials(study._storage, {by_hpo._trial_id: 0.75})
    assert states == {by_hpo._trial_id: TrialState.COMPLETE}

    written = study._storage.get_trial(by_hpo._trial_id)
    reference = study._storage.get_trial(by_optuna._trial_id)
    expected = _comparable(reference)
    # Only the sampled values differ (TPE's random start): compare with the reference's.
    assert _comparable(written)[:2] == expected[:2]
    assert written.distributions == reference.distributions
    assert set(written.params) == set(reference.params)
    assert written.user_attrs == reference.user_attrs
    # Both finish times are read back in local time: the bulk one was stored as naive UTC, as
    # Optuna stores its own (a local time stored raw would be hours off outside UTC).
    assert reference.datetime_complete is not None and written.datetime_complete is not None
    assert abs((written.datetime_complete - reference.datetime_complete).total_seconds()) < 60
    assert study.best_value == 0.75


def test_trials_created_together_are_what_optuna_makes_one_by_one(
    study: optuna.Study, far_from_utc: None
) -> None:
    by_optuna = study.ask()
    created = create_trials(study, 3)
    after = study.ask()  # Optuna numbers on past them
    assert [t.number for t in created] == [1, 2, 3] and after.number == 4
    reloaded = optuna.load_study(study_name=study.study_name, storage=study._storage._backend)
    for trial in created:
        # The Trial object equals the one Optuna builds from the database (so an Optuna whose
        # Trial gains a field fails here) ...
        fresh = optuna.Trial(reloaded, trial._trial_id)
        assert set(vars(trial)) == set(vars(fresh))
        for name in ("_trial_id", "relative_search_space", "_relative_params", "_fixed_params"):
            assert getattr(trial, name) == getattr(fresh, name), name
        mine, stored = trial._cached_frozen_trial, fresh._cached_frozen_trial
        assert (mine.number, mine.state, mine.params, mine.user_attrs, mine.system_attrs) == (
            stored.number,
            stored.state,
            stored.params,
            stored.user_attrs,
            stored.system_attrs,
        )
        # ... its start time is stored as Optuna stores one (read back in local time) ...
        assert mine.datetime_start is not None and stored.datetime_start is not None
        assert abs((mine.datetime_start - stored.datetime_start).total_seconds()) < 1
        assert abs((stored.datetime_start - by_optuna.datetime_start).total_seconds()) < 60
        # ... and it samples and is told like any other.
        _suggest(trial)
        study.tell(trial, 0.5)
    study.tell(by_optuna, 0.25)
    study.tell(after, 0.25)
    states = [t.state for t in reloaded.get_trials()]
    assert states == [TrialState.COMPLETE] * 5
    assert all(set(t.params) == {"placement", "alpha"} for t in reloaded.get_trials()[1:4])
    assert create_trials(study, 0) == []


def test_trials_are_created_within_the_budget_counted_in_the_same_transaction(
    study: optuna.Study,
) -> None:
    """The count a claim took under the study lock may be stale if that lock was lost; the
    create counts again under the study row's lock."""
    done = study.ask()
    study.tell(done, 0.5)
    study.ask()  # RUNNING
    failed = study.ask()
    study.tell(failed, state=TrialState.FAIL)  # the slot is free again
    study.enqueue_trial({})  # WAITING
    counted = ("COMPLETE", "PRUNED", "RUNNING", "WAITING")
    made = create_trials(study, 8, budget=5, counted=counted)
    assert len(made) == 2  # 5 less COMPLETE, RUNNING and WAITING (FAIL is not counted)
    assert create_trials(study, 8, budget=5, counted=counted) == []
    assert [t.number for t in made] == [4, 5]
    assert len(create_trials(study, 2, budget=None)) == 2


def test_a_batch_is_written_whole_or_not_at_all_and_a_repeat_adds_nothing(
    study: optuna.Study,
) -> None:
    first, second = study.ask(), study.ask()
    buffer = ParamBuffer(study._storage)
    for trial in (first, second):
        trial.storage = buffer
        _suggest(trial)
        trial.storage = study._storage
    record_sampled(study._storage, buffer.params, {first._trial_id: {"a": 1}})
    record_sampled(study._storage, buffer.params, {first._trial_id: {"a": 2}})  # a retry
    stored = study._storage.get_trial(first._trial_id)
    assert stored.params == first.params and stored.user_attrs == {"a": 2}
    assert study._storage.get_trial(second._trial_id).params == second.params

    third = study.ask()
    study.tell(second, 0.5)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        record_sampled(study._storage, {}, {third._trial_id: {"b": 1}, second._trial_id: {"b": 1}})
    assert "b" not in study._storage.get_trial(third._trial_id).user_attrs


def test_a_parameter_of_another_kind_than_the_study_stores_is_refused(
    study: optuna.Study,
) -> None:
    first = study.ask()
    first.suggest_float("alpha", 0.0, 1.0)
    second = study.ask()
    buffer = ParamBuffer(study._storage)
    buffer.set_trial_param(second._trial_id, "alpha", 0, CategoricalDistribution(["a", "b"]))
    with pytest.raises(ValueError, match="different distribution kind"):
        record_sampled(study._storage, buffer.params, {})
    assert study._storage.get_trial(second._trial_id).params == {}
    # The same kind with another range is what Optuna accepts too.
    buffer = ParamBuffer(study._storage)
    buffer.set_trial_param(second._trial_id, "alpha", 0.5, FloatDistribution(0.0, 2.0))
    record_sampled(study._storage, buffer.params, {})
    assert study._storage.get_trial(second._trial_id).params == {"alpha": 0.5}


def test_completing_leaves_a_trial_failed_meanwhile_failed_and_is_idempotent(
    study: optuna.Study,
) -> None:
    ran, failed = study.ask(), study.ask()
    study.tell(failed, state=TrialState.FAIL)  # another worker judged it stale
    ids = {ran._trial_id: 0.6, failed._trial_id: 0.9}
    assert complete_trials(study._storage, ids) == {
        ran._trial_id: TrialState.COMPLETE,
        failed._trial_id: TrialState.FAIL,
    }
    # A repeat (the database went away after the commit): same states, one value, not two.
    assert complete_trials(study._storage, ids)[ran._trial_id] == TrialState.COMPLETE
    trials = study.get_trials()
    assert [(t.state, t.values) for t in trials] == [
        (TrialState.COMPLETE, [0.6]),
        (TrialState.FAIL, None),
    ]


@pytest.mark.postgres
def test_a_trial_failed_by_another_worker_while_being_completed_stays_failed() -> None:
    """The race itself, on PostgreSQL: another worker holds the trial's row (as Optuna's
    stale check does, SELECT ... FOR UPDATE) and fails it while this one completes it."""
    with pg_database() as url:
        study = optuna.create_study(storage=open_storage(url), direction="maximize")
        raced, alone = study.ask(), study.ask()
        other = sqlalchemy.create_engine(normalize_url(url))
        with other.connect() as conn:
            conn.execute(
                sqlalchemy.text("SELECT state FROM trials WHERE trial_id = :t FOR UPDATE"),
                {"t": raced._trial_id},
            )
            result: dict[int, TrialState] = {}
            completing = threading.Thread(
                target=lambda: result.update(
                    complete_trials(study._storage, {raced._trial_id: 0.7, alone._trial_id: 0.8})
                )
            )
            completing.start()
            time.sleep(0.5)
            assert completing.is_alive()  # waiting for the other worker's row lock
            conn.execute(
                sqlalchemy.text("UPDATE trials SET state = 'FAIL' WHERE trial_id = :t"),
                {"t": raced._trial_id},
            )
            conn.commit()
        completing.join(timeout=30)
        other.dispose()
        assert result == {raced._trial_id: TrialState.FAIL, alone._trial_id: TrialState.COMPLETE}
        trials = {t._trial_id: t for t in study.get_trials()}
        assert trials[raced._trial_id].state == TrialState.FAIL
        assert trials[raced._trial_id].values is None  # no value row for a FAIL trial
        assert trials[alone._trial_id].values == [0.8]


def test_heartbeats_of_a_batch_are_recorded_and_renewed(study: optuna.Study) -> None:
    trials = [study.ask() for _ in range(3)]
    ids = [t._trial_id for t in trials]
    storage = unwrap_rdb(study._storage)
    record_heartbeats(study._storage, ids[:2])
    beats = _heartbeats(storage)
    assert set(beats) == set(ids[:2])
    time.sleep(1.1)  # SQLite's clock has whole seconds
    record_heartbeats(study._storage, ids)
    renewed = _heartbeats(storage)
    assert set(renewed) == set(ids)
    assert all(renewed[i] > beats[i] for i in ids[:2])


def _heartbeats(storage: optuna.storages.RDBStorage) -> dict[int, object]:
    with storage.engine.connect() as conn:
        rows = conn.execute(sqlalchemy.text("SELECT trial_id, heartbeat FROM trial_heartbeats"))
        return {int(trial_id): beat for trial_id, beat in rows}


def test_failed_trials_and_a_user_attribute_are_read_without_the_rest(
    study: optuna.Study,
) -> None:
    trials = [study.ask() for _ in range(4)]
    study._storage.set_trial_system_attr(trials[1]._trial_id, "why", "interrupted")
    study.tell(trials[1], state=TrialState.FAIL)
    study.tell(trials[3], state=TrialState.FAIL)
    study.tell(trials[0], 0.5)
    trials[2].set_user_attr("retry_of", 1)
    storage = unwrap_rdb(study._storage)
    assert failed_trials(storage, study._study_id, system_attr="why") == [
        (trials[1]._trial_id, 1, "interrupted"),
        (trials[3]._trial_id, 3, None),
    ]
    assert user_attr_values(storage, study._study_id, "retry_of") == [1]


def test_a_sampled_batch_stores_no_copy_of_the_liars_parameters(tmp_path: Path) -> None:
    # hpo stores a batch's parameters before it trains; TPE's copy of them (one write a trial)
    # is dropped. The key it is recognized by must still be Optuna's.
    assert tpe._RELATIVE_PARAMS_KEY == LIAR_KEY
    study = optuna.create_study(
        storage=open_storage(f"sqlite:///{tmp_path}/liar.db"),
        direction="maximize",
        sampler=sampling.HistorySampler(
            seed=1, n_startup_trials=2, multivariate=True, constant_liar=True
        ),
    )
    for value in (0.1, 0.2, 0.3):
        trial = study.ask()
        _suggest(trial)
        study.tell(trial, value)
    trials = [study.ask() for _ in range(3)]
    with sampling.sampling_batch(study):
        for trial in trials:
            _suggest(trial)
            sampling.note_sampled(study, trial)
    for trial in trials:
        stored = study._storage.get_trial(trial._trial_id)
        assert stored.params and not any(k.startswith("tpe:") for k in stored.system_attrs)
