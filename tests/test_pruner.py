"""``[pruner]``: which Optuna pruner stops poor trials at the engine's checkpoints.

Bad settings are one line through the CLI; each pruner is built with its settings; the stored
spec gives a worker the study's pruner; a resumed study may change it (cost, not protocol); and
real runs on the stacked engine prune, with pruned members stopping early.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import hpo, one_line_error, study_toml, tiny_data_table, with_extra
from optuna.trial import TrialState

from hpo import load_spec, spec_from_dict, spec_to_dict
from hpo.results.spec_text import pruner_text, spec_markdown, spec_sections
from hpo.spec import PrunerSpec
from hpo.study.creation import create_or_load_study, join_study, make_pruner, update_stored_spec
from hpo.study.record import SPEC_ATTR
from hpo.study.storage import open_storage

WriteStudy = Callable[..., Path]
_PRUNER_NAMES = "'none', 'median', 'percentile', 'successive_halving', 'hyperband'"


@pytest.fixture
def pruned_study(tmp_path: Path, tiny_csv: Path) -> Callable[..., Path]:
    """A study file over ``tiny.csv`` with ``[engine]`` settings and a ``[pruner]`` table."""

    def write(
        pruner: str = "",
        *,
        checkpoint_every: int = 2,
        engine: str = "stacked",
        epochs: int = 8,
        n_trials: int = 4,
        batch: int = 4,
        name: str = "pruned",
        extra: str = "",
    ) -> Path:
        engine_table = f'name = "{engine}"\ntrials_per_batch = {batch}'
        if checkpoint_every:
            engine_table += f"\ncheckpoint_every = {checkpoint_every}"
        text = study_toml(
            name=name,
            data_table=tiny_data_table(tiny_csv),
            epochs=epochs,
            engine=engine_table,
            n_trials=n_trials,
        )
        if pruner:
            text += "\n[pruner]\n" + textwrap.dedent(pruner)
        text = with_extra(text, extra)
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        return path

    return write


# --- every bad input: one line naming the key, through the CLI -------------------------------


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            'name = "bogus"',
            f"[pruner] `name` must be one of {_PRUNER_NAMES}, but got 'bogus'",
        ),
        (
            'name = "wilcoxon"',
            '[pruner] `name = "wilcoxon"`: the Wilcoxon pruner does not fit hpo\'s checkpoints: '
            "it treats steps as independent instances (one score each, the objective their "
            "mean), but a checkpoint reports the running out-of-fold accuracy of a learning "
            'curve; use "median", "percentile", "successive_halving" or "hyperband"',
        ),
        (
            'name = "median"\npercentile = 25.0',
            "[pruner] `percentile` is not a setting of the 'median' pruner (its settings: "
            "n_startup_trials, n_warmup_steps, interval_steps, n_min_trials); remove it, or set "
            "`name` to 'percentile'",
        ),
        (
            'name = "none"\nn_warmup_steps = 4',
            "[pruner] `n_warmup_steps` is not a setting of the 'none' pruner (it has no "
            "settings); remove it, or set `name` to 'median' or 'percentile'",
        ),
        (
            'name = "hyperband"\nmin_early_stopping_rate = 1',
            "[pruner] `min_early_stopping_rate` is not a setting of the 'hyperband' pruner (its "
            "settings: min_resource, max_resource, reduction_factor, bootstrap_count); remove "
            "it, or set `name` to 'successive_halving'",
        ),
        (
            'name = "percentile"',
            '[pruner] `name = "percentile"` needs `percentile`: the top share of trials kept at '
            "each checkpoint, in percent (e.g. 25.0 keeps the best quarter)",
        ),
        (
            'name = "percentile"\npercentile = 100',
            "[pruner] `percentile` is the top share of trials kept, in percent: "
            "`0 < percentile < 100` must hold, but got (percentile=100)",
        ),
        (
            'name = "percentile"\npercentile = 0.0',
            "[pruner] `percentile` is the top share of trials kept, in percent: "
            "`0 < percentile < 100` must hold, but got (percentile=0.0)",
        ),
        (
            'name = "median"\nn_startup_trials = -1',
            "[pruner] `n_startup_trials >= 0` must hold, but got (n_startup_trials=-1)",
        ),
        (
            'name = "median"\nn_warmup_steps = -2',
            "[pruner] `n_warmup_steps >= 0` must hold, but got (n_warmup_steps=-2)",
        ),
        (
            'name = "median"\ninterval_steps = 0',
            "[pruner] `interval_steps >= 1` must hold, but got (interval_steps=0)",
        ),
        (
            'name = "median"\nn_min_trials = 0',
            "[pruner] `n_min_trials >= 1` must hold, but got (n_min_trials=0)",
        ),
        (
            "n_warmup_steps = 4",  # the default pruner is "none"
            "[pruner] `n_warmup_steps` is not a setting of the 'none' pruner (it has no "
            "settings); remove it, or set `name` to 'median' or 'percentile'",
        ),
        (
            'name = "successive_halving"\nmin_resource = 0',
            "[pruner] `min_resource >= 1` must hold, but got (min_resource=0)",
        ),
        (
            'name = "successive_halving"\nreduction_factor = 1',
            "[pruner] `reduction_factor >= 2` must hold, but got (reduction_factor=1)",
        ),
        (
            'name = "successive_halving"\nmin_early_stopping_rate = -1',
            "[pruner] `min_early_stopping_rate >= 0` must hold, but got "
            "(min_early_stopping_rate=-1)",
        ),
        (
            'name = "hyperband"\nbootstrap_count = -1',
            "[pruner] `bootstrap_count >= 0` must hold, but got (bootstrap_count=-1)",
        ),
        (
            'name = "hyperband"\nmax_resource = 0',
            "[pruner] `max_resource >= 1` must hold, but got (max_resource=0)",
        ),
        (
            'name = "hyperband"\nmin_resource = 4\nmax_resource = 2',
            "[pruner] `max_resource >= min_resource` must hold, but got (max_resource=2, "
            "min_resource=4)",
        ),
        (
            'name = "hyperband"\nreduction_factr = 2',
            "unknown key `pruner.reduction_factr` (did you mean `reduction_factor`?); allowed: "
            "name, n_startup_trials, n_warmup_steps, interval_steps, n_min_trials, percentile, "
            "min_resource, max_resource, reduction_factor, min_early_stopping_rate, "
            "bootstrap_count",
        ),
        (
            'name = "median"\nn_warmup_steps = 2.5',
            "`pruner.n_warmup_steps` must be an integer, but got 2.5",
        ),
        (
            'name = "hyperband"\nmax_resource = "auto"',
            "`pruner.max_resource` must be an integer, but got 'auto'",
        ),
        (
            'name = "percentile"\npercentile = true',
            "`pruner.percentile` must be a number, but got True",
        ),
        ("name = 3", "`pruner.name` must be a string, but got 3"),
    ],
)
def test_bad_pruner_settings_are_one_line_naming_the_key(
    pruned_study: Callable[..., Path], table: str, message: str
) -> None:
    path = pruned_study(table)
    one_line_error(hpo("check", path, "--no-estimate"), f"{path}: {message}")


_NO_CHECKPOINTS = (
    '[pruner] name = "{name}" acts at checkpoints, but [engine] checkpoint_every is 0 (none); '
    "set it (in epochs on the stacked engine, e.g. 25; in folds on the reference engine, e.g. 1) "
    'or use name = "none"'
)


@pytest.mark.parametrize(
    ("table", "name"),
    [
        ('name = "median"', "median"),
        ('name = "percentile"\npercentile = 25.0', "percentile"),
        ('name = "hyperband"', "hyperband"),
    ],
)
def test_a_pruner_without_checkpoints_is_refused(
    pruned_study: Callable[..., Path], table: str, name: str
) -> None:
    path = pruned_study(table, checkpoint_every=0)
    for command in (("check", path, "--no-estimate"), ("run", path, "--storage", "sqlite:///x.db")):
        one_line_error(hpo(*command), f"{path}: {_NO_CHECKPOINTS.format(name=name)}")
    assert not Path("x.db").exists()  # refused before any storage was made


def test_the_default_is_no_pruning_with_or_without_checkpoints(
    pruned_study: Callable[..., Path],
) -> None:
    """Chosen by bench/pruning.py: no pruner reached a plan within noise of the best sooner."""
    for every in (0, 2):
        spec = load_spec(pruned_study(checkpoint_every=every))
        assert spec.pruner == PrunerSpec(name="none")
        assert isinstance(make_pruner(spec), optuna.pruners.NopPruner)
        assert spec_to_dict(spec)["pruner"] == {"name": "none"}
        assert spec_from_dict(spec_to_dict(spec), origin=spec.source) == spec
    assert pruner_text(load_spec(pruned_study(checkpoint_every=0))) == "off (no checkpoints)"


# --- each pruner, built with its settings ----------------------------------------------------


def _attrs(pruner: Any, names: dict[str, Any]) -> dict[str, Any]:
    return {name: getattr(pruner, f"_{name}") for name in names}


@pytest.mark.parametrize(
    ("table", "engine", "kind", "expected", "text"),
    [
        (
            "",  # the default: checkpoints record the learning curves, nothing is pruned
            "stacked",
            optuna.pruners.NopPruner,
            {},
            "none (checkpoints only record progress)",
        ),
        (
            'name = "median"',  # Optuna's defaults
            "stacked",
            optuna.pruners.MedianPruner,
            {"n_startup_trials": 5, "n_warmup_steps": 0, "interval_steps": 1, "n_min_trials": 1},
            "median (n_startup_trials 5, n_warmup_steps 0, interval_steps 1, n_min_trials 1; "
            "steps in epochs)",
        ),
        (
            'name = "median"\nn_startup_trials = 2\nn_warmup_steps = 4\ninterval_steps = 2\n'
            "n_min_trials = 3",
            "stacked",
            optuna.pruners.MedianPruner,
            {"n_startup_trials": 2, "n_warmup_steps": 4, "interval_steps": 2, "n_min_trials": 3},
            "median (n_startup_trials 2, n_warmup_steps 4, interval_steps 2, n_min_trials 3; "
            "steps in epochs)",
        ),
        (
            'name = "percentile"\npercentile = 25.0\nn_warmup_steps = 2',
            "stacked",
            optuna.pruners.PercentilePruner,
            {"percentile": 25.0, "n_startup_trials": 5, "n_warmup_steps": 2},
            "percentile (percentile 25, n_startup_trials 5, n_warmup_steps 2, interval_steps 1, "
            "n_min_trials 1; steps in epochs)",
        ),
        (
            'name = "successive_halving"',  # the first rung: the first checkpoint
            "stacked",
            optuna.pruners.SuccessiveHalvingPruner,
            {
                "min_resource": 2,
                "reduction_factor": 4,
                "min_early_stopping_rate": 0,
                "bootstrap_count": 0,
            },
            "successive_halving (min_resource 2, reduction_factor 4, min_early_stopping_rate 0, "
            "bootstrap_count 0; steps in epochs)",
        ),
        (
            'name = "successive_halving"\nmin_resource = 4\nreduction_factor = 2\n'
            "min_early_stopping_rate = 1\nbootstrap_count = 2",
            "stacked",
            optuna.pruners.SuccessiveHalvingPruner,
            {
                "min_resource": 4,
                "reduction_factor": 2,
                "min_early_stopping_rate": 1,
                "bootstrap_count": 2,
            },
            "successive_halving (min_resource 4, reduction_factor 2, min_early_stopping_rate 1, "
            "bootstrap_count 2; steps in epochs)",
        ),
        (
            'name = "hyperband"',  # from the first checkpoint to the whole training (8 epochs)
            "stacked",
            optuna.pruners.HyperbandPruner,
            {"min_resource": 2, "max_resource": 8, "reduction_factor": 3, "bootstrap_count": 0},
            "hyperband (min_resource 2, max_resource 8, reduction_factor 3, bootstrap_count 0; "
            "steps in epochs)",
        ),
        (
            'name = "hyperband"\nmin_resource = 1\nmax_resource = 6\nreduction_factor = 2\n'
            "bootstrap_count = 1",
            "stacked",
            optuna.pruners.HyperbandPruner,
            {"min_resource": 1, "max_resource": 6, "reduction_factor": 2, "bootstrap_count": 1},
            "hyperband (min_resource 1, max_resource 6, reduction_factor 2, bootstrap_count 1; "
            "steps in epochs)",
        ),
        (
            'name = "hyperband"',  # the reference engine's steps are folds: 3 of them
            "reference",
            optuna.pruners.HyperbandPruner,
            {"min_resource": 2, "max_resource": 3, "reduction_factor": 3, "bootstrap_count": 0},
            "hyperband (min_resource 2, max_resource 3, reduction_factor 3, bootstrap_count 0; "
            "steps in folds)",
        ),
        (
            'name = "none"',
            "stacked",
            optuna.pruners.NopPruner,
            {},
            "none (checkpoints only record progress)",
        ),
    ],
)
def test_each_pruner_is_built_with_its_settings(
    pruned_study: Callable[..., Path],
    table: str,
    engine: str,
    kind: type,
    expected: dict[str, Any],
    text: str,
) -> None:
    spec = load_spec(pruned_study(table, engine=engine))
    pruner = make_pruner(spec)
    assert type(pruner) is kind
    assert _attrs(pruner, expected) == expected
    assert pruner_text(spec) == text
    # Stored and read back (what a worker does), the spec and so the pruner are the same.
    stored = spec_to_dict(spec)
    assert spec_from_dict(stored, origin=spec.source) == spec
    assert set(stored["pruner"]) == {"name", *spec.pruner.given()}


def test_the_report_and_the_dashboard_note_show_the_pruner(
    pruned_study: Callable[..., Path],
) -> None:
    spec = load_spec(pruned_study('name = "median"\nn_warmup_steps = 4'))
    text = (
        "median (n_startup_trials 5, n_warmup_steps 4, interval_steps 1, n_min_trials 1; "
        "steps in epochs)"
    )
    engine = dict(dict(spec_sections(spec))["Engine"])
    assert engine["pruner"] == text
    assert f"| pruner | {text} |" in spec_markdown(spec)


def test_hpo_check_shows_the_pruner(pruned_study: Callable[..., Path]) -> None:
    result = hpo("check", pruned_study('name = "successive_halving"'), "--no-estimate")
    assert result.exit_code == 0, result.output
    assert (
        "pruner: successive_halving (min_resource 2, reduction_factor 4, "
        "min_early_stopping_rate 0, bootstrap_count 0; steps in epochs)"
    ) in result.stdout.splitlines()


def test_the_percentile_pruner_keeps_the_top_share(pruned_study: Callable[..., Path]) -> None:
    """`percentile = 25` keeps the best quarter: a trial below the 75th percentile of the
    finished trials' values at a step is pruned (Optuna's convention, as documented)."""
    spec = load_spec(pruned_study('name = "percentile"\npercentile = 25.0\nn_startup_trials = 1'))
    study = optuna.create_study(direction="maximize", pruner=make_pruner(spec))
    for value in (0.1, 0.2, 0.3, 0.4, 0.5):
        study.add_trial(
            optuna.trial.create_trial(
                value=value, intermediate_values={2: value}, state=TrialState.COMPLETE
            )
        )
    for value, pruned in ((0.35, True), (0.45, False)):
        trial = study.ask()
        trial.report(value, 2)
        assert bool(trial.should_prune()) is pruned


# --- stored on the study: workers get it; a resume may change it -----------------------------


def test_a_worker_gets_the_study_pruner_from_the_stored_spec(
    pruned_study: Callable[..., Path], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    path = pruned_study('name = "hyperband"\nreduction_factor = 2')
    result = hpo("create", path, "--storage", url)
    assert result.exit_code == 0, result.output
    study, spec = join_study("pruned", open_storage(url, access="write"), worker="host:1")
    assert spec.pruner == PrunerSpec(name="hyperband", reduction_factor=2)
    assert type(study.pruner) is optuna.pruners.HyperbandPruner
    assert _attrs(study.pruner, {"min_resource": 0, "max_resource": 0, "reduction_factor": 0}) == {
        "min_resource": 2,
        "max_resource": 8,
        "reduction_factor": 2,
    }
    status = hpo("status", "pruned", "--storage", url)
    assert status.exit_code == 0, status.output
    assert (
        "pruner: hyperband (min_resource 2, max_resource 8, reduction_factor 2, "
        "bootstrap_count 0; steps in epochs)"
    ) in status.output.splitlines()
    shown = json.loads(hpo("status", "pruned", "--storage", url, "--format", "json").stdout)
    assert shown["pruner"].startswith("hyperband (")


def test_a_resumed_study_may_change_its_pruner_and_stores_the_new_one(
    pruned_study: Callable[..., Path], tmp_path: Path
) -> None:
    """Pruning changes what a study costs, not what a finished trial's score means: not a
    protocol change. The stored spec follows, so workers joining later prune the new way."""
    storage = open_storage(f"sqlite:///{tmp_path / 'r.db'}")
    first = load_spec(pruned_study('name = "median"\nn_warmup_steps = 4'))
    study, created = create_or_load_study(first, storage)
    assert created and type(study.pruner) is optuna.pruners.MedianPruner
    # A setting dropped from the file counts as a change too (it falls back to the default).
    plain = load_spec(pruned_study('name = "median"'))
    assert update_stored_spec(study, plain) == [("pruner.n_warmup_steps", 4, None)]
    second = load_spec(pruned_study('name = "successive_halving"\nreduction_factor = 2'))
    study, created = create_or_load_study(second, storage)  # no protocol error
    assert not created and type(study.pruner) is optuna.pruners.SuccessiveHalvingPruner
    assert update_stored_spec(study, second) == [
        ("pruner.name", "median", "successive_halving"),
        ("pruner.reduction_factor", None, 2),
    ]
    assert study.user_attrs[SPEC_ATTR]["pruner"] == {
        "name": "successive_halving",
        "reduction_factor": 2,
    }
    _, spec = join_study("pruned", storage, worker="host:2")
    assert spec.pruner == second.pruner


def test_a_study_stored_before_pruner_existed_keeps_the_median_pruner(
    pruned_study: Callable[..., Path], tmp_path: Path
) -> None:
    """Such a study pruned with Optuna's median pruner whenever it had checkpoints; its workers
    keep doing so although the default is now no pruning."""
    storage = open_storage(f"sqlite:///{tmp_path / 'old.db'}")
    for name, every, kind in (
        ("old", 2, optuna.pruners.MedianPruner),
        ("old-off", 0, optuna.pruners.NopPruner),
    ):
        spec = load_spec(pruned_study(checkpoint_every=every, name=name))
        study, _ = create_or_load_study(spec, storage)
        legacy = {k: v for k, v in study.user_attrs[SPEC_ATTR].items() if k != "pruner"}
        study.set_user_attr(SPEC_ATTR, legacy)
        joined, stored = join_study(name, storage, worker="host:3")
        assert type(joined.pruner) is kind
        assert stored.pruner.name == ("median" if every else "none")
        # `hpo run` with the unchanged file now turns it off, and says so in the stored spec.
        changes = update_stored_spec(study, spec)
        assert changes == ([("pruner.name", "median", "none")] if every else [])


# --- real runs -------------------------------------------------------------------------------


def _trials(url: str, name: str = "pruned") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


def _check_pruned_members_stopped(trials: list[optuna.trial.FrozenTrial], epochs: int) -> None:
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert pruned and complete, [t.state for t in trials]
    for trial in pruned:  # left the graph at the checkpoint that pruned it
        assert trial.last_step is not None
        assert trial.user_attrs["epochs"] == trial.last_step < epochs
    for trial in complete:  # the others trained to the end
        assert trial.user_attrs["epochs"] == epochs


# Penalties strong enough that some plans barely learn, and 40 epochs for the others to learn:
# the tiny table's trials then differ at checkpoints (with weak ones they all tie, and a tie is
# never pruned).
_LEARNS = """
[search]
l1 = { low = 1e-4, high = 1.0 }
l2 = "off"
placements = ["kernel"]
"""


@pytest.mark.slow  # a study with real training
def test_hpo_run_prunes_and_pruned_members_leave_the_stacked_graph(
    pruned_study: Callable[..., Path], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'run.db'}"
    path = pruned_study(
        'name = "percentile"\npercentile = 10.0\nn_startup_trials = 1',
        epochs=40,
        checkpoint_every=10,
        n_trials=12,
        extra=_LEARNS,
    )
    result = hpo("--verbose", "run", path, "--storage", url)
    assert result.exit_code == 0, result.output
    trials = _trials(url)
    assert len(trials) == 12
    _check_pruned_members_stopped(trials, epochs=40)
    # Once enough of a batch is pruned, the survivors go on in a smaller graph (as before).
    assert " compacted to " in result.stderr, result.stderr


@pytest.mark.slow  # hpo create, then a real worker training the study
def test_hpo_worker_prunes_with_the_stored_pruner(
    pruned_study: Callable[..., Path], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'worker.db'}"
    path = pruned_study(
        'name = "successive_halving"\nreduction_factor = 2',
        epochs=40,
        checkpoint_every=10,
        n_trials=8,
        extra=_LEARNS,
    )
    assert hpo("create", path, "--storage", url).exit_code == 0
    path.unlink()  # the worker knows only the study's name
    result = hpo("worker", "pruned", "--storage", url)
    assert result.exit_code == 0, result.output
    trials = _trials(url)
    _check_pruned_members_stopped(trials, epochs=40)
    # Successive halving's own record: the rungs trials passed (the default median keeps none).
    assert any("completed_rung_0" in t.system_attrs for t in trials)
