from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from conftest import NAME, ROOT, SHARED_CSV, BuiltStudy, hpo, one_line_error
from pg import hpo_env

from hpo.study.storage import open_storage

COMMANDS = {
    "best",
    "check",
    "create",
    "dashboard",
    "evaluate",
    "export",
    "nested",
    "predict",
    "report",
    "rerun",
    "run",
    "status",
    "trials",
    "worker",
}


def _listed_commands(help_text: str) -> list[str]:
    """The first word of each line in the help's ``Commands:`` section."""
    section = help_text.split("\nCommands:\n", 1)[1]
    names = []
    for line in section.splitlines():
        if not line.startswith("  "):
            break
        if not line.startswith("   "):  # a wrapped description is indented further
            names.append(line.split()[0])
    return names


def test_help_lists_the_commands() -> None:
    result = hpo("--help")
    assert result.exit_code == 0, result.output
    listed = _listed_commands(result.output)
    assert sorted(listed) == sorted(COMMANDS)  # each once, none missing, none extra
    for command in COMMANDS:  # and each one really is a command
        usage = hpo(command, "--help")
        assert usage.exit_code == 0, usage.output
        usage_line = usage.output.splitlines()[0].split()  # Usage: PROG COMMAND [OPTIONS] ...
        assert usage_line[0] == "Usage:" and usage_line[2] == command, usage_line


# --- bad input: one line naming the problem, exit code 1, no traceback -------------------------


def test_missing_data_file(write_study: Callable[..., Path], tmp_path: Path) -> None:
    study = write_study(data=f'[data]\npath = "{tmp_path}/missing.csv"\ntarget = "kind"\n')
    result = hpo("run", study)
    one_line_error(
        result, f"{tmp_path}/missing.csv: data file not found; fix [data] path or pass --data PATH"
    )


def test_missing_data_file_given_on_command_line(
    write_study: Callable[..., Path], tmp_path: Path
) -> None:
    result = hpo("run", write_study(), "--data", "nowhere.csv")
    one_line_error(
        result,
        f"nowhere.csv: data file not found (relative to the working directory {tmp_path}); "
        "fix [data] path or pass --data PATH",
    )


def test_missing_target_column(write_study: Callable[..., Path], tiny_csv: Path) -> None:
    study = write_study(data=f'[data]\npath = "{tiny_csv}"\ntarget = "species"\n')
    result = hpo("run", study)
    one_line_error(
        result,
        f"{tiny_csv}: target column 'species' not found; columns are 'row', 'size', 'weight', 'color', 'kind'",
    )


def test_single_class_target(write_study: Callable[..., Path], tmp_path: Path) -> None:
    path = tmp_path / "one.csv"
    path.write_text("a,b\n1,x\n2,x\n3,x\n")
    study = write_study(data=f'[data]\npath = "{path}"\ntarget = "b"\n')
    one_line_error(
        hpo("run", study),
        f"{path}: target column 'b' has a single class ('x'); classification needs at least 2",
    )


def test_stratified_class_smaller_than_folds(
    write_study: Callable[..., Path], tmp_path: Path
) -> None:
    path = tmp_path / "rare.csv"
    path.write_text(
        "a,b\n" + "".join(f"{i},{'x' if i % 2 else 'y'}\n" for i in range(20)) + "99,z\n"
    )
    study = write_study(data=f'[data]\npath = "{path}"\ntarget = "b"\n')
    study.write_text(study.read_text().replace("seed = 1\n", "seed = 1\nstratified = true\n", 1))
    one_line_error(
        hpo("run", study),
        f"{path}: class 'z' has 1 row, fewer than folds=3; stratified folds need every class in "
        'each fold: drop it ([data] drop_classes = ["z"]) or merge it into another class ([data] '
        'merge_classes = { NAME = ["z"] }), use fewer folds, or set [cv] stratified = false',
    )


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "epochs = 3",
            "epochs = 3\nepoch = 4",
            "unknown key `model.epoch` (did you mean `epochs`?); allowed: hidden, activation, optimizer, learning_rate, epochs, batch_size, builder, builder_path, builder_signature",
        ),
        ("epochs = 3", "epochs = 0", "[model] `epochs > 0` must hold, but got (epochs=0)"),
        ("folds = 3", "folds = 1", "[cv] `folds >= 2` must hold, but got (folds=1)"),
        (
            "l1 = { low = 1e-6, high = 1e-1 }",
            "l1 = { low = 0.0, high = 0.1 }",
            "`search.l1`: `low > 0` must hold for a log range, but got (low=0.0)",
        ),
        (
            "l2 = { low = 1e-6, high = 1e-1 }",
            "l2 = { low = 0.1, high = 0.001 }",
            "`search.l2`: `low <= high` must hold, but got (low=0.1, high=0.001)",
        ),
        (
            "l1 = { low = 1e-6, high = 1e-1 }",
            'l1 = "automatic"',
            '`search.l1` must be "auto", "off", [low, high] or { low = ..., high = ... }, but got '
            "'automatic'",
        ),
        (
            "n_startup_trials = 2",
            'n_startup_trials = "some"',
            '[sampler] `n_startup_trials` must be "auto" (fitted to the budget) or a whole number '
            ">= 0, but got 'some'",
        ),
        (
            "seed = 3",
            'seed = 3\nstartup = "sobol"',
            "[sampler] `startup` must be one of 'qmc', 'random', but got 'sobol'",
        ),
        (
            "n_trials = 3",
            'n_trials = 3\nearly_stop = "noise"',
            "[budget] `early_stop` must be one of 'none', 'within-noise', but got 'noise'",
        ),
    ],
)
def test_bad_study_file_values(
    write_study: Callable[..., Path], old: str, new: str, expected: str
) -> None:
    study = write_study()
    study.write_text(study.read_text().replace(old, new, 1))
    one_line_error(hpo("run", study), f"{study}: {expected}")


def test_bad_epochs_on_the_command_line(write_study: Callable[..., Path]) -> None:
    study = write_study()
    one_line_error(
        hpo("run", study, "--epochs", "-1"), "--epochs must be a whole number >= 1, but got -1"
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "not-a-url",
            "storage URL 'not-a-url' is malformed; expected sqlite:///FILE.db or postgresql://USER@HOST[:PORT]/DATABASE",
        ),
        (
            "mysql://u:secret@h/db",
            "storage URL 'mysql://u:***@h/db': unsupported scheme 'mysql'; expected sqlite:///FILE.db or postgresql://USER@HOST[:PORT]/DATABASE",
        ),
        (
            "postgresql://u:secret@127.0.0.1",
            "storage URL 'postgresql://u:***@127.0.0.1' names no database; expected sqlite:///FILE.db or postgresql://USER@HOST[:PORT]/DATABASE",
        ),
    ],
)
def test_malformed_storage_url(write_study: Callable[..., Path], url: str, expected: str) -> None:
    one_line_error(hpo("run", write_study(), "--storage", url), expected)
    one_line_error(hpo("best", "tiny", "--storage", url), expected)


def test_unreachable_database_hides_the_password(write_study: Callable[..., Path]) -> None:
    result = hpo("run", write_study(), "--storage", "postgresql://hpo:s3cret@127.0.0.1:9/hpo")
    assert result.exit_code == 1
    last = result.stderr.splitlines()[-1]
    assert last.startswith(
        "Error: cannot reach the database at postgresql://hpo:***@127.0.0.1:9/hpo: "
    )
    assert "s3cret" not in result.output


def test_unknown_study_name_lists_what_is_there(tmp_path: Path) -> None:
    open_storage(f"sqlite:///{tmp_path}/empty.db")  # a database with no study in it
    one_line_error(
        hpo("best", "ghost", "--storage", f"sqlite:///{tmp_path}/empty.db"),
        f"no study named 'ghost' in sqlite:///{tmp_path}/empty.db (it holds no studies)",
    )


def test_debug_shows_the_traceback(write_study: Callable[..., Path]) -> None:
    result = hpo("--debug", "run", write_study(), "--data", "nowhere.csv")
    assert result.exit_code == 1
    assert isinstance(result.exception, Exception)
    assert "data file not found" in str(result.exception)


# --- end to end on SQLite ------------------------------------------------------------------


def test_run_resume_best_and_trials(write_study: Callable[..., Path], tmp_path: Path) -> None:
    study = write_study(n_trials=2)
    storage = f"sqlite:///{tmp_path}/e2e.db"
    first = hpo("run", study, "--storage", storage)
    assert first.exit_code == 0, first.output
    assert "ran 2 trials (0 pruned, 0 failed)" in first.stdout
    assert f"stored in {storage} as study 'tiny'" in first.stdout
    assert "study 'tiny': created; 2 trials budgeted, 2 to run" in first.stderr
    assert "fold 3/3 accuracy" in first.stderr

    second = hpo("run", study, "--storage", storage, "--n-trials", "4")
    assert second.exit_code == 0, second.output
    assert "study 'tiny': resumed; 4 trials budgeted, 2 to run" in second.stderr
    assert "ran 2 trials (0 pruned, 0 failed)" in second.stdout
    status = hpo("status", "tiny", "--storage", storage)  # the budget in use is the stored one
    assert "budget: 4 of 4 trials finished" in status.stdout, status.output

    listed = json.loads(hpo("trials", "tiny", "--storage", storage, "--format", "json").stdout)
    assert [t["number"] for t in listed] == [0, 1, 2, 3]
    assert all(t["state"] == "COMPLETE" for t in listed)
    for t in listed:
        attrs = t["user_attrs"]
        assert len(attrs["fold_accuracies"]) == 3
        assert attrs["engine"] == "reference" and attrs["epochs"] == 3
        assert set(attrs["plan"]) == {"l1_activity", "l2_activity", "l1_kernel", "l2_kernel"}
        assert {"seed", "fold_std", "seconds", "tensorflow", "keras"} <= set(attrs)
        assert t["value"] == pytest.approx(sum(attrs["fold_accuracies"]) / 3, abs=0.02)
        if t["number"] == 0:  # the unregularized baseline: no params
            assert attrs["baseline"] is True and t["params"] == {}
        else:
            assert {"h1_placement", "h1_penalty", "h2_placement", "h2_penalty"} <= set(t["params"])

    best = json.loads(hpo("best", "tiny", "--storage", storage, "--format", "json").stdout)
    assert best["value"] == max(t["value"] for t in listed)

    rows = list(
        csv.DictReader(
            io.StringIO(hpo("trials", "tiny", "--storage", storage, "--format", "csv").stdout)
        )
    )
    assert [int(r["number"]) for r in rows] == [0, 1, 2, 3]
    assert float(rows[best["number"]]["value"]) == pytest.approx(best["value"])

    table = hpo("trials", "tiny", "--storage", storage).stdout.splitlines()
    assert table[0].split()[:3] == ["number", "state", "value"] and len(table) == 5

    text = hpo("best", "tiny", "--storage", storage)
    assert (
        text.exit_code == 0
        and f"best: trial {best['number']}, accuracy {best['value']:.4f}" in text.stdout
    )


@pytest.mark.slow  # a third `hpo run` with its training process (the quick run has two)
def test_default_storage_is_a_sqlite_file_in_the_working_directory(
    write_study: Callable[..., Path], tmp_path: Path
) -> None:
    result = hpo("run", write_study(n_trials=1))
    assert result.exit_code == 0, result.output
    assert (
        "storage: sqlite:///hpo.db (default; choose with --storage or HPO_STORAGE)" in result.stderr
    )
    assert (tmp_path / "hpo.db").exists()
    env_result = hpo("best", "tiny", env={"HPO_STORAGE": "sqlite:///hpo.db"})
    assert env_result.exit_code == 0 and "best: trial 0" in env_result.stdout


# Runs `hpo ARGS` and says, once the command has ended, whether TensorFlow was imported (in a
# `finally`: the process ends without running exit functions registered before hpo's own).
_IMPORTS_TF = (
    "import sys\n"
    "from hpo._entry import main\n"
    "sys.argv = ['hpo', *sys.argv[1:]]\n"
    "try:\n"
    "    main()\n"
    "finally:\n"
    "    print('tensorflow imported:', 'tensorflow' in sys.modules, flush=True)\n"
)


@pytest.mark.slow  # two more hpo processes; the quick run resumes a study in-process
def test_a_finished_study_resumes_without_starting_tensorflow(
    write_study: Callable[..., Path], tmp_path: Path
) -> None:
    """`hpo run` or `hpo worker` on a finished budget imports no TensorFlow (seconds of
    start-up for nothing) and still says what it did."""
    study = write_study(n_trials=2, engine="stacked")
    storage = f"sqlite:///{tmp_path}/done.db"
    assert hpo("run", study, "--storage", storage).exit_code == 0
    for args in (["run", str(study)], ["worker", "tiny"]):
        done = subprocess.run(
            [sys.executable, "-c", _IMPORTS_TF, *args, "--storage", storage],
            capture_output=True,
            text=True,
            env=hpo_env(storage),
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert "ran 0 trials (0 pruned, 0 failed)" in done.stdout + done.stderr
        assert "tensorflow imported: False" in done.stdout, (args, done.stdout[-500:])


# Runs `hpo ARGS` in a process whose interpreter teardown would take a minute: an object that
# the teardown deletes sleeps, standing in for TensorFlow's modules and threads (a CPU second,
# and several seconds under load, after the command's last line).
_SLOW_TEARDOWN = (
    "import sys, time\n"
    "from hpo._entry import main\n"
    "class Slow:\n"
    "    def __del__(self, sleep=time.sleep):  # bound now: the teardown empties modules\n"
    "        sleep(60)\n"
    "keep = Slow()\n"
    "sys.argv = ['hpo', *sys.argv[1:]]\n"
    "main()\n"
)


def test_a_command_ends_when_it_is_done_without_the_interpreter_s_teardown(
    built: BuiltStudy,
) -> None:
    env = {k: v for k, v in hpo_env(built.url).items() if k != "PYTHONUNBUFFERED"}
    for args, code in ((["best", NAME], 0), (["best", "nosuch"], 1)):
        done = subprocess.run(
            [sys.executable, "-c", _SLOW_TEARDOWN, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,  # the teardown's sleep would take 60
        )
        assert done.returncode == code, done.stderr[-2000:]
        # All of the output, block-buffered on a pipe, flushed before the end: as in-process.
        shown = hpo(*args, "--storage", built.url)
        assert (done.stdout, done.stderr) == (shown.stdout, shown.stderr)
    assert shown.stderr.startswith("Error: no study named 'nosuch'")


def test_resume_with_a_different_protocol_is_refused(
    write_study: Callable[..., Path], tmp_path: Path
) -> None:
    storage = f"sqlite:///{tmp_path}/p.db"
    assert hpo("run", write_study(n_trials=1), "--storage", storage).exit_code == 0
    result = hpo("run", write_study(n_trials=2), "--storage", storage, "--epochs", "4")
    one_line_error(
        result,
        "study 'tiny' was created with model.epochs=3, but this run has 4; use the study's settings or a new name (--name)",
    )


@pytest.mark.slow  # the course data set: 2000 rows, 5 folds
@pytest.mark.skipif(not SHARED_CSV.exists(), reason="needs ../shared/data/jh-simple-dataset.csv")
def test_course_study_on_the_shared_data_set(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/course.db"
    result = hpo(
        "run",
        ROOT / "studies" / "jh-simple.toml",
        "--data",
        SHARED_CSV,
        "--storage",
        storage,
        "--n-trials",
        "2",
        "--epochs",
        "2",
        "--engine",
        "reference",
    )
    assert result.exit_code == 0, result.output
    assert (
        "2000 rows, 12 feature columns (47 network inputs), 7 classes; 5-fold CV" in result.stderr
    )
    listed = json.loads(hpo("trials", "jh-simple", "--storage", storage, "--format", "json").stdout)
    assert len(listed) == 2
    assert all(len(t["user_attrs"]["fold_accuracies"]) == 5 for t in listed)
    assert all(0.3 < t["value"] < 0.8 for t in listed)


def test_an_in_process_call_gives_the_callers_signal_handlers_back(tmp_path: Path) -> None:
    """Only `hpo` as a process of its own ignores signals once its command is over; a caller
    in the same process (a notebook, these tests) keeps Ctrl-C."""
    import signal

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    result = hpo("best", "nothing", "--storage", f"sqlite:///{tmp_path / 'none.db'}")
    assert result.exit_code == 1
    assert {sig: signal.getsignal(sig) for sig in before} == before


@pytest.mark.slow  # two runs; resuming is also in test_run_resume_best_and_trials
def test_a_resumed_seeded_study_explores_on_instead_of_repeating_itself(
    write_study: Callable[..., Path],
) -> None:
    """With `[sampler] seed`, each resume must not replay the random start-up proposals."""
    path = write_study(engine="stacked", epochs=1, n_trials=1)
    # Random start-up proposals throughout: the ones a restarted random stream would repeat.
    path.write_text(path.read_text().replace("n_startup_trials = 2", "n_startup_trials = 10"))
    for n in (2, 3, 4):
        assert hpo("run", path, "--n-trials", n).exit_code == 0
    study = optuna.load_study(study_name="tiny", storage="sqlite:///hpo.db")
    proposed = [tuple(sorted(t.params.items())) for t in study.trials if t.params]
    assert len(proposed) == 3 and len(set(proposed)) == 3, proposed


def test_a_bare_name_where_a_study_file_belongs_gets_a_hint(tmp_path: Path) -> None:
    one_line_error(
        hpo("run", "wine"),
        "wine: study file not found; give a study file such as studies/wine.toml (a study "
        "stored under that name: `hpo best wine`)",
    )
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "wine.toml").write_text("")
    one_line_error(
        hpo("run", "wine"),
        "wine: study file not found; did you mean studies/wine.toml? (a study stored under "
        "that name: `hpo best wine`)",
    )
    one_line_error(hpo("run", "gone.toml"), "gone.toml: study file not found")


def test_builder_signature_is_not_a_study_file_key(write_study: Callable[..., Path]) -> None:
    path = write_study()
    path.write_text(path.read_text().replace("[model]\n", '[model]\nbuilder_signature = "x"\n'))
    one_line_error(
        hpo("run", path),
        f"{path}: [model] `builder_signature` is not a study-file key (hpo records it on the "
        "study: a fingerprint of the model your builder makes); remove it",
    )
