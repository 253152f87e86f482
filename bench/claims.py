"""Trials per second a cluster of workers gets from one PostgreSQL study, before and after a change.

Each simulated worker is a real process running hpo's own worker loop (``hpo.study.worker.optimize``:
claims under the study lock, budget counting, heartbeats, TPE sampling, tells) with an *instant*
engine that returns a random accuracy at once, so the figure is hpo's own cost per trial and 2 cores
are enough for 32 workers. It is measured against the number of workers and against the trials the
study already holds (finished trials with realistic parameters and attributes, inserted first),
for two versions of hpo in one run: ``--before REV`` (a git revision, extracted to a temporary
folder; default ``HEAD``) and the working tree. The two run interleaved on the same studies.

    python bench/claims.py --workers 1 4 16 32 --stored 0 2000 10000 --seconds 20

With the instant engine every worker is busy all the time, so once the workers fill the machine's
cores the figure stops growing with more of them whatever hpo does. ``--train-seconds S`` makes
each batch take S seconds more without using a core (as training does on a worker's own
machine): then more workers can only add throughput, and what caps it is what they share (the
study lock, the database, this machine's cores for hpo's own work).

Each worker also times how long it holds the study lock (the one thing no two workers do at once):
``lock ms/trial`` is that time per trial claimed, and ``cap/s`` its inverse, the most trials per
second any number of workers on any number of machines could claim from one study.

Each measurement: W worker processes start, load the study (reading its history once), wait at a
common start time, then claim and tell for ``--seconds``; throughput = trials finished / wall time
from the start time until the last worker ends. The study's budget is far above what they finish,
so the exact-budget path (count under the lock) is exercised without ever stopping them.

``--budget N`` instead gives each measurement a fresh study with N trials to finish (past those
stored), run until they are, and reports whether exactly N completed with none left RUNNING,
trials and claims per second (a claim: one turn under the study lock that got trials, 8 at most),
how many workers' output names a connection failure, the server's connections at their peak, and
the wall time. ``--own-cluster`` runs the studies on a throwaway PostgreSQL cluster of the
bench's own (``initdb`` on a free port, with ``--max-connections``; never the shared server, which
is not reconfigured), and ``--pgbouncer`` puts a PgBouncer of the bench's own in transaction mode
in front of it (``--pool-size`` server connections), as tests/pg.py does for the tests. The scale
run of issue 21, 100 workers on PostgreSQL's default ``max_connections``, through PgBouncer and
without:

    python bench/claims.py --own-cluster --max-connections 100 --pgbouncer --pool-size 10 \
        --workers 100 --stored 0 --budget 1600 --seconds 500 --before none

The workers are forked from one process that has imported hpo and its libraries and done what a
worker does first (so 100 workers cost about 45 MB each instead of 120 MB, and start in about a
minute on two cores instead of ten); each is still a process of its own with its own database
connection. ``conns`` is the most client connections to the study's database at once
(``pg_stat_activity``, sampled every 20 ms from the first worker's start to the last one's end;
behind PgBouncer these are PgBouncer's server connections), and that divided by the workers.

A side whose workers cannot start (PostgreSQL's ``max_connections`` reached: ``too many
clients``) is reported as failed once every worker has started or died, with how many were
refused and the reason, and the other side is still measured. The workers of a measurement are
one process group, killed as one when it fails or ends, and the bench reports how many are left
(0); a worker whose parent dies, or that waits over ``--start-timeout`` seconds for the start
signal, exits instead of waiting for ever, and SIGTERM removes the bench's cluster, PgBouncer and
database as an error does.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import optuna
import psycopg

from hpo.data import load_folds
from hpo.engines.contract import EvaluationResult
from hpo.space import suggest_plan
from hpo.spec import spec_from_dict
from hpo.study import budget
from hpo.study.creation import create_or_load_study, join_study
from hpo.study.record import result_attrs, sampled_attrs
from hpo.study.storage import open_storage
from hpo.study.worker import optimize

ROOT = Path(__file__).resolve().parent.parent
STUDY = {
    "study": {"name": "claims"},
    "data": {"dataset": "sklearn:wine", "target": "target"},
    "model": {"epochs": 1},
    "sampler": {"seed": 7},
    "budget": {"n_trials": 10_000_000},
    "artifacts": {"top_k": 0},
    # Fixed ranges: the instant engine's random accuracies would make "auto" windows meaningless.
    "search": {"l1": [1e-6, 1e-1], "l2": [1e-6, 1e-1]},
}


class InstantEngine:
    """An engine that trains nothing: a random accuracy per plan, at once."""

    name = "stacked"
    trials_per_batch = 8
    batch_seeded = True

    def __init__(self, train_seconds: float = 0.0) -> None:
        self.train_seconds = train_seconds

    def evaluate(self, plans: Any, folds: Any, *, n_classes: int, **_: Any) -> list[Any]:
        n_rows = len(folds[0].train_rows) + len(folds[0].valid_rows)
        time.sleep(self.train_seconds)  # "training": time passes, no core is used
        out = []
        for _plan in plans:
            fold_accuracies = tuple(random.uniform(0.6, 0.75) for _ in folds)
            out.append(
                EvaluationResult(
                    accuracy=float(np.mean(fold_accuracies)),
                    fold_accuracies=fold_accuracies,
                    predictions=np.zeros(n_rows, dtype=np.int32),
                    epochs=1,
                    seconds=0.0,
                    trials_in_batch=len(plans),
                )
            )
        return out

    def close(self) -> None:
        return None


# --- the worker processes ----------------------------------------------------------------------


class LockClock:
    """Wraps ``hpo.study.budget.study_lock`` to add up the time the lock is held."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._real: Any = None

    def install(self) -> None:
        self._real = budget.study_lock
        budget.study_lock = self._timed  # type: ignore[assignment]

    @contextlib.contextmanager
    def _timed(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        with self._real(*args, **kwargs) as lock:
            held = time.perf_counter()
            try:
                yield lock
            finally:
                self.seconds += time.perf_counter() - held


class ClaimCounter:
    """Wraps the worker loop's ``claim_trials`` to count the claims that got trials (not those
    that found the budget taken, or waited)."""

    def __init__(self) -> None:
        self.claims = 0

    def install(self) -> None:
        from hpo.study import worker as loop

        real = getattr(loop, "claim_trials", None)
        if real is None:  # an hpo too old to have it: claims are not counted
            return

        def counted(*args: Any, **kwargs: Any) -> Any:
            claim = real(*args, **kwargs)
            if getattr(claim, "trials", None):
                self.claims += 1
            return claim

        loop.claim_trials = counted  # type: ignore[attr-defined]


def run_worker(
    url: str,
    name: str,
    go: Path,
    seconds: float,
    ready: Path,
    train_seconds: float,
    start_timeout: float,
    parent: int,
) -> None:
    """Join the study, read its history once (as a joining worker does), say so, wait for the
    common start time, then run hpo's worker loop until the study's budget is finished or
    ``seconds`` have passed. Exits without running if the parent process (pid ``parent``,
    passed by it: one read here could already be init's, had the parent died while this
    process was starting) is gone, or the start signal has not come within ``start_timeout``
    seconds."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    clock, counter = LockClock(), ClaimCounter()
    clock.install()
    counter.install()
    study, spec = join_study(name, open_storage(url), worker=f"bench:{os.getpid()}")
    _, folds = load_folds(spec.data, spec.cv)
    study.get_trials(deepcopy=False)
    ready.touch()
    deadline = time.monotonic() + start_timeout
    while not go.exists():
        # Re-parented (to init or a subreaper) once the parent has died.
        if os.getppid() != parent:
            raise SystemExit("the benchmark's parent process is gone; not starting")
        if time.monotonic() > deadline:
            raise SystemExit(f"no start signal within {start_timeout:g} s; not starting")
        time.sleep(0.05)
    time.sleep(max(0.0, float(go.read_text()) - time.time()))
    summary = optimize(
        study,
        spec,
        folds,
        InstantEngine(train_seconds),
        n_trials=spec.budget.n_trials,
        timeout=seconds,
    )
    record = {
        "completed": summary.completed,
        "ended": time.time(),
        "lock": clock.seconds,
        "claims": counter.claims,
    }
    print(json.dumps(record))


def spawn(
    folder: Path,
    workers: int,
    stagger: float,
    driver: int,
    url: str,
    name: str,
    seconds: float,
    train_seconds: float,
    start_timeout: float,
) -> None:
    """Fork ``workers`` worker processes from this one, which has imported hpo, Optuna, NumPy
    and pandas once: the workers share those pages instead of each importing them again (100
    workers would otherwise need about 12 GB and minutes of CPU on two cores just to start).
    Worker ``i`` writes its stdout to ``out-i``, its stderr to ``err-i``, and this process
    writes its exit code to ``exit-i`` as it ends. If the driver (pid ``driver``) dies, the
    whole process group goes with it: nothing is left waiting."""
    # What a worker does first, once here, so that what it imports on the way (scikit-learn
    # for the data, SQLAlchemy's dialect, Optuna's schema models, TPE) is shared too; this
    # process's connection is closed before any worker opens its own.
    storage = open_storage(url)
    study, spec = join_study(name, storage, worker=f"bench:{os.getpid()}")
    load_folds(spec.data, spec.cv)
    study.get_trials(deepcopy=False)
    storage.engine.dispose()
    del study, storage
    # Objects made so far are never collected: a collection in a worker would touch (and so
    # copy) every page they are on.
    gc.collect()
    gc.freeze()
    sys.stdout.flush()
    sys.stderr.flush()
    me = os.getpid()
    children: dict[int, int] = {}
    for i in range(workers):
        pid = os.fork()
        if pid == 0:
            _child(folder, i, me, url, name, seconds, train_seconds, start_timeout)
        children[pid] = i
        if stagger:
            time.sleep(stagger)
    while children:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid:
            i = children.pop(pid)
            (folder / f"exit-{i}").write_text(str(os.waitstatus_to_exitcode(status)))
            continue
        if os.getppid() != driver:
            os.killpg(0, signal.SIGKILL)
        time.sleep(0.05)


def _child(
    folder: Path,
    i: int,
    parent: int,
    url: str,
    name: str,
    seconds: float,
    train_seconds: float,
    start_timeout: float,
) -> NoReturn:
    """One forked worker: its own output files and random streams, then :func:`run_worker`."""
    code = 0
    try:
        for path, fd in ((folder / f"out-{i}", 1), (folder / f"err-{i}", 2)):
            opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(opened, fd)
            os.close(opened)
        # The parent's streams, copied by fork: every worker would draw the same accuracies.
        random.seed()
        np.random.seed()
        run_worker(
            url,
            name,
            folder / "go",
            seconds,
            folder / f"ready-{i}",
            train_seconds,
            start_timeout,
            parent,
        )
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


# --- the driver --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """The PostgreSQL server the studies live on (the shared one, or the bench's own)."""

    host: str = "127.0.0.1"
    port: int = 5432

    def admin(self, database: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=self.host, port=self.port, user="postgres", dbname=database, autocommit=True
        )

    def url(self, database: str) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"


def fill(url: str, name: str, stored: int, n_trials: int | None = None) -> None:
    """Create study ``name`` holding ``stored`` finished trials with sampled params and the
    attributes a real trial carries; its budget is ``n_trials`` (default: far more than any
    measurement finishes)."""
    study = dict(STUDY)
    if n_trials is not None:
        study["budget"] = {"n_trials": n_trials}
    spec = spec_from_dict({**study, "study": {"name": name}}, origin="bench")
    storage = open_storage(url)
    made_study, _ = create_or_load_study(spec, storage)
    if stored == 0:
        return
    scratch = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.RandomSampler(seed=stored)
    )
    rng = random.Random(stored)
    made = []
    for number in range(stored):
        trial = scratch.ask()
        plan = suggest_plan(trial, spec.search)
        fold_accuracies = tuple(rng.uniform(0.6, 0.75) for _ in range(spec.cv.folds))
        result = EvaluationResult(
            accuracy=float(np.mean(fold_accuracies)),
            fold_accuracies=fold_accuracies,
            predictions=np.zeros(1, dtype=np.int32),
            epochs=1,
            seconds=0.01,
            trials_in_batch=8,
        )
        attrs = {
            **sampled_attrs(plan, spec.trial_seed(number), "bench:0"),
            **result_attrs(result, engine="stacked", versions={"tensorflow": "x", "keras": "x"}),
        }
        made.append(
            optuna.trial.create_trial(
                params=trial.params,
                distributions=trial.distributions,
                value=result.accuracy,
                user_attrs=attrs,
            )
        )
        scratch.tell(trial, result.accuracy)
    made_study.add_trials(made)


@dataclass(frozen=True)
class Measured:
    per_second: float  # trials finished per second, all workers together
    lock_per_trial: float  # seconds the study lock was held per trial finished
    connections: int  # the most connections to the study's database at once
    failed: str | None = None  # why the workers could not run (then the rates are 0)
    claims_per_second: float = 0.0  # claims that got trials, per second, all workers together
    server_connections: int = 0  # the most client connections to the whole server at once
    connection_errors: int = 0  # workers whose output names a connection failure
    completed: int = 0  # trials the workers finished (their own count)
    states: dict[str, int] | None = None  # the study's trials by state afterwards (--budget)
    ready_seconds: float = 0.0  # from the first worker's start until all were ready
    run_seconds: float = 0.0  # from the common start time until the last worker ended
    left: int = 0  # worker processes still alive once the measurement had ended


class Connections:
    """The most client backends at once (autovacuum's are not counted), sampled every 20 ms on
    a thread over one connection of its own (opened before the workers start, to the
    ``postgres`` database): those of the study's database (the workers', or PgBouncer's server
    connections), and all of the server's but this one (what counts against
    ``max_connections``)."""

    def __init__(self, server: Server, database: str) -> None:
        self.database = database
        self.most = self.most_server = 0
        self._stop = threading.Event()
        self._conn = server.admin()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        query = (
            "SELECT count(*) FILTER (WHERE datname = %s), count(*) FILTER (WHERE pid <> "
            "pg_backend_pid()) FROM pg_stat_activity WHERE backend_type = 'client backend'"
        )
        while not self._stop.is_set():
            row = self._conn.execute(query, (self.database,)).fetchone()
            if row:
                self.most = max(self.most, int(row[0]))
                self.most_server = max(self.most_server, int(row[1]))
            time.sleep(0.02)

    def __enter__(self) -> Connections:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._conn.close()


# What a worker's output says when it could not reach the database, or was refused by it.
CONNECTION_ERROR = re.compile(
    r"too many clients|database unreachable|connection failed|could not connect|"
    r"server closed the connection|connection refused|cannot connect to server|"
    r"no more connections allowed",
    re.IGNORECASE,
)


def _connection_errors(folder: Path, workers: int) -> tuple[int, str | None]:
    """How many workers' stderr names a connection failure, and the first such line."""
    count, first = 0, None
    for i in range(workers):
        path = folder / f"err-{i}"
        text = path.read_text(errors="replace") if path.exists() else ""
        lines = [line for line in text.splitlines() if CONNECTION_ERROR.search(line)]
        if lines:
            count += 1
            first = first or lines[-1].strip()
    return count, first


def _group_members(group: int) -> int:
    """Live processes (zombies excluded) in process group ``group``."""
    alive = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[2]) == group:
                alive += 1
    return alive


def _end_group(spawner: subprocess.Popen[bytes]) -> int:
    """Kill the spawner and every worker it forked (one process group); how many of them are
    still alive 10 s later (0 expected)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(spawner.pid, signal.SIGKILL)
    spawner.wait()
    deadline = time.monotonic() + 10
    while (left := _group_members(spawner.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _last_line(path: Path) -> str | None:
    lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return lines[-1].strip() if lines else None


def measure(
    tree: Path,
    server: Server,
    url: str,
    name: str,
    workers: int,
    seconds: float,
    train_seconds: float,
    start_timeout: float = 600.0,
    stagger: float = 0.0,
) -> Measured:
    """Start ``workers`` workers of the hpo in ``tree`` on study ``name`` through ``url``, wait
    until every one is ready or has died, then (if none died) let them run; see the module's
    docstring."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(tree)}
    # One BLAS thread a worker: 100 workers would otherwise start 100 thread pools for the TPE
    # sampler's few small arrays.
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    database = url.rsplit("/", 1)[1]
    with tempfile.TemporaryDirectory() as tmp, Connections(server, database) as seen:
        folder = Path(tmp)
        began = time.monotonic()
        with (folder / "spawner.err").open("wb") as err:
            spawner = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--spawn",
                    tmp,
                    str(workers),
                    str(stagger),
                    str(os.getpid()),
                    url,
                    name,
                    str(seconds),
                    str(train_seconds),
                    str(start_timeout),
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=tmp,
                start_new_session=True,  # its own process group: the workers die with it
            )
        left = 0
        try:
            failed: str | None = None
            deadline = time.monotonic() + start_timeout
            while True:
                ready = [(folder / f"ready-{i}").exists() for i in range(workers)]
                dead = [i for i in range(workers) if (folder / f"exit-{i}").exists()]
                if len(dead) + sum(ready[i] for i in range(workers) if i not in dead) == workers:
                    break
                if spawner.poll() is not None:
                    failed = f"the workers' parent exited: {_last_line(folder / 'spawner.err')}"
                    break
                if time.monotonic() > deadline:
                    failed = f"not every worker was ready within {start_timeout:g} s"
                    break
                time.sleep(0.1)
            ready_seconds = time.monotonic() - began
            if not failed and dead:
                errors, line = _connection_errors(folder, workers)
                why = line or _last_line(folder / f"err-{dead[0]}") or "no output"
                failed = f"{len(dead)} of {workers} workers could not start: {why}"
            if failed:
                errors, _ = _connection_errors(folder, workers)
                left = _end_group(spawner)
                return Measured(
                    0.0,
                    0.0,
                    seen.most,
                    failed,
                    server_connections=seen.most_server,
                    connection_errors=errors,
                    ready_seconds=ready_seconds,
                    left=left,
                )
            start_at = time.time() + 1.0
            (folder / "go.tmp").write_text(str(start_at))
            (folder / "go.tmp").rename(folder / "go")  # whole, or not there
            try:
                spawner.wait(timeout=seconds + 120)
            except subprocess.TimeoutExpired:
                failed = f"the workers had not ended {seconds + 120:g} s after the start"
            completed, claims, last, lock, missing = 0, 0, start_at, 0.0, []
            for i in range(workers):
                line = _last_line(folder / f"out-{i}")
                if line is None or not line.startswith("{"):
                    missing.append(i)
                    continue
                record = json.loads(line)
                completed += record["completed"]
                claims += record.get("claims", 0)
                last = max(last, record["ended"])
                lock += record["lock"]
            errors, line = _connection_errors(folder, workers)
            if not failed and missing:
                why = line or _last_line(folder / f"err-{missing[0]}") or "no output"
                failed = f"{len(missing)} of {workers} workers failed: {why}"
        finally:
            # Whatever went wrong here, no worker is left behind waiting for a start signal.
            if spawner.poll() is None or _group_members(spawner.pid):
                left = _end_group(spawner)
    run = max(last - start_at, 1e-9)
    return Measured(
        completed / run,
        lock / max(completed, 1),
        seen.most,
        failed,
        claims_per_second=claims / run,
        server_connections=seen.most_server,
        connection_errors=errors,
        completed=completed,
        ready_seconds=ready_seconds,
        run_seconds=run,
        left=left,
    )


def _cap(measured: Measured) -> float:
    return 1.0 / measured.lock_per_trial if measured.lock_per_trial > 0 else float("inf")


def _row(a: Measured, b: Measured, workers: int) -> str:
    """One line of the table: trials/s before and after, their ratio, the lock's figures and
    the connections (a failed side shows ``failed``)."""

    def rate(m: Measured) -> str:
        return "failed" if m.failed else f"{m.per_second:.1f}"

    def lock(m: Measured) -> str:
        return "-" if m.failed else f"{m.lock_per_trial * 1e3:5.1f}, {_cap(m):5.0f}"

    def conns(m: Measured) -> str:
        return f"{m.connections} ({m.connections / workers:.2f})"

    ratio = "-" if a.failed or b.failed else f"{b.per_second / a.per_second:5.2f}x"
    return f"{rate(a):>9} {rate(b):>9} {ratio:>6}   {lock(a)} / {lock(b)}   {conns(a)} / {conns(b)}"


def _states(url: str, name: str) -> dict[str, int]:
    storage = open_storage(url)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
        counts: dict[str, int] = {}
        for trial in study.get_trials(deepcopy=False):
            counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
        return counts
    finally:
        storage.engine.dispose()  # no connection of the driver's stays open during a measurement


def _study_names(url: str) -> set[str]:
    storage = open_storage(url)
    try:
        return {s.study_name for s in optuna.get_all_study_summaries(storage)}
    finally:
        storage.engine.dispose()


def _fill(tree: Path, url: str, name: str, stored: int, n_trials: int | None = None) -> None:
    """:func:`fill` in a process of its own, with the hpo in ``tree`` (whose spec reader may
    know fewer keys than this one's)."""
    extra = [] if n_trials is None else [str(n_trials)]
    subprocess.run(
        [sys.executable, __file__, "--fill", url, name, str(stored), *extra],
        env={**os.environ, "PYTHONPATH": str(tree), "PYTHONWARNINGS": "ignore"},
        check=True,
        capture_output=True,
    )


def _timed(args: argparse.Namespace, server: Server, direct: str, url: str, before: Path) -> None:
    """The table: trials/s before and after, for each number of trials stored and of workers,
    each measurement ``--seconds`` long on a study whose budget is never reached."""
    print(
        f"{'stored':>7} {'workers':>7} {'before/s':>9} {'after/s':>9} {'ratio':>6}   "
        f"lock ms/trial, cap/s: before / after   conns at once (per worker): before / after"
    )
    results: dict[tuple[int, int], tuple[Measured, Measured]] = {}
    for stored in args.stored:
        name = f"claims-{stored}"
        started = time.monotonic()
        if name not in _study_names(direct):
            _fill(before, direct, name, stored)  # made by the older hpo: both sides read it
        held = sum(_states(direct, name).values())
        print(
            f"  (study {name}: {held} trials stored, ready in {time.monotonic() - started:.0f} s)",
            flush=True,
        )
        if args.fill_only:
            continue
        for workers in args.workers:
            a, b = (
                measure(
                    tree,
                    server,
                    url,
                    name,
                    workers,
                    args.seconds,
                    args.train_seconds,
                    args.start_timeout,
                    args.stagger,
                )
                for tree in (before, ROOT)
            )
            results[stored, workers] = (a, b)
            print(f"{stored:>7} {workers:>7} {_row(a, b, workers)}", flush=True)
            for side, m in (("before", a), ("after", b)):
                if m.failed:
                    print(f"    {side}: failed: {m.failed}; processes left: {m.left}", flush=True)
    if args.fill_only:
        return
    small = [w for w in args.workers if w <= 16]
    top = max(args.stored), max(small or args.workers)
    a, b = results[top]
    if a.failed or b.failed:
        print(f"{top[1]} workers, {top[0]} trials stored: a side failed (see above)")
    else:
        print(
            f"{top[1]} workers, {top[0]} trials stored: {a.per_second:.1f} -> "
            f"{b.per_second:.1f} trials/s ({b.per_second / a.per_second:.2f}x); "
            f"connections per worker {a.connections / top[1]:.2f} -> "
            f"{b.connections / top[1]:.2f}"
        )


def _exact(m: Measured, wanted: int) -> str:
    states = m.states or {}
    done = states.get("COMPLETE", 0)
    others = ", ".join(f"{n} {s}" for s, n in sorted(states.items()) if s != "COMPLETE")
    verdict = "exact" if done == wanted and not states.get("RUNNING") else "NOT exact"
    return f"{verdict} ({done} COMPLETE of {wanted}{', ' + others if others else ''})"


def _budgeted(
    args: argparse.Namespace,
    server: Server,
    direct: str,
    url: str,
    sides: list[tuple[str, Path]],
    max_connections: str,
) -> None:
    """For each number of trials stored and of workers, each side: a fresh study with a budget
    of ``--budget`` trials past those stored, run until it is finished; what it cost."""
    summary = []
    for stored in args.stored:
        for workers in args.workers:
            for side, tree in sides:
                name = f"claims-{stored}-{workers}-{side}-{uuid.uuid4().hex[:6]}"
                _fill(tree, direct, name, stored, stored + args.budget)
                began = time.monotonic()
                m = measure(
                    tree,
                    server,
                    url,
                    name,
                    workers,
                    args.seconds,
                    args.train_seconds,
                    args.start_timeout,
                    args.stagger,
                )
                wall = time.monotonic() - began
                if not m.failed or m.completed:
                    m = replace(m, states=_states(direct, name))
                print(f"{side}: {workers} workers, {stored} trials stored", flush=True)
                if m.failed:
                    print(f"  failed: {m.failed}")
                print(f"  connection errors: {m.connection_errors} of {workers} workers")
                if m.states is not None:
                    print(f"  budget: {_exact(m, stored + args.budget)}")
                if not m.failed:
                    print(
                        f"  {m.completed} trials in {m.run_seconds:.1f} s: "
                        f"{m.per_second:.1f} trials/s, {m.claims_per_second:.1f} claims/s; "
                        f"study lock {m.lock_per_trial * 1e3:.1f} ms per trial"
                    )
                print(
                    f"  server connections at peak (pg_stat_activity): {m.connections} on the "
                    f"study's database ({m.connections / workers:.2f} per worker), "
                    f"{m.server_connections} clients on the server (max_connections "
                    f"{max_connections}; the bench's own sampler holds 1 more)"
                )
                print(
                    f"  wall: workers ready after {m.ready_seconds:.1f} s, whole measurement "
                    f"{wall:.1f} s; worker processes left afterwards: {m.left}",
                    flush=True,
                )
                outcome = (
                    f"failed ({m.connection_errors} connection errors)"
                    if m.failed
                    else f"{m.per_second:.1f} trials/s, budget {_exact(m, stored + args.budget)}"
                )
                summary.append(f"{side} {workers} workers, {stored} stored: {outcome}")
    print("; ".join(summary))


def _unavailable(reason: str) -> NoReturn:
    raise SystemExit(f"claims.py: {reason}")


def _terminated(signum: int, frame: object) -> NoReturn:
    # SIGTERM ends the run through the same clean-up as an error: workers killed, the cluster,
    # PgBouncer and the throwaway database removed.
    raise SystemExit(128 + signum)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--stored", type=int, nargs="+", default=[0, 2000, 10000])
    parser.add_argument(
        "--seconds",
        type=float,
        default=20.0,
        help="seconds a measurement runs (with --budget: the most it may run)",
    )
    parser.add_argument(
        "--train-seconds",
        type=float,
        default=0.0,
        help="seconds each batch of 8 'trains' without using a core (default 0: instant)",
    )
    parser.add_argument(
        "--before",
        default="HEAD",
        help="git revision of the 'before' hpo; 'none': the working tree only (with --budget)",
    )
    parser.add_argument(
        "--budget",
        type=int,
        help="each measurement gets a fresh study with this many trials to finish past those "
        "stored, and runs until they are: reports whether exactly that many completed",
    )
    parser.add_argument(
        "--own-cluster",
        action="store_true",
        help="a throwaway PostgreSQL cluster of the bench's own (initdb, a free port), "
        "instead of the server on 127.0.0.1:5432",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        help="max_connections of --own-cluster (default 100, PostgreSQL's own default)",
    )
    parser.add_argument(
        "--pgbouncer",
        action="store_true",
        help="the workers connect through a PgBouncer of the bench's own in transaction mode",
    )
    parser.add_argument(
        "--pool-size",
        type=int,
        default=10,
        help="PgBouncer's server connections for the study's database (default 10)",
    )
    parser.add_argument(
        "--stagger",
        type=float,
        default=0.0,
        help="seconds between two workers' starts (default 0: all at once)",
    )
    parser.add_argument(
        "--database",
        help="keep the studies in this PostgreSQL database for the next run (made if missing; "
        "a study already there is not filled again); default: a throwaway one",
    )
    parser.add_argument(
        "--fill-only", action="store_true", help="make the studies, measure nothing"
    )
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=600.0,
        help="seconds a started worker waits for the start signal before it gives up",
    )
    parser.add_argument("--spawn", nargs=9, help=argparse.SUPPRESS)
    parser.add_argument("--fill", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.spawn:
        folder, workers, stagger, driver, url, name, seconds, train, start_timeout = args.spawn
        spawn(
            Path(folder),
            int(workers),
            float(stagger),
            int(driver),
            url,
            name,
            float(seconds),
            float(train),
            float(start_timeout),
        )
        return
    if args.fill:
        fill(args.fill[0], args.fill[1], int(args.fill[2]), *(int(n) for n in args.fill[3:]))
        return
    if args.before == "none" and not args.budget:
        parser.error("--before none needs --budget (the table compares two sides)")
    if args.max_connections is not None and not args.own_cluster:
        parser.error("--max-connections needs --own-cluster (the shared server is not changed)")
    if args.own_cluster and args.database:
        parser.error("--database keeps studies for the next run; an --own-cluster is removed")
    signal.signal(signal.SIGTERM, _terminated)

    sys.path.insert(0, str(ROOT / "tests"))  # the test suite's own cluster and PgBouncer
    from pg import own_postgres_server, pgbouncer_server

    with contextlib.ExitStack() as stack:
        server, max_connections = Server(), "of the shared server"
        if args.own_cluster:
            own = stack.enter_context(
                own_postgres_server(
                    max_connections=args.max_connections or 100, unavailable=_unavailable
                )
            )
            server, max_connections = Server(own.host, own.port), str(own.max_connections)
        else:
            with server.admin() as conn:
                row = conn.execute("SHOW max_connections").fetchone()
                max_connections = str(row[0]) if row else "?"
        database = args.database or f"hpo_bench_claims_{uuid.uuid4().hex[:8]}"
        with server.admin() as conn:
            if not conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
            ).fetchone():
                conn.execute(f'CREATE DATABASE "{database}"')
        if not args.database and not args.own_cluster:
            stack.callback(_drop, server, database)
        direct = url = server.url(database)
        route = f"PostgreSQL {server.host}:{server.port} (max_connections {max_connections})"
        if args.pgbouncer:
            bouncer = stack.enter_context(
                pgbouncer_server(
                    host=server.host,
                    port=server.port,
                    pool_size=args.pool_size,
                    unavailable=_unavailable,
                )
            )
            url = bouncer.url_for(database)
            route = (
                f"PgBouncer {bouncer.port} (transaction mode, pool of {args.pool_size}) -> {route}"
            )
        sides = [("after", ROOT)]
        before = ROOT
        if args.before != "none":
            before = Path(tempfile.mkdtemp(prefix="hpo-before-"))
            stack.callback(shutil.rmtree, before, True)
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", args.before, "hpo"],
                check=True,
                capture_output=True,
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
            sides.insert(0, ("before", before))
            rev = subprocess.run(
                ["git", "-C", str(ROOT), "rev-parse", "--short", args.before],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            print(f"before: hpo at {rev}; after: the working tree")
        engine = (
            f"each batch of 8 takes {args.train_seconds:g} s without a core"
            if args.train_seconds
            else "instant engine"
        )
        limit = f"budget {args.budget} trials, at most " if args.budget else ""
        print(f"{os.cpu_count()} cores; {engine}; {limit}{args.seconds:g} s a measurement")
        print(f"workers -> {route}; database {database}", flush=True)
        if args.budget:
            _budgeted(args, server, direct, url, sides, max_connections)
        else:
            _timed(args, server, direct, url, before)


def _drop(server: Server, database: str) -> None:
    with server.admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


if __name__ == "__main__":
    main()
