"""Shallow-Deep Networks in plain PyTorch: models with internal classifiers, training, early exit
and overthinking metrics. Imports no Ray, MLflow, SQL or Parquet library.

Names load lazily, so that ``import sdn.errors`` or ``import sdn.results`` (which storage and the
CLI need early) does not pay for importing torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from sdn.errors import SDNError

if TYPE_CHECKING:
    from sdn.models import SDN, build_cnn, build_model, build_sdn

__all__ = ["SDN", "SDNError", "build_cnn", "build_model", "build_sdn"]


def __getattr__(name: str) -> Any:
    if name in {"SDN", "build_cnn", "build_model", "build_sdn"}:
        return getattr(import_module("sdn.models"), name)
    raise AttributeError(f"module 'sdn' has no attribute {name!r}")
