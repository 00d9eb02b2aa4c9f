"""The report's HTML: blocks a section is made of (tables, figures, facts, notes) and the page.

Everything is inline (CSS, the sorting script, images as base64 PNG), so ``index.html`` opens from
disk in any browser with no server and no network. Numbers are formatted by the CLI's own
formatters (``workflows.tables.FORMATTERS``), so a percentage reads the same in both; each cell
also carries its raw value (``data-sort``), which is what a click on a column header sorts by.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from workflows.tables import FORMATTERS


def missing(value: Any) -> bool:
    """None, NaN or NaT (pandas' missing values): shown as an empty cell or a dash."""
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN and NaT are the values unequal to themselves
    except (TypeError, ValueError):
        return False


def plain(value: Any) -> Any:
    """A stored value as a person reads it: missing -> None, 12.0 -> 12 (pandas turns an
    integer column with a gap into floats)."""
    if missing(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def esc(value: Any) -> str:
    return html.escape("" if missing(value) else str(value), quote=True)


class Block:
    """Something a section shows; ``render`` returns its HTML."""

    def render(self) -> str:  # pragma: no cover - every block overrides it
        raise NotImplementedError


@dataclass
class Html(Block):
    """Trusted HTML written by a section (escape any data in it with :func:`esc`)."""

    text: str

    def render(self) -> str:
        return self.text


@dataclass
class Note(Block):
    """A paragraph of plain text (escaped)."""

    text: str
    muted: bool = True

    def render(self) -> str:
        return f'<p class="{"note" if self.muted else "text"}">{esc(self.text)}</p>'


@dataclass
class Facts(Block):
    """A short list of name: value pairs (escaped)."""

    items: Sequence[tuple[str, Any]]

    def render(self) -> str:
        rows = "".join(
            f"<dt>{esc(k)}</dt><dd>{'&ndash;' if missing(v) or v == '' else esc(v)}</dd>"
            for k, v in self.items
        )
        return f'<dl class="facts">{rows}</dl>'


@dataclass
class Figure(Block):
    """A PNG embedded as base64, with a caption."""

    png: bytes
    alt: str
    caption: str = ""
    name: str = ""  # the PNG's path in the report folder, for people who want the file
    wide: bool = False

    def render(self) -> str:
        data = base64.b64encode(self.png).decode("ascii")
        caption = esc(self.caption)
        if self.name:
            caption += f' <span class="file">({esc(self.name)})</span>'
        cls = "fig wide" if self.wide else "fig"
        return (
            f'<figure class="{cls}"><img alt="{esc(self.alt)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{caption}</figcaption></figure>'
        )


@dataclass
class Figures(Block):
    """Figures side by side where the page is wide enough."""

    figures: list[Figure]

    def render(self) -> str:
        return '<div class="figs">' + "".join(f.render() for f in self.figures) + "</div>"


@dataclass
class Cell:
    """A table cell: the text shown, the value sorted by, optional trusted HTML and CSS class."""

    text: str
    sort: Any = None
    html: str | None = None
    cls: str = ""


@dataclass
class Column:
    """A column: its header and how values are shown (a ``workflows.tables`` formatter kind)."""

    header: str
    kind: str = "text"
    title: str = ""  # a tooltip explaining the column

    @property
    def numeric(self) -> bool:
        return self.kind not in ("text", "time", "bool")


def cell(value: Any, kind: str = "text") -> Cell:
    """The cell of a raw value, formatted as the CLI formats that kind of column."""
    if isinstance(value, Cell):
        return value
    if missing(value):
        return Cell("", None)
    text = FORMATTERS[kind](value) if kind in FORMATTERS else str(value)
    return Cell(text, value)


def _sort_attr(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int | float):
        return "" if isinstance(value, float) and not math.isfinite(value) else repr(value)
    return esc(value)


@dataclass
class Table(Block):
    """A sortable table. ``key`` names it for scripts and tests (``data-table``)."""

    key: str
    columns: list[Column]
    rows: list[list[Any]]
    caption: str = ""
    groups: list[tuple[str, int]] = field(default_factory=list)  # header cells over columns

    def render(self) -> str:
        head = ""
        if self.groups:
            head += (
                '<tr class="group">'
                + "".join(f'<th colspan="{span}">{esc(name)}</th>' for name, span in self.groups)
                + "</tr>"
            )
        head += (
            "<tr>"
            + "".join(
                f'<th class="{"num" if c.numeric else ""}" title="{esc(c.title or "sort")}" '
                f'tabindex="0">{esc(c.header)}</th>'
                for c in self.columns
            )
            + "</tr>"
        )
        body = []
        for row in self.rows:
            cells = []
            for col, value in zip(self.columns, row, strict=True):
                c = cell(value, col.kind)
                classes = " ".join(x for x in ("num" if col.numeric else "", c.cls) if x)
                content = c.html if c.html is not None else esc(c.text)
                cells.append(
                    f'<td class="{classes}" data-sort="{_sort_attr(c.sort)}">{content}</td>'
                )
            body.append("<tr>" + "".join(cells) + "</tr>")
        caption = f"<caption>{esc(self.caption)}</caption>" if self.caption else ""
        return (
            f'<div class="tablewrap"><table class="sortable" data-table="{esc(self.key)}">'
            f"{caption}<thead>{head}</thead><tbody>{''.join(body)}</tbody></table></div>"
        )


@dataclass
class Subsection(Block):
    """A titled part of a section with its own anchor (each run's part of "Runs")."""

    key: str
    title: str
    blocks: list[Block]
    badge: str = ""

    def render(self) -> str:
        badge = f" {self.badge}" if self.badge else ""
        inner = "".join(b.render() for b in self.blocks)
        return (
            f'<section class="sub" id="{esc(self.key)}"><h3>{esc(self.title)}{badge}</h3>'
            f"{inner}</section>"
        )


def badge(status: str | None) -> str:
    """A coloured status word: met / unmet / none certified / done / failed..."""
    if not status:
        return ""
    kind = {
        "met": "ok", "done": "ok", "unmet": "warn", "none certified": "bad", "failed": "bad",
        "skipped": "warn", "running": "info", "pending": "info", "trained": "info",
    }.get(status, "info")  # fmt: skip
    return f'<span class="badge {kind}">{esc(status)}</span>'


# ---------------------------------------------------------------------------- the page
CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --bg:#ffffff; --soft:#f6f8fa;
  --accent:#0b5cad; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
  color:var(--fg); background:var(--bg); }
header.top { padding:18px 28px 12px; border-bottom:1px solid var(--line); background:var(--soft); }
header.top h1 { margin:0 0 4px; font-size:22px; font-weight:600; }
header.top .meta { color:var(--muted); font-size:13px; }
.layout { display:flex; align-items:flex-start; }
nav.toc { position:sticky; top:0; flex:0 0 220px; max-height:100vh; overflow:auto;
  padding:16px 12px 24px 20px; border-right:1px solid var(--line); font-size:13px; }
nav.toc a { color:var(--fg); text-decoration:none; display:block; padding:2px 0; }
nav.toc a:hover { color:var(--accent); }
nav.toc .runs a { padding-left:12px; color:var(--muted); font-size:12px; }
main { flex:1 1 auto; min-width:0; padding:8px 28px 48px; max-width:1400px; }
section.top { border-bottom:1px solid var(--line); padding:10px 0 22px; }
h2 { font-size:18px; margin:18px 0 8px; font-weight:600; }
h3 { font-size:15px; margin:20px 0 6px; font-weight:600; }
p.note { color:var(--muted); margin:6px 0 10px; max-width:900px; }
p.text { margin:6px 0 10px; max-width:900px; }
dl.facts { display:grid; grid-template-columns:max-content minmax(0,1fr); gap:2px 16px;
  margin:8px 0 12px; max-width:1100px; }
@media (min-width: 1200px) { dl.facts { grid-template-columns:max-content minmax(0,1fr)
  max-content minmax(0,1fr); } }
dl.facts dt { color:var(--muted); }
dl.facts dd { margin:0; font-family:ui-monospace,"DejaVu Sans Mono",monospace; font-size:12.5px;
  overflow-wrap:anywhere; }
.tablewrap { overflow:auto; margin:8px 0 14px; max-height:560px; width:fit-content;
  max-width:100%; border:1px solid var(--line); border-radius:6px; }
table { border-collapse:collapse; font-size:12.5px; }
caption { text-align:left; padding:6px 8px; color:var(--muted); caption-side:top; }
th, td { padding:4px 10px; border-bottom:1px solid #eaeef2; white-space:nowrap; }
thead th { position:sticky; top:0; background:var(--soft); text-align:left; cursor:pointer;
  user-select:none; font-weight:600; border-bottom:1px solid var(--line); }
thead tr.group th { cursor:default; text-align:center; color:var(--muted); font-weight:500;
  border-bottom:none; }
thead tr.group th { position:static; }
th.num, td.num { text-align:right; font-variant-numeric:tabular-nums; }
thead th[aria-sort="ascending"]::after { content:" \\25B2"; font-size:9px; }
thead th[aria-sort="descending"]::after { content:" \\25BC"; font-size:9px; }
tbody tr:nth-child(even) { background:#fafbfc; }
tbody tr:hover { background:#eef4fb; }
td a { color:var(--accent); text-decoration:none; }
.mono { font-family:ui-monospace,"DejaVu Sans Mono",monospace; font-size:12px; }
.badge { display:inline-block; padding:0 6px; border-radius:9px; font-size:11.5px; line-height:17px; }
.badge.ok { background:#dafbe1; color:#1a7f37; }
.badge.warn { background:#fff8c5; color:#9a6700; }
.badge.bad { background:#ffebe9; color:#cf222e; }
.badge.info { background:#ddf4ff; color:#0969da; }
.figs { display:flex; flex-wrap:wrap; gap:14px; }
figure.fig { margin:8px 0; flex:0 1 auto; max-width:100%; }
figure.fig img { display:block; max-width:100%; height:auto; border:1px solid #eaeef2;
  border-radius:4px; }
figure.fig figcaption { max-width:780px; }
figcaption { color:var(--muted); font-size:12.5px; margin-top:4px; }
figcaption .file { font-family:ui-monospace,monospace; font-size:11px; }
section.sub { border-top:1px dashed var(--line); margin-top:14px; }
footer { color:var(--muted); font-size:12px; padding:20px 28px; border-top:1px solid var(--line); }
@media (max-width: 900px) { nav.toc { display:none; } main { padding:8px 14px; } }
"""

# Sorting: a click (or Enter) on a header sorts the table's rows by that column's data-sort
# values, numerically when every non-empty value is a number; empty cells go last either way.
JS = """
(function () {
  function key(td) { return td ? td.getAttribute('data-sort') : ''; }
  function sortBy(th) {
    var table = th.closest('table');
    var row = th.parentNode, index = Array.prototype.indexOf.call(row.children, th);
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var values = rows.map(function (r) { return key(r.cells[index]); });
    var numeric = values.every(function (v) { return v === '' || !isNaN(Number(v)); });
    var up = th.getAttribute('aria-sort') !== 'ascending';
    rows = rows.map(function (r, i) { return [values[i], i, r]; });
    rows.sort(function (a, b) {
      var x = a[0], y = b[0];
      if (x === '' || y === '') { return x === y ? a[1] - b[1] : (x === '' ? 1 : -1); }
      var c = numeric ? Number(x) - Number(y) : x.localeCompare(y, undefined, {numeric: true});
      return (up ? c : -c) || a[1] - b[1];
    });
    rows.forEach(function (r) { body.appendChild(r[2]); });
    Array.prototype.forEach.call(table.querySelectorAll('thead th'), function (h) {
      h.removeAttribute('aria-sort');
    });
    th.setAttribute('aria-sort', up ? 'ascending' : 'descending');
  }
  document.querySelectorAll('table.sortable thead tr:last-child th').forEach(function (th) {
    th.addEventListener('click', function () { sortBy(th); });
    th.addEventListener('keydown', function (e) { if (e.key === 'Enter') { sortBy(th); } });
  });
})();
"""


@dataclass
class RenderedSection:
    key: str
    title: str
    body: str
    children: list[tuple[str, str]]  # (anchor, title) of subsections, for the contents


def page(title: str, meta: str, sections: Sequence[RenderedSection], footer: str) -> str:
    """The whole ``index.html``."""
    toc = []
    for s in sections:
        toc.append(f'<a href="#{esc(s.key)}">{esc(s.title)}</a>')
        if s.children:
            toc.append(
                '<div class="runs">'
                + "".join(f'<a href="#{esc(k)}">{esc(t)}</a>' for k, t in s.children)
                + "</div>"
            )
    body = "".join(
        f'<section class="top" id="{esc(s.key)}"><h2>{esc(s.title)}</h2>{s.body}</section>'
        for s in sections
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # No request may leave the page: nothing is fetched but the page's own inline content.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f'<header class="top"><h1>{esc(title)}</h1><div class="meta">{meta}</div></header>'
        f'<div class="layout"><nav class="toc">{"".join(toc)}</nav><main>{body}</main></div>'
        f"<footer>{footer}</footer><script>{JS}</script></body></html>\n"
    )
