"""hpo: tune L1/L2 regularization (alphas and activity/kernel placement) of Keras networks with
Optuna, every trial scored by K-fold cross-validated accuracy.

The public names are re-exported here. The Python API (``optimize``, ``evaluate_plan``,
``build_model``, ``best_plan``) loads on first use, so ``import hpo`` and ``hpo --help`` stay
light (no TensorFlow, Optuna or pandas until something needs them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpo.errors import HpoError
from hpo.lazy import lazy_import
from hpo.space import LayerPenalty, RegularizationPlan
from hpo.spec import StudySpec, load_spec, spec_from_dict, spec_to_dict

if TYPE_CHECKING:
    from hpo.api import PlanScore, best_plan, build_model, evaluate_plan, optimize

_api = lazy_import("hpo.api")  # the engines, Optuna and pandas load on first use

__all__ = [
    "HpoError",
    "LayerPenalty",
    "PlanScore",
    "RegularizationPlan",
    "StudySpec",
    "best_plan",
    "build_model",
    "evaluate_plan",
    "load_spec",
    "optimize",
    "spec_from_dict",
    "spec_to_dict",
]
__version__ = "0.1.0"

_API = ("PlanScore", "best_plan", "build_model", "evaluate_plan", "optimize")


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(_api, name)
    raise AttributeError(f"module 'hpo' has no attribute {name!r}")
