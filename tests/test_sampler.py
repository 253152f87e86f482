"""hpo's own cost per trial on the claim path: TPE over a bounded snapshot, one read per batch,
claims that read nothing they do not need under the lock, a batch's attributes in one write.

Real Optuna studies on real SQLite files.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.samplers._tpe.sampler import _split_trials

from hpo.errors import HpoError
from hpo.space import suggest_plan
from hpo.spec import spec_from_dict
from hpo.study import budget
from hpo.study.budget import claim_trials
from hpo.study.bulk import record_sampled
from hpo.study.creation import create_or_load_study, make_sampler
from hpo.study.heartbeat import Heartbeat
from hpo.study.record import CrashPolicy
from hpo.study.sampler import KEPT_BEST, HistorySampler, note_sampled, sampling_batch
from hpo.study.storage import StorageGuard, open_storage

SPEC = {
    "study": {"name": "s"},
    "data": {"dataset": "sklearn:wine", "target": "target"},
    "sampler": {"seed": 1, "max_history": 300},
    "search": {"l1": [1e-6, 0.1], "l2": [1e-6, 0.1]},
}
TrialState = optuna.trial.TrialState


def _finished(n: int, *, running: int = 0) -> list[optuna.trial.FrozenTrial]:
    """``n`` finished trials over one float (value = a bumpy function of it) and ``running``
    RUNNING ones, numbered in order."""
    dist = optuna.distributions.FloatDistribution(0.0, 1.0)
    trials = []
    for i in range(n + running):
        x = (i * 0.6180339) % 1.0
        trials.append(
            optuna.trial.create_trial(
                state=TrialState.COMPLETE if i < n else TrialState.RUNNING,
                value=1.0 - abs(x - 0.3) if i < n else None,
                params={"x": x},
                distributions={"x": dist},
            )
        )
        trials[-1].number = i
    return trials


def test_a_bounded_history_keeps_the_best_the_recent_and_every_running_trial() -> None:
    trials = _finished(1000, running=5)
    kept = HistorySampler(max_history=300).bounded(trials)
    finished = [t for t in kept if t.state == TrialState.COMPLETE]
    assert len(finished) == 300
    best = sorted(trials[:1000], key=lambda t: -float(t.value or 0))[:KEPT_BEST]
    assert {t.number for t in best} <= {t.number for t in finished}
    others = sorted({t.number for t in finished} - {t.number for t in best})
    assert others == sorted(set(range(1000)) - {t.number for t in best})[-(300 - KEPT_BEST) :]
    assert [t.number for t in kept if t.state == TrialState.RUNNING] == list(range(1000, 1005))
    assert HistorySampler(max_history=0).bounded(trials) == trials
    assert HistorySampler(max_history=2000).bounded(trials) == trials


def test_tpe_good_set_is_the_same_with_and_without_the_bound() -> None:
    study = optuna.create_study(direction="maximize")
    trials = _finished(900)
    view = HistorySampler(max_history=300).bounded(trials)
    gamma = optuna.samplers._tpe.sampler.default_gamma
    full_below, _ = _split_trials(study, trials, gamma(len(trials)))
    view_below, view_above = _split_trials(study, view, gamma(len(view)))
    assert [t.number for t in view_below] == [t.number for t in full_below]
    assert len(view_below) == KEPT_BEST and len(view_above) == 300 - KEPT_BEST


def test_max_history_below_the_good_set_bound_is_refused() -> None:
    with pytest.raises(HpoError) as info:
        spec_from_dict({**SPEC, "sampler": {"max_history": 100}}, origin="s.toml")
    assert str(info.value) == (
        "s.toml: [sampler] `max_history` must be 0 (no bound) or at least 250, but got "
        "(max_history=100)"
    )
    spec = spec_from_dict({**SPEC, "sampler": {"max_history": 0}}, origin="s.toml")
    sampler = make_sampler(spec)
    assert isinstance(sampler, HistorySampler) and sampler.max_history == 0


def _study(tmp_path: Path, stored: int) -> tuple[optuna.Study, Any]:
    spec = spec_from_dict(SPEC, origin="s.toml")
    study, _ = create_or_load_study(spec, open_storage(f"sqlite:///{tmp_path}/s.db"))
    scratch = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    made = []
    for i in range(stored):
        trial = scratch.ask()
        suggest_plan(trial, spec.search)
        made.append(
            optuna.trial.create_trial(
                params=trial.params, distributions=trial.distributions, value=0.5 + i * 1e-4
            )
        )
        scratch.tell(trial, 0.5)
    study.add_trials(made)
    return study, spec


@pytest.mark.parametrize("pruner", ["none", "hyperband"])  # Hyperband wraps the study per call
def test_a_batch_reads_the_history_once_and_lies_about_its_own_members(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pruner: str
) -> None:
    study, spec = _study(tmp_path, stored=40)
    if pruner == "hyperband":
        study.pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=10)
    reads = []
    real_read = HistorySampler._read

    def counted(s: optuna.Study) -> list[optuna.trial.FrozenTrial]:
        reads.append(1)
        return real_read(s)

    monkeypatch.setattr(HistorySampler, "_read", staticmethod(counted))
    trials = [study.ask() for _ in range(4)]
    with sampling_batch(study):
        for trial in trials:
            suggest_plan(trial, spec.search)
            note_sampled(study, trial)
        view = study.sampler._local.view
        # Each sampled member is in the snapshot with its parameters, as the constant liar's.
        for trial in trials:
            (member,) = [t for t in view.trials if t.number == trial.number]
            assert member.state == TrialState.RUNNING and member.params == trial.params
    assert len(reads) == 1
    # Outside a batch every trial reads afresh.
    for trial in [study.ask() for _ in range(2)]:
        suggest_plan(trial, spec.search)
    assert len(reads) == 3


def test_a_claim_with_nothing_queued_reads_no_trials_under_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study, _ = _study(tmp_path, stored=30)
    storage = study._storage
    policy = CrashPolicy()
    url = f"sqlite:///{tmp_path}/s.db"
    got: list[optuna.Trial] = []
    # The queued baseline first: that claim looks for it.
    claim_trials(
        study,
        n_trials=100,
        size=1,
        policy=policy,
        heartbeat=Heartbeat(study, policy, StorageGuard(url)),
        judge_stale=False,
        into=got,
    )
    assert got[0].number == 0 and got[0].user_attrs.get("baseline") is True
    reads: list[int] = []
    real = type(storage).get_all_trials

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        reads.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(storage), "get_all_trials", counted)
    more: list[optuna.Trial] = []
    claim = claim_trials(
        study,
        n_trials=100,
        size=8,
        policy=policy,
        heartbeat=Heartbeat(study, policy, StorageGuard(url)),
        judge_stale=False,
        into=more,
    )
    assert len(claim.trials) == 8 and reads == []
    assert budget._ask is not None  # the one place trials are made (tests hook it)


def test_a_batch_of_attributes_is_one_write_whole_or_not_at_all(
    tmp_path: Path,
) -> None:
    study, _ = _study(tmp_path, stored=0)
    first, second = study.ask(), study.ask()
    record_sampled(study._storage, {}, {first._trial_id: {"a": 1, "b": [1, 2]}})
    stored = study._storage.get_trial(first._trial_id).user_attrs
    assert stored == {"baseline": True, "a": 1, "b": [1, 2]}  # trial 0 is the queued baseline
    study.tell(second, 0.5)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        record_sampled(study._storage, {}, {first._trial_id: {"c": 3}, second._trial_id: {"c": 3}})
    assert "c" not in study._storage.get_trial(first._trial_id).user_attrs  # none of it
    # Written again alone (the worker's fallback), the running trial takes it; a value
    # written twice is replaced, not doubled.
    record_sampled(study._storage, {}, {first._trial_id: {"c": 3, "a": 2}})
    stored = study._storage.get_trial(first._trial_id).user_attrs
    assert stored == {"baseline": True, "a": 2, "b": [1, 2], "c": 3}
    assert "c" not in study._storage.get_trial(second._trial_id).user_attrs


def test_a_batch_proposes_exactly_what_trial_by_trial_sampling_proposes(tmp_path: Path) -> None:
    """One snapshot, one search space and one fit of the good trials per batch are shortcuts:
    the same seed gives the same parameters as sampling each trial on its own reads."""
    import shutil

    _study(tmp_path, stored=300)  # past the bound: the snapshot is cut too
    (tmp_path / "copy").mkdir()
    shutil.copy(tmp_path / "s.db", tmp_path / "copy" / "s.db")
    spec = spec_from_dict(SPEC, origin="s.toml")
    proposals = []
    for folder, batched in ((tmp_path, True), (tmp_path / "copy", False)):
        study = optuna.load_study(
            study_name="s", storage=f"sqlite:///{folder}/s.db", sampler=make_sampler(spec)
        )
        trials = [study.ask() for _ in range(5)]
        with sampling_batch(study) if batched else contextlib.nullcontext():
            for trial in trials:
                suggest_plan(trial, spec.search)
                note_sampled(study, trial)
        proposals.append([t.params for t in trials])
    assert proposals[0] == proposals[1]
    assert len({str(p) for p in proposals[0]}) == 5  # and the liar keeps them apart


def test_a_batch_of_attributes_on_postgresql(pg_url: str) -> None:
    study = optuna.create_study(storage=open_storage(pg_url))
    first, second = study.ask(), study.ask()
    record_sampled(study._storage, {}, {first._trial_id: {"a": 1}, second._trial_id: {"a": 2}})
    record_sampled(study._storage, {}, {first._trial_id: {"a": 3, "b": "x"}})
    assert study._storage.get_trial(first._trial_id).user_attrs == {"a": 3, "b": "x"}
    assert study._storage.get_trial(second._trial_id).user_attrs == {"a": 2}
    study.tell(second, 1.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        record_sampled(study._storage, {}, {first._trial_id: {"c": 1}, second._trial_id: {"c": 1}})
    assert "c" not in study._storage.get_trial(first._trial_id).user_attrs
