"""Numeric options are checked the same way on every command that takes them.

One line, exit code 1, naming the option, the rule and the value as typed, before the command
does anything (today's ``hpo worker NAME --timeout 0`` ran, did nothing and exited 0, while
``run`` refused the same value). The checks live in the shared option types of
``hpo.cli.options``; the last test makes sure every numeric option of every command uses them.
"""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from conftest import hpo, one_line_error

from hpo.cli import cli
from hpo.cli.options import BATCH_SIZE, COUNT, NON_NEGATIVE, PORT, SECONDS, Number

COUNT_RULE = "a whole number >= 1"
BATCH_RULE = 'a whole number >= 1 or "auto"'
SECONDS_RULE = "a finite number of seconds > 0"

# (command, option) -> the rule it states
OPTIONS = {
    ("run", "--n-trials"): COUNT_RULE,
    ("run", "--timeout"): SECONDS_RULE,
    ("run", "--epochs"): COUNT_RULE,
    ("run", "--trials-per-batch"): BATCH_RULE,
    ("run", "--workers"): COUNT_RULE,
    ("create", "--n-trials"): COUNT_RULE,
    ("create", "--epochs"): COUNT_RULE,
    ("create", "--trials-per-batch"): BATCH_RULE,
    ("create", "--heartbeat-interval"): COUNT_RULE,
    ("create", "--grace-period"): COUNT_RULE,
    ("create", "--max-retries"): "a whole number >= 0",
    ("worker", "--n-trials"): COUNT_RULE,
    ("worker", "--timeout"): SECONDS_RULE,
    ("check", "--epochs"): COUNT_RULE,
    ("check", "--trials-per-batch"): BATCH_RULE,
    ("rerun", "--seeds"): COUNT_RULE,
    ("rerun", "--top"): COUNT_RULE,
    ("rerun", "--repeats"): COUNT_RULE,
    ("rerun", "--trial"): "a whole number >= 0",
}

# value as typed -> how the message shows it; each is refused by every rule above
BAD_FOR_ALL = {"-1": "-1", "abc": "'abc'", "": "''", "1e400x": "'1e400x'"}
BAD_COUNTS = {"0": "0", "1.5": "1.5", "2.0": "2.0", "-0": "-0"}
BAD_SECONDS = {"0": "0", "-5": "-5", "0.0": "0.0", "nan": "nan", "inf": "inf", "-inf": "-inf"}


def _base(command: str) -> list[str]:
    """The command with its required arguments (never reached: the option fails first)."""
    return {
        "run": ["run", "study.toml"],
        "create": ["create", "study.toml"],
        "check": ["check", "study.toml"],
        "worker": ["worker", "tiny"],
        "rerun": ["rerun", "tiny", "--seeds", "2"],
    }[command]


def _cases() -> list[tuple[str, str, str, str]]:
    cases = []
    for (command, option), rule in OPTIONS.items():
        bad = dict(BAD_FOR_ALL)
        if rule in (COUNT_RULE, BATCH_RULE):
            bad |= BAD_COUNTS
        elif rule == SECONDS_RULE:
            bad |= BAD_SECONDS
        else:  # >= 0: zero is fine
            bad |= {"1.5": "1.5"}
        for typed, shown in bad.items():
            cases.append((command, option, typed, f"{option} must be {rule}, but got {shown}"))
    return cases


@pytest.mark.parametrize(("command", "option", "typed", "expected"), _cases())
def test_bad_number_is_one_line_everywhere(
    command: str, option: str, typed: str, expected: str, tmp_path: Path
) -> None:
    one_line_error(hpo(*_base(command), option, typed), expected)
    assert not (tmp_path / "hpo.db").exists()  # refused before anything was opened


def test_worker_timeout_zero_is_refused_like_run() -> None:
    expected = f"--timeout must be {SECONDS_RULE}, but got 0"
    one_line_error(hpo("worker", "tiny", "--timeout", "0"), expected)
    one_line_error(hpo("run", "study.toml", "--timeout", "0"), expected)


@pytest.mark.parametrize(
    ("kind", "typed", "value"),
    [
        (COUNT, "3", 3),
        (COUNT, " 3 ", 3),
        (COUNT, 3, 3),  # a declared default
        (NON_NEGATIVE, "0", 0),
        (SECONDS, "0.5", 0.5),
        (SECONDS, "60", 60.0),
        (PORT, "0", 0),
        (PORT, "65535", 65535),
        (BATCH_SIZE, "16", 16),
        (BATCH_SIZE, " auto ", "auto"),
    ],
)
def test_good_numbers_pass(kind: Number, typed: object, value: float | str) -> None:
    converted = kind.convert(typed, None, None)
    assert converted == value and type(converted) is type(value)


@pytest.mark.parametrize(("typed", "shown"), [("65536", "65536"), ("-1", "-1"), ("http", "'http'")])
def test_port_rule(typed: str, shown: str) -> None:
    from hpo.errors import HpoError

    with pytest.raises(HpoError) as caught:
        PORT.convert(typed, click.Option(["--port"]), None)
    assert str(caught.value) == f"--port must be a whole number from 0 to 65535, but got {shown}"


def test_every_numeric_option_uses_the_shared_types() -> None:
    plain = (click.types.IntParamType, click.types.FloatParamType)
    found = set()
    for name, command in cli.commands.items():
        for param in command.params:
            if not isinstance(param, click.Option):
                continue
            key = (name, param.opts[0])
            if isinstance(param.type, Number):
                found.add(key)
            elif isinstance(param.type, plain):
                pytest.fail(f"{name} {param.opts[0]} is a plain {param.type.name}: use Number")
    assert found >= set(OPTIONS)
