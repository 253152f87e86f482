"""Helpers shared by the command modules: storage URLs, loading studies, printing trials."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from hpo._errors import HpoError

if TYPE_CHECKING:
    import optuna

    from hpo.spec import StudySpec

__all__ = [
    "STORAGE_HELP",
    "apply_overrides",
    "best_or_none",
    "load_study",
    "print_best",
    "storage_url",
    "trial_record",
]

STORAGE_HELP = (
    "Storage URL (sqlite:///FILE.db or postgresql://USER@HOST/DB). "
    "Default: $HPO_STORAGE, else sqlite:///hpo.db"
)


def storage_url(storage: str | None, *, announce: bool = False) -> str:
    from hpo.storage import mask_url, normalize_url, resolve_storage_url

    url, why = resolve_storage_url(storage)
    normalize_url(url)  # fail fast on a malformed URL
    if announce:
        note = {
            "default": " (default; choose with --storage or HPO_STORAGE)",
            "HPO_STORAGE": " (from HPO_STORAGE)",
        }
        click.echo(f"storage: {mask_url(url)}{note.get(why, '')}", err=True)
    return url


def load_study(name: str, storage_url: str) -> optuna.Study:
    import optuna

    from hpo.storage import mask_url, open_storage

    storage = open_storage(storage_url)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = sorted(
            s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
        )
        where = f"; studies there: {', '.join(names)}" if names else " (it holds no studies)"
        raise HpoError(f"no study named {name!r} in {mask_url(storage_url)}{where}") from None


def best_or_none(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    from hpo.worker import best_trial

    return best_trial(study)


def print_best(study: optuna.Study, shown_url: str) -> None:
    best = best_or_none(study)
    if best is None:
        click.echo(f"no complete trial yet in study {study.study_name!r} ({shown_url})")
        return
    folds = " ".join(f"{a:.3f}" for a in best.user_attrs.get("fold_accuracies", []))
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
    from dataclasses import replace

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
