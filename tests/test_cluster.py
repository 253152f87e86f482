"""Several real ``hpo worker`` processes on one study, against the real PostgreSQL.

Each test makes its own database, creates a tiny study with ``hpo create`` (a trial takes about
a second), starts workers as separate processes and checks the study afterwards: a worker killed
with SIGKILL, a database that goes away for longer than the grace period, SIGTERM, four
processes on one SQLite file, and a worker in another network namespace. Four workers on
PostgreSQL run in tests/test_compose.py, with the compose file's own commands. The kill and the
outage also run with every process going through a PgBouncer of the test's own in transaction
mode, one server connection for them all (``route = "pgbouncer"``): PostgreSQL stops and starts
behind it while the workers train.

The tests that stop a server or change its configuration (the outage, the network namespace)
do it to a throwaway server of their own (the ``own_postgres`` fixture: ``initdb`` in a
temporary directory, a free port), never to the shared server the other tests use.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import optuna
import pytest
from optuna.trial import TrialState
from pg import (
    PG_HOST,
    PG_PORT,
    HpoProcess,
    HpoProcesses,
    OwnPostgres,
    hpo_env,
    pgbouncer_server,
    tiny_study,
)

from hpo.results.artifacts import trial_artifacts
from hpo.study.storage import open_storage

# Every test starts two to four `hpo` processes, each importing TensorFlow and training real
# trials (30-70 s a test on two cores). The multi-process storage races run quickly in
# tests/test_storage_contract.py.
pytestmark = pytest.mark.slow

# Short enough that a dead worker is noticed within seconds, long enough for two busy cores.
FAST = ["--heartbeat-interval", "1", "--grace-period", "4"]


def _study(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url))


def _states(study: optuna.Study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def _diagnosis(study: optuna.Study, workers: list[HpoProcess]) -> str:
    """What went wrong, short enough to survive the end of a CI log: the unfinished or failed
    trials, then each worker's lines about the database, claims and stale trials."""
    odd = [
        (t.number, t.state.name, sorted(t.params), {k: v for k, v in t.system_attrs.items()})
        for t in study.get_trials()
        if t.state != TrialState.COMPLETE
    ]
    words = ("stale", "unreachable", "reachable again", "created before", "budget", "FAIL")
    lines = [
        f"w{i}: {line}"
        for i, worker in enumerate(workers)
        for line in worker.text().splitlines()
        if any(word in line for word in words) or line.startswith("worker ran")
    ]
    return "\n".join([f"trials not COMPLETE: {odd}", *lines])


def _status(processes: HpoProcesses, name: str, env: dict[str, str]) -> dict[str, object]:
    return dict(json.loads(processes.run(["status", name, "--format", "json"], env=env)))


def _no_traceback(*workers: HpoProcess) -> None:
    for worker in workers:
        assert "Traceback" not in worker.text(), worker.text()


# Each process straight to PostgreSQL, or through PgBouncer in transaction mode.
ROUTES = pytest.mark.parametrize("route", ["direct", "pgbouncer"])


@contextlib.contextmanager
def _route(route: str, url: str, host: str, port: int) -> Iterator[str]:
    """The URL the test's hpo processes use: ``url`` itself, or its database through a
    PgBouncer of the test's own in front of ``host:port`` (transaction mode, one server
    connection for every process); PgBouncer's log is checked for prepared statements at the
    end, which transaction mode cannot carry."""
    if route == "direct":
        yield url
        return
    with pgbouncer_server(host=host, port=port, pool_size=1) as bouncer:
        yield bouncer.url_for(url.rsplit("/", 1)[1])
        assert "prepared statement" not in bouncer.text(), bouncer.text()


@pytest.mark.postgres
@ROUTES
def test_sigkill_mid_trial_fails_that_trial_and_retries_it(
    pg_url: str, processes: HpoProcesses, tmp_path: Path, route: str
) -> None:
    with _route(route, pg_url, PG_HOST, PG_PORT) as url:
        _sigkill_mid_trial(pg_url, hpo_env(url), processes, tmp_path)


def _sigkill_mid_trial(
    pg_url: str, env: dict[str, str], processes: HpoProcesses, tmp_path: Path
) -> None:
    processes.run(["create", str(tiny_study(tmp_path, "killed", n_trials=4)), *FAST], env=env)
    victim_worker = processes.start(["worker", "killed"], env=env, log="a.log")
    survivor = processes.start(["worker", "killed"], env=env, log="b.log")
    victim = int(victim_worker.wait_for(r"training trial (\d+)")[1])
    time.sleep(0.5)  # in the middle of training that trial
    victim_worker.kill_group(signal.SIGKILL)

    assert survivor.finish() == 0, survivor.text()
    study = _study(pg_url, "killed")
    killed = study.trials[victim]
    assert killed.state == TrialState.FAIL
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") == victim]
    assert len(retries) == 1, [t.user_attrs for t in study.trials]
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE
    assert retry.params == killed.params
    assert retry.user_attrs["seed"] == killed.user_attrs["seed"]  # the same trial, again
    assert _states(study) == {"COMPLETE": 4, "FAIL": 1}
    assert f"trial {victim} of " in survivor.text()
    assert "stopped sending heartbeats" in survivor.text()
    _no_traceback(survivor)

    status = _status(processes, "killed", env)
    assert status["done"] is True and status["running"] == []
    assert {"number": retry.number, "retry_of": victim, "state": "COMPLETE"} in status["retries"]  # type: ignore[operator]


@pytest.mark.own_postgres
@ROUTES
def test_database_outage_longer_than_the_grace_period_stalls_workers_without_losing_a_trial(
    own_postgres: OwnPostgres, processes: HpoProcesses, tmp_path: Path, route: str
) -> None:
    # A server of this test's own: stopping it stops nobody else's. Through PgBouncer, the
    # workers' connections to PgBouncer stay up while PostgreSQL behind it goes away.
    server = own_postgres
    with _route(route, server.url, server.host, server.port) as url:
        env = hpo_env(url)
        processes.run(
            [
                "create",
                str(tiny_study(tmp_path, "outage", n_trials=6, extra="[artifacts]\nlive = true\n")),
                *FAST,
            ],
            env=env,
        )
        workers = [
            processes.start(["worker", "outage"], env=env, log=f"w{i}.log") for i in range(2)
        ]
        workers[0].wait_for(r"trial \d+: accuracy")
        server.stop()
        try:
            time.sleep(6)  # longer than the 4 s grace period: every heartbeat looks stale
        finally:
            server.start()
        for worker in workers:
            assert worker.finish() == 0, worker.text()

    study = _study(server.url, "outage")  # read straight from PostgreSQL
    states = _states(study)
    # The budget exact, nothing left RUNNING or queued.
    assert states.get("COMPLETE") == 6 and set(states) <= {"COMPLETE", "FAIL"}, _diagnosis(
        study, workers
    )
    # Artifacts too: the trials that finished while the database was away stored theirs
    # once it was back (each trial's per-fold table, written as it finishes with `live`).
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        names = [a.filename for a in trial_artifacts(study, trial)]
        assert f"trial-{trial.number}-folds.csv" in names, (trial.number, names)
    texts = [worker.text() for worker in workers]
    for text in texts:
        lost = text.count(f"database unreachable at {url}")
        assert lost <= 1 and text.count("database reachable again") == lost, text
    _no_traceback(*workers)
    if route == "direct":
        # Nothing lost, nothing counted twice: no trial was failed as stale, none dropped.
        # Every worker lost its connection, so none judged the others' heartbeats meanwhile.
        assert states == {"COMPLETE": 6}, _diagnosis(study, workers)
        for text in texts:
            assert text.count(f"database unreachable at {url}") == 1, text
            assert "dropped as stale" not in text
    else:
        # Behind PgBouncer a worker whose connection to PgBouncer stayed up may see no outage,
        # only a slow database (its queries wait in PgBouncer's queue), and fail as stale a
        # trial of a worker that had to reconnect (PgBouncer refuses new logins for its
        # server_login_retry, 15 s, after PostgreSQL refused one while starting). Such a
        # trial is retried with its parameters: no trial is lost.
        failed = [t for t in study.trials if t.state == TrialState.FAIL]
        for trial in failed:
            retry = [t for t in study.trials if t.user_attrs.get("retry_of") == trial.number]
            assert [t.state for t in retry] == [TrialState.COMPLETE], _diagnosis(study, workers)
            assert retry[0].params == trial.params
        assert sum(text.count("dropped as stale") for text in texts) <= len(failed), texts


@pytest.mark.postgres
def test_sigterm_fails_the_trial_cleanly_exits_0_and_the_other_worker_retries_it(
    pg_url: str, processes: HpoProcesses, tmp_path: Path
) -> None:
    env = hpo_env(pg_url)
    processes.run(["create", str(tiny_study(tmp_path, "term", n_trials=4)), *FAST], env=env)
    stopped = processes.start(["worker", "term"], env=env, log="a.log")
    other = processes.start(["worker", "term"], env=env, log="b.log")
    victim = int(stopped.wait_for(r"training trial (\d+)")[1])
    time.sleep(0.5)
    stopped.proc.send_signal(signal.SIGTERM)  # the worker only, as `docker stop` does
    assert stopped.finish(timeout=60) == 0, stopped.text()
    assert "stopped by SIGTERM" in stopped.text()
    interrupted = _study(pg_url, "term").trials[victim]
    assert interrupted.state == TrialState.FAIL
    assert interrupted.user_attrs["interrupted"] == "SIGTERM"
    mine = f":{stopped.proc.pid}"
    assert not any(
        t.state == TrialState.RUNNING and str(t.user_attrs.get("worker", "")).endswith(mine)
        for t in _study(pg_url, "term").trials
    )

    assert other.finish() == 0, other.text()
    study = _study(pg_url, "term")
    assert _states(study) == {"COMPLETE": 4, "FAIL": 1}
    retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == victim)
    assert retry.state == TrialState.COMPLETE and retry.params == interrupted.params
    _no_traceback(stopped, other)


def test_four_processes_share_one_sqlite_file_without_lock_errors(
    processes: HpoProcesses, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/shared.db"
    env = hpo_env(url)
    processes.run(["create", str(tiny_study(tmp_path, "local", n_trials=8)), *FAST], env=env)
    workers = [processes.start(["worker", "local"], env=env, log=f"w{i}.log") for i in range(4)]
    for worker in workers:
        assert worker.finish() == 0, worker.text()
    study = _study(url, "local")
    assert [t.number for t in study.trials] == list(range(8))
    assert _states(study) == {"COMPLETE": 8}
    assert len({t.user_attrs["worker"] for t in study.trials}) >= 2
    for worker in workers:
        assert "locked" not in worker.text().lower(), worker.text()
        assert "unreachable" not in worker.text(), worker.text()
    _no_traceback(*workers)


# --- a worker on another network -------------------------------------------------------------


def _skip_netns(reason: str) -> NoReturn:
    """Skip with ``reason``; under ``HPO_REQUIRE_NETNS=1`` (CI) fail with it instead."""
    if os.environ.get("HPO_REQUIRE_NETNS", "") not in ("", "0"):
        pytest.fail(f"{reason} (HPO_REQUIRE_NETNS is set: this test must run here)")
    pytest.skip(reason)


def _ip(*args: str, netns: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    subprocess.run([*prefix, "ip", *args], check=True, capture_output=True, text=True)


@contextlib.contextmanager
def _network_namespace() -> Iterator[tuple[str, str, str]]:
    """A namespace joined to this one by a veth pair: ``(name, host_address, its_address)``."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        _skip_netns("a second network namespace needs root and iproute2 (`ip netns`)")
    tag = uuid.uuid4().hex[:6]
    name, host_if, ns_if = f"hpo-{tag}", f"hpoh{tag}", f"hpon{tag}"
    base = random.randrange(0, 64) * 4  # a private /30 of our own in 10.231.x.0/24
    subnet = random.randrange(0, 256)
    host_ip, ns_ip = f"10.231.{subnet}.{base + 1}", f"10.231.{subnet}.{base + 2}"
    try:
        _ip("netns", "add", name)
    except subprocess.CalledProcessError as exc:
        _skip_netns(f"network namespaces are not permitted on this machine: {exc.stderr.strip()}")
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", name)
        _ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("addr", "add", f"{ns_ip}/30", "dev", ns_if, netns=name)
        _ip("link", "set", ns_if, "up", netns=name)
        _ip("link", "set", "lo", "up", netns=name)
        yield name, host_ip, ns_ip
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "delete", host_if)
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("netns", "delete", name)


@pytest.mark.own_postgres
def test_worker_in_another_network_namespace_reaches_postgres_across_a_veth(
    own_postgres: OwnPostgres, processes: HpoProcesses, tmp_path: Path
) -> None:
    url = own_postgres.url  # a server of this test's own: it listens on the veth, then goes
    env = hpo_env(url)
    processes.run(["create", str(tiny_study(tmp_path, "remote", n_trials=2)), *FAST], env=env)
    database = url.rsplit("/", 1)[1]
    port = own_postgres.port
    with _network_namespace() as (netns, host_ip, ns_ip):
        # listen_addresses needs a restart: of this test's own server, never the shared one.
        own_postgres.listen_also(host_ip, ns_ip)
        # Inside the namespace the local server is out of reach: only the veth leads to it.
        probe = subprocess.run(
            ["ip", "netns", "exec", netns, "pg_isready", "-h", "127.0.0.1", "-p", str(port)],
            capture_output=True,
        )
        assert probe.returncode != 0
        remote_url = own_postgres.url_for(host_ip)
        worker = processes.start(
            ["worker", "remote"],
            env=hpo_env(remote_url),
            log="remote.log",
            prefix=["ip", "netns", "exec", netns],
        )
        seen: set[str] = set()
        while worker.proc.poll() is None:
            with own_postgres.connect() as conn:  # type: ignore[attr-defined]
                rows = conn.execute(
                    "SELECT host(client_addr) FROM pg_stat_activity WHERE datname = %s "
                    "AND client_addr IS NOT NULL",
                    (database,),
                ).fetchall()
            seen |= {str(row[0]) for row in rows}
            time.sleep(0.5)
        assert worker.finish() == 0, worker.text()
    assert ns_ip in seen  # the server saw the worker's connections come from the namespace
    assert _states(_study(url, "remote")) == {"COMPLETE": 2}
    _no_traceback(worker)
