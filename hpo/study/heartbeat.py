"""Heartbeats: how a study tells a live worker's trials from a dead one's.

Optuna records heartbeats only inside ``study.optimize``; our workers ask and tell batches
themselves, so a thread here records one for every trial the worker holds, every
``heartbeat_interval`` seconds. A RUNNING trial whose heartbeat is older than ``grace_period``
belongs to a dead worker: the next claim fails it and queues a retry (see ``hpo.study.budget``).

The same thread keeps the worker's own record on the study (``hpo:worker:`` and the worker's
id, :func:`hpo.study.record.worker_id`: state, held trials, last seen) for ``hpo status``.

The policy is part of the study (stored at creation), so every worker beats and judges with
the same numbers.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from hpo.log import get_logger
from hpo.study import optuna_compat as compat
from hpo.study.bulk import record_heartbeats
from hpo.study.record import WORKER_ATTR_PREFIX, CrashPolicy, worker_id
from hpo.study.storage import StorageGuard

if TYPE_CHECKING:
    import optuna

__all__ = ["Heartbeat", "configure_stale_detection"]

_log = get_logger("heartbeat")


def configure_stale_detection(
    storage: optuna.storages.RDBStorage,
    policy: CrashPolicy,
    on_stale: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
) -> None:
    """Let ``optuna.storages.fail_stale_trials`` judge with the study's policy.

    The storage is opened before the study (and its policy) is known, so the settings that
    the RDB storage takes at construction are set here instead.
    """
    storage.heartbeat_interval = policy.heartbeat_interval
    storage.grace_period = policy.grace_period
    storage.heartbeat_stale_trial_callback = on_stale


class Heartbeat:
    """A daemon thread beating for every trial this worker holds, and for the worker itself."""

    def __init__(
        self,
        study: optuna.Study,
        policy: CrashPolicy,
        guard: StorageGuard,
        *,
        worker: str | None = None,
    ) -> None:
        self.study = study
        self.policy = policy
        self.guard = guard
        self.worker = worker or worker_id()
        self._held: dict[int, int] = {}  # trial_id -> number
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._record: dict[str, Any] = {
            "id": self.worker,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "state": "starting",
            "started": time.time(),
            "completed": 0,
            "trials": [],
        }

    # -- what the main thread tells us ---------------------------------------------------------

    def hold(self, trial_id: int, number: int) -> None:
        with self._lock:
            self._held[trial_id] = number

    def release(self, trial_ids: Iterable[int]) -> None:
        with self._lock:
            for trial_id in trial_ids:
                self._held.pop(trial_id, None)

    def held(self) -> dict[int, int]:
        with self._lock:
            return dict(self._held)

    def set_state(self, state: str, *, completed: int | None = None) -> None:
        with self._lock:
            changed = self._record["state"] != state
            self._record["state"] = state
            if completed is not None:
                self._record["completed"] = completed
        if changed:
            self._write_record()

    # -- the thread ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hpo-heartbeat", daemon=True)
        self._thread.start()

    def stop(self, final_state: str, *, completed: int | None = None) -> None:
        self._stop.set()
        if self._thread is not None:
            # A beat stuck on an unreachable database must not hold the exit for long.
            self._thread.join(timeout=15)
        with self._lock:
            self._held.clear()
            self._record["state"] = final_state
            if completed is not None:
                self._record["completed"] = completed
        self._write_record()

    def beat(self, trial_ids: Iterable[int]) -> bool:
        """Record a heartbeat for each of ``trial_ids`` (one transaction); whether it was stored."""
        ids = list(trial_ids)
        if not ids:
            # Nothing to send: no sign that the database is reachable, so the guard is not told
            # so (it would print "reachable again" once a second through an outage).
            return True
        ok, _ = self.guard.attempt(
            lambda: record_heartbeats(compat.storage_of(self.study), ids), "heartbeat"
        )
        return ok

    def _run(self) -> None:
        while not self._stop.wait(self.policy.heartbeat_interval):
            try:
                self.beat(self.held())
                self._write_record()
            except Exception as exc:  # a bug here must not kill the beats silently
                _log.warning("heartbeat failed: %s", type(exc).__name__, exc_info=exc)

    def _write_record(self) -> None:
        with self._lock:
            record = {**self._record, "trials": sorted(self._held.values())}
        record["last_seen"] = time.time()
        self.guard.attempt(
            lambda: compat.storage_of(self.study).set_study_system_attr(
                compat.study_id(self.study), WORKER_ATTR_PREFIX + self.worker, record
            ),
            "worker record",
        )
