"""A Tune searcher that hands out a sweep's cells in dependency order.

``ic_only`` cells train IC heads on top of their ``cnn`` cell's final weights, so they may only
start once that cell has finished. Rather than a barrier between two Tune runs (which would hold
every ``ic_only`` cell back until the slowest ``cnn`` and ``sdn`` cells finish), the searcher
releases each ``ic_only`` cell the moment its own parent completes, and everything else at once.
When a parent fails for good, its dependants are dropped and reported as skipped.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ray.tune.search import Searcher


class CellSearcher(Searcher):
    """Suggests one trial config per cell, never before its parent cell is done."""

    def __init__(self, configs: Iterable[dict[str, Any]], already_done: Iterable[str] = ()):
        super().__init__(metric=None, mode=None)
        self._pending: list[dict[str, Any]] = list(configs)
        self._done: set[str] = set(already_done)
        self._failed: set[str] = set()
        self.skipped: list[str] = []
        self._by_trial: dict[str, str] = {}

    def _ready(self, config: dict[str, Any]) -> bool:
        parent = config.get("cnn_parent")
        return parent is None or parent in self._done

    def _drop_orphans(self) -> None:
        keep = []
        for config in self._pending:
            if config.get("cnn_parent") in self._failed:
                self.skipped.append(config["run_id"])
            else:
                keep.append(config)
        self._pending = keep

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        self._drop_orphans()
        if not self._pending:
            return Searcher.FINISHED
        for i, config in enumerate(self._pending):
            if self._ready(config):
                del self._pending[i]
                self._by_trial[trial_id] = config["run_id"]
                return config
        return None  # only ic_only cells left, waiting on a running cnn cell

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        run_id = self._by_trial.get(trial_id)
        if run_id is None:
            return
        if error:
            self._failed.add(run_id)
        else:
            self._done.add(run_id)

    # Tune snapshots searcher state with the experiment; resumes start a fresh experiment over the
    # cells not yet done, so this state only needs to round-trip, not to merge.
    def get_state(self) -> dict[str, Any]:
        return {
            "pending": self._pending,
            "done": sorted(self._done),
            "failed": sorted(self._failed),
            "skipped": self.skipped,
            "by_trial": self._by_trial,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self._pending = list(state["pending"])
        self._done = set(state["done"])
        self._failed = set(state["failed"])
        self.skipped = list(state["skipped"])
        self._by_trial = dict(state["by_trial"])

    def save(self, checkpoint_path: str) -> None:
        import json

        with open(checkpoint_path, "w", encoding="utf-8") as fh:
            json.dump(self.get_state(), fh)

    def restore(self, checkpoint_path: str) -> None:
        import json

        with open(checkpoint_path, encoding="utf-8") as fh:
            self.set_state(json.load(fh))
