"""SIGINT/SIGTERM as an exception in the main thread, deferred across critical sections.

A signal raises :class:`Stopped` wherever the main thread is (training, waiting, backing off),
so the worker can fail its trials and exit 0. Inside a ``critical()`` section (creating a trial
and its first heartbeat, telling a result) the stop waits for the section to end: a trial must
never be created, or told, with nobody knowing.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = [
    "Stopped",
    "critical",
    "last_signal",
    "signals_received",
    "stop_on_signals",
    "stop_within",
]


class Stopped(BaseException):
    """Raised in the main thread by SIGINT/SIGTERM so in-flight trials can be failed cleanly.

    A ``BaseException``, like ``KeyboardInterrupt``: the ``except Exception`` that keeps a
    failed artifact from failing its trial must not swallow a stop as one more error.
    """


_RETRY_SECONDS = 0.05


def _importing(frame: FrameType | None) -> bool:
    """Whether ``frame`` runs inside an import (the import machinery is on its stack)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


class _State:
    depth = 0
    pending: str | None = None
    received = 0  # stop signals this process got while the handler was in place
    last: str | None = None  # the name of the latest
    installed = False


def _raise_pending() -> None:
    if _State.pending is not None:
        name, _State.pending = _State.pending, None
        raise Stopped(name)


def stop_within(exc: BaseException) -> Stopped | None:
    """The stop behind ``exc``, if a signal caused it.

    A signal that lands while a compiled module initializes (pandas, numpy, TensorFlow import
    lazily, so that is often) comes out as that import's ``ImportError`` or ``SystemError``,
    with the :class:`Stopped` only in its chain of causes; one that lands inside a lock's
    handling, as a ``RuntimeError`` about releasing it.
    """
    if isinstance(exc, Stopped):
        return exc
    # A signal that lands in `threading.Condition.wait` between its release of the lock and the
    # re-acquire (waiting on a future does that) makes the `with` around it release a lock it
    # no longer holds: that RuntimeError, with the stop as its context.
    lock_error = isinstance(exc, RuntimeError) and str(exc) == "cannot release un-acquired lock"
    if not (lock_error or isinstance(exc, ImportError | SystemError)):
        return None  # any other error is itself, even if it happened while stopping
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, Stopped):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def signals_received() -> int:
    """How many stop signals arrived so far (a second one means: stop the shutdown too)."""
    return _State.received


def last_signal() -> str | None:
    """The name of the latest stop signal (``SIGINT``), if any arrived."""
    return _State.last


@contextmanager
def stop_on_signals(*, then: Any = None) -> Iterator[None]:
    """Turn SIGINT/SIGTERM into :class:`Stopped` for the block. Nested blocks share the outer
    one's handler, so a command can cover its whole life and the training session still ask
    for it on its own.

    ``then``: the handler to leave in place when the block ends (``signal.SIG_IGN`` once a
    command has said how it ended); by default, the one from before the block. Swapping straight
    to it leaves no moment with Python's default handler, whose ``KeyboardInterrupt`` would
    print a traceback during the interpreter's exit.
    """
    if _State.installed or threading.current_thread() is not threading.main_thread():
        yield  # signals reach only the main thread; an outer block already handles them
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        _State.received += 1
        _State.last = name
        if _State.depth > 0:
            _State.pending = name
            return
        if _importing(frame):
            # An exception raised inside a module's import can come out as that import's
            # ImportError, which libraries catch for optional dependencies: the stop would be
            # swallowed. Raise it just after the import instead (checked every 50 ms).
            _State.pending = name
            signal.setitimer(signal.ITIMER_REAL, _RETRY_SECONDS)
            return
        raise Stopped(name)

    def retry(signum: int, frame: FrameType | None) -> None:
        if _State.pending is None or _State.depth > 0:
            return  # raised already, or a critical section's end will raise it
        if _importing(frame):
            signal.setitimer(signal.ITIMER_REAL, _RETRY_SECONDS)
            return
        _raise_pending()

    def unraisable(info: sys.UnraisableHookArgs) -> None:
        # A signal that lands while a finalizer runs (TensorFlow frees graphs in __del__) raises
        # there, where Python can only print and drop it: keep it, and raise it 50 ms later from
        # wherever the main thread is then. Waiting for the next critical section's end instead
        # let a stop during training wait for the batch's tell: the trials finished COMPLETE
        # under a "stopped" line (or, if no section ended, the stop was never raised).
        if isinstance(info.exc_value, Stopped):
            _State.pending = str(info.exc_value)
            signal.setitimer(signal.ITIMER_REAL, _RETRY_SECONDS)
            return
        previous_hook(info)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous_alarm = signal.signal(signal.SIGALRM, retry)
    previous_hook = sys.unraisablehook
    sys.unraisablehook = unraisable
    _State.pending = None
    _State.received = 0
    _State.installed = True
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if then is None else then)
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_alarm)
        sys.unraisablehook = previous_hook
        _State.pending = None
        _State.installed = False


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
