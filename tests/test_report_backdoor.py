"""The backdoor figures (workflows/report_backdoor.py) render from real catalogue rows and Parquet
files, and show the stored numbers."""

from __future__ import annotations

import numpy as np
import pytest
from storage_factories import POISON_TAG, make_outputs, make_poisoned_summary, record

from storage import Catalogue, PredictionStore, RunKey, RunRecord
from storage.catalogue.readonly import open_reader
from workflows import report_backdoor


@pytest.fixture
def home(tmp_path):
    store = PredictionStore(tmp_path / "predictions")
    with Catalogue(tmp_path / "catalogue.db") as cat:
        cat.upsert_sweep("sw", {}, "test")
        record(cat, "sw", "resnet56", "digits", "cnn", 0, status="done")  # clean: no figures
        for mode, exits in (("cnn", 1), ("ic_only", 4)):
            rid = f"sw.resnet56.digits.{mode}.s0.{POISON_TAG}"
            cat.upsert_run(RunRecord(rid, "sw", "resnet56", "digits", mode, 0, poison=POISON_TAG))
            cat.record_summary(rid, make_poisoned_summary(exits=exits, seed=exits))
            key = RunKey(rid, "resnet56", "digits", mode)
            for split in ("test", "test_triggered"):
                out = make_outputs(n=40, exits=exits, seed=len(split))
                if split == "test_triggered":
                    out.labels[out.labels == 5] = 3
                store.write(key, split, out)
    return tmp_path


def test_sweep_figures_render_and_show_the_stored_numbers(home, tmp_path):
    store = PredictionStore(home / "predictions")
    with open_reader(home / "catalogue.db") as reader:
        figures = report_backdoor.sweep_figures(reader, store, "sw")
        rows = reader.backdoor(sweep="sw", mode="ic_only").records()
    assert set(figures) == {
        "attack_success",
        "early_exit",
        f"detection_sw.resnet56.digits.cnn.s0.{POISON_TAG}",
        f"detection_sw.resnet56.digits.ic_only.s0.{POISON_TAG}",
    }
    for name, fig in figures.items():
        path = tmp_path / f"{name}.png"
        fig.savefig(path)
        assert path.stat().st_size > 5000
    # The ic_only panel (second: runs sorted by id) has one attack-success bar per exit, at the
    # stored value.
    panel = figures["attack_success"].axes[1]
    red = [b for b in panel.patches if b.get_facecolor()[0] > 0.7 and b.get_facecolor()[2] < 0.4]
    heights = [b.get_height() for b in sorted(red, key=lambda b: b.get_x())]
    want = [100 * r["attack_success"] for r in sorted(rows, key=lambda r: r["exit_index"])]
    assert heights == pytest.approx(want)
    report_backdoor.close_all(figures.values())


def test_detection_figure_titles_carry_the_auroc():
    from sdn.backdoor_metrics import detection_auroc

    clean = make_outputs(n=60, exits=3, seed=1)
    triggered = make_outputs(n=60, exits=3, seed=2)
    triggered.confusion = triggered.confusion + 1.0  # triggered inputs: more disagreement
    fig = report_backdoor.detection_figure(clean, triggered, target=5)
    conf, soft = detection_auroc(
        report_backdoor.non_target(clean, 5), report_backdoor.non_target(triggered, 5)
    )
    titles = [ax.get_title() for ax in fig.axes]
    assert f"{conf:.2f}" in titles[0] and f"{soft:.2f}" in titles[1]
    assert conf == pytest.approx(1.0)
    report_backdoor.close_all([fig])


def test_no_poisoned_run_means_no_figures(tmp_path):
    with Catalogue(tmp_path / "catalogue.db") as cat:
        record(cat, "sw", "resnet56", "digits", "cnn", 0, status="done")
    with open_reader(tmp_path / "catalogue.db") as reader:
        assert report_backdoor.sweep_figures(reader, PredictionStore(tmp_path), "sw") == {}
    with pytest.raises(Exception, match="no backdoor rows"):
        report_backdoor.attack_success_figure([])
    assert np.isnan(report_backdoor._nan(None))
