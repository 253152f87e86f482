from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from hpo.data import load_dataset, make_folds
from hpo.engines.network import build_model
from hpo.engines.reference import ReferenceEngine
from hpo.space import LayerPenalty, RegularizationPlan
from hpo.spec import CVSpec, DataSpec, ModelSpec

MODEL = ModelSpec(hidden=(8, 4), epochs=3, batch_size=16)


@pytest.fixture
def folds(tiny_csv: Path) -> list:
    dataset = load_dataset(DataSpec(path=str(tiny_csv), target="kind", drop=("row",)))
    return make_folds(dataset, CVSpec(folds=3, seed=1))


def _config(reg: keras.regularizers.Regularizer | None) -> tuple[str, dict] | None:
    return None if reg is None else (type(reg).__name__, reg.get_config())


def test_regularizers_land_exactly_where_the_plan_says() -> None:
    plan = RegularizationPlan(
        (
            LayerPenalty(l1_activity=1e-4),
            LayerPenalty(l1_kernel=2e-3, l2_kernel=3e-5, l2_activity=4e-2),
        )
    )
    net = build_model(plan, MODEL, n_features=5, n_classes=3)
    first, second, output = net.layers
    assert _config(first.activity_regularizer) == ("L1", {"l1": pytest.approx(1e-4)})
    assert first.kernel_regularizer is None
    assert _config(second.kernel_regularizer) == (
        "L1L2",
        {"l1": pytest.approx(2e-3), "l2": pytest.approx(3e-5)},
    )
    assert _config(second.activity_regularizer) == ("L2", {"l2": pytest.approx(4e-2)})
    assert output.kernel_regularizer is None and output.activity_regularizer is None
    assert output.activation.__name__ == "softmax"
    assert [layer.units for layer in net.layers] == [8, 4, 3]


def test_unregularized_plan_builds_plain_layers() -> None:
    net = build_model(RegularizationPlan((LayerPenalty(),) * 2), MODEL, n_features=5, n_classes=3)
    assert all(
        layer.kernel_regularizer is None and layer.activity_regularizer is None
        for layer in net.layers
    )


@pytest.mark.slow  # six fits (the quick run trains the reference engine in other tests)
def test_same_plan_and_seed_give_the_same_accuracy(folds: list) -> None:
    plan = RegularizationPlan.uniform(2, l1=1e-3, placement="both")
    engine = ReferenceEngine(isolate=False)
    first, second = (
        engine.evaluate([plan], folds, model=MODEL, n_classes=3, seeds=[11])[0] for _ in range(2)
    )
    assert first.accuracy == second.accuracy
    assert first.fold_accuracies == second.fold_accuracies
    np.testing.assert_array_equal(first.predictions, second.predictions)
    assert len(first.fold_accuracies) == 3 and first.epochs == 3


@pytest.mark.slow  # 30 epochs: long enough to learn the table
def test_out_of_fold_accuracy_scores_every_row_once(folds: list) -> None:
    result = ReferenceEngine(isolate=False).evaluate(
        [RegularizationPlan.uniform(2, l2=1e-4)],
        folds,
        model=MODEL.__class__(hidden=(8, 4), epochs=30, batch_size=16),
        n_classes=3,
        seeds=[5],
    )[0]
    labels = np.empty(90, dtype=np.int32)
    for fold in folds:
        labels[fold.valid_rows] = fold.y_valid
    assert (result.predictions >= 0).all()
    assert result.accuracy == pytest.approx(float((result.predictions == labels).mean()))
    assert (
        result.accuracy > 0.6
    )  # the tiny table is learnable: a broken pipeline would sit near 1/3


def test_a_diverging_plan_is_scored_not_crashed(folds: list) -> None:
    huge = RegularizationPlan.uniform(2, l2=1e30, placement="both")
    result = ReferenceEngine(isolate=False).evaluate(
        [huge], folds, model=MODEL, n_classes=3, seeds=[1]
    )[0]
    assert result.diverged
    assert result.accuracy == 0.0
    assert result.diverged_folds == (0, 1, 2)


@pytest.mark.slow  # a child process that imports TensorFlow
def test_isolated_fits_match_in_process_fits(folds: list) -> None:
    """The child process that keeps memory flat changes nothing about what is trained."""
    plan = RegularizationPlan.uniform(2, l1=1e-3, l2=1e-4, placement="kernel")
    isolated = ReferenceEngine(isolate=True, folds_per_process=2)
    try:
        apart = isolated.evaluate([plan, plan], folds, model=MODEL, n_classes=3, seeds=[4, 5])
        assert isolated._pool is not None  # it really ran in a child process
    finally:
        isolated.close()
    here = ReferenceEngine(isolate=False).evaluate(
        [plan, plan], folds, model=MODEL, n_classes=3, seeds=[4, 5]
    )
    for a, b in zip(apart, here, strict=True):
        assert a.fold_accuracies == b.fold_accuracies
        np.testing.assert_array_equal(a.predictions, b.predictions)
        assert a.weights is not None and b.weights is not None  # the first fold's, from each
        for wa, wb in zip(a.weights, b.weights, strict=True):
            np.testing.assert_allclose(wa, wb, rtol=1e-6, atol=1e-7)
