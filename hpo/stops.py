"""Stop requests: SIGINT and SIGTERM ask work to stop; work checks where it can stop cleanly.

The signal handler only records the request. Code checks it at well-defined points, as
Optuna's ``study.stop()`` and Keras' ``stop_training`` are checked, and raises :class:`Stopped`
from there: between claims and batches, between the stacked engine's training calls (each
bounded to about a second), once per Keras batch, and in every wait (for a lock, a backoff, an
idle worker, a child process). Nothing is ever raised into arbitrary code, so a stop cannot
land inside an import, a finalizer, a lock's release or a library's cleanup.

A second signal ends the process at once, with exit code 128 + n: its handler starts one
thread that gives the registered abort hooks (:func:`on_abort`: failing the trials in flight,
on a connection of their own) a few seconds, then ends the process from that thread. The main
thread carries on meanwhile, so a transaction it has open (which an abort hook may be waiting
for) still commits; the writes on both sides are idempotent. That holds only for a command
that is the whole process (``exit_on_second``); called from a notebook or a test, a second
signal is one more request.

Signals reach the main thread only, so only the main thread installs the handler; any thread
may check or wait.

>>> request("SIGTERM")
>>> requested()
'SIGTERM'
>>> reset()
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from types import FrameType
from typing import Any, ClassVar

__all__ = [
    "Stopped",
    "check",
    "last_signal",
    "on_abort",
    "pause",
    "raised",
    "request",
    "requested",
    "reset",
    "signals_received",
    "stop_on_signals",
    "wait",
]

# How long the abort hooks of a second signal may take before the process ends anyway.
_ABORT_SECONDS = 5.0


class Stopped(BaseException):
    """Raised by :func:`check` (and the waits) once a stop was requested.

    A ``BaseException``, like ``KeyboardInterrupt``: the ``except Exception`` that keeps a
    failed artifact from failing its trial must not take a stop for one more error.
    """


class _State:
    event = threading.Event()
    name: str | None = None  # the signal that asked first
    last: str | None = None  # the latest one
    received = 0  # stop signals this process got while the handler was in place
    raised = False  # a check point has raised Stopped for the request (someone handles it)
    installed = False
    exit_on_second = False
    aborts: ClassVar[list[Callable[[], None]]] = []
    lock = threading.Lock()


def request(name: str = "SIGINT") -> None:
    """Ask for a stop, as a signal would (``hpo.api`` callers and tests)."""
    _State.last = name
    if _State.name is None:
        _State.name = name
    _State.event.set()


def requested() -> str | None:
    """The name of the signal that asked for a stop (``"SIGINT"``), or None."""
    return _State.name if _State.event.is_set() else None


def check() -> None:
    """Raise :class:`Stopped` if a stop was requested: a point where work can stop cleanly."""
    name = requested()
    if name is not None:
        _State.raised = True
        raise Stopped(name)


def raised() -> bool:
    """Whether a check point has seen the request (the code it stopped reports the stop)."""
    return _State.raised


def wait(seconds: float | None) -> bool:
    """Wait up to ``seconds`` (None: until a stop), returning early on a stop; True if one
    was requested."""
    return _State.event.wait(seconds)


def pause(seconds: float) -> None:
    """Sleep ``seconds``, or raise :class:`Stopped` as soon as a stop is requested."""
    if wait(seconds):
        check()


def signals_received() -> int:
    """How many stop signals arrived so far (two: the process is ending at once)."""
    return _State.received


def last_signal() -> str | None:
    """The name of the latest stop signal, if any arrived."""
    return _State.last


def reset() -> None:
    """Forget every request (a new command in the same process starts unstopped)."""
    _State.event.clear()
    _State.name = _State.last = None
    _State.received = 0
    _State.raised = False


@contextmanager
def on_abort(hook: Callable[[], None]) -> Iterator[None]:
    """Run ``hook`` (from another thread, with a few seconds to finish) if a second signal
    ends the process while the block runs. It must open its own connections: the main thread
    may be anywhere, holding any lock."""
    with _State.lock:
        _State.aborts.append(hook)
    try:
        yield
    finally:
        with _State.lock:
            _State.aborts.remove(hook)


def _abort(signum: int) -> None:
    """A second signal: the abort hooks get a few seconds, then the process ends (128 + n)."""
    name = signal.Signals(signum).name
    with suppress(OSError):
        os.write(2, f"stopped again by {name}: exiting at once\n".encode())
    with _State.lock:
        hooks = list(_State.aborts)

    def run() -> None:
        done = threading.Event()

        def hooks_then_done() -> None:
            for hook in hooks:
                with suppress(Exception):  # the process is ending: nobody to report to
                    hook()
            done.set()

        threading.Thread(target=hooks_then_done, daemon=True).start()
        done.wait(_ABORT_SECONDS)
        for stream in (sys.stdout, sys.stderr):
            with suppress(Exception):
                stream.flush()
        os._exit(128 + signum)

    threading.Thread(target=run, name="hpo-abort", daemon=True).start()


def _handler(signum: int, frame: FrameType | None) -> None:
    del frame
    _State.received += 1
    first = _State.received == 1
    request(signal.Signals(signum).name)
    if not first and _State.exit_on_second:
        _abort(signum)


@contextmanager
def stop_on_signals(*, then: Any = None, exit_on_second: bool = False) -> Iterator[None]:
    """Make SIGINT and SIGTERM stop requests for the block. Nested blocks share the outer
    one's handler, so a command can cover its whole life and a training session still ask for
    it on its own.

    ``then``: the handler to leave in place when the block ends (``signal.SIG_IGN`` once a
    command has said how it ended); by default, the one from before the block. Swapping
    straight to it leaves no moment with Python's default handler, whose ``KeyboardInterrupt``
    would print a traceback during the interpreter's exit. ``exit_on_second``: this block is
    the whole process, so a second signal ends it (see the module docstring).
    """
    if _State.installed or threading.current_thread() is not threading.main_thread():
        yield  # signals reach only the main thread; an outer block already handles them
        return
    previous = {sig: signal.signal(sig, _handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    reset()
    _State.installed = True
    _State.exit_on_second = exit_on_second
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if then is None else then)
        _State.installed = False
        _State.exit_on_second = False
        reset()  # what comes next in this process (another command, a test) starts unstopped
