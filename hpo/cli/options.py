"""What the commands share: option decorators, the storage URL, loading a study, printing trials.

An option that several commands take is declared once here, so its name, type and help read the
same everywhere. Numeric options are checked where click parses them (:class:`Number`), so every
command refuses the same value with the same one-line error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from hpo.api import data_findings
from hpo.api import with_model as api_with_model
from hpo.data import Dataset, FoldSet
from hpo.errors import HpoError
from hpo.lazy import lazy_import
from hpo.results.artifacts import ArtifactRecorder
from hpo.results.baseline import baseline_gain
from hpo.spec import ENGINES, StudySpec, apply_overrides
from hpo.study.record import (
    CrashPolicy,
    best_trial,
    is_baseline,
    load_study,
    read_trial,
    stored_spec,
)
from hpo.study.session import train
from hpo.study.stopping import stored_stop
from hpo.study.storage import Access, checked_storage_url
from hpo.study.worker import RunSummary

if TYPE_CHECKING:
    import optuna
else:
    optuna = lazy_import("optuna")

__all__ = [
    "BATCH_SIZE",
    "COUNT",
    "NON_NEGATIVE",
    "PORT",
    "SECONDS",
    "Number",
    "apply_overrides",
    "crash_policy",
    "crash_policy_options",
    "data_option",
    "echo_err",
    "engine_option",
    "epochs_option",
    "format_option",
    "load_study",
    "n_trials_option",
    "name_option",
    "port_option",
    "print_best",
    "repeats_option",
    "seeds_option",
    "show_data_findings",
    "storage_option",
    "storage_url",
    "text_table",
    "timeout_option",
    "top_option",
    "train_here",
    "trial_option",
    "trial_record",
    "trials_per_batch_option",
    "with_model",
]

_F = TypeVar("_F", bound=Callable[..., Any])

STORAGE_HELP = (
    "Storage URL (sqlite:///FILE.db or postgresql://USER@HOST/DB). "
    "Default: $HPO_STORAGE, else sqlite:///hpo.db"
)


class Number(click.ParamType):
    """A number option, checked as click parses it: a bad value is one line naming the option,
    the rule and the value as typed (an :class:`HpoError`, exit code 1), the same line on
    every command that takes the option. (click's own ``IntRange`` words it differently, as a
    usage error with exit code 2, and ``float`` lets ``nan`` and ``inf`` through.)"""

    def __init__(self, kind: type[int] | type[float], rule: str, accept: Callable[[Any], bool]):
        self.kind = kind
        self.rule = rule
        self.accept = accept
        self.name = "integer" if kind is int else "float"  # the metavar in --help

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number: int | float | None
        if isinstance(value, self.kind) and not isinstance(value, bool):  # a declared default
            number = value
        else:
            try:
                number = self.kind(str(value).strip())
            except ValueError:
                number = None
        if number is None or not self.accept(number):
            name = param.opts[0] if param is not None and param.opts else "value"
            raise HpoError(f"{name} must be {self.rule}, but got {_as_typed(value)}")
        return number


def _as_typed(value: Any) -> str:
    # A number as the user typed it (0, -5, nan); anything else quoted, so '' and ' ' show.
    text = str(value)
    try:
        float(text)
    except ValueError:
        return repr(text)
    return text.strip()


class _CountOrAuto(Number):
    """A whole number >= 1, or ``auto`` (the stacked engine measures the fastest batch)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value.strip() == "auto":
            return "auto"
        return super().convert(value, param, ctx)


COUNT = Number(int, "a whole number >= 1", lambda n: n >= 1)
BATCH_SIZE = _CountOrAuto(int, 'a whole number >= 1 or "auto"', lambda n: n >= 1)
NON_NEGATIVE = Number(int, "a whole number >= 0", lambda n: n >= 0)
SECONDS = Number(float, "a finite number of seconds > 0", lambda n: math.isfinite(n) and n > 0)
PORT = Number(int, "a whole number from 0 to 65535", lambda n: 0 <= n <= 65535)

storage_option = click.option("--storage", help=STORAGE_HELP)
engine_option = click.option("--engine", type=click.Choice(ENGINES), help="Override [engine] name.")
name_option = click.option("--name", help="Study name (default: [study] name).")
timeout_option = click.option(
    "--timeout", type=SECONDS, help="Stop starting new trials after this many seconds."
)
trials_per_batch_option = click.option(
    "--trials-per-batch",
    type=BATCH_SIZE,
    help='Trials trained together by the stacked engine ("auto": the fastest, measured).',
)
seeds_option = click.option(
    "--seeds", type=COUNT, required=True, help="Fresh seeds per trial (2 or more for a CI)."
)


def crash_policy_options(command: _F) -> _F:
    """``--heartbeat-interval``, ``--grace-period``, ``--max-retries``: for commands that
    create studies (the policy is stored on the study for every worker to follow)."""
    for option in reversed(
        [
            click.option(
                "--heartbeat-interval",
                type=COUNT,
                default=10,
                show_default=True,
                help="Seconds between heartbeats of a running trial.",
            ),
            click.option(
                "--grace-period",
                type=COUNT,
                default=60,
                show_default=True,
                help="Seconds without a heartbeat before a running trial counts as dead and is "
                "retried.",
            ),
            click.option(
                "--max-retries",
                type=NON_NEGATIVE,
                default=3,
                show_default=True,
                help="How often a dead or stopped worker's trial is retried with the same "
                "parameters.",
            ),
        ]
    ):
        command = option(command)
    return command


def crash_policy(heartbeat_interval: int, grace_period: int, max_retries: int) -> CrashPolicy:
    try:
        return CrashPolicy(
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            max_retries=max_retries,
        )
    except ValueError as exc:
        raise HpoError(f"crash policy: {exc}") from None


top_option = click.option(
    "--top",
    type=COUNT,
    help="Rerun the K best complete trials and the unregularized baseline (default: 3).",
)
trial_option = click.option(
    "--trial", "trial_number", type=NON_NEGATIVE, help="Rerun this trial number."
)
repeats_option = click.option(
    "--repeats",
    type=COUNT,
    help="Repeated K-fold: reshuffled splits per seed (default: the study's).",
)
port_option = click.option(
    "--port",
    type=PORT,
    default=8080,
    show_default=True,
    help="Port to listen on (0: any free port).",
)


def format_option(*choices: str) -> Callable[[_F], _F]:
    return click.option(
        "--format", "fmt", type=click.Choice(choices), default=choices[0], show_default=True
    )


def data_option(help: str) -> Callable[[_F], _F]:
    return click.option("--data", "data_path", type=click.Path(dir_okay=False), help=help)


def n_trials_option(help: str) -> Callable[[_F], _F]:
    return click.option("--n-trials", type=COUNT, help=help)


def epochs_option(help: str) -> Callable[[_F], _F]:
    return click.option("--epochs", type=COUNT, help=help)


def storage_url(
    storage: str | None, *, announce: bool = False, access: Access | None = None
) -> str:
    """The storage URL to use (``--storage``, else ``$HPO_STORAGE``, else the default), checked:
    a malformed URL, and with ``access`` a SQLite file unfit for it, fail here, before any data
    is read. ``announce`` prints it (masked) on stderr."""
    url, line = checked_storage_url(storage, access)
    if announce:
        click.echo(line, err=True)
    return url


def with_model(spec: StudySpec, folds: FoldSet) -> StudySpec:
    """``spec`` with a builder's searched layers resolved (see :func:`hpo.api.with_model`)."""
    return api_with_model(spec, folds, echo_err)


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
    in_team: bool = False,
) -> RunSummary:
    """Train ``study`` in this process (the session ``hpo run`` and ``hpo worker`` share);
    ``stopped`` says what became of the trials in flight if a signal stops it (unless
    ``in_team``: a worker of a run's pool, whose run says it)."""
    summary = train(
        study,
        spec,
        folds,
        storage_url=url,  # outage lines show the URL as the user gave it
        n_trials=n_trials,
        timeout=timeout,
        recorder=recorder,
        in_team=in_team,
    )
    if summary.interrupted and not in_team:
        click.echo(f"stopped by {summary.interrupted}: {stopped}", err=True)
    return summary


def print_best(study: optuna.Study, shown_url: str) -> None:
    best = best_trial(study)
    if best is None:
        click.echo(f"no complete trial yet in study {study.study_name!r} ({shown_url})")
        return
    folds = " ".join(f"{a:.3f}" for a in read_trial(best).fold_accuracies)
    click.echo(f"best: trial {best.number}, accuracy {best.value:.4f} (folds {folds})")
    if is_baseline(best):
        click.echo("  no regularization (the unregularized baseline)")
    for key, value in best.params.items():
        click.echo(f"  {key} = {value:.3g}" if isinstance(value, float) else f"  {key} = {value}")
    plan = read_trial(best).plan
    if plan is not None and not is_baseline(best):
        click.echo(f"  plan: {plan.text()}")
    early = stored_stop(study, stored_spec(study))
    if early is not None:
        click.echo(f"early stop: {early['message']}")
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


def show_data_findings(dataset: Dataset, spec: StudySpec) -> list[str]:
    """Print what loading changed and the data warnings (stderr); return the warnings."""
    return data_findings(dataset, spec, echo_err)


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
