"""The worker loop: claim a batch of trials, train them together, tell each its result.

The same loop serves ``hpo run`` (one process) and ``hpo worker`` (any number of processes on
any number of machines sharing one study):

* The study's ``n_trials`` is a global budget, claimed atomically (``hpo._budget``): exactly
  that many trials finish, whatever the number of workers.
* A heartbeat thread (``hpo._heartbeat``) keeps the held trials alive; a dead worker's trials
  go stale, are failed by the next claim anywhere, and retried with the same parameters.
* Database outages stall the worker instead of killing it (``hpo.storage.StorageGuard``):
  a finished result stays in memory and is told when the database is back, exactly once.
* Ctrl-C or SIGTERM stops cleanly: the trials in flight are told FAIL (marked ``interrupted``,
  and retried by the workers that carry on), nothing stays RUNNING, and the process exits 0.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from hpo._budget import (
    FAILURE_ATTR,
    RETRY_ROOT_ATTR,
    Claim,
    claim_trials,
    log_stale_trial,
)
from hpo._errors import HpoError
from hpo._heartbeat import (
    POLICY_ATTR,
    CrashPolicy,
    Heartbeat,
    configure_stale_detection,
    stored_policy,
    worker_id,
)
from hpo._logging import get_logger
from hpo._signals import Stopped, critical, stop_on_signals
from hpo.data import FoldSet
from hpo.engines.base import Engine, EvaluationResult
from hpo.objective import evaluate_plans, trial_attrs
from hpo.space import RegularizationPlan, suggest_plan
from hpo.spec import StudySpec, spec_from_dict, spec_to_dict
from hpo.storage import StorageGuard, creation_lock, mask_url, rdb_of

if TYPE_CHECKING:
    import optuna

__all__ = [
    "SPEC_ATTR",
    "CrashPolicy",
    "RunSummary",
    "Stopped",
    "best_trial",
    "budget_left",
    "create_or_load_study",
    "join_study",
    "make_sampler",
    "optimize",
    "stop_on_signals",
    "stored_policy",
    "stored_spec",
]

SPEC_ATTR = "hpo_spec"
_log = get_logger("worker")
# What must match for a resumed study to stay one experiment (data location may differ).
_PROTOCOL_SECTIONS = ("cv", "model", "search")


def make_sampler(spec: StudySpec, *, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    import optuna

    seed = None if spec.sampler.seed is None else spec.sampler.seed + seed_offset
    return optuna.samplers.TPESampler(
        seed=seed,
        n_startup_trials=spec.sampler.n_startup_trials,
        multivariate=spec.sampler.multivariate,
        group=spec.sampler.group,
        constant_liar=spec.sampler.constant_liar,
    )


def stored_spec(study: optuna.Study) -> StudySpec | None:
    raw = study.user_attrs.get(SPEC_ATTR)
    return None if raw is None else spec_from_dict(raw, origin=f"study {study.study_name!r}")


def create_or_load_study(
    spec: StudySpec,
    storage: optuna.storages.BaseStorage,
    *,
    seed_offset: int = 0,
    policy: CrashPolicy | None = None,
) -> tuple[optuna.Study, bool]:
    """The study named by ``spec``: created with the spec (and crash policy) stored on it, or
    resumed after checking that its protocol matches. Returns ``(study, created)``.

    Creation and its attributes happen under one lock, so a worker never sees a study without
    its spec, and processes racing to create it make it once.
    """
    import optuna

    sampler = make_sampler(spec, seed_offset=seed_offset)
    with creation_lock(_rdb(storage)):
        try:
            study = optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler)
        except KeyError:
            try:
                study = optuna.create_study(
                    study_name=spec.name, storage=storage, sampler=sampler, direction="maximize"
                )
            except optuna.exceptions.DuplicatedStudyError:  # made by a version without the lock
                study = optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler)
            else:
                study.set_user_attr(SPEC_ATTR, spec_to_dict(spec))
                study.set_user_attr(POLICY_ATTR, (policy or CrashPolicy()).to_dict())
                return study, True
    check_same_protocol(spec, study)
    return study, False


def join_study(
    name: str, storage: optuna.storages.RDBStorage, *, shown_url: str | None = None
) -> tuple[optuna.Study, StudySpec]:
    """An existing study and its stored spec, knowing only its name (``hpo worker``).
    ``shown_url``: the storage as the user wrote it, for messages."""
    import optuna

    shown = mask_url(shown_url or storage.url)
    with creation_lock(storage):
        try:
            study_id = storage.get_study_id_from_name(name)
        except KeyError:
            names = sorted(s.study_name for s in storage.get_all_studies())
            where = f"; studies there: {', '.join(names)}" if names else " (it holds no studies)"
            raise HpoError(
                f"no study named {name!r} in {shown}{where}; create it first with "
                "`hpo create STUDY_FILE --storage URL`"
            ) from None
        raw = storage.get_study_user_attrs(study_id).get(SPEC_ATTR)
    if raw is None:
        raise HpoError(
            f"study {name!r} in {shown} has no stored study spec (it was not made by hpo); "
            "create a new one with `hpo create STUDY_FILE --name NEW_NAME`"
        )
    spec = spec_from_dict(raw, origin=f"study {name!r}")
    # Workers of one study need different sampler seeds, or their random startup trials
    # would all propose the same parameters.
    offset = zlib.crc32(worker_id().encode()) % 1_000_003
    study = optuna.load_study(
        study_name=name, storage=storage, sampler=make_sampler(spec, seed_offset=offset)
    )
    return study, spec


def _rdb(storage: optuna.storages.BaseStorage) -> optuna.storages.RDBStorage:
    import optuna

    backend = getattr(storage, "_backend", storage)
    if not isinstance(backend, optuna.storages.RDBStorage):
        raise HpoError("hpo needs an SQL storage (sqlite:///FILE.db or postgresql://...)")
    return backend


def check_same_protocol(spec: StudySpec, study: optuna.Study) -> None:
    stored = study.user_attrs.get(SPEC_ATTR)
    if stored is None:
        return
    current = spec_to_dict(spec)
    for section in _PROTOCOL_SECTIONS:
        for key, value in current[section].items():
            if stored.get(section, {}).get(key) != value:
                old = stored.get(section, {}).get(key)
                raise HpoError(
                    f"study {spec.name!r} was created with {section}.{key}={old!r}, but this run "
                    f"has {value!r}; use the study's settings or a new name (--name)"
                )
    if stored["data"].get("target") != spec.data.target:
        raise HpoError(
            f"study {spec.name!r} was created with data.target={stored['data'].get('target')!r}, "
            f"but this run has {spec.data.target!r}"
        )


def budget_left(study: optuna.Study, n_trials: int | None) -> int:
    """Trials still to start: the budget less finished (complete, pruned) and running ones."""
    from optuna.trial import TrialState

    if n_trials is None:
        return 1 << 30
    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    return max(0, n_trials - len(study.get_trials(deepcopy=False, states=counted)))


@dataclass
class RunSummary:
    completed: int = 0
    pruned: int = 0
    failed: int = 0
    lost: int = 0  # finished here, but failed as stale meanwhile (the retry trains it again)
    interrupted: str | None = None
    seconds: float = 0.0
    results: dict[int, float] = field(default_factory=dict)


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
                import optuna

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
    trials_per_batch: int = 1,
    versions: Mapping[str, str] | None = None,
    on_result: Callable[[optuna.Trial, EvaluationResult], None] | None = None,
    guard: StorageGuard | None = None,
) -> RunSummary:
    """Run batches until the global budget is finished, the timeout is reached, or a signal
    stops us. While every open slot of the budget is held by other workers, wait: one of
    them may die, and its trials then need a worker."""
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
        while True:
            if timeout is not None and time.monotonic() - started >= timeout:
                _log.info("timeout of %.0f s reached; not starting more trials", timeout)
                final = "timeout"
                break
            claim = _claim_and_run(run, n_trials, trials_per_batch)
            if claim.done:
                final = "finished"
                break
            if claim.trials:
                said_waiting = False
                continue
            if not said_waiting:
                _log.info(
                    "every open trial of the budget is held by another worker (%d running or "
                    "queued); waiting in case one of them dies",
                    claim.held_elsewhere,
                )
                said_waiting = True
            heartbeat.set_state("waiting", completed=summary.completed)
            time.sleep(policy.heartbeat_interval)
    except Stopped as exc:
        summary.interrupted = str(exc)
        final = "stopped"
    finally:
        heartbeat.stop(final, completed=summary.completed)
    summary.seconds = time.monotonic() - started
    return summary


def _claim_and_run(run: _Run, n_trials: int | None, size: int) -> Claim:
    trials: list[optuna.Trial] = []
    told: set[int] = set()
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
            ),
            "claiming trials",
        )
        if claim.trials:
            run.heartbeat.set_state("training", completed=run.summary.completed)
            _run_batch(run, list(claim.trials), told)
        return claim
    except BaseException as exc:
        # Nothing may stay RUNNING: fail every claimed trial not yet told, then re-raise.
        _fail_untold(run, [t for t in trials if t.number not in told], exc)
        if isinstance(exc, KeyboardInterrupt):
            raise Stopped("SIGINT") from None
        raise


def _prepare(run: _Run, trial: optuna.Trial) -> tuple[RegularizationPlan, int]:
    """Sample the plan of ``trial`` and record it (idempotent: safe to retry after an outage)."""
    plan = suggest_plan(trial, run.spec.search)
    # A retry trains with its original's seed: same parameters, same seed, same trial.
    seed = run.spec.trial_seed(int(trial.user_attrs.get(RETRY_ROOT_ATTR, trial.number)))
    trial.set_user_attr("plan", plan.to_dict())
    trial.set_user_attr("seed", seed)
    trial.set_user_attr("worker", run.heartbeat.worker)
    return plan, seed


def _run_batch(run: _Run, trials: list[optuna.Trial], told: set[int]) -> None:
    from optuna.trial import TrialState

    spec, summary = run.spec, run.summary
    prepared = [
        run.guard.call(partial(_prepare, run, trial), f"sampling trial {trial.number}")
        for trial in trials
    ]
    plans = [plan for plan, _ in prepared]
    seeds = [seed for _, seed in prepared]
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
    )
    for trial, result in zip(trials, results, strict=True):
        attrs = trial_attrs(result, engine=run.engine.name, versions=run.versions)
        if run.on_result is not None:
            run.on_result(trial, result)
        if result.pruned:
            state, value, failure = TrialState.PRUNED, None, None
        elif not math.isfinite(result.accuracy):
            state, value, failure = TrialState.FAIL, None, "non-finite"
        else:
            state, value, failure = TrialState.COMPLETE, result.accuracy, None
        final = run.guard.call(
            partial(_tell, run, trial, attrs, state, value, failure),
            f"telling trial {trial.number}",
        )
        told.add(trial.number)
        run.heartbeat.release([trial._trial_id])
        if final != state:
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
            summary.results[trial.number] = result.accuracy
            _log.info(
                "trial %d: accuracy %.4f (folds %s, %.3g s)%s%s",
                trial.number,
                result.accuracy,
                " ".join(f"{a:.3f}" for a in result.fold_accuracies),
                result.seconds,
                " DIVERGED" if result.diverged else "",
                _best_text(run.study, run.guard),
            )


def _tell(
    run: _Run,
    trial: optuna.Trial,
    attrs: Mapping[str, Any],
    state: optuna.trial.TrialState,
    value: float | None,
    failure: str | None,
) -> optuna.trial.TrialState:
    """Record ``trial``'s result; the state it ends in. Retried through outages, so it must
    be idempotent: a tell that reached the database before the connection broke is not
    repeated, and a trial failed meanwhile by another worker is left alone."""
    import optuna

    with critical():
        try:
            for key, item in attrs.items():
                trial.set_user_attr(key, item)
            if failure is not None:
                run.study._storage.set_trial_system_attr(trial._trial_id, FAILURE_ATTR, failure)
            frozen = run.study.tell(trial, value, state=state, skip_if_finished=True)
            return frozen.state
        except optuna.exceptions.UpdateFinishedTrialError:
            return run.study._storage.get_trial(trial._trial_id).state


def _fail_untold(run: _Run, trials: list[optuna.Trial], exc: BaseException) -> None:
    from optuna.trial import TrialState

    reason = "interrupted" if isinstance(exc, Stopped | KeyboardInterrupt) else "error"
    message = str(exc) or type(exc).__name__

    def mark(trial: optuna.Trial) -> None:
        trial.set_user_attr(reason, message)
        run.study._storage.set_trial_system_attr(trial._trial_id, FAILURE_ATTR, reason)
        run.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)

    with critical():  # a second Ctrl-C must not leave half of them RUNNING
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
            run.heartbeat.release([trial._trial_id])


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:
        return None
