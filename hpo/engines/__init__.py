"""Engines: what trains a batch of regularization plans on the folds.

``reference`` is the course protocol, one Keras ``model.fit`` per fold (ground truth);
``stacked`` trains the folds of many trials as one TensorFlow graph and is checked against it.
Both meet the contract in :mod:`hpo.engines.contract`.
"""

from __future__ import annotations

from hpo.engines.contract import Engine
from hpo.engines.reference import ReferenceEngine
from hpo.engines.stacked import StackedEngine
from hpo.spec import EngineSpec

__all__ = ["ReferenceEngine", "StackedEngine", "make_engine"]


def make_engine(spec: EngineSpec) -> Engine:
    """The engine ``[engine]`` describes (importing one does not import TensorFlow)."""
    if spec.name == "reference":
        return ReferenceEngine(checkpoint_every=spec.checkpoint_every)
    return StackedEngine(
        checkpoint_every=spec.checkpoint_every,
        threads=spec.threads,
        # "auto" is settled by hpo.engines.batching where a study trains; elsewhere (reruns,
        # holdout and nested scores) the batch only groups the plans to score.
        trials_per_batch=8 if spec.trials_per_batch == "auto" else int(spec.trials_per_batch),
    )
