"""Alembic environment for the catalogue.

``storage.catalogue.migrate`` runs it with an open connection that already holds the write lock
(``config.attributes["connection"]``), so one process migrates while others wait. For authoring a
new revision, ``alembic -c`` with a config that sets ``sqlalchemy.url`` also works.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from storage.catalogue.migrate import VERSION_TABLE
from storage.catalogue.models import Base


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies the table
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url, or migrate through storage.catalogue.Catalogue")
    with create_engine(url).begin() as conn:
        _run(conn)
