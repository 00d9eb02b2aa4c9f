"""Backbones, internal classifiers, the SDN wrapper, FLOP counting and the model builders.

See docs/architecture.md ("Model API") for the contract these names keep.
"""

from sdn.models.backbone import CNN
from sdn.models.flops import count_flops
from sdn.models.ic import InternalClassifier
from sdn.models.registry import ARCHITECTURES, build_cnn, build_model, build_sdn, model_outputs
from sdn.models.sdn import SDN
from sdn.models.weight_init import DEFAULT_INIT, INITS

__all__ = [
    "ARCHITECTURES",
    "CNN",
    "DEFAULT_INIT",
    "INITS",
    "SDN",
    "InternalClassifier",
    "build_cnn",
    "build_model",
    "build_sdn",
    "count_flops",
    "model_outputs",
]
