"""Early exit: each policy's accuracy-vs-cost curves with the chosen points, and the stored
choices (empirical and certified, with their status and the validation -> test gap).

Every number is a stored row of ``early_exit_choices`` (the rows ``sdn catalogue early-exit``
reads); thresholds and statuses are written by ``sdn.early_exit`` (``format_threshold``,
``unmet_label``) as in every other surface.
"""

from __future__ import annotations

import math
from typing import Any

from sdn.early_exit import Target, format_threshold, unmet_label
from workflows.report import plots, section
from workflows.report.context import ReportContext
from workflows.report.html import Block, Cell, Column, Note, Subsection, Table, badge
from workflows.report.sections.common import identity_cells, identity_columns

METHODS = ("empirical", "certified")


def _threshold(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def target_cell(name: str) -> Cell:
    try:
        target = Target.parse(name)
    except ValueError:
        return Cell(name, name)
    # Sorted by kind, then value: max drops and budgets apart, each in increasing order.
    return Cell(target.label, f"{target.kind}={target.value:012.6f}")


def method_cells(row: Any, policy: str) -> list[Any]:
    """threshold, status, val acc, test acc, test cost, val -> test gap of one stored choice."""
    if row is None:
        return ["", "", None, None, None, None]
    threshold = _threshold(row.threshold)
    status = unmet_label(bool(row.met), row.method)
    # "off" sorts after every threshold: it is the most conservative choice.
    shown = format_threshold(threshold, policy)
    return [
        Cell(shown, threshold if threshold is not None else 1e9),
        Cell(status, status, badge(status)),
        row.val_accuracy,
        row.test_accuracy,
        row.test_relative_cost,
        row.val_test_gap,
    ]


def method_columns(method: str) -> list[Column]:
    """The columns of one method's choice (under a group header naming the method)."""
    return [
        Column("threshold", "text", f"{method}: the chosen threshold (off: the final head)"),
        Column("status", "text", f"{method}: met, unmet or none certified"),
        Column("val acc", "pct", f"{method}: accuracy on validation, where it was chosen"),
        Column("test acc", "pct", f"{method}: accuracy on test at the same threshold"),
        Column("cost", "cost", f"{method}: average test cost relative to the CNN"),
        Column("gap", "pt", f"{method}: test drop minus validation drop (val -> test gap)"),
    ]


def choice_table(ctx: ReportContext, policy: str, runs: Any, key: str) -> Table:
    """One row per (run, target): the empirical and the certified choice side by side."""
    chosen = ctx.choices[ctx.choices["policy"] == policy]
    ident = identity_columns(ctx)
    columns = [*ident, Column("target", "text")]
    for method in METHODS:
        columns += method_columns(method)
    rows = []
    for run in runs.itertuples():
        mine = chosen[chosen["run_id"] == run.run_id]
        for target in sorted(set(mine["target"]), key=lambda t: target_cell(t).sort):
            found = {r.method: r for r in mine[mine["target"] == target].itertuples()}
            cells = [*identity_cells(ctx, run), target_cell(target)]
            for method in METHODS:
                cells += method_cells(found.get(method), policy)
            rows.append(cells)
    groups = [("", len(ident) + 1), ("empirical", 6), ("certified", 6)]
    return Table(key, columns, rows, groups=groups,
                 caption=f"{policy}: {len(rows)} (run, target) pairs; click a header to sort")  # fmt: skip


@section("early-exit", "Early exit", order=30)
def early_exit(ctx: ReportContext) -> list[Block] | None:
    runs = ctx.analysed
    runs = runs[runs["train_mode"] != "cnn"]
    if runs.empty or ctx.choices.empty:
        return None
    deltas = sorted({float(d) for d in ctx.choices["delta"].dropna()})
    delta = f" at delta {', '.join(f'{d:g}' for d in deltas)}" if deltas else ""
    blocks: list[Block] = [
        Note(
            "Thresholds are chosen on the validation split and reported on test. Empirical: the "
            "cheapest point within the accuracy drop (or the most accurate within the budget) on "
            f"validation. Certified{delta}: Learn-then-Test, so the target holds on new data with "
            "probability at least 1 - delta; 'none certified' means the validation split is too "
            "small to certify any saving (early exit off). CNN runs have one exit: they are the "
            "reference (star and dotted line)."
        )
    ]
    for policy in ctx.policies:
        name = (
            "accuracy_vs_cost.png" if policy == "confidence" else f"accuracy_vs_cost_{policy}.png"
        )
        figure = ctx.figure(
            plots.cost_accuracy_sweep(ctx, policy),
            name,
            f"test accuracy against relative cost for every run, {policy} policy",
            f"Test accuracy against average cost ({policy} policy), one curve per run; filled "
            "circles: the empirical choices, hollow squares: the certified ones (labelled on "
            "each run's own figure below).",
            wide=True,
        )
        table = choice_table(ctx, policy, runs, f"early-exit-{policy}")
        blocks.append(Subsection(f"early-exit-{policy}", f"policy: {policy}", [figure, table]))
    return blocks
