"""``hpo evaluate``: the top plans and the baseline, scored on rows the search never saw.

The search's best CV score is the maximum of many noisy scores, so it flatters the winner. Here
each plan is trained on every search row (preprocessing fitted on those rows) with S fresh seeds
and scored on the held-out rows. Every plan gets the same seeds (common random numbers).

Each plan's 95% interval combines the seeds' spread with the sampling error of the held-out
rows (which more seeds cannot shrink); the winner is compared with the baseline row by row
(paired t-test over held-out rows, each row's correctness averaged over the seeds).

The result is stored on the study (user attr ``holdout:evaluation``) and as a section of each
evaluated trial's dashboard note.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpo.data import FoldSet
from hpo.engines.contract import Engine
from hpo.engines.evaluation import evaluate_plans
from hpo.lazy import lazy_import
from hpo.log import get_logger
from hpo.results.notes import write_trial_note_section
from hpo.results.spec_text import refresh_spec_note
from hpo.results.stats import Scores, combined_ci, rows_paired_p
from hpo.spec import StudySpec
from hpo.study import optuna_compat as compat
from hpo.study.record import HOLDOUT_EVALUATION_ATTR, is_baseline, stored_plan, stored_spec
from hpo.study.storage import error_text

if TYPE_CHECKING:
    import numpy as np
    import optuna
else:
    np = lazy_import("numpy")
    optuna = lazy_import("optuna")

__all__ = [
    "HoldoutEvaluation",
    "PlanScore",
    "evaluate_on_holdout",
    "load_evaluation",
    "record_evaluation",
]

_NOTE_HEADER = "### Holdout"
_log = get_logger("evaluate")


@dataclass(frozen=True, kw_only=True)
class PlanScore(Scores):
    """One plan's holdout accuracies (one per seed) against its search CV score."""

    trial: int
    baseline: bool
    search_cv: float
    row_se: float = 0.0
    p_vs_baseline: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        # The seeds' interval alone would shrink with more seeds however few rows are held
        # out; the rows' sampling error is the larger part on a holdout of a few hundred.
        ci = combined_ci(self.mean, self.std, len(self.accuracies), self.row_se)
        object.__setattr__(self, "ci95", ci)

    @property
    def optimism(self) -> float:
        """How much the search's CV score overstated the holdout mean."""
        return self.search_cv - self.mean

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial": self.trial,
            "baseline": self.baseline,
            "search_cv": round(self.search_cv, 6),
            **self.stats_dict(),
            "row_se": round(self.row_se, 6),
            "p_vs_baseline": self.p_vs_baseline,
            "optimism": round(self.optimism, 6),
        }


@dataclass(frozen=True, kw_only=True)
class HoldoutEvaluation:
    """Every evaluated plan, best search CV first (the baseline last, if it is not the best)."""

    seeds: tuple[int, ...]
    train_rows: int
    holdout_rows: int
    epochs: int
    engine: str
    plans: tuple[PlanScore, ...]

    @property
    def winner(self) -> PlanScore:
        """The plan the search would ship: the best search CV score."""
        return max(self.plans, key=lambda p: (p.search_cv, -p.trial))

    @property
    def baseline(self) -> PlanScore | None:
        return next((p for p in self.plans if p.baseline), None)

    def verdict(self) -> str:
        """One line: the winner on the holdout, the optimism, and regularization against none."""
        w = self.winner
        head = f"trial {w.trial}: holdout {w.mean:.4f} {w.ci_text()}; the search " + (
            f"overstated it by {w.optimism:.4f}"
            if w.optimism >= 0
            else f"understated it by {-w.optimism:.4f}"
        )
        base = self.baseline
        if base is None or base is w:
            return head + ("" if base is None else " (the winner is the unregularized baseline)")
        difference = w.mean - base.mean
        p = w.p_vs_baseline
        if p is None:
            judged = "not judged against noise"
        elif p >= 0.05:
            judged = f"within noise, paired over rows p = {p:.3g}"
        else:
            judged = f"beyond noise, paired over rows p = {p:.3g}"
        if difference == 0:
            return f"{head}; regularization ties with none ({judged})"
        verb = "beats" if difference > 0 else "loses to"
        return f"{head}; regularization {verb} none by {abs(difference):.4f} ({judged})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "seeds": list(self.seeds),
            "train_rows": self.train_rows,
            "holdout_rows": self.holdout_rows,
            "epochs": self.epochs,
            "engine": self.engine,
            "plans": [p.to_dict() for p in self.plans],
            "verdict": self.verdict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HoldoutEvaluation:
        return cls(
            seeds=tuple(int(s) for s in data["seeds"]),
            train_rows=int(data["train_rows"]),
            holdout_rows=int(data["holdout_rows"]),
            epochs=int(data["epochs"]),
            engine=str(data["engine"]),
            plans=tuple(
                PlanScore(
                    trial=int(p["trial"]),
                    baseline=bool(p["baseline"]),
                    search_cv=float(p["search_cv"]),
                    accuracies=tuple(float(a) for a in p["accuracies"]),
                    row_se=float(p.get("row_se", 0.0)),
                    p_vs_baseline=p.get("p_vs_baseline"),
                )
                for p in data["plans"]
            ),
        )


def evaluate_on_holdout(
    trials: Sequence[optuna.trial.FrozenTrial],
    spec: StudySpec,
    holdout: FoldSet,
    engine: Engine,
    *,
    seeds: Sequence[int],
) -> HoldoutEvaluation:
    """Train every trial's plan on the search rows with each seed; score the held-out rows.

    ``holdout`` is the one-fold set of :func:`hpo.data.holdout_fold_set`. One engine call per
    seed and batch, every plan of a call with that seed (see :func:`hpo.results.rerun.rerun_trials`
    for why seeds are never mixed in a call).
    """
    plans = {t.number: stored_plan(t) for t in trials}
    missing = sorted(n for n, plan in plans.items() if plan is None)
    if missing:
        raise ValueError(f"trials {missing} have no recorded plan")
    scores: dict[int, list[float]] = {t.number: [] for t in trials}
    hits: dict[int, list[np.ndarray]] = {t.number: [] for t in trials}
    fold = holdout.repeats[0][0]
    size = max(1, engine.trials_per_batch)
    for s, seed in enumerate(seeds):
        for start in range(0, len(trials), size):
            chunk = trials[start : start + size]
            results = evaluate_plans(
                engine,
                [plans[t.number] for t in chunk],  # type: ignore[misc]
                holdout,
                model=spec.model,
                seeds=[seed] * len(chunk),
            )
            for trial, result in zip(chunk, results, strict=True):
                scores[trial.number].append(result.accuracy)
                hits[trial.number].append(result.predictions[fold.valid_rows] == fold.y_valid)
                _log.info(
                    "trial %d seed %d/%d: accuracy %.4f on the held-out rows",
                    trial.number,
                    s + 1,
                    len(seeds),
                    result.accuracy,
                )
    # Per held-out row, the share of seeds that got it right: the unit the rows' sampling
    # error and the paired comparison with the baseline are computed over.
    per_row = {n: np.mean(np.stack(h), axis=0) for n, h in hits.items()}
    base = next((t.number for t in trials if is_baseline(t)), None)
    return HoldoutEvaluation(
        seeds=tuple(seeds),
        train_rows=len(fold.train_rows),
        holdout_rows=len(fold.valid_rows),
        epochs=spec.model.epochs,
        engine=engine.name,
        plans=tuple(
            PlanScore(
                trial=t.number,
                baseline=is_baseline(t),
                search_cv=float(t.value or 0.0),
                accuracies=tuple(scores[t.number]),
                row_se=float(np.std(per_row[t.number], ddof=1) / np.sqrt(len(fold.valid_rows))),
                p_vs_baseline=None
                if base is None or base == t.number
                else rows_paired_p(per_row[t.number], per_row[base]),
            )
            for t in trials
        ),
    )


def _note_text(score: PlanScore, evaluation: HoldoutEvaluation) -> str:
    return (
        f"{_NOTE_HEADER}\n\n"
        f"Trained on all {evaluation.train_rows} search rows with {len(score.accuracies)} fresh "
        f"seed(s) ({evaluation.engine} engine, {evaluation.epochs} epochs), scored on the "
        f"{evaluation.holdout_rows} held-out rows: mean **{score.mean:.4f}**, 95% CI "
        f"{score.ci_text()}; the search scored {score.search_cv:.4f} (optimism "
        f"{score.optimism:+.4f}).\n\n{evaluation.verdict()}\n"
    )


def record_evaluation(study: optuna.Study, evaluation: HoldoutEvaluation) -> None:
    """Store on the study (``holdout:evaluation``) and as each trial's note section."""
    study.set_user_attr(HOLDOUT_EVALUATION_ATTR, evaluation.to_dict())
    _refresh_study_note(study)
    ids = {t.number: compat.trial_id(t) for t in study.get_trials(deepcopy=False)}
    for score in evaluation.plans:
        if score.trial not in ids:
            continue
        try:
            write_trial_note_section(
                study, ids[score.trial], _NOTE_HEADER, _note_text(score, evaluation)
            )
        except Exception as exc:  # the note is a convenience; the attr is the record
            _log.warning("trial %d: holdout note not written (%s)", score.trial, error_text(exc))


def _refresh_study_note(study: optuna.Study) -> None:
    """Bring hpo's own study note (the spec, led by the honest scores) up to date."""
    spec = stored_spec(study)
    if spec is not None:
        refresh_spec_note(study, spec)


def load_evaluation(study: optuna.Study) -> HoldoutEvaluation | None:
    """The study's latest ``hpo evaluate`` result, if any (an unreadable one is ignored)."""
    raw = study.user_attrs.get(HOLDOUT_EVALUATION_ATTR)
    if not isinstance(raw, Mapping):
        return None
    try:
        return HoldoutEvaluation.from_dict(raw)
    except (KeyError, TypeError, ValueError):
        _log.warning("study attr %r is not a holdout evaluation; ignored", HOLDOUT_EVALUATION_ATTR)
        return None
