"""The Python API: `hpo.optimize` on a DataFrame does what `hpo run` does on the CSV, scored
plans can be re-scored, built and loaded from Python, and errors are the CLI's messages."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest

import hpo
from tests.conftest import hpo as hpo_cli

# Differ between two runs of the same trials: wall time, and where/how the process ran.
_VOLATILE = {"seconds", "worker", "tensorflow", "keras"}


def _trials(url: str, name: str) -> list[dict[str, Any]]:
    study = optuna.load_study(study_name=name, storage=url)
    return [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "params": t.params,
            "attrs": {k: v for k, v in t.user_attrs.items() if k not in _VOLATILE},
        }
        for t in study.get_trials()
    ]


@pytest.mark.slow
def test_optimize_on_a_dataframe_stores_what_the_cli_stores_from_the_csv(
    tmp_path: Path, tiny_csv: Path, write_study: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    path = write_study(engine="reference", n_trials=3, epochs=2)
    cli = hpo_cli("run", path, "--storage", "sqlite:///cli.db")
    assert cli.exit_code == 0, cli.output
    capfd.readouterr()

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("hpo")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        study = hpo.optimize(path, data=pd.read_csv(tiny_csv), storage="sqlite:///api.db")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)

    assert isinstance(study, optuna.Study)
    api_trials = _trials("sqlite:///api.db", "tiny")
    assert [t["state"] for t in api_trials] == ["COMPLETE"] * 3
    assert api_trials == _trials("sqlite:///cli.db", "tiny")
    # Progress went to the library logger, not to stdout.
    assert capfd.readouterr().out == ""
    assert "study 'tiny': created; 3 trials budgeted, 3 to run" in records
    assert any(r.startswith("data: DataFrame (90 rows x 5 columns): 90 rows") for r in records)
    assert "ran 3 trials (0 pruned, 0 failed)" in " ".join(records)

    # The best plan, re-scored from Python with its trial's seed, gives the stored folds.
    best = study.best_trial
    plan = hpo.best_plan("tiny", storage="sqlite:///api.db")
    assert plan.to_dict() == best.user_attrs["plan"]
    score = hpo.evaluate_plan(path, plan, tiny_csv, seed=best.user_attrs["seed"])
    assert score.fold_accuracies == pytest.approx(best.user_attrs["fold_accuracies"], abs=1e-6)
    assert score.accuracy == pytest.approx(best.value, abs=1e-6)
    by_params = hpo.evaluate_plan(path, best.params, tiny_csv, seed=best.user_attrs["seed"])
    assert by_params.fold_accuracies == score.fold_accuracies


def test_build_model_gives_the_plans_network(write_study: Any) -> None:
    path = write_study()
    params = {
        "h1_placement": "kernel",
        "h1_penalty": "l1",
        "h1_l1": 1e-3,
        "h2_placement": "both",
        "h2_penalty": "l2",
        "h2_l2": 1e-4,
    }
    net = hpo.build_model(path, params, n_features=5, n_classes=3)
    dense = [layer for layer in net.layers if type(layer).__name__ == "Dense"]
    assert [layer.units for layer in dense] == [8, 4, 3]
    assert dense[0].kernel_regularizer.get_config()["l1"] == pytest.approx(1e-3)
    assert dense[0].activity_regularizer is None
    assert dense[1].kernel_regularizer.get_config()["l2"] == pytest.approx(1e-4)
    assert dense[1].activity_regularizer.get_config()["l2"] == pytest.approx(1e-4)
    assert net.loss == "sparse_categorical_crossentropy"


def test_a_dict_is_a_study(tmp_path: Path) -> None:
    spec = hpo.api.study_spec(
        {
            "study": {"name": "from-dict"},
            "data": {"dataset": "sklearn:wine", "target": "target"},
            "model": {"hidden": [4]},
        }
    )
    assert spec.name == "from-dict" and spec.model.hidden == (4,)


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (
            lambda p, csv: hpo.optimize(p, data=csv, n_trials=0),
            "{path}: `n_trials >= 1` must hold, but got (n_trials=0)",
        ),
        (
            lambda p, csv: hpo.optimize(p, data=pd.DataFrame({"a": [1, 2]})),
            "DataFrame (2 rows x 1 columns): target column 'kind' not found; columns are 'a'",
        ),
        (
            lambda p, csv: hpo.optimize({"study": {"name": "x"}}),
            "<dict>: the [data] table is required (path, url or dataset, and target)",
        ),
        (
            lambda p, csv: hpo.best_plan("nope"),
            "no study named 'nope' in sqlite:///hpo.db; studies there: other",
        ),
        (
            lambda p, csv: hpo.evaluate_plan(
                {"study": {"name": "x"}, "data": {"dataset": "sklearn:wine", "target": "target"}},
                {"h1_placement": "kernel", "h1_penalty": "l1", "h1_l1_strength": 0.5},
            ),
            'these are parameters of an "auto" search space: their alphas are positions in '
            "windows measured by the study; give the trained plan instead, "
            'hpo.best_plan("STUDY_NAME") (or a RegularizationPlan)',
        ),
    ],
    ids=["bad-budget", "frame-without-target", "dict-without-data", "no-study", "auto-params"],
)
def test_errors_raise_hpoerror_with_the_clis_message(
    write_study: Any, tiny_csv: Path, call: Any, expected: str
) -> None:
    path = write_study()
    if "nope" in expected:
        optuna.create_study(study_name="other", storage="sqlite:///hpo.db")
    with pytest.raises(hpo.HpoError) as raised:
        call(path, tiny_csv)
    assert str(raised.value) == expected.format(path=path)


_SCRIPT = """
import logging, sys
import hpo

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
{body}
"""


def _script(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "script.py").write_text(_SCRIPT.format(body=textwrap.dedent(body)))
    return subprocess.run(
        [sys.executable, "script.py"],
        cwd=tmp_path,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_a_script_without_a_main_guard_fails_with_the_fix_instead_of_hanging(
    tmp_path: Path, write_study: Any
) -> None:
    path = write_study(engine="reference", n_trials=1, epochs=1)
    done = _script(tmp_path, f"hpo.optimize({str(path)!r})\n")
    assert done.returncode == 1, done.stderr[-2000:]
    assert (
        "hpo.optimize ran again inside hpo's training process, which imports your script: "
        'call it under `if __name__ == "__main__":`'
    ) in done.stderr
    assert done.stderr.rstrip().splitlines()[-1] == (
        "hpo.errors.HpoError: the reference engine's training process ended before finishing "
        "a fold (killed, out of memory, or it failed at start-up: a script that calls "
        'hpo.optimize must do so under `if __name__ == "__main__":`, since the training '
        "process imports the script again)"
    )
    guarded = _script(
        tmp_path, f'if __name__ == "__main__":\n    hpo.optimize({str(path)!r}, name="guarded")\n'
    )
    assert guarded.returncode == 0, guarded.stderr[-2000:]


@pytest.mark.slow
def test_ctrl_c_stops_optimize_as_it_would_stop_the_script(
    tmp_path: Path, write_study: Any
) -> None:
    path = write_study(engine="stacked", n_trials=500, epochs=200)
    done = _script(
        tmp_path,
        f"""
        import os, signal, threading
        threading.Timer(8, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        try:
            hpo.optimize({str(path)!r})
        except KeyboardInterrupt:
            print("interrupted")
        study = __import__("optuna").load_study(study_name="tiny", storage="sqlite:///hpo.db")
        print(sorted({{t.state.name for t in study.trials}}))
        """,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "interrupted"
    assert "RUNNING" not in lines[1]


def test_data_warnings_reach_a_script_that_only_shows_warnings(
    tmp_path: Path, write_study: Any
) -> None:
    from tests.conftest import make_frame

    frame = make_frame()
    frame["leak"] = frame["kind"].map({"x": 0, "y": 1, "z": 2})
    frame.to_csv(tmp_path / "leaky.csv", index=False)
    path = write_study(engine="stacked", n_trials=1, epochs=1)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("hpo").addHandler(handler)
    try:
        hpo.optimize(path, data=tmp_path / "leaky.csv")
    finally:
        logging.getLogger("hpo").removeHandler(handler)
    warned = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert any(
        m.startswith(
            "warning (possible leak: the score may be inflated): column 'leak' alone predicts "
            "the target"
        )
        for m in warned
    )
