"""Storage URLs, database engines, locks and outages.

SQLite is the zero-setup default (one file in the working directory); PostgreSQL is what several
workers on several machines share. This module owns everything that depends on which one it is:

* ``open_storage``: Optuna's RDB storage with engine options per backend (a busy timeout for
  SQLite, pre-ping and small pools for PostgreSQL), the schema created under a lock so that
  workers starting together on an empty database never race (Optuna alone does race there).
* ``check_sqlite`` / ``Access``: a SQLite path unfit for what a command does (missing file or
  directory, read-only file or directory, not SQLite) is one line naming the path and the fix,
  before anything is created; readers create no database, directory, lock file or table.
* ``study_lock`` / ``creation_lock``: one claimer at a time (a PostgreSQL advisory lock, or a
  file lock beside a SQLite file), which makes the global trial budget exact.
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
# PostgreSQL advisory locks take two int4 keys: ours are ("hpo", what). What: the schema, the
# study table (creating and loading studies), or one study's id (claiming its trials).
_LOCK_CLASS = 0x68706F00
_LOCK_POLL_SECONDS = 0.05  # the longest pause between two tries for a held lock
_SCHEMA_KEY = -1
_CREATION_KEY = 0
# A claim holds its lock while Optuna samples; a worker stopped with SIGSTOP must not hold it
# forever, so the server ends such a transaction (the claim is then simply retried).
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


def _engine_kwargs(url: str) -> dict[str, Any]:
    if not is_postgresql(url):
        # SQLite serializes writers; a generous busy timeout makes a few local processes queue
        # for the write lock instead of failing with "database is locked". (Python's sqlite3
        # opens a transaction only at the first write, so readers never deadlock writers.)
        return {"connect_args": {"timeout": 120}}
    return {
        # A connection killed by a database restart is noticed at checkout, not mid-query.
        "pool_pre_ping": True,
        # One worker uses at most three at once: main thread, heartbeat thread, claim lock.
        "pool_size": 3,
        "max_overflow": 2,
        "pool_timeout": 60,
        "pool_recycle": 900,
        "connect_args": {
            "connect_timeout": 10,
            "application_name": "hpo",
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

    The schema is created by whichever process gets the schema lock first; the others wait
    and find it complete. ``access`` says what the caller will do (see :data:`Access`): a
    reader never creates a SQLite file, its directory, its lock file or Optuna's tables.
    """
    normalized = normalize_url(url)
    check_sqlite(url, access)
    reader = access == "read" and sqlite_file(normalized) is not None
    try:
        with _schema_lock(normalized, create=access != "read"):
            if reader:
                _check_study_tables(url)
            return optuna.storages.RDBStorage(
                normalized,
                engine_kwargs=_engine_kwargs(normalized),
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
    uri = f"file:{urllib.parse.quote(str(database.resolve()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=120)
        try:
            foreign = optuna_compat.foreign_tables(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        error = sqlite_error(url, exc)
        if error is None:
            raise
        raise error from None
    if foreign:
        shown = ", ".join(foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        raise HpoError(
            f"{where}: {database} holds another application's tables ({shown}) and no Optuna "
            "studies; hpo adds nothing to it: give a database file of its own in --storage"
        )


def _check_study_tables(url: str) -> None:
    """A reader's check that ``url``'s SQLite file holds Optuna's tables, read without writing
    (a read-only connection), so a wrong but existing file is named instead of initialized."""
    database = sqlite_file(url)
    if database is None:
        return
    uri = f"file:{urllib.parse.quote(str(database.resolve()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=120)
        try:
            found = optuna_compat.has_optuna_tables(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        error = sqlite_error(url, exc)
        if error is None:
            raise
        raise error from None
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
        _wait_for(lambda: _try_flock(fd))
        yield
    finally:
        os.close(fd)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _wait_for(take: Callable[[], bool]) -> None:
    """Try ``take`` until it gets the lock, pausing between tries (2 ms, doubling to 50 ms).

    Tries, not one blocking call: a blocking ``flock`` or ``pg_advisory_lock`` cannot be
    interrupted by a stop request, and another worker may hold the lock for as long as it is
    paused (SIGSTOP, a debugger). A stop requested meanwhile raises ``Stopped`` here, before
    anything is created. Polling loses no fairness that matters: a claim holds the lock for
    milliseconds, and waiters retry within 75 ms.
    """
    delay = 0.002
    while not take():
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


@contextlib.contextmanager
def _schema_lock(url: str, *, create: bool = True) -> Iterator[None]:
    if not is_postgresql(url):
        with _sqlite_lock(url, create=create):
            yield
        return
    engine = sqlalchemy.create_engine(
        url, poolclass=sqlalchemy.pool.NullPool, connect_args=_engine_kwargs(url)["connect_args"]
    )
    try:
        with engine.connect() as conn:
            # Session-level: held across the storage's own connections and transactions.
            _wait_for(lambda: _try_advisory(conn, "pg_try_advisory_lock", _SCHEMA_KEY))
            conn.commit()
            try:
                yield
            finally:
                with contextlib.suppress(Exception):  # a dead connection released it already
                    conn.execute(
                        sqlalchemy.text("SELECT pg_advisory_unlock(:c, :k)"),
                        {"c": _LOCK_CLASS, "k": _SCHEMA_KEY},
                    )
                    conn.commit()
    finally:
        engine.dispose()


def _try_advisory(conn: Any, function: str, key: int) -> bool:
    query = sqlalchemy.text(f"SELECT {function}(:c, :k)")
    return bool(conn.execute(query, {"c": _LOCK_CLASS, "k": key}).scalar())


class HeldLock:
    """A lock this process holds. ``still_held()`` asks the database: a PostgreSQL lock lives
    in its session, which the server may end (a restart, ``pg_terminate_backend``, the idle
    limit) while we think we hold it; a SQLite file lock cannot be lost."""

    def __init__(self, conn: Any = None) -> None:
        self._conn = conn

    def still_held(self) -> bool:
        if self._conn is None:
            return True
        try:
            self._conn.execute(sqlalchemy.text("SELECT 1"))
        except Exception:  # the session is gone, and the lock with it
            return False
        return True


@contextlib.contextmanager
def _named_lock(storage: optuna.storages.RDBStorage, key: int) -> Iterator[HeldLock]:
    if not is_postgresql(storage.url):
        with _sqlite_lock(storage.url):
            yield HeldLock()
        return
    conn = storage.engine.connect()
    try:
        # Transaction-level lock: released by COMMIT/ROLLBACK, or by the server when this
        # connection dies (worker killed, database restarted), so it can never leak.
        conn.execute(
            sqlalchemy.text(
                f"SET LOCAL idle_in_transaction_session_timeout = '{_LOCK_IDLE_TIMEOUT}'"
            )
        )
        _wait_for(lambda: _try_advisory(conn, "pg_try_advisory_xact_lock", key))
        yield HeldLock(conn)
    finally:
        with contextlib.suppress(Exception):
            conn.rollback()
        with contextlib.suppress(Exception):
            conn.close()


def creation_lock(
    storage: optuna.storages.RDBStorage,
) -> contextlib.AbstractContextManager[HeldLock]:
    """Held while a study is created with its attributes, and while one is loaded, so nobody
    sees a study without its spec."""
    return _named_lock(storage, _CREATION_KEY)


def study_lock(
    storage: optuna.storages.RDBStorage, study_id: int
) -> contextlib.AbstractContextManager[HeldLock]:
    """Held while a worker counts the budget and claims trials of one study."""
    return _named_lock(storage, study_id)


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
