"""The backdoor experiment as a sweep, end to end: a tiny sweep with a clean cnn and poisoned
cnn, ic_only and sdn cells on a real local Ray cluster, real MLflow (SQLite), catalogue and Parquet.

Checks what issue 11 asks of the workflow: poisoned and clean cells never share a run id or a
registered name; the poisoned ic_only's ICs see only clean images (the splits the trainable hands
to its Trainer) and its backbone is the poisoned cnn's; triggered splits are in Parquet under their
own names; the catalogue's attack success counts non-target images only and agrees with the
Parquet rows; ``sdn catalogue backdoor`` shows it; a rebuild from MLflow and Parquet restores the
backdoor tables; the end-of-sweep summary prints the backdoor table.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from sdn.backdoor import PoisonConfig, make_backdoor_splits, trigger_mask
from sdn.data import load_dataset
from storage.catalogue import Catalogue, rebuild
from storage.predictions import PredictionStore
from storage.registry import Registry
from workflows import layout
from workflows.spec import parse_sweep
from workflows.sweep import launch

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TAG = "badnets-t5-r0p10-s0-sq5at26x26-white"
SWEEP = """
name: bdtiny
grid: {{architectures: [resnet56], datasets: [digits], modes: [cnn], seeds: [0]}}
training: {{epochs: 1, batch_size: 32, width: 0.125, train_subset: 96, val_size: 40, milestones: []}}
resources: {{cpus_per_trial: 1, max_concurrent_trials: 2}}
checkpoint: {{every_epochs: 1, max_failures: 1}}
analysis: {{batch_size: 128, max_accuracy_drops: [0.01, 0.05], cost_budgets: [0.5], policies: [confidence]}}
storage: {{home: "{home}"}}
backdoor: {{rate: 0.1, target: 5, modes: [cnn, ic_only, sdn]}}
"""


@pytest.fixture(scope="module")
def swept(ray_local, tmp_path_factory):
    home = tmp_path_factory.mktemp("backdoor home")
    spec = parse_sweep(SWEEP.format(home=home), "bdtiny.yaml")
    outcome = launch(spec, progress=False)
    return spec, outcome


def _cells(spec):
    return {(c.mode, c.poison_tag): c for c in spec.cells()}


def test_every_cell_trained_and_analysed(swept):
    spec, outcome = swept
    assert outcome.ok, (outcome.failed, outcome.skipped)
    assert sorted(outcome.analysed) == sorted(c.run_id for c in spec.cells())
    assert set(_cells(spec)) == {("cnn", None), ("cnn", TAG), ("ic_only", TAG), ("sdn", TAG)}


def test_poisoned_and_clean_cells_never_share_identity(swept):
    spec, _ = swept
    cells = _cells(spec)
    clean, poisoned = cells[("cnn", None)], cells[("cnn", TAG)]
    assert clean.run_id == "bdtiny.resnet56.digits.cnn.s0"
    assert poisoned.run_id == f"bdtiny.resnet56.digits.cnn.s0.{TAG}"
    assert cells[("ic_only", TAG)].cnn_parent == poisoned.run_id
    with Catalogue(spec.storage_paths().catalogue) as cat:
        runs = cat.runs(sweep=spec.name).set_index("run_id")
    assert len(runs) == 4 and runs.index.is_unique and runs.model_name.is_unique
    assert runs.loc[clean.run_id, "poison"] == ""
    assert runs.loc[poisoned.run_id, "poison"] == TAG
    assert runs.loc[clean.run_id, "model_name"] == "sdn-resnet56-digits-cnn"
    assert runs.loc[poisoned.run_id, "model_name"] == f"sdn-resnet56-digits-cnn-{TAG}"
    # MLflow: the run's and the model version's tags carry the poisoning.
    from mlflow import MlflowClient

    uri = spec.storage_paths().mlflow_tracking_uri
    client = MlflowClient(uri)
    tags = client.get_run(runs.loc[poisoned.run_id, "mlflow_run_id"]).data.tags
    assert {k: tags.get(k) for k in PoisonConfig().identity()} == PoisonConfig().identity()
    assert "backdoor" not in client.get_run(runs.loc[clean.run_id, "mlflow_run_id"]).data.tags
    ref = Registry(uri).resolve(f"sdn-resnet56-digits-ic_only-{TAG}@latest")
    assert client.get_model_version(ref.name, str(ref.version)).tags["backdoor"] == TAG


def _trial_config(spec, cell) -> dict:
    """The trial config the sweep ran the cell with, as the catalogue keeps it."""
    with Catalogue(spec.storage_paths().catalogue) as cat:
        return cat.runs(run_id=cell.run_id).iloc[0]["config"]


def test_ic_only_after_a_poisoned_cnn_sees_only_clean_images(swept):
    from workflows.trainable import _splits_for

    spec, _ = swept
    cells = _cells(spec)
    clean = load_dataset("digits", val_size=40, train_subset=96)
    bd = make_backdoor_splits(clean, PoisonConfig())
    assert len(bd.poisoned_indices) > 0
    box = trigger_mask(32, PoisonConfig().trigger)

    ic_split = _splits_for(
        _trial_config(spec, cells[("ic_only", TAG)]), {"val_size": 40, "train_subset": 96}
    )
    assert torch.equal(ic_split.train.images, clean.train.images)  # no trigger pixel anywhere
    assert torch.equal(ic_split.train.labels, clean.train.labels)  # the original labels
    poisoned = _splits_for(
        _trial_config(spec, cells[("cnn", TAG)]), {"val_size": 40, "train_subset": 96}
    )
    changed = (poisoned.train.images != clean.train.images).flatten(1).any(1)
    assert set(np.flatnonzero(changed.numpy())) <= set(bd.poisoned_indices.tolist())
    assert (poisoned.train.images[bd.poisoned_indices][:, :, box] == 255).all()
    assert (poisoned.train.labels[bd.poisoned_indices] == 5).all()

    # The ic_only model's backbone is the poisoned cnn's, unchanged (frozen, BN included).
    paths = spec.storage_paths()
    cnn = torch.load(
        layout.final_dir(paths.tune, spec.name, cells[("cnn", TAG)].run_id) / "model.pt",
        weights_only=True,
    )
    ic = torch.load(
        layout.final_dir(paths.tune, spec.name, cells[("ic_only", TAG)].run_id) / "model.pt",
        weights_only=True,
    )
    for key, value in cnn.items():
        assert torch.equal(ic[f"backbone.{key}"], value), key


def test_triggered_splits_are_in_parquet_under_their_names(swept):
    spec, _ = swept
    store = PredictionStore(spec.storage_paths().predictions)
    clean = load_dataset("digits", val_size=40, train_subset=96)
    for cell in spec.cells():
        names = {p.name.rsplit(".", 2)[-2] for p in store.files_for_run(cell.run_id, "outputs")}
        if cell.poison is None:
            assert names == {"val", "test"}
            continue
        assert names == {"val", "test", "val_triggered", "test_triggered"}
        for split, source in (("test", clean.test), ("val", clean.val)):
            out = store.read_outputs(cell.run_id, f"{split}_triggered")
            keep = np.flatnonzero(source.labels.numpy() != 5)
            assert out.sample_index.tolist() == keep.tolist()  # the clean twin's position
            assert out.labels.tolist() == source.labels.numpy()[keep].tolist()  # true labels


def test_catalogue_attack_success_counts_non_target_images_only(swept):
    spec, _ = swept
    store = PredictionStore(spec.storage_paths().predictions)
    with Catalogue(spec.storage_paths().catalogue) as cat:
        rows = cat.backdoor(sweep=spec.name)
        summaries = cat.backdoor_summaries(sweep=spec.name).set_index("run_id")
    assert set(rows.run_id) == {c.run_id for c in spec.cells() if c.poison is not None}
    for run_id, group in rows.groupby("run_id"):
        triggered = store.read_outputs(run_id, "test_triggered")
        test = store.read_outputs(run_id, "test")
        assert (triggered.labels != 5).all()
        group = group.sort_values("exit_index")
        assert group.attack_success.tolist() == pytest.approx((triggered.preds == 5).mean(0))
        assert group.triggered_accuracy.tolist() == pytest.approx(triggered.correct.mean(0))
        assert group.clean_accuracy.tolist() == pytest.approx(test.correct.mean(0))
        other = test.labels != 5  # the base rate: clean NON-target images answered with 5
        assert group.clean_target_rate.tolist() == pytest.approx((test.preds[other] == 5).mean(0))
        s = summaries.loc[run_id]
        assert s.num_triggered == len(triggered.labels) and s.num_target_excluded == 0
        assert s.early_exit_target == "max_drop=0.01"


def test_triggered_early_exit_uses_the_stored_choice(swept):
    spec, _ = swept
    run_id = next(c.run_id for c in spec.cells() if c.mode == "sdn")
    with Catalogue(spec.storage_paths().catalogue) as cat:
        stored = cat.sql(
            "SELECT c.threshold FROM early_exit_choices c JOIN runs r ON r.id = c.run_pk "
            "WHERE r.run_id = ? AND c.policy = 'confidence' AND c.method = 'empirical' "
            "AND c.target = 'max_drop=0.01'",
            (run_id,),
        ).iloc[0, 0]
        s = cat.backdoor_summaries(run_id=run_id).iloc[0]
    same = (pd.isna(stored) and pd.isna(s.early_exit_threshold)) or stored == s.early_exit_threshold
    assert same, (stored, s.early_exit_threshold)


@pytest.fixture(scope="module")
def cli(swept):
    from typer.testing import CliRunner

    from workflows.cli import app

    spec, _ = swept
    home = str(spec.storage_paths().home)

    def invoke(*args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(app, [*args], env={"SDN_HOME": home, "COLUMNS": "100"})
        return result.exit_code, result.stdout, result.stderr

    return invoke


def table_lines(out: str) -> list[str]:
    """The table's lines, header on (the notes above it may name a long poisoning tag)."""
    lines = out.splitlines()
    rule = next(i for i, line in enumerate(lines) if set(line.strip()) == {"─"})
    return lines[rule - 1 :]


def test_cli_catalogue_backdoor(cli, swept):
    spec, _ = swept
    code, out, _ = cli("catalogue", "backdoor", "-f", "json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 1 + 7 + 7  # poisoned cnn, ic_only and sdn exits
    assert {r["poison"] for r in rows} == {TAG}
    final = [r for r in rows if r["exit"] == "final" and r["train_mode"] == "cnn"]
    with Catalogue(spec.storage_paths().catalogue) as cat:
        want = cat.backdoor(mode="cnn").iloc[0]
    assert final[0]["attack_success"] == want.attack_success
    code, out, _ = cli("catalogue", "backdoor")
    assert code == 0 and "attack success" in out and "IC5" in out
    assert max(len(line) for line in table_lines(out)) <= 100
    code, out, _ = cli("catalogue", "backdoor", "--summary")
    assert code == 0 and "EE acc" in out and max(map(len, table_lines(out))) <= 100
    code, out, _ = cli("catalogue", "backdoor", "--summary", "--mode", "ic_only", "-f", "json")
    (row,) = json.loads(out)
    assert row["train_mode"] == "ic_only" and row["early_exit_target"] == "max_drop=0.01"
    code, _, err = cli("catalogue", "backdoor", "--poison", "badnets-nope")
    assert code == 2 and "not in the catalogue" in err and TAG in err
    code, out, _ = cli("catalogue", "runs", "--poison", TAG, "-f", "json")
    assert code == 0 and len(json.loads(out)) == 3
    code, out, _ = cli(
        "catalogue", "early-exit", "--mode", "cnn", "--max-drop", "0.5", "-f", "json"
    )
    assert code == 0 and sorted(r["poison"] for r in json.loads(out)) == ["", TAG]  # two groups
    code, out, _ = cli("catalogue", "overthinking", "--poison", TAG, "-f", "json")
    assert code == 0 and len(json.loads(out)) == 3


def test_report_has_the_backdoor_section(cli, swept, tmp_path):
    """The report shows the stored backdoor rows: one table row per poisoned run, the attack
    success figure, and a detection figure per poisoned run (from the triggered Parquet split)."""
    spec, _ = swept
    code, _, err = cli("report", spec.name, "--out", str(tmp_path / "r"), "--no-mlflow")
    assert code == 0, err
    page = (tmp_path / "r" / "index.html").read_text(encoding="utf-8")
    assert 'id="backdoor"' in page and 'data-table="backdoor"' in page
    with Catalogue(spec.storage_paths().catalogue) as cat:
        poisoned = len(cat.backdoor_summaries())
    table = page.split('data-table="backdoor"', 1)[1].split("</table>", 1)[0]
    assert table.count("<tr") - 1 == poisoned == 3  # header row + one per poisoned run
    pngs = sorted(p.name for p in (tmp_path / "r").rglob("backdoor_*.png"))
    assert pngs.count("backdoor_attack_success.png") == 1
    assert pngs.count("backdoor_detection.png") == poisoned


def test_rebuild_restores_the_backdoor_tables(swept, tmp_path):
    spec, _ = swept
    paths = spec.storage_paths()
    target = tmp_path / "rebuilt.db"
    counts = rebuild(target, paths.predictions, paths.mlflow_tracking_uri)
    assert counts["done"] == 4
    with Catalogue(paths.catalogue) as a, Catalogue(target) as b:
        for query in ("backdoor", "backdoor_summaries"):
            want, got = getattr(a, query)(), getattr(b, query)()
            assert not want.empty
            pd.testing.assert_frame_equal(got, want, obj=query)
        cols = ["run_id", "poison", "model_name"]
        pd.testing.assert_frame_equal(b.runs()[cols], a.runs()[cols])


def test_end_of_sweep_summary_has_the_backdoor_table(swept):
    from rich.console import Console

    from workflows.summary import print_summary

    spec, outcome = swept
    console = Console(record=True, width=250)
    print_summary(spec, outcome, console)
    text = console.export_text()
    assert "backdoor per exit" in text and "backdoor per poisoned run" in text
    rows = [line.split("│")[1:-1] for line in text.splitlines() if "(poisoned)" in line]
    rows = [[c.strip() for c in r] for r in rows if len(r) == 8]  # the per-exit table
    assert len(rows) == 1 + 7 + 7
    with Catalogue(spec.storage_paths().catalogue) as cat:
        final = cat.backdoor(mode="sdn").iloc[-1]
    sdn_final = next(r for r in rows if r[2] == "sdn (poisoned)" and r[4] == "final")
    assert sdn_final[5:] == [
        f"{100 * v:.1f}"
        for v in (final.clean_accuracy, final.triggered_accuracy, final.attack_success)
    ]


def test_relaunch_retrains_and_reanalyses_nothing(swept):
    """Launching the same sweep again finds every poisoned cell done, with all four splits."""
    spec, _ = swept
    paths = spec.storage_paths()
    store = PredictionStore(paths.predictions)
    before = {
        c.run_id: (
            layout.read_result(paths.tune, spec.name, c.run_id)["finished_at"],
            sorted((p.name, p.stat().st_mtime_ns) for p in store.files_for_run(c.run_id)),
        )
        for c in spec.cells()
    }
    outcome = launch(spec, progress=False)
    assert outcome.ok
    after = {
        c.run_id: (
            layout.read_result(paths.tune, spec.name, c.run_id)["finished_at"],
            sorted((p.name, p.stat().st_mtime_ns) for p in store.files_for_run(c.run_id)),
        )
        for c in spec.cells()
    }
    assert after == before
    assert set(Registry(paths.mlflow_tracking_uri).list_models()["version"].astype(int)) == {1}
