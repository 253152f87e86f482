"""Stop requests: SIGINT and SIGTERM ask work to stop; work checks where it can stop cleanly.

The signal handler only records the request. Code checks it at well-defined points, as
Optuna's ``study.stop()`` and Keras' ``stop_training`` are checked, and raises :class:`Stopped`
from there: between claims and batches, between the stacked engine's training calls (each
bounded to about a second), once per Keras batch, and in every wait (for a lock, a backoff, an
idle worker, a child process). Nothing is ever raised into arbitrary code, so a stop cannot
land inside an import, a finalizer, a lock's release or a library's cleanup.

A second signal ends the process at once, with exit code 128 + n. Signals are counted as they
are delivered, on a thread of their own (``signal.set_wakeup_fd``), so a second one is seen
even while the main thread is inside a long C call; that thread gives the registered abort
hooks (:func:`on_abort`: failing the trials in flight, on a connection of their own) a few
seconds, then ends the process. The main thread carries on meanwhile, so a transaction it has
open (which an abort hook may be waiting for) still commits; the writes on both sides are
idempotent. That holds only for a command that is the whole process (``exit_on_second``);
called from a notebook or a test, a second signal is one more request.

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
    "at_once",
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
    at_once = False  # inside at_once(): this process holds nothing a stop must clean up
    exiting = False  # the listener is ending the process (at_once's end must not go on)
    stderr = 2  # a copy of fd 2 made at install: TensorFlow's import points fd 2 at a pipe
    aborts: ClassVar[list[Callable[[], None]]] = []
    lock = threading.Lock()


def request(name: str = "SIGINT") -> None:
    """Ask for a stop, as a signal would (``hpo.api`` callers and tests)."""
    _note(name)
    _State.event.set()


def _note(name: str) -> None:
    """Record a request without waking the waits: plain attribute writes, no lock, so it is
    safe inside a signal handler (see :func:`_handler`)."""
    _State.last = name
    if _State.name is None:
        _State.name = name


def requested() -> str | None:
    """The name of the signal that asked for a stop (``"SIGINT"``), or None."""
    return _State.name


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
    # The name first: the signal handler records it at once; the event follows a moment
    # later, from the listener thread.
    return _State.name is not None or _State.event.wait(seconds)


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
def at_once() -> Iterator[None]:
    """A start-up step with no check point inside (TensorFlow's import: seconds) during which
    the process holds nothing a stop must clean up: no trial, no lock, no write under way. A
    stop signal then ends the process at once, as ``stopped by SIGINT`` with exit 0, instead of
    waiting for the step to end. Only where the command is the whole process; elsewhere the
    stop is checked when the step ends."""
    check()
    with _State.lock:
        _State.at_once = True
    try:
        yield
    finally:
        # Under the lock: the listener, having seen the flag, may be ending the process now;
        # then this thread waits here and never starts what follows.
        with _State.lock:
            _State.at_once = False
            exiting = _State.exiting
        if exiting:
            threading.Event().wait()
    check()


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
    _say(f"stopped again by {signal.Signals(signum).name}: exiting at once")
    _hooks_then_exit(128 + signum)


def _hooks_then_exit(code: int) -> None:
    """Run the abort hooks (at most :data:`_ABORT_SECONDS`), then end the process."""
    with _State.lock:
        hooks = list(_State.aborts)
    done = threading.Event()

    def hooks_then_done() -> None:
        for hook in hooks:
            with suppress(Exception):  # the process is ending: nobody to report to
                hook()
        done.set()

    threading.Thread(target=hooks_then_done, name="hpo-abort", daemon=True).start()
    done.wait(_ABORT_SECONDS)
    _flush_and_exit(code)


def _handler(signum: int, frame: FrameType | None) -> None:
    # Runs on the main thread once it is back in Python code; two deliveries of one signal
    # meanwhile come as one call, so counting them is the listener's job. It records the
    # request and takes no lock: the main thread may be inside ``Event.wait`` holding the
    # event's own (non-reentrant) lock, and ``Event.set`` here would wait for it forever
    # (seen in the stop soak: a worker waiting for the SQLite claim lock, signalled twice).
    # The listener thread, woken by the same delivery, sets the event.
    del frame
    _note(signal.Signals(signum).name)


def _listen(fd: int) -> None:
    """Read one byte per delivered signal (``signal.set_wakeup_fd``) until ``fd`` closes.

    Every delivery arrives here at once, even while the main thread is inside a long C call
    (a TensorFlow graph call, an import, a database driver's wait), when its Python handler
    has not run yet and would see two signals as one. So the request is made, and a second
    signal ends the process, from this thread.
    """
    while True:
        try:
            data = os.read(fd, 64)
        except OSError:
            return
        if not data:
            return
        for signum in data:
            if signum not in (signal.SIGINT, signal.SIGTERM):
                continue
            _State.received += 1  # written by this thread only
            name = signal.Signals(signum).name
            if _State.exit_on_second and _State.received > 1:
                # Before request(): setting the event takes its lock, which a wedged main
                # thread might hold; a second signal must end the process whatever holds it.
                _abort(signum)
            request(name)
            if not _State.exit_on_second:
                continue
            with _State.lock:
                _State.exiting = _State.at_once
            if _State.exiting:
                _say(f"stopped by {name}")
                _hooks_then_exit(0)  # a run's worker processes are told to stop too


def _say(line: str) -> None:
    """One line on the process's stderr, the copy of fd 2 made at install (during
    TensorFlow's import fd 2 is a pipe whose reader might not forward it before the exit)."""
    with suppress(OSError):
        os.write(_State.stderr, f"{line}\n".encode())


def _flush_and_exit(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):
            stream.flush()
    os._exit(code)


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
    reset()  # first: a signal from here on is this block's
    _State.installed = True
    _State.exit_on_second = exit_on_second
    previous: dict[int, Any] = {}
    previous_fd = -1
    read = write = -1
    listener: threading.Thread | None = None
    try:
        _State.stderr = os.dup(2) if exit_on_second else 2
        read, write = os.pipe()
        os.set_blocking(write, False)  # a full pipe drops a byte rather than block the handler
        previous_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        listener = threading.Thread(target=_listen, args=(read,), name="hpo-stops", daemon=True)
        listener.start()
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _handler)
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old if then is None else then)
        if write >= 0:
            signal.set_wakeup_fd(previous_fd)
            os.close(write)  # the listener reads the end of the pipe and returns
        if listener is not None:
            listener.join(5)
        if read >= 0:
            os.close(read)
        if _State.stderr != 2:
            os.close(_State.stderr)
            _State.stderr = 2
        _State.installed = False
        _State.exit_on_second = False
        reset()  # what comes next in this process (another command, a test) starts unstopped
