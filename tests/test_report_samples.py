"""The report's per-sample sections (confidence vs confusion, simple and complex samples,
destructive samples, Grad-CAM) on the quickstart-shaped home of ``tests/report_home.py``: real
catalogue, real Parquet predictions carrying the digits test labels, the digits images loaded
offline. A trained sweep with registered models draws the Grad-CAM maps in
``tests/test_workflow.py`` (``test_cli_report_writes_pngs``)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from report_home import QuickstartReport, copy_home
from test_report import Page

from storage.catalogue import Catalogue

SWEEP = "quickstart"
KEYS = ["confidence", "simple-complex", "destructive-samples", "gradcam"]
FILES = {
    "confidence": "confidence_confusion.png",
    "simple-complex": "simple_complex.png",
    "destructive-samples": "destructive_samples.png",
}


@pytest.fixture(scope="module")
def home(quickstart_report: QuickstartReport) -> Path:
    return quickstart_report.home


def _render(home: Path, folder: Path, keys: list[str] = KEYS, tracking_uri: str | None = None):
    from workflows.report import make_report

    with Catalogue(home / "catalogue.db", read_only=True) as cat:
        files = make_report(cat, SWEEP, folder, predictions_root=home / "predictions",
                            tracking_uri=tracking_uri, sections=keys)  # fmt: skip
    page = Page()
    text = files[0].read_text(encoding="utf-8")
    page.feed(text)
    return files, page, text


def _runs_with_ics(home: Path) -> list[str]:
    con = sqlite3.connect(home / "catalogue.db")
    try:
        return [r for (r,) in con.execute(
            "SELECT run_id FROM runs WHERE train_mode != 'cnn' ORDER BY run_id")]  # fmt: skip
    finally:
        con.close()


def test_every_run_with_ics_gets_its_figures_and_cnns_none(home, tmp_path):
    started = time.perf_counter()
    files, page, text = _render(home, tmp_path / "r")
    took = time.perf_counter() - started
    runs = _runs_with_ics(home)
    assert len(runs) == 8  # the quickstart: 4 architectures x {ic_only, sdn}
    for key, name in FILES.items():
        shown = sorted(p.parent.name for p in files if p.name == name)
        assert shown == sorted(r.split(".", 1)[1] for r in runs), key
        assert len(page.images[key]) == 8, key
    assert not [p for p in files if ".cnn." in str(p)]
    # Without a tracking URI the report does not touch MLflow: Grad-CAM is one note, no image.
    assert "gradcam" not in page.images
    assert "Not shown for every run: registered models are read from MLflow" in text
    print(f"4 sample sections, 8 runs: {took:.1f} s")


def test_the_figures_show_what_the_predictions_say(home, tmp_path):
    """The samples come from sdn.qualitative on the stored outputs, and their images are the
    test images at the stored sample positions (whose labels the stored ones match)."""
    from sdn.qualitative import choose_examples
    from workflows.report import samples
    from workflows.report.build import load_context

    with Catalogue(home / "catalogue.db", read_only=True) as cat:
        ctx = load_context(cat, SWEEP, tmp_path, home / "predictions")
        for run in samples.runs_with_ics(ctx):
            outputs = ctx.outputs(run.run_id)
            chosen = samples.examples(ctx, run)
            want = choose_examples(outputs, samples.N_GRID, samples.N_DESTRUCTIVE)
            for kind in ("simple", "complex", "destructive"):
                assert getattr(chosen, kind).tolist() == getattr(want, kind).tolist()
            images = samples.images_for(ctx, run)
            assert not isinstance(images, samples.Missing), images
            rows = chosen.destructive
            assert np.array_equal(images.labels[outputs.sample_index[rows]], outputs.labels[rows])
            assert (outputs.correct[rows, :-1].any(axis=1) & ~outputs.correct[rows, -1]).all()
        # Loaded once per report, whatever the number of runs and sections.
        assert [k for k in ctx.shared["samples"] if k[0] == "images"] == [
            ("images", "digits", None)
        ]


def test_predictions_of_other_images_are_never_drawn_on_these(home, tmp_path):
    """A run whose stored labels are not the data set's (the data changed since the analysis)
    gets a note in each image section, never pictures of other samples."""
    from sdn.results import Outputs
    from storage.predictions import PredictionStore, RunKey

    other = copy_home(home, tmp_path / "home")
    store = PredictionStore(other / "predictions")
    run_id = f"{SWEEP}.resnet56.digits.sdn.s0"
    out = store.read_outputs(run_id, "test")
    moved = Outputs(labels=(out.labels + 1) % 10, preds=(out.preds + 1) % 10,
                    confidences=out.confidences, confusion=out.confusion,
                    entropies=out.entropies)  # fmt: skip
    store.write(RunKey(run_id, "resnet56", "digits", "sdn"), "test", moved)
    files, page, text = _render(other, tmp_path / "r")
    for key in ("simple-complex", "destructive-samples"):
        assert len(page.images[key]) == 7, key
    assert not [p for p in files if "resnet56.digits.sdn" in str(p) and "simple" in p.name]
    assert text.count(f"Not shown for resnet56 sdn: {len(out.labels)} of {len(out.labels)} "
                      "stored labels differ from the test labels of digits") == 3  # fmt: skip
    assert len(page.images["confidence"]) == 8  # the histograms need no images


def test_a_data_set_that_is_not_on_disk_is_one_note(home, tmp_path):
    """Runs on CIFAR-10 with an empty data root: the image sections say so once, the report is
    still written (no download is ever tried)."""
    other = copy_home(home, tmp_path / "home")
    empty = tmp_path / "no data"
    empty.mkdir()
    con = sqlite3.connect(other / "catalogue.db")
    with con:
        con.execute("UPDATE runs SET dataset = 'cifar10', config = json_set(config, "
                    "'$.data_root', ?)", (str(empty),))  # fmt: skip
    con.close()
    _files, page, text = _render(other, tmp_path / "r")
    for key in ("simple-complex", "destructive-samples", "gradcam"):
        assert key not in page.images
    assert text.count("Not shown for every run: the test images of cifar10 cannot be loaded "
                      "offline (CIFAR-10 not found at") == 3  # fmt: skip
    assert str(empty) in text and not list(empty.iterdir())
    assert len(page.images["confidence"]) == 8


def test_a_missing_model_is_a_note_and_an_unreachable_server_is_exit_3(home, tmp_path):
    from sdn.errors import ServiceUnreachable
    from storage.mlflow_setup import ensure_tracking_store
    from workflows.exit_codes import ExitCode, classify

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ensure_tracking_store(uri)  # a real, empty store: none of the runs' models is in it
    _, page, text = _render(home, tmp_path / "r", ["gradcam"], tracking_uri=uri)
    assert "gradcam" not in page.images
    for run_id in _runs_with_ics(home):
        arch, _, mode = run_id.split(".")[1:4]
        assert f"registered model sdn-{arch}-digits-{mode}/1 cannot be loaded" in text

    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ServiceUnreachable) as caught:
        _render(home, tmp_path / "r2", ["gradcam"], tracking_uri=f"http://127.0.0.1:{port}")
    assert classify(caught.value)[0] == ExitCode.UNREACHABLE


def test_data_root_comes_from_the_run_then_the_sweep_spec(home, tmp_path):
    from workflows.report import samples
    from workflows.report.build import load_context

    other = copy_home(home, tmp_path / "home")
    con = sqlite3.connect(other / "catalogue.db")
    with con:
        con.execute("UPDATE sweeps SET spec = ?", (json.dumps({"data": {"root": "/from/spec"}}),))
        con.execute("UPDATE runs SET config = json_set(config, '$.data_root', '/from/run') "
                    "WHERE train_mode = 'sdn'")  # fmt: skip
    con.close()
    with Catalogue(other / "catalogue.db", read_only=True) as cat:
        ctx = load_context(cat, SWEEP, tmp_path / "r", other / "predictions")
        roots: dict[str, Any] = {
            r.train_mode: samples.data_root(ctx, r) for r in ctx.analysed.itertuples()
        }
    assert roots == {"cnn": "/from/spec", "ic_only": "/from/spec", "sdn": "/from/run"}
