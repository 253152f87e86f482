"""Soak: hundreds of SIGINT/SIGTERM at random moments to real `hpo run` and `hpo worker`s.

tests/test_signals_anywhere.py stops a process once at each stage it names; this test throws
signals at moments nobody chose, so the stages between the named ones (and the races between
two processes on one study) are hit too. Lanes run side by side, each on studies of its own
(a SQLite file each, or one PostgreSQL database): `hpo run --workers 1`, `hpo run --workers 2`
and two `hpo worker`s on one study, plus one round with a paused process holding the study's
claim lock while the others wait for it. A lane signals each process at a uniform random delay
over its expected life (start-up, import, data, claim, training, tell, artifacts, exit), SIGINT
or SIGTERM, and sometimes a second signal 0.1-1 s later. After every round: each process exited
within STOP_LIMIT s of its last signal, with 0 (or 128 + the second signal), no traceback and
no "Error" line; no trial is RUNNING; every FAIL is one that is retried (interrupted, or a dead
worker's), never an "error". Each study gets ROUNDS signalled rounds, then an unsignalled
process finishes it: the baseline is COMPLETE and the budget exact.

HPO_SOAK_SIGNALS (default 50 per backend: 100 in all) sets how many signals to send;
HPO_SOAK_SEED replays a run's moments (its seed is printed; the processes' own timing still
varies). Each signal costs about one process start (Python, pandas, TensorFlow: about 7 CPU
seconds), which is what the test takes: about 4 minutes a backend on two cores. The moments are
drawn anew in every run, so what the suite covers adds up over runs; before a release, a deeper
soak is `HPO_SOAK_SIGNALS=300 pytest -s tests/test_stop_soak.py`.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy
from pg import hpo_env

# Alone (conftest.py: no other test beside it under xdist), so one backend after the other: each
# runs four or five processes at a time already, and anything beside it on two cores (the other
# backend, or the rest of a parallel suite) stretches stops past STOP_LIMIT for reasons of load
# alone. (An xdist_group mark with `--dist loadgroup` meant to do this, but pytest-xdist 3.8
# ignores the mark under pytest 9.2: pytest-xdist issue #1386.)
pytestmark = [pytest.mark.slow, pytest.mark.alone]

TARGET = int(os.environ.get("HPO_SOAK_SIGNALS", "50"))
STOP_LIMIT = 15.0  # seconds from a process's last signal to its exit (a run waits for its worker)
N_TRIALS, EPOCHS = 6, 5
# Signalled rounds per study. Studies keep hpo's default crash policy (max_retries 3): with
# two processes per round a trial can be stopped twice in one round, and the final check then
# asks whether a stopped trial is retried however often it was stopped.
ROUNDS = 3
SECOND = 0.5  # the share of processes that get a second signal
# Expected life of each lane's processes on a busy two-core machine (import, data, a few
# trials, artifacts): the first signal falls uniformly within it.
WINDOW = {"run1": 20.0, "run2": 30.0, "worker": 20.0}
LANES = [["run1", "worker", "run2"], ["run2", "run1", "worker"], ["worker", "run2", "run1"]]
SIGNALS = (signal.SIGINT, signal.SIGTERM)

HOLDER = """
import os, signal, sys
import optuna
from hpo.study import optuna_compat as compat
from hpo.study.storage import open_storage, rdb_of, study_lock
study = optuna.load_study(study_name=sys.argv[1], storage=open_storage(sys.argv[2]))
with study_lock(rdb_of(study), compat.study_id(study)):
    print("holding", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
"""

TRIALS_SQL = """
SELECT t.number, t.state,
  (SELECT a.value_json FROM trial_system_attributes a
   WHERE a.trial_id = t.trial_id AND a.key = 'hpo:failure'),
  (SELECT u.value_json FROM trial_user_attributes u
   WHERE u.trial_id = t.trial_id AND u.key = 'baseline'),
  (SELECT r.value_json FROM trial_user_attributes r
   WHERE r.trial_id = t.trial_id AND r.key = 'retry_of'),
  (SELECT count(*) FROM trial_params p WHERE p.trial_id = t.trial_id)
FROM trials t JOIN studies s ON s.study_id = t.study_id
WHERE s.study_name = :name ORDER BY t.number
"""


@dataclass(frozen=True)
class Trial:
    number: int
    state: str
    failure: str | None  # hpo:failure
    baseline: bool
    retry_of: int | None
    has_plan: bool  # it has params (a retry repeats them)

    def __repr__(self) -> str:
        return f"{self.number}:{self.state}:{self.failure or ''}{':baseline' * self.baseline}"


@dataclass
class Proc:
    """One started process, the signals planned for it (seconds after hpo's handler is in
    place, signal, whether to its whole process group as a terminal does) and what happened."""

    label: str
    popen: subprocess.Popen[bytes]
    log: Path
    plan: list[tuple[float, int, bool]]
    started: float = field(default_factory=time.monotonic)
    armed: float | None = None  # when hpo's first signal handler was seen in place
    sent: list[int] = field(default_factory=list)
    last: float | None = None
    stage: str = ""  # the last line of output before the first signal
    ended: float | None = None
    killed: bool = False

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Soak:
    backend: str
    tmp: Path
    base_url: str
    write_study: Callable[..., Path]
    seed: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: int = 0
    processes: int = 0
    early: int = 0  # processes that ended before their first planned signal
    latencies: list[tuple[float, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def more(self) -> bool:
        with self.lock:
            return self.sent < TARGET

    def url(self, name: str) -> str:
        return f"sqlite:///{self.tmp / name}.db" if self.backend == "sqlite" else self.base_url

    def fail(self, what: str, output: str = "") -> None:
        tail = "\n".join(output.splitlines()[-40:])
        with self.lock:
            self.failures.append(f"{what}\n{tail}".rstrip())

    # -- processes

    def start(
        self, label: str, args: list[str], url: str, plan: list[tuple[float, int, bool]]
    ) -> Proc:
        log = self.tmp / f"{label}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "hpo", *args, "--storage", url],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=hpo_env(url, PYTHONFAULTHANDLER="1"),
                cwd=self.tmp,
                start_new_session=True,
            )
        with self.lock:
            self.processes += 1
        return Proc(label, popen, log, plan)

    def drive(self, procs: list[Proc]) -> bool:
        """Send each process its planned signals while it lives; wait for every one to end,
        killing one that outlives its limit by 20 s. Whether all of them passed."""
        while any(p.ended is None for p in procs):
            now = time.monotonic()
            for p in procs:
                if p.ended is not None:
                    continue
                if p.popen.poll() is not None:
                    p.ended = now
                    continue
                if p.armed is None and _catches_sigterm(p.popen.pid):
                    p.armed = now
                while p.plan and p.armed is not None and now - p.armed >= p.plan[0][0]:
                    _, sig, group = p.plan.pop(0)
                    try:
                        (os.killpg if group else os.kill)(p.popen.pid, sig)
                    except ProcessLookupError:
                        break
                    if not p.sent:
                        p.stage = (p.output().splitlines() or ["(no output yet)"])[-1][:80]
                    p.sent.append(sig)
                    p.last = now
                    with self.lock:
                        self.sent += 1
                limit = p.last + STOP_LIMIT if p.last else p.started + 180
                if now > limit + 20:  # hung: its threads' stacks into its output, then kill
                    _abort_and_kill(p.popen)
                    p.ended, p.killed = time.monotonic(), True
            time.sleep(0.02)
        return all([self.judge(p) for p in procs])

    def judge(self, p: Proc) -> bool:
        code, output = p.popen.returncode, p.output()
        names = "+".join(signal.Signals(s).name for s in p.sent) or "no signal"
        what = f"{self.backend} {p.label} ({names} after {p.stage!r}, exit {code})"
        ok = True
        if p.last is not None:
            assert p.ended is not None
            latency = p.ended - p.last
            with self.lock:
                self.latencies.append((latency, f"{p.label} after {p.stage!r}"))
            if latency > STOP_LIMIT:
                self.fail(f"{what}: ended {latency:.1f} s after its last signal", output)
                ok = False
        elif p.plan:
            with self.lock:
                self.early += 1
        if p.killed:
            self.fail(f"{what}: hung; its stacks (SIGABRT) are above", output)
            ok = False
        allowed = {0} | ({128 + p.sent[-1]} if len(p.sent) > 1 else set())
        if code not in allowed:
            self.fail(f"{what}: exit code {code}, expected one of {sorted(allowed)}", output)
            ok = False
        bad = [line for line in output.splitlines() if "Traceback" in line or "Error" in line]
        if bad:
            self.fail(f"{what}: {bad[0]!r}", output)
            ok = False
        left = _run_children(p.popen.pid)
        if left:  # `hpo run --workers 2`'s worker outlived the run
            deadline = (p.last or p.ended or 0) + STOP_LIMIT
            while left and time.monotonic() < deadline:
                time.sleep(0.1)
                left = _run_children(p.popen.pid)
            if left:
                for pid in left:
                    _abort_and_kill(pid)
                self.fail(f"{what}: its workers {left} still ran after it ended", p.output())
                ok = False
        return ok

    def clean(self, label: str, args: list[str], url: str) -> bool:
        """Run to the end with no signal (creating or finishing a study)."""
        return self.drive([self.start(label, args, url, [])])

    # -- the study

    def check(self, url: str, name: str, label: str, *, final: bool) -> bool:
        """Nothing RUNNING, no FAIL that is never retried, the baseline there; at the end
        also the baseline COMPLETE and the budget exact."""
        trials = _trials(url, name)
        states = [t.state for t in trials]
        problems = []
        if "RUNNING" in states:
            problems.append("RUNNING trials")
        errors = [t for t in trials if t.state == "FAIL" and t.failure not in (None, "interrupted")]
        if errors:
            problems.append(f"FAIL trials that are never retried: {errors}")
        baselines = [t.state for t in trials if t.baseline]
        if trials and not baselines:
            problems.append("no baseline trial")
        if final:
            if "COMPLETE" not in baselines:
                problems.append(f"baseline not COMPLETE: {baselines}")
            retried = {t.retry_of for t in trials}
            dropped = [
                t
                for t in trials
                if t.state == "FAIL" and (t.has_plan or t.baseline) and t.number not in retried
            ]
            if dropped:  # e.g. a chain stopped more often than max_retries (3)
                problems.append(f"stopped trials never retried: {dropped}")
            done = states.count("COMPLETE") + states.count("PRUNED")
            if done != N_TRIALS or "WAITING" in states:
                problems.append(f"{done} trials done of a budget of {N_TRIALS}")
        if problems:
            self.fail(f"{self.backend} {label} study {name!r}: {'; '.join(problems)}: {trials}")
        return not problems

    # -- lanes

    def lane(self, modes: list[str]) -> None:
        """Studies one after another (cycling through ``modes``), each ROUNDS signalled rounds
        and a clean finish. A process that fails its checks does not end its study; a study
        that fails its check is left, and the lane goes on with a new one."""
        rng = random.Random(f"{self.seed}:{modes[0]}")
        for generation in range(10_000):
            if not self.more():
                return
            mode = modes[generation % len(modes)]
            name = f"{mode}-{generation}"
            study = self.write_study(name=name, engine="stacked", epochs=EPOCHS, n_trials=N_TRIALS)
            url = self.url(name)
            command = {
                "run1": ["run", str(study), "--workers", "1"],
                "run2": ["run", str(study), "--workers", "2"],
                "worker": ["worker", name],
            }[mode]
            if mode == "worker":
                self.clean(f"{name}-create", ["create", str(study)], url)
            intact = True
            for r in range(ROUNDS):
                if not (intact and self.more()):
                    break
                procs = [
                    self.start(f"{name}-r{r}-{i}", command, url, _plan(rng, WINDOW[mode]))
                    for i in range(2 if mode == "worker" else 1)
                ]
                self.drive(procs)
                intact = self.check(url, name, f"{name}-r{r}", final=False)
            if intact:
                self.clean(f"{name}-final", command, url)
                self.check(url, name, f"{name}-final", final=True)

    def lock_round(self) -> None:
        """A process holding the study's claim lock is paused (SIGSTOP); two workers and a run
        wait for that lock; each is signalled: the wait must end within STOP_LIMIT."""
        rng = random.Random(f"{self.seed}:lock")
        name = "held"
        study = self.write_study(name=name, engine="stacked", epochs=EPOCHS, n_trials=N_TRIALS)
        url = self.url(name)
        if not self.clean("held-create", ["create", str(study)], url):
            return
        holder_log = self.tmp / "held-holder.log"
        with holder_log.open("wb") as out:
            holder = subprocess.Popen(
                [sys.executable, "-c", HOLDER, name, url],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=hpo_env(url),
                start_new_session=True,
            )
        try:
            if not _until(lambda: _stopped(holder.pid), 120):
                self.fail("lock holder never paused", holder_log.read_text())
                return
            commands = [["worker", name], ["worker", name], ["run", str(study), "--workers", "1"]]
            procs = [
                self.start(f"held-{i}", command, url, []) for i, command in enumerate(commands)
            ]
            if not _until(lambda: self.lock_waiters(url, procs) >= len(procs), 180):
                waiting = self.lock_waiters(url, procs)
                self.fail(
                    f"{self.backend}: only {waiting} of {len(procs)} processes came to wait "
                    "for the held lock",
                    "\n".join(p.output() for p in procs),
                )
            for p in procs:  # from now on: a random moment in the next 1.5 s
                p.armed, p.plan = time.monotonic(), _plan(rng, 1.5)
            passed = self.drive(procs)
        finally:
            _kill_group(holder.pid)
            holder.wait()
        if self.check(url, name, "held", final=False) and passed:
            self.clean("held-final", ["worker", name], url)
            self.check(url, name, "held-final", final=True)

    def lock_waiters(self, url: str, procs: list[Proc]) -> int:
        """How many processes wait for the held lock. They take it by tries with a pause
        between them (a blocking wait could not be stopped), so a waiter is one that has the
        lock file open (SQLite: it opens it only to take the lock), or one that has said it has
        waited for the study lock for a while (PostgreSQL: between its tries a waiter holds no
        transaction, nor even a connection, so the server cannot tell it from an idle one)."""
        if self.backend == "sqlite":
            lock = Path(url.removeprefix("sqlite:///") + ".lock").resolve()
            return sum(_has_open(p.popen.pid, lock) for p in procs)
        return sum("waiting for the study lock" in p.output() for p in procs)


def _has_open(pid: int, path: Path) -> bool:
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if Path(os.readlink(fd)) == path:
                return True
    return False


def _plan(rng: random.Random, window: float) -> list[tuple[float, int, bool]]:
    """A first signal at a uniform moment of ``window``, and with probability SECOND another
    0.1-1 s later; each to the process or its group."""
    first = rng.uniform(0, window)
    group = rng.random() < 0.5
    plan = [(first, rng.choice(SIGNALS), group)]
    if rng.random() < SECOND:
        plan.append((first + rng.uniform(0.1, 1.0), rng.choice(SIGNALS), group))
    return plan


def _trials(url: str, name: str) -> list[Trial]:
    """Each trial of study ``name``, read with SQL:
    a process stopped early may have left no schema, and reading must not make one."""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return []
    engine = sqlalchemy.create_engine(
        url.replace("postgresql://", "postgresql+psycopg://"), poolclass=sqlalchemy.pool.NullPool
    )
    try:
        with engine.connect() as conn:
            rows = conn.execute(sqlalchemy.text(TRIALS_SQL), {"name": name}).all()
    except sqlalchemy.exc.DBAPIError as exc:
        if "no such table" in str(exc) or "does not exist" in str(exc):
            return []
        raise
    finally:
        engine.dispose()
    return [
        Trial(n, s, f and f.strip('"'), b == "true", r and int(r), bool(p))
        for n, s, f, b, r, p in rows
    ]


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _abort_and_kill(process: subprocess.Popen[bytes] | int) -> None:
    """SIGABRT first, so that faulthandler (PYTHONFAULTHANDLER) writes where each thread
    hangs (a run's workers write into the run's output), then SIGKILL to the whole group."""
    pid = process if isinstance(process, int) else process.pid
    for each in [pid, *_run_children(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(each, signal.SIGABRT)
    time.sleep(1)
    for each in [pid, *_run_children(pid)]:
        _kill_group(each)
    if not isinstance(process, int):
        process.wait()


def _live_pids() -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX":
                    yield int(entry.name)
            except (OSError, IndexError):
                continue


def _run_children(pid: int) -> list[int]:
    """The live workers that `hpo run` ``pid`` started (they carry HPO_RUN_PARENT=pid)."""
    mark = f"\0HPO_RUN_PARENT={pid}\0".encode()
    found = []
    for child in _live_pids():
        try:
            if mark in b"\0" + Path(f"/proc/{child}/environ").read_bytes():
                found.append(child)
        except OSError:
            continue
    return found


def _catches_sigterm(pid: int) -> bool:
    """Whether hpo's first handler is in place (Python has none for SIGTERM). The moments are
    counted from there: before it the interpreter starts, which no program can cover; a stop
    there is tests/test_signals_anywhere.py's "import" case."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = re.search(r"^SigCgt:\s*([0-9a-f]+)", status, re.M)
    return bool(caught and int(caught[1], 16) >> (signal.SIGTERM - 1) & 1)


def _stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def _until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_random_signals_stop_every_process_cleanly(
    backend: str, tmp_path: Path, write_study: Callable[..., Path], request: pytest.FixtureRequest
) -> None:
    seed = int(os.environ.get("HPO_SOAK_SEED", random.randrange(2**32)))
    print(f"\nHPO_SOAK_SEED={seed} HPO_SOAK_SIGNALS={TARGET} ({backend})")
    base_url = request.getfixturevalue("pg_url") if backend == "postgresql" else ""
    soak = Soak(backend, tmp_path, base_url, write_study, seed)
    started = time.monotonic()
    with ThreadPoolExecutor(1 + len(LANES)) as pool:  # four or five processes at a time
        jobs = [pool.submit(soak.lock_round)]
        jobs += [pool.submit(soak.lane, modes) for modes in LANES]
        for job in jobs:
            job.result()
    wall = time.monotonic() - started
    print(
        f"{backend}: {soak.sent} signals to {soak.processes} processes in {wall:.0f} s; "
        f"{soak.early} ended before their signal; {len(soak.failures)} failures; slowest stops:"
    )
    for latency, what in sorted(soak.latencies, reverse=True)[:5]:
        print(f"  {latency:.1f} s: {what}")
    assert soak.sent >= TARGET
    assert not soak.failures, "\n\n".join([f"seed {seed}", *soak.failures])
