"""Calibration: each exit's expected calibration error (15 bins, test), as stored."""

from __future__ import annotations

from workflows.report import plots, section
from workflows.report.context import ReportContext
from workflows.report.html import Block, Column, Note, Table
from workflows.report.sections.common import exit_columns, identity_cells, identity_columns


@section("calibration", "Calibration", order=40)
def calibration(ctx: ReportContext) -> list[Block] | None:
    cal = ctx.calibration
    cal = cal[(cal["split"] == "test") & cal["run_id"].isin(set(ctx.run_ids))]
    runs = ctx.analysed
    runs = runs[runs["run_id"].isin(set(cal["run_id"]))]
    if runs.empty:
        return None
    names = exit_columns(int(cal.groupby("run_id").size().max()))
    columns = identity_columns(ctx) + [Column(f"ECE {n}", "pct") for n in names]
    rows = []
    for run in runs.itertuples():
        mine = cal[cal["run_id"] == run.run_id]
        by_name = {
            ("final" if r.is_final else f"IC{r.exit_index}"): r.ece for r in mine.itertuples()
        }
        rows.append([*identity_cells(ctx, run), *(by_name.get(n) for n in names)])
    figure = ctx.figure(
        plots.per_exit_sweep(ctx, "ece"),
        "calibration_ece.png",
        "expected calibration error of each exit against its relative cost",
        "Expected calibration error of each exit's max-softmax confidence on test (15 equal-width "
        "bins) against the exit's cost; each run's reliability diagrams are in its own part below.",
        wide=True,
    )
    return [
        Note(
            "ECE: the gap between confidence and accuracy, averaged over 15 equal-width "
            "confidence bins weighted by their counts (exit_results.ece, test split)."
        ),
        Table("calibration", columns, rows, caption="expected calibration error per exit (test)"),
        figure,
    ]
