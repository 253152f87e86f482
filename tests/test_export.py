"""``hpo export`` and ``hpo predict``: the chosen plan as one Keras model that reads raw rows.

One small study over a messy table (numbers with gaps, a constant column, text with gaps, a
true/false column, a numeric-coded ``[data] categorical`` column with a gap, a name with ``/``)
is trained and exported once per module. The exported model is loaded by a Python in which hpo
cannot be imported and fed the raw CSV columns; its probabilities must be those of hpo's own
pipeline (a :class:`Preprocessor` fitted on the same rows, then the trained network).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, hpo, make_frame, one_line_error, study_toml

from hpo.data import Preprocessor, load_dataset, split_holdout
from hpo.engines.network import build_model
from hpo.results.export import load_export, model_inputs
from hpo.space import RegularizationPlan
from hpo.spec import load_spec

COLUMNS = ["size/cm", "weight", "color", "batch", "flag", "grade"]
TAKES = "'size/cm', 'weight', 'color', 'batch', 'flag', 'grade'"


def _messy_frame(n_rows: int = 90) -> pd.DataFrame:
    frame = make_frame(n_rows).rename(columns={"size": "size/cm"})
    frame["size/cm"] = frame["size/cm"].round(3)
    frame.loc[frame.index % 10 == 1, "size/cm"] = np.nan
    frame["batch"] = 5.0  # constant: hpo scales it by 1
    frame.loc[frame.index % 11 == 5, "color"] = None
    frame["flag"] = frame.index % 3 == 0
    label = frame["kind"].map({"x": 0, "y": 1, "z": 2})
    grade = np.where(label == 2, 10.0, 1.0 + (frame.index % 2))  # codes 1, 2, 10
    frame["grade"] = grade
    frame.loc[frame.index % 13 == 4, "grade"] = np.nan
    return frame


def _study_file(root: Path, *, name: str = "messy", extra: str = "") -> Path:
    csv = root / "messy.csv"
    _messy_frame().to_csv(csv, index=False)
    data = (
        f'[data]\npath = "{csv}"\ntarget = "kind"\ndrop = ["row"]\ncategorical = ["grade"]\n'
        'ignore_warnings = ["batch"]\n'
    )
    text = study_toml(
        name=name,
        data_table=data,
        epochs=3,
        engine='name = "stacked"\ntrials_per_batch = 2',
        n_trials=2,
    )
    path = root / f"{name}.toml"
    path.write_text(text.replace("[cv]\n", f"[cv]\n{extra}", 1))
    return path


@dataclass(frozen=True)
class Exported:
    root: Path
    url: str
    study_file: Path
    csv: Path
    folder: Path
    stderr: str

    @property
    def card(self) -> dict[str, Any]:
        return json.loads((self.folder / "model-card.json").read_text())


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exported]:
    """The messy study, run (2 trials, 3 epochs) and its best trial exported to ``export/``."""
    root = tmp_path_factory.mktemp("export")
    study_file = _study_file(root)
    url = f"sqlite:///{root / 'hpo.db'}"
    folder = root / "export"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        ran = hpo("run", study_file, "--storage", url)
        assert ran.exit_code == 0, ran.output
        result = hpo("export", "messy", "--storage", url, "--out", folder)
        assert result.exit_code == 0, result.output
    yield Exported(root, url, study_file, root / "messy.csv", folder, result.stderr)


# Runs with -I (no PYTHONPATH, no user site, not the current folder) and without the editable
# install's finder: `import hpo` must fail. Only the card, pandas and Keras are used.
_WITHOUT_HPO = textwrap.dedent(
    """
    import importlib.util, json, sys, warnings
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path[:] = [p for p in sys.path if not (p == ROOT or p.startswith(ROOT + "/tests"))]
    assert importlib.util.find_spec("hpo") is None, "hpo is importable"
    import numpy as np, pandas as pd, keras, tensorflow as tf

    folder, csv, out = sys.argv[1:4]
    card = json.load(open(folder + "/model-card.json"))
    frame = pd.read_csv(csv, na_values=card["na_values"] or None)
    inputs = {}
    for column in card["columns"]:
        values = frame[column["name"]]
        if column["dtype"] == "string":
            text = values.astype(str).where(values.notna(), "")
            inputs[column["input"]] = tf.constant(text.to_numpy(dtype=str))
        else:
            inputs[column["input"]] = tf.constant(values.to_numpy(dtype="float64"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # loads cleanly: no optimizer or name mismatch
        model = keras.models.load_model(folder + "/" + card["model_file"])
    np.save(out, model.predict(inputs, verbose=0))
    """
).replace("ROOT", repr(str(ROOT)))


def _predict_without_hpo(folder: Path, csv: Path, work: Path) -> np.ndarray:
    script = work / "without_hpo.py"
    script.write_text(_WITHOUT_HPO)
    out = work / "probabilities.npy"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    done = subprocess.run(
        [sys.executable, "-I", str(script), str(folder), str(csv), str(out)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return np.load(out)


def _hpo_pipeline(exported: Exported, features: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """hpo's own way: a Preprocessor fitted on the training rows, then the trained network
    (rebuilt from the plan by ``build_model``, with the exported weights). Returns the network's
    inputs and probabilities, after checking that the export's preprocessing layers give those
    same inputs for ``features``."""
    import keras
    import tensorflow as tf

    spec = load_spec(exported.study_file)
    dataset = load_dataset(spec.data)
    prep = Preprocessor(dataset.categorical).fit(dataset.features)
    x = prep.transform(features)
    card = exported.card
    assert card["features"] == prep.feature_names
    model = keras.models.load_model(exported.folder / "model.keras", compile=False)
    plan = RegularizationPlan.from_dict(card["plan"]["regularization"])
    net = build_model(plan, spec.model, n_features=x.shape[1], n_classes=len(dataset.classes))
    net.set_weights(model.layers[-1].get_weights())  # the network: the model's last layer

    columns = load_export(exported.folder).columns
    arrays = model_inputs(features, columns)
    layers = model.get_layer("hpo_preprocess")  # raw columns in, in the data's order
    preprocessed = np.asarray(layers([tf.constant(arrays[c.input]) for c in columns]))
    np.testing.assert_allclose(preprocessed, x, rtol=1e-6, atol=1e-6)
    return x, np.asarray(net(x, training=False))


@pytest.mark.slow  # a study with real training, an export, a second Python
def test_the_export_predicts_without_hpo_as_hpo_does(exported: Exported, tmp_path: Path) -> None:
    got = _predict_without_hpo(exported.folder, exported.csv, tmp_path)
    dataset = load_dataset(load_spec(exported.study_file).data)
    _, expected = _hpo_pipeline(exported, dataset.features)
    assert got.shape == (90, 3)
    np.testing.assert_array_equal(got.argmax(axis=1), expected.argmax(axis=1))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)

    # `hpo predict` on the same rows: the same classes and probabilities.
    result = hpo("predict", exported.folder, "--data", exported.csv)
    assert result.exit_code == 0, result.output
    assert "predicting 90 rows of" in result.stderr
    table = pd.read_csv(io.StringIO(result.stdout))
    assert list(table.columns) == ["row", "predicted", "p_x", "p_y", "p_z"]
    assert table["row"].tolist() == list(range(1, 91))
    classes = np.array(["x", "y", "z"])
    assert table["predicted"].tolist() == classes[expected.argmax(axis=1)].tolist()
    np.testing.assert_allclose(table[["p_x", "p_y", "p_z"]], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # uses the trained study
def test_the_card_says_what_was_exported(exported: Exported) -> None:
    import optuna

    study = optuna.load_study(study_name="messy", storage=exported.url)
    card = exported.card
    assert card["format"] == "hpo-export" and card["model_file"] == "model.keras"
    assert card["study"] == "messy"
    assert card["trial"] == study.best_trial.number
    assert card["scores"]["cv_accuracy"] == study.best_value
    assert card["scores"]["holdout"] is None
    assert card["plan"]["regularization"] == study.best_trial.user_attrs["plan"]
    assert card["plan"]["params"] == study.best_trial.params
    assert card["seed"]["trial"] == study.best_trial.user_attrs["seed"]
    assert card["classes"] == ["x", "y", "z"]
    assert card["target"] == "kind" and card["dropped"] == ["row"] and card["na_values"] == []
    assert card["trained_on"]["rows"] == 90 and card["trained_on"]["of"] == 90
    assert set(card["versions"]) >= {"hpo", "tensorflow", "keras", "python"}
    kinds = {c["name"]: (c["kind"], c["dtype"]) for c in card["columns"]}
    assert list(kinds) == COLUMNS
    assert kinds == {
        "size/cm": ("numeric", "float64"),
        "weight": ("numeric", "float64"),
        "batch": ("numeric", "float64"),
        "color": ("categorical", "string"),
        "flag": ("categorical", "string"),
        "grade": ("categorical", "float64"),
    }
    by_name = {c["name"]: c for c in card["columns"]}
    assert by_name["size/cm"]["input"] == "size_cm"  # Keras refuses '/' in a name
    assert by_name["color"]["categories"] == ["blue", "green", "red"]
    assert by_name["color"]["missing_category"] is True
    assert by_name["flag"]["categories"] == ["False", "True"]
    assert by_name["grade"]["categories"] == ["1", "10", "2"]  # hpo's text order
    assert by_name["grade"]["missing_category"] is True
    assert by_name["batch"]["std"] == 1.0
    assert "training on 90 rows of" in exported.stderr


@pytest.mark.slow  # uses the trained study
def test_predict_takes_unseen_categories_and_gaps(exported: Exported, tmp_path: Path) -> None:
    new = pd.DataFrame(
        {
            # other column order, the target and a dropped column present: all fine
            "kind": ["x", None, "z", "y"],
            "grade": [7.0, np.nan, 10.0, 2.0],
            "color": ["purple", None, "red", "  blue "],
            "flag": [True, None, False, True],
            "row": [1, 2, 3, 4],
            "size/cm": [np.nan, np.nan, 4.0, 1e3],
            "weight": [9.0, np.nan, np.nan, 10.0],
            "batch": [5.0, np.nan, 7.0, 5.0],
        }
    )
    csv = tmp_path / "new.csv"
    new.to_csv(csv, index=False)
    out = tmp_path / "predictions.csv"
    result = hpo("predict", exported.folder, "--data", csv, "--out", out)
    assert result.exit_code == 0, result.output
    assert f"wrote 4 predictions to {out}" in result.stderr
    table = pd.read_csv(out)
    assert table["row"].tolist() == [1, 2, 3, 4]
    assert set(table["predicted"]) <= {"x", "y", "z"}
    p = table[["p_x", "p_y", "p_z"]].to_numpy()
    assert np.all(np.isfinite(p)) and np.all(p >= 0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)

    # The model's preprocessing equals hpo's on these rows: an unseen category is all zeros,
    # a gap is the (missing) category (or the median, for a number).
    rows = new[COLUMNS].assign(color=["purple", None, "red", "blue"])
    rows["flag"] = rows["flag"].map({True: "True", False: "False"})
    x, probabilities = _hpo_pipeline(exported, rows)
    np.testing.assert_allclose(p, probabilities, rtol=1e-4, atol=1e-6)
    # Numbers (3), then color (blue, green, red, missing), flag (False, True), grade (1, 10,
    # 2, missing).
    assert x[0, 3:7].tolist() == [0, 0, 0, 0]  # color 'purple': unseen
    assert x[0, 9:13].tolist() == [0, 0, 0, 0]  # grade 7: unseen
    assert x[1, 3:7].tolist() == [0, 0, 0, 1]  # color missing
    assert x[1, 9:13].tolist() == [0, 0, 0, 1]  # grade missing
    assert x[3, 3:7].tolist() == [1, 0, 0, 0]  # '  blue ' read as 'blue'


@pytest.mark.slow  # uses the trained study
def test_predict_refuses_missing_unexpected_and_bad_values(
    exported: Exported, tmp_path: Path
) -> None:
    frame = _messy_frame(4)
    csv = tmp_path / "new.csv"

    frame.drop(columns=["weight"]).to_csv(csv, index=False)
    result = hpo("predict", exported.folder, "--data", csv)
    one_line_error(result, f"{csv}: missing column 'weight'; the model takes the columns {TAKES}")

    frame.assign(extra=1, other=2).to_csv(csv, index=False)
    result = hpo("predict", exported.folder, "--data", csv)
    one_line_error(
        result,
        f"{csv}: unexpected columns 'extra', 'other'; the model takes the columns {TAKES}",
    )

    frame.drop(columns=["color"]).rename(columns={"grade": "Grade"}).to_csv(csv, index=False)
    result = hpo("predict", exported.folder, "--data", csv)
    one_line_error(
        result,
        f"{csv}: missing columns 'color', 'grade'; unexpected column 'Grade'; the model takes "
        f"the columns {TAKES}",
    )

    frame.astype({"weight": object}).assign(weight=["1.5", "heavy", None, "2"]).to_csv(
        csv, index=False
    )
    result = hpo("predict", exported.folder, "--data", csv)
    one_line_error(
        result,
        f"{csv}: column 'weight' holds numbers, but data row 2 has 'heavy'; a missing value "
        "is an empty cell",
    )

    csv.write_bytes(b"size/cm,weight\n\xff\xfe,1\n")
    result = hpo("predict", exported.folder, "--data", csv)
    assert result.exit_code == 1 and result.stderr.startswith(f"Error: {csv}: cannot parse as CSV")

    result = hpo("predict", exported.folder, "--data", tmp_path / "absent.csv")
    one_line_error(result, f"{tmp_path / 'absent.csv'}: no such file")


@pytest.mark.slow  # uses the trained study
@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
def test_predict_on_a_damaged_model_file_is_one_line(
    exported: Exported, tmp_path: Path, damage: str
) -> None:
    folder = tmp_path / "export"
    shutil.copytree(exported.folder, folder)
    model = folder / exported.card["model_file"]
    whole = model.read_bytes()
    model.write_bytes(whole[: len(whole) // 2] if damage == "truncated" else b"\0" * 64)
    csv = tmp_path / "new.csv"
    _messy_frame(4).to_csv(csv, index=False)
    result = hpo("predict", folder, "--data", csv)
    one_line_error(
        result,
        f"{model}: not a readable Keras model file (damaged or cut short); export the trial "
        "again with `hpo export`",
    )


@pytest.mark.slow  # trains an export
def test_export_replaces_its_own_folder_only(exported: Exported, tmp_path: Path) -> None:
    stranger = tmp_path / "notes"
    stranger.mkdir()
    (stranger / "todo.txt").write_text("mine")
    result = hpo("export", "messy", "--storage", exported.url, "--out", stranger)
    one_line_error(
        result,
        f"{stranger}: folder is not empty and holds no hpo export (model-card.json); choose "
        "another --out or empty it",
    )
    assert sorted(p.name for p in stranger.iterdir()) == ["todo.txt"]

    import keras

    again = tmp_path / "again"
    assert hpo("export", "messy", "--storage", exported.url, "--out", again).exit_code == 0
    (again / "predictions.csv").write_text("kept")
    result = hpo("export", "messy", "--storage", exported.url, "--out", again)
    assert result.exit_code == 0, result.output
    number = exported.card["trial"]
    assert f"replaced the previous export in {again} (study 'messy', trial {number})" in (
        result.stderr
    )
    assert sorted(p.name for p in again.iterdir()) == [
        "model-card.json",
        "model.keras",
        "predictions.csv",
    ]
    # The trial's seed: the same network every time.
    first = keras.models.load_model(exported.folder / "model.keras").layers[-1].get_weights()
    second = keras.models.load_model(again / "model.keras").layers[-1].get_weights()
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # a study with a holdout, `hpo evaluate`, then an export
def test_export_trains_on_the_search_rows_and_carries_the_holdout_score(tmp_path: Path) -> None:
    study_file = _study_file(tmp_path, name="held", extra="holdout = 0.25\nstratified = true\n")
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    assert hpo("run", study_file, "--storage", url).exit_code == 0
    evaluated = hpo("evaluate", "held", "--storage", url, "--top", "1", "--seeds", "2")
    assert evaluated.exit_code == 0, evaluated.output
    result = hpo("export", "held", "--storage", url, "--trial", "0")  # the baseline is fine
    assert result.exit_code == 0, result.output
    folder = Path("held-trial-0")  # the default --out, in the working folder (tmp_path)
    assert f"wrote {folder / 'model.keras'} and {folder / 'model-card.json'}" in result.stdout
    assert "training on 67 rows (23 held out)" in result.stderr
    card = json.loads((folder / "model-card.json").read_text())
    assert card["trial"] == 0 and card["baseline"] is True
    assert card["trained_on"]["rows"] == 67 and card["trained_on"]["of"] == 90
    spec = load_spec(study_file)
    dataset = load_dataset(spec.data)
    split = split_holdout(dataset, spec.cv)
    assert split is not None and card["trained_on"]["holdout_sha256"] == split.fingerprint
    # The preprocessing statistics are the search rows' alone.
    prep = Preprocessor(dataset.categorical).fit(dataset.features.iloc[split.search_rows])
    weight = next(c for c in card["columns"] if c["name"] == "weight")
    assert weight["mean"] == pytest.approx(prep.means["weight"])
    assert weight["median"] == pytest.approx(prep.medians["weight"])
    import optuna

    stored = optuna.load_study(study_name="held", storage=url).user_attrs["holdout:evaluation"]
    row = next(p for p in stored["plans"] if p["trial"] == 0)
    assert card["scores"]["holdout"]["mean"] == pytest.approx(row["mean"])
    assert card["scores"]["holdout"]["holdout_rows"] == 23


def test_export_refuses_a_trial_it_cannot_export(tmp_path: Path) -> None:
    """No training needed: a created study holds only its queued baseline (trial 0, WAITING)."""
    study_file = _study_file(tmp_path)
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    assert hpo("create", study_file, "--storage", url).exit_code == 0
    one_line_error(
        hpo("export", "messy", "--storage", url, "--trial", "5"),
        "study 'messy' has no trial 5 (it has only trial 0)",
    )
    one_line_error(
        hpo("export", "messy", "--storage", url, "--trial", "0"),
        "study 'messy': trial 0 is WAITING, not COMPLETE; complete trials: none",
    )
    one_line_error(
        hpo("export", "messy", "--storage", url),
        "study 'messy' has no complete trial to export yet",
    )
    assert not (tmp_path / "messy-trial-0").exists()
    one_line_error(
        hpo("predict", tmp_path, "--data", study_file.with_name("messy.csv")),
        f"{tmp_path}: not an hpo export (no readable model-card.json); make one with "
        "`hpo export NAME`",
    )
