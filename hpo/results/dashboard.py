"""optuna-dashboard on a study's storage, with the spec of every hpo study as its note.

The note is written once per study (never over a note a person has edited), so the dashboard
shows which data, folds, model and search space every trial of the study used. The server is
optuna-dashboard's own WSGI app in a threaded ``wsgiref`` server we bind ourselves: a busy port
becomes one clear error instead of a traceback, and the line we print never shows a password.
"""

from __future__ import annotations

import errno
import socketserver
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from hpo.errors import HpoError
from hpo.lazy import lazy_import
from hpo.log import get_logger
from hpo.results.artifacts import artifact_dir_for, open_artifact_store
from hpo.results.spec_text import ensure_spec_note
from hpo.spec import StudySpec
from hpo.study.record import stored_spec
from hpo.study.storage import mask_url, open_storage, sqlite_file

if TYPE_CHECKING:
    import optuna
    import optuna_dashboard
else:
    optuna = lazy_import("optuna")
    optuna_dashboard = lazy_import("optuna_dashboard")

__all__ = ["dashboard_artifact_dir", "ensure_spec_notes", "open_url", "serve"]

_log = get_logger("dashboard")


def ensure_spec_notes(storage: optuna.storages.BaseStorage) -> list[StudySpec]:
    """Spec notes on every study of ``storage`` created by hpo; returns their specs."""
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
    database = sqlite_file(url)
    if database is not None and not database.exists():
        raise HpoError(
            f"storage {mask_url(url)}: SQLite file {database} does not exist; "
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

    class ThreadedServer(socketserver.ThreadingMixIn, WSGIServer):
        daemon_threads = True  # Ctrl-C must not wait for a browser's open connection

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            _log.debug("dashboard: " + format, *args)

    _check_sqlite_file(url)
    storage = open_storage(url)
    specs = ensure_spec_notes(storage)
    artifact_dir = dashboard_artifact_dir(url, specs, artifacts)
    app = optuna_dashboard.wsgi(
        storage, artifact_store=open_artifact_store(artifact_dir, create=False)
    )
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
