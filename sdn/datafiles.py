"""Image files to uint8 tensors, decoded once and cached (Tiny ImageNet and ``folder:`` trees).

Decoding 60,000 JPEGs takes about a minute on 2 cores and would dominate a CPU epoch, so every
split is decoded once into a uint8 [N, 3, H, W] tensor file. The cache file's name carries a
fingerprint of the file list (names, sizes, modification times, labels, target size), so adding,
removing or rewriting an image invalidates it, and a cached load never opens an image. Cache files
are written to a temporary name and renamed, so a crash never leaves a half-written cache.

This module knows nothing about splits or normalisation; ``sdn.data`` builds on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sdn.errors import DataError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
)
CACHE_VERSION = 1
CACHE_DIRNAME = ".sdn-cache"
TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"

Stats = tuple[tuple[float, float, float], tuple[float, float, float]]


@dataclass
class FileList:
    """One split's image files (absolute path strings) and labels, with a fingerprint ``key``."""

    files: list[str]
    labels: np.ndarray  # int64 [N]
    key: str

    @classmethod
    def of(cls, files: list[str], labels: Sequence[int] | np.ndarray, size: int) -> FileList:
        labels = np.asarray(labels, dtype=np.int64)
        h = hashlib.sha256(f"v{CACHE_VERSION}:{size}:{len(files)}".encode())
        for f, y in zip(files, labels.tolist(), strict=True):
            try:
                st = os.stat(f)
            except OSError as exc:
                raise DataError(f"cannot read image {f}: {exc}") from None
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\0{y}\n".encode())
        return cls(files, labels, h.hexdigest()[:20])


def cache_dir_for(data_dir: Path) -> Path:
    """``$SDN_CACHE_DIR/<hash>``, else ``<data>/.sdn-cache`` when writable, else the user cache
    (``~/.cache/sdn-workflows/decoded/<hash>``), so read-only data still gets cached."""
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
    env = os.environ.get("SDN_CACHE_DIR")
    if env:
        return Path(env).expanduser() / digest
    local = data_dir / CACHE_DIRNAME
    try:
        local.mkdir(exist_ok=True)
        if os.access(local, os.W_OK):
            return local
    except OSError:
        pass
    return Path.home() / ".cache" / "sdn-workflows" / "decoded" / digest


def decode_image(path: str, size: int) -> np.ndarray:
    """One image file -> uint8 [size, size, 3] RGB (grey and palette images are converted)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from exc


def decode_all(files: Sequence[str], size: int) -> np.ndarray:
    """Decode in a thread pool (PIL releases the GIL while decoding) into one [N, H, W, 3] array."""
    out = np.empty((len(files), size, size, 3), dtype=np.uint8)

    def work(i: int) -> None:
        out[i] = decode_image(files[i], size)

    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        for _ in pool.map(work, range(len(files)), chunksize=256):
            pass
    return out


def _atomic_write(path: Path, write_to: object) -> None:
    """Write through ``write_to(file object)`` into a temporary sibling, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write_to(fh)  # type: ignore[operator]
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _remove_stale(cache_dir: Path, pattern: str, keep: Path) -> None:
    for stale in cache_dir.glob(pattern):
        if stale != keep and not stale.name.endswith(".tmp"):
            stale.unlink(missing_ok=True)


def cached_images(
    listing: FileList, size: int, cache_dir: Path, split: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 [N, 3, size, size], int64 [N]) for ``listing``: from the cache when its fingerprint
    matches, else decoded once and written there (older versions of the split are removed)."""
    path = cache_dir / f"{split}-{size}px-{listing.key}.pt"
    if path.is_file():
        try:
            blob = torch.load(path, weights_only=True)
            return blob["images"], blob["labels"]
        except Exception:  # a corrupted cache is rebuilt, not fatal
            path.unlink(missing_ok=True)
    hwc = decode_all(listing.files, size)
    images = torch.from_numpy(hwc).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(listing.labels.copy())
    _atomic_write(path, lambda fh: torch.save({"images": images, "labels": labels}, fh))
    _remove_stale(cache_dir, f"{split}-*.pt", path)
    return images, labels


def channel_stats(images: torch.Tensor) -> Stats:
    """Per-channel mean and std of uint8 images scaled to [0, 1], in chunks (bounded memory)."""
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    for chunk in images.split(4096):
        x = chunk.to(torch.float64)
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(1e-12).sqrt()
    m = tuple(round(v / 255.0, 6) for v in mean.tolist())
    s = tuple(round(v / 255.0, 6) for v in std.tolist())
    return (m[0], m[1], m[2]), (s[0], s[1], s[2])


# --- folder:<path> ---------------------------------------------------------------------------


@dataclass
class FolderScan:
    """A class-folder tree: classes are train/'s subfolder names, sorted."""

    path: Path
    classes: list[str]
    image_size: int
    splits: dict[str, FileList]

    @property
    def cache_dir(self) -> Path:
        return cache_dir_for(self.path)


def _class_tree(split_dir: Path) -> dict[str, list[str]]:
    """Class name -> sorted image paths; hidden entries (e.g. the cache) are skipped.
    os.scandir and string sorting: pathlib took 10 s to list CIFAR-10's 60,000 files."""
    tree: dict[str, list[str]] = {}
    with os.scandir(split_dir) as classes:
        dirs = sorted(e.name for e in classes if e.is_dir() and not e.name.startswith("."))
    for name in dirs:
        with os.scandir(split_dir / name) as entries:
            tree[name] = sorted(
                e.path
                for e in entries
                if e.is_file()
                and not e.name.startswith(".")
                and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
            )
    return tree


def _image_size(first: str) -> int:
    """64 when the images are 64x64 (Tiny-ImageNet-like), else everything is resized to 32."""
    from PIL import Image

    try:
        with Image.open(first) as img:
            return 64 if img.size == (64, 64) else 32
    except OSError as exc:
        raise DataError(f"cannot read image {first}: {exc}") from exc


def scan_folder(path: Path) -> FolderScan:
    """List train/<class>/* and test/<class>/* (no decoding)."""
    if not (path / "train").is_dir() or not (path / "test").is_dir():
        raise DataError(
            f"folder data set {str(path)!r} needs train/<class>/* and test/<class>/* subfolders"
        )
    train_tree = _class_tree(path / "train")
    classes = [c for c, files in train_tree.items() if files]
    if not classes:
        raise DataError(f"folder data set {str(path)!r} has no images under train/<class>/")
    size = _image_size(train_tree[classes[0]][0])
    index = {c: i for i, c in enumerate(classes)}
    splits = {}
    for split, tree in (("train", train_tree), ("test", _class_tree(path / "test"))):
        unknown = sorted(c for c, files in tree.items() if files and c not in index)
        if unknown:
            raise DataError(
                f"{path / split} has classes {unknown} that train/ lacks; classes are {classes}"
            )
        files = [f for c in classes for f in tree.get(c, [])]
        if not files:
            raise DataError(f"folder data set {str(path)!r} has no images under {split}/<class>/")
        labels = [index[c] for c in classes for _ in tree.get(c, [])]
        splits[split] = FileList.of(files, labels, size)
    return FolderScan(path, classes, size, splits)


def folder_stats(scan: FolderScan, train_images: torch.Tensor | None = None) -> Stats:
    """Mean and std of the train images, cached in a small JSON file next to the images."""
    cache = scan.cache_dir
    stats_file = cache / f"stats-{scan.splits['train'].key}.json"
    try:
        stats = json.loads(stats_file.read_text())
        mean, std = stats["mean"], stats["std"]
        return (mean[0], mean[1], mean[2]), (std[0], std[1], std[2])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        pass
    if train_images is None:
        train_images, _ = cached_images(scan.splits["train"], scan.image_size, cache, "train")
    mean, std = channel_stats(train_images)
    text = json.dumps({"mean": mean, "std": std, "classes": scan.classes}).encode()
    _atomic_write(stats_file, lambda fh: fh.write(text))
    _remove_stale(cache, "stats-*.json", stats_file)
    return mean, std


# --- Tiny ImageNet ---------------------------------------------------------------------------


def tiny_dir(root: Path, download: bool) -> Path:
    """The extracted archive: ``root`` itself or ``root/tiny-imagenet-200`` (wnids.txt inside)."""
    for candidate in (root, root / "tiny-imagenet-200"):
        if (candidate / "wnids.txt").is_file():
            return candidate
    if download:
        from torchvision.datasets.utils import download_and_extract_archive

        try:
            download_and_extract_archive(TINY_URL, str(root))
        except OSError as exc:
            raise DataError(f"cannot download Tiny ImageNet into {root}: {exc}") from exc
        return root / "tiny-imagenet-200"
    raise DataError(
        f"Tiny ImageNet not found at {root} (no wnids.txt there or in "
        f"{root / 'tiny-imagenet-200'}); pass --download to fetch it, or --data-root pointing "
        "at the extracted archive"
    )


def scan_tinyimagenet(base: Path) -> dict[str, FileList]:
    """Official layout: train/<wnid>/images/*.JPEG, and val/images/* labelled by
    val/val_annotations.txt (the official val split is our test split). Classes in sorted wnid
    order, independent of the order of wnids.txt."""
    wnids = sorted({w for w in (base / "wnids.txt").read_text().split() if w})
    index = {w: i for i, w in enumerate(wnids)}
    train_files: list[str] = []
    train_labels: list[int] = []
    for wnid in wnids:
        folder = base / "train" / wnid / "images"
        if not folder.is_dir():
            raise DataError(f"Tiny ImageNet class folder {folder} is missing")
        with os.scandir(folder) as entries:
            found = sorted(
                e.path for e in entries if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
            )
        train_files += found
        train_labels += [index[wnid]] * len(found)
    annotations = base / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise DataError(f"Tiny ImageNet annotations {annotations} are missing")
    test_files: list[str] = []
    test_labels: list[int] = []
    for line in sorted(annotations.read_text().splitlines()):
        parts = line.split("\t")
        if len(parts) < 2:
            continue
        if parts[1] not in index:
            raise DataError(f"{annotations}: class {parts[1]!r} is not in wnids.txt")
        test_files.append(str(base / "val" / "images" / parts[0]))
        test_labels.append(index[parts[1]])
    return {
        "train": FileList.of(train_files, train_labels, 64),
        "test": FileList.of(test_files, test_labels, 64),
    }
