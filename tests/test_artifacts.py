"""Artifacts: where they go, what the recorder leaves on which trials, and that they are right.

The ``built`` fixture (conftest.py) is one small real study (reference engine, 2 epochs, 5 trials,
pruning checkpoints on) trained with the recorder as ``on_result``, once per test session; the
dashboard, report and rerun tests read the same study.
"""

from __future__ import annotations

import csv
import io
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import (
    N_TRIALS,
    TOP_K,
    BuiltStudy,
    load,
    train_study,
    write_results_spec,
)

from hpo.results.artifacts import (
    ArtifactRecorder,
    artifact_dir_for,
    confusion_counts,
    open_artifact_store,
    trial_artifacts,
)
from hpo.spec import load_spec


def read_artifact(directory: Path, artifact_id: str) -> bytes:
    with open_artifact_store(directory, create=False).open_reader(artifact_id) as fh:
        return bytes(fh.read())


# --- where artifacts go ----------------------------------------------------------------------


def test_artifact_dir_is_beside_the_sqlite_file_unless_the_spec_names_one(tmp_path: Path) -> None:
    spec = load_spec(write_results_spec(tmp_path))
    assert artifact_dir_for(f"sqlite:///{tmp_path}/runs/hpo.db", spec) == (
        tmp_path / "runs" / "hpo-artifacts"
    )
    assert artifact_dir_for("sqlite:///study.db", None) == Path("study-artifacts")
    assert artifact_dir_for("postgresql://u:pw@db.example/hpo", spec) == Path("artifacts")
    shared = load_spec(
        write_results_spec(tmp_path, extra='[artifacts]\npath = "/mnt/shared/art"\n')
    )
    assert artifact_dir_for(f"sqlite:///{tmp_path}/hpo.db", shared) == Path("/mnt/shared/art")


def test_confusion_counts_leave_out_rows_never_predicted() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    predictions = np.array([0, 1, 1, -1, 2, 0])  # -1: a diverged fold's row
    counts = confusion_counts(labels, predictions, 3)
    assert counts.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    assert counts.sum() == 5


def test_refit_without_the_rows_is_refused(tmp_path: Path) -> None:
    from hpo.data import load_dataset, make_fold_set

    spec = load_spec(write_results_spec(tmp_path, extra='[artifacts]\nmodel = "refit"\n'))
    folds = make_fold_set(load_dataset(spec.data), spec.cv)
    with pytest.raises(ValueError, match="needs the rows: pass dataset="):
        ArtifactRecorder(spec, f"sqlite:///{tmp_path}/x.db", folds)


def test_an_artifact_failure_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import optuna

    from hpo.data import load_dataset, make_fold_set
    from hpo.engines.contract import EvaluationResult

    # Live artifacts: the ones written on the hot path, as each trial finishes.
    spec = load_spec(write_results_spec(tmp_path, extra="[artifacts]\nlive = true\n"))
    folds = make_fold_set(load_dataset(spec.data), spec.cv)
    recorder = ArtifactRecorder(spec, f"sqlite:///{tmp_path}/x.db", folds)
    shutil.rmtree(recorder.directory)
    recorder.directory.write_text("not a folder")  # every write into the store now fails
    trial = optuna.create_study(storage=f"sqlite:///{tmp_path}/x.db").ask()
    result = EvaluationResult(
        accuracy=0.5, fold_accuracies=(0.5, 0.5, 0.5), predictions=np.zeros(90, np.int32),
        epochs=2, seconds=1.0,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="hpo"):
        recorder(trial, result)
    assert f"trial 0: artifacts not saved to {recorder.directory}" in caplog.text


# --- what the recorder leaves on a real study ------------------------------------------------


def _expected_among_best(values: list[float]) -> set[int]:
    """Trials that ranked in the top TOP_K of the trials finished before them (ties count in)."""
    return {
        i for i, v in enumerate(values) if sum(1 for earlier in values[:i] if earlier > v) < TOP_K
    }


def _check_folds_table(directory: Path, study: Any, trial: Any) -> None:
    tables = [a for a in trial_artifacts(study, trial) if a.filename.endswith("-folds.csv")]
    assert [a.filename for a in tables] == [f"trial-{trial.number}-folds.csv"]
    assert tables[0].mimetype == "text/csv"
    rows = list(
        csv.DictReader(io.StringIO(read_artifact(directory, tables[0].artifact_id).decode()))
    )
    assert [int(r["fold"]) for r in rows] == [1, 2, 3]
    assert sum(int(r["rows"]) for r in rows) == 90
    assert [float(r["accuracy"]) for r in rows] == pytest.approx(
        trial.user_attrs["fold_accuracies"], abs=1e-6
    )


def _check_png(directory: Path, study: Any, trial: Any) -> None:
    from PIL import Image

    png = next(a for a in trial_artifacts(study, trial) if a.filename.endswith(".png"))
    assert png.mimetype == "image/png"
    image = Image.open(io.BytesIO(read_artifact(directory, png.artifact_id)))
    assert image.format == "PNG" and image.width >= 400 and image.height >= 300
    assert len(set(image.convert("RGB").getdata())) > 50  # drawn cells and text, not blank


def test_only_the_final_best_get_files_table_matrix_and_model(built: BuiltStudy) -> None:
    study = load(built.url)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * N_TRIALS
    final_top = {t.number for t in sorted(trials, key=lambda t: (-t.value, t.number))[:TOP_K]}
    for trial in trials:
        n = trial.number
        names = sorted(a.filename for a in trial_artifacts(study, trial))
        expected = (
            [f"trial-{n}-confusion.png", f"trial-{n}-fold1.keras", f"trial-{n}-folds.csv"]
            if n in final_top
            else []
        )
        assert names == expected, n
    for number in final_top:
        _check_folds_table(built.artifact_dir, study, study.trials[number])
    _check_png(built.artifact_dir, study, study.best_trial)


@pytest.mark.slow  # trains a second study
def test_live_artifacts_give_every_trial_its_table_and_the_best_so_far_their_matrix(
    tmp_path: Path,
) -> None:
    spec = load_spec(
        write_results_spec(
            tmp_path, name="live", extra=f"[artifacts]\ntop_k = {TOP_K}\nlive = true\n"
        )
    )
    study, _ = train_study(spec, f"sqlite:///{tmp_path}/live.db", artifact_dir=tmp_path / "store")
    trials = study.get_trials()
    among_best = _expected_among_best([t.value for t in trials])
    final_top = {t.number for t in sorted(trials, key=lambda t: (-t.value, t.number))[:TOP_K]}
    assert final_top <= among_best  # the final best always ranked when they finished
    assert len(among_best) < N_TRIALS  # so the test notices artifacts on every trial
    for trial in trials:
        names = sorted(a.filename for a in trial_artifacts(study, trial))
        n = trial.number
        expected = [f"trial-{n}-folds.csv"]
        if n in among_best:
            expected.append(f"trial-{n}-confusion.png")
        if n in final_top:
            expected.append(f"trial-{n}-fold1.keras")
        assert names == sorted(expected), n
        _check_folds_table(tmp_path / "store", study, trial)
    _check_png(tmp_path / "store", study, study.best_trial)


def _regularizers(layer: Any) -> tuple[Any, Any]:
    """A layer's (activity, kernel) regularizers as (class name, config), None where absent."""

    def config(regularizer: Any) -> Any:
        if regularizer is None:
            return None
        return type(regularizer).__name__, regularizer.get_config()

    return config(layer.activity_regularizer), config(layer.kernel_regularizer)


def test_fold_model_is_the_first_folds_trained_network(built: BuiltStudy, tmp_path: Path) -> None:
    from hpo.data import load_dataset, make_fold_set
    from hpo.engines.keras_model import import_keras
    from hpo.engines.network import build_model
    from hpo.space import RegularizationPlan

    keras = import_keras()
    study = load(built.url)
    best = study.best_trial
    model = next(a for a in trial_artifacts(study, best) if a.filename.endswith(".keras"))
    path = tmp_path / "model.keras"
    path.write_bytes(read_artifact(built.artifact_dir, model.artifact_id))
    net = keras.saving.load_model(path)
    fold = make_fold_set(load_dataset(built.spec.data), built.spec.cv).repeats[0][0]
    predicted = net.predict(fold.x_valid, verbose=0).argmax(axis=1)
    # Same weights, same rows: the saved model scores exactly the trial's first-fold accuracy.
    assert float((predicted == fold.y_valid).mean()) == pytest.approx(
        best.user_attrs["fold_accuracies"][0], abs=1e-6
    )
    # The saved network carries the trial's own penalties, on exactly the layers its plan names.
    plan = RegularizationPlan.from_dict(best.user_attrs["plan"])
    fresh = build_model(plan, built.spec.model, n_features=fold.n_features, n_classes=3)
    assert [_regularizers(layer) for layer in net.layers] == [
        _regularizers(layer) for layer in fresh.layers
    ]
    assert any(r != (None, None) for r in map(_regularizers, net.layers))  # not a plain network


def test_the_spec_is_the_studys_note(built: BuiltStudy) -> None:
    import optuna_dashboard

    note = optuna_dashboard.get_note(load(built.url))
    assert note.startswith("## Study `results`\n")
    assert "| 1 | 8 | 1e-06 – 0.1 | 1e-06 – 0.1 | activity, kernel, both | no |" in note
    assert "| folds | 3-fold KFold |" in note
    assert "| model file | the model trained on the first fold |" in note
    assert "sqlite" not in note  # the storage URL is not part of the spec


@pytest.mark.slow  # trains a second study, then refits on all rows
def test_refit_models_are_written_at_the_end_for_the_final_best(tmp_path: Path) -> None:
    from hpo.engines.keras_model import import_keras

    spec = load_spec(
        write_results_spec(
            tmp_path, name="refit", n_trials=2, extra='[artifacts]\ntop_k = 1\nmodel = "refit"\n'
        )
    )
    url = f"sqlite:///{tmp_path}/refit.db"
    study, recorder = train_study(spec, url, artifact_dir=tmp_path / "store")
    best = study.best_trial
    by_trial = {
        t.number: [a.filename for a in trial_artifacts(study, t)] for t in study.get_trials()
    }
    assert f"trial-{best.number}-refit.keras" in by_trial[best.number]
    assert all(not name.endswith("fold1.keras") for names in by_trial.values() for name in names)
    other = 1 - best.number
    assert f"trial-{other}-refit.keras" not in by_trial[other]
    assert recorder.finalize(study) == 0  # already there: no second refit
    refit = next(a for a in trial_artifacts(study, best) if a.filename.endswith("refit.keras"))
    path = tmp_path / "refit.keras"
    path.write_bytes(read_artifact(tmp_path / "store", refit.artifact_id))
    net = import_keras().saving.load_model(path)
    assert net.input_shape == (None, 5) and net.output_shape == (None, 3)


@pytest.mark.slow  # a second study, and a refit of its trial by the reference protocol
def test_an_engine_without_weights_still_gets_its_fold_model(tmp_path: Path) -> None:
    from dataclasses import replace

    from hpo.data import load_dataset, make_fold_set
    from hpo.engines.keras_model import import_keras
    from hpo.engines.reference import ReferenceEngine
    from hpo.space import suggest_plan
    from hpo.study.creation import create_or_load_study
    from hpo.study.storage import open_storage

    spec = load_spec(
        write_results_spec(tmp_path, name="noweights", extra="[artifacts]\ntop_k = 1\n")
    )
    url = f"sqlite:///{tmp_path}/w.db"
    folds = make_fold_set(load_dataset(spec.data), spec.cv)
    study, _ = create_or_load_study(spec, open_storage(url))
    recorder = ArtifactRecorder(spec, url, folds)
    trial = study.ask()
    plan, seed = suggest_plan(trial, spec.search), 1234
    trial.set_user_attr("plan", plan.to_dict())
    trial.set_user_attr("seed", seed)
    result = ReferenceEngine(isolate=False).evaluate(
        [plan], folds.repeats[0], model=spec.model, n_classes=3, seeds=[seed]
    )[0]
    recorder(trial, replace(result, weights=None))  # as an engine that keeps no weights
    study.tell(trial, result.accuracy)

    assert recorder.finalize(study) == 3  # its table, its matrix and the retrained model
    frozen = study.get_trials()[0]
    model = next(a for a in trial_artifacts(study, frozen) if a.filename == "trial-0-fold1.keras")
    path = tmp_path / "m.keras"
    path.write_bytes(read_artifact(recorder.directory, model.artifact_id))
    net = import_keras().saving.load_model(path)
    fold = folds.repeats[0][0]
    predicted = net(fold.x_valid, training=False).numpy().argmax(axis=1)
    # Retrained by the reference protocol with the trial's plan and seed: the same first fold.
    assert float((predicted == fold.y_valid).mean()) == pytest.approx(result.fold_accuracies[0])
