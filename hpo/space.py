"""The search space: per hidden layer, which penalties, how strong, and where they sit.

A trial's answer is turned into a :class:`RegularizationPlan`, which is only numbers: for every
hidden layer the four coefficients ``l1_activity, l2_activity, l1_kernel, l2_kernel`` (0 = off).
Engines consume plans, never Optuna trials, so any stored plan can be rebuilt and re-trained.

Parameters suggested for hidden layer ``n`` (1-based):

``h{n}_placement``  activity | kernel | both   (only when more than one is allowed)
``h{n}_penalty``    l1 | l2 | l1l2 | none      (only when more than one is allowed)
``h{n}_l1``         L1 alpha, log-uniform      (only when the penalty uses L1)
``h{n}_l2``         L2 alpha, log-uniform      (only when the penalty uses L2)

With ``l1 = "auto"`` (the default) the alpha is not a parameter: ``h{n}_l1_strength`` (0 to 1) is
the position in the study's measured window of the placement's kind
(:class:`hpo.spec.PenaltyWindows`): 0 is the weakest L1 that changes the trained network as
much as a new seed does, 1 the strongest that does not collapse it. Activity and kernel
penalties of the same alpha differ in effect by orders of magnitude; a position means the same
on both, so ``both`` puts each at the same strength in its own window.

With ``[model] builder`` the layers are the user's, and ``h{n}`` is the Keras layer's name
(``wide_placement``, ``wide_l1``); the plan then carries those names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from hpo.spec import AlphaRange, AutoRange, LayerSearchSpec, PenaltyWindows, SearchSpec

if TYPE_CHECKING:
    import numpy as np
    import optuna

__all__ = [
    "LayerPenalty",
    "RegularizationPlan",
    "param_names",
    "penalty_choices",
    "plan_from_params",
    "random_plan",
    "strength_param",
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

    def text(self) -> str:
        """The coefficients in words, layer by layer.

        >>> RegularizationPlan.uniform(2, l1=1e-4).text()
        'h1: L1 activity 0.0001; h2: L1 activity 0.0001'
        """
        parts = []
        for name, layer in self.by_name().items():
            terms = [
                f"{kind[:2].upper()} {kind[3:]} {value:.2g}"
                for kind in ("l1_activity", "l2_activity", "l1_kernel", "l2_kernel")
                if (value := getattr(layer, kind))
            ]
            parts.append(f"{name}: {', '.join(terms) or 'none'}")
        return "; ".join(parts)

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


def _placed(placement: str, alphas: Mapping[str, Callable[[str], float]]) -> LayerPenalty:
    """A layer's coefficients: ``alphas["l1"](kind)`` is the L1 alpha for penalty kind
    ``kind`` (a window's position maps differently per kind; an explicit alpha does not)."""
    on = {"activity": placement in ("activity", "both"), "kernel": placement in ("kernel", "both")}

    def coefficient(key: str, where: str) -> float:
        return alphas[key](f"{key}_{where}") if on[where] and key in alphas else 0.0

    return LayerPenalty(
        l1_activity=coefficient("l1", "activity"),
        l2_activity=coefficient("l2", "activity"),
        l1_kernel=coefficient("l1", "kernel"),
        l2_kernel=coefficient("l2", "kernel"),
    )


def _in_window(windows: PenaltyWindows | None, position: float, kind: str) -> float:
    assert windows is not None  # checked before any layer
    return getattr(windows, kind).at(position)


def _fixed(alpha: float, kind: str) -> float:
    del kind  # an explicit alpha is the same on outputs and weights
    return alpha


def strength_param(prefix: str, penalty: str) -> str:
    """The parameter holding an ``"auto"`` alpha's position in its window."""
    return f"{prefix}_{penalty}_strength"


def param_names(search: SearchSpec) -> list[str]:
    """Every parameter ``search`` can ask for, in a fixed order (layer by layer)."""
    names = []
    for i, layer in enumerate(search.layers):
        prefix = search.param_prefix(i)
        if len(layer.placements) > 1:
            names.append(f"{prefix}_placement")
        if len(penalty_choices(layer)) > 1:
            names.append(f"{prefix}_penalty")
        for key in ("l1", "l2"):
            alpha = getattr(layer, key)
            if isinstance(alpha, AutoRange):
                names.append(strength_param(prefix, key))
            elif alpha is not None:
                names.append(f"{prefix}_{key}")
    return names


def random_plan(search: SearchSpec, rng: np.random.Generator) -> RegularizationPlan:
    """A plan drawn uniformly from ``search``'s space (each choice, position and log-alpha)."""
    params: dict[str, Any] = {}
    for i, layer in enumerate(search.layers):
        prefix = search.param_prefix(i)
        params[f"{prefix}_placement"] = layer.placements[int(rng.integers(len(layer.placements)))]
        choices = penalty_choices(layer)
        params[f"{prefix}_penalty"] = choices[int(rng.integers(len(choices)))]
        for key in ("l1", "l2"):
            alpha = getattr(layer, key)
            if isinstance(alpha, AutoRange):
                params[strength_param(prefix, key)] = float(rng.uniform())
            elif alpha is not None:
                low, high = math.log(alpha.low), math.log(alpha.high)
                params[f"{prefix}_{key}"] = float(math.exp(rng.uniform(low, high)))
    return plan_from_params(search, params)


def suggest_plan(trial: optuna.Trial, search: SearchSpec) -> RegularizationPlan:
    """Ask ``trial`` for every parameter of ``search`` and turn the answers into a plan."""
    return plan_from_params(search, _Suggester(trial))


def plan_from_params(
    search: SearchSpec, params: Mapping[str, Any] | _Suggester
) -> RegularizationPlan:
    """Rebuild a plan from a trial's stored params (or, internally, from live suggestions)."""
    if not search.resolved:
        raise ValueError("the searched layers of a builder's model are not resolved yet")
    if search.auto and search.windows is None:
        raise ValueError('"auto" alphas need the study\'s measured windows (hpo.study.windows)')
    ask = params if isinstance(params, _Suggester) else _Lookup(params)
    windows = search.windows
    layers = []
    for i, layer in enumerate(search.layers):
        name = search.param_prefix(i)
        placement = ask.categorical(f"{name}_placement", layer.placements)
        penalty = ask.categorical(f"{name}_penalty", penalty_choices(layer))
        alphas: dict[str, Callable[[str], float]] = {}
        for key in ("l1", "l2"):
            if key not in penalty:  # "l1l2" holds both; "none" neither
                continue
            searched = getattr(layer, key)
            if isinstance(searched, AutoRange):
                position = ask.position(strength_param(name, key))
                alphas[key] = partial(_in_window, windows, position)
            else:
                alphas[key] = partial(_fixed, ask.log_float(f"{name}_{key}", searched))
        layers.append(_placed(placement, alphas))
    return RegularizationPlan(tuple(layers), names=search.names)


class _Suggester:
    def __init__(self, trial: optuna.Trial) -> None:
        self._trial = trial

    def categorical(self, name: str, choices: Sequence[str]) -> str:
        if len(choices) == 1:
            return choices[0]
        return str(self._trial.suggest_categorical(name, list(choices)))

    def log_float(self, name: str, alpha: AlphaRange) -> float:
        return float(self._trial.suggest_float(name, alpha.low, alpha.high, log=True))

    def position(self, name: str) -> float:
        return float(self._trial.suggest_float(name, 0.0, 1.0))


class _Lookup:
    def __init__(self, params: Mapping[str, Any]) -> None:
        self._params = params

    def categorical(self, name: str, choices: Sequence[str]) -> str:
        return choices[0] if len(choices) == 1 else str(self._params[name])

    def log_float(self, name: str, alpha: AlphaRange) -> float:
        return float(self._params[name])

    def position(self, name: str) -> float:
        return float(self._params[name])
