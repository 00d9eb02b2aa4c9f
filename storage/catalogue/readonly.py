"""Reading the catalogue without changing it, and without pandas or SQLAlchemy.

Every read command of the CLI goes through :func:`open_reader`:

* the file is opened read-only (``mode=ro``, or ``immutable=1`` where a read-only connection would
  have to create WAL side files or the file system is read-only: ``db.read_only_uri``), with
  ``query_only`` on and the authorizer of ``db`` (no ATTACH, no pragma settings);
* a missing, empty, non-SQLite or foreign file is reported, never initialised; a catalogue whose
  schema is older than this code is reported with the command that upgrades it
  (``sdn catalogue upgrade``), never upgraded by a read;
* results are :class:`Rows` (column names and tuples): importing pandas alone takes longer than a
  whole read command may.

The early-exit query is ``storage.catalogue.early_exit``'s own code, run on this connection (it
only needs the raw sqlite3 connection, ``connection.driver_connection``), so the CLI and
``Catalogue.best_early_exit`` answer alike.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from storage.catalogue import db
from storage.catalogue.migrate import VERSION_TABLE, revision_chain
from storage.errors import StorageError, one_line

MODES = ("cnn", "ic_only", "sdn")
STATUSES = ("pending", "running", "trained", "done", "failed", "skipped")
SPLITS = ("val", "test")
JSON_COLUMNS = frozenset(
    {"config", "spec", "exits_per_output", "destructive_per_ic", "early_exit_exits"}
)
MAX_VALUE_BYTES = 64 << 20  # the largest string or blob a query may build


class CatalogueTooOld(StorageError):
    """The catalogue's schema predates this code; a writer (``sdn catalogue upgrade``) fixes it."""


class Rows:
    """A small result table: column names and one tuple per row (what pandas would be for)."""

    __slots__ = ("columns", "rows")

    def __init__(self, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.columns = list(columns)
        self.rows = [tuple(r) for r in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"Rows({len(self.rows)} x {self.columns})"

    @property
    def empty(self) -> bool:
        return not self.rows

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]

    def column(self, name: str) -> list[Any]:
        k = self.columns.index(name)
        return [row[k] for row in self.rows]

    @classmethod
    def from_records(
        cls, records: Sequence[Mapping[str, Any]], columns: Sequence[str] = ()
    ) -> Rows:
        names = list(columns) or list(dict.fromkeys(k for r in records for k in r))
        return cls(names, [tuple(r.get(c) for c in names) for r in records])

    @classmethod
    def from_frame(cls, frame: Any) -> Rows:
        """From a pandas DataFrame: NaN/NaT become None, timestamps ``datetime``s."""
        out = []
        for row in frame.itertuples(index=False, name=None):
            out.append(tuple(_plain(v) for v in row))
        return cls([str(c) for c in frame.columns], out)


def _plain(value: Any) -> Any:
    if value is None:
        return None
    if hasattr(value, "to_pydatetime"):  # pandas Timestamp (NaT is caught below)
        try:
            return value.to_pydatetime()
        except ValueError:
            return None
    if isinstance(value, float) and value != value:
        return None
    if type(value).__module__ == "numpy":
        return value.item() if hasattr(value, "item") else value
    if str(value) == "NaT":
        return None
    return value


class _Driver:
    def __init__(self, con: sqlite3.Connection) -> None:
        self.driver_connection = con


class Reader:
    """A read-only catalogue connection; see the module docstring."""

    def __init__(self, path: Path, con: sqlite3.Connection) -> None:
        self.path = path
        self.con = con

    # ---- plumbing
    def query(self, sql: str, params: Mapping[str, Any] | Sequence[Any] = ()) -> Rows:
        try:
            cursor = self.con.execute(sql, params)
            rows = cursor.fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"catalogue {self.path}: query failed: {one_line(exc)}") from None
        columns = [d[0] for d in cursor.description or ()]
        return Rows(columns, [_decode(columns, r) for r in rows])

    def close(self) -> None:
        self.con.close()

    # ---- what the CLI lists
    def sweeps(self) -> Rows:
        """Every sweep with its run counts by status, oldest first."""
        return self.query(
            "SELECT s.name AS sweep, s.created_at, s.code_version, COUNT(r.id) AS runs, "
            "COALESCE(SUM(r.status = 'done'), 0) AS done, "
            "COALESCE(SUM(r.status = 'failed'), 0) AS failed, "
            "COALESCE(SUM(r.status = 'skipped'), 0) AS skipped, "
            "COALESCE(SUM(r.status IN ('pending', 'running', 'trained')), 0) AS in_progress "
            "FROM sweeps AS s LEFT JOIN runs AS r ON r.sweep_id = s.id "
            "GROUP BY s.id ORDER BY s.created_at, s.name"
        )

    def runs(self, **filters: Any) -> Rows:
        """One row per run, the columns of ``Catalogue.runs`` plus ``best_val_accuracy`` (the
        highest validation accuracy of any of the run's exits, once analysed)."""
        terms, params = sql_conditions(filters)
        where = ("WHERE " + " AND ".join(terms.values())) if terms else ""
        return self.query(
            "SELECT r.run_id, s.name AS sweep, r.arch, r.dataset, r.train_mode, r.seed, r.poison, "
            "r.width, "
            "r.epochs, r.status, r.started_at, r.ended_at, r.mlflow_run_id, r.model_name, "
            "r.model_version, r.parquet_path, r.code_version, r.num_exits, r.cnn_flops, r.error, "
            "(SELECT max(e.accuracy) FROM exit_results AS e "
            " WHERE e.run_pk = r.id AND e.split = 'val') AS best_val_accuracy, r.config "
            f"FROM runs AS r JOIN sweeps AS s ON s.id = r.sweep_id {where} ORDER BY r.run_id",
            params,
        )

    @property
    def connection(self) -> Any:
        """What ``early_exit.best_early_exit`` reads from a SQLAlchemy connection: the
        ``driver_connection`` (here the read-only sqlite3 connection itself)."""
        return _Driver(self.con)

    def best_early_exit(
        self,
        max_accuracy_drop: float | None = None,
        cost_budget: float | None = None,
        *,
        policy: str = "confidence",
        delta: float | None = None,
        split: str = "test",
        per_run: bool = False,
        **filters: Any,
    ) -> Rows:
        """``Catalogue.best_early_exit``'s answer (the same code, ``early_exit.best_early_exit``,
        on this connection), as Rows."""
        from sdn.early_exit import Target
        from storage.catalogue import early_exit

        target = Target.of(max_accuracy_drop, cost_budget)
        terms, params = sql_conditions(filters)
        try:
            columns, rows = early_exit.best_early_exit(
                self, target, policy, delta, split, per_run, terms, params, as_frame=False
            )
        except sqlite3.Error as exc:
            raise StorageError(f"catalogue {self.path}: query failed: {one_line(exc)}") from None
        return Rows(columns, rows)

    def backdoor(self, **filters: Any) -> Rows:
        """``Catalogue.backdoor`` without pandas: per exit of every matching poisoned run,
        clean accuracy, triggered accuracy, attack success and the clean base rate, with the
        run's backdoor summary figures on each of its rows (for the CLI's one table)."""
        terms, params = sql_conditions(filters)
        where = "".join(f" AND {t}" for t in terms.values())
        return self.query(
            "SELECT r.run_id, s.name AS sweep, r.arch, r.dataset, r.train_mode, r.seed, r.poison, "
            "e.exit_index, e.is_final, e.clean_accuracy, e.triggered_accuracy, e.attack_success, "
            "e.clean_target_rate, b.target, b.num_triggered, b.destructive_fraction, "
            "b.destroyed_share, b.confusion_auroc, b.max_softmax_auroc, b.early_exit_target, "
            "b.early_exit_threshold, b.early_exit_accuracy, b.early_exit_attack_success, "
            "b.early_exit_relative_cost "
            "FROM runs AS r JOIN sweeps AS s ON s.id = r.sweep_id "
            "JOIN backdoor_exits AS e ON e.run_pk = r.id "
            "LEFT JOIN backdoor_summaries AS b ON b.run_pk = r.id "
            f"WHERE 1 {where} ORDER BY r.run_id, e.exit_index",
            params,
        )

    def backdoor_summaries(self, **filters: Any) -> Rows:
        """One row per matching poisoned run: the run's identity and its ``backdoor_summaries``
        row, with the final head's clean accuracy, triggered accuracy and attack success."""
        terms, params = sql_conditions(filters)
        where = "".join(f" AND {t}" for t in terms.values())
        return self.query(
            "SELECT r.run_id, s.name AS sweep, r.arch, r.dataset, r.train_mode, r.seed, r.poison, "
            "f.clean_accuracy AS final_clean_accuracy, "
            "f.triggered_accuracy AS final_triggered_accuracy, "
            "f.attack_success AS final_attack_success, b.target, b.num_clean, b.num_triggered, "
            "b.num_target_excluded, b.destructive_fraction, b.destructive_per_ic, "
            "b.destroyed_share, b.confusion_auroc, b.max_softmax_auroc, b.early_exit_target, "
            "b.early_exit_threshold, b.early_exit_accuracy, b.early_exit_attack_success, "
            "b.early_exit_relative_cost, b.early_exit_exits, b.early_exit_clean_accuracy, "
            "b.early_exit_clean_relative_cost "
            "FROM runs AS r JOIN sweeps AS s ON s.id = r.sweep_id "
            "JOIN backdoor_summaries AS b ON b.run_pk = r.id "
            "LEFT JOIN backdoor_exits AS f ON f.run_pk = r.id AND f.is_final "
            f"WHERE 1 {where} ORDER BY r.run_id",
            params,
        )

    def known_values(self, name: str) -> list[Any]:
        """The values filter ``name`` can match in this catalogue (sorted)."""
        if name == "sweep":
            sql = "SELECT DISTINCT name FROM sweeps ORDER BY name"
        elif name in _RUN_COLUMNS:
            column = _RUN_COLUMNS[name]
            sql = f"SELECT DISTINCT {column} FROM runs WHERE {column} IS NOT NULL ORDER BY 1"
        else:
            raise StorageError(f"unknown filter {name!r}")
        return [row[0] for row in self.con.execute(sql)]

    def sweep_spec(self, name: str) -> dict[str, Any] | None:
        """The spec a sweep was launched with (None when there is no such sweep)."""
        row = self.con.execute("SELECT spec FROM sweeps WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        return json.loads(row[0]) if isinstance(row[0], str) else row[0]

    def sql(
        self,
        query: str,
        params: Mapping[str, Any] | Sequence[Any] = (),
        *,
        timeout_s: float | None = None,
        max_rows: int | None = None,
    ) -> Rows:
        """One read-only statement, stopped after ``timeout_s`` (``db.QueryTimeout``) or on
        Ctrl-C (KeyboardInterrupt); more than ``max_rows`` rows is an error, not a truncation."""
        return run_sql(self.con, self.path, query, params, timeout_s=timeout_s, max_rows=max_rows)


def run_sql(
    con: sqlite3.Connection,
    path: Path,
    query: str,
    params: Mapping[str, Any] | Sequence[Any] = (),
    *,
    timeout_s: float | None = None,
    max_rows: int | None = None,
) -> Rows:
    """See :meth:`Reader.sql`; ``con`` must be a connection from ``db.read_only_connection``."""
    if not isinstance(query, str) or not strip_comments(query).strip(" \t\r\n;"):
        raise StorageError("empty query: give one SQL statement, e.g. SELECT * FROM runs")
    # No value a query builds may exceed this (zeroblob(2e9) would allocate 2 GB).
    con.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
    try:
        with db.time_limit(con, timeout_s):
            cursor = con.execute(query, params or ())
            if cursor.description is None:
                raise StorageError(
                    "the statement returns no rows; sql() runs one query (SELECT, WITH, "
                    "EXPLAIN or a reporting PRAGMA)"
                )
            rows: list[tuple[Any, ...]] = []
            while batch := cursor.fetchmany(1000):
                rows.extend(batch)
                if max_rows is not None and len(rows) > max_rows:
                    raise StorageError(
                        f"the query returned more than {max_rows} rows; add a LIMIT "
                        "(or raise --max-rows)"
                    )
            columns = [d[0] for d in cursor.description]
    except db.QueryTimeout as exc:
        raise db.QueryTimeout(f"catalogue {path}: query {exc} (--timeout)") from None
    except (sqlite3.Error, ValueError, OverflowError) as exc:  # incl. a bad parameter type
        reason = one_line(exc)
        if "not authorized" in reason or "readonly" in reason or "read-only" in reason:
            reason += " (sql() only reads: no writes, DDL, ATTACH or PRAGMA settings)"
        raise StorageError(f"catalogue {path}: query failed: {reason}") from None
    return Rows(columns, rows)


def strip_comments(sql: str) -> str:
    """``sql`` without ``-- ...`` and ``/* ... */`` comments (quoted text is kept as it is)."""
    out, i, n = [], 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"`[":
            close = "]" if ch == "[" else ch
            j = sql.find(close, i + 1)
            j = n if j < 0 else j + 1
            out.append(sql[i:j])
            i = j
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
            out.append(" ")
        else:
            out.append(ch)
            i += 1
    return "".join(out)


# ---- filters: a whitelist of conditions over ``runs AS r``; every value is a bound parameter
_RUN_COLUMNS = {
    "arch": "arch",
    "dataset": "dataset",
    "mode": "train_mode",
    "seed": "seed",
    "status": "status",
    "run_id": "run_id",
    "poison": "poison",
}


def sql_conditions(filters: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """Per filter name a condition over ``runs AS r`` (the form ``early_exit`` expects), and the
    values they bind as ``:f0``, ``:f1``...; a list value means "any of". Empty values are
    skipped (no filter)."""
    terms: dict[str, str] = {}
    params: dict[str, Any] = {}
    for name, value in filters.items():
        if value is None or (isinstance(value, list | tuple | set | frozenset) and not value):
            continue
        if name != "sweep" and name not in _RUN_COLUMNS:
            allowed = ", ".join(sorted([*_RUN_COLUMNS, "sweep"]))
            raise StorageError(f"unknown filter {name!r}; choose among: {allowed}")
        values = list(value) if isinstance(value, list | tuple | set | frozenset) else [value]
        names = []
        for v in values:
            key = f"f{len(params)}"
            params[key] = v
            names.append(f":{key}")
        placeholders = ", ".join(names)
        if name == "sweep":
            terms[name] = f"r.sweep_id IN (SELECT id FROM sweeps WHERE name IN ({placeholders}))"
        else:
            terms[name] = f"r.{_RUN_COLUMNS[name]} IN ({placeholders})"
    return terms, params


def _decode(columns: list[str], row: tuple[Any, ...]) -> tuple[Any, ...]:
    """JSON columns as Python values (as SQLAlchemy's JSON type returns them)."""
    if not JSON_COLUMNS.intersection(columns):
        return row
    return tuple(
        json.loads(v) if c in JSON_COLUMNS and isinstance(v, str) else v
        for c, v in zip(columns, row, strict=True)
    )


# ---- opening
def check_schema(con: sqlite3.Connection, path: Path) -> str:
    """The catalogue's schema revision, or a StorageError saying what the file is instead."""
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if VERSION_TABLE not in tables:
            if not tables:
                raise StorageError(
                    f"catalogue {path} is an empty SQLite database, not a catalogue; a sweep "
                    "launch or `sdn catalogue rebuild` writes one"
                )
            raise StorageError(
                f"catalogue {path} is a SQLite database of another application "
                f"(tables: {', '.join(sorted(tables)[:5])}); choose the catalogue file"
            )
        row = con.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchone()
    except sqlite3.Error as exc:
        raise StorageError(f"catalogue {path} cannot be read: {one_line(exc)}") from None
    revision = row[0] if row else None
    chain = revision_chain()
    if revision == chain[0]:
        return revision
    if revision in chain:
        raise CatalogueTooOld(
            f"catalogue {path} has schema revision {revision}, older than this sdn-workflows' "
            f"{chain[0]}; upgrade it once with `sdn catalogue upgrade --catalogue {path}` "
            "(reads never change the file)"
        )
    raise StorageError(
        f"catalogue {path} has schema revision {revision}, newer than this sdn-workflows "
        f"(knows up to {chain[0]}); upgrade sdn-workflows"
    )


@contextmanager
def open_reader(path: str | Path, busy_timeout_s: float = 10.0) -> Iterator[Reader]:
    """A :class:`Reader` on the catalogue at ``path``; see the module docstring."""
    path = Path(path)
    con = db.read_only_connection(path, busy_timeout_s)
    reader = Reader(path, con)
    try:
        check_schema(con, path)
        yield reader
    finally:
        reader.close()
