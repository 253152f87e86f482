"""``[cv] seeds = S``: a trial's value is the mean over S training seeds, trained together.

Each replica must equal the run it stands for, trained on its own: on the reference engine a
run from ``replica_seed(seed, r)``; on the stacked engine the batch's order with initial weights
drawn from ``replica_seed(batch seed, r)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import pytest
from conftest import hpo
from test_stacked_engine import MODEL, N_CLASSES, random_plans, synthetic_folds

from hpo.data import FoldSet
from hpo.engines.evaluation import _ReplicaMonitor, evaluate_plans
from hpo.engines.reference import ReferenceEngine
from hpo.engines.stacked import StackedEngine, _glorot
from hpo.seeds import fold_seed, replica_seed
from hpo.study.storage import open_storage


def _fold_set(n_rows: int = 90) -> FoldSet:
    return FoldSet(repeats=(tuple(synthetic_folds(n_rows, seed=3)),), classes=("a", "b", "c"))


@pytest.mark.slow  # seven stacked-engine trainings
def test_stacked_replicas_equal_the_runs_they_stand_for() -> None:
    folds = _fold_set(120)
    plans = random_plans(2, seed=4)
    model = replace(MODEL, epochs=8)
    together = evaluate_plans(
        StackedEngine(), plans, folds, model=model, seeds=[11, 12], replicas=3
    )
    widths = (folds.repeats[0][0].n_features, *model.hidden, N_CLASSES)
    for plan, result in zip(plans, together, strict=True):
        assert result.seed_accuracies is not None and len(result.seed_accuracies) == 3
        assert result.accuracy == pytest.approx(np.mean(result.seed_accuracies))
        for r, accuracy in enumerate(result.seed_accuracies):
            weights = [
                _glorot(np.random.default_rng(fold_seed(replica_seed(11, r), f.index)), widths)
                for f in folds.repeats[0]
            ]
            alone = StackedEngine().evaluate(
                [plan],
                folds.repeats[0],
                model=model,
                n_classes=N_CLASSES,
                seeds=[11],
                initial_weights=[weights],
            )[0]
            assert accuracy == pytest.approx(alone.accuracy, abs=1e-9), r
    # Replica 0 is the single-seed run itself, so `seeds = 1` studies are unchanged.
    single = evaluate_plans(StackedEngine(), plans, folds, model=model, seeds=[11, 12])
    for one, many in zip(single, together, strict=True):
        assert one.seed_accuracies is None
        assert many.seed_accuracies[0] == pytest.approx(one.accuracy, abs=1e-9)  # type: ignore[index]
    # And the replicas really differ (different initial weights).
    assert any(len(set(r.seed_accuracies)) > 1 for r in together)  # type: ignore[arg-type]


@pytest.mark.slow  # the reference engine trains each replica with model.fit
def test_reference_replicas_equal_runs_from_the_replica_seeds() -> None:
    folds = _fold_set()
    plans = random_plans(1, seed=2)
    model = replace(MODEL, epochs=3)
    engine = ReferenceEngine(isolate=False)
    (together,) = evaluate_plans(engine, plans, folds, model=model, seeds=[21], replicas=2)
    for r in range(2):
        (alone,) = evaluate_plans(engine, plans, folds, model=model, seeds=[replica_seed(21, r)])
        assert together.seed_accuracies[r] == pytest.approx(alone.accuracy, abs=1e-9)  # type: ignore[index]


class _Recorder:
    def __init__(self, prune: set[int]) -> None:
        self.prune = prune
        self.folds: list[tuple[int, int, float]] = []
        self.checkpoints: list[dict[int, float]] = []

    def on_fold_end(self, member: int, fold: int, accuracy: float) -> None:
        self.folds.append((member, fold, accuracy))

    def on_checkpoint(self, step: int, accuracies: Mapping[int, float]) -> set[int]:
        self.checkpoints.append(dict(accuracies))
        return self.prune


def test_the_monitor_sees_plans_means_and_prunes_every_replica() -> None:
    inner = _Recorder(prune={1})
    monitor = _ReplicaMonitor(inner, 2)
    stopped = monitor.on_checkpoint(10, {0: 0.5, 1: 0.7, 2: 0.2, 3: 0.4})
    assert inner.checkpoints == [{0: pytest.approx(0.6), 1: pytest.approx(0.3)}]
    assert stopped == {2, 3}  # plan 1's two replicas
    # One replica after another (the reference engine): passed on once all have reported.
    inner.checkpoints.clear()
    inner.prune = set()
    assert monitor.on_checkpoint(20, {0: 0.4}) == set()
    assert inner.checkpoints == []
    assert monitor.on_checkpoint(20, {1: 0.6}) == set()  # plan 0 is not among the pruned
    assert inner.checkpoints == [{0: pytest.approx(0.5)}]
    monitor.on_fold_end(0, 0, 0.5)
    assert inner.folds == []  # waits for the other replica
    monitor.on_fold_end(1, 0, 0.7)
    assert inner.folds == [(0, 0, pytest.approx(0.6))]


@pytest.mark.slow  # a study with real training
def test_a_study_with_seeds_records_each_seeds_accuracy(
    write_study: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_study(engine="stacked", epochs=3, n_trials=2)
    path.write_text(path.read_text().replace("[cv]\n", "[cv]\nseeds = 3\n", 1))
    url = f"sqlite:///{tmp_path / 's.db'}"
    result = hpo("run", path, "--storage", url)
    assert result.exit_code == 0, result.output
    for trial in optuna.load_study(study_name="tiny", storage=open_storage(url)).trials:
        per_seed = trial.user_attrs["seed_accuracies"]
        assert len(per_seed) == 3
        assert trial.value == pytest.approx(np.mean(per_seed))
    bad = write_study(name="bad")
    bad.write_text(bad.read_text().replace("[cv]\n", "[cv]\nseeds = 0\n", 1))
    refused = hpo("run", bad, "--storage", url)
    assert refused.exit_code == 1
    assert refused.stderr == f"Error: {bad}: [cv] `seeds >= 1` must hold, but got (seeds=0)\n"
