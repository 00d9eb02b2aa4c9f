"""How every figure of the report looks: colour by architecture, line style by training mode,
the CNN as a marker and a reference line, and text labels that never overprint.

Colours are fixed per architecture name (not per run, not by plotting order), so a sweep of 12
runs shows 4 colours, each architecture in the same colour in every figure, and a reader learns
them once. The palette is Okabe and Ito's, which stays distinguishable with the common colour
vision deficiencies.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.text import Annotation, Text
from matplotlib.transforms import Bbox

# The paper's architectures, in the paper's order; then colours for any other architecture.
ARCH_ORDER = ("vgg16", "resnet56", "wrn32_4", "mobilenet")
ARCH_COLOURS = {
    "vgg16": "#009E73",  # bluish green
    "resnet56": "#0072B2",  # blue
    "wrn32_4": "#D55E00",  # vermillion
    "mobilenet": "#CC79A7",  # reddish purple
}
_SPARE_COLOURS = ("#E69F00", "#56B4E9", "#000000", "#8C564B", "#7F7F7F", "#BCBD22")

MODE_ORDER = ("cnn", "ic_only", "sdn")
MODE_LINES = {"sdn": "-", "ic_only": "--"}  # a CNN is a point: CNN_MARKER + a reference line
CNN_MARKER = "*"
CNN_LINE = ":"
EMPIRICAL_MARKER = "o"  # chosen on validation by the empirical rule
CERTIFIED_MARKER = "s"  # certified (Learn-then-Test); drawn hollow
FIGURE_DPI = 110

plt.rcParams.update(
    {
        "font.size": 9,
        "axes.titlesize": 10,
        "axes.labelsize": 9,
        "legend.fontsize": 8,
        "xtick.labelsize": 8,
        "ytick.labelsize": 8,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "axes.axisbelow": True,
        "grid.alpha": 0.25,
        "figure.dpi": FIGURE_DPI,
        "savefig.dpi": FIGURE_DPI,
    }
)


def arch_sort_key(arch: str) -> tuple[int, str]:
    return (ARCH_ORDER.index(arch) if arch in ARCH_ORDER else len(ARCH_ORDER), arch)


def mode_sort_key(mode: str) -> int:
    return MODE_ORDER.index(mode) if mode in MODE_ORDER else len(MODE_ORDER)


def arch_colours(archs: Iterable[str]) -> dict[str, str]:
    """A colour per architecture: the fixed one for the paper's four, then spare colours for
    others in name order (the same architecture set always gets the same colours)."""
    names = sorted(set(archs), key=arch_sort_key)
    spare = iter(_SPARE_COLOURS * (1 + len(names) // len(_SPARE_COLOURS)))
    return {a: ARCH_COLOURS[a] if a in ARCH_COLOURS else next(spare) for a in names}


def mode_line(mode: str) -> str:
    return MODE_LINES.get(mode, "-.")


def exit_name(exit_index: int, is_final: bool) -> str:
    """How the CLI names an exit: IC0, IC1, ..., final."""
    return "final" if is_final else f"IC{exit_index}"


# ---------------------------------------------------------------------------- labels
@dataclass
class Label:
    """A text label for the point (x, y) in data coordinates."""

    x: float
    y: float
    text: str
    colour: str = "#333333"


# Offsets (in points) tried for each label, nearest first: right, left, above, below, diagonals,
# then further out (with a leader line).
_ANGLES = (0, 180, 90, -90, 35, -35, 145, -145, 60, -60, 120, -120)
_RADII = (7, 16, 28, 42, 60, 80, 105, 135)
OFFSETS = tuple(
    (r * math.cos(math.radians(a)), r * math.sin(math.radians(a))) for r in _RADII for a in _ANGLES
)
LEADER_FROM = 9.0  # points: a label further from its point than this gets a leader line


def _overlaps(box: Bbox, others: Sequence[Bbox]) -> bool:
    return any(box.overlaps(o) for o in others)


def _hits(box: Bbox, xy: np.ndarray) -> int:
    """How many of the display points ``xy`` ([n, 2]) fall in ``box``."""
    if len(xy) == 0:
        return 0
    inside = (
        (xy[:, 0] >= box.x0) & (xy[:, 0] <= box.x1) & (xy[:, 1] >= box.y0) & (xy[:, 1] <= box.y1)
    )
    return int(inside.sum())


def _annotate(ax: Any, label: Label, dx: float, dy: float, fontsize: float) -> Annotation:
    far = math.hypot(dx, dy) > LEADER_FROM
    return ax.annotate(
        label.text, (label.x, label.y), xytext=(dx, dy), textcoords="offset points",
        fontsize=fontsize, color=label.colour, zorder=6,
        ha="left" if dx > 1 else "right" if dx < -1 else "center",
        va="bottom" if dy > 1 else "top" if dy < -1 else "center",
        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85},
        arrowprops={"arrowstyle": "-", "color": label.colour, "lw": 0.6, "alpha": 0.7,
                    "shrinkA": 0, "shrinkB": 3} if far else None,
    )  # fmt: skip


def text_box(note: Text, renderer: Any) -> Bbox:
    """The display box of a label's text (its leader line left out), with a pixel of margin."""
    if isinstance(note, Annotation):
        note.update_positions(renderer)  # where the offset puts the text, before any draw
    box = Text.get_window_extent(note, renderer)
    return Bbox.from_extents(box.x0 - 1, box.y0 - 1, box.x1 + 1, box.y1 + 1)


def place_labels(ax: Any, labels: Sequence[Label], fontsize: float = 7.0) -> list[Annotation]:
    """Annotate each label near its point so that no two labels overlap, no label covers a
    labelled point, and every label stays inside the axes; among such places, the one covering
    the fewest line vertices and nearest to its point wins. A label set away from its point
    gets a thin leader line. Returns the annotations (a test checks that they do not overlap)."""
    fig = ax.figure
    fig.canvas.draw()  # display coordinates need a renderer and the final axis limits
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    to_display = ax.transData.transform
    points = to_display(np.array([[lb.x, lb.y] for lb in labels])) if labels else np.zeros((0, 2))
    pad = 3.0
    point_boxes = [Bbox.from_extents(px - pad, py - pad, px + pad, py + pad) for px, py in points]
    vertices = [
        to_display(np.column_stack(line.get_data()).astype(float))
        for line in ax.get_lines()
        if len(line.get_xdata()) > 1
    ]
    line_xy = np.concatenate(vertices) if vertices else np.zeros((0, 2))
    scale = fig.dpi / 72.0
    placed: list[Bbox] = []
    out: list[Annotation] = []
    # Top to bottom, then left to right: a stable order, so a report looks the same each time.
    for i in sorted(range(len(labels)), key=lambda i: (-labels[i].y, labels[i].x)):
        label = labels[i]
        best: tuple[float, float, float, Bbox] | None = None
        for dx, dy in OFFSETS:
            note = _annotate(ax, label, dx, dy, fontsize)
            box = text_box(note, renderer)
            note.remove()
            inside = (
                box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0
                and box.y1 <= frame.y1
            )  # fmt: skip
            if not inside or _overlaps(box, placed) or _overlaps(box, point_boxes):
                continue
            score = math.hypot(dx, dy) * scale + 25.0 * _hits(box, line_xy)
            if best is None or score < best[0]:
                best = (score, dx, dy, box)
            if score <= 8 * scale:  # right next to its point and over no line: good enough
                break
        if best is None:  # nowhere free inside the axes: beside the point, the best we can do
            note = _annotate(ax, label, 8, 8, fontsize)
            placed.append(text_box(note, renderer))
        else:
            _, dx, dy, box = best
            note = _annotate(ax, label, dx, dy, fontsize)
            placed.append(box)
        out.append(note)
    return out
