"""Confidence vs confusion: for each run with ICs, histograms of the final head's max-softmax
confidence on the test samples it gets right and wrong, beside those of the confusion score
(paper-spec "Overthinking analysis": compare how well each separates the final head's errors).
From the Parquet predictions; the AUROCs and the standardisation are the stored ones."""

from __future__ import annotations

from workflows.report import sample_plots, section
from workflows.report.context import ReportContext
from workflows.report.html import Block, Figures, Note
from workflows.report.samples import Missing, folder_of, missing_notes, runs_with_ics, test_outputs


@section("confidence", "Confidence vs confusion", order=52)
def confidence(ctx: ReportContext) -> list[Block] | None:
    runs = runs_with_ics(ctx)
    over = ctx.overthinking
    if not runs or over.empty:
        return None
    figures, missing = [], []
    for run in runs:
        mine = over[over["run_id"] == run.run_id]
        if mine.empty:
            missing.append((run, Missing("no stored overthinking summary")))
            continue
        outputs = test_outputs(ctx, run.run_id)
        fig = sample_plots.confidence_and_confusion(ctx, run, next(mine.itertuples()), outputs)
        if fig is None:
            missing.append((run, Missing("no test predictions in Parquet")))
            continue
        figures.append(ctx.figure(
            fig, f"{folder_of(run)}/confidence_confusion.png",
            f"confusion and confidence histograms of {run.run_id}",
            "Test samples the final head gets right and wrong: left, the confusion score "
            "(standardised by the training set's statistics); right, the final head's own "
            "confidence. The AUROC says how well each score ranks the errors above the right "
            "answers (for confidence: low confidence as the alarm).",
        ))  # fmt: skip
    if not figures and not missing:
        return None
    intro = Note("The paper proposes the confusion score (how much the ICs disagree with the final "
                 "head) as a sign of a likely error; the final head's confidence is the plain "
                 "alternative. Where the wrong answers' histogram sits apart from the right "
                 "ones', the score flags errors.")  # fmt: skip
    return [intro, *([Figures(figures)] if figures else []), *missing_notes(ctx, missing)]
