"""The Parquet file format of the predictions: schemas, footer metadata, conversion of
``sdn.results.Outputs`` to long rows and back, and a row-group-buffering writer.

Kept apart from ``storage.predictions`` (which decides where files go and how they are queried)
so that the format, and its version, are defined in one place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sdn.results import Outputs
from storage.errors import StorageError, one_line

if TYPE_CHECKING:
    from storage.predictions import RunKey

#: 2 added ``entropy`` (each output's softmax entropy, for the entropy exit policy); files of
#: version 1 are still read (their entropy reads as null).
SCHEMA_VERSION = 2
VERSION_KEY = b"sdn.schema_version"
#: Split names a file may hold. ``val_triggered`` / ``test_triggered`` are a poisoned run's
#: backdoor evaluation splits (``sdn.backdoor``: every non-target image of val / test with the
#: trigger, TRUE label kept; ``sample_index`` is the image's position in the clean split, so a
#: triggered row joins its clean twin on it). Only the name list grew: files written before
#: they existed hold val / test and read as ever (the schema version is unchanged).
CLEAN_SPLITS = ("val", "test")
TRIGGERED_SPLITS = ("val_triggered", "test_triggered")
SPLITS = (*CLEAN_SPLITS, *TRIGGERED_SPLITS)
KINDS = ("outputs", "logits")
PARTITION_KEYS = ("architecture", "dataset", "train_mode")

KEY_FIELDS = [
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("sample_index", pa.int64(), nullable=False),
    pa.field("exit_index", pa.int16(), nullable=False),
]
OUTPUTS_SCHEMA = pa.schema(
    [
        *KEY_FIELDS,
        pa.field("is_final", pa.bool_(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),
        pa.field("pred", pa.int32(), nullable=False),
        pa.field("confidence", pa.float32(), nullable=False),
        pa.field("correct", pa.bool_(), nullable=False),
        pa.field("confusion", pa.float32(), nullable=False),
        pa.field("entropy", pa.float32(), nullable=True),
    ]
)
LOGITS_SCHEMA = pa.schema([*KEY_FIELDS, pa.field("logits", pa.list_(pa.float32()), nullable=False)])
FILE_SCHEMAS = {"outputs": OUTPUTS_SCHEMA, "logits": LOGITS_SCHEMA}

_CHUNK_SAMPLES = 1 << 15  # a huge single Outputs is converted in slices of this many samples


# ---------------------------------------------------------------------- conversion helpers
def file_metadata(key: RunKey, split: str, num_exits: int) -> dict[bytes, bytes]:
    """Footer metadata: the version guards readers; the identity lets a rebuild work from files."""
    return {
        VERSION_KEY: str(SCHEMA_VERSION).encode(),
        b"sdn.run_id": key.run_id.encode(),
        b"sdn.architecture": key.arch.encode(),
        b"sdn.dataset": key.dataset.encode(),
        b"sdn.train_mode": key.mode.encode(),
        b"sdn.split": split.encode(),
        b"sdn.num_exits": str(num_exits).encode(),
    }


def chunks(part: Outputs) -> Iterator[Outputs]:
    """Slices of at most ``_CHUNK_SAMPLES`` samples, so one huge Outputs converts in bounded steps."""
    n = part.num_samples
    if n <= _CHUNK_SAMPLES:
        yield part
        return
    for start in range(0, n, _CHUNK_SAMPLES):
        yield part.subset(slice(start, start + _CHUNK_SAMPLES))


def _key_arrays(run_id: str, split: str, part: Outputs) -> list[pa.Array]:
    n, e = part.preds.shape
    return [
        pa.repeat(run_id, n * e),
        pa.repeat(split, n * e),
        pa.array(np.repeat(np.asarray(part.sample_index, dtype=np.int64), e)),
        pa.array(np.tile(np.arange(e, dtype=np.int16), n)),
    ]


def outputs_table(run_id: str, split: str, part: Outputs) -> pa.Table:
    """Sample-major long rows: sample 0's exits 0..E-1, then sample 1's, and so on."""
    e = part.num_exits
    label = np.repeat(np.asarray(part.labels, dtype=np.int32), e)
    pred = np.asarray(part.preds, dtype=np.int32).reshape(-1)
    exit_index = np.tile(np.arange(e, dtype=np.int16), part.num_samples)
    arrays = [
        *_key_arrays(run_id, split, part),
        pa.array(exit_index == e - 1),
        pa.array(label),
        pa.array(pred),
        pa.array(np.asarray(part.confidences, dtype=np.float32).reshape(-1)),
        pa.array(pred == label),
        pa.array(np.repeat(np.asarray(part.confusion, dtype=np.float32), e)),
        pa.nulls(part.num_samples * e, pa.float32())
        if part.entropies is None
        else pa.array(np.asarray(part.entropies, dtype=np.float32).reshape(-1)),
    ]
    return pa.Table.from_arrays(arrays, schema=OUTPUTS_SCHEMA)


def logits_table(run_id: str, split: str, part: Outputs) -> pa.Table:
    if part.logits is None:
        raise StorageError(f"run {run_id!r}: keep_logits=True but a batch has no logits")
    n, e, c = part.logits.shape
    values = pa.array(np.asarray(part.logits, dtype=np.float32).reshape(-1))
    offsets = pa.array(np.arange(0, n * e * c + 1, c, dtype=np.int32))
    lists = pa.ListArray.from_arrays(offsets, values, type=pa.list_(pa.float32()))
    return pa.Table.from_arrays([*_key_arrays(run_id, split, part), lists], schema=LOGITS_SCHEMA)


class GroupWriter:
    """A ParquetWriter that buffers small batches into row groups of at most ``limit`` rows."""

    def __init__(self, path: Path, schema: pa.Schema, limit: int) -> None:
        # Dictionary encoding only pays for the repeated strings; on the numeric columns it made
        # files bigger and writes twice as slow (measured: 70k rows, 35 ms vs 78 ms).
        self.writer = pq.ParquetWriter(
            path, schema, compression="zstd", use_dictionary=["run_id", "split"]
        )
        self.limit = limit
        self.pending: list[pa.Table] = []
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.rows += table.num_rows
        if self.rows >= self.limit:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.writer.write_table(pa.concat_tables(self.pending), row_group_size=self.rows)
            self.pending, self.rows = [], 0

    def close(self) -> None:
        self.flush()
        self.writer.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # the file is deleted anyway
            self.writer.close()


# ---------------------------------------------------------------------- reading helpers
def check_version(path: str | Path, metadata: dict[bytes, bytes] | None) -> None:
    raw = (metadata or {}).get(VERSION_KEY)
    if raw is None:
        raise StorageError(
            f"{path} is not an sdn-workflows predictions file (no {VERSION_KEY.decode()})"
        )
    try:
        version = int(raw)
    except ValueError:
        raise StorageError(f"{path} has an unreadable predictions schema version {raw!r}") from None
    if version > SCHEMA_VERSION:
        raise StorageError(
            f"{path} has predictions schema version {version}, newer than this sdn-workflows "
            f"(reads up to {SCHEMA_VERSION}); upgrade sdn-workflows"
        )


def read_file(path: Path) -> pa.Table:
    try:
        file = pq.ParquetFile(path)
        check_version(path, file.schema_arrow.metadata)
        return file.read()
    except StorageError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise StorageError(f"corrupted predictions file {path}: {one_line(exc)}") from None


def grid_shape(path: Path, table: pa.Table) -> tuple[int, int]:
    """(N, E) of a sorted long table, checking that every sample has every exit exactly once."""
    meta = table.schema.metadata or {}
    exits = table.column("exit_index").to_numpy()
    e = int(meta.get(b"sdn.num_exits", b"0")) or (int(exits.max()) + 1 if len(exits) else 1)
    n, rest = divmod(table.num_rows, e)
    if rest or not np.array_equal(exits, np.tile(np.arange(e, dtype=exits.dtype), n)):
        raise StorageError(f"{path} does not hold every exit (0..{e - 1}) of every sample once")
    return n, e
