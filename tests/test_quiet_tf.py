"""TensorFlow's start-up lines stay out of ``hpo``'s output unless ``-v`` or ``--debug`` asks.

TensorFlow 2.21 prints absl's "before absl::InitializeLog()" notice and oneDNN's INFO line while
its libraries load, twice per process, whatever ``TF_CPP_MIN_LOG_LEVEL`` says. The CLI runs here
as a user starts it: in a subprocess whose environment has none of the TensorFlow settings that
conftest gives the test process.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

NOTICE = "absl::InitializeLog"
ONEDNN = "oneDNN custom operations"
ONEDNN_LINE = (
    "I0000 00:00:1795929699.854974    5601 port.cc:153] oneDNN custom operations are on. "
    "You may see slightly different numerical results.\n"
)
NOTICE_LINE = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
)


def _user_env(**extra: str) -> dict[str, str]:
    """This process's environment less what conftest and the developer's shell set for hpo."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HPO_", "TF_", "KERAS_")) and k != "PYTHONWARNINGS"
    }
    env.update(extra)
    return env


def _hpo(cwd: Path, *args: str) -> str:
    """Run ``python -m hpo ARGS`` in ``cwd``; its stderr (the exit status must be 0)."""
    done = subprocess.run(
        [sys.executable, "-m", "hpo", *args],
        cwd=cwd,
        env=_user_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def _one_quick_trial(write_study: Callable[..., Path], engine: str) -> list[str]:
    return ["run", str(write_study(engine=engine)), "--n-trials", "1", "--epochs", "1"]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["stacked", "reference"])
def test_a_run_prints_no_tensorflow_start_up_lines(
    tmp_path: Path, write_study: Callable[..., Path], engine: str
) -> None:
    err = _hpo(tmp_path, *_one_quick_trial(write_study, engine))
    assert "trial 0: accuracy" in err  # the run's own lines are all there
    assert NOTICE not in err
    assert ONEDNN not in err


@pytest.mark.slow
def test_verbose_shows_them_from_the_training_child_too(
    tmp_path: Path, write_study: Callable[..., Path]
) -> None:
    err = _hpo(tmp_path, "-v", *_one_quick_trial(write_study, "reference"))
    assert NOTICE in err
    # absl's prefix names the thread that logged: the CLI process and the reference engine's
    # training child each import TensorFlow, and both must have their lines shown.
    threads = set(re.findall(r"I\d{4} [\d:.]+ +(\d+) port\.cc:\d+\] oneDNN custom", err))
    assert len(threads) == 2, err
    # --debug turns the same switch (configure(1) in hpo.cli); that path is not run twice here.


def test_a_user_who_asks_tensorflow_for_info_lines_gets_them(tmp_path: Path) -> None:
    """``TF_CPP_MIN_LOG_LEVEL=0`` asks for TensorFlow's INFO lines: hpo leaves stderr alone."""
    done = subprocess.run(
        [sys.executable, "-c", "from hpo.engines.keras_model import tf; tf.constant(1.0)"],
        cwd=tmp_path,
        env=_user_env(TF_CPP_MIN_LOG_LEVEL="0"),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert ONEDNN in done.stderr


# --- the capture itself, around a stand-in for the import (no TensorFlow) -------------------

CAPTURE_SCRIPT = """
import os, sys
from hpo.engines.keras_model import _start_up_lines_to_debug
from hpo.log import configure

configure(int(sys.argv[1]))
try:
    with _start_up_lines_to_debug():
        os.write(2, NOTICE_LINE.encode())
        os.write(2, ONEDNN_LINE.encode())
        os.write(2, ERROR_LINE.encode())  # C code's real error: never swallowed
        print("a Python warning, not yet flushed", end="", file=sys.stderr)
        raise ImportError("the import failed")
except ImportError:
    os.write(2, b"|fd 2 is back\\n")
"""


@pytest.mark.parametrize("verbosity", [0, 1])
def test_start_up_lines_go_to_the_log_everything_else_to_stderr(
    tmp_path: Path, verbosity: int
) -> None:
    error = "E0000 00:00:1795929699.9    5601 loader.cc:12] could not load libfoo.so\n"
    constants = f"NOTICE_LINE = {NOTICE_LINE!r}\nONEDNN_LINE = {ONEDNN_LINE!r}\n"
    code = constants + f"ERROR_LINE = {error!r}\n" + CAPTURE_SCRIPT
    done = subprocess.run(
        [sys.executable, "-c", code, str(verbosity)],
        cwd=tmp_path,
        env=_user_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = done.stderr.splitlines()
    # Not start-up noise: passed through unchanged and in order, however the import ended.
    passed = [line for line in lines if not re.match(r"\d\d:\d\d:\d\d ", line)]
    assert passed == [error.rstrip(), "a Python warning, not yet flushed", "|fd 2 is back"]
    logged = [line[9:] for line in lines if re.match(r"\d\d:\d\d:\d\d ", line)]
    expected = [f"TensorFlow start-up: {line.rstrip()}" for line in (NOTICE_LINE, ONEDNN_LINE)]
    assert logged == (expected if verbosity else [])


def test_a_fatal_line_before_an_abort_is_still_seen(tmp_path: Path) -> None:
    # TensorFlow aborts the process from its import on a CPU it was not built for: the line
    # that says why must reach stderr before the process dies, not wait for the capture's end.
    fatal = "F0000 00:00:1795929699.9    5601 cpu_feature_guard.cc:1] compiled to use AVX\n"
    code = (
        "import os, time\n"
        "from hpo.engines.keras_model import _start_up_lines_to_debug\n"
        "with _start_up_lines_to_debug():\n"
        f"    os.write(2, {NOTICE_LINE.encode()!r})\n"
        f"    os.write(2, {fatal.encode()!r})\n"
        "    time.sleep(0.5)\n"
        "    os.abort()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=_user_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == -6  # SIGABRT
    assert done.stderr == fatal
