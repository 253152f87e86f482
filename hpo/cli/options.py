"""The options the commands share: decorators, checked numbers, the storage URL, the crash policy.

An option that several commands take is declared once here, so its name, type and help read the
same everywhere. Numeric options are checked where click parses them (:class:`Number`), so every
command refuses the same value with the same one-line error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from hpo.errors import HpoError
from hpo.lazy import lazy_import
from hpo.spec import ENGINES, apply_overrides
from hpo.study.record import CrashPolicy
from hpo.study.storage import Access, checked_storage_url

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
    "TWO_OR_MORE",
    "Number",
    "apply_overrides",
    "crash_policy",
    "crash_policy_options",
    "data_option",
    "engine_option",
    "epochs_option",
    "format_option",
    "n_trials_option",
    "name_option",
    "port_option",
    "repeats_option",
    "seeds_option",
    "storage_option",
    "storage_url",
    "timeout_option",
    "top_option",
    "trial_option",
    "trials_per_batch_option",
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
TWO_OR_MORE = Number(int, "2 or more", lambda n: n >= 2)
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
