"""A home shaped like the quickstart's, for the report tests: the 12-run catalogue of
``bench/quickstart_catalogue.py`` and, for each run, test predictions in Parquet (what the
confusion histograms read), built in a few seconds without training anything."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.quickstart_catalogue import ARCHS, MODES, SWEEP, _outputs, build


def build_home(home: Path) -> Path:
    """Write ``catalogue.db`` and ``predictions/`` under ``home``; return ``home``."""
    from storage.predictions import PredictionStore, RunKey

    home.mkdir(parents=True, exist_ok=True)
    build(home / "catalogue.db")
    store = PredictionStore(home / "predictions")
    rng = np.random.default_rng(7)
    for arch, exits in ARCHS.items():
        for mode in MODES:
            run_id = f"{SWEEP}.{arch}.digits.{mode}.s0"
            outputs = _outputs(359, 1 if mode == "cnn" else exits, rng, 0.93)
            store.write(RunKey(run_id, arch, "digits", mode), "test", outputs)
    return home


if __name__ == "__main__":  # pragma: no cover - a home to look at: python tests/report_home.py DIR
    import sys

    print(build_home(Path(sys.argv[1])))
