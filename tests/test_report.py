"""The HTML report on a quickstart-shaped home (12 runs, real catalogue and Parquet files, no
training): one self-contained page, tables as long as the catalogue says, chosen points that are
the stored rows, labels that do not overprint, colours by architecture and styles by mode, the
CNN folded into the other figures, sections added from another module, all-or-nothing writing
and the MLflow artifact. The page in a real browser: ``tests/test_report_browser.py``."""

from __future__ import annotations

import hashlib
import itertools
import re
import sqlite3
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from report_home import QuickstartReport, expected_rows
from typer.testing import CliRunner

from sdn.early_exit import format_threshold, unmet_label
from storage.catalogue import Catalogue

SWEEP = "quickstart"


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def home(quickstart_report: QuickstartReport) -> Path:
    return quickstart_report.home


@pytest.fixture(scope="module")
def built(quickstart_report: QuickstartReport) -> tuple[Path, list[Path]]:
    return quickstart_report.folder, quickstart_report.files


@pytest.fixture(scope="module")
def page(built: tuple[Path, list[Path]]) -> Page:
    parsed = Page()
    parsed.feed((built[0] / "index.html").read_text(encoding="utf-8"))
    return parsed


@pytest.fixture
def ctx(home: Path, tmp_path: Path) -> Any:
    from workflows.report.build import load_context

    with Catalogue(home / "catalogue.db", read_only=True) as cat:
        context = load_context(cat, SWEEP, tmp_path, home / "predictions")
        yield context


class Page(HTMLParser):
    """What the tests read from index.html: tables (by data-table: rows of (text, data-sort)),
    images by the section they are in, every src/href, and script/link tags."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[tuple[str, str]]]] = {}
        self.headers: dict[str, list[str]] = {}
        self.images: dict[str, list[str]] = {}
        self.urls: list[str] = []
        self.tags: list[tuple[str, dict[str, str]]] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._sort = ""
        self._row: list[tuple[str, str]] | None = None
        self._in_head = False
        self._sections: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        for key in ("src", "href"):
            if key in a:
                self.urls.append(a[key])
        if tag == "section":
            self._sections.append(a.get("id", ""))
        elif tag == "img":
            self.images.setdefault(self._sections[-1] if self._sections else "", []).append(
                a["src"]
            )
        elif tag == "table" and "data-table" in a:
            self._table = a["data-table"]
            self.tables[self._table] = []
            self.headers[self._table] = []
        elif tag == "thead":
            self._in_head = True
        elif tag == "tr" and self._table and not self._in_head:
            self._row = []
        elif tag in ("td", "th") and self._table:
            self._cell, self._sort = [], a.get("data-sort", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "section" and self._sections:
            self._sections.pop()
        elif tag == "thead":
            self._in_head = False
        elif tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._cell is not None and self._table:
            text = "".join(self._cell).strip()
            if self._in_head:
                self.headers[self._table].append(text)
            elif self._row is not None:
                self._row.append((text, self._sort))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table:
            self.tables[self._table].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


# ---------------------------------------------------------------------------- the page
def test_the_page_is_one_self_contained_file(built, page):
    folder, files = built
    text = (folder / "index.html").read_text(encoding="utf-8")
    assert files[0] == folder / "index.html"
    # Nothing is fetched: every image is inline, every link an anchor in the page, no external
    # script or style, and the page's own policy forbids any other source.
    assert page.images and all(
        src.startswith("data:image/png;base64,") for srcs in page.images.values() for src in srcs
    )
    assert all(u.startswith(("data:image/png;base64,", "#")) for u in page.urls)
    assert not [t for t, a in page.tags if t in ("link", "iframe", "object", "embed")]
    assert not [a for t, a in page.tags if t == "script" and "src" in a]
    assert "@import" not in text and "url(" not in text
    assert "default-src 'none'" in text
    anchors = {a["id"] for _, a in page.tags if "id" in a}
    assert {u[1:] for u in page.urls if u.startswith("#")} <= anchors  # no dead link
    # The figures are also files, each the PNG the page embeds.
    pngs = sorted(p for p in folder.rglob("*.png"))
    assert pngs == sorted(f for f in files if f.suffix == ".png") and len(pngs) >= 20
    embedded = {src for srcs in page.images.values() for src in srcs}
    import base64

    assert {base64.b64decode(s.split(",", 1)[1]) for s in embedded} == {
        p.read_bytes() for p in pngs
    }


def test_each_table_has_the_rows_the_catalogue_holds(home, page):
    want = expected_rows(home / "catalogue.db")
    assert want["runs"] == 12 and want["early-exit-confidence"] == 8 * 7  # the quickstart shape
    for key, n in want.items():
        assert len(page.tables[key]) == n, key
    # Each run's own per-exit table: one row per stored test exit.
    con = sqlite3.connect(home / "catalogue.db")
    for run_id, exits in con.execute(
        "SELECT r.run_id, count(*) FROM exit_results e JOIN runs r ON r.id = e.run_pk "
        "WHERE e.split = 'test' GROUP BY r.run_id"
    ):
        key = "exits-run-" + re.sub(r"[^A-Za-z0-9_-]+", "-", run_id)
        assert len(page.tables[key]) == exits


def test_the_early_exit_tables_show_the_stored_choices(home, page):
    """Every row of every policy's table is the stored empirical and certified choice, its
    threshold written by format_threshold and its status by unmet_label."""
    con = sqlite3.connect(home / "catalogue.db")
    stored = {}
    for row in con.execute(
        "SELECT r.arch, r.train_mode, c.policy, c.target, c.method, c.threshold, c.met, "
        "c.test_accuracy, c.test_relative_cost FROM early_exit_choices c "
        "JOIN runs r ON r.id = c.run_pk WHERE r.train_mode != 'cnn'"
    ):
        arch, mode, policy, target, method, threshold, met, acc, cost = row
        stored[(f"{arch} {mode}", policy, target, method)] = (
            format_threshold(threshold, policy), unmet_label(bool(met), method),
            f"{100 * acc:.1f}%", f"{cost:.2f}",
        )  # fmt: skip
    seen = 0
    for policy in ("confidence", "entropy", "patience"):
        header = page.headers[f"early-exit-{policy}"]
        # group row (3 cells) then: run, target, 6 empirical columns, 6 certified columns
        names = header[3:]
        assert names[:2] == ["run", "target"] and names[2:8] == names[8:14]
        at = {n: i for i, n in enumerate(names[2:8])}
        for row in page.tables[f"early-exit-{policy}"]:
            run, target_name = row[0][0], _target_name(row[1][0])
            for m, method in enumerate(("empirical", "certified")):
                cells = row[2 + 6 * m : 8 + 6 * m]
                shown = (cells[at["threshold"]][0], cells[at["status"]][0],
                         cells[at["test acc"]][0], cells[at["cost"]][0])  # fmt: skip
                assert shown == stored[(run, policy, target_name, method)], (run, target)
                seen += 1
    assert seen == 2 * 3 * 8 * 7


def _target_name(label: str) -> str:
    """``max drop 1 pt`` -> ``max_drop=0.01``; ``budget 0.50`` -> ``budget=0.50``."""
    from sdn.early_exit import Target

    if label.startswith("max drop "):
        return Target("max_drop", float(label.split()[2]) / 100).name
    return Target("budget", float(label.split()[1])).name


def test_cnn_runs_get_no_figures_of_their_own(built, page):
    folder, _ = built
    cnn_parts = [k for k in page.images if k.endswith("-cnn-s0")]
    assert not cnn_parts  # no <img> inside a CNN run's part
    assert not [p for p in folder.iterdir() if p.is_dir() and ".cnn." in p.name]
    sdn_parts = [k for k in page.images if k.endswith("-sdn-s0")]
    assert len(sdn_parts) == 4 and all(len(page.images[k]) == 4 for k in sdn_parts)


# ---------------------------------------------------------------------------- the figures
def _lines(fig: Any) -> dict[str, Any]:
    return {a.get_gid(): a for ax in fig.axes for a in ax.get_lines() if a.get_gid()}


def test_colour_is_the_architecture_and_style_the_mode(ctx):
    from workflows.report import plots, style

    fig = plots.cost_accuracy_sweep(ctx, "confidence")
    lines = _lines(fig)
    runs = {r.run_id: r for r in ctx.analysed.itertuples()}
    curves = {g.split(":", 1)[1]: a for g, a in lines.items() if g.startswith("curve:")}
    assert set(curves) == {r for r, run in runs.items() if run.train_mode != "cnn"}
    for run_id, line in curves.items():
        run = runs[run_id]
        assert line.get_color() == style.ARCH_COLOURS[run.arch]
        assert line.get_linestyle() == {"sdn": "-", "ic_only": "--"}[run.train_mode]
    # 12 runs, 4 architectures: 4 colours, never shared across architectures.
    colours = {runs[r].arch: line.get_color() for r, line in curves.items()}
    assert len(set(colours.values())) == len(colours) == 4
    # The CNN: a star at cost 1 and a dotted line at its accuracy, in its architecture's colour.
    for run_id, run in runs.items():
        if run.train_mode != "cnn":
            continue
        star, ref = lines[f"cnn:{run_id}"], lines[f"cnn-line:{run_id}"]
        final = ctx.exits[(ctx.exits.run_id == run_id) & (ctx.exits.split == "test")].accuracy
        assert list(star.get_xdata()) == [1.0] and star.get_ydata()[0] == 100 * final.iloc[0]
        assert star.get_marker() == "*" and ref.get_linestyle() == ":"
        assert star.get_color() == ref.get_color() == style.ARCH_COLOURS[run.arch]
    _close(fig)


def test_the_sweep_figure_marks_every_stored_choice(ctx):
    from workflows.report import plots

    fig = plots.cost_accuracy_sweep(ctx, "confidence")
    lines = _lines(fig)
    chosen = ctx.choices[(ctx.choices.policy == "confidence")]
    for (run_id, method), rows in chosen.groupby(["run_id", "method"]):
        if run_id.split(".")[3] == "cnn":
            continue
        marks = lines[f"chosen:{method}:{run_id}"]
        drawn = set(zip(marks.get_xdata(), marks.get_ydata(), strict=True))
        want = {
            (c, 100 * a) for c, a in zip(rows.test_relative_cost, rows.test_accuracy, strict=True)
        }
        assert drawn == want
    _close(fig)


def test_each_distinct_point_has_one_label_and_no_two_overprint(ctx):
    from matplotlib.text import Annotation

    from workflows.report import plots
    from workflows.report.style import text_box

    checked = 0
    for run in ctx.analysed.itertuples():
        if run.train_mode == "cnn":
            continue
        fig, notes = plots.cost_accuracy_run(ctx, run, "confidence")
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        mine = ctx.choices[
            (ctx.choices.run_id == run.run_id) & (ctx.choices.policy == "confidence")
        ]
        points = {
            (c, 100 * a) for c, a in zip(mine.test_relative_cost, mine.test_accuracy, strict=True)
        }
        assert len(notes) == len(points) >= 2
        assert {tuple(n.xy) for n in notes} == points
        assert all(isinstance(n, Annotation) for n in ax.texts if n in notes)
        boxes = [text_box(n, renderer) for n in notes]
        frame = ax.get_window_extent(renderer)
        for a, b in itertools.combinations(boxes, 2):
            assert not a.overlaps(b), (run.run_id, a, b)
        for box in boxes:
            assert (
                frame.x0 <= box.x0
                and box.x1 <= frame.x1
                and frame.y0 <= box.y0 <= box.y1 <= frame.y1
            )
        # Each label starts with the stored threshold; "none certified" where it is so stored.
        for note in notes:
            rows = mine[
                (mine.test_relative_cost == note.xy[0]) & (100 * mine.test_accuracy == note.xy[1])
            ]
            assert note.get_text().startswith(
                format_threshold(_nan_none(rows.threshold.iloc[0])) + ":"
            )
            unmet_cert = ((rows.method == "certified") & ~rows.met.astype(bool)).any()
            assert ("(none certified)" in note.get_text()) == bool(unmet_cert)
        _assert_title_fits(fig)
        checked += 1
        _close(fig)
    assert checked == 8


def _nan_none(value: Any) -> Any:
    return None if value is None or value != value else value


def _assert_title_fits(fig: Any) -> None:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    whole = fig.bbox
    for ax in fig.axes:
        for title in (ax.title, ax._left_title, ax._right_title):
            if title.get_text():
                box = title.get_window_extent(renderer)
                assert whole.x0 <= box.x0 and box.x1 <= whole.x1 and box.y1 <= whole.y1, (
                    title.get_text()
                )


def test_every_figure_title_fits(ctx):
    from workflows.report import plots

    run = next(r for r in ctx.analysed.itertuples() if r.train_mode == "sdn")
    over = next(ctx.overthinking[ctx.overthinking.run_id == run.run_id].itertuples())
    figures = [
        plots.cost_accuracy_sweep(ctx, "entropy"), plots.per_exit_sweep(ctx, "accuracy"),
        plots.per_exit_sweep(ctx, "ece"), plots.first_correct_sweep(ctx),
        plots.destructive_sweep(ctx), plots.reliability_run(ctx, run),
        plots.overthinking_run(ctx, run, over),
        plots.confusion_run(ctx, run, over, ctx.outputs(run.run_id)),
    ]  # fmt: skip
    for fig in figures:
        assert fig is not None
        _assert_title_fits(fig)
        _close(fig)


def test_reliability_draws_the_stored_bins_of_every_exit_and_the_cnn(ctx):
    from workflows.report import plots

    run = next(r for r in ctx.analysed.itertuples() if r.run_id.endswith("resnet56.digits.sdn.s0"))
    fig = plots.reliability_run(ctx, run)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    titles = [ax.get_title(loc="left") for ax in panels]
    assert [t.split(" ")[0] for t in titles] == [*(f"IC{i}" for i in range(6)), "final", "CNN"]
    cal = ctx.calibration[
        (ctx.calibration.run_id == run.run_id) & (ctx.calibration.split == "test")
    ]
    for ax, row in zip(panels, cal.sort_values("exit_index").itertuples(), strict=False):
        assert f"ECE {100 * row.ece:.1f}%" in ax.get_title(loc="left")
        heights = sorted(round(p.get_height(), 12) for p in ax.patches)
        assert heights == sorted(round(a, 12) for a in row.reliability["accuracy"] if a is not None)
    _close(fig)


def test_point_labels_name_targets_thresholds_and_status():
    import pandas as pd

    from workflows.report.plots import point_text, target_phrase

    assert target_phrase(["max_drop=0.01", "budget=0.50", "max_drop=0.00"]) == (
        "max drop 0, 1 pt; budget 0.50"
    )
    rows = pd.DataFrame({
        "threshold": [float("nan")] * 3,
        "method": ["certified", "certified", "empirical"],
        "target": ["max_drop=0.00", "max_drop=0.01", "budget=0.25"],
        "met": [False, False, False],
    })  # fmt: skip
    assert point_text(rows, "confidence") == (
        "off: budget 0.25 (unmet)\ncertified: max drop 0, 1 pt (none certified)"
    )
    rows = pd.DataFrame(
        {"threshold": [2.0], "method": ["empirical"], "target": ["budget=0.50"], "met": [True]}
    )
    assert point_text(rows, "patience") == "k=2: budget 0.50"


def _close(fig: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


# ---------------------------------------------------------------------------- sections
def test_a_section_from_another_module_is_added_in_its_order(home, tmp_path, monkeypatch):
    """A module dropped into workflows/report/sections/ adds its section; nothing else changes."""
    import workflows.report.sections as package
    from workflows.report import make_report, registry

    extra = tmp_path / "extra_sections"
    extra.mkdir()
    (extra / "zz_backdoor.py").write_text(
        "from workflows.report import section\n"
        "from workflows.report.html import Column, Note, Table\n"
        "@section('backdoor-demo', 'Backdoor (demo)', order=60)\n"
        "def build(ctx):\n"
        "    runs = ctx.analysed\n"
        "    rows = [[r.run_id, 0.5] for r in runs.itertuples()]\n"
        "    return [Note('added from another module'),\n"
        "            Table('backdoor-demo', [Column('run'), Column('ASR', 'pct')], rows)]\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(extra)])
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.delitem(sys.modules, "workflows.report.sections.zz_backdoor", raising=False)
    with Catalogue(home / "catalogue.db", read_only=True) as cat:
        make_report(
            cat, SWEEP, tmp_path / "r", sections=["backdoor-demo", "calibration", "overview"]
        )
    text = (tmp_path / "r" / "index.html").read_text(encoding="utf-8")
    order = [m.group(1) for m in re.finditer(r'<section class="top" id="([^"]+)"', text)]
    assert order == ["overview", "calibration", "backdoor-demo"]  # by order: 10, 40, 60
    assert "50.0%" in text and "added from another module" in text
    with pytest.raises(ValueError, match="already registered"):
        registry.section("backdoor-demo", "again")(lambda ctx: None)
    with pytest.raises(ValueError, match="unknown report sections"):
        registry.registered(["no-such-section"])


# ---------------------------------------------------------------------------- the command
def _cli(home: Path, *args: str) -> Any:
    from workflows.cli import app

    return CliRunner().invoke(app, ["report", SWEEP, *args], env={"SDN_HOME": str(home)})


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _only_sections(monkeypatch: pytest.MonkeyPatch, *keys: str) -> None:
    """Build only these sections (the command's tests are about writing, not content)."""
    from workflows.report import registry

    registry.load_section_modules()
    kept = {k: v for k, v in registry._REGISTRY.items() if k in keys}
    monkeypatch.setattr(registry, "_REGISTRY", kept)


def _raising_section(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    from workflows.report import registry

    def fail(ctx: Any) -> Any:
        raise exc

    monkeypatch.setitem(
        registry._REGISTRY, "zz-fails", registry.SectionSpec("zz-fails", "fails", 95, fail, "t")
    )


def test_a_failing_report_leaves_the_previous_one_whole(home, monkeypatch):
    _only_sections(monkeypatch, "overview", "early-exit")
    done = _cli(home, "--no-mlflow")
    assert done.exit_code == 0, done.output
    report = home / "reports" / SWEEP
    assert done.stdout.splitlines()[0] == str(report / "index.html")
    before = _digest(report)
    assert "index.html" in before
    _raising_section(monkeypatch, RuntimeError("a section's bug"))
    failed = _cli(home, "--no-mlflow")
    assert failed.exit_code == 70 and "a section's bug" in failed.stderr
    assert "Traceback" not in failed.output
    assert _digest(report) == before  # every byte of the earlier report
    assert sorted(p.name for p in report.parent.iterdir()) == [SWEEP]  # no temporary left


def test_logged_to_the_sweeps_mlflow_run_and_an_unreachable_mlflow_is_exit_3(
    home, tmp_path, monkeypatch
):
    from requests.exceptions import ConnectionError as RequestsConnectionError

    from storage.mlflow_setup import ensure_tracking_store, make_client
    from workflows import tracking

    _only_sections(monkeypatch, "overview", "early-exit")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # anything written relative to the working directory shows here
    uri = f"sqlite:///{home / 'mlflow.db'}"
    ensure_tracking_store(uri)
    client = make_client(uri)
    parent = tracking.ensure_sweep_run(
        client,
        # Artifacts under the home, as a sweep puts them (never ./mlruns in the working directory).
        tracking.ensure_experiment(client, SWEEP, (home / "mlartifacts").as_uri()),
        SWEEP,
        {},
    )
    out = tmp_path / "logged"
    done = _cli(home, "--out", str(out))
    assert done.exit_code == 0, done.output
    assert parent in done.stdout
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert "report/index.html" in logged and "report/accuracy_vs_cost.png" in logged
    before = _digest(out)

    # MLflow goes away while the report is logged: exit 3, the earlier report left whole.
    import workflows.report.build as build

    def unreachable(*_a: Any, **_k: Any) -> None:
        raise RequestsConnectionError(
            "HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded "
            "(Caused by NewConnectionError: Connection refused)"
        )

    monkeypatch.setattr(build, "_log_to_mlflow", unreachable)
    failed = _cli(home, "--out", str(out))
    assert failed.exit_code == 3 and "unreachable" in failed.stderr, failed.output
    assert _digest(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["cwd", "logged"]
    assert list(cwd.iterdir()) == []


def test_a_one_run_report_folds_in_its_cnn(home, tmp_path):
    from workflows.report import make_report, plots
    from workflows.report.build import load_context

    run_id = f"{SWEEP}.wrn32_4.digits.ic_only.s0"
    with Catalogue(home / "catalogue.db", read_only=True) as cat:
        files = make_report(cat, run_id, tmp_path / "one", predictions_root=home / "predictions")
        ctx = load_context(cat, run_id, tmp_path / "ctx", None)
        fig, _ = plots.cost_accuracy_run(ctx, ctx.analysed.iloc[0], "confidence")
    page = Page()
    page.feed(files[0].read_text(encoding="utf-8"))
    assert len(page.tables["runs"]) == 1
    assert len(page.tables["early-exit-confidence"]) == 7
    # The CNN is not in the report's scope, yet its figure has the CNN as star and line.
    assert f"cnn:{SWEEP}.wrn32_4.digits.cnn.s0" in _lines(fig)
    _close(fig)


def test_a_failed_run_is_listed_with_its_error_and_drawn_nowhere(tmp_path):
    """A sweep with a failed cell still gets its report: the run is in the overview and has a
    part saying why, with no figures; names then carry the seed, which now varies."""
    from bench.quickstart_catalogue import build
    from storage.catalogue import RunRecord
    from workflows.report.build import load_context, render_sections
    from workflows.report.sections.runs import run_part

    path = build(tmp_path / "catalogue.db")
    with Catalogue(path) as cat:
        record = RunRecord(f"{SWEEP}.resnet56.digits.sdn.s1", SWEEP, "resnet56", "digits", "sdn", 1)
        record.status, record.error = "failed", "CUDA out of memory at epoch 3"
        cat.upsert_run(record)
    with Catalogue(path, read_only=True) as cat:
        ctx = load_context(cat, SWEEP, tmp_path / "r", None)
        assert len(ctx.runs) == 13 and len(ctx.analysed) == 12
        (overview,) = render_sections(ctx, ["overview"])
        failed = next(r for r in ctx.runs.itertuples() if r.status == "failed")
        part = run_part(ctx, failed).render()
    assert "resnet56 sdn s1" in overview.body and "CUDA out of memory at epoch 3" in overview.body
    assert 'class="badge bad">failed<' in overview.body
    assert "CUDA out of memory at epoch 3" in part and "<img" not in part
    assert ctx.files == []
