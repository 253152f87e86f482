"""Worker identity: one id per process (host, pid and a random tag), shortened in `hpo status`,
and the records of studies from before the tag (``HOST:PID``) still shown."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path

import optuna
import pytest
from conftest import hpo

from hpo.study import record
from hpo.study.heartbeat import Heartbeat
from hpo.study.record import (
    WORKER_ATTR_PREFIX,
    WORKER_TAG_ENV,
    CrashPolicy,
    short_worker_id,
    worker_id,
    worker_records,
)
from hpo.study.storage import StorageGuard, open_storage

HOST = socket.gethostname()


def test_the_id_is_host_pid_and_a_tag_fixed_for_the_life_of_the_process() -> None:
    first = worker_id()
    host, pid, tag = first.split(":")
    assert (host, int(pid)) == (HOST, os.getpid())
    assert re.fullmatch(r"[0-9a-f]{8}", tag)
    assert worker_id() == first  # the sampler offset and the heartbeat record use the same id


def test_two_processes_with_one_host_and_pid_get_two_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two containers can share a host name and a pid: the same host and pid, drawn afresh.
    ids = set()
    for _ in range(20):
        monkeypatch.setattr(record, "_identity", None)
        ids.add(worker_id())
    assert len(ids) == 20
    assert {i.rsplit(":", 1)[0] for i in ids} == {f"{HOST}:{os.getpid()}"}


def test_a_tag_given_by_the_run_is_taken_once_and_a_bad_one_is_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(record, "_identity", None)
    monkeypatch.setenv(WORKER_TAG_ENV, "0123abcd")
    assert worker_id() == f"{HOST}:{os.getpid()}:0123abcd"
    assert WORKER_TAG_ENV not in os.environ  # taken out: no process it starts inherits it
    monkeypatch.setattr(record, "_identity", None)
    monkeypatch.setenv(WORKER_TAG_ENV, "0123abcd; rm -rf /")
    assert not worker_id().endswith("rm -rf /")
    assert re.fullmatch(r"[0-9a-f]{8}", worker_id().rsplit(":", 1)[1])


def _study_with_workers(tmp_path: Path, name: str = "ids") -> tuple[str, optuna.Study]:
    url = f"sqlite:///{tmp_path}/ids.db"
    study = optuna.create_study(study_name=name, storage=open_storage(url))
    return url, study


def _write_record(study: optuna.Study, worker: str) -> None:
    """A worker record as a real heartbeat thread writes it."""
    Heartbeat(study, CrashPolicy(), StorageGuard("sqlite:///ids.db"), worker=worker).set_state(
        "training"
    )


def test_status_shows_new_ids_shortened_and_old_records_as_they_are(tmp_path: Path) -> None:
    url, study = _study_with_workers(tmp_path)
    twin_a, twin_b = "box:7:aaaa1111", "box:7:bbbb2222"  # one host and pid, two containers
    long_host = "hpo-worker-7d9f8c6b5-x2x7k:12:9f3c2a1b"
    for worker in (twin_a, twin_b, long_host):
        _write_record(study, worker)
    # A record as a worker of an earlier hpo wrote it: keyed and identified by host:pid only.
    old = {"id": "oldbox:4242", "host": "oldbox", "pid": 4242, "state": "training"}
    storage = study._storage
    storage.set_study_system_attr(
        study._study_id,
        WORKER_ATTR_PREFIX + "oldbox:4242",
        {**old, "completed": 3, "trials": [5], "last_seen": time.time()},
    )
    trial = study.ask()
    trial.set_user_attr("worker", twin_b)

    assert {r["id"] for r in worker_records(study)} == {twin_a, twin_b, long_host, "oldbox:4242"}
    text = hpo("status", "ids", "--storage", url)
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert "workers seen in the last 10 min: 4 (4 active)" in lines
    shown = {line.split()[0] for line in lines if line.startswith("  ")}
    assert shown == {"box:7:aaaa", "box:7:bbbb", "...r-7d9f8c6b5-x2x7k:12:9f3c", "oldbox:4242"}
    assert f"running: {trial.number} (box:7:bbbb)" in lines
    old_line = next(line for line in lines if line.startswith("  oldbox:4242"))
    assert "3 trials done, holds 5" in old_line

    as_json = json.loads(hpo("status", "ids", "--storage", url, "--format", "json").stdout)
    assert {w["id"] for w in as_json["workers"]} == {twin_a, twin_b, long_host, "oldbox:4242"}
    assert as_json["running"] == [{"number": trial.number, "worker": twin_b}]


def test_ids_that_would_look_alike_shortened_are_shown_whole(tmp_path: Path) -> None:
    url, study = _study_with_workers(tmp_path)
    for worker in ("box:7:abcd1111", "box:7:abcd2222"):
        _write_record(study, worker)
    text = hpo("status", "ids", "--storage", url)
    assert text.exit_code == 0, text.output
    shown = {line.split()[0] for line in text.stdout.splitlines() if line.startswith("  ")}
    assert shown == {"box:7:abcd1111", "box:7:abcd2222"}


@pytest.mark.parametrize(
    ("worker", "shown"),
    [
        ("node:1:0123abcd", "node:1:0123"),
        ("node:1", "node:1"),  # an id from before the tag
        ("not an id", "not an id"),
        ("node:x:0123abcd", "node:x:0123abcd"),
    ],
)
def test_short_worker_id(worker: str, shown: str) -> None:
    assert short_worker_id(worker) == shown
