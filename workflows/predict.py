"""Early-exit inference with a registered model, for ``sdn models predict``.

Two stages. :func:`check_request` checks every input without importing torch or MLflow: numbers
finite and in range, exactly one way to set the threshold and one source of inputs, image files
readable and folders expanded (recursively, sorted), the data set on disk (``predict`` reads data
sets, it never downloads them). :func:`run` then resolves the model, checks what depends on it
(the data set it was trained on), and only then loads it, and classifies in batches.

The model is rebuilt as the real module (state dict + config from the registry), so inference
really stops at the first confident IC. A target (an accuracy drop or a cost budget) is turned
into a threshold on the model's validation split by ``sdn.early_exit``, never on the data being
predicted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdn.early_exit import Target, check_policy, check_threshold, format_threshold
from sdn.errors import SDNError
from workflows import inputs


@dataclass(frozen=True)
class PredictRequest:
    """A checked ``sdn models predict`` command line."""

    ref: str
    images: inputs.ImageInputs | None
    dataset: str | None
    split: str
    limit: int
    batch_size: int
    threshold: float | None
    target: Target | None
    policy: str
    delta: float | None
    data_root: Path | None
    out: Path | None = None


def check_request(
    ref: str,
    *,
    images: list[Path],
    dataset: str | None,
    split: str = "test",
    limit: int = 20,
    batch_size: int = 64,
    threshold: float | None = None,
    max_drop: float | None = None,
    budget: float | None = None,
    policy: str = "confidence",
    delta: float | None = None,
    data_root: Path | str | None = None,
    out: Path | None = None,
) -> PredictRequest:
    """Every input checked, before anything heavy is imported (see the module docstring)."""
    from storage.model_refs import parse_ref

    parse_ref(ref)
    inputs.exactly_one(
        {
            "--threshold Q": threshold,
            "--max-drop D": max_drop,
            "--budget COST (relative to the CNN)": budget,
        }
    )
    check_policy(policy)
    if threshold is not None:
        check_threshold(threshold, policy, "--threshold")
    target = None if threshold is not None else _target(max_drop, budget)
    if delta is not None:
        inputs.number(delta, "--delta", low=0.0, high=1.0, low_open=True)
        if not delta < 1.0:
            raise SDNError(f"--delta {delta:g} must be in (0, 1), e.g. 0.1")
        if target is None:
            raise SDNError(
                "--delta certifies a chosen threshold: give it with --max-drop or --budget"
            )
    if limit < 1:
        raise SDNError(f"--limit must be >= 1 (got {limit})")
    if not 1 <= batch_size <= 65536:
        raise SDNError(f"--batch-size must be in [1, 65536] (got {batch_size})")
    inputs.exactly_one({"image files or folders": images, "--dataset NAME": dataset})
    inputs.one_of(split, "--split", inputs.SPLITS)
    root = inputs.data_root(None if data_root is None else Path(data_root))
    found = None
    if dataset is not None:
        inputs.dataset_on_disk(dataset, root)
    else:
        found = inputs.image_inputs(images)
    if out is not None:
        out = out.expanduser().absolute()
        if out.is_dir():
            raise SDNError(f"--out {out} is a folder; give a file name (.csv or .json)")
        probe = out.parent
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        if not probe.is_dir():
            raise SDNError(f"--out {out}: {probe} is a file: Not a directory")
    return PredictRequest(
        ref, found, dataset, split, limit, batch_size, threshold, target, policy, delta, root, out
    )


def _normalise(images: Any, info: Any) -> Any:
    import torch

    mean = torch.tensor(info.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.float() / 255.0 - mean) / std


def _load_images(files: tuple[Path, ...] | list[Path], size: int) -> Any:
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    arrays = []
    for path in files:
        try:
            with Image.open(path) as img:
                img = img.convert("RGB").resize((size, size), Image.BILINEAR)
                arrays.append(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy())
        except (UnidentifiedImageError, OSError) as exc:
            raise SDNError(f"IMAGES: cannot read image {path}: {exc}") from None
    return torch.from_numpy(np.stack(arrays))


def _relative_costs(model: Any) -> list[float]:
    if hasattr(model, "exit_costs"):
        return [c / model.cnn_cost() for c in model.exit_costs()]
    return [1.0]


def _display_names(request: PredictRequest) -> list[str]:
    """Each image as the user knows it: relative to the working directory when below it."""
    cwd = Path.cwd()
    names = []
    for path in request.images.files if request.images else ():
        try:
            names.append(str(path.absolute().relative_to(cwd)))
        except ValueError:
            names.append(str(path))
    return names


@dataclass
class ChosenThreshold:
    """Which threshold a prediction used, and where it came from."""

    policy: str
    threshold: float | None  # None: early exit off
    target: str | None = None  # "max_drop=0.01" / "budget=0.50" when chosen for one
    method: str | None = None  # "empirical" / "certified"
    delta: float | None = None
    status: str | None = None  # met / unmet / none certified
    val_accuracy: float | None = None
    val_relative_cost: float | None = None
    source: str = "given"  # "given", "catalogue" or "validation split"

    def describe(self) -> str:
        shown = format_threshold(self.threshold, self.policy)
        if self.target is None:
            return f"{self.policy} threshold {shown} (given)"
        target = Target.parse(self.target)
        method = self.method if self.delta is None else f"{self.method}, delta {self.delta:g}"
        return (
            f"{self.policy} threshold {shown} chosen on validation for {target.label} "
            f"({method}; {self.status}): val accuracy {100 * (self.val_accuracy or 0):.1f} %, "
            f"val cost {self.val_relative_cost:.3f}, from the {self.source}"
        )


def predict(
    ref: str,
    tracking_uri: str,
    *,
    images: list[Path],
    dataset: str | None,
    split: str,
    limit: int,
    threshold: float | None,
    budget: float | None,
    data_root: str | Path | None,
    max_drop: float | None = None,
    policy: str = "confidence",
    delta: float | None = None,
    catalogue_path: Path | None = None,
    batch_size: int = 64,
) -> tuple[Any, str, ChosenThreshold]:
    """(one row per input, as ``storage.catalogue.readonly.Rows``: prediction, exit, cost; a
    title line; the threshold used): :func:`check_request`, then :func:`run`.

    A target (``max_drop`` / ``budget``) is turned into a threshold by ``sdn.early_exit`` on the
    model's validation split: the catalogue's stored answer for this run when the catalogue has
    the run (the same number every table shows), else computed now from the validation split by
    the same functions. Never on the data being predicted.
    """
    request = check_request(
        ref,
        images=images,
        dataset=dataset,
        split=split,
        limit=limit,
        batch_size=batch_size,
        threshold=threshold,
        max_drop=max_drop,
        budget=budget,
        policy=policy,
        delta=delta,
        data_root=data_root,
    )
    return run(request, tracking_uri, catalogue_path)


def run(
    request: PredictRequest, tracking_uri: str, catalogue_path: Path | None = None
) -> tuple[Any, str, ChosenThreshold]:
    """Resolve, check what depends on the model, load it, classify in batches."""
    from storage.catalogue.readonly import Rows
    from storage.registry import Registry

    registry = Registry(tracking_uri)
    version = registry.resolve(request.ref)
    trained_on = registry.version_tags(version).get("dataset") or request.dataset
    if trained_on is None:
        raise SDNError(
            f"model {version} has no dataset tag; pass --dataset to say what it was trained on"
        )
    if request.target is not None or trained_on.startswith(inputs.FOLDER_PREFIX):
        # a target needs the validation split; a folder data set its statistics
        where = "the model's data set (its `dataset` tag)"
        inputs.dataset_on_disk(trained_on, request.data_root, where)

    import torch

    from sdn.data import dataset_info, load_dataset

    data_root = str(request.data_root) if request.data_root else None
    info = dataset_info(trained_on, root=data_root)
    model = registry.load_module(version).eval()
    costs = _relative_costs(model)

    splits = None
    if request.dataset or request.target is not None:
        splits = load_dataset(request.dataset or trained_on, root=data_root)
    policy = request.policy
    if request.target is None:
        chosen = ChosenThreshold(policy=policy, threshold=request.threshold)
    else:
        chosen = _stored_choice(
            catalogue_path, version.run_id, request.target, policy, request.delta
        )
        if chosen is None:
            chosen = _choose_on_validation(
                model, splits, info, costs, request.target, policy, request.delta
            )
    note = f"{version}: {chosen.describe()}"

    if request.dataset:
        part = getattr(splits, request.split)
        n = min(request.limit, len(part))
        images = part.images[:n]
        labels: list[Any] = part.labels[:n].tolist()
        names = [f"{request.split}[{i}]" for i in range(n)]
    else:
        assert request.images is not None
        images = None
        labels = [None] * len(request.images.files)
        names = _display_names(request)
        note += f"; {request.images.describe()}"

    final_exit = len(costs) - 1
    preds: list[int] = []
    exits: list[int] = []
    with torch.inference_mode():
        for start in range(0, len(names), request.batch_size):
            stop = min(len(names), start + request.batch_size)
            if images is not None:
                batch = images[start:stop]
            else:
                assert request.images is not None
                batch = _load_images(request.images.files[start:stop], info.image_size)
            x = _normalise(batch, info)
            if hasattr(model, "early_exit") and chosen.threshold is not None:
                p, k = model.early_exit(x, threshold=chosen.threshold, policy=policy)
            else:  # a CNN, or early exit off: the final head answers
                outputs = model(x)
                final = outputs[-1] if isinstance(outputs, list | tuple) else outputs
                p = final.argmax(dim=1)
                k = torch.full((len(x),), final_exit, dtype=torch.long)
            preds.extend(p.tolist())
            exits.extend(k.tolist())
    records = []
    for name, label, pred, k in zip(names, labels, preds, exits, strict=True):
        row = {
            "input": name,
            "prediction": pred,
            "exit": "final" if k == final_exit else f"IC{k}",
            "relative_cost": costs[k],
        }
        if label is not None:
            row["label"] = label
            row["correct"] = pred == label
        records.append(row)
    columns = ["input", "prediction", "label", "correct", "exit", "relative_cost"]
    if not request.dataset:
        columns = [c for c in columns if c not in ("label", "correct")]
    rows = Rows.from_records(records, columns)
    if request.dataset and records:
        accuracy = sum(r["correct"] for r in records) / len(records)
        mean_cost = sum(r["relative_cost"] for r in records) / len(records)
        note += f"; here: accuracy {accuracy:.3f}, mean cost {mean_cost:.3f}"
    return rows, note, chosen


def _target(max_drop: float | None, budget: float | None) -> Target:
    for option, value in (("--max-drop", max_drop), ("--budget", budget)):
        if value is not None and not math.isfinite(value):
            raise SDNError(f"{option} {value} is not a finite number")
    if max_drop is not None and not 0.0 <= max_drop <= 1.0:
        raise SDNError(f"--max-drop {max_drop:g} must be between 0 and 1 (0.01 = 1 point)")
    if budget is not None and budget <= 0:
        raise SDNError(f"--budget {budget:g} must be > 0 (a cost relative to the CNN)")
    return Target.of(max_drop, budget)


def _stored_choice(
    catalogue_path: Path | None,
    mlflow_run_id: str | None,
    target: Target,
    policy: str,
    delta: float | None,
) -> ChosenThreshold | None:
    """The catalogue's answer for the run that produced this model, if the catalogue has it."""
    if catalogue_path is None or mlflow_run_id is None or not Path(catalogue_path).is_file():
        return None
    from storage.catalogue import Catalogue

    with Catalogue(catalogue_path, read_only=True) as cat:  # a read: never migrates
        runs = cat.sql("SELECT run_id FROM runs WHERE mlflow_run_id = ?", (mlflow_run_id,))
        if runs.empty:
            return None
        kwargs = (
            {"max_accuracy_drop": target.value}
            if target.kind == "max_drop"
            else {"cost_budget": target.value}
        )
        rows = cat.best_early_exit(
            **kwargs, policy=policy, delta=delta, per_run=True, run_id=runs.run_id.iloc[0]
        )
    if rows.empty:
        return None
    row = rows.iloc[0]
    return ChosenThreshold(
        policy=policy,
        threshold=row.threshold,
        target=target.name,
        method=row.method,
        delta=delta,
        status=row.status,
        val_accuracy=float(row.val_accuracy),
        val_relative_cost=float(row.val_relative_cost),
        source="catalogue",
    )


def _choose_on_validation(
    model, splits, info, costs, target: Target, policy: str, delta: float | None
) -> ChosenThreshold:
    """The same choice the analysis stores, made now from the validation split."""
    from sdn.analysis import collect_outputs
    from sdn.early_exit import build_frontier, certify, default_grid, early_exit_curve

    val = collect_outputs(model, splits.val, info)
    grid = default_grid(policy, len(costs), info.num_classes)
    frontier = build_frontier(val, None, costs, policy, grid)
    if delta is None:
        choice = frontier.choose(target)
    else:
        curve = early_exit_curve(val, costs, grid, policy=policy)
        choice = certify(curve, None, frontier.reference_val, None, costs, target, delta)
    return ChosenThreshold(
        policy=policy,
        threshold=choice.val.threshold,
        target=target.name,
        method=choice.method,
        delta=delta,
        status=choice.status,
        val_accuracy=choice.val.accuracy,
        val_relative_cost=choice.val.relative_cost,
        source="validation split",
    )
