"""Real PostgreSQL and real ``hpo`` processes for the cluster tests.

Every test gets its own database (``hpo_test_<random>``) on the server at 127.0.0.1:5432,
created through psycopg on the ``postgres`` database and dropped at the end, so tests never see
each other's studies. Tests only create and drop databases there: they never stop, restart or
reconfigure that server, which is the machine's own and may serve other programs.

``PgBouncerServer`` is a PgBouncer of the test's own (Debian's ``pgbouncer`` package) on a free
port, in transaction pooling mode, in front of a PostgreSQL server (the shared one by default,
which it only connects to); stopped and removed at the end. When ``pgbouncer`` is missing such a
test skips, unless ``HPO_REQUIRE_OWN_PG=1`` makes that a failure.

A test that takes a server down (an outage) or reconfigures it uses ``OwnPostgres`` instead: a
throwaway cluster that the test creates with ``initdb`` in a temporary directory, on a free
port, starts and stops with ``pg_ctl`` and removes at the end. When ``initdb`` is missing such
a test skips, saying why, unless ``HPO_REQUIRE_OWN_PG=1`` (set by ``.ci/run``) makes that a
failure.

``HpoProcesses`` starts ``python -m hpo ...`` processes (each in its own process group, output
in a log file) and kills whatever is left when the test ends. The fixtures built on these
(``pg_url``, ``own_postgres``, ``processes``) are in ``conftest.py``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

__all__ = [
    "HPO",
    "PG_HOST",
    "PG_PORT",
    "HpoProcess",
    "HpoProcesses",
    "OwnPostgres",
    "PgBouncerServer",
    "admin_connect",
    "hpo_env",
    "own_postgres_server",
    "pg_available",
    "pg_database",
    "pgbouncer_server",
    "skip_unless_required",
    "tiny_study",
    "wait_until_ready",
]

PG_HOST = os.environ.get("HPO_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("HPO_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("HPO_TEST_PG_USER", "postgres")


def admin_connect(database: str = "postgres", *, timeout: int = 5) -> object:
    import psycopg

    return psycopg.connect(
        host=PG_HOST,
        port=PG_PORT,
        user=PG_USER,
        dbname=database,
        autocommit=True,
        connect_timeout=timeout,
    )


def pg_available() -> bool:
    try:
        with admin_connect(timeout=3):  # type: ignore[attr-defined]
            return True
    except Exception:
        return False


def wait_until_ready(timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pg_available():
            return
        time.sleep(0.3)
    raise RuntimeError(f"PostgreSQL on {PG_HOST}:{PG_PORT} did not come back in {timeout} s")


@contextlib.contextmanager
def pg_database() -> Iterator[str]:
    """A fresh, empty database; yields its SQLAlchemy URL (no password: trust auth)."""
    if not pg_available():
        pytest.skip(f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT}")
    name = f"hpo_test_{uuid.uuid4().hex[:12]}"
    with admin_connect() as conn:  # type: ignore[attr-defined]
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with admin_connect() as conn:  # type: ignore[attr-defined]
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- a PostgreSQL server of the test's own ----------------------------------------------------

REQUIRE_OWN_PG = "HPO_REQUIRE_OWN_PG"


def skip_unless_required(reason: str) -> NoReturn:
    """Skip with ``reason``; under ``HPO_REQUIRE_OWN_PG=1`` (CI) fail with it instead."""
    if os.environ.get(REQUIRE_OWN_PG, "") not in ("", "0"):
        pytest.fail(f"{reason} ({REQUIRE_OWN_PG} is set: this test must run here)")
    pytest.skip(reason)


def _pg_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: $HPO_TEST_PG_BIN, Debian's, or PATH."""
    candidates: list[Path] = []
    if configured := os.environ.get("HPO_TEST_PG_BIN"):
        candidates.append(Path(configured))
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(
        (Path(p) for p in versions),
        key=lambda p: [int(x) for x in re.findall(r"\d+", p.parent.name)] or [0],
        reverse=True,
    )
    if on_path := shutil.which("initdb"):
        candidates.append(Path(on_path).parent)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OwnPostgres:
    """A throwaway PostgreSQL cluster: ``initdb`` in a temporary directory, on a free port.

    Only this object's test uses it, so the test may stop, start and restart it at will. Trust
    authentication on 127.0.0.1 (and on any client address passed to ``listen_also``); the unix
    socket lives in the temporary directory. PostgreSQL refuses to run as root, so as root the
    binaries run as the ``postgres`` user (``runuser``), who owns the directory.
    ``remove()`` stops the server (immediate mode) and deletes everything.
    """

    USER = "postgres"
    DATABASE = "hpo_test"

    def __init__(self, bindir: Path, *, run_as: str | None, max_connections: int = 100) -> None:
        self.bindir = bindir
        self.run_as = run_as
        self.max_connections = max_connections
        self.root = Path(tempfile.mkdtemp(prefix="hpo-own-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self.listen = ["127.0.0.1"]
        self.trusted = ["127.0.0.1"]
        if run_as is not None:
            shutil.chown(self.root, user=run_as, group=None)
        self.root.chmod(0o700)

    # -- paths and URLs

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def url(self) -> str:
        """The test database's URL (no password: trust)."""
        return self.url_for(self.host)

    def url_for(self, host: str, database: str | None = None) -> str:
        return f"postgresql://{self.USER}@{host}:{self.port}/{database or self.DATABASE}"

    def connect(self, database: str = "postgres", *, timeout: int = 5) -> object:
        import psycopg

        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.USER,
            dbname=database,
            autocommit=True,
            connect_timeout=timeout,
        )

    # -- running the binaries

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", self.run_as, "--"] if self.run_as else []
        done = subprocess.run(
            [*prefix, str(self.bindir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}\n"
                f"server log:\n{log}"
            )
        return done

    def _write_config(self) -> None:
        conf = self.data / "postgresql.conf"
        text = conf.read_text()
        marker = "# --- hpo test settings\n"
        text = text.split(marker, 1)[0] + marker
        text += (
            f"listen_addresses = '{','.join(self.listen)}'\n"
            f"port = {self.port}\n"
            f"unix_socket_directories = '{self.root}'\n"
            f"max_connections = {self.max_connections}\n"
            "shared_buffers = 32MB\n"
            "fsync = off\n"
            "synchronous_commit = off\n"
            "full_page_writes = off\n"
            "logging_collector = off\n"
        )
        conf.write_text(text)
        hba = ["local all all trust"]
        hba += [f"host all all {address}/32 trust" for address in self.trusted]
        (self.data / "pg_hba.conf").write_text("\n".join(hba) + "\n")

    def init(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            self.USER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        self._write_config()  # as the owner of data/: written through runuser below if needed
        if self.run_as is not None:
            for name in ("postgresql.conf", "pg_hba.conf"):
                shutil.chown(self.data / name, user=self.run_as, group=None)

    # -- the server's life

    def is_ready(self) -> bool:
        try:
            with self.connect(timeout=3):  # type: ignore[attr-defined]
                return True
        except Exception:
            return False

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self) -> None:
        """Like ``pg_ctlcluster stop``: fast shutdown, waiting until the server is gone."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def restart(self) -> None:
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-m", "fast", "-w", "-t", "60",
            "restart",
        )  # fmt: skip

    def running(self) -> bool:
        prefix = ["runuser", "-u", self.run_as, "--"] if self.run_as else []
        done = subprocess.run(
            [*prefix, str(self.bindir / "pg_ctl"), "-D", str(self.data), "status"],
            capture_output=True,
            timeout=30,
            cwd=self.root,
        )
        return done.returncode == 0

    def listen_also(self, address: str, client: str) -> None:
        """Also listen on ``address`` and trust connections from ``client``; restarts."""
        self.listen.append(address)
        self.trusted.append(client)
        self._write_config()
        self.restart()

    def remove(self) -> None:
        """Stop the server if it runs (immediate mode) and delete the whole cluster."""
        try:
            if self.data.exists() and self.running():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def own_postgres_server(
    *, max_connections: int = 100, unavailable: Callable[[str], NoReturn] = skip_unless_required
) -> Iterator[OwnPostgres]:
    """A started throwaway cluster with an empty ``hpo_test`` database; removed afterwards.

    Skips (fails under ``HPO_REQUIRE_OWN_PG=1``) when ``initdb``/``pg_ctl`` are missing, or
    when running as root without a ``postgres`` user and ``runuser`` to run them as; a caller
    outside pytest (bench/claims.py) passes its own ``unavailable`` to say so and stop.
    """
    bindir = _pg_bindir()
    if bindir is None:
        unavailable(
            "initdb and pg_ctl not found (looked in $HPO_TEST_PG_BIN, /usr/lib/postgresql/*/bin "
            "and PATH): cannot start a PostgreSQL server of the test's own"
        )
    run_as: str | None = None
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        import pwd

        try:
            pwd.getpwnam(OwnPostgres.USER)
        except KeyError:
            unavailable("running as root and there is no `postgres` user to run initdb")
        if shutil.which("runuser") is None:
            unavailable("running as root and `runuser` is missing to run initdb")
        run_as = OwnPostgres.USER
    server: OwnPostgres | None = None
    try:
        for attempt in range(3):  # the free port may be taken between finding it and binding it
            server = OwnPostgres(bindir, run_as=run_as, max_connections=max_connections)
            server.init()
            try:
                server.start()
                break
            except RuntimeError:
                server.remove()
                server = None
                if attempt == 2:
                    raise
        assert server is not None
        with server.connect() as conn:  # type: ignore[attr-defined]
            conn.execute(f'CREATE DATABASE "{OwnPostgres.DATABASE}"')
        yield server
    finally:
        if server is not None:
            server.remove()


# --- a PgBouncer of the test's own -------------------------------------------------------------


class PgBouncerServer:
    """PgBouncer on a free port of 127.0.0.1 in front of ``host:port``, every database name
    passed through, trust authentication (the user must be listed: ``postgres``).

    ``pool_mode = transaction``: a client holds a server connection only for the length of a
    transaction, so nothing may live in a session between transactions (no session advisory
    locks, no prepared statements: PgBouncer 1.18, Debian 12's, cannot carry them), and
    ``pool_size`` server connections serve any number of clients. PgBouncer refuses to run as
    root, so as root it runs as the ``postgres`` user (``runuser``).
    """

    USER = "postgres"

    def __init__(self, binary: str, *, host: str, port: int, pool_size: int, run_as: str | None):
        self.binary = binary
        self.run_as = run_as
        self.root = Path(tempfile.mkdtemp(prefix="hpo-pgbouncer-"))
        self.log = self.root / "pgbouncer.log"
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        (self.root / "users.txt").write_text(f'"{self.USER}" ""\n')
        (self.root / "pgbouncer.ini").write_text(
            textwrap.dedent(
                f"""
                [databases]
                * = host={host} port={port}

                [pgbouncer]
                listen_addr = 127.0.0.1
                listen_port = {self.port}
                unix_socket_dir =
                auth_type = trust
                auth_file = {self.root / "users.txt"}
                pool_mode = transaction
                default_pool_size = {pool_size}
                max_client_conn = 500
                pidfile = {self.root / "pgbouncer.pid"}
                """
            )
        )
        if run_as is not None:
            for path in (self.root, *self.root.iterdir()):
                shutil.chown(path, user=run_as, group=None)

    def url_for(self, database: str) -> str:
        return f"postgresql://{self.USER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        prefix = ["runuser", "-u", self.run_as, "--"] if self.run_as else []
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*prefix, self.binary, str(self.root / "pgbouncer.ini")],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited ({self.proc.returncode}):\n{self.text()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return
            time.sleep(0.1)
        raise RuntimeError(f"pgbouncer did not listen on port {self.port}:\n{self.text()}")

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def remove(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=10)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def pgbouncer_server(
    *,
    host: str = PG_HOST,
    port: int = PG_PORT,
    pool_size: int = 2,
    unavailable: Callable[[str], NoReturn] = skip_unless_required,
) -> Iterator[PgBouncerServer]:
    """A started PgBouncer in transaction mode in front of ``host:port``; removed afterwards.
    Skips (fails under ``HPO_REQUIRE_OWN_PG=1``) when ``pgbouncer`` is missing, or when
    running as root without a ``postgres`` user and ``runuser`` to run it as (``unavailable``,
    as for :func:`own_postgres_server`)."""
    binary = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.isfile(p)), None
    )
    if binary is None:
        unavailable("pgbouncer not found (apt-get install pgbouncer)")
    run_as: str | None = None
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        import pwd

        try:
            pwd.getpwnam(PgBouncerServer.USER)
        except KeyError:
            unavailable("running as root and there is no `postgres` user to run pgbouncer")
        if shutil.which("runuser") is None:
            unavailable("running as root and `runuser` is missing to run pgbouncer")
        run_as = PgBouncerServer.USER
    server = PgBouncerServer(binary, host=host, port=port, pool_size=pool_size, run_as=run_as)
    try:
        for attempt in range(3):  # the free port may be taken between finding it and binding it
            try:
                server.start()
                break
            except RuntimeError:
                server.remove()
                if attempt == 2:
                    raise
                server = PgBouncerServer(
                    binary, host=host, port=port, pool_size=pool_size, run_as=run_as
                )
        yield server
    finally:
        server.remove()


# --- hpo processes ---------------------------------------------------------------------------

HPO = [sys.executable, "-m", "hpo"]


def tiny_study(
    directory: Path, name: str, *, n_trials: int, epochs: int = 2, extra: str = ""
) -> Path:
    """A study over a 90-row CSV that trains in about a second a trial (reference engine);
    ``extra`` is appended to the file."""
    from conftest import make_frame

    csv = directory / "tiny.csv"
    if not csv.exists():
        make_frame().to_csv(csv, index=False)
    path = directory / f"{name}.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [study]
            name = "{name}"

            [data]
            path = "{csv}"
            target = "kind"
            drop = ["row"]

            [cv]
            folds = 2
            seed = 1

            [model]
            hidden = [4]
            epochs = {epochs}
            batch_size = 16

            [engine]
            name = "reference"

            [sampler]
            seed = 3
            n_startup_trials = 2

            [budget]
            n_trials = {n_trials}
            """
        )
        + textwrap.dedent(extra)
    )
    return path


def hpo_env(storage: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPO_")}
    env.update(
        HPO_STORAGE=storage,
        HPO_WORKERS="1",  # `hpo run` in one process unless a test asks for more
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONUNBUFFERED="1",
        PYTHONWARNINGS="ignore",
    )
    env.update(extra)
    return env


@dataclass
class HpoProcess:
    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 150) -> re.Match[str]:
        """The first match of ``pattern`` in the output, waiting for it to appear."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if match := re.search(pattern, self.text()):
                return match
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.log.name} exited ({self.proc.returncode}) before {pattern!r}:\n"
                    + self.text()
                )
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} in {self.log.name} after {timeout} s:\n{self.text()}")

    def finish(self, timeout: float = 240) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.log.name} still running:\n{self.text()}") from None

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        """Like a machine dying: the worker and every process it started."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        self.proc.wait(timeout=30)


class HpoProcesses:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[HpoProcess] = []

    def start(
        self, args: Sequence[str], *, env: dict[str, str], log: str, prefix: Sequence[str] = ()
    ) -> HpoProcess:
        path = self.directory / log
        with path.open("wb") as out:
            proc = subprocess.Popen(
                [*prefix, *HPO, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.directory,
                start_new_session=True,
            )
        process = HpoProcess(proc, path)
        self.started.append(process)
        return process

    def run(self, args: Sequence[str], *, env: dict[str, str], timeout: float = 120) -> str:
        """Run to the end; its output (stdout and stderr), asserting exit code 0."""
        done = subprocess.run(
            [*HPO, *args],
            env=env,
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    def kill_all(self) -> None:
        for process in self.started:
            if process.proc.poll() is None:
                process.kill_group()
