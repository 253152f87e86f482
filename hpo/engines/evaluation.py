"""The objective: a plan's score over the study's seeds and CV repeats, from any engine.

``[cv] seeds`` trains every plan under several seeds and ``[cv] repeats`` on several fold
draws; the engine trains each (seed, repeat) as a plan of its own, and the results are combined
here, so an engine only ever trains plans on folds (:mod:`hpo.engines.contract`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from hpo.data import Fold, FoldSet
from hpo.engines.contract import Engine, EvaluationResult, Monitor
from hpo.lazy import lazy_import
from hpo.seeds import repeat_seed, replica_seed
from hpo.space import RegularizationPlan
from hpo.spec import ModelSpec

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy_import("numpy")

__all__ = ["evaluate_plans"]


def evaluate_plans(
    engine: Engine,
    plans: Sequence[RegularizationPlan],
    folds: FoldSet,
    *,
    model: ModelSpec,
    seeds: Sequence[int],
    monitor: Monitor | None = None,
    replicas: int = 1,
) -> list[EvaluationResult]:
    """Each plan's out-of-fold accuracy, averaged over the repeats of K-fold and, with
    ``replicas`` above 1 (``[cv] seeds``), over that many training seeds.

    The replicas of every plan train in the same engine call. On a batch-seeded engine they
    share the batch's order and differ in their initial weights, drawn from
    ``replica_seed(batch seed, r)``, the same draws for every plan of the batch (common random
    numbers); elsewhere each replica trains from ``replica_seed(its plan's seed, r)``.
    """
    per_repeat = [
        _evaluate_repeat(engine, plans, repeat, folds.n_classes, model, seeds, r, monitor, replicas)
        for r, repeat in enumerate(folds.repeats)
    ]
    if len(per_repeat) == 1:
        return per_repeat[0]
    return [
        _combine_repeats(member_results, folds.n_folds)
        for member_results in zip(*per_repeat, strict=True)
    ]


def _evaluate_repeat(
    engine: Engine,
    plans: Sequence[RegularizationPlan],
    repeat: Sequence[Fold],
    n_classes: int,
    model: ModelSpec,
    seeds: Sequence[int],
    r: int,
    monitor: Monitor | None,
    replicas: int,
) -> list[EvaluationResult]:
    base = [repeat_seed(seed, r) for seed in seeds]
    if replicas == 1:
        return engine.evaluate(
            plans, repeat, model=model, n_classes=n_classes, seeds=base, monitor=monitor
        )
    expanded = [plan for plan in plans for _ in range(replicas)]
    if engine.batch_seeded:
        member_seeds = [base[0]] * len(expanded)
        weight_seeds: list[int] | None = [
            replica_seed(base[0], k) for _ in plans for k in range(replicas)
        ]
    else:
        member_seeds = [replica_seed(seed, k) for seed in base for k in range(replicas)]
        weight_seeds = None
    extra = {} if weight_seeds is None else {"weight_seeds": weight_seeds}
    results = engine.evaluate(
        expanded,
        repeat,
        model=model,
        n_classes=n_classes,
        seeds=member_seeds,
        monitor=None if monitor is None else _ReplicaMonitor(monitor, replicas),
        **extra,
    )
    return [_combine_seeds(results[i * replicas : (i + 1) * replicas]) for i in range(len(plans))]


class _ReplicaMonitor:
    """Shows the engine's members (plan x replica) to ``inner`` as plans: fold accuracies and
    checkpoint scores are the replicas' means, and a pruned plan stops all its replicas.

    A plan's checkpoint is passed on once every replica has reached it: the stacked engine
    reports all replicas at once, the reference engine one replica after another (then the
    decision is taken at the last replica's checkpoints, on the mean of all).
    """

    def __init__(self, inner: Monitor, replicas: int) -> None:
        self.inner = inner
        self.replicas = replicas
        self._folds: dict[tuple[int, int], list[float]] = {}
        self._steps: dict[tuple[int, int], dict[int, float]] = {}

    def on_fold_end(self, member: int, fold: int, accuracy: float) -> None:
        plan = member // self.replicas
        seen = self._folds.setdefault((plan, fold), [])
        seen.append(accuracy)
        if len(seen) == self.replicas:
            self.inner.on_fold_end(plan, fold, float(np.mean(seen)))

    def on_checkpoint(self, step: int, accuracies: Mapping[int, float]) -> set[int]:
        complete: dict[int, float] = {}
        for member, accuracy in accuracies.items():
            plan = member // self.replicas
            seen = self._steps.setdefault((plan, step), {})
            seen[member] = accuracy
            if len(seen) == self.replicas:
                complete[plan] = float(np.mean(list(seen.values())))
                del self._steps[(plan, step)]
        if not complete:
            return set()
        pruned = self.inner.on_checkpoint(step, complete)
        return {plan * self.replicas + k for plan in pruned for k in range(self.replicas)}


def _combine_seeds(results: Sequence[EvaluationResult]) -> EvaluationResult:
    """One plan's replicas as one result: mean accuracy, per-fold means, each seed's accuracy;
    the first replica's predictions and weights (the artifacts show one concrete run)."""
    accuracies = tuple(r.accuracy for r in results)
    n_folds = len(results[0].fold_accuracies)
    diverged_at = [r.diverged_by_epoch for r in results if r.diverged_by_epoch is not None]
    return replace(
        results[0],
        accuracy=float(np.mean(accuracies)),
        fold_accuracies=tuple(
            float(np.mean([r.fold_accuracies[f] for r in results])) for f in range(n_folds)
        ),
        epochs=max(r.epochs for r in results),
        seconds=sum(r.seconds for r in results),
        diverged=any(r.diverged for r in results),
        pruned=any(r.pruned for r in results),
        diverged_folds=tuple(sorted({f for r in results for f in r.diverged_folds})),
        diverged_by_epoch=min(diverged_at) if diverged_at else None,
        seed_accuracies=accuracies,
    )


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
        seed_accuracies=_mean_per_seed(results),
    )


def _mean_per_seed(results: Sequence[EvaluationResult]) -> tuple[float, ...] | None:
    """Each training seed's accuracy, averaged over the repeats."""
    per_repeat = [r.seed_accuracies for r in results]
    if any(a is None for a in per_repeat):
        return None
    return tuple(float(np.mean(column)) for column in zip(*per_repeat, strict=True))
