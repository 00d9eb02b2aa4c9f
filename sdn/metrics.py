"""Overthinking metrics (paper-spec "Overthinking analysis") computed from collected ``Outputs``.

Everything here is plain NumPy over the [N, E] prediction/confidence table, so it runs the same on
outputs just collected and on outputs read back from storage. Exit ``E-1`` is the final head.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sdn.early_exit import check_relative_costs
from sdn.errors import SDNError
from sdn.results import ExitCalibration, Outputs, OverthinkingSummary

#: Equal-width confidence bins of the expected calibration error (the usual choice since Guo et
#: al., 2017, so figures compare with the literature).
CALIBRATION_BINS = 15


def per_exit_accuracy(outputs: Outputs) -> list[float]:
    """Accuracy of every output on its own: [E]."""
    if outputs.num_samples == 0:
        raise SDNError("cannot compute accuracy on outputs with no samples")
    return [float(a) for a in outputs.correct.mean(axis=0)]


def first_correct(outputs: Outputs) -> np.ndarray:
    """int64 [N]: the shallowest exit that classifies each sample correctly, -1 if none does."""
    correct = outputs.correct
    first = np.argmax(correct, axis=1).astype(np.int64)
    first[~correct.any(axis=1)] = -1
    return first


def first_correct_counts(outputs: Outputs) -> list[int]:
    """[E + 1]: how many samples are first correct at each exit; the last entry counts "never"."""
    first = first_correct(outputs)
    e = outputs.num_exits
    # Map "never" (-1) to slot E so one bincount does it.
    counts = np.bincount(np.where(first < 0, e, first), minlength=e + 1)
    return [int(c) for c in counts]


def oracle_relative_cost(outputs: Outputs, relative_costs: Sequence[float] | np.ndarray) -> float:
    """Average relative cost if every sample left at its first correct exit.

    Samples never correct, or correct only at the final head, pay the final exit's cost. The costs
    are the *measured* cumulative costs per exit (spec bug 8: the reference used nominal depth
    fractions, which leave out the IC heads and misplace MobileNet's ICs).
    """
    costs = check_relative_costs(relative_costs, outputs.num_exits)
    if outputs.num_samples == 0:
        raise SDNError("cannot compute the oracle cost on outputs with no samples")
    first = first_correct(outputs)
    exit_at = np.where(first < 0, outputs.num_exits - 1, first)
    return float(costs[exit_at].mean())


def destructive_overthinking(outputs: Outputs) -> tuple[float, list[float]]:
    """Of the final head's errors, the share that at least one IC got right, and the share per IC.

    Both are 0.0 when the final head makes no error (nothing was destroyed). A plain CNN has no ICs:
    overall 0.0 and an empty per-IC list.
    """
    correct = outputs.correct
    wrong_final = ~correct[:, -1]
    ics = correct[wrong_final, :-1]
    num_ics = outputs.num_exits - 1
    if ics.shape[0] == 0:
        return 0.0, [0.0] * num_ics
    overall = float(ics.any(axis=1).mean()) if num_ics else 0.0
    return overall, [float(s) for s in ics.mean(axis=0)]


def confusion_statistics(train_outputs: Outputs) -> tuple[float, float]:
    """Mean and (population) standard deviation of the raw confusion score on training data."""
    raw = np.asarray(train_outputs.confusion, dtype=np.float64)
    if raw.size == 0:
        raise SDNError("cannot compute confusion statistics from outputs with no samples")
    return float(raw.mean()), float(raw.std())


def standardise_confusion(raw: np.ndarray, mean: float, std: float) -> np.ndarray:
    """(raw - mean) / std, as float64. A zero std (e.g. a CNN, whose confusion is always 0) only
    centres the scores instead of dividing by zero."""
    centred = np.asarray(raw, dtype=np.float64) - mean
    return centred / std if std > 0 else centred


def _auroc(positive: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC, or None when only one class is present (AUROC is undefined then)."""
    if positive.all() or not positive.any():
        return None
    # Imported here: sklearn.metrics pulls in pandas (and with it pyarrow) when they are installed,
    # which importing sdn must not do.
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(positive, scores))


def error_detection_auroc(
    outputs: Outputs, mean: float, std: float
) -> tuple[float | None, float | None]:
    """How well each score flags the final head's errors: (confusion AUROC, max-softmax AUROC).

    Positives are the final head's misclassifications. Scores: the standardised confusion (higher =
    more internal disagreement) and 1 - the final head's max softmax. None where the split has only
    one class of outcome, and the confusion AUROC is None for a single-exit model (nothing to
    disagree with).
    """
    positive = ~outputs.correct[:, -1]
    uncertainty = 1.0 - np.asarray(outputs.confidences[:, -1], dtype=np.float64)
    softmax_auroc = _auroc(positive, uncertainty)
    if outputs.num_exits < 2:
        return None, softmax_auroc
    confusion_auroc = _auroc(positive, standardise_confusion(outputs.confusion, mean, std))
    return confusion_auroc, softmax_auroc


def overthinking_summary(
    test_outputs: Outputs,
    relative_costs: Sequence[float] | np.ndarray,
    train_confusion_stats: tuple[float, float],
) -> OverthinkingSummary:
    """The paper's overthinking figures for one split, confusion standardised on training data."""
    mean, std = train_confusion_stats
    destructive, per_ic = destructive_overthinking(test_outputs)
    confusion_auroc, softmax_auroc = error_detection_auroc(test_outputs, mean, std)
    return OverthinkingSummary(
        first_correct_counts=first_correct_counts(test_outputs),
        oracle_relative_cost=oracle_relative_cost(test_outputs, relative_costs),
        destructive_fraction=destructive,
        destructive_per_ic=per_ic,
        confusion_auroc=confusion_auroc,
        max_softmax_auroc=softmax_auroc,
        confusion_mean=float(mean),
        confusion_std=float(std),
    )


def exit_calibration(
    outputs: Outputs, split: str, bins: int = CALIBRATION_BINS
) -> list[ExitCalibration]:
    """Expected calibration error and reliability curve of every exit's max-softmax confidence.

    Confidences fall into ``bins`` equal-width bins on [0, 1] (1.0 in the last); ECE is the
    sample-weighted mean of |accuracy - mean confidence| over the bins. Samples with a NaN
    confidence (a diverged head) are left out of that exit's figures.
    """
    if bins < 1:
        raise SDNError(f"bins {bins!r} must be a positive number of bins")
    correct = outputs.correct
    result = []
    for k in range(outputs.num_exits):
        conf = np.asarray(outputs.confidences[:, k], dtype=np.float64)
        keep = np.isfinite(conf)
        conf, ok = conf[keep], correct[keep, k]
        which = np.minimum((np.clip(conf, 0.0, 1.0) * bins).astype(np.int64), bins - 1)
        counts = np.bincount(which, minlength=bins)
        conf_sum = np.bincount(which, weights=conf, minlength=bins)
        ok_sum = np.bincount(which, weights=ok.astype(np.float64), minlength=bins)
        filled = counts > 0
        mean_conf = np.where(filled, conf_sum / np.maximum(counts, 1), np.nan)
        mean_acc = np.where(filled, ok_sum / np.maximum(counts, 1), np.nan)
        total = int(counts.sum())
        ece = float(np.abs(ok_sum - conf_sum).sum() / total) if total else float("nan")
        result.append(
            ExitCalibration(
                split=split,
                exit_index=k,
                ece=ece,
                bin_counts=[int(c) for c in counts],
                bin_confidence=[None if np.isnan(v) else float(v) for v in mean_conf],
                bin_accuracy=[None if np.isnan(v) else float(v) for v in mean_acc],
            )
        )
    return result
