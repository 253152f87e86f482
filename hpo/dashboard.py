"""optuna-dashboard on a study's storage: the spec as a readable study note, and the server.

The note is written once per study (never over a note a person has edited), so the dashboard
shows which data, folds, model and search space every trial of the study used. The server is
optuna-dashboard's own WSGI app in a threaded ``wsgiref`` server we bind ourselves: a busy port
becomes one clear error instead of a traceback, and the line we print never shows a password.
"""

from __future__ import annotations

import errno
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo._errors import HpoError
from hpo._logging import get_logger
from hpo.spec import DataSpec, StudySpec

if TYPE_CHECKING:
    import optuna

__all__ = [
    "dashboard_artifact_dir",
    "ensure_spec_note",
    "ensure_spec_notes",
    "open_url",
    "search_rows",
    "serve",
    "spec_markdown",
    "spec_sections",
]

_log = get_logger("dashboard")

Section = tuple[str, list[tuple[str, str]]]

_MODEL_TEXT = {
    "fold": "the model trained on the first fold",
    "refit": "a model refit on all rows",
    "none": "no model file",
}


def _safe_url(url: str) -> str:
    """A download URL without password, query or fragment (tokens often live in the query)."""
    from hpo.storage import mask_url

    parts = urllib.parse.urlsplit(url)
    return mask_url(urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")))


def _data_source(data: DataSpec) -> str:
    if data.dataset is not None:
        return f"package data set {data.dataset}"
    if data.url is not None:
        cached = f"{data.path}, " if data.path else ""
        return f"{cached}downloaded from {_safe_url(data.url)}"
    return str(data.path)


def _alpha_text(alpha: Any) -> str:
    return "off" if alpha is None else f"{alpha.low:g} – {alpha.high:g}"


def search_rows(spec: StudySpec) -> list[tuple[str, ...]]:
    """The search space, one row per hidden layer (header first)."""
    rows: list[tuple[str, ...]] = [
        (
            "layer",
            "units",
            "L1 alpha (log-uniform)",
            "L2 alpha (log-uniform)",
            "placements",
            "may be unregularized",
        )
    ]
    for n, (units, layer) in enumerate(zip(spec.model.hidden, spec.search.layers, strict=True), 1):
        rows.append(
            (
                str(n),
                str(units),
                _alpha_text(layer.l1),
                _alpha_text(layer.l2),
                ", ".join(layer.placements),
                "yes" if layer.allow_none else "no",
            )
        )
    return rows


def spec_sections(spec: StudySpec) -> list[Section]:
    """The spec as titled lists of (setting, value) in plain words; no storage URL, no secrets."""
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
                ("source", _data_source(data)),
                ("target column", data.target),
                ("dropped columns", ", ".join(data.drop) or "none"),
                ("missing-value markers", ", ".join(data.na_values) or "pandas defaults"),
            ],
        ),
        (
            "Cross-validation",
            [
                ("folds", f"{cv.folds}-fold {'StratifiedKFold' if cv.stratified else 'KFold'}"),
                ("shuffle", f"yes, seed {cv.seed}" if cv.shuffle else "no"),
                ("repeats", str(cv.repeats)),
                ("score", "out-of-fold accuracy (every row predicted once, scored once)"),
            ],
        ),
        (
            "Model",
            [
                ("layers", f"inputs → {hidden} → Dense softmax"),
                ("optimizer", f"{model.optimizer}, learning rate {model.learning_rate:g}"),
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
            ],
        ),
        (
            "Sampler",
            [
                ("algorithm", "TPE" + (f" ({', '.join(tpe_options)})" if tpe_options else "")),
                ("seed", "none (not reproducible)" if sampler.seed is None else str(sampler.seed)),
                ("random start-up trials", str(sampler.n_startup_trials)),
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
            ],
        ),
        (
            "Artifacts",
            [
                ("kept for", f"the best {spec.artifacts.top_k} trials"),
                ("model file", _MODEL_TEXT[spec.artifacts.model]),
                ("store", spec.artifacts.path or "next to the SQLite file, else ./artifacts"),
            ],
        ),
    ]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def spec_markdown(spec: StudySpec) -> str:
    """The spec as Markdown for the study's note in optuna-dashboard."""
    lines = [f"## Study `{spec.name}`", ""]
    if spec.description:
        lines += [f"> {_md_cell(spec.description)}", ""]
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
    for title, items in spec_sections(spec):
        lines += ["", f"### {title}", "", "| setting | value |", "|---|---|"]
        lines += [f"| {_md_cell(k)} | {_md_cell(v)} |" for k, v in items]
    lines += ["", "_Written by `hpo` from the study's stored spec (user attr `hpo_spec`)._"]
    return "\n".join(lines) + "\n"


def ensure_spec_note(study: optuna.Study, spec: StudySpec) -> bool:
    """Write the spec note on ``study`` unless it already has a note; True when written."""
    import optuna_dashboard

    if optuna_dashboard.get_note(study).strip():
        return False  # a note someone wrote (or ours) stays as it is
    optuna_dashboard.save_note(study, spec_markdown(spec))
    return True


def ensure_spec_notes(storage: optuna.storages.BaseStorage) -> list[StudySpec]:
    """Spec notes on every study of ``storage`` created by hpo; returns their specs."""
    import optuna

    from hpo.worker import stored_spec

    specs = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        try:
            spec = stored_spec(study)
        except HpoError as exc:  # a spec from another hpo version: show the study anyway
            _log.warning("study %r: stored spec not readable (%s)", summary.study_name, exc)
            continue
        if spec is None:
            continue
        specs.append(spec)
        if ensure_spec_note(study, spec):
            _log.info("study %r: wrote the spec as the study's note", spec.name)
    return specs


def dashboard_artifact_dir(url: str, specs: Iterable[StudySpec], explicit: str | None) -> Path:
    """The artifact store to serve: ``--artifacts``, else the one the studies' specs name, else
    the default beside the SQLite file (or ``./artifacts``)."""
    from hpo.artifacts import artifact_dir_for

    if explicit:
        return Path(explicit)
    named = sorted({spec.artifacts.path for spec in specs if spec.artifacts.path})
    if len(named) > 1:
        _log.warning(
            "studies here use different [artifacts] paths (%s); serving %s; pass --artifacts DIR "
            "to see another",
            ", ".join(named),
            named[0],
        )
    return Path(named[0]) if named else artifact_dir_for(url, None)


def open_url(host: str, port: int) -> str:
    """The address a browser on this machine opens for a server bound to ``host``."""
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/dashboard"


def _check_sqlite_file(url: str) -> None:
    from sqlalchemy.engine import make_url

    from hpo.storage import mask_url, normalize_url

    parsed = make_url(normalize_url(url))
    database = parsed.database
    if (
        parsed.drivername.startswith("sqlite")
        and database not in (None, "", ":memory:")
        and not Path(str(database)).exists()
    ):
        raise HpoError(
            f"storage {mask_url(url)}: SQLite file {parsed.database} does not exist; "
            "run `hpo run` first or pass --storage"
        )


def serve(
    url: str,
    *,
    host: str,
    port: int,
    artifacts: str | None,
    announce: Callable[[str], None],
) -> None:
    """Serve optuna-dashboard for ``url`` until Ctrl-C; ``announce`` gets the one line to show."""
    import socketserver
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    import optuna_dashboard
    from optuna.artifacts import FileSystemArtifactStore

    from hpo.storage import mask_url, open_storage

    class ThreadedServer(socketserver.ThreadingMixIn, WSGIServer):
        daemon_threads = True  # Ctrl-C must not wait for a browser's open connection

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            _log.debug("dashboard: " + format, *args)

    _check_sqlite_file(url)
    storage = open_storage(url)
    specs = ensure_spec_notes(storage)
    artifact_dir = dashboard_artifact_dir(url, specs, artifacts)
    app = optuna_dashboard.wsgi(storage, artifact_store=FileSystemArtifactStore(artifact_dir))
    try:
        server = make_server(
            host, port, app, server_class=ThreadedServer, handler_class=QuietHandler
        )
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise HpoError(
                f"port {port} on {host} is already in use; pick another with --port"
            ) from None
        raise HpoError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); check --host and --port"
        ) from None
    bound_port = int(server.server_address[1])
    where = "" if artifact_dir.is_dir() else " (none yet)"
    announce(
        f"optuna-dashboard for {mask_url(url)} (artifacts: {artifact_dir}{where}): "
        f"open {open_url(host, bound_port)}  (Ctrl-C stops it)"
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
