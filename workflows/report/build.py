"""Building the report: the runs in scope, every registered section, the page, and the MLflow
artifact."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sdn.errors import SDNError
from workflows.report.context import ReportContext
from workflows.report.html import RenderedSection, Subsection, esc, page
from workflows.report.registry import registered


def load_context(
    cat: Any,
    target: str,
    folder: Path,
    predictions_root: Path | None,
    tracking_uri: str | None = None,
) -> ReportContext:
    """The report's scope: the run ``target`` names, else the sweep's runs. ``tracking_uri``
    lets sections read registered models (None: no section touches MLflow)."""
    runs = cat.runs(run_id=target)
    kind = "run"
    if runs.empty:
        runs, kind = cat.runs(sweep=target), "sweep"
    if runs.empty:
        raise SDNError(
            f"no run or sweep named {target!r} in the catalogue; see `sdn sweep list` / "
            "`sdn catalogue runs`"
        )
    ctx = ReportContext(
        cat, target, kind, runs, Path(folder), predictions_root, tracking_uri=tracking_uri
    )
    if ctx.analysed.empty:
        what = f"sweep {target!r} has" if kind == "sweep" else f"run {target!r} has"
        raise SDNError(f"{what} no analysed runs yet; `sdn sweep status` shows why")
    return ctx


def render_sections(ctx: ReportContext, keys: Sequence[str] | None = None) -> list[RenderedSection]:
    out = []
    for spec in registered(keys):
        blocks = spec.build(ctx)
        if not blocks:
            continue
        children = [(b.key, b.title) for b in blocks if isinstance(b, Subsection)]
        out.append(
            RenderedSection(spec.key, spec.title, "".join(b.render() for b in blocks), children)
        )
    return out


class Written(list[Path]):
    """The files a report wrote (``index.html`` first), and the MLflow run it was logged to."""

    logged_to: str | None = None


def make_report(
    cat: Any,
    target: str,
    folder: Path,
    predictions_root: Path | None = None,
    tracking_uri: str | None = None,
    sections: Sequence[str] | None = None,
) -> Written:
    """Write the report of the run or sweep ``target`` into ``folder`` (``index.html`` and the
    figures as PNG files); log the folder to the sweep's (or the run's) MLflow run when a
    tracking URI is given, which the Grad-CAM section also reads the registered models from
    (without one it says so, and MLflow is not touched). Returns the files written,
    ``index.html`` first, and the MLflow run it was logged to (``logged_to``). ``sections``
    keeps only those section keys."""
    from workflows.version import code_version

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ctx = load_context(cat, target, folder, predictions_root, tracking_uri)
    rendered = render_sections(ctx, sections)
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    title = f"SDN sweep {target}" if ctx.kind == "sweep" else f"SDN run {target}"
    meta = (
        f"{len(ctx.runs)} run{'s' if len(ctx.runs) != 1 else ''} · generated {esc(now)} from "
        f'<span class="mono">{esc(cat.path)}</span>'
    )
    footer = (
        f"sdn-workflows {esc(code_version())} · numbers from the catalogue (and the Parquet "
        "predictions for the histograms and the test samples) · <code>sdn report "
        f"{esc(target)}</code> rebuilds this page"
    )
    index = folder / "index.html"
    index.write_text(page(title, meta, rendered, footer), encoding="utf-8")
    files = Written([index, *ctx.files])
    if tracking_uri:
        mlflow_run = (
            _sweep_parent_run(tracking_uri, target)
            if ctx.kind == "sweep"
            else ctx.runs.iloc[0]["mlflow_run_id"]
        )
        if mlflow_run:
            _log_to_mlflow(tracking_uri, mlflow_run, folder)
            files.logged_to = str(mlflow_run)
    return files


def _sweep_parent_run(tracking_uri: str, sweep: str) -> str | None:
    from storage.mlflow_setup import make_client
    from workflows import tracking

    client = make_client(tracking_uri)
    exp = client.get_experiment_by_name(tracking.experiment_name(sweep))
    if exp is None:
        return None
    return tracking._find_run(client, exp.experiment_id, tracking.SWEEP_TAG, sweep, "sweep")


def _log_to_mlflow(tracking_uri: str, mlflow_run_id: str, folder: Path) -> None:
    """The whole folder as the run's artifact ``report/`` (index.html and the PNGs)."""
    from storage.mlflow_setup import make_client

    make_client(tracking_uri).log_artifacts(mlflow_run_id, str(folder), artifact_path="report")
