"""Turn whatever goes wrong while reading a sweep file into ONE line a user can act on.

Pydantic's own report is several lines per problem and speaks of "inputs"; the CLI prints errors on
one line (see ``sdn.errors``), so this module renders the first problem as
``<file>: <where>: <what> (got <value>)`` and counts the rest.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from sdn.errors import SDNError

_MAX_SHOWN = 60  # characters of an offending value shown in a message


class SweepSpecError(SDNError):
    """A sweep file (or preset name) is missing, unreadable or invalid. The message is one line."""


def show(value: object) -> str:
    """A short, single-line ``repr`` of a user's value (``repr`` escapes newlines)."""
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def location(loc: Sequence[int | str]) -> str:
    """``('overrides', 0, 'set', 'epochs')`` -> ``overrides[0].set.epochs``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _model_at(root: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model class found by walking ``loc`` down from ``root`` (None if it leaves models)."""
    current: Any = root
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, int):
            args = typing.get_args(current)
            if not args:
                return None
            current = args[0]
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = _field_by_key(current, part)
        if field is None:
            return None
        current = field.annotation
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """``X | None`` -> ``X``; anything else unchanged."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _field_by_key(model: type[BaseModel], key: str) -> Any:
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            return field
    return None


def allowed_keys(model: type[BaseModel]) -> list[str]:
    """The keys a YAML mapping for ``model`` may hold, in declaration order."""
    return [field.alias or name for name, field in model.model_fields.items()]


_SIMPLE = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "dict_type": "must be a mapping of keys to values",
    "model_type": "must be a mapping of keys to values",
    "model_attributes_type": "must be a mapping of keys to values",
}


def _message(error: dict[str, Any], root: type[BaseModel]) -> tuple[str, bool]:
    """(message, whether to append the offending value)."""
    kind, ctx = error["type"], error.get("ctx") or {}
    loc = tuple(error["loc"])
    if kind == "extra_forbidden":
        parent = loc[:-1]
        where = "at top level" if not parent else f"in {location(parent)}"
        model = _model_at(root, parent)
        allowed = f"; allowed: {', '.join(allowed_keys(model))}" if model else ""
        return f"unknown key {show(loc[-1])} {where}{allowed}", False
    if kind == "missing":
        parent = loc[:-1]
        where = "at top level" if not parent else f"in {location(parent)}"
        return f"missing required key {show(loc[-1])} {where}", False
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, "), False
    bounds = {
        "greater_than_equal": ("ge", ">="),
        "greater_than": ("gt", ">"),
        "less_than_equal": ("le", "<="),
        "less_than": ("lt", "<"),
    }
    if kind in bounds:
        key, sign = bounds[kind]
        return f"must be {sign} {_number(ctx.get(key))}", True
    if kind == "too_short":
        if ctx.get("min_length") == 1:
            return "must not be empty", False
        return f"must have at least {ctx.get('min_length')} entries", False
    if kind == "too_long":
        return (
            f"must have at most {ctx.get('max_length')} entries (got {ctx.get('actual_length')})",
            False,
        )
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters", True
    if kind == "string_too_short":
        return "must not be empty", True
    if kind == "string_pattern_mismatch":
        return f"must match the pattern {ctx.get('pattern')}", True
    if kind in _SIMPLE:
        return _SIMPLE[kind], True
    text = str(error.get("msg", kind))
    return text[:1].lower() + text[1:], True


def _number(value: object) -> object:
    """1.0 -> 1 (bounds read better without a trailing .0); other values unchanged."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def format_validation_error(label: str, exc: ValidationError, root: type[BaseModel]) -> str:
    """One line for the first problem in ``exc`` (loc, message, value), plus a count of the rest."""
    errors = exc.errors(include_url=False)
    # A misspelt key also makes the real one "missing": report the misspelling, it is the cause.
    errors.sort(key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    message, with_value = _message(first, root)
    if with_value:
        message += f" (got {show(first.get('input'))})"
    # unknown/missing-key messages say where themselves
    where = "" if first["type"] in ("extra_forbidden", "missing") else location(first["loc"])
    line = f"{label}: {where}: {message}" if where else f"{label}: {message}"
    if len(errors) > 1:
        more = len(errors) - 1
        line += f" (and {more} more problem{'s' if more > 1 else ''})"
    return " ".join(line.split("\n"))
