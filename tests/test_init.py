"""Weight initialisation: the reference scheme (default) and PyTorch's, through every builder."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from sdn.data import DataSplits, ImageSet, dataset_info
from sdn.errors import SDNError
from sdn.models import ARCHITECTURES, SDN, build_cnn, build_model, build_sdn
from sdn.models.ic import MixedPool
from sdn.training import TrainConfig, Trainer

WIDTH = 0.25


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def _relative_error(weight: torch.Tensor, std: float) -> float:
    return abs(float(weight.detach().std()) - std) / std


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_reference_init_statistics(arch: str) -> None:
    torch.manual_seed(0)
    model = build_sdn(arch, 10, width=WIDTH)  # the default is "reference"
    assert model.config["init"] == "reference"
    big = [c for c in _convs(model) if c.weight.numel() >= 2000]
    assert big, "expected some large convolutions"
    for conv in big:
        kh, kw = conv.kernel_size
        expected = math.sqrt(2.0 / (kh * kw * conv.out_channels))
        # Sampling error of a std from n >= 2000 draws is < 2 %; PyTorch's default std differs
        # from this one by a factor >= 1.7 for every such layer here (depthwise included).
        assert _relative_error(conv.weight, expected) < 0.1, conv
        assert abs(float(conv.weight.detach().mean())) < 0.2 * expected
    for conv in _convs(model):
        if conv.bias is not None:
            assert torch.count_nonzero(conv.bias) == 0
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) >= len(model.ics) + 1  # every IC head and the original head
    for linear in linears:
        if linear.weight.numel() >= 2000:
            assert _relative_error(linear.weight, 0.01) < 0.1
        assert float(linear.weight.detach().abs().max()) < 0.01 * 7  # normal(0, 0.01), not uniform
        assert torch.count_nonzero(linear.bias) == 0
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.all(bn.weight == 1) and torch.count_nonzero(bn.bias) == 0


def test_mixed_pool_alpha_stays_uniform_in_0_1() -> None:
    torch.manual_seed(3)
    alphas = [
        float(m.alpha.detach())
        for _ in range(10)
        for m in build_sdn("resnet56", 10, width=WIDTH).modules()
        if isinstance(m, MixedPool)
    ]
    assert all(0.0 <= a < 1.0 for a in alphas)
    assert len(set(alphas)) == len(alphas)  # drawn, not set to a constant


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_pytorch_option_keeps_torch_defaults(arch: str) -> None:
    torch.manual_seed(0)
    model = build_sdn(arch, 10, width=WIDTH, init="pytorch")
    assert model.config["init"] == "pytorch"
    # torch's Conv2d / Linear default: weights uniform in +-1/sqrt(fan_in) (kaiming_uniform with
    # a = sqrt(5)), biases uniform in the same bound: never all zero.
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            fan_in = m.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in)
            assert float(m.weight.detach().abs().max()) <= bound + 1e-6
            if m.weight.numel() >= 2000:
                assert _relative_error(m.weight, bound / math.sqrt(3)) < 0.1
            if m.bias is not None:
                assert torch.count_nonzero(m.bias) > 0


@pytest.mark.parametrize("init", ["reference", "pytorch"])
def test_seeded_construction_is_deterministic(init: str) -> None:
    states = []
    for _ in range(2):
        torch.manual_seed(11)
        states.append(build_sdn("mobilenet", 10, width=WIDTH, init=init).state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_schemes_differ_under_the_same_seed() -> None:
    torch.manual_seed(5)
    plain = build_cnn("vgg16", 10, width=WIDTH, init="pytorch")
    torch.manual_seed(5)
    ref = build_cnn("vgg16", 10, width=WIDTH)
    assert not torch.equal(ref.blocks[0][0].weight, plain.blocks[0][0].weight)


def test_init_does_not_change_the_architecture() -> None:
    for arch in ARCHITECTURES:
        a = build_sdn(arch, 10, width=WIDTH, init="reference")
        b = build_sdn(arch, 10, width=WIDTH, init="pytorch")
        assert [(k, v.shape) for k, v in a.state_dict().items()] == [
            (k, v.shape) for k, v in b.state_dict().items()
        ]


def test_configs_round_trip_and_old_configs_without_init_still_build() -> None:
    model = build_sdn("resnet56", 10, width=WIDTH, init="pytorch")
    assert build_model(model.config).config == model.config
    old = {"kind": "sdn", "arch": "resnet56", "num_classes": 10, "image_size": 32, "width": 0.25}
    rebuilt = build_model(old)
    assert rebuilt.config["init"] == "reference"
    rebuilt.load_state_dict(model.state_dict(), strict=True)  # same parameters, same shapes
    old_cnn = {"kind": "cnn", "arch": "vgg16", "num_classes": 10, "width": 0.25}
    assert build_model(old_cnn).config["init"] == "reference"


def test_bad_init_values_are_refused() -> None:
    with pytest.raises(SDNError, match=r"unknown init 'xavier'.*'reference'.*'pytorch'"):
        build_cnn("vgg16", 10, width=WIDTH, init="xavier")
    with pytest.raises(SDNError, match="unknown init"):
        build_model({"kind": "cnn", "arch": "vgg16", "num_classes": 10, "init": "he"})
    with pytest.raises(SDNError, match="unknown cnn config keys"):
        build_model({"kind": "cnn", "arch": "vgg16", "num_classes": 10, "initialisation": "x"})


def test_train_config_init_field() -> None:
    cfg = TrainConfig(arch="vgg16", dataset="digits", mode="cnn")
    assert cfg.init == "reference"
    old = cfg.to_dict()
    del old["init"]  # a checkpoint written before the field existed
    assert TrainConfig.from_dict(old).init == "reference"
    assert TrainConfig(arch="vgg16", dataset="digits", mode="cnn", init="pytorch").init == "pytorch"
    with pytest.raises(SDNError, match="init 'he' is invalid"):
        TrainConfig(arch="vgg16", dataset="digits", mode="cnn", init="he")


def _toy_splits() -> DataSplits:
    info = dataset_info("digits")
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 32, 32), generator=g, dtype=torch.uint8)
    data = ImageSet(images, torch.arange(8, dtype=torch.int64) % 10)
    return DataSplits(info, data, data, data)


@pytest.mark.parametrize("init", ["reference", "pytorch"])
def test_ic_only_initialises_only_the_new_heads(init: str, tmp_path: Path) -> None:
    splits = _toy_splits()
    common = {"arch": "resnet56", "dataset": "digits", "width": WIDTH, "device": "cpu"}
    cnn = Trainer(TrainConfig(mode="cnn", init="pytorch", **common), splits)
    cnn.save(tmp_path / "cnn")
    ic_only = Trainer(
        TrainConfig(mode="ic_only", init=init, **common), splits, init_checkpoint=tmp_path / "cnn"
    )
    model = ic_only.model
    assert isinstance(model, SDN)
    backbone = model.backbone.state_dict()
    for key, value in cnn.model.state_dict().items():
        assert torch.equal(backbone[key], value)  # the trained backbone is never re-initialised
    biases = [ic.linear.bias for ic in model.ics]
    if init == "reference":
        assert all(torch.count_nonzero(b) == 0 for b in biases)
    else:
        assert all(torch.count_nonzero(b) > 0 for b in biases)
