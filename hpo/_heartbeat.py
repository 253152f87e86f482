"""Heartbeats: how a study tells a live worker's trials from a dead one's.

Optuna records heartbeats only inside ``study.optimize``; our workers ask and tell batches
themselves, so a thread here records one for every trial the worker holds, every
``heartbeat_interval`` seconds. A RUNNING trial whose heartbeat is older than ``grace_period``
belongs to a dead worker: the next claim fails it and queues a retry (see ``hpo._budget``).

The same thread keeps the worker's own record on the study (``hpo:worker:HOST:PID``: state,
held trials, last seen) for ``hpo status``.

The policy is part of the study (stored at creation), so every worker beats and judges with
the same numbers.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from hpo._errors import HpoError
from hpo._logging import get_logger
from hpo.storage import StorageGuard

if TYPE_CHECKING:
    import optuna

__all__ = [
    "POLICY_ATTR",
    "WORKER_ATTR_PREFIX",
    "CrashPolicy",
    "Heartbeat",
    "configure_stale_detection",
    "stored_policy",
    "worker_id",
    "worker_records",
]

POLICY_ATTR = "hpo_crash_policy"
WORKER_ATTR_PREFIX = "hpo:worker:"
_log = get_logger("heartbeat")


@dataclass(frozen=True, kw_only=True)
class CrashPolicy:
    """How crashed workers are detected and their trials retried.

    ``heartbeat_interval``: seconds between heartbeats of a held trial. ``grace_period``:
    seconds without a heartbeat after which a RUNNING trial is failed (keep it several
    intervals, and longer than a database restart). ``max_retries``: how often one trial's
    parameters are retried after its worker died or was stopped.
    """

    heartbeat_interval: int = 10
    grace_period: int = 60
    max_retries: int = 3

    def __post_init__(self) -> None:
        if self.heartbeat_interval < 1:
            raise ValueError(
                f"`heartbeat_interval >= 1` must hold, but got {self.heartbeat_interval}"
            )
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(
                "`grace_period > heartbeat_interval` must hold, but got "
                f"(grace_period={self.grace_period}, heartbeat_interval={self.heartbeat_interval})"
            )
        if self.max_retries < 0:
            raise ValueError(f"`max_retries >= 0` must hold, but got {self.max_retries}")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, origin: str) -> CrashPolicy:
        try:
            return cls(**{k: int(v) for k, v in raw.items() if k in cls.__dataclass_fields__})
        except (TypeError, ValueError) as exc:
            raise HpoError(f"{origin}: stored crash policy is invalid ({exc})") from None


def stored_policy(study: optuna.Study) -> CrashPolicy:
    raw = study.user_attrs.get(POLICY_ATTR)
    if raw is None:  # a study made before policies were stored
        return CrashPolicy()
    return CrashPolicy.from_dict(raw, origin=f"study {study.study_name!r}")


def worker_id() -> str:
    """``host:pid``: unique per process, and in a container the host name is the container's."""
    return f"{socket.gethostname()}:{os.getpid()}"


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


def worker_records(study: optuna.Study) -> list[dict[str, Any]]:
    """Every worker that ever joined the study, most recently seen first."""
    attrs = study._storage.get_study_system_attrs(study._study_id)
    records = [
        dict(value)
        for key, value in attrs.items()
        if key.startswith(WORKER_ATTR_PREFIX) and isinstance(value, dict)
    ]
    return sorted(records, key=lambda r: -float(r.get("last_seen", 0)))


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

    def beat(self, trial_id: int) -> bool:
        from optuna.storages._heartbeat import BaseHeartbeat

        storage = self.study._storage
        assert isinstance(storage, BaseHeartbeat)  # an RDB storage, or Optuna's cache of one
        ok, _ = self.guard.attempt(lambda: storage.record_heartbeat(trial_id), "heartbeat")
        return ok

    def _run(self) -> None:
        while not self._stop.wait(self.policy.heartbeat_interval):
            try:
                for trial_id in self.held():
                    self.beat(trial_id)
                self._write_record()
            except Exception as exc:  # a bug here must not kill the beats silently
                _log.warning("heartbeat failed: %s", type(exc).__name__, exc_info=exc)

    def _write_record(self) -> None:
        with self._lock:
            record = {**self._record, "trials": sorted(self._held.values())}
        record["last_seen"] = time.time()
        self.guard.attempt(
            lambda: self.study._storage.set_study_system_attr(
                self.study._study_id, WORKER_ATTR_PREFIX + self.worker, record
            ),
            "worker record",
        )
