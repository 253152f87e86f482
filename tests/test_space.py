from __future__ import annotations

import optuna
import pytest

from hpo.space import LayerPenalty, RegularizationPlan, plan_from_params, suggest_plan
from hpo.spec import AlphaRange, LayerSearchSpec, SearchSpec


def _search(**layer: object) -> SearchSpec:
    return SearchSpec(layers=(LayerSearchSpec(**layer),) * 2)  # type: ignore[arg-type]


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
