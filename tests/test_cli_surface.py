"""What a user sees every day (issue 12): read commands that import no torch, Ray or MLflow, tables
that fit 100 columns, ``--columns``/``--wide``/``--format``, defaults said out loud, ``sdn sweep
validate``, and the catalogue opened read-only (issue 13: reads never write).

The catalogue is the quickstart's shape (``bench.quickstart_catalogue``: 12 runs with real
per-exit, curve and overthinking rows), built once per module in a second.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bench.quickstart_catalogue import build
from workflows import views
from workflows.cli import app

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("quickstart home ü")
    build(home / "catalogue.db")
    return home


def files(root: Path) -> dict[str, str]:
    """Every file under ``root`` (side files included) with the SHA-256 of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def sdn(*args: str, home: Path | None = None, columns: int = 100, **env: str) -> Any:
    full = {"COLUMNS": str(columns), **env}
    if home is not None:
        full["SDN_HOME"] = str(home)
    return CliRunner().invoke(app, list(args), env=full, catch_exceptions=False)


# --- fast reads --------------------------------------------------------------------------------

PROBE = """
import runpy, sys
sys.argv = ["sdn", *sys.argv[1:]]
try:
    from workflows.cli import app
    app()
except SystemExit as exc:
    heavy = sorted(m for m in ("torch", "ray", "mlflow", "pandas", "sqlalchemy") if m in sys.modules)
    sys.stderr.write("IMPORTED:" + ",".join(heavy) + "\\n")
    raise
"""

READS = [
    ("catalogue", "runs"),
    ("catalogue", "early-exit"),
    ("sweep", "status"),
    ("sweep", "status", "quickstart"),
    ("sweep", "list"),
    ("catalogue", "sql", "SELECT count(*) FROM runs"),
    ("catalogue", "backdoor"),
    ("catalogue", "backdoor", "--summary"),
    ("catalogue", "runs", "--arch", "nosucharch"),  # refused, also without heavy imports
]


@pytest.mark.parametrize("args", READS, ids=[" ".join(a) for a in READS])
def test_read_commands_import_no_torch_ray_mlflow(home: Path, args: tuple[str, ...]) -> None:
    """In a fresh interpreter: none of torch, Ray, MLflow (nor pandas, SQLAlchemy: the time
    budget of a read command) is imported."""
    env = {**os.environ, "SDN_HOME": str(home), "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-c", PROBE, *args], env=env, capture_output=True, text=True, timeout=120
    )
    last = run.stderr.strip().splitlines()[-1]
    assert last == "IMPORTED:", run.stderr
    assert run.returncode in (0, 2), run.stderr
    assert run.returncode == (2 if "nosucharch" in args else 0)


# --- tables for people -------------------------------------------------------------------------

LISTINGS = [
    ("sweep", "status", "quickstart"),
    ("sweep", "status"),
    ("sweep", "list"),
    ("catalogue", "runs"),
    ("catalogue", "exits"),
    ("catalogue", "exits", "--split", "val"),
    ("catalogue", "early-exit"),
    ("catalogue", "early-exit", "--budget", "0.5"),
    ("catalogue", "early-exit", "--delta", "0.1"),
    ("catalogue", "early-exit", "--policy", "all"),
    ("catalogue", "overthinking"),
    ("catalogue", "sql", "SELECT arch, train_mode, status, epochs FROM runs"),
    ("sweep", "validate", "--preset", "quickstart"),
    ("sweep", "validate", "--preset", "paper"),
]


def table_rows(out: str) -> list[str]:
    """The table's lines: from the header rule on (notes and the title come before it)."""
    lines = out.splitlines()
    rule = next(i for i, line in enumerate(lines) if set(line.strip()) == {"─"})
    return lines[rule + 1 :]


@pytest.mark.parametrize("args", LISTINGS, ids=[" ".join(a) for a in LISTINGS])
def test_default_tables_fit_100_columns(home: Path, args: tuple[str, ...]) -> None:
    result = sdn(*args, home=home)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 100, result.stdout
    assert "…" not in result.stdout  # nothing was cut to make it fit
    body = table_rows(result.stdout)
    machine = sdn(*args, "--format", "json", home=home)
    assert len(body) == len(json.loads(machine.stdout))  # one line per row: nothing folded


def test_models_and_predictions_views_fit_100_columns() -> None:
    """The two listings that need MLflow or a model, rendered from rows of their real shape."""
    from rich.console import Console

    from storage.catalogue.readonly import Rows
    from workflows.tables import Choice, emit

    names = [f"sdn-{a}-digits-{m}" for a in ("resnet56", "wrn32_4", "vgg16", "mobilenet")
             for m in ("cnn", "ic_only", "sdn")]  # fmt: skip
    models = Rows.from_records(
        [
            {"name": n, "version": 1, "aliases": "champion, latest", "sweep": "quickstart",
             "created": "2026-12-01T09:00:00", "run_id": "a" * 32, "tags": {"sweep": "quickstart"}}
            for n in names
        ]
    )  # fmt: skip
    preds = Rows.from_records(
        [
            {"input": f"photos/holiday 2026/digit-{i:04d}.png", "prediction": i % 10, "exit": "IC2",
             "relative_cost": 0.4213}
            for i in range(30)
        ]
    )  # fmt: skip
    for rows, view in ((models, views.MODELS), (preds, views.PREDICTIONS)):
        console = Console(width=100, record=True, file=io.StringIO())
        emit(rows, view, Choice(), console=console)
        text = console.export_text()
        assert max(len(line) for line in text.splitlines()) <= 100, text
        assert len(table_rows(text)) == len(rows) and "{" not in text  # no tag dicts


def test_backdoor_views_fit_100_columns() -> None:
    """`sdn catalogue backdoor` (per exit) and `--summary` (per run), rendered from rows of their
    real shape: a poisoned ResNet-56 cnn and its ic_only twin (7 exits), one poisoning."""
    from rich.console import Console

    from storage.catalogue.readonly import Rows
    from workflows.tables import Choice, emit

    tag = "badnets-t5-r0p10-s0-sq5at26x26-white"
    ident = {"sweep": "backdoor-quick", "arch": "resnet56", "dataset": "digits", "seed": 0,
             "poison": tag}  # fmt: skip
    per_exit = Rows.from_records(
        [
            {**ident, "run_id": f"x.{mode}", "train_mode": mode, "exit_index": k,
             "is_final": k == e - 1, "exit": "final" if k == e - 1 else f"IC{k}",
             "clean_accuracy": 0.9861, "triggered_accuracy": 0.0155, "attack_success": 0.9845,
             "clean_target_rate": 0.0031}
            for mode, e in (("cnn", 1), ("ic_only", 7))
            for k in range(e)
        ]
    )  # fmt: skip
    per_run = Rows.from_records(
        [
            {**ident, "run_id": f"x.{mode}", "train_mode": mode, "final_clean_accuracy": 0.9861,
             "final_attack_success": 0.9845, "destructive_fraction": 0.8616,
             "early_exit_threshold": "0.62", "early_exit_accuracy": 0.2477,
             "early_exit_attack_success": 0.0, "early_exit_relative_cost": 0.3524,
             "confusion_auroc": 0.9946, "max_softmax_auroc": 0.2532}
            for mode in ("cnn", "ic_only")
        ]
    )  # fmt: skip
    for rows, view in ((per_exit, views.BACKDOOR), (per_run, views.BACKDOOR_SUMMARY)):
        console = Console(width=100, record=True, file=io.StringIO())
        emit(rows, view, Choice(), console=console)
        text = console.export_text()
        body = table_rows(text)
        assert len(body) == len(rows)
        lines = text.splitlines()
        header = lines[lines.index(next(x for x in lines if set(x.strip()) == {"─"})) - 1]
        # The table (not the notes above it, which name the long poisoning tag once) fits.
        assert max(len(line) for line in [header, *body]) <= 100, text
        assert "…" not in "".join(body)


def test_status_shows_what_the_issue_asks(home: Path) -> None:
    out = sdn("sweep", "status", "quickstart", home=home).stdout
    header = next(line for line in out.splitlines() if line.startswith("arch"))
    for words in ("mode", "status", "epochs", "best val", "version", "MLflow run"):
        assert words in header
    (row,) = [r for r in json.loads(sdn("sweep", "status", "quickstart", "-f", "json",
                                        home=home).stdout) if r["run_id"].endswith("vgg16.digits.sdn.s0")]  # fmt: skip
    assert row["mlflow_run_id"] in out and f"{100 * row['best_val_accuracy']:.1f}%" in out
    # Columns the same for every row are said once, above the table.
    assert "sweep: quickstart" in out and "dataset: digits" in out


def test_default_target_is_said(home: Path) -> None:
    out = sdn("catalogue", "early-exit", home=home).stdout
    assert "target: max drop 1 pt" in out and "(default" in out
    out = sdn("catalogue", "early-exit", "--max-drop", "0.02", home=home).stdout
    assert "target: max drop 2 pt" in out and "(default" not in out
    rows = json.loads(sdn("catalogue", "early-exit", "-f", "json", home=home).stdout)
    assert {r["target"] for r in rows} == {"max_drop=0.01"}  # programs see it too


def test_columns_wide_and_formats(home: Path) -> None:
    out = sdn("catalogue", "runs", "--columns", "run_id,status", home=home).stdout
    lines = out.splitlines()
    rule = next(i for i, line in enumerate(lines) if set(line.strip()) == {"─"})
    assert lines[rule - 1].split() == ["run", "id", "status"]
    assert lines[rule + 1].split() == ["quickstart.mobilenet.digits.cnn.s0", "done"]
    wide = sdn("catalogue", "runs", "--wide", home=home, columns=400).stdout
    for words in ("MLflow run", "registered model", "parquet", "CNN FLOPs"):
        assert words in wide
    text = sdn("catalogue", "runs", "--format", "csv", "--columns", "arch,seed", home=home).stdout
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["arch", "seed"] and len(rows) == 13
    records = json.loads(sdn("catalogue", "runs", "-f", "json", home=home).stdout)
    assert records[0]["config"] == {"arch": "mobilenet", "mode": "cnn"}  # JSON values, not text
    bad = sdn("catalogue", "runs", "--columns", "arch,nope", home=home)
    assert bad.exit_code == 2 and "'nope'" in bad.stderr and "choose from:" in bad.stderr


def test_unknown_filter_values_are_refused_with_the_known_ones(home: Path) -> None:
    bad = sdn("catalogue", "runs", "--arch", "nosucharch", home=home)
    assert bad.exit_code == 2 and bad.stdout == ""
    assert "mobilenet, resnet56, vgg16, wrn32_4" in bad.stderr and "--allow-empty" in bad.stderr
    bad = sdn("catalogue", "runs", "--status", "weird", home=home)
    assert bad.exit_code == 2 and "'done'" in bad.stderr
    ok = sdn("catalogue", "runs", "--arch", "nosucharch", "--allow-empty", "-f", "json", home=home)
    assert ok.exit_code == 0 and json.loads(ok.stdout) == []
    failed = sdn("catalogue", "runs", "--status", "failed", "-f", "json", home=home)
    assert failed.exit_code == 0 and json.loads(failed.stdout) == []  # a real status, no rows


# --- sweep validate -------------------------------------------------------------------------------


def test_validate_prints_cells_order_and_work_and_writes_nothing(tmp_path: Path) -> None:
    before = files(tmp_path)
    result = sdn("sweep", "validate", "--preset", "quickstart", home=tmp_path / "h")
    assert result.exit_code == 0, result.stderr
    assert "12 cells" in result.stdout and "nothing was written" in result.stdout
    cells = json.loads(
        sdn("sweep", "validate", "--preset", "quickstart", "-f", "json", home=tmp_path).stdout
    )
    order = [c["run_id"] for c in cells]
    for cell in cells:  # every ic_only cell comes after its own cnn cell
        if cell["mode"] == "ic_only":
            parent = cell["run_id"].replace(".ic_only.", ".cnn.")
            assert order.index(parent) < order.index(cell["run_id"]) and cell["wave"] == 2
    resnet = next(c for c in cells if c["cell"] == "resnet56.digits.ic_only.s0")
    assert resnet["epochs"] == 6 and resnet["work"] == 6 * resnet["train_images"]
    assert files(tmp_path) == before and not (tmp_path / "h").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngrid: {architectures: [resnet57], datasets: [digits], modes: [cnn]}\n")
    result = sdn("sweep", "validate", str(bad))
    assert result.exit_code == 2 and "'resnet57'" in result.stderr and result.stdout == ""


# --- the catalogue opened read-only -------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "empty file"),
        (b"not sqlite at all\n" * 20, "not a SQLite database file"),
        (None, "empty SQLite database, not a catalogue"),  # a valid SQLite file without tables
        ("mlflow", "another application"),
    ],
)
def test_reads_report_a_file_that_is_not_a_catalogue_and_leave_it(
    tmp_path: Path, content: bytes | str | None, needle: str
) -> None:
    path = tmp_path / "catalogue.db"
    if content is None:
        con = sqlite3.connect(path)
        con.execute("PRAGMA user_version = 1")
        con.close()
    elif content == "mlflow":
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE experiments (id INTEGER)")
        con.close()
    else:
        path.write_bytes(content)
    before = files(tmp_path)
    for args in (("sweep", "list"), ("sweep", "status"), ("catalogue", "runs"),
                 ("catalogue", "early-exit"), ("catalogue", "exits"), ("catalogue", "sql", "SELECT 1")):  # fmt: skip
        result = sdn(*args, home=tmp_path)
        assert result.exit_code == 2, (args, result.stdout, result.stderr)
        assert needle in result.stderr and str(path) in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1
    assert files(tmp_path) == before


def test_a_too_old_catalogue_is_reported_with_the_upgrade_command(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from storage.catalogue import migrate

    shutil.copy(home / "catalogue.db", tmp_path / "catalogue.db")
    before = files(tmp_path)
    current = migrate.revision_chain()
    monkeypatch.setattr(migrate, "revision_chain", lambda: ("0099_next", *current))
    import storage.catalogue.readonly as readonly

    monkeypatch.setattr(readonly, "revision_chain", lambda: ("0099_next", *current))
    result = sdn("catalogue", "runs", home=tmp_path)
    assert result.exit_code == 2
    assert "older than this sdn-workflows' 0099_next" in result.stderr
    assert f"sdn catalogue upgrade --catalogue {tmp_path / 'catalogue.db'}" in result.stderr
    assert files(tmp_path) == before


def test_upgrade_command(home: Path, tmp_path: Path) -> None:
    import shutil

    from storage.catalogue.migrate import head_revision

    shutil.copy(home / "catalogue.db", tmp_path / "catalogue.db")
    result = sdn("catalogue", "upgrade", home=tmp_path)
    assert (
        result.exit_code == 0 and f"already at schema revision {head_revision()}" in result.stdout
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "catalogue.db").write_bytes(b"")
    result = sdn("catalogue", "upgrade", home=empty)
    assert result.exit_code == 2 and "empty file" in result.stderr
    assert (empty / "catalogue.db").read_bytes() == b""
    result = sdn("catalogue", "upgrade", home=tmp_path / "nowhere")
    assert result.exit_code == 2 and "nothing to upgrade" in result.stderr


def test_reading_a_wal_catalogue_creates_no_side_files(home: Path, tmp_path: Path) -> None:
    import shutil

    shutil.copy(home / "catalogue.db", tmp_path / "catalogue.db")
    with open(tmp_path / "catalogue.db", "rb") as fh:
        assert fh.read(20)[18] == 2  # WAL mode, as every catalogue
    before = files(tmp_path)
    for args in (("catalogue", "runs"), ("catalogue", "exits"), ("catalogue", "overthinking"),
                 ("catalogue", "early-exit"), ("sweep", "status"), ("catalogue", "sql", "SELECT 1")):  # fmt: skip
        assert sdn(*args, home=tmp_path).exit_code == 0, args
    assert files(tmp_path) == before  # no -wal, no -shm, the same bytes


def test_reads_work_on_a_read_only_file_system(home: Path, tmp_path: Path) -> None:
    """A read-only bind mount of the home (root ignores file modes): every read works and the
    catalogue is opened ``immutable``."""
    import shutil

    source, mounted = tmp_path / "src", tmp_path / "ro"
    source.mkdir()
    mounted.mkdir()
    shutil.copy(home / "catalogue.db", source / "catalogue.db")
    bind = subprocess.run(["mount", "--bind", str(source), str(mounted)], capture_output=True)
    if bind.returncode != 0:
        pytest.skip("cannot bind-mount here")
    try:
        ro = subprocess.run(["mount", "-o", "remount,ro,bind", str(mounted)], capture_output=True)
        if ro.returncode != 0:
            pytest.skip("cannot remount read-only here")
        for args in (("catalogue", "runs"), ("catalogue", "exits"), ("sweep", "list"),
                     ("catalogue", "early-exit"), ("catalogue", "sql", "SELECT count(*) FROM runs")):  # fmt: skip
            result = sdn(*args, home=mounted)
            assert result.exit_code == 0, (args, result.stderr)
    finally:
        subprocess.run(["umount", "-l", str(mounted)], check=False)


# --- catalogue sql: time limit, Ctrl-C, empty statements ------------------------------------------

ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


def test_sql_time_limit(home: Path) -> None:
    start = time.monotonic()
    result = sdn("catalogue", "sql", ENDLESS, "--timeout", "0.5", home=home)
    assert time.monotonic() - start < 10
    assert (
        result.exit_code == 2
        and "time limit of 0.5 s" in result.stderr
        and "--timeout" in result.stderr
    )


@pytest.mark.parametrize("query", ["", "   ", "-- just a comment", "/* a */ ; -- b\n"])
def test_empty_sql_is_bad_input(home: Path, query: str) -> None:
    result = sdn("catalogue", "sql", "--", query, home=home)  # `--`: the query is no option
    assert result.exit_code == 2 and "empty query" in result.stderr


def test_sql_result_size_is_bounded(home: Path) -> None:
    query = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c"
    result = sdn("catalogue", "sql", query, "--max-rows", "1000", home=home)
    assert result.exit_code == 2 and "more than 1000 rows" in result.stderr and result.stdout == ""


@pytest.mark.slow
def test_ctrl_c_stops_a_long_query_at_once(home: Path) -> None:
    import signal

    env = {**os.environ, "SDN_HOME": str(home), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "workflows.cli", "catalogue", "sql", ENDLESS, "--timeout", "300"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(3.0)  # well inside the query (imports take well under a second)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 2.0
    assert proc.returncode == 130 and err.strip() == "error: interrupted" and out == ""


# --- inputs agree with sdn.data -------------------------------------------------------------------


def test_input_checks_agree_with_sdn_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from sdn import data
    from workflows import inputs

    assert inputs.DATASETS == data.DATASETS and inputs.FOLDER_PREFIX == data.FOLDER_PREFIX
    monkeypatch.setenv("SDN_DATA_ROOT", str(tmp_path))
    assert inputs.default_data_root() == data.default_data_root()
    monkeypatch.delenv("SDN_DATA_ROOT")
    assert inputs.default_data_root() == data.default_data_root()
    from workflows.plan import TRAIN_TOTALS

    assert TRAIN_TOTALS["digits"] == data._DIGITS_TRAIN_SIZE


# --- inputs checked before anything heavy ---------------------------------------------------------


def test_image_folders_are_expanded_recursively_in_sorted_order(tmp_path: Path) -> None:
    from PIL import Image

    from workflows.inputs import image_inputs

    for rel in ("b/2.png", "b/10.png", "a/z.jpg", "a/.hidden/x.png", "c.png", "a/notes.txt"):
        path = tmp_path / "photos" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".txt"):
            path.write_text("not an image")
        else:
            Image.new("RGB", (4, 4)).save(path)
    single = tmp_path / "single.png"
    Image.new("RGB", (4, 4)).save(single)
    found = image_inputs([single, tmp_path / "photos"])
    names = [str(p.relative_to(tmp_path)) for p in found.files]
    assert names == ["single.png", "photos/a/z.jpg", "photos/b/10.png", "photos/b/2.png",
                     "photos/c.png"]  # fmt: skip
    assert found.folders == 1 and found.describe() == "5 image(s) from 1 folder(s) and files given"


PREDICT_PROBE = """
import sys
sys.argv = ["sdn", "models", "predict", "sdn-resnet56-digits-sdn@latest", *sys.argv[1:]]
try:
    from workflows.cli import app
    app()
except SystemExit:
    sys.stderr.write("HEAVY:" + ",".join(m for m in ("torch", "mlflow", "ray") if m in sys.modules) + "\\n")
    raise
"""


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["{empty}", "--threshold", "0.5"], "holds no images"),
        (["{empty}/nothing.png", "--threshold", "0.5"], "does not exist"),
        (["--dataset", "digits", "--threshold", "nan"], "--threshold nan"),
        (["--dataset", "digits", "--budget", "inf"], "--budget inf"),
        (["--dataset", "cifar10", "--threshold", "0.5", "--data-root", "{empty}"], "cifar-10-batches-py"),
        (["--dataset", "digits", "--threshold", "0.5", "--batch-size", "0"], "--batch-size"),
    ],
)  # fmt: skip
def test_predict_refuses_bad_input_before_loading_anything(
    tmp_path: Path, args: list[str], needle: str
) -> None:
    """One line, exit 2, in a fresh interpreter that never imported torch, MLflow or Ray: no
    model is resolved or loaded before every input is checked."""
    (tmp_path / "empty").mkdir()
    argv = [a.replace("{empty}", str(tmp_path / "empty")) for a in args]
    env = {**os.environ, "SDN_HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-c", PREDICT_PROBE, *argv], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and lines[-1] == "HEAVY:", run.stderr
    assert len(lines) == 2 and lines[0].startswith("error: ") and needle in lines[0]
    assert "--download" not in lines[0]


def test_home_option_does_not_change_the_environment(home: Path) -> None:
    before = dict(os.environ)
    result = CliRunner().invoke(app, ["sweep", "status", "--home", str(home)])
    assert result.exit_code == 0 and dict(os.environ) == before
