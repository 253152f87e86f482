"""hpo's own cost per trial: trials per second when training is nearly free, before and after.

Runs ``hpo run studies/wine.toml --epochs 1`` (178 rows, one epoch: training costs milliseconds,
so what is left is sampling, storage writes, artifacts and per-batch set-up) to ``--n-trials``
on a fresh SQLite file, with the hpo of git revision ``--before`` (default ``HEAD``, extracted to
a temporary folder) and with the working tree, one after the other, in one process each
(``--workers 1``; the same 8 trials a batch). Throughput is read from the trials' completion
times in the study: trials per second over the first 200 completions and over completions
``N-200`` to ``N``, which shows whether the cost grows with the study's history.

    python bench/overhead.py --n-trials 1200
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
    tree: Path | None, n_trials: int, folder: Path, new_cli: bool
) -> tuple[float, float, float]:
    """Trials/s over the first 200 and the last 200 completions, and the wall seconds."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HPO_CACHE_DIR": str(folder / "cache")}
    env.pop("HPO_STORAGE", None)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)  # ahead of the editable install of the working tree
    command = [
        sys.executable, "-m", "hpo", "run", str(ROOT / "studies" / "wine.toml"),
        "--epochs", "1", "--n-trials", str(n_trials), "--trials-per-batch", "8",
    ]  # fmt: skip
    if new_cli:
        command += ["--workers", "1"]
    started = time.monotonic()
    subprocess.run(command, cwd=folder, env=env, check=True, capture_output=True)
    wall = time.monotonic() - started
    study = optuna.load_study(study_name="wine", storage=f"sqlite:///{folder}/hpo.db")
    done = sorted(t.datetime_complete for t in study.trials if t.datetime_complete is not None)
    window = min(200, len(done) - 1)

    def rate(first: int, last: int) -> float:
        return (last - first) / (done[last] - done[first]).total_seconds()

    return rate(0, window), rate(len(done) - 1 - window, len(done) - 1), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-trials", type=int, default=1200)
    parser.add_argument("--before", default="HEAD", help="git revision of the 'before' hpo")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="hpo-overhead-") as tmp:
        before_tree = Path(tmp, "before-hpo")
        before_tree.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.before, "hpo"], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(before_tree)], input=archive, check=True)
        results = {}
        for label, tree, new_cli in (("before", before_tree, False), ("after", None, True)):
            folder = Path(tmp, label)
            folder.mkdir()
            results[label] = run(tree, args.n_trials, folder, new_cli)
            first, last, wall = results[label]
            print(
                f"{label:>6}: {first:6.1f} trials/s over trials 0-200, {last:6.1f} over the last "
                f"200 of {args.n_trials}; {wall:.0f} s in all",
                flush=True,
            )
    n = args.n_trials
    old, new = results["before"][1], results["after"][1]
    print(f"trials {n - 200}-{n}: {old:.1f} -> {new:.1f} trials/s ({new / old:.2f}x)")


if __name__ == "__main__":
    main()
