"""The CLI's consoles: tables stay readable when output goes to a pipe or a file."""

from __future__ import annotations

import pytest

from workflows.console import PIPED_WIDTH, make_console


@pytest.mark.parametrize("stderr", [False, True])
def test_piped_output_is_wide_enough_for_the_summary_tables(
    monkeypatch: pytest.MonkeyPatch, stderr: bool
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    console = make_console(stderr=stderr)  # pytest captures both streams: not a terminal
    assert not console.is_terminal
    assert console.width == PIPED_WIDTH


def test_columns_still_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "97")
    assert make_console().width == 97
