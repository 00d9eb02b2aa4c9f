"""The SQLite results catalogue: schema (``models``), migrations, writes (``store``) and queries."""

from storage.catalogue.store import MODES, STATUSES, Catalogue, RunRecord

__all__ = ["MODES", "STATUSES", "Catalogue", "RunRecord"]
