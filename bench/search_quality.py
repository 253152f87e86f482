"""How good is hpo's search? Holdout gain of the plan each search picks, as a share of the
attainable gain, against random search and other samplers, over budgets and sampler seeds.

Per task (``bench/sq_tasks.py``: the course data at 500 epochs, a wider network on it, digits
on a small subset, a task with many pure-noise features, wine), all offline and seeded:

1. ``ladder`` and ``sweep`` (``bench/sq_probe.py``): each penalty kind alone at alphas 1e-8 ... 1,
   and random plans over a range wider than any method searches, each trained beside the
   unregularized network with the same initial weights and batch order: where penalties start
   to matter, where they collapse the network, and the share of no-op plans (predictions equal
   to the baseline's on every row) and collapsed ones (one class predicted) in any sub-range.
2. ``attainable``: the sweep's best plans by CV and the baseline, trained on all searched rows
   with ``--holdout-seeds`` seeds and scored on the held-out rows; the attainable gain is the
   best of them minus the baseline (both means over the same seeds).
3. ``search``: each method (hpo's default; the search before this benchmark; TPE with a random
   start-up; random search; Optuna's QMC sampler) at each budget and sampler seed, as a real
   study run by hpo's worker loop (claims, batches, sampler, records) in a SQLite file. The plan
   it picks (its best trial, the baseline included) is scored on the holdout like the others.

The report prints one table (task x budget x method: median and spread over seeds of the picked
plan's holdout gain as a share of the attainable gain; no-op and collapse shares; trials the
stop rule saved) and writes the plot ``docs/img/search_quality.png``.

Results go to a JSON-lines file in ``--workdir`` as each job ends, so a run can be stopped and
resumed; ``report`` reads only that file. Jobs run in ``--processes`` processes (default: one per
core), each training with one thread.

    .venv/bin/python bench/search_quality.py run --phases ladder sweep attainable search
    .venv/bin/python bench/search_quality.py report
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sq_probe
from sq_tasks import ROOT, TASKS

DEFAULT_WORKDIR = Path(os.environ.get("HPO_BENCH_DIR", Path.home() / ".cache" / "hpo-bench")) / (
    "search_quality"
)


@dataclass(frozen=True)
class Job:
    phase: str
    task: str
    key: str
    args: dict[str, Any]


# --- inside a worker process ------------------------------------------------------------------

_CACHE: dict[str, Any] = {}


def _setup(task_name: str) -> dict[str, Any]:
    """The task's spec, folds, holdout fold set and engine, made once per process."""
    if task_name in _CACHE:
        return _CACHE[task_name]
    from hpo.data import holdout_fold_set, load_holdout, make_fold_set
    from hpo.engines import make_engine
    from hpo.spec import spec_from_dict

    task = TASKS[task_name]
    spec = spec_from_dict(task.study, origin=f"bench task {task_name}")
    frame = task.frame()
    search, held = load_holdout(spec.data, spec.cv, frame=frame)
    folds = make_fold_set(search, spec.cv)
    holdout = holdout_fold_set(search, held)
    engine = make_engine(spec.engine)
    _CACHE[task_name] = {
        "spec": spec,
        "frame": frame,
        "folds": folds,
        "holdout": holdout,
        "engine": engine,
    }
    return _CACHE[task_name]


def _plan(coeffs: dict[str, list[float]]) -> Any:
    from hpo.space import RegularizationPlan

    return RegularizationPlan.from_dict(coeffs)


def _paired(task_name: str, plans: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Plans trained in one stacked batch beside the baseline (same initial weights, order)."""
    from hpo.engines.evaluation import evaluate_plans

    s = _setup(task_name)
    n_layers = len(s["spec"].model.hidden)
    zero = {k: [0.0] * n_layers for k in sq_probe.KINDS}
    results = evaluate_plans(
        s["engine"],
        [_plan(zero)] + [_plan(p["coeffs"]) for p in plans],
        s["folds"],
        model=s["spec"].model,
        seeds=[seed] * (len(plans) + 1),
    )
    records = sq_probe.paired_records(plans, results[1:], results[0], s["folds"].n_classes)
    base = results[0]
    return [
        {
            "seed": seed,
            "baseline": {
                "accuracy": float(base.accuracy),
                "predictions": base.predictions.tolist(),
            },
        },
        *records,
    ]


def _holdout(task_name: str, plans: dict[str, dict[str, list[float]]], seeds: list[int]) -> dict:
    """Each plan trained on every searched row with each seed, scored on the held-out rows."""
    import numpy as np

    from hpo.engines.evaluation import evaluate_plans

    s = _setup(task_name)
    names = list(plans)
    fold = s["holdout"].repeats[0][0]
    out: dict[str, dict[str, list]] = {n: {"accuracies": [], "hits": []} for n in names}
    for seed in seeds:
        results = evaluate_plans(
            s["engine"],
            [_plan(plans[n]) for n in names],
            s["holdout"],
            model=s["spec"].model,
            seeds=[seed] * len(names),
        )
        for name, result in zip(names, results, strict=True):
            hits = np.asarray(result.predictions)[fold.valid_rows] == fold.y_valid
            out[name]["accuracies"].append(float(result.accuracy))
            out[name]["hits"].append(hits.astype(int).tolist())
    return out


def run_job(job: Job) -> dict[str, Any]:
    started = time.monotonic()
    if job.phase in ("ladder", "sweep"):
        records = _paired(job.task, job.args["plans"], job.args["seed"])
        result: Any = {"baseline": records[0], "plans": records[1:]}
    elif job.phase in ("attainable", "picked"):
        result = _holdout(job.task, job.args["plans"], job.args["seeds"])
    elif job.phase == "search":
        import sq_search

        result = sq_search.run_search(_setup(job.task), **job.args)
    else:
        raise ValueError(job.phase)
    return {
        "phase": job.phase,
        "task": job.task,
        "key": job.key,
        "seconds": time.monotonic() - started,
        "result": result,
    }


def _init_worker() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import warnings

    warnings.simplefilter("ignore")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)


# --- the parent: jobs and the results file ----------------------------------------------------


def read_results(workdir: Path) -> dict[str, dict[str, Any]]:
    path = workdir / "results.jsonl"
    out: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                out[record["key"]] = record
    return out


def n_layers(task: str) -> int:
    return len(TASKS[task].study["model"]["hidden"])


def chunks(items: list[Any], size: int) -> Iterator[tuple[int, list[Any]]]:
    for i in range(0, len(items), size):
        yield i // size, items[i : i + size]


def probe_jobs(phase: str, task: str, sweep: int) -> list[Job]:
    if phase == "ladder":
        plans = sq_probe.ladder_plans(n_layers(task))
    else:
        plans = sq_probe.sweep_plans(sweep, n_layers(task))
    jobs = []
    for i, chunk in chunks(plans, sq_probe.PER_BATCH):
        seed = 1_000 + i if phase == "ladder" else 2_000 + i
        jobs.append(Job(phase, task, f"{phase}/{task}/{i}", {"plans": chunk, "seed": seed}))
    return jobs


BUDGETS = (16, 32, 64)
HOLDOUT_SEEDS = (101, 102, 103, 104, 105)
TOP_SWEEP = 5


def search_jobs(task: str, methods: list[str], seeds: list[int]) -> list[Job]:
    import sq_search

    jobs = []
    for method in methods:
        if method in sq_search.PREFIX_METHODS:
            budgets = [max(BUDGETS)]
        elif method in ("before", "hpo-random-startup"):
            budgets = [16, 32]
        else:
            budgets = list(BUDGETS)
        for seed in seeds:
            for budget in budgets:
                args = {"method": method, "budget": budget, "seed": seed,
                        "paired": budget == max(budgets)}  # fmt: skip
                jobs.append(Job("search", task, f"search/{task}/{method}/{budget}/{seed}", args))
    return jobs


def plan_key(coeffs: dict[str, list[float]]) -> str:
    return json.dumps({k: coeffs[k] for k in sq_probe.KINDS}, sort_keys=True)


def zero_coeffs(task: str) -> dict[str, list[float]]:
    return {k: [0.0] * n_layers(task) for k in sq_probe.KINDS}


def picks(record: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The plan a search picks at each budget it stands for: its best complete trial (the
    baseline included) among its first ``budget`` trials; and at the early stop, if any."""
    result = record["result"]
    trials = sorted(result["trials"], key=lambda t: t["number"])
    budgets = [b for b in BUDGETS if b <= result["budget"]]
    if result["method"] not in ("random", "sobol"):
        budgets = [result["budget"]]
    out: dict[int, dict[str, Any]] = {}
    for budget in budgets:
        done = [t for t in trials[:budget] if t["state"] == "COMPLETE" and t["coeffs"]]
        out[budget] = max(done, key=lambda t: t["value"])
    stop = result.get("stop") or {}
    if stop.get("stopped_at"):
        done = [t for t in trials[: stop["stopped_at"]] if t["state"] == "COMPLETE" and t["coeffs"]]
        out[-stop["stopped_at"]] = max(done, key=lambda t: t["value"])  # negative: at the stop
    return out


def sweep_rows(results: dict[str, dict[str, Any]], task: str) -> list[dict[str, Any]]:
    return [
        p
        for r in results.values()
        if r["phase"] == "sweep" and r["task"] == task
        for p in r["result"]["plans"]
    ]


def holdout_jobs(results: dict[str, dict[str, Any]], task: str, phase: str) -> list[Job]:
    """Holdout scores of the plans to judge: the sweep's best (``attainable``) or what each
    search picked (``picked``), the baseline with them, in stacked batches of 8."""
    plans: dict[str, dict[str, list[float]]] = {plan_key(zero_coeffs(task)): zero_coeffs(task)}
    if phase == "attainable":
        best = sorted(sweep_rows(results, task), key=lambda p: -p["accuracy"])[:TOP_SWEEP]
        for p in best:
            plans[plan_key(p["coeffs"])] = p["coeffs"]
    else:
        for r in results.values():
            if r["phase"] == "search" and r["task"] == task:
                for t in picks(r).values():
                    plans[plan_key(t["coeffs"])] = t["coeffs"]
    done = {
        k
        for r in results.values()
        if r["phase"] in ("attainable", "picked") and r["task"] == task
        for k in r["result"]
    }
    todo = [k for k in plans if k not in done]
    return [
        Job(
            phase,
            task,
            f"{phase}/{task}/{hashlib.sha1(''.join(chunk).encode()).hexdigest()[:12]}",
            {"plans": {k: plans[k] for k in chunk}, "seeds": list(HOLDOUT_SEEDS)},
        )
        for _, chunk in chunks(todo, 8)
    ]


def run_jobs(jobs: list[Job], workdir: Path, processes: int) -> None:
    done = read_results(workdir)
    todo = [j for j in jobs if j.key not in done]
    if not todo:
        return
    print(f"{len(todo)} jobs to run ({len(jobs) - len(todo)} done before)", flush=True)
    path = workdir / "results.jsonl"
    started = time.monotonic()
    with ProcessPoolExecutor(
        processes, mp_context=get_context("spawn"), initializer=_init_worker
    ) as pool:
        pending = {pool.submit(run_job, j): j for j in todo}
        finished = 0
        while pending:
            ready, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in ready:
                job = pending.pop(future)
                record = future.result()
                with path.open("a") as out:
                    out.write(json.dumps(record) + "\n")
                finished += 1
                print(
                    f"[{time.monotonic() - started:7.0f} s] {finished}/{len(todo)} {job.key} "
                    f"({record['seconds']:.0f} s)",
                    flush=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    run.add_argument("--phases", nargs="+", default=["ladder", "sweep"])
    run.add_argument("--sweep", type=int, default=256)
    run.add_argument("--methods", nargs="+", default=["hpo", "hpo-random-startup", "before",
                                                       "random", "sobol"])  # fmt: skip
    run.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    run.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    run.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    report = sub.add_parser("report")
    report.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    report.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "search_quality.png")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.command == "run":
        for phase in args.phases:
            if phase in ("ladder", "sweep"):
                jobs = [j for t in args.tasks for j in probe_jobs(phase, t, args.sweep)]
            elif phase == "search":
                jobs = [j for t in args.tasks for j in search_jobs(t, args.methods, args.seeds)]
            else:
                results = read_results(args.workdir)
                jobs = [j for t in args.tasks for j in holdout_jobs(results, t, phase)]
            run_jobs(jobs, args.workdir, args.processes)
    else:
        import sq_report

        sq_report.report(read_results(args.workdir), args.plot)


if __name__ == "__main__":
    main()
