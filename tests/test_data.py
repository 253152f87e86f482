from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED_CSV, make_frame

from hpo import HpoError
from hpo.data import Preprocessor, load_dataset, make_folds
from hpo.spec import CVSpec, DataSpec


def _data(path: Path, **kw: object) -> DataSpec:
    return DataSpec(path=str(path), target=kw.pop("target", "kind"), **kw)  # type: ignore[arg-type]


def test_preprocessing_uses_training_rows_only(tiny_csv: Path) -> None:
    dataset = load_dataset(_data(tiny_csv, drop=("row",)))
    folds = make_folds(dataset, CVSpec(folds=3, seed=1))
    columns = Preprocessor().fit(dataset.features).feature_names
    size = columns.index("size")
    for fold in folds:
        train = dataset.features.iloc[fold.train_rows]
        # z-scored with the training rows' own mean and std: exactly 0 and 1 there ...
        assert fold.x_train[:, size].mean() == pytest.approx(0.0, abs=1e-5)
        assert fold.x_train[:, size].std() == pytest.approx(1.0, abs=1e-5)
        # ... and the held-out rows are scaled by those same training statistics.
        expected = (dataset.features["size"].iloc[fold.valid_rows] - train["size"].mean()) / train[
            "size"
        ].std(ddof=0)
        np.testing.assert_allclose(fold.x_valid[:, size], expected, rtol=1e-5, atol=1e-5)


def test_missing_numbers_get_the_training_median(tiny_csv: Path) -> None:
    dataset = load_dataset(_data(tiny_csv, drop=("row",)))
    fold = make_folds(dataset, CVSpec(folds=3, seed=1))[0]
    weight = Preprocessor().fit(dataset.features).feature_names.index("weight")
    train = dataset.features.iloc[fold.train_rows]["weight"]
    valid = dataset.features.iloc[fold.valid_rows]["weight"]
    filled = (train.median() - train.fillna(train.median()).mean()) / train.fillna(
        train.median()
    ).std(ddof=0)
    gaps = valid.isna().to_numpy()
    assert gaps.any()
    np.testing.assert_allclose(fold.x_valid[gaps, weight], filled, rtol=1e-5)


def test_text_columns_are_one_hot(tiny_csv: Path) -> None:
    dataset = load_dataset(_data(tiny_csv, drop=("row",)))
    prep = Preprocessor().fit(dataset.features)
    assert prep.feature_names == ["size", "weight", "color_blue", "color_green", "color_red"]
    encoded = prep.transform(dataset.features)
    assert encoded.shape == (90, 5)
    np.testing.assert_array_equal(encoded[:, 2:].sum(axis=1), 1.0)


def test_folds_cover_every_row_once(tiny_csv: Path) -> None:
    dataset = load_dataset(_data(tiny_csv, drop=("row",)))
    folds = make_folds(dataset, CVSpec(folds=4, seed=2))
    held_out = np.sort(np.concatenate([f.valid_rows for f in folds]))
    np.testing.assert_array_equal(held_out, np.arange(90))
    for fold in folds:
        assert not set(fold.train_rows) & set(fold.valid_rows)


def test_missing_data_file(tmp_path: Path) -> None:
    with pytest.raises(
        HpoError, match=r"nope.csv: data file not found; fix \[data\] path or pass --data PATH"
    ):
        load_dataset(_data(tmp_path / "nope.csv"))


def test_unreadable_data_file(tmp_path: Path) -> None:
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00\x00garbage\x00\n\x81\x82")
    with pytest.raises(HpoError, match=r"binary.csv: cannot parse as CSV"):
        load_dataset(_data(binary))
    with pytest.raises(HpoError, match=r"is a directory, not a CSV file"):
        load_dataset(_data(tmp_path))


def test_missing_target_column(tiny_csv: Path) -> None:
    with pytest.raises(
        HpoError, match=r"tiny.csv: target column 'species' not found; columns are 'row', 'size'"
    ):
        load_dataset(_data(tiny_csv, target="species"))


def test_single_class_target(tmp_path: Path) -> None:
    path = tmp_path / "one.csv"
    frame = make_frame()
    frame["kind"] = "x"
    frame.to_csv(path, index=False)
    with pytest.raises(
        HpoError,
        match=r"one.csv: target column 'kind' has a single class \('x'\); classification needs at least 2",
    ):
        load_dataset(_data(path))


def test_stratified_class_smaller_than_folds(tmp_path: Path) -> None:
    path = tmp_path / "rare.csv"
    frame = make_frame()
    frame.loc[:1, "kind"] = "rare"
    frame.to_csv(path, index=False)
    dataset = load_dataset(_data(path))
    with pytest.raises(
        HpoError,
        match=re.escape(
            "class 'rare' has 2 rows, fewer than folds=3; stratified folds need every class in "
            'each fold: drop it ([data] drop_classes = ["rare"]) or merge it into another class '
            '([data] merge_classes = { NAME = ["rare"] }), use fewer folds, or set [cv] '
            "stratified = false"
        ),
    ):
        make_folds(dataset, CVSpec(folds=3, stratified=True))
    assert len(make_folds(dataset, CVSpec(folds=3, stratified=False))) == 3


def test_package_dataset_loads_offline() -> None:
    dataset = load_dataset(DataSpec(dataset="sklearn:wine", target="target"))
    assert dataset.n_rows == 178 and dataset.classes == ("class_0", "class_1", "class_2")
    with pytest.raises(
        HpoError, match="'sklearn:nothing' is not a data set shipped with scikit-learn"
    ):
        load_dataset(DataSpec(dataset="sklearn:nothing", target="target"))


def test_url_download_is_cached_and_checked(tmp_path: Path, tiny_csv: Path) -> None:
    import hashlib

    url = tiny_csv.as_uri()
    good = hashlib.sha256(tiny_csv.read_bytes()).hexdigest()
    cache = tmp_path / "cache" / "tiny.csv"
    dataset = load_dataset(DataSpec(url=url, path=str(cache), sha256=good, target="kind"))
    assert cache.exists() and dataset.n_rows == 90
    tiny_csv.unlink()  # the second load must come from the cache
    assert load_dataset(DataSpec(url=url, path=str(cache), target="kind")).n_rows == 90
    with pytest.raises(HpoError, match=r"sha256 is [0-9a-f]{64}, but the study file expects 0{64}"):
        load_dataset(
            DataSpec(
                url=cache.as_uri(), path=str(tmp_path / "other.csv"), sha256="0" * 64, target="kind"
            )
        )
    with pytest.raises(HpoError, match=r"download failed .*pass --data PATH"):
        load_dataset(
            DataSpec(url="http://127.0.0.1:9/x.csv", path=str(tmp_path / "x.csv"), target="kind")
        )


@pytest.mark.skipif(not SHARED_CSV.exists(), reason="needs ../shared/data/jh-simple-dataset.csv")
def test_course_data_set() -> None:
    dataset = load_dataset(
        DataSpec(path=str(SHARED_CSV), target="product", drop=("id",), na_values=("NA", "?"))
    )
    assert dataset.n_rows == 2000
    assert dataset.classes == tuple("abcdefg")
    assert int(pd.isna(dataset.features["income"]).sum()) == 61
    folds = make_folds(dataset, CVSpec(folds=5, shuffle=True, seed=42))
    assert [len(f.valid_rows) for f in folds] == [400] * 5
    assert folds[0].x_train.shape == (1600, 47)
    assert not np.isnan(folds[0].x_train).any()
