"""A study's artifact store and stored data: the database store, the choice of store, the data
that travels with the study, and the "several machines" story on a real PostgreSQL study.

The last tests stand three working directories (each with its own HOME and data cache) in for
three machines: the study is created in A, a worker trains in B with nothing but the study's
name and the storage URL, and `report`, `export` and the dashboard in C see B's files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
from conftest import hpo, make_frame, one_line_error
from pg import HpoProcesses, hpo_env, tiny_study

from hpo.errors import HpoError
from hpo.results.artifacts import trial_artifacts
from hpo.spec import load_spec, spec_from_dict
from hpo.study import optuna_compat as compat
from hpo.study import stores
from hpo.study.creation import create_or_load_study, update_stored_spec
from hpo.study.record import (
    ARTIFACT_TABLE,
    DATA_ATTR,
    DATA_SOURCE_ATTR,
    SPEC_ATTR,
    stored_spec,
)
from hpo.study.storage import open_storage

# --- the database store ----------------------------------------------------------------------


def _db_store(url: str) -> stores.DatabaseArtifactStore:
    return stores.DatabaseArtifactStore(open_storage(url).engine)


def _tables(url: str) -> list[str]:
    return sqlalchemy.inspect(open_storage(url).engine).get_table_names()


def test_database_store_round_trips_files_in_chunks_through_optunas_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(storage=open_storage(url))
    store = _db_store(url)
    # Before the first write the table does not exist, and a reader does not make it.
    with pytest.raises(optuna.artifacts.exceptions.ArtifactNotFound, match="no file was ever"):
        store.open_reader("0123abcd")
    assert ARTIFACT_TABLE not in _tables(url)

    monkeypatch.setattr(stores, "ARTIFACT_CHUNK_BYTES", 7)  # many chunks from a small file
    content = bytes(range(256)) * 3
    (tmp_path / "f.bin").write_bytes(content)
    artifact_id = optuna.artifacts.upload_artifact(
        artifact_store=store, file_path=str(tmp_path / "f.bin"), study_or_trial=study
    )
    with sqlalchemy.create_engine(url).connect() as conn:
        rows = conn.execute(
            sqlalchemy.text(f"SELECT count(*) FROM {ARTIFACT_TABLE} WHERE artifact_id = :a"),
            {"a": artifact_id},
        ).scalar_one()
    assert rows == -(-len(content) // 7)
    optuna.artifacts.download_artifact(
        artifact_store=store, artifact_id=artifact_id, file_path=str(tmp_path / "back.bin")
    )
    assert (tmp_path / "back.bin").read_bytes() == content
    with store.open_reader(artifact_id) as fh:  # small reads across chunk boundaries
        assert fh.read(5) + fh.read(11) + fh.read() == content

    store.write("e" * 8, io.BytesIO(b""))  # an empty file exists, and reads empty
    with store.open_reader("e" * 8) as fh:
        assert fh.read() == b""
    store.remove(artifact_id)
    with pytest.raises(optuna.artifacts.exceptions.ArtifactNotFound):
        store.open_reader(artifact_id)


# --- which store a study uses ----------------------------------------------------------------


def _spec_text(tmp_path: Path, artifacts: str) -> Path:
    path = tiny_study(tmp_path, "st", n_trials=2, extra=f"\n[artifacts]\n{artifacts}\n")
    return path


@pytest.mark.parametrize(
    ("artifacts", "expected"),
    [
        (
            'store = "disk"',
            "[artifacts] `store` must be 'database', 'folder' or 's3://BUCKET/PREFIX', but got "
            "'disk'",
        ),
        (
            'store = "s3://Bad_Bucket/x"',
            "[artifacts] `store` 's3://Bad_Bucket/x' names no valid S3 bucket ('Bad_Bucket': 3 to "
            "63 lowercase letters, digits, dots and hyphens); write s3://BUCKET or "
            "s3://BUCKET/PREFIX",
        ),
        (
            'store = "s3://AKIAXXX:hunter2@bucket/x"',
            "[artifacts] `store` must not hold credentials (an s3:// URL with '@' or ':' before "
            "the bucket); give them as AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the "
            "environment",
        ),
        (
            'store = "database"\npath = "/mnt/x"',
            "[artifacts] `path` names a folder, but `store` is 'database'; remove one of them",
        ),
    ],
)
def test_a_bad_store_is_one_line_naming_file_key_and_value(
    tmp_path: Path, artifacts: str, expected: str
) -> None:
    path = _spec_text(tmp_path, artifacts)
    result = hpo("create", path, "--storage", f"sqlite:///{tmp_path}/x.db")
    one_line_error(result, f"{path}: {expected}")
    assert "hunter2" not in result.output
    assert not (tmp_path / "x.db").exists()


def test_the_store_is_fixed_at_creation_and_kept(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/k.db"
    spec = load_spec(_spec_text(tmp_path, "top_k = 1"))
    study, _ = create_or_load_study(spec, open_storage(url))
    assert stored_spec(study).artifacts.store == "folder"  # the default for SQLite
    # A file naming another store is refused on resume; one naming none keeps the study's.
    with pytest.raises(HpoError, match="keeps its artifacts in store 'folder', but this run"):
        create_or_load_study(spec.replace(artifacts=spec.artifacts.__class__(store="database")),
                             open_storage(url))  # fmt: skip
    update_stored_spec(study, spec)
    assert stored_spec(study).artifacts.store == "folder"
    # A study stored before stores were chosen (no `store` in its spec) keeps its folder.
    raw = dict(study.user_attrs[SPEC_ATTR])
    raw["artifacts"] = {k: v for k, v in raw["artifacts"].items() if k != "store"}
    assert stores.store_setting(spec_from_dict(raw)) == "folder"


@pytest.mark.postgres
def test_a_postgresql_study_stored_before_stores_resumes_with_its_folder(
    tmp_path: Path, pg_url: str
) -> None:
    """New PostgreSQL studies default to the database store; one stored before there were
    stores keeps its folder, and resuming it with a study file that names no store works."""
    spec = load_spec(_spec_text(tmp_path, "top_k = 1"))
    study, _ = create_or_load_study(spec, open_storage(pg_url))
    assert stored_spec(study).artifacts.store == "database"
    raw = dict(study.user_attrs[SPEC_ATTR])
    raw["artifacts"] = {k: v for k, v in raw["artifacts"].items() if k != "store"}
    study.set_user_attr(SPEC_ATTR, raw)  # as an older hpo stored it
    resumed, created = create_or_load_study(spec, open_storage(pg_url))
    assert not created
    assert stores.store_setting(stored_spec(resumed)) == "folder"
    with pytest.raises(HpoError, match="keeps its artifacts in store 'folder', but this run"):
        create_or_load_study(spec.replace(artifacts=spec.artifacts.__class__(store="database")),
                             open_storage(pg_url))  # fmt: skip


# --- stored data -----------------------------------------------------------------------------


def test_hpo_run_refuses_a_local_file_that_differs_from_the_stored_data(tmp_path: Path) -> None:
    """The study's workers train on the stored rows: a run on an edited local copy would mix
    two data sets into one study."""
    study_file = _spec_text(tmp_path, 'store = "database"')
    url = f"sqlite:///{tmp_path}/r.db"
    created = hpo("create", study_file, "--storage", url, "--store-data")
    assert created.exit_code == 0, created.output
    csv = tmp_path / "tiny.csv"
    before = hashlib.sha256(csv.read_bytes()).hexdigest()
    csv.write_text(csv.read_text().replace("\n", "\n", 1) + csv.read_text().splitlines()[1] + "\n")
    after = hashlib.sha256(csv.read_bytes()).hexdigest()
    one_line_error(
        hpo("run", study_file, "--storage", url),
        f"{csv}: its content differs from the data stored with study 'st' (sha256 "
        f"{after[:12]} here, {before[:12]} stored from tiny.csv); train on the same file, or "
        "use a new name (--name)",
    )
    assert optuna.load_study(study_name="st", storage=url).get_trials()[0].state.name == "WAITING"


def test_stored_data_is_fetched_checked_and_a_damaged_copy_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path}/d.db"
    spec = load_spec(_spec_text(tmp_path, 'store = "database"'))
    study, _ = create_or_load_study(spec, open_storage(url))
    place = stores.study_place(study, url, create=True)
    record, now = stores.store_data(study, spec, place)
    content = (tmp_path / "tiny.csv").read_bytes()
    assert now and record.sha256 == hashlib.sha256(content).hexdigest()
    assert study.user_attrs[DATA_ATTR]["bytes"] == len(content)
    assert stores.store_data(study, spec, place)[1] is False  # stored already: kept
    assert stores.store_data(study, spec, place, data_path=str(tmp_path / "tiny.csv"))[1] is False

    fetched = stores.data_for(study, None, url=url)
    assert fetched is not None and Path(fetched).read_bytes() == content
    assert Path(fetched).parent == tmp_path / "data-cache" / "stored"

    changed = tmp_path / "changed.csv"
    changed.write_bytes(content.replace(b"\n", b"\r\n"))
    with pytest.raises(HpoError, match=r"already stores other data .* never change"):
        stores.store_data(study, spec, place, data_path=str(changed))
    with pytest.raises(HpoError) as refused:
        stores.data_for(study, str(changed), url=url)
    assert str(refused.value) == (
        f"{changed}: its content differs from the data stored with study 'st' (sha256 "
        f"{hashlib.sha256(changed.read_bytes()).hexdigest()[:12]} here, {record.sha256[:12]} "
        "stored from tiny.csv); leave out --data to train on the stored copy"
    )
    assert stores.data_for(study, str(tmp_path / "tiny.csv"), url=url) == str(tmp_path / "tiny.csv")

    Path(fetched).unlink()
    with sqlalchemy.create_engine(url).begin() as conn:  # a bit flipped in the stored copy
        conn.execute(
            sqlalchemy.text(f"UPDATE {ARTIFACT_TABLE} SET data = :d WHERE artifact_id = :a"),
            {"d": content[:-1] + b"X", "a": record.artifact_id},
        )
    with pytest.raises(HpoError, match=r"has sha256 \w{12}, but the study recorded .*damaged"):
        stores.data_for(study, None, url=url)
    assert not list((tmp_path / "data-cache" / "stored").iterdir())  # no partial file left


# --- an S3 bucket on a real S3-protocol server ------------------------------------------------

S3_SECRET = "s3-secret-never-printed-0123456789"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def s3_server() -> Iterator[dict[str, str]]:
    """moto's standalone S3 server in its own process on a free port, with bucket
    ``hpo-test``; yields the AWS environment variables that reach it."""
    server = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which(
        "moto_server"
    )
    if server is None:
        pytest.fail("moto_server is missing: pip install 'moto[server]' (in the dev extras)")
    port = _free_port()
    process = subprocess.Popen(
        [server, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "hpo-test-key",
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.2)
        with pytest.MonkeyPatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            _s3().create_bucket(Bucket="hpo-test")
        yield env
    finally:
        process.terminate()
        process.wait(timeout=30)


def _s3() -> Any:
    import boto3

    return boto3.client("s3")


def test_s3_store_holds_the_data_and_files_under_its_prefix_and_never_shows_the_secret(
    s3_server: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    url = f"sqlite:///{tmp_path}/s3.db"
    path = _spec_text(tmp_path, 'store = "s3://hpo-test/runs/one/"')
    result = hpo("create", path, "--storage", url, "--store-data")
    assert result.exit_code == 0, result.output
    assert "artifacts: s3://hpo-test/runs/one/" in result.stdout
    study = optuna.load_study(study_name="st", storage=url)
    record = stores.stored_data(study)
    assert record is not None
    listed = _s3().list_objects_v2(Bucket="hpo-test", Prefix="runs/one/")
    assert [o["Key"] for o in listed["Contents"]] == [f"runs/one/{record.artifact_id}"]
    fetched = stores.data_for(study, None, url=url)
    assert fetched is not None
    assert Path(fetched).read_bytes() == (tmp_path / "tiny.csv").read_bytes()
    stored = json.dumps(
        [study.user_attrs, compat.storage_of(study).get_study_system_attrs(compat.study_id(study))]
    )
    assert S3_SECRET not in result.output + stored

    # A file gone from the bucket: named, with why.
    place = stores.study_place(study, url, create=False)
    assert stores.artifact_problem(place, record.artifact_id) is None
    _s3().delete_object(Bucket="hpo-test", Key=f"runs/one/{record.artifact_id}")
    assert stores.artifact_problem(place, record.artifact_id) == "not found"
    Path(fetched).unlink()
    with pytest.raises(HpoError, match=r"cannot be read from s3://hpo-test/runs/one/: not found"):
        stores.data_for(study, None, url=url)

    # A bucket that is not there: `hpo create` says so in one line.
    missing = _spec_text(tmp_path, 'store = "s3://no-such-bucket"')
    result = hpo("create", missing, "--storage", f"sqlite:///{tmp_path}/m.db", "--name", "m")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.splitlines()[-1] == (
        "Error: artifact store s3://no-such-bucket: cannot write to it (NoSuchBucket: An error "
        "occurred (NoSuchBucket) when calling the PutObject operation: The specified bucket "
        "does not exist)"
    )
    assert optuna.get_all_study_names(f"sqlite:///{tmp_path}/m.db") == []  # nothing created
    assert S3_SECRET not in result.output


def test_hpo_run_probes_the_bucket_before_it_creates_the_study(
    s3_server: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bucket that cannot be written: one line from `hpo run` (as from `hpo create`), and no
    study that would train and then save no file."""
    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    url = f"sqlite:///{tmp_path}/p.db"
    missing = _spec_text(tmp_path, 'store = "s3://no-such-bucket"')
    result = hpo("run", missing, "--storage", url)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.splitlines()[-1] == (
        "Error: artifact store s3://no-such-bucket: cannot write to it (NoSuchBucket: An error "
        "occurred (NoSuchBucket) when calling the PutObject operation: The specified bucket "
        "does not exist)"
    )
    assert optuna.get_all_study_names(url) == []
    assert S3_SECRET not in result.output


# --- several machines, one PostgreSQL study --------------------------------------------------

# Fixed alpha ranges: no alpha windows to measure before the first trial (tens of seconds).
FIXED_WINDOWS = "\n[search]\nl1 = [1e-5, 1e-1]\nl2 = [1e-5, 1e-1]\n"


def _machine(root: Path, name: str) -> Path:
    home = root / name
    (home / "home").mkdir(parents=True)
    return home


# Variables that name a user's own state outside HOME (configuration, caches, credentials):
# on another machine they would be that machine's, so no machine here inherits them.
_HOME_STATE = (
    "KERAS_HOME",
    "MPLCONFIGDIR",
    "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "XDG_STATE_HOME",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "PYTHONUSERBASE",
    "PYENV_ROOT",
)


def _under(value: str, folders: list[str]) -> bool:
    return any(
        part == folder or part.startswith(folder.rstrip("/") + "/")
        for part in value.split(os.pathsep)
        for folder in folders
    )


def _machine_env(url: str, home: Path, shared: list[str], **extra: str) -> dict[str, str]:
    """A machine's environment: its own HOME and ./data, nothing that names the HOMEs it
    shares this test's machine with (``shared``): no state variable, no PATH entry there."""
    env = {
        key: value
        for key, value in hpo_env(url, **extra).items()
        if key not in _HOME_STATE and (key == "PATH" or not _under(value, shared))
    }
    env["PATH"] = os.pathsep.join(
        part for part in env.get("PATH", "").split(os.pathsep) if not _under(part, shared)
    )
    env["HOME"] = str(home / "home")
    env.pop("HPO_DATA_DIR", None)  # each machine's own ./data
    assert not [key for key, value in env.items() if _under(value, shared)]
    return env


def _poisoned_home(folder: Path) -> dict[str, bytes]:
    """A HOME whose state breaks any process that reads it (Keras refuses its config, hpo's
    trials-per-batch cache is no JSON); returns its files, to check none changed."""
    files = {
        ".keras/keras.json": b'{"floatx": "shared-home-was-read"}',
        ".cache/hpo/trials-per-batch.json": b"shared home was read",
        ".config/matplotlib/matplotlibrc": b"backend: shared-home-was-read\n",
        ".aws/credentials": b"[default]\naws_access_key_id = SHARED-HOME-WAS-READ\n",
    }
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return files


@contextlib.contextmanager
def _dashboard(directory: Path, env: dict[str, str]) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "hpo", "dashboard", "--port", "0"],
        cwd=directory,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"open (http://127\.0\.0\.1:\d+)/dashboard", line)
        assert match, line + (process.stderr.read() if process.stderr else "")
        yield match[1], process
    finally:
        process.terminate()
        process.wait(timeout=30)


def _get(url: str) -> tuple[int, bytes]:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return int(response.status), bytes(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.slow  # five hpo processes, one of them training, one exporting
@pytest.mark.postgres
@pytest.mark.parametrize("kind", ["database", "s3", "folder"])
def test_three_machines_share_data_and_artifacts_through_the_store(
    pg_url: str,
    tmp_path: Path,
    kind: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each machine has its own working directory and HOME. The HOME this test runs with is
    replaced by one whose state breaks any process reading it, and no machine's environment
    names it (or the real one): nothing a machine does may come from a HOME it shares. The
    folder store stands for a shared mount at the same path on every machine: fixed as an
    absolute path when A creates the study, it is where B writes and C reads."""
    a, b, c = (_machine(tmp_path, m) for m in ("a", "b", "c"))
    shared_home = tmp_path / "shared-home"
    poison = _poisoned_home(shared_home)
    shared = [str(Path.home()), str(shared_home)]
    monkeypatch.setenv("HOME", str(shared_home))  # what a machine would inherit
    aws: dict[str, str] = {}
    store, where = "", "the study's database"  # the default for a PostgreSQL study
    if kind == "s3":
        aws = request.getfixturevalue("s3_server")
        for key, value in aws.items():  # for this process's own reads
            monkeypatch.setenv(key, value)
        where = f"s3://hpo-test/{tmp_path.name}"
        store = f'store = "{where}"\n'
    elif kind == "folder":
        store, where = 'store = "folder"\n', str(a / "artifacts")  # A's, made absolute
    study_file = tiny_study(
        a, "travel", n_trials=3, extra=FIXED_WINDOWS + f"\n[artifacts]\ntop_k = 2\n{store}"
    )

    def _env(url: str, home: Path) -> dict[str, str]:
        return _machine_env(url, home, shared, **aws)

    with contextlib.ExitStack() as stack:
        on_a, on_b, on_c = (HpoProcesses(m) for m in (a, b, c))
        for group in (on_a, on_b, on_c):
            stack.callback(group.kill_all)
        created = on_a.run(["create", str(study_file), "--store-data"], env=_env(pg_url, a))
        assert f"artifacts: {where}" in created
        assert re.search(
            rf"data: tiny\.csv \(\d+ bytes, sha256 \w{{12}}\) stored in {where}", created
        )
        content = (a / "tiny.csv").read_bytes()
        (a / "tiny.csv").unlink()  # the data now lives only in the database

        # B: a bare machine, nothing but the name and the URL.
        worker = on_b.run(["worker", "travel"], env=_env(pg_url, b), timeout=240)
        assert "worker ran 3 trials" in worker, worker
        stored = b / "data" / "stored" / f"{hashlib.sha256(content).hexdigest()}.csv"
        assert stored.read_bytes() == content
        assert not (b / "artifacts").exists()  # nothing written beside the worker
        # B's local copy is not recorded as the study's source: the `hpo_data` record says it.
        travel = optuna.load_study(study_name="travel", storage=pg_url)
        assert DATA_SOURCE_ATTR not in travel.user_attrs, travel.user_attrs[DATA_SOURCE_ATTR]

        # ... and with a changed copy of the data, a worker refuses in one line.
        changed = b / "changed.csv"
        changed.write_bytes(content + b"\n")
        done = subprocess.run(
            [sys.executable, "-m", "hpo", "worker", "travel", "--data", str(changed)],
            cwd=b, env=_env(pg_url, b), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 1
        assert (
            done.stderr.strip()
            .splitlines()[-1]
            .startswith(
                f"Error: {changed}: its content differs from the data stored with study 'travel'"
            )
        )
        assert "Traceback" not in done.stderr

        # C: report and export see B's files and data; the dashboard serves them.
        report = on_c.run(["report", "travel", "--out", "r"], env=_env(pg_url, c))
        assert "not read" not in report, report
        page = (c / "r" / "report.html").read_text()
        assert 'alt="confusion matrix of the best trial"' in page
        assert "cannot be read" not in page
        study = optuna.load_study(study_name="travel", storage=pg_url)
        top = sorted(study.trials, key=lambda t: (-t.value, t.number))[:2]
        files = {(t.number, a.filename): a for t in top for a in trial_artifacts(study, t)}
        assert {name for _, name in files} == {
            f"trial-{t.number}-{kind}"
            for t in top
            for kind in ("confusion.png", "fold1.keras", "folds.csv")
        }
        exported = on_c.run(
            ["export", "travel", "--out", "model"], env=_env(pg_url, c), timeout=240
        )
        assert (c / "model" / "model.keras").is_file(), exported

        place = stores.study_place(study, pg_url, create=False)
        with _dashboard(c, _env(pg_url, c)) as (base, _):
            summaries = json.loads(_get(f"{base}/api/studies")[1])["study_summaries"]
            study_id = int(summaries[0]["study_id"])
            trial_ids = {t.number: compat.trial_id(t) for t in study.trials}
            for (number, _name), artifact in files.items():
                status, body = _get(
                    f"{base}/artifacts/{study_id}/{trial_ids[number]}/{artifact.artifact_id}"
                )
                with place.store.open_reader(artifact.artifact_id) as fh:
                    assert (status, body) == (200, fh.read())

        # One file gone from the store: report says which and why.
        gone = files[(top[0].number, f"trial-{top[0].number}-confusion.png")].artifact_id
        place.store.remove(gone)
        again = on_c.run(["report", "travel", "--out", "r2"], env=_env(pg_url, c))
        assert (
            f"not read: trial {top[0].number}: trial-{top[0].number}-confusion.png (artifact "
            f"{gone[:8]}) cannot be read from {where}: not found"
        ) in again
        if aws:
            assert S3_SECRET not in created + worker + report + exported + again
    assert os.listdir(c / "r")
    # Each machine used its own HOME (Keras wrote its configuration there) and the shared one
    # is as it was.
    for machine in (b, c):
        assert (machine / "home" / ".keras" / "keras.json").is_file()
    assert {
        str(path.relative_to(shared_home)): path.read_bytes()
        for path in shared_home.rglob("*")
        if path.is_file()
    } == poison


def test_a_folder_store_is_fixed_at_creation_whatever_directory_a_process_runs_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder named relatively (or ./artifacts on a server database) is the creating
    process's; stored as an absolute path, every later process finds the same one."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    url = f"sqlite:///{tmp_path}/f.db"
    monkeypatch.chdir(a)
    spec = load_spec(_spec_text(a, 'path = "arts"'))
    study, _ = create_or_load_study(spec, open_storage(url))
    assert stored_spec(study).artifacts.path == str(a / "arts")
    monkeypatch.chdir(b)
    # Resumed elsewhere (its budget changed, so its spec is stored again): the folder stays.
    resumed, created = create_or_load_study(spec, open_storage(url))
    assert not created
    update_stored_spec(resumed, spec.replace(budget=spec.budget.__class__(n_trials=5)))
    place = stores.study_place(optuna.load_study(study_name="st", storage=url), url, create=True)
    assert (place.setting, place.directory) == ("folder", a / "arts")
    assert not (b / "arts").exists()

    # The folder beside a SQLite file is fixed by the database's own place: nothing stored,
    # so the two can be moved together.
    beside = load_spec(_spec_text(a, "top_k = 1")).replace(name="beside")
    study, _ = create_or_load_study(beside, open_storage(url))
    assert stored_spec(study).artifacts.path is None
    assert stores.study_place(study, url, create=False).directory == tmp_path / "f-artifacts"

    # A study stored before folders were fixed keeps the folder it had.
    raw = dict(study.user_attrs[SPEC_ATTR])
    raw["artifacts"] = {"top_k": 1, "path": "arts"}
    study.set_user_attr(SPEC_ATTR, raw)
    assert stores.study_place(study, url, create=False).directory == Path("arts")


@pytest.mark.postgres
def test_a_folder_store_on_postgresql_is_the_creating_directorys(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    monkeypatch.chdir(a)
    spec = load_spec(_spec_text(a, 'store = "folder"'))
    study, _ = create_or_load_study(spec, open_storage(pg_url))
    assert stored_spec(study).artifacts.path == str(a / "artifacts")
    monkeypatch.chdir(b)
    joined = optuna.load_study(study_name="st", storage=open_storage(pg_url))
    assert stores.study_place(joined, pg_url, create=True).directory == a / "artifacts"
    assert not (b / "artifacts").exists()


def test_hpo_create_with_missing_data_to_store_creates_nothing(tmp_path: Path) -> None:
    study_file = _spec_text(tmp_path, 'store = "database"')
    (tmp_path / "tiny.csv").unlink()
    url = f"sqlite:///{tmp_path}/c.db"
    one_line_error(
        hpo("create", study_file, "--storage", url, "--store-data"),
        f"{tmp_path / 'tiny.csv'}: data file not found",
    )
    assert optuna.get_all_study_names(url) == []


def test_stored_data_needs_a_file_not_a_dataframe_and_says_so_before_anything_is_stored(
    tmp_path: Path,
) -> None:
    import hpo as api

    spec = load_spec(tiny_study(tmp_path, "frame", n_trials=1))
    spec = spec.replace(data=dataclasses.replace(spec.data, store=True))
    with pytest.raises(HpoError) as refused:
        api.optimize(spec, data=make_frame(), storage=f"sqlite:///{tmp_path}/frame.db")
    assert str(refused.value) == (
        "[data] store = true needs the data as a CSV file, not a DataFrame (the study keeps "
        "the file's bytes for its workers); give data a path"
    )
    assert not (tmp_path / "frame.db").exists()  # nothing stored, not even the database


def test_an_unusable_folder_store_is_one_line_and_no_study(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file where the folder would be")
    for command in ("create", "run"):
        path = _spec_text(tmp_path, 'path = "taken"')
        url = f"sqlite:///{tmp_path}/{command}.db"
        result = hpo(command, path, "--storage", url)
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert result.stderr.splitlines()[-1] == (
            f"Error: {tmp_path / 'taken'}: cannot create the artifact folder (File exists); set "
            "[artifacts] "
            "path to a writable folder"
        ), command
        assert optuna.get_all_study_names(url) == []


def test_stored_data_on_a_bare_machine_hpo_run_refusals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hpo run` on a machine without the CSV, as `hpo worker`: a damaged stored copy and a
    --data file that differs are refused in one line, before anything trains."""
    study_file = _spec_text(tmp_path, 'store = "database"')
    url = f"sqlite:///{tmp_path}/bare.db"
    assert hpo("create", study_file, "--storage", url, "--store-data").exit_code == 0
    content = (tmp_path / "tiny.csv").read_bytes()
    (tmp_path / "tiny.csv").unlink()
    record = stores.stored_data(optuna.load_study(study_name="st", storage=url))
    assert record is not None

    changed = tmp_path / "changed.csv"
    changed.write_bytes(content + b"\n")
    one_line_error(
        hpo("run", study_file, "--storage", url, "--data", changed),
        f"{changed}: its content differs from the data stored with study 'st' (sha256 "
        f"{hashlib.sha256(changed.read_bytes()).hexdigest()[:12]} here, {record.sha256[:12]} "
        "stored from tiny.csv); leave out --data to train on the stored copy",
    )
    with sqlalchemy.create_engine(url).begin() as conn:  # a bit flipped in the stored copy
        conn.execute(
            sqlalchemy.text(f"UPDATE {ARTIFACT_TABLE} SET data = :d WHERE artifact_id = :a"),
            {"d": content[:-1] + b"X", "a": record.artifact_id},
        )
    result = hpo("run", study_file, "--storage", url)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert re.fullmatch(
        r"Error: the data stored with study 'st' \(tiny\.csv, artifact [\w-]+\) in the study's "
        r"database has sha256 \w{12}, but the study recorded \w{12}: the stored copy is damaged",
        result.stderr.splitlines()[-1],
    )
    trials = optuna.load_study(study_name="st", storage=url).get_trials()
    assert [t.state.name for t in trials] == ["WAITING"]  # nothing trained


@pytest.mark.slow  # trains in this process
def test_hpo_run_on_a_bare_machine_trains_on_the_stored_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    study_file = tiny_study(
        a, "bare", n_trials=2, extra=FIXED_WINDOWS + '\n[artifacts]\ntop_k = 1\npath = "arts"\n'
    )
    url = f"sqlite:///{tmp_path}/bare.db"
    monkeypatch.chdir(a)
    assert hpo("create", study_file, "--storage", url, "--store-data").exit_code == 0
    content = (a / "tiny.csv").read_bytes()
    (a / "tiny.csv").unlink()  # study file and database reach machine B; the CSV does not

    monkeypatch.chdir(b)
    monkeypatch.setenv("HPO_DATA_DIR", str(b / "data"))
    result = hpo("run", study_file, "--storage", url)
    assert result.exit_code == 0, result.output
    fetched = b / "data" / "stored" / f"{hashlib.sha256(content).hexdigest()}.csv"
    assert fetched.read_bytes() == content
    assert f"data: {fetched}: " in result.stderr
    # The files go to the study's folder, fixed in A when it was created, not to B's ./arts.
    assert (
        f"note: artifacts go to {a / 'arts'}, the study's folder since it was created (this "
        f"study file's [artifacts] path is {b / 'arts'} from here)"
    ) in result.stderr
    assert not (b / "arts").exists()
    study = optuna.load_study(study_name="bare", storage=url)
    place = stores.study_place(study, url, create=False)
    assert place.directory == a / "arts"
    best = study.best_trial
    assert {a.filename for a in trial_artifacts(study, best)} == {
        f"trial-{best.number}-{kind}" for kind in ("confusion.png", "fold1.keras", "folds.csv")
    }
    for artifact in trial_artifacts(study, best):
        assert stores.artifact_problem(place, artifact.artifact_id) is None
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "COMPLETE"]
    # B's local copy is not recorded as the study's source: the `hpo_data` record says it.
    assert DATA_SOURCE_ATTR not in study.user_attrs


def test_first_found_tries_every_store_and_says_why_none_can_read(tmp_path: Path) -> None:
    """The dashboard's one store over several: a store that fails (not with "not found") does
    not hide a file another one holds; when none can read it, each says why."""
    (tmp_path / "not-a-folder").write_text("x")
    broken = stores.open_place(
        "folder",
        url=f"sqlite:///{tmp_path}/x.db",
        spec=load_spec(_spec_text(tmp_path, f'path = "{tmp_path / "not-a-folder"}"')),
        storage=None,
        create=False,
    )
    url = f"sqlite:///{tmp_path}/held.db"
    storage = open_storage(url)
    holding = stores.open_place("database", url=url, spec=None, storage=storage, create=True)
    holding.store.write("0123abcd", io.BytesIO(b"the file"))
    served = stores.FirstFound([broken, holding])
    with served.open_reader("0123abcd") as fh:
        assert fh.read() == b"the file"

    with pytest.raises(stores.ArtifactUnreadable) as unreadable:
        served.open_reader("4567cdef")
    assert str(unreadable.value) == (
        f"artifact 4567cdef cannot be read: from {tmp_path / 'not-a-folder'}: NotADirectoryError: "
        f"[Errno 20] Not a directory: '{tmp_path / 'not-a-folder' / '4567cdef'}'; from the "
        "study's database: not found"
    )
    with pytest.raises(optuna.artifacts.exceptions.ArtifactNotFound, match="in none of"):
        stores.FirstFound([holding]).open_reader("4567cdef")
