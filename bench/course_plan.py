"""Evaluate the course's own plan (L1 activity 1e-4 on both hidden layers) on the course study.

    python bench/course_plan.py --data ../shared/data/jh-simple-dataset.csv [--engine reference] [--epochs 500] [--seeds 1]

Prints each seed's out-of-fold accuracy, per-fold accuracies and seconds, then the mean.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

from hpo.data import load_dataset, make_fold_set
from hpo.engines import make_engine
from hpo.engines.evaluation import evaluate_plans
from hpo.space import RegularizationPlan
from hpo.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--study", default=str(ROOT / "studies" / "jh-simple.toml"))
    parser.add_argument("--data", help="CSV to read instead of the study's source")
    parser.add_argument("--engine", choices=["reference", "stacked"], default="reference")
    parser.add_argument("--epochs", type=int, help="override [model] epochs")
    parser.add_argument("--seeds", type=int, default=1, help="evaluate with this many seeds")
    args = parser.parse_args()

    spec = load_spec(args.study)
    if args.epochs:
        spec = spec.replace(model=replace(spec.model, epochs=args.epochs))
    spec = spec.replace(engine=replace(spec.engine, name=args.engine))
    folds = make_fold_set(load_dataset(spec.data, path_override=args.data), spec.cv)
    plan = RegularizationPlan.uniform(len(spec.model.hidden), l1=1e-4, placement="activity")
    seeds = [spec.trial_seed(n) for n in range(args.seeds)]
    engine = make_engine(spec.engine)
    started = time.perf_counter()
    results = evaluate_plans(engine, [plan] * len(seeds), folds, model=spec.model, seeds=seeds)
    wall = time.perf_counter() - started
    for seed, result in zip(seeds, results, strict=True):
        folds_text = " ".join(f"{a:.3f}" for a in result.fold_accuracies)
        print(
            f"seed {seed}: accuracy {result.accuracy:.4f} (folds {folds_text}), {result.seconds:.1f} s"
        )
    accuracies = [r.accuracy for r in results]
    spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    print(
        f"{args.engine} engine, {spec.model.epochs} epochs, {len(seeds)} seed(s): mean accuracy "
        f"{statistics.mean(accuracies):.4f} (sd {spread:.4f}), {wall:.1f} s wall, "
        f"{wall / len(seeds):.1f} s per trial"
    )


if __name__ == "__main__":
    main()
