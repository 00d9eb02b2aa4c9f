"""Collecting outputs (one forward per batch, streaming) and summarising a run end to end."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from sdn import build_sdn
from sdn.analysis import collect_outputs, iter_outputs, reduce_logits, summarise
from sdn.data import DatasetInfo, DataSplits, ImageSet
from sdn.early_exit import (
    choose_threshold,
    default_thresholds,
    early_exit_curve,
    evaluate_threshold,
    offline_early_exit,
)
from sdn.errors import SDNError
from sdn.results import Outputs

INFO = DatasetInfo(
    name="toy",
    num_classes=4,
    image_size=32,
    mean=(0.5, 0.4, 0.3),
    std=(0.25, 0.2, 0.3),
    pad=4,
    color_jitter=None,
    default_val_size=8,
)


class StandIn(nn.Module):
    """Three exits of linear heads over the per-channel image mean; counts its forward passes.

    The outputs differ enough between heads that predictions, confidences and confusion vary.
    """

    def __init__(self, num_exits: int = 3, num_classes: int = 4, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.heads = nn.ModuleList(nn.Linear(3, num_classes) for _ in range(num_exits))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.calls += 1
        features = x.mean(dim=(2, 3))
        return [3.0 * head(features) for head in self.heads]

    def exit_costs(self) -> list[float]:
        return [1.0, 2.0, 4.0][: len(self.heads)]

    def cnn_cost(self) -> float:
        return 3.5


class PlainCNN(StandIn):
    """A single-exit model: returns one tensor and knows only its own cost, like sdn's CNN."""

    def __init__(self) -> None:
        super().__init__(num_exits=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x)[0]

    exit_costs = None  # type: ignore[assignment]
    cnn_cost = None  # type: ignore[assignment]

    def cost(self) -> float:
        return 2.0


def imageset(n: int, seed: int) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return ImageSet(images, torch.randint(0, 4, (n,), generator=g))


def splits() -> DataSplits:
    return DataSplits(INFO, train=imageset(24, 1), val=imageset(20, 2), test=imageset(22, 3))


def normalised(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(INFO.mean).view(1, 3, 1, 1)
    std = torch.tensor(INFO.std).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def test_reduce_logits_hand_worked():
    # IC softmax [0.25, 0.75], final softmax [0.75, 0.25], a third output equal to the final.
    # Confusion = |0.75-0.25| + |0.25-0.75| = 1.0 for the IC, 0 for the other two.
    ic = torch.tensor([[0.0, math.log(3)]])
    final = torch.tensor([[math.log(3), 0.0]])
    out = reduce_logits([ic, final.clone(), final])
    assert out["preds"].tolist() == [[1, 0, 0]]
    assert out["confidences"] == pytest.approx(torch.tensor([[0.75, 0.75, 0.75]]))
    assert out["confusion"].tolist() == pytest.approx([1.0])


def numpy_reference(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """preds, confidences and confusion from [N, E, C] logits, written independently."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = shifted / shifted.sum(axis=-1, keepdims=True)
    confusion = np.abs(probs - probs[:, -1:, :]).sum(axis=(1, 2))
    return probs.argmax(-1), probs.max(-1), confusion


def test_collect_outputs_one_forward_per_batch_and_correct_values():
    model, data = StandIn(), imageset(10, 0)
    model.train()
    out = collect_outputs(model, data, INFO, batch_size=4, keep_logits=True)
    assert model.calls == 3  # ceil(10 / 4): one forward pass per batch, nothing else
    assert model.training  # the caller's mode comes back
    assert (out.num_samples, out.num_exits) == (10, 3)
    assert out.labels.tolist() == data.labels.tolist()
    with torch.no_grad():
        expected = torch.stack(model(normalised(data.images)), dim=1).numpy()
    np.testing.assert_allclose(out.logits, expected, rtol=1e-5, atol=1e-5)
    preds, conf, confusion = numpy_reference(out.logits.astype(np.float64))
    assert out.preds.tolist() == preds.tolist()
    np.testing.assert_allclose(out.confidences, conf, rtol=1e-5)
    np.testing.assert_allclose(out.confusion, confusion, rtol=1e-4, atol=1e-6)
    assert out.confusion.max() > 0.1  # the heads really disagree, so the check means something
    assert out.preds.dtype == np.int64 and out.confidences.dtype == np.float32


def test_iter_outputs_streams_batches_with_positions():
    model, data = StandIn(), imageset(10, 0)
    parts = list(iter_outputs(model, data, INFO, batch_size=4))
    assert [p.num_samples for p in parts] == [4, 4, 2]
    assert [p.sample_index.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert all(p.logits is None for p in parts)
    whole = collect_outputs(model, data, INFO, batch_size=10)
    assert Outputs.concat(parts).preds.tolist() == whole.preds.tolist()


def test_iter_outputs_is_lazy_and_leaves_no_inference_mode_behind():
    model, data = StandIn(), imageset(10, 0)
    stream = iter_outputs(model, data, INFO, batch_size=4)
    assert model.calls == 0
    first = next(stream)
    # Batch 0 is handed out once batch 1's forward pass is queued (its host copy overlaps it).
    assert model.calls == 2 and first.sample_index.tolist() == [0, 1, 2, 3]
    assert not torch.is_inference_mode_enabled()
    stream.close()


def test_iter_outputs_on_a_subset_keeps_set_positions():
    model, data = StandIn(), imageset(10, 0)
    out = collect_outputs(model, data, INFO, batch_size=3, indices=np.array([1, 5, 8, 9]))
    assert out.sample_index.tolist() == [1, 5, 8, 9]
    assert out.labels.tolist() == data.labels[[1, 5, 8, 9]].tolist()
    full = collect_outputs(model, data, INFO)
    assert out.preds.tolist() == full.preds[[1, 5, 8, 9]].tolist()


def test_collect_outputs_single_exit_model():
    out = collect_outputs(PlainCNN(), imageset(6, 0), INFO)
    assert out.num_exits == 1
    assert out.confusion.tolist() == [0.0] * 6


def test_bad_batch_size_is_rejected_at_the_call():
    with pytest.raises(SDNError, match="batch_size"):
        iter_outputs(StandIn(), imageset(4, 0), INFO, batch_size=0)  # no next() needed


def chosen(summary, policy="confidence", method="empirical"):
    picked = {c.target: c for c in summary.choices if c.policy == policy and c.method == method}
    assert len(picked) == sum(
        1 for c in summary.choices if c.policy == policy and c.method == method
    )
    return picked


def test_summarise_end_to_end_on_stand_in():
    model, data = StandIn(), splits()
    thresholds = [0.0, 0.3, 0.5, 0.7, 0.9, 1.0]
    summary = summarise(model, data, INFO, thresholds=thresholds, cost_budgets=(0.5,))
    assert model.calls == 3  # train, val and test, each one batch of <= 256
    assert summary.num_exits == 3
    assert summary.relative_costs == pytest.approx([1 / 3.5, 2 / 3.5, 4 / 3.5])
    assert set(summary.per_exit_accuracy) == {"train", "val", "test"}

    # The sweep's own confidence grid reaches the stored curves (AnalysisSpec.thresholds).
    curve_points = [p for p in summary.operating_points if p.policy == "confidence"]
    assert [p.split for p in curve_points] == ["val"] * 6 + ["test"] * 6
    assert [p.threshold for p in curve_points[:6]] == thresholds
    assert {p.policy for p in summary.operating_points} == {"confidence", "entropy", "patience"}
    assert [f.policy for f in summary.frontiers] == ["confidence", "entropy", "patience"]

    val_outs = collect_outputs(model, data.val, INFO)
    test_outs = collect_outputs(model, data.test, INFO)
    picked = chosen(summary)
    assert set(picked) == {
        "max_drop=0.00",
        "max_drop=0.01",
        "max_drop=0.02",
        "max_drop=0.05",
        "budget=0.50",
    }
    assert len(chosen(summary, method="certified")) == 5  # delta 0.1 by default
    costs = np.array(summary.relative_costs)
    for choice in picked.values():
        # The test point is the val-chosen threshold replayed on test, nothing re-chosen.
        assert choice.test.threshold == choice.val.threshold
        replay = evaluate_threshold(test_outs, costs, choice.val.threshold, "test")
        assert choice.test.accuracy == replay.accuracy
        assert choice.test.exit_counts == replay.exit_counts
        # And the val point is what that threshold gives on val.
        again = evaluate_threshold(val_outs, costs, choice.val.threshold, "val")
        assert (again.accuracy, again.relative_cost) == (
            choice.val.accuracy,
            choice.val.relative_cost,
        )
    assert summary.overthinking is not None
    assert sum(summary.overthinking.first_correct_counts) == 22
    assert summary.to_dict()["relative_costs"] == summary.relative_costs
    assert {(c.split, c.exit_index) for c in summary.calibration} == {
        (s, k) for s in ("val", "test") for k in range(3)
    }


def test_summarise_reuses_given_outputs_and_chooses_on_val_only():
    # Two exits, relative costs 0.5 and 1.0; label 0 everywhere; the final head is always right.
    def outs(ic_conf, ic_right):
        n = len(ic_conf)
        preds = np.stack([np.where(ic_right, 0, 1), np.zeros(n, int)], axis=1)
        conf = np.stack([ic_conf, np.full(n, 0.99)], axis=1).astype(np.float32)
        return Outputs(np.zeros(n, np.int64), preds, conf, np.linspace(0, 1, n).astype(np.float32))

    # Val: confident ICs right, unconfident wrong -> any q in (0.3, 0.9] keeps 100 % at cost 0.75;
    # the highest such threshold is 0.9. On test alone the same rule would pick 0.95.
    val = outs([0.9, 0.9, 0.3, 0.3], [True, True, False, False])
    test = outs([0.95, 0.5], [True, False])
    train = outs([0.9, 0.2, 0.4], [True, False, True])

    class Costs:
        def exit_costs(self):
            return [1.0, 2.0]

        def cnn_cost(self):
            return 2.0

    summary = summarise(
        Costs(),
        None,
        INFO,
        outputs={"train": train, "val": val, "test": test},
        max_accuracy_drops=(0.0,),
        cost_budgets=(),
    )
    # These outputs carry no entropies (as files written before they were kept): no entropy policy.
    assert [f.policy for f in summary.frontiers] == ["confidence", "patience"]
    choice = chosen(summary)["max_drop=0.00"]
    val_point, test_point = choice.val, choice.test
    assert val_point.threshold == pytest.approx(0.9)
    assert (val_point.accuracy, val_point.relative_cost) == (1.0, 0.75)
    on_test = early_exit_curve(test, [0.5, 1.0], default_thresholds())
    assert (
        choose_threshold(on_test, 1.0, max_accuracy_drop=0.0).val.threshold != val_point.threshold
    )
    assert test_point.threshold == val_point.threshold
    assert (test_point.accuracy, test_point.relative_cost, test_point.exit_counts) == (
        1.0,
        0.75,
        [1, 1],
    )
    by_policy = {}
    for p in summary.operating_points:
        by_policy[p.policy] = by_policy.get(p.policy, 0) + 1
    # Both splits on each grid: 128 confidences, and patience k = 1 (one IC).
    assert by_policy == {"confidence": 2 * default_thresholds().size, "patience": 2}
    assert summary.overthinking.confusion_mean == pytest.approx(0.5)


def test_summarise_plain_cnn():
    summary = summarise(PlainCNN(), splits(), INFO, thresholds=[0.5])
    assert summary.num_exits == 1
    assert summary.relative_costs == [1.0]
    assert summary.overthinking.confusion_auroc is None
    assert summary.overthinking.destructive_per_ic == []
    assert all(p.relative_cost == 1.0 for p in summary.operating_points)


def test_summarise_needs_val():
    data = DataSplits(INFO, train=imageset(4, 1), val=imageset(4, 2), test=imageset(4, 3))
    data.val = ImageSet(data.val.images[:0], data.val.labels[:0])
    with pytest.raises(SDNError, match="'val'"):
        summarise(StandIn(), data, INFO)


def test_real_sdn_offline_replay_matches_runtime_early_exit():
    torch.manual_seed(0)
    model = build_sdn("resnet56", num_classes=4, width=0.25)
    data = imageset(32, 4)
    out = collect_outputs(model, data, INFO, batch_size=8)
    assert out.num_exits == model.num_exits == 7
    # A threshold in the widest gap between IC confidences above IC0's median (so that samples
    # leave at more than one IC), where float noise between a full batch and the runtime's
    # shrinking batches cannot flip a decision; and 0.99, where nearly everything reaches the end.
    ics = out.confidences[:, :-1]
    lo, hi = np.quantile(ics[:, 0], [0.5, 0.95])
    values = np.unique(ics[(ics >= lo) & (ics <= hi)])
    gap = int(np.argmax(np.diff(values)))
    x = normalised(data.images)
    for q in (float(values[gap] + values[gap + 1]) / 2, 0.99):
        for fallback in ("final", "most_confident"):
            preds, exits = offline_early_exit(out, q, fallback)
            rt_preds, rt_exits = model.early_exit(x, threshold=q, fallback=fallback)
            assert rt_exits.tolist() == exits.tolist(), (q, fallback)
            assert rt_preds.tolist() == preds.tolist(), (q, fallback)


def test_analysis_modules_import_no_workflow_libraries():
    # sklearn.metrics would pull in pandas and pyarrow, so metrics imports it only when needed.
    code = (
        "import sys, sdn.analysis, sdn.metrics, sdn.early_exit; "
        "print(sorted(m for m in ('ray', 'mlflow', 'sqlalchemy', 'pyarrow') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
