"""Early-exit inference with a registered model, for ``sdn models predict``.

The model is rebuilt as the real module (state dict + config from the registry), so inference
really stops at the first confident IC. A cost budget is turned into a threshold on the model's
validation split, never on the data being predicted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

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
) -> tuple[pd.DataFrame, str]:
    """(one row per input: prediction, exit, cost; a title line saying which threshold was used)."""
    from sdn.data import dataset_info, load_dataset
    from storage.registry import Registry

    if (threshold is None) == (budget is None):
        raise SDNError(
            "give --threshold Q (0..1) or --budget COST (relative to the CNN), exactly one"
        )
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise SDNError(f"threshold must be between 0 and 1 (got {threshold:g})")
    if budget is not None and budget <= 0:
        raise SDNError(f"budget must be > 0 (got {budget:g})")
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
    if budget is not None or dataset:
        splits = load_dataset(dataset or trained_on, root=data_root)
    if budget is not None:
        threshold = _threshold_for_budget(model, splits, info, costs, budget)
        note = f"{version}: threshold {threshold:.3f} chosen on validation for budget {budget:g}"
    else:
        note = f"{version}: threshold {threshold:g}"

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
        if hasattr(model, "early_exit"):
            preds, exit_idx = model.early_exit(x, threshold=float(threshold))
        else:
            preds, exit_idx = model(x).argmax(dim=1), torch.zeros(len(x), dtype=torch.long)
    final = len(costs) - 1
    rows = []
    for name, label, pred, k in zip(names, labels, preds.tolist(), exit_idx.tolist(), strict=True):
        row = {
            "input": name,
            "prediction": pred,
            "exit": "final" if k == final else f"IC{k}",
            "relative_cost": round(costs[k], 4),
        }
        if label is not None:
            row["label"] = label
            row["correct"] = pred == label
        rows.append(row)
    df = pd.DataFrame(rows)
    if dataset and len(df):
        note += f"; accuracy {df['correct'].mean():.3f}, mean cost {df['relative_cost'].mean():.3f}"
    return df, note


def _threshold_for_budget(model, splits, info, costs, budget: float) -> float:
    from sdn.analysis import collect_outputs
    from sdn.early_exit import choose_threshold, early_exit_curve

    val = collect_outputs(model, splits.val, info)
    thresholds = np.linspace(0.0, 1.0, 101)
    curve = early_exit_curve(val, costs, thresholds)
    point = choose_threshold(curve, float(val.correct[:, -1].mean()), cost_budget=budget)
    return float(point.threshold)
