"""The ``sdn`` command line: sweeps, the catalogue, registered models and reports.

Exit codes (every command):
  0  success
  1  the work ran but part of it failed (a sweep with failed or skipped cells)
  2  bad input: a user mistake, reported on one line, nothing written
  3  a service could not be reached (Ray, MLflow)
  130 interrupted (Ctrl-C); `sdn sweep resume NAME` continues a sweep
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

# Typer >= 0.24 vendors click: its usage errors are these classes, not the click package's.
from typer._click import exceptions as click_errors
from typer.core import TyperGroup

from sdn.errors import SDNError
from workflows.console import make_console

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

console = make_console()
err_console = make_console(stderr=True)


class OneLineErrors(TyperGroup):
    """The ``sdn`` group: a usage mistake (unknown option or command, a value of the wrong type,
    a missing argument) is one ``error:`` line and exit 2, like every other bad input, instead of
    click's block of usage text. ``sdn`` or a group alone still prints its help."""

    def main(  # type: ignore[override]
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click_errors.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click_errors.ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            message = " ".join(exc.format_message().split())
            err_console.print(
                f"error: {message}{hint}", highlight=False, markup=False, soft_wrap=True
            )
            sys.exit(exc.exit_code)
        except typer.Abort:
            err_console.print("error: aborted", highlight=False, markup=False)
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(code if isinstance(code, int) else EXIT_OK)


app = typer.Typer(
    cls=OneLineErrors,
    name="sdn",
    help="Shallow-Deep Networks at scale: sweeps on Ray Tune, a results catalogue, an MLflow "
    "model registry and early-exit inference.\n\nExit codes: 0 ok, 1 partly failed, 2 bad input, "
    "3 service unreachable, 130 interrupted.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
sweep_app = typer.Typer(help="Launch, resume and inspect sweeps.", no_args_is_help=True)
catalogue_app = typer.Typer(help="Query the results catalogue (SQLite).", no_args_is_help=True)
models_app = typer.Typer(
    help="Registered models: list, fetch, early-exit inference.", no_args_is_help=True
)
app.add_typer(sweep_app, name="sweep")
app.add_typer(catalogue_app, name="catalogue")
app.add_typer(models_app, name="models")

F = TypeVar("F", bound=Callable[..., Any])


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def fail(message: str, code: int = EXIT_USAGE) -> None:
    err_console.print(f"error: {message}", highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(code)


def handled(func: F) -> F:
    """Turn user mistakes into one line on stderr and an exit code, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from workflows.sweep import ServiceUnreachable

        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except ServiceUnreachable as exc:
            fail(_one_line(exc), EXIT_UNREACHABLE)
        except SDNError as exc:
            fail(_one_line(exc), EXIT_USAGE)
        except OSError as exc:  # a full disk, a read-only or vanished path the command needed
            where = f"{exc.filename}: " if exc.filename else ""
            fail(f"{where}{exc.strerror or _one_line(exc)}", EXIT_USAGE)
        except KeyboardInterrupt:
            fail("interrupted; `sdn sweep resume NAME` continues a sweep", EXIT_INTERRUPTED)
        except Exception as exc:
            if os.environ.get("SDN_DEBUG"):
                raise
            fail(
                f"internal error: {type(exc).__name__}: {_one_line(exc)} (set SDN_DEBUG=1 for the traceback)",
                70,
            )

    return wrapper  # type: ignore[return-value]


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines)[:1000] if lines else type(exc).__name__


# --- shared options -------------------------------------------------------------------------------

HomeOpt = Annotated[
    Path | None,
    typer.Option(
        "--home", help="State directory (default: $SDN_HOME, else ./sdn-home).", show_default=False
    ),
]
CatalogueOpt = Annotated[
    Path | None,
    typer.Option(
        "--catalogue",
        help="Catalogue file (default: HOME/catalogue.db or $SDN_CATALOGUE).",
        show_default=False,
    ),
]
FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="Output format.")]


def _home(home: Path | None) -> Path:
    return Path(home or os.environ.get("SDN_HOME") or "sdn-home").expanduser().absolute()


def _catalogue_path(home: Path | None, catalogue: Path | None) -> Path:
    if catalogue is not None:
        return catalogue.expanduser().absolute()
    if os.environ.get("SDN_CATALOGUE"):
        return Path(os.environ["SDN_CATALOGUE"]).expanduser().absolute()
    return _home(home) / "catalogue.db"


def open_catalogue(home: Path | None, catalogue: Path | None):
    """An existing catalogue (never creates one: a query must not write anything)."""
    from storage.catalogue import Catalogue

    path = _catalogue_path(home, catalogue)
    if not path.exists():
        raise SDNError(f"no catalogue at {path}; launch a sweep first or pass --home/--catalogue")
    return Catalogue(path)


def _tracking_uri(home: Path | None, tracking_uri: str | None) -> str:
    if tracking_uri:
        return tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    db = _home(home) / "mlflow.db"
    if not db.exists():
        raise SDNError(
            f"no MLflow store at {db}; launch a sweep first, or pass --tracking-uri/--home"
        )
    return f"sqlite:///{db}"


TrackingOpt = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///HOME/mlflow.db).",
    ),
]


def emit(df, fmt: Format, title: str | None = None) -> None:
    """Print a DataFrame as a table, CSV or JSON (records)."""
    import pandas as pd

    if fmt is Format.csv:
        sys.stdout.write(df.to_csv(index=False))
    elif fmt is Format.json:
        sys.stdout.write(records_json(df) + "\n")
    else:
        from rich.table import Table

        table = Table(title=title)
        for col in df.columns:
            table.add_column(str(col), overflow="fold")
        for row in df.itertuples(index=False):
            table.add_row(*[_cell(v) for v in row])
        console.print(table)
        if df.empty:
            console.print("(no rows)")
    _ = pd


def records_json(df) -> str:
    """The rows as a JSON list of objects, numbers exactly as stored (pandas' ``to_json`` keeps 10
    significant digits): floats by ``repr``, NaN as null, times in ISO 8601."""
    import math

    import pandas as pd

    def plain(value: Any) -> Any:
        if value is None or value is pd.NaT:
            return None
        if hasattr(value, "isoformat"):
            return value.isoformat()
        if hasattr(value, "item") and not isinstance(value, list | dict):
            value = value.item()  # NumPy scalars
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if value is None or isinstance(value, bool | int | float | str):
            return value
        return str(value)

    rows = [
        {str(k): plain(v) for k, v in zip(df.columns, row, strict=True)}
        for row in df.itertuples(index=False, name=None)
    ]
    return json.dumps(rows, ensure_ascii=False)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if value != value else f"{value:.4g}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


# --- sweep -----------------------------------------------------------------------------------------


@sweep_app.command("launch")
@handled
def sweep_launch(
    file: Annotated[
        Path | None, typer.Argument(help="Sweep YAML file.", show_default=False)
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option("--preset", help="A shipped preset: quickstart, cifar10-small, paper."),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            help="Ray cluster address (HOST:PORT or auto); default: $RAY_ADDRESS or a local Ray.",
        ),
    ] = None,
    home: HomeOpt = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Live progress table.")
    ] = True,
) -> None:
    """Train, analyse and catalogue every cell of a sweep. Launching again resumes it."""
    from workflows.spec import load_preset, load_sweep

    if (file is None) == (preset is None):
        raise SDNError("give either a sweep FILE or --preset NAME (not both)")
    spec = load_sweep(file) if file is not None else load_preset(preset)
    _run_sweep(spec, address, home, progress)


@sweep_app.command("resume")
@handled
def sweep_resume(
    name: Annotated[str, typer.Argument(help="Name of a sweep launched before.")],
    address: Annotated[str | None, typer.Option("--address", help="Ray cluster address.")] = None,
    home: HomeOpt = None,
    catalogue: CatalogueOpt = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Continue an interrupted sweep with the spec it was launched with; finished cells are kept."""
    from workflows.sweep import stored_spec

    if home is not None:
        os.environ["SDN_HOME"] = str(_home(home))
    spec = stored_spec(_catalogue_path(home, catalogue), name)
    _run_sweep(spec, address, home, progress)


def _run_sweep(spec, address: str | None, home: Path | None, progress: bool) -> None:
    from workflows.summary import print_summary
    from workflows.sweep import launch

    if home is not None:
        os.environ["SDN_HOME"] = str(_home(home))
    try:
        outcome = launch(spec, address=address, console=console, progress=progress)
    except KeyboardInterrupt:
        fail(f"interrupted; `sdn sweep resume {spec.name}` continues the sweep", EXIT_INTERRUPTED)
    print_summary(spec, outcome, console)
    if not outcome.ok:
        raise typer.Exit(EXIT_FAILED)


@sweep_app.command("status")
@handled
def sweep_status(
    name: Annotated[str | None, typer.Argument(help="Sweep name (default: all sweeps).")] = None,
    home: HomeOpt = None,
    catalogue: CatalogueOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Each run's status, epochs, MLflow run and registered version."""
    with open_catalogue(home, catalogue) as cat:
        filters = {"sweep": name} if name else {}
        if name and cat.sql("SELECT 1 FROM sweeps WHERE name = ?", (name,)).empty:
            raise SDNError(f"unknown sweep {name!r}; `sdn sweep list` shows the known ones")
        df = cat.runs(**filters)
    cols = [
        c
        for c in (
            "run_id",
            "arch",
            "dataset",
            "mode",
            "seed",
            "status",
            "epochs",
            "model_name",
            "model_version",
            "started_at",
            "ended_at",
            "error",
        )
        if c in df.columns
    ]
    emit(df[cols], fmt, title=f"sweep {name}" if name else "all runs")


@sweep_app.command("list")
@handled
def sweep_list(
    home: HomeOpt = None, catalogue: CatalogueOpt = None, fmt: FormatOpt = Format.table
) -> None:
    """Every sweep in the catalogue with its run counts by status."""
    with open_catalogue(home, catalogue) as cat:
        df = cat.sql(
            "SELECT s.name AS sweep, s.created_at, s.code_version, COUNT(r.id) AS runs, "
            "SUM(r.status = 'done') AS done, SUM(r.status = 'failed') AS failed, "
            "SUM(r.status IN ('pending', 'running', 'trained')) AS in_progress "
            "FROM sweeps s LEFT JOIN runs r ON r.sweep_id = s.id GROUP BY s.id ORDER BY s.created_at"
        )
    emit(df, fmt, title="sweeps")


# --- catalogue -------------------------------------------------------------------------------------

ArchOpt = Annotated[list[str] | None, typer.Option("--arch", help="Architecture (repeatable).")]
DatasetOpt = Annotated[list[str] | None, typer.Option("--dataset", help="Data set (repeatable).")]
ModeOpt = Annotated[list[str] | None, typer.Option("--mode", help="Training mode (repeatable).")]
SeedOpt = Annotated[list[int] | None, typer.Option("--seed", help="Seed (repeatable).")]
StatusOpt = Annotated[list[str] | None, typer.Option("--status", help="Run status (repeatable).")]
SweepOpt = Annotated[list[str] | None, typer.Option("--sweep", help="Sweep name (repeatable).")]


def _filters(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v}


@catalogue_app.command("runs")
@handled
def catalogue_runs(
    arch: ArchOpt = None,
    dataset: DatasetOpt = None,
    mode: ModeOpt = None,
    seed: SeedOpt = None,
    status: StatusOpt = None,
    sweep: SweepOpt = None,
    home: HomeOpt = None,
    catalogue: CatalogueOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Runs, filtered by any of architecture / dataset / mode / seed / status / sweep."""
    with open_catalogue(home, catalogue) as cat:
        df = cat.runs(
            **_filters(arch=arch, dataset=dataset, mode=mode, seed=seed, status=status, sweep=sweep)
        )
    emit(
        df.drop(columns=[c for c in ("config",) if c in df.columns and fmt is Format.table]),
        fmt,
        "runs",
    )


@catalogue_app.command("exits")
@handled
def catalogue_exits(
    arch: ArchOpt = None,
    dataset: DatasetOpt = None,
    mode: ModeOpt = None,
    seed: SeedOpt = None,
    sweep: SweepOpt = None,
    split: Annotated[str, typer.Option("--split", help="val or test.")] = "test",
    home: HomeOpt = None,
    catalogue: CatalogueOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Per-exit accuracy and cumulative cost of every run."""
    if split not in ("val", "test"):
        raise SDNError(f"unknown split {split!r}; choose one of: 'val', 'test'")
    with open_catalogue(home, catalogue) as cat:
        df = cat.exits(
            **_filters(arch=arch, dataset=dataset, mode=mode, seed=seed, sweep=sweep, split=split)
        )
    emit(df, fmt, "per-exit accuracy")


PolicyChoice = ("confidence", "entropy", "patience", "all")


@catalogue_app.command("early-exit")
@handled
def catalogue_early_exit(
    max_drop: Annotated[
        float | None,
        typer.Option(
            "--max-drop", help="Largest accuracy drop allowed vs the final head (0.01 = 1 point)."
        ),
    ] = None,
    budget: Annotated[
        float | None, typer.Option("--budget", help="Largest average cost relative to the CNN.")
    ] = None,
    policy: Annotated[
        str,
        typer.Option(
            "--policy",
            help="Exit policy: confidence, entropy, patience, or all (side by side).",
        ),
    ] = "confidence",
    delta: Annotated[
        float | None,
        typer.Option(
            "--delta",
            help="Certified: the target holds on new data with probability >= 1 - DELTA.",
        ),
    ] = None,
    per_run: Annotated[
        bool, typer.Option("--per-run", help="Every run, not only each group's best.")
    ] = False,
    arch: ArchOpt = None,
    dataset: DatasetOpt = None,
    mode: ModeOpt = None,
    sweep: SweepOpt = None,
    home: HomeOpt = None,
    catalogue: CatalogueOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Best early-exit operating point per (architecture, dataset, mode), chosen on validation."""
    from sdn.early_exit import Target

    default = max_drop is None and budget is None
    if default:
        max_drop = 0.01
    if max_drop is not None and budget is not None:
        raise SDNError("give --max-drop or --budget, not both")
    for label, value, hi in (("--max-drop", max_drop, 1.0), ("--budget", budget, 10.0)):
        if value is not None and not 0.0 <= value <= hi:
            raise SDNError(f"{label} must be between 0 and {hi:g} (got {value:g})")
    if budget is not None and budget <= 0:
        raise SDNError(f"--budget must be > 0 (got {budget:g})")
    if delta is not None and not 0.0 < delta < 1.0:
        raise SDNError(f"--delta must be in (0, 1), e.g. 0.1 (got {delta:g})")
    if policy not in PolicyChoice:
        raise SDNError(f"unknown --policy {policy!r}; choose one of: {', '.join(PolicyChoice)}")
    target = Target.of(max_drop, budget)
    policies = PolicyChoice[:-1] if policy == "all" else (policy,)
    filters = _filters(arch=arch, dataset=dataset, mode=mode, sweep=sweep)
    with open_catalogue(home, catalogue) as cat:
        frames = [
            cat.best_early_exit(
                max_accuracy_drop=max_drop,
                cost_budget=budget,
                policy=p,
                delta=delta,
                per_run=per_run,
                **filters,
            )
            for p in policies
        ]
    import pandas as pd

    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if len(frames) > 1 and not df.empty:
        df = df.sort_values(["arch", "dataset", "train_mode", "policy"], kind="stable")
    method = "empirical" if delta is None else f"certified at delta {delta:g}"
    title = (
        f"best early-exit operating points (test, chosen on val): target {target.label}"
        f"{' (default)' if default else ''}, {method}"
    )
    emit(df.reset_index(drop=True), fmt, title)


@catalogue_app.command("overthinking")
@handled
def catalogue_overthinking(
    arch: ArchOpt = None,
    dataset: DatasetOpt = None,
    mode: ModeOpt = None,
    sweep: SweepOpt = None,
    home: HomeOpt = None,
    catalogue: CatalogueOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Overthinking summary: first-correct shares, oracle cost, destructive fraction, confusion AUROC."""
    with open_catalogue(home, catalogue) as cat:
        df = cat.overthinking(**_filters(arch=arch, dataset=dataset, mode=mode, sweep=sweep))
    emit(df, fmt, "overthinking (test split)")


@catalogue_app.command("sql")
@handled
def catalogue_sql(
    query: Annotated[str, typer.Argument(help="One read-only SQL statement.")],
    home: HomeOpt = None,
    catalogue: CatalogueOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Run a read-only SQL query on the catalogue (writes are refused by SQLite itself)."""
    with open_catalogue(home, catalogue) as cat:
        df = cat.sql(query)
    emit(df, fmt)


@catalogue_app.command("rebuild")
@handled
def catalogue_rebuild(
    home: HomeOpt = None,
    catalogue: CatalogueOpt = None,
    tracking_uri: TrackingOpt = None,
    predictions: Annotated[
        Path | None, typer.Option("--predictions", help="Parquet root (default HOME/predictions).")
    ] = None,
) -> None:
    """Rebuild the catalogue from the Parquet files and MLflow alone (it is derived data)."""
    from storage.catalogue.rebuild import rebuild

    path = _catalogue_path(home, catalogue)
    root = (predictions or _home(home) / "predictions").absolute()
    if not root.exists():
        raise SDNError(f"no predictions at {root}; pass --predictions")
    counts = rebuild(path, root, _tracking_uri(home, tracking_uri))
    console.print(f"rebuilt {path}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))


# --- models ----------------------------------------------------------------------------------------


@models_app.command("list")
@handled
def models_list(
    home: HomeOpt = None, tracking_uri: TrackingOpt = None, fmt: FormatOpt = Format.table
) -> None:
    """Registered models with their versions, aliases and tags."""
    from storage.registry import Registry

    df = Registry(_tracking_uri(home, tracking_uri)).list_models()
    emit(df, fmt, "registered models")


@models_app.command("get")
@handled
def models_get(
    ref: Annotated[str, typer.Argument(help="NAME@ALIAS, NAME/VERSION, or runs:/RUN_ID.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the state dict and config here.")
    ] = None,
    home: HomeOpt = None,
    tracking_uri: TrackingOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Resolve a registered model, rebuild it, and describe it (optionally save it to a folder)."""
    import pandas as pd

    from storage.registry import Registry

    registry = Registry(_tracking_uri(home, tracking_uri))
    version = registry.resolve(ref)
    model = registry.load_module(version)
    info: dict[str, Any] = {
        "name": version.name,
        "version": version.version,
        "run_id": version.run_id,
        **{f"config.{k}": v for k, v in model.config.items()},
    }
    if hasattr(model, "exit_costs"):
        costs = model.exit_costs()
        info["relative_costs"] = [round(c / model.cnn_cost(), 4) for c in costs]
    info["parameters"] = sum(p.numel() for p in model.parameters())
    if out is not None:
        import torch

        out.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out / "model.pt")
        (out / "model_config.json").write_text(json.dumps(model.config, indent=2), encoding="utf-8")
        info["saved_to"] = str(out.absolute())
    emit(pd.DataFrame([{"field": k, "value": _cell(v)} for k, v in info.items()]), fmt, ref)


@models_app.command("predict")
@handled
def models_predict(
    ref: Annotated[str, typer.Argument(help="NAME@ALIAS, NAME/VERSION, or runs:/RUN_ID.")],
    images: Annotated[
        list[Path] | None, typer.Argument(help="Image files to classify.", show_default=False)
    ] = None,
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="Classify a data set's split instead of files.")
    ] = None,
    split: Annotated[str, typer.Option("--split", help="val or test (with --dataset).")] = "test",
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many samples.")] = 20,
    threshold: Annotated[
        float | None,
        typer.Option("--threshold", help="Exit at the first IC this confident (0..1)."),
    ] = None,
    max_drop: Annotated[
        float | None,
        typer.Option(
            "--max-drop",
            help="Pick the threshold on validation: cheapest within this accuracy drop.",
        ),
    ] = None,
    budget: Annotated[
        float | None,
        typer.Option("--budget", help="Pick the threshold on validation for this relative cost."),
    ] = None,
    policy: Annotated[
        str, typer.Option("--policy", help="Exit policy: confidence, entropy or patience.")
    ] = "confidence",
    delta: Annotated[
        float | None,
        typer.Option("--delta", help="With --max-drop/--budget: certified at this risk level."),
    ] = None,
    data_root: Annotated[Path | None, typer.Option("--data-root", help="Data set root.")] = None,
    home: HomeOpt = None,
    catalogue: CatalogueOpt = None,
    tracking_uri: TrackingOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Early-exit inference with a registered model: each prediction, its exit and its cost."""
    from workflows.predict import predict

    df, note, _chosen = predict(
        ref,
        _tracking_uri(home, tracking_uri),
        images=images or [],
        dataset=dataset,
        split=split,
        limit=limit,
        threshold=threshold,
        budget=budget,
        max_drop=max_drop,
        policy=policy,
        delta=delta,
        data_root=str(data_root) if data_root else None,
        catalogue_path=_catalogue_path(home, catalogue),
    )
    emit(df, fmt, note)


# --- report ----------------------------------------------------------------------------------------


@app.command("report")
@handled
def report(
    target: Annotated[str, typer.Argument(help="A run id or a sweep name.")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for the PNGs (default HOME/reports/TARGET)."),
    ] = None,
    home: HomeOpt = None,
    catalogue: CatalogueOpt = None,
    tracking_uri: TrackingOpt = None,
    log_to_mlflow: Annotated[
        bool, typer.Option("--mlflow/--no-mlflow", help="Also log the plots to MLflow.")
    ] = True,
) -> None:
    """PNG plots: accuracy vs cost with operating points, per-IC accuracy, first-correct and
    confusion histograms; written to a folder and logged to MLflow."""
    from workflows.report import make_report

    with open_catalogue(home, catalogue) as cat:
        folder = (out or _home(home) / "reports" / target).absolute()
        uri = _tracking_uri(home, tracking_uri) if log_to_mlflow else None
        files = make_report(
            cat, target, folder, predictions_root=_home(home) / "predictions", tracking_uri=uri
        )
    for f in files:
        console.print(str(f), highlight=False)


def main() -> None:  # pragma: no cover - console script
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
