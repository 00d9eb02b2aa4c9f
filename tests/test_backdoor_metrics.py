"""Backdoor metrics (sdn.backdoor_metrics) on hand-made Outputs with hand-computed answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sdn.backdoor_metrics import attack_success_rate, backdoor_summary, detection_auroc
from sdn.errors import SDNError
from sdn.results import Outputs

TARGET = 5


def _outputs(rows: list[tuple[int, list[int], list[float], float]]) -> Outputs:
    return Outputs(
        labels=np.array([r[0] for r in rows], dtype=np.int64),
        preds=np.array([r[1] for r in rows], dtype=np.int64),
        confidences=np.array([r[2] for r in rows], dtype=np.float32),
        confusion=np.array([r[3] for r in rows], dtype=np.float32),
    )


# Three exits (IC0, IC1, final). label, preds, confidences, confusion.
TRIGGERED = _outputs(
    [
        (1, [1, 1, 5], [0.9, 0.6, 0.99], 1.5),  # ICs right, final hijacked: destroyed
        (2, [2, 5, 5], [0.5, 0.7, 0.95], 1.0),  # IC0 right, then hijacked: destroyed
        (3, [0, 5, 5], [0.4, 0.8, 0.97], 0.8),  # never right
        (4, [4, 4, 4], [0.95, 0.9, 0.9], 0.1),  # the backdoor failed
        (5, [5, 5, 5], [0.99, 0.99, 0.99], 0.0),  # a target-class row: must not count
    ]
)
CLEAN = _outputs(
    [
        (1, [1, 1, 1], [0.95, 0.9, 0.9], 0.2),
        (2, [3, 2, 2], [0.5, 0.6, 0.8], 0.9),
        (5, [5, 5, 5], [0.99, 0.99, 0.99], 0.05),
        (4, [4, 5, 4], [0.7, 0.92, 0.85], 0.3),
    ]
)


def test_attack_success_counts_non_target_inputs_only() -> None:
    # With the target row counted, the final exit would read 4/5 = 0.8.
    assert attack_success_rate(TRIGGERED, TARGET) == pytest.approx([0.0, 0.5, 0.75])


def test_attack_success_needs_a_non_target_sample() -> None:
    only_target = _outputs([(5, [5, 5, 5], [0.9, 0.9, 0.9], 0.0)])
    with pytest.raises(SDNError, match="target class 5"):
        attack_success_rate(only_target, TARGET)


def test_summary_per_exit_figures() -> None:
    s = backdoor_summary(CLEAN, TRIGGERED, TARGET)
    assert (s.num_exits, s.num_clean, s.num_triggered, s.num_target_excluded) == (3, 4, 4, 1)
    assert s.clean_accuracy == pytest.approx([0.75, 0.75, 1.0])
    assert s.triggered_accuracy == pytest.approx([0.75, 0.5, 0.25])
    assert s.attack_success == pytest.approx([0.0, 0.5, 0.75])
    assert s.clean_target_rate == pytest.approx([0.0, 1 / 3, 0.0])
    assert s.destructive_fraction == pytest.approx(2 / 3)
    assert s.destructive_per_ic == pytest.approx([2 / 3, 1 / 3])
    assert s.destroyed_share == pytest.approx(0.5)
    assert s.early_exit is None
    rows = s.per_exit_rows()
    assert [r["exit"] for r in rows] == [0, 1, 2] and rows[2]["attack_success"] == 0.75


def test_detection_auroc_triggered_versus_clean_non_target() -> None:
    s = backdoor_summary(CLEAN, TRIGGERED, TARGET)
    # Confusion: triggered [1.5, 1.0, 0.8, 0.1] vs clean non-target [0.2, 0.9, 0.3]: 8 of 12 pairs.
    assert s.confusion_auroc == pytest.approx(8 / 12)
    # 1 - final confidence: triggered [.01, .05, .03, .1] vs clean [.1, .2, .15]: one tie of 12.
    assert s.max_softmax_auroc == pytest.approx(0.5 / 12)


def test_early_exit_on_triggered_inputs_at_a_threshold() -> None:
    s = backdoor_summary(CLEAN, TRIGGERED, TARGET, threshold=0.9, relative_costs=[0.2, 0.5, 1.1])
    ee = s.early_exit
    assert ee is not None
    # Rows 0 and 3 leave at IC0 (0.9 >= 0.9 in float32) with the true class; 1 and 2 reach the
    # final head, which answers the target.
    assert ee.exit_counts == [2, 0, 2]
    assert ee.accuracy == pytest.approx(0.5) and ee.attack_success == pytest.approx(0.5)
    assert ee.relative_cost == pytest.approx((2 * 0.2 + 2 * 1.1) / 4)
    # Clean: exits 0, 2, 0, 1; the last one is wrong.
    assert ee.clean_accuracy == pytest.approx(0.75)
    assert ee.clean_relative_cost == pytest.approx((0.2 + 1.1 + 0.2 + 0.5) / 4)
    json.dumps(s.to_dict())  # plain types only


def test_single_exit_model() -> None:
    clean = _outputs([(1, [1], [0.9], 0.0), (2, [5], [0.6], 0.0)])
    trig = _outputs([(1, [5], [0.99], 0.0), (3, [3], [0.7], 0.0)])
    s = backdoor_summary(clean, trig, TARGET, threshold=0.5)
    assert s.attack_success == [0.5] and s.triggered_accuracy == [0.5]
    assert s.clean_target_rate == [0.5]
    assert s.destructive_fraction == 0.0 and s.destructive_per_ic == []
    assert s.confusion_auroc is None
    # 1 - conf: triggered [.01, .3] vs clean [.1, .4]: pairs won 1 of 4.
    assert s.max_softmax_auroc == pytest.approx(0.25)
    assert s.early_exit is not None and s.early_exit.exit_counts == [2]


def test_mismatched_exits_are_refused() -> None:
    clean = _outputs([(1, [1], [0.9], 0.0)])
    with pytest.raises(SDNError, match="exits"):
        backdoor_summary(clean, TRIGGERED, TARGET)
    with pytest.raises(SDNError, match="exits"):
        detection_auroc(clean, TRIGGERED)


def test_an_off_choice_is_the_final_head_and_round_trips() -> None:
    """A threshold chosen "off" on clean val (None) still gives early-exit figures: every sample
    at the final head; the summary survives to_dict / from_dict (a run's summary.json)."""
    from sdn.backdoor_metrics import BackdoorSummary
    from sdn.results import RunSummary

    s = backdoor_summary(
        CLEAN, TRIGGERED, TARGET, threshold=None, relative_costs=[0.2, 0.5, 1.1],
        early_exit=True, chosen_for="max_drop=0.01",
    )  # fmt: skip
    ee = s.early_exit
    assert ee.threshold is None and ee.chosen_for == "max_drop=0.01"
    assert ee.exit_counts == [0, 0, 4] and ee.attack_success == pytest.approx(0.75)
    assert ee.relative_cost == pytest.approx(1.1)
    assert backdoor_summary(CLEAN, TRIGGERED, TARGET).early_exit is None
    again = BackdoorSummary.from_dict(json.loads(json.dumps(s.to_dict())))
    assert again == s
    run = RunSummary(3, [1.0, 2.0, 3.0], 3.0, {"test": [0.5, 0.6, 0.7]}, backdoor=s)
    assert RunSummary.from_dict(json.loads(json.dumps(run.to_dict()))).backdoor == s
    older = run.to_dict()
    del older["backdoor"]  # a summary.json written before backdoor figures existed
    assert RunSummary.from_dict(older).backdoor is None
