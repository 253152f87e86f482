"""What the commands print: the best trial, trials as records and as a text table, stderr lines."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from hpo.lazy import lazy_import
from hpo.results.baseline import baseline_gain
from hpo.study.record import (
    best_trial,
    data_warning_line,
    is_baseline,
    leak_first,
    read_trial,
    stored_data_warnings,
    stored_spec,
)
from hpo.study.stopping import stored_stop

if TYPE_CHECKING:
    import optuna
else:
    optuna = lazy_import("optuna")

__all__ = [
    "data_warning_lines",
    "echo_data_warnings",
    "echo_err",
    "print_best",
    "text_table",
    "trial_record",
]


def data_warning_lines(messages: Sequence[str]) -> list[str]:
    """A study's data warnings as lines to show beside its score: leaks first, marked as what
    makes the score itself suspect."""
    return [data_warning_line(m) for m in leak_first(messages)]


def echo_data_warnings(messages: Sequence[str]) -> None:
    for line in data_warning_lines(messages):
        click.echo(line)


def print_best(study: optuna.Study, shown_url: str) -> None:
    best = best_trial(study)
    if best is None:
        click.echo(f"no complete trial yet in study {study.study_name!r} ({shown_url})")
        return
    echo_data_warnings(stored_data_warnings(study))  # before the score they question
    folds = " ".join(f"{a:.3f}" for a in read_trial(best).fold_accuracies)
    click.echo(f"best: trial {best.number}, accuracy {best.value:.4f} (folds {folds})")
    if is_baseline(best):
        click.echo("  no regularization (the unregularized baseline)")
    for key, value in best.params.items():
        click.echo(f"  {key} = {value:.3g}" if isinstance(value, float) else f"  {key} = {value}")
    plan = read_trial(best).plan
    if plan is not None and not is_baseline(best):
        click.echo(f"  plan: {plan.text()}")
    spec = stored_spec(study)
    early = stored_stop(study, spec)
    if early is not None:
        click.echo(f"early stop: {early['message']}")
    elif spec is not None and spec.budget.early_stop != "none":
        click.echo(
            f"early stop: {spec.budget.early_stop}, not triggered (the search may still gain "
            "more than the CV noise; a larger --n-trials goes on)"
        )
    gain = baseline_gain(study)
    if gain is not None:
        click.echo(gain.line(study.study_name))
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


def echo_err(line: str) -> None:
    click.echo(line, err=True)


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
