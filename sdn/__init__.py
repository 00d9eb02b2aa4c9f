"""Shallow-Deep Networks in plain PyTorch: models with internal classifiers, training, early exit
and overthinking metrics. Imports no Ray, MLflow, SQL or Parquet library."""

from sdn.errors import SDNError
from sdn.models import SDN, build_cnn, build_model, build_sdn

__all__ = ["SDN", "SDNError", "build_cnn", "build_model", "build_sdn"]
