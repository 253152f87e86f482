from __future__ import annotations

from pathlib import Path

import pytest

from hpo import HpoError, load_spec, spec_from_dict, spec_to_dict
from hpo.spec import AUTO, AlphaRange, BudgetSpec

STUDIES = Path(__file__).resolve().parents[1] / "studies"


def test_course_study_is_the_course_protocol() -> None:
    spec = load_spec(STUDIES / "jh-simple.toml")
    assert spec.name == "jh-simple"
    assert (spec.cv.folds, spec.cv.shuffle, spec.cv.seed, spec.cv.stratified) == (
        5,
        True,
        42,
        False,
    )
    assert spec.model.hidden == (50, 25)
    assert (spec.model.activation, spec.model.optimizer) == ("relu", "adam")
    assert (spec.model.batch_size, spec.model.epochs) == (32, 500)
    assert spec.data.target == "product" and spec.data.drop == ("id",)
    assert spec.data.url == "https://data.heatonresearch.com/data/t81-558/jh-simple-dataset.csv"
    assert len(spec.search.layers) == 2
    assert spec.search.layers[0].placements == ("activity", "kernel", "both")


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_study_round_trips(path: Path) -> None:
    spec = load_spec(path)
    again = spec_from_dict(spec_to_dict(spec), origin="stored")
    assert again.replace(source="") == spec.replace(source="")


def _raw(**sections: dict) -> dict:
    raw: dict = {"study": {"name": "s"}, "data": {"path": "x.csv", "target": "y"}}
    for name, table in sections.items():
        raw[name] = {**raw.get(name, {}), **table}
    return raw


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"model": {"epoch": 5}}, "f.toml: unknown key `model.epoch` (did you mean `epochs`?)"),
        ({"cvv": {}}, "f.toml: unknown key `cvv` (did you mean `cv`?)"),
        (
            {"search": {"l1": {"low": 0.0, "high": 1e-2}}},
            "`search.l1`: `low > 0` must hold for a log range, but got (low=0.0)",
        ),
        (
            {"search": {"l2": {"low": 1e-2, "high": 1e-4}}},
            "`search.l2`: `low <= high` must hold, but got (low=0.01, high=0.0001)",
        ),
        ({"search": {"l1": [-1, 1]}}, "`search.l1`: `low > 0` must hold"),
        ({"model": {"epochs": 0}}, "f.toml: [model] `epochs > 0` must hold, but got (epochs=0)"),
        ({"model": {"epochs": -3}}, "`epochs > 0` must hold, but got (epochs=-3)"),
        ({"cv": {"folds": 1}}, "f.toml: [cv] `folds >= 2` must hold, but got (folds=1)"),
        ({"model": {"epochs": "many"}}, "`model.epochs` must be an integer, but got 'many'"),
        (
            {"search": {"placements": ["activty"]}},
            "placement 'activty' is not one of activity, kernel, both",
        ),
        ({"search": {"l1": "off", "l2": "off"}}, "turns both l1 and l2 off"),
        ({"engine": {"name": "fast"}}, "`name` must be one of reference, stacked, but got 'fast'"),
        ({"study": {"direction": "minimize"}}, "`direction` must be 'maximize'"),
    ],
)
def test_bad_study_values_name_key_and_value(sections: dict, message: str) -> None:
    with pytest.raises(HpoError) as info:
        spec_from_dict(_raw(**sections), origin="f.toml")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_data_needs_a_source() -> None:
    with pytest.raises(HpoError, match=r"\[data\] one of `path`, `url` or `dataset` is required"):
        spec_from_dict({"study": {"name": "s"}, "data": {"target": "y"}}, origin="f.toml")


def test_missing_target_key() -> None:
    with pytest.raises(HpoError, match=r"\[data\] is missing the required key `target`"):
        spec_from_dict({"study": {"name": "s"}, "data": {"path": "x.csv"}}, origin="f.toml")


def test_search_layers_must_match_hidden_layers() -> None:
    raw = _raw(model={"hidden": [8, 4, 2]}, search={"layers": [{}, {}]})
    with pytest.raises(HpoError, match="must be a list of 3 tables"):
        spec_from_dict(raw, origin="f.toml")


def test_per_layer_search_overrides_defaults() -> None:
    raw = _raw(search={"l1": [1e-5, 1e-2], "layers": [{"l2": "off"}, {"placements": ["kernel"]}]})
    spec = spec_from_dict(raw)
    first, second = spec.search.layers
    assert first.l1 == AlphaRange(low=1e-5, high=1e-2) and first.l2 is None
    assert second.placements == ("kernel",) and second.l2 == AUTO  # the default: "auto"


def test_study_file_errors(tmp_path: Path) -> None:
    with pytest.raises(HpoError, match=r"nope.toml: study file not found"):
        load_spec(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[study\nname=")
    with pytest.raises(HpoError, match=r"bad.toml: not valid TOML"):
        load_spec(bad)


def test_trial_seed_is_a_pure_function_of_study_and_number() -> None:
    spec = load_spec(STUDIES / "jh-simple.toml")
    seeds = [spec.trial_seed(n) for n in range(50)]
    assert seeds == [spec.trial_seed(n) for n in range(50)]
    assert len(set(seeds)) == 50


# --- value types: every hole gives one line naming the file, the key and the value ------------


def _study_file(tmp_path: Path, section: str, line: str) -> Path:
    """A minimal valid study file with ``line`` (``key = value``) set in ``[section]``."""
    tables: dict[str, dict[str, str]] = {
        "study": {"name": '"s"'},
        "data": {"path": '"x.csv"', "target": '"y"'},
    }
    key, value = line.split(" = ", 1)
    tables.setdefault(section, {})[key] = value
    path = tmp_path / "bad.toml"
    path.write_text(
        "".join(
            f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in table.items())
            for name, table in tables.items()
        )
    )
    return path


@pytest.mark.parametrize(
    ("section", "line", "message"),
    [
        # lists are checked element by element
        ("model", 'hidden = ["a"]', "`model.hidden` must be a list of integers, but got ['a']"),
        ("model", "hidden = [8.5]", "`model.hidden` must be a list of integers, but got [8.5]"),
        (
            "model",
            "hidden = [true, 4]",
            "`model.hidden` must be a list of integers, but got [True, 4]",
        ),
        ("model", "hidden = 50", "`model.hidden` must be a list of integers, but got 50"),
        ("data", "drop = [1]", "`data.drop` must be a list of strings, but got [1]"),
        ("data", 'drop = "id"', "`data.drop` must be a list of strings, but got 'id'"),
        ("data", "na_values = [1]", "`data.na_values` must be a list of strings, but got [1]"),
        (
            "data",
            'na_values = ["NA", 0]',
            "`data.na_values` must be a list of strings, but got ['NA', 0]",
        ),
        (
            "search",
            "placements = [1]",
            "`search.placements` must be a list of strings, but got [1]",
        ),
        (
            "search",
            "layers = [{ placements = [1] }, {}]",
            "`search.layers[0].placements` must be a list of strings, but got [1]",
        ),
        ("search", "allow_none = 1", "`search.allow_none` must be true or false, but got 1"),
        # booleans are never integers or numbers
        ("sampler", "seed = true", "`sampler.seed` must be an integer, but got True"),
        ("budget", "timeout = true", "`budget.timeout` must be a number, but got True"),
        ("search", "l1 = [1e-6, true]", "`search.l1.high` must be a number, but got True"),
        ("cv", "shuffle = 1", "`cv.shuffle` must be true or false, but got 1"),
        # floats and strings are not integers
        ("budget", "n_trials = 2.0", "`budget.n_trials` must be an integer, but got 2.0"),
        ("engine", "threads = 1.5", "`engine.threads` must be an integer, but got 1.5"),
        ("artifacts", "top_k = 1.0", "`artifacts.top_k` must be an integer, but got 1.0"),
        ("cv", 'folds = "5"', "`cv.folds` must be an integer, but got '5'"),
        ("model", 'learning_rate = "0.1"', "`model.learning_rate` must be a number, but got '0.1'"),
        # strings, optional or not
        ("data", "path = 3", "`data.path` must be a string, but got 3"),
        ("data", "sha256 = 5", "`data.sha256` must be a string, but got 5"),
        ("artifacts", "path = 1", "`artifacts.path` must be a string, but got 1"),
        ("study", "name = 5", "`study.name` must be a string, but got 5"),
        ("study", "description = 5", "`study.description` must be a string, but got 5"),
        ("study", "direction = 1", "`study.direction` must be a string, but got 1"),
        # numbers must be finite
        (
            "model",
            "learning_rate = inf",
            "`model.learning_rate` must be a finite number, but got inf",
        ),
        (
            "model",
            "learning_rate = nan",
            "`model.learning_rate` must be a finite number, but got nan",
        ),
        ("budget", "timeout = inf", "`budget.timeout` must be a finite number, but got inf"),
        ("search", "l1 = [1e-6, inf]", "`search.l1.high` must be a finite number, but got inf"),
        (
            "search",
            "l2 = { low = 1e-6, high = 1" + "0" * 400 + " }",
            "`search.l2.high` must be a finite number, but got 1" + "0" * 400,
        ),
        (
            "data",
            'missing_target = "skip"',
            "[data] `missing_target` must be one of 'error', 'drop', but got 'skip'",
        ),
        (
            "data",
            'target_kind = "regression"',
            "[data] `target_kind` must be one of 'auto', 'classes', but got 'regression'",
        ),
        (
            "data",
            'categorical = ["y"]',
            "[data] `categorical` lists the target column 'y' (the target is always classes)",
        ),
        ("data", 'categorical = ["a", "a"]', "[data] `categorical` lists column 'a' twice"),
        # seeds must be ones scikit-learn, Optuna and Keras accept
        ("cv", "seed = -1", "[cv] `0 <= seed <= 2147483647` must hold, but got (seed=-1)"),
        (
            "sampler",
            "seed = 4294967296",
            "[sampler] `0 <= seed <= 2147483647` must hold, but got (seed=4294967296)",
        ),
    ],
)
def test_wrong_value_types_are_one_line_errors(
    tmp_path: Path, section: str, line: str, message: str
) -> None:
    path = _study_file(tmp_path, section, line)
    with pytest.raises(HpoError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}: {message}"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"study": {}, "data": {"path": "x.csv", "target": "y"}},
            "f.toml: [study] is missing the required key `name`",
        ),
        (
            {"study": {"name": "s"}, "data": {"path": "x.csv"}},
            "f.toml: [data] is missing the required key `target`",
        ),
        (_raw(data={"target": None}), "f.toml: `data.target` must be a string, but got None"),
        (_raw(cv={"seed": None}), "f.toml: `cv.seed` must be an integer, but got None"),
        (
            _raw(model={"hidden": (8, "4")}),
            "f.toml: `model.hidden` must be a list of integers, but got (8, '4')",
        ),
        (
            _raw(budget={"timeout": float("inf")}),
            "f.toml: `budget.timeout` must be a finite number, but got inf",
        ),
        (["study"], "f.toml: a study must be a table of sections, but got ['study']"),
        (
            _raw(model={"hiden": [8]}),
            "f.toml: unknown key `model.hiden` (did you mean `hidden`?); allowed: hidden, "
            "activation, optimizer, learning_rate, epochs, batch_size, builder, builder_path, "
            "builder_signature",
        ),
    ],
)
def test_bad_stored_values_are_one_line_errors(raw: object, message: str) -> None:
    with pytest.raises(HpoError) as info:
        spec_from_dict(raw, origin="f.toml")  # type: ignore[arg-type]
    assert str(info.value) == message


def test_an_int_may_stand_for_a_float_and_optional_keys_may_be_none() -> None:
    spec = spec_from_dict(
        _raw(
            budget={"timeout": 60, "n_trials": None},
            sampler={"seed": None},
            model={"learning_rate": 1, "hidden": (8, 4)},
            data={"sha256": None, "url": None},
        )
    )
    assert (spec.budget.timeout, spec.budget.n_trials, spec.sampler.seed) == (60, None, None)
    assert spec.model.learning_rate == 1 and spec.model.hidden == (8, 4)
    assert spec.base_seed == spec.cv.seed == 42
    again = spec_from_dict(spec_to_dict(spec), origin=spec.source)
    assert again == spec


def test_a_timeout_override_must_be_finite() -> None:
    # `hpo run --timeout inf` reaches BudgetSpec without passing through the study-file checks.
    with pytest.raises(
        ValueError, match=r"`timeout` must be a finite number, but got \(timeout=inf\)"
    ):
        BudgetSpec(timeout=float("inf"))


@pytest.mark.parametrize("name", ["jh-simple.toml", "wine.toml"])
def test_shipped_studies_load_and_round_trip_exactly(name: str) -> None:
    spec = load_spec(STUDIES / name)
    assert spec.source == str(STUDIES / name)
    assert spec_from_dict(spec_to_dict(spec), origin=spec.source) == spec
    assert spec.base_seed == spec.sampler.seed
