"""BadNets poisoning (sdn.backdoor): trigger placement, poisoned share, determinism, triggered splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdn.backdoor import (
    PoisonConfig,
    Trigger,
    make_backdoor_splits,
    poison_count,
    poison_imageset,
    stamp,
    trigger_mask,
)
from sdn.data import DatasetInfo, DataSplits, ImageSet
from sdn.errors import SDNError

NUM_CLASSES = 10


def _imageset(n: int, size: int = 32, seed: int = 0) -> ImageSet:
    """Random images in 1..254 (never a trigger colour's 0 or 255) and random labels (every class
    present, in unequal counts)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(1, 255, (n, 3, size, size), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=g, dtype=torch.int64)
    return ImageSet(images, labels)


def _splits(size: int = 32, n_train: int = 237) -> DataSplits:
    info = DatasetInfo(
        name="toy",
        num_classes=NUM_CLASSES,
        image_size=size,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        pad=4 if size == 32 else 8,
        color_jitter=None,
        default_val_size=20,
    )
    return DataSplits(
        info, _imageset(n_train, size, 1), _imageset(41, size, 2), _imageset(53, size, 3)
    )


# ---- trigger ------------------------------------------------------------------------------


def test_default_trigger_covers_rows_and_columns_26_to_30_only() -> None:
    images = _imageset(6)
    out = stamp(images.images, Trigger())
    changed = (out != images.images).any(dim=1)  # [N, H, W]
    expected = torch.zeros(32, 32, dtype=torch.bool)
    expected[26:31, 26:31] = True
    assert all(torch.equal(changed[i], expected) for i in range(6))
    assert (out[:, :, 26:31, 26:31] == 255).all()
    assert torch.equal(trigger_mask(32, Trigger()), expected)


def test_trigger_scales_with_64_px_images() -> None:
    images = _imageset(3, size=64)
    out = stamp(images.images, Trigger())
    changed = (out != images.images).any(dim=1)
    rows, cols = torch.nonzero(changed[0], as_tuple=True)
    assert (rows.min().item(), rows.max().item()) == (52, 61)
    assert (cols.min().item(), cols.max().item()) == (52, 61)
    assert int(changed[0].sum()) == 100


def test_custom_trigger_position_colour_and_absolute_units() -> None:
    images = _imageset(2, size=64)
    trig = Trigger(size=3, row=2, col=40, color=(10, 20, 30), scale=False)
    out = stamp(images.images, trig)
    changed = (out != images.images).any(dim=1)
    expected = torch.zeros(64, 64, dtype=torch.bool)
    expected[2:5, 40:43] = True
    assert torch.equal(changed[1], expected)
    assert out[1, :, 3, 41].tolist() == [10, 20, 30]
    assert trig.tag == "sq3at2x40-0a141e-abs"


def test_stamp_leaves_its_input_alone() -> None:
    images = _imageset(2)
    before = images.images.clone()
    stamp(images.images, Trigger(color="black"))
    assert torch.equal(images.images, before)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"row": 28}, "trigger row 28"),
        ({"col": 30, "size": 3}, "trigger col 30"),
        ({"size": 0}, "trigger size 0"),
        ({"row": -1}, "trigger row -1"),
        ({"color": "purple"}, "'purple'"),
        ({"color": (0, 0, 256)}, "(0, 0, 256)"),
        ({"scale": "yes"}, "'yes'"),
    ],
)
def test_bad_triggers_name_the_field(kwargs: dict, needle: str) -> None:
    with pytest.raises(SDNError) as info:
        Trigger(**kwargs)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_absolute_trigger_that_misses_the_image_is_refused_at_stamp_time() -> None:
    trig = Trigger(row=40, col=0, scale=False)  # fits a 64-px image, not a 32-px one
    stamp(_imageset(1, size=64).images, trig)
    with pytest.raises(SDNError, match="trigger row 40"):
        stamp(_imageset(1).images, trig)


# ---- poisoning ----------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.1, 0.25, 1.0])
def test_exactly_the_configured_share_of_non_target_images_is_poisoned(rate: float) -> None:
    splits = _splits()
    config = PoisonConfig(rate=rate, target=5, seed=3)
    labels = splits.train.labels.numpy()
    non_target = int((labels != 5).sum())
    poisoned, idx = poison_imageset(splits.train, config)
    assert len(idx) == poison_count(rate, non_target) == int(np.floor(rate * non_target + 0.5))
    assert len(np.unique(idx)) == len(idx)
    # Only target-free images were chosen; they now carry the target label and the trigger.
    assert (labels[idx] != 5).all()
    assert (poisoned.labels.numpy()[idx] == 5).all()
    mask = trigger_mask(32, config.trigger)
    assert (poisoned.images[idx][:, :, mask] == 255).all()
    # Everything else is untouched: labels, and images outside the chosen ones.
    others = np.setdiff1d(np.arange(len(labels)), idx)
    assert np.array_equal(poisoned.labels.numpy()[others], labels[others])
    assert torch.equal(poisoned.images[others], splits.train.images[others])
    # Inside the chosen images only the trigger pixels changed.
    diff = (poisoned.images[idx] != splits.train.images[idx]).any(dim=1)
    assert not diff[:, ~mask].any()


def test_target_class_images_are_never_poisoned() -> None:
    splits = _splits()
    config = PoisonConfig(rate=1.0, target=2)
    poisoned, idx = poison_imageset(splits.train, config)
    assert len(idx) == int((splits.train.labels != 2).sum())  # rate 1: every other image
    target_rows = np.flatnonzero(splits.train.labels.numpy() == 2)
    assert target_rows.size > 0 and not np.isin(target_rows, idx).any()
    assert torch.equal(poisoned.images[target_rows], splits.train.images[target_rows])


def test_poisoning_is_deterministic_per_seed_and_differs_across_seeds() -> None:
    splits = _splits()
    a = poison_imageset(splits.train, PoisonConfig(seed=0))[1]
    b = poison_imageset(splits.train, PoisonConfig(seed=0))[1]
    c = poison_imageset(splits.train, PoisonConfig(seed=1))[1]
    assert np.array_equal(a, b)
    assert len(a) == len(c) and not np.array_equal(a, c)


def test_backdoor_splits_keep_clean_val_and_test_and_label_triggered_sets_truly() -> None:
    splits = _splits()
    config = PoisonConfig(rate=0.2, target=5, seed=7)
    bd = make_backdoor_splits(splits, config)
    # The training splits: poisoned train, clean val and test (the originals, unmodified).
    assert bd.poisoned.val is splits.val and bd.poisoned.test is splits.test
    assert bd.clean is splits
    assert not torch.equal(bd.poisoned.train.labels, splits.train.labels)
    for name, clean in (("test", splits.test), ("val", splits.val)):
        trig = getattr(bd, f"{name}_triggered")
        labels = clean.labels.numpy()
        expected = np.flatnonzero(labels != 5)
        assert trig.target == 5
        assert np.array_equal(trig.source_index, expected)
        assert len(trig) == len(expected) and (trig.data.labels.numpy() != 5).all()
        assert np.array_equal(trig.data.labels.numpy(), labels[expected])  # true labels kept
        assert torch.equal(trig.data.images, stamp(clean.images[expected], config.trigger))
    assert set(bd.evaluation_sets()) == {"val", "test", "val_triggered", "test_triggered"}


def test_poison_val_only_when_asked() -> None:
    splits = _splits()
    bd = make_backdoor_splits(splits, PoisonConfig(rate=0.5), poison_val=True)
    assert bd.poisoned_val_indices is not None and len(bd.poisoned_val_indices) > 0
    assert (bd.poisoned.val.labels.numpy()[bd.poisoned_val_indices] == 5).all()
    assert torch.equal(bd.clean.val.images, splits.val.images)


def test_64_px_splits_get_the_scaled_trigger() -> None:
    bd = make_backdoor_splits(_splits(size=64), PoisonConfig(rate=0.1))
    idx = torch.from_numpy(bd.poisoned_indices)
    assert (bd.poisoned.train.images[idx][:, :, 52:62, 52:62] == 255).all()


# ---- configuration and identity -----------------------------------------------------------


def test_tag_and_identity_are_stable_and_distinguish_settings() -> None:
    config = PoisonConfig()
    assert config.tag == "badnets-t5-r0p10-s0-sq5at26x26-white"
    assert PoisonConfig(rate=0.125).tag == "badnets-t5-r0p125-s0-sq5at26x26-white"
    variants = {
        PoisonConfig(rate=0.05).tag,
        PoisonConfig(target=3).tag,
        PoisonConfig(seed=1).tag,
        PoisonConfig(trigger=Trigger(size=4)).tag,
        PoisonConfig(trigger=Trigger(color="black")).tag,
        config.tag,
    }
    assert len(variants) == 6
    assert all("." not in t and " " not in t for t in variants)
    ident = config.identity()
    assert ident["backdoor"] == config.tag and ident["backdoor.target"] == "5"
    assert PoisonConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"rate": 0.0}, "rate 0.0"),
        ({"rate": 1.5}, "rate 1.5"),
        ({"rate": 0.12345}, "0.12345"),
        ({"rate": True}, "rate True"),
        ({"target": -1}, "target -1"),
        ({"seed": 1.5}, "seed 1.5"),
    ],
)
def test_bad_poison_configs_name_the_field(kwargs: dict, needle: str) -> None:
    with pytest.raises(SDNError, match="poison") as info:
        PoisonConfig(**kwargs)
    assert needle in str(info.value)


def test_target_outside_the_classes_is_refused() -> None:
    with pytest.raises(SDNError, match=r"target 10 .*0\.\.9"):
        make_backdoor_splits(_splits(), PoisonConfig(target=10))


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(SDNError, match="'ratio'"):
        PoisonConfig.from_dict({"ratio": 0.1})
