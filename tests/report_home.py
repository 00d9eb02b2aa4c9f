"""A home shaped like the quickstart's, for the report tests: the 12-run catalogue of
``bench/quickstart_catalogue.py`` and, for each run, test predictions in Parquet (what the
confusion histograms and the per-sample sections read), built in a few seconds without training
anything. The predictions carry the real labels of the digits test split (right and wrong
answers shifted with them), so the sample figures find their images."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from bench.quickstart_catalogue import ARCHS, MODES, SWEEP, _outputs, build


def build_home(home: Path) -> Path:
    """Write ``catalogue.db`` and ``predictions/`` under ``home``; return ``home``."""
    from storage.predictions import PredictionStore, RunKey

    home.mkdir(parents=True, exist_ok=True)
    build(home / "catalogue.db")
    from sdn.data import load_dataset
    from sdn.results import Outputs

    labels = load_dataset("digits").test.labels.numpy()
    store = PredictionStore(home / "predictions")
    rng = np.random.default_rng(7)
    for arch, exits in ARCHS.items():
        for mode in MODES:
            run_id = f"{SWEEP}.{arch}.digits.{mode}.s0"
            made = _outputs(len(labels), 1 if mode == "cnn" else exits, rng, 0.93)
            shift = (labels - made.labels)[:, None]  # every answer moves with its label
            outputs = Outputs(
                labels=labels, preds=(made.preds + shift) % 10, confidences=made.confidences,
                confusion=made.confusion, entropies=made.entropies,
            )  # fmt: skip
            store.write(RunKey(run_id, arch, "digits", mode), "test", outputs)
    return home


class QuickstartReport(NamedTuple):
    """A built home and the HTML report ``make_report`` wrote for it."""

    home: Path
    folder: Path
    files: list[Path]


def build_report(root: Path) -> QuickstartReport:
    """``build_home`` under ``root / "home"`` and its report in ``root / "quick start"``: beside
    the home, whose ``reports/`` tests list, and with a space the browser's file URL must
    encode."""
    from storage.catalogue import Catalogue
    from workflows.report import make_report

    home = build_home(root / "home")
    folder = root / "quick start"
    with Catalogue(home / "catalogue.db", read_only=True) as cat:
        files = make_report(cat, SWEEP, folder, predictions_root=home / "predictions")
    return QuickstartReport(home, folder, files)


def copy_home(home: Path, to: Path) -> Path:
    """What ``build_home`` wrote (the catalogue and the predictions), copied to ``to`` for a test
    that changes it; anything other tests added to the shared home stays behind."""
    import shutil

    to.mkdir(parents=True)
    shutil.copy2(home / "catalogue.db", to / "catalogue.db")
    shutil.copytree(home / "predictions", to / "predictions")
    return to


if __name__ == "__main__":  # pragma: no cover - a home to look at: python tests/report_home.py DIR
    import sys

    print(build_home(Path(sys.argv[1])))


def expected_rows(catalogue: Path, sweep: str = SWEEP) -> dict[str, int]:
    """How many rows each of the report's sweep tables must have, counted in the catalogue with
    plain SQL (not through the report's code): runs, analysed runs, (run, target) pairs of
    non-CNN runs per policy, runs with calibration and with an overthinking summary."""
    import sqlite3

    con = sqlite3.connect(f"file:{catalogue}?mode=ro", uri=True)
    try:
        scope = "FROM runs r JOIN sweeps s ON s.id = r.sweep_id WHERE s.name = ?"

        def one(sql: str, *params: object) -> int:
            return int(con.execute(sql, (sweep, *params)).fetchone()[0])

        out = {
            "runs": one(f"SELECT count(*) {scope}"),
            "per-exit-accuracy": one(
                f"SELECT count(*) {scope} AND EXISTS "
                "(SELECT 1 FROM exit_results e WHERE e.run_pk = r.id AND e.split = 'test')"
            ),
            "calibration": one(
                f"SELECT count(*) {scope} AND EXISTS (SELECT 1 FROM exit_results e "
                "WHERE e.run_pk = r.id AND e.split = 'test' AND e.ece IS NOT NULL)"
            ),
            "overthinking": one(
                f"SELECT count(*) {scope} AND EXISTS "
                "(SELECT 1 FROM overthinking o WHERE o.run_pk = r.id)"
            ),
        }
        policies = [p for (p,) in con.execute("SELECT DISTINCT policy FROM early_exit_choices")]
        for policy in policies:
            out[f"early-exit-{policy}"] = one(
                "SELECT count(*) FROM (SELECT DISTINCT r.id, c.target FROM early_exit_choices c "
                "JOIN runs r ON r.id = c.run_pk JOIN sweeps s ON s.id = r.sweep_id "
                "WHERE s.name = ? AND c.policy = ? AND r.train_mode != 'cnn')",
                policy,
            )
        return out
    finally:
        con.close()
