"""The ``alone`` marker: under pytest-xdist, no other test runs beside such a test.

``tests/conftest.py`` imports the hook; ``tests/test_alone.py`` checks it in a suite of its own
(``pytest -p alone``).
"""

from __future__ import annotations

import fcntl
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "alone: under pytest-xdist, no other test runs beside it (its time limits assume the "
        "machine's cores are its own)",
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Under pytest-xdist, an ``alone`` test holds one lock file exclusively and every other
    test holds it shared, setup and teardown included: while the stop soak runs, the other
    workers wait. The soak keeps both cores busy on its own, so the suite loses little time,
    and its limit on how long a stop may take measures hpo rather than a neighbour's load (a
    parallel suite once pushed a stop past it). Without xdist nothing is locked."""
    del nextitem
    run = getattr(item.config, "workerinput", {}).get("testrunuid")
    if run is None:
        yield
        return
    exclusive = item.get_closest_marker("alone") is not None
    with open(Path(tempfile.gettempdir()) / f"hpo-tests-{run}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
