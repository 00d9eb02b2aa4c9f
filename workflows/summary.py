"""The tables a finished sweep ends with, read back from the catalogue (so they show exactly what
was recorded): per-exit test accuracy of every run, the early-exit operating points chosen on
validation, and the overthinking figures."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from sdn.early_exit import Target, format_threshold
from workflows.spec import SweepSpec
from workflows.sweep import SweepOutcome


def _pct(value: float | None) -> str:
    return "" if value is None or value != value else f"{100 * value:.1f}"


def summary_target(spec: SweepSpec) -> Target:
    """The target the end-of-sweep table shows: a 1-point drop if the sweep stores it, else the
    sweep's first drop (so the table reads a stored choice, never one made up for display)."""
    drops = spec.analysis.max_accuracy_drops
    return Target("max_drop", 0.01 if 0.01 in drops else drops[0])


def print_summary(spec: SweepSpec, outcome: SweepOutcome, console: Console) -> None:
    from storage.catalogue import Catalogue

    paths = spec.storage_paths()
    target = summary_target(spec)
    with Catalogue(paths.catalogue) as cat:
        exits = cat.exits(sweep=spec.name, split="test")
        points = cat.best_early_exit(max_accuracy_drop=target.value, per_run=True, sweep=spec.name)
        over = cat.overthinking(sweep=spec.name)
    console.print(exit_table(exits))
    console.print(early_exit_table(points, over, target))
    minutes = outcome.seconds / 60
    status = (
        "all cells done"
        if outcome.ok
        else (
            f"{len(outcome.failed)} failed, {len(outcome.skipped)} skipped: see `sdn sweep status {spec.name}`"
        )
    )
    console.print(
        f"sweep {spec.name}: {len(outcome.analysed)}/{outcome.total} cells analysed in {minutes:.1f} min; {status}",
        highlight=False,
    )
    console.print(
        f"state in {paths.home}  |  next: sdn catalogue runs --sweep {spec.name} · "
        f"sdn models list · sdn report {spec.name} · mlflow ui --backend-store-uri {paths.mlflow_tracking_uri}",
        highlight=False,
    )


def exit_table(exits) -> Table:
    """Test accuracy (%) of every exit of every run: IC 0 .. IC K-1, then the final head."""
    table = Table(title="test accuracy per exit (%): internal classifiers, then the final head")
    width = int(exits["exit_index"].max()) + 1 if not exits.empty else 1
    for col in ("arch", "dataset", "mode", "seed"):
        table.add_column(col)
    for k in range(width - 1):
        table.add_column(f"IC{k}", justify="right")
    table.add_column("final", justify="right")
    for (arch, dataset, mode, seed), rows in exits.groupby(
        ["arch", "dataset", "train_mode", "seed"], sort=True
    ):
        accs = dict(zip(rows["exit_index"], rows["accuracy"], strict=True))
        final = float(rows.loc[rows["is_final"].astype(bool), "accuracy"].iloc[0])
        cells = [_pct(accs.get(k)) if k < len(accs) - 1 else "" for k in range(width - 1)]
        table.add_row(arch, dataset, mode, str(seed), *cells, _pct(final))
    return table


def early_exit_table(points, over, target: Target) -> Table:
    """The confidence threshold chosen on validation for ``target`` and its test result."""
    table = Table(
        title=f"early exit: confidence threshold chosen on validation ({target.label}), "
        "test results"
    )
    for col in (
        "arch",
        "dataset",
        "mode",
        "seed",
        "q",
        "test acc %",
        "final acc %",
        "rel. cost",
        "target",
        "exits per output",
        "destructive %",
        "conf. AUROC",
        "max-softmax AUROC",
    ):
        table.add_column(col, justify="right" if col not in ("arch", "dataset", "mode") else "left")
    over_by_run = (
        {row.run_id: row for row in over.itertuples(index=False)} if not over.empty else {}
    )
    for row in points.itertuples(index=False):
        o = over_by_run.get(row.run_id)
        table.add_row(
            row.arch,
            row.dataset,
            row.train_mode,
            str(row.seed),
            format_threshold(row.threshold, row.policy),
            _pct(row.accuracy),
            _pct(row.final_accuracy),
            f"{row.relative_cost:.2f}",
            row.status,
            "/".join(str(n) for n in row.exits_per_output),
            _pct(getattr(o, "destructive_fraction", None)),
            f"{o.confusion_auroc:.2f}" if o is not None and o.confusion_auroc is not None else "",
            f"{o.max_softmax_auroc:.2f}"
            if o is not None and o.max_softmax_auroc is not None
            else "",
        )
    return table
