"""Early-exit operating points chosen on validation: the rule, and how the catalogue answers it fast.

The rule (what ``Catalogue.best_early_exit`` answers), per run, over the validation points of the
threshold sweep (``early_exit_points`` rows with ``objective IS NULL``):

* accuracy drop ``d``: among points with ``accuracy >= final-head val accuracy - d``, the one of
  lowest relative cost; ties go to higher accuracy, then to the higher threshold;
* cost budget ``b``: among points with ``relative_cost <= b``, the one of highest accuracy; ties go
  to lower cost, then to the higher threshold.

Comparisons allow ``EPS`` of slack, so that 0.99 against a final 1.00 meets a drop of 0.01 despite
binary floating point. Per (arch, dataset, mode) the run whose chosen point is best on validation
wins (drop: lowest val cost, then highest val accuracy; budget: highest val accuracy, then lowest
val cost; then the smaller run id), and its test point at the same threshold is reported.

How it is fast (10,000 runs in well under 50 ms):

* Both answers lie on the run's Pareto frontier: the curve walked by increasing cost (ties: higher
  accuracy, then higher threshold first), keeping each point strictly more accurate than all before
  it. Along it cost and accuracy rise strictly, so the drop answer is the cheapest frontier point
  with ``val_margin >= -d`` and the budget answer the dearest with ``val_relative_cost <= b``: one
  index seek per run (``early_exit_frontier``, written by ``record_summary``).
* Each frontier row carries two byte-string keys whose ``memcmp`` order is the ranking above
  (``rank_keys``), so the winner of a group is ``min(key)`` and, by SQLite's documented rule for a
  query with a single ``min()``, the other (bare) columns come from that row. Measured, this is
  several times cheaper than a window function or formatting a key per row at query time.
* For the common targets in ``STANDARD_DROPS`` / ``STANDARD_BUDGETS`` each run's choice is stored
  when it is recorded (``early_exit_choices``, by the same seek as the query), clustered by target
  and group, so that a query for one of them is a sequential scan of one row per run. Any other
  target seeks each run's frontier at query time (a few times slower, still tens of ms).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from storage.errors import StorageError, choice_error

if TYPE_CHECKING:  # the CLI's read path runs the query on plain sqlite3, without pandas
    import pandas as pd
    from sqlalchemy import Connection

    from sdn.results import OperatingPoint

EPS = 1e-9
STANDARD_DROPS = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1)
STANDARD_BUDGETS = (0.25, 0.5, 0.75, 1.0)
SPLITS = ("val", "test")


# ---------------------------------------------------------------------------- the rule in Python
@dataclass(frozen=True)
class FrontierPoint:
    """A Pareto-optimal validation point, by position in the run's list of operating points, with
    the position of the test curve point at the same threshold (None if there is none)."""

    val_index: int
    test_index: int | None
    val_accuracy: float
    val_relative_cost: float
    val_margin: float | None


def _threshold_key(threshold: float) -> float:
    return round(float(threshold), 12)


def pareto_frontier(
    points: list[OperatingPoint], final_val_accuracy: float | None
) -> list[FrontierPoint]:
    """The validation frontier of a run's operating points, in order of increasing cost."""
    curve = [i for i, p in enumerate(points) if p.objective is None]
    tests = {_threshold_key(points[i].threshold): i for i in curve if points[i].split == "test"}
    ordered = sorted(
        (i for i in curve if points[i].split == "val"),
        key=lambda i: (points[i].relative_cost, -points[i].accuracy, -points[i].threshold),
    )
    frontier: list[FrontierPoint] = []
    best = float("-inf")
    for i in ordered:
        p = points[i]
        if p.accuracy <= best:
            continue
        best = p.accuracy
        margin = None if final_val_accuracy is None else float(p.accuracy - final_val_accuracy)
        frontier.append(
            FrontierPoint(
                val_index=i,
                test_index=tests.get(_threshold_key(p.threshold)),
                val_accuracy=float(p.accuracy),
                val_relative_cost=float(p.relative_cost),
                val_margin=margin,
            )
        )
    return frontier


def choose_on_validation(
    points: list[OperatingPoint],
    final_val_accuracy: float,
    max_accuracy_drop: float | None = None,
    cost_budget: float | None = None,
) -> OperatingPoint | None:
    """The rule applied directly to one run's curve: the reference the SQL is tested against, and
    handy in a notebook."""
    val = [p for p in points if p.split == "val" and p.objective is None]
    if max_accuracy_drop is not None:
        ok = [p for p in val if p.accuracy >= final_val_accuracy - max_accuracy_drop - EPS]
        return min(ok, key=lambda p: (p.relative_cost, -p.accuracy, -p.threshold), default=None)
    if cost_budget is not None:
        ok = [p for p in val if p.relative_cost <= cost_budget + EPS]
        return min(ok, key=lambda p: (-p.accuracy, p.relative_cost, -p.threshold), default=None)
    raise ValueError("give max_accuracy_drop or cost_budget")


# ---------------------------------------------------------------------------- the rule in SQL
_FLIP = (1 << 64) - 1


def _bits(x: float) -> bytes:
    """Big-endian IEEE-754 bits of a non-negative float: byte order equals numeric order."""
    return struct.pack(">d", float(x) + 0.0)  # + 0.0 turns -0.0 into 0.0


def _flipped(x: float) -> bytes:
    """Bytes that sort in decreasing order of the non-negative float ``x``."""
    (n,) = struct.unpack(">Q", _bits(x))
    return struct.pack(">Q", n ^ _FLIP)


def rank_keys(relative_cost: float, accuracy: float, run_id: str) -> tuple[bytes, bytes]:
    """(drop key, budget key) of a validation point: compared as bytes they order points by
    (cost, -accuracy, run id) and by (-accuracy, cost, run id), the tie-breaks of the rule."""
    rid = run_id.encode()
    return (
        _bits(relative_cost) + _flipped(accuracy) + rid,
        _flipped(accuracy) + _bits(relative_cost) + rid,
    )


def objective_name(max_accuracy_drop: float | None, cost_budget: float | None) -> str:
    """Canonical name of a target, as stored in ``early_exit_choices.objective``."""
    if max_accuracy_drop is not None:
        return f"drop={float(max_accuracy_drop)!r}"
    return f"budget={float(cost_budget)!r}"


@dataclass(frozen=True)
class _Target:
    """How one kind of target seeks a run's frontier (alias ``g``) and ranks the result."""

    condition: str
    order: str
    key: str

    def seek(self, column: str) -> str:
        """A correlated subquery giving ``column`` of run ``r``'s chosen frontier row."""
        return (
            f"(SELECT g.{column} FROM early_exit_frontier AS g "
            f"WHERE g.run_pk = r.id AND {self.condition} ORDER BY {self.order} LIMIT 1)"
        )


_DROP = _Target("g.val_margin >= :bound", "g.val_margin", "drop_key")
_BUDGET = _Target("g.val_relative_cost <= :bound", "g.val_relative_cost DESC", "budget_key")


def _target(max_accuracy_drop: float | None) -> _Target:
    return _DROP if max_accuracy_drop is not None else _BUDGET


def _bound(max_accuracy_drop: float | None, cost_budget: float | None) -> float:
    if max_accuracy_drop is not None:
        return -float(max_accuracy_drop) - EPS
    return float(cost_budget) + EPS


_STANDARD = [(d, None) for d in STANDARD_DROPS] + [(None, b) for b in STANDARD_BUDGETS]
_STANDARD_NAMES = {objective_name(d, b) for d, b in _STANDARD}


def record_choices(conn: Connection, run_pk: int) -> None:
    """Store run ``run_pk``'s choice for every standard target (after its frontier rows)."""
    for drop, budget in _STANDARD:
        target = _target(drop)
        conn.exec_driver_sql(
            f"""
            INSERT INTO early_exit_choices
                   (objective, arch, dataset, train_mode, rank_key, run_pk, frontier_id)
            SELECT :objective, r.arch, r.dataset, r.train_mode, f.{target.key}, r.id, f.id
              FROM runs AS r JOIN early_exit_frontier AS f ON f.id = {target.seek("id")}
             WHERE r.id = :run_pk
            """,
            {
                "objective": objective_name(drop, budget),
                "run_pk": run_pk,
                "bound": _bound(drop, budget),
            },
        )


# Filters that early_exit_choices can apply to its own copies of the run's grid cell.
_CELL_FILTERS = {"arch": "arch", "dataset": "dataset", "mode": "train_mode"}


def _where(conditions: list[str]) -> str:
    return ("WHERE " + " AND ".join(conditions)) if conditions else ""


def _candidates(stored: bool, target: _Target, terms: dict[str, str], per_run: bool) -> str:
    """CTEs ``sizes`` (runs per group after the filters) and ``best`` (arch, dataset, train_mode,
    rank_key, run_pk): the winner of each group, or every run's choice when ``per_run``. A group or
    run without a qualifying point has a NULL rank_key.

    ``best`` is MATERIALIZED so that the report's ``rank_key IS NOT NULL`` is not pushed down into
    it, which made SQLite evaluate every run's seek twice (measured: 36 ms against 26 ms).
    """
    where_r = _where(list(terms.values()))
    sizes = f"""sizes AS (
        SELECT r.arch, r.dataset, r.train_mode, count(*) AS runs_in_group
          FROM runs AS r {where_r} GROUP BY r.arch, r.dataset, r.train_mode)"""
    if stored:
        conditions = ["c.objective = :objective"]
        conditions += [
            terms[name].replace(f"r.{col} ", f"c.{col} ", 1)
            for name, col in _CELL_FILTERS.items()
            if name in terms
        ]
        others = [term for name, term in terms.items() if name not in _CELL_FILTERS]
        if others:
            conditions.append(f"c.run_pk IN (SELECT r.id FROM runs AS r {_where(others)})")
        key = "c.rank_key" if per_run else "min(c.rank_key)"
        best = f"""best AS MATERIALIZED (
            SELECT c.arch, c.dataset, c.train_mode, {key} AS rank_key, c.run_pk
              FROM early_exit_choices AS c {_where(conditions)}
              {"" if per_run else "GROUP BY c.arch, c.dataset, c.train_mode"})"""
    elif per_run:
        best = f"""best AS MATERIALIZED (
            SELECT r.arch, r.dataset, r.train_mode, {target.seek(target.key)} AS rank_key,
                   r.id AS run_pk
              FROM runs AS r {where_r})"""
    else:
        # A single min() per group: SQLite evaluates each run's seek once and takes the bare
        # run_pk from the winning row, scanning runs in group order (no sort).
        best = f"""best AS MATERIALIZED (
            SELECT r.arch, r.dataset, r.train_mode, min({target.seek(target.key)}) AS rank_key,
                   r.id AS run_pk
              FROM runs AS r {where_r} GROUP BY r.arch, r.dataset, r.train_mode)"""
    return f"WITH {sizes}, {best}"


_REPORT = """
{candidates}
SELECT r.arch, r.dataset, r.train_mode, r.run_id, s.name AS sweep, r.seed, z.runs_in_group,
       v.threshold, f.val_accuracy, f.val_relative_cost, :split AS split,
       {p}.accuracy AS accuracy, {p}.relative_cost AS relative_cost,
       {p}.exits_per_output AS exits_per_output,
       e.accuracy AS final_accuracy, e.accuracy - {p}.accuracy AS accuracy_drop
  FROM best AS b
  JOIN sizes AS z ON z.arch = b.arch AND z.dataset = b.dataset AND z.train_mode = b.train_mode
  JOIN runs AS r ON r.id = b.run_pk
  JOIN sweeps AS s ON s.id = r.sweep_id
  JOIN early_exit_frontier AS f ON f.run_pk = b.run_pk AND f.{key} = b.rank_key
  JOIN early_exit_points AS v ON v.id = f.val_point_id
  LEFT JOIN early_exit_points AS t ON t.id = f.test_point_id
  LEFT JOIN exit_results AS e
         ON e.run_pk = r.id AND e.split = :split AND e.exit_index = r.num_exits - 1
 WHERE b.rank_key IS NOT NULL
 ORDER BY r.arch, r.dataset, r.train_mode, r.run_id
"""


def best_early_exit(
    conn: Connection,
    max_accuracy_drop: float | None,
    cost_budget: float | None,
    split: str,
    per_run: bool,
    terms: dict[str, str],
    params: dict[str, Any],
    as_frame: bool = True,
) -> pd.DataFrame:
    """See ``Catalogue.best_early_exit``. ``terms`` maps filter names to conditions on
    ``runs AS r`` (built from a whitelist; the values are bound in ``params``)."""
    if (max_accuracy_drop is None) == (cost_budget is None):
        raise StorageError("give exactly one of max_accuracy_drop or cost_budget")
    if split not in SPLITS:
        raise choice_error("split", split, SPLITS)
    objective = objective_name(max_accuracy_drop, cost_budget)
    target = _target(max_accuracy_drop)
    candidates = _candidates(objective in _STANDARD_NAMES, target, terms, per_run)
    sql = _REPORT.format(candidates=candidates, key=target.key, p="v" if split == "val" else "t")
    values = {
        **params,
        "objective": objective,
        "bound": _bound(max_accuracy_drop, cost_budget),
        "split": split,
    }
    result = conn.exec_driver_sql(sql, values)
    columns = list(result.keys())
    k = columns.index("exits_per_output")
    rows = [(*r[:k], None if r[k] is None else json.loads(r[k]), *r[k + 1 :]) for r in result]
    if not as_frame:  # (columns, rows) for callers without pandas (``conn`` may be sqlite3's)
        return columns, rows  # type: ignore[return-value]
    import pandas as pd

    return pd.DataFrame(rows, columns=columns)
