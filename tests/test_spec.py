from __future__ import annotations

from pathlib import Path

import pytest

from hpo import HpoError, load_spec, spec_from_dict, spec_to_dict
from hpo.spec import AlphaRange

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
    assert second.placements == ("kernel",) and second.l2 == AlphaRange()


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
