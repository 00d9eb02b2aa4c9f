"""Backdoor experiment: poisoning is part of a run's identity; per-exit and per-run backdoor
figures.

* ``runs.poison``: the run's poisoning tag (``sdn.backdoor.PoisonConfig.tag``, e.g.
  ``badnets-t5-r0p10-s0-sq5at26x26-white``), ``''`` for a model trained on clean data (every run
  recorded before this revision). NOT NULL so that the cell key below can hold it: SQLite takes
  two NULLs as different values in a UNIQUE constraint, which would let two clean cells of one
  grid point coexist.
* ``uq_runs_cell`` gains ``poison``: a clean and a poisoned cell of the same sweep, architecture,
  data set, mode and seed are two runs.
* ``backdoor_exits``: per exit of a poisoned run, on the test split and its triggered twin:
  clean accuracy, accuracy on triggered inputs against the true labels, attack success (share
  of triggered non-target inputs predicted as the target), and the same share on clean
  non-target inputs (the base rate).
* ``backdoor_summaries``: one row per poisoned run: destructive overthinking on triggered inputs,
  how well the confusion score and max-softmax flag them (AUROC), and early exit on triggered
  inputs at the threshold chosen on clean validation (``early_exit_target`` names the stored
  choice it came from).

Changing ``runs``' UNIQUE constraint rebuilds the table (SQLite cannot drop a constraint); the
migration runs with foreign keys off (``storage.catalogue.migrate``), so the rebuild does not
cascade into the tables that point at ``runs``.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

JSON = sa.JSON(none_as_null=True)
OLD_CELL = ["sweep_id", "arch", "dataset", "train_mode", "seed"]


def upgrade() -> None:
    with op.batch_alter_table("runs", recreate="always") as batch:
        batch.add_column(sa.Column("poison", sa.String(), nullable=False, server_default=""))
        batch.drop_constraint("uq_runs_cell", type_="unique")
        batch.create_unique_constraint("uq_runs_cell", [*OLD_CELL, "poison"])

    op.create_table(
        "backdoor_exits",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("exit_index", sa.Integer(), nullable=False),
        sa.Column("is_final", sa.Boolean(), nullable=False),
        sa.Column("clean_accuracy", sa.Float(), nullable=False),
        sa.Column("triggered_accuracy", sa.Float(), nullable=False),
        sa.Column("attack_success", sa.Float(), nullable=False),
        sa.Column("clean_target_rate", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_backdoor_exits"),
        sa.ForeignKeyConstraint(
            ["run_pk"], ["runs.id"], name="fk_backdoor_exits_run_pk_runs", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("run_pk", "exit_index", name="uq_backdoor_exits_run_pk_exit_index"),
    )
    op.create_table(
        "backdoor_summaries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("target", sa.Integer(), nullable=False),
        sa.Column("num_clean", sa.Integer(), nullable=False),
        sa.Column("num_triggered", sa.Integer(), nullable=False),
        sa.Column("num_target_excluded", sa.Integer(), nullable=False),
        sa.Column("destructive_fraction", sa.Float(), nullable=False),
        sa.Column("destructive_per_ic", JSON, nullable=False),
        sa.Column("destroyed_share", sa.Float(), nullable=False),
        sa.Column("confusion_auroc", sa.Float(), nullable=True),
        sa.Column("max_softmax_auroc", sa.Float(), nullable=True),
        sa.Column("early_exit_target", sa.String(), nullable=True),
        sa.Column("early_exit_threshold", sa.Float(), nullable=True),
        sa.Column("early_exit_accuracy", sa.Float(), nullable=True),
        sa.Column("early_exit_attack_success", sa.Float(), nullable=True),
        sa.Column("early_exit_relative_cost", sa.Float(), nullable=True),
        sa.Column("early_exit_exits", JSON, nullable=True),
        sa.Column("early_exit_clean_accuracy", sa.Float(), nullable=True),
        sa.Column("early_exit_clean_relative_cost", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_backdoor_summaries"),
        sa.ForeignKeyConstraint(
            ["run_pk"], ["runs.id"], name="fk_backdoor_summaries_run_pk_runs", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("run_pk", name="uq_backdoor_summaries_run_pk"),
    )


def downgrade() -> None:
    """Back to 0002, which cannot tell a poisoned run from a clean one: poisoned runs are
    deleted (with everything recorded for them) before the column goes."""
    op.drop_table("backdoor_summaries")
    op.drop_table("backdoor_exits")
    conn = op.get_bind()
    ids = [row[0] for row in conn.exec_driver_sql("SELECT id FROM runs WHERE poison != ''")]
    for table in (
        "exit_results",
        "early_exit_points",
        "early_exit_frontiers",
        "early_exit_choices",
        "overthinking",
    ):
        for pk in ids:  # foreign keys are off while migrating: no cascade to rely on
            conn.exec_driver_sql(f"DELETE FROM {table} WHERE run_pk = ?", (pk,))
    op.execute("DELETE FROM runs WHERE poison != ''")
    with op.batch_alter_table("runs", recreate="always") as batch:
        batch.drop_constraint("uq_runs_cell", type_="unique")
        batch.create_unique_constraint("uq_runs_cell", OLD_CELL)
        batch.drop_column("poison")
