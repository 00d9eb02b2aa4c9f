"""The two on-disk forms of a trained model that the registry stores.

1. A portable *exported* model: the network wrapped so one forward returns every exit stacked as
   ``[batch, exits, classes]`` logits, saved by MLflow in ``torch.export`` (pt2) format. Anyone
   can load it with plain ``mlflow.pytorch.load_model`` or ``mlflow.pyfunc.load_model``, without
   this project's code (the graph carries no reference to ``sdn``).
2. The *real* module's plain state dict (``torch.save`` of tensors only, read back with
   ``weights_only=True``) plus ``model_config.json``, from which ``sdn.models.build_model``
   rebuilds the CNN/SDN, runtime early exit included.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sdn.errors import SDNError
from sdn.models import build_model, model_outputs
from storage.errors import StorageError, one_line

STATE_DICT_FILE = "state_dict.pt"
CONFIG_FILE = "model_config.json"


class AllExits(nn.Module):
    """Wraps a CNN or SDN so forward returns one tensor ``[batch, exits, classes]``.

    ``torch.export`` cannot export a model that returns a Python list (an SDN's exits), and a
    single tensor is what pyfunc/serving tools expect. Exit 0 is the first IC; the last exit is
    the final head. A CNN gives one exit.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack(model_outputs(self.model, x), dim=1)


def model_config(model: nn.Module) -> dict[str, Any]:
    """``model.config`` as a JSON-ready dict; models without one cannot be rebuilt later."""
    config = getattr(model, "config", None)
    if not isinstance(config, Mapping) or config.get("kind") not in ("cnn", "sdn"):
        raise StorageError(
            f"{type(model).__name__} has no sdn model config (model.config with kind 'cnn' or "
            "'sdn'); log models built by sdn.models"
        )
    return json.loads(json.dumps(dict(config)))


def portable_copy(model: nn.Module) -> AllExits:
    """A CPU, float32, contiguous, eval-mode copy wrapped in :class:`AllExits`.

    A copy, so the caller's model keeps its device, memory format and train/eval mode; export
    runs in eval mode so BatchNorm uses running statistics, as inference must.
    """
    clone = copy.deepcopy(model).to(device="cpu", dtype=torch.float32)
    clone = clone.to(memory_format=torch.contiguous_format)
    return AllExits(clone).eval()


def example_input(config: Mapping[str, Any], given: Any = None) -> np.ndarray:
    """A float32 ``[batch>=2, 3, H, W]`` numpy batch to trace the export with.

    A numpy array (not a tensor) makes MLflow add the pyfunc flavour; a batch of at least 2 keeps
    the exported batch dimension dynamic (``torch.export`` pins size-1 dimensions).
    """
    if given is None:
        size = int(config.get("image_size", 32))
        rng = np.random.default_rng(0)
        return rng.standard_normal((2, 3, size, size), dtype=np.float32)
    array = given.detach().cpu().numpy() if isinstance(given, torch.Tensor) else np.asarray(given)
    if array.ndim != 4:
        raise StorageError(f"input_example must be an image batch [B, C, H, W], got {array.shape}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    return np.concatenate([array, array]) if array.shape[0] == 1 else array


def write_weights(model: nn.Module, directory: Path) -> None:
    """Write ``state_dict.pt`` (CPU tensors only) and ``model_config.json`` into ``directory``."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    torch.save(state, directory / STATE_DICT_FILE)
    text = json.dumps(model_config(model), indent=2, sort_keys=True)
    (directory / CONFIG_FILE).write_text(text + "\n", encoding="utf-8")


def read_weights(directory: Path, where: str) -> nn.Module:
    """Rebuild the real CNN/SDN from a directory written by :func:`write_weights`.

    ``torch.load(weights_only=True)`` only admits tensors and plain containers, so a tampered
    file cannot run code; the config is JSON. Loading is strict: a key or shape mismatch fails.
    ``where`` names the source in error messages.
    """
    try:
        config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        state = torch.load(directory / STATE_DICT_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # missing file, bad JSON, truncated or non-weights pickle
        raise StorageError(f"cannot read the model weights of {where}: {one_line(exc)}") from exc
    try:
        model = build_model(config)
        model.load_state_dict(state, strict=True)
    except SDNError as exc:
        raise StorageError(f"{where}: bad model config: {one_line(exc)}") from exc
    except RuntimeError as exc:
        raise StorageError(f"{where}: state dict does not fit its config: {one_line(exc)}") from exc
    return model.eval()
