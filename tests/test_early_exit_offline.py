"""Offline early exit: hand-worked cases, curve == per-threshold replay, threshold choice rules."""

from __future__ import annotations

import time

import numpy as np
import pytest

from sdn.early_exit import (
    Target,
    choose_threshold,
    default_thresholds,
    early_exit_curve,
    evaluate_threshold,
    offline_early_exit,
)
from sdn.errors import SDNError
from sdn.results import EarlyExitCurve, Outputs

# Four samples, exits IC0, IC1, final; labels 0..3.
#   s0 conf [0.9, 0.5, 0.7]   preds [0, 5, 0]
#   s1 conf [0.3, 0.8, 0.6]   preds [1, 7, 1]   IC1 is confident and wrong
#   s2 conf [0.55, 0.4, 0.5]  preds [2, 2, 9]   final wrong; most confident output is IC0 (right)
#   s3 conf [0.6, 0.6, 0.99]  preds [3, 3, 3]
COSTS = [0.25, 0.5, 1.0]


def tiny() -> Outputs:
    conf = np.array(
        [[0.9, 0.5, 0.7], [0.3, 0.8, 0.6], [0.55, 0.4, 0.5], [0.6, 0.6, 0.99]], dtype=np.float32
    )
    preds = np.array([[0, 5, 0], [1, 7, 1], [2, 2, 9], [3, 3, 3]])
    return Outputs(
        labels=np.arange(4), preds=preds, confidences=conf, confusion=np.zeros(4, np.float32)
    )


def test_offline_hand_worked_threshold_with_tie():
    # q = 0.6: s0 leaves at IC0, s1 at IC1 (0.3 < q <= 0.8), s2 reaches the final head, s3 leaves
    # at IC0 because 0.6 >= 0.6 (ties exit).
    preds, exits = offline_early_exit(tiny(), 0.6)
    assert exits.tolist() == [0, 1, 2, 0]
    assert preds.tolist() == [0, 7, 9, 3]
    preds, exits = offline_early_exit(tiny(), 0.6, fallback="most_confident")
    assert exits.tolist() == [0, 1, 2, 0]  # the fallback keeps the full-cost exit index
    assert preds.tolist() == [0, 7, 2, 3]  # s2 takes IC0's answer (0.55 is its top confidence)


def test_evaluate_threshold_hand_worked():
    point = evaluate_threshold(tiny(), COSTS, 0.6, "val")
    # Correct: s0, s3 -> 0.5. Cost (2 * 0.25 + 0.5 + 1.0) / 4 = 0.5.
    assert (point.accuracy, point.relative_cost, point.exit_counts) == (0.5, 0.5, [2, 1, 1])
    assert point.split == "val" and point.threshold == 0.6 and point.policy == "confidence"
    assert point.harmed == 1  # s1: right at the final head, wrong where it left (IC1)
    assert evaluate_threshold(tiny(), COSTS, 0.6, "val", "most_confident").accuracy == 0.75


def test_curve_hand_worked():
    curve = early_exit_curve(tiny(), COSTS, [0.0, 0.6, 1.0])
    # q = 0: everyone at IC0, all right, cost 0.25. q = 1: nobody leaves early: s2 wrong.
    assert curve.accuracy.tolist() == [1.0, 0.5, 0.75]
    assert curve.relative_cost.tolist() == [0.25, 0.5, 1.0]
    assert curve.exit_counts.tolist() == [[4, 0, 0], [2, 1, 1], [0, 0, 4]]
    # Under most_confident at q = 1: s0 IC0 (0), s1 IC1 (7, wrong), s2 IC0 (2), s3 final (3).
    mc = early_exit_curve(tiny(), COSTS, [1.0], fallback="most_confident")
    assert mc.accuracy.tolist() == [0.75]


def test_threshold_compared_in_float32_like_the_runtime():
    # float32(0.9) < 0.9 in float64; a float32 tensor >= 0.9 (torch, NumPy 2) still fires.
    outs = Outputs(
        labels=np.array([0]),
        preds=np.array([[0, 1]]),
        confidences=np.array([[0.9, 0.1]], dtype=np.float32),
        confusion=np.zeros(1, np.float32),
    )
    assert offline_early_exit(outs, 0.9)[1].tolist() == [0]
    assert early_exit_curve(outs, [0.5, 1.0], [0.9]).exit_counts.tolist() == [[1, 0]]


def random_outputs(rng: np.random.Generator, n: int, e: int, classes: int = 3) -> Outputs:
    # Confidences from a coarse grid so that ties (between exits, between samples and with the
    # thresholds) are everywhere; few classes so that both right and wrong answers are common.
    conf = rng.integers(0, 11, size=(n, e)).astype(np.float32) / np.float32(10)
    return Outputs(
        labels=rng.integers(0, classes, n),
        preds=rng.integers(0, classes, (n, e)),
        confidences=conf,
        confusion=np.zeros(n, np.float32),
    )


@pytest.mark.parametrize("fallback", ["final", "most_confident"])
@pytest.mark.parametrize("num_exits", [1, 2, 3, 7])
def test_curve_equals_offline_at_every_threshold(fallback, num_exits):
    rng = np.random.default_rng(num_exits)
    outs = random_outputs(rng, 500, num_exits)
    costs = np.sort(rng.uniform(0.1, 1.2, num_exits))
    grid = np.concatenate([np.arange(11) / 10, rng.uniform(0, 1, 40), [0.0, 1.0]])
    curve = early_exit_curve(outs, costs, grid, fallback)
    assert curve.thresholds.tolist() == grid.tolist()
    for i, q in enumerate(grid):
        preds, exits = offline_early_exit(outs, q, fallback)
        counts = np.bincount(exits, minlength=num_exits)
        assert curve.exit_counts[i].tolist() == counts.tolist(), q
        assert curve.accuracy[i] == (preds == outs.labels).sum() / outs.num_samples, q
        point = evaluate_threshold(outs, costs, q, "val", fallback)
        assert curve.relative_cost[i] == point.relative_cost, q
        assert curve.accuracy[i] == point.accuracy, q


def test_curve_speed_sanity():
    # Loose bound only (shared CI cores); bench/ measures the real 0.1 s target.
    rng = np.random.default_rng(0)
    outs = Outputs(
        labels=rng.integers(0, 10, 10_000),
        preds=rng.integers(0, 10, (10_000, 7)),
        confidences=rng.random((10_000, 7), dtype=np.float32),
        confusion=np.zeros(10_000, np.float32),
    )
    thresholds = np.linspace(0, 1, 1000)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        early_exit_curve(outs, np.linspace(0.15, 1.0, 7), thresholds)
        best = min(best, time.perf_counter() - start)
    assert best < 1.0


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), float("inf")])
def test_threshold_outside_unit_interval_is_rejected(bad):
    with pytest.raises(SDNError, match="threshold"):
        offline_early_exit(tiny(), bad)
    if bad == bad:  # in an array of thresholds NaN means "off" (below)
        with pytest.raises(SDNError, match="threshold"):
            early_exit_curve(tiny(), COSTS, [0.5, bad])


def test_off_means_everyone_at_the_final_head():
    curve = early_exit_curve(tiny(), COSTS, [float("nan")])
    assert curve.exit_counts.tolist() == [[0, 0, 4]] and curve.relative_cost.tolist() == [1.0]
    preds, exits = offline_early_exit(tiny(), None)
    assert exits.tolist() == [2, 2, 2, 2] and preds.tolist() == [0, 1, 9, 3]


def test_threshold_error_names_the_value():
    with pytest.raises(SDNError, match=r"1\.5.*\[0, 1\]"):
        offline_early_exit(tiny(), 1.5)


def test_unknown_fallback_is_rejected():
    with pytest.raises(SDNError, match=r"'bogus'.*'final'.*'most_confident'"):
        offline_early_exit(tiny(), 0.5, fallback="bogus")
    with pytest.raises(SDNError, match="bogus"):
        early_exit_curve(tiny(), COSTS, [0.5], fallback="bogus")


def test_costs_must_match_exits():
    with pytest.raises(SDNError, match="3 exits"):
        early_exit_curve(tiny(), [0.5, 1.0], [0.5])


def test_default_thresholds_span_unit_interval():
    grid = default_thresholds()
    assert grid[0] == 0.0 and grid[-1] == 1.0
    assert np.all(np.diff(grid) > 0)
    assert {0.5, 0.99, 0.999} <= set(grid.tolist())


def curve(thr, acc, cost) -> EarlyExitCurve:
    t = len(thr)
    return EarlyExitCurve(
        thresholds=np.array(thr, float),
        accuracy=np.array(acc, float),
        relative_cost=np.array(cost, float),
        exit_counts=np.zeros((t, 2), dtype=np.int64),
    )


# Rows 5 and 6 share row 2's cost; row 6 is the most accurate of the three.
CHOICE = curve(
    [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
    [0.80, 0.85, 0.90, 0.90, 0.92, 0.90, 0.91],
    [0.30, 0.40, 0.50, 0.60, 0.70, 0.50, 0.50],
)


def test_choose_by_accuracy_drop():
    # No drop: only row 4 reaches 0.92.
    c = choose_threshold(CHOICE, 0.92, max_accuracy_drop=0.0)
    assert (c.val.threshold, c.target, c.val.split, c.status) == (
        0.5,
        "max_drop=0.00",
        "val",
        "met",
    )
    # 0.02: rows 2, 3, 5, 6 reach 0.90; cheapest cost 0.5 is shared by 2, 5, 6 -> most accurate 6.
    p = choose_threshold(CHOICE, 0.92, max_accuracy_drop=0.02).val
    assert (p.threshold, p.accuracy, p.relative_cost) == (0.7, 0.91, 0.5)
    # 0.1: row 1 (0.85 >= 0.82) is the cheapest qualifying.
    assert choose_threshold(CHOICE, 0.92, max_accuracy_drop=0.1).val.threshold == 0.2


def test_choose_by_drop_tolerates_float_rounding():
    # 0.95 - 0.01 is 0.9399999999999999 in float64; 0.94 must still qualify.
    c = curve([0.2, 0.8], [0.94, 0.95], [0.5, 0.9])
    assert choose_threshold(c, 0.95, max_accuracy_drop=0.01).val.threshold == 0.2


def test_choose_drop_ties_go_to_higher_threshold():
    c = curve([0.2, 0.3, 0.1], [0.9, 0.9, 0.9], [0.5, 0.5, 0.5])
    assert choose_threshold(c, 0.9, max_accuracy_drop=0.0).val.threshold == 0.3


def test_choose_by_budget():
    # <= 0.5: rows 0, 1, 2, 5, 6 -> most accurate is row 6 (0.91).
    c = choose_threshold(CHOICE, 0.92, cost_budget=0.5)
    assert (c.val.threshold, c.target) == (0.7, "budget=0.50")
    assert choose_threshold(CHOICE, 0.92, cost_budget=0.45).val.threshold == 0.2
    # Equal accuracy: the cheaper one.
    c = curve([0.2, 0.3], [0.9, 0.9], [0.6, 0.4])
    assert choose_threshold(c, 0.9, cost_budget=0.75).val.relative_cost == 0.4


def test_unmet_targets_fall_back_and_say_so():
    c = choose_threshold(CHOICE, 0.99, max_accuracy_drop=0.01)
    assert (c.val.threshold, c.met, c.status) == (0.5, False, "unmet")  # most accurate point
    c = choose_threshold(CHOICE, 0.92, cost_budget=0.2)
    assert (c.val.threshold, c.met, c.status) == (0.1, False, "unmet")  # cheapest point


def test_choose_needs_exactly_one_valid_target():
    with pytest.raises(SDNError, match="exactly one target"):
        choose_threshold(CHOICE, 0.9)
    with pytest.raises(SDNError, match="exactly one target"):
        choose_threshold(CHOICE, 0.9, max_accuracy_drop=0.01, cost_budget=0.5)
    with pytest.raises(SDNError, match="max drop"):
        choose_threshold(CHOICE, 0.9, max_accuracy_drop=-0.1)
    with pytest.raises(SDNError, match="cost budget"):
        choose_threshold(CHOICE, 0.9, cost_budget=0.0)


def test_target_names_keep_extra_digits_and_parse_back():
    assert Target("max_drop", 0.005).name == "max_drop=0.005"
    assert Target("budget", 0.5).name == "budget=0.50"
    assert Target.parse("max_drop=0.01") == Target("max_drop", 0.01)
    assert Target("max_drop", 0.01).label == "max drop 1 pt"
    with pytest.raises(SDNError, match="max_drop=D or budget=B"):
        Target.parse("drop 0.01")
