"""Each run's own part: identity, MLflow run and registered model, timings, per-exit results,
its chosen operating points, and its figures (accuracy vs cost with labelled choices,
reliability per exit, overthinking, confusion histograms).

A ``cnn``-mode run has one exit: it gets no figures of its own (they would be single points);
it is drawn as the reference in the figures of its architecture's ``ic_only`` and ``sdn`` runs.
"""

from __future__ import annotations

from typing import Any

from workflows.report import plots, section
from workflows.report.context import ReportContext, anchor, safe_name
from workflows.report.html import (
    Block,
    Cell,
    Column,
    Facts,
    Figures,
    Note,
    Subsection,
    Table,
    badge,
    missing,
    plain,
)
from workflows.report.sections.early_exit import METHODS, method_cells, method_columns, target_cell
from workflows.report.sections.overview import duration, seconds
from workflows.report.style import exit_name


def _facts(ctx: ReportContext, run: Any) -> Facts:
    name, version = plain(run.model_name), plain(run.model_version)
    model = f"{name} version {version}" if name and version is not None else name
    uri = f"models:/{name}/{version}" if name and version is not None else None
    cnn = ctx.cnn_of(run) if run.train_mode != "cnn" else None
    items: list[tuple[str, Any]] = [
        ("run id", run.run_id),
        ("MLflow run", run.mlflow_run_id),
        ("registered model", model),
        ("model URI", uri),
        ("status", run.status),
        ("epochs", plain(run.epochs)),
        ("width", plain(run.width)),
        ("started (UTC)", None if missing(run.started_at) else str(run.started_at)[:19]),
        ("took", duration(seconds(run))),
        ("exits", plain(run.num_exits)),
        ("CNN FLOPs", f"{run.cnn_flops / 1e6:.1f}M" if plain(run.cnn_flops) else None),
        ("reference CNN", cnn.run_id if cnn is not None else None),
        ("predictions", run.parquet_path),
        ("code version", run.code_version),
    ]
    if plain(run.error):
        items.append(("error", run.error))
    return Facts(items)


def _exit_table(ctx: ReportContext, run: Any) -> Table | None:
    exits = ctx.exits[ctx.exits["run_id"] == run.run_id]
    if exits.empty:
        return None
    val = exits[exits["split"] == "val"].set_index("exit_index")
    test = exits[exits["split"] == "test"].sort_values("exit_index")
    columns = [Column("exit"), Column("val acc", "pct"), Column("test acc", "pct"),
               Column("cost/CNN", "cost"), Column("FLOPs", "mega"), Column("ECE (test)", "pct")]  # fmt: skip
    rows = []
    for r in test.itertuples():
        name = exit_name(r.exit_index, r.is_final)
        v = val["accuracy"].get(r.exit_index) if r.exit_index in val.index else None
        rows.append([Cell(name, r.exit_index), v, r.accuracy, r.relative_cost, r.cumulative_flops,
                     r.ece])  # fmt: skip
    return Table(f"exits-{anchor(run.run_id)}", columns, rows, caption="per exit")


def _choice_table(ctx: ReportContext, run: Any, policy: str) -> Table | None:
    mine = ctx.choices[(ctx.choices["run_id"] == run.run_id) & (ctx.choices["policy"] == policy)]
    if mine.empty:
        return None
    columns = [Column("target")]
    for method in METHODS:
        columns += method_columns(method)
    rows = []
    for target in sorted(set(mine["target"]), key=lambda t: target_cell(t).sort):
        found = {r.method: r for r in mine[mine["target"] == target].itertuples()}
        cells: list[Any] = [target_cell(target)]
        for method in METHODS:
            cells += method_cells(found.get(method), policy)
        rows.append(cells)
    return Table(f"choices-{anchor(run.run_id)}", columns, rows,
                 caption=f"chosen operating points ({policy} policy)",
                 groups=[("", 1), ("empirical", 6), ("certified", 6)])  # fmt: skip


def run_part(ctx: ReportContext, run: Any) -> Subsection:
    folder = safe_name(run.run_id.split(".", 1)[-1])
    blocks: list[Block] = [_facts(ctx, run)]
    table = _exit_table(ctx, run)
    if table is not None:
        blocks.append(table)
    if run.train_mode == "cnn":
        blocks.append(Note("A CNN has one exit: it is the reference (star and dotted line) in "
                           "the figures of its architecture's ic_only and sdn runs."))  # fmt: skip
        return Subsection(anchor(run.run_id), ctx.label(run), blocks, badge(run.status))
    if table is None:
        return Subsection(anchor(run.run_id), ctx.label(run), blocks, badge(run.status))
    figures = []
    if not ctx.curves[ctx.curves["run_id"] == run.run_id].empty:
        fig, _ = plots.cost_accuracy_run(ctx, run, "confidence")
        figures.append(ctx.figure(
            fig, f"{folder}/accuracy_vs_cost.png", f"accuracy vs cost of {run.run_id}",
            "Test curve (confidence policy) with every stored choice: each label gives the "
            "threshold, then the targets that chose that point.",
        ))  # fmt: skip
    fig = plots.reliability_run(ctx, run)
    if fig is not None:
        figures.append(ctx.figure(
            fig, f"{folder}/reliability.png", f"reliability diagrams of {run.run_id}",
            "Reliability per exit (test, 15 bins): bars are each bin's accuracy, black ticks its "
            "mean confidence, the dotted diagonal perfect calibration.",
        ))  # fmt: skip
    over = ctx.overthinking[ctx.overthinking["run_id"] == run.run_id]
    if not over.empty:
        o = next(over.itertuples())
        figures.append(ctx.figure(
            plots.overthinking_run(ctx, run, o), f"{folder}/first_correct.png",
            f"overthinking of {run.run_id}",
            "Left: the exit at which each test sample is first right. Right: of the final head's "
            "errors, the share each IC got right.",
        ))  # fmt: skip
        fig = plots.confusion_run(ctx, run, o, ctx.outputs(run.run_id))
        if fig is not None:
            figures.append(ctx.figure(
                fig, f"{folder}/confusion.png", f"confusion histograms of {run.run_id}",
                "Confusion score (from the Parquet predictions, standardised by the training "
                "set's statistics) of test samples the final head gets right and wrong.",
            ))  # fmt: skip
    if figures:
        blocks.append(Figures(figures))
    choices = _choice_table(ctx, run, "confidence")
    if choices is not None:
        blocks.append(choices)
    return Subsection(anchor(run.run_id), ctx.label(run), blocks, badge(run.status))


@section("runs", "Runs", order=90)
def runs(ctx: ReportContext) -> list[Block] | None:
    ordered = ctx.ordered(ctx.runs)
    if ordered.empty:
        return None
    return [run_part(ctx, run) for run in ordered.itertuples()]
