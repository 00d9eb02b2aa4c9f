"""Overthinking: where samples are first right (wasteful), and what the final head loses
(destructive), from the stored overthinking summaries (test split)."""

from __future__ import annotations

from typing import Any

from workflows.report import plots, section
from workflows.report.context import ReportContext
from workflows.report.html import Block, Column, Figures, Note, Table
from workflows.report.sections.common import identity_cells, identity_columns


def shares(counts: Any) -> tuple[float | None, float | None]:
    """(share first right at an IC, share never right) from ``[IC0, ..., final, never]``: the
    same reading of the stored counts as ``sdn catalogue overthinking``."""
    counts = list(counts or [])
    total = sum(counts)
    if len(counts) < 2 or not total:
        return None, None
    return sum(counts[:-2]) / total, counts[-1] / total


@section("overthinking", "Overthinking", order=50)
def overthinking(ctx: ReportContext) -> list[Block] | None:
    over = ctx.overthinking
    runs = ctx.analysed
    runs = runs[runs["run_id"].isin(set(over["run_id"]))]
    if runs.empty:
        return None
    columns = [
        *identity_columns(ctx),
        Column("right at an IC", "pct", "test samples some IC gets right first"),
        Column("never right", "pct"),
        Column("oracle cost", "cost", "cost if each sample left at its first correct exit"),
        Column("destructive", "pct", "of the final head's errors, the share some IC got right"),
        Column("conf. AUROC", "dec2", "confusion score separating the final head's errors"),
        Column("max-softmax AUROC", "dec2"),
    ]
    rows = []
    for run in runs.itertuples():
        o = over[over["run_id"] == run.run_id].iloc[0]
        early, never = shares(o["first_correct"])
        rows.append([
            *identity_cells(ctx, run), early, never, o["oracle_relative_cost"],
            o["destructive_fraction"], o["confusion_auroc"], o["max_softmax_auroc"],
        ])  # fmt: skip
    figures = []
    fig = plots.first_correct_sweep(ctx)
    if fig is not None:
        figures.append(ctx.figure(
            fig, "first_correct.png", "share of test samples first right at each exit, per run",
            "Wasteful overthinking: the exit at which each test sample is first right (numbers: "
            "percent of the test split). Samples right at an IC need not go deeper.", wide=True,
        ))  # fmt: skip
    fig = plots.destructive_sweep(ctx)
    if fig is not None:
        figures.append(ctx.figure(
            fig, "destructive.png", "destructive overthinking per internal classifier",
            "Destructive overthinking: of the final head's test errors, the share each IC got "
            "right. Confusion histograms (right vs wrong final predictions) are in each run's "
            "own part below.",
        ))  # fmt: skip
    return [Table("overthinking", columns, rows, caption="overthinking (test split)"),
            *([Figures(figures)] if figures else [Note("(no overthinking figures)")])]  # fmt: skip
