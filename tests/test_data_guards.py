"""What real CSVs trip on, through real ``hpo`` commands on files written here: an identifier in
no order (horse-colic's ``hospital_num``), classes smaller than the folds (soybean, ecoli) and
the ``[data] drop_classes`` / ``merge_classes`` that fix them, per-column missing markers
(pima's zeros) and ``categorical = "all-integer"``, ``hpo check``'s exact "ok" line and a failed
download that leaves nothing behind, the data source a run records, and the shipped holdout
study. Each asserts the exact line a user reads.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import optuna_dashboard
import pandas as pd
import pytest
from conftest import ROOT, hpo, make_frame, one_line_error

from hpo.spec import spec_from_dict, spec_to_dict
from hpo.study.record import DATA_SOURCE_ATTR

WriteStudy = Callable[..., Path]

FIX = "add it to [data] drop, or to [data] ignore_warnings to keep it on purpose"


def _table(path: Path, target: str = "kind", extra: str = "") -> str:
    return f'[data]\npath = "{path}"\ntarget = "{target}"\n{extra}'


def _with_cv(write_study: WriteStudy, cv: str, data: str) -> Path:
    """A study file whose ``[cv]`` table is ``cv`` (the conftest's: 3 folds, seed 1)."""
    study = write_study(data=data)
    study.write_text(study.read_text().replace("[cv]\nfolds = 3\nseed = 1\n", cv))
    return study


def _check(study: Path, *args: object) -> str:
    result = hpo("check", study, "--no-estimate", *args)
    assert result.exit_code == 0, result.output
    return str(result.stdout)


def _warnings(out: str) -> list[str]:
    return [line.strip() for line in out.splitlines() if line.strip().startswith("warning: ")]


def _notes(out: str) -> list[str]:
    return [line.strip() for line in out.splitlines() if line.strip().startswith("note: ")]


def _kinds(out: str) -> dict[str, tuple[str, str, str]]:
    """Each feature's (kind, missing, distinct) from check's column table."""
    table = out[out.index("feature columns (") : out.index("network inputs")].splitlines()[2:]
    return {line.split()[0]: tuple(line.split()[1:4]) for line in table}  # type: ignore[misc]


# --- 2. identifiers in no order ---------------------------------------------------------------


def _horse_colic(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """299 rows: a hospital number with 283 distinct values in no order (16 patients seen
    twice), beside a continuous measurement that is unique per row too."""
    rng = np.random.default_rng(1)
    n_rows = 299
    numbers = rng.choice(np.arange(520_000, 5_300_000), 283, replace=False)
    hospital = np.concatenate([numbers, rng.choice(numbers, 16, replace=False)])
    rng.shuffle(hospital)
    outcome = rng.choice(["lived", "died", "euthanized"], n_rows)
    frame = pd.DataFrame(
        {
            "hospital_num": hospital,
            "rectal_temp": 37.8 + rng.normal(0, 0.7, n_rows).round(6),
            "pulse": rng.integers(30, 180, n_rows),
            "outcome": outcome,
        }
    )
    path = tmp_path / "horse.csv"
    frame.to_csv(path, index=False)
    return path, frame


def test_a_shuffled_whole_number_id_is_named_and_a_unique_float_measurement_is_not(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    path, frame = _horse_colic(tmp_path)
    assert frame["rectal_temp"].nunique() == len(frame)  # as unique per row as any id
    assert not frame["hospital_num"].is_monotonic_increasing
    out = _check(write_study(data=_table(path, "outcome")))
    assert _warnings(out) == [
        "warning: column 'hospital_num' looks like an identifier: 283 distinct values in 299 "
        f"rows (95%); {FIX}"
    ]
    kinds = _kinds(out)
    assert kinds["'hospital_num'"] == ("identifier", "0", "283")
    assert kinds["'rectal_temp'"] == ("numeric", "0", "299")
    assert kinds["'pulse'"][0] == "numeric"


# --- 3. classes smaller than the folds ----------------------------------------------------------


def _soybean(tmp_path: Path) -> Path:
    """Two classes of 60 rows, one of 4 and one of 1, with five folds."""
    rng = np.random.default_rng(2)
    classes = ["brown-spot"] * 60 + ["frog-eye"] * 60 + ["herbicide-injury"] * 4
    classes += ["2-4-d-injury"]
    n_rows = len(classes)
    frame = pd.DataFrame(
        {
            "leaf": rng.normal(0, 1, n_rows),
            "stem": rng.normal(0, 1, n_rows),
            "class": rng.permutation(classes),
        }
    )
    path = tmp_path / "soybean.csv"
    frame.to_csv(path, index=False)
    return path


FOLDS5 = "[cv]\nfolds = 5\nseed = 1\n"
SHORT = "'2-4-d-injury' (1 row), 'herbicide-injury' (4 rows)"
KEYS = (
    'drop them ([data] drop_classes = ["2-4-d-injury", "herbicide-injury"]) or merge them into '
    'another class ([data] merge_classes = { NAME = ["2-4-d-injury", "herbicide-injury"] })'
)


def test_a_stratified_split_refuses_every_class_smaller_than_the_folds_in_check_and_run(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    path = _soybean(tmp_path)
    study = _with_cv(write_study, FOLDS5 + "stratified = true\n", _table(path, "class"))
    expected = (
        f"{path}: 2 classes have fewer rows than folds=5: {SHORT}; stratified folds need every "
        f"class in each fold: {KEYS}, use fewer folds, or set [cv] stratified = false"
    )
    one_line_error(hpo("check", study, "--no-estimate"), expected)
    one_line_error(hpo("run", study), expected)
    assert not (tmp_path / "hpo.db").exists()


def test_an_unstratified_split_warns_of_small_classes_and_the_keys_remove_them(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    path = _soybean(tmp_path)

    def study(extra: str = "") -> Path:
        return _with_cv(write_study, FOLDS5, _table(path, "class", extra))

    out = _check(study())
    assert _warnings(out) == [
        f"warning: target 'class': 2 classes have fewer rows than folds=5: {SHORT}: some folds "
        f"train without them, and their held-out rows there are always wrong; {KEYS}"
    ]
    fixed = _check(
        study(
            'drop_classes = ["2-4-d-injury"]\n'
            'merge_classes = { brown-spot = ["herbicide-injury"] }\n'
        )
    )
    assert _warnings(fixed) == []
    assert _notes(fixed) == [
        "note: dropped 1 row of class '2-4-d-injury' ([data] drop_classes)",
        "note: merged classes 'herbicide-injury' into 'brown-spot' (4 rows; [data] merge_classes)",
    ]
    assert "target 'class': 2 classes\n  'brown-spot'       64   51.6%\n" in fixed
    assert "\n  'frog-eye'         60   48.4%\n" in fixed
    dropped = _check(study('drop_classes = ["2-4-d-injury"]\n'))
    assert _warnings(dropped) == [
        "warning: target 'class': class 'herbicide-injury' has 4 rows, fewer than folds=5: "
        "some folds train without it, and its held-out rows there are always wrong; drop it "
        '([data] drop_classes = ["herbicide-injury"]) or merge it into another class ([data] '
        'merge_classes = { NAME = ["herbicide-injury"] })'
    ]


def test_a_holdout_raises_what_a_class_needs(write_study: WriteStudy, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    kinds = ["x"] * 40 + ["y"] * 40 + ["z"] * 6
    csv = tmp_path / "six.csv"
    pd.DataFrame({"size": rng.normal(size=86), "kind": rng.permutation(kinds)}).to_csv(
        csv, index=False
    )
    study = _with_cv(write_study, FOLDS5 + "holdout = 0.2\n", _table(csv))
    assert _warnings(_check(study)) == [
        "warning: target 'kind': class 'z' has 6 rows, fewer than the 7 that folds=5 need after "
        "holdout=0.2: some folds train without it, and its held-out rows there are always "
        'wrong; drop it ([data] drop_classes = ["z"]) or merge it into another class ([data] '
        'merge_classes = { NAME = ["z"] })'
    ]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            'drop_classes = ["2-4-d"]\n',
            "{csv}: class '2-4-d' listed in [data] drop_classes is not in the target column "
            "'class'; its classes are '2-4-d-injury', 'brown-spot', 'frog-eye', "
            "'herbicide-injury'",
        ),
        (
            'merge_classes = { other = ["frog-eye", "frogeye"] }\n',
            "{csv}: class 'frogeye' listed in [data] merge_classes.other is not in the target "
            "column 'class'; its classes are '2-4-d-injury', 'brown-spot', 'frog-eye', "
            "'herbicide-injury'",
        ),
        (
            'merge_classes = ["2-4-d-injury"]\n',
            "{study}: `data.merge_classes` must be a table of new class = [classes it replaces] "
            '(e.g. { other = ["a", "b"] }), but got [\'2-4-d-injury\']',
        ),
        (
            'drop_classes = ["frog-eye"]\nmerge_classes = { other = ["frog-eye"] }\n',
            "{study}: [data] class 'frog-eye' is in both `drop_classes` and `merge_classes.other`",
        ),
        (
            "merge_classes = { other = [] }\n",
            "{study}: [data] `merge_classes.other` is empty: list the classes it replaces",
        ),
        (
            'drop_classes = "frog-eye"\n',
            "{study}: `data.drop_classes` must be a list of strings, but got 'frog-eye'",
        ),
    ],
)
def test_bad_class_keys_are_one_line(
    write_study: WriteStudy, tmp_path: Path, extra: str, expected: str
) -> None:
    csv = _soybean(tmp_path)
    study = write_study(data=_table(csv, "class", extra))
    one_line_error(
        hpo("check", study, "--no-estimate"),
        expected.replace("{csv}", str(csv)).replace("{study}", str(study)),
    )


# --- 4. per-column missing markers, all-integer categories -----------------------------------


def _pima(tmp_path: Path) -> Path:
    """Zeros that mean "missing" in glucose and insulin, and a real 0 in pregnancies."""
    rng = np.random.default_rng(4)
    n_rows = 120
    frame = pd.DataFrame(
        {
            "pregnancies": rng.integers(0, 6, n_rows),
            "glucose": rng.integers(60, 200, n_rows),
            "insulin": rng.normal(80, 20, n_rows).round(1),
            "status": rng.choice(["?", "a", "b"], n_rows),
            "outcome": rng.choice(["tested_positive", "tested_negative"], n_rows),
        }
    )
    frame.loc[[3, 8, 50], "glucose"] = 0
    frame.loc[[1, 2, 4, 9], "insulin"] = 0.0
    frame.loc[[0, 1], "pregnancies"] = 0
    path = tmp_path / "pima.csv"
    frame.to_csv(path, index=False)
    return path


def test_missing_markers_per_column_beside_the_global_ones(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    path = _pima(tmp_path)
    markers = 'na_values = { glucose = ["0"], insulin = ["0"], "*" = ["?"] }\n'
    out = _check(write_study(data=_table(path, "outcome", markers)))
    assert _notes(out) == [
        "note: read as missing by [data] na_values per column: 3 values in 'glucose', "
        "4 values in 'insulin'"
    ]
    kinds = _kinds(out)
    zeros = int((pd.read_csv(path)["pregnancies"] == 0).sum())
    assert zeros >= 2 and kinds["'pregnancies'"][:2] == ("numeric", "0")  # its zeros are real
    assert kinds["'glucose'"][:2] == ("numeric", "3")
    assert kinds["'insulin'"][:2] == ("numeric", "4")
    status = (pd.read_csv(path, keep_default_na=False)["status"] == "?").sum()
    assert kinds["'status'"][:2] == ("categorical", str(status))  # "*": every column


def test_every_whole_number_column_is_categorical_with_all_integer(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    rng = np.random.default_rng(5)
    frame = pd.DataFrame(
        {f"c{i}": rng.integers(0, 3, 90) for i in range(12)}
        | {"area": rng.normal(5, 1, 90), "kind": rng.choice(["x", "y"], 90)}
    )
    frame.loc[4, "c0"] = np.nan  # a gap keeps a column of codes whole numbers
    path = tmp_path / "codes.csv"
    frame.to_csv(path, index=False)
    out = _check(write_study(data=_table(path, extra='categorical = "all-integer"\n')))
    assert _notes(out) == [
        'note: [data] categorical = "all-integer": one-hot encoding 12 whole-number columns: '
        "'c0', 'c1', 'c2', 'c3', 'c4', 'c5', 'c6', 'c7', 'c8', 'c9' and 2 more"
    ]
    kinds = _kinds(out)
    assert {k for k, v in kinds.items() if v[0] == "categorical"} == {f"'c{i}'" for i in range(12)}
    assert kinds["'area'"][0] == "numeric"
    assert "network inputs: 38 (1 numeric, 37 one-hot)" in out  # 12 x 3 codes + c0's gap


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "na_values = 0\n",
            "{study}: `data.na_values` must be a list of strings (markers in every column) or a "
            'table of column = [markers] (e.g. { glucose = ["0"], "*" = ["?"] }), but got 0',
        ),
        (
            "na_values = { glucose = [0] }\n",
            "{study}: `data.na_values.glucose` must be a list of strings, but got [0]",
        ),
        (
            'na_values = { glucos = ["0"] }\n',
            "{csv}: column 'glucos' listed in [data] na_values is not in the data; columns are "
            "'pregnancies', 'glucose', 'insulin', 'status', 'outcome'",
        ),
        (
            'na_values = { outcome = ["?"] }\n',
            "{study}: [data] `na_values` lists the target column 'outcome' (rows without a "
            "target: `missing_target`)",
        ),
        (
            'categorical = "all-integers"\n',
            '{study}: `data.categorical` must be a list of column names or "all-integer" (every '
            "whole-number column), but got 'all-integers'",
        ),
    ],
)
def test_bad_marker_and_categorical_keys_are_one_line(
    write_study: WriteStudy, tmp_path: Path, extra: str, expected: str
) -> None:
    csv = _pima(tmp_path)
    study = write_study(data=_table(csv, "outcome", extra))
    one_line_error(
        hpo("check", study, "--no-estimate"),
        expected.replace("{csv}", str(csv)).replace("{study}", str(study)),
    )


def test_the_new_data_keys_are_stored_as_the_study_file_writes_them() -> None:
    raw = {
        "study": {"name": "s"},
        "data": {
            "path": "pima.csv",
            "target": "outcome",
            "na_values": {"*": ["?"], "glucose": ["0"]},
            "categorical": "all-integer",
            "drop_classes": ["a"],
            "merge_classes": {"other": ["b", "c"]},
        },
    }
    spec = spec_from_dict(raw)
    stored = spec_to_dict(spec)["data"]
    assert {k: stored[k] for k in raw["data"]} == raw["data"]
    assert spec_from_dict(json.loads(json.dumps(spec_to_dict(spec)))) == spec


# --- 5. check is exact; the data a run used is recorded ----------------------------------------


def test_check_s_ok_line_repeats_the_data_it_was_given(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    other = tmp_path / "my data.csv"
    make_frame(60, seed=9).to_csv(other, index=False)
    study = write_study()
    out = _check(study, "--data", other)
    assert out.splitlines()[0] == f"data: {other}: 60 rows"
    assert out.splitlines()[-1] == (
        f"ok: the study can run (no warnings): hpo run {study} --data '{other}'"
    )


def test_a_failed_download_leaves_no_folder_behind(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9/nowhere/rows.csv"  # the discard port: nothing listens
    study = tmp_path / "remote.toml"
    study.write_text(f'[study]\nname = "remote"\n[data]\nurl = "{url}"\ntarget = "kind"\n')
    cache = tmp_path / "data-cache"  # $HPO_DATA_DIR in every test
    assert not cache.exists()
    one_line_error(
        hpo("check", study, "--no-estimate"),
        f"{url}: download failed ([Errno 111] Connection refused); download it yourself and "
        "pass --data PATH",
    )
    assert not cache.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["remote.toml"]


@pytest.mark.slow  # TensorFlow's import and one trial: about 15 s
def test_a_run_records_the_data_it_read_and_the_note_says_so(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    copy = tmp_path / "copy.csv"
    make_frame(90).to_csv(copy, index=False)
    remote = 'url = "https://example.org/tiny.csv"\n'
    study = write_study(
        data=f'[data]\n{remote}target = "kind"\ndrop = ["row"]\n', epochs=1, n_trials=1
    )
    result = hpo("run", study, "--data", copy)
    assert result.exit_code == 0, result.output
    sha = hashlib.sha256(copy.read_bytes()).hexdigest()
    loaded = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/hpo.db")
    assert loaded.user_attrs[DATA_SOURCE_ATTR] == {"path": str(copy), "sha256": sha}
    note = optuna_dashboard.get_note(loaded)
    assert f"| source | read from {copy} (sha256 {sha[:12]}) |" in note
    assert "example.org" not in note


# --- 6. the shipped holdout study -------------------------------------------------------------


def test_the_shipped_holdout_study_sets_a_fifth_of_the_rows_aside() -> None:
    study = ROOT / "studies" / "wine-holdout.toml"
    out = _check(study)
    assert out.splitlines()[0] == "data: sklearn:wine: 178 rows"
    assert out.splitlines()[-1] == f"ok: the study can run (no warnings): hpo run {study}"
    from hpo.data import load_folds
    from hpo.spec import load_spec

    spec = load_spec(study)
    dataset, _ = load_folds(spec.data, spec.cv)
    assert dataset.rows_text() == "142 rows (36 more held out for `hpo evaluate`)"


def test_the_note_names_a_download_and_its_hash_without_secrets() -> None:
    from hpo.results.spec_text import spec_markdown

    spec = spec_from_dict(
        {"study": {"name": "s"}, "data": {"url": "https://h.example/x.csv", "target": "y"}}
    )
    used = {
        "path": "data/x.csv",
        "url": "https://alice:hunter2@h.example/x.csv?token=abc",
        "sha256": "ab" * 32,
    }
    note = spec_markdown(spec, source=used)
    assert (
        "| source | data/x.csv, downloaded from https://alice:***@h.example/x.csv "
        "(sha256 abababababab) |"
    ) in note
    assert "hunter2" not in note and "token" not in note


def test_the_recorded_download_url_keeps_no_password_or_token(tmp_path: Path) -> None:
    """optuna-dashboard shows user attributes as they are: the stored source has no secret."""
    from hpo.study.record import store_data_source

    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db")
    store_data_source(
        study,
        {
            "path": "data/x.csv",
            "url": "https://alice:hunter2@h.example/x.csv?token=abc#frag",
            "sha256": "ab" * 32,
        },
    )
    assert study.user_attrs[DATA_SOURCE_ATTR] == {
        "path": "data/x.csv",
        "url": "https://alice:***@h.example/x.csv",
        "sha256": "ab" * 32,
    }


@pytest.mark.parametrize(
    ("key", "value"), [("drop_classes", ["a"]), ("merge_classes", {"ab": ["a", "b"]})]
)
def test_changing_the_classes_of_a_resumed_study_is_refused(
    tmp_path: Path, key: str, value: object
) -> None:
    """Dropping or merging classes changes what every trial is scored on: a resumed study
    keeps its classes, as it keeps its target and columns."""
    from hpo.errors import HpoError
    from hpo.study.creation import create_or_load_study
    from hpo.study.storage import open_storage

    raw = {"study": {"name": "s"}, "data": {"path": "t.csv", "target": "kind"}}
    url = f"sqlite:///{tmp_path}/s.db"
    create_or_load_study(spec_from_dict(raw), open_storage(url))
    changed = {**raw, "data": {**raw["data"], key: value}}
    with pytest.raises(HpoError, match=rf"created with data\.{key}="):
        create_or_load_study(spec_from_dict(changed), open_storage(url))
