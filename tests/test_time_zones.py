"""Decisions about time use a clock every worker shares, whatever each machine's time zone."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from hpo.study.budget import claim_trials
from hpo.study.heartbeat import Heartbeat
from hpo.study.record import CrashPolicy
from hpo.study.storage import StorageGuard, open_storage


@pytest.fixture
def time_zone() -> Iterator[None]:
    saved = os.environ.get("TZ")
    yield
    if saved is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = saved
    time.tzset()


def _trial_without_heartbeat(url: str, tz: str) -> int:
    """A RUNNING trial as a worker in time zone ``tz`` leaves it when it dies between creating
    the trial and its first heartbeat (Optuna stamps the start in that machine's local time)."""
    os.environ["TZ"] = tz
    time.tzset()
    study = optuna.load_study(study_name="tz", storage=open_storage(url))
    return study.ask().number


@pytest.mark.parametrize("tz", ["Pacific/Kiritimati", "Pacific/Pago_Pago"])  # UTC+14, UTC-11
def test_a_trial_that_never_beat_is_failed_after_the_grace_period_in_any_time_zone(
    tmp_path: Path, tz: str, time_zone: None
) -> None:
    url = f"sqlite:///{tmp_path}/tz.db"
    optuna.create_study(study_name="tz", storage=open_storage(url))
    number = _trial_without_heartbeat(url, tz)
    os.environ["TZ"] = "UTC"  # the surviving worker's machine
    time.tzset()
    study = optuna.load_study(study_name="tz", storage=open_storage(url))
    policy = CrashPolicy(heartbeat_interval=1, grace_period=2)
    heartbeat = Heartbeat(study, policy, StorageGuard(url))

    def claim() -> str:
        claim_trials(
            study, n_trials=0, size=1, policy=policy, heartbeat=heartbeat, judge_stale=True, into=[]
        )
        return study._storage.get_trial(
            study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
        ).state.name

    # Not before its grace period: UTC-11 start times look 11 hours old and would have been
    # failed at once; UTC+14 ones look 14 hours in the future and would have lived for hours.
    assert claim() == "RUNNING"
    time.sleep(policy.grace_period + 0.5)
    assert claim() == "FAIL"
