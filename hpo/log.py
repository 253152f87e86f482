"""The library logger. Every module logs through ``hpo`` so users tune one name."""

from __future__ import annotations

import logging
import sys

__all__ = ["configure", "get_logger"]

_ROOT = "hpo"


def get_logger(name: str | None = None) -> logging.Logger:
    return logging.getLogger(_ROOT if not name else f"{_ROOT}.{name}")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """Writes to whatever ``sys.stderr`` is now (test runners and tools swap it)."""

    _hpo = True

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override,unused-ignore]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


class _NoStops(logging.Filter):
    """Drops a library's report of an exception that is not an ``Exception``: a stop (Ctrl-C,
    SIGTERM), which hpo reports itself in one line. SQLAlchemy logs whatever interrupts the
    return of a connection to its pool, with a traceback, and then lets it go on."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or isinstance(exc, Exception)


def configure(verbosity: int = 0) -> None:
    """Send ``hpo`` logs to stderr; 0 = info, 1+ = debug, -1 = warnings only. SQLAlchemy's
    warnings and errors go to stderr as Python's fallback prints them, less any about a stop
    (unless ``verbosity`` > 0)."""
    logger = logging.getLogger(_ROOT)
    level = logging.DEBUG if verbosity > 0 else logging.INFO if verbosity == 0 else logging.WARNING
    logger.setLevel(level)
    if not any(getattr(h, "_hpo", False) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.propagate = False
    library = logging.getLogger("sqlalchemy")
    if not any(getattr(h, "_hpo", False) for h in library.handlers):
        fallback = _StderrHandler()
        fallback.setLevel(logging.WARNING)  # what Python's own fallback handler prints
        fallback.setFormatter(logging.Formatter("%(message)s"))
        # Records still propagate: a root handler the user set up gets them too, and with one
        # here Python's fallback (which would print the stops) is not used.
        library.addHandler(fallback)
    for ours in library.handlers:
        if getattr(ours, "_hpo", False):
            ours.filters = [] if verbosity > 0 else [_NoStops()]
