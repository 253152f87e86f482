"""The contract hpo relies on from Optuna's internals (``hpo.study.optuna_compat``).

Every function of the compat module runs here against a real SQLite file and a real
PostgreSQL database, and each assertion is phrased in terms of Optuna's public API where one
can observe the effect, so that an Optuna release that renames or reshapes one of those
internals fails here, naming the function, rather than deep inside a worker. ``.ci/run``
runs this file with the oldest Optuna that pyproject.toml allows as well as the tested one.

The last tests keep the door shut: no module of hpo but the compat module may use one of
Optuna's private names or name Optuna's tables in SQL.
"""

from __future__ import annotations

import datetime
import io
import re
import sqlite3
import time
import tokenize
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
from conftest import in_time_zone
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from pg import pg_database

from hpo.study import optuna_compat as compat
from hpo.study.storage import open_storage

ROOT = Path(__file__).resolve().parents[1]
RUNNING, COMPLETE, FAIL = TrialState.RUNNING, TrialState.COMPLETE, TrialState.FAIL


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/compat.db"
        return
    with pg_database() as pg_url:
        yield pg_url


@pytest.fixture
def study(url: str) -> optuna.Study:
    return optuna.create_study(storage=open_storage(url), direction="maximize")


def _rdb(study: optuna.Study) -> optuna.storages.RDBStorage:
    rdb = compat.rdb_backend(compat.storage_of(study))
    assert rdb is not None, "rdb_backend found no RDB storage under Optuna's cache (_backend)"
    return rdb


def _statements(rdb: optuna.storages.RDBStorage) -> list[str]:
    """A list that collects every SQL statement ``rdb`` sends from now on."""
    sent: list[str] = []
    sqlalchemy.event.listen(
        rdb.engine, "before_cursor_execute", lambda *args, **kw: sent.append(args[2])
    )
    return sent


# --- handles -------------------------------------------------------------------------------


def test_a_studys_storage_and_id_are_what_the_public_api_names(study: optuna.Study) -> None:
    storage = compat.storage_of(study)
    assert isinstance(storage, optuna.storages.BaseStorage), "Study._storage is gone"
    assert compat.study_id(study) == storage.get_study_id_from_name(study.study_name)
    assert compat.rdb_backend(storage) is _rdb(study)
    assert compat.rdb_backend(_rdb(study)) is _rdb(study)  # an RDB storage is its own backend
    assert compat.rdb_backend(optuna.storages.InMemoryStorage()) is None


def test_a_trials_id_is_the_storage_key_of_the_live_and_the_frozen_trial(
    study: optuna.Study,
) -> None:
    trial = study.ask()
    frozen = study.get_trials(deepcopy=False)[0]
    storage = compat.storage_of(study)
    assert compat.trial_id(trial) == compat.trial_id(frozen)
    assert storage.get_trial(compat.trial_id(trial)).number == trial.number
    assert compat.trial_id(trial) == storage.get_trial_id_from_study_id_trial_number(
        compat.study_id(study), trial.number
    )


def test_a_trials_frozen_copy_is_the_one_it_reads_its_attributes_from(
    study: optuna.Study,
) -> None:
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    frozen = compat.frozen_of(trial)
    assert isinstance(frozen, optuna.trial.FrozenTrial)
    assert frozen.number == trial.number and frozen.params == trial.params
    frozen.user_attrs["seen"] = 1  # as hpo updates it after a batch write
    assert trial.user_attrs == {"seen": 1}, "Trial.user_attrs no longer reads the frozen copy"


# --- Optuna's caches ---------------------------------------------------------------------------


def test_forgetting_the_cached_trials_makes_the_next_cached_read_fresh(
    study: optuna.Study,
) -> None:
    assert study._get_trials(deepcopy=False, use_cache=True) == []  # fills the cache
    # Another process's trial (this study's own ask() would empty its cache).
    optuna.load_study(study_name=study.study_name, storage=compat.storage_of(study)).ask()
    assert study._get_trials(deepcopy=False, use_cache=True) == [], "not this cache any more"
    compat.forget_cached_trials(study)
    assert len(study._get_trials(deepcopy=False, use_cache=True)) == 1


def test_trials_put_in_the_cache_are_known_to_it_without_a_query(study: optuna.Study) -> None:
    sid, rdb = compat.study_id(study), _rdb(study)
    with compat.transaction(rdb) as tx:
        ((number, tid),) = compat.insert_running_trials(tx, sid, 0, 1, datetime.datetime.now())
    compat.cache_new_trials(study, [rdb.get_trial(tid)])
    storage = compat.storage_of(study)
    sent = _statements(rdb)
    assert storage.get_trial_id_from_study_id_trial_number(sid, number) == tid
    assert sent == [], "the trial is not in Optuna's cache (_CachedStorage internals changed)"
    # Optuna's cache writes a parameter only for a trial it knows (KeyError otherwise).
    storage.set_trial_param(tid, "x", 0.5, FloatDistribution(0.0, 1.0))
    assert rdb.get_trial(tid).params == {"x": 0.5}


def test_a_trial_made_from_its_frozen_copy_is_what_optunas_constructor_makes(
    study: optuna.Study,
) -> None:
    tid = compat.trial_id(study.ask())
    frozen = compat.storage_of(study).get_trial(tid)
    made, optunas = compat.trial_from_frozen(study, frozen), optuna.Trial(study, tid)
    assert vars(made).keys() == vars(optunas).keys(), "optuna.Trial has other fields now"
    for name, value in vars(optunas).items():
        assert vars(made)[name] == value, f"optuna.Trial.{name} differs"
    made.suggest_float("x", 0.0, 1.0)
    assert made.params.keys() == {"x"}


# --- TPE ----------------------------------------------------------------------------------------


def _objective(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0.0, 1.0) + trial.suggest_float("y", 0.0, 1.0)


def test_tpe_still_writes_the_liars_copy_under_the_known_key(study: optuna.Study) -> None:
    study.sampler = optuna.samplers.TPESampler(
        seed=1, n_startup_trials=2, multivariate=True, constant_liar=True
    )
    study.optimize(_objective, n_trials=3)
    trial = study.ask()
    _objective(trial)
    keys = compat.storage_of(study).get_trial_system_attrs(compat.trial_id(trial))
    assert any(k.startswith(compat.LIAR_KEY) for k in keys), f"TPE wrote {sorted(keys)}"


def test_tpe_reads_and_writes_a_study_view_through_the_names_it_answers(
    study: optuna.Study,
) -> None:
    study.optimize(_objective, n_trials=3)
    running = study.ask()
    trials = study.get_trials(deepcopy=False)
    view = compat.TPEStudyView(study, trials[:2])
    assert [t.number for t in view.get_trials()] == [0, 1]
    assert view._get_trials(deepcopy=False, states=(RUNNING,), use_cache=True) == []
    assert view.study_name == study.study_name  # everything else is the study's
    assert compat.underlying_study(view) is study
    tid = compat.trial_id(running)
    view._storage.set_trial_system_attr(tid, f"{compat.LIAR_KEY}:0", "{}")
    view._storage.set_trial_system_attr(tid, "kept", 1)
    assert compat.storage_of(study).get_trial_system_attrs(tid) == {"kept": 1}


def test_tpe_samples_on_a_study_view_without_reading_or_writing_the_study(
    study: optuna.Study,
) -> None:
    study.optimize(_objective, n_trials=4)
    running = study.ask()
    frozen = compat.storage_of(study).get_trial(compat.trial_id(running))
    view = compat.TPEStudyView(study, study.get_trials(deepcopy=False))
    tpe = optuna.samplers.TPESampler(
        seed=1, n_startup_trials=2, multivariate=True, constant_liar=True
    )
    space = tpe.infer_relative_search_space(view, frozen)  # type: ignore[arg-type]
    sent = _statements(_rdb(study))
    params = tpe.sample_relative(view, frozen, space)  # type: ignore[arg-type]
    assert params.keys() == {"x", "y"}
    assert sent == [], "TPE reads or writes the study through a name the view does not answer"


def test_the_density_hook_sees_every_fit_tpe_makes(study: optuna.Study) -> None:
    fits: list[int] = []

    class Counting(compat.DensityHook, optuna.samplers.TPESampler):
        def fit_density(self, *args: Any) -> Any:
            fits.append(1)
            return super().fit_density(*args)

    study.sampler = Counting(seed=1, n_startup_trials=2, multivariate=True)
    study.optimize(_objective, n_trials=4)
    assert fits, "TPE no longer fits through _build_parzen_estimator"


def _reporting(trial: optuna.Trial) -> float:
    value = _objective(trial)
    trial.report(value, 1)
    trial.should_prune()  # Hyperband sets its brackets up at its first prune
    return value


def test_tpe_reads_every_trial_under_a_hyperband_bracket(url: str) -> None:
    # A fixed name and seed: Hyperband puts a trial in a bracket by a hash of the study's name
    # and the trial's number, and prunes by the values, so a random name (the `study` fixture's)
    # could put every trial in one bracket, or prune some, once in a while.
    study = optuna.create_study(
        study_name="brackets",
        storage=open_storage(url),
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),
        pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=27),
    )
    study.optimize(_reporting, n_trials=8)
    every = [t.number for t in study.get_trials(deepcopy=False, states=(COMPLETE,))]
    assert len(every) >= 2
    brackets = [
        optuna.pruners._filter_study(study, frozen) for frozen in study.get_trials(deepcopy=False)
    ]
    for bracket in brackets:
        assert compat.underlying_study(bracket) is study
        assert [t.number for t in compat.uncached_trials(bracket, (COMPLETE,))] == every
    # The public read of a bracket keeps only its own trials: not what TPE reads.
    assert any(len(bracket.get_trials(deepcopy=False)) < len(every) for bracket in brackets)


# --- optuna-dashboard's notes ------------------------------------------------------------------


def test_a_trial_note_is_saved_and_read_back_with_its_version(study: optuna.Study) -> None:
    tid = compat.trial_id(study.ask())
    assert compat.read_trial_note(study, tid) == ("", 0)
    compat.save_trial_note(study, tid, 1, "### A\nbody")
    assert compat.read_trial_note(study, tid) == ("### A\nbody", 1)


# --- writes to Optuna's tables ---------------------------------------------------------------


def test_a_transaction_commits_whole_or_not_at_all(study: optuna.Study) -> None:
    sid, rdb = compat.study_id(study), _rdb(study)
    with pytest.raises(RuntimeError, match="boom"), compat.transaction(rdb) as tx:
        compat.insert_running_trials(tx, sid, 0, 2, datetime.datetime.now())
        raise RuntimeError("boom")
    assert study.get_trials() == []
    with compat.transaction(rdb) as tx:
        assert tx.sqlite == rdb.url.startswith("sqlite")
        compat.insert_running_trials(tx, sid, 0, 2, datetime.datetime.now())
    assert len(study.get_trials()) == 2


@pytest.fixture
def far_from_utc() -> Iterator[None]:
    """This process nine hours from UTC."""
    with in_time_zone("Asia/Tokyo"):
        yield


def test_new_trials_are_counted_numbered_and_read_as_optuna_reads_its_own(
    study: optuna.Study, far_from_utc: None
) -> None:
    sid, rdb = compat.study_id(study), _rdb(study)
    study.tell(study.ask(), 0.5)
    started = datetime.datetime.now()
    assert started.astimezone().utcoffset() == datetime.timedelta(hours=9)
    with compat.transaction(rdb) as tx:
        assert compat.lock_and_count_trials(tx, sid) == {"COMPLETE": 1}
        ids = compat.insert_running_trials(tx, sid, 1, 2, started)
        compat.insert_trial_system_attrs(tx, [tid for _, tid in ids], {"claim": "t1"})
    assert [number for number, _ in ids] == [1, 2]
    for number, tid in ids:
        stored = rdb.get_trial(tid)
        assert (stored.number, stored.state, stored.system_attrs) == (
            number,
            RUNNING,
            {"claim": "t1"},
        )
        assert stored.datetime_start is not None
        assert abs((stored.datetime_start - started).total_seconds()) < 1  # local time back
    # ... from naive UTC in the table, where Optuna's own trials keep theirs.
    with rdb.engine.connect() as conn:
        raw = conn.execute(
            sqlalchemy.text("SELECT datetime_start FROM trials WHERE trial_id = :t"),
            {"t": ids[0][1]},
        ).scalar_one()
        own = conn.execute(
            sqlalchemy.text("SELECT datetime_start FROM trials WHERE number = 0 AND study_id = :s"),
            {"s": sid},
        ).scalar_one()
    raw = datetime.datetime.fromisoformat(str(raw))
    utc_now = started.astimezone(datetime.UTC).replace(tzinfo=None)
    assert abs((raw - utc_now).total_seconds()) < 5
    assert abs((raw - datetime.datetime.fromisoformat(str(own))).total_seconds()) < 5
    assert study.ask().number == 3  # Optuna numbers on past them
    with compat.transaction(rdb) as tx:
        assert compat.lock_and_count_trials(tx, sid) == {"COMPLETE": 1, "RUNNING": 3}


def test_numbers_taken_twice_are_refused(study: optuna.Study) -> None:
    study.ask()
    refused = pytest.raises(RuntimeError, match="expected 1 new trials numbered from 0, found 2")
    with refused, compat.transaction(_rdb(study)) as tx:
        compat.insert_running_trials(tx, compat.study_id(study), 0, 1, datetime.datetime.now())


def test_sampled_parameters_and_user_attributes_are_stored_as_optuna_stores_them(
    study: optuna.Study,
) -> None:
    sid, rdb = compat.study_id(study), _rdb(study)
    reference, trial = study.ask(), study.ask()
    reference.suggest_float("x", 0.0, 1.0)
    reference.set_user_attr("seed", 7)
    as_json = optuna.distributions.distribution_to_json(FloatDistribution(0.0, 1.0))
    tid = compat.trial_id(trial)
    with compat.transaction(rdb) as tx:
        assert compat.first_distribution_json(tx, sid, "x") == as_json
        assert compat.first_distribution_json(tx, sid, "y") is None
        assert compat.unfinished_study_ids(tx, [tid]) == {tid: sid}
        compat.insert_params(tx, [(tid, "x", 0.25, as_json)])
        compat.insert_params(tx, [(tid, "x", 0.75, as_json)])  # a repeat changes nothing
        compat.upsert_trial_user_attrs(tx, {tid: {"seed": 1}})
        compat.upsert_trial_user_attrs(tx, {tid: {"seed": 7}})
    stored, expected = rdb.get_trial(tid), rdb.get_trial(compat.trial_id(reference))
    assert stored.params == {"x": 0.25} and stored.distributions == expected.distributions
    assert stored.user_attrs == expected.user_attrs == {"seed": 7}


def test_a_finished_trial_refuses_new_rows(study: optuna.Study) -> None:
    trial = study.ask()
    study.tell(trial, state=FAIL)
    refused = pytest.raises(optuna.exceptions.UpdateFinishedTrialError)
    with refused, compat.transaction(_rdb(study)) as tx:
        compat.unfinished_study_ids(tx, [compat.trial_id(trial)])


def test_running_trials_complete_with_their_values_and_failed_ones_stay_failed(
    study: optuna.Study,
) -> None:
    rdb = _rdb(study)
    done, failed = study.ask(), study.ask()
    study.tell(failed, state=FAIL)
    values = {compat.trial_id(done): 0.75, compat.trial_id(failed): 0.5}
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    expected = {compat.trial_id(done): COMPLETE, compat.trial_id(failed): FAIL}
    for _ in range(2):  # a repeat (a retry after an outage) changes nothing
        with compat.transaction(rdb) as tx:
            assert compat.complete_running_trials(tx, values, now) == expected
    assert rdb.get_trial(compat.trial_id(done)).values == [0.75]
    assert rdb.get_trial(compat.trial_id(failed)).values is None
    assert study.best_value == 0.75


def test_a_finished_trials_duration_is_set_by_moving_its_start(study: optuna.Study) -> None:
    rdb = _rdb(study)
    done, long_done, running = study.ask(), study.ask(), study.ask()
    time.sleep(0.05)
    study.tell(done, 0.5)
    study.tell(long_done, 0.5)
    seconds = {compat.trial_id(t): s for t, s in ((done, 0.02), (long_done, 3600), (running, 1))}
    started = {tid: rdb.get_trial(tid).datetime_start for tid in seconds}
    for _ in range(2):  # a repeat changes nothing
        with compat.transaction(rdb) as tx:
            compat.set_trial_durations(tx, seconds)
    moved = rdb.get_trial(compat.trial_id(done))
    assert moved.datetime_complete - moved.datetime_start == datetime.timedelta(seconds=0.02)
    for trial in (long_done, running):  # never earlier than it started; running: untouched
        tid = compat.trial_id(trial)
        assert rdb.get_trial(tid).datetime_start == started[tid]


def test_heartbeats_are_recorded_and_renewed_where_optuna_looks(study: optuna.Study) -> None:
    sid, rdb = compat.study_id(study), _rdb(study)
    ids = [compat.trial_id(study.ask()) for _ in range(3)]
    rdb.record_heartbeat(ids[2])  # Optuna's own row, renewed below
    with compat.transaction(rdb) as tx:
        compat.beat_trials(tx, ids[:2])
    assert compat.running_without_heartbeat(rdb, sid)[1] == []
    with compat.transaction(rdb) as tx:
        compat.beat_trials(tx, ids)  # updates, no duplicate rows
    with rdb.engine.connect() as conn:
        rows = conn.execute(sqlalchemy.text("SELECT trial_id FROM trial_heartbeats")).all()
    assert sorted(tid for (tid,) in rows) == ids


# --- reads of Optuna's tables ------------------------------------------------------------------


def test_counts_failures_claims_and_user_attributes_are_read_from_the_tables(
    study: optuna.Study,
) -> None:
    sid, rdb, storage = compat.study_id(study), _rdb(study), compat.storage_of(study)
    trials = [study.ask() for _ in range(4)]
    storage.set_trial_system_attr(compat.trial_id(trials[1]), "why", "interrupted")
    study.tell(trials[1], state=FAIL)
    study.tell(trials[3], state=FAIL)
    study.tell(trials[0], 0.5)
    trials[2].set_user_attr("retry_of", 1)
    storage.set_trial_system_attr(compat.trial_id(trials[2]), "claim", "t1")
    assert compat.count_trial_states(rdb, sid) == {"COMPLETE": 1, "FAIL": 2, "RUNNING": 1}
    assert compat.failed_trials(rdb, sid, system_attr="why") == [
        (compat.trial_id(trials[1]), 1, "interrupted"),
        (compat.trial_id(trials[3]), 3, None),
    ]
    assert compat.running_with_system_attr(rdb, sid, "claim", "t1") == [compat.trial_id(trials[2])]
    assert compat.running_with_system_attr(rdb, sid, "claim", "t2") == []
    assert compat.user_attr_values(rdb, sid, "retry_of") == [1]
    now, never = compat.running_without_heartbeat(rdb, sid)
    assert never == [compat.trial_id(trials[2])]
    assert abs(now - datetime.datetime.now(datetime.UTC).timestamp()) < 60  # the server's clock


def test_an_optuna_database_is_told_from_another_sqlite_file(tmp_path: Path) -> None:
    open_storage(f"sqlite:///{tmp_path}/optuna.db")
    sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE notes (x)").connection.commit()
    for name, expected, foreign in (("optuna.db", True, []), ("other.db", False, ["notes"])):
        conn = sqlite3.connect(tmp_path / name)
        try:
            assert compat.has_optuna_tables(conn) is expected
            assert compat.foreign_tables(conn) == foreign
        finally:
            conn.close()


# --- the door stays shut -------------------------------------------------------------------------

# Optuna's private names hpo has needed, and their likes (as attributes or getattr strings).
_PRIVATE_NAMES = {
    "_add_trials_to_cache",
    "_backend",
    "_build_parzen_estimator",
    "_cached_frozen_trial",
    "_CachedStorage",
    "_create_scoped_session",
    "_filter_study",
    "_fixed_params",
    "_get_trials",
    "_is_multi_objective",
    "_pop_waiting_trial_id",
    "_relative_params",
    "_RELATIVE_PARAMS_KEY",
    "_storage",
    "_studies",
    "_study",
    "_study_id",
    "_StudyInfo",
    "_thread_local",
    "_trial_id",
}
_OPTUNA_PACKAGES = {"optuna", "optuna_dashboard"}
_TABLE = r"(trials|studies|trial_\w+|study_\w+|version_info|alembic_version)\b"
# SQL on one of Optuna's tables (hpo writes SQL keywords in capitals), or TPE's liar key.
_SCHEMA = re.compile(
    rf"\b(FROM|JOIN|INTO|UPDATE|TABLE)\s+{_TABLE}|name\s*=\s*'{_TABLE}'|tpe:relative_params"
)
_MODEL = re.compile(r"\w*(Study|Trial)\w*Model")


def _offences(source: str) -> list[str]:
    """What in ``source`` uses a private name of Optuna (an attribute, a ``getattr`` string, a
    private module imported or named for ``lazy_import``), one of Optuna's table models, or
    SQL on Optuna's tables. Comments and prose do not count."""
    found: list[str] = []
    chain: list[str] = []  # the dotted name being read, e.g. ["optuna", "storages", "_rdb"]
    previous = ""
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.STRING:
            value = token.string.strip("\"'rbf")
            dotted = value.split(".")
            if (
                value in _PRIVATE_NAMES
                or _SCHEMA.search(token.string)
                or (dotted[0] in _OPTUNA_PACKAGES and any(p.startswith("_") for p in dotted))
            ):
                found.append(token.string)
        elif token.type == tokenize.NAME:
            chain = [*chain, token.string] if previous == "." else [token.string]
            if (previous == "." and token.string in _PRIVATE_NAMES) or (
                chain[0] in _OPTUNA_PACKAGES and token.string.startswith("_")
            ):
                found.append(".".join(chain))
            elif _MODEL.fullmatch(token.string):
                found.append(token.string)
        if token.type not in (tokenize.NL, tokenize.COMMENT):
            previous = token.string
    return sorted(set(found))


# --- one transaction for a lock's writes, and the cache after a rollback -----------------------


@pytest.mark.postgres
def test_optunas_writes_under_bound_to_join_the_outer_transaction() -> None:
    """Under ``bound_to``, Optuna's storage calls in this thread run as savepoints of the given
    connection's transaction: rolled back with it, committed with it, and an integrity error
    Optuna expects (a duplicate study name) undoes only its own call. PostgreSQL only, as hpo
    uses it (Python's sqlite3 module mishandles savepoints; SQLite's locks are files)."""
    with pg_database() as url:
        _writes_join_the_outer_transaction(url)


def _writes_join_the_outer_transaction(url: str) -> None:
    rdb = open_storage(url)
    study = optuna.create_study(study_name="outer", storage=rdb, direction="maximize")
    sid = compat.study_id(study)
    conn = rdb.engine.connect()
    conn.execute(sqlalchemy.text("SELECT 1"))  # the outer transaction begins
    with compat.bound_to(rdb, conn):
        assert compat.bound_connection(rdb) is conn
        study.set_user_attr("undone", 1)
        with pytest.raises(optuna.exceptions.DuplicatedStudyError):
            optuna.create_study(study_name="outer", storage=rdb)
        study.set_user_attr("after the error", 2)  # the outer transaction is still usable
        assert compat.count_trial_states(rdb, sid) == {}  # a read on the same connection
        study.enqueue_trial({})
        assert compat.count_trial_states(rdb, sid) == {"WAITING": 1}
    assert compat.bound_connection(rdb) is None
    conn.rollback()
    conn.close()
    assert "undone" not in rdb.get_study_user_attrs(sid)
    assert compat.count_trial_states(rdb, sid) == {}
    conn = rdb.engine.connect()
    conn.execute(sqlalchemy.text("SELECT 1"))
    with compat.bound_to(rdb, conn):
        study.set_user_attr("kept", 3)
    conn.commit()
    conn.close()
    assert rdb.get_study_user_attrs(sid) == {"kept": 3}


def test_a_forgotten_study_cache_is_read_again(study: optuna.Study) -> None:
    """``forget_study_cache`` empties Optuna's cache of one study: trials it holds that the
    database does not (a rolled-back claim's) are gone, and the next read finds the stored ones."""
    study.tell(study.ask(), 0.5)
    phantom = optuna.trial.create_trial(value=0.9)
    phantom.number, phantom._trial_id = 1, 10_000  # a trial the database never stored
    compat.cache_new_trials(study, [phantom])
    assert len(study.get_trials(deepcopy=False)) == 2
    compat.forget_study_cache(study)
    assert [t.value for t in study.get_trials(deepcopy=False)] == [0.5]


@pytest.mark.postgres
def test_schema_complete_sees_optunas_tables_and_version_records() -> None:
    with pg_database() as url:
        engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        try:
            with engine.connect() as conn:
                assert not compat.schema_complete(conn)
            open_storage(url)
            with engine.connect() as conn:
                assert compat.schema_complete(conn)
                conn.execute(sqlalchemy.text("DELETE FROM alembic_version"))
                assert not compat.schema_complete(conn)  # a set-up that stopped halfway
        finally:
            engine.dispose()


@pytest.mark.parametrize(
    "line",
    [
        "x = study._storage\n",
        "tid = trial._trial_id\n",
        "run.study._thread_local.cached_all_trials = None\n",
        "rdb = getattr(storage, '_backend', storage)._backend\n",
        'models = lazy_import("optuna.storages._rdb.models")\n',
        "from optuna.samplers._tpe import sampler\n",
        "import optuna_dashboard._note as notes\n",
        'q = "SELECT state FROM trials WHERE study_id = :s"\n',
        "q = \"SELECT name FROM sqlite_master WHERE name = 'studies'\"\n",
        "table = TrialHeartbeatModel.__table__\n",
        'KEY = "tpe:relative_params"\n',
    ],
)
def test_the_check_catches_a_private_use(line: str) -> None:
    assert _offences(line), f"not caught: {line!r}"


def test_the_check_leaves_hpos_own_code_alone() -> None:
    ok = (
        "self._inner = storage  # Optuna's study._storage, wrapped\n"
        '"""Trials of a study by state, read from the trials table."""\n'
        "self._lock = threading.Lock()\n"
        "counts = compat.count_trial_states(rdb, compat.study_id(study))\n"
        "from optuna.trial import FrozenTrial\n"
    )
    assert _offences(ok) == []


def test_no_module_but_the_compat_module_touches_optunas_internals() -> None:
    door = ROOT / "hpo" / "study" / "optuna_compat.py"
    offences = {
        str(path.relative_to(ROOT)): found
        for path in sorted((ROOT / "hpo").rglob("*.py"))
        if path != door and (found := _offences(path.read_text()))
    }
    assert offences == {}, (
        "only hpo/study/optuna_compat.py may use Optuna's private names or its tables; "
        f"add a function there (saying why) and call it: {offences}"
    )
    assert _offences(door.read_text()), "the check no longer sees the compat module's own uses"
