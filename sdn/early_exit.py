"""Early exit offline, and the one rule that picks an operating point. Every other module (the
sweep's analysis, the catalogue, the CLI tables, the report, ``sdn models predict``) calls this one.

**Policies.** Each policy gives every sample a *score* at every internal classifier (IC); a sample
leaves at the first IC whose score is ``>= level``, else the final head answers at full cost:

* ``confidence``: score = max softmax probability; threshold ``q`` (level ``q``), the paper's rule;
* ``entropy``: score = -(softmax entropy, nats); threshold ``h`` = the largest entropy that exits
  (level ``-h``);
* ``patience``: score = how many consecutive ICs, ending at this one, predict the same class;
  threshold ``k`` (level ``k``): leave at the first IC where the last ``k`` ICs agree (PABEE).

A threshold of ``None`` (``NaN`` in arrays) is "off": nobody leaves early. Scores are compared in
their own precision (float32, as collected), exactly as ``model.early_exit`` compares a Python
float with a float32 tensor, so the offline replay and the runtime path agree even when a
threshold sits on a score. A NaN score never fires.

**The operating-point rule** (``Frontier.choose``), for a target, among the policy's fixed grid
of thresholds and "off":

* ``max_drop=d``: the cheapest point whose accuracy is ``>= reference - d`` (reference = the final
  head's accuracy on the same split); ties go to the higher accuracy, then the higher level;
* ``budget=b``: the most accurate point whose relative cost is ``<= b``; ties go to the lower
  cost, then the higher level.

Both answers lie on the Pareto frontier of the curve (points by increasing cost, each strictly
more accurate than all before), so a run stores its validation frontier once and any target is
answered from it, at analysis time and later in the catalogue, by the same code. A drop target is
always met (at worst by "off"); a budget below the cheapest point is *unmet* and answered with the
cheapest point.

**Certified thresholds** (``certify``): Learn-then-Test with fixed-sequence testing on the fixed
grid (not the data-dependent candidates), with an exact binomial p-value (Clopper-Pearson) for a
drop target and Hoeffding's for a cost budget; see docs/early-exit.md for the guarantee and its
assumptions. Where nothing can be certified the answer is "none certified": "off" for a drop, the
cheapest point (unmet) for a budget.

Thresholds are *chosen* on the validation split and *evaluated* on test at the same value (the
reference tuned them on test: spec bug 6).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sdn.errors import SDNError, choice_error
from sdn.results import EarlyExitCurve, OperatingPoint, Outputs

POLICIES: tuple[str, ...] = ("confidence", "entropy", "patience")
FALLBACKS: tuple[str, ...] = ("final", "most_confident")
METHODS: tuple[str, ...] = ("empirical", "certified")
TARGET_KINDS: tuple[str, ...] = ("max_drop", "budget")

#: Slack for comparing accuracies and costs that went through float arithmetic (0.95 - 0.01).
#: Accuracies are k / n with n far below 1e8, so 1e-9 never merges two real values.
EPS = 1e-9
#: Where an array of thresholds says "off" (nobody leaves early).
OFF = float("nan")


# ---------------------------------------------------------------------------- checks
def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise choice_error("policy", policy, POLICIES)
    return policy


def check_fallback(fallback: str) -> str:
    """Return ``fallback`` if it names a known rule, else raise the standard choice error."""
    if fallback not in FALLBACKS:
        raise choice_error("fallback", fallback, FALLBACKS)
    return fallback


def check_threshold(threshold: Any, policy: str = "confidence", name: str = "threshold") -> float:
    """A user's threshold for ``policy`` as a float: confidence in [0, 1], entropy a finite
    number >= 0 (nats), patience a whole number >= 1. Raises SDNError naming ``name``."""
    check_policy(policy)
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise SDNError(f"{name} {threshold!r} is not a number") from None
    if policy == "confidence" and not 0.0 <= value <= 1.0:  # also rejects NaN
        raise SDNError(f"{name} {threshold!r} is outside [0, 1]; use a confidence in [0, 1]")
    if policy == "entropy" and not (math.isfinite(value) and value >= 0.0):
        raise SDNError(f"{name} {threshold!r} must be an entropy >= 0 (nats)")
    if policy == "patience" and not (math.isfinite(value) and value >= 1 and value == int(value)):
        raise SDNError(f"{name} {threshold!r} must be a whole number of ICs >= 1")
    return value


def check_thresholds(
    thresholds: Sequence[float] | np.ndarray, policy: str = "confidence"
) -> np.ndarray:
    """Validate many thresholds at once (NaN = off is allowed); float64 [T] in the given order."""
    check_policy(policy)
    values = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    real = values[~np.isnan(values)]
    if policy == "confidence":
        bad = real[(real < 0.0) | (real > 1.0)]
    elif policy == "entropy":
        bad = real[~np.isfinite(real) | (real < 0.0)]
    else:
        bad = real[~np.isfinite(real) | (real < 1.0) | (real != np.floor(real))]
    if bad.size:
        check_threshold(bad[0], policy)  # raises, naming the first bad value
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


# ---------------------------------------------------------------------------- policies
def default_thresholds() -> np.ndarray:
    """Confidence grid: 0.00, 0.01, ..., 1.00 plus a finer tail near 1, where trained networks'
    confidences pile up (128 values)."""
    grid = np.arange(101) / 100.0
    tail = np.concatenate([1.0 - np.arange(1, 10) * 10.0**-p for p in (3, 4, 5)])
    return np.unique(np.concatenate([grid, tail]))


def default_grid(policy: str, num_exits: int, num_classes: int) -> np.ndarray:
    """The fixed threshold grid of a policy: stored curves and certification use it.

    Entropy mirrors the confidence grid on [0, ln C] (fine near 0, where confident samples are);
    patience is every k from 1 to the number of ICs.
    """
    check_policy(policy)
    if policy == "confidence":
        return default_thresholds()
    if policy == "entropy":
        return np.unique(math.log(max(num_classes, 2)) * (1.0 - default_thresholds()))
    return np.arange(1, max(num_exits, 2), dtype=np.float64)


def policy_scores(outputs: Outputs, policy: str) -> np.ndarray:
    """float32 [N, E-1]: each IC's score under ``policy`` (higher = readier to leave)."""
    check_policy(policy)
    e = outputs.num_exits
    if policy == "confidence":
        return np.ascontiguousarray(outputs.confidences[:, : e - 1])
    if policy == "entropy":
        if outputs.entropies is None:
            raise SDNError(
                "these outputs have no entropies (written before schema version 2); "
                "the entropy policy needs the analysis run again"
            )
        return np.negative(np.ascontiguousarray(outputs.entropies[:, : e - 1]))
    preds = outputs.preds[:, : e - 1]
    streak = np.ones(preds.shape, dtype=np.float32)
    for k in range(1, preds.shape[1]):
        same = preds[:, k] == preds[:, k - 1]
        streak[:, k] = np.where(same, streak[:, k - 1] + 1, 1)
    return streak


def to_levels(policy: str, thresholds: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
    """Thresholds (policy units, NaN = off) as levels on the score scale (+inf = off)."""
    values = np.asarray(thresholds, dtype=np.float64)
    levels = -values if policy == "entropy" else values.copy()
    levels[np.isnan(values)] = np.inf
    return levels.astype(dtype)


def candidate_thresholds(grid: Sequence[float] | np.ndarray) -> np.ndarray:
    """What a threshold is chosen among: the policy's fixed grid and "off" (NaN).

    A fixed set rather than every distinct validation score: the answer then depends on the
    validation data only through the curve, the frontier a run stores stays short (tens of points
    instead of thousands, so a catalogue of 10,000 runs answers a new target in well under a
    second), and certification needs a hypothesis set fixed in advance anyway. A finer grid
    (``analysis.thresholds``) buys resolution where it matters.
    """
    values = np.unique(np.asarray(grid, dtype=np.float64))
    return np.concatenate([values[~np.isnan(values)], [OFF]])


# ---------------------------------------------------------------------------- replay
def average_relative_cost(
    exit_counts: np.ndarray, relative_costs: np.ndarray, n: int
) -> np.ndarray:
    """sum_k n_k c_k / N along the last axis (shared by curves and single thresholds, so both
    give bit-identical numbers)."""
    return (exit_counts * relative_costs).sum(axis=-1) / n


def _fallback_preds(outputs: Outputs, fallback: str) -> np.ndarray:
    """int64 [N]: the answer of a sample that no IC released, under ``fallback``."""
    if fallback == "final":
        return outputs.preds[:, -1]
    # argmax takes the shallowest output among equal confidences, like torch.argmax.
    best = np.argmax(outputs.confidences, axis=1)
    return outputs.preds[np.arange(outputs.num_samples), best]


def _exit_indices(scores: np.ndarray, level: np.floating, num_exits: int) -> np.ndarray:
    fires = scores >= level
    exit_idx = np.full(scores.shape[0], num_exits - 1, dtype=np.int64)
    if num_exits > 1:
        any_fire = fires.any(axis=1)
        exit_idx[any_fire] = np.argmax(fires[any_fire], axis=1)
    return exit_idx


def offline_early_exit(
    outputs: Outputs,
    threshold: float | None,
    fallback: str = "final",
    policy: str = "confidence",
) -> tuple[np.ndarray, np.ndarray]:
    """Replay early exit at one threshold (None = off): (preds int64 [N], exit_idx int64 [N]).

    A sample leaves at the first IC whose score reaches the threshold, else at ``E-1``. Under
    ``fallback="most_confident"`` those samples take the prediction of the most confident output
    (shallowest on ties) while their exit index stays ``E-1``: they paid for the whole network.
    """
    check_fallback(fallback)
    value = OFF if threshold is None else check_threshold(threshold, policy)
    scores = policy_scores(outputs, policy)
    level = to_levels(policy, np.array([value]), scores.dtype)[0]
    exit_idx = _exit_indices(scores, level, outputs.num_exits)
    rows = np.arange(outputs.num_samples)
    preds = outputs.preds[rows, exit_idx].astype(np.int64, copy=True)
    late = exit_idx == outputs.num_exits - 1
    preds[late] = _fallback_preds(outputs, fallback)[late]
    return preds, exit_idx


def _count_at_least(sorted_values: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """For each level, how many of the ascending ``sorted_values`` are >= it."""
    return sorted_values.size - np.searchsorted(sorted_values, levels, side="left")


def early_exit_curve(
    outputs: Outputs,
    relative_costs: Sequence[float] | np.ndarray,
    thresholds: Sequence[float] | np.ndarray,
    fallback: str = "final",
    policy: str = "confidence",
) -> EarlyExitCurve:
    """Accuracy, cost, exits per output and harmed samples for every threshold, without a T x N
    matrix.

    Let ``m_k(n)`` be the largest score of sample n over ICs 0..k (NaN ignored). It has left at or
    before IC k iff ``m_k(n) >= level``, and leaves exactly at k iff ``m_{k-1}(n) < level <=
    m_k(n)``. Every count is then a difference of "how many values are >= level" over sorted
    arrays: O(E N log N + E T log N). Equals ``offline_early_exit`` at every threshold.
    """
    check_fallback(fallback)
    values = check_thresholds(thresholds, policy)
    scores = policy_scores(outputs, policy)
    n, e = outputs.num_samples, outputs.num_exits
    costs = check_relative_costs(relative_costs, e)
    if n == 0:
        raise SDNError("cannot build an early-exit curve from outputs with no samples")
    levels = to_levels(policy, values, scores.dtype)
    correct = outputs.correct
    final_ok = correct[:, -1]
    t = levels.size

    exit_counts = np.zeros((t, e), dtype=np.int64)
    correct_counts = np.zeros(t, dtype=np.int64)
    harmed = np.zeros(t, dtype=np.int64)

    def exits_at(previous: np.ndarray, running: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """How many samples of ``mask`` leave exactly here, per level."""
        return _count_at_least(np.sort(running[mask]), levels) - _count_at_least(
            np.sort(previous[mask]), levels
        )

    everyone = np.ones(n, dtype=bool)
    running = np.full(n, -np.inf, dtype=scores.dtype)  # m_{k-1}: -inf before the first IC
    for k in range(e - 1):
        previous = running
        running = np.fmax(previous, scores[:, k])
        exit_counts[:, k] = exits_at(previous, running, everyone)
        correct_counts += exits_at(previous, running, correct[:, k])
        harmed += exits_at(previous, running, final_ok & ~correct[:, k])

    # Whoever is left answers at the final exit (prediction per the fallback rule).
    stay = n - _count_at_least(np.sort(running), levels)
    exit_counts[:, e - 1] = stay
    late_ok = _fallback_preds(outputs, fallback) == outputs.labels
    correct_counts += int(late_ok.sum()) - _count_at_least(np.sort(running[late_ok]), levels)
    late_harm = final_ok & ~late_ok
    harmed += int(late_harm.sum()) - _count_at_least(np.sort(running[late_harm]), levels)

    return EarlyExitCurve(
        thresholds=values,
        accuracy=correct_counts / n,
        relative_cost=average_relative_cost(exit_counts, costs, n),
        exit_counts=exit_counts,
        harmed=harmed,
        num_samples=n,
        policy=policy,
    )


def evaluate_threshold(
    outputs: Outputs,
    relative_costs: Sequence[float] | np.ndarray,
    threshold: float | None,
    split: str,
    fallback: str = "final",
    policy: str = "confidence",
) -> OperatingPoint:
    """What one threshold (None = off) gives on one split."""
    if outputs.num_samples == 0:
        raise SDNError(f"cannot evaluate a threshold on split {split!r} with no samples")
    values = [OFF if threshold is None else threshold]
    return curve_point(
        early_exit_curve(outputs, relative_costs, values, fallback, policy), 0, split
    )


def curve_point(curve: EarlyExitCurve, index: int, split: str) -> OperatingPoint:
    """Row ``index`` of a curve as an OperatingPoint."""
    value = float(curve.thresholds[index])
    return OperatingPoint(
        threshold=None if math.isnan(value) else value,
        split=split,
        accuracy=float(curve.accuracy[index]),
        relative_cost=float(curve.relative_cost[index]),
        exit_counts=[int(c) for c in curve.exit_counts[index]],
        policy=curve.policy,
        harmed=None if curve.harmed is None else int(curve.harmed[index]),
    )


def format_threshold(value: float | None, policy: str = "confidence") -> str:
    """A threshold for people: ``off``, ``0.9412`` (confidence), ``H<=0.231`` (entropy),
    ``k=2`` (patience). Every table and plot label uses this."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "off"
    if policy == "patience":
        return f"k={int(value)}"
    if policy == "entropy":
        return f"H<={value:.4g}"
    return f"{value:.4g}"


# ---------------------------------------------------------------------------- targets
def format_target(value: float) -> str:
    """0.5 -> "0.50", 0.01 -> "0.01", 0.005 -> "0.005": two decimals unless that loses digits."""
    text = f"{value:.2f}"
    return text if math.isclose(float(text), value, rel_tol=0, abs_tol=1e-12) else f"{value:g}"


@dataclass(frozen=True)
class Target:
    """What an operating point is chosen for: an accuracy drop or a cost budget."""

    kind: str  # "max_drop" | "budget"
    value: float

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise choice_error("target kind", self.kind, TARGET_KINDS)
        value = float(self.value)
        if self.kind == "max_drop" and not 0.0 <= value <= 1.0:
            raise SDNError(f"max drop {self.value!r} is outside [0, 1] (0.01 = 1 point)")
        if self.kind == "budget" and not (math.isfinite(value) and value > 0.0):
            raise SDNError(f"cost budget {self.value!r} must be a positive relative cost")
        object.__setattr__(self, "value", value)

    @staticmethod
    def of(max_drop: float | None = None, budget: float | None = None) -> Target:
        """The target named by exactly one of ``max_drop`` / ``budget``."""
        if (max_drop is None) == (budget is None):
            raise SDNError("give exactly one target: a max accuracy drop or a cost budget")
        return Target("max_drop", max_drop) if max_drop is not None else Target("budget", budget)

    @staticmethod
    def parse(name: str) -> Target:
        """``"max_drop=0.01"`` / ``"budget=0.5"`` back into a Target."""
        kind, sep, value = str(name).partition("=")
        if not sep:
            raise SDNError(f"target {name!r} is not of the form max_drop=D or budget=B")
        try:
            return Target(kind.strip(), float(value))
        except ValueError:
            raise SDNError(f"target {name!r} has no number after '='") from None

    @property
    def name(self) -> str:
        """The one stored spelling: ``max_drop=0.01``, ``budget=0.50``."""
        return f"{self.kind}={format_target(self.value)}"

    @property
    def label(self) -> str:
        """For people: ``max drop 1 pt``, ``budget 0.50``."""
        if self.kind == "max_drop":
            return f"max drop {100 * self.value:g} pt"
        return f"budget {format_target(self.value)}"


def targets_from(drops: Sequence[float] = (), budgets: Sequence[float] = ()) -> list[Target]:
    return [Target("max_drop", d) for d in drops] + [Target("budget", b) for b in budgets]


# ---------------------------------------------------------------------------- the rule
def _order(cost: np.ndarray, accuracy: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Indices by increasing cost, then decreasing accuracy, then decreasing level."""
    return np.lexsort((-levels, -accuracy, cost))


def frontier_indices(curve: EarlyExitCurve) -> np.ndarray:
    """Indices of the curve's Pareto frontier, by increasing cost (and accuracy)."""
    levels = to_levels(curve.policy, curve.thresholds, np.float64)
    order = _order(curve.relative_cost, curve.accuracy, levels)
    acc = curve.accuracy[order]
    best_before = np.maximum.accumulate(np.concatenate([[-np.inf], acc[:-1]]))
    return order[acc > best_before]


def choose_indices(
    accuracy: np.ndarray,
    cost: np.ndarray,
    starts: np.ndarray,
    references: np.ndarray,
    target: Target,
) -> tuple[np.ndarray, np.ndarray]:
    """The rule on many frontiers at once (concatenated; frontier i starts at ``starts[i]``):
    (chosen position in the arrays, met) per frontier. Each frontier must be in frontier order
    (increasing cost and accuracy); one frontier is the case ``starts = [0]``."""
    starts = np.asarray(starts, dtype=np.int64)
    if starts.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, bool)
    size = accuracy.size
    if size == 0 or np.any(np.diff(np.append(starts, size)) <= 0):
        raise SDNError("every frontier needs at least one point")
    lengths = np.diff(np.append(starts, size))
    positions = np.arange(size)
    if target.kind == "max_drop":
        bound = np.repeat(np.asarray(references, dtype=np.float64) - target.value - EPS, lengths)
        first_ok = np.minimum.reduceat(np.where(accuracy >= bound, positions, size), starts)
        met = first_ok < size
        return np.where(met, first_ok, starts + lengths - 1), met  # unmet: the most accurate
    last_ok = np.maximum.reduceat(np.where(cost <= target.value + EPS, positions, -1), starts)
    met = last_ok >= 0
    return np.where(met, last_ok, starts), met  # unmet: the cheapest


@dataclass
class Choice:
    """The operating point chosen for one target: on validation, and the same threshold on test."""

    policy: str
    target: str  # Target.name
    method: str  # "empirical" | "certified"
    delta: float | None  # the risk level of a certified choice
    met: bool
    val: OperatingPoint
    test: OperatingPoint | None
    reference_val: float  # the final head's accuracy on each split
    reference_test: float | None

    @property
    def val_drop(self) -> float:
        return self.reference_val - self.val.accuracy

    @property
    def test_drop(self) -> float | None:
        if self.test is None or self.reference_test is None:
            return None
        return self.reference_test - self.test.accuracy

    @property
    def status(self) -> str:
        """``met``, ``unmet`` or ``none certified``: how every table and plot says it."""
        return unmet_label(self.met, self.method)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Choice:
        return Choice(
            **{
                **d,
                "val": OperatingPoint(**d["val"]),
                "test": None if d.get("test") is None else OperatingPoint(**d["test"]),
            }
        )


def unmet_label(met: bool, method: str) -> str:
    if met:
        return "met"
    return "none certified" if method == "certified" else "unmet"


@dataclass
class Frontier:
    """A run's validation frontier for one policy, with the test figures at the same thresholds.

    This is what the catalogue stores per run and policy; ``choose`` answers any target from it.
    """

    policy: str
    thresholds: np.ndarray  # float64 [F], NaN = off
    val_accuracy: np.ndarray
    val_cost: np.ndarray
    val_exit_counts: np.ndarray  # int64 [F, E]
    test_accuracy: np.ndarray | None
    test_cost: np.ndarray | None
    test_exit_counts: np.ndarray | None
    reference_val: float
    reference_test: float | None

    def point(self, i: int, split: str) -> OperatingPoint:
        val = split == "val"
        acc = self.val_accuracy if val else self.test_accuracy
        cost = self.val_cost if val else self.test_cost
        counts = self.val_exit_counts if val else self.test_exit_counts
        assert acc is not None and cost is not None and counts is not None
        value = float(self.thresholds[i])
        return OperatingPoint(
            threshold=None if math.isnan(value) else value,
            split=split,
            accuracy=float(acc[i]),
            relative_cost=float(cost[i]),
            exit_counts=[int(c) for c in counts[i]],
            policy=self.policy,
        )

    def choose(self, target: Target) -> Choice:
        """The empirical rule (module docstring) for ``target``."""
        index, met = choose_indices(
            self.val_accuracy, self.val_cost, np.zeros(1, np.int64), [self.reference_val], target
        )
        return self.choice(int(index[0]), bool(met[0]), target, "empirical", None)

    def choice(self, i: int, met: bool, target: Target, method: str, delta: float | None) -> Choice:
        return Choice(
            policy=self.policy,
            target=target.name,
            method=method,
            delta=delta,
            met=met,
            val=self.point(i, "val"),
            test=None if self.test_accuracy is None else self.point(i, "test"),
            reference_val=self.reference_val,
            reference_test=self.reference_test,
        )

    def to_dict(self) -> dict[str, Any]:
        def listed(a: np.ndarray | None) -> Any:
            return None if a is None else np.asarray(a).tolist()

        return {
            "policy": self.policy,
            "thresholds": [None if math.isnan(t) else float(t) for t in self.thresholds],
            "val_accuracy": listed(self.val_accuracy),
            "val_cost": listed(self.val_cost),
            "val_exit_counts": listed(self.val_exit_counts),
            "test_accuracy": listed(self.test_accuracy),
            "test_cost": listed(self.test_cost),
            "test_exit_counts": listed(self.test_exit_counts),
            "reference_val": self.reference_val,
            "reference_test": self.reference_test,
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Frontier:
        def arr(key: str, dtype: Any) -> np.ndarray | None:
            return None if d.get(key) is None else np.asarray(d[key], dtype=dtype)

        thresholds = np.array([OFF if t is None else t for t in d["thresholds"]], np.float64)
        return Frontier(
            policy=d["policy"],
            thresholds=thresholds,
            val_accuracy=arr("val_accuracy", np.float64),  # type: ignore[arg-type]
            val_cost=arr("val_cost", np.float64),  # type: ignore[arg-type]
            val_exit_counts=arr("val_exit_counts", np.int64),  # type: ignore[arg-type]
            test_accuracy=arr("test_accuracy", np.float64),
            test_cost=arr("test_cost", np.float64),
            test_exit_counts=arr("test_exit_counts", np.int64),
            reference_val=float(d["reference_val"]),
            reference_test=None if d.get("reference_test") is None else float(d["reference_test"]),
        )


def build_frontier(
    val: Outputs,
    test: Outputs | None,
    relative_costs: Sequence[float] | np.ndarray,
    policy: str = "confidence",
    grid: np.ndarray | None = None,
    fallback: str = "final",
    num_classes: int | None = None,
) -> Frontier:
    """The validation frontier of ``policy`` over ``candidate_thresholds(grid)`` and the test
    figures at its thresholds. ``grid`` defaults to ``default_grid`` (``num_classes`` defaults
    to the largest label or prediction seen + 1)."""
    if grid is None:
        seen = int(max(val.labels.max(initial=0), val.preds.max(initial=0))) + 1
        grid = default_grid(policy, val.num_exits, num_classes or seen)
    candidates = candidate_thresholds(grid)
    curve = early_exit_curve(val, relative_costs, candidates, fallback, policy)
    keep = frontier_indices(curve)
    thresholds = curve.thresholds[keep]
    test_curve = (
        None
        if test is None
        else early_exit_curve(test, relative_costs, thresholds, fallback, policy)
    )
    return Frontier(
        policy=policy,
        thresholds=thresholds,
        val_accuracy=curve.accuracy[keep],
        val_cost=curve.relative_cost[keep],
        val_exit_counts=curve.exit_counts[keep],
        test_accuracy=None if test_curve is None else test_curve.accuracy,
        test_cost=None if test_curve is None else test_curve.relative_cost,
        test_exit_counts=None if test_curve is None else test_curve.exit_counts,
        reference_val=float(val.correct[:, -1].mean()),
        reference_test=None if test is None else float(test.correct[:, -1].mean()),
    )


def curve_frontier(curve: EarlyExitCurve, reference_accuracy: float) -> Frontier:
    """The frontier of a validation curve as it is ("off" not added; no test figures)."""
    if curve.thresholds.size == 0:
        raise SDNError("cannot choose a threshold from an empty curve; pass at least one threshold")
    keep = frontier_indices(curve)
    return Frontier(
        policy=curve.policy,
        thresholds=curve.thresholds[keep],
        val_accuracy=curve.accuracy[keep],
        val_cost=curve.relative_cost[keep],
        val_exit_counts=curve.exit_counts[keep],
        test_accuracy=None,
        test_cost=None,
        test_exit_counts=None,
        reference_val=float(reference_accuracy),
        reference_test=None,
    )


def choose_threshold(
    curve: EarlyExitCurve,
    reference_accuracy: float,
    *,
    max_accuracy_drop: float | None = None,
    cost_budget: float | None = None,
) -> Choice:
    """The rule on one curve's own thresholds (for notebooks): ``Choice.val`` is the chosen point,
    ``Choice.status`` says whether the target was met. ``build_frontier`` is what the analysis
    uses: it adds "off" to the grid first."""
    target = Target.of(max_accuracy_drop, cost_budget)
    return curve_frontier(curve, reference_accuracy).choose(target)


# ---------------------------------------------------------------------------- certified
def _binomial_cdf(k: np.ndarray, n: int, p: float) -> np.ndarray:
    """P(X <= k) for X ~ Binomial(n, p), elementwise."""
    from scipy.stats import binom  # only certification needs SciPy

    return np.asarray(binom.cdf(k, n, p), dtype=np.float64)


def drop_p_values(harmed: np.ndarray, n: int, max_drop: float) -> np.ndarray:
    """Exact binomial p-values of H0 "the rate of harmed samples exceeds ``max_drop``".

    A harmed sample is one the final head gets right and early exit gets wrong. The accuracy drop
    is the harmed rate minus the rate of samples early exit fixes, so bounding the harmed rate
    bounds the drop (conservatively). Under H0 the harmed count is Binomial(n, r) with r > d, so
    P(count <= observed) <= BinomialCDF(observed; n, d): Clopper-Pearson's exact test.
    """
    if max_drop >= 1.0:
        return np.zeros(np.shape(harmed))
    return _binomial_cdf(np.asarray(harmed), n, max_drop)


def budget_p_values(mean_cost: np.ndarray, n: int, budget: float, span: float) -> np.ndarray:
    """Hoeffding p-values of H0 "the expected relative cost exceeds ``budget``", for per-sample
    costs within an interval of width ``span``."""
    mean_cost = np.asarray(mean_cost, dtype=np.float64)
    if span <= 0:
        return np.where(mean_cost <= budget + EPS, 0.0, 1.0)
    gap = np.clip(budget - mean_cost, 0.0, None) / span
    return np.where(mean_cost < budget, np.exp(-2.0 * n * gap**2), 1.0)


def certify(
    val_curve: EarlyExitCurve,
    test_curve: EarlyExitCurve | None,
    reference_val: float,
    reference_test: float | None,
    relative_costs: Sequence[float] | np.ndarray,
    target: Target,
    delta: float,
) -> Choice:
    """Learn-then-Test with fixed-sequence testing over the fixed grid of ``val_curve``.

    Drop ``d``: thresholds are tested from the most conservative (highest level) down, each with
    the exact binomial p-value of ``drop_p_values``; testing stops at the first one not rejected
    at ``delta``. Every rejected threshold then has, with probability >= 1 - delta over the draw
    of the validation set, a harmed rate (so a drop) of at most ``d`` on new data from the same
    distribution; the cheapest of them is chosen. None rejected: "off" (the final head), unmet.

    Budget ``b``: tested from the cheapest threshold up with Hoeffding's p-value on the mean cost
    (per-sample cost lies between the first IC's and the final exit's); the most accurate certified
    one is chosen, else the cheapest point, unmet.

    ``test_curve`` (same thresholds) supplies the test figures of the chosen threshold.
    """
    if not 0.0 < float(delta) < 1.0:
        raise SDNError(f"delta {delta!r} must be in (0, 1), e.g. 0.1")
    delta = float(delta)
    costs = check_relative_costs(relative_costs, val_curve.exit_counts.shape[1])
    n = val_curve.num_samples
    levels = to_levels(val_curve.policy, val_curve.thresholds, np.float64)
    grid = np.flatnonzero(np.isfinite(levels))  # "off" is the answer, never a hypothesis
    off_val = _off_point(val_curve, reference_val, costs, "val")

    def finish(index: int | None, met: bool) -> Choice:
        if index is None:
            val = off_val
            test = (
                None
                if test_curve is None or reference_test is None
                else _off_point(test_curve, reference_test, costs, "test")
            )
        else:
            val = curve_point(val_curve, index, "val")
            test = None if test_curve is None else curve_point(test_curve, index, "test")
        return Choice(
            policy=val_curve.policy,
            target=target.name,
            method="certified",
            delta=delta,
            met=met,
            val=val,
            test=test,
            reference_val=reference_val,
            reference_test=reference_test,
        )

    if target.kind == "max_drop":
        sequence = grid[np.argsort(-levels[grid], kind="stable")]
        p = drop_p_values(val_curve.harmed[sequence], n, target.value)
        passed = sequence[: _leading_true(p <= delta)]
        if passed.size == 0:
            return finish(None, False)
        order = _order(val_curve.relative_cost[passed], val_curve.accuracy[passed], levels[passed])
        return finish(int(passed[order[0]]), True)

    sequence = grid[np.argsort(levels[grid], kind="stable")]
    span = float(costs.max() - costs.min())
    p = budget_p_values(val_curve.relative_cost[sequence], n, target.value, span)
    passed = sequence[: _leading_true(p <= delta)]
    if passed.size == 0:
        cheapest = _order(val_curve.relative_cost[grid], val_curve.accuracy[grid], levels[grid])
        return finish(int(grid[cheapest[0]]), False) if grid.size else finish(None, False)
    # Most accurate; ties: lower cost, then higher level (the rule's budget tie-break).
    order = np.lexsort(
        (-levels[passed], val_curve.relative_cost[passed], -val_curve.accuracy[passed])
    )
    return finish(int(passed[order[0]]), True)


def _leading_true(mask: np.ndarray) -> int:
    """How many leading entries of ``mask`` are True."""
    false = np.flatnonzero(~np.asarray(mask, dtype=bool))
    return int(false[0]) if false.size else int(np.size(mask))


def _off_point(
    curve: EarlyExitCurve, reference: float, costs: np.ndarray, split: str
) -> OperatingPoint:
    """Early exit off: every sample at the final head (final-fallback accuracy)."""
    counts = [0] * (costs.size - 1) + [int(curve.num_samples)]
    return OperatingPoint(
        threshold=None,
        split=split,
        accuracy=float(reference),
        relative_cost=float(costs[-1]),
        exit_counts=counts,
        policy=curve.policy,
    )


# ---------------------------------------------------------------------------- across runs
def group_ranking(
    target: Target,
    met: np.ndarray,
    val_accuracy: np.ndarray,
    val_cost: np.ndarray,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Order of several runs' choices for one target, best first within each of ``groups``
    (callers pre-sort by run id, so the stable sort makes the run id the last tie-break): met
    before unmet; then for a drop the lower validation cost, then the higher validation accuracy;
    for a budget the higher accuracy, then the lower cost."""
    unmet = ~np.asarray(met, dtype=bool)
    acc = np.asarray(val_accuracy, dtype=np.float64)
    cost = np.asarray(val_cost, dtype=np.float64)
    group = np.zeros(unmet.size, np.int64) if groups is None else np.asarray(groups)
    if target.kind == "max_drop":
        return np.lexsort((-acc, cost, unmet, group))
    return np.lexsort((cost, -acc, unmet, group))
