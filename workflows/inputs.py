"""Checks of what a user typed, run before anything heavy is imported or loaded.

Each failure is an ``SDNError`` whose one line names the option as the user typed it
(``--threshold``, ``--home``, ``$SDN_HOME``...), the value and what would be accepted. Nothing here
imports torch, MLflow or Ray: a typo must fail in a fraction of a second, not after a model load.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sdn.errors import SDNError

# As sdn.data (which imports torch); tests/test_cli_surface.py checks the two agree.
DATASETS = ("cifar10", "cifar100", "tinyimagenet", "digits", "folder:<path>")
FOLDER_PREFIX = "folder:"
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
SPLITS = ("val", "test")


def number(
    value: float | None,
    option: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float | None:
    """``value`` if it is a finite number in [low, high] (``(low, high]`` with ``low_open``)."""
    if value is None:
        return None
    if not math.isfinite(value):
        raise SDNError(f"{option} must be a finite number (got {value})")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        left = "(" if low_open else "["
        raise SDNError(f"{option} must be in {left}{low:g}, {high:g}] (got {value:g})")
    return value


def one_of(value: str, option: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise SDNError(
            f"{option}: unknown value {value!r}; choose one of: {', '.join(map(repr, allowed))}"
        )
    return value


def exactly_one(options: dict[str, object]) -> str:
    """The name of the one option given among ``options`` (name -> value or None)."""
    given = [name for name, value in options.items() if value not in (None, [], ())]
    if len(given) != 1:
        names = " or ".join(options)
        what = "not both" if len(given) > 1 else "one is needed"
        raise SDNError(f"give {names}, exactly one ({what})")
    return given[0]


def home_folder(home: Path, source: str) -> Path:
    """Refuse a home that is a file (or lies under one): reads and writes would fail with a
    misleading "no catalogue" or "not a directory" much later."""
    probe = home
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "is" if probe == home else f"lies under {probe}, which is"
        raise SDNError(f"{source} {home} {where} a file, not a folder; point it at a folder")
    return home


@dataclass(frozen=True)
class ImageInputs:
    """Image files to classify: every file given, and every image under every folder given
    (recursively, sorted), in the order the inputs were typed."""

    files: tuple[Path, ...]
    folders: int

    def describe(self) -> str:
        if not self.folders:
            return f"{len(self.files)} image file(s)"
        return f"{len(self.files)} image(s) from {self.folders} folder(s) and files given"


def image_inputs(paths: Iterable[Path], argument: str = "IMAGES") -> ImageInputs:
    """Expand and check image inputs: each path must exist; a folder contributes its images
    (recursively, sorted, hidden files skipped) and must hold at least one; a file must be one
    an image library can identify (checked by its header only, without decoding it)."""
    files: list[Path] = []
    folders = 0
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.suffix.lower() in IMAGE_SUFFIXES
                and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
                raise SDNError(f"{argument}: folder {path} holds no images ({suffixes})")
            folders += 1
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif path.exists():
            raise SDNError(f"{argument}: {path} is neither a file nor a folder")
        else:
            raise SDNError(f"{argument}: {path} does not exist")
    for path in files:
        _check_image(path, argument)
    return ImageInputs(tuple(files), folders)


def _check_image(path: Path, argument: str) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SDNError(f"{argument}: cannot read image {path}: {reason}") from None


def default_data_root() -> Path:
    """As ``sdn.data.default_data_root`` (without importing torch)."""
    env = os.environ.get("SDN_DATA_ROOT")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sdn-workflows" / "data"


def dataset_on_disk(name: str, data_root: Path | None, option: str = "--dataset") -> None:
    """Refuse a data set name that is unknown, or whose files are not on disk: ``sdn models
    predict`` reads data sets, it never downloads them."""
    if name.startswith(FOLDER_PREFIX):
        raw = name[len(FOLDER_PREFIX) :].strip()
        if not raw:
            raise SDNError(f"{option} {name!r} names no folder; use folder:<path>")
        folder = Path(raw).expanduser()
        if not folder.is_absolute() and data_root is not None:
            folder = data_root / folder
        if not folder.is_dir():
            raise SDNError(f"{option} {name}: folder {folder} does not exist")
        return
    if name not in DATASETS:
        raise SDNError(
            f"{option}: unknown data set {name!r}; choose one of: {', '.join(map(repr, DATASETS))}"
        )
    if name == "digits":
        return  # bundled with scikit-learn
    root = data_root or default_data_root()
    where = "--data-root" if data_root is not None else "$SDN_DATA_ROOT or the default data root"
    if name in ("cifar10", "cifar100"):
        folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
        if not (root / folder).is_dir():
            raise SDNError(
                f"{name} is not on disk: no {folder}/ under {root} ({where}); point --data-root "
                f"at the folder that holds {folder}/ (a sweep with data: {{download: true}} "
                "fetches it)"
            )
    elif name == "tinyimagenet" and not any(
        (c / "wnids.txt").is_file() for c in (root, root / "tiny-imagenet-200")
    ):
        raise SDNError(
            f"tinyimagenet is not on disk: no wnids.txt under {root} or {root}/tiny-imagenet-200 "
            f"({where}); point --data-root at the extracted archive"
        )


def data_root(value: Path | None, option: str = "--data-root") -> Path | None:
    if value is None:
        return None
    path = value.expanduser().absolute()
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise SDNError(f"{option} {path} {what}")
    return path
