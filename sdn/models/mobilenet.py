"""MobileNet v1, CIFAR variant (Howard et al. 2017): stride-1 stem, four stride-2 blocks."""

from __future__ import annotations

from torch import nn

from sdn.models.backbone import CNN, check_cnn_args, scale_channels
from sdn.models.weight_init import DEFAULT_INIT, check_init, init_weights_

STEM_CHANNELS = 32
# (output channels, stride), blocks 1..13
MOBILENET_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


class SeparableBlock(nn.Sequential):
    """Depthwise conv3x3 + BN + ReLU, then pointwise conv1x1 + BN + ReLU (no conv biases)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(
            nn.Conv2d(
                in_channels, in_channels, 3, stride, padding=1, groups=in_channels, bias=False
            ),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class MobileNetV1(CNN):
    """MobileNet v1 for small images: stem conv3x3 3->32 (stride 1), 13 separable blocks, head.

    The head average-pools the final 2x2 map (32 px) or 4x4 map (64 px) to 1x1, then one FC.
    """

    DEFAULT_IC_POSITIONS = (2, 4, 6, 8, 11)  # after blocks 3, 5, 7, 9, 12 (1-based)

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
        stem = nn.Sequential(
            nn.Conv2d(3, stem_channels, 3, 1, padding=1, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        in_channels = stem_channels
        for channels, stride in MOBILENET_BLOCKS:
            out_channels = scale_channels(channels, width)
            blocks.append(SeparableBlock(in_channels, out_channels, stride))
            in_channels = out_channels
        head = nn.Sequential(
            nn.AvgPool2d(image_size // 16),
            nn.Flatten(),
            nn.Linear(in_channels, num_classes),
        )
        config = {
            "kind": "cnn",
            "arch": "mobilenet",
            "num_classes": num_classes,
            "image_size": image_size,
            "width": width,
            "init": init,
        }
        super().__init__(stem, blocks, head, config)
        init_weights_(self, init)
