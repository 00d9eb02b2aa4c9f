"""VGG-16 with batch norm, CIFAR style (Simonyan and Zisserman 2015; the SDN paper's VGG16-BN)."""

from __future__ import annotations

from torch import nn

from sdn.models.backbone import CNN, check_cnn_args, scale_channels
from sdn.models.weight_init import DEFAULT_INIT, check_init, init_weights_

# (output channels, whether a 2x2 max-pool closes the block), blocks 1..13
VGG16_BLOCKS: tuple[tuple[int, bool], ...] = (
    (64, False),
    (64, True),
    (128, False),
    (128, True),
    (256, False),
    (256, False),
    (256, True),
    (512, False),
    (512, False),
    (512, True),
    (512, False),
    (512, False),
    (512, True),
)


class ConvBlock(nn.Sequential):
    """conv3x3 (with bias) + BN + ReLU, then the max-pool when the block closes a stage.

    The pool belongs to the block it closes, so an IC after such a block sees the pooled map
    (for example 64 x 16 x 16 after block 2 at 32 px).
    """

    def __init__(self, in_channels: int, out_channels: int, pool: bool) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=True),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
        if pool:
            layers.append(nn.MaxPool2d(2))
        super().__init__(*layers)


class VGG16(CNN):
    """VGG16-BN: no stem, 13 conv blocks, a 3-layer FC head.

    Head at 32 px: 512 -> 512 (ReLU, Dropout) -> 512 (Dropout) -> C; at 64 px the flattened
    2x2x512 map gives 2048 -> 2048 (ReLU, Dropout) -> 1024 (Dropout) -> C, as the paper's
    Tiny ImageNet model. ``width`` scales the conv channels and the hidden FC sizes.
    """

    DEFAULT_IC_POSITIONS = (1, 3, 5, 6, 8, 9)  # after blocks 2, 4, 6, 7, 9, 10 (1-based)

    def __init__(
        self,
        num_classes: int,
        image_size: int = 32,
        width: float = 1.0,
        init: str = DEFAULT_INIT,
    ) -> None:
        num_classes, image_size, width = check_cnn_args(num_classes, image_size, width)
        init = check_init(init)
        blocks: list[nn.Module] = []
        in_channels = 3
        for channels, pool in VGG16_BLOCKS:
            out_channels = scale_channels(channels, width)
            blocks.append(ConvBlock(in_channels, out_channels, pool))
            in_channels = out_channels
        final_size = image_size // 32  # five 2x2 pools
        flat = in_channels * final_size * final_size
        hidden1, hidden2 = (512, 512) if image_size == 32 else (2048, 1024)
        hidden1, hidden2 = scale_channels(hidden1, width), scale_channels(hidden2, width)
        head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, hidden1),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(hidden1, hidden2),
            nn.Dropout(0.5),
            nn.Linear(hidden2, num_classes),
        )
        config = {
            "kind": "cnn",
            "arch": "vgg16",
            "num_classes": num_classes,
            "image_size": image_size,
            "width": width,
            "init": init,
        }
        super().__init__(nn.Identity(), blocks, head, config)
        init_weights_(self, init)
