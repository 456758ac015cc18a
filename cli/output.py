"""The one way the CLI prints: every message made terminal-safe (common/terminal.py)."""

from __future__ import annotations

from typing import Any

import click

from rlhfspec.common.terminal import terminal_safe


def echo(message: Any = "", *, err: bool = False, nl: bool = True) -> None:
    """click.echo with control characters in the text escaped."""
    click.echo(terminal_safe(str(message)), err=err, nl=nl)
