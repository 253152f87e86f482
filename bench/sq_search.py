"""One search of ``bench/search_quality.py``: a real hpo study (SQLite, hpo's worker loop, its
claims, batches and records) with one method, budget and sampler seed.

Methods (every one sees the same data, folds, network and training seeds for a given seed):

* ``hpo``: the defaults: ``"auto"`` alpha windows, start-up a third of the budget (at most 10)
  from a scrambled Sobol sequence, then TPE;
* ``hpo-random-startup``: the same with ``[sampler] startup = "random"``;
* ``before``: the search before this benchmark: alphas log-uniform on 1e-6 ... 1e-1, 10 random
  start-up trials whatever the budget;
* ``random``: Optuna's ``RandomSampler`` over the ``"auto"`` space;
* ``sobol``: hpo's Sobol design for every trial (no TPE) over the ``"auto"`` space.

Returns every trial (number, state, value, fold accuracies, plan, who proposed it) and, with
``paired``, each trial's no-op and collapse flags: the unregularized network is trained once
per batch with the batch's seed (the stacked engine's batches share initial weights and batch
order), and a trial whose predictions equal it on every row is a no-op.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

METHODS = ("hpo", "hpo-random-startup", "before", "random", "sobol")
# Methods whose budget-b result is the first b trials of one longer run (no budget-dependent
# setting): run once at the largest budget.
PREFIX_METHODS = ("random", "sobol")


def method_study(study: dict[str, Any], method: str, budget: int, seed: int) -> dict[str, Any]:
    raw = copy.deepcopy(study)
    raw["study"] = {"name": f"{raw['study']['name']}-{method}-{budget}-{seed}"}
    raw["sampler"] = {"seed": seed}
    raw["budget"] = {"n_trials": budget}
    if method == "before":
        raw["search"] = {"l1": {"low": 1e-6, "high": 1e-1}, "l2": {"low": 1e-6, "high": 1e-1}}
        raw["sampler"].update({"n_startup_trials": 10, "startup": "random"})
    elif method == "hpo-random-startup":
        raw["sampler"]["startup"] = "random"
    elif method == "sobol":
        raw["sampler"].update({"n_startup_trials": budget + 1, "startup": "qmc"})
    return raw


def run_search(
    setup: dict[str, Any], *, method: str, budget: int, seed: int, paired: bool = False
) -> dict[str, Any]:
    import numpy as np
    import optuna

    from hpo.engines.evaluation import evaluate_plans
    from hpo.space import RegularizationPlan
    from hpo.spec import spec_from_dict
    from hpo.study.creation import create_or_load_study
    from hpo.study.record import stored_plan
    from hpo.study.session import train
    from hpo.study.storage import open_storage
    from hpo.study.windows import stored_windows

    base = setup["spec"]
    raw = method_study(_plain(base), method, budget, seed)
    spec = spec_from_dict(raw, origin=f"bench {method}")
    results: dict[int, Any] = {}

    class Keep:
        def __call__(self, trial: Any, result: Any) -> None:
            results[trial.number] = result

        def finalize(self, study: Any) -> int:
            return 0

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        study, _ = create_or_load_study(spec, open_storage(url, access="create"))
        if method == "random":
            study.sampler = optuna.samplers.RandomSampler(seed=seed)
        from hpo.study import worker

        startup = worker._startup
        if method == "before":
            # Before this benchmark a claim took a whole batch whatever the start-up, and the
            # start-up lasted until 10 trials had *finished* (Optuna's TPE's own rule).
            worker._startup = lambda study: 0  # type: ignore[assignment]
            study.sampler = _before_sampler(spec, seed)
        try:
            train(study, spec, setup["folds"], storage_url=url, n_trials=budget, timeout=None,
                  recorder=Keep())  # fmt: skip
        finally:
            worker._startup = startup
        trials = study.get_trials(deepcopy=False)
        windows = stored_windows(study)
        probe = study.user_attrs.get("hpo_penalty_windows", {})
    out = []
    for t in trials:
        plan = stored_plan(t)
        out.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "folds": t.user_attrs.get("fold_accuracies"),
                "seed": t.user_attrs.get("seed"),
                "baseline": bool(t.user_attrs.get("baseline", False)),
                "proposed_by": t.user_attrs.get("proposed_by"),
                "params": t.params,
                "coeffs": None if plan is None else plan.to_dict(),
                "collapsed": None
                if t.number not in results
                else bool(len(np.unique(results[t.number].predictions)) == 1),
            }
        )
    if paired:
        zero = RegularizationPlan.uniform(len(spec.model.hidden))
        by_seed: dict[int, list[dict[str, Any]]] = {}
        for row in out:
            if row["seed"] is not None and row["number"] in results:
                by_seed.setdefault(int(row["seed"]), []).append(row)
        for batch_seed, rows in by_seed.items():
            (base_result,) = evaluate_plans(
                setup["engine"], [zero], setup["folds"], model=spec.model, seeds=[batch_seed]
            )
            for row in rows:
                same = np.array_equal(results[row["number"]].predictions, base_result.predictions)
                row["noop"] = bool(same and not row["baseline"])
    stop = None
    if method.startswith("hpo") and windows is not None:
        stop = replay_stop(spec, windows, trials)
    return {
        "method": method,
        "budget": budget,
        "seed": seed,
        "trials": out,
        "windows": None if windows is None else windows.to_dict(),
        "probe_seconds": probe.get("seconds"),
        "stop": stop,
    }


def replay_stop(spec: Any, windows: Any, trials: list[Any]) -> dict[str, Any] | None:
    """What ``[budget] early_stop = "within-noise"`` would have done: the rule evaluated where
    a single worker checks it (before each claim, i.e. after each batch) on the trials finished
    by then, which are exactly these trials' prefixes. The first batch end where it stops."""
    from dataclasses import replace

    from hpo.spec import startup_trials
    from hpo.study.stopping import check_stop

    spec = spec.replace(search=replace(spec.search, windows=windows))
    ordered = sorted(trials, key=lambda t: t.number)
    ends = []
    for i, t in enumerate(ordered[:-1]):
        if t.user_attrs.get("seed") != ordered[i + 1].user_attrs.get("seed"):
            ends.append(i + 1)  # a batch ends here (a batch shares its seed)
    startup = startup_trials(spec)
    checks = []
    for end in ends:
        check = check_stop(ordered[:end], spec, startup=startup)
        if check is None:
            continue
        checks.append({"trials": end, "bound": check.bound, "noise": check.noise})
        if check.stop:
            return {"stopped_at": end, "checks": checks}
    return {"stopped_at": None, "checks": checks}


def _before_sampler(spec: Any, seed: int) -> Any:
    """hpo's sampler as it decided the start-up before: by finished trials, at random."""
    import optuna

    from hpo.study.sampler import HistorySampler

    class Before(HistorySampler):
        def _starting(self, view: Any, trial: Any) -> bool:
            states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
            starting = len(view._get_trials(states=states)) < self.n_startup_trials
            self.proposers[trial.number] = "random" if starting else "tpe"
            return starting

    s = spec.sampler
    return Before(max_history=s.max_history, n_startup_trials=10, seed=seed,
                  multivariate=s.multivariate, group=s.group, constant_liar=s.constant_liar)  # fmt: skip


def _plain(spec: Any) -> dict[str, Any]:
    """The bench task's study dict back from its spec (search and sampler left to the method)."""
    from hpo.spec import spec_to_dict

    raw = spec_to_dict(spec)
    raw.pop("search", None)
    raw.pop("sampler", None)
    raw["data"] = {k: v for k, v in raw["data"].items() if v not in (None, [], ())}
    return raw
