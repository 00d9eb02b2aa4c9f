"""The ``sdn`` command line: sweeps, the catalogue, registered models and reports.

Exit codes (every command; ``workflows.exit_codes`` is the one mapping):
  0  success
  1  the work ran but part of it failed (a sweep with failed or skipped cells)
  2  bad input: a user mistake or a missing/damaged file, reported on one line, nothing written
  3  a service could not be reached (Ray, an MLflow tracking server)
  130 interrupted (Ctrl-C)

Reads are fast and write nothing: the read commands import neither torch, Ray nor MLflow (only a
command that loads a model or talks to MLflow does), open the catalogue read-only and never
migrate it. Locations come from one resolver (``workflows.paths.resolve_cli``: option >
``$SDN_*`` > home); nothing here changes the environment. Every listing prints through a table
view (``workflows.views``) and takes ``--format table|csv|json``, ``--columns`` and ``--wide``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

# Typer >= 0.24 vendors click: its usage errors are these classes, not the click package's.
from typer._click import exceptions as click_errors
from typer.core import TyperGroup

from sdn.errors import SDNError
from workflows import inputs, views
from workflows.exit_codes import ExitCode, fail, handled
from workflows.tables import Choice, Format, View, check_columns, emit

SWEEP_HINT = "`sdn sweep resume {name}` continues the sweep"


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
            sys.stderr.write(f"error: {message}{hint}\n")
            sys.exit(exc.exit_code)
        except (typer.Abort, KeyboardInterrupt):
            sys.stderr.write("error: interrupted\n")
            sys.exit(ExitCode.INTERRUPTED)
        sys.exit(code if isinstance(code, int) else ExitCode.OK)


app = typer.Typer(
    cls=OneLineErrors,
    name="sdn",
    help="Shallow-Deep Networks at scale: sweeps on Ray Tune, a results catalogue, an MLflow "
    "model registry and early-exit inference.\n\nExit codes: 0 ok, 1 partly failed, 2 bad input, "
    "3 Ray or MLflow unreachable, 130 interrupted.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
sweep_app = typer.Typer(help="Launch, resume, validate and inspect sweeps.", no_args_is_help=True)
catalogue_app = typer.Typer(
    help="Query the results catalogue (SQLite, opened read-only).", no_args_is_help=True
)
models_app = typer.Typer(
    help="Registered models: list, fetch, early-exit inference.", no_args_is_help=True
)
app.add_typer(sweep_app, name="sweep")
app.add_typer(catalogue_app, name="catalogue")
app.add_typer(models_app, name="models")


def _console() -> Any:
    from workflows.console import make_console

    return make_console()


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
        help="Catalogue file (default: $SDN_CATALOGUE, else HOME/catalogue.db).",
        show_default=False,
    ),
]
TrackingOpt = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow tracking URI (default: $SDN_MLFLOW_TRACKING_URI, $MLFLOW_TRACKING_URI, "
        "else sqlite:///HOME/mlflow.db).",
        show_default=False,
    ),
]
PredictionsOpt = Annotated[
    Path | None,
    typer.Option(
        "--predictions",
        help="Parquet root (default: $SDN_PREDICTIONS, else HOME/predictions).",
        show_default=False,
    ),
]
FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="Output format.")]
ColumnsOpt = Annotated[
    str | None,
    typer.Option(
        "--columns",
        help="Comma-separated columns to show, by key (see --wide or --format json for keys).",
        show_default=False,
    ),
]
WideOpt = Annotated[bool, typer.Option("--wide", help="Every column (the table only).")]
AllowEmptyOpt = Annotated[
    bool,
    typer.Option(
        "--allow-empty",
        help="Accept filter values the catalogue does not hold (an empty answer, not an error).",
    ),
]

ArchOpt = Annotated[list[str] | None, typer.Option("--arch", help="Architecture (repeatable).")]
DatasetOpt = Annotated[list[str] | None, typer.Option("--dataset", help="Data set (repeatable).")]
ModeOpt = Annotated[
    list[str] | None, typer.Option("--mode", help="cnn, ic_only or sdn (repeatable).")
]
SeedOpt = Annotated[list[int] | None, typer.Option("--seed", help="Seed (repeatable).")]
StatusOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--status",
        help="pending, running, trained, done, failed or skipped (repeatable).",
    ),
]
SweepOpt = Annotated[list[str] | None, typer.Option("--sweep", help="Sweep name (repeatable).")]
PoisonOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--poison", help="Poisoning tag, as `sdn catalogue runs --wide` shows (repeatable)."
    ),
]


# --- where things are -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Where:
    """A command's resolved locations and where each came from (for messages)."""

    paths: Any  # workflows.paths.StoragePaths
    sources: dict[str, str]

    def named(self, field: str) -> str:
        source = self.sources[field]
        if source == "default":
            return "the default home"
        return source.replace(" (under home)", "")


def where(
    home: Path | None = None,
    catalogue: Path | None = None,
    predictions: Path | None = None,
    tracking_uri: str | None = None,
) -> Where:
    from workflows.paths import resolve_cli

    paths, sources = resolve_cli(
        home=home, catalogue=catalogue, predictions=predictions, tracking_uri=tracking_uri
    )
    found = Where(paths, sources)
    inputs.home_folder(paths.home, found.named("home"))
    return found


@contextmanager
def read_catalogue(w: Where) -> Iterator[Any]:
    """The catalogue, read-only (storage.catalogue.readonly): nothing is created or migrated."""
    from storage.catalogue.readonly import open_reader

    path = w.paths.catalogue
    if not path.exists():
        raise SDNError(
            f"no catalogue at {path} (from {w.named('catalogue')}); launch a sweep first, or "
            "pass --home or --catalogue"
        )
    with open_reader(path) as reader:
        yield reader


def check_filters(reader: Any, allow_empty: bool, **given: Any) -> dict[str, Any]:
    """The filters given, checked: a mode, status or split must be a word the catalogue uses; an
    architecture, data set, seed or sweep must be one the catalogue holds, unless
    ``allow_empty`` (then it simply matches nothing)."""
    from storage.catalogue.readonly import MODES, STATUSES

    fixed = {"mode": MODES, "status": STATUSES}
    out = {}
    for name, values in given.items():
        if not values:
            continue
        option = f"--{name}"
        if name in fixed:
            for value in values:
                inputs.one_of(value, option, fixed[name])
        elif not allow_empty:
            known = reader.known_values(name)
            missing = [v for v in values if v not in known]
            if missing:
                # '' is a clean run's poisoning: shown so that it reads as a value.
                shown = ["'' (clean)" if v == "" else str(v) for v in known]
                held = ", ".join(shown) if known else "none yet"
                raise SDNError(
                    f"{option} {', '.join(map(repr, missing))}: not in the catalogue; it holds: "
                    f"{held} (--allow-empty accepts an empty answer)"
                )
        out[name] = values
    return out


def choice_of(view: View, fmt: Format, columns: str | None, wide: bool) -> Choice:
    choice = Choice.parse(fmt, columns, wide)
    if not view.open:
        check_columns(view, choice)
    return choice


def show(rows: Any, view: View, choice: Choice, notes: tuple[str, ...] = (), **kw: Any) -> None:
    emit(
        rows,
        view,
        choice,
        notes=notes,
        console=_console() if choice.fmt is Format.table else None,
        **kw,
    )


def check_tracking(w: Where) -> str:
    """The tracking URI, usable for reading: a server that answers (else exit 3, within seconds),
    or an existing MLflow database (never created or migrated by a read)."""
    from urllib.parse import unquote

    uri = w.paths.mlflow_tracking_uri
    source = w.named("mlflow_tracking_uri")
    if uri.startswith(("http://", "https://")):
        from storage.mlflow_setup import ensure_tracking_store

        ensure_tracking_store(uri, attempts=2, timeout_s=2.0)
        return uri
    if uri.startswith("sqlite:///"):
        path = Path(unquote(uri[len("sqlite:///") :]))
        if not path.is_file():
            raise SDNError(
                f"no MLflow store at {path} (from {source}); launch a sweep first, or pass "
                "--tracking-uri or --home"
            )
        _check_mlflow_file(path)
    return uri


def _check_mlflow_file(path: Path) -> None:
    """An MLflow SQLite store: its tables are there (an empty file is not initialised)."""
    import sqlite3

    from storage.catalogue.db import read_only_uri

    try:
        if path.stat().st_size == 0:
            raise SDNError(f"MLflow store {path} is an empty file, not an MLflow database")
        con = sqlite3.connect(read_only_uri(path), uri=True, timeout=5.0)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise SDNError(f"MLflow store {path} cannot be read: {exc}") from None
    if not {"experiments", "alembic_version"} <= tables:
        raise SDNError(f"{path} is not an MLflow database (no experiments table)")


# --- sweep -----------------------------------------------------------------------------------------

AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="Ray cluster address (HOST:PORT or auto); default: $RAY_ADDRESS or a local Ray.",
    ),
]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Live progress table.")]
PresetOpt = Annotated[
    str | None,
    typer.Option(
        "--preset",
        help="A shipped preset: quickstart, cifar10-small, paper, backdoor-quick, backdoor.",
    ),
]
FileArg = Annotated[Path | None, typer.Argument(help="Sweep YAML file.", show_default=False)]


def _load_spec(file: Path | None, preset: str | None) -> Any:
    from workflows.spec import load_preset, load_sweep

    inputs.exactly_one({"a sweep FILE": file, "--preset NAME": preset})
    return load_sweep(file) if file is not None else load_preset(preset)


def _with_home(spec: Any, home: Path | None) -> Any:
    """The spec with ``--home`` as its storage home (the file's own setting may not conflict)."""
    if home is None:
        return spec
    home = home.expanduser().absolute()
    inputs.home_folder(home, "--home")
    if spec.storage.home and Path(spec.storage.home).expanduser().absolute() != home:
        raise SDNError(
            f"--home {home} conflicts with the sweep's storage.home {spec.storage.home}; "
            "give one of them"
        )
    storage = spec.storage.model_copy(update={"home": str(home)})
    return spec.model_copy(update={"storage": storage})


@sweep_app.command("launch")
@handled()  # _run_sweep names the sweep to resume once there is one
def sweep_launch(
    file: FileArg = None,
    preset: PresetOpt = None,
    address: AddressOpt = None,
    home: HomeOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Train, analyse and catalogue every cell of a sweep. Launching again resumes it."""
    spec = _with_home(_load_spec(file, preset), home)
    _run_sweep(spec, address, progress)


@sweep_app.command("resume")
@handled(SWEEP_HINT)
def sweep_resume(
    name: Annotated[str, typer.Argument(help="Name of a sweep launched before.")],
    address: AddressOpt = None,
    home: HomeOpt = None,
    catalogue: CatalogueOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Continue an interrupted sweep with the spec it was launched with; finished cells are kept."""
    from workflows.spec import sweep_from_dict

    w = where(home, catalogue)
    with read_catalogue(w) as reader:
        data = reader.sweep_spec(name)
        if data is None:
            known = ", ".join(reader.known_values("sweep")) or "none"
            raise SDNError(f"unknown sweep {name!r} in {w.paths.catalogue}; known sweeps: {known}")
    spec = _with_home(sweep_from_dict(data, label=f"stored sweep {name!r}"), home)
    _run_sweep(spec, address, progress)


def _run_sweep(spec: Any, address: str | None, progress: bool) -> None:
    from workflows.summary import print_summary
    from workflows.sweep import launch

    console = _console()
    try:
        outcome = launch(spec, address=address, console=console, progress=progress)
    except KeyboardInterrupt:
        fail(
            f"interrupted; `sdn sweep resume {spec.name}` continues the sweep",
            ExitCode.INTERRUPTED,
        )
    print_summary(spec, outcome, console)
    if not outcome.ok:
        raise typer.Exit(ExitCode.PARTIAL)


@sweep_app.command("validate")
@handled()
def sweep_validate(
    file: FileArg = None,
    preset: PresetOpt = None,
    home: HomeOpt = None,
    fmt: FormatOpt = Format.table,
    columns: ColumnsOpt = None,
    wide: WideOpt = False,
) -> None:
    """Check a sweep file (or preset) without running or writing anything: its cells, their
    dependency order and an estimate of the training work."""
    from workflows.plan import plan

    choice = choice_of(views.CELLS, fmt, columns, wide)
    spec = _with_home(_load_spec(file, preset), home)
    cells = plan(spec)
    from storage.catalogue.readonly import Rows

    rows = Rows.from_records([c.to_dict() for c in cells], [c.key for c in views.CELLS.cols])
    grid = spec.grid
    waves = max((c.wave for c in cells), default=0)
    known = [c.work for c in cells if c.work is not None]
    total = f"{sum(known):,} image-epochs" if known else "unknown (folder data not on disk)"
    if known and len(known) < len(cells):
        total += f" for {len(known)} of {len(cells)} cells (folder data not on disk)"
    paths = spec.storage_paths()
    at_once = spec.resources.max_concurrent_trials or "as many as fit"
    modes = f"{len(grid.modes)} modes"
    if spec.backdoor is not None:
        modes = f"({modes} + {len(spec.backdoor.modes)} poisoned)"
    notes = (
        f"sweep {spec.name}: valid, {len(cells)} cells ({len(grid.architectures)} architectures x "
        f"{len(grid.datasets)} data sets x {modes} x {len(grid.seeds)} seeds)",
        f"order: {waves} wave(s); each ic_only cell starts once its own cnn cell is done",
        f"work = epochs x training images; in all {total}",
        f"trials at once: {at_once}, {spec.resources.cpus_per_trial:g} CPU each",
        *(
            [f"poisoned cells: {spec.backdoor.poison_config().tag} (run ids end with it)"]
            if spec.backdoor is not None
            else []
        ),
        f"state would go to {paths.home} "
        f"({'exists' if paths.home.exists() else 'not created yet'}); nothing was written",
    )
    show(rows, views.CELLS, choice, notes)


@sweep_app.command("status")
@handled()
def sweep_status(
    name: Annotated[str | None, typer.Argument(help="Sweep name (default: all sweeps).")] = None,
    home: HomeOpt = None,
    catalogue: CatalogueOpt = None,
    fmt: FormatOpt = Format.table,
    columns: ColumnsOpt = None,
    wide: WideOpt = False,
) -> None:
    """Each run's mode, status, epochs, best validation accuracy, registered version and MLflow
    run."""
    choice = choice_of(views.STATUS, fmt, columns, wide)
    with read_catalogue(where(home, catalogue)) as reader:
        if name is not None and name not in reader.known_values("sweep"):
            known = ", ".join(reader.known_values("sweep")) or "none yet"
            raise SDNError(f"unknown sweep {name!r}; known sweeps: {known}")
        rows = reader.runs(sweep=name) if name else reader.runs()
    show(rows, views.STATUS, choice, title=f"sweep {name}" if name else "all sweeps")


@sweep_app.command("list")
@handled()
def sweep_list(
    home: HomeOpt = None,
    catalogue: CatalogueOpt = None,
    fmt: FormatOpt = Format.table,
    columns: ColumnsOpt = None,
    wide: WideOpt = False,
) -> None:
    """Every sweep in the catalogue with its run counts by status."""
    choice = choice_of(views.SWEEPS, fmt, columns, wide)
    with read_catalogue(where(home, catalogue)) as reader:
        rows = reader.sweeps()
    show(rows, views.SWEEPS, choice)


# --- catalogue -------------------------------------------------------------------------------------


@catalogue_app.command("runs")
@handled()
def catalogue_runs(
    arch: ArchOpt = None,
    dataset: DatasetOpt = None,
    mode: ModeOpt = None,
    seed: SeedOpt = None,
    status: StatusOpt = None,
    sweep: SweepOpt = None,
    poison: PoisonOpt = None,
    allow_empty: AllowEmptyOpt = False,
    home: HomeOpt = None,
    catalogue: CatalogueOpt = None,
    fmt: FormatOpt = Format.table,
    columns: ColumnsOpt = None,
    wide: WideOpt = False,
) -> None:
    """Runs, filtered by any of architecture / dataset / mode / seed / status / sweep /
    poisoning."""
    choice = choice_of(views.RUNS, fmt, columns, wide)
    with read_catalogue(where(home, catalogue)) as reader:
        filters = check_filters(
            reader, allow_empty, arch=arch, dataset=dataset, mode=mode, seed=seed,
            status=status, sweep=sweep, poison=poison,
        )  # fmt: skip
        rows = reader.runs(**filters)
    show(rows, views.RUNS, choice)


SplitOpt = Annotated[str, typer.Option("--split", help="val or test.")]


@catalogue_app.command("exits")
@handled()
def catalogue_exits(
    arch: ArchOpt = None,
    dataset: DatasetOpt = None,
    mode: ModeOpt = None,
    seed: SeedOpt = None,
    sweep: SweepOpt = None,
    poison: PoisonOpt = None,
    split: SplitOpt = "test",
    allow_empty: AllowEmptyOpt = False,
    home: HomeOpt = None,
    catalogue: CatalogueOpt = None,
    fmt: FormatOpt = Format.table,
    columns: ColumnsOpt = None,
    wide: WideOpt = False,
) -> None:
    """Per-exit accuracy and cumulative cost of every run."""
    from storage.catalogue import Catalogue
    from storage.catalogue.readonly import Rows

    choice = choice_of(views.EXITS, fmt, columns, wide)
    inputs.one_of(split, "--split", inputs.SPLITS)
    w = where(home, catalogue)
    with read_catalogue(w) as reader:
        filters = check_filters(
            reader, allow_empty, arch=arch, dataset=dataset, mode=mode, seed=seed, sweep=sweep,
            poison=poison,
        )  # fmt: skip
    with Catalogue(w.paths.catalogue, read_only=True) as cat:
        rows = Rows.from_frame(cat.exits(**filters, split=split))
    if "exit_index" in rows.columns:
        k, f = rows.columns.index("exit_index"), rows.columns.index("is_final")
        rows = Rows(
            [*rows.columns, "exit"], [(*r, "final" if r[f] else f"IC{r[k]}") for r in rows.rows]
        )
    show(rows, views.EXITS, choice)


MaxDropOpt = Annotated[
    float | None,
    typer.Option(
        "--max-drop",
        help="Largest accuracy drop allowed vs the final head, on validation (0.01 = 1 point; "
        "the default when neither this nor --budget is given).",
        show_default=False,
    ),
]
BudgetOpt = Annotated[
    float | None,
    typer.Option(
        "--budget",
        help="Largest average cost relative to the CNN, on validation.",
        show_default=False,
    ),
]
DEFAULT_MAX_DROP = 0.01


POLICIES = ("confidence", "entropy", "patience")
PolicyOpt = Annotated[
    str,
    typer.Option(
        "--policy", help="Exit policy: confidence, entropy, patience, or all (side by side)."
    ),
]
DeltaOpt = Annotated[
    float | None,
    typer.Option(
        "--delta",
        help="Certified: the target holds on new data with probability >= 1 - DELTA.",
        show_default=False,
    ),
]


@catalogue_app.command("early-exit")
@handled()
def catalogue_early_exit(
    max_drop: MaxDropOpt = None,
    budget: BudgetOpt = None,
    policy: PolicyOpt = "confidence",
    delta: DeltaOpt = None,
    per_run: Annotated[
        bool, typer.Option("--per-run", help="Every run, not only each group's best.")
    ] = False,
    arch: ArchOpt = None,
    dataset: DatasetOpt = None,
    mode: ModeOpt = None,
    sweep: SweepOpt = None,
    poison: PoisonOpt = None,
    allow_empty: AllowEmptyOpt = False,
    home: HomeOpt = None,
    catalogue: CatalogueOpt = None,
    fmt: FormatOpt = Format.table,
    columns: ColumnsOpt = None,
    wide: WideOpt = False,
) -> None:
    """Best early-exit operating point per (architecture, dataset, mode; a poisoned model in a
    group of its own): threshold chosen on validation (certified with --delta), accuracy and
    cost reported on test."""
    from sdn.early_exit import Target, format_threshold
    from storage.catalogue.readonly import Rows

    choice = choice_of(views.EARLY_EXIT, fmt, columns, wide)
    inputs.number(max_drop, "--max-drop", low=0.0, high=1.0)
    inputs.number(budget, "--budget", low=0.0, high=10.0, low_open=True)
    inputs.number(delta, "--delta", low=0.0, high=1.0, low_open=True)
    if delta is not None and delta >= 1.0:
        raise SDNError(f"--delta must be in (0, 1), e.g. 0.1 (got {delta:g})")
    inputs.one_of(policy, "--policy", (*POLICIES, "all"))
    if max_drop is not None and budget is not None:
        raise SDNError("give --max-drop or --budget, not both")
    default = max_drop is None and budget is None
    if default:
        max_drop = DEFAULT_MAX_DROP
    target = Target.of(max_drop, budget)
    method = "empirical" if delta is None else f"certified at delta {delta:g}"
    said = f"target: {target.label} on val, {method}"
    if default:
        said += " (default target; set --max-drop or --budget)"
    policies = POLICIES if policy == "all" else (policy,)
    with read_catalogue(where(home, catalogue)) as reader:
        filters = check_filters(
            reader, allow_empty, arch=arch, dataset=dataset, mode=mode, sweep=sweep, poison=poison
        )
        parts = [
            reader.best_early_exit(
                max_accuracy_drop=max_drop, cost_budget=budget, policy=p, delta=delta,
                per_run=per_run, **filters,
            )
            for p in policies
        ]  # fmt: skip
    columns_ = parts[0].columns
    found = [r for part in parts for r in part.rows]
    if len(parts) > 1:  # side by side: the policies of a group together
        k = [columns_.index(c) for c in ("arch", "dataset", "train_mode")]
        order = {p: i for i, p in enumerate(POLICIES)}
        at = columns_.index("policy")
        found.sort(key=lambda r: (*(r[i] for i in k), order[r[at]]))
    rows = Rows(columns_, found)
    if choice.fmt is Format.table and "threshold" in rows.columns:  # "off", "k=2", "H<=0.23"
        t, at = rows.columns.index("threshold"), rows.columns.index("policy")
        rows = Rows(
            rows.columns,
            [(*r[:t], format_threshold(r[t], r[at]), *r[t + 1 :]) for r in rows.rows],
        )
    scope = "every run" if per_run else "the best run of each group"
    notes = (said, f"threshold chosen on val; test accuracy, cost and drop there; {scope}")
    show(rows, views.EARLY_EXIT, choice, notes)


@catalogue_app.command("overthinking")
@handled()
def catalogue_overthinking(
    arch: ArchOpt = None,
    dataset: DatasetOpt = None,
    mode: ModeOpt = None,
    seed: SeedOpt = None,
    sweep: SweepOpt = None,
    poison: PoisonOpt = None,
    allow_empty: AllowEmptyOpt = False,
    home: HomeOpt = None,
    catalogue: CatalogueOpt = None,
    fmt: FormatOpt = Format.table,
    columns: ColumnsOpt = None,
    wide: WideOpt = False,
) -> None:
    """Overthinking: how many test samples an IC already gets right, the oracle's cost, the
    destructive fraction and the confusion score's AUROC."""
    from storage.catalogue import Catalogue
    from storage.catalogue.readonly import Rows

    choice = choice_of(views.OVERTHINKING, fmt, columns, wide)
    w = where(home, catalogue)
    with read_catalogue(w) as reader:
        filters = check_filters(
            reader, allow_empty, arch=arch, dataset=dataset, mode=mode, seed=seed, sweep=sweep,
            poison=poison,
        )  # fmt: skip
    with Catalogue(w.paths.catalogue, read_only=True) as cat:
        rows = Rows.from_frame(cat.overthinking(**filters))
    if "first_correct" in rows.columns:
        k = rows.columns.index("first_correct")
        extra = [_first_correct_shares(r[k]) for r in rows.rows]
        rows = Rows(
            [*rows.columns, "early_right", "never_right"],
            [(*r, *e) for r, e in zip(rows.rows, extra, strict=True)],
        )
    show(rows, views.OVERTHINKING, choice)


def _first_correct_shares(counts: Any) -> tuple[float | None, float | None]:
    """(share first right at an IC, share never right) from the first-correct counts
    ``[IC0, ..., final, never]``."""
    if not isinstance(counts, list | tuple) or len(counts) < 2 or not sum(counts):
        return None, None
    total = sum(counts)
    return sum(counts[:-2]) / total, counts[-1] / total


@catalogue_app.command("backdoor")
@handled()
def catalogue_backdoor(
    summary: Annotated[
        bool,
        typer.Option(
            "--summary",
            help="One row per poisoned run: final head, destructive overthinking, confusion "
            "vs max-softmax AUROC and early exit on triggered inputs.",
        ),
    ] = False,
    arch: ArchOpt = None,
    dataset: DatasetOpt = None,
    mode: ModeOpt = None,
    seed: SeedOpt = None,
    sweep: SweepOpt = None,
    poison: PoisonOpt = None,
    allow_empty: AllowEmptyOpt = False,
    home: HomeOpt = None,
    catalogue: CatalogueOpt = None,
    fmt: FormatOpt = Format.table,
    columns: ColumnsOpt = None,
    wide: WideOpt = False,
) -> None:
    """The backdoor experiment: per exit of every poisoned run, clean accuracy, accuracy on
    triggered inputs (true labels) and attack success (triggered non-target inputs answered with
    the target), on the test split and its triggered twin."""
    from sdn.early_exit import format_threshold
    from storage.catalogue.readonly import Rows

    view = views.BACKDOOR_SUMMARY if summary else views.BACKDOOR
    choice = choice_of(view, fmt, columns, wide)
    with read_catalogue(where(home, catalogue)) as reader:
        filters = check_filters(
            reader, allow_empty, arch=arch, dataset=dataset, mode=mode, seed=seed, sweep=sweep,
            poison=poison,
        )  # fmt: skip
        rows = reader.backdoor_summaries(**filters) if summary else reader.backdoor(**filters)
    if not summary and "exit_index" in rows.columns:
        k, f = rows.columns.index("exit_index"), rows.columns.index("is_final")
        rows = Rows(
            [*rows.columns, "exit"], [(*r, "final" if r[f] else f"IC{r[k]}") for r in rows.rows]
        )
    if summary and choice.fmt is Format.table and "early_exit_threshold" in rows.columns:
        t = rows.columns.index("early_exit_threshold")
        a = rows.columns.index("early_exit_accuracy")
        rows = Rows(  # "off": the stored choice lets the final head answer
            rows.columns,
            [
                (*r[:t], format_threshold(r[t]) if r[a] is not None else None, *r[t + 1 :])
                for r in rows.rows
            ],
        )
    notes = ()
    if summary:
        notes = (
            "clean, attack: final head; destr.: destructive overthinking on triggered inputs",
            "EE: early exit on triggered inputs at the threshold chosen on clean val (--wide)",
            "AUC: telling triggered from clean inputs by confusion / by max softmax",
        )
    show(rows, view, choice, notes)


@catalogue_app.command("sql")
@handled()
def catalogue_sql(
    query: Annotated[str, typer.Argument(help="One read-only SQL statement.")],
    timeout: Annotated[
        float, typer.Option("--timeout", help="Stop the query after this many seconds.")
    ] = 30.0,
    max_rows: Annotated[
        int, typer.Option("--max-rows", help="Refuse results longer than this.")
    ] = 100_000,
    home: HomeOpt = None,
    catalogue: CatalogueOpt = None,
    fmt: FormatOpt = Format.table,
    columns: ColumnsOpt = None,
    wide: WideOpt = False,
) -> None:
    """Run one read-only SQL query on the catalogue (writes are refused by SQLite itself);
    stopped after --timeout seconds, or at once by Ctrl-C."""
    choice = choice_of(views.SQL, fmt, columns, wide)
    inputs.number(timeout, "--timeout", low=0.0, high=86_400.0, low_open=True)
    if max_rows < 1:
        raise SDNError(f"--max-rows must be >= 1 (got {max_rows})")
    with read_catalogue(where(home, catalogue)) as reader:
        rows = reader.sql(query, timeout_s=timeout, max_rows=max_rows)
    show(rows, views.SQL, choice)


@catalogue_app.command("rebuild")
@handled()
def catalogue_rebuild(
    home: HomeOpt = None,
    catalogue: CatalogueOpt = None,
    tracking_uri: TrackingOpt = None,
    predictions: PredictionsOpt = None,
) -> None:
    """Rebuild the catalogue from the Parquet files and MLflow alone (it is derived data); the
    new catalogue replaces the old one only once it is complete."""
    from storage.catalogue.rebuild import rebuild

    w = where(home, catalogue, predictions, tracking_uri)
    root = w.paths.predictions
    if not root.is_dir():
        raise SDNError(
            f"no predictions at {root} (from {w.named('predictions')}); pass --predictions"
        )
    uri = check_tracking(w)
    counts = rebuild(w.paths.catalogue, root, uri)
    _console().print(
        f"rebuilt {w.paths.catalogue}: " + ", ".join(f"{v} {k}" for k, v in counts.items()),
        highlight=False,
        soft_wrap=True,
    )


@catalogue_app.command("upgrade")
@handled()
def catalogue_upgrade(home: HomeOpt = None, catalogue: CatalogueOpt = None) -> None:
    """Bring an existing catalogue to this version's schema (reads never do: they report a
    too-old catalogue and name this command)."""
    from storage.catalogue import Catalogue
    from storage.catalogue.db import check_catalogue_file

    w = where(home, catalogue)
    path = w.paths.catalogue
    if not path.exists():
        raise SDNError(f"no catalogue at {path} (from {w.named('catalogue')}); nothing to upgrade")
    check_catalogue_file(path)
    with Catalogue(path) as cat:
        before, after = cat.revision or (None, "?")
    said = "already at" if before == after else f"upgraded from {before} to"
    _console().print(
        f"catalogue {path}: {said} schema revision {after}", highlight=False, soft_wrap=True
    )


# --- models ----------------------------------------------------------------------------------------

RefArg = Annotated[str, typer.Argument(help="NAME@ALIAS, NAME/VERSION, or runs:/RUN_ID.")]


@models_app.command("list")
@handled()
def models_list(
    home: HomeOpt = None,
    tracking_uri: TrackingOpt = None,
    fmt: FormatOpt = Format.table,
    columns: ColumnsOpt = None,
    wide: WideOpt = False,
) -> None:
    """Registered models: every version with its aliases, sweep and creation time."""
    from storage.catalogue.readonly import Rows
    from storage.registry import Registry

    choice = choice_of(views.MODELS, fmt, columns, wide)
    uri = check_tracking(where(home, tracking_uri=tracking_uri))
    frame = Registry(uri).list_models()
    rows = Rows.from_frame(frame)
    t = rows.columns.index("tags") if "tags" in rows.columns else None
    rows = Rows(
        [*rows.columns, "sweep"],
        [(*r, (r[t] or {}).get("sweep") if t is not None else None) for r in rows.rows],
    )
    if choice.fmt is Format.table:  # one line per version: aliases as words, not a list
        a = rows.columns.index("aliases")
        rows = Rows(rows.columns, [(*r[:a], ", ".join(r[a] or []), *r[a + 1 :]) for r in rows.rows])
    show(rows, views.MODELS, choice)


@models_app.command("get")
@handled()
def models_get(
    ref: RefArg,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write the state dict and config into this folder."),
    ] = None,
    home: HomeOpt = None,
    tracking_uri: TrackingOpt = None,
    fmt: FormatOpt = Format.table,
    columns: ColumnsOpt = None,
    wide: WideOpt = False,
) -> None:
    """Resolve a registered model, rebuild it, and describe it (optionally save it to a folder,
    all or nothing)."""
    import json

    from storage.catalogue.readonly import Rows
    from storage.model_refs import parse_ref
    from storage.registry import Registry
    from workflows.atomic import atomic_folder

    choice = choice_of(views.MODEL_INFO, fmt, columns, wide)
    parse_ref(ref)  # a malformed reference fails before MLflow is imported
    if out is not None:
        out = _check_export_folder(out)
    registry = Registry(check_tracking(where(home, tracking_uri=tracking_uri)))
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

        with atomic_folder(out) as temp:
            torch.save(model.state_dict(), temp / "model.pt")
            (temp / "model_config.json").write_text(
                json.dumps(model.config, indent=2), encoding="utf-8"
            )
        info["saved_to"] = str(out)
    records = [{"field": k, "value": v} for k, v in info.items()]
    show(Rows.from_records(records, ["field", "value"]), views.MODEL_INFO, choice, title=ref)


EXPORT_FILES = frozenset({"model.pt", "model_config.json"})


def _check_export_folder(out: Path) -> Path:
    """``--out`` may be new, empty, or an earlier export (replaced whole); nothing else is
    replaced, and it may not lie under a file."""
    out = out.expanduser().absolute()
    probe = out
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise SDNError(f"--out {out}: {probe} is a file: Not a directory")
    if out.is_dir():
        others = {p.name for p in out.iterdir()} - EXPORT_FILES
        if others:
            raise SDNError(
                f"--out {out} holds other files ({', '.join(sorted(others)[:3])}); give a new "
                "or empty folder, or an earlier export"
            )
    return out


@models_app.command("predict")
@handled()
def models_predict(
    ref: RefArg,
    images: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Image files or folders (searched recursively, in sorted order).",
            show_default=False,
        ),
    ] = None,
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="Classify a data set's split instead.")
    ] = None,
    split: Annotated[str, typer.Option("--split", help="val or test (with --dataset).")] = "test",
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="At most this many samples of --dataset.")
    ] = 20,
    batch_size: Annotated[
        int,
        typer.Option("--batch-size", min=1, max=65536, help="Images per forward pass."),
    ] = 64,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold", help="Exit at the first IC past this threshold (confidence: 0..1)."
        ),
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
    data_root: Annotated[
        Path | None, typer.Option("--data-root", help="Folder holding the data sets.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Also write the predictions to this CSV or .json file."),
    ] = None,
    home: HomeOpt = None,
    catalogue: CatalogueOpt = None,
    tracking_uri: TrackingOpt = None,
    fmt: FormatOpt = Format.table,
    columns: ColumnsOpt = None,
    wide: WideOpt = False,
) -> None:
    """Early-exit inference with a registered model: each prediction, its exit and its cost.
    Every input is checked before the model is loaded."""
    from workflows.predict import check_request, run

    choice = choice_of(views.PREDICTIONS, fmt, columns, wide)
    request = check_request(
        ref,
        images=images or [],
        dataset=dataset,
        split=split,
        limit=limit,
        batch_size=batch_size,
        threshold=threshold,
        max_drop=max_drop,
        budget=budget,
        policy=policy,
        delta=delta,
        data_root=data_root,
        out=out,
    )
    w = where(home, catalogue, tracking_uri=tracking_uri)
    uri = check_tracking(w)
    rows, note, _chosen = run(request, uri, w.paths.catalogue)
    if request.out is not None:
        _write_rows(rows, request.out)
        note += f"; written to {request.out}"
    show(rows, views.PREDICTIONS, choice, title=note)


def _write_rows(rows: Any, target: Path) -> None:
    """CSV (or JSON for a .json name), through a temporary sibling and a rename."""
    import csv
    import io
    import json

    from workflows.atomic import atomic_write_text

    if target.suffix.lower() == ".json":
        text = json.dumps(rows.records(), ensure_ascii=False, default=str) + "\n"
    else:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(rows.columns)
        writer.writerows(["" if v is None else v for v in r] for r in rows.rows)
        text = buffer.getvalue()
    atomic_write_text(target, text)


# --- report ----------------------------------------------------------------------------------------


@app.command("report")
@handled()
def report(
    target: Annotated[str, typer.Argument(help="A run id or a sweep name.")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for the report (default HOME/reports/TARGET)."),
    ] = None,
    home: HomeOpt = None,
    catalogue: CatalogueOpt = None,
    predictions: PredictionsOpt = None,
    tracking_uri: TrackingOpt = None,
    log_to_mlflow: Annotated[
        bool,
        typer.Option(
            "--mlflow/--no-mlflow",
            help="Also log the report to MLflow, and read the registered models for the "
            "Grad-CAM maps (--no-mlflow: MLflow is not touched, Grad-CAM is left out).",
        ),
    ] = True,
) -> None:
    """A self-contained HTML report of a sweep (or one run): FOLDER/index.html opens from disk
    with no server or network. Overview, per-exit accuracy, accuracy vs cost with the chosen
    points, early-exit choices per policy (empirical and certified), calibration, overthinking,
    confidence vs confusion, simple/complex and destructive test samples with Grad-CAM maps,
    and each run's part with its MLflow run and registered model; the figures are also PNG files
    beside it. The folder is replaced only once the new report is complete; it is also logged to
    the sweep's MLflow run (artifact report/)."""
    import re

    from storage.catalogue import Catalogue
    from workflows.atomic import atomic_folder

    w = where(home, catalogue, predictions, tracking_uri)
    with read_catalogue(w) as reader:
        found = reader.runs(run_id=target) or reader.runs(sweep=target)
        if found.empty:
            raise SDNError(
                f"no run or sweep named {target!r} in the catalogue; see `sdn sweep list` / "
                "`sdn catalogue runs`"
            )
    uri = check_tracking(w) if log_to_mlflow else None
    folder = out.expanduser() if out else w.paths.reports / re.sub(r"[^\w.-]+", "_", target)
    folder = folder.absolute()
    with atomic_folder(folder) as temp, Catalogue(w.paths.catalogue, read_only=True) as cat:
        from workflows.report import make_report

        files = make_report(
            cat, target, temp, predictions_root=w.paths.predictions, tracking_uri=uri
        )
    console = _console()
    index = folder / Path(files[0]).relative_to(temp)
    console.print(str(index), highlight=False, soft_wrap=True)
    run = getattr(files, "logged_to", None)
    logged = f"; logged to MLflow run {run} as artifact report/" if run else ""
    console.print(
        f"({len(files) - 1} figures, also as PNG files beside it{logged})",
        highlight=False,
        soft_wrap=True,
    )


def main() -> None:  # pragma: no cover - console script
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
