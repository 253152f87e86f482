"""Creating, opening and joining a study, and checking that a resumed one is still one experiment.

Every process that trains a study (``hpo run``, ``hpo worker`` knowing only the study's name,
``hpo.optimize``) builds its sampler and pruner here, from the stored spec, so all of a study's
workers search and prune alike. What is stored on the study is defined in :mod:`hpo.study.record`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hpo.data import Holdout
from hpo.errors import HpoError
from hpo.lazy import lazy_import
from hpo.seeds import MAX_SEED, sampler_seed, worker_sampler_offset
from hpo.space import param_names
from hpo.spec import StudySpec, spec_from_dict, spec_to_dict
from hpo.study.record import (
    BASELINE_ATTR,
    HOLDOUT_ATTR,
    POLICY_ATTR,
    SAMPLER_ATTR,
    SPEC_ATTR,
    CrashPolicy,
    SamplerStart,
    outer_fold_number,
    spec_changes,
    stored_spec,
    stored_spec_data,
)
from hpo.study.storage import Access, creation_lock, mask_url, open_storage, unwrap_rdb
from hpo.study.stores import fixed_store, store_setting, with_study_store

if TYPE_CHECKING:
    import optuna

    from hpo.study import sampler as sampling
else:
    optuna = lazy_import("optuna")
    # Its class derives from Optuna's TPE: imported on first use, like Optuna.
    sampling = lazy_import("hpo.study.sampler")

__all__ = [
    "check_holdout",
    "check_same_protocol",
    "create_or_load_study",
    "find_study",
    "join_study",
    "load_study",
    "make_pruner",
    "make_sampler",
    "pruner_settings",
    "pruner_steps",
    "update_stored_spec",
]

# What must match for a resumed study to stay one experiment (data location may differ).
_PROTOCOL_SECTIONS = ("cv", "model", "search")
_PROTOCOL_DATA_KEYS = (
    "target",
    "drop",
    "categorical",  # also "all-integer", in the study file's form
    "na_values",  # also the per-column markers
    "missing_target",
    "drop_classes",
    "merge_classes",
)
# What `hpo create` may change on an existing study.
# The pruner is one of them: it changes what a study costs, not what a complete trial's score
# means (every one trained to the end), so a resumed study may prune differently.
_UPDATABLE_SECTIONS = ("budget", "engine", "pruner")


def find_study(name: str, storage: optuna.storages.BaseStorage) -> optuna.Study | None:
    """Study ``name`` in ``storage`` if it exists (to read what it stores before this process
    trains or creates anything), else None."""
    try:
        return optuna.load_study(
            study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler()
        )
    except KeyError:
        return None


def load_study(name: str, storage_url: str, *, access: Access = "read") -> optuna.Study:
    """Study ``name``; a reader (the default) creates no database, directory or lock file.
    A missing study is one line naming the studies the storage does hold."""
    storage = open_storage(storage_url, access=access)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = sorted(
            s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
        )
        where = f"; studies there: {', '.join(names)}" if names else " (it holds no studies)"
        raise HpoError(f"no study named {name!r} in {mask_url(storage_url)}{where}") from None


def make_sampler(
    spec: StudySpec, *, seed_offset: int = 0, start: SamplerStart | None = None
) -> optuna.samplers.BaseSampler:
    """The study's TPE. Its seed (if ``[sampler] seed`` is set) is the study's own
    (:func:`hpo.seeds.sampler_seed`: an inner study of ``hpo nested`` gets one per outer fold)
    plus ``seed_offset``, which keeps resumed runs and workers from replaying each other's
    draws. ``start``: the study's recorded start-up (default: a new study's)."""
    start = start or SamplerStart.new(spec)
    own = (
        None
        if spec.sampler.seed is None
        else sampler_seed(spec.sampler.seed, outer_fold_number(spec))
    )
    design = (
        sampling.StartupDesign(param_names(spec.search), start.seed)
        if start.startup == "qmc" and spec.search.resolved
        else None
    )
    return sampling.HistorySampler(
        max_history=spec.sampler.max_history,
        design=design,
        seed=None if own is None else (own + seed_offset) % MAX_SEED,
        n_startup_trials=start.startup_trials,
        multivariate=spec.sampler.multivariate,
        group=spec.sampler.group,
        constant_liar=spec.sampler.constant_liar,
    )


def pruner_steps(spec: StudySpec) -> int:
    """The step at which a trial's training ends, in the unit the engine's checkpoints count:
    epochs on the stacked engine, folds on the reference engine (one ``model.fit`` per fold)."""
    return spec.model.epochs if spec.engine.name == "stacked" else spec.cv.folds


def pruner_settings(spec: StudySpec) -> dict[str, Any]:
    """The settings the study's pruner runs with: the spec's, the rest defaults; empty when
    nothing is pruned (``name = "none"``, or no checkpoints: ``[engine] checkpoint_every = 0``).

    The defaults are Optuna's, except the resources of successive halving and Hyperband: Optuna
    would guess them from finished trials (the first rung at 1/100 of the longest, i.e. before
    the first checkpoint); here the first rung is the first checkpoint and the largest resource
    the whole training.
    """
    p = spec.pruner
    every = spec.engine.checkpoint_every
    if p.name == "none" or not every:
        return {}
    curve = {"n_startup_trials": 5, "n_warmup_steps": 0, "interval_steps": 1, "n_min_trials": 1}
    table: dict[str, dict[str, Any]] = {
        "median": curve,
        "percentile": {"percentile": p.percentile, **curve},
        "successive_halving": {
            "min_resource": every,
            "reduction_factor": 4,
            "min_early_stopping_rate": 0,
            "bootstrap_count": 0,
        },
        "hyperband": {
            "min_resource": every,
            "max_resource": max(pruner_steps(spec), p.min_resource or every),
            "reduction_factor": 3,
            "bootstrap_count": 0,
        },
    }
    return {
        key: default if getattr(p, key) is None else getattr(p, key)
        for key, default in table[p.name].items()
    }


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The pruner ``[pruner]`` describes, made the same way in every process that trains (``hpo
    run``, ``hpo worker`` from the stored spec, ``hpo.optimize``), so all of a study's workers
    prune alike. Without checkpoints nothing is reported, so the no-op pruner says so."""
    settings = pruner_settings(spec)
    if not settings:
        return optuna.pruners.NopPruner()
    kinds = {
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
    }
    pruner: optuna.pruners.BasePruner = kinds[spec.pruner.name](**settings)
    return pruner


def create_or_load_study(
    spec: StudySpec,
    storage: optuna.storages.BaseStorage,
    *,
    seed_offset: int = 0,
    policy: CrashPolicy | None = None,
) -> tuple[optuna.Study, bool]:
    """The study named by ``spec``: created with the spec (and crash policy) stored on it, or
    resumed after checking that its protocol matches. Returns ``(study, created)``.

    Creation and its attributes happen under one lock, so a worker never sees a study without
    its spec, and processes racing to create it make it once.
    """
    sampler = make_sampler(spec, seed_offset=seed_offset)
    pruner = make_pruner(spec)
    # The artifact store is fixed at creation and stored with the spec (a folder as an absolute
    # path): every process of the study, on any machine and in any directory, reads it from
    # there. A resumed study is checked against the study file's own setting (``given``): the
    # backend's default is for new studies only, and a study stored before stores were chosen
    # keeps its folder.
    given = spec
    spec = fixed_store(spec, unwrap_rdb(storage).url)
    with creation_lock(unwrap_rdb(storage)):
        try:
            study = optuna.load_study(
                study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner
            )
        except KeyError:
            try:
                study = optuna.create_study(
                    study_name=spec.name,
                    storage=storage,
                    sampler=sampler,
                    pruner=pruner,
                    direction="maximize",
                )
            except optuna.exceptions.DuplicatedStudyError:  # made by a process without the lock
                study = optuna.load_study(
                    study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner
                )
            else:
                _finish_creation(study, spec, policy, seed_offset)
                return study, True
        if _half_made(study):
            # A creation that ended halfway (the process was killed between its steps): finish
            # it now, under the lock.
            _finish_creation(study, spec, policy, seed_offset)
            return study, True
    check_same_protocol(given, study)
    # A seeded sampler starts its random stream afresh in every process: resumed with the
    # offset it was created with, it would propose the trials it proposed then. Offset by the
    # trials stored so far, a resume explores on and stays reproducible.
    study.sampler = make_sampler(
        spec,
        seed_offset=seed_offset + len(study.get_trials(deepcopy=False)),
        start=SamplerStart.of(study, spec),
    )
    return study, False


def _half_made(study: optuna.Study) -> bool:
    """Whether ``study`` lacks part of what its creation stores: an attribute, or (no trial at
    all while its stored spec asks for one) the queued baseline. A study with trials is never
    half-made: a trial is only claimed once a creation has finished."""
    if study.get_trials(deepcopy=False):
        return False
    stored = study.user_attrs
    if any(key not in stored for key in (SPEC_ATTR, POLICY_ATTR, SAMPLER_ATTR)):
        return True
    spec = stored_spec(study)
    return spec is not None and spec.search.baseline


def _finish_creation(
    study: optuna.Study, spec: StudySpec, policy: CrashPolicy | None, seed_offset: int
) -> None:
    """Store what a new study carries, each part only where it is missing: the spec, the crash
    policy, the sampler's start-up, and the queued baseline. Each is a write of its own, so a
    process killed between them leaves a study the next one finishes (see the caller)."""
    stored = study.user_attrs
    if SPEC_ATTR not in stored:
        study.set_user_attr(SPEC_ATTR, spec_to_dict(spec))
    if POLICY_ATTR not in stored:
        study.set_user_attr(POLICY_ATTR, (policy or CrashPolicy()).to_dict())
    start = SamplerStart.of(study, spec) if SAMPLER_ATTR in stored else SamplerStart.new(spec)
    if SAMPLER_ATTR not in stored:
        study.set_user_attr(SAMPLER_ATTR, start.to_dict())
    study.sampler = make_sampler(spec, seed_offset=seed_offset, start=start)
    if spec.search.baseline and not study.get_trials(deepcopy=False):
        # Trial 0, queued before any worker can ask: the network with no penalty, so every
        # study shows what regularization bought. It has no params, which keeps it out of TPE's
        # model (its zeros are outside the log-uniform ranges).
        study.enqueue_trial({}, user_attrs={BASELINE_ATTR: True})


def join_study(
    name: str, storage: optuna.storages.RDBStorage, *, shown_url: str | None = None, worker: str
) -> tuple[optuna.Study, StudySpec]:
    """An existing study and its stored spec, knowing only its name (``hpo worker``).
    ``shown_url``: the storage as the user wrote it, for messages; ``worker``: this process's id,
    which offsets the sampler's seed."""
    shown = mask_url(shown_url or storage.url)
    with creation_lock(storage):
        try:
            study_id = storage.get_study_id_from_name(name)
        except KeyError:
            names = sorted(s.study_name for s in storage.get_all_studies())
            where = f"; studies there: {', '.join(names)}" if names else " (it holds no studies)"
            raise HpoError(
                f"no study named {name!r} in {shown}{where}; create it first with "
                "`hpo create STUDY_FILE --storage URL`"
            ) from None
        raw = storage.get_study_user_attrs(study_id).get(SPEC_ATTR)
    if raw is None:
        raise HpoError(
            f"study {name!r} in {shown} has no stored study spec (it was not made by hpo); "
            "create a new one with `hpo create STUDY_FILE --name NEW_NAME`"
        )
    spec = spec_from_dict(stored_spec_data(raw), origin=f"study {name!r}")
    # The study's pruner, from the stored spec: a worker knows nothing else of the study.
    study = optuna.load_study(study_name=name, storage=storage, pruner=make_pruner(spec))
    # Offset by this worker's id and by the trials stored when it joined: a worker restarted
    # with the same id (a container's pid 1 on the same host) must not replay its draws.
    study.sampler = make_sampler(
        spec,
        seed_offset=worker_sampler_offset(worker) + len(study.get_trials(deepcopy=False)),
        start=SamplerStart.of(study, spec),
    )
    return study, spec


def check_holdout(study: optuna.Study, holdout: Holdout | None) -> None:
    """Record the held-out rows on the study, or refuse data whose held-out rows differ from
    the recorded ones: trials on such data could train on rows the holdout has to keep unseen."""
    if holdout is None:
        return
    stored = study.user_attrs.get(HOLDOUT_ATTR)
    if stored is None:
        study.set_user_attr(HOLDOUT_ATTR, holdout.to_dict())
        return
    if stored.get("sha256") != holdout.fingerprint:
        raise HpoError(
            f"study {study.study_name!r}: the rows held out from the search are not the ones "
            f"recorded on the study ({stored.get('rows')} of {stored.get('of')} rows, sha256 "
            f"{str(stored.get('sha256'))[:12]}; this data gives {len(holdout.holdout_rows)} of "
            f"{holdout.to_dict()['of']}, sha256 {holdout.fingerprint[:12]}): the data changed "
            "since the search began; use the data the study was searched on"
        )


def _layer_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[str, Any, Any]:
    """The first difference between two ``search.layers`` tables keyed by layer name."""
    if list(old) != list(new):
        return "search.layers (searched layers)", list(old), list(new)
    for name in old:
        for key in old[name]:
            if old[name][key] != new[name].get(key):
                return f"search.layers.{name}.{key}", old[name][key], new[name].get(key)
    return "search.layers", old, new


def _refuse_new_auto_default(spec: StudySpec, changes: list[tuple[str, Any, Any]]) -> None:
    """A study made when the alphas' default was a fixed range, resumed with a file that
    leaves them out (so now "auto"): say so, with the lines that resume it."""
    for key, old, new in changes:
        if key != "search.layers" or not isinstance(old, list) or not isinstance(new, list):
            continue
        for was, now in zip(old, new, strict=False):
            for alpha in ("l1", "l2"):
                if isinstance(was.get(alpha), Mapping) and now.get(alpha) == "auto":
                    low, high = was[alpha]["low"], was[alpha]["high"]
                    raise HpoError(
                        f"study {spec.name!r} was created with {alpha} alphas in the fixed range "
                        f'[{low:g}, {high:g}], but this run has {alpha} = "auto" (the default '
                        "since the alpha windows are measured); to resume it, add to [search]: "
                        f"{alpha} = [{low:g}, {high:g}] (and the same for any other alpha it "
                        "fixed), or use a new name (--name) to search the measured windows"
                    )


def check_same_protocol(spec: StudySpec, study: optuna.Study) -> None:
    stored = study.user_attrs.get(SPEC_ATTR)
    if stored is None:
        return
    _check_same_store(spec, study)
    changes = spec_changes(stored, spec, _PROTOCOL_SECTIONS)
    if changes:
        _refuse_new_auto_default(spec, changes)
        key, old, new = changes[0]
        if key == "search.layers" and isinstance(old, Mapping) and isinstance(new, Mapping):
            # A builder's layers by name: say which, not two whole tables.
            key, old, new = _layer_change(old, new)
        raise HpoError(
            f"study {spec.name!r} was created with {key}={old!r}, but this run "
            f"has {new!r}; use the study's settings or a new name (--name)"
        )
    # The data keys that change what the network is fed. The stored spec is read back through
    # today's validation, so keys added since it was stored take their defaults.
    was = spec_to_dict(spec_from_dict(stored, origin=f"study {spec.name!r}"))["data"]
    now = spec_to_dict(spec)["data"]
    for key in _PROTOCOL_DATA_KEYS:
        old, new = was.get(key), now.get(key)
        if old != new:
            raise HpoError(
                f"study {spec.name!r} was created with data.{key}={old!r}, "
                f"but this run has {new!r}; use the study's settings or a new name (--name)"
            )


def _check_same_store(spec: StudySpec, study: optuna.Study) -> None:
    """A study keeps the artifact store it was created with (its files are there): a study
    file that names another one is refused; one that names none takes the study's."""
    if spec.artifacts.store is None:
        return
    kept = store_setting(stored_spec(study))
    if spec.artifacts.store != kept:
        raise HpoError(
            f"study {spec.name!r} keeps its artifacts in store {kept!r}, but this run has "
            f"[artifacts] store = {spec.artifacts.store!r}; a study's store never changes: "
            "remove the key, or use a new name (--name)"
        )


def update_stored_spec(study: optuna.Study, spec: StudySpec) -> list[tuple[str, Any, Any]]:
    """Store ``spec``'s budget, engine and pruner on an existing study (``hpo create`` again, or
    ``hpo run`` resuming it, so that workers joining later get them); returns what changed.
    The study's artifact store (its setting and folder) stays the one it was created with."""
    spec = with_study_store(spec, stored_spec(study))
    changes = spec_changes(study.user_attrs.get(SPEC_ATTR, {}), spec, _UPDATABLE_SECTIONS)
    if changes:
        study.set_user_attr(SPEC_ATTR, spec_to_dict(spec))
    return changes
