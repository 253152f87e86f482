"""Seconds per trial: a builder's model against the built-in model of the same shape.

    python bench/builder_speed.py --data ../shared/data/jh-simple-dataset.csv [--epochs 50] [--trials 2]

The builder (`bench/builder_models.py:course_stack`) returns the course's network, Dense 50-25
relu then softmax, as a functional model; the built-in one is `hidden = [50, 25]`. Both train
the same plans with the same seeds on the course study's folds in one process, interleaved
(built-in, builder, built-in, ...) so machine drift hits both alike, on the reference engine
(the only one a builder's model runs on); the stacked engine's time for the built-in model is
printed for comparison. Also prints the accuracies: same network, same seeds, so they should
agree closely (initial weights differ: the builder's layers are created in another order).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

from hpo.data import load_dataset, make_fold_set
from hpo.engines import make_engine
from hpo.engines.builder import resolve
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
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--trials", type=int, default=2, help="timed trials per model")
    args = parser.parse_args()

    builtin = load_spec(args.study)
    builtin = builtin.replace(
        model=replace(builtin.model, epochs=args.epochs),
        engine=replace(builtin.engine, name="reference"),
    )
    folds = make_fold_set(load_dataset(builtin.data, path_override=args.data), builtin.cv)
    n_features, n_classes = folds.repeats[0][0].n_features, folds.n_classes
    own = resolve(
        builtin.replace(
            model=replace(
                builtin.model,
                builder="builder_models:course_stack",
                builder_path=str(ROOT / "bench"),
            ),
            search=replace(builtin.search, names=(), layers=()),
        ),
        n_features,
        n_classes,
    )
    plans = {
        "built-in": RegularizationPlan.uniform(2, l1=1e-4),
        "builder": RegularizationPlan.uniform(2, l1=1e-4, names=own.search.names),
    }
    specs = {"built-in": builtin, "builder": own}
    seconds: dict[str, list[float]] = {"built-in": [], "builder": []}
    accuracy: dict[str, list[float]] = {"built-in": [], "builder": []}
    engine = make_engine(builtin.engine)
    try:
        for which in ("built-in", "builder"):  # warm-up: the child process, TF start-up
            evaluate_plans(
                engine,
                [plans[which]],
                folds,
                model=replace(specs[which].model, epochs=1),
                seeds=[1],
            )
        for n in range(args.trials):
            for which in ("built-in", "builder"):
                started = time.perf_counter()
                (result,) = evaluate_plans(
                    engine,
                    [plans[which]],
                    folds,
                    model=specs[which].model,
                    seeds=[builtin.trial_seed(n)],
                )
                seconds[which].append(time.perf_counter() - started)
                accuracy[which].append(result.accuracy)
    finally:
        engine.close()
    stacked = make_engine(replace(builtin.engine, name="stacked"))
    try:
        evaluate_plans(stacked, [plans["built-in"]] * 8, folds, model=builtin.model, seeds=[1] * 8)
        started = time.perf_counter()
        evaluate_plans(stacked, [plans["built-in"]] * 8, folds, model=builtin.model, seeds=[2] * 8)
        stacked_per_trial = (time.perf_counter() - started) / 8
    finally:
        stacked.close()
    for which in ("built-in", "builder"):
        print(
            f"{which:>8} model, reference engine: {statistics.mean(seconds[which]):.2f} s per "
            f"trial ({', '.join(f'{s:.2f}' for s in seconds[which])}); accuracy "
            f"{', '.join(f'{a:.4f}' for a in accuracy[which])}"
        )
    ratio = statistics.mean(seconds["builder"]) / statistics.mean(seconds["built-in"])
    print(
        f"builder / built-in on the reference engine: {ratio:.2f}x the time per trial "
        f"({builtin.cv.folds} folds x {args.epochs} epochs, {n_features} inputs)"
    )
    print(
        f"built-in model, stacked engine (8 trials a batch): {stacked_per_trial:.2f} s per trial: "
        f"{statistics.mean(seconds['builder']) / stacked_per_trial:.0f}x faster than the builder's"
    )


if __name__ == "__main__":
    main()
