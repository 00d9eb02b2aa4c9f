"""Overview: what the sweep is (grid, targets, code), where each cell stands, and how long it took."""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime
from typing import Any

import pandas as pd

from workflows.report import section
from workflows.report.context import ReportContext, anchor
from workflows.report.html import (
    Block,
    Cell,
    Column,
    Facts,
    Html,
    Note,
    Table,
    badge,
    esc,
    plain,
)
from workflows.report.sections.common import identity_cells, identity_columns
from workflows.report.style import arch_sort_key, mode_sort_key


def _time(value: Any) -> datetime | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return None
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return pd.Timestamp(value).to_pydatetime()


def seconds(run: Any) -> float | None:
    """How long the run took (its recorded start to end), or None."""
    start, end = _time(run.started_at), _time(run.ended_at)
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def duration(value: float | None) -> str:
    """12 s, 3 min 05 s, 2 h 07 min."""
    if value is None:
        return ""
    s = round(value)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def _sweep_rows(ctx: ReportContext) -> pd.DataFrame:
    names = sorted(set(ctx.runs["sweep"]))
    return ctx.cat.sql(
        "SELECT name, spec, code_version, created_at, updated_at FROM sweeps WHERE name IN ("
        + ", ".join("?" * len(names))
        + ") ORDER BY name",
        tuple(names),
    )


def _targets(spec: dict[str, Any]) -> str:
    analysis = spec.get("analysis") or {}
    drops = analysis.get("max_accuracy_drops") or []
    budgets = analysis.get("cost_budgets") or []
    parts = []
    if drops:
        parts.append("max drop " + ", ".join(f"{100 * float(d):g}" for d in drops) + " pt")
    if budgets:
        parts.append("budget " + ", ".join(f"{float(b):.2f}" for b in budgets))
    if analysis.get("delta") is not None:
        parts.append(f"certified at delta {float(analysis['delta']):g}")
    return "; ".join(parts)


def _facts(ctx: ReportContext) -> list[tuple[str, Any]]:
    runs = ctx.runs
    sweeps = _sweep_rows(ctx)
    spec = (
        sweeps["spec"].iloc[0]
        if len(sweeps) == 1 and isinstance(sweeps["spec"].iloc[0], dict)
        else {}
    )
    archs = sorted(set(runs["arch"]), key=arch_sort_key)
    modes = sorted(set(runs["train_mode"]), key=mode_sort_key)
    grid = (
        f"{len(archs)} architectures ({', '.join(archs)}) x {runs['dataset'].nunique()} data set(s) "
        f"({', '.join(sorted(set(runs['dataset'])))}) x {len(modes)} modes ({', '.join(modes)}) x "
        f"{runs['seed'].nunique()} seed(s) = {len(runs)} runs"
    )
    statuses = Counter(runs["status"])
    status = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
    times = [seconds(r) for r in runs.itertuples()]
    known = [t for t in times if t is not None]
    starts = [t for t in (_time(v) for v in runs["started_at"]) if t is not None]
    ends = [t for t in (_time(v) for v in runs["ended_at"]) if t is not None]
    wall = (max(ends) - min(starts)).total_seconds() if starts and ends else None
    training = spec.get("training") or {}
    facts: list[tuple[str, Any]] = [
        ("sweep" if ctx.kind == "sweep" else "run", ctx.target),
        ("grid", grid),
        ("status", status),
        ("first start (UTC)", min(starts).strftime("%Y-%m-%d %H:%M") if starts else None),
        ("wall time", duration(wall)),
        ("run time, summed", duration(sum(known)) if known else ""),
    ]
    if training:
        schedule = ", ".join(
            f"{k} {training[k]}" for k in ("epochs", "batch_size", "width") if k in training
        )
        facts.append(("training", schedule))
    if _targets(spec):
        facts.append(("early-exit targets", _targets(spec)))
    codes = sorted({str(c) for c in runs["code_version"] if plain(c)})
    facts.append(
        (
            "code version",
            ", ".join(codes) or (sweeps["code_version"].iloc[0] if len(sweeps) else ""),
        )
    )
    return facts


def _grid(ctx: ReportContext) -> Html:
    """Architecture (x data set, seed) by mode, each cell the run's status, linked."""
    runs = ctx.ordered(ctx.runs)
    modes = sorted(set(runs["train_mode"]), key=mode_sort_key)
    keys: dict[tuple[Any, ...], dict[str, Any]] = {}
    for run in runs.itertuples():
        keys.setdefault((run.arch, run.dataset, run.seed), {})[run.train_mode] = run
    head = "".join(f"<th>{esc(m)}</th>" for m in modes)
    rows = []
    for (arch, dataset, seed), cells in keys.items():
        name = " ".join(
            str(p) for p in (arch, dataset if ctx.runs["dataset"].nunique() > 1 else None,
                             f"s{seed}" if ctx.runs["seed"].nunique() > 1 else None) if p is not None
        )  # fmt: skip
        tds = []
        for mode in modes:
            run = cells.get(mode)
            if run is None:
                tds.append("<td></td>")
                continue
            tds.append(f'<td><a href="#{esc(anchor(run.run_id))}">{badge(run.status)}</a></td>')
        rows.append(f"<tr><th>{esc(name)}</th>{''.join(tds)}</tr>")
    return Html(
        '<div class="tablewrap" style="display:inline-block"><table class="grid">'
        f"<thead><tr><th></th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


@section("overview", "Overview", order=10)
def overview(ctx: ReportContext) -> list[Block]:
    runs = ctx.ordered(ctx.runs)
    best_val = (
        ctx.exits[ctx.exits["split"] == "val"].groupby("run_id")["accuracy"].max().to_dict()
        if not ctx.exits.empty else {}
    )  # fmt: skip
    columns = [
        *identity_columns(ctx),
        Column("mode"),
        Column("status"),
        Column("epochs", "int"),
        Column("best val", "pct", "highest validation accuracy of any exit"),
        Column("registered model", title="name and version in the MLflow model registry"),
        Column("MLflow run", title="the run's id in the sweep's MLflow experiment"),
        Column("started (UTC)", "time"),
        Column("took", "text"),
    ]
    rows = []
    for run in runs.itertuples():
        took = seconds(run)
        model = (
            f"{plain(run.model_name)} v{plain(run.model_version)}"
            if plain(run.model_name) and plain(run.model_version) is not None
            else plain(run.model_name)
        )
        mlflow_run = plain(run.mlflow_run_id) or ""
        rows.append([
            *identity_cells(ctx, run),
            run.train_mode,
            Cell(run.status, run.status, badge(run.status)),
            plain(run.epochs),
            best_val.get(run.run_id),
            model,
            Cell(mlflow_run, mlflow_run, f'<span class="mono">{esc(mlflow_run)}</span>'),
            run.started_at,
            Cell(duration(took), took),
        ])  # fmt: skip
    blocks: list[Block] = [Facts(_facts(ctx)), _grid(ctx)]
    failed = runs[[bool(plain(e)) for e in runs["error"]]]
    for run in failed.itertuples():
        blocks.append(Note(f"{ctx.label(run)}: {run.error}", muted=False))
    blocks.append(Table("runs", columns, rows, caption=f"{len(rows)} runs; click a header to sort"))
    return blocks
