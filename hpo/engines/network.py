"""The Keras network of one trial: the built-in Dense stack, or the user's own model.

Everything that builds a trial's network (the reference engine, the artifacts, the export)
comes through :func:`build_model`, so a study with ``[model] builder`` is trained, saved and
exported the same way as one with ``[model] hidden``.
"""

from __future__ import annotations

from typing import Any

from hpo.engines.builder import regularized_model
from hpo.engines.keras_model import dense_model
from hpo.space import RegularizationPlan
from hpo.spec import ModelSpec

__all__ = ["build_model"]


def build_model(
    plan: RegularizationPlan, model: ModelSpec, *, n_features: int, n_classes: int
) -> Any:
    """The compiled Keras model of one trial, regularized as ``plan`` says, with fresh weights
    drawn from the current Keras seed."""
    if model.builder is not None:
        return regularized_model(plan, model, n_features=n_features, n_classes=n_classes)
    return dense_model(plan, model, n_features=n_features, n_classes=n_classes)
