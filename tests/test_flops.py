"""FLOP counts: the paper's per-exit cumulative costs, depthwise convolutions, caching."""

from __future__ import annotations

from functools import cache

import pytest
import torch
from torch import nn

from sdn.models import SDN, build_cnn, build_sdn, count_flops

# Cumulative cost per exit (10^9 FLOPs), final = full SDN, and the CNN's cost, from the spec.
PAPER_COSTS = {
    ("vgg16", 10, 32): (0.6283, [0.0795, 0.1930, 0.3064, 0.3821, 0.4955, 0.5711, 0.6288]),
    ("vgg16", 100, 32): (0.6284, [0.0797, 0.1935, 0.3077, 0.3841, 0.4990, 0.5749, 0.6327]),
    ("vgg16", 200, 64): (2.5220, [0.3182, 0.7729, 1.2279, 1.5317, 1.9882, 2.2936, 2.5332]),
    ("resnet56", 10, 32): (0.2526, [0.0389, 0.0770, 0.1128, 0.1507, 0.1865, 0.2243, 0.2527]),
    ("resnet56", 100, 32): (0.2526, [0.0390, 0.0770, 0.1130, 0.1510, 0.1869, 0.2250, 0.2533]),
    ("resnet56", 200, 64): (0.2526, [0.0390, 0.0771, 0.1132, 0.1513, 0.1874, 0.2257, 0.2540]),
    ("wrn32_4", 10, 32): (2.3746, [0.4004, 0.7032, 1.0857, 1.3882, 1.7705, 2.0727, 2.3750]),
    ("wrn32_4", 100, 32): (2.3746, [0.4006, 0.7036, 1.0865, 1.3893, 1.7723, 2.0753, 2.3776]),
    ("wrn32_4", 200, 64): (2.3747, [0.4008, 0.7040, 1.0873, 1.3905, 1.7743, 2.0782, 2.3805]),
}
MOBILENET_CIFAR10_COST = 0.0935e9
TOLERANCE = 0.015


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from a second thread, which spins when CI's cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@cache
def paper_sdn(arch: str, num_classes: int, image_size: int) -> SDN:
    """A full-width SDN on the meta device: FLOPs depend on shapes only, nothing is allocated."""
    with torch.device("meta"):
        return build_sdn(arch, num_classes, image_size)


@pytest.mark.parametrize("key", sorted(PAPER_COSTS), ids=lambda k: f"{k[0]}-{k[1]}-{k[2]}")
def test_exit_costs_match_paper(key: tuple[str, int, int]) -> None:
    cnn_cost, cumulative = PAPER_COSTS[key]
    model = paper_sdn(*key)
    costs = model.exit_costs()
    assert len(costs) == len(cumulative) == model.num_exits
    for ours, paper in zip(costs, cumulative, strict=True):
        assert ours == pytest.approx(paper * 1e9, rel=TOLERANCE)
    assert model.cnn_cost() == pytest.approx(cnn_cost * 1e9, rel=TOLERANCE)


def test_mobilenet_counts_depthwise_convolutions_correctly() -> None:
    model = paper_sdn("mobilenet", 10, 32)
    assert model.cnn_cost() == pytest.approx(MOBILENET_CIFAR10_COST, rel=TOLERANCE)
    # The paper's IC positions sit at about 22/36/50/68/91 % of the correct count.
    fractions = [c / model.cnn_cost() for c in model.exit_costs()[:-1]]
    assert fractions == pytest.approx([0.22, 0.36, 0.50, 0.68, 0.91], abs=0.01)


def test_depthwise_and_grouped_convolutions() -> None:
    depthwise = nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False)
    assert count_flops(depthwise, torch.zeros(1, 32, 16, 16)) == 2 * 32 * 9 * 16 * 16
    grouped = nn.Conv2d(32, 64, 3, padding=1, groups=4, bias=False)
    assert count_flops(grouped, torch.zeros(1, 32, 16, 16)) == 2 * 64 * 8 * 9 * 16 * 16
    linear = nn.Linear(100, 10)
    assert count_flops(linear, torch.zeros(3, 100)) == 3 * 2 * 100 * 10


def test_costs_add_up_and_agree_with_the_plain_cnn() -> None:
    model = paper_sdn("resnet56", 100, 32)
    costs = model.exit_costs()
    assert costs == sorted(costs)
    ic_costs = [2 * ic.linear.in_features * ic.linear.out_features for ic in model.ics]
    assert costs[-1] == pytest.approx(model.cnn_cost() + sum(ic_costs))
    assert model.backbone.cost() == pytest.approx(model.cnn_cost())
    assert model.relative_exit_costs()[-1] == pytest.approx(costs[-1] / model.cnn_cost())


def test_real_tensors_count_the_same_as_meta_and_scale_with_batch() -> None:
    cnn = build_cnn("mobilenet", 10, width=0.25)
    with torch.device("meta"):
        meta = build_cnn("mobilenet", 10, width=0.25)
    one = count_flops(cnn, torch.zeros(1, 3, 32, 32))
    assert one == meta.cost() == cnn.cost()
    assert count_flops(cnn, torch.zeros(4, 3, 32, 32)) == 4 * one


def test_costs_are_cached_and_copied() -> None:
    model = build_sdn("vgg16", 10, width=0.125)
    first = model.exit_costs()
    first[0] = -1.0  # callers get a copy
    assert model.exit_costs()[0] > 0
    model._costs = ([1.0] * model.num_exits, 1.0)  # a cached value is not recounted
    assert model.exit_costs() == [1.0] * model.num_exits


def test_counting_keeps_bn_statistics_and_modes() -> None:
    cnn = build_cnn("wrn32_4", 10, width=0.125).train()
    before = {k: v.clone() for k, v in cnn.state_dict().items()}
    count_flops(cnn, torch.randn(2, 3, 32, 32))
    cnn.cost()
    assert cnn.training and all(m.training for m in cnn.modules())
    assert all(torch.equal(before[k], v) for k, v in cnn.state_dict().items())
