"""Commands to use the winner outside hpo: export (one Keras model that reads raw rows), predict."""

from __future__ import annotations

from pathlib import Path

import click

from hpo.cli.options import NON_NEGATIVE, data_option, storage_option, storage_url
from hpo.errors import HpoError
from hpo.results.export import (
    check_export_dir,
    default_export_dir,
    export_trial,
    load_export,
    pick_trial,
    predict_rows,
    read_rows,
    training_rows,
)
from hpo.study.creation import load_study
from hpo.study.record import SPEC_ATTR, is_baseline, stored_seed, stored_spec
from hpo.study.stores import data_for

__all__ = ["COMMANDS"]


@click.command()
@click.argument("name")
@click.option(
    "--trial", "trial_number", type=NON_NEGATIVE, help="Export this trial (default: the best)."
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    help="Folder for model.keras and model-card.json (default: ./NAME-trial-N). A previous "
    "export there is replaced; any other non-empty folder is refused.",
)
@storage_option
@data_option("Read the data from this CSV instead of the study's stored source.")
def export(
    name: str,
    trial_number: int | None,
    out_dir: str | None,
    storage: str | None,
    data_path: str | None,
) -> None:
    """Export a trial of study NAME as one Keras model that predicts from raw columns.

    Trains the trial's plan (default: the best trial) on the rows the search used (all rows
    when the study has no holdout) with the trial's seed, and saves it with the preprocessing
    fitted on those rows as Keras layers, so `keras.models.load_model` predicts from raw values
    without hpo; a JSON model card beside it says what it is and how it scored.
    """
    url = storage_url(storage, access="read")
    study = load_study(name, url)
    spec = stored_spec(study)
    if spec is None:
        raise HpoError(
            f"study {name!r} has no stored spec (user attr {SPEC_ATTR}); only studies created by "
            "`hpo run` or `hpo create` can be exported"
        )
    trial = pick_trial(study, trial_number)
    directory = Path(out_dir) if out_dir else default_export_dir(name, trial.number)
    check_export_dir(directory)  # before the data is read and the training starts
    data_path = data_for(study, data_path, url=url)  # the study's stored data, if it has some
    dataset = training_rows(study, spec, data_path=data_path)
    for note in dataset.notes:
        click.echo(f"note: {note}", err=True)
    held = "" if dataset.holdout is None else f" ({len(dataset.holdout.holdout_rows)} held out)"
    what = "the unregularized baseline, " if is_baseline(trial) else ""
    click.echo(
        f"exporting trial {trial.number} of study {name!r} ({what}CV accuracy "
        f"{trial.value:.4f}): training on {dataset.n_rows} rows{held} of {dataset.source}, "
        f"{spec.model.epochs} epochs, trial seed {stored_seed(trial, spec)}",
        err=True,
    )
    done = export_trial(study, spec, trial, dataset, directory)
    if done.replaced is not None:
        click.echo(
            f"replaced the previous export in {directory} (study {done.replaced.get('study')!r}, "
            f"trial {done.replaced.get('trial')})",
            err=True,
        )
    scores = done.card["scores"]
    holdout = scores["holdout"]
    click.echo(
        f"training accuracy {scores['train_accuracy']:.4f} on those rows"
        + ("" if holdout is None else f"; holdout {holdout['mean']:.4f} (`hpo evaluate`)"),
        err=True,
    )
    click.echo(f"wrote {done.model_path} and {done.card_path}")
    click.echo(f"use it: hpo predict {directory} --data NEW.csv")


@click.command()
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option(
    "--data",
    "data_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="CSV of rows to predict, with the columns the study trained on (its target and "
    "dropped columns may be there; they are ignored).",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False),
    help="Write the predictions to this CSV (default: standard output).",
)
def predict(model_dir: str, data_path: str, out_path: str | None) -> None:
    """Predict the class of each row of --data with the export in MODEL_DIR.

    Reads the CSV as hpo reads a study's data (same missing-value markers, whitespace
    stripped), and writes one row per input row: its number, the predicted class and one
    p_<class> probability column per class.
    """
    exported = load_export(model_dir)
    frame, notes = read_rows(data_path, exported)
    for note in notes:
        click.echo(f"note: {note}", err=True)
    card = exported.card
    click.echo(
        f"predicting {len(frame)} rows of {data_path} with trial {card.get('trial')} of study "
        f"{card.get('study')!r} ({len(exported.classes)} classes)",
        err=True,
    )
    predictions = predict_rows(exported, frame, source=data_path)
    if out_path is None:
        click.echo(predictions.to_csv(index=False, float_format="%.6g"), nl=False)
        return
    try:
        predictions.to_csv(out_path, index=False, float_format="%.6g")
    except OSError as exc:
        raise HpoError(
            f"{out_path}: cannot write the predictions ({exc.strerror or exc})"
        ) from None
    click.echo(f"wrote {len(predictions)} predictions to {out_path}", err=True)


COMMANDS: list[click.Command] = [export, predict]
