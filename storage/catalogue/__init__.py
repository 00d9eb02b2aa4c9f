"""The SQLite results catalogue: schema (``models``), migrations, writes (``store``), queries, and
``rebuild`` (the whole catalogue again from MLflow and the Parquet predictions)."""

from storage.catalogue.rebuild import rebuild
from storage.catalogue.store import MODES, STATUSES, Catalogue, RunRecord

__all__ = ["MODES", "STATUSES", "Catalogue", "RunRecord", "rebuild"]
