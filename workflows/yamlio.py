"""Reading sweep YAML strictly: bytes -> text -> plain Python data, each failure one clear line.

Plain ``yaml.safe_load`` has two habits that silently change a sweep: a key given twice keeps
only the last value, and ``1e-3`` (no dot) is read as the *string* "1e-3" (YAML 1.1). The loader
here rejects the first and reads the second as the float users mean.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from workflows.spec_errors import SweepSpecError, show

MAX_FILE_BYTES = 1 << 20  # a sweep file is a page of settings; anything larger is a mistake


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader (no Python objects) that refuses duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable key: let the base class report it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"duplicate key {show(key)}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 floats need a dot; accept the exponent-only spellings (1e-3, 5E+2) as floats too.
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_text(path: Path, label: str) -> str:
    """The file's text, or a SweepSpecError naming what stopped us reading it."""
    try:
        if path.is_dir():
            raise SweepSpecError(f"{label}: is a directory, not a sweep file")
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise SweepSpecError(
                f"{label}: file is too large ({size} bytes; at most {MAX_FILE_BYTES})"
            )
        data = path.read_bytes()
    except FileNotFoundError:
        raise SweepSpecError(f"{label}: no such file") from None
    except PermissionError:
        raise SweepSpecError(f"{label}: cannot read the file (permission denied)") from None
    except OSError as exc:
        raise SweepSpecError(f"{label}: cannot read the file ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        byte = data[exc.start]
        raise SweepSpecError(
            f"{label}: not UTF-8 text (byte 0x{byte:02x} at offset {exc.start})"
        ) from None


def parse_yaml(text: str, label: str) -> Any:
    """Plain data from YAML text; malformed YAML becomes one line with its line and column."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no Python objects
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(str(exc.problem or exc.context or "cannot parse").split())
        raise SweepSpecError(f"{label}: malformed YAML{where}: {problem}") from None
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())
        raise SweepSpecError(f"{label}: malformed YAML: {problem}") from None
    except RecursionError:
        raise SweepSpecError(f"{label}: malformed YAML: nested too deeply") from None
