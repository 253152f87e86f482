"""The extra training processes of one ``hpo run``: ``hpo worker`` processes on the same study.

The stacked engine trains on one thread per process (two threads in one process were slower
than one), so a machine is used by one process per core. ``hpo run --workers N`` trains in its
own process and starts ``N - 1`` workers of the same study, which share the budget exactly as
workers on other machines do (claims under the study lock). They write to the same stderr, so
their per-trial lines join the run's own; their start-up lines are left out (``--part-of-run``),
and the run writes the final model files once all have ended.

Signals: the workers run in sessions of their own, so a terminal's Ctrl-C reaches this process
only, and it passes exactly one SIGTERM on to each worker once it has stopped its own trials
(both signals in every worker would make each stop "again", abruptly). Each worker asks Linux to
be sent SIGTERM if this process dies, however it dies (``PR_SET_PDEATHSIG``), so none trains on
orphaned. The storage URL reaches them through the environment, never the command line (``ps``
shows that).
"""

from __future__ import annotations

import ctypes
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hpo import stops
from hpo.log import get_logger
from hpo.study.record import WORKER_ATTR, WORKER_TAG_ENV, new_worker_tag, worker_id_of

if TYPE_CHECKING:
    import optuna

__all__ = ["RUN_PROCESSES", "WorkerPool", "end_with_run", "usable_cores", "workers_for"]

# The run's process id, for its workers to end with it.
_RUN_PARENT = "HPO_RUN_PARENT"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
# How many training processes the run has, for its workers' choice of batch (measured under
# that many processes' load: hpo.engines.batching).
RUN_PROCESSES = "HPO_RUN_PROCESSES"

_log = get_logger("pool")
# How long a stopped worker gets to fail its trials and exit before it is killed.
_STOP_GRACE_SECONDS = 60.0
# How often the run looks whether its workers have ended (a stop ends the wait at once).
_POLL_SECONDS = 0.2


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota (a
    container limited to 2 CPUs on a 64-core host sees 64 in ``os.cpu_count()``)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cores, quota) if quota else cores)


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """CPUs allowed by the cgroup v2 (``cpu.max``: "QUOTA PERIOD") or v1 (``cfs_quota_us``,
    ``cfs_period_us``) quota under ``root``, rounded up; None without one."""
    v2, v1 = root / "cpu.max", root / "cpu"
    try:
        quota, period = v2.read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (v1 / "cpu.cfs_quota_us").read_text().strip()
            period = (v1 / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    try:
        return None if quota in ("max", "-1") else max(1, math.ceil(int(quota) / int(period)))
    except ValueError:
        return None


def end_with_run() -> None:
    """In a worker started by a run's pool: be sent SIGTERM when the run's process dies (on
    Linux; elsewhere the worker ends with the budget, as any worker does)."""
    parent = os.environ.get(_RUN_PARENT)
    if parent is None:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # it died before the request: nobody would signal
        os.kill(os.getpid(), signal.SIGTERM)


def workers_for(requested: int, trials_left: int, per_process: int) -> int:
    """Processes worth starting: ``requested``, but no more than the trials left can keep busy
    (each claims ``per_process`` trials at a time; a process with none to train would only
    spend its start-up).

    >>> workers_for(8, trials_left=20, per_process=8)
    3
    >>> workers_for(2, trials_left=1, per_process=8)
    1
    """
    return max(1, min(requested, math.ceil(trials_left / max(1, per_process))))


@dataclass
class WorkerPool:
    """``size`` worker processes of study ``name`` (``start``), stopped and waited for
    (``finish``)."""

    name: str
    storage_url: str
    size: int
    data_path: str | None = None
    timeout: float | None = None
    import_paths: Sequence[str] = ()
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _tags: dict[int, str] = field(default_factory=dict)  # pid -> the id tag it was given
    _signalled: set[int] = field(default_factory=set)  # pids sent their one SIGTERM

    def start(self) -> None:
        env = {
            **os.environ,
            "HPO_STORAGE": self.storage_url,
            RUN_PROCESSES: str(self.size + 1),
            _RUN_PARENT: str(os.getpid()),
        }
        if self.import_paths:  # where this run found a builder's module
            env["PYTHONPATH"] = os.pathsep.join(
                [*self.import_paths, *filter(None, [env.get("PYTHONPATH")])]
            )
        command = [sys.executable, "-m", "hpo", "worker", self.name, "--part-of-run"]
        if self.data_path is not None:
            command += ["--data", str(Path(self.data_path).resolve())]
        if self.timeout is not None:
            command += ["--timeout", str(self.timeout)]
        for _ in range(self.size):
            # Its id's tag, chosen here: the run counts its workers' trials by their ids.
            tag = new_worker_tag()
            proc = subprocess.Popen(
                command,
                env={**env, WORKER_TAG_ENV: tag},
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            self.procs.append(proc)
            self._tags[proc.pid] = tag

    @property
    def worker_ids(self) -> set[str]:
        host = socket.gethostname()
        return {worker_id_of(host, pid, tag) for pid, tag in self._tags.items()}

    def stop(self) -> None:
        """Ask the workers still running to stop as Ctrl-C would (they fail their trials in
        flight, which the study retries, and exit). Each is asked once: a second signal would
        make it exit at once instead."""
        for proc in self.procs:
            if proc.poll() is None and proc.pid not in self._signalled:
                self._signalled.add(proc.pid)
                proc.send_signal(signal.SIGTERM)

    def finish(self) -> list[int]:
        """Wait for every worker to end (they end with the budget, as this process does);
        the exit codes. A stop requested meanwhile raises ``Stopped`` (then :meth:`close`)."""
        codes = []
        for proc in self.procs:
            while (code := proc.poll()) is None:
                stops.pause(_POLL_SECONDS)
            codes.append(code)
        return codes

    def close(self) -> list[int]:
        """Stop and reap every worker (on any way out of the run); their exit codes. A worker
        that ignores its stop for a minute is killed."""
        self.stop()
        deadline = time.monotonic() + _STOP_GRACE_SECONDS
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return [int(proc.returncode) for proc in self.procs]

    def counts(self, study: optuna.Study) -> Counter[str]:
        """The workers' trials by state (COMPLETE, PRUNED, FAIL), read from the study."""
        mine = self.worker_ids
        return Counter(
            t.state.name
            for t in study.get_trials(deepcopy=False)
            if t.user_attrs.get(WORKER_ATTR) in mine
        )
