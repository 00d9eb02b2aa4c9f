"""What a sweep would do, worked out without running or writing anything (``sdn sweep validate``).

Each cell gets its place in the dependency order the driver's searcher follows (an ``ic_only``
cell waits for its own ``cnn`` cell; everything else starts at once), its resolved epochs (the
spec's defaults filled in as ``TrainConfig.resolved`` does) and an estimate of its training work:
epochs x training images, the images left after the validation split (and ``train_subset``).
Folder data sets are counted from their ``train/`` tree when it is on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workflows.inputs import IMAGE_SUFFIXES

# Training images before the validation split (sdn.data: _DIGITS_TRAIN_SIZE and the archives).
TRAIN_TOTALS = {"digits": 1438, "cifar10": 50_000, "cifar100": 50_000, "tinyimagenet": 100_000}


@dataclass(frozen=True)
class PlannedCell:
    order: int
    run_id: str
    cell: str  # arch/dataset/mode/seed, short
    arch: str
    dataset: str
    mode: str
    seed: int
    wave: int
    after: str  # "its cnn" for an ic_only cell (same architecture, data set and seed)
    parent: str | None
    epochs: int
    train_images: int | None
    train: dict[str, Any]

    @property
    def work(self) -> int | None:
        return None if self.train_images is None else self.epochs * self.train_images

    def to_dict(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "cell": self.cell,
            "wave": self.wave,
            "after": self.after,
            "parent": self.parent,
            "epochs": self.epochs,
            "train_images": self.train_images,
            "work": self.work,
            "run_id": self.run_id,
            "arch": self.arch,
            "dataset": self.dataset,
            "mode": self.mode,
            "seed": self.seed,
            "train": self.train,
        }


def _train_images(dataset: str, train: dict[str, Any], data_root: str | None) -> int | None:
    from sdn.data import FOLDER_PREFIX, dataset_info

    if train.get("train_subset") is not None:
        return int(train["train_subset"])
    if dataset.startswith(FOLDER_PREFIX):
        folder = Path(dataset[len(FOLDER_PREFIX) :].strip()).expanduser()
        if not folder.is_absolute() and data_root:
            folder = Path(data_root) / folder
        if not (folder / "train").is_dir():
            return None
        total = sum(1 for p in (folder / "train").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        val = train.get("val_size")
        val = max(1, min(5000, round(0.1 * total))) if val is None else int(val)
        return max(0, total - val)
    total = TRAIN_TOTALS[dataset]
    val = train.get("val_size")
    val = dataset_info(dataset).default_val_size if val is None else int(val)
    return max(0, total - val)


def plan(spec: Any) -> list[PlannedCell]:
    """The sweep's cells in the order the driver can start them (see the module docstring)."""
    from sdn.training import TrainConfig

    cells = spec.cells()
    data_root = spec.data_root()
    out: list[PlannedCell] = []
    waves = sorted(cells, key=lambda c: c.cnn_parent is not None)  # stable: grid order kept
    # Without the sweep's name; a poisoned cell says so instead of repeating its long tag.
    short = {
        c.run_id: f"{c.arch}.{c.dataset_slug}.{c.mode}.s{c.seed}"
        + (" (poisoned)" if c.poison is not None else "")
        for c in cells
    }
    for order, cell in enumerate(waves, start=1):
        resolved = TrainConfig(**cell.train_kwargs()).resolved()
        parent = cell.cnn_parent
        out.append(
            PlannedCell(
                order=order,
                run_id=cell.run_id,
                cell=short[cell.run_id],
                arch=cell.arch,
                dataset=cell.dataset,
                mode=cell.mode,
                seed=cell.seed,
                wave=2 if parent else 1,
                parent=parent,
                after="its cnn" if parent else "",
                epochs=int(resolved.epochs),
                train_images=_train_images(cell.dataset, cell.train, data_root),
                train=dict(cell.train),
            )
        )
    return out
