"""What every engine takes and returns: plans and folds in, one result per plan out.

Engines know nothing about Optuna. The worker hands them a batch of plans (one per trial), the
preprocessed folds and the model spec; they return plain results. Progress and pruning flow
through a :class:`Monitor` the worker provides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from hpo.data import Fold
from hpo.space import RegularizationPlan
from hpo.spec import EngineSpec, ModelSpec

__all__ = [
    "Engine",
    "EvaluationResult",
    "Monitor",
    "NullMonitor",
    "fold_seed",
    "make_engine",
    "oof_accuracy",
]


@dataclass(frozen=True, kw_only=True)
class EvaluationResult:
    """One plan's cross-validated outcome.

    ``accuracy`` is out-of-fold accuracy: every row predicted by the model that did not train on
    it, scored once over all rows. ``predictions`` holds those predicted labels by row index.
    A ``diverged`` plan (non-finite loss) scores its diverged folds' rows as wrong.
    """

    accuracy: float
    fold_accuracies: tuple[float, ...]
    predictions: np.ndarray
    epochs: int
    seconds: float
    diverged: bool = False
    pruned: bool = False
    details: Mapping[str, Any] = field(default_factory=dict)
    weights: list[np.ndarray] | None = None

    @property
    def fold_std(self) -> float:
        return float(np.std(self.fold_accuracies))


class Monitor(Protocol):
    """Callbacks from an engine while it trains (progress lines, pruning decisions)."""

    def on_fold_end(self, member: int, fold: int, accuracy: float) -> None: ...

    def on_checkpoint(self, step: int, accuracies: Mapping[int, float]) -> set[int]:
        """Report members' accuracies at ``step``; return the members to stop (pruned)."""
        ...


class NullMonitor:
    def on_fold_end(self, member: int, fold: int, accuracy: float) -> None:
        return None

    def on_checkpoint(self, step: int, accuracies: Mapping[int, float]) -> set[int]:
        return set()


class Engine(Protocol):
    name: str

    def evaluate(
        self,
        plans: Sequence[RegularizationPlan],
        folds: Sequence[Fold],
        *,
        model: ModelSpec,
        n_classes: int,
        seeds: Sequence[int],
        monitor: Monitor | None = None,
    ) -> list[EvaluationResult]: ...

    def close(self) -> None:
        """Release processes and memory the engine holds (it may be used again afterwards)."""
        ...


def fold_seed(seed: int, fold: int) -> int:
    """The seed one fold of one trial trains with (initial weights, shuffling)."""
    return (seed * 131 + fold * 7_777 + 1) % (2**31 - 1)


def oof_accuracy(
    folds: Sequence[Fold], fold_predictions: Sequence[np.ndarray]
) -> tuple[float, tuple[float, ...], np.ndarray]:
    """Out-of-fold accuracy, per-fold accuracies and the row-indexed predictions."""
    # Rows of folds not given (a pruned trial stops early) stay -1 in ``predictions``.
    n_rows = len(folds[0].train_rows) + len(folds[0].valid_rows)
    predictions = np.full(n_rows, -1, dtype=np.int32)
    correct = 0
    per_fold = []
    for fold, predicted in zip(folds, fold_predictions, strict=True):
        hits = predicted == fold.y_valid
        correct += int(hits.sum())
        per_fold.append(float(hits.mean()))
        predictions[fold.valid_rows] = predicted
    n_scored = sum(len(f.valid_rows) for f in folds)
    return correct / n_scored, tuple(per_fold), predictions


def make_engine(spec: EngineSpec) -> Engine:
    if spec.name == "reference":
        from hpo.engines.reference import ReferenceEngine

        return ReferenceEngine(checkpoint_every=spec.checkpoint_every)
    from hpo.engines.stacked import StackedEngine

    return StackedEngine(checkpoint_every=spec.checkpoint_every, threads=spec.threads)
