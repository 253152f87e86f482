"""A worker costs one database connection, and workers work through PgBouncer in transaction mode.

Real worker processes (``tests/instant_worker.py``: hpo's own worker loop, claims, heartbeats and
tells, with an engine that trains nothing; and ``hpo worker`` itself in the slow test) against
the shared PostgreSQL (a fresh database per test), directly or through a PgBouncer of the test's
own (``pool_mode = transaction``, two server connections for all the workers). PgBouncer 1.18
cannot carry prepared statements or session locks across transactions, so a worker that kept any
session state between transactions would fail here ("prepared statement ... does not exist") or
leave a lock on a server connection that the next client gets.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from conftest import make_frame
from pg import HpoProcesses, admin_connect, hpo_env, pgbouncer_server, tiny_study

from hpo.spec import spec_from_dict
from hpo.study.creation import create_or_load_study
from hpo.study.record import CrashPolicy
from hpo.study.storage import open_storage

pytestmark = pytest.mark.postgres

WORKER = Path(__file__).with_name("instant_worker.py")
# Beats every second, so that the heartbeat thread and the main thread's claims meet often.
FAST = CrashPolicy(heartbeat_interval=1, grace_period=4, max_retries=2)


def _create(url: str, tmp_path: Path, name: str, n_trials: int) -> None:
    csv = tmp_path / "tiny.csv"
    make_frame().to_csv(csv, index=False)
    spec = spec_from_dict(
        {
            "study": {"name": name},
            "data": {"path": str(csv), "target": "kind", "drop": ["row"]},
            "cv": {"folds": 2, "seed": 1},
            "model": {"hidden": [4], "epochs": 1},
            "sampler": {"seed": 3, "n_startup_trials": 2},
            "budget": {"n_trials": n_trials},
            "artifacts": {"top_k": 0},
            # Fixed ranges: the workers measure no "auto" windows.
            "search": {"l1": [1e-6, 1e-1], "l2": [1e-6, 1e-1]},
        },
        origin="test",
    )
    storage = open_storage(url)
    create_or_load_study(spec, storage, policy=FAST)
    storage.engine.dispose()  # the workers' connections are the only ones left


def _start(url: str, name: str, train_seconds: float, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, str(WORKER), url, name, str(train_seconds)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=hpo_env(url),
        )


class _Backends:
    """Samples ``pg_stat_activity`` every 10 ms on a thread: the most backends of one database
    at once, all of them and those whose application_name is hpo's."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.most = self.most_hpo = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with admin_connect() as conn:  # type: ignore[attr-defined]
            while not self._stop.is_set():
                total, hpo = conn.execute(
                    "SELECT count(*), count(*) FILTER (WHERE application_name = 'hpo') "
                    "FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                    (self.database,),
                ).fetchone()
                self.most, self.most_hpo = max(self.most, total), max(self.most_hpo, hpo)
                self.samples += 1
                time.sleep(0.01)

    def __enter__(self) -> _Backends:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _database(url: str) -> str:
    return url.rsplit("/", 1)[1]


def _states(url: str, name: str) -> dict[str, int]:
    storage = open_storage(url)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
        counts: dict[str, int] = {}
        for trial in study.get_trials(deepcopy=False):
            counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
        return counts
    finally:
        storage.engine.dispose()


def _finish(proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"{log.name} still running:\n{log.read_text()}") from None
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, text
    assert "Traceback" not in text and "unreachable" not in text, text
    return text


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_a_worker_holds_one_database_connection(
    pg_url: str, tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    """Claims, heartbeats every second from their own thread, tells: never two connections at
    once (hpo before this held two to three: the claim's lock, the main thread's, the
    heartbeat thread's)."""
    _create(pg_url, tmp_path, "one", n_trials=16)
    log = tmp_path / "worker.log"
    with _Backends(_database(pg_url)) as seen:
        started.append(_start(pg_url, "one", 0.3, log))
        text = _finish(started[0], log)
    assert "done 16" in text, text
    assert seen.samples > 100
    assert seen.most_hpo == 1, f"{seen.most_hpo} connections at once"
    assert _states(pg_url, "one") == {"COMPLETE": 16}


@pytest.mark.slow  # eight processes start on two cores, and a dead worker's grace period
def test_workers_through_pgbouncer_in_transaction_mode_keep_the_budget_exact(
    pg_url: str, tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    """Eight workers share two server connections through PgBouncer; one is killed (SIGKILL)
    while it holds trials. The study is created through PgBouncer too. Exactly the budget
    completes, the dead worker's trials are failed and retried, nothing is left RUNNING, and
    PostgreSQL never sees more than PgBouncer's two connections."""
    database, budget = _database(pg_url), 40
    with pgbouncer_server(pool_size=2) as bouncer, _Backends(database) as seen:
        url = bouncer.url_for(database)
        _create(url, tmp_path, "pooled", n_trials=budget)
        logs = [tmp_path / f"w{i}.log" for i in range(8)]
        started.extend(_start(url, "pooled", 0.3, log) for log in logs)
        deadline = time.monotonic() + 120
        while "claimed" not in logs[0].read_text():
            assert started[0].poll() is None, logs[0].read_text()
            assert time.monotonic() < deadline, logs[0].read_text()
            time.sleep(0.05)
        started[0].send_signal(signal.SIGKILL)  # mid-"training", holding its batch
        started[0].wait(10)
        texts = [_finish(proc, log) for proc, log in zip(started[1:], logs[1:], strict=True)]
        states = _states(url, "pooled")
        pooler_log = bouncer.text()
    assert states.get("COMPLETE") == budget, (states, texts)
    assert set(states) <= {"COMPLETE", "FAIL"} and states.get("FAIL", 0) >= 1, states
    assert any("stopped sending heartbeats" in text for text in texts)
    assert sum(int(text.rsplit("done ", 1)[1].split()[0]) for text in texts) >= budget - 2
    assert seen.most <= 2, f"PostgreSQL saw {seen.most} connections behind a pool of 2"
    assert "prepared statement" not in pooler_log, pooler_log


@pytest.mark.slow  # `hpo worker` imports TensorFlow and trains real (tiny) trials
def test_hpo_create_workers_and_status_through_pgbouncer(
    pg_url: str, processes: HpoProcesses, tmp_path: Path
) -> None:
    """The command line as a user runs it, every command through PgBouncer in transaction
    mode with one server connection: ``hpo create``, two ``hpo worker``, ``hpo status``."""
    database = _database(pg_url)
    with pgbouncer_server(pool_size=1) as bouncer:
        url = bouncer.url_for(database)
        env = hpo_env(url)
        study = tiny_study(tmp_path, "bounced", n_trials=4)
        processes.run(["create", str(study), "--heartbeat-interval", "1"], env=env)
        workers = [processes.start(["worker", "bounced"], env=env, log=f"w{i}.log") for i in (0, 1)]
        for worker in workers:
            assert worker.finish() == 0, worker.text()
            assert "Traceback" not in worker.text(), worker.text()
        status = processes.run(["status", "bounced"], env=env)
    assert _states(pg_url, "bounced") == {"COMPLETE": 4}, status
