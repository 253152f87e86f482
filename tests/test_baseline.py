"""Trial 0 is the unregularized network, and every summary says what regularization bought."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from conftest import hpo
from optuna.trial import TrialState

from hpo.results.baseline import BaselineGain, Evidence
from hpo.results.rerun import RerunStats
from hpo.results.stats import paired_p
from hpo.space import RegularizationPlan
from hpo.study.record import is_baseline, stored_plan
from hpo.study.storage import open_storage

WriteStudy = Callable[..., Path]


def _study(url: str, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url))


def test_trial_0_trains_the_network_with_no_penalty_and_is_kept_out_of_tpe(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    result = hpo("run", write_study(engine="stacked", epochs=4, n_trials=4), "--storage", url)
    assert result.exit_code == 0, result.output
    assert "4 trials budgeted, 4 to run" in result.stderr
    trials = _study(url).get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    zero = trials[0]
    assert is_baseline(zero) and zero.user_attrs["baseline"] is True
    assert zero.params == {} and zero.distributions == {}  # nothing for TPE to fit
    assert stored_plan(zero) == RegularizationPlan.uniform(2)  # every coefficient 0
    assert all(not is_baseline(t) and t.params for t in trials[1:])
    # The run's own summary ends with the comparison.
    best = max(trials, key=lambda t: (t.value, -t.number))
    if best.number == 0:
        assert "is the best trial; no regularization tried so far beat it" in result.output
    else:
        gain = best.value - zero.value  # type: ignore[operator]
        assert (
            f"baseline: regularization {gain:+.4f} over the unregularized network "
            f"(trial 0, {zero.value:.4f}); not yet judged against noise: `hpo rerun tiny` "
            "reruns the best trials and the baseline with fresh seeds (or `hpo evaluate` with a "
            "holdout)"
        ) in result.output


@pytest.mark.slow  # a study with real training
def test_baseline_false_turns_it_off(write_study: WriteStudy, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'off.db'}"
    study_file = write_study("[search]\nbaseline = false\n", epochs=2, n_trials=2)
    result = hpo("run", study_file, "--storage", url)
    assert result.exit_code == 0, result.output
    trials = _study(url).get_trials(deepcopy=False)
    assert not any(is_baseline(t) for t in trials) and all(t.params for t in trials)
    assert "baseline:" not in result.output
    assert (
        json.loads(hpo("status", "tiny", "--storage", url, "--format", "json").stdout)["baseline"]
        is None
    )


def test_a_wrong_baseline_value_is_one_line(write_study: WriteStudy, tmp_path: Path) -> None:
    study_file = write_study('[search]\nbaseline = "yes"\n')
    result = hpo("run", study_file, "--storage", f"sqlite:///{tmp_path / 'x.db'}")
    assert result.exit_code == 1
    assert result.stderr.endswith(
        f"Error: {study_file}: `search.baseline` must be true or false, but got 'yes'\n"
    ), result.stderr


@pytest.mark.slow  # three small CLI runs with real training
def test_rerun_includes_the_baseline_and_best_and_status_judge_the_gain_by_it(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    assert hpo("run", write_study(epochs=3, n_trials=3), "--storage", url).exit_code == 0
    study = _study(url)
    best = study.best_trial
    rerun = hpo("rerun", "tiny", "--storage", url, "--top", "1", "--seeds", "3")
    assert rerun.exit_code == 0, rerun.output
    # --top 1: the best regularized trial, and the baseline on top of it.
    top = max((t for t in study.trials if t.number != 0), key=lambda t: (t.value, -t.number))
    expected = {top.number, 0}
    assert set(map(int, re.findall(r"^\s*(\d+)\s", rerun.output, re.MULTILINE))) >= expected
    reruns = {
        int(k.split(":")[1]): v for k, v in _study(url).user_attrs.items() if k.startswith("rerun:")
    }
    assert set(reruns) == expected
    status = json.loads(hpo("status", "tiny", "--storage", url, "--format", "json").stdout)
    if best.number == 0:
        assert status["baseline"]["gain"] == 0
        return
    a = RerunStats.from_dict(best.number, reruns[best.number])
    b = RerunStats.from_dict(0, reruns[0])
    assert a.seeds == b.seeds  # rerun together: compared seed by seed
    p = paired_p(a.accuracies, b.accuracies)
    assert status["baseline"]["judged_by"] == "reruns"
    assert status["baseline"]["p_value"] == pytest.approx(p)
    line = hpo("best", "tiny", "--storage", url).output
    assert f"reruns: {a.mean - b.mean:+.4f}, paired over seeds p = {p:.3g} -> " in line


@pytest.mark.parametrize(
    ("difference", "p_value", "verdict"),
    [
        (0.1, 0.001, "beyond noise"),
        (0.01, 0.4, "within noise"),
        (-0.1, 0.001, "the baseline is better, beyond noise"),
    ],
)
def test_the_verdict_follows_the_evidence(difference: float, p_value: float, verdict: str) -> None:
    evidence = Evidence(source="reruns", test="Welch", difference=difference, p_value=p_value)
    gain = BaselineGain(best=5, best_value=0.7, baseline=0, baseline_value=0.65, evidence=evidence)
    assert gain.line("s") == (
        "baseline: regularization +0.0500 over the unregularized network (trial 0, 0.6500); "
        f"reruns: {difference:+.4f}, Welch p = {p_value:.3g} -> {verdict}"
    )
    assert gain.beyond_noise is (p_value < 0.05)


@pytest.mark.slow  # two runs with real training
def test_a_study_stored_before_the_new_keys_existed_resumes(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    study_file = write_study(epochs=1, n_trials=1)
    assert hpo("run", study_file, "--storage", url).exit_code == 0
    study = _study(url)
    stored = study.user_attrs["hpo_spec"]
    for key in ("holdout", "seeds", "outer_folds", "outer_fold"):
        del stored["cv"][key]  # as an earlier hpo stored it
    del stored["search"]["baseline"]
    study.set_user_attr("hpo_spec", stored)
    result = hpo("run", study_file, "--storage", url, "--n-trials", "2")
    assert result.exit_code == 0, result.output
    assert "study 'tiny': resumed; 2 trials budgeted, 1 to run" in result.stderr


def test_a_one_seed_rerun_gives_a_number_and_no_verdict() -> None:
    evidence = Evidence(source="reruns", test="paired over seeds", difference=0.02, p_value=None)
    gain = BaselineGain(best=5, best_value=0.7, baseline=0, baseline_value=0.65, evidence=evidence)
    assert gain.line("wine") == (
        "baseline: regularization +0.0500 over the unregularized network (trial 0, 0.6500); "
        "reruns: +0.0200, not judged against noise (one seed gives no spread): "
        "`hpo rerun wine --seeds 3` tests it"
    )
    assert gain.beyond_noise is None
