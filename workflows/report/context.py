"""What every report section reads: the runs in scope and their stored results, loaded once.

Numbers come from the catalogue as stored (the per-exit results, the early-exit curves and the
chosen points in ``early_exit_choices``, the calibration bins, the overthinking summary), and
from the Parquet predictions for the histograms and per-sample figures; nothing here recomputes
a figure the catalogue holds. The chosen points are the same stored rows ``sdn catalogue early-exit`` reads.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from workflows.report import style
from workflows.report.html import Figure


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def anchor(run_id: str) -> str:
    return "run-" + re.sub(r"[^A-Za-z0-9_-]+", "-", run_id)


def _in(ids: Sequence[str]) -> str:
    return "(" + ", ".join("?" * len(ids)) + ")" if ids else "(NULL)"


def stored_choices(cat: Any, run_ids: Sequence[str]) -> pd.DataFrame:
    """Every stored early-exit choice of the runs: one row per (run, policy, target, method)."""
    ids = list(run_ids)
    return cat.sql(
        "SELECT r.run_id, c.policy, c.target, c.method, c.delta, c.met, c.threshold, "
        "c.val_accuracy, c.val_relative_cost, c.test_accuracy, c.test_relative_cost, "
        "c.final_val_accuracy, c.final_test_accuracy, c.val_drop, c.test_drop, c.val_test_gap "
        "FROM early_exit_choices c JOIN runs r ON r.id = c.run_pk "
        f"WHERE r.run_id IN {_in(ids)} ORDER BY r.run_id, c.policy, c.method, c.target",
        tuple(ids),
    )


def stored_curves(cat: Any, run_ids: Sequence[str]) -> pd.DataFrame:
    """Every stored early-exit curve point of the runs (all policies, val and test)."""
    ids = list(run_ids)
    return cat.sql(
        "SELECT r.run_id, p.policy, p.split, p.threshold, p.accuracy, p.relative_cost "
        "FROM early_exit_points p JOIN runs r ON r.id = p.run_pk "
        f"WHERE r.run_id IN {_in(ids)} ORDER BY r.run_id, p.policy, p.split, p.threshold",
        tuple(ids),
    )


@dataclass
class ReportContext:
    """The runs a report covers and their stored results; sections read everything from here.

    ``runs`` holds every run in scope whatever its status (the overview lists them all);
    ``analysed`` those with stored results. Data frames are loaded on first use and shared.
    """

    cat: Any  # storage.catalogue.Catalogue, opened read-only
    target: str  # the sweep name or run id asked for
    kind: str  # "sweep" or "run"
    runs: pd.DataFrame
    folder: Path  # where the report is being written (a temporary folder until complete)
    predictions_root: Path | None = None
    files: list[Path] = field(default_factory=list)
    # MLflow tracking URI for reading registered models (Grad-CAM); None: MLflow is not touched.
    tracking_uri: str | None = None
    # What sections load once and share (test images, registered models): see report/samples.py.
    shared: dict[str, Any] = field(default_factory=dict)

    # ---- runs
    @cached_property
    def run_ids(self) -> list[str]:
        return list(self.runs["run_id"])

    @cached_property
    def exits(self) -> pd.DataFrame:
        """Per-exit accuracy and cost (val and test) of the runs in scope and their CNNs."""
        ids = sorted({*self.run_ids, *self.reference_cnns["run_id"]})
        return self.cat.exits(run_id=ids) if ids else self.runs.iloc[0:0]

    @cached_property
    def analysed(self) -> pd.DataFrame:
        """Runs in scope with stored per-exit results, in page order (architecture, mode)."""
        done = self.runs[self.runs["run_id"].isin(set(self.exits["run_id"]))]
        return self.ordered(done)

    @cached_property
    def reference_cnns(self) -> pd.DataFrame:
        """The ``cnn``-mode run of each (sweep, arch, dataset, seed) in scope, when recorded:
        the reference every plot of that architecture draws (also for a one-run report)."""
        keys = {(r.sweep, r.arch, r.dataset, r.seed) for r in self.runs.itertuples()}
        sweeps = sorted({k[0] for k in keys})
        if not sweeps:
            return self.runs.iloc[0:0]
        cnns = self.cat.runs(sweep=sweeps, mode="cnn")
        hit = [(r.sweep, r.arch, r.dataset, r.seed) in keys for r in cnns.itertuples()]
        return cnns[hit] if len(cnns) else cnns

    def cnn_of(self, run: Any) -> Any | None:
        """The reference CNN run (a row) of ``run``'s cell, or None."""
        c = self.reference_cnns
        hit = c[
            (c["sweep"] == run.sweep) & (c["arch"] == run.arch) & (c["dataset"] == run.dataset)
            & (c["seed"] == run.seed)
        ]  # fmt: skip
        return None if hit.empty else hit.iloc[0]

    def ordered(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Rows by architecture (paper order), dataset, mode (cnn, ic_only, sdn), seed."""
        if frame.empty:
            return frame
        key = frame.apply(
            lambda r: (style.arch_sort_key(r["arch"]), r["dataset"],
                       style.mode_sort_key(r["train_mode"]), r["seed"]),
            axis=1,
        )  # fmt: skip
        return frame.assign(_k=key).sort_values("_k").drop(columns="_k")

    @cached_property
    def colours(self) -> dict[str, str]:
        return style.arch_colours(self.runs["arch"])

    @cached_property
    def _varies(self) -> dict[str, bool]:
        return {c: self.runs[c].nunique() > 1 for c in ("sweep", "dataset", "seed")}

    def label(self, run: Any, mode: bool = True) -> str:
        """A short name for a run in this report: ``resnet56 sdn``, plus the data set and seed
        when the report has several."""
        parts = [run.arch]
        if self._varies["dataset"]:
            parts.append(run.dataset)
        if mode:
            parts.append(run.train_mode)
        if self._varies["seed"]:
            parts.append(f"s{run.seed}")
        return " ".join(str(p) for p in parts)

    # ---- stored results
    @cached_property
    def choices(self) -> pd.DataFrame:
        return stored_choices(self.cat, self.run_ids)

    @cached_property
    def curves(self) -> pd.DataFrame:
        return stored_curves(self.cat, self.run_ids)

    @cached_property
    def calibration(self) -> pd.DataFrame:
        ids = sorted({*self.run_ids, *self.reference_cnns["run_id"]})
        return self.cat.calibration(run_id=ids) if ids else self.runs.iloc[0:0]

    @cached_property
    def overthinking(self) -> pd.DataFrame:
        return self.cat.overthinking(run_id=self.run_ids) if self.run_ids else self.runs.iloc[0:0]

    @cached_property
    def policies(self) -> list[str]:
        """The exit policies with stored curves, the default (confidence) first."""
        known = ("confidence", "entropy", "patience")
        found = set(self.curves["policy"]) if not self.curves.empty else set()
        return [p for p in known if p in found] + sorted(found - set(known))

    def outputs(self, run_id: str) -> Any | None:
        """The run's test outputs from Parquet (``sdn.results.Outputs``), or None when the run
        has no test file; a damaged file raises, naming itself."""
        if self.predictions_root is None:
            return None
        from storage.predictions import PredictionStore

        store = PredictionStore(self.predictions_root)
        files = store.files_for_run(run_id, "outputs")
        if not any(p.name.endswith(".test.parquet") for p in files):
            return None
        return store.read_outputs(run_id, "test")

    # ---- output
    def figure(
        self, fig: Any, name: str, alt: str, caption: str = "", wide: bool = False
    ) -> Figure:
        """Save ``fig`` as the PNG ``name`` in the report folder and return it as a block."""
        import matplotlib.pyplot as plt

        buffer = io.BytesIO()
        try:
            fig.savefig(buffer, format="png", dpi=style.FIGURE_DPI)
        finally:
            plt.close(fig)
        png = buffer.getvalue()
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        self.files.append(path)
        return Figure(png, alt, caption, name, wide)
