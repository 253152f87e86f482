"""A database password never shows, in any form a URL can carry it.

The forms: userinfo (``postgresql://u:PASSWORD@h/db``), a ``password=`` query parameter (alone
or after another parameter), a percent-encoded password, and one with raw ``:`` or ``@``
inside. For each: ``mask_url`` itself, the one-line error of every command against an
unreachable server, the ``storage:`` line, the outage log line, and, against the real
PostgreSQL server (trust auth ignores the password), ``hpo create``/``run``/``status``/``best``
output and every row hpo stored in the database.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import hpo, one_line_error

from hpo.study.storage import StorageGuard, mask_url

# Distinctive pieces: none of them occurs in any message by chance.
PIECES = ("Xq7", "Zv9", "Wk3")
UNREACHABLE = "127.0.0.1:9"  # the discard port: nothing listens there


@dataclass(frozen=True)
class Form:
    """One way to put the password ``Xq7 Zv9 Wk3`` into a URL, and how it must look masked."""

    id: str
    url: str  # with {where}: HOST:PORT/DATABASE
    masked: str

    def at(self, where: str) -> str:
        return self.url.format(where=where)

    def shown(self, where: str) -> str:
        return self.masked.format(where=where)


FORMS = [
    Form("userinfo", "postgresql://hpo:Xq7Zv9Wk3@{where}", "postgresql://hpo:***@{where}"),
    Form(
        "query",
        "postgresql://hpo@{where}?password=Xq7Zv9Wk3",
        "postgresql://hpo@{where}?password=***",
    ),
    Form(
        "query-after-another",
        "postgresql://hpo@{where}?sslmode=prefer&password=Xq7Zv9Wk3",
        "postgresql://hpo@{where}?sslmode=prefer&password=***",
    ),
    Form(
        "percent-encoded",
        "postgresql://hpo:Xq7%40Zv9%3AWk3@{where}",
        "postgresql://hpo:***@{where}",
    ),
    Form("raw-colons", "postgresql://hpo:Xq7:Zv9:Wk3@{where}", "postgresql://hpo:***@{where}"),
]
RAW_AT = Form("raw-at", "postgresql://hpo:Xq7@Zv9:Wk3@{where}", "postgresql://hpo:***@{where}")


def assert_hidden(text: str) -> None:
    for piece in PIECES:
        assert piece not in text, text


# --- mask_url ----------------------------------------------------------------------------------


@pytest.mark.parametrize("form", [*FORMS, RAW_AT], ids=lambda f: f.id)
def test_mask_url_hides_every_form(form: Form) -> None:
    url = form.at("db.example:5432/hpo")
    shown = form.shown("db.example:5432/hpo")
    assert mask_url(url) == shown
    # Inside the messages hpo writes: quoted, followed by ": why", in JSON, in a sentence.
    assert mask_url(f"storage URL {url!r} is malformed") == f"storage URL {shown!r} is malformed"
    assert mask_url(f"cannot reach {url}: refused") == f"cannot reach {shown}: refused"
    assert mask_url(json.dumps({"storage": url, "n": 1})) == json.dumps({"storage": shown, "n": 1})
    assert mask_url(f"{url}, then {url}.") == f"{shown}, then {shown}."


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://u:s3cret@h/db", "postgresql://u:***@h/db"),
        ("postgresql+psycopg://u:s3cret@h:5432/db", "postgresql+psycopg://u:***@h:5432/db"),
        ("postgresql://:s3cret@h/db", "postgresql://:***@h/db"),
        ("postgresql://u:pa/ss@h/db", "postgresql://u:***@h/db"),  # a raw "/" too
        ("postgresql://u@h/db?PASSWORD=s3cret", "postgresql://u@h/db?PASSWORD=***"),
        ("postgresql://u@h/db?password=s3cret&x=1", "postgresql://u@h/db?password=***&x=1"),
        ("postgresql://u@h/db?password=a:b,c#d", "postgresql://u@h/db?password=***"),
        ("host=h password='se cret' dbname=d", "host=h password=*** dbname=d"),
        # Nothing to hide: left as it is.
        ("postgresql://u@h:5432/db", "postgresql://u@h:5432/db"),
        ("postgresql://u@h/db?password=", "postgresql://u@h/db?password="),
        ("sqlite:///dir/a:b@c.db", "sqlite:///dir/a:b@c.db"),
        ("no password here", "no password here"),
    ],
)
def test_mask_url_cases(text: str, expected: str) -> None:
    assert mask_url(text) == expected


# --- every command against an unreachable server: one line, nothing leaked ---------------------


@pytest.fixture
def tiny_study(write_study: Callable[..., Path]) -> Path:
    return write_study()


def _commands(study: Path, url: str) -> dict[str, tuple[object, ...]]:
    return {
        "run": ("run", study, "--storage", url),
        "create": ("create", study, "--storage", url),
        "worker": ("worker", "tiny", "--storage", url),
        "status": ("status", "tiny", "--storage", url),
        "best": ("best", "tiny", "--storage", url),
        "trials": ("trials", "tiny", "--storage", url),
        "report": ("report", "tiny", "--storage", url, "--out", "report"),
        "rerun": ("rerun", "tiny", "--storage", url, "--seeds", "2"),
    }


ANNOUNCING = {"run", "create", "worker"}  # the commands that print "storage: URL" first


@pytest.mark.parametrize("form", FORMS, ids=lambda f: f.id)
def test_unreachable_server_error_hides_the_password(tiny_study: Path, form: Form) -> None:
    url = form.at(f"{UNREACHABLE}/hpo")
    shown = form.shown(f"{UNREACHABLE}/hpo")
    for command, args in _commands(tiny_study, url).items():
        result = hpo(*args)
        one_line_error(result, f"cannot reach the database at {shown}: Connection refused")
        if command in ANNOUNCING:
            assert result.stderr.splitlines()[0] == f"storage: {shown}", command
        assert_hidden(result.output)


def test_raw_at_in_a_password_is_refused_masked(tiny_study: Path) -> None:
    url = RAW_AT.at(f"{UNREACHABLE}/hpo")
    shown = RAW_AT.shown(f"{UNREACHABLE}/hpo")
    for args in _commands(tiny_study, url).values():
        result = hpo(*args)
        one_line_error(
            result,
            f"storage URL {shown!r}: the user name or password contains a raw '@'; "
            "percent-encode it (@ as %40, : as %3A, / as %2F; a password p@ss is written p%40ss)",
        )
        assert_hidden(result.output)


def test_storage_from_the_environment_is_announced_masked(tiny_study: Path) -> None:
    form = FORMS[1]
    result = hpo("run", tiny_study, env={"HPO_STORAGE": form.at(f"{UNREACHABLE}/hpo")})
    assert result.stderr.splitlines()[0] == (
        f"storage: {form.shown(f'{UNREACHABLE}/hpo')} (from HPO_STORAGE)"
    )
    assert_hidden(result.output)


@pytest.fixture
def storage_log() -> Iterator[list[str]]:
    """The lines logged by ``hpo.storage`` while the test runs."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("hpo")
    handler = Collect(logging.DEBUG)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


@pytest.mark.parametrize("form", [*FORMS, RAW_AT], ids=lambda f: f.id)
def test_outage_log_lines_hide_the_password(form: Form, storage_log: list[str]) -> None:
    url = form.at("db.example:5432/hpo")
    guard = StorageGuard(url)
    # The driver's own reason may carry the connection string too.
    assert guard.failed(ConnectionError(f"connection to {url} failed: timeout"))
    guard.succeeded()
    assert storage_log and storage_log[0].startswith(
        f"database unreachable at {form.shown('db.example:5432/hpo')} ("
    )
    assert_hidden("\n".join(storage_log))


# --- the real server: output, and nothing stored ------------------------------------------------


def _with_password(pg_url: str, form: Form) -> str:
    """``pg_url`` (postgresql://USER@HOST:PORT/DB) rewritten into ``form`` (same user)."""
    user, where = pg_url.removeprefix("postgresql://").split("@", 1)
    return form.at(where).replace("postgresql://hpo", f"postgresql://{user}", 1)


def _stored_text(pg_url: str) -> str:
    """Every row of every table in the database, as text (Optuna's tables and any other)."""
    import psycopg

    with psycopg.connect(pg_url) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            ).fetchall()
        ]
        assert "study_user_attributes" in tables
        return "\n".join(
            str(row[0])
            for table in tables
            for row in conn.execute(f'SELECT t::text FROM "{table}" t').fetchall()
        )


@pytest.mark.parametrize("form", FORMS, ids=lambda f: f.id)
def test_real_database_output_and_storage_hide_the_password(
    pg_url: str, tiny_study: Path, form: Form
) -> None:
    url = _with_password(pg_url, form)
    shown = mask_url(url)
    assert shown != url
    created = hpo("create", tiny_study, "--storage", url)
    assert created.exit_code == 0, created.output
    assert created.stderr.splitlines()[0] == f"storage: {shown}"
    # The hint to start workers must not print a URL that could be pasted without its password.
    assert created.stdout.splitlines()[-1] == (
        "start workers with: hpo worker tiny (with the same --storage or HPO_STORAGE)"
    )
    for args in (
        ("status", "tiny", "--storage", url),
        ("status", "tiny", "--storage", url, "--format", "json"),
        ("-v", "best", "tiny", "--storage", url),
        ("trials", "tiny", "--storage", url, "--format", "json"),
    ):
        result = hpo(*args)
        assert result.exit_code == 0, result.output
        assert_hidden(result.output)
    status = json.loads(hpo("status", "tiny", "--storage", url, "--format", "json").stdout)
    assert status["storage"] == shown
    assert_hidden(_stored_text(pg_url))


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS, ids=lambda f: f.id)
def test_real_run_hides_the_password_everywhere(
    pg_url: str, write_study: Callable[..., Path], form: Form
) -> None:
    url = _with_password(pg_url, form)
    result = hpo("run", write_study(n_trials=1, epochs=1), "--storage", url)
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[0] == f"storage: {mask_url(url)}"
    assert result.stdout.splitlines()[-1] == f"stored in {mask_url(url)} as study 'tiny'"
    assert_hidden(result.output)
    assert_hidden(_stored_text(pg_url))
    status = hpo("status", "tiny", "--storage", url)
    assert status.stdout.splitlines()[0] == f"study 'tiny' in {mask_url(url)}"
    assert_hidden(status.output)
