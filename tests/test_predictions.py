"""Parquet predictions: real files in a temporary directory."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from storage_factories import make_outputs

import storage.predictions as predictions
from sdn.results import Outputs
from storage import PredictionStore, RunKey, StorageError

VGG = RunKey("sw.vgg16.digits.sdn.s0", "vgg16", "digits", "sdn")
RESNET = RunKey("sw.resnet56.digits.cnn.s0", "resnet56", "digits", "cnn")


def assert_same(a: Outputs, b: Outputs) -> None:
    for name in ("labels", "preds", "confidences", "confusion", "sample_index", "entropies"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    if a.logits is None:
        assert b.logits is None
    else:
        np.testing.assert_array_equal(a.logits, b.logits)


def test_round_trip_with_logits(tmp_path):
    store = PredictionStore(tmp_path)
    out = make_outputs(n=40, exits=5, logits=True)
    path = store.write(VGG, "test", out, keep_logits=True)
    assert path == tmp_path / "outputs/architecture=vgg16/dataset=digits/train_mode=sdn" / (
        "sw.vgg16.digits.sdn.s0.test.parquet"
    )
    assert_same(store.read_outputs(VGG, "test", with_logits=True), out)
    back = store.read_outputs(VGG.run_id, "test")  # by id alone, without logits
    assert back.logits is None
    np.testing.assert_array_equal(back.preds, out.preds)
    table = pq.read_table(path)
    assert table.num_rows == 40 * 5
    assert table.schema.metadata[b"sdn.schema_version"] == b"2"
    assert table.column("is_final").to_pylist() == [e == 4 for e in range(5)] * 40


def test_rows_come_back_in_sample_order(tmp_path):
    store = PredictionStore(tmp_path)
    out = make_outputs(n=30, exits=3)
    order = np.random.default_rng(1).permutation(30)
    shuffled = Outputs(
        labels=out.labels[order],
        preds=out.preds[order],
        confidences=out.confidences[order],
        confusion=out.confusion[order],
        sample_index=(out.sample_index * 7 + 100)[order],  # sparse indices, as a val split has
    )
    store.write(VGG, "val", shuffled)
    back = store.read_outputs(VGG, "val")
    np.testing.assert_array_equal(back.sample_index, out.sample_index * 7 + 100)
    np.testing.assert_array_equal(back.preds, out.preds)


def test_streaming_writes_row_groups_while_batches_arrive(tmp_path, monkeypatch):
    monkeypatch.setattr(predictions, "ROW_GROUP_ROWS", 100 * 4)  # one batch per row group
    store = PredictionStore(tmp_path)
    parts = [make_outputs(n=100, exits=4, seed=i, start=100 * i) for i in range(8)]
    directory = store.path_for(VGG, "test").parent
    sizes = []

    def batches():
        for part in parts:
            temps = list(directory.glob(".*.tmp-*")) if directory.exists() else []
            sizes.append(sum(p.stat().st_size for p in temps))
            yield part

    path = store.write(VGG, "test", batches())
    assert sizes[-1] > sizes[2] > 0, sizes  # the file grew before the last batch was produced
    assert pq.ParquetFile(path).num_row_groups == 8
    assert not list(directory.glob(".*"))
    assert_same(store.read_outputs(VGG, "test"), Outputs.concat(parts))


def test_rewrite_replaces_and_temp_files_stay_invisible(tmp_path):
    store = PredictionStore(tmp_path)
    store.write(VGG, "test", make_outputs(seed=1))
    directory = store.path_for(VGG, "test").parent
    (directory / ".sw.vgg16.digits.sdn.s0.test.parquet.tmp-deadbeef").write_bytes(b"half a file")
    new = make_outputs(seed=2, n=20)
    store.write(VGG, "test", new)
    assert_same(store.read_outputs(VGG, "test"), new)
    assert store.dataset().count_rows() == 20 * 4
    assert store.duckdb("SELECT count(*) AS n FROM predictions").n[0] == 20 * 4
    assert len(store.files_for_run(VGG.run_id)) == 1


def test_failed_write_keeps_old_file(tmp_path):
    store = PredictionStore(tmp_path)
    old = make_outputs(seed=1)
    store.write(VGG, "test", old)

    def broken():
        yield make_outputs(seed=3)
        raise RuntimeError("worker died")

    with pytest.raises(RuntimeError):
        store.write(VGG, "test", broken())
    assert_same(store.read_outputs(VGG, "test"), old)
    assert not list(store.path_for(VGG, "test").parent.glob(".*"))


def test_bad_batches_are_refused(tmp_path):
    store = PredictionStore(tmp_path)
    with pytest.raises(StorageError, match="no outputs"):
        store.write(VGG, "test", iter([]))
    with pytest.raises(StorageError, match="exits"):
        store.write(VGG, "test", [make_outputs(exits=4), make_outputs(exits=3)])
    with pytest.raises(StorageError, match="no logits"):
        store.write(VGG, "test", make_outputs(), keep_logits=True)
    with pytest.raises(StorageError, match="unknown split"):
        store.write(VGG, "train", make_outputs())
    assert store.files_for_run(VGG.run_id) == []
    assert not list(tmp_path.rglob(".*tmp-*"))


def test_rewrite_without_logits_drops_stale_logits(tmp_path):
    store = PredictionStore(tmp_path)
    store.write(VGG, "test", make_outputs(logits=True), keep_logits=True)
    assert len(store.files_for_run(VGG.run_id, "logits")) == 1
    store.write(VGG, "test", make_outputs(seed=5))
    assert store.files_for_run(VGG.run_id, "logits") == []


def test_newer_schema_version_is_refused(tmp_path):
    store = PredictionStore(tmp_path)
    path = store.write(VGG, "test", make_outputs())
    table = pq.read_table(path)
    meta = {**table.schema.metadata, b"sdn.schema_version": b"3"}
    pq.write_table(table.replace_schema_metadata(meta), path)
    for read in (lambda: store.read_outputs(VGG, "test"), store.dataset):
        with pytest.raises(StorageError) as err:
            read()
        message = str(err.value)
        assert str(path) in message and "version 3" in message and "up to 2" in message
        assert "\n" not in message


def test_version_1_files_without_entropy_are_still_read(tmp_path):
    store = PredictionStore(tmp_path)
    out = make_outputs(n=20, exits=3)
    path = store.write(VGG, "test", out)
    store.write(RESNET, "test", make_outputs(n=10, exits=2, seed=4))  # a version-2 neighbour
    table = pq.read_table(path)
    old = table.drop_columns(["entropy"])
    meta = {**table.schema.metadata, b"sdn.schema_version": b"1"}
    pq.write_table(old.replace_schema_metadata(meta), path)
    back = store.read_outputs(VGG, "test")
    assert back.entropies is None
    np.testing.assert_array_equal(back.confidences, out.confidences)
    rows = store.query(columns=["run_id", "entropy"])
    by_run = rows.group_by("run_id").aggregate([("entropy", "count")]).to_pylist()
    assert {r["run_id"]: r["entropy_count"] for r in by_run} == {
        VGG.run_id: 0,
        RESNET.run_id: 20,
    }
    counts = store.duckdb("SELECT run_id, count(entropy) AS n FROM predictions GROUP BY run_id")
    assert dict(zip(counts["run_id"], counts["n"], strict=True)) == {
        VGG.run_id: 0,
        RESNET.run_id: 20,
    }


def test_corrupted_file_is_one_line_error_naming_it(tmp_path):
    store = PredictionStore(tmp_path)
    store.write(RESNET, "test", make_outputs())
    path = store.write(VGG, "test", make_outputs())
    path.write_bytes(b"PAR1 this is not parquet")
    for read in (
        lambda: store.read_outputs(VGG, "test"),
        store.dataset,
        store.per_exit_accuracy,
        lambda: store.duckdb("SELECT count(*) FROM predictions"),
    ):
        with pytest.raises(StorageError) as err:
            read()
        assert "\n" not in str(err.value)
        assert str(path) in str(err.value)


def test_per_exit_accuracy_pyarrow_and_duckdb_agree(tmp_path):
    store = PredictionStore(tmp_path)
    data = {
        (VGG, "val"): make_outputs(n=60, seed=1),
        (VGG, "test"): make_outputs(n=80, seed=2),
        (RESNET, "test"): make_outputs(n=70, exits=1, seed=3),
    }
    for (key, split), out in data.items():
        store.write(key, split, out)
    by_arrow = store.per_exit_accuracy()
    by_duck = store.per_exit_accuracy(engine="duckdb")
    assert len(by_arrow) == 4 + 4 + 1
    assert list(by_arrow.columns) == ["run_id", "split", "exit_index", "samples", "accuracy"]
    np.testing.assert_allclose(by_arrow.accuracy, by_duck.accuracy)
    assert by_arrow[["run_id", "split", "exit_index", "samples"]].equals(
        by_duck[["run_id", "split", "exit_index", "samples"]]
    )
    vgg_test = by_arrow[(by_arrow.run_id == VGG.run_id) & (by_arrow.split == "test")]
    np.testing.assert_allclose(vgg_test.accuracy, data[(VGG, "test")].correct.mean(axis=0))
    only = store.per_exit_accuracy(arch="vgg16", split="test")
    assert set(only.run_id) == {VGG.run_id} and set(only.split) == {"test"}
    same = store.per_exit_accuracy(engine="duckdb", architecture=["vgg16"], split="test")
    np.testing.assert_allclose(only.accuracy, same.accuracy)


def test_queries_across_runs(tmp_path):
    store = PredictionStore(tmp_path)
    store.write(VGG, "test", make_outputs(n=10))
    store.write(RESNET, "test", make_outputs(n=10, exits=1))
    finals = store.query(ds.field("is_final"), columns=["run_id", "architecture", "correct"])
    assert finals.num_rows == 20
    assert set(finals.column("architecture").to_pylist()) == {"vgg16", "resnet56"}
    first = store.query(ds.field("exit_index") == 0, mode="sdn")
    assert first.num_rows == 10 and set(first.column("train_mode").to_pylist()) == {"sdn"}
    with pytest.raises(StorageError, match="unknown predictions filter 'model'"):
        store.query(model="vgg16")
    df = store.duckdb(
        "SELECT architecture, count(*) AS n FROM predictions WHERE exit_index = ? "
        "GROUP BY ALL ORDER BY architecture",
        [0],
    )
    assert df.to_dict("list") == {"architecture": ["resnet56", "vgg16"], "n": [10, 10]}
    with pytest.raises(StorageError, match="DuckDB query"):
        store.duckdb("SELECT nope FROM predictions")


def test_empty_store_reads_as_empty(tmp_path):
    store = PredictionStore(tmp_path / "nothing-yet")
    assert store.dataset().count_rows() == 0
    assert store.per_exit_accuracy().empty
    assert store.duckdb("SELECT count(*) AS n FROM predictions").n[0] == 0
    with pytest.raises(StorageError, match="no outputs for run"):
        store.read_outputs("x", "test")


def test_files_for_run_and_delete(tmp_path):
    store = PredictionStore(tmp_path)
    a = RunKey("a", "vgg16", "digits", "sdn")
    ab = RunKey("a.b", "vgg16", "digits", "sdn")
    for key in (a, ab):
        store.write(key, "val", make_outputs(logits=True), keep_logits=True)
        store.write(key, "test", make_outputs())
    assert [p.name for p in store.files_for_run("a")] == [
        "a.val.parquet",
        "a.test.parquet",
        "a.val.parquet",
    ]
    removed = store.delete_run("a")
    assert len(removed) == 3 and store.files_for_run("a") == []
    assert len(store.files_for_run("a.b")) == 3


def test_odd_names_round_trip(tmp_path):
    store = PredictionStore(tmp_path)
    key = RunKey("_sw.vgg16.folder:/data/x y.sdn.s0", "vgg16", "folder:/data/x y", "sdn")
    out = make_outputs(n=5)
    store.write(key, "test", out)
    assert_same(store.read_outputs(key.run_id, "test"), out)
    table = store.query(columns=["run_id", "dataset"])
    assert set(table.column("dataset").to_pylist()) == {"folder:/data/x y"}
    assert set(table.column("run_id").to_pylist()) == {key.run_id}
    df = store.duckdb("SELECT DISTINCT dataset FROM predictions")
    assert df.dataset.tolist() == ["folder:/data/x y"]


def test_dataset_schema_types(tmp_path):
    store = PredictionStore(tmp_path)
    store.write(VGG, "test", make_outputs(logits=True), keep_logits=True)
    schema = store.dataset().schema
    assert schema.field("exit_index").type == pa.int16()
    assert schema.field("architecture").type == pa.string()
    logits = store.dataset("logits").to_table()
    assert logits.schema.field("logits").type == pa.list_(pa.float32())


def test_triggered_splits_are_stored_under_their_names(tmp_path):
    """A poisoned run's triggered splits are files of their own; ``sample_index`` keeps the
    clean twin's position (not 0..N-1); a clean run of the same cell is not confused with it."""
    store = PredictionStore(tmp_path)
    tag = "badnets-t5-r0p10-s0-sq5at26x26-white"
    clean = RunKey("sw.vgg16.digits.cnn.s0", "vgg16", "digits", "cnn")
    poisoned = RunKey(f"{clean.run_id}.{tag}", "vgg16", "digits", "cnn")
    for key in (clean, poisoned):
        for split in ("val", "test"):
            store.write(key, split, make_outputs(n=12, exits=1))
    triggered = make_outputs(n=9, exits=1)
    triggered.sample_index = np.array([0, 1, 3, 4, 6, 7, 8, 10, 11], dtype=np.int64)
    store.write(poisoned, "test_triggered", triggered)
    store.write(poisoned, "val_triggered", make_outputs(n=5, exits=1))
    assert_same(store.read_outputs(poisoned.run_id, "test_triggered"), triggered)
    names = sorted(
        p.name.removeprefix(poisoned.run_id) for p in store.files_for_run(poisoned.run_id)
    )
    assert names == [
        ".test.parquet",
        ".test_triggered.parquet",
        ".val.parquet",
        ".val_triggered.parquet",
    ]
    assert len(store.files_for_run(clean.run_id)) == 2
    with pytest.raises(StorageError, match="no outputs for run"):
        store.read_outputs(clean.run_id, "test_triggered")
    splits = store.duckdb("SELECT DISTINCT split FROM predictions ORDER BY split").split.tolist()
    assert splits == ["test", "test_triggered", "val", "val_triggered"]
    with pytest.raises(StorageError, match="split"):
        store.write(poisoned, "train_triggered", triggered)
