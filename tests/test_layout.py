"""The package layout's promises that a linter cannot check."""

from __future__ import annotations

import subprocess
import sys

HEAVY = (
    "numpy",
    "pandas",
    "sklearn",
    "scipy",
    "optuna",
    "sqlalchemy",
    "tensorflow",
    "keras",
    "matplotlib",
    "optuna_dashboard",
)


def test_the_command_line_loads_no_heavy_library_until_a_command_needs_it() -> None:
    """``hpo --help`` and one-line errors must not wait for TensorFlow, Optuna or numpy."""
    code = f"import sys, hpo.cli\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""


def test_a_lazy_module_shows_what_the_real_module_holds_now() -> None:
    from hpo.lazy import lazy_import

    calls: list[str] = []
    lazy_json = lazy_import("json", before=lambda: calls.append("before"))
    assert calls == []  # nothing happens until an attribute is used
    assert lazy_json.dumps([1]) == "[1]"
    assert lazy_json.loads("2") == 2
    assert calls == ["before"]  # the set-up runs once, before the first import
