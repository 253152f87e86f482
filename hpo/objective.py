"""The objective: cross-validated accuracy of a batch of plans, and what each trial records.

``evaluate_plans`` runs an engine over every repeat of the K folds and averages; the
``trial_attrs`` of a result are what lands on the trial (plan, per-fold accuracies, their
spread, epochs, seconds, engine, seed, library versions), so any trial can be rebuilt and judged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hpo.data import FoldSet
from hpo.engines.base import Engine, EvaluationResult, Monitor
from hpo.space import RegularizationPlan
from hpo.spec import ModelSpec

__all__ = ["evaluate_plans", "trial_attrs"]


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
            seeds=[seed + 100_003 * r for seed in seeds],
            monitor=monitor,
        )
        for r, repeat in enumerate(folds.repeats)
    ]
    if len(per_repeat) == 1:
        return per_repeat[0]
    combined = []
    for member_results in zip(*per_repeat, strict=True):
        accuracies = [r.accuracy for r in member_results]
        combined.append(
            EvaluationResult(
                accuracy=float(np.mean(accuracies)),
                fold_accuracies=tuple(a for r in member_results for a in r.fold_accuracies),
                predictions=member_results[0].predictions,
                epochs=max(r.epochs for r in member_results),
                seconds=sum(r.seconds for r in member_results),
                diverged=any(r.diverged for r in member_results),
                pruned=any(r.pruned for r in member_results),
                details={**member_results[0].details, "repeat_accuracies": accuracies},
                weights=member_results[0].weights,
            )
        )
    return combined


def trial_attrs(
    result: EvaluationResult,
    *,
    engine: str,
    versions: Mapping[str, str],
) -> dict[str, Any]:
    """User attributes recorded on a finished trial (plain JSON data)."""
    attrs: dict[str, Any] = {
        "fold_accuracies": [round(a, 6) for a in result.fold_accuracies],
        "fold_std": round(result.fold_std, 6),
        "epochs": result.epochs,
        "seconds": round(result.seconds, 3),
        "engine": engine,
        "diverged": result.diverged,
        **versions,
    }
    for key, value in result.details.items():
        attrs[key] = value
    if "stream_seed" in attrs:
        # Trials trained together with a shared batch order all trained with the batch's seed:
        # record that one, so re-training the plan with `seed` reproduces the trial.
        attrs["seed"] = attrs.pop("stream_seed")
    return attrs
