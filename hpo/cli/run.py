"""Commands for one process and one study: run, best, trials."""

from __future__ import annotations

import csv
import io
import json
from typing import TYPE_CHECKING, Any

import click

from hpo.api import run_study
from hpo.cli.options import (
    COUNT,
    apply_overrides,
    data_option,
    engine_option,
    epochs_option,
    format_option,
    n_trials_option,
    name_option,
    storage_option,
    storage_url,
    timeout_option,
    trials_per_batch_option,
)
from hpo.cli.output import echo_err, print_best, text_table, trial_record
from hpo.errors import HpoError
from hpo.spec import load_spec
from hpo.study.creation import load_study
from hpo.study.record import best_trial, read_trial, stored_data_warnings
from hpo.study.storage import mask_url

if TYPE_CHECKING:
    import optuna

__all__ = ["COMMANDS"]


@click.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@storage_option
@n_trials_option("Global trial budget of the study (finished + running).")
@timeout_option
@epochs_option("Override [model] epochs (e.g. a quick look).")
@data_option("Read the data from this CSV instead of the study file's source.")
@engine_option
@trials_per_batch_option
@name_option
@click.option(
    "--workers",
    type=COUNT,
    envvar="HPO_WORKERS",
    default=None,
    help="Training processes: this one and N-1 `hpo worker`s on the same study "
    "[default: one per usable core with the stacked engine, 1 with the reference engine, whose "
    "TensorFlow uses every core itself; $HPO_WORKERS]; 1 trains in this process only.",
)
def run(
    study_file: str,
    storage: str | None,
    n_trials: int | None,
    timeout: float | None,
    epochs: int | None,
    data_path: str | None,
    engine: str | None,
    trials_per_batch: int | str | None,
    name: str | None,
    workers: int | None,
) -> None:
    """Create or resume the study in STUDY_FILE and optimize it, one training process per
    usable core."""
    spec = apply_overrides(
        load_spec(study_file),
        epochs=epochs,
        engine=engine,
        trials_per_batch=trials_per_batch,
        n_trials=n_trials,
        timeout=timeout,
        name=name,
    )
    outcome = run_study(
        spec,
        data=data_path,
        storage=storage,
        say=echo_err,
        warn=echo_err,
        workers=workers,
    )
    summary, study, url = outcome.summary, outcome.study, outcome.storage_url
    click.echo(
        f"ran {summary.completed} trial{'' if summary.completed == 1 else 's'} "
        f"({summary.pruned} pruned, {summary.failed} failed) "
        f"in {summary.seconds:.1f} s"
    )
    print_best(study, mask_url(url))


@click.command()
@click.argument("name")
@storage_option
@format_option("text", "json")
def best(name: str, storage: str | None, fmt: str) -> None:
    """Show the best trial of study NAME."""
    url = storage_url(storage)
    study = load_study(name, url)
    trial = best_trial(study)
    if fmt == "json":
        if trial is None:
            raise HpoError(f"study {name!r} has no complete trial yet")
        record = {**trial_record(trial), "data_warnings": stored_data_warnings(study)}
        click.echo(json.dumps(record, indent=2))
    else:
        print_best(study, mask_url(url))


_TRIAL_COLUMNS = ("number", "state", "value", "fold_std", "seconds", "engine")


def _trial_row(trial: optuna.trial.FrozenTrial, param_names: list[str]) -> dict[str, Any]:
    stored = read_trial(trial)
    row: dict[str, Any] = {
        "number": trial.number,
        "state": trial.state.name,
        "value": trial.value,
        "fold_std": stored.fold_std,
        "seconds": stored.seconds,
        "engine": stored.engine,
    }
    for param in param_names:
        row[param] = trial.params.get(param)
    return row


@click.command()
@click.argument("name")
@storage_option
@format_option("table", "csv", "json")
def trials(name: str, storage: str | None, fmt: str) -> None:
    """List the trials of study NAME."""
    study = load_study(name, storage_url(storage))
    all_trials = study.get_trials(deepcopy=False)
    if fmt == "json":
        click.echo(json.dumps([trial_record(t) for t in all_trials], indent=2))
        return
    param_names = sorted({p for t in all_trials for p in t.params})
    rows = [_trial_row(t, param_names) for t in all_trials]
    columns = [*_TRIAL_COLUMNS, *param_names]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        click.echo(out.getvalue(), nl=False)
        return
    click.echo(text_table(columns, rows))


COMMANDS: list[click.Command] = [run, best, trials]
