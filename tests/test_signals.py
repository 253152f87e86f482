"""How a stop signal becomes a request that work checks (``hpo.stops``).

The end-to-end cases (a real ``hpo run`` signalled at each stage, and random signals at random
moments) are in ``test_signals_anywhere.py`` and ``test_stop_soak.py``; these pin the rules
they rely on: the handler raises nothing anywhere, a check point raises, a wait ends at once,
and a second signal ends a process with its code after the abort hooks ran.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest

from hpo import stops


class _SignalledWhileFinalized:
    """An object whose finalizer receives SIGTERM, as TensorFlow's finalizers did when a
    signal landed while they freed a graph (the old design raised the stop in there, where
    Python can only print and drop it)."""

    finished: ClassVar[list[bool]] = []

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # bytecodes after the kill: the handler runs here, in __del__
            pass
        self.finished.append(True)


def test_a_signal_raises_nothing_where_it_lands_and_the_next_check_point_stops() -> None:
    with stops.stop_on_signals():
        _SignalledWhileFinalized.finished.clear()
        _SignalledWhileFinalized()  # dropped at once: its finalizer runs here
        gc.collect()
        assert _SignalledWhileFinalized.finished == [True]  # the finalizer ran to its end
        assert stops.requested() == "SIGTERM"
        with pytest.raises(stops.Stopped, match="SIGTERM"):
            stops.check()
        assert stops.raised()
    assert stops.requested() is None  # the block's end forgets it: the next command starts clean


def test_a_wait_ends_as_soon_as_a_stop_is_requested() -> None:
    with stops.stop_on_signals():
        started = time.monotonic()
        timer = _kill_after(0.3, signal.SIGINT)
        with pytest.raises(stops.Stopped, match="SIGINT"):
            stops.pause(30)
        timer.join()
        assert time.monotonic() - started < 3


def test_in_process_a_second_signal_is_one_more_request(tmp_path: Path) -> None:
    """A notebook or a test that calls hpo must not be ended by a second Ctrl-C."""
    with stops.stop_on_signals():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # the process is still here: nothing ended it
        assert stops.signals_received() == 2
        assert stops.requested() == "SIGINT" and stops.last_signal() == "SIGTERM"


_SECOND_SIGNAL = textwrap.dedent(
    """
    import hashlib, sys
    from pathlib import Path
    from hpo import stops

    mark = Path(sys.argv[1])
    with stops.stop_on_signals(exit_on_second=True), stops.on_abort(
        lambda: mark.write_text("failed the trials in flight")
    ):
        print("ready", flush=True)
        # One long C call (minutes): Python runs no signal handler until it returns, so both
        # signals must be seen, and the second one acted on, from outside the main thread.
        hashlib.pbkdf2_hmac("sha256", b"password", b"salt", 10**9)
    print("not reached", flush=True)
    """
)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_second_signal_ends_the_process_with_its_code_after_the_abort_hooks(
    tmp_path: Path, sig: int
) -> None:
    mark = tmp_path / "abort-hook"
    process = subprocess.Popen(
        [sys.executable, "-c", _SECOND_SIGNAL, str(mark)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    process.send_signal(sig)
    time.sleep(0.3)
    assert process.poll() is None  # one signal is a request: the C call has no check point
    started = time.monotonic()
    process.send_signal(sig)
    out, err = process.communicate(timeout=30)
    assert time.monotonic() - started < 5
    assert process.returncode == 128 + sig, (out, err)
    name = signal.Signals(sig).name
    assert err == f"stopped again by {name}: exiting at once\n"
    assert "not reached" not in out
    assert mark.read_text() == "failed the trials in flight"


_AT_ONCE = textwrap.dedent(
    """
    import hashlib
    from hpo import stops

    with stops.stop_on_signals(exit_on_second=True):
        with stops.at_once():  # holding nothing, as during TensorFlow's import at start-up
            print("ready", flush=True)
            hashlib.pbkdf2_hmac("sha256", b"password", b"salt", 10**9)
        print("not reached", flush=True)
    """
)


def test_a_stop_during_a_start_up_step_that_holds_nothing_ends_the_process_at_once() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", _AT_ONCE], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert time.monotonic() - started < 5
    assert (process.returncode, out, err) == (0, "", "stopped by SIGINT\n")


def _kill_after(seconds: float, sig: int) -> threading.Timer:
    timer = threading.Timer(seconds, os.kill, (os.getpid(), sig))
    timer.start()
    return timer


_WAIT_UNDER_SIGNALS = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    from hpo import stops

    sys.setswitchinterval(1e-4)  # hand the GIL to the signalling thread often
    with stops.stop_on_signals():
        def shower():
            for _ in range(2000):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.0002)

        thread = threading.Thread(target=shower)
        thread.start()
        while thread.is_alive():
            stops.reset()  # the event's own lock, again and again, while signals land
            stops.wait(0)
        stops.request("SIGINT")
        print(stops.requested(), flush=True)
    """
)


def test_a_signal_that_lands_inside_a_wait_does_not_deadlock_it() -> None:
    """The handler runs on the main thread, which may be inside ``Event.wait`` holding the
    event's lock: the handler must not take that lock (a worker waiting for the SQLite claim
    lock hung there, signalled twice, in the stop soak)."""
    process = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", _WAIT_UNDER_SIGNALS],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (process.returncode, process.stdout) == (0, "SIGINT\n"), process.stderr[-2000:]
