"""Certified thresholds (Learn-then-Test) against the plain empirical rule, on synthetic exits
whose behaviour is known: over many independent validation/test draws, the certified choice
misses its accuracy-drop target on test in at most about delta of the draws, the empirical one
measurably more often."""

from __future__ import annotations

import numpy as np
import pytest

from sdn.early_exit import (
    Target,
    build_frontier,
    certify,
    default_grid,
    drop_p_values,
    early_exit_curve,
)
from sdn.results import Outputs

COSTS = np.array([0.3, 0.6, 1.02])  # two ICs and the final head, relative to the CNN
DROP, DELTA = 0.02, 0.1


def draw(rng: np.random.Generator, n: int) -> Outputs:
    """Samples of a fixed population. The final head is right 90 % of the time. IC k's
    confidence c is uniform and, when the final head is right, the IC is right with probability
    0.55 + 0.45 c (IC0) or 0.7 + 0.3 c (IC1); when the final head is wrong, every IC is wrong
    too. So early exit can only lose accuracy: the drop equals the rate of harmed samples."""
    labels = rng.integers(0, 10, n)
    final_ok = rng.random(n) < 0.9
    conf = rng.random((n, 3)).astype(np.float32)
    conf[:, 2] = 0.99
    ic_ok = (
        np.stack(
            [
                rng.random(n) < 0.55 + 0.45 * conf[:, 0],
                rng.random(n) < 0.7 + 0.3 * conf[:, 1],
            ],
            axis=1,
        )
        & final_ok[:, None]
    )
    correct = np.column_stack([ic_ok, final_ok])
    preds = np.where(correct, labels[:, None], (labels[:, None] + 1) % 10)
    return Outputs(labels=labels, preds=preds, confidences=conf, confusion=np.zeros(n, np.float32))


def test_certified_rule_keeps_its_promise_and_the_empirical_one_does_not():
    rng = np.random.default_rng(2026)
    target = Target("max_drop", DROP)
    grid = default_grid("confidence", 3, 10)
    draws = 500
    misses = {"empirical": 0, "certified": 0}
    savings = {"empirical": [], "certified": []}
    for _ in range(draws):
        val, test = draw(rng, 2000), draw(rng, 20000)
        frontier = build_frontier(val, test, COSTS, "confidence", grid)
        curves = [early_exit_curve(o, COSTS, grid) for o in (val, test)]
        for choice in (
            frontier.choose(target),
            certify(*curves, frontier.reference_val, frontier.reference_test, COSTS, target, DELTA),
        ):
            misses[choice.method] += choice.test_drop > DROP
            savings[choice.method].append(1.0 - choice.test.relative_cost)
    slack = 3 * np.sqrt(draws * DELTA * (1 - DELTA))  # binomial slack, three standard deviations
    assert misses["certified"] <= DELTA * draws + slack, misses
    assert misses["empirical"] >= 2 * misses["certified"] + 20, misses
    assert misses["empirical"] > DELTA * draws + slack, misses
    # Certification costs some of the saving, but not all of it at this validation size.
    assert 0.05 < np.mean(savings["certified"]) < np.mean(savings["empirical"])


def test_a_validation_split_too_small_certifies_nothing():
    rng = np.random.default_rng(0)
    val = draw(rng, 144)  # digits-sized: (1 - 0.01) ** 144 = 0.235 > delta even with no harm
    curve = early_exit_curve(val, COSTS, default_grid("confidence", 3, 10))
    reference = float(val.correct[:, -1].mean())
    choice = certify(curve, None, reference, None, COSTS, Target("max_drop", 0.01), DELTA)
    assert choice.status == "none certified" and not choice.met
    assert choice.val.threshold is None and choice.val.relative_cost == COSTS[-1]
    assert choice.val.exit_counts == [0, 0, 144]
    # The empirical rule still answers (and promises nothing beyond validation).
    empirical = build_frontier(val, None, COSTS).choose(Target("max_drop", 0.01))
    assert empirical.met and empirical.val.relative_cost < COSTS[-1]


def test_fixed_sequence_stops_at_the_first_threshold_it_cannot_certify():
    # Harmed counts along the grid from the most conservative threshold down: 0, 0, 30, 0.
    # The last threshold would pass on its own, but testing stopped at the third.
    thresholds = np.array([0.2, 0.5, 0.8, 0.95])
    curve = early_exit_curve(draw(np.random.default_rng(1), 10), COSTS, thresholds)
    curve.harmed = np.array([0, 30, 0, 0])
    curve.num_samples = 1000
    curve.relative_cost = np.array([0.3, 0.5, 0.7, 0.9])
    curve.accuracy = np.array([0.8, 0.85, 0.88, 0.9])
    choice = certify(curve, None, 0.9, None, COSTS, Target("max_drop", 0.02), DELTA)
    assert choice.met and choice.val.threshold == 0.8  # 0.95 and 0.8 certified; 0.5 not


def test_drop_p_values_are_exact_binomial_tails():
    # P(Binomial(100, 0.05) <= 0) = 0.95 ** 100.
    assert drop_p_values(np.array([0]), 100, 0.05)[0] == pytest.approx(0.95**100)
    assert drop_p_values(np.array([100]), 100, 0.05)[0] == pytest.approx(1.0)
