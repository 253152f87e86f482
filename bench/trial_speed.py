"""Seconds per trial: the reference engine against the stacked engine, same plans, one run.

    python bench/trial_speed.py --study studies/jh-simple.toml \\
        --data ../shared/data/jh-simple-dataset.csv --epochs 20 \\
        --reference-trials 2 --stacked-trials 32 --trials-per-batch 8 --processes 2

Draws plans from the study's search space (Optuna random sampler, fixed ``--plan-seed``) with
the study's trial seeds; the reference engine trains the first ``--reference-trials`` of them, the
stacked engine all ``--stacked-trials`` (in batches of ``--trials-per-batch``, spread over
``--processes`` worker processes that start together, each with ``--threads`` TF threads).
Each engine runs in its own fresh process(es), one after the other, so each has the machine to
itself and reports its own peak RSS. Seconds include graph building and tracing, not importing
TensorFlow. The last line is the ratio of trials per hour (stacked / reference).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Job:
    """What one benchmark process trains."""

    engine: str
    plans: list[Any]  # RegularizationPlan
    seeds: list[int]
    folds: list[Any]  # Fold
    model: Any  # ModelSpec
    n_classes: int
    trials_per_batch: int
    threads: int
    shared_order: bool


@dataclass(frozen=True)
class Outcome:
    accuracies: list[float]
    diverged: int
    seconds: float
    peak_rss_mib: float


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_job(job: Job, barrier: Any | None) -> Outcome:
    """Train ``job`` in this (fresh) process: import TF first, then wait for the others."""
    from hpo.engines.keras_model import import_keras

    import_keras(job.threads)
    engine: Any
    if job.engine == "reference":
        from hpo.engines.reference import ReferenceEngine

        # In-process fits: no child-process start-up in the timing (favours the reference).
        engine = ReferenceEngine(isolate=False)
    else:
        from hpo.engines.stacked import StackedEngine

        engine = StackedEngine(
            shared_order=job.shared_order,
            threads=job.threads,
            trials_per_batch=job.trials_per_batch,
        )
    if barrier is not None:
        barrier.wait()
    started = time.perf_counter()
    results = []
    step = engine.trials_per_batch
    for first in range(0, len(job.plans), step):
        results += engine.evaluate(
            job.plans[first : first + step],
            job.folds,
            model=job.model,
            n_classes=job.n_classes,
            seeds=job.seeds[first : first + step],
        )
    seconds = time.perf_counter() - started
    engine.close()
    return Outcome(
        accuracies=[r.accuracy for r in results],
        diverged=sum(r.diverged for r in results),
        seconds=seconds,
        peak_rss_mib=peak_rss_mib(),
    )


def _child(job: Job, barrier: Any, queue: Any) -> None:
    queue.put(run_job(job, barrier))


def run_processes(jobs: Sequence[Job]) -> list[Outcome]:
    """Run each job in its own spawned process, all starting training at the same moment."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(jobs))
    queues = [context.Queue() for _ in jobs]
    processes = [
        context.Process(target=_child, args=(job, barrier, queue), daemon=True)
        for job, queue in zip(jobs, queues, strict=True)
    ]
    for process in processes:
        process.start()
    outcomes = [queue.get() for queue in queues]
    for process in processes:
        process.join()
    return outcomes


def draw_plans(spec: Any, n: int, seed: int) -> list[Any]:
    """``n`` plans from the study's search space, drawn by Optuna's random sampler."""
    import optuna

    from hpo.space import suggest_plan

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed))
    plans = []
    for _ in range(n):
        trial = study.ask()
        plans.append(suggest_plan(trial, spec.search))
        study.tell(trial, 0.0)
    return plans


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--study", default=str(ROOT / "studies" / "jh-simple.toml"))
    parser.add_argument("--data", help="CSV to read instead of the study's data source")
    parser.add_argument("--epochs", type=int, help="override [model] epochs")
    parser.add_argument("--reference-trials", type=int, default=1)
    parser.add_argument("--stacked-trials", type=int, default=16)
    parser.add_argument("--trials-per-batch", type=int, help="default: the study's [engine] value")
    parser.add_argument("--processes", type=int, default=1, help="stacked worker processes")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="TF threads per stacked process (0 = TensorFlow decides); the reference uses 0",
    )
    parser.add_argument(
        "--own-order", action="store_true", help="every member its own batch order and weights"
    )
    parser.add_argument("--plan-seed", type=int, default=0)
    args = parser.parse_args()
    if args.reference_trials < 1 or args.stacked_trials < 1 or args.processes < 1:
        parser.error("--reference-trials, --stacked-trials and --processes must be >= 1")

    from hpo.data import load_dataset, make_folds
    from hpo.spec import load_spec

    spec = load_spec(args.study)
    if args.epochs:
        spec = spec.replace(model=replace(spec.model, epochs=args.epochs))
    dataset = load_dataset(spec.data, path_override=args.data)
    folds = make_folds(dataset, spec.cv)
    n_classes = len(dataset.classes)
    batch = args.trials_per_batch or spec.engine.trials_per_batch
    n_plans = max(args.reference_trials, args.stacked_trials)
    plans = draw_plans(spec, n_plans, args.plan_seed)
    seeds = [spec.trial_seed(n) for n in range(n_plans)]
    print(
        f"{spec.name}: {dataset.n_rows} rows, {folds[0].n_features} features, {n_classes} classes, "
        f"{len(folds)} folds, hidden {list(spec.model.hidden)}, {spec.model.epochs} epochs, "
        f"batch size {spec.model.batch_size}, {spec.model.optimizer}; {machine()}"
    )

    def job(engine: str, which: Sequence[int], threads: int) -> Job:
        return Job(
            engine=engine,
            plans=[plans[i] for i in which],
            seeds=[seeds[i] for i in which],
            folds=folds,
            model=spec.model,
            n_classes=n_classes,
            trials_per_batch=batch,
            threads=threads,
            shared_order=not args.own_order,
        )

    (reference,) = run_processes([job("reference", range(args.reference_trials), 0)])
    reference_per_trial = reference.seconds / args.reference_trials

    # Whole batches, dealt round-robin to the processes.
    batches = [
        range(i, min(i + batch, args.stacked_trials)) for i in range(0, args.stacked_trials, batch)
    ]
    shares: list[list[int]] = [[] for _ in range(args.processes)]
    for n, members in enumerate(batches):
        shares[n % args.processes] += list(members)
    shares = [share for share in shares if share]
    outcomes = run_processes([job("stacked", share, args.threads) for share in shares])
    wall = max(o.seconds for o in outcomes)
    stacked_per_trial = wall / args.stacked_trials
    stacked_accuracies: dict[int, float] = {}
    for share, outcome in zip(shares, outcomes, strict=True):
        stacked_accuracies.update(zip(share, outcome.accuracies, strict=True))
    same = [stacked_accuracies[i] for i in range(args.reference_trials) if i in stacked_accuracies]

    layout = "own order" if args.own_order else "shared order"
    print(
        f"{'engine':<48} {'trials':>6} {'s/trial':>9} {'trials/h':>9} {'peak RSS MiB':>13} "
        f"{'mean acc':>9}"
    )
    print(
        f"{'reference (model.fit per fold, TF threads auto)':<48} {args.reference_trials:>6} "
        f"{reference_per_trial:>9.2f} {3600 / reference_per_trial:>9.1f} "
        f"{reference.peak_rss_mib:>13.0f} {statistics.mean(reference.accuracies):>9.4f}"
    )
    label = f"stacked (T={batch}, {layout}, {args.processes} proc x {args.threads} thr)"
    rss = " + ".join(f"{o.peak_rss_mib:.0f}" for o in outcomes)
    print(
        f"{label:<48} {args.stacked_trials:>6} {stacked_per_trial:>9.3f} "
        f"{3600 / stacked_per_trial:>9.1f} {rss:>13} "
        f"{statistics.mean(stacked_accuracies.values()):>9.4f}"
    )
    if same:
        gaps = [s - r for s, r in zip(same, reference.accuracies, strict=True)]
        error = ""
        if len(gaps) > 1:
            error = f", standard error {100 * statistics.stdev(gaps) / len(gaps) ** 0.5:.2f} pp"
        print(
            f"same {len(same)} plan(s): reference mean accuracy "
            f"{statistics.mean(reference.accuracies):.4f}, stacked {statistics.mean(same):.4f} "
            f"(stacked - reference {100 * statistics.mean(gaps):+.2f} pp{error})"
        )
    diverged = sum(o.diverged for o in outcomes)
    if diverged or reference.diverged:
        print(f"diverged trials: reference {reference.diverged}, stacked {diverged}")
    print(
        f"speed ratio (stacked trials per hour / reference): "
        f"{reference_per_trial / stacked_per_trial:.1f}x"
    )


if __name__ == "__main__":
    main()
