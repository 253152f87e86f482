"""The ``hpo`` command line: thin commands over the library.

Every user error is an :class:`~hpo.errors.HpoError`, mapped once (in :class:`_Cli`) to one
line on stderr and exit code 1, with no traceback unless ``--debug``; a stop signal, at any
moment, to ``stopped by SIGINT`` and exit code 0 (a second one: 130, or 143 for SIGTERM; see
:mod:`hpo.stops`). The commands live in one module per family (``run``: run, best, trials;
``check``: check; ``cluster``: create, worker, status; ``results``: dashboard, report, rerun)
and are registered here.
"""

from __future__ import annotations

import signal
import warnings
from typing import TYPE_CHECKING, Any

import click

from hpo import stops
from hpo.cli import check, cluster, export, nested, results, run
from hpo.errors import HpoError
from hpo.lazy import lazy_import
from hpo.log import configure
from hpo.study.storage import mask_url

if TYPE_CHECKING:
    import optuna
else:
    optuna = lazy_import("optuna")

__all__ = ["cli", "main"]


_PROCESS = "hpo:process"  # in click's context object: this command is the whole process


class _Cli(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        # SIGINT/SIGTERM are stop requests for the command's whole life, from start-up to
        # exit; the command checks them where it can stop cleanly (hpo.stops) and the first
        # ends it with one line and exit 0. As a process of its own, a second signal ends it
        # at once (128 + signal), and once it has said how it ended, signals are ignored: one
        # during the interpreter's exit must not add a traceback or change the exit code.
        # Called in-process (tests, a notebook), the caller's handlers come back.
        as_process = isinstance(ctx.obj, dict) and ctx.obj.get(_PROCESS, False)
        with stops.stop_on_signals(
            then=signal.SIG_IGN if as_process else None, exit_on_second=as_process
        ):
            try:
                result = super().invoke(ctx)
                if not stops.raised():  # a stop after the command's last check point: say so
                    stops.check()
                return result
            except HpoError as exc:
                if ctx.params.get("debug"):
                    raise
                click.echo(f"Error: {mask_url(str(exc))}", err=True)
                ctx.exit(1)
            except stops.Stopped as exc:
                click.echo(f"stopped by {exc}", err=True)
                ctx.exit(0)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and results, no progress lines.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.version_option(package_name="hpo")
def cli(debug: bool, quiet: bool, verbose: bool) -> None:
    """Tune L1/L2 regularization of Keras networks with Optuna, scored by K-fold CV accuracy."""
    configure(1 if verbose or debug else -1 if quiet else 0)
    if not (verbose or debug):
        warnings.filterwarnings("ignore", module="optuna")
    # Optuna's own INFO lines would duplicate ours.
    optuna.logging.set_verbosity(
        optuna.logging.DEBUG if verbose or debug else optuna.logging.WARNING
    )


for _family in (run, check, cluster, results, nested, export):
    for _command in _family.COMMANDS:
        cli.add_command(_command)


def main() -> None:
    """Run the command line as this process (its entry point is :func:`hpo._entry.main`)."""
    cli(prog_name="hpo", obj={_PROCESS: True})
