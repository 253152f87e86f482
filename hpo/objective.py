"""The objective, and the contract every engine meets: plans and folds in, out-of-fold accuracy out.

The contract lives here, in the core, rather than in ``hpo.engines``: the objective only needs
to know what an engine takes and returns, so the engines depend on it and never the other way
round. An engine knows nothing about Optuna; it returns an :class:`EvaluationResult` per plan,
a typed record that ``hpo.study.record`` turns into the trial's stored attributes in one place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from hpo.data import Fold, FoldSet
from hpo.lazy import lazy_import
from hpo.seeds import repeat_seed
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
    "evaluate_plans",
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
    share of its batch's wall time. ``weights`` are the first fold's trained weights in Keras
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


def evaluate_plans(
    engine: Engine,
    plans: Sequence[RegularizationPlan],
    folds: FoldSet,
    *,
    model: ModelSpec,
    seeds: Sequence[int],
    monitor: Monitor | None = None,
) -> list[EvaluationResult]:
    """Each plan's out-of-fold accuracy, averaged over the repeats of K-fold."""
    per_repeat = [
        engine.evaluate(
            plans,
            repeat,
            model=model,
            n_classes=folds.n_classes,
            seeds=[repeat_seed(seed, r) for seed in seeds],
            monitor=monitor,
        )
        for r, repeat in enumerate(folds.repeats)
    ]
    if len(per_repeat) == 1:
        return per_repeat[0]
    return [
        _combine_repeats(member_results, folds.n_folds)
        for member_results in zip(*per_repeat, strict=True)
    ]


def _combine_repeats(results: Sequence[EvaluationResult], n_folds: int) -> EvaluationResult:
    """One plan's repeats as one result: the mean accuracy, every fold, the first repeat's
    predictions and weights (the artifacts show one concrete run)."""
    accuracies = tuple(r.accuracy for r in results)
    diverged_at = [r.diverged_by_epoch for r in results if r.diverged_by_epoch is not None]
    return replace(
        results[0],
        accuracy=float(np.mean(accuracies)),
        fold_accuracies=tuple(a for r in results for a in r.fold_accuracies),
        epochs=max(r.epochs for r in results),
        seconds=sum(r.seconds for r in results),
        diverged=any(r.diverged for r in results),
        pruned=any(r.pruned for r in results),
        # Fold numbers run on across repeats, in the order of fold_accuracies.
        diverged_folds=tuple(
            r_index * n_folds + fold
            for r_index, r in enumerate(results)
            for fold in r.diverged_folds
        ),
        diverged_by_epoch=min(diverged_at) if diverged_at else None,
        repeat_accuracies=accuracies,
    )
