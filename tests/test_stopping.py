"""``[budget] early_stop = "within-noise"``: the rule on trials written by hand, and a real
study whose every plan scores the same, stopped and said so by ``hpo status``."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from conftest import hpo, make_frame

from hpo.space import RegularizationPlan
from hpo.spec import spec_from_dict
from hpo.study.record import EARLY_STOP_ATTR
from hpo.study.stopping import check_stop, cv_noise, min_trials

WriteStudy = Callable[..., Path]
SPEC = spec_from_dict(
    {
        "study": {"name": "s"},
        "data": {"dataset": "sklearn:wine", "target": "target"},
        "search": {"l1": {"low": 1e-6, "high": 1.0}, "l2": "off", "placements": ["kernel"]},
    }
)


def _trial(number: int, value: float, l1: float, spread: float) -> optuna.trial.FrozenTrial:
    folds = [value + spread * d for d in (-2, -1, 0, 1, 2)]
    plan = RegularizationPlan.uniform(2, l1=l1, placement="kernel")
    return optuna.trial.create_trial(
        value=value,
        user_attrs={"plan": plan.to_dict(), "fold_accuracies": folds},
    )


def test_a_flat_objective_stops_once_enough_trials_are_complete() -> None:
    rng = np.random.default_rng(0)
    alphas = np.exp(rng.uniform(math.log(1e-6), 0.0, 30))
    trials = [_trial(n, 0.80 + rng.normal(0, 0.002), a, 0.01) for n, a in enumerate(alphas)]
    assert check_stop(trials[: min_trials(10) - 1], SPEC, startup=10) is None  # too early
    check = check_stop(trials, SPEC, startup=10)
    assert check is not None and check.stop, check
    assert check.bound < check.noise
    assert check.message().startswith(
        "stopped after 30 complete trials: no plan is expected to beat 0.8"
    )


def test_an_objective_still_rising_where_few_trials_went_does_not_stop() -> None:
    # Accuracy climbs with the L1 alpha; the search has only seen its lower part so far.
    rng = np.random.default_rng(1)
    logs = rng.uniform(math.log(1e-6), math.log(1e-2), 30)
    trials = [
        _trial(n, 0.55 + 0.03 * (x - math.log(1e-6)) + rng.normal(0, 0.002), math.exp(x), 0.002)
        for n, x in enumerate(logs)
    ]
    check = check_stop(trials, SPEC, startup=10)
    assert check is not None and not check.stop, check
    assert check.bound > 3 * check.noise


def test_the_noise_is_the_best_trials_corrected_cv_error() -> None:
    folds = [0.70, 0.66, 0.68, 0.72, 0.64]
    assert cv_noise(folds) == pytest.approx(math.sqrt((1 / 5 + 1 / 4) * np.var(folds)))
    assert cv_noise([0.7]) == 0.0
    # With [cv] repeats the scores are folds x repeats; the overlap term stays one draw's.
    repeated = folds * 3
    assert cv_noise(repeated, folds=5) == pytest.approx(
        math.sqrt((1 / 15 + 1 / 4) * np.var(repeated))
    )


def test_a_best_with_every_fold_right_stops_though_it_has_no_noise() -> None:
    # Nothing can beat an accuracy of 1: the bound is clipped there, so a noise of 0 (every
    # fold 1.0) still stops the study, where the GP's band alone would never fall to 0.
    rng = np.random.default_rng(2)
    alphas = np.exp(rng.uniform(math.log(1e-6), 0.0, 20))
    trials = [_trial(n, 0.9 + 0.1 * (n % 2), a, 0.0) for n, a in enumerate(alphas)]
    check = check_stop(trials, SPEC, startup=4)
    assert check is not None and check.noise == 0.0 and check.bound == 0.0
    assert check.stop


@pytest.mark.slow
def test_a_study_where_every_plan_scores_the_same_stops_early_and_status_says_why(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    # The class's copy as the only input: every plan (alphas far too small to matter) and every
    # seed scores 1.0.
    frame = make_frame()
    frame["copy"] = frame["kind"].map({"x": 0, "y": 1, "z": 2})
    pd.DataFrame(frame).to_csv(tmp_path / "tiny.csv", index=False)
    study = write_study(
        """
        [search]
        l1 = { low = 1e-8, high = 1e-7 }
        l2 = { low = 1e-8, high = 1e-7 }
        """,
        engine="stacked",
        epochs=300,
        n_trials=40,
    )
    text = study.read_text().replace("n_startup_trials = 2\n", "")
    text = text.replace(
        'drop = ["row"]',
        'drop = ["row", "size", "weight", "color"]\ncategorical = ["copy"]\n'
        'ignore_warnings = ["copy"]',
    ).replace("hidden = [8, 4]", "hidden = [32]")
    study.write_text(text.replace("n_trials = 40", 'n_trials = 40\nearly_stop = "within-noise"'))
    url = f"sqlite:///{tmp_path / 's.db'}"
    result = hpo("run", study, "--storage", url, "--trials-per-batch", "8")
    assert result.exit_code == 0, result.output
    loaded = optuna.load_study(study_name="tiny", storage=url)
    values = {t.value for t in loaded.trials}
    assert values == {1.0}, values
    stop = loaded.user_attrs[EARLY_STOP_ATTR]
    # The start-up is 10 trials, the rule waits for 20 complete ones, and it is checked
    # before each claim (after each batch): 10, 18, 26.
    assert len(loaded.trials) == stop["trials"] == 26
    assert "stopped after 26 complete trials: no plan is expected to beat 1.0000" in result.output
    status = hpo("status", "tiny", "--storage", url)
    assert status.exit_code == 0, status.output
    assert f"early stop: {stop['message']}" in status.output
    assert "budget: 26 of 40 trials finished (26 complete, 0 pruned) - done" in status.output
