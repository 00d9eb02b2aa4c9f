"""The report's figures, drawn from the stored results the context hands over.

Conventions (``workflows.report.style``): colour = architecture, line style = training mode
(``sdn`` solid, ``ic_only`` dashed), the CNN = a star at cost 1 and a dotted horizontal line at
its accuracy, in its architecture's colour. Chosen operating points: a filled circle for the
empirical rule, a hollow square for the certified one, one label per distinct point listing the
targets that chose it (with ``unmet`` / ``none certified``), placed so that labels do not
overprint. Titles are short; what a figure shows in detail is in its HTML caption.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from sdn.early_exit import Target, format_target, format_threshold, unmet_label
from workflows.report import style
from workflows.report.style import Label, place_labels, plt


def _pct(values: Any) -> np.ndarray:
    return 100.0 * np.asarray(values, dtype=float)


# ---------------------------------------------------------------------------- chosen points
def target_phrase(names: Sequence[str]) -> str:
    """``["max_drop=0.00", "max_drop=0.01", "budget=0.50"]`` -> ``max drop 0, 1 pt; budget 0.50``
    (targets of one kind share their words)."""
    drops, budgets, other = [], [], []
    for name in names:
        try:
            target = Target.parse(name)
        except ValueError:
            other.append(name)
            continue
        (drops if target.kind == "max_drop" else budgets).append(target.value)
    parts = []
    if drops:
        parts.append("max drop " + ", ".join(f"{100 * v:g}" for v in sorted(drops)) + " pt")
    if budgets:
        parts.append("budget " + ", ".join(format_target(v) for v in sorted(budgets)))
    return "; ".join([*parts, *other])


def point_text(rows: pd.DataFrame, policy: str) -> str:
    """The label of one distinct chosen point: its threshold, then per method the targets that
    chose it, grouped by status (``unmet`` / ``none certified`` said after them)."""
    threshold = rows["threshold"].iloc[0]
    threshold = (
        None
        if threshold is None or (isinstance(threshold, float) and math.isnan(threshold))
        else threshold
    )
    lines = []
    for method in ("empirical", "certified"):
        mine = rows[rows["method"] == method]
        if mine.empty:
            continue
        parts = []
        for met in (True, False):
            names = list(mine.loc[mine["met"].astype(bool) == met, "target"])
            if names:
                status = "" if met else f" ({unmet_label(False, method)})"
                parts.append(target_phrase(names) + status)
        prefix = "certified: " if method == "certified" else ""
        lines.append(prefix + "; ".join(parts))
    return f"{format_threshold(threshold, policy)}: " + "\n".join(lines)


def distinct_points(choices: pd.DataFrame) -> list[tuple[float, float, pd.DataFrame]]:
    """The stored choices grouped by their test point: (cost, accuracy, rows), by cost."""
    if choices.empty:
        return []
    test = choices.dropna(subset=["test_relative_cost", "test_accuracy"])
    groups = test.groupby(["test_relative_cost", "test_accuracy"], sort=True)
    return [(float(c), float(a), rows) for (c, a), rows in groups]


# ---------------------------------------------------------------------------- shared pieces
def _draw_cnn(ax: Any, cost: float, accuracy: float, colour: str, run_id: str) -> None:
    """The CNN: a star at its cost and accuracy, a dotted line across at its accuracy. Artists
    carry ``gid``s (``cnn:RUN``, ``cnn-line:RUN``) so tests can find what was drawn for whom."""
    ax.axhline(100 * accuracy, color=colour, ls=style.CNN_LINE, lw=1.0, alpha=0.8, zorder=1,
               gid=f"cnn-line:{run_id}")  # fmt: skip
    ax.plot([cost], [100 * accuracy], style.CNN_MARKER, color=colour, ms=11, mec="white",
            mew=0.6, zorder=5, gid=f"cnn:{run_id}")  # fmt: skip


def _final_point(
    exits: pd.DataFrame, run_id: str, split: str = "test"
) -> tuple[float, float] | None:
    rows = exits[(exits["run_id"] == run_id) & (exits["split"] == split) & exits["is_final"]]
    if rows.empty:
        return None
    row = rows.iloc[0]
    return float(row["relative_cost"]), float(row["accuracy"])


def _curve(curves: pd.DataFrame, run_id: str, policy: str, split: str = "test") -> pd.DataFrame:
    rows = curves[
        (curves["run_id"] == run_id) & (curves["policy"] == policy) & (curves["split"] == split)
    ]
    return rows.sort_values(["relative_cost", "accuracy"])


def _curve_xy(
    curve: pd.DataFrame, final: tuple[float, float] | None
) -> tuple[np.ndarray, np.ndarray]:
    """The curve's points by cost, ending at the final head (early exit off)."""
    x = list(curve["relative_cost"])
    y = list(curve["accuracy"])
    if final is not None and (not x or final[0] >= x[-1]):
        x.append(final[0])
        y.append(final[1])
    return np.asarray(x, float), _pct(y)


def _fit_ylim(ax: Any) -> None:
    """Accuracy axis (%) around what is drawn, with room for labels; never beyond 0..100 + a bit."""
    values = [
        v for line in ax.get_lines() for v in np.asarray(line.get_ydata(), float)
        if np.isfinite(v)
    ]  # fmt: skip
    if not values:
        return
    low, high = min(values), max(values)
    pad = max(2.0, 0.12 * (high - low))
    ax.set_ylim(max(0.0, low - pad), min(103.0, high + pad))


def _legend_handles(ctx: Any, archs: Sequence[str], modes: Sequence[str], chosen: bool,
                    cnn: bool) -> list[Any]:  # fmt: skip
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=ctx.colours[a], lw=2.5, label=a) for a in archs]
    handles += [Line2D([], [], color="#555555", ls=style.mode_line(m), lw=1.4, label=m)
                for m in modes if m != "cnn"]  # fmt: skip
    if cnn:
        handles.append(Line2D([], [], color="#555555", ls=style.CNN_LINE, marker=style.CNN_MARKER,
                              ms=9, label="CNN"))  # fmt: skip
    if chosen:
        handles.append(Line2D([], [], ls="", marker=style.EMPIRICAL_MARKER, color="#555555",
                              ms=5, label="chosen (empirical)"))  # fmt: skip
        handles.append(Line2D([], [], ls="", marker=style.CERTIFIED_MARKER, mfc="none",
                              color="#555555", ms=6, label="chosen (certified)"))  # fmt: skip
    return handles


def _mark_choices(ax: Any, choices: pd.DataFrame, colour: str, size: float = 5.0) -> None:
    """Each distinct stored test point of the choices, per method (``gid`` ``chosen:METHOD:RUN``)."""
    for method, marker in (("empirical", style.EMPIRICAL_MARKER),
                           ("certified", style.CERTIFIED_MARKER)):  # fmt: skip
        rows = choices[choices["method"] == method].dropna(subset=["test_relative_cost"])
        if rows.empty:
            continue
        points = rows.drop_duplicates(["test_relative_cost", "test_accuracy"])
        face = colour if method == "empirical" else "none"
        run_id = str(points["run_id"].iloc[0]) if "run_id" in points else ""
        ax.plot(points["test_relative_cost"], _pct(points["test_accuracy"]), marker, ls="",
                mfc=face, mec=colour, mew=1.2, ms=size + (1 if method == "certified" else 0),
                zorder=4, gid=f"chosen:{method}:{run_id}")  # fmt: skip


# ---------------------------------------------------------------------------- accuracy vs cost
def cost_accuracy_run(ctx: Any, run: Any, policy: str = "confidence") -> tuple[Any, list[Any]]:
    """One run's test curve for ``policy`` with its CNN and its chosen points, each distinct
    point labelled once. Returns (figure, the label annotations)."""
    colour = ctx.colours[run.arch]
    fig, ax = plt.subplots(figsize=(7.0, 4.6), layout="constrained")
    curve = _curve(ctx.curves, run.run_id, policy)
    final = _final_point(ctx.exits, run.run_id)
    x, y = _curve_xy(curve, final)
    ax.plot(x, y, style.mode_line(run.train_mode), color=colour, lw=1.6, zorder=3,
            gid=f"curve:{run.run_id}")  # fmt: skip
    cnn = ctx.cnn_of(run)
    cnn_point = _final_point(ctx.exits, cnn.run_id) if cnn is not None else None
    if cnn_point is not None:
        _draw_cnn(ax, 1.0, cnn_point[1], colour, cnn.run_id)
    choices = ctx.choices[(ctx.choices["run_id"] == run.run_id) & (ctx.choices["policy"] == policy)]
    _mark_choices(ax, choices, colour, size=6)
    ax.set_xlabel("average cost relative to the CNN")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{ctx.label(run)}: accuracy vs cost ({policy})", loc="left")
    ax.set_xlim(left=0)
    _fit_ylim(ax)
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=colour, ls=style.mode_line(run.train_mode), label=f"{run.train_mode} curve (test)"),
        *([Line2D([], [], color=colour, ls=style.CNN_LINE, marker=style.CNN_MARKER, ms=9, label="CNN")] if cnn_point else []),
        Line2D([], [], ls="", marker=style.EMPIRICAL_MARKER, color=colour, ms=6, label="chosen on val (empirical)"),
        Line2D([], [], ls="", marker=style.CERTIFIED_MARKER, mfc="none", color=colour, ms=7, label="certified"),
    ]  # fmt: skip
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
    fig.canvas.draw()
    fig.set_layout_engine("none")  # freeze the layout: labels are placed in final coordinates
    labels = [
        Label(cost, 100 * acc, point_text(rows, policy), "#222222")
        for cost, acc, rows in distinct_points(choices)
    ]
    notes = place_labels(ax, labels)
    return fig, notes


def cost_accuracy_sweep(ctx: Any, policy: str = "confidence") -> Any:
    """Every analysed run's test curve for ``policy`` (one panel per data set), the CNNs, and
    every stored chosen point marked (labels are on each run's own figure)."""
    runs = ctx.analysed
    datasets = sorted(set(runs["dataset"]))
    n = max(1, len(datasets))
    cols = min(n, 2)
    rows_n = math.ceil(n / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(7.8 if cols == 1 else 11.5, 4.8 * rows_n),
                             layout="constrained", squeeze=False)  # fmt: skip
    for ax, dataset in zip(axes.flat, datasets, strict=False):
        mine = runs[runs["dataset"] == dataset]
        for run in mine.itertuples():
            colour = ctx.colours[run.arch]
            if run.train_mode == "cnn":
                point = _final_point(ctx.exits, run.run_id)
                if point is not None:
                    _draw_cnn(ax, 1.0, point[1], colour, run.run_id)
                continue
            curve = _curve(ctx.curves, run.run_id, policy)
            if curve.empty:
                continue
            x, y = _curve_xy(curve, _final_point(ctx.exits, run.run_id))
            ax.plot(x, y, style.mode_line(run.train_mode), color=colour, lw=1.4, alpha=0.9,
                    gid=f"curve:{run.run_id}")  # fmt: skip
            chosen = ctx.choices[
                (ctx.choices["run_id"] == run.run_id) & (ctx.choices["policy"] == policy)
            ]
            _mark_choices(ax, chosen, colour, size=4.5)
        ax.set_title(dataset if n > 1 else f"accuracy vs cost, all runs ({policy})", loc="left")
        ax.set_xlabel("average cost relative to the CNN")
        ax.set_ylabel("test accuracy (%)")
        ax.set_xlim(left=0)
        _fit_ylim(ax)
    for ax in list(axes.flat)[len(datasets) :]:
        ax.set_visible(False)
    archs = sorted(set(runs["arch"]), key=style.arch_sort_key)
    modes = sorted(set(runs["train_mode"]), key=style.mode_sort_key)
    handles = _legend_handles(ctx, archs, modes, chosen=True, cnn="cnn" in modes)
    fig.legend(handles=handles, loc="outside right upper", frameon=False)
    if n > 1:
        fig.suptitle(f"accuracy vs cost, all runs ({policy})", x=0.01, ha="left")
    return fig


# ---------------------------------------------------------------------------- per exit
def per_exit_sweep(ctx: Any, value: str = "accuracy") -> Any:
    """Each exit's test accuracy (``value="accuracy"``) or ECE (``"ece"``) against its
    relative cost: one panel per architecture (and data set), modes as line styles, the CNN as a
    star (and, for accuracy, a reference line)."""
    runs = ctx.analysed
    exits = ctx.exits[ctx.exits["split"] == "test"]
    panels = sorted({(r.arch, r.dataset) for r in runs.itertuples()},
                    key=lambda k: (style.arch_sort_key(k[0]), k[1]))  # fmt: skip
    n = max(1, len(panels))
    cols = min(n, 2)
    rows_n = math.ceil(n / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(11.0 if cols > 1 else 6.5, 3.4 * rows_n),
                             layout="constrained", squeeze=False, sharey=True)  # fmt: skip
    many_datasets = len({d for _, d in panels}) > 1
    for ax, (arch, dataset) in zip(axes.flat, panels, strict=False):
        colour = ctx.colours[arch]
        mine = runs[(runs["arch"] == arch) & (runs["dataset"] == dataset)]
        for run in mine.itertuples():
            rows = exits[exits["run_id"] == run.run_id].sort_values("exit_index")
            if rows.empty or rows[value].isna().all():
                continue
            y = _pct(rows[value])
            if run.train_mode == "cnn":
                if value == "accuracy":
                    cost, acc = rows["relative_cost"].iloc[-1], rows[value].iloc[-1]
                    _draw_cnn(ax, float(cost), float(acc), colour, run.run_id)
                else:
                    ax.plot(rows["relative_cost"], y, style.CNN_MARKER, color=colour, ms=11,
                            mec="white", mew=0.6, zorder=5, gid=f"cnn:{run.run_id}")  # fmt: skip
                continue
            ax.plot(rows["relative_cost"], y, style.mode_line(run.train_mode), marker="o", ms=3.5,
                    color=colour, lw=1.4, gid=f"curve:{run.run_id}")  # fmt: skip
        ax.set_title(f"{arch} ({dataset})" if many_datasets else arch, loc="left")
        ax.set_xlabel("relative cost of the exit")
        ax.set_xlim(left=0)
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy (%)" if value == "accuracy" else "ECE, test (%)")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    modes = sorted(set(runs["train_mode"]), key=style.mode_sort_key)
    handles = _legend_handles(ctx, [], modes, chosen=False, cnn="cnn" in modes)
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
    return fig


# ---------------------------------------------------------------------------- calibration
def reliability_run(ctx: Any, run: Any, split: str = "test") -> Any | None:
    """Reliability diagram of every exit of one run (accuracy per confidence bin against the
    diagonal), the CNN's final head beside them when the sweep has it."""
    cal = ctx.calibration
    rows = cal[(cal["run_id"] == run.run_id) & (cal["split"] == split)].sort_values("exit_index")
    if rows.empty:
        return None
    panels = [(style.exit_name(r.exit_index, r.is_final), r, ctx.colours[run.arch])
              for r in rows.itertuples()]  # fmt: skip
    cnn = ctx.cnn_of(run)
    if cnn is not None and cnn.run_id != run.run_id:
        ref = cal[(cal["run_id"] == cnn.run_id) & (cal["split"] == split)]
        if not ref.empty:
            panels.append(("CNN", next(ref.itertuples()), "#777777"))
    cols = min(4, len(panels))
    rows_n = math.ceil(len(panels) / cols)
    width, height = 2.35 * cols + 0.5, 2.2 * rows_n + 0.75
    fig, axes = plt.subplots(rows_n, cols, figsize=(width, height), squeeze=False, sharex=True,
                             sharey=True)  # fmt: skip
    # Fixed margins (in inches), not a layout engine: this grid is drawn for every run.
    fig.subplots_adjust(left=0.55 / width, right=1 - 0.1 / width, bottom=0.55 / height,
                        top=1 - 0.5 / height, wspace=0.12, hspace=0.42)  # fmt: skip
    edges = np.linspace(0, 1, 16)
    for ax, (name, r, colour) in zip(axes.flat, panels, strict=False):
        bins = r.reliability or {}
        acc = list(bins.get("accuracy", []))[:15]  # None: an empty bin
        conf = list(bins.get("confidence", []))[:15]
        full = [i for i, a in enumerate(acc) if a is not None]
        ax.bar(edges[full], [acc[i] for i in full], width=1 / 15, align="edge", color=colour,
               alpha=0.8, edgecolor="white", lw=0.4)  # fmt: skip
        # Each bin's mean confidence: where its bar would end if the exit were calibrated.
        ticks = [i for i in full if i < len(conf) and conf[i] is not None]
        ax.hlines([conf[i] for i in ticks], edges[ticks], edges[ticks] + 1 / 15,
                  color="#222222", lw=0.9)  # fmt: skip
        ax.plot([0, 1], [0, 1], ":", color="#888888", lw=0.9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xticks([0, 0.5, 1])
        ax.set_yticks([0, 0.5, 1])
        ax.set_title(f"{name} · ECE {100 * r.ece:.1f}%", fontsize=9, loc="left")
        ax.grid(alpha=0.2)
    for i, ax in enumerate(axes.flat):
        if i >= len(panels):
            ax.set_visible(False)
        elif i + cols >= len(panels):  # nothing below it: it shows the confidence ticks
            ax.xaxis.set_tick_params(labelbottom=True)
    fig.supxlabel("confidence (max softmax)", fontsize=9, y=0.02)
    fig.supylabel("accuracy", fontsize=9, x=0.01)
    fig.suptitle(f"{ctx.label(run)}: reliability per exit ({split})", x=0.01, y=0.99, ha="left",
                 va="top", fontsize=10)  # fmt: skip
    return fig


# ---------------------------------------------------------------------------- overthinking
def _exit_colours(n_ics: int) -> list[Any]:
    cmap = plt.get_cmap("viridis")
    return [cmap(0.12 + 0.7 * i / max(1, n_ics - 1)) for i in range(n_ics)]


def first_correct_sweep(ctx: Any) -> Any | None:
    """Where each run's test samples are first right: stacked shares by exit (ICs light to dark,
    the final head, never right)."""
    over = ctx.overthinking
    runs = ctx.analysed
    runs = runs[runs["run_id"].isin(set(over["run_id"]))]
    if runs.empty:
        return None
    counts = {r.run_id: list(r.first_correct) for r in over.itertuples()}
    max_ics = max(len(counts[r]) - 2 for r in runs["run_id"])
    ic_colours = _exit_colours(max(1, max_ics))
    fig, ax = plt.subplots(figsize=(10.5, 0.42 * len(runs) + 1.6), layout="constrained")
    names = []
    for y, run in enumerate(runs.itertuples()):
        c = np.asarray(counts[run.run_id], float)
        shares = 100 * c / max(1.0, c.sum())
        left = 0.0
        n_ics = len(c) - 2
        colours = [*ic_colours[:n_ics], "#1f2a44", "#d0d4d9"]
        for i, share in enumerate(shares):
            ax.barh(y, share, left=left, color=colours[i], edgecolor="white", lw=0.5, height=0.72)
            if share >= 6:
                dark = (i < n_ics and i < len(ic_colours) * 0.6) or i == len(c) - 2
                ax.text(left + share / 2, y, f"{share:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if dark else "#222222")  # fmt: skip
            left += share
        names.append(ctx.label(run))
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("test samples (%)")
    ax.grid(axis="y", visible=False)
    ax.set_title("first exit that gets each test sample right", loc="left")
    from matplotlib.patches import Patch

    handles = [Patch(color=ic_colours[i], label=f"IC{i}") for i in range(max_ics)]
    handles += [Patch(color="#1f2a44", label="final"), Patch(color="#d0d4d9", label="never")]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
    return fig


def destructive_sweep(ctx: Any) -> Any | None:
    """Destructive overthinking per IC: of the final head's test errors, the share each IC got
    right; a line per run (``sdn`` and ``ic_only``)."""
    over = ctx.overthinking
    runs = ctx.analysed
    runs = runs[runs["run_id"].isin(set(over[over["destructive_per_ic"].map(len) > 0]["run_id"]))]
    if runs.empty:
        return None
    per = {r.run_id: list(r.destructive_per_ic) for r in over.itertuples()}
    fig, ax = plt.subplots(figsize=(7.8, 4.2), layout="constrained")
    for run in runs.itertuples():
        values = [np.nan if v is None else v for v in per[run.run_id]]
        ax.plot(range(len(values)), _pct(values), style.mode_line(run.train_mode), marker="o",
                ms=3.5, color=ctx.colours[run.arch], lw=1.4)  # fmt: skip
    longest = max(len(per[r]) for r in runs["run_id"])
    ax.set_xticks(range(longest), [f"IC{i}" for i in range(longest)])
    ax.set_ylim(0, 102)
    ax.set_ylabel("final-head errors this IC got right (%)")
    ax.set_title("destructive overthinking per IC (test)", loc="left")
    archs = sorted(set(runs["arch"]), key=style.arch_sort_key)
    modes = sorted(set(runs["train_mode"]), key=style.mode_sort_key)
    fig.legend(handles=_legend_handles(ctx, archs, modes, chosen=False, cnn=False),
               loc="outside right upper", frameon=False)  # fmt: skip
    return fig


def overthinking_run(ctx: Any, run: Any, over: Any) -> Any:
    """One run: where test samples are first right, and destructive overthinking per IC."""
    colour = ctx.colours[run.arch]
    counts = np.asarray(list(over.first_correct), float)
    shares = 100 * counts / max(1.0, counts.sum())
    n_ics = len(counts) - 2
    names = [f"IC{i}" for i in range(n_ics)] + ["final", "never"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.6, 3.5), layout="constrained",
                                      width_ratios=[1.15, 1])  # fmt: skip
    bar_colours = [colour] * n_ics + ["#1f2a44", "#b8bec6"]
    left.bar(names, shares, color=bar_colours)
    for i, share in enumerate(shares):
        left.text(i, share + 1, f"{share:.0f}", ha="center", va="bottom", fontsize=7)
    left.set_ylim(0, max(10.0, float(shares.max()) * 1.15))
    left.set_ylabel("test samples (%)")
    left.set_title("first correct at", loc="left")
    left.grid(axis="x", visible=False)
    per = [np.nan if v is None else 100 * v for v in list(over.destructive_per_ic)]
    right.bar([f"IC{i}" for i in range(len(per))], per, color=colour, alpha=0.85)
    right.set_ylim(0, 102)
    right.set_ylabel("final-head errors it got right (%)")
    right.set_title(f"destructive per IC (all: {100 * over.destructive_fraction:.0f}%)", loc="left")
    right.grid(axis="x", visible=False)
    fig.suptitle(f"{ctx.label(run)}: overthinking (test)", x=0.01, ha="left", fontsize=10)
    return fig


def confusion_run(ctx: Any, run: Any, over: Any, outputs: Any) -> Any | None:
    """Histograms of the standardised confusion score for the final head's right and wrong test
    predictions (the score from Parquet, standardised by the stored training statistics)."""
    if outputs is None or outputs.num_exits < 2:
        return None
    std = over.confusion_std or 1.0
    score = (np.asarray(outputs.confusion, float) - (over.confusion_mean or 0.0)) / std
    right = np.asarray(outputs.correct)[:, -1].astype(bool)
    fig, ax = plt.subplots(figsize=(6.2, 3.5), layout="constrained")
    finite = score[np.isfinite(score)]
    if finite.size == 0:
        plt.close(fig)
        return None
    bins = np.linspace(float(finite.min()), float(finite.max()) + 1e-9, 30)
    colour = ctx.colours[run.arch]
    ax.hist(score[right], bins=bins, alpha=0.55, density=True, color=colour,
            label=f"final head right ({int(right.sum())})")  # fmt: skip
    ax.hist(score[~right], bins=bins, alpha=0.65, density=True, color="#cf222e",
            histtype="stepfilled", label=f"final head wrong ({int((~right).sum())})")  # fmt: skip
    ax.set_xlabel("standardised confusion score")
    ax.set_ylabel("density")
    auroc = over.confusion_auroc
    extra = (
        ""
        if auroc is None or (isinstance(auroc, float) and math.isnan(auroc))
        else f", AUROC {auroc:.2f}"
    )
    ax.set_title(f"{ctx.label(run)}: confusion (test{extra})", loc="left")
    fig.legend(loc="outside lower center", ncol=2, frameon=False)
    return fig
