"""Live progress of a sweep in the terminal: one row per cell, redrawn as Tune reports.

A Tune ``Callback`` runs in the driver process, which is also the catalogue's only writer, so the
same hooks keep each run's status in the catalogue current for ``sdn sweep status``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ray.tune import Callback
from rich.console import Console
from rich.live import Live
from rich.table import Table


@dataclass
class CellProgress:
    run_id: str
    arch: str
    dataset: str
    mode: str
    seed: int
    epochs: int
    status: str = "pending"
    epoch: int = 0
    loss: float | None = None
    val_acc: float | None = None
    started: float | None = None
    note: str = ""


@dataclass
class SweepBoard:
    """The state the live table shows; also used for the final summary."""

    title: str
    cells: dict[str, CellProgress] = field(default_factory=dict)

    def table(self) -> Table:
        table = Table(title=self.title, expand=False)
        for col in (
            "cell",
            "arch",
            "dataset",
            "mode",
            "seed",
            "status",
            "epoch",
            "loss",
            "val acc (final)",
            "time",
        ):
            table.add_column(
                col,
                justify="right"
                if col in {"seed", "epoch", "loss", "val acc (final)", "time"}
                else "left",
            )
        now = time.time()
        for c in self.cells.values():
            elapsed = f"{now - c.started:.0f}s" if c.started and c.status == "running" else ""
            style = {"failed": "red", "skipped": "yellow", "done": "green", "trained": "cyan"}.get(
                c.status
            )
            table.add_row(
                c.run_id.split(".", 1)[-1],
                c.arch,
                c.dataset,
                c.mode,
                str(c.seed),
                f"[{style}]{c.status}[/{style}]" if style else c.status,
                f"{c.epoch}/{c.epochs}",
                f"{c.loss:.3f}" if c.loss is not None else "",
                f"{c.val_acc:.3f}" if c.val_acc is not None else "",
                elapsed or c.note,
            )
        return table


class LiveBoard:
    """Context manager showing a ``SweepBoard`` live (plain lines when not a terminal)."""

    def __init__(self, board: SweepBoard, console: Console):
        self.board = board
        self.console = console
        self._live: Live | None = None

    def __enter__(self) -> LiveBoard:
        if self.console.is_terminal:
            self._live = Live(self.board.table(), console=self.console, refresh_per_second=2)
            self._live.__enter__()
        return self

    def refresh(self, line: str | None = None) -> None:
        if self._live is not None:
            self._live.update(self.board.table())
        elif line:
            self.console.print(line, highlight=False)

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.update(self.board.table())
            self._live.__exit__(*exc)


class ProgressCallback(Callback):
    """Feeds Tune's trial events into the board and into a status hook (the catalogue)."""

    def __init__(self, live: LiveBoard, on_status: Callable[[str, str, dict[str, Any]], None]):
        self.live = live
        self.on_status = on_status

    # Tune pickles its callbacks with the experiment state; the live display (locks, a terminal)
    # and the catalogue hook belong to this driver process only, so they are left out.
    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.live = LiveBoard(SweepBoard("restored"), Console(quiet=True))
        self.on_status = lambda *_args: None

    def _cell(self, trial) -> CellProgress | None:
        return self.live.board.cells.get(trial.config.get("run_id"))

    def on_trial_start(self, iteration, trials, trial, **info):
        cell = self._cell(trial)
        if cell:
            cell.status, cell.started = "running", time.time()
            self.on_status(cell.run_id, "running", {})
            self.live.refresh(f"started  {cell.run_id}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        cell = self._cell(trial)
        if cell is None:
            return
        cell.epoch = int(result.get("epoch", cell.epoch) or 0)
        cell.loss = result.get("loss", cell.loss)
        cell.val_acc = result.get("val_acc_final", cell.val_acc)
        acc = f"{cell.val_acc:.3f}" if cell.val_acc is not None else "-"
        self.live.refresh(f"epoch    {cell.run_id} {cell.epoch}/{cell.epochs} val_acc(final)={acc}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        cell = self._cell(trial)
        if cell:
            cell.status = "trained"
            self.on_status(cell.run_id, "trained", {})
            self.live.refresh(f"trained  {cell.run_id}")

    def on_trial_error(self, iteration, trials, trial, **info):
        cell = self._cell(trial)
        if cell:
            cell.status, cell.note = "failed", "see sdn sweep status"
            self.on_status(
                cell.run_id, "failed", {"error": str(getattr(trial, "error_msg", "") or "")[:500]}
            )
            self.live.refresh(f"FAILED   {cell.run_id}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        cell = self._cell(trial)
        if cell:
            cell.status, cell.note = "retrying", "from checkpoint"
            self.live.refresh(f"retrying {cell.run_id} from its checkpoint")
