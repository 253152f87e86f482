"""The "auto" alpha windows: the rule that reads them off the ladder, and what they buy.

The rule is checked on ladders written by hand; the windows themselves on real training (wine,
where the benchmark found most plans of the old fixed range to be no-ops).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pytest
from conftest import hpo

from hpo.data import load_folds
from hpo.engines import make_engine
from hpo.engines.evaluation import evaluate_plans
from hpo.space import RegularizationPlan
from hpo.spec import PENALTY_KINDS, spec_from_dict
from hpo.study.record import WINDOWS_ATTR, stored_plan
from hpo.study.windows import LADDER, Ladder, probe_cost

Step = tuple[float, float, float, bool]


def _ladder(steps: list[Step], *, floor: float = 0.2, rows: int = 300) -> Ladder:
    return Ladder(
        floor=floor,
        baseline=0.7,
        guess=0.4,
        rows=rows,
        steps={kind: steps for kind in PENALTY_KINDS},
        seconds=0.0,
    )


def _steps(changed: list[float], collapsed_from: float | None = None) -> list[Step]:
    return [
        (alpha, moved, 0.7, collapsed_from is not None and alpha >= collapsed_from)
        for alpha, moved in zip(LADDER, changed, strict=True)
    ]


def test_a_window_runs_from_the_first_alpha_that_moves_rows_like_a_seed_to_the_last_sound_one() -> (
    None
):
    # LADDER is 1e-6 ... 10; the seed floor is 0.2, so a penalty must move 0.15 of the rows.
    changed = [0.05, 0.08, 0.10, 0.16, 0.20, 0.30, 0.50, 0.60]
    window = _ladder(_steps(changed, collapsed_from=1.0)).window("l1_kernel")
    assert (window.low, window.high) == (1e-3, 1e-1)


def test_chaos_below_the_threshold_after_an_effect_does_not_widen_the_window() -> None:
    # Moves 0.16 at 1e-5 by chance, then less: the window starts where it stays above.
    changed = [0.05, 0.16, 0.10, 0.16, 0.20, 0.30, 0.50, 0.60]
    window = _ladder(_steps(changed)).window("l2_activity")
    assert (window.low, window.high) == (1e-3, 10.0)


def test_a_penalty_that_matters_only_before_its_collapse_gets_a_quarter_decade_each_side() -> None:
    changed = [0, 0, 0, 0, 0, 0.02, 0.6, 0.6]
    window = _ladder(_steps(changed, collapsed_from=1.0), floor=0.0, rows=124).window("l1_activity")
    assert window.low == pytest.approx(0.1 / 10**0.25) and window.high == pytest.approx(
        0.1 * 10**0.25
    )


def test_a_penalty_that_collapses_at_the_weakest_alpha_is_searched_below_it() -> None:
    window = _ladder(_steps([0.9] * len(LADDER), collapsed_from=1e-6)).window("l1_kernel")
    assert (window.low, window.high) == (1e-7, 1e-6)


def test_the_ladder_trains_on_enough_folds_to_see_a_few_rows_move() -> None:
    assert probe_cost(1600, 5) == (1, 6.8)  # the course data: one fold of 320 rows
    assert probe_cost(124, 5) == (5, 34.0)  # wine's searched rows: every fold


# --- on real training: wine, as bench/search_quality.py's task -----------------------------------

N_TRIALS = 32
DIGITS = {
    "study": {"name": "digits"},
    "data": {"path": "digits.csv", "target": "digit"},
    "cv": {"folds": 5, "stratified": True, "holdout": 0.5},
    "model": {"hidden": [64, 32], "epochs": 200},
    "engine": {"trials_per_batch": 8},
    "sampler": {"seed": 1},
}
WINE = {
    "study": {"name": "wine"},
    "data": {"dataset": "sklearn:wine", "target": "target"},
    "cv": {"folds": 5, "stratified": True, "holdout": 0.3},
    "model": {"hidden": [32, 16], "epochs": 100},
    "engine": {"trials_per_batch": 8},
    "sampler": {"seed": 1},
}


def _noops(study_file: dict, tmp_path: Path, name: str) -> tuple[int, int]:
    """Run the study (:data:`N_TRIALS`) and count its trials whose predictions equal the unregularized
    network's trained with the same seed (the batch's initial weights and batch order)."""
    raw = {**study_file, "study": {"name": name}}
    path = tmp_path / f"{name}.toml"
    path.write_text(_toml(raw))
    url = f"sqlite:///{tmp_path / 'w.db'}"
    result = hpo("run", path, "--storage", url, "--n-trials", str(N_TRIALS))
    assert result.exit_code == 0, result.output
    spec = spec_from_dict(raw)
    _, folds = load_folds(spec.data, spec.cv)
    engine = make_engine(spec.engine)
    trials = [t for t in optuna.load_study(study_name=name, storage=url).trials if t.params]
    zero = RegularizationPlan.uniform(2)
    noops = 0
    for seed in sorted({t.user_attrs["seed"] for t in trials}):
        batch = [t for t in trials if t.user_attrs["seed"] == seed]
        plans = [zero] + [stored_plan(t) for t in batch]
        results = evaluate_plans(engine, plans, folds, model=spec.model, seeds=[seed] * len(plans))  # type: ignore[arg-type]
        noops += sum(np.array_equal(r.predictions, results[0].predictions) for r in results[1:])
    return noops, len(trials)


def _toml(raw: dict) -> str:
    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return f'"{v}"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return repr(v)

    return (
        "\n".join(
            f"[{section}]\n" + "\n".join(f"{k} = {value(v)}" for k, v in table.items())
            for section, table in raw.items()
        )
        + "\n"
    )


def _chance_agreement(study_file: dict, seeds: int = 12) -> tuple[int, int]:
    """Pairs of unregularized networks (same batch order, different initial weights) whose
    out-of-fold predictions agree on every row, and the number of pairs: how often two networks
    with nothing between them but chance predict alike."""
    spec = spec_from_dict({**study_file, "study": {"name": "chance"}})
    _, folds = load_folds(spec.data, spec.cv)
    zero = RegularizationPlan.uniform(2)
    results = make_engine(spec.engine).evaluate(
        [zero] * seeds,
        folds.repeats[0],
        model=spec.model,
        n_classes=folds.n_classes,
        seeds=[7] * seeds,
        weight_seeds=list(range(100, 100 + seeds)),
    )
    predicted = [np.asarray(r.predictions) for r in results]
    pairs = [(i, j) for i in range(seeds) for j in range(i + 1, seeds)]
    return sum(np.array_equal(predicted[i], predicted[j]) for i, j in pairs), len(pairs)


@pytest.mark.slow
def test_auto_windows_leave_no_more_no_ops_on_wine_than_chance_agreement(tmp_path: Path) -> None:
    from scipy.stats import binom

    fixed = {**WINE, "search": {"l1": {"low": 1e-6, "high": 0.1}, "l2": {"low": 1e-6, "high": 0.1}}}
    before, n_before = _noops(fixed, tmp_path, "fixed")
    after, n_after = _noops(WINE, tmp_path, "auto")
    agree, pairs = _chance_agreement(WINE)
    assert n_before == n_after == N_TRIALS - 1
    print(
        f"no-op trials: fixed range {before} of {n_before}, auto windows {after} of {n_after}; "
        f"unregularized networks from different initial weights agree on every row in {agree} "
        f"of {pairs} pairs"
    )
    assert before >= n_before // 3, (
        f"the fixed range made only {before} no-ops: the test lost its point"
    )
    # The windows' regression guard: a third of the fixed range's no-ops at most (21 -> 5 of 31).
    assert after * 3 <= before, f"{after} of {n_after} trials of the auto windows were no-ops"
    # And no more than chance explains. Wine is easy: two unregularized networks that share
    # nothing but the batch order predict all 124 rows alike about one time in six, so a trial
    # whose penalty changed the network can still predict exactly as its baseline. The windows
    # leave no more such trials than that rate explains (one-sided binomial test); the fixed
    # range's are far beyond it. (The rate is a floor: a trial shares its baseline's initial
    # weights, so a weak penalty agrees more often; the test cannot say a no-op did nothing.)
    chance = max(agree, 1) / pairs
    assert binom.sf(before - 1, n_before, chance) < 0.01, "the test cannot tell no-ops from chance"
    p_after = binom.sf(after - 1, n_after, chance)
    assert p_after >= 0.01, (
        f"{after} of {n_after} trials of the auto windows predicted exactly as the baseline, "
        f"more than chance agreement ({agree} of {pairs} pairs) explains (p = {p_after:.3g})"
    )
    study = optuna.load_study(study_name="auto", storage=f"sqlite:///{tmp_path / 'w.db'}")
    stored = study.user_attrs[WINDOWS_ATTR]
    assert set(stored["windows"]) == set(PENALTY_KINDS)
    assert stored["rows"] == 124 and math.isfinite(stored["floor"])
    assert stored["without_effect"], "wine's ladder should find kinds that move nothing gently"


@pytest.mark.slow
def test_the_reference_engine_measures_a_coarse_ladder_on_one_fold(tiny_csv: Path) -> None:
    from hpo.engines.reference import ReferenceEngine
    from hpo.study.windows import COARSE_LADDER, measure_windows

    raw = {
        "study": {"name": "ref"},
        "data": {"path": str(tiny_csv), "target": "kind", "drop": ["row"]},
        "cv": {"folds": 3},
        "model": {"hidden": [8, 4], "epochs": 2, "batch_size": 16},
        "engine": {"name": "reference"},
    }
    spec = spec_from_dict(raw)
    _, folds = load_folds(spec.data, spec.cv)
    ladder = measure_windows(spec, folds, ReferenceEngine(isolate=False))
    assert ladder.rows == len(folds.repeats[0][0].valid_rows)  # one fold: 30 of 90 rows
    assert {kind: [a for a, *_ in steps] for kind, steps in ladder.steps.items()} == {
        kind: list(COARSE_LADDER) for kind in PENALTY_KINDS
    }
    windows = ladder.windows()
    for kind in PENALTY_KINDS:
        window = getattr(windows, kind)
        assert 0 < window.low <= window.high
