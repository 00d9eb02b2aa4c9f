"""Catalogue and Parquet queries at study scale.

1. SQLite: 10,000 runs, each with 7 exits (per-exit results on val and test) and a 100-threshold
   early-exit curve on val and on test, recorded in a real catalogue file. The query is the
   product's ``Catalogue.best_early_exit(max_accuracy_drop=0.01)``: the best operating point per
   (architecture, dataset, mode) within a 1-point accuracy drop. Target <= 50 ms. Baselines, in the
   same run: the same rule in pandas over the same rows (read with one SELECT, then vectorised), and
   ``best_early_exit`` at a target that is not precomputed (drop 0.013), which seeks every run's
   frontier at query time. All three answers are checked to agree.

   The rows are built with the product's own code (``summary_rows``, ``rank_keys`` and
   ``record_choices``), and bulk-inserted in large transactions through the catalogue's engine
   instead of one ``record_summary`` transaction per run, which would take minutes at this size.

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
DUCKDB_TARGET_S = 2.0
EXITS = 7
VAL_SAMPLES = 5_000
DROP = 0.01
TEMPLATES = 250  # distinct curve shapes (see build_rows)
ODD_DROP = 0.013  # not one of early_exit.STANDARD_DROPS: answered by per-run frontier seeks
ARCHS = ("vgg16", "resnet56", "wrn32_4", "mobilenet")
DATASETS = ("cifar10", "cifar100", "tinyimagenet", "digits")
MODES = ("cnn", "ic_only", "sdn")


@dataclass
class Settings:
    runs: int
    thresholds: int
    parquet_runs: int
    parquet_samples: int
    repeats: int


def settings(size: str) -> Settings:
    return pick(
        size,
        smoke=Settings(96, 20, 2, 1_000, 2),
        quick=Settings(10_000, 100, 143, 10_000, 5),
        full=Settings(10_000, 100, 143, 10_000, 15),
    )


# ------------------------------------------------------------------------------ the catalogue
def synthetic_curves(runs: int, thresholds: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Per run and split, a threshold curve shaped like a trained SDN's: cost rising from the
    first IC's to the full SDN's, accuracy rising to the final head's (quantised to 1/5000)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, thresholds)
    out: dict[str, np.ndarray] = {"thresholds": t}
    final = rng.uniform(0.6, 0.95, runs)
    c0 = rng.uniform(0.12, 0.2, runs)
    c_full = 1.0 + rng.uniform(0.0, 0.01, runs)
    power = rng.uniform(2.0, 6.0, runs)
    depth = rng.uniform(0.05, 0.4, runs)
    shape = rng.uniform(2.0, 5.0, runs)
    for split in ("val", "test"):
        shift = 0.0 if split == "val" else rng.normal(0.0, 0.01, runs)
        cost = c0[:, None] + (c_full - c0)[:, None] * t[None, :] ** power[:, None]
        acc = (final + shift)[:, None] - depth[:, None] * (1.0 - t[None, :]) ** shape[:, None]
        acc = acc + rng.normal(0.0, 0.003, acc.shape)
        acc[:, -1], cost[:, -1] = final + shift, c_full
        out[f"{split}_acc"] = np.clip(np.round(acc * VAL_SAMPLES) / VAL_SAMPLES, 0.0, 1.0)
        out[f"{split}_cost"] = cost
        per_exit = np.sort(rng.uniform(0.2, 1.0, (runs, EXITS - 1)), axis=1) * final[:, None]
        out[f"{split}_exit_acc"] = np.concatenate([per_exit, (final + shift)[:, None]], axis=1)
    # Samples leaving at each exit: early exits empty out as the threshold rises.
    weights = (1.0 - t)[:, None] ** np.arange(1, EXITS + 1)[None, :] + 1e-3
    weights[:, -1] += t
    counts = np.floor(weights / weights.sum(axis=1, keepdims=True) * VAL_SAMPLES).astype(int)
    counts[:, -1] += VAL_SAMPLES - counts.sum(axis=1)
    out["exit_counts"] = counts
    return out


def run_cells(runs: int) -> list[tuple[str, str, str, int]]:
    """(arch, dataset, mode, seed) of ``runs`` runs spread over the 48 groups."""
    groups = [(a, d, m) for a in ARCHS for d in DATASETS for m in MODES]
    return [(*groups[i % len(groups)], i // len(groups)) for i in range(runs)]


def template_rows(curves: dict[str, np.ndarray], k: int, thresholds: list[float]) -> Any:
    """The product's rows (``summary_rows``: validation, per-exit rows, Pareto frontier) for
    curve template ``k``."""
    from sdn.results import OperatingPoint, RunSummary
    from storage.catalogue.store import summary_rows

    counts = curves["exit_counts"].tolist()
    points = [
        OperatingPoint(q, split, a, c, counts[j])
        for split in ("val", "test")
        for j, (q, a, c) in enumerate(
            zip(
                thresholds,
                curves[f"{split}_acc"][k].tolist(),
                curves[f"{split}_cost"][k].tolist(),
                strict=True,
            )
        )
    ]
    exit_costs = [1e6 * (e + 1) for e in range(EXITS)]
    summary = RunSummary(
        num_exits=EXITS,
        exit_costs=exit_costs,
        cnn_cost=exit_costs[-1] / 1.005,
        per_exit_accuracy={s: curves[f"{s}_exit_acc"][k].tolist() for s in ("val", "test")},
        operating_points=points,
    )
    return summary_rows(summary)


def build_rows(s: Settings) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of ``s.runs`` runs, ready for bulk inserts.

    Runs share ``TEMPLATES`` curve shapes (built and validated by the product's ``summary_rows``),
    each shifted by its own constant in cost and in accuracy: a constant shift keeps a curve's Pareto
    frontier and margins, so the product's frontier stays exact, while every run still ranks
    differently within its group. Rank keys come from the product's ``rank_keys``.
    """
    from storage.catalogue.early_exit import rank_keys

    templates = min(TEMPLATES, s.runs)
    curves = synthetic_curves(templates, s.thresholds)
    thresholds = curves["thresholds"].tolist()
    rows_of = [template_rows(curves, k, thresholds) for k in range(templates)]
    counts_json = [json.dumps(c) for c in curves["exit_counts"].tolist()]
    rng = np.random.default_rng(7)
    shift_cost = rng.uniform(0.0, 0.01, s.runs).tolist()
    shift_acc = (np.round(rng.uniform(-0.02, 0.02, s.runs) * VAL_SAMPLES) / VAL_SAMPLES).tolist()
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    out: dict[str, list[tuple[Any, ...]]] = {"runs": [], "exits": [], "points": [], "frontier": []}
    point_id = 0
    for pk, (arch, dataset, mode, seed) in enumerate(run_cells(s.runs), start=1):
        rows = rows_of[(pk - 1) % templates]
        dc, da = shift_cost[pk - 1], shift_acc[pk - 1]
        run_id = f"bench.{arch}.{dataset}.{mode}.s{seed}"
        out["runs"].append(
            (pk, run_id, 1, arch, dataset, mode, seed, 1.0, 100, "done", "{}", EXITS,
             rows.cnn_flops, now)
        )  # fmt: skip
        out["exits"] += [
            (pk, r["split"], r["exit_index"], r["is_final"], r["accuracy"] + da,
             r["cumulative_flops"], r["relative_cost"])
            for r in rows.exits
        ]  # fmt: skip
        base = point_id + 1
        out["points"] += [
            (base + j, pk, r["split"], r["threshold"], r["accuracy"] + da, r["relative_cost"] + dc,
             counts_json[j % s.thresholds], r["objective"])
            for j, r in enumerate(rows.points)
        ]  # fmt: skip
        point_id += len(rows.points)
        for f in rows.frontier:
            cost, acc = f.val_relative_cost + dc, f.val_accuracy + da
            drop_key, budget_key = rank_keys(cost, acc, run_id)
            test_id = None if f.test_index is None else base + f.test_index
            out["frontier"].append(
                (pk, base + f.val_index, test_id, acc, cost, f.val_margin, drop_key, budget_key)
            )
    return out


_INSERTS = {
    "runs": "INSERT INTO runs (id, run_id, sweep_id, arch, dataset, train_mode, seed, width, "
    "epochs, status, config, num_exits, cnn_flops, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "exits": "INSERT INTO exit_results (run_pk, split, exit_index, is_final, accuracy, "
    "cumulative_flops, relative_cost) VALUES (?, ?, ?, ?, ?, ?, ?)",
    "points": "INSERT INTO early_exit_points (id, run_pk, split, threshold, accuracy, "
    "relative_cost, exits_per_output, objective) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "frontier": "INSERT INTO early_exit_frontier (run_pk, val_point_id, test_point_id, "
    "val_accuracy, val_relative_cost, val_margin, drop_key, budget_key) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
}


def build_catalogue(path: Path, s: Settings) -> dict[str, Any]:
    """Record ``s.runs`` runs with their curves in a new catalogue; returns build timings.

    The schema comes from ``Catalogue`` (its migrations). The bulk load then runs on a private
    engine with the journal off (a benchmark file needs no crash safety), and each run's choices for
    the standard targets are stored by the product's ``record_choices``; finally ``Catalogue`` opens
    the file again, which puts it back in WAL mode.
    """
    from sqlalchemy import create_engine, event

    from storage.catalogue import Catalogue
    from storage.catalogue.early_exit import record_choices

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
    timings["insert_s"] = time.perf_counter() - start
    timings["insert_cpu_s"] = time.process_time() - cpu
    start, cpu = time.perf_counter(), time.process_time()
    with engine.begin() as conn:
        for pk in range(1, s.runs + 1):
            record_choices(conn, pk)  # the product's per-run choice for every standard target
        conn.exec_driver_sql("ANALYZE")
    timings["choices_s"] = time.perf_counter() - start
    timings["choices_cpu_s"] = time.process_time() - cpu
    engine.dispose()
    Catalogue(path).close()  # back to the catalogue's own settings (WAL)
    timings.update(
        {f"{table}_rows": len(r) for table, r in rows.items()},
        file_mib=path.stat().st_size / 2**20,
    )
    return timings


def load_for_pandas(path: Path) -> tuple[Any, Any]:
    """What the pandas baseline reads: every curve point, and each run's final-head val accuracy."""
    import sqlite3

    import pandas as pd

    with sqlite3.connect(path) as con:
        points = pd.read_sql_query(
            "SELECT run_pk, split, threshold, accuracy, relative_cost "
            "FROM early_exit_points WHERE objective IS NULL",
            con,
        )
        finals = pd.read_sql_query(
            "SELECT r.id AS run_pk, r.run_id, r.arch, r.dataset, r.train_mode, e.accuracy AS final "
            "FROM runs AS r JOIN exit_results AS e ON e.run_pk = r.id "
            "AND e.split = 'val' AND e.exit_index = r.num_exits - 1",
            con,
        )
    return points, finals


def pandas_best(points: Any, finals: Any, drop: float) -> Any:
    """The rule of ``best_early_exit`` (drop target, reported on test), vectorised in pandas.

    Per run: the cheapest val curve point with accuracy >= final val accuracy - drop (ties: higher
    accuracy, then higher threshold); per group: lowest val cost, then higher val accuracy, then
    smaller run id.
    """
    eps = 1e-9
    val = points[points.split == "val"].merge(finals, on="run_pk")
    ok = val[val.accuracy >= val.final - drop - eps]
    ok = ok.sort_values(
        ["run_pk", "relative_cost", "accuracy", "threshold"], ascending=[True, True, False, False]
    )
    chosen = ok.drop_duplicates("run_pk")
    chosen = chosen.sort_values(
        ["arch", "dataset", "train_mode", "relative_cost", "accuracy", "run_id"],
        ascending=[True, True, True, True, False, True],
    )
    best = chosen.drop_duplicates(["arch", "dataset", "train_mode"])
    test = points[points.split == "test"][["run_pk", "threshold", "accuracy"]]
    best = best.merge(test, on=["run_pk", "threshold"], suffixes=("_val", ""))
    return best.sort_values(["arch", "dataset", "train_mode"], ignore_index=True)


def _same_answers(product: Any, reference: Any) -> bool:
    """Same winning run, threshold and test accuracy per group."""
    a = product.sort_values(["arch", "dataset", "train_mode"], ignore_index=True)
    b = reference.sort_values(["arch", "dataset", "train_mode"], ignore_index=True)
    return (
        len(a) == len(b)
        and list(a.run_id) == list(b.run_id)
        and np.allclose(a.threshold.to_numpy(float), b.threshold.to_numpy(float))
        and np.allclose(a.accuracy.to_numpy(float), b.accuracy.to_numpy(float))
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
            product = cat.best_early_exit(max_accuracy_drop=DROP)
            t_query = time_call(
                lambda: cat.best_early_exit(max_accuracy_drop=DROP), warmup=1, repeats=s.repeats
            )
            odd = cat.best_early_exit(max_accuracy_drop=ODD_DROP)
            t_odd = time_call(
                lambda: cat.best_early_exit(max_accuracy_drop=ODD_DROP),
                warmup=1,
                repeats=s.repeats,
            )
        start = time.perf_counter()
        points, finals = load_for_pandas(db)
        reference = pandas_best(points, finals, DROP)
        pandas_s = time.perf_counter() - start
        agree = _same_answers(product, reference)
        agree_odd = _same_answers(odd, pandas_best(points, finals, ODD_DROP))
        del points, finals
        report.details.update(
            query_s=t_query.to_dict(),
            odd_target_query_s=t_odd.to_dict(),
            pandas_s=pandas_s,
            groups=len(product),
            agrees_with_pandas=agree,
            odd_target_agrees_with_pandas=agree_odd,
        )
        report.add(
            Figure(
                name=f"best_early_exit(drop 0.01): {s.runs} runs x {EXITS} exits x "
                f"{s.thresholds} thresholds",
                value=t_query.median,
                unit="s",
                baseline=pandas_s,
                baseline_label="same rule in pandas over the same rows",
                ratio=pandas_s / t_query.median,
                target_op="<=" if check else None,
                target=QUERY_TARGET_S if check else None,
                target_on="value",
                note=(
                    f"ratio = x faster; CPU time {t_query.cpu_median * 1e3:.3g} ms; "
                    f"{len(product)} groups; same answers as pandas: {agree}"
                ),
            )
        )
        report.add(
            Figure(
                name=f"best_early_exit(drop {ODD_DROP}): target not precomputed",
                value=t_odd.median,
                unit="s",
                baseline=pandas_s,
                baseline_label="pandas, drop 0.01",
                ratio=pandas_s / t_odd.median,
                note=f"diagnostic: per-run frontier seeks; same answers as pandas: {agree_odd}",
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
