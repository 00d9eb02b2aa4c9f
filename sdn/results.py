"""Plain result containers shared by ``sdn`` (which computes them) and ``storage`` (which keeps them).

They hold NumPy arrays and Python scalars only, so that ``storage`` and ``workflows`` can move them
between processes and write them without importing torch models. Exit indices run from 0 (the first
internal classifier) to ``num_exits - 1`` (the final head), everywhere in the project.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class Outputs:
    """Every output of a model on one split: one row per sample, one column per exit.

    ``confusion`` is the raw (unstandardised) confusion score per sample: the sum over outputs
    of the L1 distance between softmax(final) and softmax(output). It is computed in the same
    forward pass, because it needs full probability vectors that are not otherwise kept.
    """

    labels: np.ndarray  # int64 [N]
    preds: np.ndarray  # int64 [N, E]
    confidences: np.ndarray  # float32 [N, E], max softmax probability
    confusion: np.ndarray  # float32 [N]
    logits: np.ndarray | None = None  # float32 [N, E, C], only when asked for
    sample_index: np.ndarray | None = None  # int64 [N], position in the split (None = 0..N-1)

    def __post_init__(self) -> None:
        n, e = self.preds.shape
        if (
            self.labels.shape != (n,)
            or self.confidences.shape != (n, e)
            or self.confusion.shape != (n,)
        ):
            raise ValueError(
                f"inconsistent Outputs shapes: labels {self.labels.shape}, preds {self.preds.shape}, "
                f"confidences {self.confidences.shape}, confusion {self.confusion.shape}"
            )
        if self.sample_index is None:
            self.sample_index = np.arange(n, dtype=np.int64)

    @property
    def num_samples(self) -> int:
        return int(self.preds.shape[0])

    @property
    def num_exits(self) -> int:
        return int(self.preds.shape[1])

    @property
    def correct(self) -> np.ndarray:
        """bool [N, E]: whether each exit's prediction equals the label."""
        return self.preds == self.labels[:, None]

    @staticmethod
    def concat(parts: list[Outputs]) -> Outputs:
        """Join per-batch outputs (in order) into one."""
        if not parts:
            raise ValueError("no outputs to concatenate")
        keep_logits = all(p.logits is not None for p in parts)
        return Outputs(
            labels=np.concatenate([p.labels for p in parts]),
            preds=np.concatenate([p.preds for p in parts]),
            confidences=np.concatenate([p.confidences for p in parts]),
            confusion=np.concatenate([p.confusion for p in parts]),
            logits=np.concatenate([p.logits for p in parts]) if keep_logits else None,
            sample_index=np.concatenate([p.sample_index for p in parts]),
        )


@dataclass
class EarlyExitCurve:
    """Early-exit results for many thresholds at once (one row per threshold)."""

    thresholds: np.ndarray  # float64 [T]
    accuracy: np.ndarray  # float64 [T]
    relative_cost: np.ndarray  # float64 [T], average cost / plain CNN cost
    exit_counts: np.ndarray  # int64 [T, E], samples leaving at each exit


@dataclass
class OperatingPoint:
    """One threshold and what it gives on one split."""

    threshold: float
    split: str  # "val" or "test"
    accuracy: float
    relative_cost: float
    exit_counts: list[int]
    objective: str | None = None  # e.g. "max_drop=0.01" or "budget=0.5" when it was chosen for one

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class OverthinkingSummary:
    """The paper's overthinking figures for one model on one split (test unless said)."""

    first_correct_counts: list[int]  # [E + 1]: samples first correct at each exit, then "never"
    oracle_relative_cost: float  # average cost if every sample left at its first correct exit
    destructive_fraction: float  # of final-head errors, share some IC got right
    destructive_per_ic: list[float]  # [E - 1]: of final-head errors, share IC k got right
    confusion_auroc: float | None  # AUROC of standardised confusion for flagging final errors
    max_softmax_auroc: float | None  # AUROC of (1 - max softmax) for the same task
    confusion_mean: float  # training-set statistics used to standardise confusion
    confusion_std: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunSummary:
    """What the analysis of one trained model produces, small enough to send to the driver."""

    num_exits: int
    exit_costs: list[float]  # cumulative FLOPs of leaving at each exit
    cnn_cost: float  # FLOPs of the plain CNN (the relative-cost denominator)
    per_exit_accuracy: dict[str, list[float]]  # split -> [E]
    operating_points: list[OperatingPoint] = field(default_factory=list)  # curve + chosen points
    overthinking: OverthinkingSummary | None = None

    @property
    def relative_costs(self) -> list[float]:
        return [c / self.cnn_cost for c in self.exit_costs]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["relative_costs"] = self.relative_costs
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> RunSummary:
        ot = d.get("overthinking")
        return RunSummary(
            num_exits=d["num_exits"],
            exit_costs=list(d["exit_costs"]),
            cnn_cost=d["cnn_cost"],
            per_exit_accuracy={k: list(v) for k, v in d["per_exit_accuracy"].items()},
            operating_points=[OperatingPoint(**p) for p in d.get("operating_points", [])],
            overthinking=OverthinkingSummary(**ot) if ot else None,
        )
