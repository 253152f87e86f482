"""Plain ``hpo run`` (one training process per usable core) against ``hpo run --workers 1``.

Both run the same study file to the same budget on a fresh SQLite file each, one after the other,
as a user types them. Two rates per run: ``steady`` (trials finished over the span from the
first trial's start to the last one's end) and ``wall`` (over the whole command, start-up of
every process included). The last line is the ratio of steady rates.

    python bench/run_workers.py --data ../shared/data/jh-simple-dataset.csv --n-trials 32
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parent.parent


def run(
    study: str, data: str, n_trials: int, epochs: int, workers: str | None
) -> tuple[float, float]:
    """(steady, wall) trials per hour of one ``hpo run``; ``workers`` None: the default."""
    with tempfile.TemporaryDirectory(prefix="hpo-run-workers-") as tmp:
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "HPO_CACHE_DIR": f"{tmp}/cache"}
        for key in ("HPO_STORAGE", "HPO_WORKERS"):
            env.pop(key, None)
        command = [sys.executable, "-m", "hpo", "run", study, "--data", str(Path(data).resolve()),
                   "--n-trials", str(n_trials), "--epochs", str(epochs)]  # fmt: skip
        if workers is not None:
            command += ["--workers", workers]
        started = time.monotonic()
        subprocess.run(command, cwd=tmp, env=env, check=True, capture_output=True)
        wall = time.monotonic() - started
        name = next(
            line.split('"')[1]
            for line in Path(study).read_text().splitlines()
            if line.startswith("name")
        )
        trials = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp}/hpo.db").trials
    first = min(t.datetime_start for t in trials if t.datetime_start)
    last = max(t.datetime_complete for t in trials if t.datetime_complete)
    done = sum(1 for t in trials if t.state.name == "COMPLETE")
    return 3600 * done / (last - first).total_seconds(), 3600 * done / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", default=str(ROOT / "studies" / "jh-simple.toml"))
    parser.add_argument("--data", required=True)
    parser.add_argument("--n-trials", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=500)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results = {}
    for label, workers in (("--workers 1", "1"), ("default", None)):
        steady, wall = run(args.study, args.data, args.n_trials, args.epochs, workers)
        results[label] = steady
        print(f"hpo run {label:>11}: {steady:7.0f} trials/h steady, {wall:7.0f} trials/h wall",
              flush=True)  # fmt: skip
    ratio = results["default"] / results["--workers 1"]
    cores = len(os.sched_getaffinity(0))
    print(f"default (one process per usable core: {cores}) / --workers 1: {ratio:.2f}x")


if __name__ == "__main__":
    main()
