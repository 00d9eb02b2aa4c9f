"""Per-exit predictions of every run, kept as Parquet files in a Hive-partitioned long layout.

Layout under a root directory (by default ``$SDN_HOME/predictions``)::

    outputs/architecture=<arch>/dataset=<dataset>/train_mode=<mode>/<run_id>.<split>.parquet
    logits/architecture=<arch>/dataset=<dataset>/train_mode=<mode>/<run_id>.<split>.parquet

``<split>`` is ``val`` or ``test``, and for a poisoned (backdoor) run also ``val_triggered`` and
``test_triggered`` (``storage.parquet_format.SPLITS``).

``outputs`` holds one row per (run, split, sample, exit): small, always written, what the analyses
and cross-run queries read. ``logits`` (only when asked for) holds the same keys plus the full logit
vector; it is a separate dataset because it is tens of times larger and rarely read.

Why this shape: a long layout lets pyarrow and DuckDB filter and aggregate across runs with plain
column predicates (``exit_index = 0``) whatever the number of exits; partitioning on the three
low-cardinality grid axes prunes whole directories; one file per (run, split) makes a rewrite a
single atomic rename. Each file records its schema version and run identity in its footer, so the
files alone are enough to rebuild the catalogue.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from sdn.results import Outputs
from storage.errors import StorageError, choice_error, one_line
from storage.parquet_format import (
    FILE_SCHEMAS,
    KINDS,
    PARTITION_KEYS,
    SPLITS,
    GroupWriter,
    check_version,
    chunks,
    file_metadata,
    grid_shape,
    logits_table,
    outputs_table,
    read_file,
)

_PARTITIONING = ds.partitioning(
    pa.schema([(k, pa.string()) for k in PARTITION_KEYS]), flavor="hive"
)
# Keyword filters accepted by the query helpers; short aliases match the catalogue's filter names.
FILTER_COLUMNS = ("run_id", "split", *PARTITION_KEYS)
_FILTER_ALIASES = {"arch": "architecture", "mode": "train_mode"}

# Rows buffered before a row group is written: big enough for efficient scans, small enough that
# memory stays bounded by this (not by the number of samples) however large the split is.
ROW_GROUP_ROWS = 1 << 16
LOGIT_VALUES_PER_GROUP = 1 << 22
# A temporary file whose writer cannot be checked (another host, an older name) is only removed
# once it is this old: no write of one split takes a day, and removing a live one would fail it.
STALE_TEMP_S = 24 * 3600.0


@dataclass(frozen=True)
class RunKey:
    """What places a run's files: its id and the three partition values."""

    run_id: str
    arch: str
    dataset: str
    mode: str


def _segment(value: str) -> str:
    """A path segment for ``value`` that round-trips through Hive URI decoding (pyarrow, DuckDB).

    Percent-encoding keeps ``folder:<path>`` data set names and odd run ids on one level; a leading
    ``.`` or ``_`` is encoded too, because dataset readers skip files that start with them.
    """
    text = quote(value, safe="")
    if text[:1] in (".", "_"):
        text = f"%{ord(text[0]):02X}{text[1:]}"
    return text


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise choice_error("split", split, SPLITS)


class PredictionStore:
    """Reads and writes the Parquet predictions under ``root``; safe for concurrent writers."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------------ paths
    def path_for(self, key: RunKey, split: str, kind: str = "outputs") -> Path:
        """The file that holds ``key``'s ``split`` (it may not exist yet)."""
        _check_split(split)
        partition = "/".join(
            f"{name}={_segment(value)}"
            for name, value in zip(PARTITION_KEYS, (key.arch, key.dataset, key.mode), strict=True)
        )
        return self.root / kind / partition / f"{_segment(key.run_id)}.{split}.parquet"

    def readable(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` exists and its footer reads as a predictions file of a known version
        (cheap: the footer only). The sweep driver re-analyses runs whose files are not."""
        try:
            check_version(path, pq.ParquetFile(path).schema_arrow.metadata)
        except (StorageError, pa.ArrowException, OSError):
            return False
        return True

    def files_for_run(self, run_id: str, kind: str | None = None) -> list[Path]:
        """Every file of ``run_id`` (every split; both kinds unless ``kind`` is given), sorted."""
        kinds = KINDS if kind is None else (kind,)
        stem = _segment(run_id)
        names = {f"{stem}.{split}.parquet" for split in SPLITS}
        found: list[Path] = []
        for k in kinds:
            base = self.root / k
            if base.is_dir():
                # The escaped stem contains no glob metacharacters; the exact-name check stops
                # run "a" from matching run "a.b"'s files.
                found += [p for p in base.glob(f"*/*/*/{stem}.*.parquet") if p.name in names]
        return sorted(found)

    def _find(self, run: RunKey | str, split: str, kind: str) -> Path:
        _check_split(split)
        if isinstance(run, RunKey):
            path = self.path_for(run, split, kind)
            if path.is_file():
                return path
            run_id = run.run_id
        else:
            run_id = run
        matches = [
            p for p in self.files_for_run(run_id, kind) if p.name.endswith(f".{split}.parquet")
        ]
        if not matches:
            raise StorageError(f"no {kind} for run {run_id!r} split {split!r} under {self.root}")
        if len(matches) > 1:
            raise StorageError(
                f"run {run_id!r} split {split!r} has files in several partitions: "
                + ", ".join(str(p) for p in matches)
            )
        return matches[0]

    # ------------------------------------------------------------------ writing
    def write(
        self,
        key: RunKey,
        split: str,
        outputs: Outputs | Iterable[Outputs],
        keep_logits: bool = False,
    ) -> Path:
        """Write (or atomically replace) ``key``'s predictions for ``split``; return the file.

        ``outputs`` is one :class:`Outputs` or an iterable of per-batch ones (e.g.
        ``sdn.analysis.iter_outputs``): batches are converted and flushed as row groups while they
        arrive, so memory grows with the batch size and not with the split. The data goes to a
        hidden temporary file in the final directory and is renamed over the old file only when
        complete, so a reader sees the old file or the new one, never a partial one; a writer
        killed mid-write leaves only that hidden file, which the next write removes. A full or
        read-only disk fails with a StorageError naming the file, the old file intact. Rewriting
        without ``keep_logits`` removes an older logits file, which would no longer match.
        """
        _check_split(split)
        parts: Iterable[Outputs] = [outputs] if isinstance(outputs, Outputs) else outputs
        final = {"outputs": self.path_for(key, split, "outputs")}
        if keep_logits:
            final["logits"] = self.path_for(key, split, "logits")
        for path in final.values():
            _remove_dead_temps(path)
        tmp = {k: _temp_name(p) for k, p in final.items()}
        writers: dict[str, GroupWriter] = {}
        try:
            num_exits = None
            for part in parts:
                if not isinstance(part, Outputs):
                    raise StorageError(f"expected sdn.results.Outputs, got {type(part).__name__}")
                if num_exits is None:
                    num_exits = part.num_exits
                    meta = file_metadata(key, split, num_exits)
                    limits = {"outputs": ROW_GROUP_ROWS}
                    if keep_logits:
                        classes = part.logits.shape[-1] if part.logits is not None else 1
                        limits["logits"] = max(1024, LOGIT_VALUES_PER_GROUP // max(classes, 1))
                    for kind, path in tmp.items():
                        path.parent.mkdir(parents=True, exist_ok=True)
                        schema = FILE_SCHEMAS[kind].with_metadata(meta)
                        writers[kind] = GroupWriter(path, schema, limits[kind])
                elif part.num_exits != num_exits:
                    raise StorageError(
                        f"run {key.run_id!r}: a batch has {part.num_exits} exits, earlier ones {num_exits}"
                    )
                for chunk in chunks(part):
                    writers["outputs"].add(outputs_table(key.run_id, split, chunk))
                    if keep_logits:
                        writers["logits"].add(logits_table(key.run_id, split, chunk))
            if num_exits is None:
                raise StorageError(f"run {key.run_id!r} split {split!r}: no outputs to write")
            for w in writers.values():
                w.close()
            for kind, path in tmp.items():
                os.replace(path, final[kind])
        except BaseException as exc:
            for w in writers.values():
                w.abort()
            for path in tmp.values():
                path.unlink(missing_ok=True)
            if isinstance(exc, OSError | pa.ArrowException):  # disk full, read-only, I/O error
                raise StorageError(
                    f"cannot write predictions file {final['outputs']}: {one_line(exc)}"
                ) from None
            raise
        self._remove_stale(key, split, keep=set(final.values()))
        return final["outputs"]

    def _remove_stale(self, key: RunKey, split: str, keep: set[Path]) -> None:
        """Drop this run's files for ``split`` that the write just made obsolete: old logits, or
        copies left in another partition (a run re-labelled with different grid values)."""
        for path in self.files_for_run(key.run_id):
            if path.name.endswith(f".{split}.parquet") and path not in keep:
                path.unlink(missing_ok=True)

    def delete_run(self, run_id: str) -> list[Path]:
        """Remove every file of ``run_id``; return what was removed."""
        removed = self.files_for_run(run_id)
        for path in removed:
            path.unlink(missing_ok=True)
        return removed

    # ------------------------------------------------------------------ reading one run
    def read_outputs(self, run: RunKey | str, split: str, with_logits: bool = False) -> Outputs:
        """One run's ``split`` as an :class:`Outputs` ([N, E] arrays, samples in index order)."""
        path = self._find(run, split, "outputs")
        table = read_file(path).sort_by(
            [("sample_index", "ascending"), ("exit_index", "ascending")]
        )
        n, e = grid_shape(path, table)

        def column(name: str, dtype: Any) -> np.ndarray:
            return table.column(name).to_numpy().astype(dtype, copy=False)

        logits = None
        if with_logits:
            lpath = self._find(run, split, "logits")
            lt = read_file(lpath).sort_by(
                [("sample_index", "ascending"), ("exit_index", "ascending")]
            )
            if not lt.column("sample_index").equals(table.column("sample_index")) or not lt.column(
                "exit_index"
            ).equals(table.column("exit_index")):
                raise StorageError(f"{lpath} does not have the same samples and exits as {path}")
            values = lt.column("logits").combine_chunks().flatten().to_numpy()
            logits = values.reshape(n, e, -1).astype(np.float32, copy=False) if n else None
        entropies = None
        if "entropy" in table.column_names and table.column("entropy").null_count == 0:
            entropies = column("entropy", np.float32).reshape(n, e)
        return Outputs(
            labels=column("label", np.int64)[::e],
            preds=column("pred", np.int64).reshape(n, e),
            confidences=column("confidence", np.float32).reshape(n, e),
            confusion=column("confusion", np.float32)[::e],
            logits=logits,
            sample_index=column("sample_index", np.int64)[::e],
            entropies=entropies,
        )

    # ------------------------------------------------------------------ reading across runs
    def dataset(self, kind: str = "outputs", validate: bool = True) -> ds.Dataset:
        """A pyarrow dataset over every file of ``kind``, with the partition columns attached.

        ``validate`` reads each file's footer first, so that a corrupted file or one of a newer
        schema version fails here with its path instead of midway through a scan.
        """
        if kind not in KINDS:
            raise choice_error("predictions kind", kind, KINDS)
        schema = FILE_SCHEMAS[kind]
        for name in PARTITION_KEYS:
            schema = schema.append(pa.field(name, pa.string()))
        base = self.root / kind
        if not base.is_dir():
            return ds.dataset([], schema=schema, format="parquet")
        try:
            dataset = ds.dataset(base, schema=schema, format="parquet", partitioning=_PARTITIONING)
        except (pa.ArrowException, OSError) as exc:
            raise StorageError(f"cannot open predictions under {base}: {one_line(exc)}") from None
        if validate:
            for fragment in dataset.get_fragments():
                try:
                    metadata = fragment.physical_schema.metadata
                except (pa.ArrowException, OSError) as exc:
                    raise StorageError(
                        f"corrupted predictions file {fragment.path}: {one_line(exc)}"
                    ) from None
                check_version(fragment.path, metadata)
        return dataset

    def query(
        self,
        filter: ds.Expression | None = None,
        columns: Sequence[str] | None = None,
        kind: str = "outputs",
        **filters: Any,
    ) -> pa.Table:
        """Rows of every run matching ``filter`` and the keyword filters (``arch="vgg16"``,
        ``split=["val", "test"]``...), as a pyarrow Table with the partition columns."""
        expression = _filter_expression(filters)
        if filter is not None:
            expression = filter if expression is None else expression & filter
        dataset = self.dataset(kind)
        try:
            return dataset.to_table(columns=list(columns) if columns else None, filter=expression)
        except (pa.ArrowException, OSError) as exc:
            raise StorageError(
                f"predictions query under {self.root} failed: {one_line(exc)}"
            ) from None

    def per_exit_accuracy(self, engine: str = "pyarrow", **filters: Any) -> pd.DataFrame:
        """Accuracy of every exit of every matching run and split.

        Columns ``run_id, split, exit_index, samples, accuracy``, sorted by them. ``engine`` is
        ``"pyarrow"`` (streams record batches, aggregating each) or ``"duckdb"`` (one SQL query
        over the same files); both give the same numbers.
        """
        if engine == "duckdb":
            return self._per_exit_accuracy_duckdb(filters)
        if engine != "pyarrow":
            raise choice_error("engine", engine, ("pyarrow", "duckdb"))
        keys = ["run_id", "split", "exit_index"]
        scanner = self.dataset().scanner(
            columns=[*keys, "correct"], filter=_filter_expression(filters)
        )
        partials = []
        try:
            for batch in scanner.to_batches():
                if batch.num_rows:
                    partials.append(
                        pa.Table.from_batches([batch])
                        .group_by(keys)
                        .aggregate([("correct", "sum"), ("correct", "count")])
                    )
        except (pa.ArrowException, OSError) as exc:
            raise StorageError(
                f"predictions query under {self.root} failed: {one_line(exc)}"
            ) from None
        if not partials:
            return pd.DataFrame(
                {"run_id": pd.Series(dtype=str), "split": pd.Series(dtype=str),
                 "exit_index": pd.Series(dtype="int16"), "samples": pd.Series(dtype="int64"),
                 "accuracy": pd.Series(dtype="float64")}
            )  # fmt: skip
        totals = (
            pa.concat_tables(partials)
            .group_by(keys)
            .aggregate([("correct_sum", "sum"), ("correct_count", "sum")])
        )
        frame = totals.to_pandas()
        frame["samples"] = frame.pop("correct_count_sum").astype("int64")
        frame["accuracy"] = frame.pop("correct_sum_sum").astype("float64") / frame["samples"]
        return frame.sort_values(keys, ignore_index=True)

    def _per_exit_accuracy_duckdb(self, filters: dict[str, Any]) -> pd.DataFrame:
        where, params = _sql_where(filters)
        frame = self.duckdb(
            "SELECT run_id, split, exit_index, count(*) AS samples, avg(correct::DOUBLE) AS accuracy "
            f"FROM predictions {where} GROUP BY ALL ORDER BY run_id, split, exit_index",
            params,
        )
        frame["exit_index"] = frame["exit_index"].astype("int16")
        frame["samples"] = frame["samples"].astype("int64")
        return frame

    def duckdb(self, sql: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        """Run ``sql`` in DuckDB with views ``predictions`` and ``logits`` over the files.

        Each view is ``read_parquet('<root>/<kind>/**/*.parquet', hive_partitioning = true)`` (an
        empty view of the right columns when there are no files yet). The connection is in-memory
        and private to this call, so a query cannot change the files.
        """
        import duckdb

        try:
            with duckdb.connect(":memory:") as con:
                for view, kind in (("predictions", "outputs"), ("logits", "logits")):
                    con.execute(f"CREATE VIEW {view} AS {self._duckdb_source(kind)}")
                return con.execute(sql, list(params) if params else None).df()
        except duckdb.Error as exc:
            raise StorageError(f"DuckDB query over {self.root} failed: {one_line(exc)}") from None

    def _duckdb_source(self, kind: str) -> str:
        base = self.root / kind
        if base.is_dir() and next(base.glob("*/*/*/*.parquet"), None) is not None:
            pattern = str(base / "**" / "*.parquet").replace("'", "''")
            types = ", ".join(f"'{k}': VARCHAR" for k in PARTITION_KEYS)
            return (
                f"SELECT * FROM read_parquet('{pattern}', hive_partitioning = true, "
                f"hive_types = {{{types}}}, union_by_name = true)"
            )
        columns = [(f.name, f.type) for f in FILE_SCHEMAS[kind]] + [
            (k, pa.string()) for k in PARTITION_KEYS
        ]
        select = ", ".join(f"CAST(NULL AS {_DUCKDB_TYPES[t]}) AS {n}" for n, t in columns)
        return f"SELECT {select} WHERE false"


_DUCKDB_TYPES = {
    pa.string(): "VARCHAR",
    pa.int64(): "BIGINT",
    pa.int32(): "INTEGER",
    pa.int16(): "SMALLINT",
    pa.bool_(): "BOOLEAN",
    pa.float32(): "FLOAT",
    pa.list_(pa.float32()): "FLOAT[]",
}


_HOST = socket.gethostname()


def _temp_name(final: Path) -> Path:
    """A hidden temporary name beside ``final`` that records its writer (pid and host), so a
    later write can tell a dead writer's leftover from a live writer's file. Hidden names are
    skipped by pyarrow datasets, and DuckDB's ``*.parquet`` glob does not match them."""
    return final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:12]}-{os.getpid()}@{_HOST}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _remove_dead_temps(final: Path) -> None:
    """Delete temporary files of ``final`` left by writers that died mid-write (a killed
    analysis task): those of dead processes on this host, and any older than STALE_TEMP_S."""
    if not final.parent.is_dir():
        return
    now = time.time()
    for path in final.parent.glob(f".{final.name}.tmp-*"):
        writer = path.name.rpartition(".tmp-")[2]
        owner, _, host = writer.partition("@")
        pid = owner.rpartition("-")[2]
        try:
            dead = host == _HOST and pid.isdigit() and not _pid_alive(int(pid))
            if dead or now - path.stat().st_mtime > STALE_TEMP_S:
                path.unlink()
        except OSError:  # removed by someone else meanwhile
            continue


def _normalise_filters(filters: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, value in filters.items():
        column = _FILTER_ALIASES.get(name, name)
        if column not in FILTER_COLUMNS:
            raise choice_error("predictions filter", name, (*FILTER_COLUMNS, *_FILTER_ALIASES))
        out[column] = value
    return out


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]


def _filter_expression(filters: dict[str, Any]) -> ds.Expression | None:
    expression = None
    for column, value in _normalise_filters(filters).items():
        values = _as_list(value)
        term = pc.field(column).isin(values) if len(values) > 1 else pc.field(column) == values[0]
        expression = term if expression is None else expression & term
    return expression


def _sql_where(filters: dict[str, Any]) -> tuple[str, list[Any]]:
    """A WHERE clause with ``?`` placeholders: filter values are always bound, never pasted."""
    terms, params = [], []
    for column, value in _normalise_filters(filters).items():
        values = _as_list(value)
        terms.append(f"{column} IN ({', '.join('?' * len(values))})")
        params += values
    return ("WHERE " + " AND ".join(terms) if terms else ""), params
