"""Which ``[pruner]`` reaches a good plan soonest: the default of ``[pruner] name``, measured.

The same study (the course data, stacked engine, checkpoints every ``--checkpoint-every``
epochs) runs once per pruner and per sampler seed, each in a fresh SQLite file, one process
(``HPO_WORKERS=1``). "Good" is within one noise std of the no-pruning study's final best for
that seed, where the noise std is the spread of a plan's CV score over training seeds: the best
plan of each no-pruning study is retrained with ``--noise-seeds`` fresh seeds (as ``hpo rerun``
does) and the stds are pooled.

Progress is seen batch by batch: the stacked engine trains a batch's trials in one graph and
tells them all when it ends (a pruned member stops training at its checkpoint, but is told with
the batch). Per pruner it prints the wall time from the study's first trial start to the end of
the first batch holding a good trial (per seed, with that batch's number, and their mean; a
study that never gets there counts its whole time, marked ``+``), the trial-epochs trained by
then (a load-independent measure of the same work), the final best, the whole study's time and
trial-epochs, and how many trials were pruned.

The last line is the ratio that decides the default: time with the chosen pruner / time
without pruning. The chosen one is the pruner with the lowest mean time that got there on every
seed and also with fewer trial-epochs than without pruning (the same batches in less wall time
is the machine's load, not the pruner), or ``none``. When no pruner gets there sooner (every
study reached it in the same batches), a line before it says which pruner runs the whole budget
cheapest with its final best within one noise std of no pruning.

Example (about 10 to 20 minutes on two busy cores):

    .venv/bin/python bench/pruning.py --epochs 150 --checkpoint-every 25 --n-trials 32 --seeds 3
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import optuna

from hpo.api import run_study
from hpo.data import load_folds
from hpo.engines import make_engine
from hpo.results.rerun import rerun_seeds, rerun_trials
from hpo.spec import ArtifactsSpec, BudgetSpec, PrunerSpec, StudySpec, load_spec
from hpo.study.creation import load_study
from hpo.study.record import best_trial

ROOT = Path(__file__).resolve().parents[1]

# The candidates, each with the settings it would get as the default (Optuna's defaults; the
# percentile pruner has none for `percentile`: 25 keeps the best quarter, Optuna's example).
CANDIDATES = {
    "none": PrunerSpec(name="none"),
    "median": PrunerSpec(name="median"),
    "percentile": PrunerSpec(name="percentile", percentile=25.0),
    "successive_halving": PrunerSpec(name="successive_halving"),
    "hyperband": PrunerSpec(name="hyperband"),
}


@dataclass(frozen=True)
class Batch:
    """Trials trained together (one stacked graph): they end together, so a study's progress
    is seen batch by batch."""

    end: float  # seconds from the study's first trial start to the batch's last tell
    best: float  # its best complete value (-inf if none completed)
    epochs: int  # epochs its members trained (a pruned member stops at its checkpoint)


@dataclass(frozen=True)
class Run:
    pruner: str
    seed: int
    best: float
    pruned: int
    batches: tuple[Batch, ...]

    @property
    def seconds(self) -> float:
        return self.batches[-1].end

    @property
    def epochs(self) -> int:
        return sum(b.epochs for b in self.batches)


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default=str(ROOT / "studies" / "jh-simple.toml"))
    parser.add_argument(
        "--data", default=str(ROOT.parent / "shared" / "data" / "jh-simple-dataset.csv")
    )
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--checkpoint-every", type=int, default=25)
    parser.add_argument("--n-trials", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=3, help="sampler seeds 1..N")
    parser.add_argument("--noise-seeds", type=int, default=3, help="training seeds per rerun")
    parser.add_argument("--pruners", default=",".join(CANDIDATES))
    return parser.parse_args()


def _spec(base: StudySpec, args: argparse.Namespace, pruner: str, seed: int) -> StudySpec:
    return base.replace(
        name=f"pruning-{pruner}-{seed}",
        model=dataclasses.replace(base.model, epochs=args.epochs),
        engine=dataclasses.replace(base.engine, checkpoint_every=args.checkpoint_every),
        sampler=dataclasses.replace(base.sampler, seed=seed),
        budget=BudgetSpec(n_trials=args.n_trials),
        artifacts=ArtifactsSpec(top_k=0, model="none"),
        pruner=CANDIDATES[pruner],
    )


def _run(spec: StudySpec, url: str, data: str, pruner: str, seed: int) -> Run:
    run_study(spec, data=data, storage=url, say=lambda _: None, warn=lambda _: None)
    study = load_study(spec.name, url)
    trials = sorted(
        (t for t in study.get_trials(deepcopy=False) if t.state.is_finished()),
        key=lambda t: t.number,
    )
    start = min(t.datetime_start for t in trials if t.datetime_start is not None)
    batches = []
    at = 0
    while at < len(trials):  # one claim is consecutive numbers, `trials_in_batch` of them
        members = trials[at : at + int(trials[at].user_attrs.get("trials_in_batch", 1))]
        at += len(members)
        ends = [t.datetime_complete for t in members if t.datetime_complete is not None]
        values = [
            t.value
            for t in members
            if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None
        ]
        batches.append(
            Batch(
                end=(max(ends) - start).total_seconds(),
                best=max(values, default=-math.inf),
                epochs=sum(int(t.user_attrs.get("epochs", 0)) for t in members),
            )
        )
    best = best_trial(study)
    return Run(
        pruner=pruner,
        seed=seed,
        best=math.nan if best is None or best.value is None else best.value,
        pruned=sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
        batches=tuple(batches),
    )


def _noise_std(spec: StudySpec, url: str, data: str, n_seeds: int) -> float:
    """The std over training seeds of the no-pruning study's best plan (``hpo rerun``'s way)."""
    study = load_study(spec.name, url)
    best = best_trial(study)
    assert best is not None
    _, folds = load_folds(spec.data, spec.cv, path_override=data)
    engine = make_engine(dataclasses.replace(spec.engine, checkpoint_every=0))
    try:
        (stats,) = rerun_trials(
            [best], spec, folds, engine, seeds=rerun_seeds(spec, n_seeds), batch=1
        )
    finally:
        engine.close()
    print(
        f"  noise: trial {best.number} ({best.value:.4f}) over {n_seeds} seeds: "
        + ", ".join(f"{a:.4f}" for a in stats.accuracies)
        + f"; std {stats.std:.4f}",
        flush=True,
    )
    return float(stats.std)


def _reached(run: Run, target: float) -> tuple[float, int, int | None]:
    """Seconds and trial-epochs until the end of the first batch with a trial at or above
    ``target``, and that batch's number (1-based); the whole run and None if none has one."""
    epochs = 0
    for number, batch in enumerate(run.batches, 1):
        epochs += batch.epochs
        if batch.best >= target:
            return batch.end, epochs, number
    return run.seconds, epochs, None


def main() -> None:
    args = _args()
    os.environ.setdefault("HPO_WORKERS", "1")  # one process trains, whatever the default becomes
    pruners = args.pruners.split(",")
    if "none" not in pruners:
        sys.exit("--pruners must include none (the reference)")
    base = load_spec(args.study)
    runs: dict[tuple[str, int], Run] = {}
    noise: dict[int, float] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hpo-pruning-") as folder:
        for seed in range(1, args.seeds + 1):
            # Seed by seed, every pruner in turn: a change in the machine's load hits all alike.
            for pruner in pruners:
                spec = _spec(base, args, pruner, seed)
                url = f"sqlite:///{Path(folder) / f'{spec.name}.db'}"
                run = _run(spec, url, args.data, pruner, seed)
                runs[pruner, seed] = run
                print(
                    f"seed {seed} {pruner:>18}: best {run.best:.4f}, {run.pruned:2d} pruned, "
                    f"{run.seconds:6.1f} s ({time.perf_counter() - started:.0f} s so far)",
                    flush=True,
                )
                if pruner == "none":
                    noise[seed] = _noise_std(spec, url, args.data, args.noise_seeds)
    sigma = math.sqrt(statistics.fmean(s * s for s in noise.values()))
    seeds = range(1, args.seeds + 1)
    print(
        f"\n{args.n_trials} trials x {args.epochs} epochs, checkpoints every "
        f"{args.checkpoint_every}, {args.seeds} seeds; noise std {sigma:.4f} (pooled); target "
        "per seed: the no-pruning best - one noise std: "
        + ", ".join(f"{runs['none', s].best - sigma:.4f}" for s in seeds)
    )
    means: dict[str, float] = {}
    everywhere: dict[str, bool] = {}
    for pruner in pruners:
        reached = [_reached(runs[pruner, s], runs["none", s].best - sigma) for s in seeds]
        means[pruner] = statistics.fmean(r[0] for r in reached)
        everywhere[pruner] = all(r[2] is not None for r in reached)
        marks = ", ".join(
            f"{seconds:.1f} s" + (f" (batch {number})" if number else "+ (never)")
            for seconds, _, number in reached
        )
        bests = [runs[pruner, s].best for s in seeds]
        print(
            f"{pruner:>18}: to target {means[pruner]:6.1f} s, "
            f"{statistics.fmean(r[1] for r in reached):6.0f} trial-epochs (per seed {marks}); "
            f"final best {statistics.fmean(bests):.4f} ({', '.join(f'{b:.4f}' for b in bests)}); "
            f"whole study {statistics.fmean(runs[pruner, s].seconds for s in seeds):.1f} s, "
            f"{statistics.fmean(runs[pruner, s].epochs for s in seeds):.0f} trial-epochs, "
            f"{sum(runs[pruner, s].pruned for s in seeds)} pruned"
        )
    # Faster only if it also got there with less training: the same batches trained in less
    # wall time is the machine's load, not the pruner.
    work = {
        p: statistics.fmean(_reached(runs[p, s], runs["none", s].best - sigma)[1] for s in seeds)
        for p in pruners
    }
    faster = [
        p
        for p in pruners
        if p != "none" and everywhere[p] and means[p] < means["none"] and work[p] < work["none"]
    ]
    chosen = min(faster, key=lambda p: means[p]) if faster else "none"
    if not faster:
        # A tie on the time to target (every study got there in the same batches): then what
        # the whole budget costs decides, among pruners whose final best stays within noise.
        whole = {p: statistics.fmean(runs[p, s].seconds for s in seeds) for p in pruners}
        best = {p: statistics.fmean(runs[p, s].best for s in seeds) for p in pruners}
        kept = [
            p
            for p in pruners
            if p != "none"
            and everywhere[p]
            and best[p] >= best["none"] - sigma
            and whole[p] < whole["none"]
        ]
        if kept:
            cheapest = min(kept, key=lambda p: whole[p])
            print(
                "no pruner reached the target sooner than none; the whole study, final best "
                f"within one noise std: {cheapest} / none: {whole[cheapest] / whole['none']:.2f}"
            )
    print(
        f"chosen: {chosen}; time to within one noise std of the no-pruning best, {chosen} / none: "
        f"{means[chosen] / means['none']:.2f}"
    )


if __name__ == "__main__":
    main()
