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

``conns`` is the most database connections the workers held at once (``pg_stat_activity``,
application_name ``hpo``, sampled every 20 ms from the first worker's start to the last one's
end), and that divided by the workers. A side whose workers cannot start (PostgreSQL's
``max_connections`` reached: ``too many clients``) is reported as failed, with the reason, and
the other side is still measured. A worker whose parent dies, or that waits over
``--start-timeout`` seconds for the start signal, exits instead of waiting for ever.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


# --- the worker process ------------------------------------------------------------------------


class LockClock:
    """Wraps ``hpo.study.budget.study_lock`` to add up the time the lock is held."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.claims = 0
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
                self.claims += 1


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
    common start time, then run hpo's worker loop for ``seconds``. Exits without running if the
    parent process (pid ``parent``, passed by it: one read here could already be init's, had
    the parent died while this process was starting) is gone, or the start signal has not come
    within ``start_timeout`` seconds."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    clock = LockClock()
    clock.install()
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
    record = {"completed": summary.completed, "ended": time.time(), "lock": clock.seconds}
    print(json.dumps(record))


# --- the driver --------------------------------------------------------------------------------


def admin(database: str = "postgres") -> psycopg.Connection[Any]:
    return psycopg.connect(
        host="127.0.0.1", port=5432, user="postgres", dbname=database, autocommit=True
    )


def fill(url: str, name: str, stored: int, study: dict[str, Any] = STUDY) -> None:
    """Create study ``name`` (``study``'s spec) holding ``stored`` finished trials with sampled
    params and the attributes a real trial carries."""
    spec = spec_from_dict({**study, "study": {"name": name}}, origin="bench")
    made_study, _ = create_or_load_study(spec, open_storage(url))
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
    connections: int  # the most connections the workers held at once
    failed: str | None = None  # why the workers could not run (then nothing else is measured)


class Connections:
    """The most backends of ``database`` with application_name ``hpo`` at once, sampled every
    20 ms on a thread (over one connection of its own, opened before the workers start)."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.most = 0
        self._stop = threading.Event()
        self._conn = admin()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        query = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = 'hpo'"
        )
        while not self._stop.is_set():
            row = self._conn.execute(query, (self.database,)).fetchone()
            self.most = max(self.most, int(row[0]) if row else 0)
            time.sleep(0.02)

    def __enter__(self) -> Connections:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._conn.close()


def measure(
    tree: Path | None,
    url: str,
    name: str,
    workers: int,
    seconds: float,
    train_seconds: float,
    start_timeout: float = 600.0,
) -> Measured:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)  # ahead of the editable install of the working tree
    database = url.rsplit("/", 1)[1]
    procs: list[tuple[subprocess.Popen[str], Path, Path]] = []
    with tempfile.TemporaryDirectory() as tmp, Connections(database) as seen:
        try:
            go = Path(tmp, "go")
            for i in range(workers):
                ready, errors = Path(tmp, f"ready-{i}"), Path(tmp, f"stderr-{i}")
                with errors.open("w") as err:
                    proc = subprocess.Popen(
                        [
                            sys.executable,
                            __file__,
                            "--worker",
                            url,
                            name,
                            str(go),
                            str(seconds),
                            str(ready),
                            str(train_seconds),
                            str(start_timeout),
                            str(os.getpid()),
                        ],
                        env=env,
                        stdout=subprocess.PIPE,
                        stderr=err,
                        text=True,
                        cwd=tmp,
                    )
                procs.append((proc, ready, errors))
            while not all(r.exists() for _, r, _ in procs):
                dead = [(p, e) for p, _, e in procs if p.poll() is not None]
                if dead:
                    lines = dead[0][1].read_text(errors="replace").strip().splitlines()
                    why = lines[-1] if lines else f"exit code {dead[0][0].returncode}"
                    return Measured(
                        0.0, 0.0, seen.most, f"{len(dead)} of {workers} workers died: {why}"
                    )
                time.sleep(0.2)
            start_at = time.time() + 1.0
            Path(tmp, "go.tmp").write_text(str(start_at))
            Path(tmp, "go.tmp").rename(go)  # whole, or not there
            completed, last, lock = 0, start_at, 0.0
            for proc, _, _ in procs:
                out, _ = proc.communicate()
                record = json.loads(out.strip().splitlines()[-1])
                completed += record["completed"]
                last = max(last, record["ended"])
                lock += record["lock"]
        finally:
            # Whatever went wrong here, no worker is left behind waiting for a start signal.
            for proc, _, _ in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    return Measured(completed / (last - start_at), lock / max(completed, 1), seen.most)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--stored", type=int, nargs="+", default=[0, 2000, 10000])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--train-seconds",
        type=float,
        default=0.0,
        help="seconds each batch of 8 'trains' without using a core (default 0: instant)",
    )
    parser.add_argument("--before", default="HEAD", help="git revision of the 'before' hpo")
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
    parser.add_argument("--worker", nargs=8, help=argparse.SUPPRESS)
    parser.add_argument("--fill", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        url, name, go, seconds, ready, train, start_timeout, parent = args.worker
        run_worker(
            url,
            name,
            Path(go),
            float(seconds),
            Path(ready),
            float(train),
            float(start_timeout),
            int(parent),
        )
        return
    if args.fill:
        fill(args.fill[0], args.fill[1], int(args.fill[2]))
        return

    database = args.database or f"hpo_bench_claims_{uuid.uuid4().hex[:8]}"
    with admin() as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
            conn.execute(f'CREATE DATABASE "{database}"')
    url = f"postgresql://postgres@127.0.0.1:5432/{database}"
    before_tree = Path(tempfile.mkdtemp(prefix="hpo-before-"))
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.before, "hpo"], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(before_tree)], input=archive, check=True)
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", args.before],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        print(f"before: hpo at {rev}; after: the working tree; PostgreSQL database {database}")
        engine = (
            f"each batch of 8 takes {args.train_seconds:g} s without a core"
            if args.train_seconds
            else "instant engine"
        )
        print(f"{os.cpu_count()} cores; {engine}; {args.seconds:g} s a measurement")
        print(
            f"{'stored':>7} {'workers':>7} {'before/s':>9} {'after/s':>9} {'ratio':>6}   "
            f"lock ms/trial, cap/s: before / after   conns at once (per worker): before / after"
        )
        results: dict[tuple[int, int], tuple[Measured, Measured]] = {}
        for stored in args.stored:
            name = f"claims-{stored}"
            started = time.monotonic()
            if name not in {s.study_name for s in optuna.get_all_study_summaries(url)}:
                # Made by the older hpo, whose spec reader knows fewer keys than the newer one's.
                subprocess.run(
                    [sys.executable, __file__, "--fill", url, name, str(stored)],
                    env={**os.environ, "PYTHONPATH": str(before_tree), "PYTHONWARNINGS": "ignore"},
                    check=True,
                    capture_output=True,
                )
            held = len(optuna.load_study(study_name=name, storage=url).trials)
            print(
                f"  (study {name}: {held} trials stored, ready in "
                f"{time.monotonic() - started:.0f} s)",
                flush=True,
            )
            if args.fill_only:
                continue
            for workers in args.workers:
                a, b = (
                    measure(
                        tree,
                        url,
                        name,
                        workers,
                        args.seconds,
                        args.train_seconds,
                        args.start_timeout,
                    )
                    for tree in (before_tree, None)
                )
                results[stored, workers] = (a, b)
                print(f"{stored:>7} {workers:>7} {_row(a, b, workers)}", flush=True)
                for side, m in (("before", a), ("after", b)):
                    if m.failed:
                        print(f"    {side}: failed: {m.failed}", flush=True)
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
    finally:
        if not args.database:
            with admin() as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


if __name__ == "__main__":
    main()
