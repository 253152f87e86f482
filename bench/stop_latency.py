"""How long a stop takes: seconds from SIGINT (or SIGTERM) to the process's exit, per stage of a
run, for the hpo of git revision ``--before`` (default ``HEAD``) and the working tree.

Stages, each on a fresh SQLite study of wine (``--epochs``, 24 trials, one process):

* ``start-up``: ``--delay`` seconds after the process starts (importing the command line);
* ``ladder``: once it says it is measuring the "auto" penalty windows;
* ``training``: ``--delay`` seconds after its first "training trials" line;
* ``artifacts``: once it says it saved the first model file of the best trials;
* ``claim-lock``: an ``hpo worker`` of a stored study that, having trained the ladder, waits to
  record its windows under the study's lock while this script holds it (SQLite's
  ``FILE.db.lock``, as a worker paused inside a claim would): the lock is taken when the worker
  starts the ladder, the signal sent ``--delay`` seconds after the worker is seen waiting for it
  (it has the lock file open: ``/proc/PID/fd``).

Per stage and revision it prints the median and the worst latency over ``--repeats`` runs, the
exit codes, whether any run printed a traceback, and the trials left RUNNING. A stop that takes
longer than ``--limit`` seconds is cut off (SIGKILL) and counted at the limit.

    python bench/stop_latency.py --before HEAD --repeats 3
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("start-up", "ladder", "training", "artifacts", "claim-lock")
STUDY = """[study]
name = "stop"
[data]
dataset = "sklearn:wine"
target = "target"
[cv]
folds = 5
shuffle = true
seed = 42
stratified = true
[model]
hidden = [32, 16]
epochs = {epochs}
[engine]
trials_per_batch = 8
[budget]
n_trials = 24
"""
MARKERS = {
    "ladder": 'measuring the "auto" penalty windows',
    "training": "training trials",
    "artifacts": "saved trial-",
    "claim-lock": 'measuring the "auto" penalty windows',
}


def _env(tree: Path | None) -> dict[str, str]:
    env = dict(os.environ, HPO_WORKERS="1", PYTHONUNBUFFERED="1")
    if tree is not None:
        env["PYTHONPATH"] = str(tree)  # ahead of the editable install of the working tree
    return env


def _running(db: Path) -> int:
    import sqlite3

    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        try:
            rows = conn.execute("SELECT COUNT(*) FROM trials WHERE state = 'RUNNING'").fetchall()
        except sqlite3.Error:  # stopped before Optuna made its tables
            return 0
    return int(rows[0][0])


def _waiting_for_the_lock(pid: int, lock: Path, seconds: float) -> bool:
    """Whether process ``pid`` comes to wait for ``lock`` (held here) within ``seconds``: it
    has the lock file open, which it does only while it takes the lock (a blocking ``flock``
    before the stops were requests, tries with a pause between them since)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if Path(os.readlink(fd)) == lock.resolve():
                    return True
            except OSError:  # closed meanwhile
                continue
        time.sleep(0.05)
    return False


def one_stop(stage: str, tree: Path | None, args: argparse.Namespace) -> dict[str, object]:
    """Start the stage's process, signal it at the stage, and time its exit."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "stop.toml").write_text(STUDY.format(epochs=args.epochs))
        env = _env(tree)
        hpo = [sys.executable, "-m", "hpo"]
        held = None
        if stage == "claim-lock":
            subprocess.run([*hpo, "create", "stop.toml"], cwd=work, env=env, check=True,
                           capture_output=True)  # fmt: skip
            command = [*hpo, "worker", "stop"]
        else:
            command = [*hpo, "run", "stop.toml"]
        started = time.monotonic()
        process = subprocess.Popen(command, cwd=work, env=env, stderr=subprocess.PIPE,
                                   stdout=subprocess.DEVNULL, text=True)  # fmt: skip
        lines: list[str] = []
        seen = threading.Event()

        def read() -> None:
            assert process.stderr is not None
            for line in process.stderr:
                lines.append(line)
                marker = MARKERS.get(stage)
                if marker and marker in line:
                    seen.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        if stage == "start-up":
            time.sleep(args.delay)
        else:
            if not seen.wait(args.limit * 4):
                process.kill()
                raise RuntimeError(f"{stage}: the stage never came:\n{''.join(lines)[-2000:]}")
            if stage == "claim-lock":  # hold the lock from now until the stop
                held = open(work / "hpo.db.lock", "a+")  # noqa: SIM115
                fcntl.flock(held, fcntl.LOCK_EX)
                if not _waiting_for_the_lock(process.pid, work / "hpo.db.lock", args.limit * 4):
                    process.kill()
                    raise RuntimeError("claim-lock: the worker never waited for the lock")
                time.sleep(args.delay)
            if stage == "training":
                time.sleep(args.delay)
        sent = time.monotonic()
        process.send_signal(getattr(signal, args.signal))
        try:
            code = process.wait(args.limit)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        seconds = min(time.monotonic() - sent, args.limit)
        reader.join(5)
        if held is not None:
            held.close()
        return {
            "seconds": seconds,
            "code": code,
            "traceback": any("Traceback" in line for line in lines),
            "running": _running(work / "hpo.db"),
            "since_start": sent - started,
        }


def measure(tree: Path | None, args: argparse.Namespace) -> dict[str, list[dict[str, object]]]:
    return {
        stage: [one_stop(stage, tree, args) for _ in range(args.repeats)] for stage in args.stages
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="HEAD", help="git revision of the 'before' hpo")
    parser.add_argument("--after-only", action="store_true", help="measure the working tree only")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--delay", type=float, default=1.0)
    parser.add_argument("--limit", type=float, default=60.0)
    parser.add_argument("--signal", default="SIGINT", choices=["SIGINT", "SIGTERM"])
    args = parser.parse_args()
    results: dict[str, dict[str, list[dict[str, object]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs: list[tuple[str, Path | None]] = [("after", None)]
        if not args.after_only:
            before = Path(tmp, "before-hpo")
            before.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before, "hpo"],
                                     check=True, capture_output=True).stdout  # fmt: skip
            subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
            runs.insert(0, ("before", before))
        for label, tree in runs:
            results[label] = measure(tree, args)
    print(f"{args.signal} to exit, seconds (median, worst of {args.repeats}); exit codes; "
          "tracebacks; trials left RUNNING")  # fmt: skip
    for stage in args.stages:
        cells = []
        for label in results:
            rows = results[label][stage]
            secs = [float(r["seconds"]) for r in rows]  # type: ignore[arg-type]
            cells.append(
                f"{label} {statistics.median(secs):.2f} / {max(secs):.2f} s, "
                f"exit {sorted({r['code'] for r in rows})}, "  # type: ignore[type-var]
                f"tracebacks {sum(bool(r['traceback']) for r in rows)}, "
                f"RUNNING {sum(int(r['running']) for r in rows)}"  # type: ignore[call-overload]
            )
        print(f"{stage:11} " + " | ".join(cells))


if __name__ == "__main__":
    main()
