"""The catalogue's tables as a typed SQLAlchemy ORM.

The catalogue is derived data: every row can be recomputed from the Parquet predictions and the
MLflow runs, so the schema favours the questions users ask (filter runs by grid cell, compare exits,
pick early-exit points) over normalisation for its own sake. Keys:

* natural identities are unique (``sweeps.name``, ``runs.run_id``, the run's grid cell, and one row
  per run x split x exit / threshold), so that recording twice cannot duplicate anything;
* child rows point at ``runs.id`` (a small integer, cheaper to index than the run id string) with
  ``ON DELETE CASCADE``, so deleting a run or a sweep removes everything recorded for it.

The migrations in ``storage/migrations`` create exactly these tables; a test compares the two.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Constraint names are fixed so that migrations can refer to them.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    # JSON columns store a Python None as SQL NULL (not the JSON text 'null'), so IS NULL works.
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        float: Float(),  # SQLite REAL either way; FLOAT is what the migrations say
        dict[str, Any]: JSON(none_as_null=True),
        list[int]: JSON(none_as_null=True),
        list[float]: JSON(none_as_null=True),
    }


class Sweep(Base):
    """One launched sweep: its validated spec, kept so a run's origin can be traced."""

    __tablename__ = "sweeps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    spec: Mapped[dict[str, Any]]
    code_version: Mapped[str | None]
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)

    runs: Mapped[list[Run]] = relationship(back_populates="sweep", passive_deletes=True)


class Run(Base):
    """One trained model: a grid cell (sweep, arch, dataset, mode, seed) and where its parts are."""

    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint("sweep_id", "arch", "dataset", "train_mode", "seed", name="uq_runs_cell"),
        Index("ix_runs_grid", "arch", "dataset", "train_mode", "seed"),
        Index("ix_runs_dataset_mode", "dataset", "train_mode"),
        Index("ix_runs_status", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(String, unique=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"))
    arch: Mapped[str]
    dataset: Mapped[str]
    train_mode: Mapped[str]
    seed: Mapped[int]
    width: Mapped[float | None]
    epochs: Mapped[int | None]
    status: Mapped[str]
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime)
    mlflow_run_id: Mapped[str | None]
    model_name: Mapped[str | None]
    model_version: Mapped[str | None]
    parquet_path: Mapped[str | None]
    code_version: Mapped[str | None]
    config: Mapped[dict[str, Any]]
    error: Mapped[str | None] = mapped_column(Text)
    num_exits: Mapped[int | None]
    cnn_flops: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(DateTime)

    sweep: Mapped[Sweep] = relationship(back_populates="runs")
    exit_results: Mapped[list[ExitResult]] = relationship(passive_deletes=True)
    early_exit_points: Mapped[list[EarlyExitPoint]] = relationship(passive_deletes=True)
    overthinking: Mapped[Overthinking | None] = relationship(passive_deletes=True)


class ExitResult(Base):
    """Accuracy and cost of always leaving at one exit, per split."""

    __tablename__ = "exit_results"
    __table_args__ = (UniqueConstraint("run_pk", "split", "exit_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The unique key above starts with run_pk, so it already serves as the FK's index.
    run_pk: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    split: Mapped[str]
    exit_index: Mapped[int]
    is_final: Mapped[bool]
    accuracy: Mapped[float]
    cumulative_flops: Mapped[float]
    relative_cost: Mapped[float]


class EarlyExitPoint(Base):
    """Early exit at one confidence threshold on one split.

    ``objective`` is NULL for a point of the threshold sweep (the curve) and names the target for a
    point chosen on validation (e.g. ``max_drop=0.01``); the unique index treats NULL as ''.
    """

    __tablename__ = "early_exit_points"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_pk: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    split: Mapped[str]
    threshold: Mapped[float]
    accuracy: Mapped[float]
    relative_cost: Mapped[float]
    exits_per_output: Mapped[list[int]]
    objective: Mapped[str | None]


# An expression index needs the mapped columns, so it is declared after the class.
Index(
    "uq_early_exit_points_point",
    EarlyExitPoint.run_pk,
    EarlyExitPoint.split,
    EarlyExitPoint.threshold,
    func.coalesce(EarlyExitPoint.objective, ""),
    unique=True,
)


class EarlyExitFrontier(Base):
    """Derived: each run's Pareto-optimal validation curve points (see ``catalogue.early_exit``).

    ``record_summary`` rebuilds these rows with the run's ``early_exit_points``. They exist for
    speed: for any accuracy drop d the chosen validation point is the cheapest frontier point with
    ``val_margin >= -d``, and under any cost budget b the dearest one with
    ``val_relative_cost <= b``; either is one seek per run in an index that also holds the row's
    ranking key, so choosing the best run of a group never reads the table itself.
    """

    __tablename__ = "early_exit_frontier"
    __table_args__ = (
        Index("ix_early_exit_frontier_margin", "run_pk", "val_margin", "drop_key"),
        Index("ix_early_exit_frontier_cost", "run_pk", "val_relative_cost", "budget_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_pk: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    val_point_id: Mapped[int]  # early_exit_points.id; replaced together with it
    test_point_id: Mapped[int | None]  # the test point at the same threshold, if recorded
    val_accuracy: Mapped[float]
    val_relative_cost: Mapped[float]
    val_margin: Mapped[float | None]  # val accuracy - final head's val accuracy
    drop_key: Mapped[bytes] = mapped_column(LargeBinary)  # orders by (cost, -accuracy, run id)
    budget_key: Mapped[bytes] = mapped_column(LargeBinary)  # orders by (-accuracy, cost, run id)


class EarlyExitChoice(Base):
    """Derived: each run's chosen frontier row for the standard targets
    (``early_exit.STANDARD_DROPS`` / ``STANDARD_BUDGETS``), clustered by target and group so that
    ``best_early_exit`` for one of them scans one short row per run, in group order."""

    __tablename__ = "early_exit_choices"
    __table_args__ = (
        Index("ix_early_exit_choices_run_pk", "run_pk"),
        {"sqlite_with_rowid": False},
    )

    objective: Mapped[str] = mapped_column(String, primary_key=True)  # "drop=0.01", "budget=0.5"
    arch: Mapped[str] = mapped_column(String, primary_key=True)  # copies of the run's, for order
    dataset: Mapped[str] = mapped_column(String, primary_key=True)
    train_mode: Mapped[str] = mapped_column(String, primary_key=True)
    rank_key: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    run_pk: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    frontier_id: Mapped[int]  # early_exit_frontier.id


class Overthinking(Base):
    """The paper's overthinking figures for a run (on its test split)."""

    __tablename__ = "overthinking"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_pk: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), unique=True)
    first_correct: Mapped[list[int]]
    oracle_relative_cost: Mapped[float]
    destructive_fraction: Mapped[float]
    destructive_per_ic: Mapped[list[float]]
    confusion_auroc: Mapped[float | None]
    max_softmax_auroc: Mapped[float | None]
    confusion_mean: Mapped[float]
    confusion_std: Mapped[float]
