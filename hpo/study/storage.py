"""Storage URLs, database engines, locks and outages.

SQLite is the zero-setup default (one file in the working directory); PostgreSQL is what several
workers on several machines share. This module owns everything that depends on which one it is:

* ``open_storage``: Optuna's RDB storage with engine options per backend (a busy timeout for
  SQLite, pre-ping and a pool of one connection for PostgreSQL), the schema created so that
  workers starting together on an empty database never fail (Optuna alone does race there).
* ``check_sqlite`` / ``Access``: a SQLite path unfit for what a command does (missing file or
  directory, read-only file or directory, not SQLite) is one line naming the path and the fix,
  before anything is created; readers create no database, directory, lock file or table.
* ``study_lock`` / ``creation_lock``: one claimer at a time, which makes the global trial budget
  exact. On PostgreSQL a transaction-level advisory lock, and every write made while it is held
  joins that one transaction (stored at the lock's release, or not at all); on SQLite a file
  lock beside the database file.
* One connection per process on PostgreSQL, and nothing that lives in a session between
  transactions (no session locks, no prepared statements): a worker costs one database
  connection and works through a pooler in transaction mode (PgBouncer).
* ``StorageGuard``: runs storage calls through database outages, retrying with backoff and
  logging one line when the database goes away and one when it comes back.

Every message that shows a URL shows it masked, so passwords never reach logs, errors, the
dashboard or stored attributes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import re
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from hpo import stops
from hpo.errors import HpoError
from hpo.lazy import lazy_import
from hpo.log import get_logger
from hpo.study import optuna_compat

if TYPE_CHECKING:
    import optuna
    import psycopg
    import sqlalchemy
    import sqlalchemy.engine
    import sqlalchemy.exc
    import sqlalchemy.pool
else:
    optuna = lazy_import("optuna")
    psycopg = lazy_import("psycopg")
    sqlalchemy = lazy_import("sqlalchemy")

__all__ = [
    "DEFAULT_STORAGE",
    "Access",
    "HeldLock",
    "StorageGuard",
    "check_sqlite",
    "checked_storage_url",
    "creation_lock",
    "error_text",
    "is_postgresql",
    "mask_url",
    "normalize_url",
    "open_storage",
    "outage_reason",
    "rdb_of",
    "resolve_storage_url",
    "sqlite_error",
    "sqlite_file",
    "study_lock",
    "unwrap_rdb",
]

DEFAULT_STORAGE = "sqlite:///hpo.db"
_log = get_logger("storage")
_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg", "postgres")
# user:PASSWORD@ in a URL. The password runs to the LAST "@" of the URL (no whitespace): a raw "@",
# ":" or "/" typed inside a password (not percent-encoded) must not leak what follows it.
_USERINFO_PASSWORD = re.compile(
    r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<secret>\S*)(?P<tail>@)", re.I
)
# password=... in a URL's query (libpq reads it there) or in a libpq key=value string. The value
# ends at "&" or at whitespace (or is quoted; SQLAlchemy passes a raw "#" on as part of it). The closing quote and punctuation of a
# message around a URL ("at URL: why", "'URL'.") stay visible: at most trailing punctuation of
# a password, never a letter or digit.
_PARAM_PASSWORD = re.compile(
    r"(?P<head>\bpassword\s*=\s*)"
    r"(?P<secret>'(?:[^'\\]|\\.)*'|[^&\s]*?)"
    r"(?P<tail>(?=&)|['\"]?[,;:.)\]}]*(?=\s|$))",
    re.I,
)
# PostgreSQL advisory locks take two int4 keys: ours are ("hpo", what). What: the study table
# (creating and loading studies), or one study's id (claiming its trials).
_LOCK_CLASS = 0x68706F00
_LOCK_POLL_SECONDS = 0.05  # the longest pause between two tries for a held lock
_LOCK_SLOW_SECONDS = 5.0  # a wait this long is worth a line: the holder is paused or stuck
# How long processes racing to make the schema on an empty PostgreSQL database keep trying.
_SCHEMA_RACE_SECONDS = 60.0
_CREATION_KEY = 0
# A worker stopped with SIGSTOP inside a claim must not hold the study lock forever, so the
# server ends such a transaction (everything the claim wrote goes with it; it is retried).
_LOCK_IDLE_TIMEOUT = "120s"
_T = TypeVar("_T")

Access = Literal["create", "write", "read"]
"""What a command does with its storage. ``create`` (``run``, ``create``) may create the SQLite
file, never its directory; ``write`` (``worker``, ``rerun``) writes to an existing database;
``read`` (``best``, ``trials``, ``status``, ``report``, the dashboard) creates nothing: no
database, directory or lock file."""
_SQLITE_HEADER = b"SQLite format 3\x00"


def mask_url(text: str) -> str:
    """``text`` with every URL password replaced by ``***`` (works on whole messages too).

    Covers ``scheme://user:PASSWORD@host`` (percent-encoded or with raw ``@``, ``:`` or ``/``
    inside) and ``password=PASSWORD`` (a URL query parameter or a libpq connection string).

    >>> mask_url("postgresql://u:p@ss:w@rd@h/db?sslmode=require&password=x&a=1")
    'postgresql://u:***@h/db?sslmode=require&password=***&a=1'
    """
    text = _USERINFO_PASSWORD.sub(lambda m: f"{m['head']}***{m['tail']}", text)
    return _PARAM_PASSWORD.sub(
        lambda m: f"{m['head']}***{m['tail']}" if m["secret"] else m[0], text
    )


def resolve_storage_url(url: str | None) -> tuple[str, str]:
    """The storage to use and why: ``--storage``, else ``$HPO_STORAGE``, else the SQLite default."""
    if url:
        return url, "--storage"
    if env := os.environ.get("HPO_STORAGE"):
        return env, "HPO_STORAGE"
    return DEFAULT_STORAGE, "default"


def normalize_url(url: str) -> str:
    """Check ``url`` and point PostgreSQL at the psycopg 3 driver (the one we install)."""
    hint = "expected sqlite:///FILE.db or postgresql://USER@HOST[:PORT]/DATABASE"
    if url.startswith("postgres") and url.split("?", 1)[0].count("@") > 1:
        # libpq and SQLAlchemy end the password at its first "@": the rest would be taken for
        # the host name (and then shown in clear by "cannot resolve host" errors).
        raise HpoError(
            f"storage URL {mask_url(url)!r}: the user name or password contains a raw '@'; "
            "percent-encode it (@ as %40, : as %3A, / as %2F; a password p@ss is written p%40ss)"
        )
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        raise HpoError(f"storage URL {mask_url(url)!r} is malformed; {hint}") from None
    scheme = parsed.drivername
    if scheme not in _SCHEMES:
        raise HpoError(f"storage URL {mask_url(url)!r}: unsupported scheme {scheme!r}; {hint}")
    if scheme.startswith("postgres"):
        if not parsed.database:
            raise HpoError(f"storage URL {mask_url(url)!r} names no database; {hint}")
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif not parsed.database:
        raise HpoError(f"storage URL {mask_url(url)!r} names no SQLite file; {hint}")
    return parsed.render_as_string(hide_password=False)


def is_postgresql(url: str) -> bool:
    return url.startswith("postgres")


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL; ``None`` for PostgreSQL or an in-memory database."""
    parsed = sqlalchemy.engine.make_url(url)
    database = parsed.database
    if not parsed.drivername.startswith("sqlite") or not database:
        return None
    if database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


# How long a thread waits for the process's one pooled connection while another thread of the
# process uses it: a claim holds it for milliseconds, or at most until the server ends an idle
# claim (_LOCK_IDLE_TIMEOUT); a beat on an unreachable database for connect_timeout.
_POOL_WAIT_SECONDS = 150
# Readers (the dashboard serves requests on threads) may open a few more while they need them;
# a connection beyond the first is closed as soon as it is given back.
_READER_OVERFLOW = 4


def _engine_kwargs(url: str, access: Access = "create") -> dict[str, Any]:
    if not is_postgresql(url):
        # SQLite serializes writers; a generous busy timeout makes a few local processes queue
        # for the write lock instead of failing with "database is locked". (Python's sqlite3
        # opens a transaction only at the first write, so readers never deadlock writers.)
        return {"connect_args": {"timeout": 120}}
    return {
        # A connection killed by a database restart is noticed at checkout, not mid-query.
        "pool_pre_ping": True,
        # One connection per process: the main thread, the heartbeat thread and a second
        # signal's abort hook take turns on it (each holds it for one short transaction; no
        # thread holds it between transactions, not even while waiting for the study lock).
        # With PostgreSQL's default max_connections of 100, a worker that held three capped a
        # study near 35 workers; behind PgBouncer the server sees its pool, not the workers.
        "pool_size": 1,
        "max_overflow": _READER_OVERFLOW if access == "read" else 0,
        "pool_timeout": _POOL_WAIT_SECONDS,
        "pool_recycle": 900,
        "connect_args": {
            "connect_timeout": 10,
            "application_name": "hpo",
            # No server-side prepared statements (psycopg prepares a query run 5 times on a
            # connection): behind PgBouncer in transaction mode the next transaction may run on
            # another server connection, which lacks them ("prepared statement does not
            # exist"). hpo's statements are small; planning them again costs little.
            "prepare_threshold": None,
            # A peer that vanished (cable, VM, netns gone) is detected in about a minute
            # instead of a query blocking until the kernel gives up.
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
            "tcp_user_timeout": 60_000,
        },
    }


def _reach_error(url: str, exc: BaseException) -> HpoError:
    reason = outage_reason(exc) or str(getattr(exc, "orig", exc)).strip().splitlines()[0]
    return HpoError(f"cannot reach the database at {mask_url(url)}: {mask_url(reason)}")


def open_storage(
    url: str, *, access: Access = "create", **storage_kwargs: Any
) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage for ``url``; one clear error if the database cannot be used.

    The schema is created once however many processes start together on an empty database
    (under a file lock on SQLite; on PostgreSQL the losers of the race retry and find it).
    ``access`` says what the caller will do (see :data:`Access`): a
    reader never creates a SQLite file, its directory, its lock file or Optuna's tables.
    """
    normalized = normalize_url(url)
    check_sqlite(url, access)
    reader = access == "read" and sqlite_file(normalized) is not None
    try:
        if is_postgresql(normalized):
            return _open_postgresql(normalized, access, storage_kwargs)
        with _schema_lock(normalized, create=access != "read"):
            if reader:
                _check_study_tables(url)
            return optuna.storages.RDBStorage(
                normalized,
                engine_kwargs=_engine_kwargs(normalized, access),
                skip_table_creation=reader,
                **storage_kwargs,
            )
    except HpoError:
        raise
    except sqlalchemy.exc.ArgumentError as exc:
        raise HpoError(
            f"storage URL {mask_url(url)!r} is malformed ({mask_url(str(exc))})"
        ) from None
    except Exception as exc:
        if (error := sqlite_error(url, exc)) is not None:
            raise error from None
        if outage_reason(exc) is None:
            raise
        raise _reach_error(url, exc) from None


def _open_postgresql(
    url: str, access: Access, storage_kwargs: dict[str, Any]
) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage on PostgreSQL, whose pool holds one connection (see
    :func:`_engine_kwargs`), on a schema made first if it is missing (:func:`_make_schema`).

    Optuna's own set-up opens a second connection while it holds one: its schema check reads
    the schema's revision inside a session (and a first set-up asks whether the schema is new
    inside the connection that stamps it). On a pool of one connection that would wait for
    itself. The storage kept is made on a complete schema, which its set-up only reads, and
    its schema check (the comparison Optuna makes) is made here, one connection at a time.
    """
    _make_schema(url)
    storage = optuna.storages.RDBStorage(
        url,
        engine_kwargs=_engine_kwargs(url, access),
        skip_table_creation=True,
        skip_compatibility_check=True,
        **storage_kwargs,
    )
    if storage_kwargs.get("skip_compatibility_check"):
        return storage
    current, head = storage.get_current_version(), storage.get_head_version()
    if current != head:
        storage.engine.dispose()
        raise HpoError(
            f"the database at {mask_url(url)} holds Optuna's tables in schema revision "
            f"{current}, and this Optuna ({optuna.__version__}) needs {head}: upgrade them with "
            f"`optuna storage upgrade --storage {mask_url(url)}`, or install the Optuna that made "
            "them"
        )
    return storage


def _make_schema(url: str) -> None:
    """Make Optuna's tables on a PostgreSQL database that lacks them; nothing if it has them.

    No lock: a lock is held in a transaction, and Optuna's set-up works on other connections
    meanwhile (two at once, one inside the other). Through a pooler with fewer server
    connections than that (PgBouncer's ``default_pool_size``), the set-up would wait for the
    lock's own server connection until the server ended the lock's idle transaction. Instead
    the set-up (one Optuna storage, opening and closing its connections as it needs them) runs
    until the schema is complete, and a process that loses a race with another making it at
    the same moment (PostgreSQL refuses the second CREATE TABLE, or the second version row,
    with a duplicate error) tries again: the retry finds what the winner stored and adds what
    is still missing. The schema counts as complete only once both version records exist,
    which Optuna writes after every table.
    """
    deadline = time.monotonic() + _SCHEMA_RACE_SECONDS
    connect_args = _engine_kwargs(url)["connect_args"]
    while True:
        engine = sqlalchemy.create_engine(
            url, poolclass=sqlalchemy.pool.NullPool, connect_args=connect_args
        )
        try:
            with engine.connect() as conn:
                if optuna_compat.schema_complete(conn):
                    return
            # Autocommit: Optuna's first set-up reads the schema's revision on one connection and,
            # inside that, asks on a second whether the schema is new. In a transaction the
            # first would keep its server connection meanwhile, and behind a pooler with one
            # server connection the second would wait for it for ever. Each statement commits
            # on its own instead; a process killed halfway leaves whole tables, and the next
            # set-up (create_all checks before each table) adds the missing ones.
            optuna.storages.RDBStorage(
                url,
                engine_kwargs={
                    "poolclass": sqlalchemy.pool.NullPool,
                    "isolation_level": "AUTOCOMMIT",
                    "connect_args": connect_args,
                },
                skip_compatibility_check=True,  # checked by the caller, one connection at a time
            )
            return
        except Exception as exc:
            if not _lost_schema_race(exc) or time.monotonic() > deadline:
                raise
            _log.debug("another process is making the schema: %s", _first_line(exc))
        finally:
            engine.dispose()
        stops.pause(random.uniform(0.05, 0.3))


def _lost_schema_race(exc: BaseException) -> bool:
    """Whether ``exc`` is PostgreSQL refusing a table, type or row that another process created
    at the same moment (a unique violation, or a duplicate table or object)."""
    kinds = (
        psycopg.errors.UniqueViolation,
        psycopg.errors.DuplicateTable,
        psycopg.errors.DuplicateObject,
    )
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, kinds) or isinstance(getattr(current, "orig", None), kinds):
            return True
        current = current.__cause__ or current.__context__
    return False


# --- SQLite files ------------------------------------------------------------------------------


def checked_storage_url(storage: str | None, access: Access | None = None) -> tuple[str, str]:
    """The storage URL to use and the line that names it: ``storage``, else ``$HPO_STORAGE``,
    else the SQLite default, checked before any data is read (a malformed URL; with ``access``,
    a SQLite file unfit for it)."""
    url, why = resolve_storage_url(storage)
    normalize_url(url)
    if access is not None:
        check_sqlite(url, access)
    note = {
        "default": " (default; choose with --storage or HPO_STORAGE)",
        "HPO_STORAGE": " (from HPO_STORAGE)",
    }
    return url, f"storage: {mask_url(url)}{note.get(why, '')}"


def check_sqlite(url: str, access: Access = "create") -> None:
    """Refuse a SQLite storage that cannot serve ``access``, with one line naming the path and
    the fix: a missing file (``read``, ``write``) or directory (always), a file that is not
    SQLite, a read-only file or directory (``create``, ``write``). Nothing for PostgreSQL.

    Checked up front, before data is loaded or anything is created; SQLite itself would
    create the file, and fail only at the first write, deep inside Optuna.
    """
    database = sqlite_file(url)
    if database is None:
        return
    where = f"storage {mask_url(url)}"
    folder = database.parent
    if database.is_dir():
        raise HpoError(
            f"{where}: {database} is a directory, not a SQLite file; point --storage at a file, "
            f"e.g. sqlite:///{database / 'hpo.db'}"
        )
    if not database.exists():
        if access != "create":
            also = "" if folder.is_dir() else f" (nor does its directory {folder})"
            raise HpoError(
                f"{where}: SQLite file {database} does not exist{also}; check the path in "
                "--storage or HPO_STORAGE, or create the study first with `hpo run` or "
                "`hpo create`"
            )
        if not folder.exists():
            raise HpoError(
                f"{where}: directory {folder} does not exist, and hpo creates the database "
                f"file but no directories; create it (mkdir -p {folder}) or fix the path in "
                "--storage"
            )
        if not folder.is_dir():
            raise HpoError(f"{where}: {folder} is not a directory; fix the path in --storage")
        if not _writable_dir(folder):
            raise HpoError(
                f"{where}: cannot create {database}: directory {folder} is read-only; make it "
                "writable or choose another place with --storage"
            )
        return
    _check_sqlite_header(database, where)
    if access == "read":
        return  # a reader is told when it opens the file (no Optuna tables: no studies)
    _check_not_foreign(database, where, url)
    if not os.access(database, os.W_OK):
        raise HpoError(
            f"{where}: SQLite file {database} is read-only; make it writable, or copy it "
            "somewhere writable and pass the copy with --storage"
        )
    if not _writable_dir(folder):
        raise HpoError(
            f"{where}: directory {folder} is read-only, and SQLite writes its journal and "
            f"lock files beside {database.name}; make the directory writable, or move the "
            "database to a writable one and pass it with --storage"
        )


def _writable_dir(folder: Path) -> bool:
    # access() also answers for root: it says no on a read-only mount or an immutable folder.
    return os.access(folder, os.W_OK | os.X_OK)


def _check_sqlite_header(database: Path, where: str) -> None:
    try:
        with database.open("rb") as file:
            head = file.read(len(_SQLITE_HEADER))
    except OSError as exc:
        raise HpoError(
            f"{where}: cannot read SQLite file {database} ({exc.strerror or exc}); check its "
            "permissions"
        ) from None
    # An empty file is an empty SQLite database (SQLite itself creates one like that).
    if head and head != _SQLITE_HEADER:
        raise HpoError(
            f"{where}: {database} is not a SQLite database; check the path in --storage (hpo "
            "never overwrites a file that is not its own)"
        )


def _check_not_foreign(database: Path, where: str, url: str) -> None:
    """Refuse a SQLite file that holds another application's tables and no Optuna study:
    Optuna would add its own tables beside them. Read on a read-only connection, so the file
    stays byte for byte as it was."""
    if database.stat().st_size == 0:
        return
    if Path(f"{database}-journal").exists():
        # A process died mid-write (SIGKILL, a lost machine): the hot journal must be rolled
        # back before anyone reads, which a read-only connection cannot do ("attempt to write
        # a readonly database"). Its writer was a SQLite client of this file, most likely hpo
        # resuming; Optuna's own opening rolls it back.
        return
    foreign = _read_only(database, url, optuna_compat.foreign_tables)
    if foreign:
        shown = ", ".join(foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        raise HpoError(
            f"{where}: {database} holds another application's tables ({shown}) and no Optuna "
            "studies; hpo adds nothing to it: give a database file of its own in --storage"
        )


def _read_only(database: Path, url: str, read: Callable[[sqlite3.Connection], _T]) -> _T:
    """``read(conn)`` on a read-only connection to ``database``, so the file stays byte for
    byte as it was; a SQLite error becomes hpo's one line for ``url``."""
    uri = f"file:{urllib.parse.quote(str(database.resolve()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=120)
        try:
            return read(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        error = sqlite_error(url, exc)
        if error is None:
            raise
        raise error from None


def _check_study_tables(url: str) -> None:
    """A reader's check that ``url``'s SQLite file holds Optuna's tables, read without writing
    (a read-only connection), so a wrong but existing file is named instead of initialized."""
    database = sqlite_file(url)
    if database is None:
        return
    found = _read_only(database, url, optuna_compat.has_optuna_tables)
    if not found:
        raise HpoError(
            f"storage {mask_url(url)}: SQLite file {database} holds no hpo studies (it is not "
            "an Optuna database); check the path in --storage or HPO_STORAGE"
        )


def sqlite_error(url: str, exc: BaseException) -> HpoError | None:
    """The one-line error for a SQLite file problem found in ``exc``'s chain, else ``None``.

    The checks in :func:`check_sqlite` come first; this covers what they cannot see (a file
    made read-only or replaced while a command runs). Busy databases are outages, not this.
    """
    database = sqlite_file(url)
    if database is None:
        return None
    where = f"storage {mask_url(url)}"
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        orig = getattr(current, "orig", None)
        error = orig if isinstance(orig, sqlite3.Error) else current
        if isinstance(error, sqlite3.Error):
            text = str(error).lower()
            if "readonly" in text or "read-only" in text:
                return HpoError(
                    f"{where}: SQLite file {database} or its directory {database.parent} is "
                    "read-only; make both writable, or copy the database somewhere writable and "
                    "pass the copy with --storage"
                )
            if "not a database" in text:
                return HpoError(
                    f"{where}: {database} is not a SQLite database; check the path in --storage"
                )
            if "unable to open" in text:
                return HpoError(
                    f"{where}: SQLite cannot open {database}; check that the file and its "
                    f"directory {database.parent} exist and are readable"
                )
        current = current.__cause__ or current.__context__
    return None


# --- locks -------------------------------------------------------------------------------------

_local_locks: dict[str, threading.Lock] = {}
_local_locks_guard = threading.Lock()


@contextlib.contextmanager
def _file_lock(path: Path, *, create: bool = True) -> Iterator[None]:
    # flock (not SQLite's own lock): held by this open file only, so the storage's connections
    # in the same process keep working while we hold it. Released by the kernel if we die.
    # flock needs no write access, so a read-only lock file (or folder) is no obstacle.
    # Never creates the folder: a mistyped path must fail, not appear (check_sqlite says so).
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | (os.O_CREAT if create else 0), 0o644)
    except FileNotFoundError:
        if create:
            raise HpoError(
                f"directory {path.parent} does not exist; create it (mkdir -p {path.parent}) or "
                "fix the path in --storage"
            ) from None
        # A reader with no lock file: no writer has set this database up, nothing to wait for.
        yield
        return
    except OSError as exc:
        raise HpoError(
            f"cannot create the lock file {path} ({exc.strerror or exc}); SQLite storage needs "
            f"a writable directory: make {path.parent} writable or move the database"
        ) from None
    try:
        _wait_for(lambda: _try_flock(fd), f"the lock file {path}")
        yield
    finally:
        os.close(fd)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _wait_for(take: Callable[[], bool], what: str = "a lock") -> None:
    """Try ``take`` until it gets the lock, pausing between tries (2 ms, doubling to 50 ms).

    Tries, not one blocking call: a blocking ``flock`` or ``pg_advisory_lock`` cannot be
    interrupted by a stop request, and another worker may hold the lock for as long as it is
    paused (SIGSTOP, a debugger). A stop requested meanwhile raises ``Stopped`` here, before
    anything is created. Polling loses no fairness that matters: a claim holds the lock for
    milliseconds, and waiters retry within 75 ms. A wait that lasts says so once (a holder that
    is paused or stuck; the server ends a PostgreSQL holder's idle transaction in 120 s).
    """
    delay = 0.002
    started = time.monotonic()
    said = False
    while not take():
        if not said and time.monotonic() - started >= _LOCK_SLOW_SECONDS:
            said = True
            _log.info(
                "waiting for %s: another process has held it for over %.0f s",
                what,
                _LOCK_SLOW_SECONDS,
            )
        # Jittered, so that waiters that started together do not keep trying together.
        stops.pause(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 2, _LOCK_POLL_SECONDS)


@contextlib.contextmanager
def _process_lock(url: str) -> Iterator[None]:
    with _local_locks_guard:
        lock = _local_locks.setdefault(url, threading.Lock())
    with lock:
        yield


def _sqlite_lock(url: str, *, create: bool = True) -> contextlib.AbstractContextManager[None]:
    """One lock per SQLite file (``FILE.db.lock`` beside it), shared by every key; a reader
    (``create=False``) takes it only if it exists and never creates it."""
    database = sqlite_file(url)
    if database is None:  # in-memory: one process, one lock
        return _process_lock(url)
    return _file_lock(database.with_name(database.name + ".lock"), create=create)


def _try_xact_lock(conn: Any, key: int) -> bool:
    """Open a transaction on ``conn`` (if none is open) and try the lock ``key`` in it."""
    query = sqlalchemy.text(
        "SELECT set_config('idle_in_transaction_session_timeout', :idle, true), "
        "pg_try_advisory_xact_lock(:c, :k)"
    )
    row = conn.execute(query, {"idle": _LOCK_IDLE_TIMEOUT, "c": _LOCK_CLASS, "k": key}).one()
    return bool(row[1])


def _locked_connection(engine: Any, key: int, what: str) -> Any:
    """A connection of ``engine`` in an open transaction that holds lock ``key``.

    Each try is a transaction of its own, rolled back when the lock is taken elsewhere, and the
    connection goes back to the pool until the next try: the worker's heartbeat thread shares
    that one connection, and behind PgBouncer in transaction mode a transaction kept open while
    waiting would pin a server connection each waiter, which can leave none for the workers
    that have results to store.
    """
    held: list[Any] = []

    def attempt() -> bool:
        conn = engine.connect()
        try:
            if _try_xact_lock(conn, key):
                held.append(conn)
                return True
            conn.rollback()
        except BaseException:
            with contextlib.suppress(Exception):
                conn.close()
            raise
        conn.close()  # back to the pool, its transaction ended
        return False

    _wait_for(attempt, what)
    return held[0]


@contextlib.contextmanager
def _schema_lock(url: str, *, create: bool = True) -> Iterator[None]:
    """Held on SQLite while Optuna's RDB storage is made (it creates the tables where they are
    missing); PostgreSQL makes its schema without a lock (:func:`_make_schema`)."""
    with _sqlite_lock(url, create=create):
        yield


class HeldLock:
    """A lock this process holds. ``atomic``: the writes made while it is held (in the thread
    that took it) are one database transaction with the lock, stored when the lock is released
    or not at all (PostgreSQL); on SQLite each write commits on its own under the file lock."""

    def __init__(self, *, atomic: bool = False) -> None:
        self.atomic = atomic


@contextlib.contextmanager
def _named_lock(storage: optuna.storages.RDBStorage, key: int, what: str) -> Iterator[HeldLock]:
    if not is_postgresql(storage.url):
        with _sqlite_lock(storage.url):
            yield HeldLock()
        return
    outer = optuna_compat.bound_connection(storage)
    if outer is not None:
        # Taken inside another lock's transaction in this thread (the pool's one connection is
        # that transaction's): the same transaction takes this lock too, until it ends.
        _wait_for(lambda: _try_xact_lock(outer, key), what)
        yield HeldLock(atomic=True)
        return
    # The lock lives in a transaction, and everything this thread writes while holding it goes
    # into that same transaction (Optuna's sessions join it as savepoints). Nothing of a claim
    # outlives the lock: if the connection dies (the worker killed, the database restarted, a
    # paused worker's transaction ended by the server), the server rolls back the lock and the
    # claim's writes together, so no other worker ever counts while half a claim is stored.
    conn = _locked_connection(storage.engine, key, what)
    try:
        with optuna_compat.bound_to(storage, conn):
            yield HeldLock(atomic=True)
        conn.commit()  # the writes and the lock's release, at once
    except BaseException:
        with contextlib.suppress(Exception):
            conn.rollback()
        raise
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def creation_lock(
    storage: optuna.storages.RDBStorage,
) -> contextlib.AbstractContextManager[HeldLock]:
    """Held while a study is created with its attributes, and while one is loaded, so nobody
    sees a study without its spec."""
    return _named_lock(storage, _CREATION_KEY, "the study creation lock")


def study_lock(
    storage: optuna.storages.RDBStorage, study_id: int
) -> contextlib.AbstractContextManager[HeldLock]:
    """Held while a worker counts the budget and claims trials of one study."""
    return _named_lock(storage, study_id, "the study lock")


def unwrap_rdb(storage: optuna.storages.BaseStorage) -> optuna.storages.RDBStorage:
    """The RDB storage under ``storage`` (Optuna wraps it in a cache)."""
    backend = optuna_compat.rdb_backend(storage)
    if backend is None:
        raise HpoError("hpo needs an SQL storage (sqlite:///FILE.db or postgresql://...)")
    return backend


def rdb_of(study: optuna.Study) -> optuna.storages.RDBStorage:
    """The RDB storage under a study."""
    try:
        return unwrap_rdb(optuna_compat.storage_of(study))
    except HpoError:
        raise HpoError(
            f"study {study.study_name!r} is not in a SQL database; hpo needs sqlite:/// or "
            "postgresql:// storage"
        ) from None


# --- outages -----------------------------------------------------------------------------------


def _outage_types() -> tuple[type[BaseException], ...]:
    return (
        sqlalchemy.exc.OperationalError,
        sqlalchemy.exc.InterfaceError,
        sqlalchemy.exc.DisconnectionError,
        sqlalchemy.exc.TimeoutError,  # pool exhausted while connections hang
        psycopg.OperationalError,
        psycopg.InterfaceError,
        ConnectionError,
        TimeoutError,
    )


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    line = lines[0]
    # psycopg: 'connection failed: connection to server at "h" (ip), port 5432 failed: why'
    if line.startswith("connection failed:") and "failed:" in line[len("connection failed:") :]:
        line = line.rsplit("failed:", 1)[1].strip()
    return mask_url(line)[:200]


def outage_reason(exc: BaseException) -> str | None:
    """A short reason if ``exc`` means the database is unreachable (worth retrying), else None.

    Optuna wraps driver errors in ``StorageInternalError``; the cause chain tells.
    """
    types = _outage_types()
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        orig = getattr(current, "orig", None)
        if isinstance(orig, sqlite3.OperationalError) or isinstance(
            current, sqlite3.OperationalError
        ):
            text = str(orig if orig is not None else current).lower()
            # Only a busy database is transient on SQLite; "no such table" is not an outage.
            return _first_line(current) if ("locked" in text or "busy" in text) else None
        if isinstance(current, types):
            return _first_line(current)
        if isinstance(current, sqlalchemy.exc.DBAPIError) and current.connection_invalidated:
            # SQLAlchemy found the connection gone, whatever the driver called the error:
            # behind PgBouncer, a COMMIT in flight when PostgreSQL stops gets the server's
            # error and PgBouncer's, which psycopg reports as an InternalError ("received 2
            # results from command 'COMMIT'") on a connection that is then closed.
            return f"connection lost ({_first_line(current)})"
        current = current.__cause__ or current.__context__
    return None


def error_text(exc: BaseException) -> str:
    """``exc`` for a warning line, saying what really happened: Optuna reports a commit that
    failed because the connection dropped as "invalid data ..., e.g. exceeding max length", so a
    lost database is named as such (and any URL in the text is masked)."""
    reason = outage_reason(exc)
    if reason is not None:
        return f"database unreachable: {reason}"
    return mask_url(f"{type(exc).__name__}: {exc}")


class StorageGuard:
    """Runs storage calls through database outages.

    ``call`` retries an operation with exponential backoff for as long as the database is
    unreachable; ``attempt`` tries once (heartbeats, progress lines). Whatever thread notices
    first logs one line per outage and one when the database is back; no tracebacks.
    """

    def __init__(self, shown_url: str, *, max_delay: float = 30.0) -> None:
        self.shown_url = mask_url(shown_url)
        self.max_delay = max_delay
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._healthy_since = time.monotonic()

    def healthy_for(self) -> float:
        """Seconds since the database last came back (or since this guard was made)."""
        with self._lock:
            return 0.0 if self._down_since is not None else time.monotonic() - self._healthy_since

    def succeeded(self) -> None:
        with self._lock:
            if self._down_since is None:
                return
            seconds = time.monotonic() - self._down_since
            self._down_since = None
            self._healthy_since = time.monotonic()
        _log.warning("database reachable again after %.0f s; carrying on", seconds)

    def failed(self, exc: BaseException) -> bool:
        """Record ``exc``; True if it is an outage (the caller may retry), False if not."""
        reason = outage_reason(exc)
        if reason is None:
            return False
        with self._lock:
            first = self._down_since is None
            if first:
                self._down_since = time.monotonic()
        if first:
            _log.warning(
                "database unreachable at %s (%s); retrying with backoff, trials in training "
                "keep going",
                self.shown_url,
                reason,
            )
        else:
            _log.debug("database still unreachable: %s", reason)
        return True

    def call(self, operation: Callable[[], _T], what: str) -> _T:
        """``operation()``, retried with backoff while the database is unreachable."""
        delay = 0.5
        while True:
            try:
                result = operation()
            except Exception as exc:
                if not self.failed(exc):
                    raise
                _log.debug("%s: retrying in %.1f s", what, delay)
                stops.pause(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.max_delay)
                continue
            self.succeeded()
            return result

    def attempt(self, operation: Callable[[], _T], what: str) -> tuple[bool, _T | None]:
        """``(True, operation())``, or ``(False, None)`` if the database is unreachable."""
        try:
            result = operation()
        except Exception as exc:
            if not self.failed(exc):
                raise
            _log.debug("%s skipped: database unreachable", what)
            return False, None
        self.succeeded()
        return True, result
