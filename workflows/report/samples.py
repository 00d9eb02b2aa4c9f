"""What the per-sample sections share, loaded once per report: a run's test predictions (Parquet),
the chosen samples (``sdn.qualitative``), the test images they point at, and the run's
registered model (for Grad-CAM).

Images come from the run's data set, loaded offline (``load_dataset(..., download=False)``) from
the data root the run was trained with (its stored config's ``data_root``, else the sweep
spec's ``data.root``, else sdn's default root). A stored prediction's ``sample_index`` is the
sample's position in the test split, which does not depend on ``val_size`` or
``train_subset``. Before an image is shown, the data set's labels are checked against the
stored ones: a data set that changed since the analysis (or another one under the same name)
gives a note, never a wrong picture.

Every loader returns either what it loaded or a ``Missing`` note (one line, shown by the
section in place of its figure). An unreachable MLflow server is not a note: it raises
``ServiceUnreachable``, which makes ``sdn report`` exit 3 like every other command.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from sdn.qualitative import CIFAR10_CLASSES, Examples, choose_examples
from sdn.results import Outputs
from workflows.report.context import ReportContext

N_GRID = 8  # simple and complex samples per run
N_DESTRUCTIVE = 6  # destructive samples per run (table figure)
N_GRADCAM = 3  # of those, the first few get Grad-CAM maps (2-4 in the paper's figure)


@dataclass(frozen=True)
class Missing:
    """Why something could not be shown: one line for the page."""

    reason: str


@dataclass(frozen=True)
class TestImages:
    """A data set's test images (uint8 [N, 3, H, W]), labels, info and class names."""

    images: Any  # torch.Tensor
    labels: np.ndarray
    info: Any  # sdn.data.DatasetInfo
    names: tuple[str, ...] | None
    root: str | None

    def label_name(self, label: int) -> str:
        from sdn.qualitative import class_name

        return class_name(self.names, label)


def _memo(ctx: ReportContext, key: tuple[Any, ...], load: Any) -> Any:
    shared = ctx.shared.setdefault("samples", {})
    if key not in shared:
        shared[key] = load()
    return shared[key]


# ---------------------------------------------------------------------------- predictions
def test_outputs(ctx: ReportContext, run_id: str) -> Outputs | None:
    """The run's test outputs from Parquet (read once per report), or None without a file."""
    return _memo(ctx, ("outputs", run_id), lambda: ctx.outputs(run_id))


def examples(ctx: ReportContext, run: Any) -> Examples | Missing:
    """The samples each qualitative figure shows (the same ones in every section)."""

    def choose() -> Examples | Missing:
        outputs = test_outputs(ctx, run.run_id)
        if outputs is None:
            return Missing("no test predictions in Parquet")
        if outputs.num_exits < 2:
            return Missing("a CNN has no internal classifiers")
        return choose_examples(outputs, N_GRID, N_DESTRUCTIVE)

    return _memo(ctx, ("examples", run.run_id), choose)


def runs_with_ics(ctx: ReportContext) -> list[Any]:
    """The analysed runs with internal classifiers, in page order."""
    runs = ctx.analysed
    return [r for r in runs.itertuples() if r.train_mode != "cnn" and (r.num_exits or 0) != 1]


# ---------------------------------------------------------------------------- images
def data_root(ctx: ReportContext, run: Any) -> str | None:
    """The data root the run was trained with: its config's ``data_root``, else the sweep
    spec's ``data.root``, else None (sdn's default root)."""
    config = run.config if isinstance(run.config, dict) else {}
    if config.get("data_root"):
        return str(config["data_root"])
    rows = ctx.cat.sql(
        "SELECT spec FROM sweeps s JOIN runs r ON r.sweep_id = s.id WHERE r.run_id = ?",
        (run.run_id,),
    )
    if rows.empty or rows.iloc[0]["spec"] is None:
        return None
    spec = rows.iloc[0]["spec"]
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except ValueError:
            return None
    root = (spec.get("data") or {}).get("root") if isinstance(spec, dict) else None
    return str(root) if root else None


def _class_names(dataset: str, root: str | None) -> tuple[str, ...] | None:
    if dataset == "cifar10":
        return CIFAR10_CLASSES
    if dataset.startswith("folder:"):
        from sdn import datafiles
        from sdn.data import _folder_path

        return tuple(datafiles.scan_folder(_folder_path(dataset, root)).classes)
    return None  # digits: the id is the name; CIFAR-100, Tiny ImageNet: ids


def test_images(ctx: ReportContext, run: Any) -> TestImages | Missing:
    """The test split of the run's data set, loaded offline once per (data set, root)."""
    root = data_root(ctx, run)

    def load() -> TestImages | Missing:
        from sdn.data import load_dataset
        from sdn.errors import SDNError

        try:
            splits = load_dataset(run.dataset, root=root, download=False)
            names = _class_names(run.dataset, root)
        except (SDNError, OSError) as exc:
            text = " ".join(str(exc).split())
            return Missing(f"the test images of {run.dataset} cannot be loaded offline ({text})")
        test = splits.test
        return TestImages(test.images, test.labels.numpy(), splits.info, names, root)

    return _memo(ctx, ("images", run.dataset, root), load)


def images_for(ctx: ReportContext, run: Any) -> TestImages | Missing:
    """The run's test images, checked against its stored predictions: every ``sample_index`` is
    in the split and every stored label is the data set's label there."""
    outputs = test_outputs(ctx, run.run_id)
    if outputs is None:
        return Missing("no test predictions in Parquet")
    found = test_images(ctx, run)
    if isinstance(found, Missing):
        return found
    index = np.asarray(outputs.sample_index)
    n = len(found.labels)
    if index.size and (index.min() < 0 or index.max() >= n):
        return Missing(
            f"the stored predictions point past the {n} test images of {run.dataset}; "
            "the data set changed since the analysis"
        )
    differ = int((found.labels[index] != outputs.labels).sum())
    if differ:
        return Missing(
            f"{differ} of {index.size} stored labels differ from the test labels of "
            f"{run.dataset} (data root {found.root or 'default'}): the data set changed since "
            "the analysis, so its images would not be the samples predicted on"
        )
    return found


@dataclass(frozen=True)
class RunSamples:
    """What a per-sample figure of one run draws from: the chosen samples, the run's stored test
    outputs and the test images they index."""

    chosen: Examples
    outputs: Outputs
    images: TestImages


NO_DESTRUCTIVE = Missing("the final head destroys no IC's right answer")


def run_samples(ctx: ReportContext, run: Any, *, destructive: bool = False) -> RunSamples | Missing:
    """The run's chosen samples with their outputs and images, or why a section cannot draw them
    (``destructive``: the section needs at least one destructive sample). One order of checks
    for every per-sample section, so a run is skipped for the same reason everywhere."""
    chosen = examples(ctx, run)
    if isinstance(chosen, Missing):
        return chosen
    if destructive and chosen.destructive.size == 0:
        return NO_DESTRUCTIVE
    images = images_for(ctx, run)
    if isinstance(images, Missing):
        return images
    outputs = test_outputs(ctx, run.run_id)
    if outputs is None:  # examples() found them; memoised, so never reached in practice
        return Missing("no test predictions in Parquet")
    return RunSamples(chosen, outputs, images)


# ---------------------------------------------------------------------------- models
def _registry(ctx: ReportContext) -> Any:
    def connect() -> Any:
        from storage.registry import Registry

        assert ctx.tracking_uri is not None
        return Registry(ctx.tracking_uri)  # an unreachable server raises StoreUnreachable

    return _memo(ctx, ("registry", ctx.tracking_uri), connect)


def model_for(ctx: ReportContext, run: Any) -> Any:
    """The run's registered model (the real SDN, eval mode, CPU) or a ``Missing`` note: no
    tracking URI given (``--no-mlflow``), no registered version recorded, or a version that
    cannot be found or read. A tracking server that does not answer raises (exit 3)."""
    if ctx.tracking_uri is None:
        return Missing("registered models are read from MLflow, which this report does not "
                       "use (--no-mlflow)")  # fmt: skip
    name, version = run.model_name, run.model_version
    if not name or version is None or version != version:
        return Missing("the catalogue records no registered model for this run")
    ref = f"{name}/{int(float(version))}"

    def load() -> Any:
        from storage.errors import StorageError, StoreUnreachable
        from storage.mlflow_setup import is_server_uri, server_reachable

        registry = _registry(ctx)
        try:
            return registry.load_module(ref)
        except StoreUnreachable:
            raise
        except StorageError as exc:
            uri = ctx.tracking_uri or ""
            if is_server_uri(uri) and not server_reachable(uri):
                raise StoreUnreachable(
                    f"MLflow tracking server {uri} is unreachable (while loading {ref})"
                ) from exc
            return Missing(f"registered model {ref} cannot be loaded: {exc}")

    return _memo(ctx, ("model", ref), load)


# ---------------------------------------------------------------------------- notes
def folder_of(run: Any) -> str:
    """The run's folder for its PNG files (as the Runs section names it)."""
    from workflows.report.context import safe_name

    return safe_name(run.run_id.split(".", 1)[-1])


def missing_notes(ctx: ReportContext, missing: list[tuple[Any, Missing]]) -> list[Any]:
    """One note per distinct reason, naming the runs it applies to (all runs: "every run")."""
    from workflows.report.html import Note

    by_reason: dict[str, list[str]] = {}
    for run, why in missing:
        by_reason.setdefault(why.reason, []).append(ctx.label(run))
    total = len(runs_with_ics(ctx))
    notes = []
    for reason, labels in by_reason.items():
        who = "every run" if len(labels) == total and total > 1 else ", ".join(labels)
        notes.append(Note(f"Not shown for {who}: {reason.rstrip('.')}."))
    return notes
