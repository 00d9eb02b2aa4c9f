"""The common shape of every backbone: a stem, an ordered list of blocks and the original head.

The SDN wrapper only relies on this shape (``stem``, ``blocks``, ``head``), so an IC can follow any
block of any architecture without architecture-specific code.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import nn

from sdn.errors import SDNError, choice_error
from sdn.models.flops import count_flops, probe_input

IMAGE_SIZES = (32, 64)


def check_cnn_args(num_classes: int, image_size: int, width: float) -> tuple[int, int, float]:
    """Reject arguments no backbone can be built with (messages name the bad value); return them
    as plain Python numbers, so configs stay JSON-friendly when NumPy scalars come in."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise SDNError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if num_classes < 2:
        raise SDNError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if isinstance(image_size, bool) or image_size not in IMAGE_SIZES:
        raise choice_error("image_size", image_size, IMAGE_SIZES)
    if (
        isinstance(width, bool)
        or not isinstance(width, numbers.Real)
        or not math.isfinite(width)
        or width <= 0
    ):
        raise SDNError(f"width must be a finite number > 0, got {width!r}")
    return int(num_classes), int(image_size), float(width)


def scale_channels(channels: int, width: float) -> int:
    """Channel count after width scaling: rounded, at least 1 (small widths for quick runs)."""
    return max(1, round(channels * width))


class CNN(nn.Module):
    """A plain CNN: ``head(blocks[-1](...blocks[0](stem(x))))`` -> logits ``[B, C]``.

    ``config`` is the dict that rebuilds the model with ``sdn.models.build_model``. Subclasses
    set ``DEFAULT_IC_POSITIONS``: the paper's IC positions as 0-based block indices.
    """

    DEFAULT_IC_POSITIONS: tuple[int, ...] | None = None

    def __init__(
        self,
        stem: nn.Module,
        blocks: list[nn.Module],
        head: nn.Module,
        config: dict[str, Any],
    ) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)
        self.head = head
        self._config = dict(config)
        self._cost: float | None = None

    @property
    def config(self) -> dict[str, Any]:
        """The dict that rebuilds this model with ``sdn.models.build_model`` (a fresh copy)."""
        return dict(self._config)

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])

    @property
    def num_classes(self) -> int:
        return int(self.config["num_classes"])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's output (the head's input)."""
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def cost(self) -> float:
        """FLOPs of one image through the whole CNN; counted once, then cached."""
        if self._cost is None:
            self._cost = count_flops(self, probe_input(self, self.image_size))
        return self._cost

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._config.items() if k != "kind")
