"""The user's own Keras model: ``[model] builder = "module:function"``.

The function is called with ``(n_features, n_classes)`` and returns a functional or Sequential
Keras model. Its Dense and Conv1D/Conv2D layers, all but the output layer (the last of them),
are the searched layers, each known by its Keras name. A trial's penalties are attached by
rebuilding the model from its config with those layers' configs changed
(``keras.models.clone_model``): nothing of the user's code or of Keras is patched, the
rebuilt layers draw fresh initial weights from the seed set before the call, and a layer that
is not searched keeps whatever regularizers its config has. A searched layer's regularizers are
the plan's, so the baseline plan (all zeros) trains it unregularized.

:func:`resolve` checks the model once, before any training, and returns the spec with the
searched layers filled in; :func:`regularized_model` is what every engine call, artifact and
export builds from a plan. Subclassed models are refused: they have no config to rebuild from.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib
import importlib.machinery
import json
import os
import sys
import sysconfig
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

from hpo.engines.keras_model import compile_model, import_keras, regularizer
from hpo.errors import HpoError
from hpo.lazy import lazy_import
from hpo.log import get_logger
from hpo.space import LayerPenalty, RegularizationPlan
from hpo.spec import ModelSpec, SearchSpec, StudySpec

if TYPE_CHECKING:
    import keras
    import numpy as np
else:
    np = lazy_import("numpy")

__all__ = ["SEARCHABLE", "call_builder", "regularized_model", "resolve"]

_log = get_logger("builder")

# The layer classes that take kernel and activity regularizers the way the search sets them.
SEARCHABLE = ("Dense", "Conv1D", "Conv2D")


def _where(model: ModelSpec) -> str:
    return f"[model] builder {model.builder!r}"


def _library_folders() -> tuple[str, ...]:
    """Where Python's own modules, installed packages and hpo live: not the user's code."""
    paths = sysconfig.get_paths()
    folders = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    folders.add(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return tuple(os.path.join(os.path.realpath(f), "") for f in folders)


def _user_line(exc: BaseException) -> str:
    """`` at FILE:LINE``, the innermost place in the user's own code that ``exc`` passed
    through (a syntax error: where it is), or "" when none did. The user's code is what is
    neither Python's, an installed package's nor hpo's: the builder module and whatever of
    theirs it imports, wherever their folder is. Keras raises most errors deep in its own
    code; the line that called it is the one the user can fix."""
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        return f" at {exc.filename}:{exc.lineno}"
    library = _library_folders()
    place = ""
    for frame in traceback.extract_tb(exc.__traceback__):
        name = frame.filename
        if name.startswith("<") or os.path.realpath(name).startswith(library):
            continue
        place = f" at {name}:{frame.lineno}"
    return place


@contextmanager
def _import_path(folder: str | None) -> Iterator[None]:
    """``folder`` first on ``sys.path`` while the module is imported (then removed again, so
    hpo leaves the interpreter's path as it found it)."""
    if not folder:
        yield
        return
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        with suppress(ValueError):  # the user's module removed it itself
            sys.path.remove(folder)


# The file and modification time each builder module was loaded from: a long-lived process (a
# notebook, two studies in one script) gets the module a study names, as it is now on disk.
_LOADED: dict[str, tuple[str, float]] = {}


def _mtime(path: str | None) -> float:
    try:
        return os.stat(path).st_mtime if path else 0.0
    except OSError:
        return 0.0


def _fresh_module(name: str) -> Any:
    """``name`` imported from the current ``sys.path``; re-imported when the copy in
    ``sys.modules`` came from another file (another study's folder) or the file changed since
    (a builder edited in a notebook)."""
    cached = sys.modules.get(name)
    if cached is not None and "." not in name:
        found = importlib.machinery.PathFinder.find_spec(name, sys.path)
        origin = found.origin if found is not None else None
        if origin is not None and (
            getattr(cached, "__file__", None) != origin
            or _LOADED.get(name, (origin, _mtime(origin))) != (origin, _mtime(origin))
        ):
            del sys.modules[name]
    module = importlib.import_module(name)
    file = getattr(module, "__file__", None)
    if file:
        _LOADED[name] = (file, _mtime(file))
    return module


def _function(model: ModelSpec, origin: str) -> Callable[..., Any]:
    assert model.builder is not None
    module_name, _, function_name = model.builder.partition(":")
    where = f"{origin}: {_where(model)}"
    try:
        with _import_path(model.builder_path):
            module = _fresh_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module_name or module_name.startswith(missing + "."):
            places = f"{model.builder_path} or on sys.path" if model.builder_path else "sys.path"
            raise HpoError(
                f"{where}: no module {missing!r} in {places} (a worker on another machine "
                "needs the module there too: copy it, or name its folder in PYTHONPATH)"
            ) from None
        # The user's module imports something missing: `--debug` shows their traceback.
        raise HpoError(
            f"{where}: importing {module_name!r} failed{_user_line(exc)}: {exc}"
        ) from exc
    except Exception as exc:
        raise HpoError(
            f"{where}: importing {module_name!r} raised {type(exc).__name__}"
            f"{_user_line(exc)}: {exc}"
        ) from exc
    function = getattr(module, function_name, None)
    if function is None or not callable(function):
        found = getattr(module, "__file__", None) or module_name
        what = "no function" if function is None else "no callable"
        names = [n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_")]
        close = difflib.get_close_matches(function_name, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise HpoError(f"{where}: module {found} has {what} {function_name!r}{hint}")
    return function


def call_builder(model: ModelSpec, n_features: int, n_classes: int, origin: str = "") -> Any:
    """The user's model, as their function returns it (checked to be a rebuildable Keras
    model)."""
    keras = import_keras()
    function = _function(model, origin)
    where = f"{origin}: {_where(model)}".lstrip(": ")
    call = f"{model.builder.partition(':')[2]}(n_features={n_features}, n_classes={n_classes})"  # type: ignore[union-attr]
    try:
        with _import_path(model.builder_path):  # for imports the function itself makes
            net = function(n_features, n_classes)
    except Exception as exc:
        hint = ""
        if "unique" in str(exc) and "name" in str(exc):
            hint = " (layer names must be unique: the search's parameters are named after them)"
        text = " ".join(str(exc).split())
        raise HpoError(
            f"{where}: {call} raised {type(exc).__name__}{_user_line(exc)}: {text}{hint}"
        ) from exc
    if not isinstance(net, keras.Model):
        raise HpoError(
            f"{where}: {call} returned {type(net).__name__}, not a Keras model "
            "(return keras.Model(inputs, outputs) or a keras.Sequential)"
        )
    if not isinstance(net, keras.Sequential) and type(net).__name__ != "Functional":
        raise HpoError(
            f"{where}: {call} returned a subclassed model ({type(net).__name__}); hpo rebuilds "
            "the model from its config to attach regularizers, so build it with the functional "
            "API or keras.Sequential"
        )
    return net


def _searchable(net: Any) -> list[Any]:
    """The model's top-level Dense/Conv layers, in order; the last is the output layer."""
    return [layer for layer in net.layers if type(layer).__name__ in SEARCHABLE]


def _check_output(net: Any, n_features: int, n_classes: int, where: str) -> None:
    if len(net.outputs) != 1:
        raise HpoError(f"{where}: the model has {len(net.outputs)} outputs; it must have one")
    width = net.outputs[0].shape[-1]
    if width != n_classes:
        raise HpoError(
            f"{where}: the model's output has {width} units but the data has {n_classes} "
            f"classes: end it with Dense(n_classes, activation='softmax')"
        )
    rows = np.random.default_rng(0).normal(size=(4, n_features)).astype(np.float32)
    try:
        probabilities = np.asarray(net(rows, training=False))
    except Exception as exc:
        text = " ".join(str(exc).split())
        raise HpoError(
            f"{where}: the model does not take rows of {n_features} features "
            f"(inputs {[tuple(i.shape) for i in net.inputs]}): {type(exc).__name__}: {text}"
        ) from exc
    sums = probabilities.sum(axis=-1)
    if not (np.all(probabilities >= 0) and np.allclose(sums, 1.0, atol=1e-3)):
        raise HpoError(
            f"{where}: the model's output is not a probability per class (its rows sum to "
            f"{float(sums[0]):.3g}): end it with activation='softmax' (the loss is sparse "
            "categorical crossentropy on probabilities)"
        )


def _searched_names(net: Any, search: SearchSpec, where: str) -> tuple[str, ...]:
    layers = {layer.name: layer for layer in net.layers}
    if len(layers) != len(net.layers):
        names = [layer.name for layer in net.layers]
        twice = next(n for n in names if names.count(n) > 1)
        raise HpoError(
            f"{where}: two layers are named {twice!r}: layer names must be unique, since the "
            "search's parameters are named after them"
        )
    searchable = _searchable(net)
    candidates = searchable[:-1]
    output = searchable[-1].name if searchable else None
    allowed = [layer.name for layer in candidates]

    def check(name: str, key: str) -> None:
        if name == output:
            raise HpoError(
                f"{where}: [search] {key} names {name!r}, the output layer, which is never "
                "searched (its penalty would act on the class probabilities)"
            )
        if name in layers and name not in allowed:
            kind = type(layers[name]).__name__
            raise HpoError(
                f"{where}: [search] {key} names {name!r}, a layer of type {kind}; only "
                f"{', '.join(SEARCHABLE)} layers are searched"
            )
        if name not in layers:
            close = difflib.get_close_matches(name, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise HpoError(
                f"{where}: [search] {key} names {name!r}, which is not a layer of the model"
                f"{hint}; its searchable layers are {', '.join(map(repr, allowed)) or 'none'}"
            )

    for name in search.names:
        check(name, "layers")
    for name in search.exclude:
        check(name, "exclude")
    if search.names:
        return tuple(name for name in allowed if name in search.names)  # the model's order
    chosen = tuple(name for name in allowed if name not in search.exclude)
    if not chosen:
        left = " once `exclude` is applied" if allowed else ""
        raise HpoError(
            f"{where}: the model has no {', '.join(SEARCHABLE)} layer to regularize besides "
            f"its output layer{left}"
        )
    return chosen


def resolve(spec: StudySpec, n_features: int, n_classes: int) -> StudySpec:
    """``spec`` with its builder's searched layers filled in (in the model's layer order), the
    model checked, and the reference engine chosen; a spec without a builder comes back as is.

    Raises :class:`HpoError` with one line naming the file, function or layer for every way a
    builder can be wrong: module or function missing, the call raising, not a Keras model,
    subclassed, output width or activation wrong, names in ``[search]`` that do not exist.
    """
    if spec.model.builder is None:
        return spec
    where = f"{spec.source}: {_where(spec.model)}"
    net = call_builder(spec.model, n_features, n_classes, spec.source)
    _check_output(net, n_features, n_classes, where)
    names = _searched_names(net, spec.search, where)
    # Only the searched layers' names matter: the output layer, or a Dropout, may be unnamed.
    first_names = [layer.name for layer in _searchable(net)[:-1]]
    again = [layer.name for layer in _searchable(call_builder(spec.model, n_features, n_classes))]
    changed = [(a, b) for a, b in zip(first_names, again, strict=False) if a != b and a in names]
    if changed:
        # Keras numbers unnamed layers per process (dense, dense_1, ...): the training process
        # would build other names than the ones searched here.
        first, second = changed[0]
        raise HpoError(
            f"{where}: layer {first!r} is named by Keras, and its name changes from one build "
            f"to the next ({first!r}, then {second!r}): give every Dense and Conv layer a "
            "name (name='wide'), since the search's parameters are named after them"
        )
    given = dict(zip(spec.search.names, spec.search.layers, strict=True))
    search = dataclasses.replace(
        spec.search,
        names=names,
        layers=tuple(given.get(name, spec.search.default) for name in names),
    )
    engine = spec.engine
    if engine.name != "reference":
        # The stacked engine expresses only the built-in Dense stack as one graph.
        engine = dataclasses.replace(engine, name="reference")
    if getattr(net, "compiled", False):
        _log.info(
            "%s: the model comes back compiled, so its optimizer (%s) is kept; "
            "[model] optimizer and learning_rate are not used (the loss is still sparse "
            "categorical crossentropy, the metric accuracy)",
            _where(spec.model),
            type(net.optimizer).__name__,
        )
    model = dataclasses.replace(spec.model, builder_signature=architecture(net))
    return spec.replace(search=search, engine=engine, model=model)


# Per-layer settings that make two models different networks (names aside: Keras numbers
# unnamed layers per process). Regularizers are left out: they are what the search sets.
_IGNORED_CONFIG = {"name", "kernel_regularizer", "activity_regularizer", "dtype", "trainable"}


def architecture(net: Any) -> str:
    """A short fingerprint of the model's layers in order (type and settings), stored with the
    study so that resuming it with a changed builder is refused, not silently mixed."""
    layers = [
        [
            type(layer).__name__,
            {k: v for k, v in layer.get_config().items() if k not in _IGNORED_CONFIG},
        ]
        for layer in net.layers
    ]
    text = json.dumps(layers, sort_keys=True, default=lambda value: type(value).__name__)
    summary = " > ".join(f"{type(layer).__name__}" for layer in net.layers)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return (
        f"{len(net.layers)} layers ({summary}) #{digest}"
        if len(summary) < 120
        else f"{len(net.layers)} layers #{digest}"
    )


def regularized_model(
    plan: RegularizationPlan, model: ModelSpec, *, n_features: int, n_classes: int
) -> Any:
    """The builder's model rebuilt with the plan's regularizers on its named layers, compiled
    (with its own optimizer if it came back compiled, else the study's), with fresh weights
    drawn from the current Keras seed."""
    keras = import_keras()
    if not plan.names:
        raise ValueError("a builder's model needs a plan that names its layers")
    net = call_builder(model, n_features, n_classes)
    penalties = dict(zip(plan.names, plan.layers, strict=True))
    missing = [name for name in plan.names if name not in {layer.name for layer in net.layers}]
    if missing:
        raise HpoError(
            f"{_where(model)}: the plan regularizes layer {missing[0]!r}, which the model no "
            "longer has (was the builder changed since the study was created?)"
        )
    rebuilt = keras.models.clone_model(net, clone_function=_with_penalties(penalties))
    optimizer = None
    if getattr(net, "compiled", False) and net.optimizer is not None:
        optimizer = keras.optimizers.deserialize(keras.optimizers.serialize(net.optimizer))
    compile_model(rebuilt, model, optimizer=optimizer)
    return rebuilt


def _with_penalties(penalties: dict[str, LayerPenalty]) -> Callable[[Any], Any]:
    serialize = import_keras().regularizers.serialize

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        penalty = penalties.get(layer.name)
        if penalty is not None:
            kernel = regularizer(penalty.l1_kernel, penalty.l2_kernel)
            activity = regularizer(penalty.l1_activity, penalty.l2_activity)
            config["kernel_regularizer"] = None if kernel is None else serialize(kernel)
            config["activity_regularizer"] = None if activity is None else serialize(activity)
        return type(layer).from_config(config)

    return clone
