"""Everything hpo stores in the database, defined here and nowhere else.

A study is shared by workers that know only its name, and any trial must be rebuildable years
later, so every key hpo writes is named once below, with what it means. Keys used across modules
are constants here; a finished trial's result keys are written by one function, :func:`result_attrs`.
This table is the documentation (docs/architecture.md points here); a test checks that the key constants and the
keys :func:`result_attrs` and :func:`sampled_attrs` write are all in it.

Study user attributes

================================  ===================================================================
``hpo_spec``                      the validated study file (:func:`hpo.spec.spec_to_dict`); written at
                                  creation; ``hpo create`` (and ``hpo run`` on resume) may later
                                  update its budget, engine and pruner
``hpo_crash_policy``              heartbeat interval, grace period, max retries (:class:`CrashPolicy`)
``rerun:<trial number>``          one ``hpo rerun`` result: seeds, accuracies, mean, std, 95% CI
``hpo_data_warnings``             the data warnings (identifier, leak, ...) of the latest ``hpo run``,
                                  ``hpo worker`` or ``hpo nested`` to load the data: a list of
                                  one-line messages, leaks first (shown beside every score)
``hpo_data_source``               the data the latest ``hpo run`` or ``hpo worker`` loaded: ``path``
                                  (the CSV read: ``--data PATH``, the study file's path, or the
                                  download's cache), ``url`` when it was downloaded, and ``sha256``
                                  of the file; or ``dataset`` (a package data set) or ``frame``
                                  (a pandas DataFrame, described by its shape)
``holdout:evaluation``            the latest ``hpo evaluate``: seeds, rows, and per plan the search CV,
                                  holdout accuracies, mean, std, 95% CI, optimism; and the verdict
``nested:summary``                on each inner study of ``hpo nested``: every outer fold's winner,
                                  plan, search CV, outer score and baseline; their mean, std, CI;
                                  the data warnings (``data_warnings``, leaks first)
``hpo_holdout``                   the rows ``[cv] holdout`` set aside: fraction, rows, of, and a
                                  SHA-256 of their positions, labels and values (written by the
                                  first process to load the data; every later one must match it)
``hpo_sampler``                   how the search starts, fixed when the study is created: ``seed``
                                  (the quasi-random start-up's scrambling: ``[sampler] seed``, one
                                  per outer fold in ``hpo nested``, or drawn for an unseeded
                                  study), ``startup_trials`` (the budget's third, at most 10, with
                                  ``"auto"``) and ``startup`` (``qmc`` or ``random``)
``hpo_penalty_windows``           the windows of ``"auto"`` alphas (``windows``: per kind, low and
                                  high) and the ladder they were read from (``floor``, ``baseline``,
                                  ``guess``, ``rows``, ``seconds``, ``ladder``, and the kinds that
                                  moved too few rows anywhere short of collapse,
                                  ``without_effect``); written once, by the first process to
                                  train (:mod:`hpo.study.windows`)
``hpo_data``                      the rows stored with the study (``[data] store``): ``artifact_id`` in
                                  the study's artifact store, ``sha256`` and ``bytes`` of the file,
                                  ``name`` (the file it came from, or the package data set as CSV)
``hpo_early_stop``                why the study ended before its budget (``[budget] early_stop``):
                                  ``trials``, ``best``, ``bound``, ``noise``, ``message``, and the
                                  ``n_trials`` it was decided under (a new budget decides again)
                                  (:mod:`hpo.study.stopping`)
================================  ===================================================================

Study system attributes

=========================================  ==========================================================
``hpo:worker:<worker id>``                 a worker's own record: ``id``, ``host``, ``pid``, state,
                                           held trials, done, started, last seen; the id is
                                           ``HOST:PID:TAG`` (:func:`worker_id`; a study from before
                                           the tag was added keeps ``HOST:PID`` records, read alike)
``dashboard:artifacts:<trial>:<file id>``  a file attached to a finished trial (optuna-dashboard's)
(optuna-dashboard's note keys)             the spec as the study's note (led by data warnings and the
                                           holdout / nested scores); ``### Rerun`` and ``### Holdout``
                                           sections of trial notes
=========================================  ==========================================================

Trial user attributes

================================  ===================================================================
``plan``                          the regularization plan: four coefficient lists, one entry a layer;
                                  with ``[model] builder`` also ``layers``, the Keras layer names
``seed``                          the seed the trial trains with, recorded before training (a
                                  stacked batch: its first trial's; a retry: its original's)
``proposed_by``                   who drew the parameters: ``qmc`` or ``random`` (the start-up,
                                  ``[sampler] startup``) or ``tpe``; absent on the baseline, on
                                  retries and with another sampler
``worker``                        the worker that trained it (its id, ``HOST:PID:TAG``)
``fold_accuracies``, ``fold_std`` accuracy of each fold's held-out rows (every repeat's), their std
``epochs``                        epochs trained (fewer when pruned)
``seconds``                       training wall time; for a batch, its wall time / trials in it
``batch_seconds``                 the wall time of the whole batch the trial trained in (stacked
                                  engine, more than one trial in the batch)
``engine``                        ``reference`` or ``stacked``
``tensorflow``, ``keras``         library versions
``diverged``                      the loss went non-finite; those folds' rows count as wrong
``diverged_folds``                which folds diverged, numbered as in ``fold_accuracies`` (if any)
``diverged_by_epoch``             the checkpoint epoch by which they had (stacked engine)
``shared_order``                  the batch's trials shared initial weights and batch order
``trials_in_batch``               how many trials trained together (stacked engine)
``trials_per_batch``              the batch its process trained at most: the study's setting, or
                                  the fastest measured on that machine (``"auto"``, stacked engine)
``xla_kernels``                   whether the elementwise kernels ran XLA-compiled (stacked engine)
``repeat_accuracies``             out-of-fold accuracy of each repeat of repeated K-fold
``seed_accuracies``               with ``[cv] seeds`` above 1: out-of-fold accuracy under each
                                  training seed (the trial's value is their mean)
``baseline``                      ``true`` on the unregularized network (trial 0 unless
                                  ``[search] baseline = false``, and its retries): no params
``retry_of``                      the trial this one retries (same parameters and seed)
``retry_root``                    the first trial of the retry chain
``interrupted`` / ``error``       why this worker failed the trial: the signal, or the error text
================================  ===================================================================

Trial system attributes

================================  ===================================================================
``hpo:failure``                   why hpo failed the trial: ``interrupted``, ``error``, ``non-finite``,
                                  ``over-budget`` (created after its worker lost the study lock);
                                  absent on a trial failed for a stale heartbeat (its worker died)
``hpo:claim``                     the claim that created the trial (``WORKER ID:RANDOM``): a worker whose
                                  database went away while it created a claim's trials finds, on its
                                  retry, the ones that were stored though it never heard back
``failed_trial``,                 Optuna's retry convention: the chain's first trial, and every
``retry_history``                 trial of the chain so far
``hpo:crashes``                   failures of the chain so far that count against ``max_retries``:
                                  all but ``interrupted`` ones (a stop is no fault of the trial's)
``artifacts:<artifact id>``       a file attached while the trial ran (Optuna's own artifact API)
``completed_rung_<n>``            the checkpoint value with which the trial passed rung ``n`` of
                                  ``[pruner]`` successive halving or Hyperband (Optuna's pruner
                                  writes it)
================================  ===================================================================

Files (artifacts and stored data) live in the study's artifact store, named in its spec
(``[artifacts] store``, fixed at creation; a spec stored without one means ``"folder"``): a
folder, an S3 bucket (object key ``PREFIX/<artifact id>``), or the study's own database, in one
table of hpo's beside Optuna's:

=========================================  ===================================================
``hpo_artifact_chunks``                    ``artifact_id`` (text), ``chunk`` (0, 1, ...; the key is
                                           both), ``data`` (at most :data:`ARTIFACT_CHUNK_BYTES`
                                           bytes of the file); a file's chunks are written in one
                                           transaction, so a reader sees all of them or none
=========================================  ===================================================

Trial times: a finished trial's ``datetime_complete`` is when it was told; its ``datetime_start``
is then moved to ``datetime_complete - seconds`` (never earlier than the trial was created), so
that optuna-dashboard's Duration is the trial's own training time, a batch's time divided over its
members, instead of the time since the claim that created it (``batch_seconds`` keeps the batch's).

Intermediate values are the out-of-fold accuracies at pruning checkpoints (step: the epoch on the
stacked engine, the folds done on the reference engine); ``[pruner]`` judges trials on them.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from hpo.data_profile import LEAK_PHRASE
from hpo.engines.contract import EvaluationResult
from hpo.errors import HpoError
from hpo.lazy import lazy_import
from hpo.seeds import MAX_SEED, sampler_seed
from hpo.space import RegularizationPlan
from hpo.spec import StudySpec, spec_from_dict, spec_to_dict, startup_trials
from hpo.study import optuna_compat as compat
from hpo.study.storage import mask_url

if TYPE_CHECKING:
    import optuna

    from hpo.study import sampler as sampling
else:
    optuna = lazy_import("optuna")
    # Its class derives from Optuna's TPE: imported on first use, like Optuna.
    sampling = lazy_import("hpo.study.sampler")

__all__ = [
    "ARTIFACT_CHUNK_BYTES",
    "ARTIFACT_TABLE",
    "BASELINE_ATTR",
    "CLAIM_ATTR",
    "CRASHES_ATTR",
    "DATA_ATTR",
    "DATA_SOURCE_ATTR",
    "DATA_WARNINGS_ATTR",
    "EARLY_STOP_ATTR",
    "FAILURE_ATTR",
    "FAILURE_ERROR",
    "FAILURE_INTERRUPTED",
    "FAILURE_NON_FINITE",
    "FAILURE_OVER_BUDGET",
    "FINISHED_ARTIFACT_PREFIX",
    "HOLDOUT_ATTR",
    "HOLDOUT_EVALUATION_ATTR",
    "LEAK_LABEL",
    "LIVE_ARTIFACT_PREFIX",
    "NESTED_SUMMARY_ATTR",
    "PLAN_ATTR",
    "POLICY_ATTR",
    "PROPOSED_BY_ATTR",
    "RERUN_ATTR_PREFIX",
    "RETRY_CHAIN_ATTR",
    "RETRY_FIRST_ATTR",
    "RETRY_OF_ATTR",
    "RETRY_ROOT_ATTR",
    "SAMPLER_ATTR",
    "SEED_ATTR",
    "SPEC_ATTR",
    "WINDOWS_ATTR",
    "WORKER_ATTR",
    "WORKER_ATTR_PREFIX",
    "WORKER_TAG_ENV",
    "CrashPolicy",
    "SamplerStart",
    "StoredTrial",
    "baseline_trial",
    "best_trial",
    "data_warning_label",
    "data_warning_line",
    "is_baseline",
    "is_leak_warning",
    "leak_first",
    "new_worker_tag",
    "outer_fold_number",
    "read_trial",
    "result_attrs",
    "sampled_attrs",
    "seed_number",
    "short_worker_id",
    "spec_changes",
    "store_data_source",
    "store_data_warnings",
    "stored_data_source",
    "stored_data_warnings",
    "stored_plan",
    "stored_policy",
    "stored_seed",
    "stored_spec",
    "stored_spec_data",
    "worker_id",
    "worker_id_of",
    "worker_records",
]

# Study user attributes.
SPEC_ATTR = "hpo_spec"
POLICY_ATTR = "hpo_crash_policy"
RERUN_ATTR_PREFIX = "rerun:"
DATA_WARNINGS_ATTR = "hpo_data_warnings"
DATA_SOURCE_ATTR = "hpo_data_source"
HOLDOUT_ATTR = "hpo_holdout"
HOLDOUT_EVALUATION_ATTR = "holdout:evaluation"
NESTED_SUMMARY_ATTR = "nested:summary"
SAMPLER_ATTR = "hpo_sampler"
WINDOWS_ATTR = "hpo_penalty_windows"
EARLY_STOP_ATTR = "hpo_early_stop"
DATA_ATTR = "hpo_data"
# The table of the "database" artifact store, and the most bytes of a file one row holds.
ARTIFACT_TABLE = "hpo_artifact_chunks"
ARTIFACT_CHUNK_BYTES = 1 << 20
# Study system attributes.
WORKER_ATTR_PREFIX = "hpo:worker:"
# optuna-dashboard lists a finished trial's artifacts from this prefix; Optuna's own
# upload_artifact refuses finished trials, and a model file is saved after the trial finished.
FINISHED_ARTIFACT_PREFIX = "dashboard:artifacts:"
# Trial user attributes (the rest are the fields of result_attrs and sampled_attrs).
PLAN_ATTR = "plan"
SEED_ATTR = "seed"
BASELINE_ATTR = "baseline"
WORKER_ATTR = "worker"
RETRY_OF_ATTR = "retry_of"
RETRY_ROOT_ATTR = "retry_root"
PROPOSED_BY_ATTR = "proposed_by"
# Trial system attributes.
FAILURE_ATTR = "hpo:failure"
CLAIM_ATTR = "hpo:claim"
# Its values; "interrupted" and "error" are also the user attr holding the signal or error text.
FAILURE_INTERRUPTED = "interrupted"
FAILURE_ERROR = "error"
FAILURE_NON_FINITE = "non-finite"
FAILURE_OVER_BUDGET = "over-budget"
# Optuna's upload_artifact names the files of a live trial with this prefix.
LIVE_ARTIFACT_PREFIX = "artifacts:"
RETRY_CHAIN_ATTR = "retry_history"  # as Optuna's RetryHeartbeatStaleTrialCallback writes it
RETRY_FIRST_ATTR = "failed_trial"
CRASHES_ATTR = "hpo:crashes"


# --- the crash policy ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CrashPolicy:
    """How crashed workers are detected and their trials retried.

    ``heartbeat_interval``: seconds between heartbeats of a held trial. ``grace_period``:
    seconds without a heartbeat after which a RUNNING trial is failed (keep it several
    intervals, and longer than a database restart). ``max_retries``: how often one trial's
    parameters are retried after its worker died or was stopped.

    >>> CrashPolicy(heartbeat_interval=5, grace_period=5)
    Traceback (most recent call last):
    ...
    ValueError: `grace_period > heartbeat_interval` must hold, but got (grace_period=5, heartbeat_interval=5)
    """

    heartbeat_interval: int = 10
    grace_period: int = 60
    max_retries: int = 3

    def __post_init__(self) -> None:
        if self.heartbeat_interval < 1:
            raise ValueError(
                f"`heartbeat_interval >= 1` must hold, but got {self.heartbeat_interval}"
            )
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(
                "`grace_period > heartbeat_interval` must hold, but got "
                f"(grace_period={self.grace_period}, heartbeat_interval={self.heartbeat_interval})"
            )
        if self.max_retries < 0:
            raise ValueError(f"`max_retries >= 0` must hold, but got {self.max_retries}")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, origin: str) -> CrashPolicy:
        try:
            return cls(**{k: int(v) for k, v in raw.items() if k in cls.__dataclass_fields__})
        except (TypeError, ValueError) as exc:
            raise HpoError(f"{origin}: stored crash policy is invalid ({exc})") from None


# --- study attributes ------------------------------------------------------------------------


def stored_spec_data(raw: Any) -> Any:
    """A stored spec's data as today's :func:`spec_from_dict` should read it.

    A study stored before ``[pruner]`` existed pruned at its checkpoints with Optuna's median
    pruner (then the only one); the default is now no pruning, so such a study is read as
    ``name = "median"`` and its workers keep pruning as it was created to.
    """
    if isinstance(raw, Mapping) and "pruner" not in raw:
        engine = raw.get("engine")
        if isinstance(engine, Mapping) and engine.get("checkpoint_every"):
            return {**raw, "pruner": {"name": "median"}}
    return raw


def stored_spec(study: optuna.Study) -> StudySpec | None:
    """The spec stored on ``study``; None for a study hpo did not create."""
    raw = study.user_attrs.get(SPEC_ATTR)
    return (
        None
        if raw is None
        else spec_from_dict(stored_spec_data(raw), origin=f"study {study.study_name!r}")
    )


def is_leak_warning(message: str) -> bool:
    """Whether a data warning says a column alone predicts the target (a likely leak)."""
    return LEAK_PHRASE in message


# How a leak warning is introduced wherever a data warning is shown (a command's line, the
# report, the dashboard's note): the one wording, so that it reads alike in every place.
LEAK_LABEL = "warning (possible leak: the score may be inflated)"


def data_warning_label(message: str) -> str:
    """What introduces ``message`` where it is shown: :data:`LEAK_LABEL` for a leak (it makes
    the score itself suspect), ``"warning"`` for any other."""
    return LEAK_LABEL if is_leak_warning(message) else "warning"


def data_warning_line(message: str) -> str:
    """``message`` as one line of a command's output: ``LABEL: message``."""
    return f"{data_warning_label(message)}: {message}"


def leak_first(messages: Iterable[str]) -> list[str]:
    """``messages`` with the leak warnings first (in their order), then the others: a leak
    makes every score of the study suspect, so it is never one line among many."""
    messages = list(messages)
    return [m for m in messages if is_leak_warning(m)] + [
        m for m in messages if not is_leak_warning(m)
    ]


def store_data_warnings(study: optuna.Study, messages: Iterable[str]) -> None:
    """Keep the warnings about the data this process trains on (the latest loader's win),
    leaks first."""
    messages = leak_first(messages)
    if study.user_attrs.get(DATA_WARNINGS_ATTR, []) != messages:
        study.set_user_attr(DATA_WARNINGS_ATTR, messages)


def store_data_source(study: optuna.Study, source: Mapping[str, str]) -> None:
    """Record where this process read the study's rows (``Dataset.origin``: the latest
    loader's win, as with the warnings). A download URL is stored without its password, query
    and fragment (where tokens live): optuna-dashboard shows user attributes as they are."""
    source = dict(source)
    if "url" in source:
        parts = urllib.parse.urlsplit(source["url"])
        source["url"] = mask_url(urllib.parse.urlunsplit((*parts[:3], "", "")))
    if study.user_attrs.get(DATA_SOURCE_ATTR) != source:
        study.set_user_attr(DATA_SOURCE_ATTR, source)


def stored_data_source(study: optuna.Study) -> dict[str, str] | None:
    raw = study.user_attrs.get(DATA_SOURCE_ATTR)
    return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else None


def stored_data_warnings(study: optuna.Study) -> list[str]:
    """The study's active data warnings, leaks first."""
    raw = study.user_attrs.get(DATA_WARNINGS_ATTR, [])
    return leak_first(str(m) for m in raw) if isinstance(raw, list) else []


def stored_policy(study: optuna.Study) -> CrashPolicy:
    raw = study.user_attrs.get(POLICY_ATTR)
    if raw is None:  # a study created without one: the defaults
        return CrashPolicy()
    return CrashPolicy.from_dict(raw, origin=f"study {study.study_name!r}")


def spec_changes(
    stored: Mapping[str, Any], spec: StudySpec, sections: Iterable[str]
) -> list[tuple[str, Any, Any]]:
    """``(section.key, stored value, new value)`` for every setting of ``sections`` in which
    ``spec`` differs from the stored spec (plain data, as :func:`spec_to_dict` gives)."""
    current = spec_to_dict(spec)
    # Read the stored spec back through today's validation first: keys added since it was
    # stored (say [cv] holdout) take their defaults instead of counting as changed.
    with contextlib.suppress(HpoError):  # else compare the raw data; a difference shows as such
        stored = spec_to_dict(
            spec_from_dict(stored_spec_data(stored), origin=f"study {spec.name!r}")
        )
    changes = []
    for section in sections:
        old_section = stored.get(section, {})
        new_section = current[section]
        # Keys left out (None) count too: a pruner setting dropped from the file is a change.
        for key in dict.fromkeys([*new_section, *old_section]):
            if (section, key) == ("model", "builder_path"):
                continue  # where the builder's module sits on this machine, not the protocol
            value = new_section.get(key)
            if old_section.get(key) != value:
                changes.append((f"{section}.{key}", old_section.get(key), value))
    return changes


# --- who a worker is --------------------------------------------------------------------------

# A run's pool names the tag of each worker it starts through this variable, so it knows their
# ids (hpo.study.pool); the worker takes it out of its environment, so it reaches no other process.
WORKER_TAG_ENV = "HPO_WORKER_TAG"
_TAG = re.compile(r"[0-9a-f]{8}")
_identity: tuple[int, str] | None = None  # (pid, id): a forked child draws its own


def new_worker_tag() -> str:
    return secrets.token_hex(4)


def worker_id_of(host: str, pid: int, tag: str) -> str:
    return f"{host}:{pid}:{tag}"


def worker_id() -> str:
    """This process's id on every study: ``HOST:PID:TAG``, the same for the process's life.

    Host and pid say where to look for it; the random tag makes it unique, because two
    containers can share a host name and a pid (and a pid comes back after a restart).
    """
    global _identity
    pid = os.getpid()
    if _identity is None or _identity[0] != pid:
        given = os.environ.pop(WORKER_TAG_ENV, "")
        tag = given if _TAG.fullmatch(given) else new_worker_tag()
        _identity = (pid, worker_id_of(socket.gethostname(), pid, tag))
    return _identity[1]


def short_worker_id(worker: str, *, host_chars: int = 20, tag_chars: int = 4) -> str:
    """``worker`` as ``hpo status`` shows it: a long host name cut to its end (where container
    and pod names keep what tells them apart), the tag cut to its start. An id of another form
    (a record from before the tag, ``HOST:PID``) is shown as it is.

    >>> short_worker_id("node-7:4242:9f3c2a1b")
    'node-7:4242:9f3c'
    >>> short_worker_id("hpo-worker-7d9f8c6b5-x2x7k:1:9f3c2a1b")
    '...r-7d9f8c6b5-x2x7k:1:9f3c'
    >>> short_worker_id("node-7:4242")
    'node-7:4242'
    """
    host, _, rest = worker.partition(":")
    pid, _, tag = rest.partition(":")
    if not (pid.isdigit() and _TAG.fullmatch(tag)):
        return worker
    if len(host) > host_chars:
        host = "..." + host[-(host_chars - 3) :]
    return f"{host}:{pid}:{tag[:tag_chars]}"


def worker_records(study: optuna.Study) -> list[dict[str, Any]]:
    """Every worker that ever joined the study, most recently seen first."""
    attrs = compat.storage_of(study).get_study_system_attrs(compat.study_id(study))
    records = [
        dict(value)
        for key, value in attrs.items()
        if key.startswith(WORKER_ATTR_PREFIX) and isinstance(value, dict)
    ]
    return sorted(records, key=lambda r: -float(r.get("last_seen", 0)))


# --- trial attributes ------------------------------------------------------------------------


def sampled_attrs(
    plan: RegularizationPlan, seed: int, worker: str, proposed_by: str | None = None
) -> dict[str, Any]:
    """What a trial records as soon as its parameters are drawn, before it trains."""
    attrs: dict[str, Any] = {PLAN_ATTR: plan.to_dict(), SEED_ATTR: seed, WORKER_ATTR: worker}
    if proposed_by is not None:
        attrs[PROPOSED_BY_ATTR] = proposed_by
    return attrs


def result_attrs(
    result: EvaluationResult,
    *,
    engine: str,
    versions: Mapping[str, str],
    trials_per_batch: int | None = None,
) -> dict[str, Any]:
    """What a finished trial records (plain JSON data); see the module's table."""
    attrs: dict[str, Any] = {
        "fold_accuracies": [round(a, 6) for a in result.fold_accuracies],
        "fold_std": round(result.fold_std, 6),
        "epochs": result.epochs,
        "seconds": round(result.seconds, 3),
        "engine": engine,
        "diverged": result.diverged,
        **versions,
    }
    if result.diverged_folds:
        attrs["diverged_folds"] = list(result.diverged_folds)
    if result.diverged_by_epoch is not None:
        attrs["diverged_by_epoch"] = result.diverged_by_epoch
    if result.shared_order is not None:
        attrs["shared_order"] = result.shared_order
    if result.trials_in_batch is not None:
        attrs["trials_in_batch"] = result.trials_in_batch
        if result.trials_in_batch > 1:
            attrs["batch_seconds"] = round(result.seconds * result.trials_in_batch, 3)
    if trials_per_batch is not None:
        attrs["trials_per_batch"] = trials_per_batch
    if result.xla_kernels is not None:
        attrs["xla_kernels"] = result.xla_kernels
    if result.repeat_accuracies is not None:
        attrs["repeat_accuracies"] = list(result.repeat_accuracies)
    if result.seed_accuracies is not None:
        attrs["seed_accuracies"] = list(result.seed_accuracies)
    if result.seed is not None:
        # Trained with another seed than the one drawn for it (a stacked batch trains from
        # its first seed): record that one, so re-training the plan with `seed` reproduces it.
        attrs[SEED_ATTR] = result.seed
    return attrs


@dataclass(frozen=True, kw_only=True)
class StoredTrial:
    """What hpo recorded on one trial, read back; a key it lacks reads as None or empty."""

    plan: RegularizationPlan | None
    seed: int | None
    worker: str | None
    fold_accuracies: tuple[float, ...]
    fold_std: float | None
    seconds: float | None
    engine: str | None
    retry_of: int | None


def read_trial(trial: optuna.trial.FrozenTrial) -> StoredTrial:
    attrs = trial.user_attrs
    seconds = attrs.get("seconds")
    return StoredTrial(
        plan=stored_plan(trial),
        seed=attrs.get(SEED_ATTR),
        worker=attrs.get(WORKER_ATTR),
        fold_accuracies=tuple(float(a) for a in attrs.get("fold_accuracies", ())),
        fold_std=attrs.get("fold_std"),
        seconds=None if seconds is None else float(seconds),
        engine=attrs.get("engine"),
        retry_of=attrs.get(RETRY_OF_ATTR),
    )


def stored_plan(trial: optuna.trial.FrozenTrial) -> RegularizationPlan | None:
    """The plan a trial trained with; None if it has none (or an unreadable one)."""
    raw = trial.user_attrs.get(PLAN_ATTR)
    if not raw:
        return None
    try:
        return RegularizationPlan.from_dict(raw)
    except (KeyError, TypeError, ValueError):
        return None


def stored_seed(trial: optuna.trial.FrozenTrial, spec: StudySpec) -> int:
    """The seed a trial trained with (as recorded; else the study's seed for its number)."""
    return int(trial.user_attrs.get(SEED_ATTR, spec.trial_seed(seed_number(trial))))


def seed_number(trial: optuna.trial.FrozenTrial | optuna.Trial) -> int:
    """The trial number whose seed ``trial`` trains with: a retry reuses its chain's first."""
    return int(trial.user_attrs.get(RETRY_ROOT_ATTR, trial.number))


def is_baseline(trial: optuna.trial.FrozenTrial | optuna.Trial) -> bool:
    """Whether ``trial`` trains the network without any regularization (it has no params)."""
    return bool(trial.user_attrs.get(BASELINE_ATTR, False))


def baseline_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The study's finished unregularized baseline (the latest, if a retry finished it)."""
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if is_baseline(t)
    ]
    return done[-1] if done else None


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:
        return None


# --- how the search starts ------------------------------------------------------------------


def outer_fold_number(spec: StudySpec) -> int:
    """The outer fold an inner study of ``hpo nested`` holds out (1-based); 0 for others."""
    return spec.cv.outer_fold + 1 if spec.cv.outer_folds else 0


@dataclass(frozen=True)
class SamplerStart:
    """How a study's search starts (:data:`SAMPLER_ATTR`), fixed when it is created: a resumed
    study or a worker with another budget must not start a second start-up halfway."""

    seed: int
    startup_trials: int
    startup: str

    @classmethod
    def new(cls, spec: StudySpec) -> SamplerStart:
        """A new study's: the seed from ``[sampler] seed`` (and the outer fold), else drawn, so
        that unseeded studies do not all start from the same plans."""
        if spec.sampler.seed is not None:
            seed = sampler_seed(spec.sampler.seed, outer_fold_number(spec))
        else:
            seed = secrets.randbelow(MAX_SEED)
        return cls(seed, startup_trials(spec), spec.sampler.startup)

    @classmethod
    def of(cls, study: optuna.Study, spec: StudySpec) -> SamplerStart:
        """The study's; for a study made before they were recorded, as it ran then: the spec's
        start-up count, drawn at random."""
        raw = study.user_attrs.get(SAMPLER_ATTR)
        if isinstance(raw, dict):
            try:
                return cls(int(raw["seed"]), int(raw["startup_trials"]), str(raw["startup"]))
            except (KeyError, TypeError, ValueError):
                pass
        return cls(
            sampler_seed(spec.base_seed, outer_fold_number(spec)), startup_trials(spec), "random"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
