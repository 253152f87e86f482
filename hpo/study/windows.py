"""The alphas worth searching, measured on the study's own data and network (``l1 = "auto"``).

A fixed range such as 1e-6 ... 1e-1 wastes most of its trials: on the course data (500 epochs) a
penalty below about 1e-3 changes the trained network less than a new seed does, and an L1
penalty on the weights collapses it to one class at 1e-1; on wine, no penalty moves a single
prediction below 1e-2, and most plans of the fixed range reproduce the unregularized network
row for row (``bench/search_quality.py``'s ladder and sweep). Such trials are the baseline in
all but name: they cost a trial, teach the search nothing, and the best of several such
re-rolls only flatters the search score.

So before its first trial a study trains a *ladder*, once: each penalty kind alone (L1 or L2,
on the outputs or on the weights of every searched layer) at each decade of :data:`LADDER`,
beside the unregularized network, all from the same initial weights and batch order, plus the
unregularized network from other initial weights. It trains on the first folds that hold
:data:`PROBE_ROWS` validation rows (one fold of the course data, every fold of wine); on the
reference engine, one ``model.fit`` per plan and fold, every other decade on one fold. Per kind:

* ``high``: the strongest alpha below which no alpha collapses the network (one class
  predicted, or accuracy less than halfway from the commonest class's share to the
  unregularized network's);
* ``low``: the weakest alpha from which on, up to ``high``, the predictions differ from the
  unregularized network's (same weights) on at least :data:`EFFECT_SHARE` of the share a new
  seed changes, the *seed floor*, and on at least :data:`MIN_ROWS_MOVED` rows: weaker
  penalties do no more than chance;
* a kind that changes the network only at ``high``, or nowhere short of collapse, is searched
  a quarter of the ladder's step around ``high``; the run says that such data gives
  regularization little to act on.

On easy data a trial can still predict every row exactly as the unregularized network does
without being a copy of it: on wine two unregularized networks from different initial weights
agree on all 124 rows about one time in six, and the windows leave no more such trials than
that rate explains (``tests/test_windows.py``). Narrower windows closer to the collapse remove them only by
collapsing plans that stack several penalties (``bench/window_edges.py``).

The windows are recorded on the study (``hpo_penalty_windows``) with the whole ladder by the
first process that trains, and every worker uses the recorded ones: a worker on another
machine could measure a borderline alpha differently, and one study must search one space.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from hpo import stops
from hpo.data import Fold, FoldSet
from hpo.engines.contract import Engine
from hpo.errors import HpoError
from hpo.lazy import lazy_import
from hpo.log import get_logger
from hpo.seeds import probe_seeds
from hpo.space import LayerPenalty, RegularizationPlan
from hpo.spec import PENALTY_KINDS, PenaltyWindows, StudySpec, Window
from hpo.study import optuna_compat as compat
from hpo.study.record import WINDOWS_ATTR
from hpo.study.storage import rdb_of, study_lock

if TYPE_CHECKING:
    import numpy as np
    import optuna
else:
    np = lazy_import("numpy")
    optuna = lazy_import("optuna")

__all__ = [
    "LADDER",
    "Ladder",
    "ladder_size",
    "measure_windows",
    "probe_cost",
    "probe_folds",
    "resolve_windows",
    "stored_windows",
]

# The ladder trains on the first folds until their validation rows number this many (or on all
# folds): one fold of the course data (320 rows), every fold of wine (124). Fewer rows cannot
# tell a penalty that moves a few rows from one that moves none.
PROBE_ROWS = 200
# A penalty must move at least this many validation rows to count as changing the network.
MIN_ROWS_MOVED = 3
# Alphas tried for each kind: whole decades, wide enough on both sides for every task of the
# benchmark (wine's L2 on weights first matters at 1; the course's L1 on weights collapses at 0.1).
LADDER = tuple(10.0**e for e in range(-6, 2))
# The reference engine fits one Keras model per plan and fold (a builder's model trains there):
# every other decade, on one fold, 18 fits instead of up to 170.
COARSE_LADDER = LADDER[::2]
# A penalty "changes the network" once its predictions differ from the unregularized network's
# (same initial weights and batch order) on this share of what a new seed's differ on. The
# difference grows smoothly with alpha from chaos (a tiny change to 500 epochs of training moves
# a few rows) to the floor and beyond; below 3/4 of the floor a trial is a re-roll of the baseline.
EFFECT_SHARE = 0.75
_QUARTER_DECADE = 10**0.25
_WAIT_SECONDS = 0.5
_log = get_logger("windows")


@dataclass(frozen=True)
class Ladder:
    """What the probe measured: per kind and alpha, the share of validation rows predicted
    differently from the unregularized network, the accuracy, and whether it collapsed."""

    floor: float
    baseline: float
    guess: float
    rows: int
    steps: dict[str, list[tuple[float, float, float, bool]]]
    seconds: float

    @property
    def threshold(self) -> float:
        """The share of rows a penalty must move to count as changing the network."""
        return max(EFFECT_SHARE * self.floor, MIN_ROWS_MOVED / self.rows)

    def bounds(self, kind: str) -> tuple[float | None, float | None]:
        """``(low, high)`` as measured: ``high`` the strongest alpha below which none collapses
        the network (None: the weakest tried collapses it), ``low`` the weakest from which on
        every alpha up to ``high`` moves at least :attr:`threshold` of the rows (None: none
        does)."""
        steps = sorted(self.steps[kind])
        high = None
        for alpha, _, _, collapsed in steps:
            if collapsed:
                break
            high = alpha
        low = None
        for alpha, changed, _, _ in reversed(
            [s for s in steps if high is not None and s[0] <= high]
        ):
            if changed < self.threshold:
                break
            low = alpha
        return low, high

    def window(self, kind: str) -> Window:
        low, high = self.bounds(kind)
        steps = sorted(self.steps[kind])
        if high is None:  # collapses at the weakest alpha tried: only weaker ones are usable
            return Window(steps[0][0] / 10, steps[0][0])
        if low is None or low == high:
            # It changes the network, if at all, only at the last alpha before the collapse:
            # a quarter of the ladder's step each side of it. On wine, [high, high * 10**0.5]
            # collapsed 11 of 60 random plans, [high / 10**0.5, high] left 7 no-ops, this 0
            # and 1; quarter decades up to the collapse, measured, collapsed 7 of 15.
            above = [a for a, *_ in steps if a > high]
            step = (above[0] / high) ** 0.25 if above else _QUARTER_DECADE
            return Window(high / step, high * step)
        return Window(low, high)

    def without_effect(self) -> list[str]:
        """The kinds that move fewer than :attr:`threshold` of the rows at every sound alpha."""
        return [kind for kind in PENALTY_KINDS if self.bounds(kind)[0] is None]

    def windows(self) -> PenaltyWindows:
        return PenaltyWindows(**{kind: self.window(kind) for kind in PENALTY_KINDS})

    def to_dict(self) -> dict[str, Any]:
        return {
            "floor": round(self.floor, 6),
            "baseline": round(self.baseline, 6),
            "guess": round(self.guess, 6),
            "rows": self.rows,
            "seconds": round(self.seconds, 3),
            "without_effect": self.without_effect(),
            "ladder": {
                kind: [[a, round(c, 6), round(acc, 6), bool(x)] for a, c, acc, x in steps]
                for kind, steps in self.steps.items()
            },
        }


def _uniform(kind: str, alpha: float, n_layers: int, names: tuple[str, ...]) -> RegularizationPlan:
    layer = LayerPenalty(**{kind: alpha})
    return RegularizationPlan((layer,) * n_layers, names=names)


def measure_windows(spec: StudySpec, folds: FoldSet, engine: Engine) -> Ladder:
    """Train the ladder on the first folds (:data:`PROBE_ROWS`), every kind at each decade of
    :data:`LADDER`, and read each kind's window off it."""
    coarse = not engine.batch_seeded
    used = probe_folds(folds, coarse=coarse)
    alphas = COARSE_LADDER if coarse else LADDER
    started = time.monotonic()
    ladder = _measure(spec, folds, engine, used, [(k, a) for k in PENALTY_KINDS for a in alphas])
    return replace(ladder, seconds=time.monotonic() - started)


def _measure(
    spec: StudySpec,
    folds: FoldSet,
    engine: Engine,
    used: Sequence[Fold],
    ladder: Sequence[tuple[str, float]],
) -> Ladder:
    """One engine call: the unregularized network, again from other initial weights (the seed
    floor), and each ``(kind, alpha)`` of ``ladder`` on every searched layer."""
    n_layers, names = len(spec.search.layers), spec.search.names
    zero = RegularizationPlan.uniform(n_layers, names=names)
    plans = [zero, zero] + [_uniform(kind, alpha, n_layers, names) for kind, alpha in ladder]
    seed, other = probe_seeds(spec.base_seed)
    results = _train(engine, plans, used, spec, folds.n_classes, seed, other)
    rows = np.concatenate([f.valid_rows for f in used])
    predicted = [np.asarray(r.predictions)[rows] for r in results]
    base, again = predicted[0], predicted[1]
    truth = np.concatenate([f.y_valid for f in used])
    commonest = np.bincount(used[0].y_train, minlength=folds.n_classes).argmax()
    guess = float(np.mean(truth == commonest))
    baseline = float(np.mean(base == truth))
    bar = guess + (baseline - guess) / 2
    steps: dict[str, list[tuple[float, float, float, bool]]] = {kind: [] for kind in PENALTY_KINDS}
    for (kind, alpha), p in zip(ladder, predicted[2:], strict=True):
        accuracy = float(np.mean(p == truth))
        collapsed = len(np.unique(p)) == 1 or accuracy < bar
        steps[kind].append((alpha, float(np.mean(p != base)), accuracy, bool(collapsed)))
    return Ladder(
        floor=float(np.mean(again != base)),
        baseline=baseline,
        guess=guess,
        rows=len(rows),
        steps=steps,
        seconds=0.0,
    )


def ladder_size(*, coarse: bool = False) -> int:
    """Plans the ladder trains: every kind at every alpha, and the unregularized network twice."""
    return 2 + len(PENALTY_KINDS) * len(COARSE_LADDER if coarse else LADDER)


def probe_cost(rows: int, folds: int, *, coarse: bool = False) -> tuple[int, float]:
    """For ``rows`` searched rows in ``folds`` folds: the folds the ladder trains on, and its
    cost in trials (a trial trains every fold once). ``coarse``: the reference engine's.

    >>> probe_cost(1600, 5)
    (1, 6.8)
    >>> probe_cost(124, 5, coarse=True)
    (1, 3.6)
    """
    per_fold = max(1.0, rows / folds)
    used = 1 if coarse else min(folds, math.ceil(PROBE_ROWS / per_fold))
    return used, ladder_size(coarse=coarse) * used / folds


def probe_folds(folds: FoldSet, *, coarse: bool = False) -> list[Fold]:
    """The first folds whose validation rows reach :data:`PROBE_ROWS` (all, if they never do);
    ``coarse``: the first fold only."""
    used: list[Fold] = []
    for fold in folds.repeats[0]:
        used.append(fold)
        if coarse or sum(len(f.valid_rows) for f in used) >= PROBE_ROWS:
            break
    return used


def _train(
    engine: Engine,
    plans: Sequence[RegularizationPlan],
    used: Sequence[Fold],
    spec: StudySpec,
    n_classes: int,
    seed: int,
    other: int,
) -> list[Any]:
    """Every plan from ``seed``'s initial weights and batch order, but the second (the seed
    floor's), which starts from ``other``'s weights."""
    if engine.batch_seeded:
        return engine.evaluate(
            plans,
            used,
            model=spec.model,
            n_classes=n_classes,
            seeds=[seed] * len(plans),
            weight_seeds=[seed, other] + [seed] * (len(plans) - 2),
        )
    return engine.evaluate(
        plans,
        used,
        model=spec.model,
        n_classes=n_classes,
        seeds=[seed, other] + [seed] * (len(plans) - 2),
    )


def stored_windows(study: optuna.Study) -> PenaltyWindows | None:
    raw = study.user_attrs.get(WINDOWS_ATTR)
    if not isinstance(raw, dict) or "windows" not in raw:
        return None
    try:
        return PenaltyWindows.from_dict(raw["windows"])
    except (KeyError, TypeError, ValueError) as exc:
        raise HpoError(
            f"study {study.study_name!r}: the recorded penalty windows are unreadable ({exc})"
        ) from None


_T = TypeVar("_T")


def _direct(operation: Callable[[], _T], what: str) -> _T:
    del what
    return operation()


def resolve_windows(
    study: optuna.Study,
    spec: StudySpec,
    folds: FoldSet,
    engine: Engine,
    *,
    call: Callable[[Callable[[], Any], str], Any] = _direct,
    measure: bool = True,
) -> StudySpec:
    """``spec`` with the study's windows for its ``"auto"`` alphas: the recorded ones, else
    measured here and recorded (if no other process recorded them meanwhile), or, without
    ``measure``, waited for (another process of the run measures them). ``call`` runs each
    database operation (a worker passes its outage guard: the ladder is not trained again
    when the database is away while its result is stored)."""
    if not spec.search.auto:
        return spec
    windows = call(partial(stored_windows, study), "reading the penalty windows")
    while windows is None and not measure:
        stops.pause(_WAIT_SECONDS)  # a stop ends the wait like any other
        windows = call(partial(stored_windows, study), "reading the penalty windows")
    if windows is None:
        coarse = not engine.batch_seeded
        members = ladder_size(coarse=coarse)
        used = len(probe_folds(folds, coarse=coarse))
        _log.info(
            'measuring the "auto" penalty windows: %d plans on %s (%d x %d alphas, beside '
            "the unregularized network twice; about %.0f trials' training)",
            members,
            "fold 1" if used == 1 else f"folds 1-{used}",
            len(PENALTY_KINDS),
            len(COARSE_LADDER if coarse else LADDER),
            members * used / folds.n_folds,
        )
        ladder = measure_windows(spec, folds, engine)
        windows = call(partial(_record, study, ladder), "recording the penalty windows")
        _log.info(
            "penalty windows: %s (a new seed alone moves %d of the %d validation rows; %.1f s)",
            windows.text(),
            round(ladder.floor * ladder.rows),
            ladder.rows,
            ladder.seconds,
        )
        idle = ladder.without_effect()
        if idle:
            _log.warning(
                "%s %s fewer than %d of the %d validation rows at any alpha short of "
                "collapsing the network: %s plans will often score exactly as the unregularized "
                "network does, and regularization has little to act on here",
                " and ".join(kind.replace("_", " ") for kind in idle),
                "moves" if len(idle) == 1 else "move",
                math.ceil(ladder.threshold * ladder.rows),
                ladder.rows,
                "its" if len(idle) == 1 else "their",
            )
    return spec.replace(search=replace(spec.search, windows=windows))


def _record(study: optuna.Study, ladder: Ladder) -> PenaltyWindows:
    """Store the ladder's windows unless another process stored some first; the stored ones."""
    storage = rdb_of(study)
    sid = compat.study_id(study)
    with study_lock(storage, sid):  # waiting for the lock stays stoppable
        # Read under the lock, past any cache: another worker may have just written them.
        current = storage.get_study_user_attrs(sid).get(WINDOWS_ATTR)
        if not isinstance(current, dict) or "windows" not in current:
            current = {"windows": ladder.windows().to_dict(), **ladder.to_dict()}
            study.set_user_attr(WINDOWS_ATTR, current)
    return PenaltyWindows.from_dict(current["windows"])
