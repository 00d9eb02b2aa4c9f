"""Per-exit accuracy: each exit's test accuracy (a table, one row per run) and against cost."""

from __future__ import annotations

from workflows.report import plots, section
from workflows.report.context import ReportContext
from workflows.report.html import Block, Column, Note, Table
from workflows.report.sections.common import exit_columns, identity_cells, identity_columns


@section("per-exit-accuracy", "Per-exit accuracy", order=20)
def per_exit_accuracy(ctx: ReportContext) -> list[Block] | None:
    runs = ctx.analysed
    if runs.empty:
        return None
    test = ctx.exits[(ctx.exits["split"] == "test") & ctx.exits["run_id"].isin(set(runs["run_id"]))]
    widest = int(test.groupby("run_id").size().max())
    names = exit_columns(widest)
    columns = identity_columns(ctx) + [Column(n, "pct") for n in names]
    columns.append(Column("final cost", "cost", "the final head's cost relative to the CNN"))
    rows = []
    for run in runs.itertuples():
        mine = test[test["run_id"] == run.run_id].sort_values("exit_index")
        by_name = {
            ("final" if r.is_final else f"IC{r.exit_index}"): r.accuracy for r in mine.itertuples()
        }
        final_cost = mine[mine["is_final"]]["relative_cost"]
        rows.append([
            *identity_cells(ctx, run),
            *(by_name.get(n) for n in names),
            float(final_cost.iloc[0]) if len(final_cost) else None,
        ])  # fmt: skip
    figure = ctx.figure(
        plots.per_exit_sweep(ctx, "accuracy"),
        "per_exit_accuracy.png",
        "test accuracy of each exit against its relative cost, per architecture",
        "Each exit's test accuracy against its cost relative to the CNN (always leaving there). "
        "Solid: sdn, dashed: ic_only; star and dotted line: the CNN.",
        wide=True,
    )
    return [
        Note("Test accuracy of each exit when every sample leaves there (exit_results)."),
        Table("per-exit-accuracy", columns, rows, caption="test accuracy per exit"),
        figure,
    ]
