"""The stored-key table in hpo.study.record documents every key hpo writes."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from hpo.engines.contract import EvaluationResult
from hpo.space import RegularizationPlan
from hpo.study import record


def _documented() -> set[str]:
    """Every ``key`` in double backticks in the first column of the module's tables."""
    doc = record.__doc__ or ""
    keys: set[str] = set()
    for line in doc.splitlines():
        first = line.split("  ")[0]
        keys.update(re.findall(r"``([^`]+)``", first))
    return keys


def _matches(key: str, documented: set[str]) -> bool:
    """``key`` is documented literally or by a ``prefix<...>`` pattern."""
    return key in documented or any(
        "<" in doc and key.startswith(doc.split("<")[0]) for doc in documented
    )


def test_every_key_a_trial_records_is_documented() -> None:
    result = EvaluationResult(
        accuracy=0.5,
        fold_accuracies=(0.5, 0.5),
        predictions=np.zeros(4, np.int32),
        epochs=3,
        seconds=1.0,
        diverged=True,
        diverged_folds=(1,),
        diverged_by_epoch=25,
        seed=7,
        shared_order=True,
        trials_in_batch=8,
        xla_kernels=True,
        repeat_accuracies=(0.5, 0.6),
    )
    written = {
        **record.result_attrs(result, engine="stacked", versions={"tensorflow": "x", "keras": "y"}),
        **record.sampled_attrs(RegularizationPlan.uniform(2, l1=1e-4), 7, "host:1"),
    }
    documented = _documented()
    missing = sorted(k for k in written if not _matches(k, documented))
    assert missing == []


def test_every_key_constant_is_documented() -> None:
    documented = _documented()
    constants = {
        name: value
        for name, value in vars(record).items()
        if name.endswith(("_ATTR", "_PREFIX")) and isinstance(value, str)
    }
    assert len(constants) >= 12
    missing = sorted(
        f"{name}={value!r}"
        for name, value in constants.items()
        if not _matches(value, documented) and not any(d.startswith(value) for d in documented)
    )
    assert missing == []


@pytest.mark.slow  # a real run: TensorFlow and a stacked batch
def test_a_batch_trials_duration_is_its_share_of_the_batch(
    write_study: Callable[..., Path], tmp_path: Path
) -> None:
    import optuna
    from conftest import hpo

    result = hpo("run", write_study(engine="stacked", epochs=2, n_trials=4))
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/hpo.db")
    batched = 0
    for trial in study.trials:
        assert trial.datetime_start is not None and trial.datetime_complete is not None
        duration = (trial.datetime_complete - trial.datetime_start).total_seconds()
        attrs = trial.user_attrs
        # What optuna-dashboard shows as Duration: the trial's own (rounded) seconds.
        assert abs(duration - attrs["seconds"]) < 0.002, (trial.number, duration, attrs)
        if attrs.get("trials_in_batch", 1) > 1:
            batched += 1
            share = attrs["batch_seconds"] / attrs["trials_in_batch"]
            assert abs(share - attrs["seconds"]) < 0.002
    assert batched >= 2  # a batch of two trained (the tiny study's trials_per_batch = 2)
