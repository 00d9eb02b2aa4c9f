"""Data sets, the deterministic validation split, the decoded-image cache and batched augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import image_indices, make_imageset
from PIL import Image

from sdn import datafiles
from sdn.data import (
    BatchIterator,
    DatasetInfo,
    ImageSet,
    carve_splits,
    dataset_info,
    load_dataset,
    stratified_pick,
)
from sdn.errors import DataError, SDNError

CIFAR = dataset_info("cifar10")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _unnormalise(x: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    mean = torch.tensor(info.mean).view(1, 3, 1, 1)
    std = torch.tensor(info.std).view(1, 3, 1, 1)
    return (x * std + mean) * 255.0


# ---------------------------------------------------------------------------------------------
# Names and info


def test_dataset_info_of_the_named_sets():
    assert (CIFAR.num_classes, CIFAR.image_size, CIFAR.pad, CIFAR.color_jitter) == (10, 32, 4, None)
    assert CIFAR.mean == (0.4914, 0.4822, 0.4465)  # CIFAR's own statistics (spec bug 3)
    c100 = dataset_info("cifar100")
    assert (c100.num_classes, c100.std) == (100, (0.267, 0.256, 0.276))
    tiny = dataset_info("tinyimagenet")
    assert (tiny.num_classes, tiny.image_size, tiny.pad) == (200, 64, 8)
    assert tiny.color_jitter == (0.2, 0.2, 0.2)
    assert CIFAR.default_val_size == tiny.default_val_size == 5000
    digits = dataset_info("digits")
    assert (digits.num_classes, digits.image_size, digits.hflip) == (10, 32, False)
    assert digits.default_val_size == round(0.1 * 1438)


def test_unknown_dataset_names_every_choice():
    with pytest.raises(SDNError, match=r"unknown dataset 'mnist'.*'cifar10'.*'folder:<path>'"):
        dataset_info("mnist")
    with pytest.raises(SDNError, match="names no folder"):
        dataset_info("folder:")
    with pytest.raises(DataError, match="train/<class>"):
        dataset_info("folder:/does/not/exist")


# ---------------------------------------------------------------------------------------------
# digits


def test_digits_shapes_split_and_statistics():
    splits = load_dataset("digits")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1294, 144, 359)
    for part in (splits.train, splits.val, splits.test):
        assert part.images.dtype == torch.uint8 and part.images.shape[1:] == (3, 32, 32)
        assert part.labels.dtype == torch.int64
        assert torch.equal(part.images[:, 0], part.images[:, 2])  # grey replicated
    assert np.bincount(splits.test.labels.numpy()).min() >= 35  # stratified 20 %
    # The frozen normalisation constants are those of the digits train split (train + val).
    train_full = torch.cat([splits.train.images, splits.val.images])
    mean, std = datafiles.channel_stats(train_full)
    assert np.allclose(mean, splits.info.mean, atol=1e-3)
    assert np.allclose(std, splits.info.std, atol=1e-3)
    again = load_dataset("digits")
    assert torch.equal(again.test.images, splits.test.images)
    assert torch.equal(again.val.labels, splits.val.labels)


# ---------------------------------------------------------------------------------------------
# Splitting


def test_stratified_pick_is_exact_balanced_and_deterministic():
    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    pick = stratified_pick(labels, 20, [0, 1])
    assert len(pick) == 20 and len(set(pick.tolist())) == 20
    assert np.bincount(labels[pick], minlength=4).tolist() == [10, 6, 3, 1]
    assert np.array_equal(pick, stratified_pick(labels, 20, [0, 1]))
    assert not np.array_equal(pick, stratified_pick(labels, 20, [1, 1]))


def test_carve_splits_is_disjoint_stratified_and_independent_of_anything_but_split_seed():
    train = make_imageset(200, num_classes=4, index_pixels=True)
    test = make_imageset(12, num_classes=4)
    info = CIFAR
    a = carve_splits(info, train, test, val_size=40)
    b = carve_splits(info, train, test, val_size=40)
    val_ids, train_ids = image_indices(a.val), image_indices(a.train)
    assert image_indices(b.val) == val_ids and image_indices(b.train) == train_ids
    assert set(val_ids).isdisjoint(train_ids) and set(val_ids) | set(train_ids) == set(range(200))
    assert np.bincount(a.val.labels.numpy()).tolist() == [10, 10, 10, 10]
    assert a.test is test  # never touched
    other = carve_splits(info, train, test, val_size=40, split_seed=1)
    assert image_indices(other.val) != val_ids

    sub = carve_splits(info, train, test, val_size=40, train_subset=20)
    sub_ids = image_indices(sub.train)
    assert len(sub_ids) == 20 and set(sub_ids) <= set(train_ids)
    assert np.bincount(sub.train.labels.numpy()).tolist() == [5, 5, 5, 5]
    assert image_indices(sub.val) == val_ids  # the subset never changes the validation set
    assert sub_ids == image_indices(
        carve_splits(info, train, test, val_size=40, train_subset=20).train
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"val_size": -1}, "val_size -1"),
        ({"val_size": 200}, "val_size 200"),
        ({"val_size": 1.5}, "val_size 1.5"),
        ({"val_size": 10, "train_subset": 0}, "train_subset 0"),
        ({"val_size": 10, "train_subset": 191}, r"train_subset 191 .*\[1, 190\]"),
    ],
)
def test_bad_split_sizes_are_named(kwargs, match):
    train = make_imageset(200, num_classes=4)
    with pytest.raises(SDNError, match=match):
        carve_splits(CIFAR, train, make_imageset(4, num_classes=4), **kwargs)


def test_imageset_rejects_wrong_dtypes():
    with pytest.raises(SDNError, match="uint8"):
        ImageSet(torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(SDNError, match="int64"):
        ImageSet(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(2, dtype=torch.int32))


# ---------------------------------------------------------------------------------------------
# BatchIterator


def test_batches_are_normalised_and_cover_the_set_in_order():
    images = make_imageset(50)
    batches = BatchIterator(images, CIFAR, batch_size=16)
    assert len(batches) == 4
    xs, ys = zip(*batches, strict=True)
    assert [len(y) for y in ys] == [16, 16, 16, 2]
    x = torch.cat(xs)
    assert x.dtype == torch.float32 and torch.equal(torch.cat(ys), images.labels)
    assert torch.allclose(_unnormalise(x, CIFAR), images.images.float(), atol=1e-3)
    assert len(BatchIterator(images, CIFAR, batch_size=16, drop_last=True)) == 3
    assert sum(1 for _ in BatchIterator(images, CIFAR, batch_size=16, drop_last=True)) == 3


def test_channels_last_output():
    x, _ = next(iter(BatchIterator(make_imageset(8), CIFAR, 8, channels_last=True)))
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_shuffle_and_augmentation_are_reproducible_from_the_generator():
    images = make_imageset(40)

    def epoch(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        it = BatchIterator(images, CIFAR, 16, shuffle=True, augment=True, generator=g)
        xs, ys = zip(*it, strict=True)
        return torch.cat(xs), torch.cat(ys)

    x1, y1 = epoch(_gen(3))
    x2, y2 = epoch(_gen(3))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x3, _ = epoch(_gen(4))
    assert not torch.equal(x1, x3)
    # Resumable: a saved generator state replays the next epoch exactly.
    g = _gen(5)
    epoch(g)
    state = g.get_state()
    x_next, y_next = epoch(g)
    g2 = torch.Generator()
    g2.set_state(state)
    x_again, y_again = epoch(g2)
    assert torch.equal(x_next, x_again) and torch.equal(y_next, y_again)


def test_generator_is_required_for_randomness():
    with pytest.raises(SDNError, match="Generator"):
        BatchIterator(make_imageset(4), CIFAR, 2, shuffle=True)


def test_crop_and_flip_match_a_per_image_reference():
    images = make_imageset(32)
    it = BatchIterator(images, CIFAR, 32, augment=True, generator=_gen(7))
    params = it._draw_params(32)
    it.generator.manual_seed(7)  # replay the same draws inside the iteration
    got, _ = next(iter(it))
    padded = F.pad(images.images.float(), (4, 4, 4, 4))
    expected = []
    for i in range(32):
        oy, ox = params["offsets"][i].tolist()
        crop = padded[i, :, oy : oy + 32, ox : ox + 32]
        expected.append(crop.flip(-1) if params["flips"][i] else crop)
    assert params["flips"].any() and not params["flips"].all()
    assert torch.allclose(_unnormalise(got, CIFAR), torch.stack(expected), atol=1e-3)


def test_digits_are_never_flipped():
    it = BatchIterator(
        make_imageset(64), dataset_info("digits"), 64, augment=True, generator=_gen()
    )
    assert not it._draw_params(64)["flips"].any()


def test_color_jitter_matches_torchvision_functional():
    from torchvision.transforms.v2 import functional as TF

    info = dataset_info("tinyimagenet")
    images = make_imageset(6, size=64)
    it = BatchIterator(images, info, 6, augment=True, generator=_gen(0))
    factors = torch.tensor([[0.8, 1.2, 1.1]] * 3 + [[1.15, 0.85, 0.9]] * 3)
    order = torch.tensor([2, 0, 1])
    got = it._jitter_normalise(images.images.clone(), factors, order)
    expected = []
    for img, f in zip(images.images.float() / 255.0, factors, strict=True):
        ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation]
        for op in order.tolist():
            img = ops[op](img, float(f[op]))
        expected.append(img)
    assert torch.allclose(_unnormalise(got, info) / 255.0, torch.stack(expected), atol=2e-3)


def test_tiny_imagenet_batches_are_jittered_64px():
    info = dataset_info("tinyimagenet")
    images = make_imageset(8, size=64)
    plain = torch.cat([x for x, _ in BatchIterator(images, info, 4)])
    aug = torch.cat([x for x, _ in BatchIterator(images, info, 4, augment=True, generator=_gen())])
    assert aug.shape == plain.shape == (8, 3, 64, 64)
    assert not torch.allclose(aug, plain)


def test_image_size_must_match_the_info():
    with pytest.raises(SDNError, match="64 px"):
        BatchIterator(make_imageset(4, size=32), dataset_info("tinyimagenet"), 2)


# ---------------------------------------------------------------------------------------------
# Missing data


def test_missing_cifar_root_says_where_and_how(tmp_path: Path):
    with pytest.raises(DataError, match=r"cifar-10-batches-py.*--download"):
        load_dataset("cifar10", root=tmp_path)
    with pytest.raises(DataError, match=r"cifar-100-python"):
        load_dataset("cifar100", root=tmp_path)
    with pytest.raises(DataError, match=r"Tiny ImageNet not found.*--download"):
        load_dataset("tinyimagenet", root=tmp_path)


# ---------------------------------------------------------------------------------------------
# folder: and Tiny ImageNet layouts, decoded once and cached


def _write_png(path: Path, color: tuple[int, int, int], size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)


def _folder_tree(root: Path, size: int = 32) -> Path:
    """3 classes: 6 train and 2 test images each, every image a distinct flat colour."""
    for split, count in (("train", 6), ("test", 2)):
        for c, name in enumerate(("cat", "ant", "bee")):
            for i in range(count):
                _write_png(root / split / name / f"{i}.png", (40 * c, 10 * i, 200), size)
    return root


def test_folder_dataset_loads_and_reuses_its_cache(tmp_path: Path, monkeypatch):
    tree = _folder_tree(tmp_path / "shapes")
    splits = load_dataset(f"folder:{tree}", val_size=3)
    info = splits.info
    assert (info.num_classes, info.image_size, info.pad) == (3, 32, 4)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (15, 3, 6)
    # Classes are the sorted folder names: ant=0, bee=1, cat=2.
    assert splits.test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert splits.test.images[0, :, 5, 5].tolist() == [40, 0, 200]  # ant, image 0
    assert np.allclose(info.mean[2], 200 / 255, atol=1e-4)  # mean/std from the train images
    cache_files = sorted(p.name for p in (tree / ".sdn-cache").iterdir())
    assert any(n.startswith("train-") for n in cache_files)
    assert not any(n.endswith(".tmp") for n in cache_files)

    def no_decoding(*_args):
        raise AssertionError("decoded an image although the cache was valid")

    monkeypatch.setattr(datafiles, "decode_image", no_decoding)
    again = load_dataset(f"folder:{tree}", val_size=3)
    assert torch.equal(again.train.images, splits.train.images)
    assert again.info == info

    # A new file invalidates the cache: the images are decoded again.
    monkeypatch.undo()
    _write_png(tree / "train" / "ant" / "9.png", (1, 2, 3))
    assert len(load_dataset(f"folder:{tree}", val_size=3).train) == 16


def test_folder_images_are_resized_to_32_or_kept_at_64(tmp_path: Path, isolated_cache: Path):
    odd = load_dataset(f"folder:{_folder_tree(tmp_path / 'odd', size=40)}", val_size=3)
    assert odd.info.image_size == 32 and odd.train.images.shape[-2:] == (32, 32)
    big = load_dataset(f"folder:{_folder_tree(tmp_path / 'big', size=64)}", val_size=3)
    assert (big.info.image_size, big.info.pad) == (64, 8)
    assert big.train.images.shape[-2:] == (64, 64)
    assert isolated_cache.is_dir()  # SDN_CACHE_DIR takes the cache out of the data folder
    assert not (tmp_path / "odd" / ".sdn-cache").exists()


def test_folder_test_classes_must_exist_in_train(tmp_path: Path, isolated_cache: Path):
    tree = _folder_tree(tmp_path / "t")
    _write_png(tree / "test" / "zebra" / "0.png", (0, 0, 0))
    with pytest.raises(DataError, match="zebra"):
        load_dataset(f"folder:{tree}")


def test_tiny_imagenet_official_layout(tmp_path: Path, isolated_cache: Path):
    base = tmp_path / "tiny-imagenet-200"
    wnids = ["n02", "n01"]
    (base).mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for w, shade in zip(wnids, (50, 150), strict=True):
        for i in range(3):
            img = Image.new("RGB", (64, 64), (shade, i, 0))
            (base / "train" / w / "images").mkdir(parents=True, exist_ok=True)
            img.save(base / "train" / w / "images" / f"{w}_{i}.JPEG", quality=100)
    (base / "val" / "images").mkdir(parents=True)
    lines = []
    for j, w in enumerate(["n01", "n02", "n01"]):
        Image.new("L", (64, 64), 100).save(base / "val" / "images" / f"val_{j}.JPEG")  # grey
        lines.append(f"val_{j}.JPEG\t{w}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")

    splits = load_dataset("tinyimagenet", root=tmp_path, val_size=2)
    assert splits.info.image_size == 64
    assert (len(splits.train), len(splits.val), len(splits.test)) == (4, 2, 3)
    assert splits.test.labels.tolist() == [0, 1, 0]  # sorted wnids: n01=0, n02=1
    assert splits.test.images.shape == (3, 3, 64, 64)
    train_all = torch.cat([splits.train.labels, splits.val.labels]).sort().values
    assert train_all.tolist() == [0, 0, 0, 1, 1, 1]
    assert abs(int(splits.train.images[splits.train.labels == 1][0, 0, 10, 10]) - 50) <= 3
