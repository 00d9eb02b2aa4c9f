"""Architecture names -> backbone classes, and the builders every other module uses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from sdn.errors import SDNError, choice_error
from sdn.models.backbone import CNN
from sdn.models.mobilenet import MobileNetV1
from sdn.models.resnet import ResNet56
from sdn.models.sdn import SDN
from sdn.models.vgg import VGG16
from sdn.models.weight_init import DEFAULT_INIT, check_init, init_weights_
from sdn.models.wrn import WRN32_4

# Iterating gives the names; each class carries its paper IC positions (DEFAULT_IC_POSITIONS).
ARCHITECTURES: dict[str, type[CNN]] = {
    "vgg16": VGG16,
    "resnet56": ResNet56,
    "wrn32_4": WRN32_4,
    "mobilenet": MobileNetV1,
}

MODEL_KINDS = ("cnn", "sdn")
# ``init`` is optional: configs stored before it existed lack it and build with DEFAULT_INIT (their
# weights are always loaded over the fresh ones, so the scheme does not matter for them).
_CONFIG_KEYS = {
    "cnn": {"kind", "arch", "num_classes", "image_size", "width", "init"},
    "sdn": {"kind", "arch", "num_classes", "image_size", "width", "init", "ic_positions"},
}


def build_cnn(
    arch: str,
    num_classes: int,
    image_size: int = 32,
    width: float = 1.0,
    init: str = DEFAULT_INIT,
) -> CNN:
    """A freshly initialised backbone CNN of architecture ``arch``.

    ``init`` is ``"reference"`` (the paper code's scheme, the default) or ``"pytorch"`` (each
    layer's own default); see ``sdn.models.weight_init``.
    """
    if arch not in ARCHITECTURES:
        raise choice_error("architecture", arch, ARCHITECTURES)
    return ARCHITECTURES[arch](num_classes, image_size, width, init)


def build_sdn(
    arch: str,
    num_classes: int,
    image_size: int = 32,
    width: float = 1.0,
    ic_positions: Sequence[int] | None = None,
    init: str = DEFAULT_INIT,
) -> SDN:
    """A freshly initialised SDN; ``ic_positions`` (0-based blocks) default to the paper's.

    ``init`` applies to the backbone and to the IC heads alike.
    """
    init = check_init(init)
    model = SDN(build_cnn(arch, num_classes, image_size, width, init), ic_positions)
    init_weights_(model.ics, init)
    return model


def build_model(config: Mapping[str, Any]) -> CNN | SDN:
    """Rebuild a CNN or SDN (fresh weights) from its ``config`` dict; unknown keys are rejected."""
    if not isinstance(config, Mapping):
        raise SDNError(f"a model config must be a dict, got {config!r}")
    kind = config.get("kind")
    if kind not in MODEL_KINDS:
        raise choice_error("model kind", kind, MODEL_KINDS)
    unknown = sorted(set(config) - _CONFIG_KEYS[kind])
    if unknown:
        raise SDNError(
            f"unknown {kind} config keys {unknown!r}; allowed: {sorted(_CONFIG_KEYS[kind])!r}"
        )
    missing = [key for key in ("arch", "num_classes") if key not in config]
    if missing:
        raise SDNError(f"model config lacks {missing!r}: {dict(config)!r}")
    args = {
        "arch": config["arch"],
        "num_classes": config["num_classes"],
        "image_size": config.get("image_size", 32),
        "width": config.get("width", 1.0),
        "init": config.get("init", DEFAULT_INIT),
    }
    if kind == "cnn":
        return build_cnn(**args)
    return build_sdn(**args, ic_positions=config.get("ic_positions"))


def model_outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every exit's logits: an SDN's list, or ``[logits]`` for a plain CNN (one exit)."""
    if isinstance(model, SDN):
        return model(x)
    return [model(x)]
