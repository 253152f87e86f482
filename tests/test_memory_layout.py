"""One copy of the data for all folds (issue 13): folds are row positions in one float32 table,
each with its own preprocessing statistics, applied where a fold's rows are formed."""

from __future__ import annotations

import gc
import pickle
import tracemalloc
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

from hpo.data import (
    Dataset,
    Fold,
    FoldSet,
    Preprocessor,
    holdout_fold_set,
    is_aligned,
    make_fold_set,
)
from hpo.engines import stacked as stacked_module
from hpo.engines.stacked import StackedEngine, clear_graph_cache
from hpo.space import RegularizationPlan
from hpo.spec import CVSpec, ModelSpec

N_NUMERIC = 30
MODEL = ModelSpec(hidden=(8, 5), learning_rate=0.01, epochs=2, batch_size=16)


def _dataset(n_rows: int, seed: int = 0) -> Dataset:
    """Numbers far from 0 (a timestamp-like column among them) with gaps, a text column with
    gaps, and a target the first columns predict."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n_rows, N_NUMERIC))
    columns = {f"x{j}": 50.0 + 10.0 * values[:, j] for j in range(N_NUMERIC)}
    columns["x0"] = 1.7e9 + 1e5 * values[:, 0]
    frame = pd.DataFrame(columns)
    for j in range(0, N_NUMERIC, 3):
        frame.iloc[rng.random(n_rows) < 0.05, j] = np.nan
    frame["colour"] = rng.choice(np.array(["red", "green", None], dtype=object), n_rows)
    labels = ((values[:, 0] > 0).astype(np.int32) + (values[:, 1] > 0.5)).astype(np.int32)
    return Dataset(frame, labels, ("a", "b", "c"), "memory test")


def _arrays(root: object) -> Iterator[np.ndarray]:
    """Every numpy array reachable from ``root`` through containers and objects (each once;
    views count as their own arrays here: their bytes are checked through their base)."""
    seen: set[int] = set()
    todo = [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, str | bytes | int | float | type):
            continue
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            yield obj
            if obj.base is not None:
                todo.append(obj.base)
            continue
        todo.extend(gc.get_referents(obj))


def _owned_bytes(arrays: list[np.ndarray]) -> int:
    """Bytes of memory the arrays own (a view owns none)."""
    return sum(a.nbytes for a in arrays if a.flags.owndata)


def test_every_fold_of_every_repeat_reads_one_float32_table() -> None:
    dataset = _dataset(3000)
    folds = make_fold_set(dataset, CVSpec(folds=5, seed=3, repeats=2))
    table = folds.repeats[0][0].table
    width = N_NUMERIC + 3  # the text column: red, green, (missing)
    assert table.x.shape == (3000, width) and table.x.dtype == np.float32
    assert is_aligned(table.x)  # engines may read it in place
    for repeat in folds.repeats:
        for fold in repeat:
            assert fold.table is table
            assert fold.train_rows.dtype == fold.valid_rows.dtype == np.int32
    arrays = list(_arrays(folds))
    assert not [a for a in arrays if a.dtype == np.float64]
    # The table, labels and row positions (K per repeat), not K matrices per repeat.
    n_positions = (
        2 * 3000
    )  # each repeat's folds hold every row once as held out, K-1 times in training
    expected = table.x.nbytes + 3000 * 4 + 5 * n_positions * 4
    assert _owned_bytes(arrays) < expected + 64 * 1024
    assert _owned_bytes(arrays) < 1.5 * table.x.nbytes


def test_building_the_folds_never_holds_a_matrix_per_fold() -> None:
    dataset = _dataset(20_000)
    table_bytes = 20_000 * (N_NUMERIC + 3) * 4
    gc.collect()
    tracemalloc.start()
    try:
        folds = make_fold_set(dataset, CVSpec(folds=5, seed=1))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert folds.repeats[0][0].table.x.nbytes == table_bytes
    # The table, the folds' int32 row positions (0.15x here) and column-sized temporaries
    # (1.55x measured); a float64 copy of the table would add 2x, five fold matrices 5x.
    assert peak < 1.75 * table_bytes, peak / table_bytes


def test_a_fold_is_preprocessed_with_its_own_training_rows() -> None:
    dataset = _dataset(1000)
    features = dataset.features
    folds = make_fold_set(dataset, CVSpec(folds=4, seed=2)).repeats[0]
    schema = Preprocessor().fit(features).categorical
    for fold in folds:
        prep = Preprocessor().fit(features.iloc[fold.train_rows], categories=schema)
        for rows, got in ((fold.train_rows, fold.x_train), (fold.valid_rows, fold.x_valid)):
            assert got.dtype == np.float32
            # float32 rounding only, even for the column around 1.7e9: the table keeps values
            # centred, so no precision is lost to the offset.
            np.testing.assert_allclose(got, prep.transform(features.iloc[rows]), rtol=0, atol=1e-6)
        # Statistics differ between folds, so a leak of another fold's would show.
        assert fold.scaling.shift[0] != folds[0].scaling.shift[0] or fold is folds[0]
        gap = np.flatnonzero(features["x0"].iloc[fold.valid_rows].isna().to_numpy())[0]
        expected = (prep.medians["x0"] - prep.means["x0"]) / prep.stds["x0"]
        assert fold.x_valid[gap, 0] == np.float32(expected)  # the fold's own median, exactly


def test_an_outlier_a_fold_does_not_train_on_costs_it_no_precision() -> None:
    """A fold's inputs depend on its training rows alone, numerically too: one sentinel value
    (1e9 among values of 0 to 1) in a row the fold holds out must not coarsen the others."""
    rng = np.random.default_rng(3)
    values = rng.random(1001)
    values[17] = 1e9
    frame = pd.DataFrame({"x": values, "y": rng.normal(size=1001)})
    dataset = Dataset(frame, (values > 0.5).astype(np.int32), ("a", "b"), "outlier test")
    folds = make_fold_set(dataset, CVSpec(folds=5, seed=1)).repeats[0]
    without = [fold for fold in folds if 17 not in set(fold.train_rows)]
    assert without
    for fold in folds:
        prep = Preprocessor().fit(frame.iloc[fold.train_rows])
        expected = prep.transform(frame.iloc[fold.train_rows])
        np.testing.assert_allclose(fold.x_train, expected, rtol=0, atol=1e-5)
    for fold in without:  # as many distinct inputs as distinct values, not a handful
        assert len(np.unique(fold.x_train[:, 0])) == len(np.unique(values[fold.train_rows]))


def test_the_holdout_fold_is_exactly_the_preprocessor_of_the_search_rows() -> None:
    search, held = _dataset(600, seed=1), _dataset(150, seed=2)
    (fold,) = holdout_fold_set(search, held).repeats[0]
    prep = Preprocessor().fit(search.features)
    np.testing.assert_array_equal(fold.x_train, prep.transform(search.features))
    np.testing.assert_array_equal(fold.x_valid, prep.transform(held.features))
    np.testing.assert_array_equal(fold.y_valid, held.labels)


def test_a_fold_of_ready_arrays_keeps_its_rows_where_they_were() -> None:
    """The arrays-in form (``hpo export`` trains and scores on every row)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    y = rng.integers(0, 3, 40).astype(np.int32)
    everything = np.arange(40)
    fold = Fold(0, everything, everything, x, y, x, y)
    np.testing.assert_array_equal(fold.x_train, x)
    np.testing.assert_array_equal(fold.x_valid, x)
    np.testing.assert_array_equal(fold.y_train, y)
    train, valid = np.arange(0, 40, 2), np.arange(1, 40, 2)
    split = Fold.from_arrays(1, train, valid, x[train], y[train], x[valid], y[valid])
    np.testing.assert_array_equal(split.x_valid, x[valid])
    np.testing.assert_array_equal(split.table.x, x)  # each row at its position
    with pytest.raises(TypeError):
        Fold(0, everything, everything, x, y)


def test_what_the_reference_engine_sends_its_training_process_is_one_table() -> None:
    """A fold travels to the reference engine's child with the shared table and its positions;
    the child makes that one fold's matrix while it fits."""
    folds = make_fold_set(_dataset(5000), CVSpec(folds=5, seed=1)).repeats[0]
    table_bytes = folds[0].table.x.nbytes
    sent = pickle.dumps(folds[2])
    assert len(sent) < table_bytes + 5000 * 4 * 2 + 64 * 1024
    received = pickle.loads(sent)
    np.testing.assert_array_equal(received.x_train, folds[2].x_train)


def _engine_run(folds: FoldSet, seeds: list[int]) -> None:
    plans = [RegularizationPlan.uniform(2, l1=1e-4, placement="both")] * len(seeds)
    StackedEngine().evaluate(plans, folds.repeats[0], model=MODEL, n_classes=3, seeds=seeds)


def test_the_stacked_engine_reads_the_table_in_place_and_reuses_its_graph() -> None:
    clear_graph_cache()
    folds = make_fold_set(_dataset(500), CVSpec(folds=3, seed=1))
    table = folds.repeats[0][0].table
    _engine_run(folds, [1, 2])
    (graph,) = stacked_module._graph_cache.values()
    (tensors,) = stacked_module._table_cache.values()
    # A second batch of the same shape: same graph, no retracing, no new tensors of the data.
    _engine_run(folds, [3, 4])
    assert list(stacked_module._graph_cache.values()) == [graph]
    assert list(stacked_module._table_cache.values()) == [tensors]
    assert graph.train.experimental_get_tracing_count() == 1
    assert graph.probe.experimental_get_tracing_count() == 1
    # The graph's input is the table's own memory: a write to it shows (a private table here;
    # nothing writes a table in use).
    before = float(tensors.x[0, 1])
    table.x[0, 1] = before + 1.0
    assert float(tensors.x[0, 1]) == float(table.x[0, 1]) != before
    # The tensors go when the table does.
    del folds, table, tensors
    gc.collect()
    assert not stacked_module._table_cache
