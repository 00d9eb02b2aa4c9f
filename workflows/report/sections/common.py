"""Pieces several sections share: a run's name, linked to its own part of the page."""

from __future__ import annotations

from typing import Any

from workflows.report.context import ReportContext, anchor
from workflows.report.html import Cell, Column, esc


def identity_columns(ctx: ReportContext) -> list[Column]:
    """The run column: its name says the architecture and mode (and the data set and seed where
    the report has several), and links to the run's own part of the page."""
    return [Column("run", title="the run's own part of this page")]


def identity_cells(ctx: ReportContext, run: Any) -> list[Any]:
    label = ctx.label(run)
    return [Cell(label, label, f'<a href="#{esc(anchor(run.run_id))}">{esc(label)}</a>')]


def exit_columns(max_exits: int) -> list[str]:
    """IC0 .. IC(k-1), final, for the widest run."""
    return [f"IC{i}" for i in range(max(0, max_exits - 1))] + ["final"]
