"""Rebuilding the catalogue from MLflow and the Parquet files alone.

A module fixture lays out two sweeps in a real MLflow SQLite store exactly as the workflows do
(``storage.mlflow_layout``): experiment ``sweep-<name>``, a parent run with ``sweep/spec.json``,
nested cell runs with grid tags, ``train.*`` params and ``analysis/summary.json``, one model
logged through ``Registry.log_model`` and cheap registered versions for others. The same facts
are recorded in an "original" catalogue through the normal ``Catalogue`` API; a rebuild must give
back the same query results.
"""

from __future__ import annotations

import importlib
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from storage_factories import POISON_TAG, make_outputs, make_poisoned_summary, make_summary

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from sdn.training import TrainConfig
from storage import Catalogue, PredictionStore, RunKey, RunRecord, StorageError
from storage.catalogue import STATUSES, rebuild
from storage.mlflow_layout import (
    KIND_TAG,
    RUN_ID_TAG,
    SPEC_ARTIFACT,
    SUMMARY_ARTIFACT,
    SWEEP_TAG,
    experiment_name,
)

pytestmark = pytest.mark.integration
rebuild_module = importlib.import_module("storage.catalogue.rebuild")  # the name is the function

CODE = "abc1234"
SPECS = {"demo": {"name": "demo", "grid": {"architectures": ["resnet56"], "seeds": [0, 1, 2]}}}
T0 = 1_700_000_000_000  # ms; runs start a minute apart so "earliest" is well defined
TIMESTAMPS = ["started_at", "ended_at"]


@dataclass
class Cell:
    sweep: str
    arch: str
    mode: str
    seed: int
    mlflow_status: str  # FINISHED, FAILED or RUNNING
    expected: str  # catalogue status after a rebuild
    summary: bool = False
    parquet: bool = False
    model: str | None = None  # "log" (Registry.log_model), "plain" (a bare version) or None
    poison: str | None = None  # a poisoned cell's tag: in its run id, tags and model name

    @property
    def run_id(self) -> str:
        text = f"{self.sweep}.{self.arch}.digits.{self.mode}.s{self.seed}"
        return text if self.poison is None else f"{text}.{self.poison}"


CELLS = [
    Cell("demo", "resnet56", "sdn", 0, "FINISHED", "done", summary=True, parquet=True, model="log"),
    Cell("demo", "resnet56", "ic_only", 0, "FINISHED", "done", summary=True, parquet=True),
    Cell("demo", "resnet56", "sdn", 1, "FINISHED", "trained", model="plain"),
    Cell("demo", "resnet56", "sdn", 2, "FINISHED", "trained", summary=True, model="plain"),
    Cell("demo", "resnet56", "ic_only", 1, "FAILED", "failed"),
    Cell("demo", "resnet56", "ic_only", 2, "RUNNING", "running"),
    Cell("tiny", "vgg16", "sdn", 0, "FINISHED", "done", summary=True, parquet=True),
    # A poisoned twin of the first cell: same grid point, its own identity and backdoor figures.
    Cell(
        "demo",
        "resnet56",
        "sdn",
        0,
        "FINISHED",
        "done",
        summary=True,
        parquet=True,
        model="log",
        poison=POISON_TAG,
    ),
]


def _params(cell: Cell) -> dict[str, str]:
    """What ``workflows.trainable`` logs: the resolved TrainConfig as ``train.*`` and a few more."""
    train = TrainConfig(cell.arch, "digits", cell.mode, epochs=3, width=0.125, seed=cell.seed)
    values = {f"train.{k}": v for k, v in train.resolved().to_dict().items()}
    values.update(run_id=cell.run_id, code_version=CODE, host="test")
    return {k: str(v) for k, v in values.items() if v is not None}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    from mlflow.entities import Param
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    from sdn.models import build_sdn
    from storage.mlflow_setup import ensure_tracking_store, make_client
    from storage.registry import Registry

    root = tmp_path_factory.mktemp("rebuild")
    uri = f"sqlite:///{root}/mlflow.db"
    ensure_tracking_store(uri)
    client = make_client(uri)
    registry = Registry(uri)
    preds = PredictionStore(root / "predictions")
    original = Catalogue(root / "original.db")
    clock = iter(range(T0, T0 + 10**9, 60_000))

    parents = {}
    for sweep in ("demo", "tiny"):
        exp = client.create_experiment(
            experiment_name(sweep),
            artifact_location=str(root / "artifacts" / sweep),
            tags={SWEEP_TAG: sweep},
        )
        parent = client.create_run(
            exp, start_time=next(clock), tags={SWEEP_TAG: sweep, KIND_TAG: "sweep"}
        )
        client.log_param(parent.info.run_id, "code_version", CODE)
        if sweep in SPECS:  # "tiny" has no spec artifact: the rebuild records {}
            client.log_dict(parent.info.run_id, SPECS[sweep], SPEC_ARTIFACT)
        parents[sweep] = (exp, parent.info.run_id)
        original.upsert_sweep(sweep, SPECS.get(sweep, {}), CODE)

    mlflow_ids = {}
    for i, cell in enumerate(CELLS):
        exp, parent_id = parents[cell.sweep]
        tags = {
            RUN_ID_TAG: cell.run_id,
            KIND_TAG: "cell",
            MLFLOW_PARENT_RUN_ID: parent_id,
            "architecture": cell.arch,
            "dataset": "digits",
            "mode": cell.mode,
            "seed": str(cell.seed),
            SWEEP_TAG: cell.sweep,
            "code_version": CODE,
        }
        if cell.poison is not None:  # as workflows.trainable tags a poisoned cell
            from sdn.backdoor import PoisonConfig

            assert PoisonConfig().tag == cell.poison
            tags.update(PoisonConfig().identity())
        run = client.create_run(exp, start_time=next(clock), tags=tags)
        mid = mlflow_ids[cell.run_id] = run.info.run_id
        params = _params(cell)
        client.log_batch(mid, params=[Param(k, v) for k, v in params.items()])
        version = None
        if cell.model == "log":
            model = build_sdn(cell.arch, 10, 32, width=0.125)
            keys = ("architecture", "dataset", "mode", "seed", "backdoor")
            model_tags = {k: tags[k] for k in keys if k in tags}
            version = registry.log_model(model, run_id=mid, tags={**model_tags, "sweep": "demo"})
        elif cell.model == "plain":
            name = f"sdn-{cell.arch}-digits-{cell.mode}"
            if not client.search_registered_models(f"name = '{name}'"):
                client.create_registered_model(name)
            version = client.create_model_version(name, source=f"{root}/fake/{mid}", run_id=mid)
        make = make_poisoned_summary if cell.poison else make_summary
        summary = make(exits=4, seed=i) if cell.summary else None
        if summary is not None:
            client.log_dict(mid, summary.to_dict(), SUMMARY_ARTIFACT)
        parquet_path = None
        if cell.parquet:
            key = RunKey(cell.run_id, cell.arch, "digits", cell.mode)
            splits = ("val", "test") + (("val_triggered", "test_triggered") if cell.poison else ())
            for split in splits:
                path = preds.write(key, split, make_outputs(n=30, exits=4, seed=i))
            parquet_path = str(path.parent)
        if cell.mlflow_status != "RUNNING":
            client.set_terminated(mid, cell.mlflow_status, end_time=next(clock))
        original.upsert_run(
            RunRecord(
                cell.run_id,
                cell.sweep,
                cell.arch,
                "digits",
                cell.mode,
                cell.seed,
                width=0.125,
                epochs=3,
                status=cell.expected,
                mlflow_run_id=mid,
                model_name=None if version is None else version.name,
                model_version=None if version is None else str(version.version),
                parquet_path=parquet_path,
                code_version=CODE,
                config=params,
                poison=cell.poison,
            )
        )
        if summary is not None:
            original.record_summary(cell.run_id, summary)

    # A later duplicate of a cell's MLflow run (a lost race in ensure_cell_run): ignored.
    exp, parent_id = parents["demo"]
    dup = client.create_run(
        exp,
        start_time=next(clock),
        tags={RUN_ID_TAG: CELLS[0].run_id, KIND_TAG: "cell", "architecture": "resnet56"},
    )
    client.set_terminated(dup.info.run_id, "FAILED")
    # Not a sweep's experiment: ignored. Predictions of a run MLflow does not know: not catalogued.
    client.create_run(client.create_experiment("notes"), tags={KIND_TAG: "cell"})
    preds.write(
        RunKey("ghost.vgg16.digits.sdn.s0", "vgg16", "digits", "sdn"), "test", make_outputs()
    )
    original.close()
    return SimpleNamespace(
        root=root, uri=uri, preds=preds.root, original=root / "original.db", mlflow_ids=mlflow_ids
    )


def frames(path: Path) -> dict[str, pd.DataFrame]:
    with Catalogue(path) as cat:
        return {
            "runs": cat.runs().drop(columns=[*TIMESTAMPS, "error"]),
            "exits": cat.exits(),
            "overthinking": cat.overthinking(),
            "drop": cat.best_early_exit(max_accuracy_drop=0.01),
            "budget": cat.best_early_exit(cost_budget=0.5, per_run=True),
            "odd_target": cat.best_early_exit(max_accuracy_drop=0.013),
            "sweeps": cat.sql("SELECT name, spec, code_version FROM sweeps ORDER BY name"),
            "backdoor": cat.backdoor(),
            "backdoor_summaries": cat.backdoor_summaries(),
        }


def assert_same(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], obj=name)


def fingerprint(path: Path) -> tuple[int, int, bytes]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, path.read_bytes()


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@pytest.fixture(scope="module")
def expected(world) -> dict[str, pd.DataFrame]:
    return frames(world.original)


@pytest.fixture(scope="module")
def rebuilt(world):
    """One rebuild into a fresh path; tests that need an existing catalogue copy it."""
    target = world.root / "fresh" / "catalogue.db"
    counts = rebuild(target, world.preds, world.uri)
    return SimpleNamespace(path=target, counts=counts)


def existing_catalogue(rebuilt, folder: Path) -> Path:
    target = folder / "catalogue.db"
    shutil.copy(rebuilt.path, target)  # a sealed rebuild is one self-contained file
    return target


def test_rebuild_reproduces_the_catalogue(world, rebuilt, expected) -> None:
    assert rebuilt.counts == {
        **dict.fromkeys(STATUSES, 0),
        "sweeps": 2,
        "runs": len(CELLS),
        "summaries": 5,
        "models": 4,
        "predictions": 4,
        "running": 1,
        "trained": 2,
        "done": 4,
        "failed": 1,
        "duplicate_mlflow_runs": 1,
        "orphan_predictions": 1,
    }
    found = frames(rebuilt.path)
    assert not found["exits"].empty and not found["drop"].empty
    assert set(found["backdoor"].run_id) == {CELLS[-1].run_id}  # restored from summary.json
    assert len(found["backdoor_summaries"]) == 1
    assert_same(found, expected)
    assert leftovers(rebuilt.path.parent, keep={"catalogue.db"}) == []

    with Catalogue(rebuilt.path) as cat:
        runs = cat.runs().set_index("run_id")
        assert cat.sql("PRAGMA journal_mode").iloc[0, 0] == "wal"  # back to WAL when opened
    first = runs.loc[CELLS[0].run_id]
    assert first.mlflow_run_id == world.mlflow_ids[CELLS[0].run_id]  # not the later duplicate
    assert pd.Timestamp(first.started_at) == pd.Timestamp(T0 + 60_000 * 2, unit="ms")
    assert pd.isna(runs.loc[CELLS[5].run_id, "ended_at"])  # still running
    failed = runs.loc[CELLS[4].run_id, "error"]
    assert "FAILED" in failed and world.mlflow_ids[CELLS[4].run_id] in failed
    assert runs.drop(index=CELLS[4].run_id)["error"].isna().all()
    poisoned = runs.loc[CELLS[-1].run_id]  # its poisoning and its own registered name
    assert poisoned.poison == POISON_TAG and runs.loc[CELLS[0].run_id, "poison"] == ""
    assert poisoned.model_name == f"sdn-resnet56-digits-sdn-{POISON_TAG}"


def test_rebuild_replaces_an_existing_catalogue_atomically(world, expected, tmp_path) -> None:
    target = tmp_path / "catalogue.db"
    with Catalogue(target) as stale:  # old content that MLflow no longer knows
        stale.upsert_sweep("stale", {"x": 1})
        stale.upsert_run(RunRecord("stale.a.d.sdn.s0", "stale", "a", "d", "sdn", 0))
    inode = target.stat().st_ino

    rebuild(target, world.preds, world.uri)
    assert target.stat().st_ino != inode  # a new file renamed over the old one
    assert leftovers(tmp_path, keep={"catalogue.db"}) == []
    assert_same(frames(target), expected)

    # While another process (here: another connection) has it open, nothing is replaced.
    holder = Catalogue(target)
    before = holder.runs()
    with holder.engine.connect() as busy:
        busy.exec_driver_sql("SELECT count(*) FROM runs").all()
        with pytest.raises(StorageError, match="in use by another process"):
            rebuild(target, world.preds, world.uri, lock_timeout_s=0.3)
    pd.testing.assert_frame_equal(holder.runs(), before)
    holder.close()
    assert leftovers(tmp_path, keep={"catalogue.db"}) == []


def test_failure_midway_leaves_the_old_catalogue(world, rebuilt, tmp_path, monkeypatch) -> None:
    target = existing_catalogue(rebuilt, tmp_path)
    before = fingerprint(target)
    real = rebuild_module._write_batch
    seen: list[str] = []

    def fail_on_second_sweep(conn, batch):
        if seen:
            raise OSError("No space left on device")
        seen.append(batch.name)
        real(conn, batch)

    monkeypatch.setattr(rebuild_module, "_write_batch", fail_on_second_sweep)
    with pytest.raises(OSError, match="No space left"):
        rebuild(target, world.preds, world.uri)
    assert seen == ["demo"]
    assert fingerprint(target) == before
    assert leftovers(tmp_path, keep={"catalogue.db"}) == []


def test_corrupted_parquet_file_is_named(world, rebuilt, tmp_path: Path) -> None:
    target = existing_catalogue(rebuilt, tmp_path)
    before = fingerprint(target)
    preds = tmp_path / "predictions"
    shutil.copytree(world.preds, preds)
    bad = next(preds.glob("outputs/*/*/*/*.test.parquet"))
    bad.write_bytes(bad.read_bytes()[:-100])  # truncated: the footer is gone
    with pytest.raises(StorageError, match="corrupted predictions file") as info:
        rebuild(target, preds, world.uri)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)
    assert fingerprint(target) == before
    assert leftovers(tmp_path, keep={"catalogue.db", "predictions"}) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_tracking_store_writes_nothing(world, rebuilt, tmp_path: Path) -> None:
    target = existing_catalogue(rebuilt, tmp_path)
    before = fingerprint(target)
    server = f"http://127.0.0.1:{_free_port()}"
    missing = tmp_path / "nowhere" / "mlflow.db"
    cases = [
        (server, "unreachable"),
        (f"sqlite:///{missing}", "does not exist"),
        (f"sqlite:///{target}", "is the catalogue itself"),
        (f"sqlite:///{world.original}", "not an MLflow tracking database"),
    ]
    for uri, message in cases:
        with pytest.raises(StorageError, match=message) as info:
            rebuild(target, world.preds, uri)
        assert "\n" not in str(info.value)
        assert fingerprint(target) == before
    assert not missing.parent.exists()  # the missing store was not created
    assert leftovers(tmp_path, keep={"catalogue.db"}) == []


def test_refuses_to_replace_a_database_that_is_not_a_catalogue(world, tmp_path: Path) -> None:
    mlflow_db = Path(world.uri.removeprefix("sqlite:///"))
    copy = tmp_path / "mlflow-copy.db"
    shutil.copy(mlflow_db, copy)
    before = fingerprint(copy)
    with pytest.raises(StorageError, match="another application"):
        rebuild(copy, world.preds, world.uri)
    assert fingerprint(copy) == before
