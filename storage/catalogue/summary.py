"""A RunSummary as catalogue rows: validated conversion, and the replacement of a run's rows.

Separate from ``store`` so that a bulk loader (a rebuild from Parquet and MLflow) can write many
runs in one transaction with the same code ``Catalogue.record_summary`` uses for one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, delete, select, update

from sdn.results import RunSummary
from storage.catalogue.early_exit import (
    FrontierPoint,
    pareto_frontier,
    rank_keys,
    record_choices,
)
from storage.catalogue.models import (
    EarlyExitChoice,
    EarlyExitFrontier,
    EarlyExitPoint,
    ExitResult,
    Overthinking,
    Run,
)
from storage.errors import StorageError, choice_error

SPLITS = ("val", "test")
# Per-exit accuracy is also kept for the training set (a fixed subsample, no augmentation).
EXIT_SPLITS = ("train", "val", "test")


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass
class SummaryRows:
    """The rows a RunSummary becomes (without run keys), validated before any transaction."""

    num_exits: int
    cnn_flops: float
    exits: list[dict[str, Any]]
    points: list[dict[str, Any]]
    frontier: list[FrontierPoint]
    overthinking: dict[str, Any] | None


def write_summary(conn: Connection, run_pk: int, run_id: str, rows: SummaryRows) -> None:
    """Replace run ``run_pk``'s result rows inside the caller's transaction."""
    for model in (EarlyExitChoice, EarlyExitFrontier, EarlyExitPoint, ExitResult, Overthinking):
        conn.execute(delete(model).where(model.run_pk == run_pk))
    if rows.exits:
        conn.execute(ExitResult.__table__.insert(), [{**r, "run_pk": run_pk} for r in rows.exits])
    if rows.points:
        conn.execute(
            EarlyExitPoint.__table__.insert(), [{**r, "run_pk": run_pk} for r in rows.points]
        )
    if rows.frontier:
        # Inside this write transaction new rowids are handed out in insertion order.
        ids = conn.scalars(
            select(EarlyExitPoint.id)
            .where(EarlyExitPoint.run_pk == run_pk)
            .order_by(EarlyExitPoint.id)
        ).all()
        frontier = []
        for f in rows.frontier:
            drop_key, budget_key = rank_keys(f.val_relative_cost, f.val_accuracy, run_id)
            frontier.append(
                {
                    "run_pk": run_pk,
                    "val_point_id": ids[f.val_index],
                    "test_point_id": None if f.test_index is None else ids[f.test_index],
                    "val_accuracy": f.val_accuracy,
                    "val_relative_cost": f.val_relative_cost,
                    "val_margin": f.val_margin,
                    "drop_key": drop_key,
                    "budget_key": budget_key,
                }
            )
        conn.execute(EarlyExitFrontier.__table__.insert(), frontier)
        record_choices(conn, run_pk)
    if rows.overthinking is not None:
        conn.execute(Overthinking.__table__.insert(), {**rows.overthinking, "run_pk": run_pk})
    conn.execute(
        update(Run)
        .where(Run.id == run_pk)
        .values(num_exits=rows.num_exits, cnn_flops=rows.cnn_flops, updated_at=_now())
    )


def summary_rows(summary: RunSummary) -> SummaryRows:
    """Check ``summary`` and convert it to rows."""
    e = summary.num_exits
    if len(summary.exit_costs) != e:
        raise StorageError(f"summary has {len(summary.exit_costs)} exit costs for {e} exits")
    if summary.cnn_cost <= 0:
        raise StorageError(f"summary has a non-positive CNN cost {summary.cnn_cost}")
    exit_rows = []
    for split, accuracies in summary.per_exit_accuracy.items():
        if split not in EXIT_SPLITS:
            raise choice_error("split", split, EXIT_SPLITS)
        if len(accuracies) != e:
            raise StorageError(f"summary has {len(accuracies)} {split} accuracies for {e} exits")
        exit_rows += [
            {
                "split": split,
                "exit_index": k,
                "is_final": k == e - 1,
                "accuracy": float(acc),
                "cumulative_flops": float(summary.exit_costs[k]),
                "relative_cost": float(summary.exit_costs[k]) / float(summary.cnn_cost),
            }
            for k, acc in enumerate(accuracies)
        ]
    point_rows, seen = [], set()
    for p in summary.operating_points:
        if p.split not in SPLITS:
            raise choice_error("split", p.split, SPLITS)
        # The early-exit ranking compares these as fixed-width text: they must be in range.
        if not (0.0 <= p.accuracy <= 1.0) or not (0.0 <= p.relative_cost < 1e6):
            raise StorageError(
                f"operating point at threshold {p.threshold} has accuracy {p.accuracy} or "
                f"relative cost {p.relative_cost} out of range"
            )
        key = (p.split, float(p.threshold), p.objective or "")
        if key in seen:
            raise StorageError(f"summary repeats the operating point {key}")
        seen.add(key)
        point_rows.append(
            {
                "split": p.split,
                "threshold": float(p.threshold),
                "accuracy": float(p.accuracy),
                "relative_cost": float(p.relative_cost),
                "exits_per_output": [int(c) for c in p.exit_counts],
                "objective": p.objective,
            }
        )
    val = summary.per_exit_accuracy.get("val")
    final_val = float(val[-1]) if val else None
    over = None
    if summary.overthinking is not None:
        o = summary.overthinking
        over = {
            "first_correct": [int(c) for c in o.first_correct_counts],
            "oracle_relative_cost": float(o.oracle_relative_cost),
            "destructive_fraction": float(o.destructive_fraction),
            "destructive_per_ic": [float(x) for x in o.destructive_per_ic],
            "confusion_auroc": _float_or_none(o.confusion_auroc),
            "max_softmax_auroc": _float_or_none(o.max_softmax_auroc),
            "confusion_mean": float(o.confusion_mean),
            "confusion_std": float(o.confusion_std),
        }
    return SummaryRows(
        num_exits=e,
        cnn_flops=float(summary.cnn_cost),
        exits=exit_rows,
        points=point_rows,
        frontier=pareto_frontier(summary.operating_points, final_val),
        overthinking=over,
    )


def _float_or_none(value: float | None) -> float | None:
    return None if value is None else float(value)
