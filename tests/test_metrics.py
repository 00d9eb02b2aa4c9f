"""Overthinking metrics on tiny tables whose answers are worked out by hand in the comments."""

from __future__ import annotations

import numpy as np
import pytest

from sdn.errors import SDNError
from sdn.metrics import (
    confusion_statistics,
    destructive_overthinking,
    error_detection_auroc,
    first_correct,
    first_correct_counts,
    oracle_relative_cost,
    overthinking_summary,
    per_exit_accuracy,
    standardise_confusion,
)
from sdn.results import Outputs

# Five samples, three exits (IC0, IC1, final), label = sample number.
#   s0 [0, 0, 0]  correct everywhere             first correct 0
#   s1 [0, 1, 1]  IC1 and final                  first correct 1
#   s2 [2, 0, 1]  IC0 only: destructive          first correct 0
#   s3 [0, 0, 0]  never correct                  first correct -1
#   s4 [1, 1, 4]  final only                     first correct 2
LABELS = np.array([0, 1, 2, 3, 4])
PREDS = np.array([[0, 0, 0], [0, 1, 1], [2, 0, 1], [0, 0, 0], [1, 1, 4]])
COSTS = [0.2, 0.5, 1.1]


def make(confusion=None, final_conf=None, preds=PREDS, labels=LABELS) -> Outputs:
    n, e = preds.shape
    conf = np.full((n, e), 0.5, dtype=np.float32)
    if final_conf is not None:
        conf[:, -1] = final_conf
    raw = np.zeros(n, dtype=np.float32) if confusion is None else np.asarray(confusion, np.float32)
    return Outputs(labels=labels, preds=preds, confidences=conf, confusion=raw)


def test_per_exit_accuracy():
    # IC0: s0, s2 -> 2/5; IC1: s0, s1 -> 2/5; final: s0, s1, s4 -> 3/5.
    assert per_exit_accuracy(make()) == pytest.approx([0.4, 0.4, 0.6])


def test_first_correct_and_counts():
    assert first_correct(make()).tolist() == [0, 1, 0, -1, 2]
    # Two first correct at IC0, one at IC1, one at the final head, one never.
    assert first_correct_counts(make()) == [2, 1, 1, 1]


def test_oracle_cost_uses_measured_costs_and_full_cost_for_never():
    # s0 0.2, s1 0.5, s2 0.2, s3 (never) 1.1, s4 (final only) 1.1 -> 3.1 / 5.
    assert oracle_relative_cost(make(), COSTS) == pytest.approx(0.62)


def test_oracle_cost_rejects_wrong_cost_count():
    with pytest.raises(SDNError, match="3 exits"):
        oracle_relative_cost(make(), [0.5, 1.0])


def test_destructive_overthinking():
    # Final-head errors: s2 and s3. Some IC got s2 right -> 1/2. IC0 got s2 -> 1/2; IC1 none -> 0.
    overall, per_ic = destructive_overthinking(make())
    assert overall == pytest.approx(0.5)
    assert per_ic == pytest.approx([0.5, 0.0])


def test_destructive_overthinking_without_final_errors_is_zero():
    preds = np.array([[1, 0, 0], [0, 0, 1]])
    outs = make(preds=preds, labels=np.array([0, 1]))
    assert destructive_overthinking(outs) == (0.0, [0.0, 0.0])


def test_destructive_overthinking_single_exit_model():
    outs = make(preds=np.array([[0], [0]]), labels=np.array([0, 1]))
    assert destructive_overthinking(outs) == (0.0, [])


def test_confusion_statistics_and_standardise():
    # Raw 1, 2, 3, 4: mean 2.5, population variance 1.25.
    train = make(confusion=[1, 2, 3, 4], preds=PREDS[:4], labels=LABELS[:4])
    mean, std = confusion_statistics(train)
    assert mean == pytest.approx(2.5)
    assert std == pytest.approx(np.sqrt(1.25))
    assert standardise_confusion(np.array([2.5, 2.5 + 2 * std]), mean, std) == pytest.approx([0, 2])
    # A zero std (single-exit model) only centres.
    assert standardise_confusion(np.array([0.0, 1.0]), 0.5, 0.0).tolist() == [-0.5, 0.5]


def test_error_detection_auroc():
    # Positives (final wrong): s2, s3. Confusion: positives 2.0, 0.3; negatives 0.1, 0.5, 0.4.
    # Pairs ranked right: s2 beats all 3, s3 beats only 0.1 -> 4 / 6.
    # 1 - final confidence: positives 0.4, 0.3; negatives 0.1, 0.2, 0.05 -> 6 / 6.
    outs = make(confusion=[0.1, 0.5, 2.0, 0.3, 0.4], final_conf=[0.9, 0.8, 0.6, 0.7, 0.95])
    conf_auc, softmax_auc = error_detection_auroc(outs, mean=1.0, std=2.0)
    assert conf_auc == pytest.approx(4 / 6)
    assert softmax_auc == pytest.approx(1.0)


def test_error_detection_auroc_one_class_is_none():
    outs = make(preds=np.array([[0, 0, 0], [1, 1, 1]]), labels=np.array([0, 1]))
    assert error_detection_auroc(outs, 0.0, 1.0) == (None, None)


def test_error_detection_auroc_single_exit_has_no_confusion_auroc():
    outs = make(preds=np.array([[0], [0]]), labels=np.array([0, 1]), final_conf=[0.9, 0.6])
    assert error_detection_auroc(outs, 0.0, 0.0) == (None, 1.0)


def test_overthinking_summary_collects_everything():
    outs = make(confusion=[0.1, 0.5, 2.0, 0.3, 0.4], final_conf=[0.9, 0.8, 0.6, 0.7, 0.95])
    summary = overthinking_summary(outs, COSTS, (1.0, 2.0))
    assert summary.first_correct_counts == [2, 1, 1, 1]
    assert summary.oracle_relative_cost == pytest.approx(0.62)
    assert summary.destructive_fraction == pytest.approx(0.5)
    assert summary.destructive_per_ic == pytest.approx([0.5, 0.0])
    assert summary.confusion_auroc == pytest.approx(4 / 6)
    assert summary.max_softmax_auroc == pytest.approx(1.0)
    assert (summary.confusion_mean, summary.confusion_std) == (1.0, 2.0)
    assert summary.to_dict()["first_correct_counts"] == [2, 1, 1, 1]
