"""Ctrl-C on a real ``hpo run`` process: clean exit, database intact, nothing left RUNNING."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest

pytestmark = pytest.mark.slow  # a real `hpo run` process, stopped in the middle of its trial


def _wait_for(path: Path, text: str, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        if proc.poll() is not None:
            pytest.fail(f"hpo exited early:\n{path.read_text()}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"timed out waiting for {text!r}:\n{path.read_text()}")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_cleanly(
    write_study: Callable[..., Path], tmp_path: Path, signum: int
) -> None:
    study_file = write_study(epochs=400, n_trials=50)
    storage = f"sqlite:///{tmp_path}/stop.db"
    log = tmp_path / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hpo", "run", str(study_file), "--storage", storage],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # Stop it in the middle of a trial: after one fold has finished, before the trial ends.
        _wait_for(log, "fold 1/3 accuracy", proc)
        proc.send_signal(signum)
        assert proc.wait(timeout=120) == 0, log.read_text()
    output = log.read_text()
    name = signal.Signals(signum).name
    assert f"stopped by {name}: trials in flight marked FAIL; the study is intact" in output
    assert "Traceback" not in output

    study = optuna.load_study(study_name="tiny", storage=storage)
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states
    interrupted = [t for t in study.trials if "interrupted" in t.user_attrs]
    assert len(interrupted) == 1 and interrupted[0].state == optuna.trial.TrialState.FAIL
    assert interrupted[0].user_attrs["interrupted"] == name
