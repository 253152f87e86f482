"""Ctrl-C or SIGTERM at any moment of `hpo run`: no traceback, exit 0, nothing left RUNNING.

Each case starts a real `hpo run` process, waits for the line that marks a stage (loading the
data, the study created, training, a trial told, the final model files, the last line), signals
it there, and then reads the study back from its SQLite file. The two earliest stages print
nothing, so they are found in /proc instead: importing the command line (the process has its
first signal handler) and loading the data (pandas' compiled modules are mapped).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pg import hpo_env

pytestmark = pytest.mark.slow

WriteStudy = Callable[..., Path]

# (stage, the line to wait for, seconds to wait after it)
STAGES = [
    ("storage", "storage: ", 0.0),
    ("claim", "': created;", 0.0),
    ("training", "training trials", 0.3),
    ("tell", " accuracy ", 0.0),
    ("artifacts", "saved trial-", 0.0),
    ("exit", "stored in ", 0.0),
]


def _start(study: Path, db: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "hpo", "run", str(study), "--storage", f"sqlite:///{db}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=hpo_env(f"sqlite:///{db}"),
        cwd=db.parent,
        start_new_session=True,
    )


def _signal_at(
    process: subprocess.Popen[str], marker: str, delay: float, *signals: int
) -> tuple[str, int]:
    """Read the output until ``marker``, then send ``signals`` (0.3 s apart); all the output
    and the exit code."""
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        seen.append(line)
        if marker in line:
            time.sleep(delay)
            for n, sig in enumerate(signals):
                if n:
                    time.sleep(0.3)
                os.kill(process.pid, sig)
            break
    seen.append(process.stdout.read())
    return "".join(seen), process.wait(timeout=120)


def _pandas_loaded(pid: int) -> bool:
    """Whether the process has started on the data: the command line itself imports no pandas."""
    return "/pandas/_libs/" in Path(f"/proc/{pid}/maps").read_text()


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM: Python has none of its own, so this is
    hpo's first one, installed before the command line is imported."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


def _states(db: Path) -> dict[str, int]:
    if not db.exists():
        return {}
    with sqlite3.connect(db) as con:
        try:
            return dict(con.execute("select state, count(*) from trials group by state"))
        except sqlite3.OperationalError:  # stopped before the schema was made
            return {}


@pytest.mark.parametrize(("stage", "marker", "delay"), STAGES, ids=[s[0] for s in STAGES])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_one_signal_at_any_stage_stops_cleanly(
    write_study: WriteStudy, tmp_path: Path, stage: str, marker: str, delay: float, sig: int
) -> None:
    study = write_study(engine="stacked", epochs=60, n_trials=6)
    db = tmp_path / "signals.db"
    output, code = _signal_at(_start(study, db), marker, delay, sig)
    name = signal.Signals(sig).name
    assert "Traceback" not in output and "Aborted" not in output, output
    assert code == 0, output
    assert "RUNNING" not in _states(db), (_states(db), output)
    if stage in ("training", "tell"):
        assert f"stopped by {name}" in output, output


EARLY = [("import", _catches_sigterm), ("loading", _pandas_loaded)]


@pytest.mark.parametrize(("stage", "reached"), EARLY, ids=[s[0] for s in EARLY])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_before_the_first_line_stops_cleanly(
    write_study: WriteStudy,
    tmp_path: Path,
    stage: str,
    reached: Callable[[int], bool],
    sig: int,
) -> None:
    study = write_study(engine="stacked", epochs=60, n_trials=6)
    db = tmp_path / "early.db"
    process = _start(study, db)
    deadline = time.monotonic() + 60
    while not reached(process.pid):
        assert process.poll() is None and time.monotonic() < deadline, f"{stage} not reached"
        time.sleep(0.002)
    os.kill(process.pid, sig)
    output, _ = process.communicate(timeout=60)
    name = signal.Signals(sig).name
    assert process.returncode == 0, output
    assert "Traceback" not in output, output
    assert output.endswith(f"stopped by {name}\n"), output
    assert "RUNNING" not in _states(db)
    if stage == "import":
        assert output == f"stopped by {name}\n"  # nothing had started: no other line
        assert not db.exists()


def test_a_second_signal_during_shutdown_exits_with_its_documented_code(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    study = write_study(engine="stacked", epochs=200, n_trials=6)
    db = tmp_path / "twice.db"
    output, code = _signal_at(
        _start(study, db), "training trials", 0.3, signal.SIGINT, signal.SIGINT
    )
    assert "Traceback" not in output and "Aborted" not in output, output
    assert code in (0, 130), output
    assert "RUNNING" not in _states(db), (_states(db), output)


def test_ctrl_c_to_the_whole_process_group_with_the_reference_engine(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    # A terminal's Ctrl-C reaches every process of the group: the training child too.
    study = write_study(engine="reference", epochs=40, n_trials=4)
    db = tmp_path / "group.db"
    process = _start(study, db)
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        seen.append(line)
        if "fold 1/3 accuracy" in line:
            os.killpg(process.pid, signal.SIGINT)
            break
    seen.append(process.stdout.read())
    output, code = "".join(seen), process.wait(timeout=120)
    assert "Traceback" not in output and "Aborted" not in output, output
    assert code == 0, output
    assert "stopped by SIGINT" in output, output
    assert "RUNNING" not in _states(db), (_states(db), output)
