"""End to end: a tiny sweep on a real local Ray cluster, real MLflow (SQLite), real SQLite
catalogue and real Parquet files.

2 architectures x 3 modes on a cut-down digits set, one epoch each. Checks that every cell trained,
that ic_only started from its own cnn's weights, that Parquet holds samples x exits rows per run and
split, that the catalogue is complete, and that each model is registered once and retrievable; then
that launching again retrains nothing and records nothing twice.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sdn.data import load_dataset
from storage.catalogue import Catalogue
from storage.predictions import PredictionStore
from storage.registry import Registry
from workflows import layout
from workflows.spec import parse_sweep
from workflows.sweep import launch

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY = """
name: tiny
grid: {{architectures: [resnet56, mobilenet], datasets: [digits], modes: [cnn, ic_only, sdn], seeds: [0]}}
training: {{epochs: 1, batch_size: 32, width: 0.125, train_subset: 96, val_size: 40, milestones: []}}
resources: {{cpus_per_trial: 1, max_concurrent_trials: 2}}
checkpoint: {{every_epochs: 1, max_failures: 1}}
analysis: {{batch_size: 128, max_accuracy_drops: [0.01], cost_budgets: [0.5], thresholds: [0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99, 1.0]}}
storage: {{home: "{home}"}}
"""


@pytest.fixture(scope="module")
def swept(ray_local, tmp_path_factory):
    home = tmp_path_factory.mktemp("sweep home")  # a space in the path, on purpose
    spec = parse_sweep(TINY.format(home=home), "tiny.yaml")
    outcome = launch(spec, progress=False)
    return spec, outcome


def test_every_cell_trained_and_analysed(swept):
    spec, outcome = swept
    assert outcome.ok, (outcome.failed, outcome.skipped)
    assert sorted(outcome.trained) == sorted(c.run_id for c in spec.cells())
    assert sorted(outcome.analysed) == sorted(c.run_id for c in spec.cells())


def test_ic_only_starts_from_its_own_cnn(swept):
    spec, _ = swept
    paths = spec.storage_paths()
    for cell in spec.cells():
        if cell.mode != "ic_only":
            continue
        cnn_weights = torch.load(
            layout.final_dir(paths.tune, spec.name, cell.cnn_parent) / "model.pt", weights_only=True
        )
        ic_weights = torch.load(
            layout.final_dir(paths.tune, spec.name, cell.run_id) / "model.pt", weights_only=True
        )
        backbone = {
            k.removeprefix("backbone."): v
            for k, v in ic_weights.items()
            if k.startswith("backbone.")
        }
        assert backbone.keys() == cnn_weights.keys()
        for key, value in cnn_weights.items():  # frozen backbone: identical, BN statistics included
            assert torch.equal(backbone[key], value), key


def test_parquet_rows_are_samples_times_exits(swept):
    spec, _ = swept
    paths = spec.storage_paths()
    splits = load_dataset("digits", val_size=40, train_subset=96)
    store = PredictionStore(paths.predictions)
    for cell in spec.cells():
        for split, n in (("val", len(splits.val)), ("test", len(splits.test))):
            out = store.read_outputs(cell.run_id, split)
            exits = 1 if cell.mode == "cnn" else (7 if cell.arch == "resnet56" else 6)
            assert out.num_samples == n and out.num_exits == exits
    counts = store.duckdb(
        "SELECT run_id, split, count(*) AS n FROM predictions GROUP BY run_id, split"
    )
    assert len(counts) == 2 * len(spec.cells())


def test_catalogue_is_complete(swept):
    spec, _ = swept
    with Catalogue(spec.storage_paths().catalogue) as cat:
        runs = cat.runs(sweep=spec.name)
        assert len(runs) == 6 and set(runs["status"]) == {"done"}
        assert runs["mlflow_run_id"].notna().all() and runs["model_version"].notna().all()
        assert all(Path(p).is_dir() for p in runs["parquet_path"])
        exits = cat.exits(sweep=spec.name)  # train, val and test
        expected = sum(
            3 * (1 if m == "cnn" else (7 if a == "resnet56" else 6))
            for a, m in zip(runs["arch"], runs["train_mode"], strict=True)
        )
        assert len(exits) == expected
        assert len(cat.overthinking(sweep=spec.name)) == 6
        # The sweep's own confidence grid (analysis.thresholds) is what was stored and chosen among.
        grid = sorted(spec.analysis.thresholds)
        stored = cat.sql(
            "SELECT r.run_id, p.split, group_concat(p.threshold) AS q FROM early_exit_points p "
            "JOIN runs r ON r.id = p.run_pk WHERE p.policy = 'confidence' "
            "GROUP BY r.run_id, p.split"
        )
        assert len(stored) == 12
        assert all(sorted(map(float, q.split(","))) == grid for q in stored.q)
        chosen = cat.sql(
            "SELECT threshold FROM early_exit_choices WHERE policy = 'confidence' "
            "AND method = 'empirical'"
        )
        assert all(q is None or q != q or q in grid for q in chosen.threshold)
        assert not cat.best_early_exit(max_accuracy_drop=0.5, sweep=spec.name, per_run=True).empty


def test_models_registered_once_and_retrievable(swept):
    spec, _ = swept
    registry = Registry(spec.storage_paths().mlflow_tracking_uri)
    models = registry.list_models()
    assert len(models) == 6 and set(models["version"].astype(int)) == {1}
    model = registry.load_module("sdn-resnet56-digits-sdn@latest")
    x = torch.randn(4, 3, 32, 32)
    preds, exit_idx = model.early_exit(x, threshold=0.5)
    assert preds.shape == (4,) and int(exit_idx.max()) <= 6


def test_relaunch_retrains_nothing_and_records_nothing_twice(swept):
    spec, _ = swept
    paths = spec.storage_paths()
    before = {
        c.run_id: layout.read_result(paths.tune, spec.name, c.run_id)["finished_at"]
        for c in spec.cells()
    }
    outcome = launch(spec, progress=False)
    assert outcome.ok
    after = {
        c.run_id: layout.read_result(paths.tune, spec.name, c.run_id)["finished_at"]
        for c in spec.cells()
    }
    assert before == after
    registry = Registry(paths.mlflow_tracking_uri)
    assert set(registry.list_models()["version"].astype(int)) == {1}
    with Catalogue(paths.catalogue) as cat:
        assert len(cat.runs()) == 6
        assert len(cat.sql("SELECT * FROM sweeps")) == 1
    from mlflow import MlflowClient

    client = MlflowClient(paths.mlflow_tracking_uri)
    exp = client.get_experiment_by_name(f"sweep-{spec.name}")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 7  # one parent + one per cell
    assert json.loads(json.dumps(outcome.trained))


# --- the CLI over the same sweep ----------------------------------------------------------------


@pytest.fixture(scope="module")
def cli(swept):
    """Invoke `sdn ...` in-process against the swept home; returns (exit code, stdout, stderr)."""
    from typer.testing import CliRunner

    from workflows.cli import app

    spec, _ = swept
    home = str(spec.storage_paths().home)
    runner = CliRunner()

    def invoke(*args: str) -> tuple[int, str, str]:
        result = runner.invoke(app, [*args], env={"SDN_HOME": home, "COLUMNS": "200"})
        return result.exit_code, result.stdout, result.stderr

    return invoke


def test_cli_status_list_and_catalogue_queries(cli):
    code, out, _ = cli("sweep", "status", "tiny", "--format", "json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 6 and {r["status"] for r in rows} == {"done"}
    code, out, _ = cli("sweep", "list", "--format", "csv")
    assert code == 0 and out.splitlines()[1].startswith("tiny,")
    code, out, _ = cli(
        "catalogue", "runs", "--arch", "resnet56", "--mode", "sdn", "--format", "json"
    )
    assert code == 0 and [r["run_id"] for r in json.loads(out)] == ["tiny.resnet56.digits.sdn.s0"]
    code, out, _ = cli("catalogue", "exits", "--arch", "mobilenet", "--mode", "sdn", "-f", "json")
    assert code == 0 and [r["exit_index"] for r in json.loads(out)] == list(range(6))
    code, out, _ = cli("catalogue", "early-exit", "--max-drop", "0.5", "-f", "json")
    assert code == 0 and len(json.loads(out)) >= 1
    code, out, _ = cli("catalogue", "overthinking", "-f", "json")
    assert code == 0 and len(json.loads(out)) == 6
    code, out, _ = cli("catalogue", "sql", "SELECT count(*) AS n FROM runs", "-f", "json")
    assert code == 0 and json.loads(out) == [{"n": 6}]


def test_cli_refuses_writes_and_bad_filters(cli):
    code, _, err = cli("catalogue", "sql", "DELETE FROM runs")
    assert code == 2 and err.count("\n") == 1 and "error:" in err
    code, _, err = cli("sweep", "status", "nope")
    assert code == 2 and "unknown sweep 'nope'" in err
    code, _, err = cli("catalogue", "runs", "--arch", "x' OR '1'='1")
    assert code == 2 and "not in the catalogue" in err and "mobilenet, resnet56" in err
    code, out, _ = cli("catalogue", "runs", "--arch", "x' OR '1'='1", "--allow-empty", "-f", "json")
    assert code == 0 and json.loads(out) == []


def test_cli_models_get_and_predict(cli, tmp_path):
    code, out, _ = cli("models", "list", "-f", "json")
    assert code == 0 and len(json.loads(out)) == 6
    code, out, _ = cli(
        "models",
        "get",
        "sdn-resnet56-digits-sdn@latest",
        "--out",
        str(tmp_path / "m"),
        "-f",
        "json",
    )
    assert code == 0 and (tmp_path / "m" / "model.pt").exists()
    code, out, _ = cli(
        "models",
        "predict",
        "sdn-mobilenet-digits-sdn/1",
        "--dataset",
        "digits",
        "--threshold",
        "0.0",
        "--limit",
        "5",
        "-f",
        "json",
    )
    rows = json.loads(out)
    assert (
        code == 0 and len(rows) == 5 and {r["exit"] for r in rows} == {"IC0"}
    )  # q=0: all leave at IC0
    code, out, _ = cli(
        "models",
        "predict",
        "sdn-mobilenet-digits-sdn/1",
        "--dataset",
        "digits",
        "--budget",
        "0.6",
        "--limit",
        "8",
        "-f",
        "json",
    )
    assert code == 0
    # What --budget promises: the threshold was chosen on validation so that the mean cost there
    # is within the budget (or says it could not be), and each prediction costs exactly what its
    # exit costs as stored. Where a briefly trained model sends each sample is not promised.
    rows = json.loads(out)
    stored = _stored_exit_costs(cli, "sdn-mobilenet-digits-sdn")
    assert len(rows) == 8
    assert all(r["relative_cost"] == stored[r["exit"]] for r in rows)
    code, out, _ = cli(
        "catalogue",
        "early-exit",
        "--budget",
        "0.6",
        "--arch",
        "mobilenet",
        "--mode",
        "sdn",
        "-f",
        "json",
    )
    (chosen,) = json.loads(out)
    assert chosen["status"] != "met" or chosen["val_relative_cost"] <= 0.6
    from PIL import Image

    img = tmp_path / "digit with space é.png"
    Image.new("RGB", (8, 8), (255, 255, 255)).save(img)
    code, out, _ = cli(
        "models",
        "predict",
        "sdn-resnet56-digits-cnn@latest",
        str(img),
        "--threshold",
        "0.9",
        "-f",
        "json",
    )
    assert code == 0 and json.loads(out)[0]["exit"] == "final"
    code, _, err = cli(
        "models", "predict", "sdn-resnet56-digits-sdn@latest", str(img), "--threshold", "1.5"
    )
    assert code == 2 and "threshold" in err


def _stored_exit_costs(cli, model_name: str) -> dict[str, float]:
    """Each exit's relative cost as the catalogue stores it, by the names predict prints."""
    code, out, _ = cli("catalogue", "exits", "--split", "test", "-f", "json")
    assert code == 0
    rows = [r for r in json.loads(out) if _model_name(r) == model_name]
    final = max(r["exit_index"] for r in rows)
    return {
        ("final" if r["exit_index"] == final else f"IC{r['exit_index']}"): r["relative_cost"]
        for r in rows
    }


def _model_name(row: dict) -> str:
    return f"sdn-{row['arch']}-{row['dataset']}-{row['train_mode']}"


@pytest.mark.parametrize(
    "target", [{"max_accuracy_drop": 0.01}, {"cost_budget": 0.5}], ids=["drop", "budget"]
)
@pytest.mark.parametrize("delta", [None, 0.1], ids=["empirical", "certified"])
def test_every_surface_shows_the_same_operating_point(cli, swept, target, delta):
    """The stored choice, the catalogue query, `sdn catalogue early-exit`, the end-of-sweep table,
    the report's marked points and `sdn models predict` give the same threshold, accuracy and
    cost for the same run and target: they all read the one stored answer."""
    from rich.console import Console

    from sdn.early_exit import Target, format_threshold
    from workflows.predict import predict
    from workflows.report import _chosen
    from workflows.summary import early_exit_table

    spec, _ = swept
    paths = spec.storage_paths()
    want = Target.of(target.get("max_accuracy_drop"), target.get("cost_budget"))
    method = "empirical" if delta is None else "certified"
    for arch in ("resnet56", "mobilenet"):
        run_id = f"tiny.{arch}.digits.sdn.s0"
        with Catalogue(paths.catalogue) as cat:
            stored = cat.sql(
                "SELECT c.threshold, c.test_accuracy, c.test_relative_cost, c.val_accuracy, "
                "c.val_relative_cost, c.met FROM early_exit_choices c JOIN runs r ON r.id = c.run_pk "
                "WHERE r.run_id = ? AND c.policy = 'confidence' AND c.target = ? AND c.method = ?",
                (run_id, want.name, method),
            ).iloc[0]
            api = cat.best_early_exit(**target, delta=delta, per_run=True, run_id=run_id).iloc[0]
            over = cat.overthinking(run_id=run_id)
            marked = _chosen(cat, run_id)
        q = None if stored.threshold != stored.threshold else stored.threshold
        point = (q, stored.test_accuracy, stored.test_relative_cost)
        assert (api.threshold, api.accuracy, api.relative_cost) == point
        assert api.status == (
            "met" if stored.met else "unmet" if delta is None else "none certified"
        )

        option = ["--max-drop", "0.01"] if "max_accuracy_drop" in target else ["--budget", "0.5"]
        extra = [] if delta is None else ["--delta", str(delta)]
        code, out, _ = cli(
            "catalogue",
            "early-exit",
            *option,
            *extra,
            "--arch",
            arch,
            "--mode",
            "sdn",
            "-f",
            "json",
        )
        (row,) = json.loads(out)
        assert code == 0 and (row["threshold"], row["accuracy"], row["relative_cost"]) == point

        if delta is None:
            # The end-of-sweep table (for a drop) and the report's dots read the same rows.
            if want.kind == "max_drop":
                console = Console(record=True, width=400)
                console.print(early_exit_table(api.to_frame().T, over, want))
                line = next(t for t in console.export_text().splitlines() if arch in t)
                assert format_threshold(q) in line and f"{100 * point[1]:.1f}" in line
            dot = marked[marked.target == want.name].iloc[0]
            assert (dot.test_accuracy, dot.test_relative_cost) == point[1:]

        _, _, chosen = predict(
            f"sdn-{arch}-digits-sdn/1",
            paths.mlflow_tracking_uri,
            images=[],
            dataset="digits",
            split="test",
            limit=4,
            threshold=None,
            max_drop=target.get("max_accuracy_drop"),
            budget=target.get("cost_budget"),
            delta=delta,
            data_root=None,
            catalogue_path=paths.catalogue,
        )
        assert chosen.source == "catalogue"
        assert (chosen.threshold, chosen.val_accuracy, chosen.val_relative_cost) == (
            q,
            stored.val_accuracy,
            stored.val_relative_cost,
        )


def test_cli_report_writes_pngs(cli, swept, tmp_path):
    code, _out, _ = cli("report", "tiny", "--out", str(tmp_path / "r"))
    assert code == 0
    pngs = sorted(p.name for p in (tmp_path / "r").rglob("*.png"))
    assert (
        "accuracy_vs_cost.png" in pngs and "confusion.png" in pngs and "first_correct.png" in pngs
    )
    # The per-sample sections on real models: a figure per ic_only / sdn run (4), Grad-CAM for
    # each of them whose final head destroys some IC's right answer (how many do depends on where
    # one-epoch models send samples: counted from the stored predictions, not assumed), and
    # those models' predictions on the samples shown are the stored ones.
    from sdn.qualitative import destructive_mask

    spec, _ = swept
    store = PredictionStore(spec.storage_paths().predictions)
    with_ics = [c.run_id for c in spec.cells() if c.mode != "cnn"]
    destroying = sum(bool(destructive_mask(store.read_outputs(r, "test")).any()) for r in with_ics)
    for name in ("confidence_confusion.png", "simple_complex.png"):
        assert pngs.count(name) == len(with_ics) == 4, name
    assert pngs.count("gradcam.png") == destroying
    page = (tmp_path / "r" / "index.html").read_text(encoding="utf-8")
    assert "differ from the stored ones" not in page and "cannot be loaded" not in page
    from mlflow import MlflowClient

    client = MlflowClient(spec.storage_paths().mlflow_tracking_uri)
    exp = client.get_experiment_by_name("sweep-tiny")
    parent = client.search_runs([exp.experiment_id], "tags.`sdn.kind` = 'sweep'")[0]
    assert any(a.path == "report" for a in client.list_artifacts(parent.info.run_id))


def test_readme_model_snippets_run_as_written(cli, swept, tmp_path):
    """The README's MLflow snippet and its `sdn models` lines, as written, on this sweep's home
    (it has the registered models they name); tests/test_readme.py runs the rest of the README."""
    from test_readme import run_model_snippets

    spec, _ = swept
    work = tmp_path / "work"
    work.mkdir()
    run_model_snippets(spec.storage_paths().home, work, cli)
