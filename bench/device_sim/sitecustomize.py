"""Imitate the lent GPU machine's Python packages on this one (``bench/gpu_check.sh --dry-run``).

The device's image lacks some of the project's dependencies (KINDS.md's package list: no Ray,
MLflow, SQLAlchemy, Alembic, DuckDB or pydantic), and nothing can be installed there without
carried wheels. A dry run that imported them freely here would hide a step that fails there, so
gpu_check.sh puts this folder first on PYTHONPATH and names the missing top-level modules in
``SDN_DEVICE_MISSING``; Python runs this file at start-up (``site`` imports ``sitecustomize``), in
every interpreter of the run, subprocesses included, and any import of those modules fails as it
would on the device.
"""

from __future__ import annotations

import os
import sys
from importlib.abc import MetaPathFinder

_MISSING = frozenset(m.strip() for m in os.environ.get("SDN_DEVICE_MISSING", "").split(",") if m)


class _Missing(MetaPathFinder):
    """Refuses the listed top-level modules (and their submodules) as an absent package would."""

    def find_spec(self, fullname, path=None, target=None):  # type: ignore[no-untyped-def]
        if fullname.partition(".")[0] in _MISSING:
            raise ModuleNotFoundError(
                f"No module named {fullname!r} (not on the GPU machine: SDN_DEVICE_MISSING)",
                name=fullname,
            )
        return None


if _MISSING:
    sys.meta_path.insert(0, _Missing())
