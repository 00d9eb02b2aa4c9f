"""Synthetic results for the storage tests: realistic shapes, no model needed."""

from __future__ import annotations

import numpy as np

from sdn.results import OperatingPoint, Outputs, OverthinkingSummary, RunSummary
from storage.catalogue import Catalogue, RunRecord


def make_outputs(
    n: int = 50,
    exits: int = 4,
    classes: int = 10,
    seed: int = 0,
    start: int = 0,
    logits: bool = False,
) -> Outputs:
    """Outputs whose later exits are more often right, as in a trained SDN."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    hit = rng.random((n, exits)) < np.linspace(0.4, 0.9, exits)
    preds = np.where(hit, labels[:, None], rng.integers(0, classes, (n, exits)))
    return Outputs(
        labels=labels.astype(np.int64),
        preds=preds.astype(np.int64),
        confidences=rng.random((n, exits), dtype=np.float32),
        confusion=rng.random(n, dtype=np.float32),
        logits=rng.standard_normal((n, exits, classes)).astype(np.float32) if logits else None,
        sample_index=np.arange(start, start + n, dtype=np.int64),
    )


def make_summary(exits: int = 4, seed: int = 0, thresholds: int = 21) -> RunSummary:
    """A RunSummary with val and test threshold curves, two chosen points and overthinking."""
    rng = np.random.default_rng(seed)
    costs = list(np.cumsum(rng.uniform(1.0, 2.0, exits)) * 1e6)
    cnn = costs[-1] * 0.95
    final = {s: float(rng.uniform(0.7, 0.9)) for s in ("val", "test")}
    per_exit = {
        s: [*sorted(rng.uniform(0.3, final[s], exits - 1).tolist()), final[s]] for s in final
    }
    points = []
    grid = np.linspace(0.0, 1.0, thresholds)
    for split in ("val", "test"):
        cost = np.clip(0.3 + 0.8 * grid**2 + rng.normal(0, 0.01, thresholds), 0.05, None)
        acc = np.clip(final[split] - 0.3 * (1 - grid) ** 3 + rng.normal(0, 0.01, thresholds), 0, 1)
        # At threshold 1 nothing leaves early: the final head's accuracy at the full cost.
        acc[-1], cost[-1] = final[split], costs[-1] / cnn
        for t, a, c in zip(grid, acc, cost, strict=True):
            counts = rng.multinomial(100, np.ones(exits) / exits).tolist()
            points.append(OperatingPoint(float(t), split, float(a), float(c), counts))
    chosen = float(grid[int(0.8 * (thresholds - 1))])  # as the analysis would: a curve threshold
    for split in ("val", "test"):
        points.append(
            OperatingPoint(chosen, split, final[split] - 0.01, 0.7, [25] * exits, "max_drop=0.01")
        )
    over = OverthinkingSummary(
        first_correct_counts=rng.integers(0, 50, exits + 1).tolist(),
        oracle_relative_cost=0.41,
        destructive_fraction=0.5,
        destructive_per_ic=rng.random(exits - 1).tolist(),
        confusion_auroc=0.81,
        max_softmax_auroc=None,
        confusion_mean=1.2,
        confusion_std=0.3,
    )
    return RunSummary(exits, costs, cnn, per_exit, points, over)


def run_id(sweep: str, arch: str, dataset: str, mode: str, seed: int) -> str:
    return f"{sweep}.{arch}.{dataset}.{mode}.s{seed}"


def record(
    cat: Catalogue,
    sweep: str = "sw",
    arch: str = "vgg16",
    dataset: str = "digits",
    mode: str = "sdn",
    seed: int = 0,
    summary: RunSummary | None = None,
    **fields: object,
) -> str:
    """Record one run (and its summary unless ``summary`` is False-y by being omitted)."""
    rid = run_id(sweep, arch, dataset, mode, seed)
    cat.upsert_run(RunRecord(rid, sweep, arch, dataset, mode, seed, **fields))  # type: ignore[arg-type]
    if summary is not None:
        cat.record_summary(rid, summary)
    return rid
