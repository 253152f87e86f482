"""The stacked engine against plain Keras (the reference engine's model), and its bookkeeping.

Equivalence: with the same initial weights and the same batch order (no shuffling), the stacked
model's validation probabilities match a Keras ``model.fit`` of every plan on every fold to float
tolerance, for every placement (activity, kernel, both) and penalty (L1, L2, L1L2), with Adam,
SGD and RMSprop, several activations, both data layouts, and folds of unequal size.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hpo.data import Fold, Scaling, Table, aligned_empty, load_dataset, make_folds
from hpo.engines import stacked as stacked_module
from hpo.engines.contract import EvaluationResult
from hpo.engines.keras_model import import_keras
from hpo.engines.network import build_model
from hpo.engines.reference import ReferenceEngine
from hpo.engines.stacked import StackedEngine, clear_graph_cache
from hpo.space import LayerPenalty, RegularizationPlan
from hpo.spec import CVSpec, DataSpec, ModelSpec

ROOT = Path(__file__).resolve().parents[1]
N_CLASSES = 3
MODEL = ModelSpec(hidden=(8, 5), learning_rate=0.01, epochs=5, batch_size=16)
ALPHA = 3e-2  # big enough that every penalty visibly changes the trained weights

# Float rounding only (summation order in matmuls and reductions): measured about 1e-7 after
# these epochs, 4e-7 after 120 steps. A real semantic slip (e.g. TF's fused Adam kernel, whose
# 1 - beta_2 is 0.0010000467 instead of 0.001) shows as 3e-6 here and 1e-2 after 120 steps.
TOLERANCE = 2e-6


def synthetic_folds(
    n_rows: int, *, n_folds: int = 3, n_features: int = 6, seed: int = 0, gaps: float = 0.0
) -> list[Fold]:
    """A learnable 3-class table cut into contiguous folds (sizes differ when n_rows % n_folds).

    As :func:`hpo.data.make_folds` builds them: every fold reads one shared table of raw values
    (here offset and stretched, so the scaling matters) and standardizes it with the mean and
    spread of its own training rows; a ``gaps`` fraction of cells is missing, filled with the
    fold's training median. The engines see the same inputs: Keras ``fit`` gets ``x_train``
    made by numpy, the stacked engine forms each batch in its graph.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_rows, n_features)).astype(np.float32)
    y = ((x[:, 0] + x[:, 1] > 0).astype(np.int32) + (x[:, 2] > 0.8)).astype(np.int32)
    raw = aligned_empty((n_rows, n_features))
    raw[...] = 3.0 * x + 1.0
    if gaps:
        raw[rng.random(raw.shape) < gaps] = np.nan
    table = Table(x=raw, labels=y)
    rows = np.arange(n_rows)
    folds = []
    for index, valid in enumerate(np.array_split(rows, n_folds)):
        train = np.setdiff1d(rows, valid)
        seen = raw[train].astype(np.float64)
        mean, spread = np.nanmean(seen, axis=0), np.nanstd(seen, axis=0)
        scaling = Scaling(
            shift=mean.astype(np.float32),
            scale=spread.astype(np.float32),
            fill=((np.nanmedian(seen, axis=0) - mean) / spread).astype(np.float32),
        )
        folds.append(Fold(index, train, valid, table=table, scaling=scaling))
    return folds


def all_placements() -> list[RegularizationPlan]:
    """Every placement x penalty on the first layer, the transposed pick on the second."""
    plans = []
    for placement in ("activity", "kernel", "both"):
        for l1, l2 in ((ALPHA, 0.0), (0.0, ALPHA), (ALPHA, ALPHA)):
            first = RegularizationPlan.uniform(1, l1=l1, l2=l2, placement=placement).layers[0]
            other = {"activity": "kernel", "kernel": "both", "both": "activity"}[placement]
            second = RegularizationPlan.uniform(1, l1=l2, l2=l1, placement=other).layers[0]
            plans.append(RegularizationPlan((first, second)))
    plans.append(RegularizationPlan((LayerPenalty(), LayerPenalty())))
    return plans


@dataclass
class KerasRun:
    """Per plan and fold: initial weights and validation probabilities after ``fit``."""

    initial: list[list[list[np.ndarray]]]
    probabilities: list[list[np.ndarray]]
    trained_first_fold: list[list[np.ndarray]]  # per plan: fold 0's weights after fit


def keras_reference(
    plans: Sequence[RegularizationPlan], folds: Sequence[Fold], model: ModelSpec
) -> KerasRun:
    """Initial weights and, after ``fit(shuffle=False)``, validation probabilities per plan, fold.

    One compiled Keras model per plan serves every fold: its weights are set to the fold's fresh
    Glorot draw and its optimizer state (step count and slots) zeroed, which is a fresh model to
    ``fit`` (and saves a second of tracing per fold; ``test_a_reused_keras_model_is_a_fresh_one``).
    """
    keras = import_keras()
    weights, probabilities, trained = [], [], []
    for j, plan in enumerate(plans):
        net = build_model(plan, model, n_features=folds[0].n_features, n_classes=N_CLASSES)
        plan_weights, plan_probabilities = [], []
        for fold in folds:
            keras.utils.set_random_seed(1000 + 17 * j + fold.index)
            fresh = build_model(plan, model, n_features=fold.n_features, n_classes=N_CLASSES)
            plan_weights.append(fresh.get_weights())
            net.set_weights(plan_weights[-1])
            for variable in net.optimizer.variables:
                if variable.name != "learning_rate":  # the step count and the slots
                    variable.assign(np.zeros(variable.shape, dtype=np.dtype(variable.dtype)))
            net.fit(
                fold.x_train,
                fold.y_train,
                batch_size=model.batch_size,
                epochs=model.epochs,
                shuffle=False,
                verbose=0,
            )
            plan_probabilities.append(np.asarray(net(fold.x_valid)))
            if fold is folds[0]:
                trained.append(net.get_weights())
        weights.append(plan_weights)
        probabilities.append(plan_probabilities)
        keras.backend.clear_session()
    return KerasRun(weights, probabilities, trained)


@pytest.mark.slow  # checks keras_reference, the helper behind the slow sweeps
def test_a_reused_keras_model_is_a_fresh_one() -> None:
    keras = import_keras()
    folds = synthetic_folds(60)
    plan = all_placements()[2]
    model = replace(MODEL, epochs=2)
    run = keras_reference([plan], folds, model)
    reused = run.probabilities
    for fold, initial, expected in zip(folds, run.initial[0], reused[0], strict=True):
        net = build_model(plan, model, n_features=fold.n_features, n_classes=N_CLASSES)
        net.set_weights(initial)
        net.fit(fold.x_train, fold.y_train, batch_size=16, epochs=2, shuffle=False, verbose=0)
        np.testing.assert_allclose(np.asarray(net(fold.x_valid)), expected, atol=1e-6)
        keras.backend.clear_session()
    assert not np.allclose(reused[0][0], reused[0][1], atol=1e-3)


def max_difference(result: EvaluationResult, expected: Sequence[np.ndarray]) -> float:
    got = result.probabilities
    return max(float(np.abs(g - e).max()) for g, e in zip(got, expected, strict=True))


def stacked(**options: Any) -> StackedEngine:
    return StackedEngine(shuffle=False, keep_probabilities=True, **options)


@pytest.fixture(scope="module")
def placement_case() -> tuple[list[Fold], list[RegularizationPlan], KerasRun]:
    # 91 rows in 3 folds: 60 or 61 training rows, so the last batch holds 12 or 13 rows.
    folds = synthetic_folds(91)
    plans = all_placements()
    return folds, plans, keras_reference(plans, folds, MODEL)


@pytest.mark.slow  # 10 plans x 3 folds of Keras fits first (about 35 s)
@pytest.mark.parametrize("shared", [True, False], ids=["shared-order", "own-order"])
def test_every_placement_and_penalty_matches_keras(
    placement_case: tuple[list[Fold], list[RegularizationPlan], KerasRun], shared: bool
) -> None:
    folds, plans, keras_run = placement_case
    engine = stacked(shared_order=shared)
    results = engine.evaluate(
        plans,
        folds,
        model=MODEL,
        n_classes=N_CLASSES,
        seeds=range(len(plans)),
        initial_weights=keras_run.initial,
    )
    expected = keras_run.probabilities
    differences = [max_difference(r, e) for r, e in zip(results, expected, strict=True)]
    assert max(differences) < TOLERANCE, differences
    for result, plan_expected, trained in zip(
        results, expected, keras_run.trained_first_fold, strict=True
    ):
        assert result.epochs == MODEL.epochs and not result.diverged and not result.pruned
        for fold, probabilities in zip(folds, plan_expected, strict=True):
            predicted = probabilities.argmax(axis=1)
            assert result.predictions[fold.valid_rows].tolist() == predicted.tolist()
        assert result.weights is not None
        assert [w.shape for w in result.weights] == [w.shape for w in trained]
        for got, want in zip(result.weights, trained, strict=True):
            np.testing.assert_allclose(got, want, atol=10 * TOLERANCE)


@pytest.mark.parametrize(
    ("optimizer", "activation", "shared", "n_rows"),
    [
        pytest.param("sgd", "relu", True, 91, marks=pytest.mark.slow),
        pytest.param("rmsprop", "elu", False, 91, marks=pytest.mark.slow),
        pytest.param("adam", "tanh", True, 91, marks=pytest.mark.slow),
        pytest.param("adam", "gelu", False, 60, marks=pytest.mark.slow),
        # 97 rows: 64 or 65 training rows, i.e. 4 or 5 steps per epoch; the 64-row fold sits
        # out the fifth step and its Adam step count lags, as in its own model.fit. The one
        # equivalence case in the quick run (`-m "not slow"`): three placements and penalties.
        ("adam", "relu", True, 97),
        pytest.param("rmsprop", "sigmoid", False, 97, marks=pytest.mark.slow),
    ],
)
def test_optimizers_activations_and_uneven_folds_match_keras(
    optimizer: str, activation: str, shared: bool, n_rows: int
) -> None:
    folds = synthetic_folds(n_rows, seed=n_rows)
    model = replace(MODEL, optimizer=optimizer, activation=activation, epochs=4)
    plans = [all_placements()[i] for i in (0, 4, 8)]
    keras_run = keras_reference(plans, folds, model)
    results = stacked(shared_order=shared).evaluate(
        plans,
        folds,
        model=model,
        n_classes=N_CLASSES,
        seeds=[1, 2, 3],
        initial_weights=keras_run.initial,
    )
    differences = [
        max_difference(r, e) for r, e in zip(results, keras_run.probabilities, strict=True)
    ]
    assert max(differences) < TOLERANCE, differences


@pytest.mark.parametrize("shared", [True, False])
def test_gaps_filled_per_fold_in_the_graph_match_keras_on_numpy_inputs(shared: bool) -> None:
    """The stacked engine scales each batch's rows (and fills their gaps with the fold's
    median) in the graph; Keras fits the fold's matrix made by numpy. Same training."""
    folds = synthetic_folds(91, seed=8, gaps=0.1)
    assert np.isnan(folds[0].table.x).any()
    assert not np.isnan(folds[0].x_train).any()
    model = replace(MODEL, epochs=3)
    plans = [all_placements()[i] for i in (1, 6)]
    keras_run = keras_reference(plans, folds, model)
    results = stacked(shared_order=shared).evaluate(
        plans,
        folds,
        model=model,
        n_classes=N_CLASSES,
        seeds=[1, 2],
        initial_weights=keras_run.initial,
    )
    differences = [
        max_difference(r, e) for r, e in zip(results, keras_run.probabilities, strict=True)
    ]
    assert max(differences) < TOLERANCE, differences


def test_scoring_in_chunks_and_training_in_several_calls_change_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Large folds are scored a chunk of rows at a time and their epochs handed to the graph
    a few at a time (memory); results are those of one chunk and one call."""
    folds = synthetic_folds(200, seed=9, gaps=0.05)
    plans = random_plans(3, seed=4)
    model = replace(MODEL, epochs=7)

    def run(engine: StackedEngine) -> list[EvaluationResult]:
        clear_graph_cache()
        return engine.evaluate(plans, folds, model=model, n_classes=N_CLASSES, seeds=[5, 6, 7])

    whole = run(StackedEngine(keep_probabilities=True))
    whole_classes = run(StackedEngine())  # classes picked in the graph, no probabilities
    # 3 folds x 3 trials x widest layer 8: 3 held-out rows a chunk (23 chunks, the last padded);
    # and one epoch's row orders per graph call.
    monkeypatch.setattr(stacked_module, "_PROBE_FLOATS", 3 * 3 * 8 * 3)
    monkeypatch.setattr(stacked_module, "_ORDER_BYTES", 4 * 3 * 5 * 16)
    chunked = run(StackedEngine(keep_probabilities=True))
    (graph,) = stacked_module._graph_cache.values()
    assert graph.layout.probe_rows == 3 and graph.layout.probe_chunks == 23
    chunked_classes = run(StackedEngine())
    for a, b, c, d in zip(whole, chunked, whole_classes, chunked_classes, strict=True):
        np.testing.assert_array_equal(a.predictions, b.predictions)
        np.testing.assert_array_equal(a.predictions, c.predictions)
        np.testing.assert_array_equal(a.predictions, d.predictions)
        assert a.accuracy == b.accuracy == c.accuracy == d.accuracy
        assert c.probabilities is None
        assert a.probabilities is not None and b.probabilities is not None
        for p, q in zip(a.probabilities, b.probabilities, strict=True):
            np.testing.assert_allclose(p, q, atol=1e-6)


@pytest.mark.slow  # 40 epochs
def test_a_long_smooth_run_stays_at_float_rounding() -> None:
    # With L1 terms, sign(W) flips amplify rounding differences chaotically over hundreds of
    # steps (Keras eager against Keras graph mode drifts just as far); with L2 terms the dynamics
    # are smooth, so 200 steps, a fold that sits out a step each epoch included, must stay close.
    folds = synthetic_folds(97)
    model = replace(MODEL, activation="tanh", epochs=40, learning_rate=0.003)
    plans = [
        RegularizationPlan((LayerPenalty(l2_activity=1e-2), LayerPenalty(l2_kernel=1e-2))),
        RegularizationPlan((LayerPenalty(l2_kernel=1e-2), LayerPenalty(l2_activity=1e-2))),
    ]
    keras_run = keras_reference(plans, folds, model)
    results = stacked().evaluate(
        plans,
        folds,
        model=model,
        n_classes=N_CLASSES,
        seeds=[1, 2],
        initial_weights=keras_run.initial,
    )
    differences = [
        max_difference(r, e) for r, e in zip(results, keras_run.probabilities, strict=True)
    ]
    assert max(differences) < TOLERANCE, differences


@pytest.mark.slow
def test_one_hidden_layer_and_three_hidden_layers_match_keras() -> None:
    folds = synthetic_folds(70, seed=5)
    for hidden in ((7,), (9, 6, 4)):
        model = replace(MODEL, hidden=hidden, epochs=3)
        plans = [
            RegularizationPlan((LayerPenalty(l1_activity=ALPHA, l2_kernel=ALPHA),) * len(hidden)),
            RegularizationPlan((LayerPenalty(l2_activity=ALPHA, l1_kernel=ALPHA),) * len(hidden)),
        ]
        keras_run = keras_reference(plans, folds, model)
        results = stacked().evaluate(
            plans,
            folds,
            model=model,
            n_classes=N_CLASSES,
            seeds=[1, 2],
            initial_weights=keras_run.initial,
        )
        differences = [
            max_difference(r, e) for r, e in zip(results, keras_run.probabilities, strict=True)
        ]
        assert max(differences) < TOLERANCE, (hidden, differences)


@pytest.mark.slow  # 3 seeds x 3 folds x 12 epochs on each engine
def test_free_seeds_agree_with_the_reference_engine_within_noise() -> None:
    dataset = load_dataset(DataSpec(dataset="sklearn:wine", target="target"))
    folds = make_folds(dataset, CVSpec(folds=3, seed=4, stratified=True))
    model = ModelSpec(hidden=(16, 8), learning_rate=3e-3, epochs=12, batch_size=32)
    plan = RegularizationPlan.uniform(2, l1=1e-4, l2=1e-4, placement="both")
    seeds = [1, 2, 3]
    reference = ReferenceEngine(isolate=False).evaluate(
        [plan] * len(seeds), folds, model=model, n_classes=3, seeds=seeds
    )
    fast = StackedEngine(shared_order=False).evaluate(
        [plan] * len(seeds), folds, model=model, n_classes=3, seeds=seeds
    )
    reference_mean = np.mean([r.accuracy for r in reference])
    fast_mean = np.mean([r.accuracy for r in fast])
    # Wine is easy: both land around 0.9 after these epochs; seed-to-seed spread is a few points.
    assert reference_mean > 0.8 and fast_mean > 0.8
    assert abs(reference_mean - fast_mean) < 0.06, (reference_mean, fast_mean)
    assert len({r.accuracy for r in fast}) > 1  # the seeds really differ


def test_without_xla_the_same_formulas_run_as_plain_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    folds = synthetic_folds(91, seed=7)
    plans = all_placements()[:4]
    model = replace(MODEL, epochs=3)
    engine = stacked()
    with_xla = engine.evaluate(plans, folds, model=model, n_classes=N_CLASSES, seeds=[1, 2, 3, 4])
    assert stacked_module._xla_works()  # the TF wheels this project pins ship XLA
    monkeypatch.setattr(stacked_module, "_xla_state", [False])
    clear_graph_cache()
    try:
        plain = engine.evaluate(plans, folds, model=model, n_classes=N_CLASSES, seeds=[1, 2, 3, 4])
    finally:
        clear_graph_cache()
    for a, b in zip(with_xla, plain, strict=True):
        for got, want in zip(a.probabilities, b.probabilities, strict=True):
            np.testing.assert_allclose(got, want, atol=TOLERANCE)


def random_plans(n: int, seed: int = 0) -> list[RegularizationPlan]:
    rng = np.random.default_rng(seed)
    plans = []
    for _ in range(n):
        layers = []
        for _ in range(2):
            placement = str(rng.choice(["activity", "kernel", "both"]))
            l1, l2 = 10 ** rng.uniform(-5, -2, 2)
            layers.append(
                RegularizationPlan.uniform(1, l1=l1, l2=l2, placement=placement).layers[0]
            )
        plans.append(RegularizationPlan(tuple(layers)))
    return plans


@pytest.mark.parametrize("shared", [True, False], ids=["shared-order", "own-order"])
def test_same_plans_and_seeds_give_the_same_results(shared: bool) -> None:
    folds = synthetic_folds(80, seed=3)
    plans = random_plans(3)
    model = replace(MODEL, epochs=6)
    runs = [
        StackedEngine(shared_order=shared, chunk_epochs=chunk).evaluate(
            plans, folds, model=model, n_classes=N_CLASSES, seeds=[7, 8, 9]
        )
        for chunk in (25, 1, 4)
    ]
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert a.accuracy == b.accuracy
            assert a.predictions.tolist() == b.predictions.tolist()
    assert runs[0][0].shared_order is shared
    assert runs[0][0].trials_in_batch == 3
    different_seeds = StackedEngine(shared_order=shared).evaluate(
        plans, folds, model=model, n_classes=N_CLASSES, seeds=[17, 18, 19]
    )
    assert [r.predictions.tolist() for r in different_seeds] != [
        r.predictions.tolist() for r in runs[0]
    ]


def test_shuffling_changes_the_batch_order_every_epoch() -> None:
    folds = synthetic_folds(80, seed=3)
    plans = random_plans(2)
    model = replace(MODEL, epochs=4)
    shuffled, in_order = (
        StackedEngine(shuffle=shuffle, keep_probabilities=True).evaluate(
            plans, folds, model=model, n_classes=N_CLASSES, seeds=[7, 8]
        )
        for shuffle in (True, False)
    )
    assert not np.allclose(shuffled[0].probabilities[0], in_order[0].probabilities[0])


def test_a_diverging_member_fails_alone() -> None:
    folds = synthetic_folds(80, seed=2)
    model = replace(MODEL, optimizer="sgd", learning_rate=0.05, epochs=4)
    calm = RegularizationPlan((LayerPenalty(l2_kernel=1e-4), LayerPenalty(l1_activity=1e-3)))
    other = RegularizationPlan((LayerPenalty(l2_kernel=1e-3), LayerPenalty(l2_activity=1e-3)))
    huge = RegularizationPlan((LayerPenalty(l2_kernel=1e6), LayerPenalty(l1_activity=1e-3)))
    engine = StackedEngine(keep_probabilities=True, chunk_epochs=2)
    baseline = engine.evaluate(
        [calm, other, other], folds, model=model, n_classes=N_CLASSES, seeds=[1, 1, 1]
    )
    with np.errstate(all="ignore"):
        mixed = engine.evaluate(
            [calm, huge, other], folds, model=model, n_classes=N_CLASSES, seeds=[1, 1, 1]
        )
    assert mixed[1].diverged and mixed[1].accuracy == 0.0
    assert (mixed[1].predictions == -1).all()
    assert mixed[1].diverged_folds == (0, 1, 2)
    # Independent up to float rounding: the members share wide matmuls, and how a CPU's kernels
    # block their columns can round a member one ulp differently next to a non-finite neighbour.
    for i in (0, 2):
        assert not mixed[i].diverged
        assert mixed[i].accuracy == baseline[i].accuracy
        for got, want in zip(mixed[i].probabilities, baseline[i].probabilities, strict=True):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


class PruneAtFirstCheckpoint:
    def __init__(self, victims: set[int]) -> None:
        self.victims = victims
        self.calls: list[tuple[int, dict[int, float]]] = []
        self.fold_ends: list[tuple[int, int]] = []

    def on_fold_end(self, member: int, fold: int, accuracy: float) -> None:
        self.fold_ends.append((member, fold))

    def on_checkpoint(self, step: int, accuracies: Mapping[int, float]) -> set[int]:
        self.calls.append((step, dict(accuracies)))
        return set(self.victims) if len(self.calls) == 1 else set()


@pytest.mark.parametrize("shared", [True, False], ids=["shared-order", "own-order"])
def test_pruned_members_stop_at_the_checkpoint_and_the_rest_carry_on(shared: bool) -> None:
    folds = synthetic_folds(80, seed=4)
    plans = random_plans(4, seed=1)
    model = replace(MODEL, epochs=6)
    monitor = PruneAtFirstCheckpoint({1, 2})
    engine = StackedEngine(checkpoint_every=2, keep_probabilities=True, shared_order=shared)
    results = engine.evaluate(
        plans, folds, model=model, n_classes=N_CLASSES, seeds=[3] * 4, monitor=monitor
    )
    assert [step for step, _ in monitor.calls] == [2, 4]
    assert set(monitor.calls[0][1]) == {0, 1, 2, 3}
    assert set(monitor.calls[1][1]) == {0, 3}  # pruned members are no longer trained or reported
    for i in (1, 2):
        assert results[i].pruned and results[i].epochs == 2
        assert results[i].accuracy == pytest.approx(monitor.calls[0][1][i])
    unpruned = StackedEngine(keep_probabilities=True, shared_order=shared).evaluate(
        plans, folds, model=model, n_classes=N_CLASSES, seeds=[3] * 4
    )
    for i in (0, 3):
        assert not results[i].pruned and results[i].epochs == 6
        # The survivors continue in a smaller graph; only float rounding may differ.
        for got, want in zip(results[i].probabilities, unpruned[i].probabilities, strict=True):
            np.testing.assert_allclose(got, want, atol=1e-5)
    assert {member for member, _ in monitor.fold_ends} == {0, 3}


def test_all_pruned_stops_the_batch() -> None:
    folds = synthetic_folds(60, seed=4)
    plans = random_plans(2, seed=2)
    monitor = PruneAtFirstCheckpoint({0, 1})
    results = StackedEngine(checkpoint_every=1).evaluate(
        plans,
        folds,
        model=replace(MODEL, epochs=50),
        n_classes=N_CLASSES,
        seeds=[3, 4],
        monitor=monitor,
    )
    assert len(monitor.calls) == 1
    assert all(r.pruned and r.epochs == 1 for r in results)


def test_results_report_out_of_fold_accuracy_for_every_row() -> None:
    folds = synthetic_folds(75, seed=6)
    results = StackedEngine().evaluate(
        random_plans(2), folds, model=MODEL, n_classes=N_CLASSES, seeds=[1, 2]
    )
    y = np.empty(75, np.int32)
    for fold in folds:
        y[fold.valid_rows] = fold.y_valid
    for result in results:
        assert (result.predictions >= 0).all()
        assert result.accuracy == pytest.approx(float((result.predictions == y).mean()))
        assert len(result.fold_accuracies) == 3 and result.seconds > 0


def test_bad_input_is_refused() -> None:
    folds = synthetic_folds(40)
    engine = StackedEngine()
    with pytest.raises(ValueError, match="seeds"):
        engine.evaluate(random_plans(2), folds, model=MODEL, n_classes=N_CLASSES, seeds=[1])
    with pytest.raises(ValueError, match="hidden layers"):
        engine.evaluate(
            [RegularizationPlan((LayerPenalty(),))],
            folds,
            model=MODEL,
            n_classes=N_CLASSES,
            seeds=[1],
        )
    assert engine.evaluate([], folds, model=MODEL, n_classes=N_CLASSES, seeds=[]) == []


def test_importing_the_engine_does_not_import_tensorflow() -> None:
    code = "import sys, hpo.engines.stacked; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False).returncode == 0
