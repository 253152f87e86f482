"""hpo: tune L1/L2 regularization (alphas and activity/kernel placement) of Keras networks with
Optuna, every trial scored by K-fold cross-validated accuracy.

The public names are re-exported here; modules stay light so ``hpo --help`` needs no TensorFlow.
"""

from __future__ import annotations

from hpo.errors import HpoError
from hpo.space import LayerPenalty, RegularizationPlan
from hpo.spec import StudySpec, load_spec, spec_from_dict, spec_to_dict

__all__ = [
    "HpoError",
    "LayerPenalty",
    "RegularizationPlan",
    "StudySpec",
    "load_spec",
    "spec_from_dict",
    "spec_to_dict",
]
__version__ = "0.1.0"
