"""`hpo rerun`: statistics of fresh-seed reruns, the noise verdict, and what lands on the study."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import NAME, BuiltStudy, hpo, load, one_line_error

from hpo.engines.contract import EvaluationResult
from hpo.results.rerun import RerunStats, compare, summarize, verdict
from hpo.space import RegularizationPlan


def stats(trial: int, accuracies: Sequence[float]) -> RerunStats:
    return RerunStats(
        trial=trial,
        original=None,
        accuracies=tuple(accuracies),
        seeds=tuple(range(len(accuracies))),
        repeats=1,
        folds=5,
        epochs=10,
        engine="reference",
    )


# --- statistics --------------------------------------------------------------------------------


def test_mean_std_and_t_interval() -> None:
    mean, std, ci = summarize([0.60, 0.62, 0.64])
    assert mean == pytest.approx(0.62)
    assert std == pytest.approx(0.02)  # sample std (n - 1)
    half = 4.302653 * 0.02 / math.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert ci == pytest.approx((0.62 - half, 0.62 + half), abs=1e-6)


def test_one_seed_gives_no_interval_and_no_verdict() -> None:
    mean, std, ci = summarize([0.5])
    assert mean == 0.5 and math.isnan(std) and ci is None
    assert verdict([stats(1, [0.5]), stats(2, [0.6])]) == [
        "one seed gives no spread: rerun with --seeds 2 or more to judge noise"
    ]


def test_the_verdict_separates_real_gaps_from_noise() -> None:
    best = stats(1, [0.700, 0.710, 0.690, 0.700, 0.705])
    worse = stats(2, [0.600, 0.610, 0.590, 0.600, 0.605])
    tied = stats(3, [0.700, 0.690, 0.710, 0.695, 0.700])
    comparisons = {c.other: c for c in compare([worse, tied, best])}
    assert set(comparisons) == {2, 3} and comparisons[2].best == 1
    assert comparisons[2].beyond_noise is True and comparisons[2].cis_overlap is False
    assert comparisons[3].beyond_noise is False and comparisons[3].cis_overlap is True
    assert comparisons[2].difference == pytest.approx(0.1)
    lines = verdict([worse, tied, best])
    p_tied, p_worse = comparisons[3].p_value, comparisons[2].p_value
    assert lines[0] == f"trial 1 vs trial 3: +0.0020, Welch p = {p_tied:.3g} >= 0.05: within noise"
    assert lines[1] == f"trial 1 vs trial 2: +0.1000, Welch p = {p_worse:.3g} < 0.05: beyond noise"
    assert lines[2] == "verdict: trial 1 beats trial 2 beyond noise, but not trial 3"
    assert verdict([best, worse])[-1] == "verdict: trial 1 is better than the others beyond noise"
    assert verdict([best, tied])[-1] == (
        "verdict: the top 2 do not differ beyond noise with 5 seeds; trial 1's lead may be luck"
    )


# --- batching, seeds and repeats, with an engine that only does arithmetic ---------------------


class ArithmeticEngine:
    """Accuracy = a function of (plan, seed), so every result can be traced back to its inputs."""

    name = "arithmetic"
    trials_per_batch = 8
    batch_seeded = False

    def __init__(self, plans: Sequence[RegularizationPlan]) -> None:
        self.index = {plan: i for i, plan in enumerate(plans)}
        self.calls: list[tuple[int, list[int], tuple[int, ...]]] = []
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def accuracy(self, plan: RegularizationPlan, seed: int) -> float:
        return 0.3 + 0.1 * self.index[plan] + (seed % 97) / 10_000

    def evaluate(
        self,
        plans: Sequence[RegularizationPlan],
        folds: Sequence[Any],
        *,
        model: Any,
        n_classes: int,
        seeds: Sequence[int],
        monitor: Any = None,
    ) -> list[EvaluationResult]:
        self.calls.append((len(plans), list(seeds), tuple(int(f.valid_rows[0]) for f in folds)))
        return [
            EvaluationResult(
                accuracy=self.accuracy(plan, seed),
                fold_accuracies=(self.accuracy(plan, seed),) * len(folds),
                predictions=np.zeros(0, np.int32),
                epochs=1,
                seconds=0.5,
            )
            for plan, seed in zip(plans, seeds, strict=True)
        ]


def test_reruns_give_every_trial_the_same_fresh_seeds_one_seed_per_call(built: BuiltStudy) -> None:
    from dataclasses import replace

    from hpo.data import load_dataset, make_fold_set
    from hpo.results.rerun import rerun_seeds, rerun_trials

    study = load(built.url)
    trials = sorted(study.get_trials(), key=lambda t: -t.value)[:2]
    plans = [RegularizationPlan.from_dict(t.user_attrs["plan"]) for t in trials]
    engine = ArithmeticEngine(plans)
    folds = make_fold_set(load_dataset(built.spec.data), replace(built.spec.cv, repeats=2))
    seeds = rerun_seeds(built.spec, 3)
    assert len(set(seeds)) == 3
    assert not set(seeds) & {t.user_attrs["seed"] for t in study.get_trials()}

    results = rerun_trials(trials, built.spec, folds, engine, seeds=seeds, batch=4)
    # One call per seed (both trials fit a batch of 4), each over both repeats of the folds.
    assert [n for n, _, _ in engine.calls] == [2] * 6
    for call in engine.calls:
        assert len(set(call[1])) == 1  # one seed per call: shared-order engines need it
    assert [call[1][0] for call in engine.calls[::2]] == seeds
    assert engine.calls[1][1] == [s + 100_003 for s in engine.calls[0][1]]
    assert engine.calls[0][2] != engine.calls[1][2]  # the second repeat reshuffled the rows
    batched = ArithmeticEngine(plans)
    rerun_trials(trials, built.spec, folds, batched, seeds=seeds[:1], batch=1)
    assert [n for n, _, _ in batched.calls] == [1, 1, 1, 1]  # batch=1: one trial per call
    for trial, plan, result in zip(trials, plans, results, strict=True):
        expected = [
            (engine.accuracy(plan, s) + engine.accuracy(plan, s + 100_003)) / 2 for s in seeds
        ]
        assert result.trial == trial.number and result.original == trial.value
        assert result.accuracies == pytest.approx(expected)
        assert result.seeds == tuple(seeds) and result.repeats == 2 and result.folds == 3
        assert result.seconds == pytest.approx(3 * 2 * 0.5)


def test_repeats_reach_the_folds_from_the_command_line(
    built: BuiltStudy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hpo.cli.results as commands

    url = built.copy(tmp_path)
    best = load(url).best_trial
    engine = ArithmeticEngine([RegularizationPlan.from_dict(best.user_attrs["plan"])])
    monkeypatch.setattr(commands, "make_engine", lambda spec: engine)
    result = hpo(
        "rerun", NAME, "--storage", url, "--trial", best.number, "--seeds", 3, "--repeats", 2
    )
    assert result.exit_code == 0, result.output
    assert (
        f"rerunning trial {best.number} with 3 fresh seeds x 2 repeats of 3-fold CV "
        "(arithmetic engine, 2 epochs)"
    ) in result.stderr
    assert [n for n, _, _ in engine.calls] == [1] * 6  # 3 seeds x 2 repeats
    assert engine.closed  # no training process is left behind
    record = load(url).user_attrs[f"rerun:{best.number}"]
    assert record["repeats"] == 2 and len(record["accuracies"]) == 3
    assert result.stdout.splitlines()[-2] == (
        f"trial {best.number}: rerun mean {record['mean']:.4f}, 95% CI "
        f"[{record['ci95'][0]:.4f}, {record['ci95'][1]:.4f}]"
    )


# --- the real thing ----------------------------------------------------------------------------


def _note_body(study: Any, trial_id: int) -> str:
    from optuna_dashboard._note import get_note_from_system_attrs

    attrs = study._storage.get_study_system_attrs(study._study_id)
    return str(get_note_from_system_attrs(attrs, trial_id)["body"])


@pytest.mark.slow  # real reruns: 2 trials x 2 seeds x 3 folds, in a training process
def test_rerun_records_its_statistics_on_the_study(built: BuiltStudy, tmp_path: Path) -> None:
    url = built.copy(tmp_path)
    trials = load(url).get_trials()
    # --top 2: the two best regularized trials, then the unregularized baseline (trial 0).
    top = sorted((t for t in trials if t.number != 0), key=lambda t: (-t.value, t.number))[:2]
    ranked = [*top, trials[0]]
    result = hpo("rerun", NAME, "--storage", url, "--top", 2, "--seeds", 2)
    assert result.exit_code == 0, result.output
    assert (
        f"rerunning trials {top[0].number}, {top[1].number}, 0 with 2 fresh seeds x 1 repeat "
        "of 3-fold CV (reference engine, 2 epochs)"
    ) in result.stderr

    study = load(url)
    records: dict[int, Mapping[str, Any]] = {
        t.number: study.user_attrs[f"rerun:{t.number}"] for t in ranked
    }
    seeds = {tuple(r["seeds"]) for r in records.values()}
    assert len(seeds) == 1 and len(next(iter(seeds))) == 2  # common seeds across trials
    for trial in ranked:
        r = records[trial.number]
        assert r["original"] == trial.value and r["repeats"] == 1 and r["folds"] == 3
        assert r["engine"] == "reference" and r["epochs"] == 2
        assert all(0.0 <= a <= 1.0 for a in r["accuracies"]) and len(r["accuracies"]) == 2
        assert r["mean"] == pytest.approx(statistics.mean(r["accuracies"]), abs=2e-6)
        assert r["std"] == pytest.approx(statistics.stdev(r["accuracies"]), abs=2e-6)
        lo, hi = r["ci95"]
        assert lo <= r["mean"] <= hi
        assert hi - lo == pytest.approx(2 * 12.7062 * r["std"] / math.sqrt(2), abs=1e-3)
        note = _note_body(study, trial._trial_id)
        assert note.startswith("### Rerun\n\n2 fresh seeds x 1 repeat(s) of 3-fold CV")
        assert f"mean **{r['mean']:.4f}**" in note

    lines = result.stdout.splitlines()
    assert lines[0].split() == ["trial", "search", "rerun", "mean", "std", "95%", "CI"]
    order = sorted(ranked, key=lambda t: (-records[t.number]["mean"], t.number))
    assert [int(line.split()[0]) for line in lines[1:4]] == [t.number for t in order]
    assert lines[4].startswith(f"trial {order[0].number} vs trial {order[1].number}: ")
    assert lines[5].startswith(f"trial {order[0].number} vs trial {order[2].number}: ")
    assert lines[6].startswith("verdict: ")
    assert lines[7] == (
        f"recorded as study user attrs rerun:{top[0].number}, rerun:{top[1].number}, rerun:0 "
        "(and as trial notes in optuna-dashboard)"
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ("--trial", "0", "--top", "2", "--seeds", "2"),
            "give either --trial N or --top K, not both",
        ),
        (("--top", "2", "--seeds", "0"), "--seeds must be a whole number >= 1, but got 0"),
        (
            ("--trial", "99", "--seeds", "2"),
            "study 'results' has no complete trial 99 with a recorded plan; "
            "complete trials: 0, 1, 2, 3, 4",
        ),
    ],
)
def test_bad_rerun_requests_are_one_line(
    built: BuiltStudy, args: tuple[str, ...], expected: str
) -> None:
    result = hpo("rerun", NAME, "--storage", built.url, *args)
    assert result.exit_code == 1
    assert result.stderr == f"Error: {expected}\n"


def test_a_study_without_a_spec_cannot_be_rerun(tmp_path: Path) -> None:
    import optuna

    url = f"sqlite:///{tmp_path}/plain.db"
    optuna.create_study(study_name="plain", storage=url)
    result = hpo("rerun", "plain", "--storage", url, "--seeds", "2")
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: study 'plain' has no stored spec (user attr hpo_spec); only studies created by "
        "`hpo run` or `hpo create` can be rerun\n"
    )


def test_overlapping_intervals_are_not_named_beside_a_significant_test() -> None:
    # Welch p < 0.05 while the two 95% intervals overlap: the verdict names the test only.
    best = stats(1, [0.74, 0.75, 0.76, 0.75, 0.74, 0.76])
    other = stats(2, [0.72, 0.735, 0.745, 0.73, 0.72, 0.74])
    (comparison,) = compare([best, other])
    assert comparison.cis_overlap and comparison.beyond_noise
    line = verdict([best, other])[0]
    assert (
        line
        == f"trial 1 vs trial 2: +0.0183, Welch p = {comparison.p_value:.3g} < 0.05: beyond noise"
    )
    assert "overlap" not in line


def test_a_rerun_with_fewer_seeds_does_not_replace_a_stronger_one(
    built: BuiltStudy, tmp_path: Path
) -> None:
    from hpo.results.rerun import record_reruns

    url = built.copy(tmp_path)
    study = load(url)
    three = RerunStats(
        trial=3,
        original=None,
        accuracies=(0.6, 0.62, 0.61),
        seeds=(7, 8, 9),
        repeats=1,
        folds=3,
        epochs=2,
        engine="reference",
    )
    record_reruns(study, [three])
    before = dict(load(url).user_attrs)
    result = hpo("rerun", NAME, "--storage", url, "--trial", 3, "--seeds", 1)
    one_line_error(
        result,
        "study 'results': trial 3 has a rerun with 3 seeds (user attr rerun:3); --seeds 1 would "
        "replace it with less evidence: give --seeds 3 or more",
    )
    assert load(url).user_attrs == before  # nothing trained, nothing replaced
