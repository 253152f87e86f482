"""TPE whose cost per trial stays flat as the study's history grows.

Optuna's TPE reads the study's trials from the database for every parameter group of every trial
(with the constant liar it bypasses the cache, to see the other workers' running trials), and fits
its Parzen estimators on all of them. At thousands of trials that is a few hundred milliseconds of
database reads and arithmetic per trial, in every worker, growing with the history.
:class:`HistorySampler` changes two things and nothing else of TPE:

* **One read per batch.** Inside :func:`sampling_batch` the history is read once, when the batch's
  first trial is sampled, and each of the batch's trials is added to that snapshot as RUNNING once
  sampled, so the next one treats it as the constant liar would. Other workers' trials that start
  meanwhile are seen at the next batch, as trials sampled by another process always were.
* **A bounded history.** Past ``max_history`` finished trials, TPE sees the best
  :data:`KEPT_BEST` of them and the most recent others up to ``max_history``. TPE's "good" set is
  the best ``min(ceil(n / 10), 25)`` trials, so with ``max_history >= 250`` (and at least 25
  complete trials; with fewer, TPE fills it with pruned ones) it is the same set as without the
  bound; only the "bad" density is fitted on the recent trials instead of all, and TPE
  already weights old trials down to near zero (``default_weights``).

And it decides how the search starts:

* **A start-up fitted to the budget.** TPE needs a few finished trials before it can model
  anything. :func:`startup_trials` makes the start-up a third of the budget (the baseline
  included), at most :data:`STARTUP_CAP` trials, and the start-up is the trials numbered below
  it, so TPE proposes from trial ``ceil(n_trials / 3)`` on whatever the budget or batch size;
  the worker claims the start-up as a batch of its own (an ``hpo run``'s processes share it), so
  the batch after it is proposed with the start-up's results in hand. A trial sampled while no
  trial has finished (a separate worker that joined at once) gets a further quasi-random point.
* **Quasi-random start-up** (``[sampler] startup = "qmc"``, the default): the start-up trials
  are points of one scrambled Sobol sequence over all of the space's parameters, trial ``n``
  taking point ``n``, so that a handful of plans covers the space evenly instead of
  clumping, and two workers (or a resumed run) never draw the same point. The sequence's
  scrambling comes from the study's own seed (:data:`hpo.study.record.SAMPLER_ATTR`).

Running trials (the constant liar's) are always all kept: they are at most workers x batch.
TPE's copy of each trial's relatively sampled parameters (a system attribute it writes, with the
constant liar, for other workers to see before the parameters are stored) is not written: the
worker stores a batch's parameters before it trains (``hpo.study.bulk``), one write instead of
one a trial.
"""

from __future__ import annotations

import contextlib
import copy
import heapq
import math
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from hpo.lazy import lazy_import
from hpo.spec import MIN_SAMPLER_HISTORY, STARTUP_CAP, startup_trials
from hpo.study import optuna_compat as compat

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution
    from optuna.trial import FrozenTrial
else:
    optuna = lazy_import("optuna")

__all__ = [
    "KEPT_BEST",
    "STARTUP_CAP",
    "HistorySampler",
    "StartupDesign",
    "note_sampled",
    "proposed_by",
    "sampling_batch",
    "startup_trials",
]

# TPE's "good" set never holds more than 25 trials (its default gamma, min(ceil(n / 10), 25));
# at MIN_SAMPLER_HISTORY = 10 x KEPT_BEST trials or more it is exactly these 25.
KEPT_BEST = 25


class StartupDesign:
    """Where the start-up trials go: trial ``n`` takes point ``n`` of a scrambled Sobol
    sequence over ``names`` (every parameter the space can ask for, in a fixed order), each
    coordinate mapped onto its parameter's distribution. A parameter a trial does not ask for
    (an L2 alpha under an L1 penalty) leaves its coordinate unused.

    >>> design = StartupDesign(["a", "b"], seed=1)
    >>> design.point(3) == StartupDesign(["a", "b"], seed=1).point(3)
    True
    """

    def __init__(self, names: Sequence[str], seed: int) -> None:
        self.names = list(names)
        self.seed = seed
        self._points: Any = None

    def point(self, number: int) -> list[float]:
        if self._points is None or len(self._points) <= number:
            from scipy.stats import qmc

            # A longer sequence from the same seed starts with the same points.
            m = max(4, math.ceil(math.log2(number + 1)) + 1)
            self._points = qmc.Sobol(len(self.names), scramble=True, seed=self.seed).random_base2(m)
        return [float(u) for u in self._points[number]]

    def value(self, number: int, name: str, distribution: BaseDistribution) -> Any:
        """Trial ``number``'s value of parameter ``name``; None for a parameter or
        distribution the design does not know (then it is drawn at random)."""
        if name not in self.names:
            return None
        u = self.point(number)[self.names.index(name)]
        if isinstance(distribution, optuna.distributions.CategoricalDistribution):
            choices = distribution.choices
            return choices[min(int(u * len(choices)), len(choices) - 1)]
        if isinstance(distribution, optuna.distributions.FloatDistribution):
            low, high = distribution.low, distribution.high
            if distribution.log:
                return float(math.exp(math.log(low) + u * (math.log(high) - math.log(low))))
            return float(low + u * (high - low))
        return None


class HistorySampler(compat.DensityHook, optuna.samplers.TPESampler):
    """:class:`optuna.samplers.TPESampler` over a per-batch snapshot of at most ``max_history``
    finished trials (0: all of them).

    >>> sampler = HistorySampler(max_history=1000, seed=1, multivariate=True)
    >>> sampler.max_history
    1000
    """

    def __init__(
        self, *, max_history: int = 0, design: StartupDesign | None = None, **tpe: Any
    ) -> None:
        if max_history and max_history < MIN_SAMPLER_HISTORY:
            raise ValueError(
                f"`max_history` must be 0 (no bound) or at least {MIN_SAMPLER_HISTORY}, but got "
                f"{max_history}"
            )
        # The start-up is decided here, by trial number (below): TPE itself models as soon as
        # one trial has finished.
        self.n_startup_trials = int(tpe.pop("n_startup_trials", 10))
        super().__init__(n_startup_trials=1, **tpe)
        self._startup_random = optuna.samplers.RandomSampler(seed=tpe.get("seed"))
        self.max_history = max_history
        # None: the start-up draws at random (TPE's own way).
        self.design = design
        # Who proposed each trial sampled here: "qmc", "random" (start-up) or "tpe".
        self.proposers: dict[int, str] = {}
        # One worker samples from one thread; the heartbeat thread never samples. Thread-local
        # all the same, so that a sampler shared by threads never mixes their batches.
        self._local = threading.local()

    # --- the snapshot ---------------------------------------------------------------------

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Sample the trials of one batch from one read of the history."""
        self._local.batch, self._local.view = True, None
        self._local.space, self._local.fits = None, {}
        try:
            yield
        finally:
            self._local.batch, self._local.view = False, None
            self._local.space, self._local.fits = None, {}

    def sampled(self, trial: FrozenTrial) -> None:
        """Add a batch member, now sampled, to the snapshot as the constant liar's RUNNING
        trial (replacing the paramless copy read when it had just been claimed)."""
        view: compat.TPEStudyView | None = getattr(self._local, "view", None)
        if view is not None and getattr(self._local, "batch", False):
            view.trials = [t for t in view.trials if t.number != trial.number] + [trial]

    def _view(self, study: optuna.Study, trial: FrozenTrial) -> compat.TPEStudyView:
        """The snapshot: the batch's, else one per trial (TPE asks once per parameter group)."""
        view: compat.TPEStudyView | None = getattr(self._local, "view", None)
        in_batch = getattr(self._local, "batch", False)
        owner = None if in_batch else trial.number
        # Optuna may pass a wrapper of the study (Hyperband's per-bracket view, a new one each
        # call): the snapshot belongs to the study beneath.
        if (
            view is not None
            and compat.underlying_study(view) is compat.underlying_study(study)
            and self._local.owner == owner
        ):
            return view
        view = compat.TPEStudyView(study, self.bounded(self._read(study)))
        self._local.view, self._local.owner = view, owner
        return view

    @staticmethod
    def _read(study: optuna.Study) -> list[FrozenTrial]:
        states = (
            optuna.trial.TrialState.COMPLETE,
            optuna.trial.TrialState.PRUNED,
            optuna.trial.TrialState.RUNNING,
        )
        # Not the cache's copy of RUNNING trials: other workers' parameters matter to the liar.
        return compat.uncached_trials(study, states)

    def bounded(self, trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
        """``trials`` with the finished ones cut to ``max_history``: the best
        :data:`KEPT_BEST` complete trials and the most recent others."""
        # Plain locals: these loops run over every stored trial once a batch, and a lookup
        # through the lazy `optuna` module costs more than the comparison itself.
        running, complete_state = optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.COMPLETE
        finished = [t for t in trials if t.state != running]
        if not self.max_history or len(finished) <= self.max_history:
            return list(trials)
        complete = [t for t in finished if t.state == complete_state]
        # The study maximizes (accuracy); ties go to the earlier trial (nlargest is a stable
        # sort's first KEPT_BEST, without sorting them all).
        best = heapq.nlargest(KEPT_BEST, complete, key=lambda t: float(t.value or 0.0))
        kept = {t.number for t in best}
        others = [t for t in finished if t.number not in kept]
        recent = others[len(others) - (self.max_history - len(best)) :]
        return sorted([*best, *recent], key=lambda t: t.number) + [
            t for t in trials if t.state == running
        ]

    # --- TPE on the snapshot --------------------------------------------------------------

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        # Within a batch the finished trials are the snapshot's, so the space (inferred from
        # them alone, running trials aside) is the same for every member: inferred once.
        in_batch = getattr(self._local, "batch", False)
        if in_batch and self._local.space is not None:
            return dict(self._local.space)
        space = super().infer_relative_search_space(self._view(study, trial), trial)  # type: ignore[arg-type]
        if in_batch:
            self._local.space = dict(space)
        return space

    def fit_density(
        self,
        study: optuna.Study,
        search_space: dict[str, BaseDistribution],
        trials: list[FrozenTrial],
        handle_below: bool,
    ) -> Any:
        """TPE's density of ``trials``, kept for the batch: the "good" trials are the same for
        every member (running ones, the liar's, count as "bad"), so that density is fitted once
        a batch instead of once a trial. It is a pure function of its inputs, so reusing it
        changes nothing."""
        if not getattr(self._local, "batch", False):
            return super().fit_density(study, search_space, trials, handle_below)
        key = (tuple(sorted(search_space)), handle_below, tuple(t.number for t in trials))
        fit = self._local.fits.get(key)
        if fit is None:
            fit = super().fit_density(study, search_space, trials, handle_below)
            self._local.fits[key] = fit
        return fit

    def _starting(self, view: compat.TPEStudyView, trial: FrozenTrial) -> bool:
        """Whether ``trial`` is a start-up trial (and who proposes it is noted): one of the
        first ``n_startup_trials`` by number, or any trial while none has finished.

        By number, not by finished trials as Optuna's TPE counts: with batches and several
        workers, trials are sampled before the start-up has finished, and counting finished
        trials would keep drawing start-up plans long after the start-up's share of the
        budget. Trial numbers are unique across workers, so the start-up is exactly the first
        ``n_startup_trials`` trials however they are claimed; a later trial is TPE's, fitted
        on what has finished so far (the rest are the constant liar's running trials)."""
        finished = view.get_trials(
            states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        )
        starting = trial.number < self.n_startup_trials or not finished
        self.proposers[trial.number] = (
            "tpe" if not starting else "qmc" if self.design is not None else "random"
        )
        return starting

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        view = self._view(study, trial)
        if self._starting(view, trial):
            return {}  # every parameter from the start-up (sample_independent)
        return super().sample_relative(view, trial, search_space)  # type: ignore[arg-type]

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        view = self._view(study, trial)
        if self._starting(view, trial):
            if self.design is not None:
                value = self.design.value(trial.number, param_name, param_distribution)
                if value is not None:
                    return value
            return self._startup_random.sample_independent(
                study, trial, param_name, param_distribution
            )
        return super().sample_independent(view, trial, param_name, param_distribution)  # type: ignore[arg-type]


def sampling_batch(study: optuna.Study) -> contextlib.AbstractContextManager[None]:
    """Sample a batch of trials of ``study`` from one read of its history (a no-op for a
    sampler that is not a :class:`HistorySampler`)."""
    sampler = study.sampler
    return sampler.batch() if isinstance(sampler, HistorySampler) else contextlib.nullcontext()


def proposed_by(study: optuna.Study, trial: optuna.Trial) -> str | None:
    """Who proposed ``trial``'s parameters in this process: ``"qmc"`` or ``"random"`` (the
    start-up), ``"tpe"``; None for a sampler that is not a :class:`HistorySampler`."""
    sampler = study.sampler
    if not isinstance(sampler, HistorySampler):
        return None
    return sampler.proposers.pop(trial.number, None)


def note_sampled(study: optuna.Study, trial: optuna.Trial) -> None:
    """Tell ``study``'s sampler that ``trial`` of the current batch has all its parameters."""
    if isinstance(study.sampler, HistorySampler):
        # The trial's own up-to-date frozen copy (Optuna keeps its params there as suggested).
        study.sampler.sampled(copy.copy(compat.frozen_of(trial)))
