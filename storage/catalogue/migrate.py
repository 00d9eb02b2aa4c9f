"""Create or upgrade a catalogue's schema with Alembic, from inside the package.

The scripts ship in ``storage/migrations``; no ``alembic.ini`` is needed because the configuration
is built here. The revision is kept in ``sdn_alembic_version`` rather than Alembic's default table
name, so pointing the catalogue at another application's database (MLflow's ``mlflow.db`` uses
Alembic too) is recognised as a mistake instead of being "upgraded".
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect

from storage.catalogue.db import WRITE
from storage.errors import StorageError

SCRIPT_LOCATION = Path(__file__).resolve().parent.parent / "migrations"
VERSION_TABLE = "sdn_alembic_version"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at the packaged scripts (and at ``connection`` when given)."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.attributes["connection"] = connection
    return config


def known_revisions() -> list[str]:
    """Revision ids this code knows, newest first."""
    script = ScriptDirectory.from_config(alembic_config())
    return [r.revision for r in script.walk_revisions()]


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "storage/migrations has no revisions"
    return head


def current_revision(connection: Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def upgrade(engine: Engine, path: Path) -> None:
    """Bring the catalogue at ``path`` to the newest schema, or refuse it with a clear reason.

    Runs in one ``BEGIN IMMEDIATE`` transaction: when several processes open a new catalogue at
    once, the first creates the schema and the others wait, then find it current. SQLite's DDL is
    transactional, so a failed migration leaves the file as it was.
    """
    with engine.execution_options(**WRITE).begin() as conn:
        current = current_revision(conn)
        head = head_revision()
        if current == head:
            return
        if current is None:
            tables = set(inspect(conn).get_table_names())
            if tables:
                raise StorageError(
                    f"catalogue {path} is a SQLite database of another application "
                    f"(tables: {', '.join(sorted(tables)[:5])}); choose a new catalogue file"
                )
        elif current not in known_revisions():
            raise StorageError(
                f"catalogue {path} has schema revision {current}, newer than this sdn-workflows "
                f"(knows up to {head}); upgrade sdn-workflows"
            )
        command.upgrade(alembic_config(conn), "head")
