"""The report's sections: each is a small function registered under a key, a title and an order.

``make_report`` builds every registered section, in ``order``, into one page. A section module
registers its functions with :func:`section` when it is imported; every module in the package
``workflows.report.sections`` is imported before a report is built, so a new module there adds
its sections without any other file changing (see the package docstring of
``workflows.report``).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workflows.report.context import ReportContext
    from workflows.report.html import Block

Builder = Callable[["ReportContext"], "list[Block] | None"]


@dataclass(frozen=True)
class SectionSpec:
    key: str  # the HTML anchor, unique
    title: str
    order: float  # sections are shown by increasing order (built-in ones use 10, 20, ... 90)
    build: Builder  # returns the section's blocks, or None when it has nothing to show
    module: str


_REGISTRY: dict[str, SectionSpec] = {}


def section(key: str, title: str, order: float = 100.0) -> Callable[[Builder], Builder]:
    """Register the decorated function as the report section ``key``.

    A key registered twice by different functions is a mistake (two sections would share an
    anchor) and raises ``ValueError``; re-importing the same module replaces its own entry.
    """
    if not key or not key.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"section key {key!r}: use letters, digits, '-' and '_'")

    def register(build: Builder) -> Builder:
        module = getattr(build, "__module__", "?")
        name = f"{module}.{getattr(build, '__qualname__', '?')}"
        old = _REGISTRY.get(key)
        if old is not None and f"{old.module}.{getattr(old.build, '__qualname__', '?')}" != name:
            raise ValueError(f"report section {key!r} is already registered by {old.module}")
        _REGISTRY[key] = SectionSpec(key, title, float(order), build, module)
        return build

    return register


def load_section_modules() -> list[str]:
    """Import every module of ``workflows.report.sections`` (each registers its sections)."""
    from workflows.report import sections as package

    names = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        importlib.import_module(f"{package.__name__}.{info.name}")
        names.append(info.name)
    return names


def registered(keys: Any = None) -> list[SectionSpec]:
    """The registered sections in page order (only ``keys``, in page order, when given)."""
    load_section_modules()
    specs = sorted(_REGISTRY.values(), key=lambda s: (s.order, s.key))
    if keys is None:
        return specs
    wanted = list(keys)
    unknown = [k for k in wanted if k not in _REGISTRY]
    if unknown:
        raise ValueError(f"unknown report sections {unknown}; known: {sorted(_REGISTRY)}")
    return [s for s in specs if s.key in wanted]
