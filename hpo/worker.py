"""The worker loop: ask a batch of trials, train them together, tell each its result.

The study's ``n_trials`` is a global budget: finished (complete or pruned) plus running trials
never exceed it, so resuming a study or adding a process runs only what is left. Ctrl-C or
SIGTERM stops cleanly: the trials in flight are told FAIL (marked ``interrupted``), nothing
stays RUNNING, and the database is left as it was.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING

from hpo._errors import HpoError
from hpo._logging import get_logger
from hpo.data import FoldSet
from hpo.engines.base import Engine, EvaluationResult
from hpo.objective import evaluate_plans, trial_attrs
from hpo.space import suggest_plan
from hpo.spec import StudySpec, spec_from_dict, spec_to_dict

if TYPE_CHECKING:
    import optuna

__all__ = [
    "SPEC_ATTR",
    "RunSummary",
    "Stopped",
    "best_trial",
    "budget_left",
    "create_or_load_study",
    "make_sampler",
    "optimize",
    "stop_on_signals",
    "stored_spec",
]

SPEC_ATTR = "hpo_spec"
_log = get_logger("worker")
# What must match for a resumed study to stay one experiment (data location may differ).
_PROTOCOL_SECTIONS = ("cv", "model", "search")


class Stopped(Exception):
    """Raised in the main thread by SIGINT/SIGTERM so in-flight trials can be failed cleanly."""


@contextmanager
def stop_on_signals() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise Stopped(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


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
    spec: StudySpec, storage: optuna.storages.BaseStorage, *, seed_offset: int = 0
) -> tuple[optuna.Study, bool]:
    """The study named by ``spec``: created with the spec stored on it, or resumed after checking
    that its protocol matches. Returns ``(study, created)``."""
    import optuna

    sampler = make_sampler(spec, seed_offset=seed_offset)
    try:
        study = optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler)
    except KeyError:
        try:
            study = optuna.create_study(
                study_name=spec.name, storage=storage, sampler=sampler, direction="maximize"
            )
        except optuna.exceptions.DuplicatedStudyError:  # another process won the race
            study = optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler)
        else:
            study.set_user_attr(SPEC_ATTR, spec_to_dict(spec))
            return study, True
    check_same_protocol(spec, study)
    return study, False


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
    interrupted: str | None = None
    seconds: float = 0.0
    results: dict[int, float] = field(default_factory=dict)


class _ProgressMonitor:
    """Progress lines and pruning decisions for one batch of trials."""

    def __init__(self, study: optuna.Study, trials: list[optuna.Trial], n_folds: int) -> None:
        self.study = study
        self.trials = trials
        self.n_folds = n_folds

    def on_fold_end(self, member: int, fold: int, accuracy: float) -> None:
        _log.info(
            "trial %d: fold %d/%d accuracy %.4f%s",
            self.trials[member].number,
            fold + 1,
            self.n_folds,
            accuracy,
            _best_text(self.study),
        )

    def on_checkpoint(self, step: int, accuracies: Mapping[int, float]) -> set[int]:
        pruned = set()
        for member, accuracy in accuracies.items():
            trial = self.trials[member]
            trial.report(accuracy, step)
            if trial.should_prune():
                pruned.add(member)
        if accuracies:
            shown = ", ".join(
                f"{self.trials[m].number}:{a:.3f}" for m, a in sorted(accuracies.items())
            )
            _log.info(
                "checkpoint %d: %s%s", step, shown, f"; pruned {len(pruned)}" if pruned else ""
            )
        return pruned


def _best_text(study: optuna.Study) -> str:
    try:
        best = study.best_trial
    except ValueError:
        return ""
    return f" (best so far {best.value:.4f}, trial {best.number})"


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
) -> RunSummary:
    """Run batches until the global budget or the timeout is reached, or a signal stops us."""
    summary = RunSummary()
    started = time.monotonic()
    versions = dict(versions or {})
    try:
        while True:
            if timeout is not None and time.monotonic() - started >= timeout:
                _log.info("timeout of %.0f s reached; not starting more trials", timeout)
                break
            size = min(trials_per_batch, budget_left(study, n_trials))
            if size <= 0:
                break
            _run_batch(study, spec, folds, engine, size, versions, summary, on_result)
    except Stopped as exc:
        summary.interrupted = str(exc)
    summary.seconds = time.monotonic() - started
    return summary


def _run_batch(
    study: optuna.Study,
    spec: StudySpec,
    folds: FoldSet,
    engine: Engine,
    size: int,
    versions: dict[str, str],
    summary: RunSummary,
    on_result: Callable[[optuna.Trial, EvaluationResult], None] | None,
) -> None:
    from optuna.trial import TrialState

    trials: list[optuna.Trial] = []
    told: set[int] = set()
    try:
        for _ in range(size):
            trials.append(study.ask())
        plans = [suggest_plan(trial, spec.search) for trial in trials]
        seeds = [spec.trial_seed(trial.number) for trial in trials]
        for trial, plan, seed in zip(trials, plans, seeds, strict=True):
            trial.set_user_attr("plan", plan.to_dict())
            trial.set_user_attr("seed", seed)
        numbers = ", ".join(str(t.number) for t in trials)
        _log.info(
            "training trial%s %s (%s engine, %d folds x %d epochs)",
            "s" if size > 1 else "",
            numbers,
            engine.name,
            folds.n_folds,
            spec.model.epochs,
        )
        results = evaluate_plans(
            engine,
            plans,
            folds,
            model=spec.model,
            seeds=seeds,
            monitor=_ProgressMonitor(study, trials, folds.n_folds),
        )
        for trial, result in zip(trials, results, strict=True):
            for key, value in trial_attrs(result, engine=engine.name, versions=versions).items():
                trial.set_user_attr(key, value)
            if on_result is not None:
                on_result(trial, result)
            if result.pruned:
                study.tell(trial, state=TrialState.PRUNED)
                summary.pruned += 1
                _log.info("trial %d pruned at %.4f", trial.number, result.accuracy)
            elif not math.isfinite(result.accuracy):
                study.tell(trial, state=TrialState.FAIL)
                summary.failed += 1
            else:
                study.tell(trial, result.accuracy)
                summary.completed += 1
                summary.results[trial.number] = result.accuracy
                _log.info(
                    "trial %d: accuracy %.4f (folds %s, %.1f s)%s%s",
                    trial.number,
                    result.accuracy,
                    " ".join(f"{a:.3f}" for a in result.fold_accuracies),
                    result.seconds,
                    " DIVERGED" if result.diverged else "",
                    _best_text(study),
                )
            told.add(trial.number)
    except BaseException as exc:
        # Nothing may stay RUNNING: fail every trial of the batch not yet told, then re-raise.
        reason = "interrupted" if isinstance(exc, Stopped | KeyboardInterrupt) else "error"
        for trial in trials:
            if trial.number in told:
                continue
            try:
                trial.set_user_attr(reason, str(exc) or type(exc).__name__)
                study.tell(trial, state=TrialState.FAIL)
            except Exception:  # storage gone too; heartbeats will reclaim the trial
                _log.warning("could not mark trial %d failed", trial.number)
            summary.failed += 1
        if isinstance(exc, KeyboardInterrupt):
            raise Stopped("SIGINT") from None
        raise


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:
        return None
