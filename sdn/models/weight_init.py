"""Weight initialisation schemes: the reference implementation's (the default) or PyTorch's.

``reference`` is what the paper's code does for VGG, ResNet and WRN (and applies to their ICs):

- every ``Conv2d``: ``normal(0, sqrt(2 / (kh * kw * out_channels)))`` (He-normal, fan-out), bias 0;
- every ``Linear``: ``normal(0, 0.01)``, bias 0;
- every ``BatchNorm``: weight 1, bias 0.

It is applied to MobileNet and to every IC head as well (docs/architecture.md, "Initialisation",
says why). The formula is taken from the weight's shape, so a depthwise convolution (one input
channel per group) also gets ``sqrt(2 / (k * k * out_channels))``, as the fan-out rule of
torchvision's MobileNets does.

``pytorch`` leaves each layer's own default (Kaiming-uniform with a = sqrt(5) and a uniform bias
for convolutions and linear layers): what the project used before the reference scheme became the
default. The IC's mixed-pooling scalar ``alpha`` is not a layer, so neither scheme touches it: it
stays uniform in [0, 1) as the spec says.

Both schemes draw from torch's global generator only, so a seeded construction is deterministic.
"""

from __future__ import annotations

import math

from torch import nn

from sdn.errors import choice_error

INITS: tuple[str, ...] = ("reference", "pytorch")
DEFAULT_INIT = "reference"
LINEAR_STD = 0.01

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def check_init(init: object) -> str:
    """Return ``init`` if it names a scheme, else raise the standard one-line choice error."""
    if not isinstance(init, str) or init not in INITS:
        raise choice_error("init", init, INITS)
    return init


def conv_std(conv: nn.Conv2d) -> float:
    """The reference's standard deviation for a convolution: sqrt(2 / (kh * kw * out_channels))."""
    kh, kw = conv.kernel_size
    return math.sqrt(2.0 / (kh * kw * conv.out_channels))


def reference_init_(module: nn.Module) -> nn.Module:
    """Re-initialise every Conv2d, Linear and BatchNorm inside ``module`` in place (see above)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, conv_std(m))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, LINEAR_STD)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, _BATCH_NORMS) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


def init_weights_(module: nn.Module, init: str) -> nn.Module:
    """Apply the scheme ``init`` to ``module`` in place; ``pytorch`` leaves it as constructed."""
    if check_init(init) == "reference":
        reference_init_(module)
    return module
