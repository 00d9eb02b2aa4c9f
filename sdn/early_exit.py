"""Offline early exit: replay the confidence rule on collected outputs, for any number of thresholds.

The rule (paper-spec "Early exit"): walk the internal classifiers (exits ``0 .. E-2``) in depth
order and leave at the first one whose max softmax confidence is ``>= q``; if none fires, the final
head (exit ``E-1``) answers at full cost. With ``fallback="most_confident"`` (the reference
implementation's rule) a sample that no IC released takes the prediction of the most confident of
*all* outputs, still at the final exit's cost, because every output had to be computed to know it.

Thresholds are compared in the confidences' own precision (float32 as collected), the way
``model.early_exit`` compares a Python float against a float32 tensor, so that the offline replay and
the runtime path agree even when a threshold sits exactly on a confidence.

Thresholds are *chosen* on the validation split (``choose_threshold``) and then *evaluated* on the
test split at the same value (``evaluate_threshold``): the reference tuned them on test (spec bug 6).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from sdn.errors import SDNError, choice_error
from sdn.results import EarlyExitCurve, OperatingPoint, Outputs

FALLBACKS: tuple[str, ...] = ("final", "most_confident")

# Slack for comparing accuracies and costs that went through float arithmetic (e.g. 0.95 - 0.01).
_EPS = 1e-12


def check_fallback(fallback: str) -> str:
    """Return ``fallback`` if it names a known rule, else raise the standard choice error."""
    if fallback not in FALLBACKS:
        raise choice_error("fallback", fallback, FALLBACKS)
    return fallback


def check_threshold(threshold: float) -> float:
    """Return ``threshold`` as a float if it lies in [0, 1]; otherwise raise SDNError naming it."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise SDNError(f"threshold {threshold!r} is not a number; use a value in [0, 1]") from None
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise SDNError(f"threshold {threshold!r} is outside [0, 1]; use a value in [0, 1]")
    return value


def check_thresholds(thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
    """Validate many thresholds at once; returns them as float64 [T] in the given order."""
    values = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    bad = values[~((values >= 0.0) & (values <= 1.0))]
    if bad.size:
        raise SDNError(f"threshold {bad[0]!r} is outside [0, 1]; use values in [0, 1]")
    return values


def check_relative_costs(
    relative_costs: Sequence[float] | np.ndarray, num_exits: int
) -> np.ndarray:
    """Costs must give one finite, non-negative value per exit (ICs then final)."""
    costs = np.asarray(relative_costs, dtype=np.float64).reshape(-1)
    if costs.shape != (num_exits,):
        raise SDNError(
            f"relative_costs has {costs.size} entries but the outputs have {num_exits} exits; "
            "pass one cumulative cost per exit"
        )
    if not np.all(np.isfinite(costs)) or np.any(costs < 0):
        raise SDNError(f"relative_costs {costs.tolist()} must be finite and non-negative")
    return costs


def default_thresholds() -> np.ndarray:
    """0.00, 0.01, ..., 1.00 plus a finer tail near 1, where trained networks' confidences pile up."""
    grid = np.arange(101) / 100.0
    tail = np.concatenate([1.0 - np.arange(1, 10) * 10.0**-p for p in (3, 4, 5)])
    return np.unique(np.concatenate([grid, tail]))


def average_relative_cost(
    exit_counts: np.ndarray, relative_costs: np.ndarray, n: int
) -> np.ndarray:
    """sum_k n_k c_k / N, along the last axis (shared by the curve and the single-threshold path so
    that both give bit-identical numbers)."""
    return (exit_counts * relative_costs).sum(axis=-1) / n


def _fallback_correct(outputs: Outputs, fallback: str) -> np.ndarray:
    """bool [N]: whether a sample that no IC released is classified correctly under ``fallback``."""
    if fallback == "final":
        return outputs.preds[:, -1] == outputs.labels
    # argmax takes the shallowest output among equal confidences, like torch.argmax.
    best = np.argmax(outputs.confidences, axis=1)
    return outputs.preds[np.arange(outputs.num_samples), best] == outputs.labels


def offline_early_exit(
    outputs: Outputs, threshold: float, fallback: str = "final"
) -> tuple[np.ndarray, np.ndarray]:
    """Replay early exit at one threshold: (preds int64 [N], exit_idx int64 [N]).

    A sample leaves at the first IC whose confidence is ``>= threshold``, else at ``E-1``. Under
    ``fallback="most_confident"`` those samples take the prediction of the most confident output
    (shallowest on ties) while their exit index stays ``E-1``: they paid for the whole network.
    """
    q_value = check_threshold(threshold)
    check_fallback(fallback)
    conf = outputs.confidences
    n, e = conf.shape
    q = np.asarray(q_value, dtype=conf.dtype)
    fires = conf[:, : e - 1] >= q
    exit_idx = np.full(n, e - 1, dtype=np.int64)
    if e > 1:
        any_fire = fires.any(axis=1)
        exit_idx[any_fire] = np.argmax(fires[any_fire], axis=1)
    rows = np.arange(n)
    preds = outputs.preds[rows, exit_idx].astype(np.int64, copy=False)
    if fallback == "most_confident":
        late = exit_idx == e - 1
        best = np.argmax(conf[late], axis=1)
        preds[late] = outputs.preds[rows[late], best]
    return preds, exit_idx


def _count_at_least(sorted_values: np.ndarray, q: np.ndarray) -> np.ndarray:
    """For each q, how many of the ascending ``sorted_values`` are >= q."""
    return sorted_values.size - np.searchsorted(sorted_values, q, side="left")


def early_exit_curve(
    outputs: Outputs,
    relative_costs: Sequence[float] | np.ndarray,
    thresholds: Sequence[float] | np.ndarray,
    fallback: str = "final",
) -> EarlyExitCurve:
    """Accuracy, average relative cost and exits per output for every threshold, without a T x N
    matrix.

    Let ``m_k(n) = max_{j<=k} conf[n, j]`` over the ICs. Sample n has left at or before IC k iff
    ``m_k(n) >= q``, and leaves exactly at IC k iff ``m_{k-1}(n) < q <= m_k(n)``. So the number of
    samples leaving at k, and of those the number classified correctly, are differences of
    "how many values are >= q" counts over sorted arrays: O(E N log N + E T log N) in all. The
    result equals ``offline_early_exit`` at every threshold (same float32 comparison).
    """
    check_fallback(fallback)
    q64 = check_thresholds(thresholds)
    conf = outputs.confidences
    n, e = conf.shape
    costs = check_relative_costs(relative_costs, e)
    if n == 0:
        raise SDNError("cannot build an early-exit curve from outputs with no samples")
    q = q64.astype(conf.dtype)
    correct = outputs.correct
    t = q.size

    exit_counts = np.zeros((t, e), dtype=np.int64)
    correct_counts = np.zeros(t, dtype=np.int64)
    left_before = np.zeros(t, dtype=np.int64)  # samples gone at or before the previous IC
    running = np.full(n, -np.inf, dtype=conf.dtype)  # m_{k-1}, -inf before the first IC
    for k in range(e - 1):
        previous = running
        running = np.maximum(previous, conf[:, k])
        left_by_k = _count_at_least(np.sort(running), q)
        exit_counts[:, k] = left_by_k - left_before
        left_before = left_by_k
        ok = correct[:, k]
        correct_counts += _count_at_least(np.sort(running[ok]), q)
        correct_counts -= _count_at_least(np.sort(previous[ok]), q)

    # Whoever is left answers at the final exit (prediction per the fallback rule).
    exit_counts[:, e - 1] = n - left_before
    ok = _fallback_correct(outputs, fallback)
    correct_counts += int(ok.sum()) - _count_at_least(np.sort(running[ok]), q)

    return EarlyExitCurve(
        thresholds=q64,
        accuracy=correct_counts / n,
        relative_cost=average_relative_cost(exit_counts, costs, n),
        exit_counts=exit_counts,
    )


def evaluate_threshold(
    outputs: Outputs,
    relative_costs: Sequence[float] | np.ndarray,
    threshold: float,
    split: str,
    fallback: str = "final",
    objective: str | None = None,
) -> OperatingPoint:
    """What one threshold gives on one split (used to carry a val-chosen threshold to test)."""
    costs = check_relative_costs(relative_costs, outputs.num_exits)
    preds, exit_idx = offline_early_exit(outputs, threshold, fallback)
    n = outputs.num_samples
    if n == 0:
        raise SDNError(f"cannot evaluate a threshold on split {split!r} with no samples")
    counts = np.bincount(exit_idx, minlength=outputs.num_exits).astype(np.int64)
    return OperatingPoint(
        threshold=float(threshold),
        split=split,
        accuracy=float(int((preds == outputs.labels).sum()) / n),
        relative_cost=float(average_relative_cost(counts, costs, n)),
        exit_counts=[int(c) for c in counts],
        objective=objective,
    )


def curve_point(
    curve: EarlyExitCurve, index: int, split: str, objective: str | None = None
) -> OperatingPoint:
    """Row ``index`` of a curve as an OperatingPoint."""
    return OperatingPoint(
        threshold=float(curve.thresholds[index]),
        split=split,
        accuracy=float(curve.accuracy[index]),
        relative_cost=float(curve.relative_cost[index]),
        exit_counts=[int(c) for c in curve.exit_counts[index]],
        objective=objective,
    )


def format_target(value: float) -> str:
    """0.5 -> "0.50", 0.01 -> "0.01", 0.005 -> "0.005": two decimals unless that loses digits."""
    text = f"{value:.2f}"
    return text if math.isclose(float(text), value, rel_tol=0, abs_tol=1e-12) else f"{value:g}"


def _best_index(*keys: np.ndarray, mask: np.ndarray) -> int:
    """Index of the masked row that sorts last by ``keys`` (primary key first), or -1 if none."""
    candidates = np.flatnonzero(mask)
    if candidates.size == 0:
        return -1
    # np.lexsort sorts by its *last* key first, so reverse the primary-first order.
    order = np.lexsort(tuple(k[candidates] for k in reversed(keys)))
    return int(candidates[order[-1]])


def choose_threshold(
    curve: EarlyExitCurve,
    reference_accuracy: float,
    *,
    max_accuracy_drop: float | None = None,
    cost_budget: float | None = None,
    split: str = "val",
) -> OperatingPoint:
    """Pick one operating point from a (validation) curve for exactly one target.

    - ``max_accuracy_drop=d``: the cheapest threshold whose accuracy is >= ``reference_accuracy - d``
      (reference = the final head's accuracy on the same split); ties go to the higher accuracy,
      then the higher threshold (the more conservative of equal points).
    - ``cost_budget=b``: the most accurate threshold whose relative cost is <= b; ties go to the
      lower cost, then the higher threshold.

    If nothing qualifies, the closest thing is returned and its objective says ``(unmet)``: the most
    accurate point for a drop target, the cheapest point for a budget.
    """
    if (max_accuracy_drop is None) == (cost_budget is None):
        raise SDNError(
            "choose_threshold needs exactly one target: max_accuracy_drop=... or cost_budget=..."
        )
    if curve.thresholds.size == 0:
        raise SDNError("cannot choose a threshold from an empty curve; pass at least one threshold")
    acc, cost, thr = curve.accuracy, curve.relative_cost, curve.thresholds
    everything = np.ones(thr.size, dtype=bool)

    if max_accuracy_drop is not None:
        drop = float(max_accuracy_drop)
        if not 0.0 <= drop <= 1.0:
            raise SDNError(f"max_accuracy_drop {max_accuracy_drop!r} is outside [0, 1]")
        objective = f"max_drop={format_target(drop)}"
        ok = acc >= float(reference_accuracy) - drop - _EPS
        index = _best_index(-cost, acc, thr, mask=ok)
        if index < 0:
            objective += " (unmet)"
            index = _best_index(acc, -cost, thr, mask=everything)
    else:
        budget = float(cost_budget)  # type: ignore[arg-type]
        if not (math.isfinite(budget) and budget > 0.0):
            raise SDNError(f"cost_budget {cost_budget!r} must be a positive relative cost")
        objective = f"budget={format_target(budget)}"
        ok = cost <= budget + _EPS
        index = _best_index(acc, -cost, thr, mask=ok)
        if index < 0:
            objective += " (unmet)"
            index = _best_index(-cost, acc, thr, mask=everything)
    return curve_point(curve, index, split, objective)
