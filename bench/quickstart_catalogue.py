"""A catalogue shaped like the one ``scripts/quickstart.sh`` leaves, built in a second.

The quickstart preset trains 4 architectures x digits x {cnn, ic_only, sdn} x seed 0: 12 runs,
each recorded as the sweep driver records it (``upsert_sweep``, ``upsert_run`` with its MLflow run
and registered version, ``record_summary`` with per-exit results, the 101-threshold val and test
curves, the chosen operating points and the overthinking summary). The numbers are synthetic
(seeded) but have the real shapes: 7 outputs for ResNet-56, WRN-32-4 and VGG-16, 6 for MobileNet,
1 for a CNN. The CLI benchmark and the table tests read it, so they need no 6-minute sweep.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

ARCHS = {"resnet56": 7, "wrn32_4": 7, "vgg16": 7, "mobilenet": 6}
MODES = ("cnn", "ic_only", "sdn")
SWEEP = "quickstart"
THRESHOLDS = 101
EPOCHS = {"cnn": 12, "ic_only": 6, "sdn": 12}


def _summary(exits: int, seed: int):
    from sdn.results import OperatingPoint, OverthinkingSummary, RunSummary

    rng = np.random.default_rng(seed)
    costs = list(np.cumsum(rng.uniform(1.0, 2.0, exits)) * 1e6)
    cnn = costs[-1] * (0.95 if exits > 1 else 1.0)
    final = {s: float(rng.uniform(0.9, 0.98)) for s in ("val", "test")}
    per_exit = {
        s: [*sorted(rng.uniform(0.4, final[s], exits - 1).tolist()), final[s]] for s in final
    }
    points = []
    grid = np.linspace(0.0, 1.0, THRESHOLDS)
    for split in ("val", "test"):
        if exits == 1:
            cost = np.ones(THRESHOLDS)
            acc = np.full(THRESHOLDS, final[split])
        else:
            cost = np.clip(0.2 + 0.8 * grid**2 + rng.normal(0, 0.005, THRESHOLDS), 0.05, None)
            acc = np.clip(final[split] - 0.3 * (1 - grid) ** 3, 0, 1)
            acc[-1], cost[-1] = final[split], costs[-1] / cnn
        for t, a, c in zip(grid, acc, cost, strict=True):
            counts = rng.multinomial(359, np.ones(exits) / exits).tolist()
            points.append(OperatingPoint(float(t), split, float(a), float(c), counts))
    for drop in (0.0, 0.01, 0.02, 0.05):
        for split in ("val", "test"):
            chosen = final[split] - drop / 2
            counts = [359 // exits] * exits
            points.append(OperatingPoint(0.9, split, chosen, 0.6, counts, f"max_drop={drop}"))
    counts = rng.integers(5, 60, exits + 1).tolist()
    over = OverthinkingSummary(
        first_correct_counts=counts,
        oracle_relative_cost=float(rng.uniform(0.3, 0.6)) if exits > 1 else 1.0,
        destructive_fraction=float(rng.uniform(0.1, 0.6)),
        destructive_per_ic=rng.random(exits - 1).tolist(),
        confusion_auroc=float(rng.uniform(0.6, 0.9)) if exits > 1 else None,
        max_softmax_auroc=float(rng.uniform(0.6, 0.9)),
        confusion_mean=1.2,
        confusion_std=0.3,
    )
    return RunSummary(exits, costs, cnn, per_exit, points, over)


def build(path: Path) -> Path:
    """Write the quickstart-shaped catalogue at ``path`` (a new file) and return it."""
    from storage.catalogue import Catalogue, RunRecord

    path = Path(path)
    start = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    with Catalogue(path) as cat:
        cat.upsert_sweep(SWEEP, {"name": SWEEP}, code_version="0.1.0+g65c8f0c")
        i = 0
        for arch, exits in ARCHS.items():
            for mode in MODES:
                run_id = f"{SWEEP}.{arch}.digits.{mode}.s0"
                digest = hashlib.sha256(run_id.encode()).hexdigest()
                record = RunRecord(run_id, SWEEP, arch, "digits", mode, 0)
                record.width, record.epochs, record.status = 0.25, EPOCHS[mode], "done"
                record.started_at = start + timedelta(minutes=i)
                record.ended_at = start + timedelta(minutes=i + 1)
                record.mlflow_run_id, record.model_version = digest[:32], 1
                record.model_name = f"sdn-{arch}-digits-{mode}"
                record.parquet_path = str(path.parent / "predictions" / run_id)
                record.code_version = "0.1.0+g65c8f0c"
                record.config = {"arch": arch, "mode": mode}
                cat.upsert_run(record)
                cat.record_summary(run_id, _summary(1 if mode == "cnn" else exits, seed=i))
                i += 1
    return path


if __name__ == "__main__":  # pragma: no cover
    import sys

    print(build(Path(sys.argv[1])))
