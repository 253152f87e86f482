"""Every command block of the documentation runs, as a user following the page would run it.

The pages are README.md and ``docs/*.md``. A fenced ``bash`` block is a script (run with
``set -e``); a ``console`` block is a transcript: each ``$ `` line is a command, the lines under
it its output, whose shape (line count, and each line's first words with digits masked) the
real output must keep, so a transcript cannot drift from what the commands print; a ``python``
block is run with the venv's Python. Blocks of any other language (toml, text, output alone)
are not commands.

Directives, HTML comments on the line before a block (invisible on the site):

* ``<!-- docs-test: skip: REASON -->``: not run, and the reason says why (a server that runs
  until stopped, another machine, Docker, the test suite itself);
* ``<!-- docs-test: before: COMMAND -->``: what the page assumes was done first (a finished
  study), run before the block.

Each page runs in its own scratch directory that looks like a checkout (``studies/``,
``examples/``, the course CSV where ``studies/jh-simple.toml`` looks for it), with
``../shared`` beside it, one worker process, and small budgets: ``--epochs 3`` added to
``hpo run``, ``check``, ``create`` and ``nested``; ``--n-trials`` at most 30 (8 where a run
gives none); ``--seeds`` at most 2 and ``--outer`` at most 2. The page's placeholders (a
database host, a data path on a server) become the test's PostgreSQL database and the shared
course CSV (``SUBSTITUTIONS``).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND_LANGUAGES = ("bash", "console", "python")
COURSE_CSV = ROOT.parent / "shared" / "data" / "jh-simple-dataset.csv"
PAGE_TIMEOUT = 600

_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
_DIRECTIVE = re.compile(r"<!-- docs-test: (skip|before): (.+?) -->")


@dataclass
class Block:
    page: str
    line: int
    language: str
    text: str
    skip: str | None = None
    before: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The command blocks of ``page``, each with the directives written just above it."""
    text = page.read_text()
    found = []
    for match in _FENCE.finditer(text):
        language = match.group(1)
        body = match.group(2)
        if language not in COMMAND_LANGUAGES and not (language == "" and body.startswith("$ ")):
            continue
        line = text[: match.start()].count("\n") + 1
        block = Block(page.name, line, language or "console", body)
        above = text[: match.start()].rstrip("\n").split("\n")
        while above and _DIRECTIVE.fullmatch(above[-1].strip()):
            kind, value = _DIRECTIVE.fullmatch(above.pop().strip()).groups()  # type: ignore[union-attr]
            if kind == "skip":
                block.skip = value
            else:
                block.before.insert(0, value)
        found.append(block)
    return found


ALL = [b for page in PAGES for b in blocks(page)]
BY_PAGE = {page.name: [b for b in ALL if b.page == page.name] for page in PAGES}
RUN_PAGES = [name for name, page_blocks in BY_PAGE.items() if any(not b.skip for b in page_blocks)]


# --- small budgets ----------------------------------------------------------------------------

_EPOCHS = ("run", "check", "create", "nested")


def _cap(command: str, option: str, most: int) -> str:
    return re.sub(
        rf"{option}[ =](\d+)", lambda m: f"{option} {min(int(m.group(1)), most)}", command
    )


def small(command: str) -> str:
    """``command`` with the small budgets of the module docstring, if it is an hpo command."""
    words = command.split()
    if len(words) < 2 or not words[0].endswith("hpo"):
        return command
    head, _, comment = command.partition(" #")
    head = _cap(head.rstrip(), "--n-trials", 30)
    head = _cap(head, "--seeds", 2)
    head = _cap(head, "--outer", 2)
    if words[1] in _EPOCHS and "--epochs" not in head:
        head += " --epochs 3"
    if words[1] == "run" and "--n-trials" not in head:
        head += " --n-trials 8"
    return head + (f"  #{comment}" if comment else "")


def substitutions(pg_url: str) -> dict[str, str]:
    return {
        "postgresql://hpo@db.example:5432/hpo": pg_url,
        "/srv/jh.csv": "../shared/data/jh-simple-dataset.csv",
    }


# --- running a page ---------------------------------------------------------------------------


def _scratch(tmp_path: Path) -> Path:
    """A directory that looks like a checkout, with ``../shared`` beside it."""
    work = tmp_path / "checkout"
    work.mkdir()
    for name in ("studies", "examples", "constraints.txt"):
        (work / name).symlink_to(ROOT / name)
    (tmp_path / "shared").symlink_to(COURSE_CSV.parents[1])
    course = COURSE_CSV
    if course.exists():  # where studies/jh-simple.toml looks before downloading it
        (work / "data").mkdir()
        shutil.copy(course, work / "data" / course.name)
    return work


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPO_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        HPO_WORKERS="1", TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1"
    )
    return env


def _run(script: str, cwd: Path, where: str, *, fails: bool = False) -> str:
    """Run ``script``; its output. ``fails``: the page shows it refusing (exit 1)."""
    done = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # in the order a terminal shows them (unbuffered below)
        text=True,
        timeout=PAGE_TIMEOUT,
    )
    output = done.stdout
    assert done.returncode == (1 if fails else 0), (
        f"{where}: exit {done.returncode}\n$ {script}\n{output[-3000:]}"
    )
    return output


def _subst(text: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        text = text.replace(old, new)
    return text


def bash_lines(text: str) -> list[str]:
    """The block's commands, one per line (continuation lines joined)."""
    return [line for line in text.replace("\\\n", " ").split("\n") if line.strip()]


def transcript(text: str) -> list[tuple[str, list[str]]]:
    """``(command, output lines)`` for each ``$ `` line of a console block."""
    steps: list[tuple[str, list[str]]] = []
    for line in text.rstrip("\n").split("\n"):
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps:
            steps[-1][1].append(line)
    return steps


def shape(line: str, words: int = 3) -> str:
    """What a line's content may change without changing its meaning: digits are masked."""
    return " ".join(re.sub(r"\d+", "0", line).split()[:words])


def _noise(line: str) -> bool:
    return not line.strip() or line.startswith(("I0000", "W0000", "WARNING: All log messages"))


def run_block(block: Block, cwd: Path, table: dict[str, str]) -> None:
    for command in block.before:
        _run(small(_subst(command, table)), cwd, f"{block.where} (before)")
    body = _subst(block.text, table)
    if block.language == "python":
        (cwd / "docs_block.py").write_text(body)
        _run(f"{shlex.quote(sys.executable)} docs_block.py", cwd, block.where)
    elif block.language == "bash":
        _run("\n".join(small(line) for line in bash_lines(body)), cwd, block.where)
    else:
        for command, expected in transcript(body):
            fails = bool(expected) and expected[0].startswith("Error:")
            output = _run(small(command), cwd, f"{block.where}: {command}", fails=fails)
            actual = [line for line in output.split("\n") if not _noise(line)]
            assert [shape(x) for x in actual] == [shape(x) for x in expected], (
                f"{block.where}: `{command}` printed\n" + "\n".join(actual)
                + "\n\nbut the page shows\n" + "\n".join(expected)
            )  # fmt: skip


# --- the tests --------------------------------------------------------------------------------


def test_every_command_block_runs_or_says_why_not() -> None:
    assert len(ALL) >= 10, "the extractor found almost no command blocks"
    for block in ALL:
        assert block.skip is None or len(block.skip) > 15, f"{block.where}: a skip needs a reason"
    ran = [b for b in ALL if not b.skip]
    assert len(ran) * 2 >= len(ALL), f"only {len(ran)} of {len(ALL)} command blocks run"
    for block in ALL:  # a skipped block names the test that runs its commands, where one does
        for path in re.findall(r"(?:tests|examples)/[\w./-]+\.py|\.ci/run", block.skip or ""):
            assert (ROOT / path).exists(), f"{block.where}: the skip names {path}, which is gone"


def test_small_budgets_rewrite_only_hpo_commands() -> None:
    assert small("hpo run studies/wine.toml") == "hpo run studies/wine.toml --epochs 3 --n-trials 8"
    assert small("hpo create s.toml --n-trials 200  # note") == (
        "hpo create s.toml --n-trials 30 --epochs 3  # note"
    )
    assert (
        small("hpo rerun x --top 3 --seeds 5 --repeats 2")
        == "hpo rerun x --top 3 --seeds 2 --repeats 2"
    )
    assert small("python -c 'print(1)'") == "python -c 'print(1)'"
    assert transcript("$ a\nx\ny\n$ b\n") == [("a", ["x", "y"]), ("b", [])]
    assert shape("exporting trial 8 of study") == shape("exporting trial 13 of study")
    assert shape("wrote 5 predictions") != shape("refused 5 predictions")


def _needs_postgresql(page: str) -> bool:
    return any("postgresql://hpo@db.example" in b.text for b in BY_PAGE[page] if not b.skip)


def _needs_course_data(page: str) -> bool:
    return any(
        "jh-simple" in b.text or any("jh-simple" in c for c in b.before)
        for b in BY_PAGE[page]
        if not b.skip
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "page",
    [pytest.param(p, marks=pytest.mark.postgres) if _needs_postgresql(p) else p for p in RUN_PAGES],
)
def test_the_page_s_commands_run(page: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if _needs_course_data(page) and not COURSE_CSV.exists():
        pytest.skip(f"needs the course data at {COURSE_CSV} (../shared beside the checkout)")
    cwd = _scratch(tmp_path)
    # The page's placeholder database becomes a fresh one on the test server.
    pg_url = request.getfixturevalue("pg_url") if _needs_postgresql(page) else "unused"
    table = substitutions(pg_url)
    for block in BY_PAGE[page]:
        if not block.skip:
            run_block(block, cwd, table)
