"""The contract every engine meets: plans and folds in, out-of-fold accuracy out.

An engine knows nothing about Optuna; it returns an :class:`EvaluationResult` per plan, a typed
record that ``hpo.study.record`` turns into the trial's stored attributes in one place. The
objective built on it (seeds and repeats combined) is :mod:`hpo.engines.evaluation`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from hpo.data import Fold
from hpo.lazy import lazy_import
from hpo.space import RegularizationPlan
from hpo.spec import ModelSpec

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy_import("numpy")

__all__ = [
    "Engine",
    "EvaluationResult",
    "Monitor",
    "NullMonitor",
    "oof_accuracy",
]


@dataclass(frozen=True, kw_only=True)
class EvaluationResult:
    """One plan's cross-validated outcome.

    ``accuracy`` is out-of-fold accuracy: every row predicted by the model that did not train on
    it, scored once over all rows. ``predictions`` holds those predicted labels by row index.
    A ``diverged`` plan (non-finite loss) scores its diverged folds' rows as wrong.

    ``seed`` is the seed the plan actually trained with when it differs from the one it was
    given (the stacked engine trains a batch from its first seed); ``seconds`` is the plan's
    share of its batch's wall time. ``seed_accuracies``: with ``[cv] seeds`` above 1, the
    out-of-fold accuracy under each training seed (``accuracy`` is their mean). ``weights`` are the first fold's trained weights in Keras
    ``get_weights()`` order, ``probabilities`` the validation probabilities per fold (kept only
    when asked, for tests).
    """

    accuracy: float
    fold_accuracies: tuple[float, ...]
    predictions: np.ndarray
    epochs: int
    seconds: float
    diverged: bool = False
    pruned: bool = False
    diverged_folds: tuple[int, ...] = ()
    diverged_by_epoch: int | None = None
    seed: int | None = None
    shared_order: bool | None = None
    trials_in_batch: int | None = None
    xla_kernels: bool | None = None
    repeat_accuracies: tuple[float, ...] | None = None
    seed_accuracies: tuple[float, ...] | None = None
    weights: list[np.ndarray] | None = None
    probabilities: list[np.ndarray] | None = None

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
    """Trains plans on folds. ``trials_per_batch``: how many plans one ``evaluate`` call should
    get; the engine knows what it gains from more (the stacked engine trains them together).
    ``batch_seeded``: every plan of one call trains from the call's first seed (initial weights
    and batch order), so a plan's result depends on which seed came first, not on its own."""

    name: str
    trials_per_batch: int

    @property
    def batch_seeded(self) -> bool: ...

    def evaluate(
        self,
        plans: Sequence[RegularizationPlan],
        folds: Sequence[Fold],
        *,
        model: ModelSpec,
        n_classes: int,
        seeds: Sequence[int],
        monitor: Monitor | None = None,
        weight_seeds: Sequence[int] | None = None,
    ) -> list[EvaluationResult]: ...

    def close(self) -> None:
        """Release processes and memory the engine holds (it may be used again afterwards)."""
        ...


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
