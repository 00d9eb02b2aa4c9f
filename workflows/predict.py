"""Early-exit inference with a registered model, for ``sdn models predict``.

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

import numpy as np
import pandas as pd
import torch

from sdn.early_exit import Target, check_policy, check_threshold, format_threshold
from sdn.errors import SDNError


def _normalise(images: torch.Tensor, info) -> torch.Tensor:
    mean = torch.tensor(info.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.float() / 255.0 - mean) / std


def _load_images(files: list[Path], size: int) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    arrays = []
    for path in files:
        if not path.is_file():
            raise SDNError(f"image file {path} does not exist")
        try:
            with Image.open(path) as img:
                img = img.convert("RGB").resize((size, size), Image.BILINEAR)
                arrays.append(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy())
        except (UnidentifiedImageError, OSError) as exc:
            raise SDNError(f"cannot read image {path}: {exc}") from None
    return torch.from_numpy(np.stack(arrays))


def _relative_costs(model) -> list[float]:
    if hasattr(model, "exit_costs"):
        return [c / model.cnn_cost() for c in model.exit_costs()]
    return [1.0]


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
    data_root: str | None,
    max_drop: float | None = None,
    policy: str = "confidence",
    delta: float | None = None,
    catalogue_path: Path | None = None,
) -> tuple[pd.DataFrame, str, ChosenThreshold]:
    """(one row per input: prediction, exit, cost; a title line; the threshold used).

    A target (``max_drop`` / ``budget``) is turned into a threshold by ``sdn.early_exit`` on the
    model's validation split: the catalogue's stored answer for this run when the catalogue has
    the run (the same number every table shows), else computed now from the validation split by
    the same functions. Never on the data being predicted.
    """
    from sdn.data import dataset_info, load_dataset
    from storage.registry import Registry

    given = sum(v is not None for v in (threshold, budget, max_drop))
    if given != 1:
        raise SDNError(
            "give --threshold Q, --max-drop D or --budget COST (relative to the CNN), exactly one"
        )
    check_policy(policy)
    if threshold is not None:
        check_threshold(threshold, policy, "--threshold")
    target = None if threshold is not None else _target(max_drop, budget)
    if delta is not None and not 0.0 < delta < 1.0:
        raise SDNError(f"--delta {delta:g} must be in (0, 1), e.g. 0.1")
    if delta is not None and target is None:
        raise SDNError("--delta certifies a chosen threshold: give it with --max-drop or --budget")
    if bool(images) == bool(dataset):
        raise SDNError("give image files or --dataset NAME, exactly one")
    if split not in ("val", "test"):
        raise SDNError(f"unknown split {split!r}; choose one of: 'val', 'test'")

    registry = Registry(tracking_uri)
    version = registry.resolve(ref)
    model = registry.load_module(version).eval()
    trained_on = registry.version_tags(version).get("dataset") or dataset
    if trained_on is None:
        raise SDNError(
            f"model {version} has no dataset tag; pass --dataset to say what it was trained on"
        )
    info = dataset_info(trained_on, root=data_root)
    costs = _relative_costs(model)

    splits = None
    if dataset or target is not None:
        splits = load_dataset(dataset or trained_on, root=data_root)
    if target is None:
        chosen = ChosenThreshold(policy=policy, threshold=threshold)
    else:
        chosen = _stored_choice(catalogue_path, version.run_id, target, policy, delta)
        if chosen is None:
            chosen = _choose_on_validation(model, splits, info, costs, target, policy, delta)
    note = f"{version}: {chosen.describe()}"

    if dataset:
        part = getattr(splits, split)
        n = min(limit, len(part))
        x = _normalise(part.images[:n], info)
        labels: list[Any] = part.labels[:n].tolist()
        names = [f"{split}[{i}]" for i in range(n)]
    else:
        x = _normalise(_load_images(images, info.image_size), info)
        labels = [None] * len(images)
        names = [str(p) for p in images]

    with torch.inference_mode():
        if hasattr(model, "early_exit") and chosen.threshold is not None:
            preds, exit_idx = model.early_exit(x, threshold=chosen.threshold, policy=policy)
        else:  # a CNN, or early exit off: the final head answers
            outputs = model(x)
            final = outputs[-1] if isinstance(outputs, (list, tuple)) else outputs
            preds = final.argmax(dim=1)
            exit_idx = torch.full((len(x),), len(costs) - 1, dtype=torch.long)
    final_exit = len(costs) - 1
    rows = []
    for name, label, pred, k in zip(names, labels, preds.tolist(), exit_idx.tolist(), strict=True):
        row = {
            "input": name,
            "prediction": pred,
            "exit": "final" if k == final_exit else f"IC{k}",
            "relative_cost": costs[k],
        }
        if label is not None:
            row["label"] = label
            row["correct"] = pred == label
        rows.append(row)
    df = pd.DataFrame(rows)
    if dataset and len(df):
        note += f"; here: accuracy {df['correct'].mean():.3f}, mean cost {df['relative_cost'].mean():.3f}"
    return df, note, chosen


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

    with Catalogue(catalogue_path) as cat:
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
