"""TPE's cost per trial at a long history, bounded and not, against the time of a trial; and
what the bound does to the search.

Cost (default): a SQLite study of the course search space holding ``--stored`` finished trials
(5,000); batches of 8 trials claimed and sampled exactly as a worker does (one snapshot of the
history per batch), with ``[sampler] max_history`` at its default and at 0 (no bound), in
milliseconds per trial; and the seconds of one course trial (stacked engine, 500 epochs, measured
here with ``hpo.engines.timing.time_trial``). The last line is sampling as a share of a trial.

    python bench/tpe.py --data ../shared/data/jh-simple-dataset.csv

Quality (``--quality``): the course study searched for 500 trials at ``--epochs`` (20) with the
smallest bound (``max_history = 250``, where it cuts the most) and without one, for several
sampler seeds; the best CV accuracy of each. The bound keeps TPE's "good" trials exactly, so the
two should differ by no more than seed noise.

    python bench/tpe.py --data ../shared/data/jh-simple-dataset.csv --quality --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import tomllib
import warnings
from pathlib import Path
from typing import Any

import optuna
from claims import fill

import hpo
from hpo.data import load_folds
from hpo.engines.timing import time_trial
from hpo.space import suggest_plan
from hpo.spec import apply_overrides, spec_from_dict
from hpo.study.creation import make_sampler
from hpo.study.sampler import note_sampled, sampling_batch

ROOT = Path(__file__).resolve().parent.parent
COURSE = tomllib.loads((ROOT / "studies" / "jh-simple.toml").read_text())


def course(**sampler: Any) -> dict[str, Any]:
    # Fixed ranges: this bench samples plans without training the "auto" windows' ladder.
    search = {**COURSE.get("search", {}), "l1": [1e-6, 1e-1], "l2": [1e-6, 1e-1]}
    return {**COURSE, "search": search, "sampler": {**COURSE.get("sampler", {}), **sampler}}


def sampling_ms(url: str, name: str, max_history: int, batches: int) -> float:
    """Milliseconds per trial to claim-and-sample batches of 8, as a worker does."""
    spec = spec_from_dict(course(max_history=max_history), origin="bench")
    study = optuna.load_study(study_name=name, storage=url, sampler=make_sampler(spec))
    study.get_trials(deepcopy=False)  # a worker reads the history once when it joins
    seconds, count = 0.0, 0
    for _ in range(batches):
        started = time.perf_counter()
        trials = [study.ask() for _ in range(8)]
        with sampling_batch(study):
            for trial in trials:
                suggest_plan(trial, spec.search)
                note_sampled(study, trial)
        seconds += time.perf_counter() - started
        count += len(trials)
        for trial in trials:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)  # keeps the history's size
    return 1000 * seconds / count


def cost(args: argparse.Namespace) -> None:
    default = spec_from_dict(course(), origin="bench").sampler.max_history
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/tpe.db"
        started = time.monotonic()
        fill(url, "tpe", args.stored, study=course())
        print(f"study of {args.stored} finished trials made in {time.monotonic() - started:.0f} s")
        bounded = sampling_ms(url, "tpe", default, args.batches)
        unbounded = sampling_ms(url, "tpe", 0, args.batches)
    print(f"sampling at {args.stored} trials: {bounded:.1f} ms per trial with max_history = "
          f"{default}, {unbounded:.1f} ms without a bound ({unbounded / bounded:.2f}x)")  # fmt: skip
    spec = apply_overrides(spec_from_dict(course(), origin="bench"), epochs=500, trials_per_batch=8)
    _, folds = load_folds(spec.data, spec.cv, path_override=args.data)
    trial = time_trial(spec, folds).seconds
    print(f"one course trial (stacked engine, 500 epochs, 8 a batch): {trial:.2f} s")
    print(f"sampling is {100 * bounded / 1000 / trial:.1f}% of a trial's time (without the bound "
          f"{100 * unbounded / 1000 / trial:.1f}%)")  # fmt: skip


def quality(args: argparse.Namespace) -> None:
    best: dict[int, list[float]] = {250: [], 0: []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for bound in best:
                study = hpo.optimize(
                    {**course(seed=seed, max_history=bound), "study": {"name": f"q{seed}-{bound}"}},
                    data=args.data,
                    storage=f"sqlite:///{tmp}/q.db",
                    n_trials=args.n_trials,
                    epochs=args.epochs,
                )
                best[bound].append(study.best_value)
                print(f"seed {seed}, max_history = {bound or 'none'}: best {study.best_value:.4f}",
                      flush=True)  # fmt: skip
    for bound, values in best.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"max_history = {bound or 'none'}: best {statistics.mean(values):.4f} "
              f"(std {spread:.4f} over {len(values)} seeds)")  # fmt: skip
    diff = statistics.mean(best[250]) - statistics.mean(best[0])
    print(f"bounded - unbounded best accuracy at {args.n_trials} trials: {diff:+.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="the course CSV")
    parser.add_argument("--stored", type=int, default=5000)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--quality", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--n-trials", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore")
    (quality if args.quality else cost)(args)


if __name__ == "__main__":
    main()
