"""SQLite connections for the catalogue: per-connection settings, write locking and retries.

Why each setting:

* ``journal_mode=WAL``: readers never block the writer and the writer never blocks readers.
* ``busy_timeout``: a writer waiting for another's lock sleeps and retries inside SQLite instead of
  failing at once with "database is locked".
* ``foreign_keys=ON``: SQLite leaves foreign keys (and so ``ON DELETE CASCADE``) off by default.
* ``synchronous=NORMAL``: with WAL this is still crash-safe (no corruption); a power cut may lose
  the last commits, which is acceptable for derived data and makes each commit cheap.
* Writes start with ``BEGIN IMMEDIATE``, taking the write lock up front. With a plain (deferred)
  BEGIN, a transaction that read first and then writes can hit SQLITE_BUSY that the busy handler
  cannot wait out, because another writer committed in between.

Python's ``sqlite3`` issues its own BEGIN only before DML, which breaks both transactional DDL (the
migrations) and the choice of BEGIN mode; as SQLAlchemy's documentation recommends, it is switched
off and SQLAlchemy emits BEGIN itself.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from storage.errors import StorageError, one_line

if TYPE_CHECKING:  # SQLAlchemy is imported by writers only: readers use plain sqlite3
    from sqlalchemy import Connection, Engine

T = TypeVar("T")
SQLITE_MAGIC = b"SQLite format 3\x00"
WRITE = {"sdn_write": True}
MMAP_BYTES = 256 << 20
CACHE_KIB = 32 << 10  # execution option that makes a transaction BEGIN IMMEDIATE


def check_sqlite_file(path: Path) -> None:
    """Refuse a path that is not (or cannot become) a SQLite file, naming it."""
    if path.is_dir():
        raise StorageError(f"catalogue {path} is a directory, not a SQLite database file")
    if path.is_file() and path.stat().st_size > 0:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
        if head != SQLITE_MAGIC:
            raise StorageError(f"catalogue {path} is not a SQLite database file")


def make_engine(path: Path, busy_timeout_s: float, read_only: bool = False) -> Engine:
    """An engine whose every connection has the settings above.

    Connections are pooled: opening one runs the pragmas, and closing the last connection to a
    WAL database checkpoints and removes the WAL file (measured: ~15 ms each way), which would
    dominate every small write. A forked child must not reuse its parent's pooled connections;
    ``Catalogue`` re-creates the engine when it finds itself in a new process.

    ``read_only``: every connection comes from :func:`read_only_connection` and only the reading
    settings are applied (switching to WAL is a write).
    """
    from sqlalchemy import create_engine, event

    if read_only:
        return _read_only_engine(path, busy_timeout_s)
    engine = create_engine(f"sqlite:///{path}", pool_size=4, max_overflow=8)
    busy_ms = int(busy_timeout_s * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN (see module doc)
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")  # first: the next pragma may wait
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        # Reads through a memory map and a larger page cache: the early-exit query touches one
        # index entry per run, and at 10,000 runs that must not mean 10,000 read() calls.
        cursor.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")
        cursor.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("sdn_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _read_only_engine(path: Path, busy_timeout_s: float) -> Engine:
    from sqlalchemy import create_engine, event

    engine = create_engine(
        "sqlite://", creator=lambda: read_only_connection(path, busy_timeout_s), pool_size=2
    )

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")

    return engine


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def with_retry(
    path: Path, action: Callable[[], T], *, deadline_s: float = 120.0, what: str = "write"
) -> T:
    """Run ``action`` (one whole transaction), retrying while the database is locked.

    SQLite's busy handler already waits up to ``busy_timeout``; this catches the cases it cannot
    (opening a file mid-recovery, switching to WAL while another process creates the file) with
    exponential backoff and jitter, so that many processes do not retry in lockstep.
    """
    from sqlalchemy.exc import DBAPIError, OperationalError

    start = time.monotonic()
    delay = 0.01
    while True:
        try:
            return action()
        except DBAPIError as exc:  # integrity errors, "file is not a database", locks...
            reason = exc.orig or exc
            if not (isinstance(exc, OperationalError) and _is_lock_error(reason)):
                raise StorageError(f"catalogue {path}: {what} failed: {one_line(reason)}") from None
            if time.monotonic() - start > deadline_s:
                raise StorageError(
                    f"catalogue {path} stayed locked for {deadline_s:.0f} s during {what}; "
                    "is another process holding a long transaction?"
                ) from None
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 1.0)


def check_catalogue_file(path: Path) -> None:
    """Refuse, naming the path, anything a reader must not open as a catalogue: a missing file,
    a folder, an empty file (a writer would turn it into a catalogue; a reader reports it) or a
    file that is not SQLite."""
    if not path.exists():
        raise StorageError(f"no catalogue at {path}")
    check_sqlite_file(path)
    if path.stat().st_size == 0:
        raise StorageError(
            f"catalogue {path} is an empty file (0 bytes), not a catalogue; a sweep launch or "
            "`sdn catalogue rebuild` writes one"
        )


def _read_only_file_system(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _is_wal_file(path: Path) -> bool:
    """Whether the header says WAL mode (file format versions 2 at offsets 18 and 19)."""
    with open(path, "rb") as fh:
        head = fh.read(20)
    return len(head) == 20 and head[18] == 2


def read_only_uri(path: Path) -> str:
    """The ``file:`` URI a reader opens ``path`` with, so that reading creates nothing.

    ``mode=ro`` keeps SQLite's locking (a writer may be busy). But a read-only connection to a WAL
    database whose ``-wal`` file is missing creates ``-wal`` and ``-shm`` and cannot remove them
    on close, and on a read-only file system it cannot create them at all; in those cases the file
    is opened ``immutable=1`` (no locks, no side files). Without a ``-wal`` file no writer has the
    database open at that moment, and a read takes milliseconds. ``as_uri`` percent-encodes the
    path (spaces, ``?``, ``#``, ``%`` and non-ASCII letters are safe).
    """
    uri = path.resolve().as_uri() + "?mode=ro"
    no_wal = not Path(f"{path}-wal").exists()
    if _read_only_file_system(path) or (no_wal and _is_wal_file(path)):
        uri += "&immutable=1"
    return uri


def read_only_connection(path: Path, busy_timeout_s: float) -> sqlite3.Connection:
    """A plain sqlite3 connection that cannot write: opened read-only (see
    :func:`read_only_uri`), ``query_only`` on, and an authorizer that refuses ATTACH/DETACH and
    pragmas that change settings. Checks the file first (:func:`check_catalogue_file`)."""
    check_catalogue_file(path)
    try:
        con = sqlite3.connect(
            read_only_uri(path),
            uri=True,
            timeout=busy_timeout_s,
            isolation_level=None,
            check_same_thread=False,  # SQLAlchemy's pool may hand it to another thread
        )
        con.execute("PRAGMA query_only = ON")
        con.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")  # as the writers' connections
        con.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open catalogue {path} read-only: {one_line(exc)}") from None
    con.set_authorizer(_authorize)
    return con


class QueryTimeout(StorageError):
    """A query ran longer than its time limit and was stopped."""


@contextmanager
def time_limit(con: sqlite3.Connection, timeout_s: float | None) -> Iterator[None]:
    """Stop whatever ``con`` runs inside the block after ``timeout_s`` seconds (QueryTimeout), or
    at once on Ctrl-C (KeyboardInterrupt), through SQLite's progress handler.

    Python only runs signal handlers between bytecodes, and Python's sqlite3 swallows an exception
    raised inside a progress handler, so Ctrl-C during a long query would wait for the query. Here
    SIGINT (in the main thread) only sets a flag; the progress handler, called every few thousand
    SQLite instructions, sees it and aborts the statement, and the block raises KeyboardInterrupt.
    """
    interrupted = False
    deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def progress() -> int:
        if interrupted or (deadline is not None and time.monotonic() > deadline):
            return 1
        return 0

    def on_sigint(_signum: int, _frame: Any) -> None:
        nonlocal interrupted
        interrupted = True

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, on_sigint)
    con.set_progress_handler(progress, 2000)
    try:
        yield
    except sqlite3.OperationalError as exc:
        if interrupted:
            raise KeyboardInterrupt from None
        if deadline is not None and time.monotonic() > deadline and "interrupt" in str(exc):
            raise QueryTimeout(f"stopped after the time limit of {timeout_s:g} s") from None
        raise
    finally:
        con.set_progress_handler(None, 0)
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if interrupted:
        raise KeyboardInterrupt


# Pragmas that only report; any argument is allowed (table names, limits).
_REPORTING_PRAGMAS = {
    "table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
    "foreign_key_list", "foreign_key_check", "integrity_check", "quick_check",
    "collation_list", "function_list", "module_list", "pragma_list", "compile_options",
    "database_list",
}  # fmt: skip
# Pragmas whose value may be read (no argument) but not set.
_READABLE_PRAGMAS = {
    "user_version", "schema_version", "application_id", "journal_mode", "page_size",
    "page_count", "freelist_count", "encoding", "foreign_keys", "data_version", "query_only",
    "busy_timeout", "synchronous", "auto_vacuum", "cache_size", "read_uncommitted",
}  # fmt: skip


def _authorize(action: int, arg1: str | None, arg2: str | None, _db: Any, _trigger: Any) -> int:
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_PRAGMA:
        name = (arg1 or "").lower()
        if name in _REPORTING_PRAGMAS or (name in _READABLE_PRAGMAS and arg2 is None):
            return sqlite3.SQLITE_OK
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK
