"""Initial catalogue schema: sweeps, runs, per-exit results, early-exit points and frontier,
overthinking.

Written out in full (not ``metadata.create_all``) so that this revision stays what it was when later
revisions change the models.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON(none_as_null=True)


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("spec", JSON, nullable=False),
        sa.Column("code_version", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sweeps"),
        sa.UniqueConstraint("name", name="uq_sweeps_name"),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("sweep_id", sa.Integer(), nullable=False),
        sa.Column("arch", sa.String(), nullable=False),
        sa.Column("dataset", sa.String(), nullable=False),
        sa.Column("train_mode", sa.String(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("width", sa.Float(), nullable=True),
        sa.Column("epochs", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.Column("mlflow_run_id", sa.String(), nullable=True),
        sa.Column("model_name", sa.String(), nullable=True),
        sa.Column("model_version", sa.String(), nullable=True),
        sa.Column("parquet_path", sa.String(), nullable=True),
        sa.Column("code_version", sa.String(), nullable=True),
        sa.Column("config", JSON, nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("num_exits", sa.Integer(), nullable=True),
        sa.Column("cnn_flops", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
        sa.UniqueConstraint("run_id", name="uq_runs_run_id"),
        sa.UniqueConstraint(
            "sweep_id", "arch", "dataset", "train_mode", "seed", name="uq_runs_cell"
        ),
        sa.ForeignKeyConstraint(
            ["sweep_id"], ["sweeps.id"], name="fk_runs_sweep_id_sweeps", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_runs_grid", "runs", ["arch", "dataset", "train_mode", "seed"])
    op.create_index("ix_runs_dataset_mode", "runs", ["dataset", "train_mode"])
    op.create_index("ix_runs_status", "runs", ["status"])

    op.create_table(
        "exit_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("split", sa.String(), nullable=False),
        sa.Column("exit_index", sa.Integer(), nullable=False),
        sa.Column("is_final", sa.Boolean(), nullable=False),
        sa.Column("accuracy", sa.Float(), nullable=False),
        sa.Column("cumulative_flops", sa.Float(), nullable=False),
        sa.Column("relative_cost", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_exit_results"),
        sa.ForeignKeyConstraint(
            ["run_pk"], ["runs.id"], name="fk_exit_results_run_pk_runs", ondelete="CASCADE"
        ),
        sa.UniqueConstraint(
            "run_pk", "split", "exit_index", name="uq_exit_results_run_pk_split_exit_index"
        ),
    )

    op.create_table(
        "early_exit_points",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("split", sa.String(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("accuracy", sa.Float(), nullable=False),
        sa.Column("relative_cost", sa.Float(), nullable=False),
        sa.Column("exits_per_output", JSON, nullable=False),
        sa.Column("objective", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_early_exit_points"),
        sa.ForeignKeyConstraint(
            ["run_pk"], ["runs.id"], name="fk_early_exit_points_run_pk_runs", ondelete="CASCADE"
        ),
    )
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

    op.create_table(
        "overthinking",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("first_correct", JSON, nullable=False),
        sa.Column("oracle_relative_cost", sa.Float(), nullable=False),
        sa.Column("destructive_fraction", sa.Float(), nullable=False),
        sa.Column("destructive_per_ic", JSON, nullable=False),
        sa.Column("confusion_auroc", sa.Float(), nullable=True),
        sa.Column("max_softmax_auroc", sa.Float(), nullable=True),
        sa.Column("confusion_mean", sa.Float(), nullable=False),
        sa.Column("confusion_std", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_overthinking"),
        sa.ForeignKeyConstraint(
            ["run_pk"], ["runs.id"], name="fk_overthinking_run_pk_runs", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("run_pk", name="uq_overthinking_run_pk"),
    )


def downgrade() -> None:
    for table in (
        "overthinking",
        "early_exit_choices",
        "early_exit_frontier",
        "early_exit_points",
        "exit_results",
        "runs",
        "sweeps",
    ):
        op.drop_table(table)
