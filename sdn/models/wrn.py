"""Wide-ResNet-32-4 with pre-activation blocks and dropout (Zagoruyko and Komodakis 2016)."""

from __future__ import annotations

import torch
from torch import nn

from sdn.models.backbone import CNN, check_cnn_args, scale_channels
from sdn.models.weight_init import DEFAULT_INIT, check_init, init_weights_

STEM_CHANNELS = 16
STAGE_CHANNELS = (64, 128, 256)
STAGE_STRIDES = (1, 2, 2)
BLOCKS_PER_STAGE = 5
DROPOUT = 0.3


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3-Dropout-BN-ReLU-conv3x3(stride), plus a shortcut; output is the plain sum.

    As in the paper's model the stride sits on the second conv, and the shortcut is a 1x1 conv
    (with bias) whenever the shape changes, the very first block included (16 -> 64 channels).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=True)
        self.dropout = nn.Dropout(DROPOUT)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride, padding=1, bias=True)
        self.relu = nn.ReLU(inplace=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.conv1(self.relu(self.bn1(x))))
        out = self.conv2(self.relu(self.bn2(out)))
        return out + self.shortcut(x)


class WRN32_4(CNN):
    """WRN-32-4: stem conv3x3 (with bias), 3 stages x 5 wide blocks, head BN-ReLU-avgpool-FC.

    The stem has stride 2 at 64 px, so Tiny ImageNet runs at 32 x 32 inside.
    """

    DEFAULT_IC_POSITIONS = (2, 4, 6, 8, 10, 12)  # after blocks 3, 5, ..., 13 of 15 (1-based)

    def __init__(
        self,
        num_classes: int,
        image_size: int = 32,
        width: float = 1.0,
        init: str = DEFAULT_INIT,
    ) -> None:
        num_classes, image_size, width = check_cnn_args(num_classes, image_size, width)
        init = check_init(init)
        stem_channels = scale_channels(STEM_CHANNELS, width)
        stem = nn.Conv2d(3, stem_channels, 3, stride=image_size // 32, padding=1, bias=True)
        blocks: list[nn.Module] = []
        in_channels = stem_channels
        for channels, stride in zip(STAGE_CHANNELS, STAGE_STRIDES, strict=True):
            out_channels = scale_channels(channels, width)
            for i in range(BLOCKS_PER_STAGE):
                blocks.append(WideBlock(in_channels, out_channels, stride if i == 0 else 1))
                in_channels = out_channels
        head = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(in_channels, num_classes),
        )
        config = {
            "kind": "cnn",
            "arch": "wrn32_4",
            "num_classes": num_classes,
            "image_size": image_size,
            "width": width,
            "init": init,
        }
        super().__init__(stem, blocks, head, config)
        init_weights_(self, init)
