"""``sdn report``: a self-contained static HTML report of a sweep (or one run).

The report is one folder: ``index.html`` (inline CSS and script, every figure embedded as a
base64 PNG, so it opens from disk with no server and no network) and the same figures as PNG
files beside it. ``make_report`` writes into the folder it is given; the CLI hands it a
temporary folder that replaces the previous report only once the new one is complete
(``workflows.atomic``), then logs it to the sweep's MLflow run as the artifact ``report/``.

Every number comes from the catalogue as stored (and the Parquet predictions for the histograms
and the per-sample figures, whose images come from the run's data set and Grad-CAM maps from its
registered model: ``workflows.report.samples``): the chosen operating points are the rows of
``early_exit_choices`` that ``sdn catalogue early-exit`` shows, thresholds and statuses are
written by ``sdn.early_exit``.

Sections
--------
The page is a list of sections, each built by a small function registered with
:func:`section`. To add one (say, backdoor results), create a module in
``workflows/report/sections/`` (every module there is imported before a report is built;
nothing else changes)::

    from workflows.report import ReportContext, section
    from workflows.report.html import Block, Column, Note, Table

    @section("backdoor", "Backdoor attacks", order=60)   # between overthinking (50) and runs (90)
    def backdoor(ctx: ReportContext) -> list[Block] | None:
        rows = ctx.cat.sql("SELECT ... FROM backdoor_results ...")   # read-only catalogue
        if rows.empty:
            return None                                   # nothing to show: no section
        return [Note("..."), Table("backdoor", [Column("run"), Column("ASR", "pct")], [...])]

``ctx`` (:class:`ReportContext`) has the runs in scope (``ctx.runs``, ``ctx.analysed``), their
stored results (``exits``, ``curves``, ``choices``, ``calibration``, ``overthinking``,
``outputs(run_id)`` from Parquet), the colours and labels every figure uses, and
``ctx.figure(fig, "name.png", alt, caption)`` to embed a matplotlib figure (saved as a PNG in
the folder too), ``ctx.tracking_uri`` (None: do not touch MLflow) and ``ctx.shared``, where
sections keep what they load once per report (``workflows.report.samples`` keeps the test
images and registered models there). Blocks (``workflows.report.html``): ``Table`` (sortable;
cells formatted by the CLI's formatter kinds), ``Figure``/``Figures``, ``Facts``, ``Note``,
``Subsection``, ``Html``.
``order`` places the section (built-in: 10 overview, 20 per-exit accuracy, 30 early exit,
40 calibration, 50 overthinking, 52 confidence vs confusion, 54 simple and complex samples,
56 destructive samples, 58 Grad-CAM, 90 runs). A section that raises fails the whole report (the
previous one stays in place), so a bug is seen rather than hidden.
"""

from __future__ import annotations

from workflows.report.build import make_report
from workflows.report.context import ReportContext, stored_choices
from workflows.report.registry import SectionSpec, registered, section

__all__ = ["ReportContext", "SectionSpec", "make_report", "registered", "section", "stored_choices"]


def _chosen(cat, run_id: str, policy: str = "confidence"):
    """The run's stored empirical choices with their test figures: the points the report marks
    (kept for ``tests/test_workflow.py``'s every-surface check)."""
    rows = stored_choices(cat, [run_id])
    rows = rows[
        (rows["policy"] == policy) & (rows["method"] == "empirical") & rows["test_accuracy"].notna()
    ]
    return rows[["target", "threshold", "test_accuracy", "test_relative_cost", "met"]].reset_index(
        drop=True
    )
