"""PNG reports of a run or a whole sweep, drawn from the catalogue and the Parquet predictions.

Per run: accuracy against relative cost (the test early-exit curve, with the operating points
chosen on validation marked), per-exit accuracy, the first-correct histogram (wasteful
overthinking), and the confusion-score histograms of the final head's right and wrong predictions.
For a sweep: the overview plots with one line per run, plus every run's own plots.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from sdn.errors import SDNError


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _label(row) -> str:
    return f"{row.arch}/{row.dataset}/{row.train_mode}/s{row.seed}"


def _curve(cat, run_id: str, policy: str = "confidence") -> pd.DataFrame:
    return cat.sql(
        "SELECT p.split, p.threshold, p.accuracy, p.relative_cost "
        "FROM early_exit_points p JOIN runs r ON r.id = p.run_pk "
        "WHERE r.run_id = ? AND p.policy = ? ORDER BY p.split, p.threshold",
        (run_id, policy),
    )


def _chosen(cat, run_id: str, policy: str = "confidence") -> pd.DataFrame:
    """The run's stored choices (empirical) with their test figures: what the CLI shows."""
    return cat.sql(
        "SELECT c.target, c.threshold, c.test_accuracy, c.test_relative_cost, c.met "
        "FROM early_exit_choices c JOIN runs r ON r.id = c.run_pk "
        "WHERE r.run_id = ? AND c.policy = ? AND c.method = 'empirical' "
        "AND c.test_accuracy IS NOT NULL ORDER BY c.target",
        (run_id, policy),
    )


def _plot_cost_accuracy(
    ax, curve: pd.DataFrame, label: str, chosen: pd.DataFrame | None = None
) -> None:
    test = curve[curve["split"] == "test"].sort_values("relative_cost")
    if test.empty:
        return
    (line,) = ax.plot(test["relative_cost"], 100 * test["accuracy"], "-", lw=1.2, label=label)
    if chosen is None or chosen.empty:
        return
    # One dot and one label per distinct point, listing every target that chose it.
    for (cost, acc), rows in chosen.groupby(["test_relative_cost", "test_accuracy"], sort=True):
        ax.plot(cost, 100 * acc, "o", color=line.get_color(), ms=5)
        names = ", ".join(
            t + ("" if met else " (unmet)")
            for t, met in zip(rows["target"], rows["met"], strict=True)
        )
        ax.annotate(
            names, (cost, 100 * acc), fontsize=6, xytext=(3, -8), textcoords="offset points"
        )


def _finish(fig, path: Path, files: list[Path]) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    files.append(path)


def run_report(cat, run, folder: Path, predictions_root: Path | None) -> list[Path]:
    """Every plot of one run (a row of ``cat.runs()``) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    label = _label(run)

    fig, ax = plt.subplots(figsize=(5.5, 4))
    _plot_cost_accuracy(ax, _curve(cat, run.run_id), label, _chosen(cat, run.run_id))
    ax.set(
        xlabel="average cost relative to the CNN",
        ylabel="test accuracy (%)",
        title=f"early exit: {label}\n(dots: thresholds chosen on validation)",
    )
    ax.grid(alpha=0.3)
    _finish(fig, folder / "accuracy_vs_cost.png", files)

    exits = cat.exits(run_id=run.run_id)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for split, rows in exits.groupby("split"):
        names = [
            "final" if f else f"IC{i}"
            for i, f in zip(rows["exit_index"], rows["is_final"], strict=True)
        ]
        ax.plot(names, 100 * rows["accuracy"], "o-", label=split)
    ax.set(ylabel="accuracy (%)", title=f"per-exit accuracy: {label}")
    ax.legend()
    ax.grid(alpha=0.3)
    _finish(fig, folder / "per_exit_accuracy.png", files)

    calibration = cat.calibration(run_id=run.run_id, split="test")
    if not calibration.empty:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
        for row in calibration.itertuples(index=False):
            bins = row.reliability
            pairs = [
                (c, a)
                for c, a in zip(bins["confidence"], bins["accuracy"], strict=True)
                if c is not None
            ]
            name = "final" if row.is_final else f"IC{row.exit_index}"
            ax.plot(
                [c for c, _ in pairs],
                [a for _, a in pairs],
                "o-",
                ms=3,
                label=f"{name} (ECE {100 * row.ece:.1f} %)",
            )
        ax.set(
            xlabel="confidence (bin mean)",
            ylabel="accuracy",
            title=f"reliability per exit (test, 15 bins): {label}",
        )
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
        _finish(fig, folder / "reliability.png", files)

    over = cat.overthinking(run_id=run.run_id)
    if not over.empty:
        o = over.iloc[0]
        counts = list(o["first_correct"])
        names = [f"IC{i}" for i in range(len(counts) - 2)] + ["final", "never"]
        fig, ax = plt.subplots(figsize=(5.5, 4))
        total = max(1, sum(counts))
        ax.bar(names, [100 * c / total for c in counts], color="tab:blue")
        ax.set(
            ylabel="test samples (%)",
            title=f"first correct output (wasteful overthinking): {label}\n"
            f"destructive: {100 * o['destructive_fraction']:.1f}% of final-head errors",
        )
        _finish(fig, folder / "first_correct.png", files)
        if predictions_root is not None:
            path = _confusion_histogram(run, o, predictions_root, folder, label)
            if path is not None:
                files.append(path)
    return files


def _confusion_histogram(run, o, predictions_root: Path, folder: Path, label: str) -> Path | None:
    from storage.predictions import PredictionStore

    store = PredictionStore(predictions_root)
    if not any(
        p.name.endswith(".test.parquet") for p in store.files_for_run(run.run_id, "outputs")
    ):
        return None  # not analysed (yet): nothing to draw
    out = store.read_outputs(run.run_id, "test")  # a damaged file fails here, naming itself
    if out.num_exits < 2:
        return None
    std = o["confusion_std"] or 1.0
    score = (out.confusion - o["confusion_mean"]) / std
    right = out.correct[:, -1]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    bins = np.linspace(float(score.min()), float(score.max()) + 1e-9, 30)
    ax.hist(score[right], bins=bins, alpha=0.6, density=True, label="final head right")
    ax.hist(score[~right], bins=bins, alpha=0.6, density=True, label="final head wrong")
    auroc = o["confusion_auroc"]
    ax.set(
        xlabel="standardised confusion score",
        ylabel="density",
        title=f"confusion: {label}\nAUROC {auroc:.2f}"
        if auroc is not None
        else f"confusion: {label}",
    )
    ax.legend()
    path = folder / "confusion.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def make_report(
    cat,
    target: str,
    folder: Path,
    predictions_root: Path | None = None,
    tracking_uri: str | None = None,
) -> list[Path]:
    """Plots for a run id or a sweep name; logged to MLflow when a tracking URI is given."""
    runs = cat.runs(run_id=target)
    sweep_runs = cat.runs(sweep=target) if runs.empty else runs.iloc[0:0]
    if runs.empty and sweep_runs.empty:
        raise SDNError(
            f"no run or sweep named {target!r} in the catalogue; see `sdn sweep list` / `sdn catalogue runs`"
        )
    files: list[Path] = []
    if not runs.empty:
        files += run_report(cat, runs.iloc[0], folder, predictions_root)
        mlflow_run = runs.iloc[0]["mlflow_run_id"]
    else:
        done = sweep_runs[sweep_runs["status"] == "done"]
        if done.empty:
            raise SDNError(
                f"sweep {target!r} has no analysed runs yet; `sdn sweep status {target}` shows why"
            )
        folder.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(7, 5))
        for run in done.itertuples(index=False):
            _plot_cost_accuracy(ax, _curve(cat, run.run_id), _label(run))
        ax.set(
            xlabel="average cost relative to the CNN",
            ylabel="test accuracy (%)",
            title=f"early exit across sweep {target}",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
        _finish(fig, folder / "accuracy_vs_cost.png", files)
        for run in done.itertuples(index=False):
            files += run_report(
                cat, run, folder / _safe(run.run_id.split(".", 1)[-1]), predictions_root
            )
        mlflow_run = _sweep_parent_run(tracking_uri, target) if tracking_uri else None
    if tracking_uri and mlflow_run:
        _log_to_mlflow(tracking_uri, mlflow_run, folder, files)
    return files


def _sweep_parent_run(tracking_uri: str, sweep: str) -> str | None:
    from storage.mlflow_setup import make_client
    from workflows import tracking

    client = make_client(tracking_uri)
    exp = client.get_experiment_by_name(tracking.experiment_name(sweep))
    if exp is None:
        return None
    return tracking._find_run(client, exp.experiment_id, tracking.SWEEP_TAG, sweep, "sweep")


def _log_to_mlflow(tracking_uri: str, mlflow_run_id: str, folder: Path, files: list[Path]) -> None:
    from storage.mlflow_setup import make_client

    client = make_client(tracking_uri)
    for f in files:
        rel = f.parent.relative_to(folder)
        client.log_artifact(
            mlflow_run_id, str(f), artifact_path=str(Path("report") / rel).rstrip("/.")
        )
