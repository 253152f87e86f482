"""Memory of hpo, two ways: a worker across many trials, and ``hpo run`` as the table grows.

``worker`` (the default): does one worker's memory stay flat across many trials?

    python bench/memory.py worker --data ../shared/data/jh-simple-dataset.csv --trials 200 --epochs 5

Runs the study's worker loop (ask, train, tell) in this process on a throwaway SQLite study,
samples the resident set size after every batch, and prints the RSS after the first batch, after
the last, the peak, and the growth per 100 trials over the second half (a leak shows there).

``table``: does memory grow with the data alone, not with folds x copies?

    python bench/memory.py table --rows 20000 200000 1000000 --features 40

Generates synthetic tables (numeric features, a few gaps, a learnable 3-class target) as CSV
files (kept in ``--workdir`` for the next run), runs a real ``hpo run`` on each in a child
process (8 trials, 2 epochs, one worker, fresh SQLite storage) and prints its peak RSS, then the
marginal bytes per row between consecutive sizes. The data itself is ``features x 4`` bytes a row
as float32; the last line is the largest table's marginal bytes per row over that: the overhead
ratio (1x would be one float32 copy and nothing else). ``--tree DIR`` runs another checkout's
``hpo`` (e.g. ``git archive HEAD | tar -x -C /tmp/before``) to measure before and after.
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from hpo.lazy import lazy_import

if TYPE_CHECKING:
    import numpy as np
    import optuna
    import pandas as pd

    import hpo.data as hpo_data
    import hpo.engines as hpo_engines
    import hpo.engines.keras_model as keras_model
    import hpo.spec as hpo_spec
    import hpo.study.record as hpo_record
    import hpo.study.storage as hpo_storage
    import hpo.study.worker as hpo_worker
else:
    np = lazy_import("numpy")
    optuna = lazy_import("optuna")
    pd = lazy_import("pandas")
    hpo_data = lazy_import("hpo.data")
    hpo_engines = lazy_import("hpo.engines")
    keras_model = lazy_import("hpo.engines.keras_model")
    hpo_spec = lazy_import("hpo.spec")
    hpo_record = lazy_import("hpo.study.record")
    hpo_storage = lazy_import("hpo.study.storage")
    hpo_worker = lazy_import("hpo.study.worker")

ROOT = Path(__file__).resolve().parents[1]
N_CLASSES = 3


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**20


# --- worker: one process, many trials ------------------------------------------------------------


def worker_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="memory.py worker", description=__doc__)
    parser.add_argument("--study", default=str(ROOT / "studies" / "jh-simple.toml"))
    parser.add_argument("--data")
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--engine", choices=["reference", "stacked"])
    args = parser.parse_args(argv)

    spec = hpo_spec.load_spec(args.study)
    spec = spec.replace(model=replace(spec.model, epochs=args.epochs))
    if args.engine:
        spec = spec.replace(engine=replace(spec.engine, name=args.engine))
    folds = hpo_data.make_fold_set(
        hpo_data.load_dataset(spec.data, path_override=args.data), spec.cv
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # The worker loop needs SQL storage (heartbeats, budget claims): a throwaway SQLite file.
    tmp = tempfile.mkdtemp()
    storage = hpo_storage.open_storage(f"sqlite:///{tmp}/memory.db")
    study = optuna.create_study(
        study_name="memory",
        direction="maximize",
        sampler=hpo_record.make_sampler(spec),
        storage=storage,
    )
    engine = hpo_engines.make_engine(spec.engine)
    samples: list[tuple[int, float]] = []

    def sample(trial: optuna.Trial, result: object) -> None:
        samples.append((trial.number, rss_mib()))

    started = time.perf_counter()
    hpo_worker.optimize(
        study,
        spec,
        folds,
        engine,
        n_trials=args.trials,
        versions=keras_model.tensorflow_versions(),
        on_result=sample,
    )
    wall = time.perf_counter() - started
    half = samples[len(samples) // 2 :]
    (n0, r0), (n1, r1) = half[0], half[-1]
    growth = (r1 - r0) / max(1, n1 - n0) * 100
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{spec.engine.name} engine, {len(samples)} trials x {args.epochs} epochs in {wall:.0f} s: "
        f"RSS after first batch {samples[0][1]:.0f} MiB, after last {samples[-1][1]:.0f} MiB, "
        f"peak {peak:.0f} MiB; growth over the second half {growth:+.1f} MiB per 100 trials"
    )


# --- table: hpo run on generated tables of growing size --------------------------------------------


def write_table(path: Path, rows: int, features: int, seed: int = 0) -> None:
    """A learnable 3-class table: float features (1% gaps in every fifth column) and a target
    that a linear model gets mostly right. Written in slices so 1M rows need little memory."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(features, 2))
    names = [f"x{j}" for j in range(features)]
    tmp = path.with_suffix(".part")
    with tmp.open("w") as fh:
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            x = rng.normal(size=(n, features)).astype(np.float32)
            score = x @ weights
            target = (score[:, 0] > 0).astype(int) + (score[:, 1] > 0.8)
            frame = pd.DataFrame(x, columns=names)
            for j in range(0, features, 5):
                frame.iloc[rng.random(n) < 0.01, j] = np.nan
            frame["target"] = np.array(["a", "b", "c"])[target]
            frame.to_csv(fh, index=False, header=start == 0, float_format="%.5g")
    tmp.replace(path)


STUDY = """\
[study]
name = "memory-{rows}"

[data]
path = "{csv}"
target = "target"

[cv]
folds = 5
shuffle = true
seed = 42

[model]
hidden = [50, 25]
activation = "relu"
optimizer = "adam"
learning_rate = 0.001
epochs = {epochs}
batch_size = 32

[engine]
name = "{engine}"
trials_per_batch = 8

[sampler]
seed = 1

[budget]
n_trials = {trials}
"""


@dataclass(frozen=True)
class Peak:
    rows: int
    peak_mib: float  # the largest process's peak RSS (the kernel's high-water mark)
    # The largest sampled sum of RSS over the process and its children (every 0.2 s): what
    # `--workers N` would add; a short-lived forked child counts its parent's pages again.
    tree_mib: float
    seconds: float
    summary: str  # hpo run's "ran 8 trials ... in 12.3 s"


def _tree_rss_kib(pid: int) -> int:
    """RSS of ``pid`` and its descendants now (kB), from /proc."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            with open(f"/proc/{p}/task/{p}/children") as fh:
                todo += [int(c) for c in fh.read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def run_hpo(tree: Path, workdir: Path, csv: Path, rows: int, args: argparse.Namespace) -> Peak:
    """One ``hpo run`` in a child process; its peak RSS from ``wait4`` (children included)."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"run-{rows}-", dir=workdir))
    study = run_dir / "study.toml"
    study.write_text(
        STUDY.format(rows=rows, csv=csv, epochs=args.epochs, engine=args.engine, trials=args.trials)
    )
    env = dict(os.environ, PYTHONPATH=str(tree), HPO_WORKERS="1", TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, "-m", "hpo", "run", str(study)]
    command += ["--storage", f"sqlite:///{run_dir / 'hpo.db'}"]
    helptext = subprocess.run(
        [*command[:4], "--help"], env=env, capture_output=True, text=True, check=False
    ).stdout
    if "--workers" in helptext:
        command += ["--workers", "1"]
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, cwd=run_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    tree_peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal tree_peak
        while not done.is_set():
            tree_peak = max(tree_peak, _tree_rss_kib(process.pid))
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    sampler.join()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"hpo run on {rows} rows failed ({process.returncode}):\n{output}")
    ran = [line for line in output.splitlines() if line.startswith("ran ")]
    return Peak(rows, usage.ru_maxrss / 1024, tree_peak / 1024, seconds, ran[-1] if ran else "")


def table_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="memory.py table", description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 200_000, 1_000_000])
    parser.add_argument("--features", type=int, default=40)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--engine", choices=["reference", "stacked"], default="stacked")
    parser.add_argument("--tree", default=str(ROOT), help="the checkout whose hpo runs")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "hpo-memory"))
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tree = Path(args.tree).resolve()
    data_bytes = args.features * 4
    print(
        f"hpo run ({tree}), {args.engine} engine, {args.trials} trials x {args.epochs} epochs, "
        f"5 folds, {args.features} numeric features ({data_bytes} bytes a row as float32)"
    )
    peaks: list[Peak] = []
    for rows in sorted(args.rows):
        csv = workdir / f"table-{rows}x{args.features}.csv"
        if not csv.exists():
            write_table(csv, rows, args.features)
        peak = run_hpo(tree, workdir, csv, rows, args)
        peaks.append(peak)
        print(
            f"{rows:>9} rows: peak RSS {peak.peak_mib:7.0f} MiB ({peak.peak_mib / 1024:.2f} GiB), "
            f"process tree {peak.tree_mib:7.0f} MiB, {peak.seconds:.0f} s ({peak.summary})"
        )
    marginal = []
    for small, large in itertools.pairwise(peaks):
        per_row = (large.peak_mib - small.peak_mib) * 2**20 / (large.rows - small.rows)
        marginal.append(per_row)
        print(
            f"{small.rows} -> {large.rows} rows: {per_row:.0f} bytes per row "
            f"({per_row / data_bytes:.1f}x the float32 data)"
        )
    if marginal:
        print(
            f"overhead: {marginal[-1]:.0f} bytes per row over {data_bytes} bytes of float32 data "
            f"= {marginal[-1] / data_bytes:.2f}x"
        )


def main() -> None:
    argv = sys.argv[1:]
    if argv and argv[0] == "table":
        table_main(argv[1:])
    else:  # `worker`, or the worker's flags alone as before
        worker_main(argv[1:] if argv and argv[0] == "worker" else argv)


if __name__ == "__main__":
    main()
