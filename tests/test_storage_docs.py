"""The examples in docs/storage.md run against a real catalogue and Parquet tree."""

from __future__ import annotations

import contextlib
import io
import re
import sqlite3
from pathlib import Path

import duckdb
import pytest
from storage_factories import make_outputs, make_summary, record

from storage import Catalogue, PredictionStore, RunKey

DOC = Path(__file__).resolve().parents[1] / "docs" / "storage.md"
BLOCK = re.compile(r"<!-- test: (\w+) -->\s*```(\w+)\n(.*?)```", re.S)


def examples() -> list[tuple[str, str]]:
    return [(kind, code) for kind, _lang, code in BLOCK.findall(DOC.read_text())]


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
    return home


def test_docs_have_examples_of_each_kind():
    kinds = [kind for kind, _ in examples()]
    assert kinds.count("sqlite") >= 3 and kinds.count("duckdb") >= 2 and kinds.count("python") >= 2


@pytest.mark.parametrize("index", range(len(examples())))
def test_example_runs(home, index, monkeypatch):
    kind, code = examples()[index]
    monkeypatch.chdir(home.parent)  # the examples say sdn-home/..., relative to here
    if kind == "sqlite":
        con = sqlite3.connect(f"file:{home / 'catalogue.db'}?mode=ro", uri=True)
        try:
            rows = con.execute(code).fetchall()
        finally:
            con.close()
        assert rows, code
    elif kind == "duckdb":
        rows = duckdb.sql(code).fetchall()
        assert rows, code
    elif kind == "python":
        with contextlib.redirect_stdout(io.StringIO()) as out:
            exec(compile(code, f"{DOC.name}[{index}]", "exec"), {})
        assert out.getvalue().strip()
    else:
        pytest.fail(f"unknown example kind {kind!r}")
