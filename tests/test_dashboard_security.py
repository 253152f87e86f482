"""`hpo dashboard` is read-only by default, checks the Host header, and needs a token off loopback.

Every check runs against a real ``hpo dashboard`` process (over HTTP with ``http.client``, which
sends exactly the Host and headers given) and, for rendering, headless Chromium. The processes
serve private copies of the shared results study: a refusal that failed would otherwise delete
or change the study other test modules read.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import NAME, BuiltStudy, hpo, load, one_line_error
from test_dashboard import CHROMIUM, _chromium

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "t0ken-for-the-dashboard-tests_xyz"
ALLOW_WRITES = "hpo dashboard --allow-writes"
NO_TOKEN_ERROR = (
    "--host 0.0.0.0 lets other machines reach the dashboard, so it needs a token: pass "
    "--token TOKEN or set $HPO_DASHBOARD_TOKEN (make one with python -c 'import secrets; "
    "print(secrets.token_urlsafe())'), or keep --host 127.0.0.1 and tunnel with ssh -L"
)


class Reply:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


class Board:
    """One running `hpo dashboard` process: its port, its printed lines, and requests to it."""

    def __init__(self, process: subprocess.Popen[str], line: str, port: int) -> None:
        self.process = process
        self.line = line  # the first stdout line
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.stderr: list[str] = []  # filled by a reader thread while it runs

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
        host: str | None = None,
    ) -> Reply:
        """``method path`` on 127.0.0.1; ``host`` replaces the Host header, "" sends none."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            data = None if body is None else json.dumps(body).encode()
            sent = {"Content-Type": "application/json"} if data is not None else {}
            sent.update(headers or {})
            if host == "":
                connection.putrequest(method, path, skip_host=True)
                for key, value in sent.items():
                    connection.putheader(key, value)
                connection.endheaders(data)
            else:
                if host is not None:
                    sent["Host"] = host
                connection.request(method, path, body=data, headers=sent)
            response = connection.getresponse()
            return Reply(response.status, response.headers, response.read())
        finally:
            connection.close()

    def study_id(self, **auth: Any) -> int:
        summaries = self.request("GET", "/api/studies", **auth).json()["study_summaries"]
        assert NAME in [s["study_name"] for s in summaries]
        return int(next(s["study_id"] for s in summaries if s["study_name"] == NAME))

    def wait_for_stderr(self, pattern: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not any(re.search(pattern, line) for line in list(self.stderr)):
            assert time.monotonic() < deadline, (pattern, self.stderr)
            time.sleep(0.05)


@contextlib.contextmanager
def running(
    url: str,
    cwd: Path,
    *args: str,
    env: dict[str, str] | None = None,
    verbose: bool = False,
) -> Iterator[Board]:
    """`hpo [-v] dashboard --storage URL --port 0 ARGS...` until the block ends."""
    environ = {
        k: v for k, v in os.environ.items() if k not in ("HPO_STORAGE", "HPO_DASHBOARD_TOKEN")
    }
    environ["PYTHONPATH"] = str(ROOT) + os.pathsep + environ.get("PYTHONPATH", "")
    environ.update(env or {})
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hpo",
            *(["-v"] if verbose else []),
            "dashboard",
            "--storage",
            url,
            "--port",
            "0",
            *args,
        ],
        cwd=cwd,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    stderr: list[str] = []
    threading.Thread(
        target=lambda: [lines.put(x) for x in process.stdout or ()], daemon=True
    ).start()
    threading.Thread(
        target=lambda: [stderr.append(x.rstrip("\n")) for x in process.stderr or ()],
        daemon=True,
    ).start()
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                line = lines.get(timeout=0.5).rstrip("\n")
                break
            except queue.Empty:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    process.wait()
                    pytest.fail(f"hpo dashboard printed nothing; stderr: {stderr}")
        match = re.search(r"open http://[^ ]+:(\d+)/dashboard", line)
        assert match, line
        board = Board(process, line, int(match.group(1)))
        board.stderr = stderr
        yield board
    finally:
        process.terminate()
        process.wait(timeout=30)


def _copy_with_a_running_trial(built: BuiltStudy, root: Path) -> str:
    """A private copy of the results study, plus one RUNNING trial that `tell` could finish."""
    url = built.copy(root)
    load(url).ask()
    return url


def _running_trial(board: Board, study_id: int, **auth: Any) -> dict[str, Any]:
    trials = board.request("GET", f"/api/studies/{study_id}", **auth).json()["trials"]
    running = [t for t in trials if t["state"] == "Running"]
    assert len(running) == 1, [t["state"] for t in trials]
    return dict(running[0])


def _refused_write(reply: Reply) -> None:
    assert reply.status == 403, (reply.status, reply.body)
    assert reply.headers["Content-Type"] == "application/json"
    # optuna-dashboard's pages show "reason" in their error snackbar.
    assert ALLOW_WRITES in reply.json()["reason"]


# --- read-only by default, on loopback ---------------------------------------------------------


@pytest.fixture(scope="module")
def readonly(built: BuiltStudy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Board]:
    """`hpo -v dashboard` with the defaults (read-only, 127.0.0.1, no token) on a copy."""
    root = tmp_path_factory.mktemp("readonly-dashboard")
    url = _copy_with_a_running_trial(built, root)
    # -v: the request log shows what the browser asked for.
    with running(url, root, verbose=True) as board:
        yield board


def test_deleting_a_study_is_refused_and_the_study_stays(readonly: Board) -> None:
    study_id = readonly.study_id()
    _refused_write(readonly.request("DELETE", f"/api/studies/{study_id}"))
    assert readonly.study_id() == study_id
    assert readonly.request("GET", f"/api/studies/{study_id}").status == 200


def test_telling_a_running_trial_is_refused(readonly: Board) -> None:
    study_id = readonly.study_id()
    trial = _running_trial(readonly, study_id)
    reply = readonly.request(
        "POST",
        f"/api/trials/{trial['trial_id']}/tell",
        body={"state": "Complete", "values": [0.99]},
    )
    _refused_write(reply)
    assert _running_trial(readonly, study_id)["trial_id"] == trial["trial_id"]  # still RUNNING


def test_saving_a_note_is_refused(readonly: Board) -> None:
    study_id = readonly.study_id()
    note = readonly.request("GET", f"/api/studies/{study_id}").json()["note"]
    reply = readonly.request(
        "PUT",
        f"/api/studies/{study_id}/note",
        body={"version": note["version"] + 1, "body": "overwritten"},
    )
    _refused_write(reply)
    assert readonly.request("GET", f"/api/studies/{study_id}").json()["note"] == note


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/studies", {"study_name": "new", "directions": ["maximize"]}),
        ("POST", "/api/studies/{study}/rename", {"study_name": "renamed"}),
        ("PUT", "/api/studies/{study}/{trial}/note", {"version": 1, "body": "x"}),
        ("POST", "/api/trials/{trial}/user-attrs", {"user_attrs": {"x": 1}}),
        ("POST", "/api/artifacts/{study}/{trial}", {}),
        ("DELETE", "/api/artifacts/{study}/{trial}/0123abcd", None),
        ("POST", "/incompatible-rdb-schema", None),
        ("PATCH", "/api/studies/{study}", {"study_name": "x"}),
        ("PROPFIND", "/api/studies", None),  # not a write optuna-dashboard knows: refused too
    ],
)
def test_every_other_write_is_refused(
    readonly: Board, method: str, path: str, body: dict[str, Any] | None
) -> None:
    study_id = readonly.study_id()
    trial_id = _running_trial(readonly, study_id)["trial_id"]
    _refused_write(readonly.request(method, path.format(study=study_id, trial=trial_id), body=body))
    names = [
        s["study_name"] for s in readonly.request("GET", "/api/studies").json()["study_summaries"]
    ]
    assert names == [NAME]


def test_reads_work(readonly: Board) -> None:
    study_id = readonly.study_id()
    for path in ("/api/meta", "/api/studies", f"/api/studies/{study_id}", f"/csv/{study_id}"):
        assert readonly.request("GET", path).status == 200, path
    page = readonly.request("GET", "/dashboard")
    assert page.status == 200 and b"<script" in page.body
    assert readonly.request("HEAD", "/dashboard").status == 200


@pytest.mark.parametrize(
    "host", ["127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}", "LOCALHOST", "127.0.0.1"]
)
def test_loopback_host_names_are_accepted(readonly: Board, host: str) -> None:
    assert (
        readonly.request("GET", "/api/studies", host=host.format(port=readonly.port)).status == 200
    )


@pytest.mark.parametrize(
    "host",
    [
        "evil.example:{port}",  # DNS rebinding: evil.example now resolves to 127.0.0.1
        "localhost.evil.example:{port}",
        "127.0.0.1.nip.io:{port}",
        "0.0.0.0:{port}",
        "",  # no Host header at all
    ],
)
def test_other_host_names_are_refused(readonly: Board, host: str) -> None:
    study_id = readonly.study_id()
    for method, path in (("GET", "/api/studies"), ("DELETE", f"/api/studies/{study_id}")):
        reply = readonly.request(method, path, host=host.format(port=readonly.port))
        assert reply.status == 403, (method, reply.status)
        assert reply.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert reply.text.startswith("hpo dashboard: Host ")
        assert "--allowed-host NAME" in reply.text
        assert f"open http://127.0.0.1:{readonly.port}/dashboard" in reply.text
    assert readonly.study_id() == study_id


@pytest.mark.slow  # a headless browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_chromium_renders_the_study_and_its_trials_read_only(readonly: Board) -> None:
    study_id = readonly.study_id()
    best = readonly.request("GET", f"/api/studies/{study_id}").json()["best_trials"][0]["number"]
    seen = len(readonly.stderr)

    dom = _chromium("--dump-dom", f"{readonly.base}/dashboard/studies/{study_id}").stdout.decode()
    assert f"{NAME} (id={study_id})" in dom  # the app bar names the study
    for heading in ("History", f"Best Trial (number={best})"):
        assert f">{heading}<" in dom, heading
    assert dom.count('class="point"') >= 5  # the history plot drew every trial

    trials = _chromium(
        "--dump-dom", f"{readonly.base}/dashboard/studies/{study_id}/trials?numbers={best}"
    ).stdout.decode()
    assert f"Trial {best}" in trials and "fold_accuracies" in trials

    # Rendering asked for nothing the guard refuses: no write, no refused Host.
    asked = readonly.stderr[seen:]
    assert any('"GET /api/studies/' in line for line in asked), asked
    assert not [line for line in asked if re.search(r'" 40[13] ', line)], asked


# --- --allow-writes ------------------------------------------------------------------------------


@pytest.mark.slow  # its own dashboard process
def test_allow_writes_lets_a_note_be_saved(built: BuiltStudy, tmp_path: Path) -> None:
    """The copy has no artifact folder beside it, so the dashboard shows its section on the
    files it cannot read at the top of the note; the page's editor starts from the note as
    served, and what is saved is the person's words without that section."""
    import optuna_dashboard

    from hpo.results.dashboard import UNREADABLE_TITLE, without_unreadable

    url = built.copy(tmp_path)
    with running(url, tmp_path, "--allow-writes") as board:
        study_id = board.study_id()
        note = board.request("GET", f"/api/studies/{study_id}").json()["note"]
        shown = note["body"].split("\n\n", 1)[1]
        assert shown.startswith(UNREADABLE_TITLE)
        edited = shown[: len(shown) - len(without_unreadable(shown))] + "kept: a person's words"
        reply = board.request(
            "PUT",
            f"/api/studies/{study_id}/note",
            body={"version": note["version"] + 1, "body": edited},
        )
        assert reply.status == 204, reply.body
        stored = optuna_dashboard.get_note(load(url))
        assert stored == "kept: a person's words"
        saved = board.request("GET", f"/api/studies/{study_id}").json()["note"]
        assert saved == {"version": note["version"] + 1, "body": edited}
        # Writes on, Host still checked.
        bad = board.request("PUT", f"/api/studies/{study_id}/note", host="evil.example", body={})
        assert bad.status == 403 and "--allowed-host" in bad.text
        # A page of this dashboard may write; a page elsewhere (another site, or another
        # server on this machine) may not, through the visitor's browser.
        own = f"http://127.0.0.1:{board.port}"
        page = {"Origin": own, "Referer": f"{own}/dashboard/studies/{study_id}"}
        body = {"version": note["version"] + 2, "body": "from the dashboard's own page"}
        reply = board.request("PUT", f"/api/studies/{study_id}/note", body=body, headers=page)
        assert reply.status == 204, reply.body
        before = board.request("GET", "/api/studies").json()
        for headers in (
            {"Origin": "http://evil.example"},
            {"Origin": "null"},
            {"Origin": f"http://localhost:{board.port + 1}"},
            {"Referer": "http://evil.example/page"},
        ):
            (header, value) = next(iter(headers.items()))
            for method, path, payload in (
                ("POST", "/api/studies", {"study_name": "x", "directions": ["maximize"]}),
                ("DELETE", f"/api/studies/{study_id}", None),
            ):
                refused = board.request(method, path, body=payload, headers=headers)
                assert refused.status == 403, (headers, refused.body)
                assert refused.json()["reason"] == (
                    f"hpo dashboard: a write from another site ({header} '{value}') is refused; "
                    f"writes are accepted from pages of this dashboard only "
                    f"(http://127.0.0.1:{board.port}/dashboard)"
                )
        assert board.request("GET", "/api/studies").json() == before  # nothing created or gone


# --- off loopback: a token ---------------------------------------------------------------------


@pytest.mark.slow  # an hpo process (its start-up imports)
def test_a_non_loopback_bind_without_a_token_is_one_line(built: BuiltStudy, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("HPO_STORAGE", "HPO_DASHBOARD_TOKEN")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, "-m", "hpo", "dashboard", "--storage", built.url, "--host", "0.0.0.0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr == f"Error: {NO_TOKEN_ERROR}\n"
    assert done.stdout == ""


def test_an_empty_token_variable_is_no_token(built: BuiltStudy) -> None:
    result = hpo(
        "dashboard", "--storage", built.url, "--host", "0.0.0.0", env={"HPO_DASHBOARD_TOKEN": ""}
    )
    one_line_error(result, NO_TOKEN_ERROR)


def test_a_short_token_is_refused_without_showing_it(built: BuiltStudy) -> None:
    result = hpo("dashboard", "--storage", built.url, "--host", "0.0.0.0", "--token", "abc123")
    one_line_error(
        result,
        "the dashboard token (--token or $HPO_DASHBOARD_TOKEN) must be at least 16 printable "
        "characters without spaces; make one with python -c 'import secrets; "
        "print(secrets.token_urlsafe())'",
    )
    assert "abc123" not in result.output


def test_accepted_host_names() -> None:
    from hpo.results.dashboard import LOOPBACK_NAMES, dashboard_access

    def names(host: str, *allowed: str) -> set[str]:
        access = dashboard_access(host, token=TOKEN, allowed_hosts=allowed, allow_writes=False)
        return set(access.hosts - LOOPBACK_NAMES)

    assert names("127.0.0.1") == set()
    assert names("0.0.0.0") == set()
    assert names("192.0.2.7") == {"192.0.2.7"}  # the address it is bound to
    assert names("0.0.0.0", "Box.Example:8080", "[2001:db8::1]") == {"box.example", "2001:db8::1"}
    access = dashboard_access("0.0.0.0", token=TOKEN, allowed_hosts=(), allow_writes=False)
    assert TOKEN not in repr(access)  # a traceback or debug line cannot show it


@pytest.fixture(scope="module")
def guarded(built: BuiltStudy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Board]:
    """`hpo -v dashboard --host 0.0.0.0 --allowed-host box.example`, token from the environment."""
    root = tmp_path_factory.mktemp("guarded-dashboard")
    url = _copy_with_a_running_trial(built, root)
    with running(
        url,
        root,
        "--host",
        "0.0.0.0",
        "--allowed-host",
        "box.example",
        env={"HPO_DASHBOARD_TOKEN": TOKEN},
        verbose=True,  # the request log, at debug level, must not show the token either
    ) as board:
        yield board


def _login_url(board: Board) -> str:
    logins = [line for line in board.stderr if line.startswith("log in once at ")]
    assert len(logins) == 1, board.stderr
    return logins[0].split()[4]


BEARER = {"headers": {"Authorization": f"Bearer {TOKEN}"}}


def test_the_login_url_is_printed_once_on_stderr(guarded: Board) -> None:
    assert _login_url(guarded) == (f"http://box.example:{guarded.port}/dashboard?token={TOKEN}")
    # The usual line on stdout, without the token.
    assert guarded.line.endswith(
        f"open http://127.0.0.1:{guarded.port}/dashboard  (Ctrl-C stops it)"
    )
    assert TOKEN not in guarded.line


@pytest.mark.parametrize(
    "credentials",
    [
        {},
        {"Authorization": "Bearer wrong-token-wrong-token"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Cookie": "hpo_dashboard_{port}=0123abcd"},
        {"Cookie": f"hpo_dashboard_{{port}}={TOKEN}"},  # the cookie holds a derived value
        {"Cookie": '"broken'},
    ],
)
def test_without_the_token_a_request_gets_401(guarded: Board, credentials: dict[str, str]) -> None:
    headers = {k: v.format(port=guarded.port) for k, v in credentials.items()}
    for path in ("/api/studies", "/dashboard", "/"):
        reply = guarded.request("GET", path, headers=headers)
        assert reply.status == 401, (path, reply.status)
        assert reply.headers["WWW-Authenticate"] == 'Bearer realm="hpo dashboard"'
        assert "Authorization: Bearer TOKEN" in reply.text
        assert TOKEN not in reply.text
    assert guarded.request("GET", "/dashboard?token=not-the-token").status == 401


def test_the_bearer_header_lets_a_request_in(guarded: Board) -> None:
    reply = guarded.request("GET", "/api/studies", **BEARER)
    assert reply.status == 200
    assert [s["study_name"] for s in reply.json()["study_summaries"]] == [NAME]


def test_the_login_url_sets_a_cookie_that_then_works(guarded: Board) -> None:
    login = urlsplit(_login_url(guarded))
    reply = guarded.request("GET", f"{login.path}?{login.query}", host=login.netloc)
    assert reply.status == 303
    assert reply.headers["Location"] == "/dashboard"  # the token leaves the address bar
    cookie = reply.headers["Set-Cookie"]
    name, value = cookie.split(";")[0].split("=", 1)
    assert name == f"hpo_dashboard_{guarded.port}"
    assert TOKEN not in cookie
    assert {"HttpOnly", "SameSite=Lax", "Path=/"} <= {part.strip() for part in cookie.split(";")}
    with_cookie = {"headers": {"Cookie": f"{name}={value}"}, "host": login.netloc}
    assert guarded.request("GET", "/api/studies", **with_cookie).status == 200
    page = guarded.request("GET", "/dashboard", **with_cookie)
    assert page.status == 200 and b"<script" in page.body
    # Other query parameters survive the redirect.
    kept = guarded.request("GET", f"/dashboard/studies/1?a=1&token={TOKEN}&b=2")
    assert kept.status == 303 and kept.headers["Location"] == "/dashboard/studies/1?a=1&b=2"


def test_the_token_does_not_make_writes_possible(guarded: Board) -> None:
    study_id = guarded.study_id(**BEARER)
    _refused_write(guarded.request("DELETE", f"/api/studies/{study_id}", **BEARER))
    trial = _running_trial(guarded, study_id, **BEARER)
    _refused_write(
        guarded.request(
            "POST",
            f"/api/trials/{trial['trial_id']}/tell",
            body={"state": "Complete", "values": [0.99]},
            **BEARER,
        )
    )
    assert guarded.study_id(**BEARER) == study_id


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("box.example:{port}", 200),
        ("BOX.EXAMPLE", 200),
        ("127.0.0.1:{port}", 200),
        ("other.example:{port}", 403),
        ("box.example.evil.example:{port}", 403),
    ],
)
def test_only_allowed_host_names_are_served(guarded: Board, host: str, status: int) -> None:
    reply = guarded.request("GET", "/api/studies", host=host.format(port=guarded.port), **BEARER)
    assert reply.status == status
    # The Host check comes first: a refused name learns nothing about the token.
    if status == 403:
        assert (
            "--allowed-host NAME"
            in guarded.request("GET", "/api/studies", host=host.format(port=guarded.port)).text
        )


def test_the_token_shows_only_in_the_login_line(guarded: Board) -> None:
    login = urlsplit(_login_url(guarded))
    guarded.request("GET", f"{login.path}?{login.query}", host=login.netloc)
    guarded.wait_for_stderr(r'"GET /dashboard\?token=\*\*\* HTTP/1.1" 303')
    assert [line for line in guarded.stderr if TOKEN in line] == [
        f"log in once at {_login_url(guarded)}  (sets a cookie in that browser; or send "
        "Authorization: Bearer TOKEN)"
    ]
    assert TOKEN not in guarded.line


@pytest.mark.slow  # a headless browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_chromium_logs_in_with_the_printed_url_and_renders_the_study(guarded: Board) -> None:
    study_id = guarded.study_id(**BEARER)
    login = _login_url(guarded)
    # box.example is the name other machines would use; the browser finds it on loopback.
    resolve = "--host-resolver-rules=MAP box.example 127.0.0.1"
    page = login.replace("/dashboard?", f"/dashboard/studies/{study_id}?")
    dom = _chromium(resolve, "--dump-dom", page).stdout.decode()
    assert f"{NAME} (id={study_id})" in dom
    assert ">History<" in dom
    # Without the login, the same browser gets the 401 text.
    plain = _chromium(
        resolve, "--dump-dom", f"http://box.example:{guarded.port}/dashboard/studies/{study_id}"
    ).stdout.decode()
    assert "this dashboard needs its token" in plain and NAME not in plain
