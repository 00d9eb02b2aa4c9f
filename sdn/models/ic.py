"""The internal classifier (IC) head: mixed max/avg pooling to about 4x4, flatten, one Linear."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

_NHWC = torch.channels_last


class MixedPool(nn.Module):
    """``alpha * maxpool_k(x) + (1 - alpha) * avgpool_k(x)`` with kernel = stride = k.

    ``alpha`` is one learnable scalar, initialised uniformly in [0, 1) and never clamped, as in
    the paper; the network may learn any blend (or extrapolate beyond it).
    """

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.alpha = nn.Parameter(torch.rand(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        # lerp(avg, max, a) = a * max + (1 - a) * avg in one kernel; alpha follows the
        # activations' dtype so mixed precision keeps half-precision maps.
        return torch.lerp(F.avg_pool2d(x, k), F.max_pool2d(x, k), self.alpha.to(x.dtype))

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


class InternalClassifier(nn.Module):
    """IC head for a ``channels x size x size`` feature map; returns logits (softmax is analysis).

    With ``size >= 4`` the map is mixed-pooled with k = size // 4 (4x4 for sizes 4, 8, 16, 32),
    which keeps every IC small whatever its depth; with ``size < 4`` there is no pooling (and no
    alpha).
    """

    def __init__(self, channels: int, size: int, num_classes: int) -> None:
        super().__init__()
        self.in_shape = (channels, size, size)
        self.pool: nn.Module = MixedPool(size // 4) if size >= 4 else nn.Identity()
        pooled = size // (size // 4) if size >= 4 else size
        self.linear = nn.Linear(channels * pooled * pooled, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pool(x)
        if p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=_NHWC):
            # A channels_last map flattened in NCHW order is copied, and in training the gradient
            # then reaches the pooling in NCHW while its input is NHWC, so the pooling backward
            # copies whole feature maps (4 activation-size copies per IC per step). Flattening in
            # the map's own order is a view; the Linear weight (small) is permuted to match, so
            # the parameters, the state dict and the result are those of the NCHW path.
            n, c, h, w = p.shape
            weight = self.linear.weight.view(-1, c, h, w).permute(0, 2, 3, 1).reshape(-1, h * w * c)
            return F.linear(p.permute(0, 2, 3, 1).reshape(n, -1), weight, self.linear.bias)
        return self.linear(p.flatten(1))
