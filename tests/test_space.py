from __future__ import annotations

from dataclasses import replace

import optuna
import pytest

from hpo.space import (
    LayerPenalty,
    RegularizationPlan,
    param_names,
    plan_from_params,
    random_plan,
    suggest_plan,
)
from hpo.spec import AUTO, AlphaRange, LayerSearchSpec, PenaltyWindows, SearchSpec, Window


def _search(**layer: object) -> SearchSpec:
    """Two layers with fixed ranges (1e-6 ... 1e-1) unless ``layer`` says otherwise."""
    ranges = {"l1": AlphaRange(), "l2": AlphaRange(), **layer}
    return SearchSpec(layers=(LayerSearchSpec(**ranges),) * 2)  # type: ignore[arg-type]


WINDOWS = PenaltyWindows(
    l1_activity=Window(1e-3, 1e-1),
    l2_activity=Window(1e-2, 1.0),
    l1_kernel=Window(1e-4, 1e-2),
    l2_kernel=Window(1e-3, 1e-1),
)


def test_an_auto_strength_is_a_position_in_each_placements_own_window() -> None:
    search = replace(_search(l1=AUTO, l2=AUTO), windows=WINDOWS)
    params = {
        "h1_placement": "both",
        "h1_penalty": "l1l2",
        "h1_l1_strength": 0.5,
        "h1_l2_strength": 0.0,
        "h2_placement": "kernel",
        "h2_penalty": "l2",
        "h2_l2_strength": 1.0,
    }
    plan = plan_from_params(search, params)
    assert plan.layers[0] == LayerPenalty(
        l1_activity=1e-2, l2_activity=1e-2, l1_kernel=1e-3, l2_kernel=1e-3
    )
    assert plan.layers[1] == LayerPenalty(l2_kernel=1e-1)
    assert param_names(search) == [
        "h1_placement", "h1_penalty", "h1_l1_strength", "h1_l2_strength",
        "h2_placement", "h2_penalty", "h2_l1_strength", "h2_l2_strength",
    ]  # fmt: skip


def test_auto_alphas_without_the_studys_windows_are_refused() -> None:
    with pytest.raises(ValueError, match='"auto" alphas need the study\'s measured windows'):
        plan_from_params(_search(l1=AUTO), {"h1_placement": "kernel", "h1_penalty": "l1"})


def test_random_plans_stay_inside_the_windows() -> None:
    import numpy as np

    search = replace(_search(l1=AUTO, l2=AUTO), windows=WINDOWS)
    rng = np.random.default_rng(0)
    for _ in range(200):
        for layer in random_plan(search, rng).layers:
            for kind in ("l1_activity", "l2_activity", "l1_kernel", "l2_kernel"):
                alpha = getattr(layer, kind)
                window = getattr(WINDOWS, kind)
                assert alpha == 0 or window.low * 0.999 <= alpha <= window.high * 1.001


@pytest.mark.parametrize(
    ("placement", "penalty", "expected"),
    [
        ("activity", "l1", LayerPenalty(l1_activity=1e-3)),
        ("kernel", "l2", LayerPenalty(l2_kernel=2e-3)),
        (
            "both",
            "l1l2",
            LayerPenalty(l1_activity=1e-3, l2_activity=2e-3, l1_kernel=1e-3, l2_kernel=2e-3),
        ),
    ],
)
def test_params_become_coefficients(placement: str, penalty: str, expected: LayerPenalty) -> None:
    params = {
        "h1_placement": placement,
        "h1_penalty": penalty,
        "h1_l1": 1e-3,
        "h1_l2": 2e-3,
        "h2_placement": "kernel",
        "h2_penalty": "l1",
        "h2_l1": 5e-5,
    }
    plan = plan_from_params(_search(), params)
    assert plan.layers[0] == expected
    assert plan.layers[1] == LayerPenalty(l1_kernel=5e-5)


def test_suggested_params_rebuild_the_same_plan() -> None:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    search = _search()
    seen = set()
    for _ in range(40):
        trial = study.ask()
        plan = suggest_plan(trial, search)
        assert plan_from_params(search, trial.params) == plan
        assert RegularizationPlan.from_dict(plan.to_dict()) == plan
        seen.add((trial.params["h1_placement"], trial.params["h1_penalty"]))
        study.tell(trial, 0.5)
    assert {p for p, _ in seen} == {"activity", "kernel", "both"}
    assert {q for _, q in seen} == {"l1", "l2", "l1l2"}


def test_fixed_choices_are_not_parameters() -> None:
    search = _search(l2=None, placements=("activity",), l1=AlphaRange(low=1e-4, high=1e-4))
    trial = optuna.create_study().ask()
    plan = suggest_plan(trial, search)
    assert set(trial.params) == {"h1_l1", "h2_l1"}
    assert plan == RegularizationPlan.uniform(2, l1=1e-4)


def test_allow_none_can_switch_a_layer_off() -> None:
    search = _search(allow_none=True)
    params = {
        "h1_placement": "both",
        "h1_penalty": "none",
        "h2_placement": "both",
        "h2_penalty": "none",
    }
    assert plan_from_params(search, params) == RegularizationPlan((LayerPenalty(),) * 2)


def test_negative_coefficients_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"`l1_kernel >= 0` must hold, but got \(l1_kernel=-1.0\)"):
        LayerPenalty(l1_kernel=-1.0)
