"""Figures of the backdoor experiment, for the report: matplotlib figures from catalogue rows and
Parquet predictions (the caller saves or embeds them; nothing here writes files).

* :func:`attack_success_figure`: per exit of each poisoned run, clean accuracy, accuracy on
  triggered inputs (true labels) and attack success, side by side: the paper's picture of the
  ICs still answering the true class while the final head answers the attacker's;
* :func:`detection_figure`: the confusion score and the final head's max-softmax confidence of
  clean vs triggered test inputs (non-target classes), with each score's AUROC: the paper's claim
  that confusion flags backdoored inputs while confidence does not;
* :func:`early_exit_figure`: on triggered inputs, accuracy and attack success of the final head
  against early exit at the run's stored threshold (chosen on clean validation).

:func:`sweep_figures` builds all of them for one sweep, named for files.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from sdn.backdoor_metrics import detection_auroc, non_target
from sdn.early_exit import format_threshold
from sdn.errors import SDNError
from sdn.results import Outputs

_COLOURS = {"clean": "#4c72b0", "triggered": "#55a868", "attack": "#c44e52"}


def _records(rows: Any) -> list[dict[str, Any]]:
    """Catalogue rows as dicts: a pandas DataFrame, ``readonly.Rows`` or dicts."""
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):
        return rows.to_dict("records")
    if hasattr(rows, "records"):
        return rows.records()
    return [dict(r) for r in rows]


def _label(row: Mapping[str, Any]) -> str:
    return f"{row['arch']}/{row['dataset']}/{row['train_mode']} (poisoned)/s{row['seed']}"


def _nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


def attack_success_figure(rows: Any) -> Figure:
    """One panel per poisoned run: grouped bars per exit (IC0 .. final) of clean accuracy,
    triggered accuracy and attack success, in percent. ``rows``: ``Catalogue.backdoor()``."""
    records = _records(rows)
    if not records:
        raise SDNError("no backdoor rows to plot: the sweep has no analysed poisoned run")
    runs: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        runs.setdefault(r["run_id"], []).append(r)
    fig, axes = plt.subplots(
        len(runs), 1, figsize=(7.5, 2.6 * len(runs)), squeeze=False, sharey=True
    )
    for ax, (_, exits) in zip(axes[:, 0], sorted(runs.items()), strict=True):
        exits = sorted(exits, key=lambda r: r["exit_index"])
        x = np.arange(len(exits))
        width = 0.27
        for i, (key, name, colour) in enumerate(
            (
                ("clean_accuracy", "clean accuracy", _COLOURS["clean"]),
                ("triggered_accuracy", "triggered accuracy (true labels)", _COLOURS["triggered"]),
                ("attack_success", "attack success", _COLOURS["attack"]),
            )
        ):
            values = [100 * _nan(r[key]) for r in exits]
            ax.bar(x + (i - 1) * width, values, width, label=name, color=colour)
        ax.set_xticks(x, ["final" if r["is_final"] else f"IC{r['exit_index']}" for r in exits])
        ax.set_ylim(0, 125)  # room for the legend above the bars
        ax.set_yticks(range(0, 101, 20))
        ax.set_ylabel("%")
        ax.set_title(_label(exits[0]), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=7, loc="upper center", ncols=3, frameon=False)
    fig.suptitle("backdoor per exit, test split (triggered: non-target images)", fontsize=10)
    fig.tight_layout()
    return fig


def detection_figure(clean: Outputs, triggered: Outputs, target: int, title: str = "") -> Figure:
    """Histograms of the confusion score and of the final head's max-softmax, clean vs triggered
    (non-target inputs only, as the stored AUROCs), each panel titled with its AUROC (positive =
    triggered; max-softmax scores ``1 - confidence``). ``clean`` / ``triggered``: the run's
    ``test`` and ``test_triggered`` outputs (``PredictionStore.read_outputs``)."""
    clean, triggered = non_target(clean, target), non_target(triggered, target)
    if clean.num_samples == 0 or triggered.num_samples == 0:
        raise SDNError("detection_figure needs clean and triggered non-target samples")
    confusion_auroc, softmax_auroc = detection_auroc(clean, triggered)
    panels = [("final head max-softmax confidence", -1, softmax_auroc)]
    if clean.num_exits > 1:
        panels.insert(0, ("confusion score (raw)", None, confusion_auroc))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (name, column, auroc) in zip(axes[0], panels, strict=True):
        if column is None:
            a, b = clean.confusion, triggered.confusion
        else:
            a, b = clean.confidences[:, column], triggered.confidences[:, column]
        bins = np.linspace(min(a.min(), b.min()), max(a.max(), b.max()) + 1e-6, 31)
        ax.hist(a, bins=bins, alpha=0.6, density=True, label="clean", color=_COLOURS["clean"])
        ax.hist(b, bins=bins, alpha=0.6, density=True, label="triggered", color=_COLOURS["attack"])
        shown = "n/a" if auroc is None else f"{auroc:.2f}"
        ax.set_title(f"{name}\nAUROC triggered vs clean: {shown}", fontsize=9)
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def early_exit_figure(summaries: Any) -> Figure:
    """Per poisoned run, on triggered inputs: accuracy and attack success of the final head
    against early exit at the run's stored threshold. ``summaries``:
    ``Reader.backdoor_summaries()`` rows (with ``final_triggered_accuracy`` and
    ``final_attack_success``), or ``Catalogue.backdoor_summaries()`` merged with the final
    exit's rows of ``Catalogue.backdoor()``."""
    records = [r for r in _records(summaries) if r.get("early_exit_accuracy") is not None]
    if not records:
        raise SDNError("no poisoned run has early-exit figures on triggered inputs")
    fig, ax = plt.subplots(figsize=(max(4.5, 1.8 * len(records) + 2), 3.4))
    x = np.arange(len(records))
    width = 0.2
    bars = (
        ("final_triggered_accuracy", "final head: accuracy", _COLOURS["triggered"], None),
        ("early_exit_accuracy", "early exit: accuracy", _COLOURS["triggered"], "//"),
        ("final_attack_success", "final head: attack success", _COLOURS["attack"], None),
        ("early_exit_attack_success", "early exit: attack success", _COLOURS["attack"], "//"),
    )
    for i, (key, name, colour, hatch) in enumerate(bars):
        values = [100 * _nan(r.get(key)) for r in records]
        ax.bar(x + (i - 1.5) * width, values, width, label=name, color=colour, hatch=hatch)
    ax.set_xticks(
        x,
        [
            f"{_label(r)}\nq={format_threshold(r.get('early_exit_threshold'))}, "
            f"cost {_nan(r.get('early_exit_relative_cost')):.2f}"
            for r in records
        ],
        fontsize=7,
    )
    ax.set_ylim(0, 130)  # room for the legend above the bars
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("% of triggered non-target test images")
    ax.legend(fontsize=7, ncols=2, loc="upper center", frameon=False)
    ax.set_title(
        "triggered inputs: final head vs early exit (threshold from clean val)", fontsize=9
    )
    fig.tight_layout()
    return fig


def sweep_figures(reader: Any, store: Any, sweep: str) -> dict[str, Figure]:
    """Every backdoor figure of ``sweep``: ``attack_success``, ``early_exit`` (when a run has
    early-exit figures) and ``detection_<run>`` per poisoned run. ``reader``: an open
    ``storage.catalogue.readonly.Reader``; ``store``: a ``PredictionStore``. Empty when the sweep
    has no analysed poisoned run."""
    rows = reader.backdoor(sweep=sweep)
    if rows.empty:
        return {}
    figures = {"attack_success": attack_success_figure(rows)}
    summaries = reader.backdoor_summaries(sweep=sweep)
    if any(r["early_exit_accuracy"] is not None for r in summaries.records()):
        figures["early_exit"] = early_exit_figure(summaries)
    for r in summaries.records():
        clean = store.read_outputs(r["run_id"], "test")
        triggered = store.read_outputs(r["run_id"], "test_triggered")
        name = "detection_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", r["run_id"])
        figures[name] = detection_figure(clean, triggered, int(r["target"]), _label(r))
    return figures


def close_all(figures: Iterable[Figure]) -> None:
    """Release the figures' memory (pyplot keeps every open figure)."""
    for fig in figures:
        plt.close(fig)
