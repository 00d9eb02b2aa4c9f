"""A catalogue shaped like the one ``scripts/quickstart.sh`` leaves, built in a second.

The quickstart preset trains 4 architectures x digits x {cnn, ic_only, sdn} x seed 0: 12 runs,
each recorded as the sweep driver records it (``upsert_sweep``, ``upsert_run`` with its MLflow run
and registered version, ``record_summary`` with per-exit results, each policy's val and test
curves and frontier, the chosen operating points and the overthinking summary). The numbers are synthetic
(seeded outputs, summarised by the analysis's own ``summarise_outputs``) but have the real
shapes: 7 outputs for ResNet-56, WRN-32-4 and VGG-16, 6 for MobileNet, 1 for a CNN. The CLI benchmark and the table tests read it, so they need no 6-minute sweep.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

ARCHS = {"resnet56": 7, "wrn32_4": 7, "vgg16": 7, "mobilenet": 6}
MODES = ("cnn", "ic_only", "sdn")
SWEEP = "quickstart"
EPOCHS = {"cnn": 12, "ic_only": 6, "sdn": 12}
DROPS, BUDGETS, DELTA = (0.0, 0.01, 0.02, 0.05), (0.25, 0.5, 0.75), 0.1  # the preset's analysis


def _outputs(n: int, exits: int, rng: np.random.Generator, final: float):
    """Outputs shaped like a trained SDN's on digits: later exits right more often, right
    answers more confident."""
    from sdn.results import Outputs

    labels = rng.integers(0, 10, n)
    rates = np.linspace(max(0.45, final - 0.45), final, exits) if exits > 1 else np.array([final])
    hit = rng.random((n, exits)) < rates
    preds = np.where(hit, labels[:, None], (labels[:, None] + rng.integers(1, 10, (n, exits))) % 10)
    confidences = np.clip(rng.random((n, exits)) * 0.5 + 0.5 * hit, 0, 1).astype(np.float32)
    return Outputs(
        labels=labels.astype(np.int64),
        preds=preds.astype(np.int64),
        confidences=confidences,
        confusion=rng.random(n, dtype=np.float32),
        entropies=(np.log(10) * (1 - confidences)).astype(np.float32),
    )


def _summary(exits: int, seed: int):
    """A summary made as the analysis makes one (``summarise_outputs``), from synthetic outputs
    of the quickstart's split sizes (train 1294, val 144, test 359)."""
    from sdn.analysis import summarise_outputs
    from sdn.early_exit import targets_from

    rng = np.random.default_rng(seed)
    final = float(rng.uniform(0.9, 0.98))
    outputs = {
        split: _outputs(n, exits, rng, final)
        for split, n in (("train", 1294), ("val", 144), ("test", 359))
    }
    costs = list(np.cumsum(rng.uniform(1.0, 2.0, exits)) * 1e6)
    cnn = costs[-1] * (0.95 if exits > 1 else 1.0)
    return summarise_outputs(
        outputs, costs, cnn, num_classes=10,
        targets=targets_from(DROPS, BUDGETS), delta=DELTA,
    )  # fmt: skip


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
