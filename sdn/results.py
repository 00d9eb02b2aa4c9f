"""Plain result containers shared by ``sdn`` (which computes them) and ``storage`` (which keeps them).

They hold NumPy arrays and Python scalars only, so that ``storage`` and ``workflows`` can move them
between processes and write them without importing torch models. Exit indices run from 0 (the first
internal classifier) to ``num_exits - 1`` (the final head), everywhere in the project.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from sdn.backdoor_metrics import BackdoorSummary
    from sdn.early_exit import Choice, Frontier


@dataclass
class Outputs:
    """Every output of a model on one split: one row per sample, one column per exit.

    ``confusion`` is the raw (unstandardised) confusion score per sample: the sum over outputs
    of the L1 distance between softmax(final) and softmax(output). It is computed in the same
    forward pass, because it needs full probability vectors that are not otherwise kept; so is
    ``entropies`` (each output's softmax entropy in nats, for the entropy exit policy; None for
    outputs read from files written before it was kept).
    """

    labels: np.ndarray  # int64 [N]
    preds: np.ndarray  # int64 [N, E]
    confidences: np.ndarray  # float32 [N, E], max softmax probability
    confusion: np.ndarray  # float32 [N]
    logits: np.ndarray | None = None  # float32 [N, E, C], only when asked for
    sample_index: np.ndarray | None = None  # int64 [N], position in the split (None = 0..N-1)
    entropies: np.ndarray | None = None  # float32 [N, E], softmax entropy (nats)

    def __post_init__(self) -> None:
        n, e = self.preds.shape
        if (
            self.labels.shape != (n,)
            or self.confidences.shape != (n, e)
            or self.confusion.shape != (n,)
            or (self.entropies is not None and self.entropies.shape != (n, e))
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
        keep_entropies = all(p.entropies is not None for p in parts)
        return Outputs(
            labels=np.concatenate([p.labels for p in parts]),
            preds=np.concatenate([p.preds for p in parts]),
            confidences=np.concatenate([p.confidences for p in parts]),
            confusion=np.concatenate([p.confusion for p in parts]),
            logits=np.concatenate([p.logits for p in parts]) if keep_logits else None,
            sample_index=np.concatenate([p.sample_index for p in parts]),
            entropies=np.concatenate([p.entropies for p in parts]) if keep_entropies else None,
        )

    def subset(self, rows: np.ndarray | slice) -> Outputs:
        """The samples at positions (or mask) ``rows``."""
        return Outputs(
            labels=self.labels[rows],
            preds=self.preds[rows],
            confidences=self.confidences[rows],
            confusion=self.confusion[rows],
            logits=None if self.logits is None else self.logits[rows],
            sample_index=None if self.sample_index is None else self.sample_index[rows],
            entropies=None if self.entropies is None else self.entropies[rows],
        )


@dataclass
class EarlyExitCurve:
    """Early-exit results for many thresholds of one policy at once (one row per threshold)."""

    thresholds: np.ndarray  # float64 [T], in the policy's units; NaN = off
    accuracy: np.ndarray  # float64 [T]
    relative_cost: np.ndarray  # float64 [T], average cost / plain CNN cost
    exit_counts: np.ndarray  # int64 [T, E], samples leaving at each exit
    harmed: np.ndarray | None = None  # int64 [T]: final head right, early exit wrong
    num_samples: int = 0
    policy: str = "confidence"


@dataclass
class OperatingPoint:
    """One threshold of one exit policy (None = early exit off) and what it gives on one split."""

    threshold: float | None
    split: str  # "val" or "test"
    accuracy: float
    relative_cost: float
    exit_counts: list[int]
    policy: str = "confidence"
    harmed: int | None = None  # samples the final head gets right and early exit wrong

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ExitCalibration:
    """How well one exit's max-softmax confidence matches its accuracy on one split.

    ``ece`` is the expected calibration error over equal-width confidence bins; the bins give
    the reliability curve (empty bins have count 0 and NaN means).
    """

    split: str
    exit_index: int
    ece: float
    bin_counts: list[int]
    bin_confidence: list[float | None]
    bin_accuracy: list[float | None]

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
    """What the analysis of one trained model produces, small enough to send to the driver.

    ``operating_points`` are the early-exit curves on each policy's fixed grid (val and test);
    ``frontiers`` the exact validation frontier per policy, from which ``choices`` (the operating
    points for the sweep's targets, empirical and certified) were chosen by ``sdn.early_exit``.
    ``backdoor`` (poisoned runs only) holds the backdoor figures on ``test`` / ``test_triggered``
    (``sdn.backdoor_metrics``); every other field is computed on the clean splits, as for any run.
    """

    num_exits: int
    exit_costs: list[float]  # cumulative FLOPs of leaving at each exit
    cnn_cost: float  # FLOPs of the plain CNN (the relative-cost denominator)
    per_exit_accuracy: dict[str, list[float]]  # split -> [E]
    operating_points: list[OperatingPoint] = field(default_factory=list)  # grid curves
    overthinking: OverthinkingSummary | None = None
    frontiers: list[Frontier] = field(default_factory=list)
    choices: list[Choice] = field(default_factory=list)
    calibration: list[ExitCalibration] = field(default_factory=list)
    backdoor: BackdoorSummary | None = None

    @property
    def relative_costs(self) -> list[float]:
        return [c / self.cnn_cost for c in self.exit_costs]

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_exits": self.num_exits,
            "exit_costs": list(self.exit_costs),
            "cnn_cost": self.cnn_cost,
            "relative_costs": self.relative_costs,
            "per_exit_accuracy": {k: list(v) for k, v in self.per_exit_accuracy.items()},
            "operating_points": [p.to_dict() for p in self.operating_points],
            "overthinking": None if self.overthinking is None else self.overthinking.to_dict(),
            "frontiers": [f.to_dict() for f in self.frontiers],
            "choices": [c.to_dict() for c in self.choices],
            "calibration": [c.to_dict() for c in self.calibration],
            "backdoor": None if self.backdoor is None else self.backdoor.to_dict(),
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> RunSummary:
        """Also reads summaries written before policies and frontiers existed: their curve points
        become confidence curves and their chosen points empirical choices (no frontier); and
        those written before backdoor figures existed (``backdoor`` None)."""
        from sdn.backdoor_metrics import BackdoorSummary
        from sdn.early_exit import Choice, Frontier

        ot = d.get("overthinking")
        curve, legacy = [], []
        for raw in d.get("operating_points", []):
            raw = dict(raw)
            objective = raw.pop("objective", None)
            (curve if objective is None else legacy).append((OperatingPoint(**raw), objective))
        choices = [Choice.from_dict(c) for c in d.get("choices", [])]
        if legacy and not choices:
            choices = _legacy_choices(legacy, d.get("per_exit_accuracy", {}))
        return RunSummary(
            num_exits=d["num_exits"],
            exit_costs=list(d["exit_costs"]),
            cnn_cost=d["cnn_cost"],
            per_exit_accuracy={k: list(v) for k, v in d["per_exit_accuracy"].items()},
            operating_points=[p for p, _ in curve],
            overthinking=OverthinkingSummary(**ot) if ot else None,
            frontiers=[Frontier.from_dict(f) for f in d.get("frontiers", [])],
            choices=choices,
            calibration=[ExitCalibration(**c) for c in d.get("calibration", [])],
            backdoor=BackdoorSummary.from_dict(d["backdoor"]) if d.get("backdoor") else None,
        )


def _legacy_choices(
    points: list[tuple[OperatingPoint, str]], per_exit: dict[str, list[float]]
) -> list[Choice]:
    """Chosen points of an old summary (objective ``max_drop=0.01 (unmet)`` etc.) as choices."""
    from sdn.early_exit import Choice, Target

    by_objective: dict[str, dict[str, OperatingPoint]] = {}
    for point, objective in points:
        by_objective.setdefault(objective, {})[point.split] = point
    choices = []
    for objective, pair in by_objective.items():
        if "val" not in pair or "val" not in per_exit:
            continue
        name = objective.replace(" (unmet)", "")
        test_ref = per_exit.get("test")
        choices.append(
            Choice(
                policy="confidence",
                target=Target.parse(name).name,
                method="empirical",
                delta=None,
                met="(unmet)" not in objective,
                val=pair["val"],
                test=pair.get("test"),
                reference_val=float(per_exit["val"][-1]),
                reference_test=None if not test_ref else float(test_ref[-1]),
            )
        )
    return choices
