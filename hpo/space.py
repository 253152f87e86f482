"""The search space: per hidden layer, which penalties, how strong, and where they sit.

A trial's answer is turned into a :class:`RegularizationPlan`, which is only numbers: for every
hidden layer the four coefficients ``l1_activity, l2_activity, l1_kernel, l2_kernel`` (0 = off).
Engines consume plans, never Optuna trials, so any stored plan can be rebuilt and re-trained.

Parameters suggested for hidden layer ``n`` (1-based):

``h{n}_placement``  activity | kernel | both   (only when more than one is allowed)
``h{n}_penalty``    l1 | l2 | l1l2 | none      (only when more than one is allowed)
``h{n}_l1``         L1 alpha, log-uniform      (only when the penalty uses L1)
``h{n}_l2``         L2 alpha, log-uniform      (only when the penalty uses L2)

With ``[model] builder`` the layers are the user's, and ``h{n}`` is the Keras layer's name
(``wide_placement``, ``wide_l1``); the plan then carries those names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpo.spec import LayerSearchSpec, SearchSpec

if TYPE_CHECKING:
    import optuna

__all__ = [
    "LayerPenalty",
    "RegularizationPlan",
    "penalty_choices",
    "plan_from_params",
    "suggest_plan",
    "zero_plan",
]


@dataclass(frozen=True, kw_only=True)
class LayerPenalty:
    """Coefficients for one hidden layer; Keras' ``L1L2(l1, l2)`` on outputs and on weights."""

    l1_activity: float = 0.0
    l2_activity: float = 0.0
    l1_kernel: float = 0.0
    l2_kernel: float = 0.0

    def __post_init__(self) -> None:
        for name in ("l1_activity", "l2_activity", "l1_kernel", "l2_kernel"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"`{name} >= 0` must hold, but got ({name}={value})")

    @property
    def has_activity(self) -> bool:
        return self.l1_activity > 0 or self.l2_activity > 0

    @property
    def has_kernel(self) -> bool:
        return self.l1_kernel > 0 or self.l2_kernel > 0


@dataclass(frozen=True)
class RegularizationPlan:
    """Per searched layer, its penalties. ``names``: the Keras layer names of a builder's model
    (parallel to ``layers``); empty for the built-in network, whose layers go by position."""

    layers: tuple[LayerPenalty, ...]
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.names and len(self.names) != len(self.layers):
            raise ValueError(f"{len(self.names)} layer names for {len(self.layers)} layers")

    def to_dict(self) -> dict[str, list[Any]]:
        """Column form, as stored on trials: ``{"l1_activity": [layer1, layer2, ...], ...}``,
        plus ``"layers": [name, ...]`` for a builder's model."""
        keys = ("l1_activity", "l2_activity", "l1_kernel", "l2_kernel")
        data: dict[str, list[Any]] = {
            key: [float(getattr(layer, key)) for layer in self.layers] for key in keys
        }
        if self.names:
            data["layers"] = list(self.names)
        return data

    def by_name(self) -> dict[str, LayerPenalty]:
        """``{layer name: penalties}`` (names ``h1``, ``h2`` ... for the built-in network)."""
        names = self.names or tuple(f"h{n}" for n in range(1, len(self.layers) + 1))
        return dict(zip(names, self.layers, strict=True))

    @classmethod
    def from_dict(cls, data: Mapping[str, Sequence[Any]]) -> RegularizationPlan:
        n = len(data["l1_activity"])
        return cls(
            names=tuple(str(name) for name in data.get("layers", ())),
            layers=tuple(
                LayerPenalty(
                    l1_activity=float(data["l1_activity"][i]),
                    l2_activity=float(data["l2_activity"][i]),
                    l1_kernel=float(data["l1_kernel"][i]),
                    l2_kernel=float(data["l2_kernel"][i]),
                )
                for i in range(n)
            ),
        )

    @classmethod
    def uniform(
        cls,
        n_layers: int,
        *,
        l1: float = 0.0,
        l2: float = 0.0,
        placement: str = "activity",
        names: tuple[str, ...] = (),
    ) -> RegularizationPlan:
        """The same penalty on every hidden layer (the course's plan is ``uniform(2, l1=1e-4)``)."""
        return cls((_layer_penalty(placement, l1, l2),) * n_layers, names=names)


def zero_plan(search: SearchSpec) -> RegularizationPlan:
    """No regularization on any searched layer: the baseline trial's plan."""
    return RegularizationPlan.uniform(len(search.layers), names=search.names)


def penalty_choices(layer: LayerSearchSpec) -> tuple[str, ...]:
    choices = []
    if layer.l1 is not None:
        choices.append("l1")
    if layer.l2 is not None:
        choices.append("l2")
    if layer.l1 is not None and layer.l2 is not None:
        choices.append("l1l2")
    if layer.allow_none:
        choices.append("none")
    return tuple(choices)


def _layer_penalty(placement: str, l1: float, l2: float) -> LayerPenalty:
    activity = placement in ("activity", "both")
    kernel = placement in ("kernel", "both")
    return LayerPenalty(
        l1_activity=l1 if activity else 0.0,
        l2_activity=l2 if activity else 0.0,
        l1_kernel=l1 if kernel else 0.0,
        l2_kernel=l2 if kernel else 0.0,
    )


def suggest_plan(trial: optuna.Trial, search: SearchSpec) -> RegularizationPlan:
    """Ask ``trial`` for every parameter of ``search`` and turn the answers into a plan."""
    return plan_from_params(search, _Suggester(trial))


def plan_from_params(
    search: SearchSpec, params: Mapping[str, Any] | _Suggester
) -> RegularizationPlan:
    """Rebuild a plan from a trial's stored params (or, internally, from live suggestions)."""
    if not search.resolved:
        raise ValueError("the searched layers of a builder's model are not resolved yet")
    ask = params if isinstance(params, _Suggester) else _Lookup(params)
    layers = []
    for i, layer in enumerate(search.layers):
        name = search.param_prefix(i)
        placement = ask.categorical(f"{name}_placement", layer.placements)
        penalty = ask.categorical(f"{name}_penalty", penalty_choices(layer))
        l1 = ask.log_float(f"{name}_l1", layer.l1) if penalty in ("l1", "l1l2") else 0.0
        l2 = ask.log_float(f"{name}_l2", layer.l2) if penalty in ("l2", "l1l2") else 0.0
        layers.append(_layer_penalty(placement, l1, l2))
    return RegularizationPlan(tuple(layers), names=search.names)


class _Suggester:
    def __init__(self, trial: optuna.Trial) -> None:
        self._trial = trial

    def categorical(self, name: str, choices: Sequence[str]) -> str:
        if len(choices) == 1:
            return choices[0]
        return str(self._trial.suggest_categorical(name, list(choices)))

    def log_float(self, name: str, alpha: Any) -> float:
        return float(self._trial.suggest_float(name, alpha.low, alpha.high, log=True))


class _Lookup:
    def __init__(self, params: Mapping[str, Any]) -> None:
        self._params = params

    def categorical(self, name: str, choices: Sequence[str]) -> str:
        return choices[0] if len(choices) == 1 else str(self._params[name])

    def log_float(self, name: str, alpha: Any) -> float:
        return float(self._params[name])
