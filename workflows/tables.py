"""Tables for people, CSV and JSON for programs: how every ``sdn`` listing is printed.

Each listing has a :class:`View`: its columns, in order, each with a readable header, a format
(percentages, costs, times...) and whether a person sees it by default. The default table shows
the few columns read first and must fit 100 terminal columns on the quickstart catalogue (a test
checks every listing); ``--wide`` shows every column, ``--columns a,b,c`` exactly those (by key),
and ``--format csv|json`` prints the raw values of every column (or of ``--columns``) for
programs, with the keys as names. Identity columns marked ``collapse`` (sweep, dataset, seed...)
leave the default table when every row has the same value, which is said once above it instead.

Adding a column to a listing: give the query's field a :class:`Col` in that listing's view
(``default=False`` keeps the default table narrow; it still shows with ``--wide`` and in CSV/JSON).
Adding a listing: define a ``View`` and print through :func:`emit`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sdn.errors import SDNError
from storage.catalogue.readonly import Rows


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def _text(value: Any) -> str:
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _pct(value: Any) -> str:
    number = _number(value)
    return "" if number is None else f"{100 * number:.1f}%"


def _points(value: Any) -> str:
    number = _number(value)
    return "" if number is None else f"{100 * number:+.1f} pt"


def _cost(value: Any) -> str:
    number = _number(value)
    return "" if number is None else f"{number:.2f}"


def _threshold(value: Any) -> str:
    number = _number(value)
    return "" if number is None else f"{number:.3g}"


def _float(value: Any) -> str:
    number = _number(value)
    if number is None:
        return "" if value is None else _text(value)
    return f"{number:.4g}"


def _dec2(value: Any) -> str:
    number = _number(value)
    return "" if number is None else f"{number:.2f}"


def _auto(value: Any) -> str:
    """For columns no view describes (``catalogue sql``): numbers compact, the rest as text."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _text(value)
    if isinstance(value, int):
        return str(value)
    return _float(value)


def _int(value: Any) -> str:
    number = _number(value)
    return "" if number is None else f"{number:.0f}"


def _time(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, date):
        return value.isoformat()
    text = str(value)
    return text[:16].replace("T", " ") if len(text) >= 16 and text[4] == "-" else text


def _bool(value: Any) -> str:
    return "yes" if value else "no"


def _mega(value: Any) -> str:
    number = _number(value)
    return "" if number is None else f"{number / 1e6:.1f}M"


def _count(value: Any) -> str:
    """Counts that may be large, in at most five characters: 15528, 45.0k, 4.50M."""
    number = _number(value)
    if number is None:
        return ""
    if abs(number) < 100_000:
        return f"{number:.0f}"
    if abs(number) < 1e6:
        return f"{number / 1e3:.1f}k"
    return f"{number / 1e6:.3g}M"


def _pct_list(value: Any) -> str:
    if not isinstance(value, list | tuple):
        return _text(value)
    return " ".join(f"{100 * v:.0f}" if _number(v) is not None else "-" for v in value)


FORMATTERS: dict[str, Callable[[Any], str]] = {
    "text": _text,
    "pct": _pct,  # a fraction shown as a percentage: 0.9723 -> 97.2%
    "pt": _points,  # a difference of fractions in percentage points: -0.008 -> -0.8 pt
    "cost": _cost,  # a cost relative to the CNN: 0.4213 -> 0.42
    "threshold": _threshold,
    "float": _float,
    "dec2": _dec2,
    "auto": _auto,
    "int": _int,
    "time": _time,  # UTC, to the minute
    "bool": _bool,
    "mega": _mega,  # FLOPs and other large counts, in millions
    "count": _count,  # image counts, work: 15528, 450.0k, 4.5M
    "pct_list": _pct_list,  # a list of fractions as space-separated percentages
}


@dataclass(frozen=True)
class Col:
    """One column of a view: the field ``key`` of the query, shown as ``header``."""

    key: str
    header: str
    kind: str = "text"
    default: bool = True
    collapse: bool = False  # leaves the default table when all rows agree (said above it)
    optional: bool = False  # leaves the default table when every row is empty (errors, say)
    max_width: int | None = None  # longer text ends in an ellipsis (the full value: CSV/JSON)
    whole: bool = False  # never shortened (identifiers a person copies)
    right: bool = False

    def __post_init__(self) -> None:
        if self.kind not in FORMATTERS:
            raise ValueError(f"unknown column kind {self.kind!r}")

    def format(self, value: Any) -> str:
        if value is None:
            return ""
        return FORMATTERS[self.kind](value)


@dataclass(frozen=True)
class View:
    """How one listing is shown: its title and columns (see the module docstring)."""

    command: str  # e.g. "sdn catalogue runs", for messages
    title: str
    cols: tuple[Col, ...]
    empty: str = "(no rows)"
    open: bool = False  # by default show every column of the data (``catalogue sql``)
    index: dict[str, Col] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {c.key: c for c in self.cols})

    def col(self, key: str) -> Col:
        """The column of ``key`` (a plain one, headed by the key, when the view has none)."""
        return self.index.get(key) or Col(key, key, "auto")


@dataclass
class Choice:
    """What the user asked for: ``--format``, ``--columns``, ``--wide``."""

    fmt: Format = Format.table
    columns: list[str] | None = None
    wide: bool = False

    @classmethod
    def parse(cls, fmt: Format, columns: str | None, wide: bool) -> Choice:
        keys = None
        if columns is not None:
            keys = [k.strip() for k in columns.split(",") if k.strip()]
            if not keys:
                raise SDNError("--columns needs column names, e.g. --columns arch,status")
            if len(set(keys)) != len(keys):
                raise SDNError(f"--columns names a column twice: {columns}")
        return cls(fmt, keys, wide)


def check_columns(view: View, choice: Choice, available: Iterable[str] = ()) -> None:
    """Refuse ``--columns`` naming something the listing does not have (before any work)."""
    if choice.columns is None:
        return
    known = list(dict.fromkeys([*(c.key for c in view.cols), *available]))
    unknown = [k for k in choice.columns if k not in known]
    if unknown:
        raise SDNError(
            f"--columns: {view.command} has no column {', '.join(map(repr, unknown))}; "
            f"choose from: {', '.join(known)}"
        )


def _selected(view: View, rows: Rows, choice: Choice) -> tuple[list[str], list[str]]:
    """(keys to print, notes about collapsed columns) for the rows at hand."""
    if choice.columns is not None:
        check_columns(view, choice, rows.columns)
        return list(choice.columns), []
    present = set(rows.columns)
    if choice.fmt is not Format.table:
        return list(rows.columns), []
    if choice.wide:
        keys = [c.key for c in view.cols if c.key in present]
        return keys + [k for k in rows.columns if k not in view.index], []
    if view.open:
        return list(rows.columns), []
    keys, notes = [], []
    for col in view.cols:
        if not col.default or col.key not in present:
            continue
        if col.optional and all(v in (None, "", [], {}) for v in rows.column(col.key)):
            continue
        if col.collapse and len(rows) > 1:
            values = {_hashable(v) for v in rows.column(col.key)}
            if len(values) == 1:
                notes.append(f"{col.header}: {col.format(rows.column(col.key)[0]) or '-'}")
                continue
        keys.append(col.key)
    return keys, notes


def _hashable(value: Any) -> Any:
    return (
        json.dumps(value, sort_keys=True, default=str) if isinstance(value, list | dict) else value
    )


def emit(
    rows: Rows,
    view: View,
    choice: Choice,
    *,
    notes: Sequence[str] = (),
    console: Any = None,
    title: str | None = None,
) -> None:
    """Print ``rows`` as the user chose (see the module docstring). ``notes`` are lines for
    people (a default that changed the answer, say): shown with the table, left out of CSV/JSON.
    """
    keys, collapsed = _selected(view, rows, choice)
    positions = [rows.columns.index(k) if k in rows.columns else None for k in keys]
    if choice.fmt is Format.csv:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(keys)
        for row in rows.rows:
            writer.writerow([_csv_value(None if p is None else row[p]) for p in positions])
        sys.stdout.write(buffer.getvalue())
        return
    if choice.fmt is Format.json:
        records = [
            {
                k: _json_value(None if p is None else row[p])
                for k, p in zip(keys, positions, strict=True)
            }
            for row in rows.rows
        ]
        sys.stdout.write(json.dumps(records, ensure_ascii=False, default=str) + "\n")
        return
    notes = [*notes, *_join(collapsed)]
    _print_table(rows, view, keys, positions, notes, console, title, choice.wide)


def _join(collapsed: list[str]) -> list[str]:
    return ["all rows: " + " · ".join(collapsed)] if collapsed else []


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, separators=(",", ":"), default=str)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    return value


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bytes):
        return value.hex()
    return value


def _print_table(
    rows: Rows,
    view: View,
    keys: list[str],
    positions: list[int | None],
    notes: list[str],
    console: Any,
    title: str | None,
    wide: bool = False,
) -> None:
    from rich import box
    from rich.table import Table

    from workflows.console import make_console

    console = console or make_console()
    if title or view.title:
        console.print(title or view.title, highlight=False, markup=False, soft_wrap=True)
    for note in notes:
        console.print(note, highlight=False, markup=False, soft_wrap=True)
    if rows.empty:
        console.print(view.empty, highlight=False, markup=False)
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, header_style="bold")
    cols = [view.col(k) for k in keys]
    cells = [
        ["" if p is None else col.format(row[p]) for col, p in zip(cols, positions, strict=True)]
        for row in rows.rows
    ]
    for i, (col, p) in enumerate(zip(cols, positions, strict=True)):
        longest = max([len(col.header), *(len(r[i]) for r in cells)])
        if col.kind == "auto":
            values = [row[p] for row in rows.rows if p is not None and row[p] is not None]
            right = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        else:
            right = col.right or col.kind not in ("text", "time", "bool")
        table.add_column(
            col.header,
            justify="right" if right else "left",
            no_wrap=True,
            overflow="ellipsis",
            max_width=col.max_width,
            min_width=longest if col.whole else None,
        )
    for row_cells in cells:
        table.add_row(*row_cells)
    if wide:  # every column whole, however wide the terminal (``less -S`` scrolls)
        from rich.measure import Measurement

        natural = Measurement.get(console, console.options.update(width=10_000), table).maximum
        before = console.width
        console.width = max(before, natural)
        try:
            console.print(table)
        finally:
            console.width = before
    else:
        console.print(table)
