"""The SQLite catalogue: real files in a temporary directory, real processes for concurrency."""

from __future__ import annotations

import multiprocessing
import sqlite3
import traceback
from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from storage_factories import make_summary, record

from sdn.results import OperatingPoint
from storage import Catalogue, RunRecord, StorageError
from storage.catalogue import early_exit
from storage.catalogue.migrate import VERSION_TABLE, head_revision
from storage.catalogue.models import Base

TABLES = (
    "runs",
    "exit_results",
    "early_exit_points",
    "early_exit_frontier",
    "early_exit_choices",
    "overthinking",
)


@pytest.fixture
def cat(tmp_path):
    with Catalogue(tmp_path / "home" / "catalogue.db") as catalogue:
        yield catalogue


def counts(cat: Catalogue) -> dict[str, int]:
    return {t: int(cat.sql(f"SELECT count(*) AS n FROM {t}").n[0]) for t in TABLES}


# ---------------------------------------------------------------------------- schema & migrations
@pytest.mark.filterwarnings("ignore:.*expression-based index")
def test_migration_from_empty_matches_models(cat):
    with cat.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        assert context.get_current_revision() == head_revision()
        assert compare_metadata(context, Base.metadata) == []
        # Autogenerate cannot compare expression indexes on SQLite; check that one directly.
        index = conn.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE name = 'uq_early_exit_points_point'"
        ).scalar()
        assert "UNIQUE" in index and "coalesce(objective, '')" in index
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    again = Catalogue(cat.path)  # opening a current catalogue changes nothing
    assert again.runs().empty
    again.close()


def test_newer_revision_is_refused(cat):
    with sqlite3.connect(cat.path) as con:
        con.execute(f"UPDATE {VERSION_TABLE} SET version_num = '0099_future'")
    with pytest.raises(StorageError) as err:
        Catalogue(cat.path)
    assert str(err.value) == (
        f"catalogue {cat.path} has schema revision 0099_future, newer than this sdn-workflows "
        f"(knows up to {head_revision()}); upgrade sdn-workflows"
    )


def test_not_a_sqlite_file(tmp_path):
    text = tmp_path / "notes.db"
    text.write_text("this is not a database\n" * 10)
    with pytest.raises(StorageError, match=f"catalogue {text} is not a SQLite database file"):
        Catalogue(text)
    with pytest.raises(StorageError, match="is a directory"):
        Catalogue(tmp_path)
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 32)
    with pytest.raises(StorageError, match=f"catalogue {damaged}: schema upgrade failed: "):
        Catalogue(damaged)
    other = tmp_path / "mlflow.db"
    with sqlite3.connect(other) as con:
        con.execute("CREATE TABLE experiments (id INTEGER)")
        con.execute("CREATE TABLE alembic_version (version_num TEXT)")
    with pytest.raises(StorageError, match="another application"):
        Catalogue(other)


# ---------------------------------------------------------------------------- writes
def test_upserts_are_idempotent(cat):
    cat.upsert_sweep("sw", {"grid": {"arch": ["vgg16"]}}, code_version="abc123")
    cat.upsert_sweep("sw", {"grid": {"arch": ["vgg16", "resnet56"]}})
    summary = make_summary()
    for _ in range(2):
        rid = record(cat, summary=summary, width=0.5, epochs=3, status="running")
    once = counts(cat)
    assert once["runs"] == 1 and once["exit_results"] == 2 * 4 and once["overthinking"] == 1
    assert once["early_exit_points"] == 2 * 21 + 2
    final_val = summary.per_exit_accuracy["val"][-1]
    targets = [(d, None) for d in early_exit.STANDARD_DROPS]
    targets += [(None, b) for b in early_exit.STANDARD_BUDGETS]
    reachable = [
        early_exit.choose_on_validation(summary.operating_points, final_val, d, b) is not None
        for d, b in targets
    ]
    assert once["early_exit_choices"] == sum(reachable) >= len(targets) - 1
    cat.record_summary(rid, make_summary(seed=7))
    again = counts(cat)
    derived = ("early_exit_frontier", "early_exit_choices")  # depend on the curve's shape
    assert {t: n for t, n in again.items() if t not in derived} == {
        t: n for t, n in once.items() if t not in derived
    }
    sweep = cat.sql("SELECT spec, code_version FROM sweeps").iloc[0]
    assert "resnet56" in sweep.spec and sweep.code_version == "abc123"


def test_none_fields_keep_stored_values(cat):
    started = datetime(2026, 11, 26, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    rid = record(cat, status="running", started_at=started, mlflow_run_id="m1", config={"lr": 0.1})
    record(cat, model_name="sdn-vgg16-digits-sdn", model_version=3)
    cat.set_status(rid, "failed", error="CUDA out of memory")
    row = cat.runs().iloc[0]
    assert row.status == "failed" and row.error == "CUDA out of memory"
    assert row.mlflow_run_id == "m1" and row.config == {"lr": 0.1}
    assert row.model_name == "sdn-vgg16-digits-sdn" and row.model_version == "3"
    assert row.started_at == datetime(2026, 11, 26, 10, 0)  # stored as naive UTC
    cat.set_status(rid, "done", ended_at=datetime.now(UTC))
    row = cat.runs().iloc[0]
    assert row.status == "done" and row.error is None and row.ended_at is not None


def test_bad_writes_are_refused(cat):
    with pytest.raises(StorageError, match="unknown mode 'deep'"):
        cat.upsert_run(RunRecord("x", "sw", "vgg16", "digits", "deep", 0))
    with pytest.raises(StorageError, match="unknown status 'finished'"):
        record(cat, status="finished")
    with pytest.raises(StorageError, match="unknown run 'nope'"):
        cat.record_summary("nope", make_summary())
    with pytest.raises(StorageError, match="unknown run 'nope'"):
        cat.set_status("nope", "done")
    record(cat)  # the same cell under another run id collides with the cell's unique key
    with pytest.raises(StorageError, match="UNIQUE constraint failed"):
        cat.upsert_run(RunRecord("other-id", "sw", "vgg16", "digits", "sdn", 0))


def test_foreign_keys_cascade(cat):
    keep = record(cat, seed=0, summary=make_summary(seed=0))
    gone = record(cat, seed=1, summary=make_summary(seed=1))
    record(cat, sweep="other", seed=0, summary=make_summary(seed=2))
    full = counts(cat)
    assert cat.delete_run(gone) and not cat.delete_run(gone)
    after = counts(cat)
    assert all(after[t] * 3 == full[t] * 2 for t in TABLES if t != "early_exit_frontier")
    assert cat.delete_sweep("other")
    assert cat.runs().run_id.tolist() == [keep]
    assert counts(cat)["exit_results"] == 8
    with pytest.raises(StorageError, match="FOREIGN KEY constraint failed"):
        cat._write(
            "orphan",
            lambda c: c.exec_driver_sql(
                "INSERT INTO exit_results VALUES (99, 12345, 'val', 0, 1, 0.5, 1.0, 1.0)"
            ),
        )


# ---------------------------------------------------------------------------- queries
@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """16 runs: sweeps a/b x vgg16/resnet56 x cnn/sdn x seeds 0 (done) and 1 (failed). Shared by
    the read-only tests of this module."""
    cat = Catalogue(tmp_path_factory.mktemp("grid") / "catalogue.db")
    for sweep in ("a", "b"):
        for arch in ("vgg16", "resnet56"):
            for mode in ("cnn", "sdn"):
                for seed in (0, 1):
                    status = "done" if seed == 0 else "failed"
                    summary = make_summary(seed=len(cat.runs()))
                    record(cat, sweep, arch, "digits", mode, seed, summary=summary, status=status)
    yield cat
    cat.close()


def test_run_filters(grid):
    assert len(grid.runs()) == 16
    assert len(grid.runs(arch="vgg16")) == 8
    assert len(grid.runs(arch="vgg16", mode="sdn", seed=0)) == 2
    assert set(grid.runs(sweep="b").sweep) == {"b"}
    assert len(grid.runs(status="failed", sweep=["a", "b"])) == 8
    assert grid.runs(arch="vgg16' OR '1'='1").empty  # values are bound, never pasted
    assert set(grid.runs(seed=[0, 1], dataset="digits").seed) == {0, 1}
    exits = grid.exits(arch="resnet56", split="val")
    assert len(exits) == 8 * 4 and set(exits.split) == {"val"}
    assert exits.groupby("run_id").is_final.sum().eq(1).all()
    over = grid.overthinking(mode="cnn")
    assert len(over) == 8 and over.first_correct.map(len).eq(5).all()
    assert over.max_softmax_auroc.isna().all() and over.confusion_auroc.eq(0.81).all()


@pytest.mark.parametrize("query", ["runs", "exits", "overthinking", "best_early_exit"])
def test_unknown_filter_lists_allowed(grid, query):
    kwargs = {"max_accuracy_drop": 0.01} if query == "best_early_exit" else {}
    with pytest.raises(StorageError) as err:
        getattr(grid, query)(architecture="vgg16", **kwargs)
    message = str(err.value)
    assert message.startswith("unknown filter 'architecture'; choose among: arch, dataset, mode")
    assert "sweep" in message and "\n" not in message


def _reference(cat, drop=None, budget=None, split="test"):
    """best_early_exit recomputed in plain Python from the stored curves."""
    rows = cat.sql(
        "SELECT r.run_id, r.arch, r.dataset, r.train_mode, p.split, p.threshold, p.accuracy, "
        "p.relative_cost FROM early_exit_points p JOIN runs r ON r.id = p.run_pk "
        "WHERE p.objective IS NULL"
    ).itertuples(index=False)
    finals = dict(
        cat.sql(
            "SELECT r.run_id, e.accuracy FROM exit_results e JOIN runs r "
            "ON r.id = e.run_pk WHERE e.split = 'val' AND e.is_final"
        ).values
    )
    curves, groups = {}, {}
    for r in rows:
        point = OperatingPoint(r.threshold, r.split, r.accuracy, r.relative_cost, [])
        curves.setdefault(r.run_id, []).append(point)
        groups[r.run_id] = (r.arch, r.dataset, r.train_mode)
    chosen = {}
    for rid, points in curves.items():
        best = early_exit.choose_on_validation(points, finals[rid], drop, budget)
        if best is None:
            continue
        if drop is not None:
            key = (best.relative_cost, -best.accuracy, rid)
        else:
            key = (-best.accuracy, best.relative_cost, rid)
        reported = next(p for p in points if p.split == split and p.threshold == best.threshold)
        if groups[rid] not in chosen or key < chosen[groups[rid]][0]:
            chosen[groups[rid]] = (key, rid, best.threshold, reported.accuracy)
    return {g: (rid, t, acc) for g, (_, rid, t, acc) in chosen.items()}


@pytest.mark.parametrize(
    "target",
    [
        {"max_accuracy_drop": 0.01},  # stored choice
        {"max_accuracy_drop": 0.037},  # computed from the frontier
        {"cost_budget": 0.5},
        {"cost_budget": 0.63},
        {"max_accuracy_drop": 0.0},
    ],
)
def test_best_early_exit_matches_reference(grid, target):
    drop, budget = target.get("max_accuracy_drop"), target.get("cost_budget")
    expected = _reference(grid, drop, budget)
    best = grid.best_early_exit(**target)
    got = {
        (r.arch, r.dataset, r.train_mode): (r.run_id, r.threshold, r.accuracy)
        for r in best.itertuples()
    }
    assert got == expected
    assert set(best.runs_in_group) == {4} and len(best) == len(expected) == 4
    assert (best.accuracy_drop == best.final_accuracy - best.accuracy).all()
    assert best.exits_per_output.map(len).eq(4).all()


@pytest.mark.parametrize("per_run", [True, False])
@pytest.mark.parametrize("target", [{"max_accuracy_drop": 0.02}, {"cost_budget": 0.75}])
def test_best_early_exit_stored_and_frontier_paths_agree(grid, monkeypatch, per_run, target):
    filters = {"mode": "sdn", "seed": [0, 1]}
    stored = grid.best_early_exit(**target, per_run=per_run, split="val", **filters)
    monkeypatch.setattr(early_exit, "_STANDARD_NAMES", set())
    computed = grid.best_early_exit(**target, per_run=per_run, split="val", **filters)
    assert len(stored) == (8 if per_run else 2) and stored.equals(computed)
    assert (stored.accuracy == stored.val_accuracy).all()  # split="val" reports the val point


def test_best_early_exit_filters_and_errors(grid):
    only = grid.best_early_exit(cost_budget=0.75, sweep="a", status="done")
    assert set(only.sweep) == {"a"} and set(only.runs_in_group) == {1} and len(only) == 4
    assert grid.best_early_exit(cost_budget=0.01).empty  # nothing that cheap
    with pytest.raises(StorageError, match="exactly one"):
        grid.best_early_exit()
    with pytest.raises(StorageError, match="exactly one"):
        grid.best_early_exit(max_accuracy_drop=0.01, cost_budget=0.5)
    with pytest.raises(StorageError, match="unknown split 'train'"):
        grid.best_early_exit(max_accuracy_drop=0.01, split="train")


# ---------------------------------------------------------------------------- read-only SQL
@pytest.mark.parametrize(
    "statement",
    [
        "DROP TABLE runs",
        "INSERT INTO sweeps (name, spec, created_at, updated_at) VALUES ('x', '{}', 0, 0)",
        "DELETE FROM runs",
        "ATTACH DATABASE ':memory:' AS other",
        "PRAGMA journal_mode = DELETE",
        "PRAGMA user_version = 5",
        "SELECT 1; DROP TABLE runs",
    ],
)
def test_sql_is_read_only(grid, statement):
    with pytest.raises(StorageError) as err:
        grid.sql(statement)
    assert "\n" not in str(err.value) and str(grid.path) in str(err.value)
    assert len(grid.runs()) == 16
    assert grid.sql("PRAGMA journal_mode").iloc[0, 0] == "wal"
    assert grid.sql("PRAGMA user_version").iloc[0, 0] == 0


def test_sql_reads(grid):
    df = grid.sql(
        "SELECT arch, count(*) AS n FROM runs WHERE seed = ? GROUP BY arch ORDER BY arch", [0]
    )
    assert df.to_dict("list") == {"arch": ["resnet56", "vgg16"], "n": [4, 4]}
    assert "train_mode" in grid.sql("PRAGMA table_info(runs)").name.tolist()


# ---------------------------------------------------------------------------- concurrency
def _writer(path, worker, runs_each, barrier, errors):
    try:
        barrier.wait(timeout=60)
        cat = Catalogue(path)  # all eight open (and migrate) a new file at the same moment
        for k in range(runs_each):
            rid = record(cat, "conc", "vgg16", "digits", "sdn", worker * 100 + k, status="running")
            cat.record_summary(rid, make_summary(seed=worker * 100 + k))
            cat.set_status(rid, "done")
        cat.close()
    except BaseException:
        errors.put(f"worker {worker}: {traceback.format_exc()}")


@pytest.mark.slow
def test_eight_processes_record_at_once(tmp_path):
    ctx = multiprocessing.get_context("fork")
    path, workers, runs_each = tmp_path / "catalogue.db", 8, 4
    barrier, errors = ctx.Barrier(workers), ctx.Queue()
    procs = [
        ctx.Process(target=_writer, args=(path, w, runs_each, barrier, errors))
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert not failures, "\n".join(failures)
    assert all(p.exitcode == 0 for p in procs)
    cat = Catalogue(path)
    runs = cat.runs()
    assert len(runs) == workers * runs_each and set(runs.status) == {"done"}
    assert sorted(runs.seed) == sorted(
        w * 100 + k for w in range(workers) for k in range(runs_each)
    )
    n = counts(cat)
    assert n["exit_results"] == workers * runs_each * 8 and n["overthinking"] == workers * runs_each
    cat.close()
