"""`hpo dashboard` writes nothing: started on a PostgreSQL study under a role that may only
SELECT, and under the owner, it serves its pages and every table is as it was. The study's note
is written by the commands that change a study, with no dashboard ever started."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import optuna_dashboard
import pytest
from conftest import ROOT, hpo
from pg import PG_HOST, PG_PORT, admin_connect

from hpo.study.storage import open_storage


def _note(url: str, name: str) -> str:
    return optuna_dashboard.get_note(optuna.load_study(study_name=name, storage=url))


def test_create_writes_the_note_and_keeps_it_up_to_date(
    write_study: Callable[..., Path], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/notes.db"
    study = write_study(n_trials=3)
    created = hpo("create", study, "--storage", url)
    assert created.exit_code == 0, created.output
    note = _note(url, "tiny")
    assert note.startswith("## Study `tiny`") and "| trials | 3 |" in note
    # A changed budget is part of what the note says: the command that changes it updates it.
    updated = hpo("create", study, "--storage", url, "--n-trials", "5")
    assert updated.exit_code == 0, updated.output
    assert "| trials | 5 |" in _note(url, "tiny")


@pytest.mark.slow  # trains in this process: TensorFlow's import
def test_run_writes_the_note(write_study: Callable[..., Path], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/notes.db"
    result = hpo("run", write_study(n_trials=1, epochs=1), "--storage", url)
    assert result.exit_code == 0, result.output
    assert _note(url, "tiny").startswith("## Study `tiny`")


# --- the dashboard under a role that may only read ---------------------------------------------


def _tables(url: str) -> dict[str, tuple[int, str]]:
    """Every table of the database: its row count and a checksum of its rows."""
    database = url.rsplit("/", 1)[1]
    with admin_connect(database) as conn:  # type: ignore[attr-defined]
        names = [
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
            )
        ]
        return {
            name: conn.execute(
                f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                f'FROM "{name}" t'
            ).fetchone()
            for name in names
        }


@pytest.fixture
def reader(pg_url: str) -> Iterator[Callable[[], str]]:
    """Makes a login role that may only SELECT the tables that exist now; yields its URL (with a
    password, which trust authentication ignores and nothing may print). Dropped at the end."""
    from psycopg import sql

    role = f"hpo_reader_{uuid.uuid4().hex[:10]}"
    password = f"pw-{uuid.uuid4().hex}"
    database = pg_url.rsplit("/", 1)[1]
    made = False

    def make() -> str:
        nonlocal made
        with admin_connect() as conn:  # type: ignore[attr-defined]
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(password)
                )
            )
        made = True
        with admin_connect(database) as conn:  # type: ignore[attr-defined]
            conn.execute(
                sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(
                    sql.Identifier(role)
                )
            )
        return f"postgresql://{role}:{password}@{PG_HOST}:{PG_PORT}/{database}"

    try:
        yield make
    finally:
        if made:
            with admin_connect(database) as conn:  # type: ignore[attr-defined]
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            with admin_connect() as conn:  # type: ignore[attr-defined]
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _start_dashboard(url: str, cwd: Path) -> tuple[subprocess.Popen[str], str, list[str]]:
    """`hpo dashboard --port 0` on ``url`` (given through HPO_STORAGE, as a password would be):
    the process, its base address, and its stderr lines as they come."""
    env = {k: v for k, v in os.environ.items() if k != "HPO_STORAGE"}
    env["HPO_STORAGE"] = url
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    process = subprocess.Popen(
        [sys.executable, "-m", "hpo", "dashboard", "--port", "0"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out: queue.Queue[str] = queue.Queue()
    errors: list[str] = []
    threading.Thread(target=lambda: [out.put(x) for x in process.stdout or ()], daemon=True).start()
    threading.Thread(target=lambda: errors.extend(process.stderr or ()), daemon=True).start()
    deadline = time.monotonic() + 60
    while True:
        try:
            line = out.get(timeout=0.5)
            break
        except queue.Empty:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait()
                pytest.fail(f"hpo dashboard printed nothing; stderr: {''.join(errors)}")
    match = re.search(r"open (http://127\.0\.0\.1:\d+)/dashboard", line)
    assert match, line
    return process, match.group(1), [line, *errors]


def _get(base: str, path: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(base + path, timeout=30) as response:
        return response.status, response.read()


def _json(base: str, path: str) -> Any:
    status, body = _get(base, path)
    assert status == 200, path
    return json.loads(body)


@pytest.mark.postgres
@pytest.mark.parametrize(
    # The owner case in the full run only: it starts a second dashboard process.
    "role",
    ["select-only", pytest.param("owner", marks=pytest.mark.slow)],
)
def test_the_dashboard_serves_and_changes_no_row(
    role: str,
    pg_url: str,
    reader: Callable[[], str],
    write_study: Callable[..., Path],
    tmp_path: Path,
) -> None:
    # Two studies: one as `hpo create` leaves it (with its note), one without a note (as a
    # study created before notes were written at creation is, until a worker joins it).
    study_file = write_study(n_trials=3)
    for name in ("noted", "bare"):
        made = hpo("create", study_file, "--storage", pg_url, "--name", name)
        assert made.exit_code == 0, made.output
    assert _note(pg_url, "noted").startswith("## Study `noted`")  # no dashboard needed for it
    storage = open_storage(pg_url)
    bare = optuna.load_study(study_name="bare", storage=storage)
    with admin_connect(pg_url.rsplit("/", 1)[1]) as conn:  # type: ignore[attr-defined]
        conn.execute(
            "DELETE FROM study_system_attributes WHERE study_id = %s AND key LIKE 'dashboard:note%%'",
            (bare._study_id,),
        )
    noted = optuna.load_study(study_name="noted", storage=storage)
    trial = noted.ask()  # the queued baseline
    trial.set_user_attr("fold_accuracies", [0.5, 0.6, 0.7])
    noted.tell(trial, 0.6)
    storage.engine.dispose()

    url = pg_url
    if role == "select-only":
        url = reader()
        import psycopg

        with (  # the role really cannot write: a dashboard that tried would fail
            pytest.raises(psycopg.errors.InsufficientPrivilege),
            psycopg.connect(url) as conn,
        ):
            conn.execute("UPDATE studies SET study_name = study_name")
    before = _tables(pg_url)
    assert before["study_system_attributes"][0] > 0 and before["trials"][0] == 2

    process, base, output = _start_dashboard(url, tmp_path)
    try:
        status, page = _get(base, "/dashboard")
        assert status == 200 and b"<html" in page.lower()
        assert _json(base, "/api/meta")
        summaries = _json(base, "/api/studies")["study_summaries"]
        ids = {s["study_name"]: s["study_id"] for s in summaries}
        assert set(ids) == {"noted", "bare"}
        detail = _json(base, f"/api/studies/{ids['noted']}")
        assert detail["note"]["body"].startswith("## Study `noted`")
        assert [t["state"] for t in detail["trials"]] == ["Complete"]
        assert _json(base, f"/api/studies/{ids['bare']}")["note"]["body"] == ""
        assert _json(base, f"/api/studies/{ids['noted']}/param_importances")
    finally:
        process.terminate()
        process.wait(timeout=30)
    time.sleep(0.2)  # the stderr reader's last lines
    text = "".join(output)
    assert "1 study has no note yet" in text and "'bare'" in text, text
    assert "Traceback" not in text and "ermission denied" not in text, text
    if role == "select-only":
        assert url.split(":")[2].split("@")[0] not in text  # the password: never printed
    assert _tables(pg_url) == before
