"""Grad-CAM on destructive samples: for a few of each run's destructive test samples (the
first ones the "Destructive samples" section shows), where the first IC that gets it right
looks and where the final head looks, each explaining its own answer (``sdn.gradcam``).

The model is the run's registered version, loaded from MLflow through the registry (the same
weights that made the stored predictions; a disagreement is said). Without MLflow
(``--no-mlflow``), or when a version cannot be found, a note replaces the figure; a tracking
server that does not answer makes the report fail with exit 3."""

from __future__ import annotations

from typing import Any

from sdn.qualitative import first_right_ic
from workflows.report import sample_plots, section
from workflows.report.context import ReportContext
from workflows.report.html import Block, Figures, Note
from workflows.report.samples import (
    N_GRADCAM,
    Missing,
    RunSamples,
    folder_of,
    missing_notes,
    model_for,
    run_samples,
    runs_with_ics,
)


def _maps(
    ctx: ReportContext, run: Any, found: RunSamples, model: Any, rows: Any
) -> tuple[Any, str]:
    """The figure for ``rows`` of the run's outputs, and a note ('' when none is needed)."""
    import torch

    from sdn.data import BatchIterator, ImageSet
    from sdn.gradcam import exit_predictions, gradcam

    outputs, images = found.outputs, found.images
    index = outputs.sample_index[rows]
    picked = ImageSet(images.images[torch.as_tensor(index)],
                      torch.as_tensor(outputs.labels[rows], dtype=torch.int64))  # fmt: skip
    x, _ = next(iter(BatchIterator(picked, images.info, batch_size=len(rows))))
    preds, conf = exit_predictions(model, x)
    final = preds.shape[1] - 1
    first_ic = first_right_ic(outputs, rows)
    at_final = gradcam(model, x, final)
    panels, labels = [], []
    for i, r in enumerate(rows):
        k = int(first_ic[i])
        at_ic = gradcam(model, x[i : i + 1], k)
        panels.append([
            (at_ic.maps[0], f"IC{k} says {images.label_name(preds[i, k])} "
                            f"({100 * conf[i, k]:.0f}%)\nmap at block {at_ic.block + 1}"),
            (at_final.maps[i], f"final says {images.label_name(preds[i, final])} "
                               f"({100 * conf[i, final]:.0f}%)\nmap at block {at_final.block + 1}"),
        ])  # fmt: skip
        labels.append(f"#{int(index[i])}\nlabel {images.label_name(outputs.labels[r])}")
    fig = sample_plots.gradcam_grid(ctx, run, [picked.images[i] for i in range(len(rows))],
                                    labels, panels)  # fmt: skip
    differ = int((preds != outputs.preds[rows]).any(axis=1).sum())
    note = (
        f"{ctx.label(run)}: the registered model's predictions differ from the stored ones on "
        f"{differ} of {len(rows)} samples shown (the maps explain the model's own answers)"
        if differ
        else ""
    )
    return fig, note


@section("gradcam", "Grad-CAM on destructive samples", order=58)
def gradcam_section(ctx: ReportContext) -> list[Block] | None:
    runs = runs_with_ics(ctx)
    if not runs:
        return None
    figures, missing, notes = [], [], []
    for run in runs:
        found = run_samples(ctx, run, destructive=True)
        if isinstance(found, Missing):
            missing.append((run, found))
            continue
        model = model_for(ctx, run)
        if isinstance(model, Missing):
            missing.append((run, model))
            continue
        fig, note = _maps(ctx, run, found, model, found.chosen.destructive[:N_GRADCAM])
        if note:
            notes.append(Note(note))
        figures.append(ctx.figure(
            fig, f"{folder_of(run)}/gradcam.png", f"Grad-CAM maps of {run.run_id}",
            "Each row: a destructive test sample (position in the test split: label), where the "
            "first IC that gets it right looks, and where the final head looks; each map explains "
            "that exit's own answer (title: answer and confidence), bright = more; a map with no "
            "positive evidence for that answer stays dark. Maps are taken "
            "at the output of the block feeding the exit (blocks counted from 1), or of the "
            "deepest earlier block with at least 4x4 positions when that one is smaller.",
        ))  # fmt: skip
    intro = Note("Grad-CAM (Selvaraju et al., 2017) of the run's registered model: on a "
                 "destructive sample, does the IC that is right attend to the object while the "
                 "final head looks elsewhere?")  # fmt: skip
    return [intro, *([Figures(figures)] if figures else []), *notes,
            *missing_notes(ctx, missing)]  # fmt: skip
