"""The README runs as written.

* Every ``sdn`` command in its shell blocks parses with the CLI's own parser (the command exists,
  every option and argument is accepted), including those run through ``ray``.
* The read commands and ``sdn report`` run as written on a quickstart-shaped home (the 12-run
  catalogue, Parquet predictions and an MLflow store with the sweep's run), writing nothing in
  the working directory.
* The Python snippet that needs no trained model runs as written.

The snippets that need trained, registered models (the MLflow snippet and the ``sdn models``
lines) run in ``tests/test_workflow.py::test_readme_model_snippets_run_as_written``, on the sweep
that module trains anyway.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from readme_snippets import ROOT, check_parses, python_blocks, run_python, sdn_commands, shell_lines
from report_home import build_home
from typer.testing import CliRunner

READ_COMMANDS = {
    "sdn sweep status", "sdn catalogue exits", "sdn catalogue early-exit",
    "sdn catalogue overthinking", "sdn catalogue backdoor", "sdn catalogue sql", "sdn report",
    "sdn sweep validate",
}  # fmt: skip
MODEL_COMMANDS = {"sdn models list", "sdn models get", "sdn models predict"}
NOT_RUN = {"sdn sweep resume", "sdn sweep launch"}  # they train: parsed only


def test_every_sdn_line_parses_and_is_covered():
    commands = sdn_commands()
    paths = [check_parses(args) for args in commands]
    assert len(commands) >= 14
    # Every command the README shows is run by a test, or is a sweep launch (parsed only).
    assert set(paths) <= READ_COMMANDS | MODEL_COMMANDS | NOT_RUN, set(paths)
    assert {"sdn sweep launch", "sdn sweep status"} <= set(paths)  # also those through `ray`


def test_the_parse_check_catches_a_wrong_option_or_command():
    from typer._click.exceptions import UsageError

    with pytest.raises(UsageError):
        check_parses(["catalogue", "early-exit", "--max-dorp", "0.01"])
    with pytest.raises(UsageError):
        check_parses(["catalogue", "early-exit", "--max-drop", "one point"])
    with pytest.raises(AssertionError, match="does not name a command"):
        check_parses(["catalogue"])


def test_scripts_and_files_the_readme_names_exist():
    lines = shell_lines()
    for script in ("scripts/quickstart.sh", "scripts/test.sh"):
        assert script in lines and os.access(ROOT / script, os.X_OK)
    assert (ROOT / "ray_cluster.yaml").is_file()
    assert any(
        line.startswith("mlflow ui --backend-store-uri sqlite:///sdn-home/") for line in lines
    )


@pytest.fixture(scope="module")
def quickstart_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home as the quickstart leaves it, without training: catalogue, Parquet, and an MLflow
    store with the sweep's parent run (where `sdn report` logs)."""
    from storage.mlflow_setup import ensure_tracking_store, make_client
    from workflows import tracking

    home = build_home(tmp_path_factory.mktemp("readme home") / "sdn-home")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    ensure_tracking_store(uri)
    client = make_client(uri)
    experiment = tracking.ensure_experiment(client, "quickstart", (home / "mlartifacts").as_uri())
    tracking.ensure_sweep_run(client, experiment, "quickstart", {})
    return home


def test_read_commands_and_the_report_run_as_written(quickstart_home, tmp_path, monkeypatch):
    from workflows.cli import app
    from workflows.report import registry

    # `sdn report` as written, with fewer sections: this test is about the command line.
    registry.load_section_modules()
    monkeypatch.setattr(
        registry, "_REGISTRY", {k: v for k, v in registry._REGISTRY.items() if k == "overview"}
    )
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ROOT / "workflows" / "presets" / "quickstart.yaml", work / "my-sweep.yaml")
    monkeypatch.chdir(work)
    ran = []
    for args in sdn_commands(direct=True):  # not those run on a cluster through `ray`
        path = check_parses(args)
        if path not in READ_COMMANDS:
            continue
        result = CliRunner().invoke(app, args, env={"SDN_HOME": str(quickstart_home)})
        assert result.exit_code == 0, (args, result.output)
        assert result.stdout.strip(), args
        ran.append(path)
    assert set(ran) == READ_COMMANDS
    assert (quickstart_home / "reports" / "quickstart" / "index.html").is_file()
    assert sorted(p.name for p in work.iterdir()) == ["my-sweep.yaml"]  # nothing else written


def test_the_plain_pytorch_snippet_runs_as_written(tmp_path):
    pure = [code for code in python_blocks() if "from sdn import build_sdn" in code]
    assert len(pure) == 1
    out = run_python(pure[0] + "\nprint(len(outs), tuple(preds.shape))\n", tmp_path, {})
    assert out.split() == ["7", "(4,)"]  # ResNet-56: 6 ICs + the final head; one answer a sample
    assert list(tmp_path.iterdir()) == []


def model_snippet() -> str:
    (code,) = [c for c in python_blocks() if "load_model" in c]
    return code


def run_model_snippets(home: Path, work: Path, invoke: Any) -> None:
    """The README's MLflow snippet and `sdn models` lines, as written, on a home with trained,
    registered models (``invoke(args) -> (code, stdout, stderr)`` runs `sdn` there with
    ``SDN_HOME`` set). ``work`` is an empty working directory."""
    from PIL import Image

    out = run_python(model_snippet(), work, {"SDN_HOME": str(home)})
    assert "torch.Size([2, 7, 10])" in out  # [batch, exits, classes] of a ResNet-56 SDN
    assert list(work.iterdir()) == []  # no stray mlflow.db, no mlruns/
    images = work / "my-images"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (30 * i, 0, 0)).save(images / f"{i}.png")
    ran = []
    cwd = Path.cwd()
    os.chdir(work)
    try:
        for args in sdn_commands(direct=True):
            path = check_parses(args)
            if path in MODEL_COMMANDS:
                code, _, stderr = invoke(*args)
                assert code == 0, (args, stderr)
                ran.append(path)
    finally:
        os.chdir(cwd)
    assert set(ran) == MODEL_COMMANDS
    assert (work / "exported-model" / "model.pt").is_file()
    assert len((work / "predictions.csv").read_text().splitlines()) == 1 + 3
