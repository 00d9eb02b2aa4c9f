"""Synthetic results for the storage tests: realistic shapes, no model needed."""

from __future__ import annotations

import numpy as np

from sdn.analysis import summarise_outputs
from sdn.early_exit import targets_from
from sdn.results import Outputs, RunSummary
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
    # Right answers tend to be more confident, as in a trained network.
    confidences = np.clip(rng.random((n, exits)) * 0.7 + 0.3 * hit, 0, 1).astype(np.float32)
    return Outputs(
        labels=labels.astype(np.int64),
        preds=preds.astype(np.int64),
        confidences=confidences,
        confusion=rng.random(n, dtype=np.float32),
        logits=rng.standard_normal((n, exits, classes)).astype(np.float32) if logits else None,
        sample_index=np.arange(start, start + n, dtype=np.int64),
        entropies=(np.log(classes) * (1 - confidences)).astype(np.float32),
    )


def make_run_outputs(exits: int = 4, seed: int = 0, n: int = 120) -> dict[str, Outputs]:
    """Synthetic train/val/test outputs of one run (what ``make_summary`` summarises)."""
    return {split: make_outputs(n, exits, seed=seed * 3 + i) for i, split in enumerate(SPLITS3)}


def make_costs(exits: int = 4, seed: int = 0) -> tuple[list[float], float]:
    """(cumulative FLOPs per exit, CNN FLOPs) of a synthetic run."""
    rng = np.random.default_rng(seed)
    costs = list(np.cumsum(rng.uniform(1.0, 2.0, exits)) * 1e6)
    return costs, costs[-1] * 0.95


def make_summary(
    exits: int = 4,
    seed: int = 0,
    n: int = 120,
    drops: tuple[float, ...] = (0.01,),
    budgets: tuple[float, ...] = (0.5,),
    delta: float | None = 0.1,
) -> RunSummary:
    """A RunSummary made the way the analysis makes one (``summarise_outputs``) from synthetic
    outputs: grid curves, frontiers, empirical and certified choices, calibration, overthinking."""
    costs, cnn = make_costs(exits, seed)
    return summarise_outputs(
        make_run_outputs(exits, seed, n),
        costs,
        cnn,
        num_classes=10,
        targets=targets_from(drops, budgets),
        delta=delta,
    )


SPLITS3 = ("train", "val", "test")
POISON_TAG = "badnets-t5-r0p10-s0-sq5at26x26-white"


def make_poisoned_summary(exits: int = 4, seed: int = 0, n: int = 120) -> RunSummary:
    """``make_summary`` plus the backdoor figures of a poisoned run (``summary.backdoor``), from
    synthetic test and test_triggered outputs (target class 5), with early exit at the summary's
    own empirical confidence choice for ``max_drop=0.01``, as the analysis does."""
    from sdn.backdoor_metrics import backdoor_summary

    summary = make_summary(exits=exits, seed=seed, n=n)
    test = make_run_outputs(exits, seed, n)["test"]
    triggered = make_outputs(n, exits, seed=seed + 100)
    triggered.labels[triggered.labels == 5] = 4  # a triggered split holds no target-class image
    rng = np.random.default_rng(seed)
    hijacked = rng.random(n) < 0.8  # the final head mostly answers the target
    triggered.preds[hijacked, -1] = 5
    choice = next(
        c
        for c in summary.choices
        if (c.policy, c.method, c.target) == ("confidence", "empirical", "max_drop=0.01")
    )
    summary.backdoor = backdoor_summary(
        test,
        triggered,
        5,
        threshold=choice.val.threshold,
        relative_costs=summary.relative_costs,
        early_exit=True,
        chosen_for=choice.target,
    )
    return summary


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
