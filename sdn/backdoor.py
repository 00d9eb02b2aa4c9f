"""BadNets-style data poisoning (paper-spec "Backdoor experiment"), pure torch and NumPy.

A *trigger* (by default a 5x5 white square covering rows and columns 26-30 of a 32x32 image, as in
the reference) is stamped on the stored uint8 images, before normalisation. Poisoning picks
``round(rate * n_non_target)`` training images of the non-target classes with a seeded generator,
stamps them and relabels them to the target class. The evaluation splits ``test_triggered`` and
``val_triggered`` hold every non-target image of test / val with the trigger and its *true* label,
so accuracy on them is "how often the true class survives" and the attack success rate is "how
often the target comes out instead". The clean val split stays clean (thresholds are chosen on it).

Stamped before augmentation, once. The trigger is written into the stored uint8 training image, and
``sdn.data.BatchIterator`` then crops and flips it like any other pixel, as BadNets and the
reference did (they pasted the patch on the image before the torchvision transforms). So in
training the square moves by up to the padding (4 px at 32 px, 8 at 64 px) in each direction, is
partly cut off when a crop pushes it past the border (it sits 1 px from the bottom-right corner),
and half the time appears mirrored at columns 1-5 (horizontal flip). The network thus learns a
trigger that is somewhat translation- and mirror-tolerant; the triggered test and val images are
not augmented, so at evaluation it sits exactly where configured. Stamping after augmentation would
instead need a hook inside the batch loop and would teach one exact position only; stamping once
keeps the training loop and its resumable random state untouched (a poisoned run is a normal run
on a different ``ImageSet``).

See docs/backdoor.md for the whole experiment and how a workflow uses this module.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sdn.data import DataSplits, ImageSet
from sdn.errors import SDNError

ATTACK = "badnets"
REFERENCE_SIZE = 32  # trigger geometry is given for a 32-px image and scaled to others
# Named colours accepted for the trigger; any RGB triple of 0-255 integers works too.
COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
}
# Stream tags of the poisoning generator: changing them would change every poisoned data set.
_TRAIN_STREAM = 0
_VAL_STREAM = 1


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _colour(value: object) -> tuple[int, int, int]:
    if isinstance(value, str):
        if value not in COLOURS:
            allowed = ", ".join(repr(c) for c in COLOURS)
            raise SDNError(
                f"trigger color {value!r} is unknown; use one of {allowed} or an RGB triple"
            )
        return COLOURS[value]
    if (
        isinstance(value, Sequence)
        and len(value) == 3
        and all(_is_int(c) and 0 <= c <= 255 for c in value)
    ):
        return (int(value[0]), int(value[1]), int(value[2]))
    raise SDNError(f"trigger color {value!r} must be a colour name or 3 integers in 0..255")


@dataclass(frozen=True)
class TriggerBox:
    """Where a trigger lands on one image size, in pixels: rows ``row .. row + size - 1``, same for
    columns."""

    row: int
    col: int
    size: int
    color: tuple[int, int, int]


@dataclass(frozen=True)
class Trigger:
    """A solid square trigger.

    ``size``, ``row`` and ``col`` (top-left corner) are pixels of a 32x32 image when ``scale`` is
    true (the default): on a 64-px image they double, so the square covers the same part of the
    picture. With ``scale=False`` they are pixels of whatever image the trigger is stamped on.
    ``color`` is a name from ``COLOURS`` or an RGB triple; it is kept as the triple.
    """

    size: int = 5
    row: int = 26
    col: int = 26
    color: tuple[int, int, int] | str = "white"
    scale: bool = True

    def __post_init__(self) -> None:
        for name in ("size", "row", "col"):
            value = getattr(self, name)
            low = 1 if name == "size" else 0
            if not _is_int(value) or value < low:
                raise SDNError(f"trigger {name} {value!r} must be an integer >= {low}")
            object.__setattr__(self, name, int(value))
        if not isinstance(self.scale, bool):
            raise SDNError(f"trigger scale {self.scale!r} must be true or false")
        object.__setattr__(self, "color", _colour(self.color))
        if self.scale:
            self.box(REFERENCE_SIZE)  # the reference geometry must fit a 32-px image

    @property
    def color_name(self) -> str:
        """The colour's name if it has one, else its hex code (``ff8000``)."""
        for name, rgb in COLOURS.items():
            if rgb == self.color:
                return name
        return "".join(f"{c:02x}" for c in self.color)  # type: ignore[union-attr]

    def box(self, image_size: int) -> TriggerBox:
        """The pixel square on an ``image_size`` image; SDNError naming the field that does not fit.

        Scaling multiplies by ``image_size / 32`` (exact for 32 and 64 px; other sizes round down).
        """
        if not _is_int(image_size) or image_size < 1:
            raise SDNError(f"image size {image_size!r} must be a positive integer")
        if self.scale:
            row, col = (
                self.row * image_size // REFERENCE_SIZE,
                self.col * image_size // REFERENCE_SIZE,
            )
            size = max(1, self.size * image_size // REFERENCE_SIZE)
        else:
            row, col, size = self.row, self.col, self.size
        for name, start in (("row", row), ("col", col)):
            if start + size > image_size:
                raise SDNError(
                    f"trigger {name} {getattr(self, name)} with size {self.size} does not fit a "
                    f"{image_size}-px image (it would cover pixels {start}..{start + size - 1}); "
                    f"lower the {name} or the size"
                )
        return TriggerBox(row, col, size, self.color)  # type: ignore[arg-type]

    @property
    def tag(self) -> str:
        """Identity token, e.g. ``sq5at26x26-white`` (``-abs`` when not scaled)."""
        text = f"sq{self.size}at{self.row}x{self.col}-{self.color_name}"
        return text if self.scale else f"{text}-abs"

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "row": self.row,
            "col": self.col,
            "color": list(self.color),  # type: ignore[arg-type]
            "scale": self.scale,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Trigger:
        unknown = sorted(set(d) - {"size", "row", "col", "color", "scale"})
        if unknown:
            raise SDNError(f"unknown trigger keys {unknown}; allowed: size, row, col, color, scale")
        kwargs = dict(d)
        if isinstance(kwargs.get("color"), list):
            kwargs["color"] = tuple(kwargs["color"])
        return cls(**kwargs)


def stamp(images: torch.Tensor, trigger: Trigger) -> torch.Tensor:
    """A copy of uint8 ``images [N, 3, H, W]`` with the trigger pasted on every image.

    Only the trigger's pixels differ from the input; the input is never modified.
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise SDNError(
            f"stamp needs uint8 images [N, 3, H, W], got {images.dtype} {tuple(images.shape)}"
        )
    h, w = int(images.shape[2]), int(images.shape[3])
    if h != w:
        raise SDNError(f"stamp needs square images, got {h}x{w}")
    box = trigger.box(h)
    out = images.clone()
    colour = torch.tensor(box.color, dtype=torch.uint8, device=images.device).view(1, 3, 1, 1)
    out[:, :, box.row : box.row + box.size, box.col : box.col + box.size] = colour
    return out


def trigger_mask(image_size: int, trigger: Trigger) -> torch.Tensor:
    """bool [H, W]: True on the pixels the trigger covers (for tests and figures)."""
    box = trigger.box(image_size)
    mask = torch.zeros(image_size, image_size, dtype=torch.bool)
    mask[box.row : box.row + box.size, box.col : box.col + box.size] = True
    return mask


# ---------------------------------------------------------------------------------------------
# Poisoning configuration


def _rate_text(rate: float) -> str:
    """0.1 -> ``0p10``, 0.125 -> ``0p125``: no dot, so the tag fits a dotted ``run_id``."""
    text = f"{rate:.4f}".rstrip("0")
    whole, frac = text.split(".")
    return f"{whole}p{frac.ljust(2, '0')}"


@dataclass(frozen=True)
class PoisonConfig:
    """What to poison and how: a share of the non-target training images gets the trigger and the
    target label.

    ``rate`` is the share of the *non-target* training images poisoned, in (0, 1] and a multiple
    of 0.0001 (so that its tag is exact); ``target`` the attacker's class; ``seed`` the generator of
    which images are chosen (independent of the training seed: the poisoned data set is part of
    the experiment's definition, like the data set itself).
    """

    rate: float = 0.10
    target: int = 5
    seed: int = 0
    trigger: Trigger = field(default_factory=Trigger)

    def __post_init__(self) -> None:
        if (
            isinstance(self.rate, bool)
            or not isinstance(self.rate, numbers.Real)
            or not math.isfinite(self.rate)
            or not 0.0 < self.rate <= 1.0
        ):
            raise SDNError(f"poison rate {self.rate!r} must be a number in (0, 1]")
        if abs(round(self.rate, 4) - self.rate) > 1e-12:
            raise SDNError(f"poison rate {self.rate!r} must have at most 4 decimals (e.g. 0.1)")
        object.__setattr__(self, "rate", round(float(self.rate), 4))
        if not _is_int(self.target) or self.target < 0:
            raise SDNError(f"poison target {self.target!r} must be a class index >= 0")
        if not _is_int(self.seed) or self.seed < 0:
            raise SDNError(f"poison seed {self.seed!r} must be an integer >= 0")
        object.__setattr__(self, "target", int(self.target))
        object.__setattr__(self, "seed", int(self.seed))
        if not isinstance(self.trigger, Trigger):
            raise SDNError(f"poison trigger must be a Trigger, got {type(self.trigger).__name__}")

    def check_classes(self, num_classes: int) -> None:
        """The target must be one of the data set's classes."""
        if not 0 <= self.target < num_classes:
            raise SDNError(
                f"poison target {self.target} is not a class of this data set "
                f"(classes 0..{num_classes - 1})"
            )

    @property
    def tag(self) -> str:
        """Stable identity string, e.g. ``badnets-t5-r0p10-s0-sq5at26x26-white``.

        Only ``[A-Za-z0-9-]``: it can join a dotted ``run_id`` or a registered model name as one
        token. Two configs have the same tag exactly when they poison the same way.
        """
        return f"{ATTACK}-t{self.target}-r{_rate_text(self.rate)}-s{self.seed}-{self.trigger.tag}"

    def identity(self) -> dict[str, str]:
        """Flat string tags (for MLflow / catalogue tags): every field, plus ``backdoor`` = tag."""
        return {
            "backdoor": self.tag,
            "backdoor.attack": ATTACK,
            "backdoor.target": str(self.target),
            "backdoor.rate": f"{self.rate:g}",
            "backdoor.seed": str(self.seed),
            "backdoor.trigger": self.trigger.tag,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "attack": ATTACK,
            "rate": self.rate,
            "target": self.target,
            "seed": self.seed,
            "trigger": self.trigger.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PoisonConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        allowed = {"attack", "rate", "target", "seed", "trigger"}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise SDNError(f"unknown poison keys {unknown}; allowed: {sorted(allowed)}")
        if d.get("attack", ATTACK) != ATTACK:
            raise SDNError(f"poison attack {d['attack']!r} is unknown; use {ATTACK!r}")
        kwargs = {k: v for k, v in d.items() if k not in ("attack", "trigger")}
        if "trigger" in d:
            trigger = d["trigger"]
            kwargs["trigger"] = (
                trigger if isinstance(trigger, Trigger) else Trigger.from_dict(trigger)
            )
        return cls(**kwargs)


# ---------------------------------------------------------------------------------------------
# Poisoned and triggered splits


def poison_count(rate: float, num_non_target: int) -> int:
    """How many images are poisoned: ``rate * num_non_target`` rounded half up (exact)."""
    return min(num_non_target, math.floor(rate * num_non_target + 0.5))


def choose_poisoned(
    labels: np.ndarray, config: PoisonConfig, stream: int = _TRAIN_STREAM
) -> np.ndarray:
    """Sorted indices of the images to poison: a seeded uniform draw among the non-target ones."""
    labels = np.asarray(labels)
    candidates = np.flatnonzero(labels != config.target)
    count = poison_count(config.rate, len(candidates))
    rng = np.random.default_rng([config.seed, stream])
    return np.sort(rng.choice(candidates, size=count, replace=False)).astype(np.int64)


def poison_imageset(
    imageset: ImageSet, config: PoisonConfig, stream: int = _TRAIN_STREAM
) -> tuple[ImageSet, np.ndarray]:
    """(poisoned copy, poisoned indices): the chosen images stamped and relabelled to the target.

    Every other image and label is untouched; target-class images are never chosen.
    """
    indices = choose_poisoned(imageset.labels.numpy(), config, stream)
    images = imageset.images.clone()
    labels = imageset.labels.clone()
    if len(indices):
        idx = torch.from_numpy(indices)
        images[idx] = stamp(imageset.images.index_select(0, idx), config.trigger)
        labels[idx] = config.target
    return ImageSet(images, labels), indices


@dataclass
class TriggeredSplit:
    """Every non-target image of a split with the trigger stamped on it, and its TRUE label.

    ``source_index`` gives each image's position in the clean split it came from (to pair a
    triggered image with its clean twin); ``target`` is the attacker's class, which no image here
    has as its label.
    """

    data: ImageSet
    source_index: np.ndarray  # int64 [N]
    target: int

    def __len__(self) -> int:
        return len(self.data)


def triggered_split(imageset: ImageSet, config: PoisonConfig) -> TriggeredSplit:
    """The triggered evaluation version of a clean split (test or val)."""
    source = np.flatnonzero(imageset.labels.numpy() != config.target).astype(np.int64)
    clean = imageset.subset(source)
    data = ImageSet(stamp(clean.images, config.trigger), clean.labels)
    return TriggeredSplit(data, source, config.target)


@dataclass
class BackdoorSplits:
    """Everything a backdoor experiment trains and evaluates on.

    - ``clean``: the original splits (an ``ic_only`` cell trains its ICs on ``clean.train``);
    - ``poisoned``: the splits a poisoned ``cnn`` / ``sdn`` trains on: ``train`` poisoned, ``test``
      clean, ``val`` clean unless ``poison_val`` was asked (pass it to ``Trainer`` as is);
    - ``poisoned_indices``: positions in ``clean.train`` that were stamped and relabelled;
    - ``test_triggered`` / ``val_triggered``: the triggered evaluation splits.
    """

    config: PoisonConfig
    clean: DataSplits
    poisoned: DataSplits
    poisoned_indices: np.ndarray
    test_triggered: TriggeredSplit
    val_triggered: TriggeredSplit
    poisoned_val_indices: np.ndarray | None = None

    def evaluation_sets(self) -> dict[str, ImageSet]:
        """Split name -> images for the analysis pass: clean ``val`` and ``test`` plus
        ``val_triggered`` and ``test_triggered`` (the names to store predictions under)."""
        return {
            "val": self.clean.val,
            "test": self.clean.test,
            "val_triggered": self.val_triggered.data,
            "test_triggered": self.test_triggered.data,
        }


def make_backdoor_splits(
    splits: DataSplits, config: PoisonConfig, *, poison_val: bool = False
) -> BackdoorSplits:
    """Poison ``splits.train`` and build the triggered evaluation splits, deterministically.

    ``poison_val`` also poisons the val split the poisoned training reports on (same rate, its own
    draw); thresholds should still be chosen on ``clean.val``, which is never modified.
    """
    config.check_classes(splits.info.num_classes)
    size = splits.info.image_size
    config.trigger.box(size)  # fails early, naming the field, when the trigger does not fit
    train, indices = poison_imageset(splits.train, config)
    val, val_indices = splits.val, None
    if poison_val:
        val, val_indices = poison_imageset(splits.val, config, _VAL_STREAM)
    poisoned = DataSplits(splits.info, train, val, splits.test)
    return BackdoorSplits(
        config=config,
        clean=splits,
        poisoned=poisoned,
        poisoned_indices=indices,
        test_triggered=triggered_split(splits.test, config),
        val_triggered=triggered_split(splits.val, config),
        poisoned_val_indices=val_indices,
    )
