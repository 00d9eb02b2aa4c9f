"""Rebuild the catalogue from the MLflow tracking store and the Parquet predictions alone.

The catalogue is derived data. What it holds comes from two places that outlive it:

* MLflow, laid out as ``storage.mlflow_layout`` says: one experiment ``sweep-<name>`` per sweep,
  whose parent run (tag ``sdn.kind=sweep``) carries the spec as ``sweep/spec.json``, and one
  nested run per cell (tag ``sdn.kind=cell``, ``sdn.run_id``, grid tags, ``train.*`` params; a
  poisoned cell also ``backdoor`` = its poisoning tag) that carries its analysis as
  ``analysis/summary.json`` (backdoor figures included); registered model versions name their run;
* the Parquet predictions, whose footers name their run (``sdn.run_id``) and split.

:func:`rebuild` reads them into a *new* SQLite file next to the catalogue and, only when that file
is complete, renames it over the old one. Any failure before the rename (unreachable MLflow, a
corrupted Parquet file, a malformed artifact, a full disk) leaves the old catalogue as it was and
removes the new file.

Replacing a SQLite database by rename is only safe when nobody has it open: a WAL database's
``-wal`` and ``-shm`` files are found by name, so a stale ``-wal`` next to the new file would be
replayed into it. So before the rename the old catalogue is checkpointed and switched out of WAL
(which SQLite allows only when no other connection is open, and which deletes its ``-wal`` and
``-shm``), and the new one is written out in rollback-journal mode as one self-contained file.
If another process holds the old catalogue open, the rebuild stops with an error and changes
nothing. The next ``Catalogue`` to open the file switches it back to WAL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, select
from sqlalchemy.dialects.sqlite import insert

from sdn.results import RunSummary
from storage.catalogue.db import WRITE, check_sqlite_file, with_retry
from storage.catalogue.migrate import VERSION_TABLE, known_revisions
from storage.catalogue.models import Run, Sweep
from storage.catalogue.store import MODES, STATUSES, Catalogue, RunRecord
from storage.catalogue.summary import SummaryRows, summary_rows, write_summary
from storage.errors import StorageError, one_line
from storage.mlflow_layout import (
    CONFIG_ARTIFACT,
    ERROR_TAG,
    EXPERIMENT_PREFIX,
    KIND_TAG,
    POISON_TAG,
    RUN_ID_TAG,
    SPEC_ARTIFACT,
    SUMMARY_ARTIFACT,
    SWEEP_TAG,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run as MlflowRun

__all__ = ["rebuild"]

log = logging.getLogger(__name__)

_SQLITE_PREFIX = "sqlite:///"
_MLFLOW_TABLES = ("experiments", "runs")  # present in every MLflow SQL tracking store
_SPLITS_FOR_DONE = ("val", "test")  # the analysis writes both; a run is done with both
_SIDE_FILES = ("-wal", "-shm", "-journal")


def rebuild(
    catalogue_path: str | os.PathLike[str],
    predictions_root: str | os.PathLike[str],
    tracking_uri: str,
    *,
    registry_uri: str | None = None,
    lock_timeout_s: float = 10.0,
) -> dict[str, int]:
    """Rebuild the catalogue at ``catalogue_path`` from MLflow and the Parquet files.

    ``tracking_uri`` (and ``registry_uri``, default the same) must name an existing MLflow store;
    it is checked before anything is written. Every ``sweep-*`` experiment becomes a sweep, every
    cell run a run with its summary (if analysed); ``predictions_root`` is the Parquet root whose
    files decide ``parquet_path`` and whether a run is ``done``. The new catalogue is built in a
    hidden file in the same directory and renamed over ``catalogue_path`` when complete; the old
    one must not be open in another process (waits up to ``lock_timeout_s`` for it to close).

    Returns counts: ``sweeps``, ``runs``, ``summaries``, ``models`` (runs with a registered
    version), ``predictions`` (runs with Parquet files), one per catalogue status (``done``,
    ``trained``, ``running``, ``pending``, ``failed``...), ``orphan_predictions`` (runs found only in Parquet,
    which are not catalogued) and ``duplicate_mlflow_runs`` (extra cell runs of one run id; the
    earliest is used, as the workflows do).
    """
    path = Path(catalogue_path)
    _check_target(path)
    client = _open_mlflow(tracking_uri, registry_uri or tracking_uri, path)
    predictions = _index_predictions(Path(predictions_root))
    loader = _Loader(client, tracking_uri, predictions)
    models = loader.model_versions()

    tmp = path.parent / f".{path.name}.rebuild-{uuid.uuid4().hex[:12]}"
    try:
        with Catalogue(tmp) as cat, TemporaryDirectory(prefix="sdn-rebuild-") as scratch:
            writer = cat.engine.execution_options(**WRITE)
            for experiment in loader.sweep_experiments():
                batch = loader.read_sweep(experiment, models, Path(scratch))

                def load(batch: _SweepBatch = batch) -> None:
                    with writer.begin() as conn:
                        _write_batch(conn, batch)

                with_retry(path, load, what=f"rebuild (sweep {batch.name!r} into {tmp.name})")
        _seal(tmp)
        _retire(path, lock_timeout_s)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        for suffix in ("", *_SIDE_FILES):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)
        raise

    counts = loader.counts
    orphans = sorted(set(predictions) - loader.run_ids)
    if orphans:
        log.warning(
            "%d run(s) have Parquet predictions but no MLflow cell run and were not catalogued "
            "(e.g. %s)",
            len(orphans),
            orphans[0],
        )
    counts["orphan_predictions"] = len(orphans)
    return dict(counts)


# ---------------------------------------------------------------------- checks before writing
def _peek(path: Path) -> sqlite3.Connection:
    """A read-only connection that leaves no files behind.

    A read-only connection to a WAL database creates its ``-wal``/``-shm`` when they are missing
    and cannot remove them when it closes; without a ``-wal`` the main file holds everything, so
    it is opened ``immutable`` instead (only the schema and version are read through it).
    """
    mode = "ro" if Path(f"{path}-wal").exists() else "ro&immutable=1"
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode={mode}", uri=True, timeout=5.0)


def _check_target(path: Path) -> None:
    """The catalogue to replace must be absent, empty, or a catalogue this code can read."""
    check_sqlite_file(path)
    if not path.is_file() or path.stat().st_size == 0:
        return
    try:
        con = _peek(path)
        try:
            tables = {
                r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            revision = None
            if VERSION_TABLE in tables:
                row = con.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchone()
                revision = row[0] if row else None
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise StorageError(f"cannot read catalogue {path}: {one_line(exc)}") from None
    if tables and VERSION_TABLE not in tables:
        raise StorageError(
            f"{path} is a SQLite database of another application "
            f"(tables: {', '.join(sorted(tables)[:5])}); rebuild refuses to replace it"
        )
    if revision is not None and revision not in known_revisions():
        raise StorageError(
            f"catalogue {path} has schema revision {revision}, newer than this sdn-workflows; "
            "rebuild it with the newer version"
        )


def _sqlite_file(uri: str) -> Path | None:
    if not uri.startswith(_SQLITE_PREFIX):
        return None
    return Path(uri[len(_SQLITE_PREFIX) :].split("?", 1)[0])


def _check_store_exists(uri: str, catalogue: Path) -> None:
    """Refuse a store that does not exist yet or is not MLflow's: opening it would create tables.

    ``ensure_tracking_store`` creates a missing SQLite store (right for the workflows, which log
    into it); a rebuild from a mistyped path would instead yield an empty catalogue.
    """
    db = _sqlite_file(uri)
    if db is None:
        if uri.startswith("file:") or "://" not in uri:
            folder = Path(uri.removeprefix("file://").removeprefix("file:"))
            if not folder.is_dir():
                raise StorageError(f"MLflow tracking store {uri} does not exist")
        return
    if not db.is_file():
        raise StorageError(f"MLflow database {uri} does not exist (no file {db})")
    if catalogue.exists() and db.resolve() == catalogue.resolve():
        raise StorageError(f"MLflow tracking URI {uri} is the catalogue itself")
    try:
        con = _peek(db)
        try:
            tables = {
                r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open MLflow database {uri}: {one_line(exc)}") from None
    if not set(_MLFLOW_TABLES) <= tables:
        raise StorageError(f"{db} is not an MLflow tracking database (no experiments/runs tables)")


def _open_mlflow(tracking_uri: str, registry_uri: str, catalogue: Path) -> MlflowClient:
    """A client on explicit URIs, after checking that both stores exist and answer."""
    from storage.mlflow_setup import ensure_tracking_store, make_client

    for uri in dict.fromkeys((tracking_uri, registry_uri)):
        if not isinstance(uri, str) or not uri.strip():
            raise StorageError(f"MLflow tracking URI must be a non-empty string, got {uri!r}")
        _check_store_exists(uri, catalogue)
        ensure_tracking_store(uri)
    client = make_client(tracking_uri, registry_uri)
    with _mlflow_errors(tracking_uri, "listing experiments"):
        client.search_experiments(max_results=1)
    return client


@contextlib.contextmanager
def _mlflow_errors(uri: str, doing: str) -> Iterator[None]:
    from mlflow.exceptions import MlflowException

    try:
        yield
    except StorageError:
        raise
    except (MlflowException, OSError) as exc:
        raise StorageError(f"MLflow store {uri}: {doing} failed: {one_line(exc)}") from None


# ---------------------------------------------------------------------- Parquet
def _index_predictions(root: Path) -> dict[str, dict[str, str]]:
    """``run_id -> {split: outputs file}`` from the footers, each file checked on the way.

    One pass over the footers (not a directory walk per run), so it scales with the number of
    files. A corrupted file, or one of a newer schema version, is an error naming it.
    """
    import pyarrow as pa

    from storage.parquet_format import check_version
    from storage.predictions import PredictionStore

    if not root.is_dir():
        raise StorageError(f"no predictions directory at {root}")
    index: dict[str, dict[str, str]] = defaultdict(dict)
    for fragment in PredictionStore(root).dataset("outputs", validate=False).get_fragments():
        try:
            metadata = fragment.physical_schema.metadata
        except (pa.ArrowException, OSError) as exc:
            raise StorageError(
                f"corrupted predictions file {fragment.path}: {one_line(exc)}"
            ) from None
        check_version(fragment.path, metadata)
        run_id = (metadata or {}).get(b"sdn.run_id", b"").decode()
        split = (metadata or {}).get(b"sdn.split", b"").decode()
        if not run_id or not split:
            raise StorageError(f"predictions file {fragment.path} has no sdn.run_id/sdn.split")
        index[run_id][split] = fragment.path
    return dict(index)


# ---------------------------------------------------------------------- reading MLflow
@dataclass
class _Cell:
    record: RunRecord
    summary: SummaryRows | None


@dataclass
class _SweepBatch:
    name: str
    spec: dict[str, Any]
    code_version: str | None
    created_at: datetime
    cells: list[_Cell] = field(default_factory=list)


def _utc_ms(ms: int | None) -> datetime | None:
    if not ms:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).replace(tzinfo=None)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class _Loader:
    """Reads sweeps and cells from MLflow, one experiment at a time, and keeps the counts."""

    def __init__(
        self, client: MlflowClient, uri: str, predictions: dict[str, dict[str, str]]
    ) -> None:
        self.client = client
        self.uri = uri
        self.predictions = predictions
        keys = ("sweeps", "runs", "summaries", "models", "predictions", *STATUSES)
        self.counts: Counter[str] = Counter(dict.fromkeys(keys, 0))
        self.counts["duplicate_mlflow_runs"] = 0
        self.run_ids: set[str] = set()
        self.sweep_names: set[str] = set()

    def model_versions(self) -> dict[str, list[Any]]:
        """Every registered model version, by the MLflow run it came from."""
        by_run: dict[str, list[Any]] = defaultdict(list)
        token = None
        with _mlflow_errors(self.uri, "listing registered model versions"):
            while True:
                page = self.client.search_model_versions(page_token=token)
                for mv in page:
                    if mv.run_id:
                        by_run[mv.run_id].append(mv)
                token = page.token
                if not token:
                    return by_run

    def sweep_experiments(self) -> list[Any]:
        found, token = [], None
        with _mlflow_errors(self.uri, "listing sweep experiments"):
            while True:
                page = self.client.search_experiments(
                    filter_string=f"name LIKE '{EXPERIMENT_PREFIX}%'", page_token=token
                )
                found += [e for e in page if e.name.startswith(EXPERIMENT_PREFIX)]
                token = page.token
                if not token:
                    return sorted(found, key=lambda e: e.name)

    def _runs(self, experiment_id: str) -> list[MlflowRun]:
        found, token = [], None
        while True:
            page = self.client.search_runs([experiment_id], page_token=token)
            found += list(page)
            token = page.token
            if not token:
                return found

    def _json_artifact(self, run: MlflowRun, artifact: str, scratch: Path) -> Any:
        """The parsed JSON artifact of ``run``, or None if the run has no such artifact."""
        run_id = run.info.run_id
        folder = artifact.rpartition("/")[0]
        with _mlflow_errors(self.uri, f"reading {artifact} of MLflow run {run_id}"):
            if artifact not in {a.path for a in self.client.list_artifacts(run_id, folder)}:
                return None
            local = self.client.download_artifacts(run_id, artifact, str(scratch))
            text = Path(local).read_text(encoding="utf-8")
        try:
            return json.loads(text)
        except ValueError as exc:
            raise StorageError(
                f"MLflow run {run_id}: {artifact} is not valid JSON: {one_line(exc)}"
            ) from None

    def read_sweep(
        self, experiment: Any, models: dict[str, list[Any]], scratch: Path
    ) -> _SweepBatch:
        name = (experiment.tags or {}).get(SWEEP_TAG) or experiment.name[len(EXPERIMENT_PREFIX) :]
        with _mlflow_errors(self.uri, f"listing the runs of experiment {experiment.name!r}"):
            runs = self._runs(experiment.experiment_id)
        # The earliest run of each identity is the one the workflows keep using (tracking.py).
        runs.sort(key=lambda r: (r.info.start_time or 0, r.info.run_id))
        parents = [r for r in runs if r.data.tags.get(KIND_TAG) == "sweep"]
        spec: dict[str, Any] = {}
        code_version = None
        created = _utc_ms(experiment.creation_time) or _now()
        if parents:
            parent = parents[0]
            name = parent.data.tags.get(SWEEP_TAG) or name
            loaded = self._json_artifact(parent, SPEC_ARTIFACT, scratch / parent.info.run_id)
            if loaded is not None and not isinstance(loaded, dict):
                raise StorageError(
                    f"MLflow run {parent.info.run_id}: {SPEC_ARTIFACT} is not a JSON object"
                )
            spec = loaded or {}
            # A tag (mutable: a resumed launch may update it) wins over the first launch's param.
            code_version = parent.data.tags.get("code_version") or parent.data.params.get(
                "code_version"
            )
            created = _utc_ms(parent.info.start_time) or created
        batch = _SweepBatch(name, spec, code_version, created)
        self.sweep_names.add(name)
        for run in runs:
            if run.data.tags.get(KIND_TAG) != "cell":
                continue
            run_id = run.data.tags.get(RUN_ID_TAG)
            if not run_id:
                raise StorageError(f"MLflow cell run {run.info.run_id} has no {RUN_ID_TAG} tag")
            if run_id in self.run_ids:
                self.counts["duplicate_mlflow_runs"] += 1
                continue
            self.run_ids.add(run_id)
            batch.cells.append(self._cell(run, run_id, name, models, scratch))
        self.counts["sweeps"] = len(self.sweep_names)
        return batch

    def _cell(
        self,
        run: MlflowRun,
        run_id: str,
        sweep: str,
        models: dict[str, list[Any]],
        scratch: Path,
    ) -> _Cell:
        tags, params, info = run.data.tags, run.data.params, run.info
        where = f"MLflow run {info.run_id} ({run_id})"
        missing = [t for t in ("architecture", "dataset", "mode", "seed") if not tags.get(t)]
        if missing:
            raise StorageError(f"{where} lacks the tags {missing}")
        mode = tags["mode"]
        if mode not in MODES:
            raise StorageError(f"{where} has mode {mode!r}; expected one of {', '.join(MODES)}")
        try:
            seed = int(tags["seed"])
            width = _param(params, "train.width", float)
            epochs = _param(params, "train.epochs", int)
        except ValueError as exc:
            raise StorageError(f"{where} has a malformed seed or train param: {exc}") from None

        poison = tags.get(POISON_TAG) or ""
        version = _pick_version(
            models.get(info.run_id, []), tags["architecture"], tags["dataset"], poison
        )
        files = self.predictions.get(run_id, {})
        raw = self._json_artifact(run, SUMMARY_ARTIFACT, scratch / info.run_id)
        rows = None
        if raw is not None:
            try:
                rows = summary_rows(RunSummary.from_dict(raw))
            except StorageError as exc:
                raise StorageError(f"{where}: {SUMMARY_ARTIFACT}: {exc}") from None
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise StorageError(
                    f"{where}: {SUMMARY_ARTIFACT} is not a RunSummary: {one_line(exc)}"
                ) from None
        status, error = _status(
            info.status,
            has_summary=rows is not None,
            has_predictions=all(s in files for s in _SPLITS_FOR_DONE),
            has_model=version is not None,
        )
        if tags.get(ERROR_TAG):  # the workflow's own words on why the cell failed
            error = tags[ERROR_TAG]
            if status == "trained" and rows is None:
                status = "failed"
        elif error:
            error = f"{error} (MLflow run {info.run_id}; set by catalogue rebuild)"
        config = self._json_artifact(run, CONFIG_ARTIFACT, scratch / f"{info.run_id}-config")
        record = RunRecord(
            run_id=run_id,
            sweep=tags.get(SWEEP_TAG) or sweep,
            arch=tags["architecture"],
            dataset=tags["dataset"],
            mode=mode,
            seed=seed,
            width=width,
            epochs=epochs,
            status=status,
            started_at=_utc_ms(info.start_time),
            ended_at=_utc_ms(info.end_time),
            mlflow_run_id=info.run_id,
            model_name=None if version is None else version.name,
            model_version=None if version is None else str(version.version),
            parquet_path=str(Path(sorted(files.values())[0]).parent) if files else None,
            code_version=tags.get("code_version") or params.get("code_version"),
            config=config if isinstance(config, dict) else dict(params),
            error=error,
            poison=poison,
        )
        self.sweep_names.add(record.sweep)
        self.counts["sweeps"] = len(self.sweep_names)
        self.counts["runs"] += 1
        self.counts[status] += 1
        self.counts["summaries"] += rows is not None
        self.counts["models"] += version is not None
        self.counts["predictions"] += bool(files)
        return _Cell(record, rows)


def _param(params: dict[str, str], key: str, kind: type) -> Any:
    value = params.get(key)
    if value is None or value in ("", "None"):
        return None
    return kind(value)


def _pick_version(versions: list[Any], arch: str, dataset: str, poison: str = "") -> Any | None:
    """The run's registered version: under the cell's own model name if it has one there, else
    the newest (as ``Registry.resolve('runs:/<id>')`` picks)."""
    if not versions:
        return None
    from storage.model_refs import registered_model_name

    own = []
    with contextlib.suppress(StorageError):
        names = {registered_model_name(arch, dataset, m, poison) for m in MODES}
        own = [v for v in versions if v.name in names]
    return max(own or versions, key=lambda v: (v.creation_timestamp or 0, int(v.version)))


def _status(
    mlflow_status: str, *, has_summary: bool, has_predictions: bool, has_model: bool
) -> tuple[str, str | None]:
    """(catalogue status, error) of a cell from what MLflow and the Parquet files show.

    ``done``: analysed (summary logged) and both splits' predictions are on disk. ``trained``: the
    MLflow run finished and its model is registered (or its summary exists but predictions are
    missing, so it needs analysing again). ``failed``: the run failed or was killed, or it finished
    without a registered model. ``running`` / ``pending``: MLflow's RUNNING / SCHEDULED.
    """
    if has_summary and has_predictions:
        return "done", None
    if mlflow_status in ("FAILED", "KILLED"):
        return "failed", f"MLflow run ended {mlflow_status}"
    if mlflow_status == "FINISHED":
        if has_model or has_summary:
            return "trained", None
        return "failed", "MLflow run finished but no registered model version comes from it"
    if mlflow_status == "RUNNING":
        return "running", None
    return "pending", None


# ---------------------------------------------------------------------- writing
def _sweep_id(conn: Connection, batch: _SweepBatch | None, name: str, now: datetime) -> int:
    """Insert (or complete) a sweep row and return its id; ``batch`` carries the spec."""
    if batch is None:  # a cell tagged with another sweep than its experiment's
        statement = (
            insert(Sweep)
            .values(name=name, spec={}, created_at=now, updated_at=now)
            .on_conflict_do_nothing(index_elements=[Sweep.name])
        )
    else:
        statement = insert(Sweep).values(
            name=name,
            spec=batch.spec,
            code_version=batch.code_version,
            created_at=batch.created_at,
            updated_at=now,
        )
        statement = statement.on_conflict_do_update(
            index_elements=[Sweep.name],
            set_={"spec": statement.excluded.spec, "code_version": statement.excluded.code_version},
        )
    conn.execute(statement)
    return conn.scalar(select(Sweep.id).where(Sweep.name == name))


def _write_batch(conn: Connection, batch: _SweepBatch) -> None:
    """One sweep and all its cells, in the caller's transaction."""
    now = _now()
    sweep_ids = {batch.name: _sweep_id(conn, batch, batch.name, now)}
    rows = []
    for cell in batch.cells:
        r = cell.record
        if r.sweep not in sweep_ids:
            sweep_ids[r.sweep] = _sweep_id(conn, None, r.sweep, now)
        rows.append(
            {
                "run_id": r.run_id,
                "sweep_id": sweep_ids[r.sweep],
                "arch": r.arch,
                "dataset": r.dataset,
                "train_mode": r.mode,
                "seed": r.seed,
                "poison": r.poison or "",
                "width": r.width,
                "epochs": r.epochs,
                "status": r.status,
                "started_at": r.started_at,
                "ended_at": r.ended_at,
                "mlflow_run_id": r.mlflow_run_id,
                "model_name": r.model_name,
                "model_version": r.model_version,
                "parquet_path": r.parquet_path,
                "code_version": r.code_version,
                "config": r.config or {},
                "error": r.error,
                "updated_at": now,
            }
        )
    if not rows:
        return
    conn.execute(Run.__table__.insert(), rows)
    ids = dict(
        conn.execute(
            select(Run.run_id, Run.id).where(Run.run_id.in_([r["run_id"] for r in rows]))
        ).all()
    )
    for cell in batch.cells:
        if cell.summary is not None:
            write_summary(conn, ids[cell.record.run_id], cell.record.run_id, cell.summary)


# ---------------------------------------------------------------------- swapping files
def _seal(tmp: Path) -> None:
    """Make the new catalogue one self-contained, synced file (no ``-wal``/``-shm``)."""
    try:
        con = sqlite3.connect(tmp, isolation_level=None)
        try:
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            mode = con.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
            check = con.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise StorageError(
            f"finishing the rebuilt catalogue {tmp} failed: {one_line(exc)}"
        ) from None
    if mode != "delete" or check != "ok":
        raise StorageError(f"rebuilt catalogue {tmp} failed its check ({mode}, {check})")
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _retire(path: Path, lock_timeout_s: float) -> None:
    """Prepare the old catalogue at ``path`` to be replaced by rename.

    Switching it out of WAL checkpoints it and deletes its ``-wal`` and ``-shm``; SQLite allows
    that only while no other connection has the file open, so it doubles as the check that no
    process is using the catalogue (it is retried for ``lock_timeout_s`` in case one is about to
    close). Leftover side files without a database (a deleted catalogue's) are removed too: next
    to the new file they would be taken for its own.
    """
    if path.is_file() and path.stat().st_size > 0:
        deadline = time.monotonic() + lock_timeout_s
        while True:
            try:
                con = sqlite3.connect(path, timeout=min(lock_timeout_s, 1.0), isolation_level=None)
                try:
                    mode = con.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
                finally:
                    con.close()
                if mode == "delete":
                    break
                reason = f"journal mode stayed {mode}"
            except sqlite3.Error as exc:
                reason = one_line(exc)
            if time.monotonic() >= deadline:
                raise StorageError(
                    f"catalogue {path} is in use by another process ({reason}); stop what has it "
                    "open (a sweep driver, a notebook) and rebuild again. It was left unchanged"
                )
            time.sleep(0.1)
    for suffix in _SIDE_FILES:
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a directory
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
