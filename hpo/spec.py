"""The study file: TOML in, frozen and validated dataclasses out.

Every check lives here and every message names the file, the key and the value, so a typo in a
study file is one clear line instead of a silently ignored setting. ``spec_to_dict`` /
``spec_from_dict`` round-trip a spec through plain data so it can be stored on the study and
rebuilt by a worker that only knows the study's name.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

from hpo import seeds
from hpo.errors import HpoError

__all__ = [
    "ACTIVATIONS",
    "ALL_COLUMNS",
    "ALL_INTEGER",
    "ARTIFACT_MODELS",
    "ARTIFACT_STORES",
    "AUTO",
    "EARLY_STOPS",
    "ENGINES",
    "MIN_SAMPLER_HISTORY",
    "MISSING_TARGET",
    "OPTIMIZERS",
    "PENALTY_KINDS",
    "PLACEMENTS",
    "PRUNERS",
    "PRUNER_KEYS",
    "S3_SCHEME",
    "STARTUPS",
    "STARTUP_CAP",
    "TARGET_KINDS",
    "AlphaRange",
    "ArtifactsSpec",
    "AutoRange",
    "BudgetSpec",
    "CVSpec",
    "DataSpec",
    "EngineSpec",
    "LayerSearchSpec",
    "ModelSpec",
    "PenaltyWindows",
    "PrunerSpec",
    "SamplerSpec",
    "SearchSpec",
    "StudySpec",
    "Window",
    "apply_overrides",
    "load_spec",
    "s3_location",
    "spec_from_dict",
    "spec_to_dict",
    "startup_trials",
]

PLACEMENTS = ("activity", "kernel", "both")
OPTIMIZERS = ("adam", "sgd", "rmsprop")
ACTIVATIONS = ("relu", "tanh", "sigmoid", "elu", "selu", "gelu", "swish", "linear")
ENGINES = ("reference", "stacked")
MISSING_TARGET = ("error", "drop")
TARGET_KINDS = ("auto", "classes")


@dataclass(frozen=True, kw_only=True)
class AlphaRange:
    """A penalty's coefficient, searched log-uniformly in ``[low, high]``."""

    low: float = 1e-6
    high: float = 1e-1

    def __post_init__(self) -> None:
        low, high = self.low, self.high
        if not low > 0:
            raise ValueError(f"`low > 0` must hold for a log range, but got ({low=})")
        if not low <= high:
            raise ValueError(f"`low <= high` must hold, but got ({low=}, {high=})")


@dataclass(frozen=True)
class AutoRange:
    """A penalty's coefficient searched inside the window the study measures before its first
    trial (``l1 = "auto"``, the default): from the weakest alpha that changes the trained
    network as much as a new seed would, to the strongest that does not collapse it, for each
    placement separately (:mod:`hpo.study.windows`). The trial's parameter is the position in
    that window, 0 to 1."""

    def __repr__(self) -> str:
        return "'auto'"


AUTO = AutoRange()


@dataclass(frozen=True, kw_only=True)
class LayerSearchSpec:
    """What the search may do on one hidden layer. ``None`` means that penalty is off."""

    l1: AlphaRange | AutoRange | None = AUTO
    l2: AlphaRange | AutoRange | None = AUTO
    placements: tuple[str, ...] = PLACEMENTS
    allow_none: bool = False

    def __post_init__(self) -> None:
        if not self.placements:
            raise ValueError("`placements` must name at least one of " + ", ".join(PLACEMENTS))
        for p in self.placements:
            if p not in PLACEMENTS:
                raise ValueError(f"placement {p!r} is not one of {', '.join(PLACEMENTS)}")
        if len(set(self.placements)) != len(self.placements):
            raise ValueError(f"`placements` has duplicates: {list(self.placements)}")


PENALTY_KINDS = ("l1_activity", "l2_activity", "l1_kernel", "l2_kernel")


@dataclass(frozen=True)
class Window:
    """Alphas ``[low, high]`` of one penalty kind; a position 0..1 maps log-uniformly into it.

    >>> Window(1e-4, 1e-2).at(0.5)
    0.001
    """

    low: float
    high: float

    def __post_init__(self) -> None:
        if not 0 < self.low <= self.high:
            raise ValueError(f"`0 < low <= high` must hold, but got ({self.low}, {self.high})")

    def at(self, position: float) -> float:
        return float(f"{self.low * (self.high / self.low) ** position:.6g}")


@dataclass(frozen=True)
class PenaltyWindows:
    """Per penalty kind, the window an ``"auto"`` alpha is searched in (measured per study by
    :mod:`hpo.study.windows`; not part of the study file)."""

    l1_activity: Window
    l2_activity: Window
    l1_kernel: Window
    l2_kernel: Window

    def to_dict(self) -> dict[str, list[float]]:
        return {kind: [getattr(self, kind).low, getattr(self, kind).high] for kind in PENALTY_KINDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PenaltyWindows:
        return cls(
            **{kind: Window(float(data[kind][0]), float(data[kind][1])) for kind in PENALTY_KINDS}
        )

    def text(self) -> str:
        return ", ".join(
            f"{kind} {getattr(self, kind).low:.2g}..{getattr(self, kind).high:.2g}"
            for kind in PENALTY_KINDS
        )


@dataclass(frozen=True, kw_only=True)
class SearchSpec:
    """Per searched layer, what the search may do. ``baseline``: trial 0 of a new study trains
    the network with no regularization at all, so every study shows what regularization bought.

    With ``[model] builder`` the layers are the user's Keras layers, named: ``names`` are their
    Keras names, parallel to ``layers`` (the parameters are ``{name}_placement`` ...). Before the model
    is built ``names`` may be empty, meaning every Dense/Conv layer but the output one, less
    ``exclude``, each searched as ``default`` says; ``hpo.engines.builder.resolve`` fills them
    in, and a stored spec always holds them. Without a builder ``names`` is empty and the
    parameters are ``h1_placement`` ... by position (:mod:`hpo.space` lists them).
    """

    layers: tuple[LayerSearchSpec, ...]
    baseline: bool = True
    names: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    default: LayerSearchSpec = LayerSearchSpec()
    # The measured windows of "auto" alphas, filled in where a study trains (never stored in
    # the study file's data: they are the study's, recorded on it once).
    windows: PenaltyWindows | None = None

    def __post_init__(self) -> None:
        if self.names and len(self.names) != len(self.layers):
            raise ValueError(f"{len(self.names)} layer names for {len(self.layers)} layers")
        for key in ("names", "exclude"):
            names = getattr(self, key)
            if len(set(names)) != len(names):
                twice = next(n for n in names if names.count(n) > 1)
                raise ValueError(f"`{key}` names layer {twice!r} twice")
        both = [name for name in self.exclude if name in self.names]
        if both:
            raise ValueError(f"layer {both[0]!r} is both searched (`layers`) and in `exclude`")

    @property
    def resolved(self) -> bool:
        """Whether the searched layers are known (always, without a builder)."""
        return bool(self.layers)

    @property
    def auto(self) -> bool:
        """Whether any alpha is searched in a measured window (``"auto"``)."""
        return any(
            isinstance(alpha, AutoRange) for layer in self.layers for alpha in (layer.l1, layer.l2)
        )

    def param_prefix(self, index: int) -> str:
        """The name the parameters of searched layer ``index`` (0-based) start with."""
        return self.names[index] if self.names else f"h{index + 1}"


@dataclass(frozen=True, kw_only=True)
class DataSpec:
    """Where the rows come from and how to read them.

    ``path`` and ``url`` together: ``path`` caches the download. ``na_values``: markers read as
    missing in every column; ``column_na_values``: more markers for one column each (the study
    file's ``na_values = { glucose = ["0"], "*" = ["?"] }``). ``categorical``: numeric-coded
    columns to one-hot encode instead of z-scoring; ``all_integer_categorical`` (the study
    file's ``categorical = "all-integer"``): every column whose values are all whole numbers.
    ``missing_target``: what rows without a target get ("error" or "drop"). ``target_kind``:
    "auto" refuses a target that looks like a regression target; "classes" says its values
    really are classes. ``ignore_warnings``: columns kept on purpose, whose identifier and leak
    warnings are silenced. ``drop_classes``: classes whose rows are dropped; ``merge_classes``:
    (new class, the classes it replaces) pairs, for classes too small to cross-validate.
    ``store``: ``hpo create`` puts the rows (the CSV's bytes, or the package data set as CSV)
    into the study's artifact store with their SHA-256, so workers need neither the file nor
    internet access.
    """

    path: str | None = None
    url: str | None = None
    sha256: str | None = None
    dataset: str | None = None
    target: str
    drop: tuple[str, ...] = ()
    na_values: tuple[str, ...] = ()
    column_na_values: tuple[tuple[str, tuple[str, ...]], ...] = ()
    categorical: tuple[str, ...] = ()
    all_integer_categorical: bool = False
    missing_target: str = "error"
    target_kind: str = "auto"
    ignore_warnings: tuple[str, ...] = ()
    store: bool = False
    drop_classes: tuple[str, ...] = ()
    merge_classes: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __post_init__(self) -> None:
        # Header cells are stripped when the data is read, so names here are too: a study file
        # that spelled a header's stray spaces keeps working.
        object.__setattr__(self, "target", self.target.strip())
        for key in ("drop", "categorical", "ignore_warnings"):
            object.__setattr__(self, key, tuple(name.strip() for name in getattr(self, key)))
        object.__setattr__(
            self,
            "column_na_values",
            tuple((name.strip(), tuple(markers)) for name, markers in self.column_na_values),
        )
        # Text values are stripped when read too (the target's among them): so are class names.
        object.__setattr__(
            self,
            "merge_classes",
            tuple((new.strip(), tuple(o.strip() for o in old)) for new, old in self.merge_classes),
        )
        object.__setattr__(self, "drop_classes", tuple(name.strip() for name in self.drop_classes))
        if self.dataset is not None and (self.path is not None or self.url is not None):
            raise ValueError("give either `dataset` or `path`/`url`, not both")
        if self.dataset is None and self.path is None and self.url is None:
            raise ValueError("one of `path`, `url` or `dataset` is required")
        if self.dataset is not None and not self.dataset.startswith("sklearn:"):
            raise ValueError(
                f"`dataset` must look like 'sklearn:NAME' (e.g. 'sklearn:wine'), "
                f"but got {self.dataset!r}"
            )
        if self.sha256 is not None and (
            len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256.lower())
        ):
            raise ValueError(f"`sha256` must be 64 hex digits, but got {self.sha256!r}")
        if not self.target:
            raise ValueError("`target` must name a column")
        if self.target in self.drop:
            raise ValueError(f"`drop` lists the target column {self.target!r}")
        if self.target in self.categorical:
            raise ValueError(
                f"`categorical` lists the target column {self.target!r} (the target is always "
                "classes)"
            )
        for column in self.categorical:
            if column in self.drop:
                raise ValueError(f"column {column!r} is in both `categorical` and `drop`")
        for key in ("drop", "categorical", "ignore_warnings"):
            names = getattr(self, key)
            if len(set(names)) != len(names):
                twice = next(n for n in names if names.count(n) > 1)
                raise ValueError(f"`{key}` lists column {twice!r} twice")
        self._check_markers()
        self._check_classes()
        if self.missing_target not in MISSING_TARGET:
            raise ValueError(
                f"`missing_target` must be one of {', '.join(map(repr, MISSING_TARGET))}, "
                f"but got {self.missing_target!r}"
            )
        if self.target_kind not in TARGET_KINDS:
            raise ValueError(
                f"`target_kind` must be one of {', '.join(map(repr, TARGET_KINDS))}, "
                f"but got {self.target_kind!r}"
            )

    def _check_markers(self) -> None:
        columns = [name for name, _ in self.column_na_values]
        for name, markers in self.column_na_values:
            if not name:
                raise ValueError("`na_values` has a table entry with an empty column name")
            if columns.count(name) > 1:
                raise ValueError(f"`na_values` lists column {name!r} twice")
            if name == self.target:
                raise ValueError(
                    f"`na_values` lists the target column {name!r} (rows without a target: "
                    "`missing_target`)"
                )
            if name in self.drop:
                raise ValueError(f"column {name!r} is in both `na_values` and `drop`")
            if not markers:
                raise ValueError(f"`na_values.{name}` is empty: give its markers, or leave it out")
        if self.all_integer_categorical and self.categorical:
            raise ValueError(
                '`categorical` is either "all-integer" or a list of columns, but got both'
            )

    def _check_classes(self) -> None:
        """``drop_classes`` and ``merge_classes``: each class once, in one of them."""
        seen: dict[str, str] = {}
        for name in self.drop_classes:
            if name in seen:
                raise ValueError(f"`drop_classes` lists class {name!r} twice")
            seen[name] = "`drop_classes`"
        for new, old in self.merge_classes:
            where = f"`merge_classes.{new}`" if new else "`merge_classes`"
            if not new:
                raise ValueError("`merge_classes` has an entry with an empty class name")
            if not old:
                raise ValueError(f"{where} is empty: list the classes it replaces")
            if new in self.drop_classes:
                raise ValueError(f"class {new!r} is both dropped (`drop_classes`) and {where}")
            for name in old:
                if name in seen and seen[name] == where:
                    raise ValueError(f"{where} lists class {name!r} twice")
                if name in seen:
                    raise ValueError(f"class {name!r} is in both {seen[name]} and {where}")
                seen[name] = where
        for new, _ in self.merge_classes:
            # A chain (b into a, a into c) would depend on the order the merges are applied.
            if seen.get(new, f"`merge_classes.{new}`") != f"`merge_classes.{new}`":
                raise ValueError(
                    f"class {new!r} is the name of `merge_classes.{new}` and is listed in "
                    f"{seen[new]}"
                )


@dataclass(frozen=True, kw_only=True)
class CVSpec:
    """How trials are scored. ``holdout``: the fraction of rows set aside before the search
    (stratified when ``stratified``, drawn with ``seed``), seen only by ``hpo evaluate``.
    ``seeds``: training seeds per trial; its value is the mean of their accuracies.
    ``outer_folds``/``outer_fold``: in an inner study of ``hpo nested``, the rows set aside are
    outer fold ``outer_fold`` of ``outer_folds``."""

    folds: int = 5
    shuffle: bool = True
    seed: int = 42
    stratified: bool = False
    repeats: int = 1
    holdout: float = 0.0
    seeds: int = 1
    outer_folds: int = 0
    outer_fold: int = 0

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ValueError(f"`seeds >= 1` must hold, but got (seeds={self.seeds})")
        # ``outer_folds``/``outer_fold``: set by ``hpo nested`` on its inner studies, whose
        # held-out rows are one outer fold; 0 outside nested cross-validation.
        if self.outer_folds == 1 or self.outer_folds < 0:
            raise ValueError(f"`outer_folds` must be 0 or >= 2, but got {self.outer_folds}")
        if not 0 <= self.outer_fold < max(self.outer_folds, 1):
            raise ValueError(
                f"`outer_fold` must be in [0, {max(self.outer_folds - 1, 0)}], "
                f"but got {self.outer_fold}"
            )
        if self.outer_folds and self.holdout:
            raise ValueError(
                "`holdout` and nested cross-validation both set rows aside; use one of them"
            )
        if not 0 <= self.holdout <= 0.5:
            raise ValueError(
                f"`holdout` is the fraction of rows set aside, 0 (none) to 0.5, e.g. 0.2, "
                f"but got {self.holdout}"
            )
        if self.folds < 2:
            raise ValueError(f"`folds >= 2` must hold, but got (folds={self.folds})")
        if self.repeats < 1:
            raise ValueError(f"`repeats >= 1` must hold, but got (repeats={self.repeats})")
        if not 0 <= self.seed <= seeds.MAX_SEED:
            raise ValueError(
                f"`0 <= seed <= {seeds.MAX_SEED}` must hold, but got (seed={self.seed})"
            )
        if not self.shuffle and self.repeats > 1:
            raise ValueError(
                "`repeats > 1` needs `shuffle = true` (unshuffled repeats are identical)"
            )


_BUILDER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """The network. Either the built-in Dense stack (``hidden``, ``activation``) or the user's
    own: ``builder = "module:function"``, called with ``(n_features, n_classes)``, returns a
    Keras model; ``builder_path`` is the folder its module is imported from first (then
    ``sys.path``), by default the study file's. ``optimizer``/``learning_rate`` compile a
    builder's model only when it comes back uncompiled. ``builder_signature``: set by hpo once
    the model is built, its layers' types and settings, so a changed builder is a changed
    protocol.
    """

    hidden: tuple[int, ...] = (50, 25)
    activation: str = "relu"
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    epochs: int = 500
    batch_size: int = 32
    builder: str | None = None
    builder_path: str | None = None
    builder_signature: str | None = None

    def __post_init__(self) -> None:
        if self.builder is not None and not _BUILDER.fullmatch(self.builder):
            raise ValueError(
                "`builder` must be 'module:function' (e.g. 'mymodels:build', a function taking "
                f"n_features and n_classes), but got {self.builder!r}"
            )
        if not self.hidden:
            raise ValueError("`hidden` must list at least one layer width, e.g. [50, 25]")
        for units in self.hidden:
            if units < 1:
                raise ValueError(f"every `hidden` width must be >= 1, but got {list(self.hidden)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"`activation` must be one of {', '.join(ACTIVATIONS)}, but got {self.activation!r}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"`optimizer` must be one of {', '.join(OPTIMIZERS)}, but got {self.optimizer!r}"
            )
        if not self.learning_rate > 0:
            raise ValueError(f"`learning_rate > 0` must hold, but got {self.learning_rate}")
        if self.epochs <= 0:
            raise ValueError(f"`epochs > 0` must hold, but got (epochs={self.epochs})")
        if self.batch_size <= 0:
            raise ValueError(f"`batch_size > 0` must hold, but got (batch_size={self.batch_size})")


@dataclass(frozen=True, kw_only=True)
class EngineSpec:
    """How trials are trained. ``trials_per_batch`` only matters to the stacked engine."""

    name: str = "stacked"
    # "auto": measured on this machine for the data's shape when training starts
    # (hpo.engines.batching), then cached.
    trials_per_batch: int | str = "auto"
    checkpoint_every: int = 0
    threads: int = 0

    def __post_init__(self) -> None:
        if self.name not in ENGINES:
            raise ValueError(f"`name` must be one of {', '.join(ENGINES)}, but got {self.name!r}")
        if isinstance(self.trials_per_batch, str) and self.trials_per_batch != "auto":
            raise ValueError(
                '`trials_per_batch` must be "auto" or a whole number >= 1, but got '
                f"{self.trials_per_batch!r}"
            )
        if isinstance(self.trials_per_batch, int) and self.trials_per_batch < 1:
            raise ValueError(
                f"`trials_per_batch >= 1` must hold, but got (trials_per_batch={self.trials_per_batch})"
            )
        if self.checkpoint_every < 0:
            raise ValueError(f"`checkpoint_every >= 0` must hold, but got {self.checkpoint_every}")
        if self.threads < 0:
            raise ValueError(
                f"`threads >= 0` must hold (0 = the engine's measured default), but got {self.threads}"
            )


PRUNERS = ("none", "median", "percentile", "successive_halving", "hyperband", "wilcoxon")
# The settings each pruner takes (Optuna 5's constructor arguments that make sense here).
PRUNER_KEYS: dict[str, tuple[str, ...]] = {
    "none": (),
    "median": ("n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials"),
    "percentile": (
        "percentile",
        "n_startup_trials",
        "n_warmup_steps",
        "interval_steps",
        "n_min_trials",
    ),
    "successive_halving": (
        "min_resource",
        "reduction_factor",
        "min_early_stopping_rate",
        "bootstrap_count",
    ),
    "hyperband": ("min_resource", "max_resource", "reduction_factor", "bootstrap_count"),
    "wilcoxon": (),
}
# Why Wilcoxon is refused rather than offered: its test pairs a trial's values with the best
# trial's at the same steps as independent instances (one score per fold or data set) whose mean
# is the objective; a checkpoint reports the running out-of-fold accuracy, a learning curve.
_WILCOXON = (
    "the Wilcoxon pruner does not fit hpo's checkpoints: it treats steps as independent instances "
    "(one score each, the objective their mean), but a checkpoint reports the running "
    "out-of-fold accuracy of a learning curve; use "
    '"median", "percentile", "successive_halving" or "hyperband"'
)


@dataclass(frozen=True, kw_only=True)
class PrunerSpec:
    """Which Optuna pruner stops poor trials at the engine's checkpoints, and its settings.

    A setting left out (None) takes the pruner's default (``make_pruner`` in
    ``hpo.study.record``), so a stored spec holds only what the study file said and a setting
    of another pruner is refused instead of ignored. Steps are epochs on the stacked engine and
    folds on the reference engine; ``min_resource`` defaults to ``[engine] checkpoint_every``
    (the first checkpoint) and ``max_resource`` to the whole training. Pruning changes what a
    study costs, not what a complete trial's score means, so a resumed study may change it.

    The default is no pruning: ``bench/pruning.py`` found no pruner reaching a plan within one
    noise std of the no-pruning best sooner on the course study (the first batch of random
    start-up plans usually holds one already), while pruning lowered the final best.
    """

    name: str = "none"
    n_startup_trials: int | None = None
    n_warmup_steps: int | None = None
    interval_steps: int | None = None
    n_min_trials: int | None = None
    percentile: float | None = None
    min_resource: int | None = None
    max_resource: int | None = None
    reduction_factor: int | None = None
    min_early_stopping_rate: int | None = None
    bootstrap_count: int | None = None

    def __post_init__(self) -> None:
        if self.name == "wilcoxon":
            raise ValueError(f'`name = "wilcoxon"`: {_WILCOXON}')
        if self.name not in PRUNERS:
            choices = ", ".join(repr(p) for p in PRUNERS if p != "wilcoxon")
            raise ValueError(f"`name` must be one of {choices}, but got {self.name!r}")
        own = PRUNER_KEYS[self.name]
        for key in self.given():
            if key not in own:
                owners = [repr(p) for p, keys in PRUNER_KEYS.items() if key in keys]
                settings = f"its settings: {', '.join(own)}" if own else "it has no settings"
                raise ValueError(
                    f"`{key}` is not a setting of the {self.name!r} pruner ({settings}); "
                    f"remove it, or set `name` to {' or '.join(owners)}"
                )
        if self.name == "percentile" and self.percentile is None:
            raise ValueError(
                '`name = "percentile"` needs `percentile`: the top share of trials kept at '
                "each checkpoint, in percent (e.g. 25.0 keeps the best quarter)"
            )
        lowest = {
            "n_startup_trials": 0,
            "n_warmup_steps": 0,
            "interval_steps": 1,
            "n_min_trials": 1,
            "min_resource": 1,
            "max_resource": 1,
            "reduction_factor": 2,
            "min_early_stopping_rate": 0,
            "bootstrap_count": 0,
        }
        for key, low in lowest.items():
            value = getattr(self, key)
            if value is not None and value < low:
                raise ValueError(f"`{key} >= {low}` must hold, but got ({key}={value})")
        if self.percentile is not None and not 0 < self.percentile < 100:
            raise ValueError(
                "`percentile` is the top share of trials kept, in percent: "
                f"`0 < percentile < 100` must hold, but got (percentile={self.percentile})"
            )
        if (
            self.min_resource is not None
            and self.max_resource is not None
            and self.max_resource < self.min_resource
        ):
            raise ValueError(
                "`max_resource >= min_resource` must hold, but got "
                f"(max_resource={self.max_resource}, min_resource={self.min_resource})"
            )

    def given(self) -> tuple[str, ...]:
        """The settings the spec sets (the rest take the pruner's defaults)."""
        return tuple(
            f.name
            for f in dataclasses.fields(self)
            if f.name != "name" and getattr(self, f.name) is not None
        )


# TPE's "good" set is the best min(ceil(n / 10), 25) trials: a bounded history of at least
# 250 trials always holds exactly that set (hpo.study.sampler).
MIN_SAMPLER_HISTORY = 250


STARTUPS = ("qmc", "random")


@dataclass(frozen=True, kw_only=True)
class SamplerSpec:
    """TPE's settings. ``max_history``: past this many finished trials, TPE is fitted on the
    best 25 and the most recent others (0: on all), which keeps its cost per trial flat."""

    seed: int | None = None
    # "auto": fitted to the budget (hpo.study.sampler.startup_trials).
    n_startup_trials: int | str = "auto"
    startup: str = "qmc"
    multivariate: bool = True
    group: bool = True
    constant_liar: bool = True
    max_history: int = 250

    def __post_init__(self) -> None:
        if isinstance(self.n_startup_trials, str) and self.n_startup_trials != "auto":
            raise ValueError(
                '`n_startup_trials` must be "auto" (fitted to the budget) or a whole number '
                f">= 0, but got {self.n_startup_trials!r}"
            )
        if isinstance(self.n_startup_trials, int) and self.n_startup_trials < 0:
            raise ValueError(f"`n_startup_trials >= 0` must hold, but got {self.n_startup_trials}")
        if self.startup not in STARTUPS:
            raise ValueError(
                f"`startup` must be one of {', '.join(map(repr, STARTUPS))}, but got "
                f"{self.startup!r}"
            )
        if self.max_history and self.max_history < MIN_SAMPLER_HISTORY:
            raise ValueError(
                f"`max_history` must be 0 (no bound) or at least {MIN_SAMPLER_HISTORY}, but "
                f"got (max_history={self.max_history})"
            )
        if self.seed is not None and not 0 <= self.seed <= seeds.MAX_SEED:
            raise ValueError(
                f"`0 <= seed <= {seeds.MAX_SEED}` must hold, but got (seed={self.seed})"
            )


EARLY_STOPS = ("none", "within-noise")


@dataclass(frozen=True, kw_only=True)
class BudgetSpec:
    """When a study ends: ``n_trials`` finished, ``timeout`` seconds, or (``early_stop =
    "within-noise"``) once no plan is expected to beat the best by more than its CV noise
    (:mod:`hpo.study.stopping`)."""

    n_trials: int | None = 20
    timeout: float | None = None
    early_stop: str = "none"

    def __post_init__(self) -> None:
        if self.n_trials is not None and self.n_trials < 1:
            raise ValueError(f"`n_trials >= 1` must hold, but got (n_trials={self.n_trials})")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"`timeout > 0` must hold, but got (timeout={self.timeout})")
        if self.timeout is not None and not math.isfinite(self.timeout):
            raise ValueError(f"`timeout` must be a finite number, but got (timeout={self.timeout})")
        if self.early_stop not in EARLY_STOPS:
            raise ValueError(
                f"`early_stop` must be one of {', '.join(map(repr, EARLY_STOPS))}, but got "
                f"{self.early_stop!r}"
            )


ARTIFACT_MODELS = ("fold", "refit", "none")
ARTIFACT_STORES = ("database", "folder")
S3_SCHEME = "s3://"
# S3's bucket naming rules: 3 to 63 lowercase letters, digits, dots and hyphens, starting and
# ending with a letter or digit.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def s3_location(url: str) -> tuple[str, str]:
    """``(bucket, prefix)`` of an ``s3://BUCKET/PREFIX`` store (the prefix without slashes at
    its ends, possibly empty). A URL with credentials in it is refused without repeating it:
    they come from the usual AWS environment variables.

    >>> s3_location("s3://hpo-runs/team/a/")
    ('hpo-runs', 'team/a')
    """
    rest = url[len(S3_SCHEME) :] if url.startswith(S3_SCHEME) else None
    if rest is None:
        raise ValueError(f"`store` {url!r} is not an s3://BUCKET/PREFIX URL")
    bucket, _, prefix = rest.partition("/")
    if "@" in bucket or ":" in bucket:
        raise ValueError(
            "`store` must not hold credentials (an s3:// URL with '@' or ':' before the bucket); "
            "give them as AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment"
        )
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ValueError(
            f"`store` {url!r} names no valid S3 bucket ({bucket!r}: 3 to 63 lowercase letters, "
            "digits, dots and hyphens); write s3://BUCKET or s3://BUCKET/PREFIX"
        )
    if "?" in prefix or "#" in prefix or "//" in prefix.strip("/"):
        raise ValueError(f"`store` {url!r} has a malformed prefix {prefix!r}")
    return bucket, prefix.strip("/")


@dataclass(frozen=True, kw_only=True)
class ArtifactsSpec:
    """What the best trials leave behind for the dashboard and the report.

    ``model``: "fold" saves the model trained on the first fold, "refit" retrains the plan on all
    rows, "none" saves no model. ``store``: where the files go, for every process of the study:
    "database" (chunked into the study's own database; the default for PostgreSQL),
    "s3://BUCKET/PREFIX" (credentials from the AWS environment variables) or "folder" (the
    default for SQLite); fixed when the study is created. ``path``: the folder of a "folder"
    store (default: next to a SQLite study file, else ``./artifacts``). ``live``: a
    per-fold table for every trial and a confusion matrix for each trial among the best as it
    finishes, during the run (default: files for the final best ``top_k`` at the end).
    """

    store: str | None = None
    path: str | None = None
    top_k: int = 3
    model: str = "fold"
    live: bool = False

    def __post_init__(self) -> None:
        if self.store is not None:
            if self.store not in ARTIFACT_STORES and not self.store.startswith(S3_SCHEME):
                raise ValueError(
                    f"`store` must be {', '.join(map(repr, ARTIFACT_STORES))} or "
                    f"'s3://BUCKET/PREFIX', but got {self.store!r}"
                )
            if self.store.startswith(S3_SCHEME):
                s3_location(self.store)  # a bad bucket or a URL with credentials: refused here
            if self.path is not None and self.store != "folder":
                raise ValueError(
                    f"`path` names a folder, but `store` is {self.store!r}; remove one of them"
                )
        if self.top_k < 0:
            raise ValueError(f"`top_k >= 0` must hold, but got (top_k={self.top_k})")
        if self.model not in ARTIFACT_MODELS:
            raise ValueError(
                f"`model` must be one of {', '.join(ARTIFACT_MODELS)}, but got {self.model!r}"
            )


@dataclass(frozen=True, kw_only=True)
class StudySpec:
    name: str
    direction: str = "maximize"
    description: str = ""
    data: DataSpec
    cv: CVSpec = CVSpec()
    model: ModelSpec = ModelSpec()
    engine: EngineSpec = EngineSpec()
    pruner: PrunerSpec = PrunerSpec()
    search: SearchSpec = field(default_factory=lambda: SearchSpec(layers=(LayerSearchSpec(),) * 2))
    sampler: SamplerSpec = SamplerSpec()
    budget: BudgetSpec = BudgetSpec()
    artifacts: ArtifactsSpec = ArtifactsSpec()
    source: str = ""

    def __post_init__(self) -> None:
        if not self.name or any(c.isspace() for c in self.name):
            raise ValueError(
                f"`name` must be a non-empty word without spaces, but got {self.name!r}"
            )
        if self.direction != "maximize":
            raise ValueError(
                f"`direction` must be 'maximize' (the objective is accuracy), but got {self.direction!r}"
            )
        if self.model.builder is None and (self.search.names or self.search.exclude):
            raise ValueError(
                "[search] names layers (`layers` by name or `exclude`), which needs "
                "[model] builder; the built-in network's layers are searched by position"
            )
        if self.model.builder is None and len(self.search.layers) != len(self.model.hidden):
            raise ValueError(
                f"[search] describes {len(self.search.layers)} layers but [model] hidden has "
                f"{len(self.model.hidden)}"
            )
        if self.pruner.name != "none" and not self.engine.checkpoint_every:
            # A pruner acts only on the engine's checkpoints: without them it would be a
            # setting silently ignored.
            raise ValueError(
                f'[pruner] name = "{self.pruner.name}" acts at checkpoints, but [engine] '
                "checkpoint_every is 0 (none); set it (in epochs on the stacked engine, e.g. 25; "
                'in folds on the reference engine, e.g. 1) or use name = "none"'
            )

    def replace(self, **sections: Any) -> StudySpec:
        """A copy with whole sections or fields swapped (``model=..., engine=...``)."""
        return dataclasses.replace(self, **sections)

    @property
    def base_seed(self) -> int:
        """The study's seed: ``[sampler] seed``, else ``[cv] seed``; every trial seed derives from it."""
        return self.sampler.seed if self.sampler.seed is not None else self.cv.seed

    def trial_seed(self, trial_number: int) -> int:
        """The seed of one trial: a pure function of the study and the trial number."""
        return seeds.trial_seed(self.base_seed, trial_number)


# The start-up never takes more than Optuna's default of 10 trials: past that, a larger budget
# is better spent on TPE's proposals.
STARTUP_CAP = 10


def startup_trials(spec: StudySpec) -> int:
    """How many trials (the baseline included) are drawn before TPE proposes: ``[sampler]
    n_startup_trials``, or with ``"auto"`` a third of the budget, at most :data:`STARTUP_CAP`.

    >>> from hpo.spec import spec_from_dict
    >>> def start(n): return startup_trials(spec_from_dict(
    ...     {"study": {"name": "s"}, "data": {"dataset": "sklearn:wine", "target": "target"},
    ...      "budget": {"n_trials": n}}))
    >>> [start(n) for n in (12, 16, 32, 100)]
    [4, 6, 10, 10]
    """
    setting = spec.sampler.n_startup_trials
    if setting != "auto":
        return int(setting)
    if spec.budget.n_trials is None:
        return STARTUP_CAP
    return max(1, min(STARTUP_CAP, math.ceil(spec.budget.n_trials / 3)))


def apply_overrides(spec: StudySpec, **overrides: Any) -> StudySpec:
    """``spec`` with the command line's (or the API's) overrides: ``name``, ``epochs``,
    ``engine``, ``trials_per_batch``, ``n_trials``, ``timeout``; ``None`` keeps the study
    file's value. The dataclasses re-validate every value."""

    def changed(section: Any, **values: Any) -> Any:
        values = {k: v for k, v in values.items() if v is not None}
        return dataclasses.replace(section, **values) if values else section

    try:
        return spec.replace(
            name=overrides.get("name") or spec.name,
            model=changed(spec.model, epochs=overrides.get("epochs")),
            engine=changed(
                spec.engine,
                name=overrides.get("engine"),
                trials_per_batch=overrides.get("trials_per_batch"),
            ),
            budget=changed(
                spec.budget, n_trials=overrides.get("n_trials"), timeout=overrides.get("timeout")
            ),
        )
    except ValueError as exc:
        raise HpoError(f"{spec.source}: {exc}") from None


# --- parsing -------------------------------------------------------------------------------

_SECTION_TYPES: dict[str, type] = {
    "data": DataSpec,
    "cv": CVSpec,
    "model": ModelSpec,
    "engine": EngineSpec,
    "pruner": PrunerSpec,
    "sampler": SamplerSpec,
    "budget": BudgetSpec,
    "artifacts": ArtifactsSpec,
}
_TOP_LEVEL = ("study", "search", *_SECTION_TYPES)
_STUDY_KEYS = ("name", "direction", "description")
_LAYER_KEYS = ("l1", "l2", "placements", "allow_none")
_BUILT_IN_ONLY = ("hidden", "activation")  # [model] keys a builder's model has no use for
_SEARCH_KEYS = (*_LAYER_KEYS, "layers", "baseline", "exclude")

# The resolved annotations (``from __future__ import annotations`` leaves only their text) that
# every value from a file or a stored spec is checked against, element by element for tuples.
_HINTS: dict[type, dict[str, Any]] = {
    cls: get_type_hints(cls) for cls in (*_SECTION_TYPES.values(), LayerSearchSpec, StudySpec)
}
# What a study file may hold for each scalar type: singular for a value, plural for a list.
_NAMES: dict[type, tuple[str, str]] = {
    bool: ("true or false", "booleans"),
    int: ("an integer", "integers"),
    float: ("a number", "numbers"),
    str: ("a string", "strings"),
}


def _suggest(key: str, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean `{close[0]}`?)" if close else ""
    return f"{hint}; allowed: {', '.join(allowed)}"


def _check_keys(
    where: str, table: Mapping[str, Any], allowed: tuple[str, ...], origin: str
) -> None:
    if not isinstance(table, Mapping):
        raise HpoError(f"{origin}: `{where}` must be a table, but got {table!r}")
    for key in table:
        if key not in allowed:
            dotted = f"{where}.{key}" if where else key
            raise HpoError(f"{origin}: unknown key `{dotted}`{_suggest(key, allowed)}")


def _is_a(value: Any, expected: type) -> bool:
    """Whether ``value`` may stand for an ``expected``: booleans are never numbers, and an
    integer may stand for a float (``timeout = 60``)."""
    if expected is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if expected is float:
        return isinstance(value, int | float)
    return isinstance(value, expected)


def _is_finite(number: float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an integer too large for a float
        return False


def _value(where: str, hint: Any, value: Any, origin: str) -> Any:
    """``value`` checked against the resolved annotation ``hint`` (a scalar, ``tuple[X, ...]``,
    or either of them ``| None``); a list comes back as a tuple."""
    options = get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    kinds = [option for option in options if option is not type(None)]
    if len(kinds) > 1:  # scalars of either type (say "auto" or a number): the section checks
        if not any(_is_a(value, kind) for kind in kinds):
            names = " or ".join(_NAMES[kind][0] for kind in kinds)
            raise HpoError(f"{origin}: `{where}` must be {names}, but got {value!r}")
        return value
    (expected,) = kinds
    if get_origin(expected) is tuple:
        item = get_args(expected)[0]
        if not isinstance(value, list | tuple) or not all(_is_a(v, item) for v in value):
            raise HpoError(
                f"{origin}: `{where}` must be a list of {_NAMES[item][1]}, but got {value!r}"
            )
        return tuple(value)
    if not _is_a(value, expected):
        raise HpoError(f"{origin}: `{where}` must be {_NAMES[expected][0]}, but got {value!r}")
    if expected is float and not _is_finite(value):
        raise HpoError(f"{origin}: `{where}` must be a finite number, but got {value!r}")
    return value


def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _required(cls: type) -> tuple[str, ...]:
    return tuple(
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )


def _coerce(section: str, cls: type, raw: Mapping[str, Any], origin: str) -> Any:
    if cls is DataSpec:
        return _data(raw, origin)
    _check_keys(section, raw, _field_names(cls), origin)
    values = {
        key: _value(f"{section}.{key}", _HINTS[cls][key], value, origin)
        for key, value in raw.items()
    }
    return _build(section, cls, values, origin)


def _build(section: str, cls: type, values: dict[str, Any], origin: str) -> Any:
    for key in _required(cls):
        if key not in values:
            raise HpoError(f"{origin}: [{section}] is missing the required key `{key}`")
    try:
        return cls(**values)
    except ValueError as exc:
        raise HpoError(f"{origin}: [{section}] {exc}") from None


# [data] fields the study file spells another way (parsed by _data, written by _data_to_plain).
_DATA_INTERNAL = ("column_na_values", "all_integer_categorical")
_DATA_SPECIAL = ("na_values", "categorical", "merge_classes")
# In a per-column `na_values` table, the markers of every column.
ALL_COLUMNS = "*"
ALL_INTEGER = "all-integer"


def _data(raw: Mapping[str, Any], origin: str) -> DataSpec:
    """``[data]``: the plain keys as every section's; ``na_values`` (a list, or a table per
    column), ``categorical`` (a list, or ``"all-integer"``) and ``merge_classes`` (a table of
    lists) by their own forms."""
    keys = tuple(key for key in _field_names(DataSpec) if key not in _DATA_INTERNAL)
    _check_keys("data", raw, keys, origin)
    values = {
        key: _value(f"data.{key}", _HINTS[DataSpec][key], value, origin)
        for key, value in raw.items()
        if key not in _DATA_SPECIAL
    }
    strings = tuple[str, ...]
    if "na_values" in raw:
        markers = raw["na_values"]
        if isinstance(markers, Mapping):
            per_column = {
                str(name): _value(f"data.na_values.{name}", strings, value, origin)
                for name, value in markers.items()
            }
            values["na_values"] = per_column.pop(ALL_COLUMNS, ())
            values["column_na_values"] = tuple(per_column.items())
        elif isinstance(markers, list):
            values["na_values"] = _value("data.na_values", strings, markers, origin)
        else:
            raise HpoError(
                f"{origin}: `data.na_values` must be a list of strings (markers in every column) "
                'or a table of column = [markers] (e.g. { glucose = ["0"], "*" = ["?"] }), but '
                f"got {markers!r}"
            )
    if "categorical" in raw:
        columns = raw["categorical"]
        if columns == ALL_INTEGER:
            values["all_integer_categorical"] = True
        elif isinstance(columns, list):
            values["categorical"] = _value("data.categorical", strings, columns, origin)
        else:
            raise HpoError(
                f'{origin}: `data.categorical` must be a list of column names or "{ALL_INTEGER}" '
                f"(every whole-number column), but got {columns!r}"
            )
    if "merge_classes" in raw:
        merges = raw["merge_classes"]
        if not isinstance(merges, Mapping):
            raise HpoError(
                f"{origin}: `data.merge_classes` must be a table of new class = [classes it "
                f'replaces] (e.g. {{ other = ["a", "b"] }}), but got {merges!r}'
            )
        values["merge_classes"] = tuple(
            (str(new), _value(f"data.merge_classes.{new}", strings, old, origin))
            for new, old in merges.items()
        )
    spec: DataSpec = _build("data", DataSpec, values, origin)
    return spec


def _data_to_plain(data: DataSpec, plain: dict[str, Any]) -> dict[str, Any]:
    """``[data]`` as the study file writes it (``plain``: its fields as every section's)."""
    out = {key: value for key, value in plain.items() if key not in _DATA_INTERNAL}
    if data.column_na_values:
        out["na_values"] = {
            **({ALL_COLUMNS: list(data.na_values)} if data.na_values else {}),
            **{name: list(markers) for name, markers in data.column_na_values},
        }
    if data.all_integer_categorical:
        out["categorical"] = ALL_INTEGER
    out["merge_classes"] = {new: list(old) for new, old in data.merge_classes}
    return out


def _alpha(where: str, value: Any, origin: str) -> AlphaRange | AutoRange | None:
    if value == "off" or value is False:
        return None
    if value == "auto":
        return AUTO
    if isinstance(value, list) and len(value) == 2:
        value = {"low": value[0], "high": value[1]}
    if not isinstance(value, Mapping):
        raise HpoError(
            f'{origin}: `{where}` must be "auto", "off", [low, high] or {{ low = ..., high = ... }}, '
            f"but got {value!r}"
        )
    _check_keys(where, value, ("low", "high"), origin)
    for key, number in value.items():
        _value(f"{where}.{key}", float, number, origin)
    try:
        return AlphaRange(**{k: float(v) for k, v in value.items()})
    except ValueError as exc:
        raise HpoError(f"{origin}: `{where}`: {exc}") from None


def _layer(
    where: str, raw: Mapping[str, Any], defaults: LayerSearchSpec, origin: str
) -> LayerSearchSpec:
    _check_keys(where, raw, _LAYER_KEYS, origin)
    values: dict[str, Any] = {
        "l1": defaults.l1,
        "l2": defaults.l2,
        "placements": defaults.placements,
        "allow_none": defaults.allow_none,
    }
    for key in ("l1", "l2"):
        if key in raw:
            values[key] = _alpha(f"{where}.{key}", raw[key], origin)
    if "placements" in raw:
        placements = raw["placements"]
        if isinstance(placements, str):  # `placements = "kernel"`: a list of one
            placements = [placements]
        values["placements"] = _value(
            f"{where}.placements", _HINTS[LayerSearchSpec]["placements"], placements, origin
        )
    if "allow_none" in raw:
        values["allow_none"] = _value(
            f"{where}.allow_none", _HINTS[LayerSearchSpec]["allow_none"], raw["allow_none"], origin
        )
    try:
        layer = LayerSearchSpec(**values)
    except ValueError as exc:
        raise HpoError(f"{origin}: `{where}`: {exc}") from None
    if layer.l1 is None and layer.l2 is None and not layer.allow_none:
        raise HpoError(
            f"{origin}: `{where}` turns both l1 and l2 off; set `allow_none = true` "
            "to leave that layer unregularized"
        )
    return layer


def _search(raw: Mapping[str, Any], n_hidden: int, origin: str, *, named: bool) -> SearchSpec:
    _check_keys("search", raw, _SEARCH_KEYS, origin)
    defaults = _layer(
        "search",
        {k: v for k, v in raw.items() if k not in ("layers", "baseline", "exclude")},
        LayerSearchSpec(),
        origin,
    )
    baseline = _value("search.baseline", bool, raw.get("baseline", True), origin)
    if named:
        return _named_search(raw, defaults, baseline, origin)
    if "exclude" in raw:
        raise HpoError(
            f"{origin}: `search.exclude` needs [model] builder (it leaves layers of your own "
            "model out by name); the built-in network's layers are set in `search.layers`"
        )
    per_layer = raw.get("layers")
    # `default` is a builder's unnamed layers' (below); the built-in network's layers are all
    # in `layers`, which is what a stored spec keeps, so it reads back equal.
    if per_layer is None:
        return SearchSpec(layers=(defaults,) * n_hidden, baseline=baseline)
    if not isinstance(per_layer, list) or len(per_layer) != n_hidden:
        raise HpoError(
            f"{origin}: `search.layers` must be a list of {n_hidden} tables (one per hidden layer), "
            f"but got {per_layer!r}"
        )
    return SearchSpec(
        layers=tuple(
            _layer(f"search.layers[{i}]", table, defaults, origin)
            for i, table in enumerate(per_layer)
        ),
        baseline=baseline,
    )


def _named_search(
    raw: Mapping[str, Any], defaults: LayerSearchSpec, baseline: bool, origin: str
) -> SearchSpec:
    """``[search]`` of a builder study: ``layers`` is absent (every Dense/Conv layer but the
    output one), a list of Keras layer names, or a table keyed by layer name whose values
    override the section's settings for that layer."""
    exclude = _value("search.exclude", tuple[str, ...], raw.get("exclude", []), origin)
    per_layer = raw.get("layers")
    if per_layer is not None and exclude:
        raise HpoError(
            f"{origin}: [search] has both `layers` (search only these) and `exclude` (search "
            "all but these); use one of them"
        )
    if per_layer is None:
        names: tuple[str, ...] = ()
        layers: tuple[LayerSearchSpec, ...] = ()
    elif isinstance(per_layer, list) and all(isinstance(n, str) for n in per_layer):
        names = tuple(per_layer)
        layers = (defaults,) * len(names)
    elif isinstance(per_layer, Mapping):
        names = tuple(per_layer)
        layers = tuple(
            _layer(f"search.layers.{name}", table, defaults, origin)
            for name, table in per_layer.items()
        )
    else:
        raise HpoError(
            f"{origin}: with [model] builder, `search.layers` names the layers to search: a list "
            '(layers = ["wide", "deep"]) or a table per layer ([search.layers.wide]), '
            f"but got {per_layer!r}"
        )
    if per_layer is not None and not names:
        raise HpoError(
            f"{origin}: `search.layers` is empty: name at least one layer, or leave it out"
        )
    try:
        return SearchSpec(
            layers=layers, names=names, exclude=exclude, default=defaults, baseline=baseline
        )
    except ValueError as exc:
        raise HpoError(f"{origin}: [search] {exc}") from None


def _check_builder_keys(raw: Mapping[str, Any], origin: str) -> None:
    """Keys that only one kind of model uses are refused with the other, never ignored."""
    if "builder" in raw:
        given = [key for key in ("hidden", "activation") if key in raw]
        if given:
            raise HpoError(
                f"{origin}: [model] `{given[0]}` describes the built-in network, but `builder` "
                "names your own function, which builds the model: remove one of them"
            )
    elif "builder_path" in raw or "builder_signature" in raw:
        key = "builder_path" if "builder_path" in raw else "builder_signature"
        raise HpoError(f"{origin}: [model] `{key}` needs `builder` (the module's function)")


def spec_from_dict(raw: Mapping[str, Any], *, origin: str = "<study>") -> StudySpec:
    """Validate plain data (parsed TOML or a stored spec) into a :class:`StudySpec`."""
    if not isinstance(raw, Mapping):
        raise HpoError(f"{origin}: a study must be a table of sections, but got {raw!r}")
    _check_keys("", raw, _TOP_LEVEL, origin)
    study = raw.get("study")
    if study is None:
        raise HpoError(f"{origin}: the [study] table with a `name` is required")
    _check_keys("study", study, _STUDY_KEYS, origin)
    top = {
        key: _value(f"study.{key}", _HINTS[StudySpec][key], value, origin)
        for key, value in study.items()
    }
    if "name" not in top:
        raise HpoError(f"{origin}: [study] is missing the required key `name`")
    if "data" not in raw:
        raise HpoError(f"{origin}: the [data] table is required (path, url or dataset, and target)")
    sections = {
        name: _coerce(name, cls, raw.get(name, {}), origin) for name, cls in _SECTION_TYPES.items()
    }
    model = sections["model"]
    _check_builder_keys(raw.get("model", {}), origin)
    search = _search(
        raw.get("search", {}), len(model.hidden), origin, named=model.builder is not None
    )
    try:
        return StudySpec(**top, search=search, source=origin, **sections)
    except ValueError as exc:
        raise HpoError(f"{origin}: {exc}") from None


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a study file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HpoError(f"{path}: study file not found{_name_hint(path)}") from None
    except OSError as exc:
        raise HpoError(f"{path}: cannot read study file ({exc.strerror})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise HpoError(f"{path}: not valid TOML ({exc})") from None
    model = raw.get("model")
    if isinstance(model, Mapping) and "builder_signature" in model:
        raise HpoError(
            f"{path}: [model] `builder_signature` is not a study-file key (hpo records it on the "
            "study: a fingerprint of the model your builder makes); remove it"
        )
    spec = spec_from_dict(raw, origin=str(path))
    if spec.model.builder is None:
        return spec
    # The builder's module is looked for next to the study file (or in the folder it names,
    # relative to the study file), whatever the current directory.
    folder = path.resolve().parent / (spec.model.builder_path or ".")
    return spec.replace(model=dataclasses.replace(spec.model, builder_path=str(folder.resolve())))


def _name_hint(path: Path) -> str:
    """For a bare name given where a study file belongs (``hpo run wine``): the study file it
    may mean, and the command that shows a stored study of that name."""
    if path.suffix or len(path.parts) != 1:
        return ""
    name = str(path)
    candidates = [Path("studies") / f"{name}.toml", Path(f"{name}.toml")]
    found = next((c for c in candidates if c.is_file()), None)
    also = f"a study stored under that name: `hpo best {name}`"
    if found is not None:
        return f"; did you mean {found}? ({also})"
    return f"; give a study file such as studies/{name}.toml ({also})"


def _alpha_to_plain(alpha: AlphaRange | AutoRange | None) -> Any:
    if alpha is None:
        return "off"
    if isinstance(alpha, AutoRange):
        return "auto"
    return {"low": alpha.low, "high": alpha.high}


def spec_to_dict(spec: StudySpec) -> dict[str, Any]:
    """Plain, JSON-friendly data that :func:`spec_from_dict` turns back into ``spec``.

    A ``None`` whose default is ``None`` is left out, so the data is TOML-friendly too, except
    for a ``None`` that differs from its default (``BudgetSpec(n_trials=None)``: no limit).
    """

    def plain(section: Any) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if value is None and f.default is None:
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def layer_table(layer: LayerSearchSpec) -> dict[str, Any]:
        return {
            "l1": _alpha_to_plain(layer.l1),
            "l2": _alpha_to_plain(layer.l2),
            "placements": list(layer.placements),
            "allow_none": layer.allow_none,
        }

    search: dict[str, Any] = {"baseline": spec.search.baseline}
    if spec.model.builder is None:
        search["layers"] = [layer_table(layer) for layer in spec.search.layers]
    else:
        search.update(layer_table(spec.search.default))
        if spec.search.names:
            search["layers"] = {
                name: layer_table(layer)
                for name, layer in zip(spec.search.names, spec.search.layers, strict=True)
            }
        if spec.search.exclude:
            search["exclude"] = list(spec.search.exclude)
    return {
        "study": {"name": spec.name, "direction": spec.direction, "description": spec.description},
        **{name: plain(getattr(spec, name)) for name in _SECTION_TYPES},
        "data": _data_to_plain(spec.data, plain(spec.data)),
        **(
            {"model": {k: v for k, v in plain(spec.model).items() if k not in _BUILT_IN_ONLY}}
            if spec.model.builder is not None
            else {}
        ),
        "search": search,
    }
