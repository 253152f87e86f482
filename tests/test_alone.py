"""The ``alone`` marker (``tests/alone.py``) keeps a test by itself under pytest-xdist: checked
in a suite of its own, two workers, where each test records when it ran."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

_SUITE = """
import time
from pathlib import Path

import pytest

LOG = Path(__file__).parent / "ran.log"


def ran(name):
    started = time.monotonic()
    time.sleep(0.4)
    with LOG.open("a") as log:
        log.write(f"{name} {started} {time.monotonic()}\\n")


@pytest.mark.alone
def test_alone():
    ran("alone")


@pytest.mark.parametrize("n", range(8))
def test_other(n):
    ran(f"other{n}")
"""


def test_an_alone_test_overlaps_no_other_under_xdist(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_suite=_SUITE)
    tests = str(Path(__file__).parent)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))
    )
    result = pytester.runpytest_subprocess("-p", "alone", "-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=9)
    spans = {}
    for line in (pytester.path / "ran.log").read_text().splitlines():
        name, start, end = line.split()
        spans[name] = (float(start), float(end))
    alone = spans.pop("alone")
    overlapping = [n for n, (s, e) in spans.items() if s < alone[1] and alone[0] < e]
    assert overlapping == []
    # The others did share the two workers (so the check above could have failed).
    others = sorted(spans.values())
    assert any(b[0] < a[1] for a, b in itertools.pairwise(others))
