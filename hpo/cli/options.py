"""What the commands share: option decorators, the storage URL, loading a study, printing trials.

An option that several commands take is declared once here, so its name, type and help read the
same everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

import click

from hpo.data import Dataset, FoldSet
from hpo.errors import HpoError
from hpo.lazy import lazy_import
from hpo.profile import profile_dataset
from hpo.results.artifacts import ArtifactRecorder
from hpo.spec import ENGINES, StudySpec
from hpo.study.record import best_trial, read_trial
from hpo.study.session import train
from hpo.study.storage import mask_url, normalize_url, open_storage, resolve_storage_url
from hpo.study.worker import RunSummary

if TYPE_CHECKING:
    import optuna
else:
    optuna = lazy_import("optuna")

__all__ = [
    "apply_overrides",
    "at_least_one",
    "data_option",
    "engine_option",
    "epochs_option",
    "format_option",
    "load_study",
    "n_trials_option",
    "name_option",
    "print_best",
    "show_data_findings",
    "storage_option",
    "storage_url",
    "text_table",
    "timeout_option",
    "train_here",
    "trial_record",
    "trials_per_batch_option",
]

_F = TypeVar("_F", bound=Callable[..., Any])

STORAGE_HELP = (
    "Storage URL (sqlite:///FILE.db or postgresql://USER@HOST/DB). "
    "Default: $HPO_STORAGE, else sqlite:///hpo.db"
)

storage_option = click.option("--storage", help=STORAGE_HELP)
engine_option = click.option("--engine", type=click.Choice(ENGINES), help="Override [engine] name.")
name_option = click.option("--name", help="Study name (default: [study] name).")
timeout_option = click.option(
    "--timeout", type=float, help="Stop starting new trials after this many seconds."
)
trials_per_batch_option = click.option(
    "--trials-per-batch", type=int, help="Trials trained together by the stacked engine."
)


def format_option(*choices: str) -> Callable[[_F], _F]:
    return click.option(
        "--format", "fmt", type=click.Choice(choices), default=choices[0], show_default=True
    )


def data_option(help: str) -> Callable[[_F], _F]:
    return click.option("--data", "data_path", type=click.Path(dir_okay=False), help=help)


def n_trials_option(help: str) -> Callable[[_F], _F]:
    return click.option("--n-trials", type=int, help=help)


def epochs_option(help: str) -> Callable[[_F], _F]:
    return click.option("--epochs", type=int, help=help)


def at_least_one(option: str, value: int | None) -> None:
    """Refuse a count below 1 for ``option`` (click's IntRange words it less plainly)."""
    if value is not None and value < 1:
        raise HpoError(f"{option} must be >= 1, but got {value}")


def storage_url(storage: str | None, *, announce: bool = False) -> str:
    url, why = resolve_storage_url(storage)
    normalize_url(url)  # fail fast on a malformed URL
    if announce:
        note = {
            "default": " (default; choose with --storage or HPO_STORAGE)",
            "HPO_STORAGE": " (from HPO_STORAGE)",
        }
        click.echo(f"storage: {mask_url(url)}{note.get(why, '')}", err=True)
    return url


def train_here(
    study: optuna.Study,
    spec: StudySpec,
    folds: FoldSet,
    recorder: ArtifactRecorder,
    *,
    url: str,
    n_trials: int | None,
    timeout: float | None,
    stopped: str,
) -> RunSummary:
    """Train ``study`` in this process (the session ``hpo run`` and ``hpo worker`` share);
    ``stopped`` says what became of the trials in flight if a signal stops it."""
    summary = train(
        study,
        spec,
        folds,
        storage_url=url,  # outage lines show the URL as the user gave it
        n_trials=n_trials,
        timeout=timeout,
        recorder=recorder,
    )
    if summary.interrupted:
        click.echo(f"stopped by {summary.interrupted}: {stopped}", err=True)
    return summary


def load_study(name: str, storage_url: str) -> optuna.Study:
    storage = open_storage(storage_url)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = sorted(
            s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
        )
        where = f"; studies there: {', '.join(names)}" if names else " (it holds no studies)"
        raise HpoError(f"no study named {name!r} in {mask_url(storage_url)}{where}") from None


def print_best(study: optuna.Study, shown_url: str) -> None:
    best = best_trial(study)
    if best is None:
        click.echo(f"no complete trial yet in study {study.study_name!r} ({shown_url})")
        return
    folds = " ".join(f"{a:.3f}" for a in read_trial(best).fold_accuracies)
    click.echo(f"best: trial {best.number}, accuracy {best.value:.4f} (folds {folds})")
    for key, value in best.params.items():
        click.echo(f"  {key} = {value:.3g}" if isinstance(value, float) else f"  {key} = {value}")
    click.echo(f"stored in {shown_url} as study {study.study_name!r}")


def trial_record(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {
        "number": trial.number,
        "state": trial.state.name,
        "value": trial.value,
        "params": trial.params,
        "user_attrs": trial.user_attrs,
        "datetime_start": trial.datetime_start.isoformat() if trial.datetime_start else None,
        "datetime_complete": trial.datetime_complete.isoformat()
        if trial.datetime_complete
        else None,
    }


def apply_overrides(spec: StudySpec, **overrides: Any) -> StudySpec:
    """``spec`` with the command line's overrides; the dataclasses re-validate every value."""

    def changed(section: Any, **values: Any) -> Any:
        values = {k: v for k, v in values.items() if v is not None}
        return replace(section, **values) if values else section

    try:
        return spec.replace(
            name=overrides.get("name") or spec.name,
            model=changed(spec.model, epochs=overrides.get("epochs")),
            engine=changed(
                spec.engine,
                name=overrides.get("engine"),
                trials_per_batch=overrides.get("trials_per_batch"),
            ),
            budget=changed(
                spec.budget, n_trials=overrides.get("n_trials"), timeout=overrides.get("timeout")
            ),
        )
    except ValueError as exc:
        raise HpoError(f"{spec.source}: {exc}") from None


def show_data_findings(dataset: Dataset, spec: StudySpec) -> list[str]:
    """Print what loading changed and the data warnings (stderr); return the warnings."""
    for note in dataset.notes:
        click.echo(f"note: {note}", err=True)
    profile = profile_dataset(dataset, spec.cv, ignore=spec.data.ignore_warnings)
    for warning in profile.warnings:
        click.echo(f"warning: {warning.message}", err=True)
    return [w.message for w in profile.warnings]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if 1e-3 <= abs(value) < 1e4 else f"{value:.3g}"
    return str(value)


def text_table(columns: list[str], rows: list[dict[str, Any]]) -> str:
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)
