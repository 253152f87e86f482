"""The study file in plain words: tables for the report, Markdown for optuna-dashboard's note.

Written for people who never saw the TOML: which data, folds, model and search space every trial
of the study used. The note is written by the commands that change a study (``create``, ``run``,
``worker``, ``evaluate``, ``nested``), never by ``hpo dashboard``, which only reads. Nothing here shows a storage URL, and a data URL loses its password, query and
fragment (tokens often live there).
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hpo.data import quoted
from hpo.lazy import lazy_import
from hpo.log import get_logger
from hpo.spec import AutoRange, DataSpec, PenaltyWindows, StudySpec, startup_trials
from hpo.study.creation import pruner_settings
from hpo.study.record import (
    HOLDOUT_EVALUATION_ATTR,
    LEAK_LABEL,
    NESTED_SUMMARY_ATTR,
    SPEC_ATTR,
    SamplerStart,
    is_leak_warning,
    leak_first,
    stored_data_source,
    stored_data_warnings,
)
from hpo.study.stopping import stored_stop
from hpo.study.storage import error_text, mask_url
from hpo.study.windows import stored_windows

if TYPE_CHECKING:
    import optuna
    import optuna_dashboard
else:
    optuna_dashboard = lazy_import("optuna_dashboard")

__all__ = [
    "ensure_spec_note",
    "has_note",
    "pruner_text",
    "refresh_spec_note",
    "search_rows",
    "spec_markdown",
    "spec_sections",
    "with_study_windows",
]

Section = tuple[str, list[tuple[str, str]]]

_log = get_logger("note")

_MODEL_TEXT = {
    "fold": "the model trained on the first fold",
    "refit": "a model refit on all rows",
    "none": "no model file",
}


def _safe_url(url: str) -> str:
    """A download URL without password, query or fragment (tokens often live in the query)."""
    parts = urllib.parse.urlsplit(url)
    return mask_url(urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")))


def _data_source(data: DataSpec, used: Mapping[str, str] | None) -> str:
    """Where the rows came from: as recorded by the run that read them (``used``: ``--data``
    wins over the study file), else as the study file says."""
    if used is not None and "path" in used:
        sha = f" (sha256 {used['sha256'][:12]})" if used.get("sha256") else ""
        if "url" in used:
            return f"{used['path']}, downloaded from {_safe_url(used['url'])}{sha}"
        return f"read from {used['path']}{sha}"
    if used is not None and "frame" in used:
        return f"a pandas {used['frame']}"
    if data.dataset is not None:
        return f"package data set {data.dataset}"
    if data.url is not None:
        cached = f"{data.path}, " if data.path else ""
        return f"{cached}downloaded from {_safe_url(data.url)}"
    return str(data.path)


def _markers_text(data: DataSpec) -> str:
    every = quoted(data.na_values) or "pandas defaults"
    if not data.column_na_values:
        return every
    own = "; ".join(f"{name!r}: {quoted(markers)}" for name, markers in data.column_na_values)
    return f"{every}; per column {own}"


def pruner_text(spec: StudySpec) -> str:
    """The pruner in words, with every setting it runs with (the defaults filled in), so a
    reader sees what decided which trials stopped early."""
    if not spec.engine.checkpoint_every:
        return "off (no checkpoints)"
    settings = pruner_settings(spec)
    if not settings:
        return "none (checkpoints only record progress)"
    unit = "epochs" if spec.engine.name == "stacked" else "folds"
    shown = ", ".join(f"{key} {value:g}" for key, value in settings.items())
    return f"{spec.pruner.name} ({shown}; steps in {unit})"


def _alpha_text(alpha: Any, key: str, windows: PenaltyWindows | None) -> str:
    if alpha is None:
        return "off"
    if not isinstance(alpha, AutoRange):
        return f"{alpha.low:g} – {alpha.high:g}"
    if windows is None:
        return "auto (measured before the first trial)"
    active, kernel = getattr(windows, f"{key}_activity"), getattr(windows, f"{key}_kernel")
    return (
        f"auto: activity {active.low:.2g} – {active.high:.2g}, "
        f"kernel {kernel.low:.2g} – {kernel.high:.2g}"
    )


def _startup_text(spec: StudySpec) -> str:
    count = startup_trials(spec)
    kind = "quasi-random (Sobol)" if spec.sampler.startup == "qmc" else "random"
    how = " (a third of the budget, at most 10)" if spec.sampler.n_startup_trials == "auto" else ""
    return f"{count}, {kind}{', the baseline included' if spec.search.baseline else ''}{how}"


def search_rows(spec: StudySpec) -> list[tuple[str, ...]]:
    """The search space, one row per searched layer (header first)."""
    rows: list[tuple[str, ...]] = [
        (
            "layer",
            "units" if spec.model.builder is None else "Keras layer",
            "L1 alpha (log-uniform)",
            "L2 alpha (log-uniform)",
            "placements",
            "may be unregularized",
        )
    ]
    if spec.model.builder is None:
        what = [str(units) for units in spec.model.hidden]
    else:
        what = list(spec.search.names)
    for n, (label, layer) in enumerate(zip(what, spec.search.layers, strict=True), 1):
        rows.append(
            (
                str(n),
                label,
                _alpha_text(layer.l1, "l1", spec.search.windows),
                _alpha_text(layer.l2, "l2", spec.search.windows),
                ", ".join(layer.placements),
                "yes" if layer.allow_none else "no",
            )
        )
    return rows


def _store_text(spec: StudySpec) -> str:
    store = spec.artifacts.store
    if store == "database":
        return "the study's database"
    if store is not None and store != "folder":
        return store
    return spec.artifacts.path or "a folder: next to the SQLite file, else ./artifacts"


def spec_sections(spec: StudySpec, source: Mapping[str, str] | None = None) -> list[Section]:
    """The spec as titled lists of (setting, value) in plain words; no storage URL, no secrets.
    ``source``: where a run read the rows (:func:`hpo.study.record.stored_data_source`)."""
    data, cv, model, engine = spec.data, spec.cv, spec.model, spec.engine
    hidden = " → ".join(f"Dense {units} {model.activation}" for units in model.hidden)
    sampler = spec.sampler
    tpe_options = [
        name
        for name, on in (
            ("multivariate", sampler.multivariate),
            ("group", sampler.group),
            ("constant liar", sampler.constant_liar),
        )
        if on
    ]
    return [
        (
            "Data",
            [
                ("source", _data_source(data, source)),
                ("target column", data.target),
                ("dropped columns", quoted(data.drop) or "none"),
                ("missing-value markers", _markers_text(data)),
                (
                    "one-hot numeric columns",
                    "every whole-number column"
                    if data.all_integer_categorical
                    else quoted(data.categorical) or "none",
                ),
                *([("dropped classes", quoted(data.drop_classes))] if data.drop_classes else []),
                *(
                    [
                        (
                            "merged classes",
                            "; ".join(f"{quoted(old)} into {new!r}" for new, old in merges),
                        )
                    ]
                    if (merges := data.merge_classes)
                    else []
                ),
                (
                    "rows without a target",
                    "dropped" if data.missing_target == "drop" else "refused",
                ),
                *([("target kind", "declared classes")] if data.target_kind == "classes" else []),
                *(
                    [("warnings silenced for", quoted(data.ignore_warnings))]
                    if data.ignore_warnings
                    else []
                ),
            ],
        ),
        (
            "Cross-validation",
            [
                ("folds", f"{cv.folds}-fold {'StratifiedKFold' if cv.stratified else 'KFold'}"),
                ("shuffle", f"yes, seed {cv.seed}" if cv.shuffle else "no"),
                ("repeats", str(cv.repeats)),
                *(
                    [("training seeds", f"{cv.seeds} per trial (its value: their mean)")]
                    if cv.seeds > 1
                    else []
                ),
                *(
                    [("holdout", f"{cv.holdout:.0%} of the rows, set aside for `hpo evaluate`")]
                    if cv.holdout
                    else []
                ),
                *(
                    [("outer fold", f"{cv.outer_fold + 1} of {cv.outer_folds} (`hpo nested`)")]
                    if cv.outer_folds
                    else []
                ),
                ("score", "out-of-fold accuracy (every row predicted once, scored once)"),
            ],
        ),
        (
            "Model",
            [
                *(
                    [("layers", f"inputs → {hidden} → Dense softmax")]
                    if model.builder is None
                    else [
                        ("builder", f"{model.builder} (your own Keras model)"),
                        ("searched layers", ", ".join(spec.search.names) or "resolved at run"),
                    ]
                ),
                (
                    "optimizer",
                    f"{model.optimizer}, learning rate {model.learning_rate:g}"
                    + (
                        " (when the builder's model comes back uncompiled)" if model.builder else ""
                    ),
                ),
                ("training", f"{model.epochs} epochs, batch size {model.batch_size}"),
            ],
        ),
        (
            "Engine",
            [
                ("name", engine.name),
                ("trials per batch", str(engine.trials_per_batch)),
                (
                    "pruning checkpoints",
                    f"every {engine.checkpoint_every}" if engine.checkpoint_every else "off",
                ),
                ("pruner", pruner_text(spec)),
            ],
        ),
        (
            "Sampler",
            [
                ("algorithm", "TPE" + (f" ({', '.join(tpe_options)})" if tpe_options else "")),
                ("seed", "none (not reproducible)" if sampler.seed is None else str(sampler.seed)),
                ("start-up trials", _startup_text(spec)),
            ],
        ),
        (
            "Budget",
            [
                (
                    "trials",
                    "unlimited" if spec.budget.n_trials is None else str(spec.budget.n_trials),
                ),
                (
                    "timeout",
                    "none" if spec.budget.timeout is None else f"{spec.budget.timeout:g} s",
                ),
                (
                    "early stop",
                    "when no plan is expected to beat the best by more than its CV noise"
                    if spec.budget.early_stop == "within-noise"
                    else "none (the whole budget)",
                ),
            ],
        ),
        (
            "Artifacts",
            [
                ("kept for", f"the best {spec.artifacts.top_k} trials"),
                ("model file", _MODEL_TEXT[spec.artifacts.model]),
                ("store", _store_text(spec)),
            ],
        ),
    ]


_SIGNATURE = "_Written by `hpo` from the study's stored spec (user attr `{attr}`)._"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def spec_markdown(
    spec: StudySpec,
    warnings: Sequence[str] = (),
    scores: Sequence[str] = (),
    stop: str | None = None,
    source: Mapping[str, str] | None = None,
) -> str:
    """The spec as Markdown for the study's note in optuna-dashboard, led by the data warnings
    (a leak first, marked as in every command's output) and the honest scores (``hpo evaluate``'s verdict, ``hpo nested``'s summary), and why the
    study stopped early (``stop``), if it did."""
    lines = [f"## Study `{spec.name}`", ""]
    if spec.description:
        lines += [f"> {_md_cell(spec.description)}", ""]
    if warnings:  # first: they question every score below, a leak most of all
        lines += ["### Data warnings", ""]
        lines += [
            f"- ⚠ **{LEAK_LABEL}:** {_md_cell(w)}" if is_leak_warning(w) else f"- ⚠ {_md_cell(w)}"
            for w in leak_first(warnings)
        ]
        lines += [""]
    if stop:
        lines += ["### Early stop", "", _md_cell(stop), ""]
    if scores:
        lines += ["### On rows the search never saw", ""]
        lines += [f"- {_md_cell(line)}" for line in scores]
        lines += [""]
    lines += [
        f"Each trial trains the network below on every one of the {spec.cv.folds} folds "
        f"({spec.model.epochs} epochs) and is scored by out-of-fold accuracy. Each trial's "
        "user attributes hold its per-fold accuracies (`fold_accuracies`, `fold_std`), its "
        "regularization `plan`, `seed`, `seconds` and `engine`; artifacts hold the best "
        "trials' confusion matrix, per-fold table and model file.",
        "",
        "### Search space",
        "",
    ]
    rows = search_rows(spec)
    lines.append("| " + " | ".join(rows[0]) + " |")
    lines.append("|" + "---|" * len(rows[0]))
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows[1:]]
    for title, items in spec_sections(spec, source):
        lines += ["", f"### {title}", "", "| setting | value |", "|---|---|"]
        lines += [f"| {_md_cell(k)} | {_md_cell(v)} |" for k, v in items]
    lines += ["", _SIGNATURE.format(attr=SPEC_ATTR)]
    return "\n".join(lines) + "\n"


def with_study_windows(study: optuna.Study, spec: StudySpec) -> StudySpec:
    """``spec`` as the study searches it: the start-up recorded when it was created (the budget
    may have changed since), and the measured windows of ``"auto"`` alphas, when it has them."""
    start = SamplerStart.of(study, spec)
    spec = spec.replace(
        sampler=dataclasses.replace(
            spec.sampler, n_startup_trials=start.startup_trials, startup=start.startup
        )
    )
    windows = stored_windows(study)
    if windows is None or not spec.search.auto:
        return spec
    return spec.replace(search=dataclasses.replace(spec.search, windows=windows))


def _score_lines(study: optuna.Study) -> list[str]:
    attrs = study.user_attrs
    lines = []
    evaluation = attrs.get(HOLDOUT_EVALUATION_ATTR)
    if isinstance(evaluation, dict) and evaluation.get("verdict"):
        lines.append(f"holdout (`hpo evaluate`): {evaluation['verdict']}")
    nested = attrs.get(NESTED_SUMMARY_ATTR)
    if isinstance(nested, dict):
        lines += [str(line) for line in nested.get("summary", [])]
    return lines


def ensure_spec_note(study: optuna.Study, spec: StudySpec) -> bool:
    """Write the spec note on ``study`` unless a person wrote its note; True when written.

    A note hpo wrote (it ends with hpo's signature line) is brought up to date, so a resumed
    study's note shows the data warnings of the data it trains on now.
    """
    current = optuna_dashboard.get_note(study)
    spec = with_study_windows(study, spec)
    early = stored_stop(study, spec)
    ours = spec_markdown(
        spec,
        stored_data_warnings(study),
        _score_lines(study),
        None if early is None else str(early.get("message")),
        stored_data_source(study),
    )
    if current == ours:
        return False
    if current.strip() and not current.rstrip().endswith(_SIGNATURE.format(attr=SPEC_ATTR)):
        return False  # a note someone wrote stays as it is
    optuna_dashboard.save_note(study, ours)
    return True


def refresh_spec_note(study: optuna.Study, spec: StudySpec) -> None:
    """:func:`ensure_spec_note` for a command that has just changed ``study``; a failure is
    a warning, not the command's end: the note is a convenience, the attributes are the record."""
    try:
        ensure_spec_note(study, spec)
    except Exception as exc:
        _log.warning("study %r: its note was not updated (%s)", study.study_name, error_text(exc))


def has_note(study: optuna.Study) -> bool:
    """Whether ``study`` has a study note (hpo's or a person's); reads only."""
    return bool(optuna_dashboard.get_note(study).strip())
