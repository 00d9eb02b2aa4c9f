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
    """One trained model: a grid cell (sweep, arch, dataset, mode, seed, poisoning) and where its
    parts are. ``poison`` is the poisoning tag of a model trained on poisoned data
    (``sdn.backdoor.PoisonConfig.tag``), ``''`` for a clean one: part of the cell's identity."""

    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint(
            "sweep_id", "arch", "dataset", "train_mode", "seed", "poison", name="uq_runs_cell"
        ),
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
    poison: Mapped[str] = mapped_column(String, default="", server_default="")

    sweep: Mapped[Sweep] = relationship(back_populates="runs")
    exit_results: Mapped[list[ExitResult]] = relationship(passive_deletes=True)
    early_exit_points: Mapped[list[EarlyExitPoint]] = relationship(passive_deletes=True)
    early_exit_choices: Mapped[list[EarlyExitChoice]] = relationship(passive_deletes=True)
    overthinking: Mapped[Overthinking | None] = relationship(passive_deletes=True)
    backdoor_exits: Mapped[list[BackdoorExit]] = relationship(passive_deletes=True)
    backdoor_summary: Mapped[BackdoorSummaryRow | None] = relationship(passive_deletes=True)


class ExitResult(Base):
    """Accuracy, cost and calibration of always leaving at one exit, per split."""

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
    ece: Mapped[float | None]  # expected calibration error (15 bins); val and test only
    # {"counts": [...], "confidence": [...], "accuracy": [...]} per bin: the reliability curve
    reliability: Mapped[dict[str, Any] | None]


class EarlyExitPoint(Base):
    """Early exit at one threshold of one policy on one split: the curves on each policy's fixed
    grid, for plots and SQL (``harmed``: samples the final head gets right and early exit wrong,
    what certification counts)."""

    __tablename__ = "early_exit_points"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_pk: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    policy: Mapped[str]
    split: Mapped[str]
    threshold: Mapped[float]
    accuracy: Mapped[float]
    relative_cost: Mapped[float]
    exits_per_output: Mapped[list[int]]
    harmed: Mapped[int | None]


Index(
    "uq_early_exit_points_point",
    EarlyExitPoint.run_pk,
    EarlyExitPoint.policy,
    EarlyExitPoint.split,
    EarlyExitPoint.threshold,
    unique=True,
)


class EarlyExitFrontier(Base):
    """A run's exact validation frontier for one policy (``sdn.early_exit.Frontier``), from which
    any target's operating point is chosen by the same code that chose the stored ones.

    ``points`` packs float64 [num_points, 5] (threshold with NaN = off, val accuracy, val cost,
    test accuracy, test cost) and int32 [num_points, 2 * num_exits] (val and test exits per
    output); see ``storage.catalogue.early_exit.frontier_row``. Binary because a query for a new
    target reads one row per run (10,000 runs in well under a second); SQL users read
    ``early_exit_points`` and ``early_exit_choices`` instead.
    """

    __tablename__ = "early_exit_frontiers"
    __table_args__ = (UniqueConstraint("run_pk", "policy"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_pk: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    policy: Mapped[str]
    num_points: Mapped[int]
    num_exits: Mapped[int]
    reference_val: Mapped[float]  # the final head's accuracy per split
    reference_test: Mapped[float | None]
    points: Mapped[bytes] = mapped_column(LargeBinary)


class EarlyExitChoice(Base):
    """The operating point chosen on validation for one target, with its test figures.

    One row per run, policy, target (``max_drop=0.01``, ``budget=0.50``) and method
    (``empirical``, or ``certified`` at ``delta``). ``met`` is false when the target could not be
    met (a budget below the cheapest point) or nothing could be certified. ``val_test_gap`` is the
    test drop minus the validation drop. Clustered by (policy, target, method), so that a query for
    one target reads one short row per run in order.
    """

    __tablename__ = "early_exit_choices"
    __table_args__ = (
        Index("ix_early_exit_choices_run_pk", "run_pk"),
        {"sqlite_with_rowid": False},
    )

    policy: Mapped[str] = mapped_column(String, primary_key=True)
    target: Mapped[str] = mapped_column(String, primary_key=True)
    method: Mapped[str] = mapped_column(String, primary_key=True)
    run_pk: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    delta: Mapped[float | None]
    met: Mapped[bool]
    threshold: Mapped[float | None]  # NULL: early exit off (the final head answers)
    val_accuracy: Mapped[float]
    val_relative_cost: Mapped[float]
    val_exits: Mapped[list[int]]
    test_accuracy: Mapped[float | None]
    test_relative_cost: Mapped[float | None]
    test_exits: Mapped[list[int] | None]
    final_val_accuracy: Mapped[float]
    final_test_accuracy: Mapped[float | None]
    val_drop: Mapped[float]
    test_drop: Mapped[float | None]
    val_test_gap: Mapped[float | None]


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


class BackdoorExit(Base):
    """A poisoned run's backdoor figures at one exit, on ``test`` and ``test_triggered``
    (``sdn.backdoor_metrics``): accuracy on clean inputs, accuracy on triggered inputs against the
    true labels, attack success (share of triggered non-target inputs answered with the target)
    and the same share on clean non-target inputs (the base rate)."""

    __tablename__ = "backdoor_exits"
    __table_args__ = (UniqueConstraint("run_pk", "exit_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_pk: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    exit_index: Mapped[int]
    is_final: Mapped[bool]
    clean_accuracy: Mapped[float]
    triggered_accuracy: Mapped[float]
    attack_success: Mapped[float]
    clean_target_rate: Mapped[float]


class BackdoorSummaryRow(Base):
    """A poisoned run's backdoor figures as a whole (test split and its triggered twin).

    ``destructive_fraction``: of the triggered inputs the final head gets wrong, the share some IC
    got right; ``confusion_auroc`` / ``max_softmax_auroc``: telling triggered from clean
    non-target inputs; ``early_exit_*``: early exit on triggered inputs at the threshold of the
    run's stored choice ``early_exit_target`` (confidence, empirical, chosen on clean val;
    threshold NULL = off), with the clean split's accuracy and cost at the same threshold. All
    ``early_exit_*`` are NULL when the run has no such choice.
    """

    __tablename__ = "backdoor_summaries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_pk: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), unique=True)
    target: Mapped[int]
    num_clean: Mapped[int]
    num_triggered: Mapped[int]
    num_target_excluded: Mapped[int]
    destructive_fraction: Mapped[float]
    destructive_per_ic: Mapped[list[float]]
    destroyed_share: Mapped[float]
    confusion_auroc: Mapped[float | None]
    max_softmax_auroc: Mapped[float | None]
    early_exit_target: Mapped[str | None]
    early_exit_threshold: Mapped[float | None]
    early_exit_accuracy: Mapped[float | None]
    early_exit_attack_success: Mapped[float | None]
    early_exit_relative_cost: Mapped[float | None]
    early_exit_exits: Mapped[list[int] | None]
    early_exit_clean_accuracy: Mapped[float | None]
    early_exit_clean_relative_cost: Mapped[float | None]
