"""Commands for a study shared by many workers: create, worker, status."""

from __future__ import annotations

import click

__all__ = ["COMMANDS"]

COMMANDS: list[click.Command] = []
