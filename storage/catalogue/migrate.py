"""Create or upgrade a catalogue's schema with Alembic, from inside the package.

The scripts ship in ``storage/migrations``; no ``alembic.ini`` is needed because the configuration
is built here. The revision is kept in ``sdn_alembic_version`` rather than Alembic's default table
name, so pointing the catalogue at another application's database (MLflow's ``mlflow.db`` uses
Alembic too) is recognised as a mistake instead of being "upgraded".

Only writers migrate (a sweep launch, ``rebuild``, ``sdn catalogue upgrade``). Readers compare the
stored revision with :func:`revision_chain`, which reads the revision scripts' ``revision`` and
``down_revision`` assignments with ``ast`` instead of importing Alembic (about 0.3 s): a read
command must stay fast and must never change the file it reads.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path
from typing import TYPE_CHECKING

from storage.errors import StorageError

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy import Connection, Engine

SCRIPT_LOCATION = Path(__file__).resolve().parent.parent / "migrations"
VERSION_TABLE = "sdn_alembic_version"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at the packaged scripts (and at ``connection`` when given)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.attributes["connection"] = connection
    return config


@functools.cache
def revision_chain() -> tuple[str, ...]:
    """Revision ids of the packaged scripts, newest first, without importing Alembic.

    Each script in ``migrations/versions`` assigns ``revision`` and ``down_revision`` at module
    level (Alembic's own convention); the chain runs from the one revision nothing revises.
    """
    parents: dict[str, str | None] = {}
    for script in sorted((SCRIPT_LOCATION / "versions").glob("*.py")):
        values: dict[str, object] = {}
        for node in ast.parse(script.read_text(encoding="utf-8")).body:
            target = node.targets[0] if isinstance(node, ast.Assign) else None
            if isinstance(node, ast.AnnAssign):
                target = node.target
            if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
                value = node.value
                values[target.id] = value.value if isinstance(value, ast.Constant) else None
        if isinstance(values.get("revision"), str):
            down = values.get("down_revision")
            parents[str(values["revision"])] = down if isinstance(down, str) else None
    heads = set(parents) - {p for p in parents.values() if p}
    if len(heads) != 1:
        raise StorageError(f"storage/migrations has {len(heads)} head revisions; expected one")
    chain, current = [], heads.pop()
    while current is not None and current not in chain:
        chain.append(current)
        current = parents.get(current)
    return tuple(chain)


def known_revisions() -> list[str]:
    """Revision ids this code knows, newest first."""
    return list(revision_chain())


def head_revision() -> str:
    return revision_chain()[0]


def current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def upgrade(engine: Engine, path: Path) -> tuple[str | None, str]:
    """Bring the catalogue at ``path`` to the newest schema, or refuse it with a clear reason;
    return (revision before, revision after).

    Runs in one ``BEGIN IMMEDIATE`` transaction: when several processes open a new catalogue at
    once, the first creates the schema and the others wait, then find it current. SQLite's DDL is
    transactional, so a failed migration leaves the file as it was.

    Foreign keys are switched off around the transaction, as SQLite's procedure for changing a
    table's schema says (the pragma is a no-op inside a transaction): a migration that rebuilds a
    parent table (``runs``) drops the old copy, and with foreign keys on that drop would cascade
    into every child row. ``PRAGMA foreign_key_check`` must come back empty before the commit.
    """
    from alembic import command
    from sqlalchemy import inspect

    from storage.catalogue.db import WRITE

    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        raw.execute("PRAGMA foreign_keys = OFF")
        try:
            with conn.execution_options(**WRITE).begin():
                current = current_revision(conn)
                head = head_revision()
                if current == head:
                    return current, head
                if current is None:
                    tables = set(inspect(conn).get_table_names())
                    if tables:
                        raise StorageError(
                            f"catalogue {path} is a SQLite database of another application "
                            f"(tables: {', '.join(sorted(tables)[:5])}); choose a new catalogue file"
                        )
                elif current not in known_revisions():
                    raise StorageError(
                        f"catalogue {path} has schema revision {current}, newer than this "
                        f"sdn-workflows (knows up to {head}); upgrade sdn-workflows"
                    )
                command.upgrade(alembic_config(conn), "head")
                broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise StorageError(
                        f"catalogue {path}: upgrading to {head} would leave {len(broken)} rows "
                        f"pointing at missing rows (e.g. table {broken[0][0]}); nothing was changed"
                    )
                return current, head
        finally:
            raw.execute("PRAGMA foreign_keys = ON")
