"""The analysis of one trained cell, run as a Ray task (on a GPU where the sweep asks for one).

It reads the cell's final model from shared storage, streams every output for the validation and
test splits into Parquet (one forward pass per batch, written batch by batch so memory follows the
batch size rather than the data set), and returns a small summary. It writes no catalogue rows:
only the driver does, so SQLite keeps a single writer.

A poisoned cell is also run over its triggered splits (``val_triggered``, ``test_triggered``:
every non-target image of val / test with the trigger, true label kept), stored under those split
names with ``sample_index`` = the image's position in the clean split. Its summary is the normal
one, computed on the clean splits (thresholds chosen on clean val), plus ``backdoor``: the figures
of ``sdn.backdoor_metrics`` on test and test_triggered, with early exit on the triggered inputs at
the threshold of the run's own stored choice for the sweep's headline target (confidence policy,
empirical, e.g. ``max_drop=0.01``), so that every surface shows the same threshold.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from sdn.analysis import DEFAULT_DELTA, iter_outputs, summarise
from sdn.backdoor import BackdoorSplits
from sdn.backdoor_metrics import backdoor_summary
from sdn.early_exit import POLICIES, Choice
from sdn.results import Outputs, RunSummary
from sdn.training import Trainer
from storage.predictions import PredictionStore, RunKey
from workflows import layout
from workflows.trainable import _backdoor_for, _clean_splits, _splits_for

#: The stored choice whose threshold early exit on triggered inputs uses: policy and method.
BACKDOOR_CHOICE = ("confidence", "empirical")


def _tee(parts: Iterator[Outputs], sink: list[Outputs]) -> Iterator[Outputs]:
    for part in parts:
        sink.append(part)
        yield part


def _renumbered(parts: Iterator[Outputs], source: np.ndarray | None) -> Iterator[Outputs]:
    """A triggered split's outputs with ``sample_index`` = the position of each image's clean
    twin in its clean split (``TriggeredSplit.source_index``)."""
    for part in parts:
        if source is not None:
            part.sample_index = source[part.sample_index]
        yield part


def analyse_cell(config: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """Predictions to Parquet and a ``RunSummary`` (as a dict) for one finished cell."""
    tune_root, sweep, run_id = config["tune_root"], config["sweep"], config["run_id"]
    device = "cuda" if torch.cuda.is_available() and options.get("gpus", 0) > 0 else "cpu"
    clean = _clean_splits(config, config["train"])
    bd = _backdoor_for(config, config["train"])
    trainer = Trainer.restore(
        layout.final_dir(tune_root, sweep, run_id),
        _splits_for(config, config["train"]),
        device=device,
    )
    model = trainer.model.eval()
    info = clean.info
    store = PredictionStore(options["predictions_root"])
    key = RunKey(run_id=run_id, arch=config["arch"], dataset=config["dataset"], mode=config["mode"])
    batch_size = int(options.get("batch_size", 256))
    keep_logits = bool(options.get("keep_logits", False))
    sets = bd.evaluation_sets() if bd is not None else {"val": clean.val, "test": clean.test}
    sources = {} if bd is None else _sources(bd)
    outputs: dict[str, Outputs] = {}
    files: dict[str, str] = {}
    for split, images in sets.items():
        parts: list[Outputs] = []
        stream = iter_outputs(
            model, images, info, batch_size=batch_size, device=device, keep_logits=keep_logits
        )
        stream = _renumbered(stream, sources.get(split))
        path = store.write(key, split, _tee(stream, parts), keep_logits=keep_logits)
        outputs[split] = Outputs.concat(parts)
        files[split] = str(path)
    summary = summarise(
        model,
        clean,
        info,
        max_accuracy_drops=tuple(options.get("max_accuracy_drops", (0.0, 0.01, 0.02, 0.05))),
        cost_budgets=tuple(options.get("cost_budgets", (0.25, 0.5, 0.75))),
        thresholds=options.get("thresholds"),
        policies=tuple(options.get("policies", POLICIES)),
        delta=options.get("delta", DEFAULT_DELTA),
        device=device,
        outputs={split: outputs[split] for split in ("val", "test")},
    )
    if bd is not None:
        add_backdoor(summary, outputs, bd.config.target, options.get("backdoor_target"))
    return {"run_id": run_id, "summary": summary.to_dict(), "files": files}


def _sources(bd: BackdoorSplits) -> dict[str, np.ndarray]:
    return {
        "val_triggered": bd.val_triggered.source_index,
        "test_triggered": bd.test_triggered.source_index,
    }


def stored_choice(summary: RunSummary, target: str | None) -> Choice | None:
    """The summary's own choice for ``target`` (``max_drop=0.01``) under ``BACKDOOR_CHOICE``."""
    policy, method = BACKDOOR_CHOICE
    for choice in summary.choices:
        if (choice.policy, choice.method, choice.target) == (policy, method, target):
            return choice
    return None


def add_backdoor(
    summary: RunSummary, outputs: dict[str, Outputs], target: int, choice_target: str | None
) -> None:
    """Set ``summary.backdoor`` from the test and test_triggered outputs; early exit on the
    triggered inputs at the stored choice's threshold (None: off), when the summary has one."""
    choice = stored_choice(summary, choice_target)
    summary.backdoor = backdoor_summary(
        outputs["test"],
        outputs["test_triggered"],
        target,
        threshold=None if choice is None else choice.val.threshold,
        relative_costs=summary.relative_costs,
        early_exit=choice is not None,
        chosen_for=None if choice is None else choice.target,
    )
