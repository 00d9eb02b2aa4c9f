"""Catalogue and Parquet queries at study scale.

1. SQLite: 10,000 runs, each with 7 exits, recorded in a real catalogue file the way the analysis
   records them: confidence curves on val and test (128 thresholds), the validation frontier, and
   empirical and certified choices for the sweep's targets. The query is the product's
   ``Catalogue.best_early_exit``: the best operating point per (architecture, dataset, mode).
   Targets: <= 50 ms for a stored target (drop 0.01), <= 1 s for one the sweep did not store
   (drop 0.013: chosen now, from every run's stored frontier, by ``sdn.early_exit``). Baselines in
   the same run: reading the same choice rows with one plain SELECT into pandas (the I/O floor of
   the stored query), and the stored query itself for the new target. Then the stored choices
   are deleted and the stored target asked again: the answer chosen from the frontiers must equal
   the stored one (checked every run).

   Rows come from the product's own code: ``summarise_outputs`` on synthetic outputs (5,000 val
   and test samples) gives each template's summary, ``summary_rows`` its rows, and the rows are
   bulk-inserted in large transactions instead of one ``record_summary`` per run, which would take
   minutes. Runs share ``TEMPLATES`` summaries, each with its accuracies shifted by a per-run
   constant (which changes no choice, only how runs rank within their group).

2. DuckDB: per-exit accuracy per run over 10 million prediction rows (143 runs x 10,000 samples x 7
   exits) written by ``PredictionStore.write`` in the product's Parquet layout, queried with
   ``PredictionStore.per_exit_accuracy(engine="duckdb")``. Target <= 2 s. Baselines: the product's
   pyarrow engine, and pandas (``read_parquet`` of the same files, then ``groupby``).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import BenchReport, Figure, pick, run_main, time_call

NAME = "bench_catalogue"
QUERY_TARGET_S = 0.05
ADHOC_TARGET_S = 1.0
DUCKDB_TARGET_S = 2.0
EXITS = 7
SAMPLES = 5_000
DROP = 0.01
TEMPLATES = 40  # distinct run summaries (see build_rows)
ODD_DROP = 0.013  # not one of the sweep's targets: chosen at query time from the frontiers
ARCHS = ("vgg16", "resnet56", "wrn32_4", "mobilenet")
DATASETS = ("cifar10", "cifar100", "tinyimagenet", "digits")
MODES = ("cnn", "ic_only", "sdn")


@dataclass
class Settings:
    runs: int
    samples: int
    parquet_runs: int
    parquet_samples: int
    repeats: int


def settings(size: str) -> Settings:
    return pick(
        size,
        smoke=Settings(96, 500, 2, 1_000, 2),
        quick=Settings(10_000, SAMPLES, 143, 10_000, 5),
        full=Settings(10_000, SAMPLES, 143, 10_000, 15),
    )


# ------------------------------------------------------------------------------ the catalogue
def synthetic_outputs(n: int, seed: int) -> dict[str, Any]:
    """train/val/test outputs of a trained-looking SDN: later exits more often right, right
    answers more confident."""
    from sdn.results import Outputs

    rng = np.random.default_rng(seed)
    skill = np.sort(rng.uniform(0.4, 0.95, EXITS))
    out = {}
    for i, split in enumerate(("train", "val", "test")):
        m = min(n, 1_000) if split == "train" else n
        labels = rng.integers(0, 10, m)
        conf = np.clip(rng.beta(2, 1, (m, EXITS)) * 0.5 + skill * 0.5, 0, 1).astype(np.float32)
        ok = rng.random((m, EXITS)) < conf
        preds = np.where(ok, labels[:, None], (labels[:, None] + 1 + i) % 10)
        out[split] = Outputs(labels, preds, conf, rng.random(m, dtype=np.float32))
    return out


def run_cells(runs: int) -> list[tuple[str, str, str, int]]:
    """(arch, dataset, mode, seed) of ``runs`` runs spread over the 48 groups."""
    groups = [(a, d, m) for a in ARCHS for d in DATASETS for m in MODES]
    return [(*groups[i % len(groups)], i // len(groups)) for i in range(runs)]


def template_rows(k: int, samples: int) -> Any:
    """The product's rows (``summary_rows`` of a ``summarise_outputs`` summary) of template ``k``."""
    from sdn.analysis import summarise_outputs
    from sdn.early_exit import targets_from
    from storage.catalogue.summary import summary_rows

    costs = list(np.cumsum(np.linspace(1.0, 1.5, EXITS)) * 1e6)
    summary = summarise_outputs(
        synthetic_outputs(samples, k),
        costs,
        costs[-1] / 1.02,
        num_classes=10,
        targets=targets_from((0.0, 0.01, 0.02, 0.05), (0.25, 0.5, 0.75)),
        policies=("confidence",),
        delta=0.1,
    )
    return summary_rows(summary)


def _shifted_frontier(row: dict[str, Any], da: float) -> dict[str, Any]:
    """A frontier row with every accuracy moved by ``da`` (re-packed by the product's code)."""
    from storage.catalogue.early_exit import frontier_from_row, frontier_row

    f = frontier_from_row(
        row["policy"],
        row["num_points"],
        row["num_exits"],
        row["reference_val"],
        row["reference_test"],
        row["points"],
    )
    f.val_accuracy = f.val_accuracy + da
    f.reference_val += da
    if f.test_accuracy is not None and f.reference_test is not None:
        f.test_accuracy = f.test_accuracy + da
        f.reference_test += da
    return frontier_row(f)


_ACCURACIES = ("val_accuracy", "test_accuracy", "final_val_accuracy", "final_test_accuracy")


def build_rows(s: Settings) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of ``s.runs`` runs, ready for bulk inserts.

    Runs share ``TEMPLATES`` summaries, each shifted by its own constant in accuracy: the rule
    compares accuracies with the final head's (shifted alike) and with each other, so no run's
    choice changes, while every run still ranks differently within its group.
    """
    templates = min(TEMPLATES, s.runs)
    rows_of = [template_rows(k, s.samples) for k in range(templates)]
    rng = np.random.default_rng(7)
    shift = (np.round(rng.uniform(-0.02, 0.02, s.runs) * s.samples) / s.samples).tolist()
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    out: dict[str, list[tuple[Any, ...]]] = {k: [] for k in _INSERTS}
    for pk, (arch, dataset, mode, seed) in enumerate(run_cells(s.runs), start=1):
        rows = rows_of[(pk - 1) % templates]
        da = shift[pk - 1]
        out["runs"].append(
            (pk, f"bench.{arch}.{dataset}.{mode}.s{seed}", 1, arch, dataset, mode, seed, 1.0, 100,
             "done", "{}", EXITS, rows.cnn_flops, now)
        )  # fmt: skip
        out["exits"] += [
            (pk, r["split"], r["exit_index"], r["is_final"], r["accuracy"] + da,
             r["cumulative_flops"], r["relative_cost"], r["ece"], json.dumps(r["reliability"]))
            for r in rows.exits
        ]  # fmt: skip
        out["points"] += [
            (pk, r["policy"], r["split"], r["threshold"], r["accuracy"] + da, r["relative_cost"],
             json.dumps(r["exits_per_output"]), r["harmed"])
            for r in rows.points
        ]  # fmt: skip
        for r in rows.frontiers:
            f = _shifted_frontier(r, da)
            out["frontiers"].append(
                (pk, f["policy"], f["num_points"], f["num_exits"], f["reference_val"],
                 f["reference_test"], f["points"])
            )  # fmt: skip
        for r in rows.choices:
            c = {**r, **{k: None if r[k] is None else r[k] + da for k in _ACCURACIES}}
            out["choices"].append(
                (c["policy"], c["target"], c["method"], pk, c["delta"], c["met"], c["threshold"],
                 c["val_accuracy"], c["val_relative_cost"], json.dumps(c["val_exits"]),
                 c["test_accuracy"], c["test_relative_cost"], json.dumps(c["test_exits"]),
                 c["final_val_accuracy"], c["final_test_accuracy"], c["val_drop"], c["test_drop"],
                 c["val_test_gap"])
            )  # fmt: skip
    return out


_INSERTS = {
    "runs": "INSERT INTO runs (id, run_id, sweep_id, arch, dataset, train_mode, seed, width, "
    "epochs, status, config, num_exits, cnn_flops, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "exits": "INSERT INTO exit_results (run_pk, split, exit_index, is_final, accuracy, "
    "cumulative_flops, relative_cost, ece, reliability) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "points": "INSERT INTO early_exit_points (run_pk, policy, split, threshold, accuracy, "
    "relative_cost, exits_per_output, harmed) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "frontiers": "INSERT INTO early_exit_frontiers (run_pk, policy, num_points, num_exits, "
    "reference_val, reference_test, points) VALUES (?, ?, ?, ?, ?, ?, ?)",
    "choices": "INSERT INTO early_exit_choices (policy, target, method, run_pk, delta, met, "
    "threshold, val_accuracy, val_relative_cost, val_exits, test_accuracy, test_relative_cost, "
    "test_exits, final_val_accuracy, final_test_accuracy, val_drop, test_drop, val_test_gap) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
}


def build_catalogue(path: Path, s: Settings) -> dict[str, Any]:
    """Record ``s.runs`` runs in a new catalogue; returns build timings.

    The schema comes from ``Catalogue`` (its migrations). The bulk load then runs on a private
    engine with the journal off (a benchmark file needs no crash safety); finally ``Catalogue``
    opens the file again, which puts it back in WAL mode.
    """
    from sqlalchemy import create_engine, event

    from storage.catalogue import Catalogue

    timings: dict[str, Any] = {}
    start, cpu = time.perf_counter(), time.process_time()
    rows = build_rows(s)
    timings["rows_s"] = time.perf_counter() - start
    timings["rows_cpu_s"] = time.process_time() - cpu
    with Catalogue(path) as cat:
        cat.upsert_sweep("bench", {"bench": True})

    engine = create_engine(f"sqlite:///{path}")

    @event.listens_for(engine, "connect")
    def _fast(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA journal_mode = OFF")
        dbapi_connection.execute("PRAGMA synchronous = OFF")
        dbapi_connection.execute("PRAGMA cache_size = -262144")

    start, cpu = time.perf_counter(), time.process_time()
    with engine.begin() as conn:
        for table, sql in _INSERTS.items():
            conn.exec_driver_sql(sql, rows[table])
        conn.exec_driver_sql("ANALYZE")
    timings["insert_s"] = time.perf_counter() - start
    timings["insert_cpu_s"] = time.process_time() - cpu
    engine.dispose()
    Catalogue(path).close()  # back to the catalogue's own settings (WAL)
    timings.update(
        {f"{table}_rows": len(r) for table, r in rows.items()},
        file_mib=path.stat().st_size / 2**20,
    )
    return timings


def plain_select(path: Path) -> Any:
    """The I/O floor of the stored query: the same choice rows, one SELECT, into pandas."""
    import sqlite3

    import pandas as pd

    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
        return pd.read_sql_query(
            "SELECT r.run_id, r.arch, r.dataset, r.train_mode, c.* FROM early_exit_choices AS c "
            "JOIN runs AS r ON r.id = c.run_pk WHERE c.policy = 'confidence' "
            "AND c.target = 'max_drop=0.01' AND c.method = 'empirical'",
            con,
        )


# ---------------------------------------------------------------------------------- the Parquet
def write_predictions(root: Path, s: Settings) -> dict[str, Any]:
    """``parquet_runs`` runs x ``parquet_samples`` samples x 7 exits through the product's writer."""
    from sdn.results import Outputs
    from storage.predictions import PredictionStore, RunKey

    store = PredictionStore(root)
    rng = np.random.default_rng(1)
    start = time.perf_counter()
    n = s.parquet_samples
    for i, (arch, dataset, mode, seed) in enumerate(run_cells(s.parquet_runs)):
        labels = rng.integers(0, 10, n)
        hit = rng.random((n, EXITS)) < np.linspace(0.4, 0.9, EXITS)
        preds = np.where(hit, labels[:, None], rng.integers(0, 10, (n, EXITS)))
        outputs = Outputs(
            labels=labels,
            preds=preds,
            confidences=rng.random((n, EXITS), dtype=np.float32),
            confusion=rng.random(n, dtype=np.float32),
        )
        key = RunKey(f"bench{i}.{arch}.{dataset}.{mode}.s{seed}", arch, dataset, mode)
        store.write(key, "test", outputs)
    files = list((root / "outputs").rglob("*.parquet"))
    return {
        "write_s": time.perf_counter() - start,
        "rows": s.parquet_runs * n * EXITS,
        "files": len(files),
        "mib": sum(f.stat().st_size for f in files) / 2**20,
    }


def pandas_accuracy(root: Path) -> Any:
    """Baseline: every file read with pandas, then one groupby."""
    import pandas as pd

    frame = pd.read_parquet(root / "outputs", columns=["run_id", "split", "exit_index", "correct"])
    return frame.groupby(["run_id", "split", "exit_index"], observed=True)["correct"].mean()


# -------------------------------------------------------------------------------------- driver
def run(size: str, device: Any) -> BenchReport:
    from storage.catalogue import Catalogue
    from storage.predictions import PredictionStore

    s = settings(size)
    report = BenchReport(NAME, size, "cpu")
    report.details["settings"] = s.__dict__
    check = size != "smoke"
    with tempfile.TemporaryDirectory(prefix="sdn-bench-catalogue-") as tmp:
        db = Path(tmp) / "catalogue.db"
        report.details["build"] = build_catalogue(db, s)
        with Catalogue(db) as cat:
            stored = cat.best_early_exit(max_accuracy_drop=DROP)
            t_query = time_call(
                lambda: cat.best_early_exit(max_accuracy_drop=DROP), warmup=1, repeats=s.repeats
            )
            t_floor = time_call(lambda: plain_select(db), warmup=1, repeats=s.repeats)
            t_odd = time_call(
                lambda: cat.best_early_exit(max_accuracy_drop=ODD_DROP),
                warmup=1,
                repeats=s.repeats,
            )
            # The same target answered from the frontiers must equal the stored answer.
            cat._write(
                "forget stored 0.01 choices",
                lambda c: c.exec_driver_sql(
                    "DELETE FROM early_exit_choices WHERE target = 'max_drop=0.01'"
                ),
            )
            computed = cat.best_early_exit(max_accuracy_drop=DROP)
        agree = bool(stored.equals(computed))
        report.details.update(
            query_s=t_query.to_dict(),
            plain_select_s=t_floor.to_dict(),
            odd_target_query_s=t_odd.to_dict(),
            groups=len(stored),
            stored_equals_computed=agree,
        )
        report.add(
            Figure(
                name=f"best_early_exit(drop 0.01, stored): {s.runs} runs x {EXITS} exits",
                value=t_query.median,
                unit="s",
                baseline=t_floor.median,
                baseline_label="the same choice rows, one plain SELECT into pandas",
                ratio=t_query.median / t_floor.median,
                target_op="<=" if check else None,
                target=QUERY_TARGET_S if check else None,
                target_on="value",
                note=(
                    f"ratio = x the I/O floor; CPU time {t_query.cpu_median * 1e3:.3g} ms; "
                    f"{len(stored)} groups; stored == chosen from the frontiers: {agree}"
                ),
            )
        )
        report.add(
            Figure(
                name=f"best_early_exit(drop {ODD_DROP}): a target the sweep did not store",
                value=t_odd.median,
                unit="s",
                baseline=t_query.median,
                baseline_label="the stored target (drop 0.01)",
                ratio=t_odd.median / t_query.median,
                target_op="<=" if check else None,
                target=ADHOC_TARGET_S if check else None,
                target_on="value",
                note="chosen now from every run's stored frontier by sdn.early_exit",
            )
        )

        root = Path(tmp) / "predictions"
        report.details["parquet"] = write_predictions(root, s)
        store = PredictionStore(root)
        rows = report.details["parquet"]["rows"]
        t_duck = time_call(
            lambda: store.per_exit_accuracy(engine="duckdb"), warmup=1, repeats=s.repeats
        )
        t_arrow = time_call(lambda: store.per_exit_accuracy(engine="pyarrow"), warmup=0, repeats=1)
        start = time.perf_counter()
        ref = pandas_accuracy(root)
        pandas_parquet_s = time.perf_counter() - start
        duck = store.per_exit_accuracy(engine="duckdb")
        agree_duck = len(duck) == len(ref) and np.allclose(
            np.sort(duck.accuracy.to_numpy()), np.sort(ref.to_numpy(float))
        )
        report.details.update(
            duckdb_s=t_duck.to_dict(),
            pyarrow_s=t_arrow.to_dict(),
            pandas_parquet_s=pandas_parquet_s,
            duckdb_agrees_with_pandas=bool(agree_duck),
        )
        report.add(
            Figure(
                name=f"per-exit accuracy per run, DuckDB, {rows / 1e6:.3g} M Parquet rows",
                value=t_duck.median,
                unit="s",
                baseline=pandas_parquet_s,
                baseline_label="pandas read_parquet + groupby",
                ratio=pandas_parquet_s / t_duck.median,
                target_op="<=" if check else None,
                target=DUCKDB_TARGET_S if check else None,
                target_on="value",
                note=(
                    f"ratio = x faster; product pyarrow engine {t_arrow.median:.3g} s; "
                    f"same answers: {bool(agree_duck)}"
                ),
            )
        )
    return report


def main(argv: Sequence[str] | None = None) -> BenchReport:
    return run_main(NAME, __doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    main()
