"""Early-exit inference with a registered model, for ``sdn models predict``.

Two stages. :func:`check_request` checks every input without importing torch or MLflow: numbers
finite and in range, exactly one way to choose the threshold and one source of inputs, image files
readable and folders expanded (recursively, sorted), the data set on disk (``predict`` reads data
sets, it never downloads them). :func:`predict` then resolves the model, checks what depends on it
(the data set it was trained on), and only then loads it.

The model is rebuilt as the real module (state dict + config from the registry), so inference
really stops at the first confident IC. A cost budget is turned into a threshold on the model's
validation split, never on the data being predicted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    budget: float | None
    data_root: Path | None
    out: Path | None


def check_request(
    ref: str,
    *,
    images: list[Path],
    dataset: str | None,
    split: str = "test",
    limit: int = 20,
    batch_size: int = 64,
    threshold: float | None = None,
    budget: float | None = None,
    data_root: Path | None = None,
    out: Path | None = None,
) -> PredictRequest:
    """Every input checked, in the order typed mistakes are most likely (see the module doc)."""
    from storage.model_refs import parse_ref

    parse_ref(ref)
    inputs.exactly_one(
        {"--threshold Q (0..1)": threshold, "--budget COST (relative to the CNN)": budget}
    )
    inputs.number(threshold, "--threshold", low=0.0, high=1.0)
    inputs.number(budget, "--budget", low=0.0, high=10.0, low_open=True)
    if limit < 1:
        raise SDNError(f"--limit must be >= 1 (got {limit})")
    if not 1 <= batch_size <= 65536:
        raise SDNError(f"--batch-size must be in [1, 65536] (got {batch_size})")
    inputs.exactly_one({"image files or folders": images, "--dataset NAME": dataset})
    inputs.one_of(split, "--split", inputs.SPLITS)
    root = inputs.data_root(data_root)
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
        ref, found, dataset, split, limit, batch_size, threshold, budget, root, out
    )


def _normalise(images: Any, info: Any) -> Any:
    import torch

    mean = torch.tensor(info.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.float() / 255.0 - mean) / std


def _load_images(files: tuple[Path, ...], size: int) -> Any:
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
    """Each image as the user would recognise it: relative to the working directory if below it."""
    cwd = Path.cwd()
    names = []
    for path in request.images.files if request.images else ():
        try:
            names.append(str(path.absolute().relative_to(cwd)))
        except ValueError:
            names.append(str(path))
    return names


def predict(request: PredictRequest, tracking_uri: str) -> tuple[Any, str]:
    """(one row per input: prediction, exit, cost, as ``Rows``; a title line saying which model,
    which threshold and how many inputs)."""
    from storage.catalogue.readonly import Rows
    from storage.registry import Registry

    registry = Registry(tracking_uri)
    version = registry.resolve(request.ref)
    trained_on = registry.version_tags(version).get("dataset") or request.dataset
    if trained_on is None:
        raise SDNError(
            f"model {version} has no dataset tag; pass --dataset to say what it was trained on"
        )
    data_root = str(request.data_root) if request.data_root else None
    if request.budget is not None or trained_on.startswith(inputs.FOLDER_PREFIX):
        # the budget needs its validation split; a folder data set its statistics
        where = "the model's data set (its `dataset` tag)"
        inputs.dataset_on_disk(trained_on, request.data_root, where)

    import torch

    from sdn.data import dataset_info, load_dataset

    info = dataset_info(trained_on, root=data_root)
    model = registry.load_module(version).eval()
    costs = _relative_costs(model)

    splits = None
    if request.budget is not None or request.dataset:
        splits = load_dataset(request.dataset or trained_on, root=data_root)
    if request.budget is not None:
        threshold = _threshold_for_budget(model, splits, info, costs, request.budget)
        note = (
            f"{version}: threshold {threshold:.3f} chosen on validation for budget "
            f"{request.budget:g}"
        )
    else:
        threshold = float(request.threshold)
        note = f"{version}: threshold {threshold:g}"

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

    preds: list[int] = []
    exits: list[int] = []
    total = len(names)
    with torch.inference_mode():
        for start in range(0, total, request.batch_size):
            stop = min(total, start + request.batch_size)
            if images is not None:
                batch = images[start:stop]
            else:
                batch = _load_images(request.images.files[start:stop], info.image_size)
            x = _normalise(batch, info)
            if hasattr(model, "early_exit"):
                p, k = model.early_exit(x, threshold=threshold)
            else:
                p, k = model(x).argmax(dim=1), torch.zeros(len(x), dtype=torch.long)
            preds.extend(p.tolist())
            exits.extend(k.tolist())
    final = len(costs) - 1
    records = []
    for name, label, pred, k in zip(names, labels, preds, exits, strict=True):
        row = {
            "input": name,
            "prediction": pred,
            "exit": "final" if k == final else f"IC{k}",
            "relative_cost": round(costs[k], 4),
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
        note += f"; accuracy {accuracy:.3f}, mean cost {mean_cost:.3f} on {len(records)} samples"
    return rows, note


def _threshold_for_budget(model, splits, info, costs, budget: float) -> float:
    import numpy as np

    from sdn.analysis import collect_outputs
    from sdn.early_exit import choose_threshold, early_exit_curve

    val = collect_outputs(model, splits.val, info)
    thresholds = np.linspace(0.0, 1.0, 101)
    curve = early_exit_curve(val, costs, thresholds)
    point = choose_threshold(curve, float(val.correct[:, -1].mean()), cost_budget=budget)
    return float(point.threshold)
