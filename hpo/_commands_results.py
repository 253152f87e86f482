"""Commands to look at and trust results: dashboard, report, rerun."""

from __future__ import annotations

import click

__all__ = ["COMMANDS"]

COMMANDS: list[click.Command] = []
