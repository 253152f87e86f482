"""Peak RSS of one worker process across many trials: does memory stay flat?

    python bench/memory.py --data ../shared/data/jh-simple-dataset.csv --trials 200 --epochs 5

Runs the study's worker loop (ask, train, tell) in this process on a throwaway SQLite study,
samples the resident set size after every batch, and prints the RSS after the first batch, after
the last, the peak, and the growth per 100 trials over the second half (a leak shows there).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import optuna

from hpo.data import load_dataset, make_fold_set
from hpo.engines import make_engine
from hpo.engines.keras_model import tensorflow_versions
from hpo.study.record import make_sampler
from hpo.study.storage import open_storage
from hpo.study.worker import optimize

ROOT = Path(__file__).resolve().parents[1]


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--study", default=str(ROOT / "studies" / "jh-simple.toml"))
    parser.add_argument("--data")
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--engine", choices=["reference", "stacked"])
    args = parser.parse_args()

    from hpo.spec import load_spec

    spec = load_spec(args.study)
    spec = spec.replace(model=replace(spec.model, epochs=args.epochs))
    if args.engine:
        spec = spec.replace(engine=replace(spec.engine, name=args.engine))
    folds = make_fold_set(load_dataset(spec.data, path_override=args.data), spec.cv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # The worker loop needs SQL storage (heartbeats, budget claims): a throwaway SQLite file.
    tmp = tempfile.mkdtemp()
    storage = open_storage(f"sqlite:///{tmp}/memory.db")
    study = optuna.create_study(
        study_name="memory", direction="maximize", sampler=make_sampler(spec), storage=storage
    )
    engine = make_engine(spec.engine)
    samples: list[tuple[int, float]] = []

    def sample(trial: optuna.Trial, result: object) -> None:
        samples.append((trial.number, rss_mib()))

    started = time.perf_counter()
    optimize(
        study,
        spec,
        folds,
        engine,
        n_trials=args.trials,
        versions=tensorflow_versions(),
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


if __name__ == "__main__":
    main()
