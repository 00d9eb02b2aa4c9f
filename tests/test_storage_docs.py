"""The examples in docs/storage.md run against a real catalogue and Parquet tree."""

from __future__ import annotations

import contextlib
import io
import json
import re
import sqlite3
from pathlib import Path

import duckdb
import pytest
from storage_factories import POISON_TAG, make_outputs, make_poisoned_summary, make_summary, record

from storage import Catalogue, PredictionStore, RunKey, RunRecord

DOC = Path(__file__).resolve().parents[1] / "docs" / "storage.md"
BLOCK = re.compile(r"<!-- test: (\w+)(?: check: (\w+))? -->\s*```(\w+)\n(.*?)```", re.S)


def examples() -> list[tuple[str, str, str]]:
    """(kind, check, code) of every tested block; ``check`` names the test below that compares
    the block's rows with the Python API's answer."""
    return [(kind, check, code) for kind, check, _lang, code in BLOCK.findall(DOC.read_text())]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """An SDN_HOME with sweep 'demo': 2 architectures x 2 modes, predictions and summaries."""
    home = tmp_path_factory.mktemp("docs") / "sdn-home"
    store = PredictionStore(home / "predictions")
    with Catalogue(home / "catalogue.db") as cat:
        cat.upsert_sweep("demo", {"grid": {"arch": ["vgg16", "resnet56"]}}, "test")
        for i, (arch, mode) in enumerate(
            [("vgg16", "sdn"), ("vgg16", "cnn"), ("resnet56", "sdn"), ("resnet56", "cnn")]
        ):
            exits = 1 if mode == "cnn" else 4
            summary = make_summary(exits=max(exits, 2), seed=i) if mode == "sdn" else None
            rid = record(cat, "demo", arch, "digits", mode, 0, summary=summary, status="done")
            key = RunKey(rid, arch, "digits", mode)
            for split in ("val", "test"):
                store.write(key, split, make_outputs(n=30, exits=exits, seed=i), keep_logits=False)
        # A poisoned twin of the resnet56 cnn (docs/backdoor.md): its own run, four splits.
        rid = f"demo.resnet56.digits.cnn.s0.{POISON_TAG}"
        cat.upsert_run(
            RunRecord(rid, "demo", "resnet56", "digits", "cnn", 0, status="done", poison=POISON_TAG)
        )
        cat.record_summary(rid, make_poisoned_summary(exits=1, seed=9))
        key = RunKey(rid, "resnet56", "digits", "cnn")
        for split in ("val", "test", "val_triggered", "test_triggered"):
            store.write(key, split, make_outputs(n=30, exits=1, seed=9), keep_logits=False)
    return home


def test_docs_have_examples_of_each_kind():
    kinds = [kind for kind, _, _ in examples()]
    assert kinds.count("sqlite") >= 3 and kinds.count("duckdb") >= 2 and kinds.count("python") >= 2
    # Every SQL example is checked against the Python API, not only run.
    assert all(check for kind, check, _ in examples() if kind != "python")
    assert {check for _, check, _ in examples() if check} <= set(CHECKS)


@pytest.mark.parametrize("index", range(len(examples())))
def test_example_runs(home, index, monkeypatch):
    kind, check, code = examples()[index]
    monkeypatch.chdir(home.parent)  # the examples say sdn-home/..., relative to here
    if kind == "sqlite":
        con = sqlite3.connect(f"file:{home / 'catalogue.db'}?mode=ro", uri=True)
        try:
            rows = con.execute(code).fetchall()
        finally:
            con.close()
        assert rows, code
        CHECKS[check](home, rows)
    elif kind == "duckdb":
        rows = duckdb.sql(code).fetchall()
        assert rows, code
        CHECKS[check](home, rows)
    elif kind == "python":
        with contextlib.redirect_stdout(io.StringIO()) as out:
            exec(compile(code, f"{DOC.name}[{index}]", "exec"), {})
        assert out.getvalue().strip()
    else:
        pytest.fail(f"unknown example kind {kind!r}")


# ---------------------------------------------------------------------------- what each shows
def _check_runs(home: Path, rows: list) -> None:
    with Catalogue(home / "catalogue.db") as cat:
        runs = cat.runs(sweep="demo").sort_values(["arch", "train_mode", "seed"])
    want = runs[["run_id", "arch", "dataset", "train_mode", "seed", "status", "model_version"]]
    assert rows == [tuple(r) for r in want.itertuples(index=False)]


def _check_exits(home: Path, rows: list) -> None:
    with Catalogue(home / "catalogue.db") as cat:
        exits = cat.exits(split="test", poison="")
    mean = exits.groupby(["arch", "dataset", "train_mode", "exit_index"]).accuracy.mean()
    got = {(a, d, m, k): acc for a, d, m, k, acc, _cost, _n in rows}
    assert got == pytest.approx(mean.to_dict())


def _check_chosen(home: Path, rows: list) -> None:
    with Catalogue(home / "catalogue.db") as cat:
        best = cat.best_early_exit(max_accuracy_drop=0.01, per_run=True).sort_values("run_id")
    want = [
        (r.run_id, r.threshold, r.val_accuracy, r.accuracy, r.relative_cost, r.exits_per_output)
        for r in best.itertuples()
    ]
    assert [(*r[:5], json.loads(r[5])) for r in rows] == want


def _check_gaps(home: Path, rows: list) -> None:
    with Catalogue(home / "catalogue.db") as cat:
        for policy, method, runs, mean_gap, missed in rows:
            best = cat.best_early_exit(
                max_accuracy_drop=0.01,
                policy=policy,
                delta=None if method == "empirical" else 0.1,
                per_run=True,
            )
            assert runs == len(best) and mean_gap == pytest.approx(best.val_test_gap.mean())
            assert missed == int((best.accuracy_drop > 0.01).sum())


def _check_overthinking(home: Path, rows: list) -> None:
    with Catalogue(home / "catalogue.db") as cat:
        over = cat.overthinking()
    means = over.groupby(["arch", "train_mode"]).destructive_fraction.mean()
    assert {(a, m): d for a, m, d, _oracle, _first in rows} == pytest.approx(means.to_dict())


def _check_per_exit(home: Path, rows: list) -> None:
    store = PredictionStore(home / "predictions")
    want = store.per_exit_accuracy(arch="vgg16", split="test")
    assert [(r, k, a) for r, k, a, _n in rows] == [
        (r.run_id, r.exit_index, pytest.approx(r.accuracy)) for r in want.itertuples()
    ]


def _check_rescued(home: Path, rows: list) -> None:
    store = PredictionStore(home / "predictions")
    for run_id, final_errors, rescued in rows:
        out = store.read_outputs(run_id, "test")
        wrong = ~out.correct[:, -1]
        assert final_errors == int(wrong.sum())
        assert rescued == int((wrong & out.correct[:, :-1].any(axis=1)).sum())


def _check_backdoor(home: Path, rows: list) -> None:
    with Catalogue(home / "catalogue.db") as cat:
        per_exit = cat.backdoor().sort_values(["run_id", "exit_index"])
        per_run = cat.backdoor_summaries().set_index("run_id")
    assert len(rows) == len(per_exit) > 0
    for got, want in zip(rows, per_exit.itertuples(), strict=True):
        s = per_run.loc[want.run_id]
        assert got == (
            want.run_id,
            want.train_mode,
            want.poison,
            want.exit_index,
            pytest.approx(want.clean_accuracy),
            pytest.approx(want.triggered_accuracy),
            pytest.approx(want.attack_success),
            pytest.approx(s.destructive_fraction),
            pytest.approx(s.early_exit_accuracy),
        )


CHECKS = {
    "backdoor": _check_backdoor,
    "runs": _check_runs,
    "exits": _check_exits,
    "chosen": _check_chosen,
    "gaps": _check_gaps,
    "overthinking": _check_overthinking,
    "per_exit": _check_per_exit,
    "rescued": _check_rescued,
}
