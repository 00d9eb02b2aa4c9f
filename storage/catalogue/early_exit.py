"""How the catalogue keeps early-exit operating points and answers queries about them.

The rule that picks an operating point lives in ``sdn.early_exit`` alone. This module stores its
inputs (each run's validation frontier per policy, and the grid curves in ``early_exit_points``)
and its outputs (the choices for the sweep's targets, in ``early_exit_choices``), and answers
``Catalogue.best_early_exit``:

* a target the analysis chose for (the sweep's ``analysis.max_accuracy_drops`` /
  ``cost_budgets``, empirical, and certified at the sweep's ``analysis.delta``) is read back as
  stored: one short row per run, clustered by target;
* any other target is chosen now, from the stored frontier (empirical) or the stored validation
  grid curve (certified), by the same ``sdn.early_exit`` functions that chose the stored ones, so
  the two paths cannot disagree.

Then, per (arch, dataset, mode, poisoning), the run whose choice is best on validation wins
(``sdn.early_exit.group_ranking``), unless every run is asked for. A model trained on poisoned data
(``runs.poison``) is never ranked against a clean one.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from sdn.early_exit import (
    METHODS,
    POLICIES,
    Choice,
    EarlyExitCurve,
    Frontier,
    Target,
    certify,
    choose_indices,
    group_ranking,
    unmet_label,
)
from storage.errors import StorageError, choice_error

if TYPE_CHECKING:  # the CLI's read path calls best_early_exit without pandas (as_frame=False)
    import pandas as pd
    from sqlalchemy import Connection

SPLITS = ("val", "test")


# ---------------------------------------------------------------------------- stored forms
def frontier_row(frontier: Frontier) -> dict[str, Any]:
    """``early_exit_frontiers`` values (without run_pk) of a frontier.

    ``points`` packs, little-endian: float64 [F, 5] (threshold with NaN = off, val accuracy, val
    cost, test accuracy, test cost; NaN where there is no test) then int32 [F, 2E] (val and test
    exits per output; -1 where there is no test).
    """
    f = frontier.thresholds.size
    e = frontier.val_exit_counts.shape[1]
    missing = np.full(f, np.nan)
    numbers = np.column_stack(
        [
            frontier.thresholds,
            frontier.val_accuracy,
            frontier.val_cost,
            missing if frontier.test_accuracy is None else frontier.test_accuracy,
            missing if frontier.test_cost is None else frontier.test_cost,
        ]
    ).astype("<f8")
    test_counts = (
        np.full((f, e), -1) if frontier.test_exit_counts is None else frontier.test_exit_counts
    )
    counts = np.column_stack([frontier.val_exit_counts, test_counts]).astype("<i4")
    return {
        "policy": frontier.policy,
        "num_points": int(f),
        "num_exits": int(e),
        "reference_val": float(frontier.reference_val),
        "reference_test": None
        if frontier.reference_test is None
        else float(frontier.reference_test),
        "points": numbers.tobytes() + counts.tobytes(),
    }


def frontier_from_row(
    policy: str,
    num_points: int,
    num_exits: int,
    reference_val: float,
    reference_test: float | None,
    points: bytes,
) -> Frontier:
    """The ``Frontier`` a ``frontier_row`` stored (exact: float64 round trip)."""
    f, e = num_points, num_exits
    split = f * 5 * 8
    numbers = np.frombuffer(points, dtype="<f8", count=f * 5).reshape(f, 5)
    counts = np.frombuffer(points, dtype="<i4", offset=split).reshape(f, 2 * e).astype(np.int64)
    has_test = reference_test is not None
    return Frontier(
        policy=policy,
        thresholds=numbers[:, 0].copy(),
        val_accuracy=numbers[:, 1].copy(),
        val_cost=numbers[:, 2].copy(),
        val_exit_counts=counts[:, :e],
        test_accuracy=numbers[:, 3].copy() if has_test else None,
        test_cost=numbers[:, 4].copy() if has_test else None,
        test_exit_counts=counts[:, e:] if has_test else None,
        reference_val=float(reference_val),
        reference_test=float(reference_test) if has_test else None,
    )


def choice_row(choice: Choice) -> dict[str, Any]:
    """``early_exit_choices`` values (without run_pk) of a choice."""
    test = choice.test
    val_drop = choice.val_drop
    test_drop = choice.test_drop
    return {
        "policy": choice.policy,
        "target": choice.target,
        "method": choice.method,
        "delta": choice.delta,
        "met": bool(choice.met),
        "threshold": choice.val.threshold,
        "val_accuracy": float(choice.val.accuracy),
        "val_relative_cost": float(choice.val.relative_cost),
        "val_exits": [int(c) for c in choice.val.exit_counts],
        "test_accuracy": None if test is None else float(test.accuracy),
        "test_relative_cost": None if test is None else float(test.relative_cost),
        "test_exits": None if test is None else [int(c) for c in test.exit_counts],
        "final_val_accuracy": float(choice.reference_val),
        "final_test_accuracy": choice.reference_test,
        "val_drop": float(val_drop),
        "test_drop": test_drop,
        "val_test_gap": None if test_drop is None else float(test_drop - val_drop),
    }


# ---------------------------------------------------------------------------- the query
_CHOICE_JOIN = """
  LEFT JOIN early_exit_choices AS c
         ON c.policy = :policy AND c.target = :target AND c.method = :method AND c.run_pk = r.id
        AND (:delta IS NULL OR c.delta = :delta)"""

# Phase 1: what ranking needs: the analysed runs (those with a frontier) in group and run order,
# and the stored choices of the target, as two plain scans joined in Python (measured: 18 ms
# against 28 ms for the join in SQL, at 10,000 runs).
_RANK_RUNS = """
SELECT r.id, r.arch, r.dataset, r.train_mode, r.poison
  FROM runs AS r
 WHERE r.id IN (SELECT run_pk FROM early_exit_frontiers WHERE policy = :policy) {terms}
 ORDER BY r.arch, r.dataset, r.train_mode, r.poison, r.run_id
"""
_RANK_CHOICES = """
SELECT run_pk, met, val_accuracy, val_relative_cost
  FROM early_exit_choices
 WHERE policy = :policy AND target = :target AND method = :method
   AND (:delta IS NULL OR delta = :delta)
"""

# Phase 2: everything shown, for the runs kept.
_DETAILS = (
    """
SELECT r.id, r.run_id, r.arch, r.dataset, r.train_mode, r.seed, s.name, r.poison,
       c.met, c.threshold, c.delta, c.val_accuracy, c.val_relative_cost, c.val_exits,
       c.test_accuracy, c.test_relative_cost, c.test_exits,
       c.final_val_accuracy, c.final_test_accuracy
  FROM runs AS r
  JOIN sweeps AS s ON s.id = r.sweep_id"""
    + _CHOICE_JOIN
    + """
 WHERE r.id IN (SELECT value FROM json_each(:ids))
"""
)

_FRONTIERS = """
SELECT run_pk, num_points, num_exits, reference_val, reference_test, points
  FROM early_exit_frontiers
 WHERE policy = :policy AND run_pk IN (SELECT value FROM json_each(:ids))
 ORDER BY run_pk
"""

_GRID = """
SELECT run_pk, split, threshold, accuracy, relative_cost, exits_per_output, harmed
  FROM early_exit_points
 WHERE policy = :policy AND run_pk IN (SELECT value FROM json_each(:ids))
 ORDER BY run_pk, split, threshold
"""

_COSTS = """
SELECT run_pk, exit_index, relative_cost
  FROM exit_results
 WHERE split = 'val' AND run_pk IN (SELECT value FROM json_each(:ids))
 ORDER BY run_pk, exit_index
"""

COLUMNS = [
    "arch",
    "dataset",
    "train_mode",
    "run_id",
    "sweep",
    "seed",
    "poison",
    "runs_in_group",
    "policy",
    "target",
    "method",
    "delta",
    "status",
    "threshold",
    "val_accuracy",
    "val_relative_cost",
    "val_drop",
    "split",
    "accuracy",
    "relative_cost",
    "exits_per_output",
    "final_accuracy",
    "accuracy_drop",
    "val_test_gap",
]

# A run's choice as the details query gives it (after run_id .. sweep name, poison).
_FIELDS = (
    "met",
    "threshold",
    "delta",
    "val_accuracy",
    "val_relative_cost",
    "val_exits",
    "test_accuracy",
    "test_relative_cost",
    "test_exits",
    "final_val_accuracy",
    "final_test_accuracy",
)


def best_early_exit(
    conn: Connection,
    target: Target,
    policy: str,
    delta: float | None,
    split: str,
    per_run: bool,
    terms: dict[str, str],
    params: dict[str, Any],
    as_frame: bool = True,
) -> pd.DataFrame:
    """See ``Catalogue.best_early_exit``. ``terms`` maps filter names to conditions on
    ``runs AS r`` (built from a whitelist; the values are bound in ``params``).

    Two short queries: one row per analysed run for the ranking (stored choices, and choices
    made now for the runs that lack one), then the details of the runs kept. Plain sqlite3
    cursors: at 10,000 rows SQLAlchemy's row objects would cost more than the query.
    """
    if policy not in POLICIES:
        raise choice_error("policy", policy, POLICIES)
    if split not in SPLITS:
        raise choice_error("split", split, SPLITS)
    if delta is not None and not 0.0 < float(delta) < 1.0:
        raise StorageError(f"delta {delta!r} must be in (0, 1), e.g. 0.1")
    method = METHODS[0] if delta is None else METHODS[1]
    where = "".join(f" AND {term}" for term in terms.values())
    values = {
        **params,
        "policy": policy,
        "target": target.name,
        "method": method,
        "delta": None if delta is None else float(delta),
    }
    raw = conn.connection.driver_connection
    runs = raw.execute(_RANK_RUNS.format(terms=where), values).fetchall()
    if not runs:
        return _present([], target, policy, method, split, as_frame)
    stored = {row[0]: row[1:] for row in raw.execute(_RANK_CHOICES, values).fetchall()}
    pks, archs, datasets, modes, poisons = (list(c) for c in zip(*runs, strict=True))
    none = (None, None, None)
    met, val_acc, val_cost = (
        list(c) for c in zip(*(stored.get(pk, none) for pk in pks), strict=True)
    )
    fresh: dict[int, dict[str, Any]] = {}
    missing = [pk for pk, m in zip(pks, met, strict=True) if m is None]
    if missing:
        fresh = _choose_now(raw, missing, target, policy, delta)
        for i, pk in enumerate(pks):
            if pk in fresh:
                met[i], val_acc[i], val_cost[i] = (
                    fresh[pk]["met"],
                    fresh[pk]["val_accuracy"],
                    fresh[pk]["val_relative_cost"],
                )
    keep_pks = [pk for pk, m in zip(pks, met, strict=True) if m is not None]
    position = {pk: i for i, pk in enumerate(pks)}
    rows = np.array([position[pk] for pk in keep_pks], dtype=np.int64)
    new_group = np.zeros(len(pks), dtype=bool)
    new_group[0] = True
    for column in (archs, datasets, modes, poisons):
        values_ = np.asarray(column, dtype=object)
        new_group[1:] |= values_[1:] != values_[:-1]
    groups = (np.cumsum(new_group) - 1)[rows]
    sizes = np.bincount(groups)
    if per_run:
        keep = rows
    else:
        order = group_ranking(
            target,
            np.asarray(met, dtype=object)[rows].astype(bool),
            np.asarray(val_acc, dtype=np.float64)[rows],
            np.asarray(val_cost, dtype=np.float64)[rows],
            groups=groups,
        )
        first = np.ones(order.size, dtype=bool)
        first[1:] = groups[order][1:] != groups[order][:-1]
        keep = np.sort(rows[order[first]])
    kept = [pks[i] for i in keep]
    group_of = dict(zip(rows.tolist(), groups.tolist(), strict=True))
    details = {
        row[0]: row for row in raw.execute(_DETAILS, {**values, "ids": json.dumps(kept)}).fetchall()
    }
    records = []
    for i, pk in zip(keep.tolist(), kept, strict=True):
        row = details[pk]
        choice = dict(zip(_FIELDS, row[8:], strict=True))
        if pk in fresh:
            choice = fresh[pk]
        records.append((row[1:8], choice, int(sizes[group_of[i]])))
    return _present(records, target, policy, method, split, as_frame)


def _present(
    records: list[tuple[tuple[Any, ...], dict[str, Any], int]],
    target: Target,
    policy: str,
    method: str,
    split: str,
    as_frame: bool = True,
) -> pd.DataFrame:
    """The query's columns (``COLUMNS``) from (run identity, choice, runs in group) records;
    ``as_frame=False``: ``(COLUMNS, rows)`` with plain tuples (no pandas)."""
    on = "val" if split == "val" else "test"
    out = []
    for (run_id, arch, dataset, mode, seed, sweep, poison), c, size in records:
        accuracy, final = c[f"{on}_accuracy"], c[f"final_{on}_accuracy"]
        val_drop = c["final_val_accuracy"] - c["val_accuracy"]
        test_drop = (
            None
            if c["test_accuracy"] is None or c["final_test_accuracy"] is None
            else c["final_test_accuracy"] - c["test_accuracy"]
        )
        out.append(
            {
                "arch": arch,
                "dataset": dataset,
                "train_mode": mode,
                "run_id": run_id,
                "sweep": sweep,
                "seed": seed,
                "poison": poison,
                "runs_in_group": size,
                "policy": policy,
                "target": target.name,
                "method": method,
                "delta": c["delta"] if method == "certified" else None,
                "status": unmet_label(bool(c["met"]), method),
                "threshold": _threshold(c["threshold"]),
                "val_accuracy": c["val_accuracy"],
                "val_relative_cost": c["val_relative_cost"],
                "val_drop": val_drop,
                "split": split,
                "accuracy": accuracy,
                "relative_cost": c[f"{on}_relative_cost"],
                "exits_per_output": _exits(c[f"{on}_exits"]),
                "final_accuracy": final,
                "accuracy_drop": None if accuracy is None or final is None else final - accuracy,
                "val_test_gap": None if test_drop is None else test_drop - val_drop,
            }
        )
    if not as_frame:
        return COLUMNS, [tuple(r[c] for c in COLUMNS) for r in out]  # type: ignore[return-value]
    import pandas as pd

    frame = pd.DataFrame(out, columns=COLUMNS)
    # object dtype: None (early exit off) stays None instead of becoming NaN
    frame["threshold"] = pd.Series([r["threshold"] for r in out], dtype=object)
    return frame


def _threshold(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _exits(value: Any) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return json.loads(value)
    return [int(v) for v in value]


# ---------------------------------------------------------------------------- ad-hoc targets
def _choose_now(
    raw: Any, missing: list[int], target: Target, policy: str, delta: float | None
) -> dict[int, dict[str, Any]]:
    """Choices made now from the stored curves, for runs without a stored one (by run_pk)."""
    ids = json.dumps(missing)
    if delta is None:
        found = raw.execute(_FRONTIERS, {"policy": policy, "ids": ids}).fetchall()
        return _choose_on_frontiers(found, target)
    return {
        pk: choice_row(choice)
        for pk, choice in _certify_on_grids(raw, ids, target, policy, float(delta)).items()
    }


def _choose_on_frontiers(found: list[Any], target: Target) -> dict[int, dict[str, Any]]:
    """The empirical rule over every stored frontier at once: ``choose_indices`` (what
    ``Frontier.choose`` calls for one run) on the frontiers laid end to end."""
    if not found:
        return {}
    numbers, counts, starts, refs = [], [], [], []
    offset = 0
    for _pk, f, e, ref_val, _ref_test, points in found:
        numbers.append(np.frombuffer(points, dtype="<f8", count=f * 5).reshape(f, 5))
        counts.append(np.frombuffer(points, dtype="<i4", offset=f * 40).reshape(f, 2 * e))
        starts.append(offset)
        refs.append(ref_val)
        offset += f
    table = np.concatenate(numbers)
    index, met = choose_indices(
        table[:, 1], table[:, 2], np.asarray(starts), np.asarray(refs), target
    )
    chosen = table[index]
    out = {}
    for i, (pk, _f, e, ref_val, ref_test, _points) in enumerate(found):
        row = chosen[i]
        local = int(index[i]) - starts[i]
        exits = counts[i][local]
        has_test = ref_test is not None
        out[int(pk)] = {
            "met": bool(met[i]),
            "threshold": _threshold(row[0]),
            "delta": None,
            "val_accuracy": float(row[1]),
            "val_relative_cost": float(row[2]),
            "val_exits": exits[:e],
            "test_accuracy": float(row[3]) if has_test else None,
            "test_relative_cost": float(row[4]) if has_test else None,
            "test_exits": exits[e:] if has_test else None,
            "final_val_accuracy": float(ref_val),
            "final_test_accuracy": ref_test,
        }
    return out


def _certify_on_grids(
    raw: Any, ids: str, target: Target, policy: str, delta: float
) -> dict[int, Choice]:
    """The certified rule over every run's stored validation grid curve (``certify``)."""
    grid = raw.execute(_GRID, {"policy": policy, "ids": ids}).fetchall()
    costs = raw.execute(_COSTS, {"ids": ids}).fetchall()
    refs = raw.execute(
        "SELECT run_pk, reference_val, reference_test FROM early_exit_frontiers "
        "WHERE policy = :policy AND run_pk IN (SELECT value FROM json_each(:ids))",
        {"policy": policy, "ids": ids},
    ).fetchall()
    per_run_costs: dict[int, list[float]] = {}
    for run_pk, _k, cost in costs:
        per_run_costs.setdefault(int(run_pk), []).append(float(cost))
    curves: dict[tuple[int, str], list[Any]] = {}
    for row in grid:
        curves.setdefault((int(row[0]), row[1]), []).append(row)
    choices = {}
    for run_pk, ref_val, ref_test in refs:
        run_pk = int(run_pk)
        val = _curve(curves.get((run_pk, "val"), []), policy)
        test = _curve(curves.get((run_pk, "test"), []), policy)
        if val is None or run_pk not in per_run_costs:
            continue
        choices[run_pk] = certify(
            val, test, float(ref_val), ref_test, per_run_costs[run_pk], target, delta
        )
    return choices


def _curve(rows: list[Any], policy: str) -> EarlyExitCurve | None:
    if not rows or any(r[6] is None for r in rows):
        return None
    counts = np.array([_exits(r[5]) for r in rows], dtype=np.int64)
    return EarlyExitCurve(
        thresholds=np.array([r[2] for r in rows], dtype=np.float64),
        accuracy=np.array([r[3] for r in rows], dtype=np.float64),
        relative_cost=np.array([r[4] for r in rows], dtype=np.float64),
        exit_counts=counts,
        harmed=np.array([r[6] for r in rows], dtype=np.int64),
        num_samples=int(counts[0].sum()),
        policy=policy,
    )
