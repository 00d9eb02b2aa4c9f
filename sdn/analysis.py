"""Run a trained model over a split once, keep what the analysis needs, and summarise a run.

``iter_outputs`` is the one place that touches the network: one forward pass per batch gives every
output's logits, and everything else (predictions, confidences, the confusion score) is reduced on
the device so that only a few numbers per sample cross to the host. It yields per batch, so a caller
that writes to disk (storage's Parquet writer) keeps memory bounded by the batch size.
``summarise`` then works from those outputs alone: thresholds are chosen on val and carried to test.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from sdn.data import BatchIterator, DatasetInfo, DataSplits, ImageSet
from sdn.early_exit import (
    POLICIES,
    Target,
    build_frontier,
    certify,
    check_policy,
    curve_point,
    default_grid,
    early_exit_curve,
    targets_from,
)
from sdn.errors import SDNError
from sdn.metrics import (
    confusion_statistics,
    exit_calibration,
    overthinking_summary,
    per_exit_accuracy,
)
from sdn.models.runtime import softmax_statistics
from sdn.results import Outputs, RunSummary

#: Risk level of the certified choices a summary stores next to the empirical ones.
DEFAULT_DELTA = 0.1

# Training samples used for the confusion statistics: enough for a stable mean and std, and cheap.
TRAIN_CONFUSION_SAMPLES = 5000


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def reduce_logits(logits: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-sample summaries of one batch of outputs, computed where the logits live.

    Returns preds int64 [B, E], confidences float32 [B, E] (max softmax), entropies float32
    [B, E] (softmax entropy, nats; ``softmax_statistics``, as the runtime computes them) and
    confusion float32 [B]: sum over outputs k of ||softmax(final) - softmax(k)||_1 (the final's
    own term is 0).
    """
    stacked = torch.stack([t.float() for t in logits])  # [E, B, C]; float32 even under autocast
    confidences, preds, entropies = softmax_statistics(stacked)  # [E, B] each
    probs = torch.softmax(stacked, dim=-1)
    confusion = (probs - probs[-1]).abs().sum(dim=-1).sum(dim=0)  # [B]
    return {
        "preds": preds.T,
        "confidences": confidences.T,
        "entropies": entropies.T,
        "confusion": confusion,
    }


@dataclass
class _InFlight:
    """One batch's results on their way to the host (see ``_start_copy``)."""

    packed: torch.Tensor  # float32 [B, 3E + 2]: preds, confidences, entropies, confusion, label
    logits: torch.Tensor | None  # float32 [B, E, C] when kept
    num_exits: int
    done: torch.cuda.Event | None  # set on CUDA: the copy is finished once it has fired


def _start_copy(logits: Sequence[torch.Tensor], labels: torch.Tensor, keep: bool) -> _InFlight:
    """Reduce one batch on its device and start its copy to the host.

    Everything small goes in ONE copy (class ids < 2^24 are exact in float32). On CUDA the copy is
    asynchronous into pinned memory, so the caller can queue the next batch's forward pass before
    waiting for it: the GPU never idles on a per-batch synchronisation.
    """
    summary = reduce_logits(logits)
    packed = torch.cat(
        [
            summary["preds"].float(),
            summary["confidences"],
            summary["entropies"],
            summary["confusion"][:, None],
            labels.to(summary["confusion"].device).float()[:, None],
        ],
        dim=1,
    )
    kept = torch.stack([t.float() for t in logits], dim=1) if keep else None
    if packed.device.type != "cuda":
        return _InFlight(packed.cpu(), None if kept is None else kept.cpu(), len(logits), None)
    host = packed.to("cpu", non_blocking=True)
    host_logits = None if kept is None else kept.to("cpu", non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    return _InFlight(host, host_logits, len(logits), done)


def _finish(batch: _InFlight, sample_index: np.ndarray) -> Outputs:
    """Wait for a batch's copy and unpack it into ``Outputs``."""
    if batch.done is not None:
        batch.done.synchronize()
    packed = batch.packed.numpy()
    e = batch.num_exits
    return Outputs(
        labels=packed[:, -1].astype(np.int64),
        preds=packed[:, :e].astype(np.int64),
        confidences=np.ascontiguousarray(packed[:, e : 2 * e]),
        entropies=np.ascontiguousarray(packed[:, 2 * e : 3 * e]),
        confusion=np.ascontiguousarray(packed[:, 3 * e]),
        logits=None if batch.logits is None else batch.logits.numpy(),
        sample_index=sample_index,
    )


def exit_logits(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every exit's logits for one batch: a list as returned (an SDN), or ``[logits]`` (a CNN).

    Same contract as ``sdn.models.model_outputs`` but decided by what the forward pass returns, not
    by the model's class, so that wrapped models (``torch.compile``, stand-ins in tests) work too.
    """
    out = model(x)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def iter_outputs(
    model: nn.Module,
    imageset: ImageSet,
    info: DatasetInfo,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    keep_logits: bool = False,
    channels_last: bool = False,
    indices: np.ndarray | None = None,
) -> Iterator[Outputs]:
    """Yield one ``Outputs`` per batch of ``imageset`` (in order, no augmentation).

    One forward pass per batch, in eval mode under ``torch.inference_mode``; the model's previous
    train/eval mode is restored when the iteration ends. ``device=None`` runs where the model's
    parameters are; a device given moves the model there. ``indices`` (optional) restricts the pass
    to those positions of the set; ``sample_index`` always holds positions in the full set.
    Arguments are checked here, at the call, not at the first ``next``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SDNError(f"batch_size {batch_size!r} must be a positive integer")
    if device is None:
        target = _model_device(model)
    else:
        target = torch.device(device)
        model.to(target)
    if indices is not None:
        positions = np.asarray(indices, dtype=np.int64)
        imageset = imageset.subset(positions)
    else:
        positions = np.arange(len(imageset), dtype=np.int64)
    batches = BatchIterator(
        imageset,
        info,
        batch_size=batch_size,
        shuffle=False,
        augment=False,
        device=target,
        channels_last=channels_last,
    )
    return _stream(model, batches, positions, keep_logits)


def _stream(
    model: nn.Module, batches: BatchIterator, positions: np.ndarray, keep_logits: bool
) -> Iterator[Outputs]:
    """The generator behind ``iter_outputs``: batch i is handed out after batch i+1's forward pass
    has been queued, so its host copy overlaps that work (on CUDA; on the CPU it changes nothing)."""
    was_training = model.training
    model.eval()
    start = 0
    pending: tuple[_InFlight, np.ndarray] | None = None
    try:
        for x, y in batches:
            # Inference mode only around the work, never across a yield: the caller's code between
            # batches must not run (or create tensors) under it.
            with torch.inference_mode():
                batch = _start_copy(exit_logits(model, x), y, keep_logits)
            stop = start + x.shape[0]
            if pending is not None:
                yield _finish(*pending)
            pending, start = (batch, positions[start:stop]), stop
        if pending is not None:
            yield _finish(*pending)
    finally:
        model.train(was_training)


def collect_outputs(
    model: nn.Module,
    imageset: ImageSet,
    info: DatasetInfo,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    keep_logits: bool = False,
    channels_last: bool = False,
    indices: np.ndarray | None = None,
) -> Outputs:
    """All of ``iter_outputs`` joined into one ``Outputs`` (for splits that fit in memory)."""
    parts = list(
        iter_outputs(
            model,
            imageset,
            info,
            batch_size=batch_size,
            device=device,
            keep_logits=keep_logits,
            channels_last=channels_last,
            indices=indices,
        )
    )
    if not parts:
        raise SDNError("cannot collect outputs from an empty image set")
    return Outputs.concat(parts)


def train_subsample(
    num_samples: int, limit: int = TRAIN_CONFUSION_SAMPLES, seed: int = 0
) -> np.ndarray:
    """Deterministic, sorted positions of at most ``limit`` training samples (all when fewer)."""
    if num_samples <= limit:
        return np.arange(num_samples, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_samples, size=limit, replace=False)).astype(np.int64)


def model_costs(model: nn.Module) -> tuple[list[float], float]:
    """(cumulative FLOPs per exit, plain-CNN FLOPs) from the model's own counter."""
    exit_costs = getattr(model, "exit_costs", None)
    cnn_cost = getattr(model, "cnn_cost", None)
    if exit_costs is None and cnn_cost is None and callable(getattr(model, "cost", None)):
        cost = float(model.cost())  # a plain CNN: its one exit is the whole network
        return [cost], cost
    if exit_costs is None or cnn_cost is None:
        raise SDNError(
            f"model {type(model).__name__} has no exit_costs()/cnn_cost(); "
            "pass a model built by sdn.models"
        )
    return [float(c) for c in exit_costs()], float(cnn_cost())


def summarise(
    model: nn.Module,
    splits: DataSplits | None,
    info: DatasetInfo,
    *,
    thresholds: Sequence[float] | np.ndarray | None = None,
    max_accuracy_drops: Sequence[float] = (0.0, 0.01, 0.02, 0.05),
    cost_budgets: Sequence[float] = (0.25, 0.5, 0.75),
    policies: Sequence[str] = POLICIES,
    delta: float | None = DEFAULT_DELTA,
    device: str | torch.device | None = None,
    outputs: Mapping[str, Outputs] | None = None,
    batch_size: int = 256,
    fallback: str = "final",
    train_samples: int = TRAIN_CONFUSION_SAMPLES,
    channels_last: bool = False,
) -> RunSummary:
    """Everything the paper reports for one trained model, from one pass over each split.

    Outputs for val, test and a deterministic subsample of train (<= ``train_samples``, no
    augmentation; used for per-exit accuracy and the confusion statistics); splits given in
    ``outputs`` are not recomputed. The rest is ``summarise_outputs``.
    """
    exit_costs, cnn_cost = model_costs(model)
    collected: dict[str, Outputs] = dict(outputs or {})

    def ensure(split: str, indices: np.ndarray | None = None) -> Outputs:
        if split not in collected:
            imageset = getattr(splits, split, None)
            if imageset is None or len(imageset.labels) == 0:
                raise SDNError(
                    f"split {split!r} is missing or empty; summarise needs train, val and test"
                )
            collected[split] = collect_outputs(
                model,
                imageset,
                info,
                batch_size=batch_size,
                device=device,
                channels_last=channels_last,
                indices=indices,
            )
        return collected[split]

    ensure("val")
    ensure("test")
    if "train" not in collected:
        train_set = getattr(splits, "train", None)
        size = 0 if train_set is None else len(train_set.labels)
        ensure("train", train_subsample(size, train_samples))
    return summarise_outputs(
        collected,
        exit_costs,
        cnn_cost,
        num_classes=info.num_classes,
        thresholds=thresholds,
        targets=targets_from(max_accuracy_drops, cost_budgets),
        policies=policies,
        delta=delta,
        fallback=fallback,
    )


def summarise_outputs(
    outputs: Mapping[str, Outputs],
    exit_costs: Sequence[float],
    cnn_cost: float,
    *,
    num_classes: int,
    targets: Sequence[Target],
    thresholds: Sequence[float] | np.ndarray | None = None,
    policies: Sequence[str] = POLICIES,
    delta: float | None = DEFAULT_DELTA,
    fallback: str = "final",
) -> RunSummary:
    """The summary of one run from its outputs (``train``, ``val``, ``test``) and costs alone.

    Per policy (for a single-exit CNN every threshold means "the final head", which keeps it in
    the early-exit tables as the reference): the early-exit curves on the policy's fixed grid for
    val and test (``thresholds`` replaces the confidence grid), the exact validation frontier
    with test figures at its thresholds, and for each target the empirical choice (from the
    frontier) and, when ``delta`` is set, the certified one (from the val grid curve). Test never
    influences a choice (spec bug 6). Also per-exit accuracy for every split given, calibration
    on val and test, and the overthinking figures on test with confusion standardised on train.
    """
    for split in ("train", "val", "test"):
        if split not in outputs:
            raise SDNError(f"split {split!r} is missing; summarise needs train, val and test")
    val, test, train = outputs["val"], outputs["test"], outputs["train"]
    costs = np.asarray(exit_costs, dtype=np.float64) / float(cnn_cost)
    if val.num_exits != costs.size or test.num_exits != costs.size:
        raise SDNError(
            f"outputs have {val.num_exits} exits but the model reports {costs.size} exit costs"
        )
    points, frontiers, choices = [], [], []
    for policy in policies:
        check_policy(policy)
        if policy == "entropy" and (val.entropies is None or test.entropies is None):
            continue  # outputs read from files that predate entropies
        grid = default_grid(policy, costs.size, num_classes)
        if policy == "confidence" and thresholds is not None:
            grid = np.unique(np.asarray(thresholds, dtype=np.float64))
        curves = {}
        for split, outs in (("val", val), ("test", test)):
            curves[split] = early_exit_curve(outs, costs, grid, fallback, policy)
            points += [curve_point(curves[split], i, split) for i in range(grid.size)]
        frontier = build_frontier(val, test, costs, policy, grid, fallback)
        frontiers.append(frontier)
        for target in targets:
            choices.append(frontier.choose(target))
            if delta is not None:
                choices.append(
                    certify(
                        curves["val"],
                        curves["test"],
                        frontier.reference_val,
                        frontier.reference_test,
                        costs,
                        target,
                        delta,
                    )
                )
    return RunSummary(
        num_exits=int(costs.size),
        exit_costs=[float(c) for c in exit_costs],
        cnn_cost=float(cnn_cost),
        per_exit_accuracy={name: per_exit_accuracy(o) for name, o in outputs.items()},
        operating_points=points,
        overthinking=overthinking_summary(test, costs, confusion_statistics(train)),
        frontiers=frontiers,
        choices=choices,
        calibration=exit_calibration(val, "val") + exit_calibration(test, "test"),
    )
