"""What a backdoor does to every exit, from collected ``Outputs`` of a clean and a triggered split.

Pure NumPy, like ``sdn.metrics``: it runs the same on outputs just collected and on outputs read
back from storage. Exit ``E-1`` is the final head.

The triggered split holds non-target images with the trigger and their TRUE labels
(``sdn.backdoor.triggered_split``). Every triggered figure here counts only samples whose label is
not the target, whatever the caller passes: a target-class image "predicted as the target" is a
correct answer, not an attack success, and counting it would inflate the rate. How many rows were
left out is reported (``num_target_excluded``), so a wrong split shows up.

Figures (paper-spec "Backdoor experiment", issue 11):

- per exit: clean accuracy, triggered accuracy (against the true labels), attack success rate
  (share predicted as the target), and the same "predicted as the target" share on the clean
  non-target images (the base rate the attack is measured against);
- destructive overthinking on triggered inputs: of the triggered samples the final head gets
  wrong, the share some IC got right (as ``sdn.metrics.destructive_overthinking``), per IC, and the
  share of all triggered samples that this happens to;
- early exit on triggered inputs at a given threshold (chosen on the clean validation split): its
  accuracy, attack success, exits and cost, next to the clean split's accuracy at that threshold;
- how well the confusion score and max-softmax tell triggered from clean inputs (AUROC, positives
  = triggered). The raw confusion is used: standardising it (``sdn.metrics.standardise_confusion``)
  is an increasing map, so the AUROC is the same. Max-softmax scores ``1 - confidence`` of the final
  head, as in the error-detection figure: an AUROC below 0.5 means triggered inputs are *more*
  confident than clean ones, which is what a successful backdoor tends to produce.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sdn.early_exit import average_relative_cost, check_relative_costs, offline_early_exit
from sdn.errors import SDNError
from sdn.metrics import _auroc, destructive_overthinking, per_exit_accuracy
from sdn.results import Outputs


@dataclass
class TriggeredEarlyExit:
    """Early exit at one threshold on the triggered split (non-target samples only).

    ``threshold`` None means early exit off (the final head answers every sample): the operating
    point chosen on clean validation may be "off" when no IC is accurate enough. ``chosen_for``
    names the target that threshold was chosen for (``max_drop=0.01``), when the caller knows it.
    """

    threshold: float | None
    fallback: str
    accuracy: float  # against the true labels
    attack_success: float  # share answered with the target
    exit_counts: list[int]  # [E]
    relative_cost: float | None  # average cost / plain CNN, when costs were given
    clean_accuracy: float  # the clean split's accuracy at the same threshold
    clean_relative_cost: float | None
    chosen_for: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> TriggeredEarlyExit:
        return TriggeredEarlyExit(**{**d, "exit_counts": [int(c) for c in d["exit_counts"]]})


@dataclass
class BackdoorSummary:
    """Backdoor figures of one model: per-exit lists have one entry per exit, final head last."""

    target: int
    num_exits: int
    num_clean: int  # clean samples (all classes) behind clean_accuracy
    num_triggered: int  # triggered non-target samples behind every triggered figure
    num_target_excluded: int  # triggered rows left out because their label is the target
    clean_accuracy: list[float]
    triggered_accuracy: list[float]
    attack_success: list[float]
    clean_target_rate: list[float]  # clean non-target images predicted as the target
    destructive_fraction: float  # of final-head errors on triggered inputs, share some IC got right
    destructive_per_ic: list[float]  # [E - 1]
    destroyed_share: float  # of all triggered inputs: final head wrong and some IC right
    confusion_auroc: float | None  # triggered vs clean non-target, by raw confusion
    max_softmax_auroc: float | None  # the same, by 1 - final max softmax
    early_exit: TriggeredEarlyExit | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> BackdoorSummary:
        """Inverse of :meth:`to_dict` (what a run's ``summary.json`` carries)."""
        early = d.get("early_exit")
        return BackdoorSummary(
            **{
                **d,
                "early_exit": None if early is None else TriggeredEarlyExit.from_dict(early),
            }
        )

    def per_exit_rows(self) -> list[dict[str, Any]]:
        """One dict per exit (``exit``, the four per-exit figures): a table's rows."""
        return [
            {
                "exit": k,
                "clean_accuracy": self.clean_accuracy[k],
                "triggered_accuracy": self.triggered_accuracy[k],
                "attack_success": self.attack_success[k],
                "clean_target_rate": self.clean_target_rate[k],
            }
            for k in range(self.num_exits)
        ]


def select_rows(outputs: Outputs, mask: np.ndarray) -> Outputs:
    """The samples of ``outputs`` where ``mask`` is True (every field, in order)."""
    return outputs.subset(np.asarray(mask, dtype=bool))


def non_target(outputs: Outputs, target: int) -> Outputs:
    """Only the samples whose label is not ``target``."""
    return select_rows(outputs, outputs.labels != target)


def target_rate(outputs: Outputs, target: int) -> list[float]:
    """Per exit, the share of samples predicted as ``target`` (attack success on triggered
    non-target inputs); callers pass non-target samples only."""
    if outputs.num_samples == 0:
        raise SDNError("cannot compute a target rate on outputs with no samples")
    return [float(r) for r in (outputs.preds == target).mean(axis=0)]


def attack_success_rate(triggered: Outputs, target: int) -> list[float]:
    """Per exit, the share of triggered NON-target inputs predicted as ``target``.

    Samples labelled ``target`` are left out (for them the target is the right answer).
    """
    kept = non_target(triggered, target)
    if kept.num_samples == 0:
        raise SDNError(
            f"the triggered outputs hold no sample outside the target class {target}; "
            "attack success is undefined"
        )
    return target_rate(kept, target)


def detection_auroc(clean: Outputs, triggered: Outputs) -> tuple[float | None, float | None]:
    """(confusion AUROC, max-softmax AUROC) for telling ``triggered`` (positive) from ``clean``.

    None where a side is empty; the confusion AUROC is None for a single-exit model.
    """
    if clean.num_exits != triggered.num_exits:
        raise SDNError(
            f"clean outputs have {clean.num_exits} exits but triggered ones {triggered.num_exits}"
        )
    positive = np.concatenate(
        [np.zeros(clean.num_samples, dtype=bool), np.ones(triggered.num_samples, dtype=bool)]
    )
    conf = np.concatenate([clean.confidences[:, -1], triggered.confidences[:, -1]])
    softmax_auroc = _auroc(positive, 1.0 - conf.astype(np.float64))
    if clean.num_exits < 2:
        return None, softmax_auroc
    confusion = np.concatenate([clean.confusion, triggered.confusion]).astype(np.float64)
    return _auroc(positive, confusion), softmax_auroc


def _cost(exit_idx: np.ndarray, costs: np.ndarray | None, num_exits: int) -> float | None:
    if costs is None:
        return None
    counts = np.bincount(exit_idx, minlength=num_exits)
    return float(average_relative_cost(counts, costs, len(exit_idx)))


def triggered_early_exit(
    clean: Outputs,
    triggered: Outputs,
    target: int,
    threshold: float | None,
    relative_costs: Sequence[float] | np.ndarray | None = None,
    fallback: str = "final",
    chosen_for: str | None = None,
) -> TriggeredEarlyExit:
    """Early exit at ``threshold`` (None: off, the final head answers) on the triggered
    non-target samples and on the clean split."""
    kept = non_target(triggered, target)
    if kept.num_samples == 0 or clean.num_samples == 0:
        raise SDNError("early exit on the backdoor splits needs clean and triggered samples")
    costs = None
    if relative_costs is not None:
        costs = check_relative_costs(relative_costs, kept.num_exits)
    preds, exit_idx = offline_early_exit(kept, threshold, fallback)
    clean_preds, clean_exit = offline_early_exit(clean, threshold, fallback)
    return TriggeredEarlyExit(
        threshold=None if threshold is None else float(threshold),
        fallback=fallback,
        accuracy=float((preds == kept.labels).mean()),
        attack_success=float((preds == target).mean()),
        exit_counts=[int(c) for c in np.bincount(exit_idx, minlength=kept.num_exits)],
        relative_cost=_cost(exit_idx, costs, kept.num_exits),
        clean_accuracy=float((clean_preds == clean.labels).mean()),
        clean_relative_cost=_cost(clean_exit, costs, clean.num_exits),
        chosen_for=chosen_for,
    )


def backdoor_summary(
    clean: Outputs,
    triggered: Outputs,
    target: int,
    *,
    threshold: float | None = None,
    relative_costs: Sequence[float] | np.ndarray | None = None,
    fallback: str = "final",
    early_exit: bool | None = None,
    chosen_for: str | None = None,
) -> BackdoorSummary:
    """Every backdoor figure of one model from its clean and triggered outputs (same split kind:
    ``test`` with ``test_triggered``, or ``val`` with ``val_triggered``).

    ``threshold`` (chosen on the clean validation split) adds the early-exit figures;
    ``relative_costs`` (one cumulative cost per exit) adds their average cost. ``early_exit``
    (default: whether a threshold is given) asks for them explicitly, so that a chosen point that
    is "off" (``threshold=None``: the final head answers) is reported as such; ``chosen_for``
    names the target the threshold was chosen for.
    """
    if clean.num_exits != triggered.num_exits:
        raise SDNError(
            f"clean outputs have {clean.num_exits} exits but triggered ones {triggered.num_exits}"
        )
    if clean.num_samples == 0:
        raise SDNError("the clean outputs hold no sample")
    kept = non_target(triggered, target)
    if kept.num_samples == 0:
        raise SDNError(
            f"the triggered outputs hold no sample outside the target class {target}; "
            "pass the outputs of a triggered split"
        )
    clean_other = non_target(clean, target)
    destructive, per_ic = destructive_overthinking(kept)
    correct = kept.correct
    destroyed = ~correct[:, -1] & correct[:, :-1].any(axis=1)
    confusion_auroc, softmax_auroc = detection_auroc(clean_other, kept)
    early = None
    if early_exit is None:
        early_exit = threshold is not None
    if early_exit:
        early = triggered_early_exit(
            clean, kept, target, threshold, relative_costs, fallback, chosen_for
        )
    return BackdoorSummary(
        target=int(target),
        num_exits=kept.num_exits,
        num_clean=clean.num_samples,
        num_triggered=kept.num_samples,
        num_target_excluded=triggered.num_samples - kept.num_samples,
        clean_accuracy=per_exit_accuracy(clean),
        triggered_accuracy=per_exit_accuracy(kept),
        attack_success=target_rate(kept, target),
        clean_target_rate=target_rate(clean_other, target),
        destructive_fraction=destructive,
        destructive_per_ic=per_ic,
        destroyed_share=float(destroyed.mean()),
        confusion_auroc=confusion_auroc,
        max_softmax_auroc=softmax_auroc,
        early_exit=early,
    )
