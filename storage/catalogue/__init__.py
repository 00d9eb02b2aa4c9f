"""The SQLite results catalogue: schema (``models``), migrations, writes (``store``), queries,
read-only access without pandas or SQLAlchemy (``readonly``), and ``rebuild`` (the whole catalogue
again from MLflow and the Parquet predictions).

Names load lazily, so that a read command importing ``storage.catalogue.readonly`` does not pay
for SQLAlchemy, Alembic, pandas and MLflow (``rebuild``)."""

from __future__ import annotations

import sys
import types
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from storage.catalogue.rebuild import rebuild
    from storage.catalogue.store import MODES, STATUSES, Catalogue, RunRecord

_LAZY = {
    "MODES": "storage.catalogue.store",
    "STATUSES": "storage.catalogue.store",
    "Catalogue": "storage.catalogue.store",
    "RunRecord": "storage.catalogue.store",
    "rebuild": "storage.catalogue.rebuild",
}

__all__ = ["MODES", "STATUSES", "Catalogue", "RunRecord", "rebuild"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'storage.catalogue' has no attribute {name!r}")


class _Package(types.ModuleType):
    """Keeps ``storage.catalogue.rebuild`` the function, as the eager package did: importing the
    submodule of the same name would otherwise rebind the package attribute to the module."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "rebuild" and isinstance(value, types.ModuleType):
            value = value.rebuild
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
