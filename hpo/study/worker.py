"""The worker loop: claim a batch of trials, train them together, tell each its result.

The same loop serves ``hpo run`` (one process) and ``hpo worker`` (any number of processes on
any number of machines sharing one study):

* The study's ``n_trials`` is a global budget, claimed atomically (``hpo.study.budget``): exactly
  that many trials finish, whatever the number of workers.
* A heartbeat thread (``hpo.study.heartbeat``) keeps the held trials alive; a dead worker's
  trials go stale, are failed by the next claim anywhere, and retried with the same parameters.
* Database outages stall the worker instead of killing it (``hpo.study.storage.StorageGuard``):
  a finished result stays in memory and is told when the database is back, exactly once.
* Ctrl-C or SIGTERM stops cleanly: a stop is a request (``hpo.stops``) checked before each
  claim, in every wait, before a batch trains and inside the engine's training. The trials in
  flight are told FAIL (marked ``interrupted``, and retried by the workers that carry on; a
  trial stopped while its batch was still being sampled has no plan to repeat, and a new trial
  takes its slot), nothing stays RUNNING, and the process exits 0. A batch whose training has
  finished is told its results first: they are real.
* A batch's parameters, attributes and results are each written in one transaction
  (``hpo.study.bulk``): the parameters once the whole batch is sampled, before it trains.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from hpo import stops
from hpo.data import FoldSet
from hpo.engines.contract import Engine, EvaluationResult
from hpo.engines.evaluation import evaluate_plans
from hpo.lazy import lazy_import
from hpo.log import get_logger
from hpo.space import RegularizationPlan, suggest_plan, zero_plan
from hpo.spec import StudySpec
from hpo.study import optuna_compat as compat
from hpo.study.budget import Claim, Ticket, claim_trials, log_stale_trial
from hpo.study.bulk import (
    ParamBuffer,
    SampledParam,
    complete_trials,
    record_sampled,
    set_durations,
)
from hpo.study.heartbeat import Heartbeat, configure_stale_detection
from hpo.study.record import (
    FAILURE_ATTR,
    FAILURE_ERROR,
    FAILURE_INTERRUPTED,
    FAILURE_NON_FINITE,
    RETRY_OF_ATTR,
    SEED_ATTR,
    CrashPolicy,
    best_trial,
    is_baseline,
    result_attrs,
    sampled_attrs,
    seed_number,
    stored_policy,
)
from hpo.study.stopping import check_stop, record_stop, stored_stop
from hpo.study.storage import StorageGuard, rdb_of
from hpo.study.windows import resolve_windows

if TYPE_CHECKING:
    import optuna

    from hpo.study import sampler as sampling
else:
    optuna = lazy_import("optuna")
    sampling = lazy_import("hpo.study.sampler")  # derives from Optuna's TPE

__all__ = ["RunSummary", "optimize"]

_log = get_logger("worker")
# How often a process with no start-up trial to train asks again: start-up trials take seconds.
_STARTUP_POLL_SECONDS = 0.5
_TEAM_POLL_SECONDS = 1.0


@dataclass
class RunSummary:
    completed: int = 0
    pruned: int = 0
    failed: int = 0
    lost: int = 0  # claimed here, but failed as stale by another worker meanwhile
    interrupted: str | None = None
    seconds: float = 0.0


@dataclass
class _Run:
    """Everything one call of :func:`optimize` shares between its steps."""

    study: optuna.Study
    spec: StudySpec
    folds: FoldSet
    engine: Engine
    versions: dict[str, str]
    on_result: Callable[[optuna.Trial, EvaluationResult], None] | None
    policy: CrashPolicy
    guard: StorageGuard
    heartbeat: Heartbeat
    summary: RunSummary
    stop_checked_at: int = -1  # complete trials when the early-stop rule last ran
    stop_rule_off: bool = False  # the rule failed in this run (not for an outage)


class _ProgressMonitor:
    """Progress lines and pruning decisions for one batch of trials.

    Both touch the database mid-training; during an outage they are skipped, not fatal.
    """

    def __init__(self, run: _Run, trials: list[optuna.Trial]) -> None:
        self.run = run
        self.trials = trials
        self.n_folds = run.folds.n_folds

    def on_fold_end(self, member: int, fold: int, accuracy: float) -> None:
        # One trial at a time (reference engine): a line per fold shows progress. A batch
        # trained together finishes its folds at once, so those lines would only be noise.
        if len(self.trials) > 1 and not _log.isEnabledFor(logging.DEBUG):
            return
        _log.info(
            "trial %d: fold %d/%d accuracy %.4f%s",
            self.trials[member].number,
            fold + 1,
            self.n_folds,
            accuracy,
            _best_text(self.run.study, self.run.guard),
        )

    def on_checkpoint(self, step: int, accuracies: Mapping[int, float]) -> set[int]:
        pruned = set()
        for member, accuracy in accuracies.items():
            trial = self.trials[member]

            def report(trial: optuna.Trial = trial, accuracy: float = accuracy) -> bool:
                try:
                    trial.report(accuracy, step)
                    return trial.should_prune()
                except optuna.exceptions.UpdateFinishedTrialError:
                    return False  # failed as stale meanwhile; the tell will say so

            ok, prune = self.run.guard.attempt(report, "pruning check")
            if ok and prune:
                pruned.add(member)
        if accuracies:
            shown = ", ".join(
                f"{self.trials[m].number}:{a:.3f}" for m, a in sorted(accuracies.items())
            )
            _log.info(
                "checkpoint %d: %s%s", step, shown, f"; pruned {len(pruned)}" if pruned else ""
            )
        return pruned


def _best_text(study: optuna.Study, guard: StorageGuard | None = None) -> str:
    def best() -> optuna.trial.FrozenTrial | None:
        return best_trial(study)

    if guard is None:
        trial = best()
    else:
        _, trial = guard.attempt(best, "best trial")
    return "" if trial is None else f" (best so far {trial.value:.4f}, trial {trial.number})"


def optimize(
    study: optuna.Study,
    spec: StudySpec,
    folds: FoldSet,
    engine: Engine,
    *,
    n_trials: int | None,
    timeout: float | None = None,
    trials_per_batch: int | None = None,
    versions: Mapping[str, str] | None = None,
    on_result: Callable[[optuna.Trial, EvaluationResult], None] | None = None,
    guard: StorageGuard | None = None,
    in_team: bool = False,
    team: int = 1,
    measure_windows: bool = True,
) -> RunSummary:
    """Run batches until the global budget is finished, the timeout is reached, or a signal
    stops us. While every open slot of the budget is held by other workers, wait: one of
    them may die, and its trials then need a worker. ``in_team``: one of the processes of an
    ``hpo run``, whose waiting for the others is not news; ``team``: how many processes that
    run has (they share the start-up trials). ``measure_windows``: False for the processes a
    run started besides its own, which wait for the run's "auto" alpha windows instead of
    measuring them too."""
    storage = rdb_of(study)
    policy = stored_policy(study)
    configure_stale_detection(storage, policy, log_stale_trial)
    guard = guard or StorageGuard(storage.url)
    heartbeat = Heartbeat(study, policy, guard)
    run = _Run(
        study=study,
        spec=spec,
        folds=folds,
        engine=engine,
        versions=dict(versions or {}),
        on_result=on_result,
        policy=policy,
        guard=guard,
        heartbeat=heartbeat,
        summary=RunSummary(),
    )
    summary = run.summary
    started = time.monotonic()
    final = "crashed"
    said_waiting = False
    heartbeat.start()
    try:
        # "auto" alphas: the study's measured windows (measured here if nobody has yet).
        run.spec = resolve_windows(
            study, spec, folds, engine, call=guard.call, measure=measure_windows
        )
        while True:
            stops.check()
            if timeout is not None and time.monotonic() - started >= timeout:
                _log.info("timeout of %.0f s reached; not starting more trials", timeout)
                final = "timeout"
                break
            if _stopped_early(run, n_trials):
                final = "finished"
                break
            claim = _claim_and_run(run, n_trials, trials_per_batch or engine.trials_per_batch, team)
            if claim.done:
                final = "finished"
                break
            if claim.trials:
                said_waiting = False
                continue
            if claim.startup_wait:  # the run's other processes train the start-up: seconds
                stops.pause(_STARTUP_POLL_SECONDS)
                continue
            if not said_waiting:
                # Among the processes of one `hpo run`, waiting for the others is routine.
                _log.log(
                    logging.DEBUG if in_team else logging.INFO,
                    "every open trial of the budget is held by another worker (%d running or "
                    "queued); waiting in case one of them dies",
                    claim.held_elsewhere,
                )
                said_waiting = True
            heartbeat.set_state("waiting", completed=summary.completed)
            # One of a run's own processes: the others end within seconds of each other, and
            # the run's files wait for the last to notice (a few claims a second from at most a
            # core's worth of processes). A worker of a cluster checks once a heartbeat.
            stops.pause(
                min(policy.heartbeat_interval, _TEAM_POLL_SECONDS)
                if in_team
                else policy.heartbeat_interval
            )
    except stops.Stopped as exc:
        summary.interrupted = str(exc)
        final = "stopped"
    finally:
        heartbeat.stop(final, completed=summary.completed)
    summary.seconds = time.monotonic() - started
    return summary


def _claim_and_run(run: _Run, n_trials: int | None, size: int, team: int = 1) -> Claim:
    trials: list[optuna.Trial] = []
    told: set[int] = set()
    ticket = Ticket()  # one for all of this claim's tries
    # A second signal ends the process wherever it is, even while the first stop fails these
    # trials: they are failed first, from a thread and a connection of their own.
    with stops.on_abort(partial(_abandon, run, trials, told)):
        try:
            claim = run.guard.call(
                lambda: claim_trials(
                    run.study,
                    n_trials=n_trials,
                    size=size,
                    policy=run.policy,
                    heartbeat=run.heartbeat,
                    judge_stale=run.guard.healthy_for() >= run.policy.grace_period,
                    into=trials,
                    ticket=ticket,
                    startup=_startup(run.study),
                    team=team,
                ),
                "claiming trials",
            )
            if claim.trials:
                run.heartbeat.set_state("training", completed=run.summary.completed)
                _run_claim(run, list(claim.trials), told)
            return claim
        except (stops.Stopped, Exception) as exc:
            # Nothing may stay RUNNING: fail every claimed trial not yet told, then re-raise.
            _fail_untold(run, [t for t in trials if t.number not in told], exc)
            raise


def _stopped_early(run: _Run, n_trials: int | None) -> bool:
    """Whether ``[budget] early_stop`` ended the study: recorded by a worker before (for this
    budget), or decided now (and recorded) on the complete trials, if more have completed
    since this worker last asked."""
    if run.spec.budget.early_stop == "none" or run.stop_rule_off:
        return False
    spec = run.spec.replace(budget=replace(run.spec.budget, n_trials=n_trials))

    def decide() -> str | None:
        stored = stored_stop(run.study, spec)
        if stored is not None:  # another process decided it, and said so
            _log.debug("%s", stored.get("message", "stopped early"))
            return ""
        trials = run.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if len(trials) == run.stop_checked_at:
            return None
        run.stop_checked_at = len(trials)
        check = check_stop(trials, spec, startup=_startup(run.study))
        if check is None or not check.stop:
            if check is not None:
                _log.debug(
                    "early stop: regret bound %.4f > CV noise %.4f; going on",
                    check.bound,
                    check.noise,
                )
            return None
        record_stop(run.study, check, n_trials)
        # The trials other workers are training when the decision falls finish and count.
        return f"{check.message()}; trials already training finish"

    try:
        ok, message = run.guard.attempt(decide, "checking the early stop")
    except Exception as exc:  # the rule's own failure (not an outage): train on without it
        run.stop_rule_off = True
        _log.warning("early stop turned off for this run: %s: %s", type(exc).__name__, exc)
        return False
    if not ok or message is None:
        return False
    if message:
        _log.info("%s", message)
    return True


def _startup(study: optuna.Study) -> int:
    sampler = study.sampler
    return sampler.n_startup_trials if isinstance(sampler, sampling.HistorySampler) else 0


def _seed_groups(
    run: _Run, trials: list[optuna.Trial]
) -> list[tuple[list[optuna.Trial], list[int]]]:
    """The claimed trials as separate ``evaluate`` calls, each with the seeds its trials train
    with.

    A retry must get the value its original would have had, so it trains with the seed its
    original trained with (copied onto it when the retry was queued). On an engine that trains
    a batch from its first seed, that makes it a batch of its own (the retries of one original
    batch go together, as they were), and fresh trials train from the first fresh one's seed.
    On other engines each trial trains from its own seed, all in one call.
    """
    pinned: dict[int, list[optuna.Trial]] = {}
    fresh: list[optuna.Trial] = []
    for trial in trials:
        seed = trial.user_attrs.get(SEED_ATTR)
        if seed is None:
            fresh.append(trial)
        else:
            pinned.setdefault(int(seed), []).append(trial)

    def own(trial: optuna.Trial) -> int:
        seed = trial.user_attrs.get(SEED_ATTR)
        return run.spec.trial_seed(seed_number(trial)) if seed is None else int(seed)

    if not run.engine.batch_seeded:
        return [(trials, [own(trial) for trial in trials])]
    groups = [(members, [seed] * len(members)) for seed, members in pinned.items()]
    if fresh:
        groups.append((fresh, [own(fresh[0])] * len(fresh)))
    return groups


def _sample(
    run: _Run, trial: optuna.Trial, buffer: ParamBuffer
) -> tuple[RegularizationPlan, str | None]:
    """The plan of ``trial`` and who proposed it, its parameters kept in ``buffer``
    (idempotent: safe to repeat after an outage, as a parameter already suggested is not
    suggested again)."""
    if is_baseline(trial):
        return zero_plan(run.spec.search), None  # every coefficient 0
    # The parameters go to the database with the batch's attributes, in one transaction.
    trial.storage = cast("optuna.storages.BaseStorage", buffer)
    try:
        plan = suggest_plan(trial, run.spec.search)
    finally:
        trial.storage = compat.storage_of(run.study)
    sampling.note_sampled(run.study, trial)
    # A retry's parameters are its original's (fixed): nobody proposed them now.
    proposer = (
        None
        if trial.user_attrs.get(RETRY_OF_ATTR) is not None
        else sampling.proposed_by(run.study, trial)
    )
    return plan, proposer


def _store_attrs(
    run: _Run,
    attrs: Mapping[optuna.Trial, Mapping[str, Any]],
    params: Mapping[int, list[SampledParam]] | None = None,
) -> list[optuna.Trial]:
    """Write the user attributes (and sampled parameters) of a batch's trials in one
    transaction; if one of them was failed as stale meanwhile, the others one by one. The
    trials found failed (their tell would find them finished)."""
    params = params or {}
    storage = compat.storage_of(run.study)
    finished = []
    try:
        record_sampled(storage, params, {compat.trial_id(t): a for t, a in attrs.items()})
    except optuna.exceptions.UpdateFinishedTrialError:
        for trial, items in attrs.items():
            try:
                tid = compat.trial_id(trial)
                record_sampled(storage, {tid: params.get(tid, [])}, {tid: items})
            except optuna.exceptions.UpdateFinishedTrialError:
                finished.append(trial)
    for trial, items in attrs.items():
        # What trial.set_user_attr would have left on the trial object, read by trial.user_attrs.
        compat.frozen_of(trial).user_attrs.update(items)
    return finished


def _outcome(result: EvaluationResult) -> tuple[optuna.trial.TrialState, float | None, str | None]:
    """The state a result is told with, its value, and why hpo fails it (if it does)."""
    if result.pruned:
        return optuna.trial.TrialState.PRUNED, None, None
    if not math.isfinite(result.accuracy):
        return optuna.trial.TrialState.FAIL, None, FAILURE_NON_FINITE
    return optuna.trial.TrialState.COMPLETE, result.accuracy, None


def _run_claim(run: _Run, trials: list[optuna.Trial], told: set[int]) -> None:
    groups = run.guard.call(partial(_seed_groups, run, trials), "reading the claimed trials")
    for members, seeds in groups:
        _run_batch(run, members, seeds, told)


def _run_batch(run: _Run, trials: list[optuna.Trial], seeds: list[int], told: set[int]) -> None:
    TrialState = optuna.trial.TrialState
    spec, summary = run.spec, run.summary
    buffer = ParamBuffer(compat.storage_of(run.study))
    with sampling.sampling_batch(run.study):  # one read of the study's history for the whole batch
        drawn = [
            run.guard.call(partial(_sample, run, trial, buffer), f"sampling trial {trial.number}")
            for trial in trials
        ]
    plans = [plan for plan, _ in drawn]
    # Each plan with the seed it trains with, before training: a retry reuses that seed.
    sampled = {
        trial: sampled_attrs(plan, seed, run.heartbeat.worker, proposer)
        for trial, (plan, proposer), seed in zip(trials, drawn, seeds, strict=True)
    }
    gone = run.guard.call(
        partial(_store_attrs, run, sampled, buffer.params), "recording the sampled plans"
    )
    if gone:
        trials, plans, seeds = _without(gone, run, told, trials, plans, seeds)
        if not trials:
            return
    stops.check()  # sampled and stored: a stop now fails them before any training
    _log.info(
        "training trial%s %s (%s engine, %d folds x %d epochs)",
        "s" if len(trials) > 1 else "",
        ", ".join(str(t.number) for t in trials),
        run.engine.name,
        run.folds.n_folds,
        spec.model.epochs,
    )
    results = evaluate_plans(
        run.engine,
        plans,
        run.folds,
        model=spec.model,
        seeds=seeds,
        monitor=_ProgressMonitor(run, trials),
        replicas=spec.cv.seeds,
    )
    done = {
        trial: result_attrs(
            result,
            engine=run.engine.name,
            versions=run.versions,
            trials_per_batch=run.engine.trials_per_batch if run.engine.name == "stacked" else None,
        )
        for trial, result in zip(trials, results, strict=True)
    }
    for trial, result in zip(trials, results, strict=True):
        if run.on_result is not None:
            # Artifacts finished during an outage wait for the database like the result does,
            # instead of being dropped (the recorder raises only outage errors; it is
            # idempotent: a retry writes the files again).
            run.guard.call(
                partial(run.on_result, trial, result), f"storing trial {trial.number}'s artifacts"
            )
    outcomes = {trial: _outcome(result) for trial, result in zip(trials, results, strict=True)}
    finals = run.guard.call(
        partial(_tell_batch, run, done, outcomes, told), "telling the batch's results"
    )
    best = _best_text(run.study, run.guard)  # once a batch: its trials finished together
    for trial, result in zip(trials, results, strict=True):
        run.heartbeat.release([compat.trial_id(trial)])
        state = outcomes[trial][0]
        if finals[trial] != state:
            summary.lost += 1
            _log.warning(
                "trial %d was failed as stale while this worker could not reach the database; "
                "its result (%.4f) is dropped, and its retry trains it again",
                trial.number,
                result.accuracy,
            )
        elif state == TrialState.PRUNED:
            summary.pruned += 1
            _log.info("trial %d pruned at %.4f", trial.number, result.accuracy)
        elif state == TrialState.FAIL:
            summary.failed += 1
        else:
            summary.completed += 1
            _log.info(
                "trial %d: accuracy %.4f (folds %s, %.3g s)%s%s",
                trial.number,
                result.accuracy,
                " ".join(f"{a:.3f}" for a in result.fold_accuracies),
                result.seconds,
                " DIVERGED" if result.diverged else "",
                best,
            )


def _without(
    gone: list[optuna.Trial],
    run: _Run,
    told: set[int],
    trials: list[optuna.Trial],
    plans: list[RegularizationPlan],
    seeds: list[int],
) -> tuple[list[optuna.Trial], list[RegularizationPlan], list[int]]:
    """The batch less ``gone``: trials another worker failed as stale before their plans were
    stored (this one could not reach the database for the grace period). With no plan to
    repeat they get no retry, so training them would be for nothing."""
    for trial in gone:
        run.heartbeat.release([compat.trial_id(trial)])
        told.add(trial.number)
        run.summary.lost += 1
        _log.warning(
            "trial %d was failed as stale while this worker could not reach the database, "
            "before its plan was stored: it is not trained, and a new trial takes its slot",
            trial.number,
        )
    kept = [i for i, trial in enumerate(trials) if trial not in gone]
    return [trials[i] for i in kept], [plans[i] for i in kept], [seeds[i] for i in kept]


def _tell_batch(
    run: _Run,
    attrs: Mapping[optuna.Trial, Mapping[str, Any]],
    outcomes: Mapping[optuna.Trial, tuple[optuna.trial.TrialState, float | None, str | None]],
    told: set[int],
) -> dict[optuna.Trial, optuna.trial.TrialState]:
    """Store a batch's result attributes (one transaction) and tell each trial. No stop is
    checked in here (a stop in between would fail trials that already carry a score). Retried
    whole through outages: the attributes are upserts and a trial told already is not told
    again."""
    TrialState = optuna.trial.TrialState
    _store_attrs(run, attrs)
    # Completed trials are told together (one transaction); pruned and failed ones, rarer
    # and with more to do (a pruned trial's value is its last intermediate one), one by one.
    complete = {
        trial: score
        for trial, (state, score, failure) in outcomes.items()
        if state == TrialState.COMPLETE and score is not None and failure is None
    }
    for trial, score in complete.items():
        # What study.tell does before it stores the state. For hpo's TPE (no constraints
        # function) it does nothing, so neither the study view Hyperband would pass nor a
        # repeat when an outage makes the guard retry the batch changes anything.
        run.study.sampler.after_trial(
            run.study, compat.frozen_of(trial), TrialState.COMPLETE, [score]
        )
    states = complete_trials(
        compat.storage_of(run.study),
        {compat.trial_id(trial): score for trial, score in complete.items()},
    )
    # Told, whatever follows: a failure telling a pruned trial must not make them "untold".
    told.update(trial.number for trial in complete)
    finals = {}
    for trial, (state, value, failure) in outcomes.items():
        if trial in complete:
            finals[trial] = states[compat.trial_id(trial)]
        else:
            finals[trial] = _tell(run, trial, state, value, failure)
        told.add(trial.number)
    # The dashboard's duration of each trial: its own training time (a batch's share), not
    # the time since the claim created it (record.py, "Trial times").
    set_durations(
        compat.storage_of(run.study),
        {
            compat.trial_id(trial): float(attrs[trial]["seconds"])
            for trial, (state, _, _) in outcomes.items()
            if finals[trial] == state and state != TrialState.FAIL
        },
    )
    compat.forget_cached_trials(run.study)  # as study.tell does
    return finals


def _tell(
    run: _Run,
    trial: optuna.Trial,
    state: optuna.trial.TrialState,
    value: float | None,
    failure: str | None,
) -> optuna.trial.TrialState:
    """Record ``trial``'s state and value (its attributes are stored by then); the state it
    ends in. Retried through outages, so it must be idempotent: a tell that reached the
    database before the connection broke is not repeated, and a trial failed meanwhile by
    another worker is left alone."""
    try:
        if failure is not None:
            compat.storage_of(run.study).set_trial_system_attr(
                compat.trial_id(trial), FAILURE_ATTR, failure
            )
        frozen = run.study.tell(trial, value, state=state, skip_if_finished=True)
        return frozen.state
    except optuna.exceptions.UpdateFinishedTrialError:
        return compat.storage_of(run.study).get_trial(compat.trial_id(trial)).state


def _fail_untold(run: _Run, trials: list[optuna.Trial], exc: BaseException) -> None:
    stopped = isinstance(exc, stops.Stopped)
    reason = FAILURE_INTERRUPTED if stopped else FAILURE_ERROR
    message = str(exc) or type(exc).__name__

    def mark(trial: optuna.Trial) -> None:
        trial.set_user_attr(reason, message)
        compat.storage_of(run.study).set_trial_system_attr(
            compat.trial_id(trial), FAILURE_ATTR, reason
        )
        run.study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)

    for trial in trials:
        try:
            ok, _ = run.guard.attempt(partial(mark, trial), "failing a trial")
        except Exception as error:  # already on an error path: report, don't mask it
            ok = False
            _log.debug("failing trial %d: %r", trial.number, error)
        if ok:
            run.summary.failed += 1
        else:
            _log.warning(
                "could not mark trial %d failed; once its heartbeat is %d s old another "
                "worker fails and retries it",
                trial.number,
                run.policy.grace_period,
            )
        run.heartbeat.release([compat.trial_id(trial)])


def _abandon(run: _Run, trials: list[optuna.Trial], told: set[int]) -> None:
    """A second signal's abort hook (``hpo.stops``): fail the claimed trials not yet told,
    marked interrupted as a first stop would, so they are retried at once, not after the
    grace period. It runs in a thread of its own while the main thread is anywhere: Optuna's
    cache and its lock are left alone, and the RDB storage gives this thread a session (and a
    pooled connection) of its own. Each write is idempotent, and one the main thread makes too
    (it may be failing them right now) changes nothing."""
    storage = rdb_of(run.study)
    name = stops.last_signal() or "SIGINT"
    for trial in [t for t in list(trials) if t.number not in told]:
        tid = compat.trial_id(trial)
        try:
            storage.set_trial_user_attr(tid, FAILURE_INTERRUPTED, name)
            storage.set_trial_system_attr(tid, FAILURE_ATTR, FAILURE_INTERRUPTED)
            storage.set_trial_state_values(tid, optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # told (or failed) meanwhile
        except Exception:  # the process is ending: the next trial may still be failed
            continue
