"""What ``hpo check`` prints, read back and compared with the CSV each test writes.

The column table (kind, missing, distinct, inputs), the class counts and shares, the input
width line; ``[data] ignore_warnings`` through the command line (check and run); TensorFlow's
start-up lines with and without ``--debug``; each of the two many-category rules on its own, at
its threshold; a leak warning in check's output. Expected values are computed from the frame
written, not copied from a run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import optuna_dashboard
import pandas as pd
import pytest
from conftest import hpo, make_frame, one_line_error

from hpo.study.record import DATA_WARNINGS_ATTR

WriteStudy = Callable[..., Path]

FIX = "add it to [data] drop, or to [data] ignore_warnings to keep it on purpose"


def _table(path: Path, target: str = "kind", **keys: object) -> str:
    """A ``[data]`` table over ``path``; ``keys`` are TOML values (lists, strings)."""
    lines = [f'path = "{path}"', f'target = "{target}"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
    return "[data]\n" + "\n".join(lines) + "\n"


def _frame(n_rows: int, seed: int = 0) -> pd.DataFrame:
    """The conftest's learnable table (random classes) without its row id."""
    return make_frame(n_rows, seed).drop(columns=["row"])


def _check(study: Path) -> str:
    """``hpo check STUDY --no-estimate``'s stdout (it must succeed)."""
    result = hpo("check", study, "--no-estimate")
    assert result.exit_code == 0, result.output
    return result.stdout


def _column_rows(out: str) -> dict[str, list[str]]:
    """The feature table's rows, by quoted column name: the cells after the name."""
    table = out[out.index("feature columns (") : out.index("network inputs")].splitlines()
    assert table[1].split() == ["column", "kind", "missing", "distinct", "inputs"]
    return {line.split()[0]: line.split()[1:] for line in table[2:]}


def _warnings(out: str) -> list[str]:
    return [
        line.strip()
        for line in out.splitlines()
        if line.strip().startswith(("warning: ", "warning (possible leak"))
    ]


def _width(frame: pd.DataFrame, column: str) -> int:
    """One-hot width of a text column: one input per value, one more when it has gaps."""
    return int(frame[column].nunique()) + int(frame[column].isna().any())


# --- 1. the column table, the classes and the input width ----------------------------------------


def _profiled_frame(n_rows: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    i = np.arange(n_rows)
    frame = pd.DataFrame(
        {
            "row": i,
            "size": rng.normal(5, 2, n_rows).round(2),
            "count": rng.integers(0, 9, n_rows).astype(float),
            "color": rng.choice(["red", "green", "blue", "teal"], n_rows).astype(object),
            "shape": rng.choice(["square", "round"], n_rows),
            "pain": rng.integers(1, 5, n_rows),  # coded 1-4, declared categorical
            "kind": rng.permutation(np.repeat(["ant", "bee", "fire ant"], [27, 20, 13])),
        }
    )
    frame.loc[i % 6 == 1, "size"] = np.nan
    frame.loc[i % 10 == 4, "count"] = np.nan
    frame.loc[i % 8 == 0, "color"] = None  # empty cells in a text column
    return frame


def test_check_prints_each_columns_gaps_kind_and_distinct_values(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    frame = _profiled_frame()
    path = tmp_path / "profiled.csv"
    frame.to_csv(path, index=False)
    study = write_study(data=_table(path, drop=["row"], categorical=["pain"]))
    out = _check(study)
    assert f"data: {path}: {len(frame)} rows" in out

    numeric, one_hot = ["size", "count"], ["color", "shape", "pain"]
    assert frame[numeric].isna().sum().min() > 0 and frame["color"].isna().sum() > 0
    expected = {}
    for name in numeric + one_hot:
        missing, distinct = int(frame[name].isna().sum()), int(frame[name].nunique())
        if name in numeric:
            cells = ["numeric", str(missing), str(distinct), "1"]
        else:
            cells = ["categorical", str(missing), str(distinct), str(_width(frame, name))]
            cells.append("(one-hot)")
        expected[repr(name)] = cells
    expected["'row'"] = ["dropped", "0"]
    assert _column_rows(out) == expected
    assert f"feature columns ({len(numeric + one_hot)}):" in out

    width = len(numeric) + sum(_width(frame, name) for name in one_hot)
    assert (
        f"network inputs: {width} ({len(numeric)} numeric, {width - len(numeric)} one-hot); "
        "one-hot: 'color', 'shape', 'pain'; dropped: 'row'\n" in out
    )


def test_check_prints_each_class_with_its_count_and_share(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    frame = _profiled_frame()
    path = tmp_path / "profiled.csv"
    frame.to_csv(path, index=False)
    out = _check(write_study(data=_table(path, drop=["row"])))
    counts = frame["kind"].value_counts()
    n_rows = len(frame)

    lines = out[out.index("target 'kind': ") :].splitlines()
    assert lines[0] == f"target 'kind': {len(counts)} classes"
    shown = []
    for line in lines[1 : 1 + len(counts)]:
        match = re.fullmatch(r"  ('.*?') +(\d+) +(\d+\.\d%)", line)
        assert match, line
        shown.append((match[1], int(match[2]), match[3]))
    assert shown == [
        (repr(name), int(counts[name]), f"{counts[name] / n_rows:.1%}")
        for name in sorted(counts.index)  # text classes in their own order
    ]
    assert lines[1 + len(counts)] == (
        f"  always guessing the commonest class scores {counts.max() / n_rows:.3f}"
    )


# --- 2. [data] ignore_warnings through the command line ------------------------------------------


def _id_and_constant_csv(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """A numeric id that increases with the rows (classes shuffled: an identifier, not a
    leak) and a constant text column."""
    frame = _frame(90)
    frame.insert(0, "id", 100 + 2 * np.arange(len(frame)))
    frame["same"] = "yes"
    path = tmp_path / "ids.csv"
    frame.to_csv(path, index=False)
    return path, frame


def _constant_warning() -> str:
    return f"column 'same' has a single value ('yes'): it tells the network nothing; {FIX}"


def test_check_says_which_warnings_ignore_warnings_silenced(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    path, _ = _id_and_constant_csv(tmp_path)
    loud = _check(write_study(data=_table(path)))
    assert [w.split("'")[1] for w in _warnings(loud)] == ["id", "same"]  # both warn unsilenced
    assert "silenced" not in loud

    out = _check(write_study(data=_table(path, ignore_warnings=["id"])))
    assert _warnings(out) == [f"warning: {_constant_warning()}"]
    assert "warnings (1):\n" in out
    assert "\n  (silenced by [data] ignore_warnings: 'id')\n" in out
    assert "column 'id'" not in out
    assert _column_rows(out)["'id'"][0] == "identifier"  # the table still says what it is
    assert "ok: the study can run (1 warning(s) above)" in out


@pytest.mark.slow
def test_a_run_neither_prints_nor_stores_a_silenced_warning(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    path, _ = _id_and_constant_csv(tmp_path)
    study = write_study(data=_table(path, ignore_warnings=["id"]), engine="stacked")
    result = hpo("run", study, "--n-trials", 1, "--epochs", 1)
    assert result.exit_code == 0, result.output
    assert "ran 1 trial (0 pruned, 0 failed)" in result.output
    warned = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warned == [f"warning: {_constant_warning()}"]
    assert "'id'" not in result.stderr
    stored = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/hpo.db")
    assert stored.user_attrs[DATA_WARNINGS_ATTR] == [_constant_warning()]
    note = optuna_dashboard.get_note(stored)
    assert f"### Data warnings\n\n- ⚠ {_constant_warning()}\n\n" in note
    assert "| warnings silenced for | 'id' |" in note
    assert "column 'id'" not in note


def test_ignore_warnings_must_name_a_column(write_study: WriteStudy, tmp_path: Path) -> None:
    path, frame = _id_and_constant_csv(tmp_path)
    columns = ", ".join(repr(c) for c in frame.columns)
    one_line_error(
        hpo(
            "check", write_study(data=_table(path, ignore_warnings=["id", "nope"])), "--no-estimate"
        ),
        f"{path}: column 'nope' listed in [data] ignore_warnings is not in the data; columns are "
        f"{columns}",
    )


# --- 3. --debug shows TensorFlow's start-up lines ------------------------------------------------

NOTICE = "absl::InitializeLog"
ONEDNN = "oneDNN custom operations"


def _hpo_process(cwd: Path, *args: object) -> str:
    """``python -m hpo ARGS`` as a user starts it (no HPO_/TF_/KERAS_ settings); its stderr."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HPO_", "TF_", "KERAS_")) and k != "PYTHONWARNINGS"
    }
    done = subprocess.run(
        [sys.executable, "-m", "hpo", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


@pytest.mark.slow
def test_debug_shows_tensorflow_start_up_lines_and_a_plain_check_does_not(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    # Timing the engine (no --no-estimate) imports TensorFlow in the check's own process.
    study = write_study(engine="stacked", epochs=1, n_trials=1)
    plain = _hpo_process(tmp_path, "check", study)
    assert "timing a few epochs of the engine" in plain  # TensorFlow was imported and ran
    assert NOTICE not in plain
    assert ONEDNN not in plain

    debug = _hpo_process(tmp_path, "--debug", "check", study)
    logged = [line[9:] for line in debug.splitlines() if re.match(r"\d\d:\d\d:\d\d ", line)]
    assert any(
        line.startswith("TensorFlow start-up: WARNING: All log messages before absl::")
        for line in logged
    ), debug
    assert any(line.startswith("TensorFlow start-up: ") and ONEDNN in line for line in logged), (
        debug
    )
    assert not (tmp_path / "hpo.db").exists()


# --- 4. the two many-category rules, each on its own ---------------------------------------------


def _many_warning(frame: pd.DataFrame, column: str, total_width: int) -> str:
    values = frame[column]
    median = float(values.value_counts().median())
    return (
        f"warning: column {column!r} has {values.nunique()} distinct values in {len(frame)} rows "
        f"(a median of {median:g} row{'' if median == 1 else 's'} each); it is {_width(frame, column)} of the "
        f"{total_width} input columns after one-hot encoding; {FIX}"
    )


def _input_width(frame: pd.DataFrame, text: list[str]) -> int:
    numeric = [c for c in frame.columns if c not in text and c != "kind"]
    return len(numeric) + sum(_width(frame, c) for c in text)


def test_more_distinct_values_than_half_the_rows_is_warned(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    frame = _frame(80)
    half = len(frame) // 2
    frame["ref"] = [f"r{i % (half + 1):03d}" for i in range(len(frame))]  # one over half
    frame["lot"] = [f"l{i % half:03d}" for i in range(len(frame))]  # exactly half: below
    assert frame["ref"].nunique() == half + 1 and frame["lot"].nunique() == half < 300
    path = tmp_path / "half.csv"
    frame.to_csv(path, index=False)
    out = _check(write_study(data=_table(path)))
    width = _input_width(frame, ["color", "ref", "lot"])
    assert f"network inputs: {width} " in out
    assert _warnings(out) == [_many_warning(frame, "ref", width)]


def test_more_than_300_distinct_values_is_warned_below_half_the_rows(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    frame = _frame(700)
    frame["ref"] = [f"r{i % 301:03d}" for i in range(len(frame))]  # 301 values: over 300
    frame["lot"] = [f"l{i % 300:03d}" for i in range(len(frame))]  # 300 values: below
    assert frame["ref"].nunique() == 301 < len(frame) / 2
    assert frame["lot"].nunique() == 300 < len(frame) / 2
    path = tmp_path / "many.csv"
    frame.to_csv(path, index=False)
    out = _check(write_study(data=_table(path)))
    width = _input_width(frame, ["color", "ref", "lot"])
    assert f"network inputs: {width} " in out
    assert _warnings(out) == [_many_warning(frame, "ref", width)]


# --- 5. a leak in check's output ----------------------------------------------------------------


def test_check_names_a_column_that_alone_predicts_the_target(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    frame = _frame(120)
    code = frame["kind"].map({"x": 0, "y": 1, "z": 2}).to_numpy()
    rng = np.random.default_rng(11)
    # The class code plus noise of at most 0.2: a tree's cut lies midway between two training
    # values of neighbouring classes, so between k + 0.3 and k + 0.7, and every held-out row
    # falls on its own class's side: out-of-fold accuracy exactly 1.
    frame["code"] = (code + rng.uniform(-0.2, 0.2, len(frame))).round(3)
    frame.insert(0, "same", "yes")  # a column before it with a warning of its own
    path = tmp_path / "leak.csv"
    frame.to_csv(path, index=False)
    out = _check(write_study(data=_table(path)))
    majority = frame["kind"].value_counts().max() / len(frame)
    # The leak leads, marked as everywhere a study's warnings are shown.
    assert _warnings(out) == [
        "warning (possible leak: the score may be inflated): column 'code' alone predicts the "
        f"target with 1.00 CV accuracy (always guessing the commonest class: {majority:.2f}): "
        "an identifier, or a leak recorded with or after the outcome? If it is a real "
        "measurement available when predicting, keep it with [data] ignore_warnings; otherwise "
        "add it to [data] drop",
        f"warning: {_constant_warning()}",
    ]
    assert "warnings (2):\n" in out
    assert "ok: the study can run (2 warning(s) above)" in out
