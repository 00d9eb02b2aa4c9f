"""Destructive samples: for each run with ICs, test samples that some IC gets right and the
final head gets wrong (destructive overthinking), each with every exit's prediction and
confidence. Chosen by ``sdn.qualitative`` (most ICs right first, one class at a time) from the
Parquet predictions; the images come from the run's data set, loaded offline."""

from __future__ import annotations

from sdn.qualitative import first_right_ic
from workflows.report import sample_plots, section
from workflows.report.context import ReportContext
from workflows.report.html import Block, Figures, Note
from workflows.report.samples import Missing, folder_of, missing_notes, run_samples, runs_with_ics


@section("destructive-samples", "Destructive samples", order=56)
def destructive_samples(ctx: ReportContext) -> list[Block] | None:
    runs = runs_with_ics(ctx)
    if not runs:
        return None
    figures, missing = [], []
    for run in runs:
        found = run_samples(ctx, run, destructive=True)
        if isinstance(found, Missing):
            missing.append((run, found))
            continue
        chosen, outputs, images = found.chosen, found.outputs, found.images
        rows = chosen.destructive
        index = outputs.sample_index[rows]
        names = [images.label_name(c) for c in range(images.info.num_classes)]
        fig = sample_plots.destructive_table(
            ctx, run,
            images=[images.images[int(i)] for i in index],
            labels=[f"#{int(i)}\nlabel {images.label_name(outputs.labels[r])}"
                    for i, r in zip(index, rows, strict=True)],
            names=names, preds=outputs.preds[rows], confidences=outputs.confidences[rows],
            correct=outputs.correct[rows], first_ic=first_right_ic(outputs, rows).tolist(),
        )  # fmt: skip
        figures.append(ctx.figure(
            fig, f"{folder_of(run)}/destructive_samples.png",
            f"destructive test samples of {run.run_id}",
            f"{chosen.counts['destructive']} test samples are right at some IC and wrong at the "
            f"final head; {len(rows)} shown (most ICs right first, one class at a time). Left: "
            "the sample's position in the test split and its label; then each exit's prediction "
            "(green: right, red: wrong) and confidence. The framed cell is the first IC that is "
            "right.",
        ))  # fmt: skip
    return [Note("Destructive overthinking: an internal classifier had the right answer, and the "
                 "final head changed it."),
            *([Figures(figures)] if figures else []), *missing_notes(ctx, missing)]  # fmt: skip
