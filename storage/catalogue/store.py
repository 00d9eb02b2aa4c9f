"""The catalogue: a SQLite file of sweeps, runs and their results, written by idempotent upserts.

Every write is one short ``BEGIN IMMEDIATE`` transaction, retried while another process holds the
lock, so many processes may record at once (the design still prefers one writer, the driver).
Writing the same thing twice leaves the same rows: sweeps and runs are upserted on their natural
keys, and a run's results are replaced as a whole.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from sqlalchemy import Connection, delete, func, select, update
from sqlalchemy.dialects.sqlite import insert

from sdn.results import RunSummary
from storage.catalogue import queries
from storage.catalogue.db import (
    WRITE,
    check_sqlite_file,
    make_engine,
    read_only_connection,
    with_retry,
)
from storage.catalogue.migrate import upgrade
from storage.catalogue.models import Run, Sweep
from storage.catalogue.readonly import MODES, SPLITS, STATUSES, check_schema, run_sql
from storage.catalogue.summary import summary_rows, write_summary
from storage.errors import StorageError, choice_error, one_line

T = TypeVar("T")
__all__ = ["MODES", "SPLITS", "STATUSES", "Catalogue", "RunRecord"]


def _utc(value: datetime | None) -> datetime | None:
    """Times are stored as naive UTC (SQLite has no time zones); aware values are converted."""
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass
class RunRecord:
    """What the catalogue keeps about a run. ``None`` fields leave a stored value unchanged, so a
    run can be recorded in stages (started, trained, registered) by whoever knows each part.

    ``poison`` is part of the identity (the cell's poisoning tag, ``sdn.backdoor.PoisonConfig.tag``;
    None or ``''``: trained on clean data), so it is always written."""

    run_id: str
    sweep: str
    arch: str
    dataset: str
    mode: str
    seed: int
    width: float | None = None
    epochs: int | None = None
    status: str | None = None  # "pending" when first recorded without one
    started_at: datetime | None = None
    ended_at: datetime | None = None
    mlflow_run_id: str | None = None
    model_name: str | None = None
    model_version: str | int | None = None
    parquet_path: str | None = None
    code_version: str | None = None
    config: dict[str, Any] | None = None
    error: str | None = None
    poison: str | None = None


class Catalogue:
    """The results catalogue in the SQLite file ``path``.

    A writer (the default) creates the file or migrates it to the newest schema on open.
    ``read_only=True`` opens an existing catalogue without changing anything (see
    ``storage.catalogue.readonly``): no file is created, nothing is migrated (a too-old schema is
    a ``CatalogueTooOld`` error naming ``sdn catalogue upgrade``), and every write method raises.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        busy_timeout_s: float = 30.0,
        *,
        read_only: bool = False,
    ) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self.read_only = read_only
        self.revision: tuple[str | None, str] | None = None  # (before, after) of the open
        if read_only:
            con = read_only_connection(self.path, busy_timeout_s)  # checks the file first
            try:
                check_schema(con, self.path)
            finally:
                con.close()
            self._open_engine()
            return
        check_sqlite_file(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open_engine()
        self.revision = with_retry(
            self.path, lambda: upgrade(self.engine, self.path), what="schema upgrade"
        )

    def _open_engine(self) -> None:
        self._pid = os.getpid()
        self.engine = make_engine(self.path, self.busy_timeout_s, read_only=self.read_only)
        self._writer = self.engine.execution_options(**WRITE)

    def _check_process(self) -> None:
        """After a fork, leave the parent's pooled connections alone and open new ones."""
        if os.getpid() != self._pid:
            self.engine.dispose(close=False)
            self._open_engine()

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Catalogue:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Catalogue({str(self.path)!r})"

    # ------------------------------------------------------------------ plumbing
    def _write(self, what: str, action: Callable[[Connection], T]) -> T:
        if self.read_only:
            raise StorageError(f"catalogue {self.path} is open read-only; cannot {what}")
        self._check_process()

        def attempt() -> T:
            with self._writer.begin() as conn:
                return action(conn)

        return with_retry(self.path, attempt, what=what)

    def _read(self, action: Callable[[Connection], T]) -> T:
        self._check_process()

        def attempt() -> T:
            with self.engine.connect() as conn:
                return action(conn)

        return with_retry(self.path, attempt, what="query")

    @staticmethod
    def _run_pk(conn: Connection, run_id: str) -> int:
        pk = conn.scalar(select(Run.id).where(Run.run_id == run_id))
        if pk is None:
            raise StorageError(f"unknown run {run_id!r}; record it with upsert_run first")
        return pk

    @staticmethod
    def _sweep_pk(conn: Connection, name: str) -> int:
        """The sweep's id, creating a row with an empty spec if the sweep was never recorded (a
        rebuild from Parquet and MLflow may know runs before it knows their sweep's spec)."""
        now = _now()
        conn.execute(
            insert(Sweep)
            .values(name=name, spec={}, created_at=now, updated_at=now)
            .on_conflict_do_nothing(index_elements=[Sweep.name])
        )
        return conn.scalar(select(Sweep.id).where(Sweep.name == name))

    # ------------------------------------------------------------------ writes
    def upsert_sweep(
        self, name: str, spec: dict[str, Any], code_version: str | None = None
    ) -> None:
        """Record a sweep and its spec (replacing the stored spec if it exists)."""
        now = _now()
        statement = insert(Sweep).values(
            name=name, spec=spec, code_version=code_version, created_at=now, updated_at=now
        )
        statement = statement.on_conflict_do_update(
            index_elements=[Sweep.name],
            set_={
                "spec": statement.excluded.spec,
                "code_version": func.coalesce(statement.excluded.code_version, Sweep.code_version),
                "updated_at": statement.excluded.updated_at,
            },
        )
        self._write(f"upsert_sweep {name!r}", lambda conn: conn.execute(statement))

    def upsert_run(self, record: RunRecord) -> None:
        """Insert or update a run by ``run_id``; fields left ``None`` keep their stored values."""
        if record.mode not in MODES:
            raise choice_error("mode", record.mode, MODES)
        if record.status is not None and record.status not in STATUSES:
            raise choice_error("status", record.status, STATUSES)
        optional = {
            "width": record.width,
            "epochs": record.epochs,
            "status": record.status,
            "started_at": _utc(record.started_at),
            "ended_at": _utc(record.ended_at),
            "mlflow_run_id": record.mlflow_run_id,
            "model_name": record.model_name,
            "model_version": None if record.model_version is None else str(record.model_version),
            "parquet_path": record.parquet_path,
            "code_version": record.code_version,
            "config": record.config,
            "error": record.error,
        }

        def action(conn: Connection) -> None:
            identity = {
                "run_id": record.run_id,
                "sweep_id": self._sweep_pk(conn, record.sweep),
                "arch": record.arch,
                "dataset": record.dataset,
                "train_mode": record.mode,
                "seed": int(record.seed),
                "poison": record.poison or "",
                "updated_at": _now(),
            }
            values = {**identity, **optional}
            values["status"] = record.status or "pending"
            values["config"] = record.config if record.config is not None else {}
            statement = insert(Run).values(**values)
            excluded = statement.excluded
            keep = {name: func.coalesce(excluded[name], Run.__table__.c[name]) for name in optional}
            if record.config is None:
                keep["config"] = Run.__table__.c.config
            statement = statement.on_conflict_do_update(
                index_elements=[Run.run_id], set_={**identity, **keep}
            )
            conn.execute(statement)

        self._write(f"upsert_run {record.run_id!r}", action)

    def set_status(
        self,
        run_id: str,
        status: str,
        *,
        error: str | None = None,
        started_at: datetime | None = None,
        ended_at: datetime | None = None,
    ) -> None:
        """Set a run's status; ``error`` replaces the stored message (``None`` clears it)."""
        if status not in STATUSES:
            raise choice_error("status", status, STATUSES)
        values: dict[str, Any] = {"status": status, "error": error, "updated_at": _now()}
        if started_at is not None:
            values["started_at"] = _utc(started_at)
        if ended_at is not None:
            values["ended_at"] = _utc(ended_at)

        def action(conn: Connection) -> None:
            pk = self._run_pk(conn, run_id)
            conn.execute(update(Run).where(Run.id == pk).values(**values))

        self._write(f"set_status {run_id!r}", action)

    def record_summary(self, run_id: str, summary: RunSummary) -> None:
        """Replace the run's per-exit results, early-exit points, frontier, overthinking row and
        backdoor figures (poisoned runs) with those of ``summary``, in one transaction."""
        rows = summary_rows(summary)

        def action(conn: Connection) -> None:
            write_summary(conn, self._run_pk(conn, run_id), run_id, rows)

        self._write(f"record_summary {run_id!r}", action)

    def delete_run(self, run_id: str) -> bool:
        """Delete a run and (by cascade) everything recorded for it; False if it did not exist."""

        def action(conn: Connection) -> bool:
            return conn.execute(delete(Run).where(Run.run_id == run_id)).rowcount > 0

        return self._write(f"delete_run {run_id!r}", action)

    def delete_sweep(self, name: str) -> bool:
        """Delete a sweep with all its runs and their results."""

        def action(conn: Connection) -> bool:
            return conn.execute(delete(Sweep).where(Sweep.name == name)).rowcount > 0

        return self._write(f"delete_sweep {name!r}", action)

    # ------------------------------------------------------------------ queries
    def runs(self, **filters: Any) -> pd.DataFrame:
        """Runs matching the filters (arch, dataset, mode, seed, status, sweep, run_id)."""
        return self._read(lambda conn: queries.runs(conn, **filters))

    def exits(self, **filters: Any) -> pd.DataFrame:
        """Per-exit accuracy and cost of matching runs (filters as ``runs`` plus ``split``)."""
        return self._read(lambda conn: queries.exits(conn, **filters))

    def overthinking(self, **filters: Any) -> pd.DataFrame:
        """Overthinking summaries of matching runs."""
        return self._read(lambda conn: queries.overthinking(conn, **filters))

    def backdoor(self, **filters: Any) -> pd.DataFrame:
        """Backdoor figures of matching poisoned runs, one row per run x exit (see
        :func:`storage.catalogue.queries.backdoor`)."""
        return self._read(lambda conn: queries.backdoor(conn, **filters))

    def backdoor_summaries(self, **filters: Any) -> pd.DataFrame:
        """One row of backdoor figures per matching poisoned run."""
        return self._read(lambda conn: queries.backdoor_summaries(conn, **filters))

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
    ) -> pd.DataFrame:
        """Best operating point per (arch, dataset, mode, poison), chosen on validation by
        ``sdn.early_exit`` (certified at ``delta`` when given); see
        :func:`storage.catalogue.queries.best_early_exit` for the rule and columns."""
        return self._read(
            lambda conn: queries.best_early_exit(
                conn,
                max_accuracy_drop,
                cost_budget,
                policy=policy,
                delta=delta,
                split=split,
                per_run=per_run,
                **filters,
            )
        )

    def calibration(self, **filters: Any) -> pd.DataFrame:
        """Per-exit ECE and reliability bins of matching runs (filters as ``exits``)."""
        return self._read(lambda conn: queries.calibration(conn, **filters))

    def sql(
        self,
        query: str,
        params: Any = None,
        *,
        timeout_s: float | None = None,
        max_rows: int | None = None,
    ) -> pd.DataFrame:
        """Run one SQL statement on a read-only connection; anything that writes (INSERT, DROP,
        ATTACH, setting a PRAGMA) fails with a one-line StorageError. ``timeout_s`` stops a long
        query (``db.QueryTimeout``); Ctrl-C stops it at once (KeyboardInterrupt); more than
        ``max_rows`` rows is an error."""
        try:
            con = read_only_connection(self.path, self.busy_timeout_s)
        except StorageError:
            raise
        except Exception as exc:  # sqlite3.Error, OSError
            raise StorageError(
                f"cannot open catalogue {self.path} read-only: {one_line(exc)}"
            ) from None
        try:
            rows = run_sql(
                con, self.path, query, params or (), timeout_s=timeout_s, max_rows=max_rows
            )
        finally:
            con.close()
        return pd.DataFrame(rows.rows, columns=rows.columns)
