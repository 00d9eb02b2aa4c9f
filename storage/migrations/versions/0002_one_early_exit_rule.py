"""One early-exit rule: exit policies, stored frontiers and choices, calibration.

The operating-point rule used to exist twice, once in Python and once as SQL over a frontier
table with byte-string ranking keys (``early_exit_frontier``, ``early_exit_choices`` with
``rank_key``). It now lives in ``sdn.early_exit`` alone; the catalogue stores its inputs and
outputs. This revision

* drops ``early_exit_frontier`` and the old ``early_exit_choices`` (they existed only for the
  SQL copy of the rule);
* moves the chosen points out of ``early_exit_points`` (rows with an ``objective``) into the new
  ``early_exit_choices`` (one row per run, policy, target and method, val and test together),
  and gives ``early_exit_points`` a ``policy`` and a ``harmed`` count;
* adds ``early_exit_frontiers`` (a run's validation frontier per policy, what a query for a new
  target is answered from) and per-exit calibration (``exit_results.ece`` / ``reliability``).

Existing rows are upgraded in place: old chosen points become empirical ``confidence`` choices
(targets renamed to the one spelling, e.g. ``max_drop=0.01``; they were chosen by the old rule,
among every distinct validation confidence, and are kept as they were), and each run's frontier
is built by ``sdn.early_exit`` from its stored validation curve plus "off", exactly as the
analysis now builds one, so new targets are answered by today's rule. Old curves carry no harmed
counts, so certified choices of old runs need the analysis run again (``entropy`` and
``patience`` too: their scores were not kept).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import numpy as np
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JSON = sa.JSON(none_as_null=True)


def upgrade() -> None:
    conn = op.get_bind()
    legacy = _read_legacy(conn)

    op.drop_table("early_exit_choices")
    op.drop_table("early_exit_frontier")
    op.execute("DELETE FROM early_exit_points WHERE objective IS NOT NULL")
    op.drop_index("uq_early_exit_points_point", table_name="early_exit_points")
    with op.batch_alter_table("early_exit_points") as batch:
        batch.drop_column("objective")
        batch.add_column(
            sa.Column("policy", sa.String(), nullable=False, server_default="confidence")
        )
        batch.add_column(sa.Column("harmed", sa.Integer(), nullable=True))
    with op.batch_alter_table("early_exit_points") as batch:
        batch.alter_column("policy", server_default=None, existing_type=sa.String())
    op.create_index(
        "uq_early_exit_points_point",
        "early_exit_points",
        ["run_pk", "policy", "split", "threshold"],
        unique=True,
    )
    with op.batch_alter_table("exit_results") as batch:
        batch.add_column(sa.Column("ece", sa.Float(), nullable=True))
        batch.add_column(sa.Column("reliability", JSON, nullable=True))

    op.create_table(
        "early_exit_frontiers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("policy", sa.String(), nullable=False),
        sa.Column("num_points", sa.Integer(), nullable=False),
        sa.Column("num_exits", sa.Integer(), nullable=False),
        sa.Column("reference_val", sa.Float(), nullable=False),
        sa.Column("reference_test", sa.Float(), nullable=True),
        sa.Column("points", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_early_exit_frontiers"),
        sa.ForeignKeyConstraint(
            ["run_pk"], ["runs.id"], name="fk_early_exit_frontiers_run_pk_runs", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("run_pk", "policy", name="uq_early_exit_frontiers_run_pk_policy"),
    )
    op.create_table(
        "early_exit_choices",
        sa.Column("policy", sa.String(), nullable=False),
        sa.Column("target", sa.String(), nullable=False),
        sa.Column("method", sa.String(), nullable=False),
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("delta", sa.Float(), nullable=True),
        sa.Column("met", sa.Boolean(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("val_accuracy", sa.Float(), nullable=False),
        sa.Column("val_relative_cost", sa.Float(), nullable=False),
        sa.Column("val_exits", JSON, nullable=False),
        sa.Column("test_accuracy", sa.Float(), nullable=True),
        sa.Column("test_relative_cost", sa.Float(), nullable=True),
        sa.Column("test_exits", JSON, nullable=True),
        sa.Column("final_val_accuracy", sa.Float(), nullable=False),
        sa.Column("final_test_accuracy", sa.Float(), nullable=True),
        sa.Column("val_drop", sa.Float(), nullable=False),
        sa.Column("test_drop", sa.Float(), nullable=True),
        sa.Column("val_test_gap", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint(
            "policy", "target", "method", "run_pk", name="pk_early_exit_choices"
        ),
        sa.ForeignKeyConstraint(
            ["run_pk"], ["runs.id"], name="fk_early_exit_choices_run_pk_runs", ondelete="CASCADE"
        ),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_early_exit_choices_run_pk", "early_exit_choices", ["run_pk"])

    _write_converted(conn, legacy)


def downgrade() -> None:
    """Back to 0001's tables. Choices, frontiers and non-confidence curves are dropped (0001
    cannot hold them); re-record the runs with the old version to restore its derived tables."""
    op.drop_index("ix_early_exit_choices_run_pk", table_name="early_exit_choices")
    op.drop_table("early_exit_choices")
    op.drop_table("early_exit_frontiers")
    with op.batch_alter_table("exit_results") as batch:
        batch.drop_column("reliability")
        batch.drop_column("ece")
    op.execute("DELETE FROM early_exit_points WHERE policy != 'confidence'")
    op.drop_index("uq_early_exit_points_point", table_name="early_exit_points")
    with op.batch_alter_table("early_exit_points") as batch:
        batch.drop_column("harmed")
        batch.drop_column("policy")
        batch.add_column(sa.Column("objective", sa.String(), nullable=True))
    op.create_index(
        "uq_early_exit_points_point",
        "early_exit_points",
        ["run_pk", "split", "threshold", sa.text("coalesce(objective, '')")],
        unique=True,
    )
    op.create_table(
        "early_exit_frontier",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("val_point_id", sa.Integer(), nullable=False),
        sa.Column("test_point_id", sa.Integer(), nullable=True),
        sa.Column("val_accuracy", sa.Float(), nullable=False),
        sa.Column("val_relative_cost", sa.Float(), nullable=False),
        sa.Column("val_margin", sa.Float(), nullable=True),
        sa.Column("drop_key", sa.LargeBinary(), nullable=False),
        sa.Column("budget_key", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_early_exit_frontier"),
        sa.ForeignKeyConstraint(
            ["run_pk"], ["runs.id"], name="fk_early_exit_frontier_run_pk_runs", ondelete="CASCADE"
        ),
    )
    op.create_index(
        "ix_early_exit_frontier_margin",
        "early_exit_frontier",
        ["run_pk", "val_margin", "drop_key"],
    )
    op.create_index(
        "ix_early_exit_frontier_cost",
        "early_exit_frontier",
        ["run_pk", "val_relative_cost", "budget_key"],
    )
    op.create_table(
        "early_exit_choices",
        sa.Column("objective", sa.String(), nullable=False),
        sa.Column("arch", sa.String(), nullable=False),
        sa.Column("dataset", sa.String(), nullable=False),
        sa.Column("train_mode", sa.String(), nullable=False),
        sa.Column("rank_key", sa.LargeBinary(), nullable=False),
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("frontier_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint(
            "objective", "arch", "dataset", "train_mode", "rank_key", name="pk_early_exit_choices"
        ),
        sa.ForeignKeyConstraint(
            ["run_pk"], ["runs.id"], name="fk_early_exit_choices_run_pk_runs", ondelete="CASCADE"
        ),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_early_exit_choices_run_pk", "early_exit_choices", ["run_pk"])


# ---------------------------------------------------------------------------- data
def _read_legacy(conn: Any) -> dict[str, Any]:
    """What 0001 holds that the new tables are built from, read before anything changes."""
    points = conn.exec_driver_sql(
        "SELECT run_pk, split, threshold, accuracy, relative_cost, exits_per_output, objective "
        "FROM early_exit_points ORDER BY run_pk, split, threshold"
    ).fetchall()
    finals = conn.exec_driver_sql(
        "SELECT run_pk, split, accuracy FROM exit_results WHERE is_final"
    ).fetchall()
    costs = conn.exec_driver_sql(
        "SELECT run_pk, exit_index, relative_cost FROM exit_results WHERE split = 'val' "
        "ORDER BY run_pk, exit_index"
    ).fetchall()
    return {"points": points, "finals": finals, "costs": costs}


def _write_converted(conn: Any, legacy: dict[str, Any]) -> None:
    from sdn.early_exit import EarlyExitCurve, Frontier, Target, frontier_indices
    from storage.catalogue.early_exit import frontier_row

    final: dict[tuple[int, str], float] = {
        (int(pk), split): float(acc) for pk, split, acc in legacy["finals"]
    }
    costs: dict[int, list[float]] = defaultdict(list)
    for pk, _k, cost in legacy["costs"]:
        costs[int(pk)].append(float(cost))
    curves: dict[tuple[int, str], list[Any]] = defaultdict(list)
    chosen: dict[tuple[int, str], dict[str, Any]] = defaultdict(dict)
    for pk, split, threshold, acc, cost, exits, objective in legacy["points"]:
        counts = json.loads(exits) if isinstance(exits, str) else list(exits)
        point = (float(threshold), float(acc), float(cost), counts)
        if objective is None:
            curves[(int(pk), split)].append(point)
        else:
            chosen[(int(pk), objective)][split] = point

    choice_rows = []
    for (pk, objective), pair in chosen.items():
        if "val" not in pair or (pk, "val") not in final:
            continue
        target = Target.parse(objective.replace(" (unmet)", "")).name
        v, t = pair["val"], pair.get("test")
        ref_val, ref_test = final[(pk, "val")], final.get((pk, "test"))
        test_drop = None if t is None or ref_test is None else ref_test - t[1]
        choice_rows.append(
            {
                "policy": "confidence",
                "target": target,
                "method": "empirical",
                "delta": None,
                "met": "(unmet)" not in objective,
                "threshold": v[0],
                "val_accuracy": v[1],
                "val_relative_cost": v[2],
                "val_exits": json.dumps(v[3]),
                "test_accuracy": None if t is None else t[1],
                "test_relative_cost": None if t is None else t[2],
                "test_exits": None if t is None else json.dumps(t[3]),
                "final_val_accuracy": ref_val,
                "final_test_accuracy": ref_test,
                "val_drop": ref_val - v[1],
                "test_drop": test_drop,
                "val_test_gap": None if test_drop is None else test_drop - (ref_val - v[1]),
                "run_pk": pk,
            }
        )
    if choice_rows:
        columns = list(choice_rows[0])
        conn.exec_driver_sql(
            f"INSERT INTO early_exit_choices ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' for _ in columns)})",
            [tuple(r[c] for c in columns) for r in choice_rows],
        )

    for (pk, split), val_points in curves.items():
        if split != "val" or (pk, "val") not in final or not costs.get(pk):
            continue
        n = sum(val_points[0][3])
        e = len(costs[pk])
        off = (float("nan"), final[(pk, "val")], costs[pk][-1], [0] * (e - 1) + [n])
        rows = [*val_points, off]
        curve = EarlyExitCurve(
            thresholds=np.array([p[0] for p in rows]),
            accuracy=np.array([p[1] for p in rows]),
            relative_cost=np.array([p[2] for p in rows]),
            exit_counts=np.array([p[3] for p in rows], dtype=np.int64),
            num_samples=n,
        )
        keep = frontier_indices(curve)
        tests = {p[0]: p for p in curves.get((pk, "test"), [])}
        ref_test = final.get((pk, "test"))
        test_rows = []
        for i in keep:
            if i == len(rows) - 1 and ref_test is not None and tests:
                m = sum(next(iter(tests.values()))[3])
                test_rows.append((off[0], ref_test, costs[pk][-1], [0] * (e - 1) + [m]))
            else:
                test_rows.append(tests.get(rows[i][0]))
        complete = ref_test is not None and all(r is not None for r in test_rows)
        frontier = Frontier(
            policy="confidence",
            thresholds=curve.thresholds[keep],
            val_accuracy=curve.accuracy[keep],
            val_cost=curve.relative_cost[keep],
            val_exit_counts=curve.exit_counts[keep],
            test_accuracy=np.array([r[1] for r in test_rows]) if complete else None,
            test_cost=np.array([r[2] for r in test_rows]) if complete else None,
            test_exit_counts=np.array([r[3] for r in test_rows], dtype=np.int64)
            if complete
            else None,
            reference_val=final[(pk, "val")],
            reference_test=ref_test if complete else None,
        )
        row = frontier_row(frontier)
        conn.exec_driver_sql(
            "INSERT INTO early_exit_frontiers (run_pk, policy, num_points, num_exits, "
            "reference_val, reference_test, points) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                pk,
                row["policy"],
                row["num_points"],
                row["num_exits"],
                row["reference_val"],
                row["reference_test"],
                row["points"],
            ),
        )
