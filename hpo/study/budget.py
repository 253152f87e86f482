"""The global trial budget, claimed atomically, and retries of trials whose worker died.

``n_trials`` counts COMPLETE + PRUNED + RUNNING + WAITING trials: a slot is taken when a trial is
created or queued, and given back when it fails. Counting and creating happen under one lock per
study (``hpo.study.storage.study_lock``), so with any number of workers on any number of machines the
count never passes the budget and exactly ``n_trials`` trials finish.

Under the same lock a claim first fails stale trials (heartbeat older than the grace period:
their worker is dead), then queues a retry of each failed trial that deserves one: the same
parameters as a WAITING trial, linked to the original (user attr ``retry_of``, and Optuna's
``failed_trial`` / ``retry_history`` system attrs), at most ``max_retries`` times per chain for crashes (a stopped
worker's trials are retried however often they are stopped: a stop is no fault of theirs, and a
baseline stopped four times must still be trained). ``study.ask()`` hands out WAITING trials
before sampling new ones.
"""

from __future__ import annotations

import contextlib
import math
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hpo.lazy import lazy_import
from hpo.log import get_logger
from hpo.study import optuna_compat as compat
from hpo.study.bulk import create_trials
from hpo.study.heartbeat import Heartbeat
from hpo.study.record import (
    BASELINE_ATTR,
    CLAIM_ATTR,
    CRASHES_ATTR,
    FAILURE_ATTR,
    FAILURE_INTERRUPTED,
    RETRY_CHAIN_ATTR,
    RETRY_FIRST_ATTR,
    RETRY_OF_ATTR,
    RETRY_ROOT_ATTR,
    SEED_ATTR,
    WORKER_ATTR,
    CrashPolicy,
    is_baseline,
    worker_id,
)
from hpo.study.storage import rdb_of, study_lock

if TYPE_CHECKING:
    import optuna
else:
    optuna = lazy_import("optuna")

__all__ = [
    "COUNTED_STATES",
    "Claim",
    "Ticket",
    "budget_left",
    "claim_trials",
    "log_stale_trial",
    "nothing_to_train",
    "trials_to_run",
]

COUNTED_STATES = ("COMPLETE", "PRUNED", "RUNNING", "WAITING")
# Failures worth another try with the same parameters: a dead worker (no FAILURE_ATTR) or a
# stopped one. Errors and non-finite scores would fail the same way again.
_RETRYABLE = (None, FAILURE_INTERRUPTED)
# RUNNING trials without any heartbeat, and when this process first saw each, by the database's
# clock: (storage URL, trial id) -> seconds.
_FIRST_SEEN: dict[tuple[str, int], float] = {}
# Failed trials this process found not to deserve a retry, so that they are not read again at
# every claim (a FAIL trial never changes): (storage URL, trial id) -> None if it has no plan
# to repeat, else the crashes of its retry chain (the study's max_retries may be raised later).
_NOT_RETRIED: dict[tuple[str, int], int | None] = {}
_UNLIMITED = 1 << 30
_log = get_logger("budget")


@dataclass(frozen=True)
class Claim:
    """What one claim got: trials to train now, or ``done`` when the budget is finished.
    ``startup_wait``: none yet, because the start-up trials others train have not finished."""

    trials: tuple[optuna.Trial, ...]
    done: bool
    counts: Mapping[str, int]
    startup_wait: bool = False

    @property
    def held_elsewhere(self) -> int:
        return self.counts.get("RUNNING", 0) + self.counts.get("WAITING", 0)


@dataclass
class Ticket:
    """One claim's mark on the trials it creates (system attribute ``hpo:claim``), kept across
    the claim's retries through an outage.

    A create whose reply is lost (the database went away between its commit and the answer, as
    it does when a claim is under way while a server shuts down) may still have stored its
    trials. Nobody holds them: after the grace period another worker would fail them for want
    of a heartbeat. The claim's retry finds them by this mark instead, and trains them.
    """

    # The worker's id, for whoever reads it; the random part tells its claims apart.
    id: str = field(default_factory=lambda: f"{worker_id()}:{uuid.uuid4().hex[:12]}")
    sent: bool = False  # a create with this mark was sent: the retry must look for its trials


def log_stale_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Optuna's stale-trial callback: just say so (the retry is queued under the claim lock)."""
    worker = trial.user_attrs.get(WORKER_ATTR, "an unknown worker")
    _log.warning(
        "trial %d of %s stopped sending heartbeats: marked FAIL (its worker is gone)",
        trial.number,
        worker,
    )


def claim_trials(
    study: optuna.Study,
    *,
    n_trials: int | None,
    size: int,
    policy: CrashPolicy,
    heartbeat: Heartbeat,
    judge_stale: bool,
    into: list[optuna.Trial],
    ticket: Ticket | None = None,
    startup: int = 0,
    team: int = 1,
) -> Claim:
    """Claim up to ``size`` trials within the budget; each is appended to ``into`` (and held by
    ``heartbeat``) the moment it exists, so a failure halfway loses none.

    ``judge_stale``: fail stale trials first. A worker that was itself cut off from the
    database lately passes False: the others' heartbeats may just not have resumed yet.
    ``ticket``: the same one for every retry of this claim (see :class:`Ticket`).
    ``startup``: the sampler's start-up trials (the baseline included), the first so many by
    number. While fewer trials exist, a claim takes no trial past them, and at most its share
    of them among ``team`` processes of one run: the start-up trains as a batch of its own, so
    that the trials after it are proposed with its results in hand.
    """
    storage = rdb_of(study)
    sid = compat.study_id(study)
    ticket = ticket or Ticket()
    made: list[optuna.Trial] = []  # created by this try (adopted ones excluded)
    atomic = False
    # A stop is checked only while waiting for the lock (another worker may hold it, paused or
    # claiming slowly), never once it is held: this try creates nothing before that. A retry
    # of a claim whose reply was lost is the exception: the first try's trials are RUNNING
    # already, found only under the lock; a stop during the retry's wait (as during its
    # backoff) leaves them to stale detection, which fails and retries them once the grace
    # period has passed.
    try:
        with study_lock(storage, sid) as lock:
            atomic = lock.atomic
            return _claim_locked(
                study,
                storage,
                sid,
                n_trials=n_trials,
                size=size,
                policy=policy,
                heartbeat=heartbeat,
                judge_stale=judge_stale,
                into=into,
                made=made,
                ticket=ticket,
                startup=startup,
                team=team,
            )
    except BaseException:
        if atomic:
            # On PostgreSQL the claim is one transaction with its lock, and it did not commit:
            # the trials this try made were never stored (or, if only the reply to the commit
            # was lost, the retry finds them by the ticket), and nothing of what it failed,
            # queued or changed happened. Forget them here too: in ``into``, the heartbeats and
            # Optuna's cache.
            heartbeat.release(compat.trial_id(t) for t in made)
            for trial in made:
                into.remove(trial)
            compat.forget_study_cache(study)
        raise


def _claim_locked(
    study: optuna.Study,
    storage: optuna.storages.RDBStorage,
    sid: int,
    *,
    n_trials: int | None,
    size: int,
    policy: CrashPolicy,
    heartbeat: Heartbeat,
    judge_stale: bool,
    into: list[optuna.Trial],
    made: list[optuna.Trial],
    ticket: Ticket,
    startup: int,
    team: int,
) -> Claim:
    """:func:`claim_trials` under the study lock; each trial it creates is also in ``made``."""
    if judge_stale:
        _fail_stale(study, policy)
    mine: list[optuna.Trial] = []
    if ticket.sent:
        mine = _adopt(study, ticket, heartbeat, into)
    counts = compat.count_trial_states(storage, sid)
    finished = counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)
    if n_trials is not None and finished >= n_trials and not into:
        return Claim((), True, counts)
    taken = _taken(counts)
    # Trial numbers, as the sampler counts the start-up: every trial made so far, failed
    # ones included (a queued one already has its number), but not those an earlier try
    # of this claim made: the cap is on the whole claim, retried or not.
    made_so_far = sum(counts.values()) - len(into)
    if made_so_far < startup:
        left = startup - made_so_far + counts.get("WAITING", 0)
        size = min(size, math.ceil(startup / max(1, team)), left)
    elif team > 1 and finished == 0 and counts.get("RUNNING", 0) and not into:
        # A run with more processes than start-up trials: the start-up is all taken and
        # none has finished, so the sampler would have nothing to learn from (it would draw
        # more start-up points). Wait for it; with nothing running, nobody would finish it.
        return Claim((), False, counts, startup_wait=True)
    room = _UNLIMITED if n_trials is None else max(0, n_trials - taken)
    queued = _queue_retries(study, policy, room) if room > 0 and counts.get("FAIL") else 0
    # Queued ones are already in room; an earlier try of this claim may have got some.
    wanted = len(mine) + min(size - len(into), room + counts.get("WAITING", 0))
    waiting = counts.get("WAITING", 0) + queued
    while len(mine) < wanted:
        # Queued trials one by one (study.ask() finds them), then the rest at once. An
        # outage error goes to the caller, which retries the claim with the same `into`
        # and ticket: the retry finds trials whose create was stored though its reply was
        # lost (a `break` here would leave them to be failed as stale).
        asked = 1 if waiting > 0 else wanted - len(mine)
        ticket.sent = True
        new = _ask(study, asked, ticket, n_trials, queued=waiting > 0)
        waiting -= len(new)
        for trial in new:
            heartbeat.hold(compat.trial_id(trial), trial.number)
        into.extend(new)
        made.extend(new)
        mine.extend(new)
        if len(new) < asked:
            break  # the budget is full (counted again as the trials were created)
    # The claim's first heartbeats, with its trials (one transaction on PostgreSQL). A worker
    # that dies before it leaves trials with none, which other workers fail after a grace
    # period (_fail_stale).
    heartbeat.beat(compat.trial_id(t) for t in into)  # with any from an earlier try
    if queued:
        counts = {**counts, "WAITING": counts.get("WAITING", 0) + queued}
    return Claim(tuple(into), False, counts)


def _adopt(
    study: optuna.Study, ticket: Ticket, heartbeat: Heartbeat, into: list[optuna.Trial]
) -> list[optuna.Trial]:
    """The RUNNING trials an earlier try of this claim created without hearing back (held, and
    appended to ``into``)."""
    known = {compat.trial_id(trial) for trial in into}
    found = [
        optuna.Trial(study, trial_id)
        for trial_id in compat.running_with_system_attr(
            rdb_of(study), compat.study_id(study), CLAIM_ATTR, ticket.id
        )
        if trial_id not in known
    ]
    for trial in found:
        heartbeat.hold(compat.trial_id(trial), trial.number)
        _log.info("trial %d: created before the database went away; training it", trial.number)
    into.extend(found)
    return found


def _ask(
    study: optuna.Study, count: int, ticket: Ticket, n_trials: int | None, *, queued: bool
) -> list[optuna.Trial]:
    """New trials of ``study``, marked with ``ticket``: one queued trial (the baseline, a retry)
    if ``queued`` may find one, else up to ``count`` fresh ones in one transaction, within the
    budget ``n_trials``. ``study.ask()`` looks for queued trials
    by reading every trial that changed since this process last read them; under the study
    lock, that made every worker wait on each one's read, when the counts just taken say there
    is nothing to find."""
    if not queued:
        return create_trials(
            study, count, {CLAIM_ATTR: ticket.id}, budget=n_trials, counted=COUNTED_STATES
        )
    with warnings.catch_warnings():
        # We record heartbeats ourselves (hpo.study.heartbeat), which is what this warns about.
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
        trial = study.ask()
    # Marked like the fresh ones: on PostgreSQL the claim commits once, at its end, and if the
    # reply to that commit is lost, the retry finds every trial of the claim by this mark.
    compat.storage_of(study).set_trial_system_attr(compat.trial_id(trial), CLAIM_ATTR, ticket.id)
    return [trial]


def _fail_stale(study: optuna.Study, policy: CrashPolicy) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    # Trials that never got a first heartbeat (their worker died between creating the trial
    # and beating for it) are invisible to Optuna's check. Each is failed once this process
    # has seen it without a heartbeat for a grace period, timed by the database's clock (see
    # running_without_heartbeat: a start time from another machine may be hours off).
    storage = rdb_of(study)
    now, trial_ids = compat.running_without_heartbeat(storage, compat.study_id(study))
    for key in [k for k in _FIRST_SEEN if k[0] == storage.url and k[1] not in trial_ids]:
        del _FIRST_SEEN[key]  # it got its heartbeat, or ended, since
    for trial_id in trial_ids:
        first = _FIRST_SEEN.setdefault((storage.url, trial_id), now)
        if now - first < policy.grace_period:
            continue
        del _FIRST_SEEN[(storage.url, trial_id)]
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            if compat.storage_of(study).set_trial_state_values(
                trial_id, state=optuna.trial.TrialState.FAIL
            ):
                log_stale_trial(study, compat.storage_of(study).get_trial(trial_id))


def _queue_retries(study: optuna.Study, policy: CrashPolicy, room: int) -> int:
    """Queue retries of failed trials (oldest first) into at most ``room`` budget slots."""
    # Straight from the database, past Optuna's cache: the other workers' latest failures
    # matter here. Only the failed trials are read, and whole only those that may get a retry.
    rdb = rdb_of(study)
    failed = [
        (trial_id, number)
        for trial_id, number, failure in compat.failed_trials(
            rdb, compat.study_id(study), system_attr=FAILURE_ATTR
        )
        if failure in _RETRYABLE
    ]
    if not failed:
        return 0
    retried = set(compat.user_attr_values(rdb, compat.study_id(study), RETRY_OF_ATTR))
    queued = 0
    for trial_id, number in failed:
        if queued >= room:
            break
        known = _NOT_RETRIED.get((rdb.url, trial_id), 0)
        if number in retried or known is None or known > policy.max_retries:
            continue
        trial = rdb.get_trial(trial_id)
        chain = [*trial.system_attrs.get(RETRY_CHAIN_ATTR, []), trial.number]
        crashed = trial.system_attrs.get(FAILURE_ATTR) != FAILURE_INTERRUPTED
        crashes = int(trial.system_attrs.get(CRASHES_ATTR, len(chain) - 1)) + crashed
        if not trial.distributions and not is_baseline(trial):
            # Died (or was stopped) before its plan was stored: nothing to repeat, a new trial
            # takes the slot.
            _NOT_RETRIED[rdb.url, trial_id] = None
            continue
        if crashes > policy.max_retries:
            _log.debug("trial %d: crashed %d times; not retried again", trial.number, crashes)
            _NOT_RETRIED[rdb.url, trial_id] = crashes
            continue
        study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.WAITING,
                params=trial.params,
                distributions=trial.distributions,
                user_attrs=_retry_attrs(trial, chain[0]),
                system_attrs={
                    RETRY_FIRST_ATTR: chain[0],
                    RETRY_CHAIN_ATTR: chain,
                    CRASHES_ATTR: crashes,
                },
            )
        )
        queued += 1
        _log.info(
            "trial %d failed (%s): queued %s with the same parameters",
            trial.number,
            trial.system_attrs.get(FAILURE_ATTR) or "its worker died",
            f"retry {crashes} of {policy.max_retries}" if crashed else "a retry",
        )
    return queued


def _retry_attrs(failed: optuna.trial.FrozenTrial, root: int) -> dict[str, Any]:
    attrs: dict[str, Any] = {RETRY_OF_ATTR: failed.number, RETRY_ROOT_ATTR: root}
    # The seed the failed trial trained with (recorded before training), so the retry trains
    # exactly as it did; absent if it died before it was sampled (then the root's own seed).
    if SEED_ATTR in failed.user_attrs:
        attrs[SEED_ATTR] = failed.user_attrs[SEED_ATTR]
    if is_baseline(failed):
        attrs[BASELINE_ATTR] = True
    return attrs


def budget_left(study: optuna.Study, n_trials: int | None) -> int:
    """Budget slots still free: the budget less finished, running and queued trials, counted
    in the database (a hint for messages; only a claim, under the lock, counts exactly)."""
    if n_trials is None:
        return _UNLIMITED
    return max(
        0, n_trials - _taken(compat.count_trial_states(rdb_of(study), compat.study_id(study)))
    )


def trials_to_run(study: optuna.Study, n_trials: int | None) -> int:
    """Trials still to train: the free slots and the queued trials (the baseline, retries)."""
    if n_trials is None:
        return _UNLIMITED
    counts = compat.count_trial_states(rdb_of(study), compat.study_id(study))
    return max(0, n_trials - _taken(counts)) + counts.get("WAITING", 0)


def nothing_to_train(study: optuna.Study, n_trials: int | None) -> bool:
    """Whether the budget is finished: every slot COMPLETE or PRUNED, none queued or RUNNING
    (a RUNNING trial's worker may die, and its retry then needs a process)."""
    if n_trials is None:
        return False
    counts = compat.count_trial_states(rdb_of(study), compat.study_id(study))
    return (
        n_trials - _taken(counts) <= 0 and not counts.get("RUNNING") and not counts.get("WAITING")
    )


def _taken(counts: Mapping[str, int]) -> int:
    """Budget slots in use: finished trials, and running or queued ones."""
    return sum(counts.get(state, 0) for state in COUNTED_STATES)
