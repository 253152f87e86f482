"""One storage contract, two backends: every test here runs on SQLite and on PostgreSQL.

What a shared study relies on: the budget count, one study made by racing processes, atomic
claims (no overshoot), heartbeats and stale trials failed then retried (linked, bounded), the
spec and crash policy stored and read back, and no password stored anywhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import sqlalchemy
from conftest import make_frame
from optuna.trial import TrialState
from pg import pg_database

from hpo.data import Fold, load_dataset, make_fold_set
from hpo.engines.contract import EvaluationResult, Monitor
from hpo.space import RegularizationPlan
from hpo.spec import ModelSpec, StudySpec, spec_from_dict, spec_to_dict
from hpo.stops import Stopped, stop_on_signals
from hpo.study import budget
from hpo.study import optuna_compat as compat
from hpo.study.budget import Ticket, budget_left, claim_trials, log_stale_trial
from hpo.study.creation import create_or_load_study
from hpo.study.heartbeat import Heartbeat, configure_stale_detection
from hpo.study.optuna_compat import count_trial_states
from hpo.study.record import (
    BASELINE_ATTR,
    FAILURE_ATTR,
    FAILURE_INTERRUPTED,
    SAMPLER_ATTR,
    SPEC_ATTR,
    CrashPolicy,
    stored_policy,
    stored_spec,
    worker_records,
)
from hpo.study.storage import (
    StorageGuard,
    is_postgresql,
    normalize_url,
    open_storage,
    outage_reason,
    rdb_of,
    study_lock,
)
from hpo.study.stores import default_store, with_store
from hpo.study.worker import optimize

ROOT = Path(__file__).resolve().parents[1]
FAST = CrashPolicy(heartbeat_interval=1, grace_period=2, max_retries=1)


# Tests that start four Python processes, or wait out the grace period twice (about 10 s on
# SQLite, whose timestamps have whole seconds): the quick run (`-m "not slow"`) keeps them on
# PostgreSQL, the backend a cluster shares; the full run checks SQLite too.
_QUICK_ON_POSTGRESQL = pytest.mark.parametrize(
    "backend",
    [
        pytest.param("sqlite", marks=pytest.mark.slow),
        pytest.param("postgresql", marks=pytest.mark.postgres),
    ],
    indirect=True,
)


def _stale_wait(url: str) -> float:
    # SQLite's CURRENT_TIMESTAMP has whole seconds: wait comfortably past the grace period.
    return FAST.grace_period + (2.5 if url.startswith("sqlite") else 1.0)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A storage URL for an empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/contract.db"
        return
    with pg_database() as url:
        yield url


def _spec(tmp_path: Path, name: str = "contract", n_trials: int = 4) -> StudySpec:
    csv = tmp_path / "tiny.csv"
    if not csv.exists():
        make_frame().to_csv(csv, index=False)
    return spec_from_dict(
        {
            "study": {"name": name},
            "data": {"path": str(csv), "target": "kind", "drop": ["row"]},
            "cv": {"folds": 2, "seed": 1},
            "model": {"hidden": [4], "epochs": 1},
            "engine": {"name": "reference"},
            "sampler": {"seed": 3, "n_startup_trials": 2},
            "budget": {"n_trials": n_trials},
            # Fixed ranges: the instant engine's made-up predictions have no windows to measure.
            "search": {"l1": [1e-6, 1e-1], "l2": [1e-6, 1e-1]},
        },
        origin="contract",
    )


def _run_python(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def _finish(procs: Sequence[subprocess.Popen[str]], timeout: float = 120) -> list[str]:
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, err
        outputs.append(out)
    return outputs


def _trial(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def _fresh(study: optuna.Study, url: str) -> optuna.Study:
    """The study as another process would read it (no cache)."""
    return optuna.load_study(study_name=study.study_name, storage=open_storage(url))


# --- budget ------------------------------------------------------------------------------------


def test_budget_counts_finished_running_and_queued_but_not_failed(
    backend: str, tmp_path: Path
) -> None:
    study, _ = create_or_load_study(_spec(tmp_path), open_storage(backend))
    study.ask()  # RUNNING (before the WAITING one, which ask() would pop)
    dist: dict[str, optuna.distributions.BaseDistribution] = {
        "x": optuna.distributions.FloatDistribution(0, 1)
    }
    for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.WAITING):
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                params={"x": 0.5},
                distributions=dist,
                value=0.5 if state == TrialState.COMPLETE else None,
                intermediate_values={0: 0.1} if state == TrialState.PRUNED else None,
            )
        )
    assert budget_left(study, 10) == 6  # COMPLETE + PRUNED + WAITING + RUNNING; FAIL gives back
    assert budget_left(study, 3) == 0
    counts = count_trial_states(open_storage(backend), study._study_id)
    assert counts == {"COMPLETE": 1, "PRUNED": 1, "FAIL": 1, "WAITING": 1, "RUNNING": 1}


_CLAIMER = """
    import sys, time
    from hpo.study.budget import claim_trials
    from hpo.study.heartbeat import Heartbeat
    from hpo.study.record import stored_policy, worker_id
    from hpo.study.creation import join_study
    from hpo.study.storage import StorageGuard, open_storage

    url, name, n_trials, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    study, spec = join_study(name, open_storage(url), worker=worker_id())
    policy = stored_policy(study)
    beats = Heartbeat(study, policy, StorageGuard(url))
    while time.time() < start:
        time.sleep(0.005)
    told = []
    while True:
        claim = claim_trials(study, n_trials=n_trials, size=2, policy=policy, heartbeat=beats,
                             judge_stale=True, into=[])
        if claim.done:
            break
        if not claim.trials:
            time.sleep(0.02)
            continue
        for trial in claim.trials:
            study.tell(trial, trial.suggest_float("x", 0, 1))
            beats.release([trial._trial_id])
            told.append(trial.number)
    print(" ".join(map(str, told)))
"""


@_QUICK_ON_POSTGRESQL
def test_claims_are_atomic_no_overshoot_with_four_processes(backend: str, tmp_path: Path) -> None:
    n_trials = 24
    spec = _spec(tmp_path, n_trials=n_trials)
    create_or_load_study(spec, open_storage(backend))
    start = time.time() + 4  # all four claim from the same instant, in batches of two
    outputs = _finish(
        [_run_python(_CLAIMER, backend, spec.name, str(n_trials), str(start)) for _ in range(4)]
    )
    told = [int(n) for out in outputs for n in out.split()]
    assert sorted(told) == list(range(n_trials))  # each number once, nothing past the budget
    assert sum(1 for out in outputs if out.split()) >= 2  # they really ran side by side
    study = _fresh(create_or_load_study(spec, open_storage(backend))[0], backend)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * n_trials


# --- creating a study --------------------------------------------------------------------------


def _as_created(spec: StudySpec, backend: str) -> StudySpec:
    """``spec`` as creation stores it: with the backend's default artifact store fixed."""
    return with_store(spec, default_store(spec, backend))


_CREATOR = """
    import json, sys, time
    from hpo.spec import spec_from_dict
    from hpo.study.creation import create_or_load_study
    from hpo.study.storage import open_storage

    url, raw, start = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
    spec = spec_from_dict(raw, origin="racer")
    while time.time() < start:
        time.sleep(0.005)
    study, created = create_or_load_study(spec, open_storage(url))
    print(json.dumps({"created": created, "id": study._study_id}))
"""


@_QUICK_ON_POSTGRESQL
def test_racing_processes_on_an_empty_database_create_schema_and_study_once(
    backend: str, tmp_path: Path
) -> None:
    """Unguarded, Optuna 5 fails in 11 of 18 processes started three at a time on an empty
    database (measured on each backend); here all of them must succeed."""
    from hpo.spec import spec_to_dict

    spec = _spec(tmp_path)
    start = time.time() + 4
    outputs = _finish(
        [
            _run_python(_CREATOR, backend, json.dumps(spec_to_dict(spec)), str(start))
            for _ in range(4)
        ]
    )
    results = [json.loads(out) for out in outputs]
    assert sorted(r["created"] for r in results) == [False, False, False, True]
    assert len({r["id"] for r in results}) == 1
    study = optuna.load_study(study_name=spec.name, storage=open_storage(backend))
    assert stored_spec(study) == _as_created(spec, backend).replace(source="study 'contract'")


@pytest.mark.parametrize("made", ["the study", "its spec"])
def test_a_creation_killed_halfway_is_finished_by_the_next_process(
    backend: str, tmp_path: Path, made: str
) -> None:
    """A second Ctrl-C (or SIGKILL) ends a process at once, also between the writes that make a
    study: the next process to load it stores what is missing, and the baseline is queued."""
    spec = _spec(tmp_path)
    storage = open_storage(backend)
    half = optuna.create_study(study_name=spec.name, storage=storage, direction="maximize")
    if made == "its spec":  # stored as creation stores it, its artifact store fixed
        half.set_user_attr(SPEC_ATTR, spec_to_dict(_as_created(spec, backend)))
    study, created = create_or_load_study(spec, storage, policy=FAST)
    assert created
    assert spec_to_dict(stored_spec(study)) == spec_to_dict(_as_created(spec, backend))
    assert stored_policy(study) == FAST
    assert SAMPLER_ATTR in study.user_attrs
    (baseline,) = study.get_trials(deepcopy=False)
    assert baseline.state == TrialState.WAITING and baseline.user_attrs[BASELINE_ATTR] is True
    # A later process resumes it as any study: nothing is queued twice.
    again, created = create_or_load_study(spec, open_storage(backend))
    assert not created and len(again.get_trials(deepcopy=False)) == 1


def test_spec_and_crash_policy_are_stored_and_read_back(backend: str, tmp_path: Path) -> None:
    spec = _spec(tmp_path, name="stored")
    policy = CrashPolicy(heartbeat_interval=3, grace_period=17, max_retries=5)
    _, created = create_or_load_study(spec, open_storage(backend), policy=policy)
    assert created
    study = _fresh(optuna.load_study(study_name="stored", storage=open_storage(backend)), backend)
    assert stored_spec(study) == _as_created(spec, backend).replace(source="study 'stored'")
    assert stored_policy(study) == policy
    # A second creation keeps what is stored: the study is made once.
    again, created = create_or_load_study(spec, open_storage(backend), policy=CrashPolicy())
    assert not created and stored_policy(again) == policy


# --- heartbeats, stale trials, retries ---------------------------------------------------------


def _claim_one(study: optuna.Study, beats: Heartbeat, n_trials: int = 5) -> optuna.Trial:
    claim = claim_trials(
        study, n_trials=n_trials, size=1, policy=FAST, heartbeat=beats, judge_stale=True, into=[]
    )
    assert len(claim.trials) == 1
    return claim.trials[0]


def _fast_study(backend: str, tmp_path: Path) -> tuple[optuna.Study, StorageGuard]:
    storage = open_storage(backend)
    study, _ = create_or_load_study(_spec(tmp_path), storage, policy=FAST)
    configure_stale_detection(storage, FAST, log_stale_trial)
    return study, StorageGuard(backend)


@_QUICK_ON_POSTGRESQL
@pytest.mark.parametrize("queued", [False, True], ids=["fresh", "after-a-queued-trial"])
@pytest.mark.parametrize(
    "one_ticket",
    [True, pytest.param(False, marks=pytest.mark.slow)],  # the control: the full run only
    ids=["one-ticket", "ticket-per-try"],
)
def test_trials_stored_by_a_create_whose_reply_was_lost_are_claimed_by_the_retry(
    backend: str, monkeypatch: pytest.MonkeyPatch, one_ticket: bool, queued: bool
) -> None:
    """A claim under way when the server shuts down: its writes commit, the reply is lost. The
    worker's retry (same ticket) finds those trials; without the ticket they would be RUNNING
    with nobody training them, to be failed as stale later. Also when the claim already holds
    a queued trial (the baseline, a retry) taken before the create.

    On PostgreSQL a claim is one transaction with its lock, so the reply that can be lost is
    the one to the claim's commit; on SQLite each write commits on its own, and the create's
    is cut off."""
    study = optuna.create_study(study_name="lost-reply", storage=open_storage(backend))
    if queued:
        study.enqueue_trial({})
    real_create, real_lock = budget.create_trials, budget.study_lock
    created: list[int] = []
    cut: list[bool] = []
    lost = sqlalchemy.exc.OperationalError(
        "COMMIT", {}, Exception("server closed the connection unexpectedly")
    )

    def stored_then_cut_off(*args: Any, **kwargs: Any) -> list[optuna.Trial]:
        trials = real_create(*args, **kwargs)
        created.append(len(trials))
        if len(created) == 1 and not is_postgresql(backend):
            raise lost
        return trials

    @contextlib.contextmanager
    def committed_then_cut_off(*args: Any, **kwargs: Any) -> Iterator[Any]:
        with real_lock(*args, **kwargs) as lock:
            yield lock
        if created and is_postgresql(backend) and not cut:
            cut.append(True)
            raise lost  # after the commit: the claim is stored

    monkeypatch.setattr(budget, "create_trials", stored_then_cut_off)
    monkeypatch.setattr(budget, "study_lock", committed_then_cut_off)
    guard = StorageGuard(backend)
    beats = Heartbeat(study, FAST, guard, worker="cut-off:1")
    into: list[optuna.Trial] = []
    ticket = Ticket()
    claim = guard.call(
        lambda: claim_trials(
            study,
            n_trials=100,
            size=4,
            policy=FAST,
            heartbeat=beats,
            judge_stale=False,
            into=into,
            ticket=ticket if one_ticket else None,
        ),
        "claiming trials",
    )
    fresh = 3 if queued else 4
    running = [t.number for t in study.get_trials(states=(TrialState.RUNNING,))]
    if one_ticket:
        assert sorted(t.number for t in claim.trials) == running == [0, 1, 2, 3]
        assert created == [fresh]  # the retry made none: it found them
        assert sorted(beats.held().values()) == running
        assert _heartbeat_ids(backend) == {t._trial_id for t in claim.trials}
    elif is_postgresql(backend):
        # The retry forgot the whole first claim (the queued trial too) and claimed afresh.
        assert len(claim.trials) == 4 and len(running) == 4 + 4
        assert created == [fresh, 4]
    else:
        assert len(claim.trials) == 4 and len(running) == 4 + fresh
        assert created == [fresh, fresh]


def _heartbeat_ids(url: str) -> set[int]:
    engine = sqlalchemy.create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(sqlalchemy.text("SELECT trial_id FROM trial_heartbeats")).all()
    finally:
        engine.dispose()
    return {int(trial_id) for (trial_id,) in rows}


@_QUICK_ON_POSTGRESQL
def test_stale_trial_is_failed_and_retried_with_its_parameters_a_bounded_number_of_times(
    backend: str, tmp_path: Path
) -> None:
    study, guard = _fast_study(backend, tmp_path)
    dead = Heartbeat(study, FAST, guard, worker="dead:1")  # beats once at the claim, never again
    original = _claim_one(study, dead)
    x = original.suggest_float("x", 0.0, 1.0)
    time.sleep(_stale_wait(backend))

    live = Heartbeat(study, FAST, guard, worker="live:2")
    retry = _claim_one(study, live)
    assert _trial(study, original.number).state == TrialState.FAIL
    assert retry.number != original.number
    assert retry.suggest_float("x", 0.0, 1.0) == x  # same parameters, not a new sample
    assert retry.user_attrs["retry_of"] == original.number
    frozen = _trial(_fresh(study, backend), retry.number)
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen) == (
        original.number
    )
    assert frozen.state == TrialState.RUNNING

    time.sleep(_stale_wait(backend))  # the retry's worker dies too: max_retries=1, so no third try
    fresh = _claim_one(study, live)
    assert _trial(study, retry.number).state == TrialState.FAIL
    assert "retry_of" not in fresh.user_attrs
    states = count_trial_states(open_storage(backend), study._study_id)
    assert states == {"FAIL": 2, "RUNNING": 1}


@_QUICK_ON_POSTGRESQL
def test_a_stopped_trial_is_retried_however_often_it_is_stopped_and_only_crashes_count(
    backend: str, tmp_path: Path
) -> None:
    """A stop is no fault of the trial's: with max_retries=1, a trial stopped three times is
    still retried (a baseline stopped by every Ctrl-C must be trained in the end); crashes
    count, so after the second one the slot goes to a new trial."""
    study, _ = _fast_study(backend, tmp_path)
    beats = Heartbeat(study, FAST, StorageGuard(backend), worker="here:1")
    trial = _claim_one(study, beats)
    x = trial.suggest_float("x", 0.0, 1.0)

    def fail(trial: optuna.Trial, failure: str | None) -> optuna.Trial:
        if failure is not None:  # as the worker marks a stop; a crash has no mark
            compat.storage_of(study).set_trial_system_attr(
                compat.trial_id(trial), FAILURE_ATTR, failure
            )
        study.tell(trial, state=TrialState.FAIL)
        beats.release([compat.trial_id(trial)])
        return _claim_one(study, beats)

    for failure in (FAILURE_INTERRUPTED, FAILURE_INTERRUPTED, FAILURE_INTERRUPTED, None):
        retry = fail(trial, failure)
        assert retry.user_attrs.get("retry_of") == trial.number, failure
        assert retry.suggest_float("x", 0.0, 1.0) == x
        trial = retry
    fresh = fail(trial, None)  # the second crash of the chain: max_retries=1 is spent
    assert "retry_of" not in fresh.user_attrs


@_QUICK_ON_POSTGRESQL
def test_heartbeat_thread_keeps_a_whole_batch_alive_until_stopped(
    backend: str, tmp_path: Path
) -> None:
    study, guard = _fast_study(backend, tmp_path)
    beats = Heartbeat(study, FAST, guard, worker="beating:1")
    beats.start()
    batch = claim_trials(
        study, n_trials=5, size=3, policy=FAST, heartbeat=beats, judge_stale=True, into=[]
    ).trials
    held = sorted(t.number for t in batch)
    assert len(held) == 3  # one claim, three trials: what the stacked engine trains at once
    time.sleep(_stale_wait(backend))
    other = Heartbeat(study, FAST, guard, worker="other:2")
    _claim_one(study, other)  # judges stale trials: the beating ones must survive
    states = {t.number: t.state for t in _fresh(study, backend).trials}
    assert [states[n] for n in held] == [TrialState.RUNNING] * 3
    record = next(r for r in worker_records(study) if r["id"] == "beating:1")
    assert record["trials"] == held and time.time() - record["last_seen"] < 3

    beats.stop("stopped")  # like a killed worker: no more heartbeats
    time.sleep(_stale_wait(backend))
    _claim_one(study, other)
    states = {t.number: t.state for t in _fresh(study, backend).trials}
    assert [states[n] for n in held] == [TrialState.FAIL] * 3
    record = next(r for r in worker_records(study) if r["id"] == "beating:1")
    assert record["state"] == "stopped" and record["trials"] == []


# --- the whole loop, and secrets ---------------------------------------------------------------


class _InstantEngine:
    """An engine that scores a plan without training (the storage is what is under test)."""

    name = "instant"
    trials_per_batch = 1
    batch_seeded = False

    def evaluate(
        self,
        plans: Sequence[RegularizationPlan],
        folds: Sequence[Fold],
        *,
        model: ModelSpec,
        n_classes: int,
        seeds: Sequence[int],
        monitor: Monitor | None = None,
    ) -> list[EvaluationResult]:
        n_rows = sum(len(f.valid_rows) for f in folds)
        return [
            EvaluationResult(
                accuracy=0.5 + (seed % 100) / 1000,
                fold_accuracies=(0.5,) * len(folds),
                predictions=np.zeros(n_rows, dtype=np.int32),
                epochs=1,
                seconds=0.0,
            )
            for seed in seeds
        ]

    def close(self) -> None:
        return None


def _all_text(url: str) -> str:
    engine = sqlalchemy.create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            tables = sqlalchemy.inspect(conn).get_table_names()
            return "\n".join(
                repr(row)
                for table in tables
                for row in conn.execute(sqlalchemy.text(f'SELECT * FROM "{table}"'))
            )
    finally:
        engine.dispose()


def test_password_and_url_never_reach_the_database(backend: str, tmp_path: Path) -> None:
    secret = f"s3cret-{uuid.uuid4().hex[:8]}"
    # PostgreSQL here trusts local connections, so any password works; SQLite URLs carry none,
    # and there the file path must not be stored either.
    url = backend.replace("://postgres@", f"://postgres:{secret}@")
    spec = _spec(tmp_path, n_trials=3)
    study, _ = create_or_load_study(spec, open_storage(url), policy=FAST)
    folds = make_fold_set(load_dataset(spec.data), spec.cv)
    summary = optimize(study, spec, folds, _InstantEngine(), n_trials=3, versions={})
    assert summary.completed == 3
    assert worker_records(study)[0]["state"] == "finished"
    dump = _all_text(url)
    assert "hpo_spec" in dump and "hpo:worker:" in dump  # the dump does see our attributes
    assert secret not in dump
    assert backend.split("://", 1)[1] not in dump


def test_unreachable_database_is_an_outage_and_a_missing_table_is_not(tmp_path: Path) -> None:
    with pytest.raises(Exception) as unreachable:
        sqlalchemy.create_engine(
            normalize_url("postgresql://u:pw@127.0.0.1:9/x"), connect_args={"connect_timeout": 2}
        ).connect()
    reason = outage_reason(unreachable.value)
    assert reason is not None and "pw" not in reason
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/x.db")
    with pytest.raises(Exception) as missing, engine.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT * FROM nowhere"))
    assert outage_reason(missing.value) is None


def test_worker_for_a_missing_study_says_how_to_create_it(backend: str, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from hpo.cli import cli

    create_or_load_study(_spec(tmp_path, name="present"), open_storage(backend))
    result = CliRunner().invoke(cli, ["worker", "ghost", "--storage", backend])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        f"Error: no study named 'ghost' in {backend}; studies there: present; "
        "create it first with `hpo create STUDY_FILE --storage URL`"
    )


# --- a stop while another worker holds the study lock ------------------------------------------


def test_a_claim_waiting_for_the_study_lock_is_stopped_at_once(
    backend: str, tmp_path: Path
) -> None:
    """Another worker holds the study's lock (paused inside its claim, say): a stop signal ends
    this worker's wait within a second or two, with no trial made, instead of waiting for the
    lock (on SQLite the wait had no end while the holder was paused)."""
    study, guard = _fast_study(backend, tmp_path)
    holding, release = threading.Event(), threading.Event()

    other = open_storage(backend)  # another worker's: its own connection, or lock file

    def hold() -> None:
        with study_lock(other, compat.study_id(study)):
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert holding.wait(10)
    beats = Heartbeat(study, FAST, guard)
    before = count_trial_states(rdb_of(study), compat.study_id(study))  # the queued baseline
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        with stop_on_signals(), pytest.raises(Stopped, match="SIGTERM"):
            started = time.monotonic()
            timer.start()
            claim_trials(
                study, n_trials=4, size=2, policy=FAST, heartbeat=beats, judge_stale=True, into=[]
            )
        waited = time.monotonic() - started
    finally:
        timer.cancel()
        release.set()
        holder.join(10)
    assert waited < 4, f"the stop took {waited:.1f} s to end the wait for the lock"
    assert count_trial_states(rdb_of(study), compat.study_id(study)) == before
    # The stopped wait left no lock behind: the next claim takes it at once.
    started = time.monotonic()
    with study_lock(rdb_of(study), compat.study_id(study)):
        assert time.monotonic() - started < 2
