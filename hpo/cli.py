"""The ``hpo`` command line. Small command functions; every user error is an :class:`HpoError`,
mapped once (in :class:`_Cli`) to one line on stderr and exit code 1, no traceback unless
``--debug``. Heavy imports (TensorFlow, Optuna, pandas) happen inside commands so ``hpo --help``
stays fast.
"""

from __future__ import annotations

import csv
import io
import json
from typing import TYPE_CHECKING, Any

import click

from hpo._cli_common import (
    STORAGE_HELP,
    apply_overrides,
    best_or_none,
    load_study,
    print_best,
    storage_url,
    trial_record,
)
from hpo._errors import HpoError
from hpo._logging import configure, get_logger
from hpo.spec import ENGINES

if TYPE_CHECKING:
    import optuna


__all__ = ["cli", "main"]

_log = get_logger("cli")


class _Cli(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HpoError as exc:
            if ctx.params.get("debug"):
                raise
            from hpo.storage import mask_url

            click.echo(f"Error: {mask_url(str(exc))}", err=True)
            ctx.exit(1)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and results, no progress lines.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.version_option(package_name="hpo")
def cli(debug: bool, quiet: bool, verbose: bool) -> None:
    """Tune L1/L2 regularization of Keras networks with Optuna, scored by K-fold CV accuracy."""
    configure(1 if verbose or debug else -1 if quiet else 0)
    if not (verbose or debug):
        import warnings

        warnings.filterwarnings("ignore", module="optuna")
    import optuna  # its own INFO lines would duplicate ours

    optuna.logging.set_verbosity(
        optuna.logging.DEBUG if verbose or debug else optuna.logging.WARNING
    )


@cli.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option("--storage", help=STORAGE_HELP)
@click.option("--n-trials", type=int, help="Global trial budget of the study (finished + running).")
@click.option("--timeout", type=float, help="Stop starting new trials after this many seconds.")
@click.option("--epochs", type=int, help="Override [model] epochs (e.g. a quick look).")
@click.option(
    "--data",
    "data_path",
    type=click.Path(dir_okay=False),
    help="Read the data from this CSV instead of the study file's source.",
)
@click.option("--engine", type=click.Choice(ENGINES), help="Override [engine] name.")
@click.option("--trials-per-batch", type=int, help="Trials trained together by the stacked engine.")
@click.option("--name", help="Study name (default: [study] name).")
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
    from hpo.artifacts import ArtifactRecorder
    from hpo.data import load_dataset, make_fold_set
    from hpo.engines._tf import tensorflow_versions
    from hpo.engines.base import make_engine
    from hpo.spec import load_spec
    from hpo.storage import StorageGuard, mask_url, open_storage
    from hpo.worker import budget_left, create_or_load_study, optimize, stop_on_signals

    if n_trials is not None and n_trials < 1:
        raise HpoError(f"--n-trials must be >= 1, but got {n_trials}")
    spec = apply_overrides(
        load_spec(study_file),
        epochs=epochs,
        engine=engine,
        trials_per_batch=trials_per_batch,
        n_trials=n_trials,
        timeout=timeout,
        name=name,
    )
    storage_url(storage)  # a malformed URL fails before any data is read
    dataset = load_dataset(spec.data, path_override=data_path)
    folds = make_fold_set(dataset, spec.cv)
    url = storage_url(storage, announce=True)
    rdb = open_storage(url)
    # A bad [artifacts] path fails here, before any training.
    recorder = ArtifactRecorder(spec, url, folds, dataset=dataset)
    first = folds.repeats[0][0]
    click.echo(
        f"data: {dataset.source}: {dataset.n_rows} rows, {first.n_features} features, "
        f"{len(dataset.classes)} classes; {spec.cv.folds}-fold CV"
        + (f" x {spec.cv.repeats} repeats" if spec.cv.repeats > 1 else ""),
        err=True,
    )
    study, created = create_or_load_study(spec, rdb)
    left = budget_left(study, spec.budget.n_trials)
    click.echo(
        f"study {spec.name!r}: {'created' if created else 'resumed'}; "
        f"{spec.budget.n_trials} trials budgeted, {left} to run",
        err=True,
    )
    engine_impl = make_engine(spec.engine)
    batch = spec.engine.trials_per_batch if spec.engine.name == "stacked" else 1
    try:
        with stop_on_signals():
            summary = optimize(
                study,
                spec,
                folds,
                engine_impl,
                n_trials=spec.budget.n_trials,
                timeout=spec.budget.timeout,
                trials_per_batch=batch,
                versions=tensorflow_versions(),
                on_result=recorder,
                guard=StorageGuard(url),
            )
    finally:
        engine_impl.close()
    if not summary.interrupted:
        recorder.finalize(study)
    if summary.interrupted:
        click.echo(
            f"stopped by {summary.interrupted}: trials in flight marked FAIL; the study is intact",
            err=True,
        )
    click.echo(
        f"ran {summary.completed} trials ({summary.pruned} pruned, {summary.failed} failed) "
        f"in {summary.seconds:.1f} s"
    )
    print_best(study, mask_url(url))


@cli.command()
@click.argument("name")
@click.option("--storage", help=STORAGE_HELP)
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
def best(name: str, storage: str | None, fmt: str) -> None:
    """Show the best trial of study NAME."""
    from hpo.storage import mask_url

    url = storage_url(storage)
    study = load_study(name, url)
    trial = best_or_none(study)
    if fmt == "json":
        if trial is None:
            raise HpoError(f"study {name!r} has no complete trial yet")
        click.echo(json.dumps(trial_record(trial), indent=2))
    else:
        print_best(study, mask_url(url))


_TRIAL_COLUMNS = ("number", "state", "value", "fold_std", "seconds", "engine")


def _trial_row(trial: optuna.trial.FrozenTrial, param_names: list[str]) -> dict[str, Any]:
    attrs = trial.user_attrs
    row: dict[str, Any] = {
        "number": trial.number,
        "state": trial.state.name,
        "value": trial.value,
        "fold_std": attrs.get("fold_std"),
        "seconds": attrs.get("seconds"),
        "engine": attrs.get("engine"),
    }
    for param in param_names:
        row[param] = trial.params.get(param)
    return row


@cli.command()
@click.argument("name")
@click.option("--storage", help=STORAGE_HELP)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
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
    click.echo(_table(columns, rows))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if 1e-3 <= abs(value) < 1e4 else f"{value:.3g}"
    return str(value)


def _table(columns: list[str], rows: list[dict[str, Any]]) -> str:
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def _register_command_modules() -> None:
    # Each module holds one family of commands; registering them here keeps `hpo --help` whole
    # while no module needs to import another's internals.
    from hpo._commands_cluster import COMMANDS as cluster_commands
    from hpo._commands_results import COMMANDS as results_commands

    for command in (*cluster_commands, *results_commands):
        cli.add_command(command)


_register_command_modules()


def main() -> None:
    cli(prog_name="hpo")


if __name__ == "__main__":  # pragma: no cover
    main()
