"""How a stop signal becomes :class:`Stopped` in the main thread (``hpo.study.signals``).

The end-to-end cases (a real ``hpo run`` signalled at each stage) are in
``test_signals_anywhere.py``; these pin the two rules those rely on, in-process.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import time
from typing import ClassVar

import pytest

from hpo import log
from hpo.study.signals import Stopped, critical, stop_on_signals, stop_within


class _SignalledWhileFinalized:
    """An object whose finalizer receives SIGTERM, as TensorFlow's finalizers do when the signal
    lands while they free a graph: the handler's ``Stopped`` is raised inside ``__del__``,
    where Python can only hand it to ``sys.unraisablehook``."""

    finished: ClassVar[list[bool]] = []

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # bytecodes after the kill: the handler runs here, in __del__
            pass
        self.finished.append(True)  # not reached when the stop was raised in the finalizer


def _wait(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_stop_that_lands_in_a_finalizer_is_raised_in_the_main_thread_soon() -> None:
    # Training is a loop of graph calls with no critical section until the batch's tell: the
    # stop must not wait for that (the trials would be told COMPLETE under a "stopped" line).
    with stop_on_signals():
        started = time.monotonic()
        _SignalledWhileFinalized.finished.clear()
        with pytest.raises(Stopped, match="SIGTERM"):
            _SignalledWhileFinalized()  # dropped at once: its finalizer runs here
            gc.collect()
            _wait(5)
        assert time.monotonic() - started < 2
        assert _SignalledWhileFinalized.finished == []  # the stop did land in the finalizer


def test_a_stop_during_a_critical_section_waits_for_its_end() -> None:
    with stop_on_signals():
        done = []
        with pytest.raises(Stopped, match="SIGTERM"), critical():
            os.kill(os.getpid(), signal.SIGTERM)
            _wait(0.2)  # the handler has run by now, and must not have raised
            done.append("the section's work")
        assert done == ["the section's work"]


def test_a_stop_that_lands_in_a_finalizer_inside_a_critical_section_waits_for_its_end() -> None:
    with stop_on_signals():
        done = []
        with pytest.raises(Stopped, match="SIGTERM"), critical():
            _SignalledWhileFinalized()
            gc.collect()
            _wait(0.3)  # past the 50 ms retry: it defers to the section's end
            done.append("the section's work")
        assert done == ["the section's work"]


def test_a_librarys_report_of_a_stop_is_not_printed_but_its_errors_are(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """SQLAlchemy logs a stop that lands while a connection goes back to its pool, with a
    traceback; hpo prints its own one line for a stop instead."""
    log.configure()
    # A logger of SQLAlchemy's tree that `hpo worker` does not quiet (it raises the pool's level).
    pool = logging.getLogger("sqlalchemy.hpo_test")
    for exc in (Stopped("SIGTERM"), ValueError("a real problem")):
        try:
            raise exc
        except BaseException:
            pool.error("Exception during reset or similar", exc_info=True)
    err = capsys.readouterr().err
    assert err.count("Exception during reset or similar") == 1, err
    assert "ValueError: a real problem" in err and "Stopped" not in err
    log.configure(verbosity=1)  # --debug shows everything
    try:
        raise Stopped("SIGINT")
    except Stopped:
        pool.error("Exception during reset or similar", exc_info=True)
    assert "Stopped: SIGINT" in capsys.readouterr().err
    log.configure()


def test_a_stop_inside_a_conditions_wait_is_still_a_stop() -> None:
    """Seen with the reference engine: Ctrl-C landed in `Condition.wait` (waiting on the
    training process's future) after it released its lock; the `with` then failed to release
    it again, and that RuntimeError, not the stop, reached the top."""
    try:
        try:
            raise Stopped("SIGINT")
        except Stopped:
            raise RuntimeError("cannot release un-acquired lock")  # noqa: B904 (as threading does)
    except RuntimeError as error:
        stop = stop_within(error)
    assert isinstance(stop, Stopped)
    other = RuntimeError("something else")
    other.__context__ = Stopped("SIGINT")
    assert stop_within(other) is None  # a real error while stopping stays an error
