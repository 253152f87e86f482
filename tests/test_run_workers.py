"""`hpo run --workers N`: one training process per core by default, one budget, one output.

Real processes (``python -m hpo run``, which starts ``hpo worker`` processes), real SQLite and
PostgreSQL, real stacked-engine training at a few epochs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest

from hpo.study.pool import _cgroup_quota, usable_cores, workers_for
from hpo.study.record import WORKER_ATTR, worker_records

HPO = [sys.executable, "-m", "hpo"]


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HPO, *args],
        cwd=cwd,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


# --- how many ----------------------------------------------------------------------------------


def test_the_default_is_the_cores_this_process_may_use() -> None:
    assert usable_cores() == min(
        len(os.sched_getaffinity(0)), _cgroup_quota() or len(os.sched_getaffinity(0))
    )


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs: the second core is half usable
        ({"cpu.max": "50000 100000\n"}, 1),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "400000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 4),
        ({}, None),
    ],
)
def test_a_cgroup_cpu_quota_caps_the_cores(
    tmp_path: Path, files: dict[str, str], expected: int | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert _cgroup_quota(tmp_path) == expected


def test_no_more_processes_than_the_trials_left_keep_busy() -> None:
    assert workers_for(16, trials_left=20, per_process=8) == 3
    assert workers_for(2, trials_left=40, per_process=8) == 2
    assert workers_for(4, trials_left=0, per_process=8) == 1
    assert workers_for(4, trials_left=3, per_process=1) == 3


def test_a_small_budget_runs_in_one_process_and_says_why(
    write_study: Callable[..., Path], tmp_path: Path
) -> None:
    study = write_study(engine="stacked", epochs=2, n_trials=2)  # 2 trials a batch
    result = _run(["run", str(study), "--workers", "4"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "workers: 1 training process (of 4: 2 trials to run, 2 a batch)\n" in result.stderr
    assert "ran 2 trials" in result.stdout


# --- a run with a pool -------------------------------------------------------------------------


@pytest.mark.slow  # three processes import TensorFlow and train
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_workers_share_the_exact_budget_and_one_output(
    write_study: Callable[..., Path], tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    url = f"sqlite:///{tmp_path}/w.db" if backend == "sqlite" else request.getfixturevalue("pg_url")
    study = write_study(engine="stacked", epochs=100, n_trials=13)
    # The default, one process per usable core, as a user without HPO_WORKERS gets it.
    env = {k: v for k, v in os.environ.items() if k != "HPO_WORKERS"}
    result = subprocess.run(
        [*HPO, "run", str(study), "--storage", url],
        cwd=tmp_path,
        env={**env, "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    cores = usable_cores()
    assert f"workers: {min(cores, 7)} training process" in result.stderr
    assert "ran 13 trials (0 pruned, 0 failed)" in result.stdout
    assert "worker joined" not in result.stderr  # the run's workers leave out their start-up
    assert "Traceback" not in result.stderr
    loaded = optuna.load_study(study_name="tiny", storage=url)
    assert Counter(t.state.name for t in loaded.trials) == {"COMPLETE": 13}
    # Every process joined the study (each leaves its worker record); which of them trained
    # how many trials depends on how fast each started.
    joined = {record["id"] for record in worker_records(loaded)}
    assert len(joined) == min(cores, 7), joined
    assert {t.user_attrs[WORKER_ATTR] for t in loaded.trials} <= joined
    # Every trial's line reached the run's output, whichever process trained it.
    for trial in loaded.trials:
        assert f"trial {trial.number}: accuracy {trial.value:.4f}" in result.stderr
    # The final best got their files once each, from the process that trained them.
    best = sorted(loaded.trials, key=lambda t: (-t.value, t.number))[:3]
    from hpo.results.artifacts import trial_artifacts

    for trial in best:
        names = sorted(a.filename for a in trial_artifacts(loaded, trial))
        n = trial.number
        assert names == [
            f"trial-{n}-confusion.png",
            f"trial-{n}-fold1.keras",
            f"trial-{n}-folds.csv",
        ]


def _wait_for(path: Path, text: str, proc: subprocess.Popen[str], count: int = 1) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if path.read_text(errors="replace").count(text) >= count:
            return
        if proc.poll() is not None:
            raise AssertionError(path.read_text())
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} in time:\n{path.read_text()}")


def _wait_until_both_train(url: str, log: Path, proc: subprocess.Popen[str]) -> None:
    """Until two processes hold RUNNING trials they sampled: "training trials" twice in the
    log is not enough, as the run's own process may start a second batch before its worker has
    even imported TensorFlow."""
    _wait_for(log, "training trials", proc)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        running = optuna.load_study(study_name="tiny", storage=url).get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)
        )
        if len({t.user_attrs.get(WORKER_ATTR) for t in running} - {None}) == 2:
            return
        if proc.poll() is not None:
            raise AssertionError(log.read_text())
        time.sleep(0.2)
    raise AssertionError(f"the worker never trained:\n{log.read_text()}")


@contextlib.contextmanager
def _long_run(
    write_study: Callable[..., Path], url: str, log: Path, **popen: Any
) -> Iterator[subprocess.Popen[str]]:
    """`hpo run --workers 2` of a study far longer than the test, its output in ``log``."""
    study = write_study(engine="stacked", epochs=2000, n_trials=40)
    with log.open("w") as out:
        yield subprocess.Popen(
            [*HPO, "run", str(study), "--storage", url, "--workers", "2"],
            cwd=log.parent,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            **popen,
        )


@pytest.mark.slow  # processes import TensorFlow and train
@pytest.mark.parametrize("how", ["terminal Ctrl-C", "SIGTERM to the run"])
def test_a_stopped_run_stops_its_workers_and_leaves_nothing_running(
    write_study: Callable[..., Path], tmp_path: Path, how: str
) -> None:
    url = f"sqlite:///{tmp_path}/stop.db"
    log = tmp_path / "run.log"
    # Its own process group, as a terminal gives a command.
    with _long_run(write_study, url, log, start_new_session=True) as proc:
        try:
            _wait_until_both_train(url, log, proc)
            if how == "terminal Ctrl-C":
                os.killpg(proc.pid, signal.SIGINT)  # the terminal signals the whole group
            else:
                proc.send_signal(signal.SIGTERM)  # a supervisor signals the run only
            assert proc.wait(timeout=180) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    output = log.read_text()
    assert "stopped by SIG" in output
    assert "Traceback" not in output
    # One stop each: no worker was stopped "again" (abruptly), nor said its own stop line.
    assert "again" not in output
    assert output.count("stopped by") == 1, output
    # No trial is left RUNNING, and no worker process is left (their ids are on the trials).
    loaded = optuna.load_study(study_name="tiny", storage=url)
    states = Counter(t.state.name for t in loaded.trials)
    assert states.get("RUNNING", 0) == 0 and states.get("FAIL", 0) >= 2, states
    pids = {int(t.user_attrs[WORKER_ATTR].split(":")[1]) for t in loaded.trials}  # HOST:PID:TAG
    assert len(pids) == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.slow  # processes import TensorFlow and train
def test_a_killed_run_takes_its_workers_with_it(
    write_study: Callable[..., Path], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/kill.db"
    log = tmp_path / "run.log"
    with _long_run(write_study, url, log) as proc:
        _wait_until_both_train(url, log, proc)
        proc.kill()  # SIGKILL: the run cannot stop anything itself
        proc.wait()
    loaded = optuna.load_study(study_name="tiny", storage=url)
    pids = {int(t.user_attrs[WORKER_ATTR].split(":")[1]) for t in loaded.trials}  # HOST:PID:TAG
    worker = pids - {proc.pid}
    assert len(worker) == 1
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            os.kill(next(iter(worker)), 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"worker {worker} still runs after its run was killed")
