"""A worker whose study lock dies mid-claim never lets the study pass its budget.

The lock is a transaction-level PostgreSQL advisory lock, taken in the claim's own transaction on
the worker's one connection. The test ends that session with ``pg_terminate_backend`` in the
middle of a claim, lets a second worker claim at that very moment (it gets the lock, and counts),
then lets the first go on: its claim fails as an outage, and nothing it did is stored (the
trials it made before, the queued trial it took), so the second worker's count was right.
"""

from __future__ import annotations

import threading
import urllib.parse

import optuna
import pytest
from pg import admin_connect

from hpo.study import budget
from hpo.study.budget import COUNTED_STATES, claim_trials
from hpo.study.heartbeat import Heartbeat
from hpo.study.optuna_compat import count_trial_states
from hpo.study.record import CrashPolicy
from hpo.study.storage import StorageGuard, open_storage, outage_reason

pytestmark = pytest.mark.postgres

BUDGET = 4


def _terminate_lock_session(url: str) -> None:
    database = urllib.parse.urlsplit(url).path.lstrip("/")
    with admin_connect() as admin:  # type: ignore[attr-defined]
        pids = admin.execute(
            "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND a.datname = %s",
            (database,),
        ).fetchall()
        assert len(pids) == 1, pids  # exactly the first worker's lock
        admin.execute("SELECT pg_terminate_backend(%s)", (pids[0][0],))


# (a queued trial first?, lost before the claim's Nth create). A claim takes queued trials
# one by one, then creates the rest in one transaction.
CASES = [(False, 1), (True, 2)]


@pytest.mark.parametrize(("queued", "lost_before_ask"), CASES)
def test_a_lost_lock_mid_claim_never_overshoots_the_budget(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, queued: bool, lost_before_ask: int
) -> None:
    storage = open_storage(pg_url)
    study = optuna.create_study(study_name="lock", storage=storage)
    if queued:
        study.enqueue_trial({})
    policy = CrashPolicy()
    first: list[optuna.Trial] = []
    second: list[optuna.Trial] = []
    real_ask = budget._ask
    calls = {"n": 0}

    def second_worker() -> None:
        other = optuna.load_study(study_name="lock", storage=open_storage(pg_url))
        claim_trials(
            other,
            n_trials=BUDGET,
            size=BUDGET,
            policy=policy,
            heartbeat=Heartbeat(other, policy, StorageGuard(pg_url), worker="second"),
            judge_stale=False,
            into=second,
        )

    def ask_then_lose_the_lock(
        s: optuna.Study, count: int, ticket: budget.Ticket, n_trials: int | None, *, queued: bool
    ) -> list[optuna.Trial]:
        calls["n"] += 1
        if threading.current_thread() is threading.main_thread() and calls["n"] == lost_before_ask:
            # The first worker's session dies after its lock check and before this create;
            # the second worker claims meanwhile.
            _terminate_lock_session(pg_url)
            thread = threading.Thread(target=second_worker)
            thread.start()
            thread.join(timeout=60)
        return real_ask(s, count, ticket, n_trials, queued=queued)

    monkeypatch.setattr(budget, "_ask", ask_then_lose_the_lock)
    beats = Heartbeat(study, policy, StorageGuard(pg_url), worker="first")
    with pytest.raises(Exception) as lost:
        claim_trials(
            study,
            n_trials=BUDGET,
            size=BUDGET,
            policy=policy,
            heartbeat=beats,
            judge_stale=False,
            into=first,
        )
    assert outage_reason(lost.value) is not None, lost.value  # retried by the worker's guard
    # Whatever the first claim made or took before its session died is gone with it, and
    # forgotten by the worker: nothing held, nothing to train.
    assert first == [] and beats.held() == {}
    counts = count_trial_states(storage, study._study_id)
    assert sum(counts.get(state, 0) for state in COUNTED_STATES) == BUDGET, counts
    assert len(second) == BUDGET and counts == {"RUNNING": BUDGET}, counts
    # The worker's retry finds the budget taken.
    again = claim_trials(
        study,
        n_trials=BUDGET,
        size=BUDGET,
        policy=policy,
        heartbeat=beats,
        judge_stale=False,
        into=first,
    )
    assert again.trials == () and count_trial_states(storage, study._study_id) == counts
