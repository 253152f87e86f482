"""SIGINT/SIGTERM as an exception in the main thread, deferred across critical sections.

A signal raises :class:`Stopped` wherever the main thread is (training, waiting, backing off),
so the worker can fail its trials and exit 0. Inside a ``critical()`` section (creating a trial
and its first heartbeat, telling a result) the stop waits for the section to end: a trial must
never be created, or told, with nobody knowing.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["Stopped", "critical", "stop_on_signals"]


class Stopped(Exception):
    """Raised in the main thread by SIGINT/SIGTERM so in-flight trials can be failed cleanly."""


class _State:
    depth = 0
    pending: str | None = None


def _raise_pending() -> None:
    if _State.pending is not None:
        name, _State.pending = _State.pending, None
        raise Stopped(name)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if _State.depth > 0:
            _State.pending = name
            return
        raise Stopped(name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    _State.pending = None
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        _State.pending = None


@contextmanager
def critical() -> Iterator[None]:
    """Defer a stop signal until the block ends (then raise it). Main thread only."""
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
        # Also when the block failed (say, the database is down and the caller would retry):
        # the stop wins, so a worker can be stopped during an outage.
        if _State.depth == 0:
            _raise_pending()
