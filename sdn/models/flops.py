"""FLOP counting with ``torch.utils.flop_counter``.

FLOPs here are 2 x multiply-adds of convolutions and matrix products, which is what
``FlopCounterMode`` reports. It takes a convolution's weight shape ``[out, in / groups, kh, kw]``
as given, so grouped and depthwise convolutions are counted correctly (the reference counter
multiplied depthwise layers by the channel count). BN, ReLU and pooling are not counted; they are a
small share of every model here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode and afterwards restore every submodule's own flag.

    Restoring per submodule (not ``module.train(previous)``) matters for IC-only training, where the
    frozen backbone stays in eval mode while the heads train. Eval mode also keeps BN running
    statistics untouched by shape probes and FLOP counts.
    """
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, flag in flags:
            m.training = flag


def count_call_flops(fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """Run ``fn(*args)`` without grad under a FLOP counter; return (FLOPs, result)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        result = fn(*args)
    return float(counter.get_total_flops()), result


def count_flops(module: nn.Module, example_input: torch.Tensor | tuple[Any, ...]) -> float:
    """FLOPs (2 x multiply-adds) of one forward of ``module`` on ``example_input``.

    The module runs in eval mode without grad (its modes are restored afterwards), so counting
    never changes BN statistics. The count scales with the batch size of ``example_input``.
    """
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    with eval_mode(module):
        flops, _ = count_call_flops(module, *args)
    return flops


def probe_input(module: nn.Module, image_size: int, batch_size: int = 1) -> torch.Tensor:
    """A zero image batch on the module's device and floating dtype, for probes and counts."""
    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return torch.zeros(batch_size, 3, image_size, image_size, device=device, dtype=dtype)
