"""The SQLite catalogue: real files in a temporary directory, real processes for concurrency."""

from __future__ import annotations

import multiprocessing
import sqlite3
import traceback
from datetime import UTC, datetime, timedelta, timezone

import pandas as pd
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from storage_factories import (
    POISON_TAG,
    make_costs,
    make_poisoned_summary,
    make_run_outputs,
    make_summary,
    record,
)

from sdn.early_exit import Target, candidate_thresholds, default_grid, evaluate_threshold
from storage import Catalogue, RunRecord, StorageError
from storage.catalogue.migrate import VERSION_TABLE, head_revision
from storage.catalogue.models import Base

TABLES = (
    "runs",
    "exit_results",
    "early_exit_points",
    "early_exit_frontiers",
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
    assert once["runs"] == 1 and once["exit_results"] == 3 * 4 and once["overthinking"] == 1
    assert once["early_exit_points"] == len(summary.operating_points) > 0
    # 3 policies x 2 targets x (empirical, certified), one frontier per policy.
    assert once["early_exit_choices"] == len(summary.choices) == 12
    assert once["early_exit_frontiers"] == 3
    cat.record_summary(rid, make_summary(seed=7))
    assert counts(cat) == once
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
    assert all(after[t] * 3 == full[t] * 2 for t in TABLES)
    assert cat.delete_sweep("other")
    assert cat.runs().run_id.tolist() == [keep]
    assert counts(cat)["exit_results"] == 12
    with pytest.raises(StorageError, match="FOREIGN KEY constraint failed"):
        cat._write(
            "orphan",
            lambda c: c.exec_driver_sql(
                "INSERT INTO exit_results VALUES (99, 12345, 'val', 0, 1, 0.5, 1.0, 1.0, NULL, NULL)"
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
                    summary = make_summary(seed=len(cat.runs()), exits=1 if mode == "cnn" else 4)
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
    assert len(exits) == 4 * 4 + 4 * 1 and set(exits.split) == {"val"}
    assert exits.groupby("run_id").is_final.sum().eq(1).all()
    assert exits.ece.between(0, 1).all()
    over = grid.overthinking(mode="sdn")
    assert len(over) == 8 and over.first_correct.map(len).eq(5).all()
    assert over.confusion_auroc.between(0, 1).all()
    calibration = grid.calibration(run_id=exits.run_id.iloc[0], split="test")
    bins = calibration.reliability.iloc[0]
    assert sum(bins["counts"]) == 120 and len(bins["confidence"]) == 15


@pytest.mark.parametrize("query", ["runs", "exits", "overthinking", "best_early_exit"])
def test_unknown_filter_lists_allowed(grid, query):
    kwargs = {"max_accuracy_drop": 0.01} if query == "best_early_exit" else {}
    with pytest.raises(StorageError) as err:
        getattr(grid, query)(architecture="vgg16", **kwargs)
    message = str(err.value)
    assert message.startswith("unknown filter 'architecture'; choose among: arch, dataset, mode")
    assert "sweep" in message and "\n" not in message


def _reference(cat, target: Target, policy: str = "confidence", split: str = "test"):
    """best_early_exit by brute force: every run's outputs made again, every candidate threshold
    replayed one at a time, the rule and the group ranking written out in plain Python."""
    runs = cat.runs().sort_values("run_id")
    chosen = {}
    for position, r in enumerate(
        cat.sql("SELECT run_id, arch, dataset, train_mode, id FROM runs ORDER BY id").itertuples()
    ):
        seed, exits = position, 1 if r.train_mode == "cnn" else 4
        outputs = make_run_outputs(exits, seed)
        costs, cnn = make_costs(exits, seed)
        rel = [c / cnn for c in costs]
        val, test = outputs["val"], outputs["test"]
        ref = float(val.correct[:, -1].mean())
        grid = default_grid(policy, exits, 10)
        best = None
        for t in candidate_thresholds(grid):
            q = None if t != t else float(t)
            p = evaluate_threshold(val, rel, q, "val", policy=policy)
            level = -1e300 if q is None else (-q if policy == "entropy" else q)
            level = float("inf") if q is None else level
            if target.kind == "max_drop":
                ok = p.accuracy >= ref - target.value - 1e-9
                key = (
                    not ok,
                    p.relative_cost if ok else -p.accuracy,
                    -p.accuracy if ok else p.relative_cost,
                    -level,
                )
            else:
                ok = p.relative_cost <= target.value + 1e-9
                key = (
                    not ok,
                    -p.accuracy if ok else p.relative_cost,
                    p.relative_cost if ok else -p.accuracy,
                    -level,
                )
            if best is None or key < best[0]:
                best = (key, q, p)
        (unmet, *_), q, p = best
        shown = p if split == "val" else evaluate_threshold(test, rel, q, "test", policy=policy)
        if target.kind == "max_drop":
            rank = (unmet, p.relative_cost, -p.accuracy, r.run_id)
        else:
            rank = (unmet, -p.accuracy, p.relative_cost, r.run_id)
        group = (r.arch, r.dataset, r.train_mode)
        if group not in chosen or rank < chosen[group][0]:
            chosen[group] = (rank, r.run_id, q, shown.accuracy, not unmet)
    assert len(runs) == 16
    return {g: (rid, q, acc, met) for g, (_, rid, q, acc, met) in chosen.items()}


@pytest.mark.parametrize(
    "target,policy",
    [
        (Target("max_drop", 0.01), "confidence"),  # stored choice
        (Target("max_drop", 0.037), "confidence"),  # chosen now, from the stored frontier
        (Target("budget", 0.5), "confidence"),  # stored
        (Target("budget", 0.63), "entropy"),
        (Target("max_drop", 0.0), "patience"),
        (Target("budget", 0.05), "confidence"),  # below every point: unmet
    ],
)
def test_best_early_exit_matches_brute_force(grid, target, policy):
    expected = _reference(grid, target, policy)
    kwargs = (
        {"max_accuracy_drop": target.value}
        if target.kind == "max_drop"
        else {"cost_budget": target.value}
    )
    best = grid.best_early_exit(**kwargs, policy=policy)
    got = {
        (r.arch, r.dataset, r.train_mode): (r.run_id, r.threshold, r.accuracy, r.status == "met")
        for r in best.itertuples()
    }
    assert got == expected
    assert set(best.runs_in_group) == {4} and len(best) == len(expected) == 4
    assert (best.accuracy_drop == best.final_accuracy - best.accuracy).all()
    assert set(best.target) == {target.name} and set(best.policy) == {policy}


def _drop_stored_choices(cat):
    cat._write("forget choices", lambda c: c.exec_driver_sql("DELETE FROM early_exit_choices"))


@pytest.mark.parametrize("delta", [None, 0.1])
@pytest.mark.parametrize("per_run", [True, False])
@pytest.mark.parametrize("target", [{"max_accuracy_drop": 0.01}, {"cost_budget": 0.5}])
def test_stored_and_computed_choices_agree(tmp_path, per_run, target, delta):
    with Catalogue(tmp_path / "c.db") as cat:
        for seed in range(4):
            record(cat, arch="vgg16", seed=seed, summary=make_summary(seed=seed))
            record(cat, arch="resnet56", seed=seed, summary=make_summary(seed=seed + 10))
        stored = cat.best_early_exit(**target, delta=delta, per_run=per_run)
        _drop_stored_choices(cat)
        computed = cat.best_early_exit(**target, delta=delta, per_run=per_run)
    assert len(stored) == (8 if per_run else 2)
    pd.testing.assert_frame_equal(stored, computed)
    assert set(stored.method) == {"empirical" if delta is None else "certified"}


def test_best_early_exit_reports_the_requested_split(grid):
    val = grid.best_early_exit(cost_budget=0.75, split="val", mode="sdn")
    test = grid.best_early_exit(cost_budget=0.75, split="test", mode="sdn")
    assert (val.accuracy == val.val_accuracy).all()  # split="val" reports the val point
    assert (val.threshold.values == test.threshold.values).all()  # the same choice


def test_best_early_exit_filters_and_errors(grid):
    only = grid.best_early_exit(cost_budget=0.75, sweep="a", status="done")
    assert set(only.sweep) == {"a"} and set(only.runs_in_group) == {1} and len(only) == 4
    cheap = grid.best_early_exit(cost_budget=0.01, mode="sdn")  # nothing that cheap
    assert set(cheap.status) == {"unmet"} and len(cheap) == 2
    with pytest.raises(StorageError, match="exactly one"):
        grid.best_early_exit()
    with pytest.raises(StorageError, match="exactly one"):
        grid.best_early_exit(max_accuracy_drop=0.01, cost_budget=0.5)
    with pytest.raises(StorageError, match="unknown split 'train'"):
        grid.best_early_exit(max_accuracy_drop=0.01, split="train")
    with pytest.raises(StorageError, match="unknown policy 'greedy'"):
        grid.best_early_exit(max_accuracy_drop=0.01, policy="greedy")
    with pytest.raises(StorageError, match="delta"):
        grid.best_early_exit(max_accuracy_drop=0.01, delta=1.5)


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
    assert (
        n["exit_results"] == workers * runs_each * 12 and n["overthinking"] == workers * runs_each
    )
    cat.close()


# ---------------------------------------------------------------------------- upgrading 0001
def _catalogue_at_0001(path):
    """A catalogue as revision 0001 wrote it: one sdn run with its confidence curves (val and
    test, 5 thresholds) and two chosen points (one unmet), in the old layout."""
    from alembic import command
    from sqlalchemy import create_engine

    from storage.catalogue.migrate import alembic_config

    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0001")
    engine.dispose()
    con = sqlite3.connect(path)
    con.execute(
        "INSERT INTO sweeps VALUES (1, 'old', '{}', NULL, '2026-11-30 00:00:00', '2026-11-30')"
    )
    con.execute(
        "INSERT INTO runs (id, run_id, sweep_id, arch, dataset, train_mode, seed, status, "
        "config, num_exits, cnn_flops, updated_at) VALUES (1, 'old.vgg16.digits.sdn.s0', 1, "
        "'vgg16', 'digits', 'sdn', 0, 'done', '{}', 3, 100.0, '2026-11-30')"
    )
    for split, accs in (("val", [0.6, 0.8, 0.9]), ("test", [0.55, 0.75, 0.88])):
        for k, acc in enumerate(accs):
            con.execute(
                "INSERT INTO exit_results (run_pk, split, exit_index, is_final, accuracy, "
                "cumulative_flops, relative_cost) VALUES (1, ?, ?, ?, ?, ?, ?)",
                (split, k, k == 2, acc, 40.0 * (k + 1), 0.4 * (k + 1)),
            )
    curve = {  # threshold: (val acc, val cost, test acc, test cost)
        0.0: (0.6, 0.4, 0.55, 0.4),
        0.5: (0.8, 0.7, 0.74, 0.72),
        0.8: (0.89, 0.9, 0.86, 0.95),
        0.9: (0.9, 1.1, 0.88, 1.1),
        1.0: (0.9, 1.2, 0.88, 1.2),
    }
    rows = []
    for q, (va, vc, ta, tc) in curve.items():
        rows += [
            (1, "val", q, va, vc, "[10, 0, 0]", None),
            (1, "test", q, ta, tc, "[9, 1, 0]", None),
        ]
    rows += [
        (1, "val", 0.8, 0.89, 0.9, "[5, 3, 2]", "max_drop=0.01"),
        (1, "test", 0.8, 0.86, 0.95, "[4, 4, 2]", "max_drop=0.01"),
        (1, "val", 0.0, 0.6, 0.4, "[10, 0, 0]", "budget=0.25 (unmet)"),
        (1, "test", 0.0, 0.55, 0.4, "[10, 0, 0]", "budget=0.25 (unmet)"),
    ]
    con.executemany(
        "INSERT INTO early_exit_points (run_pk, split, threshold, accuracy, relative_cost, "
        "exits_per_output, objective) VALUES (?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    con.commit()
    con.close()


def test_a_0001_catalogue_is_upgraded_in_place(tmp_path):
    path = tmp_path / "catalogue.db"
    _catalogue_at_0001(path)
    with Catalogue(path) as cat:  # a writer's open migrates
        with cat.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            assert context.get_current_revision() == head_revision()
            assert compare_metadata(context, Base.metadata) == []
        choices = cat.sql(
            "SELECT target, method, met, threshold, test_accuracy, val_drop FROM early_exit_choices "
            "ORDER BY target"
        )
        assert choices.target.tolist() == ["budget=0.25", "max_drop=0.01"]
        assert choices.met.tolist() == [0, 1] and set(choices.method) == {"empirical"}
        assert choices.val_drop.tolist() == pytest.approx([0.3, 0.01])
        curves = cat.sql("SELECT policy, count(*) AS n FROM early_exit_points GROUP BY policy")
        assert curves.values.tolist() == [["confidence", 10]]  # chosen rows moved out
        # The stored target reads back as stored; another one is chosen from the new frontier
        # (the grid plus "off"), by the same rule.
        stored = cat.best_early_exit(max_accuracy_drop=0.01).iloc[0]
        assert (stored.threshold, stored.accuracy, stored.status) == (0.8, 0.86, "met")
        fresh = cat.best_early_exit(max_accuracy_drop=0.0).iloc[0]
        assert (fresh.threshold, fresh.accuracy, fresh.relative_cost) == (0.9, 0.88, 1.1)
        budget = cat.best_early_exit(cost_budget=0.8).iloc[0]
        assert (budget.threshold, budget.val_accuracy) == (0.5, 0.8)


# ---------------------------------------------------------------------------- backdoor (0003)
def _poisoned(cat, mode="cnn", seed=0, summary=None, sweep="sw", arch="vgg16"):
    rid = f"{sweep}.{arch}.digits.{mode}.s{seed}.{POISON_TAG}"
    cat.upsert_run(RunRecord(rid, sweep, arch, "digits", mode, seed, poison=POISON_TAG))
    if summary is not None:
        cat.record_summary(rid, summary)
    return rid


def test_clean_and_poisoned_cells_coexist_and_the_cell_key_still_holds(cat):
    clean = record(cat, mode="cnn")
    poisoned = _poisoned(cat)
    runs = cat.runs().set_index("run_id")
    assert runs.loc[clean, "poison"] == "" and runs.loc[poisoned, "poison"] == POISON_TAG
    assert list(cat.runs(poison=POISON_TAG).run_id) == [poisoned]
    with pytest.raises(Exception, match="UNIQUE"):  # two clean runs of one cell: still refused
        cat.upsert_run(RunRecord("sw.other-id", "sw", "vgg16", "digits", "cnn", 0))
    with pytest.raises(Exception, match="UNIQUE"):  # and two poisoned ones alike
        cat.upsert_run(RunRecord("sw.x", "sw", "vgg16", "digits", "cnn", 0, poison=POISON_TAG))


def test_backdoor_rows_are_written_replaced_and_deleted_with_the_run(cat):
    summary = make_poisoned_summary(exits=4, seed=3)
    rid = _poisoned(cat, mode="sdn", summary=summary)
    record(cat, mode="sdn", summary=make_summary(seed=1))  # a clean run has no backdoor rows
    rows = cat.backdoor()
    assert list(rows.run_id.unique()) == [rid] and list(rows.exit_index) == [0, 1, 2, 3]
    b = summary.backdoor
    assert rows.attack_success.tolist() == pytest.approx(b.attack_success)
    assert rows.triggered_accuracy.tolist() == pytest.approx(b.triggered_accuracy)
    assert rows.is_final.tolist() == [False, False, False, True]
    s = cat.backdoor_summaries().iloc[0]
    assert s.early_exit_target == "max_drop=0.01" and s.target == 5
    assert s.early_exit_accuracy == pytest.approx(b.early_exit.accuracy)
    assert s.destructive_per_ic == pytest.approx(b.destructive_per_ic)
    cat.record_summary(rid, make_summary(seed=3))  # re-analysed without backdoor figures
    assert cat.backdoor().empty and cat.backdoor_summaries().empty
    cat.record_summary(rid, summary)
    cat.delete_run(rid)
    assert cat.sql("SELECT count(*) AS n FROM backdoor_exits").n[0] == 0
    assert cat.sql("SELECT count(*) AS n FROM backdoor_summaries").n[0] == 0


def test_bad_backdoor_figures_are_refused_before_writing(cat):
    summary = make_poisoned_summary()
    summary.backdoor.attack_success[-1] = 1.5
    rid = _poisoned(cat)
    with pytest.raises(StorageError, match=r"attack success 1\.5 outside"):
        cat.record_summary(rid, summary)
    summary = make_poisoned_summary()
    summary.backdoor.clean_accuracy.pop()
    with pytest.raises(StorageError, match="per-exit lists"):
        cat.record_summary(rid, summary)
    assert cat.sql("SELECT count(*) AS n FROM exit_results").n[0] == 0  # nothing written


def test_early_exit_groups_never_mix_poisoned_and_clean_runs(cat):
    clean = record(cat, mode="sdn", summary=make_summary(seed=1))
    poisoned = _poisoned(cat, mode="sdn", summary=make_poisoned_summary(seed=2))
    best = cat.best_early_exit(max_accuracy_drop=0.01)
    assert sorted(best.run_id) == sorted([clean, poisoned])  # two groups, one run each
    assert dict(zip(best.run_id, best.poison, strict=True)) == {clean: "", poisoned: POISON_TAG}
    assert set(best.runs_in_group) == {1}


def test_upgrading_keeps_every_child_row_and_marks_old_runs_clean(tmp_path):
    """0003 rebuilds ``runs`` (a new UNIQUE key); with foreign keys on, dropping the old copy
    would cascade into every result table. The upgrade runs with them off and checks them."""
    path = tmp_path / "catalogue.db"
    _catalogue_at_0001(path)
    with sqlite3.connect(path) as con:
        before = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES[:3]}
    with Catalogue(path) as cat:
        after = {t: int(cat.sql(f"SELECT count(*) AS n FROM {t}").n[0]) for t in TABLES[:3]}
        assert after["runs"] == before["runs"] == 1
        assert after["exit_results"] == before["exit_results"] == 6
        assert after["early_exit_points"] == 10  # the curves; chosen rows moved by 0002
        assert cat.runs().poison.tolist() == [""]
        with cat.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert _poisoned(cat, mode="sdn", sweep="old")  # a poisoned twin of the old run fits
