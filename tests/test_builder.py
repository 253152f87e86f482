"""`[model] builder = "module:function"`: the user's own Keras model, searched by layer name.

Each model trains 2 real trials (reference engine, real SQLite storage); the model each trial
saved is loaded back and every searched layer must carry exactly the trial's alphas where its
placement says, and nothing where it does not.
"""

from __future__ import annotations

import os
import shutil
import textwrap
import traceback
from pathlib import Path

import optuna
import pytest

from tests.conftest import hpo, one_line_error, tiny_data_table

# make_frame: 'size', 'weight' (with gaps), 'color' (3 values, one-hot) -> 5 inputs, 3 classes
N_FEATURES, N_CLASSES = 5, 3

SKIP = """
import keras

def build(n_features, n_classes):
    inputs = keras.Input(shape=(n_features,))
    wide = keras.layers.Dense(16, activation="relu", name="wide")(inputs)
    deep = keras.layers.Dense(16, activation="relu", name="deep")(wide)
    joined = keras.layers.Add(name="skip")([wide, deep])
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="out")(joined)
    return keras.Model(inputs, outputs)
"""

CONV = """
import keras

def build(n_features, n_classes):
    inputs = keras.Input(shape=(n_features,))
    column = keras.layers.Reshape((n_features, 1), name="as_sequence")(inputs)
    conv = keras.layers.Conv1D(4, 2, activation="relu", name="conv")(column)
    flat = keras.layers.Flatten(name="flat")(conv)
    hidden = keras.layers.Dense(8, activation="relu", name="dense")(flat)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="out")(hidden)
    return keras.Model(inputs, outputs)
"""

SEQUENTIAL = """
import keras

def build(n_features, n_classes):
    return keras.Sequential(
        [
            keras.Input(shape=(n_features,)),
            keras.layers.Dense(16, activation="relu", name="first"),
            keras.layers.BatchNormalization(name="norm"),
            keras.layers.Dropout(0.2, name="drop"),
            keras.layers.Dense(8, activation="relu", name="second"),
            keras.layers.Dense(n_classes, activation="softmax", name="out"),
        ]
    )
"""


def write_builder_study(
    tmp_path: Path,
    tiny_csv: Path,
    module: str,
    source: str,
    *,
    function: str = "build",
    search: str = "",
    n_trials: int = 2,
    name: str = "own",
) -> Path:
    """A study over the tiny table whose model is ``module:function`` (written next to it).
    Module names differ per test: a module once imported stays in ``sys.modules``."""
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    text = textwrap.dedent(
        f"""
        [study]
        name = "{name}"

        {tiny_data_table(tiny_csv)}
        [cv]
        folds = 3
        seed = 1

        [model]
        builder = "{module}:{function}"
        epochs = 2
        batch_size = 16

        [sampler]
        seed = 3
        n_startup_trials = 2

        [search]
        baseline = false
        l1 = [1e-6, 1e-1]
        l2 = [1e-6, 1e-1]
        {search}

        [budget]
        n_trials = {n_trials}
        """
    )
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def _keras_config(regularizer: object) -> dict[str, float] | None:
    if regularizer is None:
        return None
    config = regularizer.get_config()  # type: ignore[attr-defined]
    return {k: float(v) for k, v in config.items() if k in ("l1", "l2") and float(v) > 0}


def _approx(alphas: dict[str, float] | None) -> object:
    return None if alphas is None else pytest.approx(alphas, rel=1e-6)


def _expected(params: dict[str, object], layer: str) -> tuple[dict[str, float] | None, ...]:
    """(kernel, activity) coefficients a trial's params put on ``layer``."""
    penalty = str(params.get(f"{layer}_penalty", "l1l2"))
    alphas = {
        key: float(params[f"{layer}_{key}"])  # type: ignore[arg-type]
        for key in ("l1", "l2")
        if key in penalty
    }
    placement = params[f"{layer}_placement"]
    kernel = alphas if placement in ("kernel", "both") else None
    activity = alphas if placement in ("activity", "both") else None
    return kernel, activity


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "source", "searched", "left_alone"),
    [
        ("skip_model", SKIP, ["wide", "deep"], ["skip", "out"]),
        ("conv_model", CONV, ["conv", "dense"], ["out"]),
        ("seq_model", SEQUENTIAL, ["first", "second"], ["norm", "out"]),
    ],
    ids=["functional-skip", "conv1d", "sequential-batchnorm-dropout"],
)
def test_each_trial_trains_the_users_model_with_its_alphas_on_the_named_layers(
    tmp_path: Path,
    tiny_csv: Path,
    module: str,
    source: str,
    searched: list[str],
    left_alone: list[str],
) -> None:
    import keras

    from hpo.results.artifacts import trial_artifacts

    path = write_builder_study(tmp_path, tiny_csv, module, source)
    result = hpo("run", path)
    assert result.exit_code == 0, result.output
    assert (
        f"model: {module}:build (your own); searching layers "
        f"{', '.join(map(repr, searched))}; reference engine "
        "(the stacked engine trains only the built-in network)"
    ) in result.stderr

    study = optuna.load_study(study_name="own", storage="sqlite:///hpo.db")
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    for trial in trials:
        assert {p.rsplit("_", 1)[0] for p in trial.params} == set(searched)
        assert trial.user_attrs["plan"]["layers"] == searched
        assert trial.user_attrs["engine"] == "reference"
        # The network this trial trained on its first fold, as the artifacts saved it.
        (model_file,) = [a for a in trial_artifacts(study, trial) if a.filename.endswith(".keras")]
        copy = tmp_path / f"trial-{trial.number}.keras"  # Keras goes by the extension
        shutil.copy(tmp_path / "hpo-artifacts" / model_file.artifact_id, copy)
        saved = keras.models.load_model(copy, compile=False)
        layers = {layer.name: layer for layer in saved.layers}
        assert saved.output_shape == (None, N_CLASSES)
        for name in searched:
            kernel, activity = _expected(trial.params, name)
            # Keras keeps a coefficient as float32.
            assert _keras_config(layers[name].kernel_regularizer) == _approx(kernel), name
            assert _keras_config(layers[name].activity_regularizer) == _approx(activity), name
        for name in left_alone:
            assert getattr(layers[name], "kernel_regularizer", None) is None
            assert getattr(layers[name], "activity_regularizer", None) is None


@pytest.mark.slow
def test_search_layers_by_name_and_exclude(tmp_path: Path, tiny_csv: Path) -> None:
    from hpo.engines.builder import resolve
    from hpo.spec import load_spec

    path = write_builder_study(
        tmp_path,
        tiny_csv,
        "named_model",
        SEQUENTIAL,
        search="""
        [search.layers.second]
        placements = ["kernel"]
        l2 = "off"
        """,
    )
    spec = resolve(load_spec(path), N_FEATURES, N_CLASSES)
    assert spec.search.names == ("second",)
    assert spec.search.layers[0].placements == ("kernel",)
    assert spec.search.layers[0].l2 is None
    assert spec.engine.name == "reference"

    path = write_builder_study(
        tmp_path, tiny_csv, "excluded_model", SKIP, search='exclude = ["deep"]'
    )
    assert resolve(load_spec(path), N_FEATURES, N_CLASSES).search.names == ("wide",)


def test_a_compiled_model_keeps_its_optimizer(tmp_path: Path, tiny_csv: Path) -> None:
    from hpo.engines.builder import resolve
    from hpo.engines.network import build_model
    from hpo.space import RegularizationPlan
    from hpo.spec import load_spec

    source = SKIP.replace(
        "    return keras.Model(inputs, outputs)",
        "    model = keras.Model(inputs, outputs)\n"
        "    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05), loss='mse')\n"
        "    return model",
    )
    spec = resolve(
        load_spec(write_builder_study(tmp_path, tiny_csv, "compiled_model", source)),
        N_FEATURES,
        N_CLASSES,
    )
    plan = RegularizationPlan.uniform(2, l1=1e-3, names=spec.search.names)
    net = build_model(plan, spec.model, n_features=N_FEATURES, n_classes=N_CLASSES)
    assert type(net.optimizer).__name__ == "SGD"
    assert float(net.optimizer.learning_rate) == pytest.approx(0.05)
    assert net.loss == "sparse_categorical_crossentropy"
    uncompiled = resolve(
        load_spec(write_builder_study(tmp_path, tiny_csv, "plain_model", SKIP, name="plain")),
        N_FEATURES,
        N_CLASSES,
    )
    net = build_model(plan, uncompiled.model, n_features=N_FEATURES, n_classes=N_CLASSES)
    assert type(net.optimizer).__name__ == "Adam"  # the study's [model] optimizer


# --- bad input: one line each, naming the file, function or layer ------------------------------


BAD = {
    "returns-list": (
        "def build(n_features, n_classes):\n    return [n_features]\n",
        "build",
        "{study}: [model] builder '{module}:build': build(n_features=5, n_classes=3) returned "
        "list, not a Keras model (return keras.Model(inputs, outputs) or a keras.Sequential)",
    ),
    "raises": (
        "def build(n_features, n_classes):\n    raise RuntimeError('no GPU\\n here')\n",
        "build",
        "{study}: [model] builder '{module}:build': build(n_features=5, n_classes=3) raised "
        "RuntimeError at {file}:2: no GPU here",
    ),
    "import-raises": (
        "import keras\n\nWIDTH = undefined_width\n",
        "build",
        "{study}: [model] builder '{module}:build': importing '{module}' raised NameError at "
        "{file}:3: name 'undefined_width' is not defined",
    ),
    "syntax-error": (
        "def build(n_features, n_classes):\n    return keras.Model(\n\n",
        "build",
        "{study}: [model] builder '{module}:build': importing '{module}' raised SyntaxError at "
        "{file}:2: '(' was never closed ({file_name}, line 2)",
    ),
    "missing-function": (
        "def build_model(n_features, n_classes):\n    pass\n",
        "biuld",
        "{study}: [model] builder '{module}:biuld': module {file} has no function 'biuld'",
    ),
    "no-searchable-layer": (
        "import keras\n\ndef build(n_features, n_classes):\n"
        "    inputs = keras.Input(shape=(n_features,))\n"
        "    return keras.Model(inputs, keras.layers.Dense(n_classes, activation='softmax')(inputs))\n",
        "build",
        "{study}: [model] builder '{module}:build': the model has no Dense, Conv1D, Conv2D layer "
        "to regularize besides its output layer",
    ),
    "duplicate-names": (
        "import keras\n\ndef build(n_features, n_classes):\n"
        "    inputs = keras.Input(shape=(n_features,))\n"
        "    a = keras.layers.Dense(4, name='same')(inputs)\n"
        "    b = keras.layers.Dense(n_classes, activation='softmax', name='same')(a)\n"
        "    return keras.Model(inputs, b)\n",
        "build",
        "{study}: [model] builder '{module}:build': build(n_features=5, n_classes=3) raised "
        'ValueError at {file}:7: The name "same" is used 2 times in the model. All operation names should '
        "be unique. (layer names must be unique: the search's parameters are named after them)",
    ),
    "output-width": (
        SKIP.replace('Dense(n_classes, activation="softmax"', 'Dense(4, activation="softmax"'),
        "build",
        "{study}: [model] builder '{module}:build': the model's output has 4 units but the data "
        "has 3 classes: end it with Dense(n_classes, activation='softmax')",
    ),
    "not-probabilities": (
        SKIP.replace(
            'Dense(n_classes, activation="softmax"', 'Dense(n_classes, activation="linear"'
        ),
        "build",
        "{study}: [model] builder '{module}:build': the model's output is not a probability per "
        "class (its rows sum to {sum}): end it with activation='softmax' (the loss is sparse "
        "categorical crossentropy on probabilities)",
    ),
    "subclassed": (
        "import keras\n\nclass Net(keras.Model):\n"
        "    def __init__(self, n_classes):\n        super().__init__()\n"
        "        self.out = keras.layers.Dense(n_classes, activation='softmax')\n"
        "    def call(self, x):\n        return self.out(x)\n\n"
        "def build(n_features, n_classes):\n    return Net(n_classes)\n",
        "build",
        "{study}: [model] builder '{module}:build': build(n_features=5, n_classes=3) returned a "
        "subclassed model (Net); hpo rebuilds the model from its config to attach regularizers, "
        "so build it with the functional API or keras.Sequential",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_builder_is_one_line_naming_it(tmp_path: Path, tiny_csv: Path, case: str) -> None:
    source, function, expected = BAD[case]
    module = f"bad_{case.replace('-', '_')}"
    path = write_builder_study(tmp_path, tiny_csv, module, source, function=function)
    result = hpo("check", path, "--no-estimate")
    if case == "not-probabilities":
        # The sum depends on the random initial weights: read it back, check the rest exactly.
        line = result.stderr.strip().splitlines()[-1]
        total = line.split("its rows sum to ")[1].split(")")[0]
        expected = expected.replace("{sum}", total)
    one_line_error(
        result,
        expected.format(
            study=path, module=module, file=tmp_path / f"{module}.py", file_name=f"{module}.py"
        ),
    )
    assert not (tmp_path / "hpo.db").exists()


def test_debug_shows_the_traceback_through_the_users_own_file(
    tmp_path: Path, tiny_csv: Path
) -> None:
    # The error comes from Keras, called by a helper in the user's module: the one line names
    # the user's innermost line (the call into Keras), --debug the whole way there.
    source = (
        "import keras\n\n"
        "def layer(width):\n"
        "    return keras.layers.Dense(width, activation='no-such-activation')\n\n"
        "def build(n_features, n_classes):\n"
        "    return keras.Sequential([keras.Input((n_features,)), layer(4)])\n"
    )
    path = write_builder_study(tmp_path, tiny_csv, "deep_error", source)
    file = tmp_path / "deep_error.py"
    plain = hpo("check", path, "--no-estimate")
    assert plain.exit_code == 1
    assert f"raised ValueError at {file}:4: " in plain.stderr, plain.stderr
    assert "Traceback" not in plain.output
    debug = hpo("--debug", "check", path, "--no-estimate")
    assert debug.exception is not None
    shown = "".join(traceback.format_exception(debug.exception))
    assert f'File "{file}", line 7, in build' in shown, shown
    assert f'File "{file}", line 4, in layer' in shown, shown


def test_a_missing_module_is_named_with_where_it_was_looked_for(
    tmp_path: Path, tiny_csv: Path
) -> None:
    path = write_builder_study(tmp_path, tiny_csv, "present", SKIP)
    text = path.read_text().replace('builder = "present:build"', 'builder = "absent_models:build"')
    path.write_text(text)
    one_line_error(
        hpo("run", path),
        f"{path}: [model] builder 'absent_models:build': no module 'absent_models' in "
        f"{tmp_path} or on sys.path (a worker on another machine needs the module there too: "
        "copy it, or name its folder in PYTHONPATH)",
    )
    assert not (tmp_path / "hpo.db").exists()


def test_a_search_layer_that_does_not_exist_is_named(tmp_path: Path, tiny_csv: Path) -> None:
    path = write_builder_study(
        tmp_path, tiny_csv, "typo_model", SKIP, search='layers = ["wide", "deeep"]'
    )
    one_line_error(
        hpo("check", path, "--no-estimate"),
        f"{path}: [model] builder 'typo_model:build': [search] layers names 'deeep', which is "
        "not a layer of the model (did you mean 'deep'?); its searchable layers are 'wide', "
        "'deep'",
    )
    path = write_builder_study(
        tmp_path, tiny_csv, "norm_model", SEQUENTIAL, search='exclude = ["norm"]', name="norm"
    )
    one_line_error(
        hpo("check", path, "--no-estimate"),
        f"{path}: [model] builder 'norm_model:build': [search] exclude names 'norm', a layer "
        "of type BatchNormalization; only Dense, Conv1D, Conv2D layers are searched",
    )


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            'builder = "models"',
            "`builder` must be 'module:function' (e.g. 'mymodels:build', a function taking "
            "n_features and n_classes), but got 'models'",
        ),
    ],
)
def test_builder_spelling_is_checked_where_it_enters(
    tmp_path: Path, tiny_csv: Path, toml: str, expected: str
) -> None:
    path = write_builder_study(tmp_path, tiny_csv, "spelled", SKIP)
    path.write_text(path.read_text().replace('builder = "spelled:build"', toml))
    one_line_error(hpo("check", path, "--no-estimate"), f"{path}: [model] {expected}")


def test_search_by_name_needs_a_builder(write_study) -> None:  # type: ignore[no-untyped-def]
    path = write_study('[search]\nexclude = ["h1"]\n')
    one_line_error(
        hpo("check", path, "--no-estimate"),
        f"{path}: `search.exclude` needs [model] builder (it leaves layers of your own model "
        "out by name); the built-in network's layers are set in `search.layers`",
    )


def test_a_searched_layer_without_a_name_is_refused(tmp_path: Path, tiny_csv: Path) -> None:
    source = SKIP.replace(', name="deep"', "")
    path = write_builder_study(tmp_path, tiny_csv, "unnamed_model", source)
    result = hpo("check", path, "--no-estimate")
    assert result.exit_code == 1, result.output
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("Error")]
    first = line.split("layer '")[1].split("'")[0]
    assert first.startswith("dense")  # Keras' automatic name, whatever its number
    one_line_error(
        result,
        f"{path}: [model] builder 'unnamed_model:build': layer {first!r} is named by Keras, and "
        f"its name changes from one build to the next ({first!r}, then "
        f"{line.split('then ')[1].split(')')[0]}): give every Dense and Conv layer a name "
        "(name='wide'), since the search's parameters are named after them",
    )


def test_the_output_layer_is_never_searched(tmp_path: Path, tiny_csv: Path) -> None:
    path = write_builder_study(tmp_path, tiny_csv, "out_model", SKIP, search='layers = ["out"]')
    one_line_error(
        hpo("check", path, "--no-estimate"),
        f"{path}: [model] builder 'out_model:build': [search] layers names 'out', the output "
        "layer, which is never searched (its penalty would act on the class probabilities)",
    )


@pytest.mark.parametrize(
    ("model", "search", "expected"),
    [
        (
            'builder = "keys_model:build"\nhidden = [8]',
            "",
            "[model] `hidden` describes the built-in network, but `builder` names your own "
            "function, which builds the model: remove one of them",
        ),
        (
            'hidden = [8]\nbuilder_path = "src"',
            "",
            "[model] `builder_path` needs `builder` (the module's function)",
        ),
        (
            'builder = "keys_model:build"',
            'layers = ["wide"]\nexclude = ["deep"]',
            "[search] has both `layers` (search only these) and `exclude` (search all but "
            "these); use one of them",
        ),
    ],
    ids=["hidden-with-builder", "path-without-builder", "layers-and-exclude"],
)
def test_keys_of_the_other_kind_of_model_are_refused(
    tmp_path: Path, tiny_csv: Path, model: str, search: str, expected: str
) -> None:
    path = write_builder_study(tmp_path, tiny_csv, "keys_model", SKIP, search=search)
    path.write_text(path.read_text().replace('builder = "keys_model:build"', model))
    one_line_error(hpo("check", path, "--no-estimate"), f"{path}: {expected}")


def test_each_study_gets_its_own_module_and_an_edited_one_is_reloaded(
    tmp_path: Path, tiny_csv: Path
) -> None:
    """One process (a notebook): two studies whose modules share a name, then an edit."""
    from hpo.engines.builder import resolve
    from hpo.spec import load_spec

    specs = []
    for folder, layer in (("one", "first_layer"), ("two", "second_layer")):
        (tmp_path / folder).mkdir()
        source = SKIP.replace('name="wide"', f'name="{layer}"')
        specs.append(
            write_builder_study(tmp_path / folder, tiny_csv, "shared_name", source, name=folder)
        )
    first = resolve(load_spec(specs[0]), N_FEATURES, N_CLASSES)
    second = resolve(load_spec(specs[1]), N_FEATURES, N_CLASSES)
    assert first.search.names == ("first_layer", "deep")
    assert second.search.names == ("second_layer", "deep")

    module = tmp_path / "two" / "shared_name.py"
    module.write_text(module.read_text().replace("second_layer", "edited_layer"))
    stat = module.stat()
    os.utime(module, (stat.st_atime, stat.st_mtime + 5))  # a later save, whatever the clock
    edited = resolve(load_spec(specs[1]), N_FEATURES, N_CLASSES)
    assert edited.search.names == ("edited_layer", "deep")


def test_a_changed_builder_is_a_changed_protocol(tmp_path: Path, tiny_csv: Path) -> None:
    path = write_builder_study(tmp_path, tiny_csv, "changing_model", SKIP)
    created = hpo("create", path)
    assert created.exit_code == 0, created.output
    again = hpo("create", path)
    assert again.exit_code == 0, again.output  # same code: the same study
    module = tmp_path / "changing_model.py"
    module.write_text(module.read_text().replace("Dense(16", "Dense(24"))
    stat = module.stat()
    os.utime(module, (stat.st_atime, stat.st_mtime + 5))
    changed = hpo("create", path)
    assert changed.exit_code == 1, changed.output
    (error,) = [line for line in changed.stderr.splitlines() if line.startswith("Error")]
    assert "model.builder_signature" in error
    assert "InputLayer > Dense > Dense > Add > Dense" in error


def test_resuming_with_other_searched_layers_names_them(tmp_path: Path, tiny_csv: Path) -> None:
    path = write_builder_study(tmp_path, tiny_csv, "resumed_model", SKIP)
    assert hpo("create", path).exit_code == 0
    path.write_text(
        path.read_text().replace("baseline = false", 'baseline = false\nexclude = ["deep"]')
    )
    one_line_error(
        hpo("create", path),
        "study 'own' was created with search.layers (searched layers)=['wide', 'deep'], but "
        "this run has ['wide']; use the study's settings or a new name (--name)",
    )


@pytest.mark.slow
def test_optimize_stores_what_the_cli_stores_for_a_builder_study(
    tmp_path: Path, tiny_csv: Path
) -> None:
    import pandas as pd

    import hpo as hpo_api

    path = write_builder_study(tmp_path, tiny_csv, "same_model", SKIP)
    assert hpo("run", path, "--storage", "sqlite:///cli.db").exit_code == 0
    hpo_api.optimize(path, data=pd.read_csv(tiny_csv), storage="sqlite:///api.db")

    def trials(url: str) -> list[tuple[object, ...]]:
        volatile = {"seconds", "worker", "tensorflow", "keras"}
        return [
            (
                t.state.name,
                t.value,
                t.params,
                {k: v for k, v in t.user_attrs.items() if k not in volatile},
            )
            for t in optuna.load_study(study_name="own", storage=url).get_trials()
        ]

    from_api = trials("sqlite:///api.db")
    assert [t[0] for t in from_api] == ["COMPLETE", "COMPLETE"]
    assert from_api == trials("sqlite:///cli.db")
