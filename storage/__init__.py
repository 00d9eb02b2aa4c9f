"""Persistence for sdn-workflows: per-exit predictions in Parquet, the SQLite results catalogue and
(in ``storage.registry``) the MLflow model registry. Imports no Ray.

Names are loaded lazily so that a worker that only writes Parquet does not import SQLAlchemy, and
one that only queries the catalogue does not import pyarrow or DuckDB.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from storage.errors import StorageError

if TYPE_CHECKING:
    from storage.catalogue import Catalogue, RunRecord
    from storage.predictions import PredictionStore, RunKey

_LAZY = {
    "PredictionStore": "storage.predictions",
    "RunKey": "storage.predictions",
    "Catalogue": "storage.catalogue",
    "RunRecord": "storage.catalogue",
}

__all__ = ["Catalogue", "PredictionStore", "RunKey", "RunRecord", "StorageError"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'storage' has no attribute {name!r}")
