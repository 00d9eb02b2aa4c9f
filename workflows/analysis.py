"""The analysis of one trained cell, run as a Ray task (on a GPU where the sweep asks for one).

It reads the cell's final model from shared storage, streams every output for the validation and
test splits into Parquet (one forward pass per batch, written batch by batch so memory follows the
batch size rather than the data set), and returns a small summary. It writes no catalogue rows:
only the driver does, so SQLite keeps a single writer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from sdn.analysis import DEFAULT_DELTA, iter_outputs, summarise
from sdn.early_exit import POLICIES
from sdn.results import Outputs
from sdn.training import Trainer
from storage.predictions import PredictionStore, RunKey
from workflows import layout
from workflows.trainable import _splits_for


def _tee(parts: Iterator[Outputs], sink: list[Outputs]) -> Iterator[Outputs]:
    for part in parts:
        sink.append(part)
        yield part


def analyse_cell(config: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """Predictions to Parquet and a ``RunSummary`` (as a dict) for one finished cell."""
    tune_root, sweep, run_id = config["tune_root"], config["sweep"], config["run_id"]
    device = "cuda" if torch.cuda.is_available() and options.get("gpus", 0) > 0 else "cpu"
    splits = _splits_for(config, config["train"])
    trainer = Trainer.restore(layout.final_dir(tune_root, sweep, run_id), splits, device=device)
    model = trainer.model.eval()
    info = splits.info
    store = PredictionStore(options["predictions_root"])
    key = RunKey(run_id=run_id, arch=config["arch"], dataset=config["dataset"], mode=config["mode"])
    batch_size = int(options.get("batch_size", 256))
    outputs: dict[str, Outputs] = {}
    files: dict[str, str] = {}
    for split in ("val", "test"):
        parts: list[Outputs] = []
        stream = iter_outputs(
            model,
            getattr(splits, split),
            info,
            batch_size=batch_size,
            device=device,
            keep_logits=bool(options.get("keep_logits", False)),
        )
        path = store.write(
            key, split, _tee(stream, parts), keep_logits=bool(options.get("keep_logits"))
        )
        outputs[split] = Outputs.concat(parts)
        files[split] = str(path)
    summary = summarise(
        model,
        splits,
        info,
        max_accuracy_drops=tuple(options.get("max_accuracy_drops", (0.0, 0.01, 0.02, 0.05))),
        cost_budgets=tuple(options.get("cost_budgets", (0.25, 0.5, 0.75))),
        thresholds=options.get("thresholds"),
        policies=tuple(options.get("policies", POLICIES)),
        delta=options.get("delta", DEFAULT_DELTA),
        device=device,
        outputs=outputs,
    )
    return {"run_id": run_id, "summary": summary.to_dict(), "files": files}
