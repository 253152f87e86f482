"""`hpo dashboard`: a real optuna-dashboard process on a real study, read over HTTP and rendered by
headless Chromium; plus the one-line errors and the spec note's hygiene."""

from __future__ import annotations

import io
import json
import os
import queue
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import N_TRIALS, NAME, BuiltStudy, hpo

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]


class Dashboard:
    def __init__(self, line: str, base: str) -> None:
        self.line = line
        self.base = base

    def get(self, path: str) -> tuple[bytes, str]:
        with urllib.request.urlopen(self.base + path, timeout=30) as response:
            return response.read(), response.headers.get("Content-Type", "")

    def json(self, path: str) -> Any:
        return json.loads(self.get(path)[0])


@pytest.fixture(scope="module")
def dashboard(built: BuiltStudy) -> Iterator[Dashboard]:
    """`hpo dashboard --port 0` in its own process, stopped after the module's tests."""
    env = {k: v for k, v in os.environ.items() if k != "HPO_STORAGE"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    process = subprocess.Popen(
        [sys.executable, "-m", "hpo", "dashboard", "--storage", built.url, "--port", "0"],
        cwd=built.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(x) for x in process.stdout or ()], daemon=True
    ).start()
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                line = lines.get(timeout=0.5).rstrip("\n")
                break
            except queue.Empty:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    pytest.fail(
                        f"hpo dashboard printed nothing; stderr: {process.communicate()[1]}"
                    )
        match = re.search(r"open (http://127\.0\.0\.1:(\d+))/dashboard", line)
        assert match, line
        board = Dashboard(line, match.group(1))
        deadline = time.monotonic() + 30
        while True:
            try:
                board.get("/api/meta")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield board
    finally:
        process.terminate()
        process.wait(timeout=30)


def _study_id(board: Dashboard) -> int:
    summaries = board.json("/api/studies")["study_summaries"]
    assert [s["study_name"] for s in summaries] == [NAME]
    return int(summaries[0]["study_id"])


def test_it_says_where_to_open_it(dashboard: Dashboard, built: BuiltStudy) -> None:
    port = dashboard.base.rsplit(":", 1)[1]
    assert dashboard.line == (
        f"optuna-dashboard for {built.url} (artifacts: {built.artifact_dir}): "
        f"open http://127.0.0.1:{port}/dashboard  (Ctrl-C stops it)"
    )
    page, kind = dashboard.get("/dashboard")
    assert kind.startswith("text/html") and b"<script" in page


def test_the_api_shows_attrs_note_intermediate_values_and_artifacts(
    dashboard: Dashboard, built: BuiltStudy
) -> None:
    from PIL import Image

    study_id = _study_id(dashboard)
    detail = dashboard.json(f"/api/studies/{study_id}")
    assert detail["note"]["body"].startswith("## Study `results`")
    assert detail["has_intermediate_values"] is True
    trials = detail["trials"]
    assert len(trials) == N_TRIALS
    for trial in trials:
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        assert {"fold_accuracies", "fold_std", "plan", "seed", "seconds", "engine"} <= set(attrs)
        assert len(json.loads(attrs["fold_accuracies"])) == 3
        assert attrs["engine"] == "reference"
        assert [v["step"] for v in trial["intermediate_values"]] == [1, 2]
        if "baseline" in attrs:  # trial 0, the unregularized network: no params
            assert trial["params"] == []
        else:
            assert {p["name"] for p in trial["params"]} >= {"h1_placement", "h1_penalty"}
    best = detail["best_trials"][0]
    files = {a["filename"]: a for a in best["artifacts"]}
    n = best["number"]
    assert set(files) == {
        f"trial-{n}-confusion.png",
        f"trial-{n}-fold1.keras",
        f"trial-{n}-folds.csv",
    }
    prefix = f"/artifacts/{study_id}/{best['trial_id']}/"
    png, kind = dashboard.get(prefix + files[f"trial-{n}-confusion.png"]["artifact_id"])
    assert kind == "image/png"
    assert Image.open(io.BytesIO(png)).size[0] >= 400
    table, _ = dashboard.get(prefix + files[f"trial-{n}-folds.csv"]["artifact_id"])
    assert table.decode().splitlines()[0] == "repeat,fold,rows,accuracy"


def _chromium(*args: str) -> subprocess.CompletedProcess[bytes]:
    with tempfile.TemporaryDirectory(prefix="hpo-chromium-") as profile:
        return subprocess.run(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                "--window-size=1400,1000",
                "--virtual-time-budget=10000",
                *args,
            ],
            capture_output=True,
            timeout=120,
            check=False,
        )


@pytest.mark.slow  # a headless browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_chromium_renders_the_study_page_with_its_plots(
    dashboard: Dashboard, tmp_path: Path
) -> None:
    from PIL import Image

    study_id = _study_id(dashboard)
    best = dashboard.json(f"/api/studies/{study_id}")["best_trials"][0]["number"]
    url = f"{dashboard.base}/dashboard/studies/{study_id}"

    dom = _chromium("--dump-dom", url).stdout.decode()
    assert f"{NAME} (id={study_id})" in dom  # the app bar names the study
    for heading in ("History", "Intermediate values", f"Best Trial (number={best})"):
        assert f">{heading}<" in dom, heading
    assert dom.count("js-plotly-plot") >= 3  # history, importance, timeline, intermediate values
    assert dom.count('class="point"') >= N_TRIALS  # the history plot drew every trial

    shot = tmp_path / "study.png"
    _chromium(f"--screenshot={shot}", url)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 1000)
    content = image.crop((80, 70, 1400, 1000))  # below the app bar, right of the side bar
    pixels = list(content.getdata())
    ink = sum(1 for p in pixels if min(p) < 235) / len(pixels)
    # An app shell with a blank content area has one colour there; plots bring hundreds.
    assert len(set(pixels)) > 500 and ink > 0.03, (len(set(pixels)), ink)


@pytest.mark.slow  # a headless browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_chromium_shows_the_best_trials_artifacts(dashboard: Dashboard) -> None:
    study_id = _study_id(dashboard)
    n = dashboard.json(f"/api/studies/{study_id}")["best_trials"][0]["number"]
    dom = _chromium(
        "--dump-dom", f"{dashboard.base}/dashboard/studies/{study_id}/trials?numbers={n}"
    ).stdout.decode()
    assert ">Artifacts<" in dom
    for name in (f"trial-{n}-confusion.png", f"trial-{n}-fold1.keras", f"trial-{n}-folds.csv"):
        assert name in dom
    assert "fold_accuracies" in dom


# --- errors are one line, and passwords never show -------------------------------------------


def test_a_password_in_the_storage_url_is_never_printed() -> None:
    result = hpo("dashboard", "--storage", "postgresql://hpo:s3cret@127.0.0.1:9/hpo")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1].startswith(
        "Error: cannot reach the database at postgresql://hpo:***@127.0.0.1:9/hpo: "
    )
    assert "s3cret" not in result.output


def test_a_busy_port_is_one_clear_error(built: BuiltStudy) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = hpo("dashboard", "--storage", built.url, "--port", str(port))
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: port {port} on 127.0.0.1 is already in use; pick another with --port\n"
    )


def test_a_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    result = hpo("dashboard", "--storage", "sqlite:///nothing.db")
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: storage sqlite:///nothing.db: SQLite file nothing.db does not exist; check the "
        "path in --storage or HPO_STORAGE, or create the study first with `hpo run` or "
        "`hpo create`\n"
    )
    assert not any(p.name.startswith("nothing") for p in tmp_path.iterdir())  # nor its lock


def test_the_spec_note_keeps_secrets_out(tmp_path: Path) -> None:
    from hpo.results.spec_text import spec_markdown
    from hpo.spec import spec_from_dict

    spec = spec_from_dict(
        {
            "study": {"name": "s", "description": "a | b"},
            "data": {
                "url": "https://alice:hunter2@data.example/x.csv?token=abc#frag",
                "path": "cache/x.csv",
                "target": "y",
            },
            "model": {"hidden": [4]},
        }
    )
    note = spec_markdown(spec)
    assert "| source | cache/x.csv, downloaded from https://alice:***@data.example/x.csv |" in note
    assert "hunter2" not in note and "token" not in note and "frag" not in note
    assert "> a \\| b" in note  # a pipe cannot break the Markdown table layout


def test_the_page_and_the_log_name_the_files_it_cannot_read_and_why(
    built: BuiltStudy, tmp_path: Path
) -> None:
    """The study's note is written by the commands that change the study, which cannot know
    what a dashboard on another machine, later, can read: the dashboard checks at start-up,
    logs each file, and shows them at the top of the note it serves (storing nothing). A file
    no store can read is answered in one plain line (404 when none has it, 502 when a store
    failed), not a 500 page and a traceback."""
    import shutil

    import optuna
    import optuna_dashboard

    from hpo.results.artifacts import trial_artifacts

    url = built.copy(tmp_path)
    shutil.copytree(built.artifact_dir, tmp_path / "copy-artifacts")
    study = optuna.load_study(study_name=NAME, storage=url)
    stored_note = optuna_dashboard.get_note(study)
    best = study.best_trial
    files = {a.filename: a for a in trial_artifacts(study, best)}
    png = files[f"trial-{best.number}-confusion.png"]
    table = files[f"trial-{best.number}-folds.csv"]
    (tmp_path / "copy-artifacts" / png.artifact_id).unlink()
    gone = tmp_path / "copy-artifacts" / table.artifact_id
    gone.unlink()
    gone.mkdir()  # a directory where the file was: read fails, but not as "not found"
    folder = tmp_path / "copy-artifacts"
    lines = [
        f"trial {best.number}: {name} (artifact {a.artifact_id[:8]}) cannot be read from "
        f"{folder}: {why}"
        for name, a, why in sorted(
            [
                (png.filename, png, "not found"),
                (
                    table.filename,
                    table,
                    f"IsADirectoryError: [Errno 21] Is a directory: '{gone}'",
                ),
            ],
            key=lambda item: list(files).index(item[0]),
        )
    ]
    env = {k: v for k, v in os.environ.items() if k != "HPO_STORAGE"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    process = subprocess.Popen(
        [sys.executable, "-m", "hpo", "dashboard", "--storage", url, "--port", "0"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"open (http://127\.0\.0\.1:\d+)/dashboard", line)
        assert match, line
        board = Dashboard(line, match[1])
        study_id = _study_id(board)
        note = board.json(f"/api/studies/{study_id}")["note"]["body"]
        title, section = note.split("\n\n", 2)[:2]
        assert title == f"## Study `{NAME}`"
        assert section == "### ⚠ Files this dashboard cannot read"
        for expected in lines:
            assert f"- {expected}\n" in note
        assert note.endswith(stored_note.split("\n", 1)[1].lstrip("\n"))
        assert optuna_dashboard.get_note(study) == stored_note  # nothing written

        prefix = f"{board.base}/artifacts/{study_id}/{compat_trial_id(study, best.number)}/"
        answers = {}
        for artifact in (png, table):
            try:
                urllib.request.urlopen(prefix + artifact.artifact_id, timeout=30)
            except urllib.error.HTTPError as exc:
                answers[artifact.filename] = (exc.code, exc.read().decode())
        assert answers == {
            png.filename: (
                404,
                f"artifact {png.artifact_id} is in none of the stores ({folder})\n",
            ),
            table.filename: (
                502,
                f"artifact {table.artifact_id} cannot be read: from {folder}: IsADirectoryError: "
                f"[Errno 21] Is a directory: '{gone}'\n",
            ),
        }
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    for expected in lines:
        assert f"study {NAME!r}: {expected}" in err
    assert "Traceback" not in err


def compat_trial_id(study: Any, number: int) -> int:
    from hpo.study import optuna_compat as compat

    return int(compat.trial_id(study.trials[number]))
