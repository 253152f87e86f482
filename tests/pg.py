"""Real PostgreSQL and real ``hpo`` processes for the cluster tests.

Every test gets its own database (``hpo_test_<random>``) on the server at 127.0.0.1:5432,
created through psycopg on the ``postgres`` database and dropped at the end, so tests never see
each other's studies. ``HpoProcesses`` starts ``python -m hpo ...`` processes (each in its own
process group, output in a log file) and kills whatever is left when the test ends. The
fixtures built on these (``pg_url``, ``processes``) are in ``conftest.py``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = [
    "HPO",
    "PG_HOST",
    "PG_PORT",
    "HpoProcess",
    "HpoProcesses",
    "admin_connect",
    "hpo_env",
    "pg_available",
    "pg_ctlcluster",
    "pg_database",
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


def _cluster() -> tuple[str, str]:
    versions = sorted(p.name for p in Path("/etc/postgresql").iterdir())
    return versions[-1], "main"


def pg_ctlcluster(action: str) -> None:
    """``pg_ctlcluster VERSION main ACTION`` (start, stop, restart, reload)."""
    if shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").is_dir():
        pytest.skip("pg_ctlcluster is not available: cannot stop and start PostgreSQL here")
    version, name = _cluster()
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, action],
        check=True,
        capture_output=True,
        timeout=120,
    )


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
        # A test may have stopped the server; bring it back before cleaning up.
        with contextlib.suppress(Exception):
            if not pg_available():
                pg_ctlcluster("start")
                wait_until_ready()
        with admin_connect() as conn:  # type: ignore[attr-defined]
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- hpo processes ---------------------------------------------------------------------------

HPO = [sys.executable, "-m", "hpo"]


def tiny_study(directory: Path, name: str, *, n_trials: int, epochs: int = 2) -> Path:
    """A study over a 90-row CSV that trains in about a second a trial (reference engine)."""
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
    )
    return path


def hpo_env(storage: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPO_")}
    env.update(
        HPO_STORAGE=storage,
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
