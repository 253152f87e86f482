"""What a run costs after its last trial, and what resuming a finished study costs: the hpo of
git revision ``--before`` (default ``5f1e36c``, the commit before the run-end speed-ups) against
the working tree.

Each way runs the README's first command, ``hpo run studies/wine.toml`` (24 trials of the
offline wine study on SQLite, one process per usable core), in a fresh temporary folder of its
own: a copy of the study file, the default storage ``sqlite:///hpo.db`` and its artifact folder
``hpo-artifacts/`` beside it. Then it runs the same command again in that folder: the study is
finished, so it has 0 trials to run ("resume"). The before hpo is a ``git worktree`` of the
revision in a temporary folder; each way runs with ``PYTHONPATH`` pointing at its tree (ahead of
any editable install). The two ways alternate, ``--repeats`` times, and the order flips each
round, so load from other processes on a shared machine falls on both alike.

Per way it reports, as the median and each run:

* ``wall``: seconds from starting the command to its exit;
* ``after last trial``: seconds from the last trial's result line (``trial N: accuracy ...``,
  time-stamped by this script as it arrives on the pipe) to the process's exit: the model
  files, the summary and the shutdown of the run's processes; of which ``to last file``: from
  that line to the last ``saved trial-...`` line (the final best trials' model files);
* ``cpu``: user + system CPU seconds of the command and every process it waited for
  (``resource.getrusage(RUSAGE_CHILDREN)`` before and after);
* the same wall and CPU for the resume;

and the ratio after / before of each median on its last line.

    python bench/run_end.py --before 5f1e36c --repeats 3
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDY_FILE = ROOT / "studies" / "wine.toml"
# The line each trial's result is printed as, by every revision since the stacked engine.
TRIAL_LINE = re.compile(r"\btrial \d+: accuracy \d")
# The line each model file of the final best trials is announced with.
FILE_LINE = re.compile(r"\bsaved trial-\d+")


@dataclass
class Timed:
    """One command: wall seconds, seconds from its last trial line to its exit (None when it
    printed none) and to its last model-file line (None without one), CPU seconds, exit code,
    and its output for a failure's message."""

    wall: float
    after_last_trial: float | None
    to_last_file: float | None
    cpu: float
    code: int
    output: str


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], folder: Path, tree: Path) -> Timed:
    """Run ``command`` in ``folder`` with ``tree`` first on ``PYTHONPATH``; time-stamp each
    output line as it arrives."""
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "PYTHONUNBUFFERED": "1",  # lines reach the pipe when printed, not when a buffer fills
        "PYTHONWARNINGS": "ignore",
        "HPO_CACHE_DIR": str(folder / "cache"),
    }
    env.pop("HPO_STORAGE", None)  # the README's default storage, sqlite:///hpo.db in `folder`
    lines: list[tuple[float, str]] = []
    cpu_before = _children_cpu()
    started = time.monotonic()
    process = subprocess.Popen(
        command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append((time.monotonic(), line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    code = process.wait()
    ended = time.monotonic()
    cpu = _children_cpu() - cpu_before
    reader.join(timeout=10)
    trial_times = [at for at, line in lines if TRIAL_LINE.search(line)]
    file_times = [at for at, line in lines if FILE_LINE.search(line)]
    return Timed(
        wall=ended - started,
        after_last_trial=ended - trial_times[-1] if trial_times else None,
        to_last_file=file_times[-1] - trial_times[-1] if trial_times and file_times else None,
        cpu=cpu,
        code=code,
        output="".join(line for _, line in lines),
    )


def one_round(tree: Path, work: Path, label: str, round_no: int) -> tuple[Timed, Timed]:
    """The README's first command in a fresh folder, then the same command again there."""
    folder = work / f"{label}-{round_no}"
    (folder / "studies").mkdir(parents=True)
    shutil.copy(STUDY_FILE, folder / "studies" / "wine.toml")
    command = [sys.executable, "-m", "hpo", "run", "studies/wine.toml"]
    results = []
    for stage in ("run", "resume"):
        result = timed(command, folder, tree)
        if result.code != 0:
            sys.exit(f"{label} {stage} exited {result.code}:\n{result.output[-3000:]}")
        results.append(result)
    if results[0].after_last_trial is None:
        sys.exit(
            f"{label}: no 'trial N: accuracy' line in its output:\n{results[0].output[-3000:]}"
        )
    shutil.rmtree(folder)
    return results[0], results[1]


def _figures(values: list[float]) -> str:
    runs = ", ".join(f"{v:.1f}" for v in values)
    return f"{statistics.median(values):5.1f} s ({runs})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="5f1e36c", help="git revision of the 'before' hpo")
    parser.add_argument("--repeats", type=int, default=3, help="runs per way, alternated")
    args = parser.parse_args()
    if args.repeats < 1:
        sys.exit("--repeats must be 1 or more")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory(prefix="hpo-run-end-") as tmp:
        work = Path(tmp)
        before_tree = work / "before-tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before_tree), args.before],
            check=True,
            capture_output=True,
        )
        trees = {"before": before_tree, "after": ROOT}
        runs: dict[str, list[Timed]] = {"before": [], "after": []}
        resumes: dict[str, list[Timed]] = {"before": [], "after": []}
        try:
            for round_no in range(args.repeats):
                order = ("before", "after") if round_no % 2 == 0 else ("after", "before")
                for label in order:
                    run, resume = one_round(trees[label], work, label, round_no)
                    runs[label].append(run)
                    resumes[label].append(resume)
                    print(
                        f"round {round_no + 1} {label:>6}: run {run.wall:.1f} s wall, "
                        f"{run.after_last_trial:.1f} s after the last trial "
                        f"({run.to_last_file or 0.0:.1f} s to its last file), {run.cpu:.1f} s CPU; "
                        f"resume {resume.wall:.1f} s wall, {resume.cpu:.1f} s CPU",
                        flush=True,
                    )
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before_tree)],
                check=False,
                capture_output=True,
            )
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    medians: dict[str, dict[str, float]] = {}
    for label in ("before", "after"):
        figures = {
            "run wall": [r.wall for r in runs[label]],
            "after last trial": [r.after_last_trial or 0.0 for r in runs[label]],
            "to last file": [r.to_last_file or 0.0 for r in runs[label]],
            "run cpu": [r.cpu for r in runs[label]],
            "resume wall": [r.wall for r in resumes[label]],
            "resume cpu": [r.cpu for r in resumes[label]],
        }
        medians[label] = {name: statistics.median(v) for name, v in figures.items()}
        share = medians[label]["after last trial"] / medians[label]["run wall"]
        print(
            f"{label:>6} ({args.before if label == 'before' else 'working tree'}):\n"
            f"  run:    wall {_figures(figures['run wall'])}; after the last trial "
            f"{_figures(figures['after last trial'])}, {share:.0%} of the run "
            f"(to its last model file {_figures(figures['to last file'])}); "
            f"CPU {_figures(figures['run cpu'])}\n"
            f"  resume: wall {_figures(figures['resume wall'])}; "
            f"CPU {_figures(figures['resume cpu'])}"
        )
    ratios = ", ".join(
        f"{name} {medians['after'][name] / medians['before'][name]:.2f}x"
        for name in (
            "run wall",
            "after last trial",
            "to last file",
            "run cpu",
            "resume wall",
            "resume cpu",
        )
    )
    print(f"after / before (medians of {args.repeats}): {ratios}")


if __name__ == "__main__":
    main()
