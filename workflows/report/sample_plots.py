"""Figures of the paper's per-sample analyses: right vs wrong histograms of the final head's
confidence beside those of the confusion score, grids of simple and complex test images, the
destructive samples with every exit's answer, and Grad-CAM maps of an IC and the final head.

The conventions of ``workflows.report.style`` hold: the run's architecture colour for what is
right at the final head, one red for what is wrong (the confusion histograms' colours), short
titles (the HTML caption says the rest). Images are drawn as data in one axes per row where
possible (``imshow`` with an ``extent``), which keeps rows aligned and the figures fast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from workflows.report.style import plt

WRONG = "#cf222e"  # the confusion histograms' red
RIGHT_CELL = "#dafbe1"  # the page's "ok" badge green
WRONG_CELL = "#ffebe9"  # the page's "bad" badge red


def _hwc(image: Any) -> np.ndarray:
    """uint8 [3, H, W] tensor -> [H, W, 3] array for imshow."""
    return np.asarray(image.permute(1, 2, 0).cpu().numpy(), dtype=np.uint8)


def _finite(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def _hist_right_wrong(ax: Any, values: np.ndarray, right: np.ndarray, bins: np.ndarray,
                      colour: str) -> None:  # fmt: skip
    ax.hist(values[right], bins=bins, alpha=0.55, density=True, color=colour)
    if (~right).any():
        ax.hist(values[~right], bins=bins, alpha=0.65, density=True, color=WRONG,
                histtype="stepfilled")  # fmt: skip
    ax.set_ylabel("density")


def confidence_and_confusion(ctx: Any, run: Any, over: Any, outputs: Any) -> Any | None:
    """Left: the standardised confusion score, right vs wrong at the final head (as the run's
    confusion histograms). Right: the final head's max-softmax confidence, right vs wrong. Each
    title gives the stored AUROC of that score for telling the final head's errors."""
    if outputs is None or outputs.num_exits < 2:
        return None
    right = np.asarray(outputs.correct)[:, -1].astype(bool)
    std = _finite(over.confusion_std) or 1.0
    score = (np.asarray(outputs.confusion, float) - (_finite(over.confusion_mean) or 0.0)) / std
    finite = score[np.isfinite(score)]
    if finite.size == 0:
        return None
    colour = ctx.colours[run.arch]
    fig, (left, right_ax) = plt.subplots(1, 2, figsize=(8.6, 3.3), layout="constrained")
    bins = np.linspace(float(finite.min()), float(finite.max()) + 1e-9, 30)
    _hist_right_wrong(left, score, right, bins, colour)
    auroc = _finite(over.confusion_auroc)
    left.set_xlabel("standardised confusion score (higher: ICs disagree more)")
    left.set_title("confusion" + (f" · AUROC {auroc:.2f}" if auroc is not None else ""),
                   loc="left")  # fmt: skip
    confidence = np.asarray(outputs.confidences, float)[:, -1]
    _hist_right_wrong(right_ax, confidence, right, np.linspace(0.0, 1.0, 26), colour)
    auroc = _finite(over.max_softmax_auroc)
    right_ax.set_xlabel("final head's confidence (max softmax)")
    right_ax.set_title("confidence" + (f" · AUROC {auroc:.2f}" if auroc is not None else ""),
                       loc="left")  # fmt: skip
    from matplotlib.patches import Patch

    handles = [
        Patch(color=colour, alpha=0.55, label=f"final head right ({int(right.sum())})"),
        Patch(color=WRONG, alpha=0.65, label=f"final head wrong ({int((~right).sum())})"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, frameon=False)
    fig.suptitle(f"{ctx.label(run)}: right vs wrong at the final head (test)", x=0.01,
                 ha="left", fontsize=10)  # fmt: skip
    return fig


# ---------------------------------------------------------------------------- image rows
def _image_row(ax: Any, images: Sequence[Any], captions: Sequence[str], slots: int,
               empty: str) -> None:  # fmt: skip
    """Images side by side in one axes (one unit each, a gap between), a caption under each."""
    gap = 0.12
    for i, (image, caption) in enumerate(zip(images, captions, strict=True)):
        x0 = i * (1 + gap)
        ax.imshow(_hwc(image), extent=(x0, x0 + 1, 1, 0), interpolation="nearest")
        ax.text(x0 + 0.5, 1.06, caption, ha="center", va="top", fontsize=7.5)
    if not images:
        ax.text(0.0, 0.5, empty, ha="left", va="center", fontsize=8.5, color="#59636e")
    ax.set_xlim(-0.02, slots * (1 + gap) - gap + 0.02)
    ax.set_ylim(1.42, -0.02)
    ax.set_aspect("equal")
    ax.axis("off")


def simple_complex_grid(ctx: Any, run: Any, rows: dict[str, Any], counts: dict[str, int],
                        total: int) -> Any:  # fmt: skip
    """Two rows of test images: ``simple`` (IC0 already right) and ``complex`` (only the final
    head right). ``rows[kind]`` is a list of (image, caption)."""
    slots = max(1, *(len(v) for v in rows.values()))
    width = min(9.5, 0.95 * slots + 0.6)
    fig, axes = plt.subplots(2, 1, figsize=(width, 3.9), layout="constrained")
    titles = {
        "simple": "simple: right already at IC0",
        "complex": "complex: right only at the final head",
    }
    for ax, kind in zip(axes, ("simple", "complex"), strict=True):
        items = rows.get(kind, [])
        _image_row(ax, [i for i, _ in items], [c for _, c in items], slots,
                   f"no test sample is {kind} here")  # fmt: skip
        share = 100 * counts.get(kind, 0) / max(1, total)
        pct = f"{share:.1f}" if 0 < share < 10 else f"{share:.0f}"
        ax.set_title(f"{titles[kind]} ({counts.get(kind, 0)} of {total} test samples, {pct}%)",
                     loc="left", fontsize=9)  # fmt: skip
    fig.suptitle(f"{ctx.label(run)}: simple and complex test samples", x=0.01, ha="left",
                 fontsize=10)  # fmt: skip
    return fig


# ---------------------------------------------------------------------------- destructive
def destructive_table(ctx: Any, run: Any, images: Sequence[Any], labels: Sequence[str],
                      names: Sequence[str], preds: np.ndarray, confidences: np.ndarray,
                      correct: np.ndarray, first_ic: Sequence[int]) -> Any:  # fmt: skip
    """One row per destructive sample: its image and label, then every exit's prediction and
    confidence, green where right and red where wrong; the first IC that is right is framed
    (the one whose Grad-CAM is drawn)."""
    from matplotlib.patches import Rectangle

    n, e = preds.shape
    cell, left = 1.0, 1.25  # exit cells start after the image column
    width = 1.0 + 0.72 * (e + 1.4)
    fig, ax = plt.subplots(figsize=(width, 0.72 * n + 0.9), layout="constrained")
    header = [f"IC{k}" for k in range(e - 1)] + ["final"]
    for k, name in enumerate(header):
        ax.text(left + k * cell + cell / 2, -0.12, name, ha="center", va="bottom", fontsize=8,
                fontweight="bold")  # fmt: skip
    for i in range(n):
        y0 = i * 1.1
        ax.imshow(_hwc(images[i]), extent=(0, 1, y0 + 1, y0), interpolation="nearest")
        ax.text(-0.08, y0 + 0.5, f"{labels[i]}", ha="right", va="center", fontsize=8)
        for k in range(e):
            ok = bool(correct[i, k])
            x0 = left + k * cell
            framed = k == first_ic[i]
            ax.add_patch(Rectangle((x0 + 0.03, y0 + 0.03), cell - 0.06, 0.94,
                                   facecolor=RIGHT_CELL if ok else WRONG_CELL,
                                   edgecolor="#1a7f37" if framed else "white",
                                   lw=1.8 if framed else 0.5))  # fmt: skip
            ax.text(x0 + cell / 2, y0 + 0.38, names[int(preds[i, k])], ha="center",
                    va="center", fontsize=8, color="#1a7f37" if ok else WRONG,
                    fontweight="bold")  # fmt: skip
            ax.text(x0 + cell / 2, y0 + 0.72, f"{100 * confidences[i, k]:.0f}%", ha="center",
                    va="center", fontsize=7, color="#1f2328")  # fmt: skip
    ax.text(0.5, -0.12, "sample", ha="center", va="bottom", fontsize=8, fontweight="bold")
    ax.set_xlim(-0.85, left + e * cell + 0.05)
    ax.set_ylim(n * 1.1, -0.5)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(f"{ctx.label(run)}: destructive test samples, each exit's answer",
                 loc="left", fontsize=10)  # fmt: skip
    return fig


# ---------------------------------------------------------------------------- Grad-CAM
def gradcam_grid(ctx: Any, run: Any, images: Sequence[Any], labels: Sequence[str],
                 panels: Sequence[Sequence[tuple[np.ndarray, str]]]) -> Any:  # fmt: skip
    """One row per sample: the image, then each map (the IC's, the final head's) laid over it.
    ``panels[i]`` is a list of (map [H, W] in [0, 1], title)."""
    n = len(images)
    cols = 1 + max(len(p) for p in panels)
    fig, axes = plt.subplots(n, cols, figsize=(2.15 * cols + 0.7, 2.15 * n + 0.5),
                             layout="constrained", squeeze=False)  # fmt: skip
    shown = None
    for i in range(n):
        picture = _hwc(images[i])
        axes[i, 0].imshow(picture, interpolation="nearest")
        axes[i, 0].set_title(labels[i], loc="left", fontsize=8.5)
        grey = picture.mean(axis=2)
        for j, (heat, title) in enumerate(panels[i], start=1):
            ax = axes[i, j]
            ax.imshow(grey, cmap="gray", interpolation="nearest")
            shown = ax.imshow(heat, cmap="inferno", alpha=0.55, vmin=0, vmax=1,
                              interpolation="bilinear")  # fmt: skip
            ax.set_title(title, loc="left", fontsize=8.5)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
    if shown is not None:
        bar = fig.colorbar(shown, ax=axes[:, -1].tolist(), shrink=0.6, pad=0.02)
        bar.set_label("Grad-CAM (each map / its max)", fontsize=8)
    fig.suptitle(f"{ctx.label(run)}: Grad-CAM on destructive samples", x=0.01, ha="left",
                 fontsize=10)  # fmt: skip
    return fig
