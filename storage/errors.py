"""The one error type ``storage`` raises for problems a user can see and fix.

Library exceptions (pyarrow, SQLAlchemy, sqlite3, DuckDB) are translated at the boundary into a
one-line :class:`StorageError` that names the file or value at fault, so the CLI can print it as is.
"""

from __future__ import annotations

from collections.abc import Iterable

from sdn.errors import SDNError, ServiceUnreachable
from sdn.errors import choice_error as sdn_choice_error


class StorageError(SDNError):
    """A stored file or database is missing, corrupted, of an unknown version, or misused."""


class StoreUnreachable(StorageError, ServiceUnreachable):
    """An MLflow tracking server (or another remote store) did not answer within its bounded
    retries."""


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message: library errors often carry multi-line details."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def choice_error(kind: str, value: object, allowed: Iterable[object]) -> StorageError:
    """The project's "unknown X" message (as ``sdn.errors.choice_error``), as a StorageError."""
    return StorageError(str(sdn_choice_error(kind, value, allowed)))
