"""Grad-CAM for any exit of an SDN (or a plain CNN): where in the image an exit looks.

Grad-CAM (Selvaraju et al., 2017) weighs a layer's feature maps by the spatially averaged
gradient of one class score with respect to them, sums over channels and keeps the positive
part. Here the class score is one exit's logit, and the layer is the backbone block that feeds
that exit (``ic_positions[k]`` for IC k, the last block for the final head), computed with
captum's ``LayerGradCam``. The paper uses these maps to show that on a destructive sample an
early IC attends to the object while the final head looks elsewhere.

One adjustment: a map of 1x1 or 2x2 positions says nothing about where an exit looks, and at
32 px VGG-16's last block is 1x1 and MobileNet's 2x2 (their final pooling sits inside the last
block). So the block used is the feeding block, or, when its output is smaller than
``min_size`` positions on a side, the deepest earlier block whose output is at least that large
(the gradient still comes from the exit asked for). :attr:`GradCam.block` says which block was
used, and the report names it.

Maps are upsampled (bilinear) to the image size and scaled to [0, 1] per image (divided by the
image's own maximum; an all-zero map stays zero), so they can be laid over the image. Models run
in eval mode (every submodule's flag restored afterwards) and their parameters are not changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from sdn.errors import SDNError
from sdn.models import SDN, model_outputs
from sdn.models.backbone import CNN
from sdn.models.flops import eval_mode
from sdn.models.runtime import softmax_statistics

DEFAULT_MIN_SIZE = 4


@dataclass(frozen=True)
class GradCam:
    """Grad-CAM maps of one exit for a batch of images."""

    maps: np.ndarray  # float32 [B, H, W], each in [0, 1], at the image's size
    exit_index: int  # the exit explained (E-1 = final head)
    block: int  # 0-based backbone block whose output was attributed
    map_size: int  # that block's spatial size (positions per side) before upsampling
    targets: np.ndarray  # int64 [B]: the class each map explains


def _backbone(model: nn.Module) -> CNN:
    if isinstance(model, SDN):
        return model.backbone
    if isinstance(model, CNN):
        return model
    raise SDNError(f"Grad-CAM needs an SDN or a CNN from sdn.models, got {type(model).__name__}")


def num_exits(model: nn.Module) -> int:
    return model.num_exits if isinstance(model, SDN) else 1


def feeding_block(model: nn.Module, exit_index: int) -> int:
    """The 0-based backbone block whose output exit ``exit_index`` reads."""
    e = num_exits(model)
    if (
        isinstance(exit_index, bool)
        or not isinstance(exit_index, int | np.integer)
        or not (-e <= exit_index < e)
    ):
        raise SDNError(f"exit {exit_index!r} out of range; the model has exits 0..{e - 1}")
    exit_index = int(exit_index) % e
    blocks = len(_backbone(model).blocks)
    if exit_index == e - 1:
        return blocks - 1
    assert isinstance(model, SDN)
    return model.ic_positions[exit_index]


@torch.no_grad()
def block_sizes(model: nn.Module, image_size: int) -> list[int]:
    """The spatial size (positions per side) of each backbone block's output for one image."""
    backbone = _backbone(model)
    param = next(backbone.parameters())
    x = torch.zeros(1, 3, image_size, image_size, device=param.device, dtype=param.dtype)
    sizes = []
    with eval_mode(backbone):
        x = backbone.stem(x)
        for block in backbone.blocks:
            x = block(x)
            sizes.append(int(x.shape[-1]) if x.dim() == 4 else 1)
    return sizes


def gradcam_block(model: nn.Module, exit_index: int, image_size: int,
                  min_size: int = DEFAULT_MIN_SIZE) -> tuple[int, int]:  # fmt: skip
    """(block, its size): the block feeding the exit, or the deepest earlier one whose output is
    at least ``min_size`` positions on a side (the first block when none is)."""
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 1:
        raise SDNError(f"min_size {min_size!r} must be a positive integer")
    sizes = block_sizes(model, image_size)
    block = feeding_block(model, exit_index)
    while block > 0 and sizes[block] < min_size:
        block -= 1
    return block, sizes[block]


@torch.no_grad()
def exit_predictions(model: nn.Module, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(preds int64 [B, E], max-softmax confidences float32 [B, E]) of every exit, computed as
    the analysis pass computes the stored ones (``softmax_statistics``), in eval mode."""
    with eval_mode(model):
        outs = model_outputs(model, images)
    stats = [softmax_statistics(o) for o in outs]
    conf = torch.stack([s[0] for s in stats], dim=1).cpu().numpy().astype(np.float32)
    pred = torch.stack([s[1] for s in stats], dim=1).cpu().numpy().astype(np.int64)
    return pred, conf


def gradcam(
    model: nn.Module,
    images: torch.Tensor,
    exit_index: int,
    targets: torch.Tensor | np.ndarray | None = None,
    min_size: int = DEFAULT_MIN_SIZE,
) -> GradCam:
    """Grad-CAM maps of exit ``exit_index`` for normalised ``images`` ([B, 3, H, W], as the
    model reads them). ``targets`` are the classes to explain per image (default: the exit's own
    prediction)."""
    from captum.attr import LayerAttribution, LayerGradCam

    if images.dim() != 4 or images.shape[1] != 3 or images.shape[-1] != images.shape[-2]:
        raise SDNError(f"images must be [B, 3, H, H], got {tuple(images.shape)}")
    size = int(images.shape[-1])
    e = num_exits(model)
    feeding_block(model, exit_index)  # checks the exit
    exit_index = int(exit_index) % e
    block, map_size = gradcam_block(model, exit_index, size, min_size)
    if targets is None:
        preds, _ = exit_predictions(model, images)
        target = torch.as_tensor(preds[:, exit_index], device=images.device)
    else:
        target = torch.as_tensor(np.asarray(targets), dtype=torch.int64, device=images.device)
        if target.shape != (images.shape[0],):
            raise SDNError(
                f"targets must hold one class per image ({images.shape[0]}), got "
                f"{tuple(target.shape)}"
            )

    def exit_logits(x: torch.Tensor) -> torch.Tensor:
        return model_outputs(model, x)[exit_index]

    layer = _backbone(model).blocks[block]
    with eval_mode(model):
        attribution = LayerGradCam(exit_logits, layer).attribute(
            images, target=target, relu_attributions=True
        )
        upsampled = LayerAttribution.interpolate(attribution, (size, size), "bilinear")
    maps = upsampled.detach()[:, 0].float().clamp_min(0).cpu().numpy()
    peak = maps.reshape(len(maps), -1).max(axis=1) if len(maps) else np.zeros(0)
    scale = np.where(peak > 0, peak, 1.0).astype(np.float32)
    maps = (maps / scale[:, None, None]).astype(np.float32)
    return GradCam(maps, exit_index, block, map_size, target.cpu().numpy().astype(np.int64))
