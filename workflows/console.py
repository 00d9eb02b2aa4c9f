"""The Rich consoles the CLI prints through."""

from __future__ import annotations

import os

from rich.console import Console

PIPED_WIDTH = 160


def make_console(stderr: bool = False) -> Console:
    """A console for terminal output, sized for tables when it is not a terminal.

    Piped or redirected output (a CI log, ``ray job submit``'s log, ``| tee``) would otherwise
    be 80 columns wide, which folds the summary tables into unreadable slivers. ``COLUMNS``
    still wins when set.
    """
    console = Console(stderr=stderr)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, width=PIPED_WIDTH)
    return console
