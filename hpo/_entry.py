"""The process entry point (``hpo`` and ``python -m hpo``): signals before the command runs.

Importing the command line takes a noticeable fraction of a second; a Ctrl-C there would print
Python's ``KeyboardInterrupt`` traceback from deep inside an import. So the first thing the
process does, before importing anything heavy, is to make a stop signal end it at once, with the
same line and exit code as a stop during the command: nothing has been opened or written yet,
so there is nothing to clean up. The command then takes signals over for its whole life
(:func:`hpo.stops.stop_on_signals`) and ignores them once it has said how it ended.

This module imports only the standard library, and ``hpo/__init__.py`` must stay light for the
same reason: they are what runs before the handler is in place.
"""

from __future__ import annotations

import importlib
import os
import signal
from types import FrameType

__all__ = ["main"]


def _stop_before_the_command(signum: int, frame: FrameType | None) -> None:
    # os._exit, not an exception: an exception raised inside a half-done import (or a
    # finalizer) can be printed and dropped instead of stopping the process.
    os.write(2, f"stopped by {signal.Signals(signum).name}\n".encode())
    os._exit(0)


def main() -> None:
    """Run the ``hpo`` command line."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop_before_the_command)
    # Imported here, after the handler, on purpose: this import is the window it covers.
    cli = importlib.import_module("hpo.cli")
    cli.main()
