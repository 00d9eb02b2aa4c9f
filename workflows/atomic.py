"""All-or-nothing output for the CLI: write into a temporary sibling, then rename into place.

A command that fails half-way (a damaged Parquet file, an unreachable MLflow, a full disk, Ctrl-C)
leaves the previous output exactly as it was and no partial one: the new folder or file becomes
visible only by a rename in the same directory, once it is complete. Temporary names start with a
dot and say what they are (``.report.tmp-1a2b3c``), so a leftover from a killed process is
recognisable; the next successful write of the same target removes such leftovers once they
are an hour old (a younger one may belong to a concurrent writer).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path


def _check_parent(target: Path) -> None:
    """The target's folder must exist or be creatable (not under a regular file)."""
    probe = target.parent
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(20, "Not a directory", str(target))


def _make_parents(target: Path) -> list[Path]:
    """Create ``target``'s missing parent folders; return them, deepest first (to undo)."""
    missing = []
    probe = target.parent
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    target.parent.mkdir(parents=True, exist_ok=True)
    return missing


def _undo_parents(created: list[Path]) -> None:
    for folder in created:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if still empty


STALE_S = 3600.0  # a temporary sibling this old belongs to a process that died


def _clean_leftovers(target: Path, keep: Path) -> None:
    now = time.time()
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        try:
            young = now - stale.stat().st_mtime < STALE_S
        except OSError:
            continue
        if stale == keep or (young and "-old-" not in stale.name):
            continue
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(target: Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; on success it replaces ``target``.

    ``replace=False`` refuses (FileExistsError) to replace a folder that holds anything.
    The old folder is moved aside first and deleted only after the new one is in place.
    """
    target = Path(target).absolute()
    _check_parent(target)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(20, "Not a directory", str(target))
    if not replace and target.is_dir() and any(target.iterdir()):
        raise FileExistsError(17, "Folder exists and is not empty", str(target))
    created = _make_parents(target)
    try:
        temp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except BaseException:
        _undo_parents(created)
        raise
    try:
        yield temp
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.tmp-old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
        os.replace(temp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _clean_leftovers(target, keep=target)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        _undo_parents(created)
        raise


def atomic_write_text(target: Path, text: str) -> None:
    """Write ``text`` to ``target`` through a temporary sibling and a rename."""
    target = Path(target).absolute()
    _check_parent(target)
    if target.is_dir():
        raise IsADirectoryError(21, "Is a directory", str(target))
    created = _make_parents(target)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    except BaseException:
        _undo_parents(created)
        raise
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(name, target)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        _undo_parents(created)
        raise
