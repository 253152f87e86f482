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


def configure(verbosity: int = 0) -> None:
    """Send ``hpo`` logs to stderr; 0 = info, 1+ = debug, -1 = warnings only."""
    logger = logging.getLogger(_ROOT)
    level = logging.DEBUG if verbosity > 0 else logging.INFO if verbosity == 0 else logging.WARNING
    logger.setLevel(level)
    if not any(getattr(h, "_hpo", False) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.propagate = False
