"""Every failure class through every command family (issue 13): the documented exit code, one
``error:`` line on stderr and no traceback, nothing on stdout, and not one byte changed under the
home (every file hashed before and after, SQLite side files included).

Classes (docs/reliability.md maps each to its code and to this table):

* bad input: an option value out of range or not finite, a filter value the catalogue does not
  hold, a malformed reference, an unknown name -> 2
* missing state: no catalogue, no MLflow store -> 2
* a home that is a file -> 2
* a damaged, empty or foreign catalogue; a catalogue too old for this code -> 2 (never
  initialised, never upgraded by a read)
* damaged Parquet under a report -> 2, the previous report left whole
* an output folder under a regular file -> 2
* MLflow unreachable -> 3 (within seconds); Ray unreachable -> 3
* interrupted (Ctrl-C) -> 130, with a hint only where there is something to continue

One success per family shows that an accepted read writes nothing either (MLflow included).
Partial failure (exit 1) needs a sweep whose cell fails: ``tests/test_reliability.py``
(corrupted checkpoint) covers it.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bench.quickstart_catalogue import build
from workflows.cli import app

pytestmark = pytest.mark.integration

REF = "sdn-resnet56-digits-sdn@latest"


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``: bytes hashed, side files included."""
    state = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        state[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A home as a quickstart leaves it (catalogue, an MLflow store with a registered model,
    predictions, an earlier report), plus places for the bad cases."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("failures ü")
    home = root / "home"
    home.mkdir()
    build(home / "catalogue.db")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    run = client.create_run(client.create_experiment("sweep-quickstart"))
    client.create_registered_model("sdn-resnet56-digits-sdn")
    client.create_model_version(
        "sdn-resnet56-digits-sdn", "file:///nowhere", run.info.run_id,
        tags={"dataset": "digits", "sweep": "quickstart"},
    )  # fmt: skip
    client.set_terminated(run.info.run_id)
    del client
    # A damaged Parquet file where the report looks for one run's test outputs.
    from storage.predictions import PredictionStore, RunKey

    key = RunKey("quickstart.resnet56.digits.sdn.s0", "resnet56", "digits", "sdn")
    broken = PredictionStore(home / "predictions").path_for(key, "test")
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"PAR1" + b"\0" * 200)
    report = home / "reports" / "quickstart"
    report.mkdir(parents=True)
    (report / "accuracy_vs_cost.png").write_bytes(b"an earlier report")
    (root / "a-file").write_text("a regular file\n")
    empty = root / "empty home"
    empty.mkdir()
    damaged = root / "damaged"
    damaged.mkdir()
    (damaged / "catalogue.db").write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 16)
    zero = root / "zero"
    zero.mkdir()
    (zero / "catalogue.db").write_bytes(b"")
    images = root / "no images"
    images.mkdir()
    (images / "notes.txt").write_text("not an image\n")
    return {"root": root, "home": home, "empty": empty, "damaged": damaged, "zero": zero,
            "images": images, "file": root / "a-file", "broken": broken}  # fmt: skip


@dataclass
class Row:
    family: str
    failure: str
    args: list[str]
    code: int
    needles: list[str]
    env: dict[str, str] = field(default_factory=dict)
    home: str = "home"  # which fixture folder SDN_HOME names
    patch: Callable[[pytest.MonkeyPatch], None] | None = None
    max_s: float = 60.0


def _too_old(monkeypatch: pytest.MonkeyPatch) -> None:
    import storage.catalogue.readonly as readonly
    from storage.catalogue import migrate

    chain = ("0099_next", *migrate.revision_chain())
    monkeypatch.setattr(readonly, "revision_chain", lambda: chain)


def _interrupt(target: str, name: str) -> Callable[[pytest.MonkeyPatch], None]:
    def patch(monkeypatch: pytest.MonkeyPatch) -> None:
        import importlib

        module = importlib.import_module(target)

        def stop(*_a: Any, **_k: Any) -> Any:
            raise KeyboardInterrupt

        monkeypatch.setattr(module, name, stop)

    return patch


def _interrupt_report_midway(monkeypatch: pytest.MonkeyPatch) -> None:
    import workflows.report as report

    def half(cat: Any, target: str, folder: Path, **_k: Any) -> Any:
        (folder / "accuracy_vs_cost.png").write_bytes(b"half a new report")
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "make_report", half)


MLFLOW_DOWN = "http://127.0.0.1:{port}"

ROWS: list[Row] = [
    # --- bad input
    Row("sweep", "bad input", ["sweep", "launch", "--preset", "nope"], 2, ["unknown preset 'nope'"]),
    Row("sweep", "bad input", ["sweep", "status", "nosuch"], 2, ["unknown sweep 'nosuch'", "quickstart"]),
    Row("sweep", "bad input", ["sweep", "validate", "{file}"], 2, ["a-file"]),
    Row("catalogue", "bad input", ["catalogue", "early-exit", "--max-drop", "nan"], 2, ["--max-drop", "finite"]),
    Row("catalogue", "bad input", ["catalogue", "early-exit", "--budget", "inf"], 2, ["--budget", "finite"]),
    Row("catalogue", "bad input", ["catalogue", "runs", "--arch", "nosucharch"], 2, ["--arch", "mobilenet, resnet56"]),
    Row("catalogue", "bad input", ["catalogue", "runs", "--status", "weird"], 2, ["--status", "'failed'"]),
    Row("catalogue", "bad input", ["catalogue", "overthinking", "--sweep", "nope"], 2, ["--sweep", "quickstart"]),
    Row("catalogue", "bad input", ["catalogue", "sql", "--", ""], 2, ["empty query"]),
    Row("catalogue", "bad input", ["catalogue", "sql", "DELETE FROM runs"], 2, ["only reads"]),
    Row("catalogue", "bad input", ["catalogue", "runs", "--columns", "arch,colour"], 2, ["'colour'"]),
    Row("models", "bad input", ["models", "predict", REF, "--dataset", "digits", "--threshold", "nan"], 2, ["--threshold nan", "[0, 1]"]),
    Row("models", "bad input", ["models", "predict", REF, "--dataset", "digits", "--max-drop", "inf"], 2, ["--max-drop inf", "finite"]),
    Row("models", "bad input", ["models", "predict", REF, "--dataset", "digits", "--threshold", "0.5", "--policy", "greedy"], 2, ["'greedy'"]),
    Row("models", "bad input", ["models", "predict", REF, "{images}", "--threshold", "0.5"], 2, ["holds no images"]),
    Row("models", "bad input", ["models", "predict", REF, "{home}", "--threshold", "0.5"], 2, ["cannot read image"]),
    Row("models", "bad input", ["models", "predict", REF, "--dataset", "cifar10", "--threshold", "0.5", "--data-root", "{empty}"], 2, ["cifar-10-batches-py", "--data-root"]),
    Row("models", "bad input", ["models", "predict", REF, "--dataset", "digits", "--threshold", "0.5", "--data-root", "{root}/nowhere"], 2, ["--data-root", "does not exist"]),
    Row("models", "bad input", ["models", "get", "bad ref!!"], 2, ["bad ref!!"]),
    Row("models", "bad input", ["models", "get", "sdn-nosuch-digits-cnn@latest"], 2, ["sdn-nosuch-digits-cnn", "sdn-resnet56-digits-sdn"]),
    Row("report", "bad input", ["report", "nosuch", "--no-mlflow"], 2, ["nosuch"]),
    # --- missing state
    Row("sweep", "missing state", ["sweep", "status"], 2, ["no catalogue at", "launch a sweep"], home="empty"),
    Row("sweep", "missing state", ["sweep", "resume", "quickstart"], 2, ["no catalogue at"], home="empty"),
    Row("catalogue", "missing state", ["catalogue", "early-exit"], 2, ["no catalogue at"], home="empty"),
    Row("catalogue", "missing state", ["catalogue", "upgrade"], 2, ["nothing to upgrade"], home="empty"),
    Row("models", "missing state", ["models", "list"], 2, ["no MLflow store", "mlflow.db"], home="empty"),
    Row("report", "missing state", ["report", "quickstart", "--no-mlflow"], 2, ["no catalogue at"], home="empty"),
    # --- a home that is a file
    Row("sweep", "home is a file", ["sweep", "list"], 2, ["$SDN_HOME", "is a file"], home="file"),
    Row("sweep", "home is a file", ["sweep", "launch", "--preset", "quickstart", "--home", "{file}"], 2, ["--home", "is a file"]),
    Row("catalogue", "home is a file", ["catalogue", "runs"], 2, ["$SDN_HOME", "is a file"], home="file"),
    Row("models", "home is a file", ["models", "list"], 2, ["$SDN_HOME", "is a file"], home="file"),
    Row("report", "home is a file", ["report", "quickstart"], 2, ["$SDN_HOME", "is a file"], home="file"),
    # --- damaged, empty or too old catalogue: reported, never initialised or upgraded by a read
    Row("sweep", "damaged catalogue", ["sweep", "status"], 2, ["catalogue.db"], home="damaged"),
    Row("sweep", "empty catalogue", ["sweep", "list"], 2, ["empty file"], home="zero"),
    Row("catalogue", "damaged catalogue", ["catalogue", "sql", "SELECT 1"], 2, ["catalogue.db"], home="damaged"),
    Row("catalogue", "empty catalogue", ["catalogue", "exits"], 2, ["empty file"], home="zero"),
    Row("report", "damaged catalogue", ["report", "quickstart", "--no-mlflow"], 2, ["catalogue.db"], home="damaged"),
    Row("sweep", "catalogue too old", ["sweep", "status"], 2, ["sdn catalogue upgrade"], patch=_too_old),
    Row("catalogue", "catalogue too old", ["catalogue", "early-exit"], 2, ["sdn catalogue upgrade"], patch=_too_old),
    Row("report", "catalogue too old", ["report", "quickstart", "--no-mlflow"], 2, ["sdn catalogue upgrade"], patch=_too_old),
    # --- damaged Parquet: the earlier report stays whole
    Row("report", "damaged parquet", ["report", "quickstart", "--no-mlflow"], 2, ["{broken}"]),
    # --- an output folder under a file
    Row("report", "output under a file", ["report", "quickstart", "--no-mlflow", "--out", "{file}/r"], 2, ["a-file"]),
    Row("models", "output under a file", ["models", "get", REF, "--out", "{file}/m"], 2, ["a-file", "Not a directory"]),
    Row("models", "output under a file", ["models", "predict", REF, "--dataset", "digits", "--threshold", "0.5", "--out", "{file}/p.csv"], 2, ["a-file"]),
    # --- services unreachable: 3, in seconds
    Row("sweep", "Ray unreachable", ["sweep", "launch", "--preset", "quickstart", "--address", "127.0.0.1:{port}"], 3, ["cannot reach Ray"], max_s=15),
    Row("sweep", "MLflow unreachable", ["sweep", "launch", "--preset", "quickstart"], 3, ["MLflow tracking server", "unreachable"], env={"SDN_MLFLOW_TRACKING_URI": MLFLOW_DOWN}, max_s=15),
    Row("catalogue", "MLflow unreachable", ["catalogue", "rebuild", "--tracking-uri", MLFLOW_DOWN], 3, ["unreachable"], max_s=15),
    Row("models", "MLflow unreachable", ["models", "list", "--tracking-uri", MLFLOW_DOWN], 3, ["unreachable"], max_s=15),
    Row("models", "MLflow unreachable", ["models", "get", REF], 3, ["unreachable"], env={"SDN_MLFLOW_TRACKING_URI": MLFLOW_DOWN}, max_s=15),
    Row("models", "MLflow unreachable", ["models", "predict", REF, "--dataset", "digits", "--threshold", "0.5"], 3, ["unreachable"], env={"MLFLOW_TRACKING_URI": MLFLOW_DOWN}, max_s=15),
    Row("report", "MLflow unreachable", ["report", "quickstart", "--tracking-uri", MLFLOW_DOWN], 3, ["unreachable"], max_s=15),
    # --- interrupted: 130, a hint only where something can be continued
    Row("sweep", "interrupted", ["sweep", "launch", "--preset", "quickstart"], 130, ["interrupted", "sdn sweep resume quickstart"], patch=_interrupt("workflows.sweep", "launch")),
    Row("sweep", "interrupted", ["sweep", "status"], 130, ["interrupted"], patch=_interrupt("storage.catalogue.readonly", "open_reader")),
    Row("catalogue", "interrupted", ["catalogue", "runs"], 130, ["interrupted"], patch=_interrupt("storage.catalogue.readonly", "open_reader")),
    Row("models", "interrupted", ["models", "list"], 130, ["interrupted"], patch=_interrupt("storage.registry", "Registry")),
    Row("report", "interrupted", ["report", "quickstart", "--no-mlflow"], 130, ["interrupted"], patch=_interrupt_report_midway),
]  # fmt: skip

SUCCESSES = [
    ["sweep", "status", "quickstart"],
    ["catalogue", "early-exit", "--budget", "0.5"],
    ["models", "list"],
]


def _fill(text: str, world: dict[str, Path], port: int) -> str:
    for key, path in world.items():
        text = text.replace("{" + key + "}", str(path))
    return text.replace("{port}", str(port))


def test_every_family_meets_every_class() -> None:
    families = {r.family for r in ROWS}
    assert families == {"sweep", "catalogue", "models", "report"}
    classes = {r.failure for r in ROWS}
    for failure in (
        "bad input",
        "missing state",
        "home is a file",
        "MLflow unreachable",
        "interrupted",
    ):
        assert {r.family for r in ROWS if r.failure == failure} == families, failure
    assert len(classes) >= 11 and len(ROWS) >= 50


@pytest.mark.parametrize(
    "row", ROWS, ids=[f"{r.family}-{r.failure}-{'-'.join(r.args[:2])}" for r in ROWS]
)
def test_failure_class(
    row: Row, world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    args = [_fill(a, world, port) for a in row.args]
    needles = [_fill(n, world, port) for n in row.needles]
    env = {k: _fill(v, world, port) for k, v in row.env.items()}
    env = {"SDN_HOME": str(world[row.home]), "COLUMNS": "100", **env}
    for key in ("SDN_CATALOGUE", "SDN_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        env.setdefault(key, None)  # type: ignore[arg-type]  # unset for the command
    if row.patch is not None:
        row.patch(monkeypatch)
    monkeypatch.chdir(tmp_path)  # a stray mlflow.db or report would land here
    before = snapshot(world["root"])
    start = time.monotonic()
    result = CliRunner().invoke(app, args, env=env, catch_exceptions=False)
    took = time.monotonic() - start
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == row.code, (result.exit_code, result.stdout, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    if row.code == 130 and row.args[:2] != ["sweep", "launch"]:
        assert "sweep resume" not in lines[0]
    assert took < row.max_s, took
    assert snapshot(world["root"]) == before
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", SUCCESSES, ids=[" ".join(a) for a in SUCCESSES])
def test_accepted_reads_write_nothing(
    args: list[str], world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    before = snapshot(world["root"])
    env = {"SDN_HOME": str(world["home"]), "COLUMNS": "100", "SDN_MLFLOW_TRACKING_URI": None}
    result = CliRunner().invoke(app, args, env=env, catch_exceptions=False)  # type: ignore[arg-type]
    assert result.exit_code == 0, result.stderr
    assert snapshot(world["root"]) == before
    assert list(tmp_path.iterdir()) == []


def test_a_failed_report_leaves_the_earlier_one_and_a_good_one_replaces_it(
    world: dict[str, Path], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    shutil.copytree(world["home"], home)
    old = home / "reports" / "quickstart" / "accuracy_vs_cost.png"
    env = {"SDN_HOME": str(home), "COLUMNS": "100"}
    failed = CliRunner().invoke(app, ["report", "quickstart", "--no-mlflow"], env=env)
    assert failed.exit_code == 2 and old.read_bytes() == b"an earlier report"
    shutil.rmtree(home / "predictions")  # no Parquet: the report draws what the catalogue has
    done = CliRunner().invoke(app, ["report", "quickstart", "--no-mlflow"], env=env)
    assert done.exit_code == 0, done.stderr
    assert old.read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in (home / "reports").iterdir()) == ["quickstart"]  # no temp left
