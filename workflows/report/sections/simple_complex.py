"""Simple and complex samples: for each run with ICs, test images that the first IC already
gets right (simple: wasteful overthinking would push them through the whole network) beside
images that only the final head gets right (complex). The samples are chosen
deterministically by ``sdn.qualitative`` from the Parquet predictions; the images come from the
run's data set, loaded offline."""

from __future__ import annotations

from workflows.report import sample_plots, section
from workflows.report.context import ReportContext
from workflows.report.html import Block, Figures, Note
from workflows.report.samples import Missing, folder_of, missing_notes, run_samples, runs_with_ics


@section("simple-complex", "Simple and complex samples", order=54)
def simple_complex(ctx: ReportContext) -> list[Block] | None:
    runs = runs_with_ics(ctx)
    if not runs:
        return None
    figures, missing = [], []
    for run in runs:
        found = run_samples(ctx, run)
        if isinstance(found, Missing):
            missing.append((run, found))
            continue
        chosen, outputs, images = found.chosen, found.outputs, found.images
        rows = {}
        for kind, exit_index, name in (("simple", 0, "IC0"),
                                       ("complex", outputs.num_exits - 1, "final")):  # fmt: skip
            rows[kind] = [
                (images.images[int(outputs.sample_index[r])],
                 f"{images.label_name(outputs.labels[r])}\n"
                 f"{name}: {100 * outputs.confidences[r, exit_index]:.0f}%")
                for r in getattr(chosen, kind)
            ]  # fmt: skip
        fig = sample_plots.simple_complex_grid(ctx, run, rows, chosen.counts, outputs.num_samples)
        figures.append(ctx.figure(
            fig, f"{folder_of(run)}/simple_complex.png",
            f"simple and complex test images of {run.run_id}",
            "Top: test images IC0 already gets right, under each its label and IC0's "
            "confidence. Bottom: images no IC gets right and the final head does, with the "
            "final head's confidence. Most confident first, one class at a time; the title "
            "counts all such test samples.",
        ))  # fmt: skip
    return [Note("Simple samples are the ones wasteful overthinking spends the whole network on; "
                 "complex ones need the full depth."),
            *([Figures(figures)] if figures else []), *missing_notes(ctx, missing)]  # fmt: skip
