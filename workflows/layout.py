"""Where a sweep's per-cell files live under the (shared) Tune storage root.

    <tune>/<sweep>/cells/<run_id>/checkpoint/   latest training state (resumes a trial)
    <tune>/<sweep>/cells/<run_id>/final/        the finished model + result.json (the "done" marker)
    <tune>/<sweep>/experiments/                 Ray Tune's own experiment folders, one per launch

Workers and the driver agree on these paths and nothing else, so on a cluster the Tune root must be
shared storage (NFS or similar) that every node mounts at the same path.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"


def sweep_dir(tune_root: str | Path, sweep: str) -> Path:
    return Path(tune_root) / sweep


def cell_dir(tune_root: str | Path, sweep: str, run_id: str) -> Path:
    return sweep_dir(tune_root, sweep) / "cells" / run_id


def checkpoint_dir(tune_root: str | Path, sweep: str, run_id: str) -> Path:
    return cell_dir(tune_root, sweep, run_id) / "checkpoint"


def final_dir(tune_root: str | Path, sweep: str, run_id: str) -> Path:
    return cell_dir(tune_root, sweep, run_id) / "final"


def experiments_dir(tune_root: str | Path, sweep: str) -> Path:
    return sweep_dir(tune_root, sweep) / "experiments"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON via a temporary file and a rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_result(tune_root: str | Path, sweep: str, run_id: str) -> dict[str, Any] | None:
    """The finished cell's result record, or None while the cell is not done."""
    path = final_dir(tune_root, sweep, run_id) / RESULT_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError):
        return None
