"""A RunSummary as catalogue rows: validated conversion, and the replacement of a run's rows.

Separate from ``store`` so that a bulk loader (a rebuild from Parquet and MLflow) can write many
runs in one transaction with the same code ``Catalogue.record_summary`` uses for one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, delete, update

from sdn.early_exit import METHODS, POLICIES
from sdn.results import RunSummary
from storage.catalogue.early_exit import choice_row, frontier_row
from storage.catalogue.models import (
    BackdoorExit,
    BackdoorSummaryRow,
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
    frontiers: list[dict[str, Any]]
    choices: list[dict[str, Any]]
    overthinking: dict[str, Any] | None
    backdoor_exits: list[dict[str, Any]] = field(default_factory=list)
    backdoor_summary: dict[str, Any] | None = None


_RESULT_TABLES = (
    EarlyExitChoice,
    EarlyExitFrontier,
    EarlyExitPoint,
    ExitResult,
    Overthinking,
    BackdoorExit,
    BackdoorSummaryRow,
)


def write_summary(conn: Connection, run_pk: int, run_id: str, rows: SummaryRows) -> None:
    """Replace run ``run_pk``'s result rows inside the caller's transaction."""
    for model in _RESULT_TABLES:
        conn.execute(delete(model).where(model.run_pk == run_pk))
    if rows.exits:
        conn.execute(ExitResult.__table__.insert(), [{**r, "run_pk": run_pk} for r in rows.exits])
    for model, values in (
        (EarlyExitPoint, rows.points),
        (EarlyExitFrontier, rows.frontiers),
        (EarlyExitChoice, rows.choices),
    ):
        if values:
            conn.execute(model.__table__.insert(), [{**r, "run_pk": run_pk} for r in values])
    if rows.overthinking is not None:
        conn.execute(Overthinking.__table__.insert(), {**rows.overthinking, "run_pk": run_pk})
    if rows.backdoor_exits:
        conn.execute(
            BackdoorExit.__table__.insert(), [{**r, "run_pk": run_pk} for r in rows.backdoor_exits]
        )
    if rows.backdoor_summary is not None:
        conn.execute(
            BackdoorSummaryRow.__table__.insert(), {**rows.backdoor_summary, "run_pk": run_pk}
        )
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
    calibration = {(c.split, c.exit_index): c for c in summary.calibration}
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
                **_calibration_columns(calibration.get((split, k))),
            }
            for k, acc in enumerate(accuracies)
        ]
    point_rows, seen = [], set()
    for p in summary.operating_points:
        if p.split not in SPLITS:
            raise choice_error("split", p.split, SPLITS)
        if p.policy not in POLICIES:
            raise choice_error("policy", p.policy, POLICIES)
        if p.threshold is None or not math.isfinite(p.threshold):
            raise StorageError(f"a curve point of policy {p.policy!r} has no finite threshold")
        if not (0.0 <= p.accuracy <= 1.0) or not (0.0 <= p.relative_cost < 1e6):
            raise StorageError(
                f"operating point at threshold {p.threshold} has accuracy {p.accuracy} or "
                f"relative cost {p.relative_cost} out of range"
            )
        key = (p.policy, p.split, float(p.threshold))
        if key in seen:
            raise StorageError(f"summary repeats the operating point {key}")
        seen.add(key)
        point_rows.append(
            {
                "policy": p.policy,
                "split": p.split,
                "threshold": float(p.threshold),
                "accuracy": float(p.accuracy),
                "relative_cost": float(p.relative_cost),
                "exits_per_output": [int(c) for c in p.exit_counts],
                "harmed": p.harmed,
            }
        )
    frontier_rows = []
    for f in summary.frontiers:
        if f.policy not in POLICIES:
            raise choice_error("policy", f.policy, POLICIES)
        if f.val_exit_counts.shape[1:] != (e,):
            raise StorageError(f"the {f.policy} frontier has exit counts for another exit count")
        frontier_rows.append(frontier_row(f))
    if len({r["policy"] for r in frontier_rows}) != len(frontier_rows):
        raise StorageError("summary has two frontiers for one policy")
    choice_rows, chosen = [], set()
    for c in summary.choices:
        if c.method not in METHODS:
            raise choice_error("method", c.method, METHODS)
        key = (c.policy, c.target, c.method)
        if key in chosen:
            raise StorageError(f"summary repeats the choice {key}")
        chosen.add(key)
        choice_rows.append(choice_row(c))
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
    backdoor_exits, backdoor = _backdoor_rows(summary)
    return SummaryRows(
        num_exits=e,
        cnn_flops=float(summary.cnn_cost),
        exits=exit_rows,
        points=point_rows,
        frontiers=frontier_rows,
        choices=choice_rows,
        overthinking=over,
        backdoor_exits=backdoor_exits,
        backdoor_summary=backdoor,
    )


def _fraction(value: Any, what: str) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise StorageError(f"backdoor summary has {what} {value!r} outside [0, 1]")
    return number


def _backdoor_rows(summary: RunSummary) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """``backdoor_exits`` and ``backdoor_summaries`` values of a poisoned run's summary."""
    b = summary.backdoor
    if b is None:
        return [], None
    e = summary.num_exits
    if b.num_exits != e:
        raise StorageError(f"backdoor summary has {b.num_exits} exits for a run of {e}")
    per_exit = (b.clean_accuracy, b.triggered_accuracy, b.attack_success, b.clean_target_rate)
    if any(len(values) != e for values in per_exit):
        raise StorageError(f"backdoor summary's per-exit lists do not all have {e} entries")
    exit_rows = [
        {
            "exit_index": k,
            "is_final": k == e - 1,
            "clean_accuracy": _fraction(b.clean_accuracy[k], "a clean accuracy"),
            "triggered_accuracy": _fraction(b.triggered_accuracy[k], "a triggered accuracy"),
            "attack_success": _fraction(b.attack_success[k], "an attack success"),
            "clean_target_rate": _fraction(b.clean_target_rate[k], "a clean target rate"),
        }
        for k in range(e)
    ]
    early = b.early_exit
    row = {
        "target": int(b.target),
        "num_clean": int(b.num_clean),
        "num_triggered": int(b.num_triggered),
        "num_target_excluded": int(b.num_target_excluded),
        "destructive_fraction": _fraction(b.destructive_fraction, "a destructive fraction"),
        "destructive_per_ic": [float(x) for x in b.destructive_per_ic],
        "destroyed_share": _fraction(b.destroyed_share, "a destroyed share"),
        "confusion_auroc": _float_or_none(b.confusion_auroc),
        "max_softmax_auroc": _float_or_none(b.max_softmax_auroc),
        "early_exit_target": None if early is None else early.chosen_for,
        "early_exit_threshold": None if early is None else _float_or_none(early.threshold),
        "early_exit_accuracy": None if early is None else float(early.accuracy),
        "early_exit_attack_success": None if early is None else float(early.attack_success),
        "early_exit_relative_cost": None if early is None else _float_or_none(early.relative_cost),
        "early_exit_exits": None if early is None else [int(c) for c in early.exit_counts],
        "early_exit_clean_accuracy": None if early is None else float(early.clean_accuracy),
        "early_exit_clean_relative_cost": None
        if early is None
        else _float_or_none(early.clean_relative_cost),
    }
    return exit_rows, row


def _calibration_columns(calibration: Any) -> dict[str, Any]:
    if calibration is None:
        return {"ece": None, "reliability": None}
    return {
        "ece": None if math.isnan(calibration.ece) else float(calibration.ece),
        "reliability": {
            "counts": list(calibration.bin_counts),
            "confidence": list(calibration.bin_confidence),
            "accuracy": list(calibration.bin_accuracy),
        },
    }


def _float_or_none(value: float | None) -> float | None:
    return None if value is None else float(value)
