"""The tables a finished sweep ends with, read back from the catalogue (so they show exactly what
was recorded): per-exit test accuracy of every run, the early-exit operating points chosen on
validation, and the overthinking figures; for a sweep with poisoned cells, the backdoor table
(per exit: clean accuracy, triggered accuracy, attack success, next to the clean twin's)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from sdn.early_exit import Target, format_threshold
from workflows.spec import SweepSpec
from workflows.sweep import SweepOutcome


def _pct(value: float | None) -> str:
    return "" if value is None or value != value else f"{100 * value:.1f}"


def mode_label(mode: str, poison: str | None) -> str:
    """``cnn``, or ``cnn (poisoned)`` for a model trained on poisoned data."""
    return f"{mode} (poisoned)" if poison else mode


def summary_target(spec: SweepSpec) -> Target:
    """The target the end-of-sweep table shows: a 1-point drop if the sweep stores it, else the
    sweep's first drop (so the table reads a stored choice, never one made up for display)."""
    return spec.analysis.headline_target()


def print_summary(spec: SweepSpec, outcome: SweepOutcome, console: Console) -> None:
    from storage.catalogue import Catalogue

    paths = spec.storage_paths()
    target = summary_target(spec)
    with Catalogue(paths.catalogue) as cat:
        exits = cat.exits(sweep=spec.name, split="test")
        points = cat.best_early_exit(max_accuracy_drop=target.value, per_run=True, sweep=spec.name)
        over = cat.overthinking(sweep=spec.name)
        backdoor = cat.backdoor(sweep=spec.name) if spec.backdoor is not None else None
        summaries = cat.backdoor_summaries(sweep=spec.name) if backdoor is not None else None
    console.print(exit_table(exits))
    console.print(early_exit_table(points, over, target))
    if backdoor is not None:
        for table in backdoor_tables(backdoor, exits, summaries):
            console.print(table)
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
    for (arch, dataset, mode, seed, poison), rows in _with_poison(exits).groupby(
        ["arch", "dataset", "train_mode", "seed", "poison"], sort=True
    ):
        accs = dict(zip(rows["exit_index"], rows["accuracy"], strict=True))
        final = float(rows.loc[rows["is_final"].astype(bool), "accuracy"].iloc[0])
        cells = [_pct(accs.get(k)) if k < len(accs) - 1 else "" for k in range(width - 1)]
        table.add_row(arch, dataset, mode_label(mode, poison), str(seed), *cells, _pct(final))
    return table


def _with_poison(frame):
    """``frame`` with a ``poison`` column ('' = clean), for frames built without one."""
    if "poison" not in frame.columns:
        frame = frame.assign(poison="")
    return frame.assign(poison=frame["poison"].fillna(""))


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
            mode_label(row.train_mode, getattr(row, "poison", None)),
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


def backdoor_tables(backdoor, exits, summaries) -> list[Table]:
    """Two tables for a sweep with poisoned cells.

    Per exit of every poisoned run: clean test accuracy, accuracy on triggered inputs (true
    labels) and attack success. Per poisoned run: its final head's clean accuracy next to the
    clean twin's (same arch, data set and seed, trained on clean data: the clean cnn for a
    poisoned cnn and for its ic_only, whose final head is that cnn's), attack success, the
    destructive fraction on triggered inputs, early exit on them at the run's stored threshold,
    and the two detection AUROCs.
    """
    per_exit = Table(
        title="backdoor per exit (test split, %): triggered = the non-target test images with "
        "the trigger; attack success = answered with the target"
    )
    for col in ("arch", "dataset", "mode", "seed", "exit", "clean acc", "triggered acc", "attack"):
        per_exit.add_column(col, justify="left" if col in ("arch", "dataset", "mode") else "right")
    for row in backdoor.sort_values(
        ["arch", "dataset", "train_mode", "seed", "run_id", "exit_index"]
    ).itertuples():
        per_exit.add_row(
            row.arch,
            row.dataset,
            mode_label(row.train_mode, row.poison),
            str(row.seed),
            "final" if row.is_final else f"IC{row.exit_index}",
            _pct(row.clean_accuracy),
            _pct(row.triggered_accuracy),
            _pct(row.attack_success),
        )
    per_run = Table(
        title="backdoor per poisoned run (test split, %): clean accuracy vs the clean twin's; "
        "attack success at the final head; destr. = destructive overthinking on triggered inputs; "
        "EE = early exit on them at the threshold chosen on clean val; AUC: triggered vs clean"
    )
    for col in (
        "arch",
        "dataset",
        "mode",
        "seed",
        "twin",
        "clean",
        "gap",
        "attack",
        "destr.",
        "EE q",
        "EE acc",
        "EE att.",
        "EE cost",
        "conf. AUC",
        "softmax AUC",
    ):
        per_run.add_column(col, justify="left" if col in ("arch", "dataset", "mode") else "right")
    clean = _with_poison(exits)
    clean = clean[(clean["poison"] == "") & clean["is_final"].astype(bool)]
    twins = {(r.arch, r.dataset, r.train_mode, r.seed): r.accuracy for r in clean.itertuples()}
    finals = backdoor[backdoor["is_final"].astype(bool)].set_index("run_id")
    for s in summaries.sort_values(
        ["arch", "dataset", "train_mode", "seed", "run_id"]
    ).itertuples():
        final = finals.loc[s.run_id]
        twin = twins.get(
            (s.arch, s.dataset, "cnn" if s.train_mode == "ic_only" else s.train_mode, s.seed)
        )
        gap = "" if twin is None else f"{100 * (final.clean_accuracy - twin):+.1f}"
        early = _nan_none(s.early_exit_accuracy) is not None
        per_run.add_row(
            s.arch,
            s.dataset,
            s.train_mode,
            str(s.seed),
            _pct(twin),
            _pct(final.clean_accuracy),
            gap,
            _pct(final.attack_success),
            _pct(s.destructive_fraction),
            format_threshold(_nan_none(s.early_exit_threshold)) if early else "",
            _pct(s.early_exit_accuracy) if early else "",
            _pct(s.early_exit_attack_success) if early else "",
            f"{s.early_exit_relative_cost:.2f}" if early else "",
            "" if _nan_none(s.confusion_auroc) is None else f"{s.confusion_auroc:.2f}",
            "" if _nan_none(s.max_softmax_auroc) is None else f"{s.max_softmax_auroc:.2f}",
        )
    return [per_exit, per_run]


def _nan_none(value):
    return None if value is None or value != value else value
