"""Trials per hour of the course study with 1 and 2 worker processes, on SQLite and PostgreSQL.

For each storage and each worker count: a fresh database, ``hpo create`` of the study, then the
workers started together (``hpo worker``), as a user would on this machine. Two rates per run:

* ``steady``: finished trials over the span from the first trial's start to the last one's end
  (what the workers achieve once running);
* ``wall``: finished trials over the whole run, process start-up (TensorFlow import, data) included.

The last line is the ratio that matters: 2 workers vs 1 (steady rate), per storage, and
PostgreSQL vs SQLite. Example (the stacked engine, the course's 500 epochs, 16 trials a run):

    .venv/bin/python bench/workers.py --engine stacked --epochs 500 --n-trials 16

With the stacked engine, make ``--n-trials`` a multiple of workers x trials per batch, or the
last batch runs partly empty.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HPO = [sys.executable, "-m", "hpo"]


@dataclass(frozen=True)
class Result:
    storage: str
    workers: int
    trials: int
    steady_per_hour: float
    wall_per_hour: float
    seconds: float


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default=str(ROOT / "studies" / "jh-simple.toml"))
    parser.add_argument(
        "--data", default=str(ROOT.parent / "shared" / "data" / "jh-simple-dataset.csv")
    )
    parser.add_argument("--engine", default="stacked", choices=["stacked", "reference"])
    parser.add_argument("--epochs", type=int, default=500)
    parser.add_argument("--n-trials", type=int, default=16, help="trials per run")
    parser.add_argument("--trials-per-batch", type=int, help="stacked engine batch size")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare")
    parser.add_argument("--storages", default="sqlite,postgresql")
    parser.add_argument(
        "--pg-admin",
        default=os.environ.get("HPO_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="a PostgreSQL URL allowed to CREATE DATABASE (a scratch database per run)",
    )
    return parser.parse_args()


@contextlib.contextmanager
def _storage(kind: str, admin_url: str, scratch: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{scratch / f'bench-{uuid.uuid4().hex[:8]}.db'}"
        return
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(admin_url).set(drivername="postgresql")
    name = f"hpo_bench_{uuid.uuid4().hex[:10]}"
    admin_uri = admin.render_as_string(hide_password=False)
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin_uri, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _run(args: argparse.Namespace, kind: str, workers: int, scratch: Path) -> Result:
    import optuna

    from hpo.study.storage import open_storage

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}
    with _storage(kind, args.pg_admin, scratch) as url:
        create = [
            *HPO,
            "-q",
            "create",
            args.study,
            "--storage",
            url,
            "--name",
            "bench",
            "--epochs",
            str(args.epochs),
            "--n-trials",
            str(args.n_trials),
            "--engine",
            args.engine,
        ]
        if args.trials_per_batch:
            create += ["--trials-per-batch", str(args.trials_per_batch)]
        subprocess.run(create, check=True, env=env, capture_output=True, cwd=scratch)
        started = time.monotonic()
        logs = [scratch / f"{kind}-{workers}-{i}.log" for i in range(workers)]
        procs = []
        for log in logs:
            with log.open("wb") as out:
                procs.append(
                    subprocess.Popen(
                        [*HPO, "-q", "worker", "bench", "--storage", url, "--data", args.data],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=env,
                        cwd=scratch,
                    )
                )
        for proc, log in zip(procs, logs, strict=True):
            if proc.wait() != 0:
                raise SystemExit(f"worker failed ({log}):\n{log.read_text()[-3000:]}")
        seconds = time.monotonic() - started
        study = optuna.load_study(study_name="bench", storage=open_storage(url))
        done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
        first = min(t.datetime_start for t in done if t.datetime_start)
        last = max(t.datetime_complete for t in done if t.datetime_complete)
        span = max((last - first).total_seconds(), 1e-9)
    return Result(
        storage=kind,
        workers=workers,
        trials=len(done),
        steady_per_hour=len(done) / span * 3600,
        wall_per_hour=len(done) / seconds * 3600,
        seconds=seconds,
    )


def main() -> None:
    args = _args()
    counts = [int(n) for n in args.workers.split(",")]
    kinds = [k.strip() for k in args.storages.split(",")]
    print(
        f"course study {Path(args.study).name}, data {args.data}: {args.engine} engine, "
        f"{args.epochs} epochs, {args.n_trials} trials a run; {os.cpu_count()} CPUs",
        flush=True,
    )
    print(f"{'storage':<11} {'workers':>7} {'trials':>6} {'steady/h':>9} {'wall/h':>8} {'s':>7}")
    results: dict[tuple[str, int], Result] = {}
    with tempfile.TemporaryDirectory(prefix="hpo-bench-") as tmp:
        for kind in kinds:
            for workers in counts:
                r = _run(args, kind, workers, Path(tmp))
                results[kind, workers] = r
                print(
                    f"{r.storage:<11} {r.workers:>7} {r.trials:>6} {r.steady_per_hour:>9.1f} "
                    f"{r.wall_per_hour:>8.1f} {r.seconds:>7.1f}",
                    flush=True,
                )
    low, high = min(counts), max(counts)
    parts = [
        f"{high} workers / {low} = "
        f"{results[k, high].steady_per_hour / results[k, low].steady_per_hour:.2f}x ({k})"
        for k in kinds
    ]
    if {"sqlite", "postgresql"} <= set(kinds):
        pg_vs_sqlite = (
            results["postgresql", high].steady_per_hour / results["sqlite", high].steady_per_hour
        )
        parts.append(f"postgresql / sqlite = {pg_vs_sqlite:.2f}x ({high} workers)")
    print("ratio: " + "; ".join(parts))


if __name__ == "__main__":
    main()
