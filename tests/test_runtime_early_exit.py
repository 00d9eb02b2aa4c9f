"""Runtime early exit: same answers as the offline rule on a full forward, and really less work."""

from __future__ import annotations

import copy
import math
from functools import cache

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sdn.analysis import reduce_logits
from sdn.early_exit import offline_early_exit as offline_early_exit_np
from sdn.errors import SDNError
from sdn.models import ARCHITECTURES, SDN, build_sdn
from sdn.results import Outputs

WIDTH = 0.125
NUM_CLASSES = 10


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from a second thread, which spins when CI's cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@cache
def spread_sdn(arch: str, image_size: int = 32) -> SDN:
    """A small SDN whose exits disagree and whose confidences spread over (0, 1).

    A freshly initialised deep net maps every input to nearly the same features, which would make
    every threshold test trivial. So BN statistics are calibrated on random data and each
    classifier is rescaled to logits of standard deviation 2.
    """
    torch.manual_seed(0)
    model = build_sdn(arch, NUM_CLASSES, image_size, width=WIDTH)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration pass
    x = torch.randn(32, 3, image_size, image_size)
    with torch.no_grad():
        model.train()(x)
        model.eval()
        heads = [*model.ics, model.backbone.head]
        for head, logits in zip(heads, model(x), strict=True):
            final_linear = [m for m in head.modules() if isinstance(m, nn.Linear)][-1]
            final_linear.weight.mul_(2.0 / logits.std().item())
            final_linear.bias.zero_()
    return model


def offline_early_exit(
    outputs: list[torch.Tensor], q: float, fallback: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rule from the spec on a full forward: first IC with max softmax >= q, else the end."""
    conf, pred = torch.stack([torch.softmax(o.float(), dim=1) for o in outputs]).max(dim=2)
    num_exits, batch = conf.shape
    fired = conf[:-1] >= q
    any_fired = fired.any(dim=0)
    first = fired.to(torch.int8).argmax(dim=0)
    rows = torch.arange(batch)
    last = pred[-1] if fallback == "final" else pred[conf.argmax(dim=0), rows]
    preds = torch.where(any_fired, pred[first, rows], last)
    exits = torch.where(any_fired, first, torch.full_like(first, num_exits - 1))
    return preds, exits


def safe_thresholds(outputs: list[torch.Tensor], count: int = 5) -> list[float]:
    """Thresholds in the middle of gaps between observed confidences (>= 1e-4 from any of them),
    so a shrunk batch's last-bit differences cannot flip a comparison."""
    conf = torch.stack([torch.softmax(o, dim=1).max(dim=1).values for o in outputs])
    values = conf.flatten().sort().values
    gaps = values[1:] - values[:-1]
    mids = ((values[1:] + values[:-1]) / 2)[gaps > 2e-4]
    picks = torch.linspace(0, mids.numel() - 1, count).round().long()
    return [float(mids[i]) for i in picks]


def inputs(batch: int, image_size: int = 32, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, image_size, image_size, generator=generator)


@pytest.mark.parametrize("fallback", ["final", "most_confident"])
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_runtime_equals_offline_rule(arch: str, fallback: str) -> None:
    model = spread_sdn(arch)
    x = inputs(16)
    with torch.no_grad():
        outputs = model(x)
    thresholds = [0.0, *safe_thresholds(outputs, 3), 1.0]
    seen_exits: set[int] = set()
    for q in thresholds:
        preds, exits = model.early_exit(x, q, fallback=fallback)
        want_preds, want_exits = offline_early_exit(outputs, q, fallback)
        assert preds.dtype == exits.dtype == torch.long
        assert torch.equal(exits, want_exits), q
        assert torch.equal(preds, want_preds), q
        seen_exits.update(exits.tolist())
    assert len(seen_exits) >= 3  # the thresholds exercised several exits, the final one included
    assert model.num_exits - 1 in seen_exits


def test_threshold_zero_and_one() -> None:
    model = spread_sdn("resnet56")
    x = inputs(16)
    with torch.no_grad():
        first = model(x)[0].argmax(dim=1)
        final = model.backbone(x).argmax(dim=1)
    preds, exits = model.early_exit(x, 0.0)
    assert torch.equal(exits, torch.zeros(16, dtype=torch.long))
    assert torch.equal(preds, first)
    preds, exits = model.early_exit(x, 1.0)
    assert (exits == model.num_exits - 1).all()
    assert torch.equal(preds, final)


@pytest.mark.parametrize("fallback", ["final", "most_confident"])
def test_batch_of_one(fallback: str) -> None:
    model = spread_sdn("mobilenet")
    x = inputs(4, seed=3)
    with torch.no_grad():
        outputs = model(x)
    for q in [0.0, *safe_thresholds(outputs, 3), 1.0]:
        want_preds, want_exits = offline_early_exit(outputs, q, fallback)
        for i in range(x.shape[0]):
            pred, exit_idx = model.early_exit(x[i : i + 1], q, fallback=fallback)
            assert pred.shape == exit_idx.shape == (1,)
            assert (pred.item(), exit_idx.item()) == (want_preds[i].item(), want_exits[i].item())


def test_tiny_imagenet_size_and_channels_last() -> None:
    model = spread_sdn("resnet56", 64)
    x = inputs(8, 64)
    with torch.no_grad():
        outputs = model(x)
    q = safe_thresholds(outputs, 3)[1]
    want = offline_early_exit(outputs, q, "final")
    got = model.early_exit(x.contiguous(memory_format=torch.channels_last), q)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def _record_batches(model: SDN) -> tuple[list[int], list[torch.utils.hooks.RemovableHandle]]:
    """Per block call, the batch size it ran on (-1 marks the head)."""
    sizes: list[int] = []
    handles = [
        block.register_forward_hook(lambda _m, args, _o: sizes.append(args[0].shape[0]))
        for block in model.backbone.blocks
    ]
    handles.append(model.backbone.head.register_forward_hook(lambda *_: sizes.append(-1)))
    return sizes, handles


def test_everything_exits_at_the_first_ic_skips_the_rest() -> None:
    model = spread_sdn("vgg16")
    x = inputs(10)
    sizes, handles = _record_batches(model)
    try:
        with FlopCounterMode(display=False) as counter:
            model.early_exit(x, 0.0)
    finally:
        for handle in handles:
            handle.remove()
    assert sizes == [10] * (model.ic_positions[0] + 1)  # no later block, no head
    assert counter.get_total_flops() == pytest.approx(10 * model.exit_costs()[0])


def test_shrinking_batch_and_flops_match_the_exit_costs() -> None:
    model = spread_sdn("resnet56")
    x = inputs(24, seed=5)
    with torch.no_grad():
        outputs = model(x)
    q = safe_thresholds(outputs, 5)[2]
    _, want_exits = offline_early_exit(outputs, q, "final")
    sizes, handles = _record_batches(model)
    try:
        with FlopCounterMode(display=False) as counter:
            _, exits = model.early_exit(x, q)
    finally:
        for handle in handles:
            handle.remove()
    assert torch.equal(exits, want_exits)
    # Block i runs on the samples no IC before it has taken.
    for i, size in enumerate(sizes[: len(model.backbone.blocks)]):
        earlier_ics = sum(p < i for p in model.ic_positions)
        assert size == int((want_exits >= earlier_ics).sum()), i
    assert sizes.count(-1) == (1 if (want_exits == model.num_exits - 1).any() else 0)
    # Work done = the per-exit cumulative costs summed over samples.
    costs = model.exit_costs()
    assert counter.get_total_flops() == pytest.approx(sum(costs[e] for e in exits.tolist()))
    assert counter.get_total_flops() < 24 * costs[-1]


def test_modes_and_statistics_are_restored() -> None:
    model = build_sdn("mobilenet", NUM_CLASSES, width=WIDTH).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.early_exit(inputs(4), 0.5)
    assert all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("batch", [1, 5])
def test_a_partly_training_model_answers_as_in_eval_and_keeps_its_modes(batch: int) -> None:
    """IC-only training leaves the backbone in eval and the heads in train; an early exit called
    then (after one in full eval mode, which caches the model's module list) must still switch
    everything to eval for the walk and give every flag back."""
    model = copy.deepcopy(spread_sdn("resnet56"))
    x = inputs(batch, seed=4)
    with torch.no_grad():
        q = safe_thresholds(model(x), 3)[1]
    want = model.early_exit(x, q)
    model.ics.train()
    got = model.early_exit(x, q)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert all(m.training for m in model.ics.modules())
    assert not any(m.training for m in model.backbone.modules())


@pytest.mark.parametrize("batch", [1, 6])
def test_a_nan_confidence_never_fires(batch: int) -> None:
    """A diverged head gives NaN confidences; like the offline rule (NaN >= q is false), the walk
    must carry such samples on rather than let them leave there."""
    model = copy.deepcopy(spread_sdn("resnet56"))
    with torch.no_grad():
        model.ics[0].linear.weight.fill_(math.nan)
    x = inputs(batch, seed=5)
    with torch.no_grad():
        outputs = model(x)
    want_preds, want_exits = offline_early_exit(outputs, 0.0, "final")
    preds, exits = model.early_exit(x, 0.0)
    assert (exits == 1).all() and torch.equal(exits, want_exits)
    assert torch.equal(preds, want_preds)


def test_empty_batch() -> None:
    preds, exits = spread_sdn("mobilenet").early_exit(inputs(0), 0.5)
    assert preds.shape == exits.shape == (0,)


@pytest.mark.parametrize("threshold", [-0.1, 1.01, math.nan, "high"])
def test_bad_threshold(threshold: object) -> None:
    with pytest.raises(SDNError) as info:
        spread_sdn("mobilenet").early_exit(inputs(2), threshold)  # type: ignore[arg-type]
    assert repr(threshold) in str(info.value)


def test_bad_fallback() -> None:
    with pytest.raises(SDNError) as info:
        spread_sdn("mobilenet").early_exit(inputs(2), 0.5, fallback="best")
    assert "'best'" in str(info.value) and "'most_confident'" in str(info.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_offline() -> None:
    model = build_sdn("resnet56", NUM_CLASSES, width=WIDTH)
    model.load_state_dict(spread_sdn("resnet56").state_dict())
    model = model.cuda().eval()
    x = inputs(64).cuda()
    with torch.no_grad():
        outputs = [o.cpu() for o in model(x)]
    for q in [0.0, *safe_thresholds(outputs, 3), 1.0]:
        for fallback in ("final", "most_confident"):
            preds, exits = model.early_exit(x, q, fallback=fallback)
            assert preds.device.type == "cuda"
            want_preds, want_exits = offline_early_exit(outputs, q, fallback)
            assert torch.equal(exits.cpu(), want_exits) and torch.equal(preds.cpu(), want_preds)
    xc = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(model.early_exit(xc, 0.5)[1], model.early_exit(x, 0.5)[1])


# ---------------------------------------------------------------------------- every policy
def analysis_outputs(model: SDN, x: torch.Tensor) -> Outputs:
    """What the analysis pass stores for ``x`` (``reduce_logits`` of one full forward): the
    offline replay in ``sdn.early_exit`` reads exactly this."""
    with torch.no_grad():
        reduced = reduce_logits(model(x))
    return Outputs(
        labels=torch.zeros(x.shape[0], dtype=torch.long).numpy(),
        preds=reduced["preds"].numpy(),
        confidences=reduced["confidences"].numpy(),
        confusion=reduced["confusion"].numpy(),
        entropies=reduced["entropies"].numpy(),
    )


def policy_thresholds(outs: Outputs, policy: str, count: int = 3) -> list[float]:
    """Thresholds of ``policy`` that exercise several exits, each >= 1e-4 from every score (so a
    shrunk batch's last-bit differences cannot flip a comparison)."""
    if policy == "patience":
        return [float(k) for k in range(1, outs.num_exits)]
    values = outs.confidences if policy == "confidence" else outs.entropies
    values = torch.from_numpy(values[:, :-1].reshape(-1)).sort().values
    gaps = values[1:] - values[:-1]
    mids = ((values[1:] + values[:-1]) / 2)[gaps > 2e-4]
    picks = torch.linspace(0, mids.numel() - 1, count).round().long()
    return [float(mids[i]) for i in picks]


@pytest.mark.parametrize("policy", ["confidence", "entropy", "patience"])
@pytest.mark.parametrize("arch", ["resnet56", "mobilenet"])
def test_runtime_equals_offline_replay_for_every_policy(arch: str, policy: str) -> None:
    model = spread_sdn(arch)
    x = inputs(24, seed=3)
    outs = analysis_outputs(model, x)
    seen: set[int] = set()
    for threshold in policy_thresholds(outs, policy):
        for fallback in ("final", "most_confident"):
            want_preds, want_exits = offline_early_exit_np(outs, threshold, fallback, policy)
            preds, exits = model.early_exit(x, threshold, fallback=fallback, policy=policy)
            assert exits.tolist() == want_exits.tolist(), (policy, threshold, fallback)
            assert preds.tolist() == want_preds.tolist(), (policy, threshold, fallback)
            for i in (0, 7):  # batch 1 takes its own path
                p1, e1 = model.early_exit(x[i : i + 1], threshold, fallback=fallback, policy=policy)
                assert (int(p1), int(e1)) == (int(want_preds[i]), int(want_exits[i]))
            seen.update(exits.tolist())
    assert len(seen) >= 2


@pytest.mark.parametrize("policy", ["confidence", "entropy", "patience"])
@pytest.mark.parametrize("batch", [1, 6])
def test_a_nan_head_gives_the_same_answer_at_runtime_and_offline(batch: int, policy: str) -> None:
    """A diverged IC gives NaN scores: they never fire (confidence, entropy), and patience still
    compares its predictions, offline and at runtime alike."""
    model = copy.deepcopy(spread_sdn("resnet56"))
    with torch.no_grad():
        model.ics[1].linear.weight.fill_(math.nan)
    x = inputs(batch, seed=5)
    outs = analysis_outputs(model, x)
    threshold = {"confidence": 0.0, "entropy": 10.0, "patience": 2.0}[policy]
    want_preds, want_exits = offline_early_exit_np(outs, threshold, "final", policy)
    preds, exits = model.early_exit(x, threshold, policy=policy)
    assert exits.tolist() == want_exits.tolist() and preds.tolist() == want_preds.tolist()
    if policy != "patience":
        assert (exits != 1).all()  # nobody leaves at the NaN head


@pytest.mark.parametrize(
    "policy,threshold", [("entropy", -0.5), ("patience", 0), ("patience", 1.5), ("greedy", 0.5)]
)
def test_bad_policy_threshold(policy: str, threshold: float) -> None:
    with pytest.raises(SDNError) as info:
        spread_sdn("mobilenet").early_exit(inputs(2), threshold, policy=policy)
    assert (policy in str(info.value)) or (repr(threshold) in str(info.value))
