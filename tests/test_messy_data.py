"""Real CSVs without surprises: every messy case is written here, small, and checked end to end.

Errors are asserted by their exact text (one line, exit code 1); warnings by the column they
name; a text column with gaps trains with both engines.
"""

from __future__ import annotations

import html
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import optuna_dashboard
import pandas as pd
import pytest
from conftest import NAME, BuiltStudy, hpo, make_frame, one_line_error

from hpo.data import Preprocessor, load_dataset, load_folds
from hpo.data_profile import profile_dataset
from hpo.results.spec_text import ensure_spec_note
from hpo.spec import CVSpec, DataSpec, StudySpec
from hpo.study.record import store_data_warnings, stored_spec

WriteStudy = Callable[..., Path]


def _table(path: Path, target: str = "kind", **keys: object) -> str:
    """A ``[data]`` table over ``path``; ``keys`` are TOML values (lists, strings)."""
    lines = [f'path = "{path}"', f'target = "{target}"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
    return "[data]\n" + "\n".join(lines) + "\n"


def _frame(n_rows: int = 120, seed: int = 0) -> pd.DataFrame:
    """The tiny learnable table without its row id."""
    return make_frame(n_rows, seed).drop(columns=["row"])


# How a leak warning is introduced, in every place that shows one.
LEAK = "warning (possible leak: the score may be inflated)"


def _warned(result_stderr: str) -> dict[str, str]:
    """The warning lines of a run, by the column each names first."""
    found = {}
    for line in result_stderr.splitlines():
        if line.startswith(("warning: column ", f"{LEAK}: column ")):
            column = line.split("'")[1]
            found[column] = line
    return found


def _profile(path: Path, **keys: object) -> dict[str, str]:
    spec = DataSpec(path=str(path), target="kind", **keys)  # type: ignore[arg-type]
    dataset = load_dataset(spec)
    profile = profile_dataset(dataset, CVSpec(folds=3, seed=1), ignore=spec.ignore_warnings)
    return {w.column: w.kind for w in profile.warnings}


# --- gaps in text columns ----------------------------------------------------------------------


def _gappy_csv(tmp_path: Path) -> Path:
    frame = _frame().astype({"color": object})
    frame.loc[[2, 11, 30], "color"] = "?"  # a declared marker ...
    frame.loc[[5, 40], "color"] = None  # ... and empty cells
    path = tmp_path / "gaps.csv"
    frame.to_csv(path, index=False)
    return path


def test_a_text_gap_is_its_own_category_fitted_like_every_other(tmp_path: Path) -> None:
    dataset = load_dataset(
        DataSpec(path=str(_gappy_csv(tmp_path)), target="kind", na_values=("?",))
    )
    prep = Preprocessor().fit(dataset.features)
    assert prep.feature_names[-4:] == ["color_blue", "color_green", "color_red", "color_(missing)"]
    encoded = prep.transform(dataset.features)
    np.testing.assert_array_equal(encoded[:, -4:].sum(axis=1), 1.0)  # exactly one per row
    gaps = dataset.features["color"].isna().to_numpy()
    assert gaps.sum() == 5
    np.testing.assert_array_equal(encoded[:, -1], gaps.astype(np.float32))


@pytest.mark.parametrize(
    "engine",
    # The quick run keeps the stacked engine (the default); the full run checks both.
    [pytest.param("reference", marks=pytest.mark.slow), "stacked"],
)
def test_a_text_column_with_gaps_trains_end_to_end(
    write_study: WriteStudy, tmp_path: Path, engine: str
) -> None:
    path = _gappy_csv(tmp_path)
    study = write_study(data=_table(path, na_values=["?"]), engine=engine, epochs=2, n_trials=2)
    result = hpo("run", study)
    assert result.exit_code == 0, result.output
    assert "ran 2 trials (0 pruned, 0 failed)" in result.output
    assert (
        "120 rows, 3 feature columns (6 network inputs), 3 classes" in result.stderr
    )  # 2 numbers, 3 colours, a gap


def test_numbers_read_as_text_because_of_an_undeclared_marker(tmp_path: Path) -> None:
    frame = _frame().astype({"size": object})
    frame.loc[[3, 8], "size"] = "?"
    path = tmp_path / "marker.csv"
    frame.to_csv(path, index=False)
    assert _profile(path) == {"size": "numbers-as-text"}
    assert _profile(path, na_values=("?",)) == {}


# --- the target ---------------------------------------------------------------------------------


def test_a_float_target_is_refused_as_a_regression_target(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    frame = _frame()
    frame["price"] = np.round(np.linspace(10.0, 99.5, len(frame)), 2)
    path = tmp_path / "float.csv"
    frame.to_csv(path, index=False)
    study = write_study(data=_table(path, target="price"))
    one_line_error(
        hpo("run", study),
        f"{path}: target column 'price' has 120 distinct values, not all whole numbers (e.g. 10.75): "
        "it looks like a regression target, but hpo's objective is classification accuracy; "
        'if the values really are classes, set [data] target_kind = "classes"',
    )


def test_an_integer_target_with_many_values_is_refused_unless_declared(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    frame = _frame()
    frame["rings"] = np.arange(len(frame)) % 24  # 24 counts, 5 rows each
    path = tmp_path / "count.csv"
    frame.to_csv(path, index=False)
    refused = hpo("check", write_study(data=_table(path, target="rings")), "--no-estimate")
    one_line_error(
        refused,
        f"{path}: target column 'rings' has 24 distinct whole numbers (more than 20): it looks "
        "like a regression target, but hpo's objective is classification accuracy; if the "
        'values really are classes, set [data] target_kind = "classes"',
    )
    declared = write_study(data=_table(path, target="rings", target_kind="classes"))
    result = hpo("check", declared, "--no-estimate")
    assert result.exit_code == 0, result.output
    assert "target 'rings': 24 classes" in result.output


def test_about_one_class_per_row_is_refused(write_study: WriteStudy, tmp_path: Path) -> None:
    frame = _frame()
    frame["code"] = [f"c{i // 2}" for i in range(len(frame))]  # 60 classes of 2 rows
    path = tmp_path / "codes.csv"
    frame.to_csv(path, index=False)
    one_line_error(
        hpo("run", write_study(data=_table(path, target="code", drop=["kind"]))),
        f"{path}: target column 'code' has 60 classes in 120 rows, and 60 of them have fewer "
        "rows than folds=3, so cross-validated accuracy would be meaningless; merge or drop "
        "rare classes, or check that this column is the target",
    )


def test_missing_targets_are_refused_or_dropped(write_study: WriteStudy, tmp_path: Path) -> None:
    frame = _frame().astype({"kind": object})
    frame.loc[[0, 7, 9], "kind"] = None
    path = tmp_path / "holes.csv"
    frame.to_csv(path, index=False)
    one_line_error(
        hpo("run", write_study(data=_table(path))),
        f"{path}: target column 'kind' has 3 missing values; drop those rows first, or set "
        '[data] missing_target = "drop"',
    )
    result = hpo("run", write_study(data=_table(path, missing_target="drop"), n_trials=1))
    assert result.exit_code == 0, result.output
    assert (
        "note: dropped 3 of 120 rows whose target 'kind' is missing "
        '([data] missing_target = "drop")' in result.stderr
    )
    assert "data: " in result.stderr and ": 117 rows" in result.stderr


def test_a_target_column_that_appears_twice_is_refused(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    text = _frame().assign(copy=lambda f: f["kind"]).to_csv(index=False)
    path = tmp_path / "twice.csv"
    path.write_text(text.replace(",copy\n", ",kind\n", 1))  # pandas would call it kind.1
    one_line_error(
        hpo("run", write_study(data=_table(path))),
        f"{path}: column name 'kind' appears twice in the header, as columns 4 and 5; "
        "rename or remove one",
    )


def test_duplicate_feature_names_after_stripping_are_refused(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    path = tmp_path / "dup.csv"
    path.write_text("size,weight,size \n" + "".join(f"{i},{i},{i}\n" for i in range(6)))
    one_line_error(
        hpo("check", write_study(data=_table(path, target="weight"))),
        f"{path}: column name 'size' appears twice in the header, as columns 1 and 3 "
        "(written 'size' and 'size '); rename or remove one",
    )


# --- column names -------------------------------------------------------------------------------


def test_whitespace_around_names_is_stripped_once_with_a_note(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    text = _frame().to_csv(index=False)
    path = tmp_path / "spaces.csv"
    path.write_text(text.replace("size,", "size   ,", 1).replace("color,", "color\t,", 1))
    result = hpo("check", write_study(data=_table(path, drop=["size"])), "--no-estimate")
    assert result.exit_code == 0, result.output
    assert (
        "note: stripped surrounding whitespace from 2 column names: 'size   ' -> 'size', "
        "'color\\t' -> 'color'" in result.output
    )
    assert ["'size'", "dropped"] in [line.split()[:2] for line in result.output.splitlines()]


def test_a_missing_column_error_quotes_names_with_their_exact_characters(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    path = tmp_path / "odd.csv"
    path.write_text("a b,kind\n1,x\n2,y\n3,x\n")
    one_line_error(
        hpo("run", write_study(data=_table(path, drop=["ab"]))),
        f"{path}: column 'ab' listed in [data] drop is not in the data; columns are 'a b', 'kind'",
    )


# --- numeric-coded categories -------------------------------------------------------------------


def test_numeric_coded_categories_are_one_hot(tmp_path: Path) -> None:
    frame = _frame()
    frame["pain"] = np.arange(len(frame)) % 4 + 1  # chest-pain type 1-4
    frame.loc[[6], "pain"] = None  # a gap makes the column float: still categories 1-4
    path = tmp_path / "coded.csv"
    frame.to_csv(path, index=False)
    spec = DataSpec(path=str(path), target="kind", categorical=("pain",))
    dataset, folds = load_folds(spec, CVSpec(folds=3, seed=1))
    prep = Preprocessor(dataset.categorical).fit(dataset.features)
    assert "pain" not in prep.numeric
    assert [n for n in prep.feature_names if n.startswith("pain")] == [
        "pain_1",
        "pain_2",
        "pain_3",
        "pain_4",
        "pain_(missing)",
    ]
    # 2 numbers + color (3) + pain (5); z-scored it would have been one column
    assert folds.repeats[0][0].n_features == 10


def test_a_categorical_column_must_exist(write_study: WriteStudy, tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    _frame().to_csv(path, index=False)
    one_line_error(
        hpo("run", write_study(data=_table(path, categorical=["pian"]))),
        f"{path}: column 'pian' listed in [data] categorical is not in the data; columns are "
        "'size', 'weight', 'color', 'kind'",
    )


# --- identifiers and leaks ----------------------------------------------------------------------


def test_a_text_identifier_is_named(tmp_path: Path) -> None:
    path = tmp_path / "names.csv"
    _frame().assign(name=lambda f: [f"person-{i:04d}" for i in range(len(f))]).to_csv(
        path, index=False
    )
    assert _profile(path) == {"name": "identifier"}


def test_a_monotone_numeric_id_is_named(tmp_path: Path) -> None:
    path = tmp_path / "ids.csv"
    frame = _frame()
    frame.insert(0, "id", np.arange(1000, 1000 + len(frame)) * 3)
    frame.to_csv(path, index=False)
    assert _profile(path) == {"id": "identifier"}


def test_an_id_in_the_order_of_the_classes_is_a_leak(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    frame = _frame().sort_values("kind").reset_index(drop=True)
    frame.insert(0, "id", np.arange(len(frame)))
    path = tmp_path / "sorted.csv"
    frame.to_csv(path, index=False)
    result = hpo("run", write_study(data=_table(path), n_trials=1, epochs=1))
    assert result.exit_code == 0, result.output
    warned = _warned(result.stderr)
    assert list(warned) == ["id"]
    accuracy = float(warned["id"].split("alone predicts the target with ")[1].split()[0])
    assert accuracy >= 0.95
    assert "(it increases strictly with row order): an identifier, or a leak" in warned["id"]
    # The warning is stored on the study, for the dashboard's note and the report.
    with sqlite3.connect(tmp_path / "hpo.db") as db:
        (stored,) = db.execute(
            "select value_json from study_user_attributes where key = 'hpo_data_warnings'"
        ).fetchone()
    assert warned["id"].startswith(f"{LEAK}: column 'id' alone predicts the target")
    message = warned["id"].removeprefix(f"{LEAK}: ")
    assert json.loads(stored) == [message]
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/hpo.db")
    note = optuna_dashboard.get_note(study)
    assert f"### Data warnings\n\n- ⚠ **{LEAK}:** {message}\n" in note
    report = hpo("report", "tiny", "--out", tmp_path / "report")
    assert report.exit_code == 0, report.output
    page = (tmp_path / "report" / "report.html").read_text()
    assert '<section id="data-warnings"><h2>Data warnings</h2>' in page
    assert f'<li class="leak"><strong>{LEAK}:</strong> {html.escape(message)}</li>' in page


def test_a_leaking_column_is_named_and_a_plausible_one_is_not(tmp_path: Path) -> None:
    frame = _frame(200)
    labels = frame["kind"].map({"x": 0, "y": 1, "z": 2}).to_numpy()
    rng = np.random.default_rng(5)
    frame["outcome_code"] = labels * 10 + rng.integers(0, 3, len(frame))  # recorded after the fact
    frame["honest"] = labels + rng.normal(0, 0.8, len(frame))  # a good feature, not a leak
    path = tmp_path / "leak.csv"
    frame.to_csv(path, index=False)
    assert _profile(path) == {"outcome_code": "leak"}
    assert _profile(path, ignore_warnings=("outcome_code",)) == {}


def test_a_text_column_with_very_many_categories_is_named_with_its_cost(tmp_path: Path) -> None:
    frame = _frame(400)
    frame["zip"] = [f"z{i % 310:03d}" for i in range(len(frame))]  # 310 values, some repeated
    path = tmp_path / "zips.csv"
    frame.to_csv(path, index=False)
    spec = DataSpec(path=str(path), target="kind")
    profile = profile_dataset(load_dataset(spec), CVSpec(folds=3, seed=1))
    (warning,) = profile.warnings
    assert warning.column == "zip" and warning.kind == "many-categories"
    assert "it is 310 of the 315 input columns after one-hot encoding" in warning.message


# --- hpo check ----------------------------------------------------------------------------------


def test_check_profiles_the_data_without_touching_storage(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    path = tmp_path / "mixed.csv"
    frame = _frame()
    frame.insert(0, "id", np.arange(len(frame)))
    frame["empty"] = np.nan
    frame["same"] = "yes"
    frame.to_csv(path, index=False)
    result = hpo("check", write_study(data=_table(path), epochs=3))
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"data: {path}: 120 rows" in out
    table = out[out.index("feature columns (") : out.index("network inputs")].splitlines()[2:]
    kinds = {line.split()[0]: line.split()[1] for line in table}
    assert kinds == {
        "'id'": "identifier",
        "'size'": "numeric",
        "'weight'": "numeric",
        "'color'": "categorical",
        "'empty'": "empty",
        "'same'": "constant",
    }
    assert "target 'kind': 3 classes" in out
    assert "network inputs: 8 (4 numeric, 4 one-hot); one-hot: 'color', 'same'" in out
    assert "warning: column 'id' looks like an identifier" in out
    assert "warning: column 'empty' is empty (every value is missing)" in out
    assert "warning: column 'same' has a single value ('yes')" in out
    assert "layer  units" in out  # the search space
    assert "per trial on this machine" in out and "reference engine" in out
    assert out.rstrip().endswith(
        f"ok: the study can run (3 warning(s) above): hpo run {tmp_path}/tiny.toml"
    )
    assert not (tmp_path / "hpo.db").exists()
    assert not (tmp_path / "hpo-artifacts").exists()


def test_check_refuses_what_run_would_refuse(write_study: WriteStudy, tmp_path: Path) -> None:
    one_line_error(
        hpo("check", write_study(data=_table(tmp_path / "absent.csv"))),
        f"{tmp_path}/absent.csv: data file not found; fix [data] path or pass --data PATH",
    )


def test_a_study_keeps_its_categorical_columns(write_study: WriteStudy, tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    frame = _frame()
    frame["pain"] = np.arange(len(frame)) % 4
    frame.to_csv(path, index=False)
    assert hpo("run", write_study(data=_table(path), n_trials=1, epochs=1)).exit_code == 0
    changed = write_study(data=_table(path, categorical=["pain"]), n_trials=2, epochs=1)
    one_line_error(
        hpo("run", changed),
        "study 'tiny' was created with data.categorical=[], but this run has ['pain']; use the "
        "study's settings or a new name (--name)",
    )


# --- more of what real files do -----------------------------------------------------------------


def test_a_delimiter_at_the_end_of_every_row_does_not_shift_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "trailing.csv"
    text = _frame().to_csv(index=False)
    lines = text.splitlines()
    path.write_text("\n".join([lines[0], *(line + "," for line in lines[1:])]) + "\n")
    dataset = load_dataset(DataSpec(path=str(path), target="kind"))
    assert list(dataset.features.columns) == ["size", "weight", "color"]
    assert dataset.classes == ("x", "y", "z")


def test_a_delimiter_at_the_end_of_the_header_too_adds_no_column(tmp_path: Path) -> None:
    path = tmp_path / "trailing-header.csv"
    lines = _frame().to_csv(index=False).splitlines()
    path.write_text("".join(line + ",\n" for line in lines))
    dataset = load_dataset(DataSpec(path=str(path), target="kind"))
    assert list(dataset.features.columns) == ["size", "weight", "color"]


def test_uci_style_spaces_after_commas_are_stripped_from_values(tmp_path: Path) -> None:
    path = tmp_path / "adult.csv"
    rows = [
        f"{30 + i}, {'?' if i == 4 else 'Private'}, {'<=50K' if i % 2 else '>50K'}"
        for i in range(12)
    ]
    path.write_text("age, workclass, income\n" + "\n".join(rows) + "\n")
    spec = DataSpec(path=str(path), target="income", na_values=("?",))
    dataset = load_dataset(spec)
    assert dataset.classes == ("<=50K", ">50K")
    assert dataset.features["workclass"].isna().sum() == 1  # ' ?' is the marker '?'
    assert dataset.notes == (
        "stripped surrounding whitespace from 2 column names: ' workclass' -> 'workclass', "
        "' income' -> 'income'",
        "stripped surrounding whitespace from the values of 2 text columns: 'workclass', 'income'",
    )


def test_a_number_too_large_for_float32_is_one_line(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    frame = _frame()
    frame.loc[3, "size"] = 1e39
    path = tmp_path / "huge.csv"
    frame.to_csv(path, index=False)
    one_line_error(
        hpo("run", write_study(data=_table(path))),
        f"{path}: column 'size' has 1 value(s) that are infinite or too large for float32 "
        "(first 1e+39, in data row 4); fix them, mark them missing with [data] na_values, or "
        "drop the column",
    )


def test_blank_header_cells_and_empty_files(write_study: WriteStudy, tmp_path: Path) -> None:
    path = tmp_path / "blank.csv"
    path.write_text(" ,kind\n1,x\n2,y\n")
    assert list(load_dataset(DataSpec(path=str(path), target="kind")).features.columns) == [
        "Unnamed: 0"
    ]
    empty = tmp_path / "header-only.csv"
    empty.write_text("a,kind\n")
    one_line_error(
        hpo("check", write_study(data=_table(empty))),
        f"{empty}: the data has a header but no rows",
    )


def test_a_semicolon_file_gets_a_hint(write_study: WriteStudy, tmp_path: Path) -> None:
    path = tmp_path / "semi.csv"
    path.write_text("a;kind\n1;x\n2;y\n")
    one_line_error(
        hpo("check", write_study(data=_table(path))),
        f"{path}: target column 'kind' not found; columns are 'a;kind' (the header looks "
        "';'-separated; hpo reads comma-separated CSV)",
    )


def test_a_latin1_file_is_told_to_be_utf8(write_study: WriteStudy, tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("a,kind\n1,caf\u00e9\n2,th\u00e9\n".encode("latin-1"))
    result = hpo("check", write_study(data=_table(path)))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {path}: cannot parse as CSV (")
    assert result.stderr.endswith("; save it as UTF-8\n")


def test_names_in_the_study_file_are_stripped_like_the_header(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    _frame().to_csv(path, index=False)
    spec = DataSpec(path=str(path), target="kind ", drop=("size   ",))
    assert (spec.target, spec.drop) == ("kind", ("size",))
    assert list(load_dataset(spec).features.columns) == ["weight", "color"]


def test_a_categorical_column_spells_values_the_same_in_every_fold() -> None:
    frame = pd.DataFrame({"dose": [1.0, 2.0, 2.5, 1.0, None]})
    prep = Preprocessor(categorical=("dose",)).fit(frame)
    assert prep.feature_names == ["dose_1", "dose_2", "dose_2.5", "dose_(missing)"]
    without_fraction = frame.iloc[[0, 1, 3]]  # a fold with no 2.5: still "1" and "2"
    np.testing.assert_array_equal(
        prep.transform(without_fraction), [[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]]
    )


def test_a_study_keeps_its_dropped_columns_and_markers(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    path = tmp_path / "t.csv"
    _frame().to_csv(path, index=False)
    assert hpo("run", write_study(data=_table(path), n_trials=1, epochs=1)).exit_code == 0
    one_line_error(
        hpo("run", write_study(data=_table(path, drop=["size"]), n_trials=2, epochs=1)),
        "study 'tiny' was created with data.drop=[], but this run has ['size']; use the "
        "study's settings or a new name (--name)",
    )


def test_hpo_keeps_its_own_note_up_to_date_and_never_touches_a_persons(tmp_path: Path) -> None:
    spec = DataSpec(dataset="sklearn:iris", target="target")
    study_spec = StudySpec(name="n", data=spec)
    study = optuna.create_study(study_name="n", storage=f"sqlite:///{tmp_path}/n.db")
    assert ensure_spec_note(study, study_spec)
    assert "Data warnings" not in optuna_dashboard.get_note(study)
    store_data_warnings(study, ["column 'petal width (cm)' alone predicts the target"])
    assert ensure_spec_note(study, study_spec)  # a resumed run's warnings reach the note
    assert f"- ⚠ **{LEAK}:** column 'petal width (cm)' alone" in optuna_dashboard.get_note(study)
    assert not ensure_spec_note(study, study_spec)  # already up to date
    optuna_dashboard.save_note(study, "my own words")
    store_data_warnings(study, [])
    assert not ensure_spec_note(study, study_spec)
    assert optuna_dashboard.get_note(study) == "my own words"


def test_a_constant_number_is_shown_as_the_number(tmp_path: Path) -> None:
    frame = _frame()
    frame["seven"] = 7
    frame.to_csv(tmp_path / "seven.csv", index=False)
    spec = DataSpec(path=str(tmp_path / "seven.csv"), target="kind")
    profile = profile_dataset(load_dataset(spec), CVSpec(folds=3, seed=1))
    (warning,) = [w for w in profile.warnings if w.column == "seven"]
    assert warning.message.startswith("column 'seven' has a single value (7): ")


def test_every_place_that_shows_the_score_leads_with_the_leak_marked_alike(
    built: BuiltStudy, tmp_path: Path
) -> None:
    url = built.copy(tmp_path)
    other = "column 'same' has a single value ('yes'): it tells the network nothing"
    leak = "column 'code' alone predicts the target with 1.00 CV accuracy"
    study = optuna.load_study(study_name=NAME, storage=url)
    store_data_warnings(study, [other, leak])
    assert study.user_attrs["hpo_data_warnings"] == [leak, other]  # stored leak first
    marked = f"{LEAK}: {leak}"
    best = hpo("best", NAME, "--storage", url).stdout.splitlines()
    assert best[:3] == [marked, f"warning: {other}", best[2]]
    assert best[2].startswith("best: trial ")
    status = hpo("status", NAME, "--storage", url).stdout.splitlines()
    at = status.index(marked)
    assert status[at + 1] == f"warning: {other}" and status[at + 2].startswith("best: trial ")
    shown = json.loads(hpo("status", NAME, "--storage", url, "--format", "json").stdout)
    assert shown["data_warnings"] == [leak, other]
    record = json.loads(hpo("best", NAME, "--storage", url, "--format", "json").stdout)
    assert record["data_warnings"] == [leak, other]
    # The report and the dashboard's note: the same words, emphasized, leading.
    assert hpo("report", NAME, "--storage", url, "--out", tmp_path / "r").exit_code == 0
    page = (tmp_path / "r" / "report.html").read_text()
    assert (
        f'<ul><li class="leak"><strong>{LEAK}:</strong> {html.escape(leak)}</li>'
        f"<li>{html.escape(other)}</li></ul>"
    ) in page
    assert page.index('id="data-warnings"') < page.index('class="cards"')  # before any score
    assert ensure_spec_note(study, stored_spec(study))  # type: ignore[arg-type]
    note = optuna_dashboard.get_note(study)
    assert f"### Data warnings\n\n- ⚠ **{LEAK}:** {leak}\n- ⚠ {other}\n\n" in note
    first = note.index("\n### ")  # the first section after the title and description
    assert note[first:].startswith("\n### Data warnings\n")
