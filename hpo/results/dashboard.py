"""optuna-dashboard on a study's storage, which shows the spec of every hpo study as its note.

Starting the dashboard changes nothing in the database: the note (which data, folds, model and
search space every trial of the study used) is written by the commands that change a study
(:mod:`hpo.results.spec_text`); a study without one is shown without one. The server is
optuna-dashboard's own WSGI app in a threaded ``wsgiref`` server we bind ourselves: a busy port
becomes one clear error instead of a traceback, and the line we print never shows a password.

optuna-dashboard has no login and its API can delete studies, tell running trials and rewrite
notes, so :class:`Guard` wraps its app (see :class:`Access`):

- every write (any method but GET, HEAD, OPTIONS) is refused with 403 unless ``--allow-writes``,
  and with it, a write whose ``Origin`` (else ``Referer``) names another site than this
  dashboard's (an accepted host name on the port the request came to);
- the Host header must name this machine's loopback or an ``--allowed-host``, so a web page
  cannot reach a loopback dashboard through DNS rebinding;
- with a token (required to bind a non-loopback address) every request must carry it, as
  ``Authorization: Bearer TOKEN`` or as the cookie that the printed login URL sets.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import io
import ipaddress
import json
import re
import socketserver
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import parse_qsl, quote, urlencode, urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from hpo import stops
from hpo.errors import HpoError
from hpo.lazy import lazy_import
from hpo.log import get_logger
from hpo.results.artifacts import artifact_dir_for, open_artifact_store, read_trial_artifacts
from hpo.results.spec_text import has_note
from hpo.spec import StudySpec
from hpo.study.record import stored_spec
from hpo.study.storage import mask_url, open_storage
from hpo.study.stores import (
    FOLDER,
    ArtifactPlace,
    ArtifactUnreadable,
    FirstFound,
    folder_for,
    open_place,
    store_setting,
    study_place,
)

if TYPE_CHECKING:
    import bottle
    import optuna
    import optuna.artifacts as optuna_artifacts
    import optuna_dashboard
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
else:
    # optuna-dashboard's web framework: a handler may raise its HTTPResponse to answer.
    bottle = lazy_import("bottle")
    optuna = lazy_import("optuna")
    optuna_artifacts = lazy_import("optuna.artifacts")
    optuna_dashboard = lazy_import("optuna_dashboard")

__all__ = [
    "LOOPBACK_NAMES",
    "TOKEN_ENV",
    "Access",
    "Guard",
    "NoteAddenda",
    "ServedArtifacts",
    "dashboard_access",
    "dashboard_places",
    "is_loopback",
    "open_url",
    "read_specs",
    "serve",
    "unreadable_artifacts",
    "unreadable_by_study",
    "unreadable_section",
    "with_unreadable",
    "without_unreadable",
]

_log = get_logger("dashboard")


def read_specs(storage: optuna.storages.BaseStorage) -> list[StudySpec]:
    """The specs of every study of ``storage`` created by hpo; reads only (a dashboard may run
    under a database role that cannot write)."""
    specs = []
    without_note = []
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
        if not has_note(study):
            without_note.append(summary.study_name)
    if without_note:
        _log.info(
            "%s no note yet (`hpo create`, `run`, `worker` and `evaluate` write it; the "
            "dashboard writes nothing): %s",
            "1 study has" if len(without_note) == 1 else f"{len(without_note)} studies have",
            ", ".join(repr(name) for name in without_note),
        )
    return specs


def dashboard_places(
    url: str,
    storage: optuna.storages.BaseStorage,
    specs: Iterable[StudySpec],
    explicit: str | None,
) -> list[ArtifactPlace]:
    """The artifact stores to serve: ``--artifacts DIR``, else every store the studies' specs
    name (each study's own: the database, a bucket, a folder), else the default folder."""
    if explicit:
        folder = Path(explicit)
        return [
            ArtifactPlace(FOLDER, str(folder), open_artifact_store(folder, create=False), folder)
        ]
    places: dict[tuple[str, str], ArtifactPlace] = {}
    for spec in specs:
        setting = store_setting(spec)
        key = (setting, str(folder_for(url, spec)) if setting == FOLDER else "")
        if key not in places:
            try:
                places[key] = open_place(setting, url=url, spec=spec, storage=storage, create=False)
            except HpoError as exc:  # boto3 missing, say: the other stores are still served
                _log.warning("study %r: its artifacts cannot be served (%s)", spec.name, exc)
    if not places:
        folder = artifact_dir_for(url, None)
        return [
            ArtifactPlace(FOLDER, str(folder), open_artifact_store(folder, create=False), folder)
        ]
    return list(places.values())


def unreadable_by_study(
    storage: optuna.storages.BaseStorage, url: str, explicit: ArtifactPlace | None = None
) -> dict[str, list[str]]:
    """For each study with any, one line for every artifact of its final best ``[artifacts]
    top_k`` trials that cannot be read from the study's store (``explicit``: the one given
    instead), saying which and why (read as far as the first byte). The dashboard would show
    such a file as a broken link; ``hpo report`` says the same lines."""
    found: dict[str, list[str]] = {}
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        try:
            spec = stored_spec(study)
            if spec is None:
                continue
            place = explicit or study_place(study, url, create=False, spec=spec)
        except HpoError as exc:
            found[summary.study_name] = [f"artifacts not checked ({exc})"]
            continue
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        top = sorted(complete, key=lambda t: (-(t.value or 0.0), t.number))[: spec.artifacts.top_k]
        lines = [
            read.line(place)
            for read in read_trial_artifacts(study, top, place, wanted=lambda artifact: False)
            if read.problem is not None
        ]
        if lines:
            found[summary.study_name] = lines
    return found


def unreadable_artifacts(
    storage: optuna.storages.BaseStorage, url: str, explicit: ArtifactPlace | None = None
) -> list[str]:
    """:func:`unreadable_by_study` as log lines, each naming its study."""
    return [
        f"study {name!r}: {line}"
        for name, lines in unreadable_by_study(storage, url, explicit).items()
        for line in lines
    ]


# --- what the dashboard adds to optuna-dashboard's pages, without writing it ----------------

UNREADABLE_TITLE = "### ⚠ Files this dashboard cannot read"
_UNREADABLE_END = (
    "_Checked by `hpo dashboard` when it started, from the machine it runs on (not stored "
    "with the study; `hpo report` checks again)._"
)
_STUDY_DETAIL = re.compile(r"/api/studies/(\d+)")
_NOTE_SAVE = re.compile(r"/api/studies/\d+/note")


def unreadable_section(lines: Iterable[str]) -> str:
    """The section the dashboard shows at the top of a study's note for its ``lines``."""
    items = "".join(f"- {line}\n" for line in lines)
    return f"{UNREADABLE_TITLE}\n\n{items}\n{_UNREADABLE_END}\n\n"


def without_unreadable(note: str) -> str:
    """``note`` without the dashboard's section (:func:`unreadable_section`), if it has one."""
    start = note.find(UNREADABLE_TITLE)
    end = note.find(_UNREADABLE_END, start) if start >= 0 else -1
    if end < 0:
        return note
    return note[:start] + note[end + len(_UNREADABLE_END) :].lstrip("\n")


def with_unreadable(note: str, section: str) -> str:
    """``note`` with ``section`` after its title line (the note itself is as stored)."""
    note = without_unreadable(note)
    if note.startswith("## "):
        title, _, rest = note.partition("\n")
        return f"{title}\n\n{section}{rest.lstrip(chr(10))}"
    return section + note


class NoteAddenda:
    """WSGI middleware that shows, at the top of a study's note in optuna-dashboard's page (the
    study detail its page reads, ``GET /api/studies/ID``), the files of the study's best trials
    that the dashboard could not read when it started, with why.

    The note is written by the commands that change a study, which cannot know: whether a file
    can be read depends on the machine that reads it (a folder, S3 credentials) and on the
    moment (a file removed later). So the dashboard says what it found itself, in the response
    only: it writes nothing. With ``--allow-writes`` a note saved from the page (whose editor
    starts from the note as served) is saved without the section."""

    def __init__(self, app: WSGIApplication, sections: dict[int, str]) -> None:
        self._app = app
        self._sections = sections  # by study id

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = str(environ.get("PATH_INFO", ""))
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        if method == "PUT" and _NOTE_SAVE.fullmatch(path):
            return self._app(_saved_without_section(environ), start_response)
        match = _STUDY_DETAIL.fullmatch(path)
        if match is None or method != "GET" or int(match[1]) not in self._sections:
            return self._app(environ, start_response)
        answered: list[Any] = []
        chunks: list[bytes] = []

        def keep(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            answered[:] = [status, headers]
            return chunks.append

        result = self._app(environ, keep)
        try:
            chunks.extend(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status, headers = answered
        body = b"".join(chunks)
        if status.startswith("200"):
            try:
                detail = json.loads(body)
                note = detail.get("note") or {"version": 0, "body": ""}
                note["body"] = with_unreadable(
                    str(note.get("body", "")), self._sections[int(match[1])]
                )
                detail["note"] = note
                body = json.dumps(detail).encode()
            except (ValueError, AttributeError, TypeError) as exc:
                _log.debug("study %s: note not extended (%s)", match[1], exc)
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        start_response(status, [*headers, ("Content-Length", str(len(body)))])
        return [body]


def _saved_without_section(environ: WSGIEnvironment) -> WSGIEnvironment:
    """A note save (``PUT /api/studies/ID/note``, JSON ``{"version", "body"}``) whose body
    holds the dashboard's section, without it: the section is shown, never stored."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return environ
    raw = environ["wsgi.input"].read(length) if length > 0 else b""
    try:
        saved = json.loads(raw)
        if isinstance(saved, dict) and isinstance(saved.get("body"), str):
            saved["body"] = without_unreadable(saved["body"])
            raw = json.dumps(saved).encode()
    except ValueError:
        pass  # not JSON: optuna-dashboard answers it as it would have
    changed = dict(environ)
    changed["wsgi.input"] = io.BytesIO(raw)
    changed["CONTENT_LENGTH"] = str(len(raw))
    return changed


def note_sections(
    storage: optuna.storages.BaseStorage, unreadable: dict[str, list[str]]
) -> dict[int, str]:
    """:func:`unreadable_section` of each study with unreadable files, by study id."""
    return {
        storage.get_study_id_from_name(name): unreadable_section(lines)
        for name, lines in unreadable.items()
    }


class ServedArtifacts:
    """optuna-dashboard's artifact store: every store the studies name (:class:`FirstFound`).
    A file none of them can read is answered in plain text, 404 when no store has it and 502
    when a store failed, naming each store and why, and logged once, instead of the web
    framework's 500 page and a traceback on the dashboard's output."""

    def __init__(self, places: list[ArtifactPlace]) -> None:
        self._stores = FirstFound(places)

    def open_reader(self, artifact_id: str) -> BinaryIO:
        try:
            return self._stores.open_reader(artifact_id)
        except optuna_artifacts.exceptions.ArtifactNotFound as exc:
            status, why = 404, str(exc)
        except ArtifactUnreadable as exc:
            status, why = 502, str(exc)
        _log.warning("%s", why)
        raise bottle.HTTPResponse(
            why + "\n",
            status=status,
            headers={"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store"},
        )

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self._stores.write(artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self._stores.remove(artifact_id)


def open_url(host: str, port: int) -> str:
    """The address a browser on this machine opens for a server bound to ``host``."""
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/dashboard"


# --- who may use the dashboard, and how -----------------------------------------------------

TOKEN_ENV = "HPO_DASHBOARD_TOKEN"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
"""Host names a browser on this machine uses; no other site can make a browser send them."""

_MIN_TOKEN = 16  # a shorter token is guessable over the network, one request at a time
_TOKEN_FORM = re.compile(r"[!-~]+")  # printable ASCII: fits a header, a URL and a terminal
_MAKE_TOKEN = "python -c 'import secrets; print(secrets.token_urlsafe())'"
_READS = frozenset({"GET", "HEAD", "OPTIONS"})
_WRITES_OFF = (
    "hpo dashboard is read-only: restart it with `hpo dashboard --allow-writes` to edit notes, "
    "rename, create or delete studies, or tell trials"
)
# The request log names the path: a login URL's token must not reach it (nor any log).
_TOKEN_IN_QUERY = re.compile(r"(?i)([?&]token=)[^&\s\"]*")


@dataclass(frozen=True)
class Access:
    """What the dashboard lets requests do: writes, Host names, token."""

    allow_writes: bool = False
    hosts: frozenset[str] = LOOPBACK_NAMES
    """Accepted Host header names, lower case, without port or brackets."""
    # repr=False: an Access in a traceback or a debug line must not show the token.
    token: str | None = field(default=None, repr=False)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine ("" and 0.0.0.0 do not)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost may resolve to any interface
        return False


def _host_name(value: str) -> str:
    """``NAME`` of a Host header ``NAME[:PORT]`` (``[::1]:8080`` -> ``::1``), lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:  # NAME:PORT; more colons is a bare IPv6 address
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def _host_port(value: str) -> int | None:
    """The port of a Host header ``NAME:PORT`` (``[::1]:8080`` -> 8080); None without one."""
    value = value.strip()
    tail = value.rsplit("]", 1)[-1] if value.startswith("[") else value
    if tail.count(":") != 1:  # none, or a bare IPv6 address
        return None
    port = tail.rsplit(":", 1)[1]
    return int(port) if port.isdigit() else None


def dashboard_access(
    host: str, *, token: str | None, allowed_hosts: Iterable[str], allow_writes: bool
) -> Access:
    """The :class:`Access` for serving on ``host``; refuses a non-loopback bind without a token.

    Accepted Host names: the loopback names, ``host`` itself when it is one address (not
    0.0.0.0), and ``allowed_hosts``. Messages never contain the token.
    """
    token = token or None  # an empty HPO_DASHBOARD_TOKEN is no token
    if token is not None and (len(token) < _MIN_TOKEN or not _TOKEN_FORM.fullmatch(token)):
        raise HpoError(
            f"the dashboard token (--token or ${TOKEN_ENV}) must be at least {_MIN_TOKEN} "
            f"printable characters without spaces; make one with {_MAKE_TOKEN}"
        )
    if token is None and not is_loopback(host):
        raise HpoError(
            f"--host {host or '(all addresses)'} lets other machines reach the dashboard, so it "
            f"needs a token: pass --token TOKEN or set ${TOKEN_ENV} (make one with "
            f"{_MAKE_TOKEN}), or keep --host 127.0.0.1 and tunnel with ssh -L"
        )
    names = set(LOOPBACK_NAMES)
    if host not in ("", "0.0.0.0", "::"):  # a wildcard bind has no name of its own
        names.add(_host_name(host))
    names.update(_host_name(name) for name in allowed_hosts)
    names.discard("")
    return Access(allow_writes=allow_writes, hosts=frozenset(names), token=token)


def _response(
    start_response: StartResponse,
    status: str,
    body: str,
    *,
    json_body: bool = False,
    headers: Iterable[tuple[str, str]] = (),
) -> list[bytes]:
    # optuna-dashboard's pages read {"reason": ...} from a failed API call and show it, so a
    # refused write in the browser says why; other refusals are read by people: plain text.
    data = (json.dumps({"reason": body}) if json_body else body + "\n").encode()
    start_response(
        status,
        [
            (
                "Content-Type",
                "application/json" if json_body else "text/plain; charset=utf-8",
            ),
            ("Content-Length", str(len(data))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),  # the body echoes a Host: never as HTML
            *headers,
        ],
    )
    return [data]


class Guard:
    """WSGI middleware that applies an :class:`Access` to every request before ``app`` sees it.

    Order: Host (403), then token (401), then writes (403); a login URL (any GET path with
    ``?token=TOKEN``) sets an HttpOnly cookie and redirects to the same path without the token.
    """

    def __init__(self, app: WSGIApplication, access: Access, *, port: int, open_at: str) -> None:
        self._app = app
        self._access = access
        self._open_at = open_at  # the address to suggest when a Host is refused
        # One cookie per port: two dashboards on one machine must not overwrite each other's.
        self.cookie_name = f"hpo_dashboard_{port}"
        # The cookie holds a value derived from the token, never the token itself.
        self._session = (
            hmac.new(access.token.encode(), b"hpo dashboard session", hashlib.sha256).hexdigest()
            if access.token is not None
            else None
        )

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        given = environ.get("HTTP_HOST", "")
        if _host_name(given) not in self._access.hosts:
            shown = ascii(given[:100]) if given else "(none)"
            return _response(
                start_response,
                "403 Forbidden",
                f"hpo dashboard: Host {shown} is not accepted (a page from another site may be "
                f"trying to reach this dashboard); open {self._open_at}, or restart "
                f"`hpo dashboard` with --allowed-host NAME for each name browsers use to reach it",
            )
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        if self._access.token is not None:
            query = parse_qsl(str(environ.get("QUERY_STRING", "")), keep_blank_values=True)
            if method in ("GET", "HEAD") and any(key == "token" for key, _ in query):
                return self._login(environ, start_response, query)
            if not self._authorized(environ):
                return _response(
                    start_response,
                    "401 Unauthorized",
                    "hpo dashboard: this dashboard needs its token: open the login URL that "
                    "`hpo dashboard` printed at start-up (it ends in ?token=...), or send the "
                    "header `Authorization: Bearer TOKEN`",
                    headers=[("WWW-Authenticate", 'Bearer realm="hpo dashboard"')],
                )
        if method not in _READS:
            if not self._access.allow_writes:
                return _response(start_response, "403 Forbidden", _WRITES_OFF, json_body=True)
            foreign = self._foreign_origin(environ, given)
            if foreign is not None:
                return _response(
                    start_response,
                    "403 Forbidden",
                    f"hpo dashboard: a write from another site ({foreign}) is refused; writes "
                    f"are accepted from pages of this dashboard only ({self._open_at})",
                    json_body=True,
                )
        return self._app(environ, start_response)

    def _foreign_origin(self, environ: WSGIEnvironment, host: str) -> str | None:
        """What names a write's page when it is not this dashboard's own, else None.

        A browser sends ``Origin`` (or at least ``Referer``) with every cross-site write: a
        page elsewhere (another site, or another server on this machine) must not use the
        visitor's browser to write here. The page's host must be an accepted name and its
        port the one the request came to. A request with neither header comes from no web page
        (curl, a script), which a token, when set, already had to pass."""
        for header, key in (("Origin", "HTTP_ORIGIN"), ("Referer", "HTTP_REFERER")):
            value = str(environ.get(key, "")).strip()
            if not value:
                continue
            page = urlsplit(value)
            try:
                port = page.port
            except ValueError:
                port = -1  # no valid port: no page of this dashboard
            name = (page.hostname or "").rstrip(".")
            if port is None:
                port = {"http": 80, "https": 443}.get(page.scheme, -1)
            wanted = _host_port(host)
            if (
                page.scheme not in ("http", "https")
                or name not in self._access.hosts
                or (wanted is not None and port != wanted)
            ):
                return f"{header} {value[:100]!a}"
            return None
        return None

    def _matches(self, given: str, expected: str) -> bool:
        # Constant time: how long a wrong guess takes must not say how much of it was right.
        return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())

    def _authorized(self, environ: WSGIEnvironment) -> bool:
        assert self._access.token is not None and self._session is not None
        scheme, _, credential = str(environ.get("HTTP_AUTHORIZATION", "")).partition(" ")
        if scheme.lower() == "bearer" and self._matches(credential.strip(), self._access.token):
            return True
        try:
            cookies = SimpleCookie(str(environ.get("HTTP_COOKIE", "")))
        except CookieError:  # a malformed Cookie header is just no cookie
            return False
        morsel = cookies.get(self.cookie_name)
        return morsel is not None and self._matches(morsel.value, self._session)

    def _login(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        query: list[tuple[str, str]],
    ) -> list[bytes]:
        assert self._access.token is not None and self._session is not None
        tokens = [value for key, value in query if key == "token"]
        if len(tokens) != 1 or not self._matches(tokens[0], self._access.token):
            return _response(
                start_response,
                "401 Unauthorized",
                "hpo dashboard: wrong token in the login URL; use the one `hpo dashboard` "
                "printed at start-up",
            )
        rest = urlencode([(key, value) for key, value in query if key != "token"])
        # Redirect to the same page without the token, so it leaves the address bar and history.
        path = str(environ.get("SCRIPT_NAME", "")) + str(environ.get("PATH_INFO", "/"))
        # One leading slash: "//evil.example" would redirect to another site.
        target = "/" + quote(path.lstrip("/"))
        return _response(
            start_response,
            "303 See Other",
            "logged in",
            headers=[
                ("Location", target + (f"?{rest}" if rest else "")),
                # HttpOnly: page scripts cannot read it; Lax: no cross-site write carries it.
                (
                    "Set-Cookie",
                    f"{self.cookie_name}={self._session}; Path=/; HttpOnly; SameSite=Lax",
                ),
                ("Referrer-Policy", "no-referrer"),
            ],
        )


def serve(
    url: str,
    *,
    host: str,
    port: int,
    artifacts: str | None,
    access: Access,
    announce: Callable[[str], None],
    announce_login: Callable[[str], None],
) -> None:
    """Serve optuna-dashboard for ``url`` until Ctrl-C, behind a :class:`Guard` for ``access``.

    ``announce`` gets the one line to show; ``announce_login`` the login URL when there is a
    token (the only place the token is ever printed: give it stderr, not a log).
    """

    class ThreadedServer(socketserver.ThreadingMixIn, WSGIServer):
        daemon_threads = True  # Ctrl-C must not wait for a browser's open connection

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            _log.debug("dashboard: %s", _TOKEN_IN_QUERY.sub(r"\1***", format % args))

    # A read-only dashboard opens the storage as a reader: no file, folder, lock or table made.
    storage = open_storage(url, access="write" if access.allow_writes else "read")
    specs = read_specs(storage)
    places = dashboard_places(url, storage, specs, artifacts)
    unreadable = unreadable_by_study(storage, url, places[0] if artifacts else None)
    for name, lines in unreadable.items():
        for line in lines:
            _log.warning("study %r: %s", name, line)
    app: WSGIApplication = optuna_dashboard.wsgi(storage, artifact_store=ServedArtifacts(places))
    if unreadable:  # the page says it too, at the top of each such study's note
        app = NoteAddenda(app, note_sections(storage, unreadable))
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
    open_at = open_url(host, bound_port)
    # The guard needs the bound port (for --port 0), so it replaces the app after binding,
    # before the first request is served.
    server.set_app(Guard(app, access, port=bound_port, open_at=open_at))
    if access.token is not None:
        extra = sorted(access.hosts - LOOPBACK_NAMES - {_host_name(host)})
        login_at = open_url(extra[0], bound_port) if extra else open_at
        announce_login(
            f"log in once at {login_at}?token={quote(access.token, safe='')}  "
            "(sets a cookie in that browser; or send Authorization: Bearer TOKEN)"
        )
    shown = ", ".join(
        place.where + ("" if place.directory is None or place.directory.is_dir() else " (none yet)")
        for place in places
    )
    announce(
        f"optuna-dashboard for {mask_url(url)} (artifacts: {shown}): "
        f"open {open_at}  (Ctrl-C stops it)"
    )
    # Ctrl-C is how a dashboard ends: the request is waited for on a thread of its own, which
    # asks the server loop to return (it cannot be asked from the main thread it runs on).
    served = threading.Event()
    watcher = threading.Thread(target=_shut_down_on_stop, args=(server, served), daemon=True)
    watcher.start()
    try:
        server.serve_forever()
    finally:
        served.set()
        server.server_close()


def _shut_down_on_stop(server: Any, served: threading.Event) -> None:
    while not served.is_set():
        if stops.wait(0.5):
            server.shutdown()
            return
