"""SQLite storage problems are one line naming the path and the fix; readers create nothing.

The cases: a read-only database file, a read-only directory, a file that is not SQLite (or a
SQLite file that is not Optuna's), a directory where the file should be, a missing file and a
missing parent directory. Readers (``best``, ``trials``, ``status``, ``report``) never create a
database, directory or lock file; ``worker`` and ``rerun`` write to an existing database and
create none; ``run`` and ``create`` create the database file, never its directory.

Read-only: root ignores file modes, so as root the tests make paths immutable with ``chattr +i``
(which binds root too) and skip, saying why, where that is unavailable; anyone else gets
``chmod a-w``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import NAME, BuiltStudy, hpo, one_line_error

READERS = ("best", "trials", "status", "report")
# Commands that need an existing database and write to it.
WRITERS = ("worker", "rerun")
CREATORS = ("run", "create")

_DOES_NOT_EXIST = (
    "check the path in --storage or HPO_STORAGE, or create the study first with `hpo run` or "
    "`hpo create`"
)


def _args(command: str, url: str, study_file: Path) -> tuple[object, ...]:
    """``hpo COMMAND ...`` on ``url``, with what each command needs besides."""
    return {
        "run": ("run", study_file, "--storage", url),
        "create": ("create", study_file, "--storage", url),
        "worker": ("worker", NAME, "--storage", url),
        "rerun": ("rerun", NAME, "--storage", url, "--seeds", "2", "--top", "1"),
        "best": ("best", NAME, "--storage", url),
        "trials": ("trials", NAME, "--storage", url),
        "status": ("status", NAME, "--storage", url),
        "report": ("report", NAME, "--storage", url, "--out", "report-out"),
    }[command]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def study_file(write_study: Callable[..., Path]) -> Path:
    """A study file named like the shared results study (so ``NAME`` finds it)."""
    return write_study(name=NAME, n_trials=1, epochs=1)


@contextlib.contextmanager
def read_only(*paths: Path) -> Iterator[None]:
    """``paths`` read-only for this process, root included (see the module docstring)."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in paths}
        for p in paths:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root, which ignores file modes, and chattr is not installed")
    done = subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"running as root, and chattr +i fails here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, paths)], check=True)


@pytest.fixture
def copied(built: BuiltStudy, tmp_path: Path) -> Path:
    """A copy of the shared results study (5 complete trials) in ``db/h.db``, no lock file."""
    folder = tmp_path / "db"
    folder.mkdir()
    shutil.copy(built.db, folder / "h.db")
    return folder / "h.db"


# --- read-only file and directory --------------------------------------------------------------


def test_read_only_database_file(copied: Path, study_file: Path, tmp_path: Path) -> None:
    url = "sqlite:///db/h.db"
    with read_only(copied):
        for command in (*CREATORS, *WRITERS):
            one_line_error(
                hpo(*_args(command, url, study_file)),
                f"storage {url}: SQLite file db/h.db is read-only; make it writable, or copy it "
                "somewhere writable and pass the copy with --storage",
            )
        for command in READERS:  # reading a read-only database is fine
            result = hpo(*_args(command, url, study_file))
            assert result.exit_code == 0, (command, result.output)
    assert _tree(tmp_path / "db") == {"h.db"}  # no lock file, no artifact folder


def test_read_only_directory(copied: Path, study_file: Path, tmp_path: Path) -> None:
    url = "sqlite:///db/h.db"
    with read_only(copied.parent):
        for command in (*CREATORS, *WRITERS):
            one_line_error(
                hpo(*_args(command, url, study_file)),
                f"storage {url}: directory db is read-only, and SQLite writes its journal and "
                "lock files beside h.db; make the directory writable, or move the database to a "
                "writable one and pass it with --storage",
            )
        for command in READERS:  # today: PermissionError on db/h.db.lock
            result = hpo(*_args(command, url, study_file))
            assert result.exit_code == 0, (command, result.output)
        best = hpo("best", NAME, "--storage", url)
        assert best.stdout.splitlines()[-1] == f"stored in {url} as study {NAME!r}"
    assert _tree(tmp_path / "db") == {"h.db"}


def test_new_database_in_a_read_only_directory(tmp_path: Path, study_file: Path) -> None:
    (tmp_path / "locked").mkdir()
    url = "sqlite:///locked/new.db"
    with read_only(tmp_path / "locked"):
        for command in CREATORS:
            one_line_error(
                hpo(*_args(command, url, study_file)),
                f"storage {url}: cannot create locked/new.db: directory locked is read-only; "
                "make it writable or choose another place with --storage",
            )
    assert _tree(tmp_path / "locked") == set()


# --- not a SQLite file, not Optuna's, a directory ----------------------------------------------


@pytest.mark.parametrize("command", [*CREATORS, *WRITERS, *READERS])
def test_file_that_is_not_sqlite(command: str, tmp_path: Path, study_file: Path) -> None:
    (tmp_path / "notes.db").write_text("id,name\n1,a\n")
    url = "sqlite:///notes.db"
    one_line_error(
        hpo(*_args(command, url, study_file)),
        f"storage {url}: notes.db is not a SQLite database; check the path in --storage (hpo "
        "never overwrites a file that is not its own)",
    )
    assert (tmp_path / "notes.db").read_text() == "id,name\n1,a\n"
    assert not (tmp_path / "notes.db.lock").exists()


@pytest.mark.parametrize("command", READERS)
@pytest.mark.parametrize("content", ["empty", "other-tables"])
def test_sqlite_file_without_studies(
    command: str, content: str, tmp_path: Path, study_file: Path
) -> None:
    path = tmp_path / "other.db"
    if content == "empty":
        path.touch()
    else:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute("CREATE TABLE things (id INTEGER)")
            conn.commit()
    before = path.read_bytes()
    url = "sqlite:///other.db"
    one_line_error(
        hpo(*_args(command, url, study_file)),
        f"storage {url}: SQLite file other.db holds no hpo studies (it is not an Optuna "
        "database); check the path in --storage or HPO_STORAGE",
    )
    assert path.read_bytes() == before  # no tables added by a reader
    assert not (tmp_path / "other.db.lock").exists()


@pytest.mark.parametrize("command", [*CREATORS, *WRITERS])
def test_another_applications_sqlite_file_is_refused_and_left_byte_identical(
    command: str, tmp_path: Path, study_file: Path
) -> None:
    path = tmp_path / "other-app.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE users (id INTEGER, name TEXT)")
        conn.execute("CREATE TABLE orders (id INTEGER)")
        conn.execute("INSERT INTO users VALUES (1, 'ada')")
        conn.commit()
    before = path.read_bytes()
    url = "sqlite:///other-app.db"
    one_line_error(
        hpo(*_args(command, url, study_file)),
        f"storage {url}: other-app.db holds another application's tables (orders, users) and "
        "no Optuna studies; hpo adds nothing to it: give a database file of its own in --storage",
    )
    assert path.read_bytes() == before  # not one table (nor a byte) added
    assert _tree(tmp_path) == {"other-app.db", study_file.name, "tiny.csv"}  # no lock, journal


@pytest.mark.parametrize("command", [*CREATORS, *WRITERS, *READERS])
def test_directory_instead_of_a_file(command: str, tmp_path: Path, study_file: Path) -> None:
    (tmp_path / "folder.db").mkdir()
    url = "sqlite:///folder.db"
    one_line_error(
        hpo(*_args(command, url, study_file)),
        f"storage {url}: folder.db is a directory, not a SQLite file; point --storage at a "
        "file, e.g. sqlite:///folder.db/hpo.db",
    )


# --- missing file, missing directory: readers create nothing, creators no directories ----------


@pytest.mark.parametrize("command", [*WRITERS, *READERS])
def test_missing_directory_for_a_reader(command: str, tmp_path: Path, study_file: Path) -> None:
    before = _tree(tmp_path)
    url = "sqlite:///typo/dir/h.db"
    one_line_error(
        hpo(*_args(command, url, study_file)),
        f"storage {url}: SQLite file typo/dir/h.db does not exist (nor does its directory "
        f"typo/dir); {_DOES_NOT_EXIST}",
    )
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("command", [*WRITERS, *READERS])
def test_missing_file_for_a_reader(command: str, tmp_path: Path, study_file: Path) -> None:
    before = _tree(tmp_path)
    url = "sqlite:///hpo.db"
    one_line_error(
        hpo(*_args(command, url, study_file)),
        f"storage {url}: SQLite file hpo.db does not exist; {_DOES_NOT_EXIST}",
    )
    assert _tree(tmp_path) == before


def test_default_storage_missing_for_a_reader(tmp_path: Path) -> None:
    one_line_error(
        hpo("best", NAME),
        f"storage sqlite:///hpo.db: SQLite file hpo.db does not exist; {_DOES_NOT_EXIST}",
    )
    assert not (tmp_path / "hpo.db").exists()


@pytest.mark.parametrize("command", CREATORS)
def test_missing_directory_for_a_creator(command: str, tmp_path: Path, study_file: Path) -> None:
    before = _tree(tmp_path)
    url = "sqlite:///typo/dir/h.db"
    one_line_error(
        hpo(*_args(command, url, study_file)),
        f"storage {url}: directory typo/dir does not exist, and hpo creates the database file "
        "but no directories; create it (mkdir -p typo/dir) or fix the path in --storage",
    )
    assert _tree(tmp_path) == before


def test_missing_parent_is_a_file(tmp_path: Path, study_file: Path) -> None:
    (tmp_path / "plain").write_text("x")
    url = "sqlite:///plain/h.db"
    one_line_error(
        hpo(*_args("create", url, study_file)),
        f"storage {url}: plain is not a directory; fix the path in --storage",
    )


def test_create_makes_the_database_file(tmp_path: Path, study_file: Path) -> None:
    (tmp_path / "fresh").mkdir()
    url = "sqlite:///fresh/h.db"
    result = hpo(*_args("create", url, study_file))
    assert result.exit_code == 0, result.output
    # The database, its lock file and the study's artifact folder (create checks it can write
    # there before the study exists, so a worker never finds it unwritable).
    made = {"h.db", "h.db.lock", "h-artifacts"}
    assert _tree(tmp_path / "fresh") == made
    # Now readers find it, and still add nothing.
    for command in ("best", "trials", "status"):
        assert hpo(*_args(command, url, study_file)).exit_code == 0
    assert _tree(tmp_path / "fresh") == made


def test_readers_add_no_lock_file(copied: Path, study_file: Path, tmp_path: Path) -> None:
    url = "sqlite:///db/h.db"
    before = copied.read_bytes()
    for command in READERS:
        result = hpo(*_args(command, url, study_file))
        assert result.exit_code == 0, (command, result.output)
    assert _tree(tmp_path / "db") == {"h.db"}
    assert copied.read_bytes() == before
