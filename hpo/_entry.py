"""The process entry point (``hpo`` and ``python -m hpo``): signals before the command runs.

Importing the command line takes a noticeable fraction of a second; a Ctrl-C there would print
Python's ``KeyboardInterrupt`` traceback from deep inside an import. So the first thing the
process does, before importing anything heavy, is to make a stop signal end it at once, with the
same line and exit code as a stop during the command: nothing has been opened or written yet,
so there is nothing to clean up. The command then takes signals over for its whole life
(:func:`hpo.stops.stop_on_signals`) and ignores them once it has said how it ended.

This module imports only the standard library, and ``hpo/__init__.py`` must stay light for the
same reason: they are what runs before the handler is in place.

Once the command has ended and said so, the process ends without the interpreter's own
teardown: after a command that trained, tearing down TensorFlow's modules and threads costs
about a CPU second per process, and the seconds it takes under load come after the run's last
line (a run's worker processes end the same way, and the run waits for them). What a clean exit
needs still runs first: waiting for non-daemon threads, and every exit function registered
once the command started (multiprocessing joining its children, temporary folders, logging);
the buffered output is flushed; nothing of hpo's is left open with unwritten data. An exit
function registered before :func:`main` (by a ``sitecustomize``, say) does not run.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import signal
import sys
from types import FrameType

__all__ = ["main"]

# The command's exit status once it has ended with one (None: let the interpreter end it).
_exit_status: int | None = None


def _stop_before_the_command(signum: int, frame: FrameType | None) -> None:
    # os._exit, not an exception: an exception raised inside a half-done import (or a
    # finalizer) can be printed and dropped instead of stopping the process.
    os.write(2, f"stopped by {signal.Signals(signum).name}\n".encode())
    os._exit(0)


def _end_without_teardown() -> None:
    """The last exit function (registered first, so run last): end the process as it is."""
    if _exit_status is None:
        return
    if "logging" in sys.modules:  # in case it was imported before this was registered
        sys.modules["logging"].shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more to say
            stream.flush()
    os._exit(_exit_status)


def main() -> None:
    """Run the ``hpo`` command line."""
    global _exit_status
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop_before_the_command)
    atexit.register(_end_without_teardown)
    # Imported here, after the handler, on purpose: this import is the window it covers.
    cli = importlib.import_module("hpo.cli")
    try:
        cli.main()
    except SystemExit as exc:  # click ends every command with one
        if exc.code is None or isinstance(exc.code, int):
            _exit_status = exc.code or 0
        raise
    _exit_status = 0
