"""ResNet-56 for CIFAR (He et al. 2016), with 1x1-conv projection shortcuts."""

from __future__ import annotations

import torch
from torch import nn

from sdn.models.backbone import CNN, check_cnn_args, scale_channels
from sdn.models.weight_init import DEFAULT_INIT, check_init, init_weights_

STAGE_CHANNELS = (16, 32, 64)
STAGE_STRIDES = (1, 2, 2)
BLOCKS_PER_STAGE = 9


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then the output ReLU.

    The block's output (and so an IC's input) is taken *after* the output ReLU: the same tensor
    the next block reads. The reference implementation tapped the pre-ReLU sum for its ICs while
    the backbone continued after the ReLU (spec bug 5); here the IC and the backbone see the same
    features.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet56(CNN):
    """ResNet-56: stem conv3x3 + BN + ReLU, 3 stages x 9 BasicBlocks, global average pool, FC.

    The stem has stride 2 at 64 px, so Tiny ImageNet runs at 32 x 32 inside and costs the same as
    CIFAR.
    """

    DEFAULT_IC_POSITIONS = (3, 7, 11, 15, 19, 23)  # after blocks 4, 8, ..., 24 of 27 (1-based)

    def __init__(
        self,
        num_classes: int,
        image_size: int = 32,
        width: float = 1.0,
        init: str = DEFAULT_INIT,
    ) -> None:
        num_classes, image_size, width = check_cnn_args(num_classes, image_size, width)
        init = check_init(init)
        stem_channels = scale_channels(STAGE_CHANNELS[0], width)
        stem = nn.Sequential(
            nn.Conv2d(3, stem_channels, 3, stride=image_size // 32, padding=1, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        in_channels = stem_channels
        for channels, stride in zip(STAGE_CHANNELS, STAGE_STRIDES, strict=True):
            out_channels = scale_channels(channels, width)
            for i in range(BLOCKS_PER_STAGE):
                blocks.append(BasicBlock(in_channels, out_channels, stride if i == 0 else 1))
                in_channels = out_channels
        head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, num_classes)
        )
        config = {
            "kind": "cnn",
            "arch": "resnet56",
            "num_classes": num_classes,
            "image_size": image_size,
            "width": width,
            "init": init,
        }
        super().__init__(stem, blocks, head, config)
        init_weights_(self, init)
