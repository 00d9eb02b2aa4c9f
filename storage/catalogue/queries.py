"""Read queries of the catalogue, each returning a pandas DataFrame.

Filters are keyword arguments from a fixed list; each maps to a column expression written here, and
every value is a bound parameter, so no user text ever becomes SQL. A list value means "any of".
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from sqlalchemy import Connection, Select, select

from sdn.early_exit import Target
from sdn.errors import SDNError
from storage.catalogue import early_exit
from storage.catalogue.models import (
    BackdoorExit,
    BackdoorSummaryRow,
    ExitResult,
    Overthinking,
    Run,
    Sweep,
)
from storage.catalogue.readonly import sql_conditions
from storage.errors import StorageError

RUN_FILTERS = {
    "arch": Run.arch,
    "dataset": Run.dataset,
    "mode": Run.train_mode,
    "seed": Run.seed,
    "status": Run.status,
    "sweep": Sweep.name,
    "run_id": Run.run_id,
    "poison": Run.poison,
}

# What identifies a run in every result table, in this order (``poison``: '' for clean data).
RUN_COLUMNS = [
    Run.run_id,
    Sweep.name.label("sweep"),
    Run.arch,
    Run.dataset,
    Run.train_mode,
    Run.seed,
    Run.poison,
]


def _conditions(filters: dict[str, Any], extra: dict[str, Any] | None = None) -> list[Any]:
    allowed = {**RUN_FILTERS, **(extra or {})}
    conditions = []
    for name, value in filters.items():
        if name not in allowed:
            raise StorageError(
                f"unknown filter {name!r}; choose among: {', '.join(sorted(allowed))}"
            )
        values = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
        if name == "sweep":
            # By id, so that queries need not join sweeps for every run just to filter.
            ids = select(Sweep.id).where(Sweep.name.in_(values)).scalar_subquery()
            conditions.append(Run.sweep_id.in_(ids))
        else:
            conditions.append(allowed[name].in_(values))
    return conditions


def frame(conn: Connection, statement: Select[Any]) -> pd.DataFrame:
    result = conn.execute(statement)
    return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def runs(conn: Connection, **filters: Any) -> pd.DataFrame:
    """One row per run: identity, grid values, status, times, MLflow/registry links, config."""
    statement = (
        select(
            *RUN_COLUMNS,
            Run.width,
            Run.epochs,
            Run.status,
            Run.started_at,
            Run.ended_at,
            Run.mlflow_run_id,
            Run.model_name,
            Run.model_version,
            Run.parquet_path,
            Run.code_version,
            Run.num_exits,
            Run.cnn_flops,
            Run.error,
            Run.config,
        )
        .join(Sweep, Run.sweep_id == Sweep.id)
        .where(*_conditions(filters))
        .order_by(Run.run_id)
    )
    return frame(conn, statement)


def exits(conn: Connection, **filters: Any) -> pd.DataFrame:
    """Per-exit accuracy and cost, one row per run x split x exit (``split`` is also a filter)."""
    statement = (
        select(
            *RUN_COLUMNS,
            ExitResult.split,
            ExitResult.exit_index,
            ExitResult.is_final,
            ExitResult.accuracy,
            ExitResult.cumulative_flops,
            ExitResult.relative_cost,
            ExitResult.ece,
        )
        .join(Sweep, Run.sweep_id == Sweep.id)
        .join(ExitResult, ExitResult.run_pk == Run.id)
        .where(*_conditions(filters, {"split": ExitResult.split}))
        .order_by(Run.run_id, ExitResult.split, ExitResult.exit_index)
    )
    return frame(conn, statement)


def overthinking(conn: Connection, **filters: Any) -> pd.DataFrame:
    """The overthinking summary of every matching run that has one."""
    statement = (
        select(
            *RUN_COLUMNS,
            Overthinking.first_correct,
            Overthinking.oracle_relative_cost,
            Overthinking.destructive_fraction,
            Overthinking.destructive_per_ic,
            Overthinking.confusion_auroc,
            Overthinking.max_softmax_auroc,
            Overthinking.confusion_mean,
            Overthinking.confusion_std,
        )
        .join(Sweep, Run.sweep_id == Sweep.id)
        .join(Overthinking, Overthinking.run_pk == Run.id)
        .where(*_conditions(filters))
        .order_by(Run.run_id)
    )
    return frame(conn, statement)


def backdoor(conn: Connection, **filters: Any) -> pd.DataFrame:
    """Per exit of every matching poisoned run (test split and its triggered twin): clean
    accuracy, triggered accuracy (true labels), attack success (triggered non-target inputs
    answered with the target) and the clean base rate of that answer."""
    statement = (
        select(
            *RUN_COLUMNS,
            BackdoorExit.exit_index,
            BackdoorExit.is_final,
            BackdoorExit.clean_accuracy,
            BackdoorExit.triggered_accuracy,
            BackdoorExit.attack_success,
            BackdoorExit.clean_target_rate,
        )
        .join(Sweep, Run.sweep_id == Sweep.id)
        .join(BackdoorExit, BackdoorExit.run_pk == Run.id)
        .where(*_conditions(filters))
        .order_by(Run.run_id, BackdoorExit.exit_index)
    )
    return frame(conn, statement)


def backdoor_summaries(conn: Connection, **filters: Any) -> pd.DataFrame:
    """One row per matching poisoned run: every column of ``backdoor_summaries``."""
    columns = [c for c in BackdoorSummaryRow.__table__.c if c.name not in ("id", "run_pk")]
    statement = (
        select(*RUN_COLUMNS, *columns)
        .join(Sweep, Run.sweep_id == Sweep.id)
        .join(BackdoorSummaryRow, BackdoorSummaryRow.run_pk == Run.id)
        .where(*_conditions(filters))
        .order_by(Run.run_id)
    )
    return frame(conn, statement)


def best_early_exit(
    conn: Connection,
    max_accuracy_drop: float | None = None,
    cost_budget: float | None = None,
    *,
    policy: str = "confidence",
    delta: float | None = None,
    split: str = "test",
    per_run: bool = False,
    **filters: Any,
) -> pd.DataFrame:
    """The early-exit operating point chosen on validation, reported on ``split``.

    Per run, ``sdn.early_exit`` chooses on the validation split: the cheapest point within
    ``max_accuracy_drop`` of the final head's validation accuracy, or the most accurate within
    ``cost_budget`` (relative to the CNN); with ``delta``, the certified choice instead (the
    target holds on new data with probability >= 1 - delta). Then per (arch, dataset, mode, poison) the
    run whose choice is best on validation is kept (met first; drop: lowest val cost, then
    highest val accuracy; budget: highest val accuracy, then lowest val cost; then run id),
    unless ``per_run``. Runs without an analysis are left out; runs whose target is unmet are
    kept, with ``status`` saying so. ``split="test"`` reports the same threshold on test (test
    figures never influence a choice).

    Columns: arch, dataset, train_mode, run_id, sweep, seed, runs_in_group, policy, target
    (``max_drop=0.01`` / ``budget=0.50``), method (empirical / certified), delta, status (met /
    unmet / none certified), threshold (None: early exit off, the final head answers),
    val_accuracy, val_relative_cost, val_drop, split, accuracy, relative_cost, exits_per_output,
    final_accuracy, accuracy_drop (final_accuracy - accuracy on ``split``), val_test_gap (test
    drop - validation drop).
    """
    target = _target(max_accuracy_drop, cost_budget)
    terms, params = sql_conditions(filters)
    return early_exit.best_early_exit(conn, target, policy, delta, split, per_run, terms, params)


def _target(max_accuracy_drop: float | None, cost_budget: float | None) -> Target:
    if (max_accuracy_drop is None) == (cost_budget is None):
        raise StorageError("give exactly one of max_accuracy_drop or cost_budget")
    try:
        return Target.of(max_accuracy_drop, cost_budget)
    except SDNError as exc:
        raise StorageError(str(exc)) from None


def calibration(conn: Connection, **filters: Any) -> pd.DataFrame:
    """Expected calibration error and the reliability bins of every exit (val and test)."""
    statement = (
        select(
            *RUN_COLUMNS,
            ExitResult.split,
            ExitResult.exit_index,
            ExitResult.is_final,
            ExitResult.accuracy,
            ExitResult.ece,
            ExitResult.reliability,
        )
        .join(Sweep, Run.sweep_id == Sweep.id)
        .join(ExitResult, ExitResult.run_pk == Run.id)
        .where(ExitResult.ece.is_not(None), *_conditions(filters, {"split": ExitResult.split}))
        .order_by(Run.run_id, ExitResult.split, ExitResult.exit_index)
    )
    return frame(conn, statement)
