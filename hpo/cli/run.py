"""Commands for one process and one study: run, best, trials."""

from __future__ import annotations

import csv
import io
import json
from typing import TYPE_CHECKING, Any

import click

from hpo.cli.options import (
    apply_overrides,
    data_option,
    engine_option,
    epochs_option,
    format_option,
    load_study,
    n_trials_option,
    name_option,
    print_best,
    rows_text,
    show_data_findings,
    storage_option,
    storage_url,
    text_table,
    timeout_option,
    train_here,
    trial_record,
    trials_per_batch_option,
)
from hpo.data import load_folds
from hpo.errors import HpoError
from hpo.results.artifacts import ArtifactRecorder
from hpo.spec import load_spec
from hpo.study.budget import trials_to_run
from hpo.study.record import (
    best_trial,
    check_holdout,
    create_or_load_study,
    read_trial,
    store_data_warnings,
    update_stored_spec,
)
from hpo.study.storage import mask_url, open_storage

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
def run(
    study_file: str,
    storage: str | None,
    n_trials: int | None,
    timeout: float | None,
    epochs: int | None,
    data_path: str | None,
    engine: str | None,
    trials_per_batch: int | None,
    name: str | None,
) -> None:
    """Create or resume the study in STUDY_FILE and optimize in this process."""
    spec = apply_overrides(
        load_spec(study_file),
        epochs=epochs,
        engine=engine,
        trials_per_batch=trials_per_batch,
        n_trials=n_trials,
        timeout=timeout,
        name=name,
    )
    # A malformed URL or an unusable SQLite path fails before any data is read.
    storage_url(storage, access="create")
    dataset, folds = load_folds(spec.data, spec.cv, path_override=data_path)
    url = storage_url(storage, announce=True)
    rdb = open_storage(url)
    # A bad [artifacts] path fails here, before any training.
    recorder = ArtifactRecorder(spec, url, folds, dataset=dataset)
    first = folds.repeats[0][0]
    click.echo(
        f"data: {dataset.source}: {rows_text(dataset)}, {dataset.features.shape[1]} feature "
        f"columns ({first.n_features} network inputs), {len(dataset.classes)} classes; "
        f"{spec.cv.folds}-fold CV"
        + (f" x {spec.cv.repeats} repeats" if spec.cv.repeats > 1 else ""),
        err=True,
    )
    warnings = show_data_findings(dataset, spec)
    study, created = create_or_load_study(spec, rdb)
    check_holdout(study, dataset.holdout)
    store_data_warnings(study, warnings)
    if not created:
        # `hpo status` and workers read the budget stored on the study: keep it the one in use.
        update_stored_spec(study, spec)
    left = trials_to_run(study, spec.budget.n_trials)
    click.echo(
        f"study {spec.name!r}: {'created' if created else 'resumed'}; "
        f"{spec.budget.n_trials} trials budgeted, {left} to run",
        err=True,
    )
    summary = train_here(
        study,
        spec,
        folds,
        recorder,
        url=url,
        n_trials=spec.budget.n_trials,
        timeout=spec.budget.timeout,
        stopped="trials in flight marked FAIL; the study is intact",
    )
    click.echo(
        f"ran {summary.completed} trials ({summary.pruned} pruned, {summary.failed} failed) "
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
        click.echo(json.dumps(trial_record(trial), indent=2))
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
