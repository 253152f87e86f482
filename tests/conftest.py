"""Fixtures and helpers shared by the test modules.

- ``_isolated_env`` (autouse): no test sees the developer's HPO_STORAGE or writes into the
  repository; ``hpo run`` trains in one process (``HPO_WORKERS=1``) unless a test says otherwise.
- ``tiny_csv``, ``write_study``: a 90-row learnable table and a study file over it.
- ``built`` (session): one small real study (reference engine, 2 epochs, 5 trials, pruning
  checkpoints, the artifact recorder), trained once per test session and shared, read-only, by
  the artifact, dashboard, report and rerun tests. A test that writes to the study works on its
  own copy of the database: ``url = built.copy(tmp_path)``.
- ``pg_url``, ``processes``: a fresh PostgreSQL database per test on the shared server, and
  ``hpo`` processes that are killed when the test ends (the helpers behind them are in
  ``pg.py``).
- ``own_postgres``: a throwaway PostgreSQL server of the test's own (``initdb`` in a temporary
  directory, a free port), for tests that stop, restart or reconfigure a server; removed at the
  end. Tests never stop or restart the shared server. Such tests carry the ``own_postgres``
  marker.
- ``hpo(...)``: the CLI, invoked in this process.

Helpers are imported by name (``from conftest import make_frame``): ``tests/`` is on sys.path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest
from alone import pytest_configure as _alone_configure
from alone import pytest_runtest_protocol  # noqa: F401  (a hook: pytest finds it by name)
from pg import HpoProcesses, OwnPostgres, own_postgres_server, pg_database

if TYPE_CHECKING:
    from click.testing import Result

    from hpo.results.artifacts import ArtifactRecorder
    from hpo.spec import StudySpec

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

ROOT = Path(__file__).resolve().parents[1]
SHARED_CSV = ROOT.parent / "shared" / "data" / "jh-simple-dataset.csv"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's HPO_STORAGE or dashboard token, or writes into the
    repository. ``hpo run`` trains in one process unless a test asks for more (its default,
    one process per core, would make trial order depend on the machine)."""
    monkeypatch.setenv("HPO_WORKERS", "1")
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    monkeypatch.delenv("HPO_DASHBOARD_TOKEN", raising=False)
    monkeypatch.setenv("HPO_DATA_DIR", str(tmp_path / "data-cache"))
    monkeypatch.chdir(tmp_path)


def hpo(*args: object, env: dict[str, str] | None = None) -> Result:
    """``hpo ARGS...`` through click's test runner, in this process."""
    from click.testing import CliRunner

    from hpo.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def one_line_error(result: Result, expected: str) -> None:
    """``result`` failed on purpose with exit code 1 and exactly one line: ``Error: expected``."""
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert errors == [f"Error: {expected}"]
    assert result.stderr.endswith(f"Error: {expected}\n")
    # Handled: the command exited on purpose. (The runner catches an uncaught exception too,
    # also with exit code 1, and never prints its traceback, so the output cannot show one.)
    assert isinstance(result.exception, SystemExit), result.exc_info


# --- a tiny table and study files over it ----------------------------------------------------


@contextlib.contextmanager
def in_time_zone(zone: str) -> Iterator[None]:
    """This process in time zone ``zone`` (``TZ``) for the block: local times then differ from
    UTC, as on a worker anywhere but on UTC (CI machines are on UTC)."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = zone
    time.tzset()
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = saved
        time.tzset()


def make_frame(n_rows: int = 90, seed: int = 0) -> pd.DataFrame:
    """A small learnable table: two numbers (one with gaps), one text column, three classes."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, n_rows)
    frame = pd.DataFrame(
        {
            "row": np.arange(n_rows),
            "size": label * 2.0 + rng.normal(0, 0.7, n_rows),
            "weight": label * -1.0 + rng.normal(0, 0.7, n_rows) + 10,
            "color": np.where(
                label == 2, "red", np.where(rng.random(n_rows) < 0.5, "blue", "green")
            ),
            "kind": np.array(["x", "y", "z"])[label],
        }
    )
    frame.loc[frame.index % 7 == 3, "weight"] = np.nan
    return frame


@pytest.fixture
def tiny_csv(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.csv"
    make_frame().to_csv(path, index=False)
    return path


def study_toml(
    *,
    name: str,
    data_table: str,
    epochs: int,
    engine: str,
    n_trials: int,
    description: str = "",
) -> str:
    """A study file over the tiny table: 3 folds, hidden [8, 4], batch 16, seeded sampler."""
    about = f'description = "{description}"\n' if description else ""
    return textwrap.dedent(
        """
        [search]
        {search}

        [study]
        name = "{name}"
        {about}
        {data_table}

        [cv]
        folds = 3
        seed = 1

        [model]
        hidden = [8, 4]
        epochs = {epochs}
        batch_size = 16

        [engine]
        {engine}

        [sampler]
        seed = 3
        n_startup_trials = 2

        [budget]
        n_trials = {n_trials}
        """
    ).format(
        name=name,
        about=about,
        data_table=data_table,
        epochs=epochs,
        engine=engine,
        n_trials=n_trials,
        search=FIXED_RANGES,
    )


# The tests' studies search fixed ranges: "auto" (the default) first measures the windows with a
# ladder of plans, which tests/test_windows.py covers; everywhere else it would only cost time.
FIXED_RANGES = "l1 = { low = 1e-6, high = 1e-1 }\nl2 = { low = 1e-6, high = 1e-1 }"


def with_extra(text: str, extra: str) -> str:
    """``extra`` TOML appended to a study file from :func:`study_toml`; the keys of an extra
    ``[search]`` table join the file's own (replacing those of the same name)."""
    extra = textwrap.dedent(extra)
    if "[search]\n" not in extra:
        return text + extra
    before, _, rest = extra.partition("[search]\n")
    lines = rest.split("\n")
    end = next((i for i, line in enumerate(lines) if line.startswith("[")), len(lines))
    mine, after = lines[:end], lines[end:]
    keys = {line.split("=")[0].strip() for line in mine if "=" in line}
    head, _, tail = text.partition("[search]\n")
    search, _, rest_of_file = tail.partition("\n\n")
    kept = [line for line in search.split("\n") if line.split("=")[0].strip() not in keys]
    merged = "\n".join([*kept, *mine]).strip("\n")
    return f"{head}[search]\n{merged}\n\n{rest_of_file}{before}" + "\n".join(after)


def tiny_data_table(csv_path: Path) -> str:
    return f'[data]\npath = "{csv_path}"\ntarget = "kind"\ndrop = ["row"]\n'


@pytest.fixture
def write_study(tmp_path: Path, tiny_csv: Path) -> Callable[..., Path]:
    """Write a study file over ``tiny.csv``; ``extra`` TOML is appended, ``**sections`` replace."""

    def write(
        extra: str = "",
        *,
        name: str = "tiny",
        epochs: int = 3,
        engine: str = "reference",
        data: str | None = None,
        n_trials: int = 3,
    ) -> Path:
        text = study_toml(
            name=name,
            data_table=data if data is not None else tiny_data_table(tiny_csv),
            epochs=epochs,
            engine=f'name = "{engine}"\ntrials_per_batch = 2',
            n_trials=n_trials,
        )
        text = with_extra(text, extra)
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        return path

    return write


# --- the shared results study ----------------------------------------------------------------

NAME = "results"
TOP_K = 2
N_TRIALS = 5


@dataclass(frozen=True)
class BuiltStudy:
    root: Path
    db: Path
    url: str
    spec: StudySpec
    artifact_dir: Path

    def copy(self, dest: Path) -> str:
        """A private copy of the database (tests that write to the study use one)."""
        target = dest / "copy.db"
        shutil.copy(self.db, target)
        return f"sqlite:///{target}"


def write_results_spec(
    root: Path, *, name: str = NAME, extra: str = "", n_trials: int = N_TRIALS
) -> Path:
    """The results study's file in ``root`` (with ``tiny.csv`` beside it); ``extra`` appended."""
    csv_path = root / "tiny.csv"
    if not csv_path.exists():
        make_frame().to_csv(csv_path, index=False)
    text = study_toml(
        name=name,
        description="Tiny study for the results tests",
        data_table=tiny_data_table(csv_path),
        epochs=2,
        engine='name = "reference"\ncheckpoint_every = 1',
        n_trials=n_trials,
    )
    text = with_extra(text, extra)
    path = root / f"{name}.toml"
    path.write_text(text)
    return path


def train_study(
    spec: StudySpec, url: str, *, artifact_dir: Path | None = None
) -> tuple[Any, ArtifactRecorder]:
    """Run ``spec``'s whole budget in this process with the artifact recorder as ``on_result``."""
    from hpo.data import load_dataset, make_fold_set
    from hpo.engines.reference import ReferenceEngine
    from hpo.results.artifacts import ArtifactRecorder
    from hpo.study.creation import create_or_load_study
    from hpo.study.storage import open_storage
    from hpo.study.worker import optimize

    dataset = load_dataset(spec.data)
    folds = make_fold_set(dataset, spec.cv)
    study, _ = create_or_load_study(spec, open_storage(url))
    recorder = ArtifactRecorder(spec, url, folds, dataset=dataset, artifact_dir=artifact_dir)
    # In-process fits: a child process would import TensorFlow a second time (seconds).
    engine = ReferenceEngine(checkpoint_every=spec.engine.checkpoint_every, isolate=False)
    optimize(
        study,
        spec,
        folds,
        engine,
        n_trials=spec.budget.n_trials,
        versions={"tensorflow": "test", "keras": "test"},
        on_result=recorder,
    )
    recorder.finalize(study)
    return study, recorder


def load(url: str, name: str = NAME) -> Any:
    """The study ``name`` at ``url``, as a fresh Optuna handle."""
    import optuna

    return optuna.load_study(study_name=name, storage=url)


def results_study(factory: pytest.TempPathFactory) -> BuiltStudy:
    """The session's results study, in ``results-study/`` of the session's temporary folder.

    Trained there on the first call of the session; later calls find it there. Tests take it
    through the ``built`` fixture; this function only backs fixtures that need it by name.
    """
    from hpo.spec import load_spec

    root = factory.getbasetemp() / "results-study"
    db = root / "hpo.db"
    url = f"sqlite:///{db}"
    trained = root / ".trained"
    if trained.exists():
        spec = load_spec(root / f"{NAME}.toml")
    else:  # first use (or an earlier attempt failed half-way): train it from scratch
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        spec = load_spec(write_results_spec(root, extra=f"[artifacts]\ntop_k = {TOP_K}\n"))
        train_study(spec, url)
        trained.touch()
    return BuiltStudy(root, db, url, spec, root / "hpo-artifacts")


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltStudy:
    """The shared results study, read-only: a test that writes to it uses ``built.copy``."""
    return results_study(tmp_path_factory)


# --- PostgreSQL and hpo processes ------------------------------------------------------------


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty database on the PostgreSQL server (skips when it is not reachable)."""
    with pg_database() as url:
        yield url


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    """A started PostgreSQL server of this test's own, with an empty database at ``.url``.

    The test may ``stop()``, ``start()`` and ``restart()`` it; at the end it is stopped and its
    directory removed, pass or fail. Skips when ``initdb`` is missing, unless
    ``HPO_REQUIRE_OWN_PG=1`` (CI) makes that a failure.
    """
    with own_postgres_server() as server:
        yield server


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest first, so that `pytest -n auto` ends with short tests filling the gaps instead of
    one worker still in a 7-minute test while the others idle: the stop soak, then the other
    slow tests, then the rest (each group in file order; xdist needs the same order in every
    worker, and a stable sort on markers gives it)."""

    def rank(item: pytest.Item) -> int:
        if item.path.name == "test_stop_soak.py":
            return 0
        return 1 if item.get_closest_marker("slow") else 2

    items.sort(key=rank)


def pytest_configure(config: pytest.Config) -> None:
    _alone_configure(config)
    config.addinivalue_line(
        "markers",
        "own_postgres: starts a throwaway PostgreSQL server of its own (initdb, pg_ctl); skips "
        "without them unless HPO_REQUIRE_OWN_PG=1",
    )


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[HpoProcesses]:
    """Starts ``python -m hpo ...`` processes in ``tmp_path``; kills what is left at the end."""
    group = HpoProcesses(tmp_path)
    try:
        yield group
    finally:
        group.kill_all()
