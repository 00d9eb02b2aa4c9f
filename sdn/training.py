"""Training configuration and an epoch-at-a-time trainer for the three modes of the paper.

The trainer is driven from outside one epoch at a time (a Ray Tune trial reports and checkpoints
between epochs), so all of its state (weights, optimiser, scheduler, epoch, the global torch RNG
and the data generator) saves to a directory and restores from it; a run restored mid-way ends with
the same weights, bit for bit on the CPU, as one that never stopped.

Modes (paper-spec "Training modes"):

- ``cnn``: the plain backbone, CE of the final head, SGD.
- ``sdn``: backbone and ICs from random init, loss ``sum_i tau_i(e) CE(IC_i) + CE(final)``.
- ``ic_only``: a trained ``cnn`` checkpoint, frozen and kept in eval mode (the reference left it
  in train mode so BN statistics drifted: spec bug 4); only the IC heads train, with Adam.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sdn.data import BatchIterator, DataSplits, ImageSet, check_dataset_name, load_dataset
from sdn.errors import CheckpointError, SDNError, TrainingDiverged, choice_error
from sdn.models import ARCHITECTURES, SDN, build_cnn, build_model, build_sdn, model_outputs
from sdn.models.weight_init import DEFAULT_INIT, INITS, init_weights_

MODES: tuple[str, ...] = ("cnn", "ic_only", "sdn")
CHECKPOINT_FORMAT = 1

# Nominal depth fractions C_i of the paper's ICs; the SDN loss weights grow towards them.
TAU_MAX: tuple[float, ...] = (0.15, 0.30, 0.45, 0.60, 0.75, 0.90)

# Spec defaults: (optimiser, lr, epochs, milestones) per mode, weight decay per architecture.
_MODE_DEFAULTS: dict[str, tuple[str, float, int, tuple[int, ...]]] = {
    "cnn": ("sgd", 0.1, 100, (35, 60, 85)),
    "sdn": ("sgd", 0.1, 100, (35, 60, 85)),
    "ic_only": ("adam", 1e-3, 25, (15,)),
}
_WEIGHT_DECAY = {"vgg16": 5e-4, "wrn32_4": 5e-4, "resnet56": 1e-4, "mobilenet": 1e-4}
_SGD_MOMENTUM = 0.9
_MAX_WIDTH = 4.0
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


# ---------------------------------------------------------------------------------------------
# Configuration


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class TrainConfig:
    """Everything that defines a training run. ``None`` means "the spec's default for this mode
    and architecture"; :meth:`resolved` fills them in. Values are checked on construction."""

    arch: str
    dataset: str
    mode: str
    epochs: int | None = None
    batch_size: int = 128
    lr: float | None = None
    weight_decay: float | None = None
    milestones: list[int] | None = None
    gamma: float = 0.1
    width: float = 1.0
    train_subset: int | None = None
    val_size: int | None = None
    seed: int = 0
    device: str = "auto"
    channels_last: bool = True
    amp: bool = True  # bf16 autocast, used on CUDA only
    data_root: str | None = None
    # Weight init of what is built fresh: the whole model (cnn, sdn) or the IC heads (ic_only).
    # Configs saved before this field existed restore with the default (weights are loaded anyway).
    init: str = DEFAULT_INIT

    def __post_init__(self) -> None:
        if self.milestones is not None and not isinstance(self.milestones, list | tuple):
            raise SDNError(f"milestones {self.milestones!r} must be a list of epochs")
        if self.milestones is not None:
            self.milestones = list(self.milestones)
        if self.data_root is not None:
            self.data_root = str(self.data_root)
        self.validate()

    def validate(self) -> None:
        """Raise SDNError naming the first bad field and what it accepts."""
        if self.arch not in ARCHITECTURES:
            raise choice_error("architecture", self.arch, ARCHITECTURES)
        check_dataset_name(self.dataset)
        if self.mode not in MODES:
            raise choice_error("mode", self.mode, MODES)
        _check(
            self.epochs is None or (_is_int(self.epochs) and self.epochs >= 1),
            "epochs",
            self.epochs,
            "an integer >= 1",
        )
        _check(
            _is_int(self.batch_size) and self.batch_size >= 1,
            "batch_size",
            self.batch_size,
            "an integer >= 1",
        )
        _check(
            self.lr is None or (_is_number(self.lr) and self.lr > 0), "lr", self.lr, "a number > 0"
        )
        _check(
            self.weight_decay is None or (_is_number(self.weight_decay) and self.weight_decay >= 0),
            "weight_decay",
            self.weight_decay,
            "a number >= 0",
        )
        _check(
            self.milestones is None
            or (
                all(_is_int(m) and m >= 1 for m in self.milestones)
                and all(b > a for a, b in zip(self.milestones, self.milestones[1:], strict=False))
            ),
            "milestones",
            self.milestones,
            "strictly increasing integers >= 1",
        )
        _check(
            _is_number(self.gamma) and 0 < self.gamma <= 1,
            "gamma",
            self.gamma,
            "a number in (0, 1]",
        )
        _check(
            _is_number(self.width) and 0 < self.width <= _MAX_WIDTH,
            "width",
            self.width,
            f"a number in (0, {_MAX_WIDTH:g}]",
        )
        _check(
            self.train_subset is None or (_is_int(self.train_subset) and self.train_subset >= 1),
            "train_subset",
            self.train_subset,
            "None or an integer >= 1",
        )
        _check(
            self.val_size is None or (_is_int(self.val_size) and self.val_size >= 0),
            "val_size",
            self.val_size,
            "None or an integer >= 0",
        )
        _check(_is_int(self.seed) and self.seed >= 0, "seed", self.seed, "an integer >= 0")
        _check(
            isinstance(self.device, str) and bool(_DEVICE_RE.match(self.device)),
            "device",
            self.device,
            "'auto', 'cpu', 'cuda', 'cuda:<n>' or 'mps'",
        )
        _check(
            isinstance(self.channels_last, bool),
            "channels_last",
            self.channels_last,
            "True or False",
        )
        _check(isinstance(self.amp, bool), "amp", self.amp, "True or False")
        _check(
            isinstance(self.init, str) and self.init in INITS,
            "init",
            self.init,
            " or ".join(repr(i) for i in INITS),
        )

    def resolved(self) -> TrainConfig:
        """A copy with every ``None`` default filled in from the spec.

        When ``epochs`` is overridden but ``milestones`` is not, the default milestones are scaled
        to the new length (e.g. 35/60/85 of 100 become 4/6/9 of 10), so that short runs keep the
        schedule's shape.
        """
        _, lr, default_epochs, default_milestones = _MODE_DEFAULTS[self.mode]
        epochs = self.epochs if self.epochs is not None else default_epochs
        milestones = self.milestones
        if milestones is None:
            scaled = (math.floor(m * epochs / default_epochs + 0.5) for m in default_milestones)
            milestones = sorted({m for m in scaled if 1 <= m < epochs})
        return replace(
            self,
            epochs=epochs,
            lr=self.lr if self.lr is not None else lr,
            weight_decay=(
                self.weight_decay if self.weight_decay is not None else _WEIGHT_DECAY[self.arch]
            ),
            milestones=list(milestones),
        )

    @property
    def optimizer_name(self) -> str:
        """'sgd' (momentum 0.9) for cnn and sdn, 'adam' for ic_only."""
        return _MODE_DEFAULTS[self.mode][0]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, not silently dropped."""
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(allowed))
        if unknown:
            raise SDNError(f"unknown TrainConfig fields {unknown}; allowed: {allowed}")
        missing = [k for k in ("arch", "dataset", "mode") if k not in d]
        if missing:
            raise SDNError(f"TrainConfig needs {missing}")
        return cls(**dict(d))


def _check(ok: bool, name: str, value: object, wanted: str) -> None:
    if not ok:
        raise SDNError(f"{name} {value!r} is invalid; use {wanted}")


def ic_coefficients(num_ics: int) -> list[float]:
    """C_i of the tau schedule: 0.15, 0.30, ... for up to six ICs (the spec); more ICs (custom
    positions) get evenly spaced fractions up to 0.9."""
    if num_ics <= len(TAU_MAX):
        return list(TAU_MAX[:num_ics])
    return [0.9 * (i + 1) / num_ics for i in range(num_ics)]


def tau_weights(epoch: int, epochs: int, num_ics: int) -> list[float]:
    """The SDN loss weights of the ICs during ``epoch`` (1-based) of ``epochs``:
    tau_i(e) = min(C_i, 0.01 + e * C_i / E), so they reach C_i in the last epoch."""
    if not 1 <= epoch <= epochs:
        raise SDNError(f"epoch {epoch} is outside 1..{epochs}")
    return [min(c, 0.01 + epoch * c / epochs) for c in ic_coefficients(num_ics)]


def channels_last_is_safe(model: nn.Module, device: torch.device) -> bool:
    """False where channels_last training is known to crash.

    torch 2.14.1 on the CPU corrupts the heap (crash, or a hang with 2 threads) in the backward
    pass of a 1x1 convolution with stride > 1 and fewer than 8 input channels in channels_last
    format, e.g. ResNet-56's shortcuts at width < 0.5. Found here; the forward pass is fine.
    """
    if device.type != "cpu":
        return True
    return not any(
        isinstance(m, nn.Conv2d)
        and m.kernel_size == (1, 1)
        and m.stride != (1, 1)
        and m.in_channels < 8
        for m in model.modules()
    )


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ---------------------------------------------------------------------------------------------
# Frozen backbone for ic_only


def _keep_backbone_eval(module: nn.Module, _args: object) -> None:
    if module.backbone.training:
        module.backbone.eval()


def freeze_backbone(model: SDN) -> None:
    """Freeze the backbone's weights and keep it in eval mode for good.

    A forward pre-hook puts the backbone back into eval mode before every forward pass, so even
    ``model.train()`` from any caller cannot let BN statistics drift (spec bug 4).
    """
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    model.backbone.eval()
    model.register_forward_pre_hook(_keep_backbone_eval)


# ---------------------------------------------------------------------------------------------
# Checkpoint files


def _read_meta(directory: Path) -> dict[str, Any]:
    path = directory / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {directory}: {path} is missing") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint file {path} is unreadable: {exc}") from None
    if not isinstance(meta, dict) or not {"config", "model_config", "epoch"} <= set(meta):
        raise CheckpointError(f"checkpoint file {path} lacks config, model_config or epoch")
    return meta


def _first_line(exc: BaseException, limit: int = 160) -> str:
    """The gist of a library message: its first line without terminal escapes, cut after the
    first sentence once past ``limit`` characters. torch's messages run to many lines and
    paragraphs of advice (some suggest ``weights_only=False``, which must never be done)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    if len(line) > limit:
        end = line.find(". ", 60)
        line = line[: end + 1] if 0 < end < limit else line[:limit] + "..."
    return line


def _load_file(path: Path) -> Any:
    """torch.load with weights_only (never unpickles code); any failure names the file."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {path} is missing") from None
    except pickle.UnpicklingError as exc:
        # torch's weights-only unpickler stopped: at a global it will not import (code, which
        # is never run), or at bytes that are no pickle at all.
        if "global" in str(exc).lower():
            raise CheckpointError(
                f"checkpoint file {path} holds objects other than tensors and plain containers; "
                "refused (checkpoints are only loaded with weights_only=True)"
            ) from None
        raise CheckpointError(
            f"checkpoint file {path} is corrupted or unreadable: not a torch checkpoint"
        ) from None
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint file {path} is corrupted or unreadable: {_first_line(exc)}"
        ) from None


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a state dict strictly (spec bug 9: non-strict loading hides missing weights)."""
    state = _load_file(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint file {path} does not hold a state dict")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(
            f"checkpoint file {path} does not fit the model: {' '.join(first[:3])}"
        ) from None


def _write_dir_atomically(directory: Path, write: Any) -> None:
    """Fill a temporary sibling directory, then swap it in with renames, so a reader never sees
    a half-written checkpoint (at worst, for an instant, none at all)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        try:
            write(tmp)
        except (OSError, RuntimeError) as exc:  # disk full, quota, I/O error (torch: RuntimeError)
            raise CheckpointError(
                f"cannot write checkpoint {directory}: {_first_line(exc)}"
            ) from None
        if directory.exists():
            old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(directory, old)
            os.rename(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover_checkpoint(directory: str | Path) -> None:
    """Finish a swap that :func:`_write_dir_atomically` did not: a process killed between its
    two renames leaves ``directory`` missing and the previous checkpoint in ``.<name>.old-*``.
    Renaming that back lets a resumed run continue from it instead of from scratch."""
    directory = Path(directory)
    if directory.exists() or not directory.parent.is_dir():
        return
    olds = [
        p for p in directory.parent.glob(f".{directory.name}.old-*") if (p / "meta.json").is_file()
    ]
    if olds:
        newest = max(olds, key=lambda p: p.stat().st_mtime)
        with contextlib.suppress(OSError):  # another process got there first
            os.rename(newest, directory)


# ---------------------------------------------------------------------------------------------
# Trainer


class Trainer:
    """Trains one model of one mode, an epoch per :meth:`train_epoch` call.

    Seeding: ``torch.manual_seed(seed)`` before the model is built (weight init and dropout),
    and a separate CPU ``torch.Generator`` seeded with ``seed`` for data order and augmentation.
    """

    def __init__(
        self,
        config: TrainConfig,
        splits: DataSplits | None = None,
        init_checkpoint: str | Path | None = None,
    ) -> None:
        self._setup(config, splits)
        cfg = self.config
        if cfg.mode == "ic_only" and init_checkpoint is None:
            raise SDNError("mode 'ic_only' needs init_checkpoint: a cnn-mode checkpoint directory")
        if cfg.mode != "ic_only" and init_checkpoint is not None:
            raise SDNError(f"init_checkpoint is only for mode 'ic_only', not {cfg.mode!r}")
        torch.manual_seed(cfg.seed)
        info = self.splits.info
        if cfg.mode == "cnn":
            model: nn.Module = build_cnn(
                cfg.arch, info.num_classes, info.image_size, cfg.width, init=cfg.init
            )
        elif cfg.mode == "sdn":
            model = build_sdn(cfg.arch, info.num_classes, info.image_size, cfg.width, init=cfg.init)
        else:
            model = SDN.from_cnn(self._load_init_cnn(Path(init_checkpoint)))  # type: ignore[arg-type]
            init_weights_(model.ics, cfg.init)  # the loaded backbone keeps its trained weights
        self._attach(model)

    # -- construction -----------------------------------------------------------------------

    def _setup(self, config: TrainConfig, splits: DataSplits | None) -> None:
        self.config = config.resolved()
        cfg = self.config
        if splits is None:
            splits = load_dataset(
                cfg.dataset, cfg.data_root, val_size=cfg.val_size, train_subset=cfg.train_subset
            )
        name = splits.info.name
        same_kind = name.startswith("folder:") and cfg.dataset.startswith("folder:")
        if name != cfg.dataset and not same_kind:
            raise SDNError(f"config dataset {cfg.dataset!r} does not match the splits' {name!r}")
        if len(splits.train) == 0:
            raise SDNError(f"the training split of {name} is empty")
        self.splits = splits
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.epoch = 0
        self.history: list[dict[str, Any]] = []

    def _load_init_cnn(self, directory: Path) -> nn.Module:
        """The trained CNN an ic_only run starts from; it must match this run exactly."""
        meta = _read_meta(directory)
        cfg, info = self.config, self.splits.info
        source_mode = meta["config"].get("mode")
        if source_mode != "cnn":
            raise CheckpointError(
                f"ic_only starts from a cnn-mode checkpoint, but {directory} holds mode "
                f"{source_mode!r}"
            )
        mc = meta["model_config"]
        wanted = {
            "arch": cfg.arch,
            "num_classes": info.num_classes,
            "image_size": info.image_size,
            "width": cfg.width,
        }
        for key, value in wanted.items():
            if mc.get(key) != value:
                raise CheckpointError(
                    f"checkpoint {directory} has {key} {mc.get(key)!r} but this run needs "
                    f"{key} {value!r}"
                )
        if meta["config"].get("dataset") != cfg.dataset:
            raise CheckpointError(
                f"checkpoint {directory} was trained on dataset "
                f"{meta['config'].get('dataset')!r} but this run uses {cfg.dataset!r}"
            )
        cnn = build_model(mc)
        load_weights(cnn, directory / "model.pt")
        return cnn

    def _attach(self, model: nn.Module) -> None:
        """Move the model to the device and build the optimiser, scheduler and batches."""
        cfg = self.config
        model = model.to(self.device)
        # channels_last is a speed setting, so falling back to the default layout is safe.
        self.channels_last = cfg.channels_last and channels_last_is_safe(model, self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if cfg.mode == "ic_only":
            if not isinstance(model, SDN):
                raise SDNError("ic_only trains an SDN's internal classifiers")
            freeze_backbone(model)
            params = list(model.ics.parameters())
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(
                params, lr=cfg.lr, weight_decay=cfg.weight_decay
            )
        else:
            self.optimizer = torch.optim.SGD(
                model.parameters(), lr=cfg.lr, momentum=_SGD_MOMENTUM, weight_decay=cfg.weight_decay
            )
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=cfg.milestones, gamma=cfg.gamma
        )
        self.model = model
        self.num_exits = model.num_exits if isinstance(model, SDN) else 1
        self.train_batches = BatchIterator(
            self.splits.train,
            self.splits.info,
            cfg.batch_size,
            shuffle=True,
            augment=True,
            generator=self.generator,
            device=self.device,
            channels_last=self.channels_last,
        )

    # -- training ---------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.epoch >= self.config.epochs

    def loss_weights(self, epoch: int) -> list[float]:
        """Per-exit CE weights during ``epoch`` (1-based): ICs first, final head last."""
        mode, n_ics = self.config.mode, self.num_exits - 1
        if mode == "cnn":
            return [1.0]
        if mode == "ic_only":
            return [1.0] * n_ics + [0.0]
        return [*tau_weights(epoch, self.config.epochs, n_ics), 1.0]

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.config.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _set_train_mode(self) -> None:
        self.model.train()
        if self.config.mode == "ic_only":
            self.model.backbone.eval()  # also enforced by freeze_backbone's hook

    def train_epoch(self) -> dict[str, Any]:
        """Train one epoch and return its metrics (accuracies are fractions, per exit)."""
        if self.done:
            raise SDNError(f"training is complete: {self.epoch} of {self.config.epochs} epochs")
        epoch = self.epoch + 1
        n_exits = self.num_exits
        weights = torch.tensor(self.loss_weights(epoch), device=self.device)
        lr = self.optimizer.param_groups[0]["lr"]
        model, optimizer = self.model, self.optimizer
        self._set_train_mode()
        start = time.perf_counter()
        # Running sums stay on the device: no host sync per batch.
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros(n_exits, dtype=torch.int64, device=self.device)
        seen = 0
        for x, y in self.train_batches:
            with self._autocast():
                logits = torch.stack(model_outputs(model, x))  # [E, B, C]
            b = y.shape[0]
            per_exit = F.cross_entropy(
                logits.float().flatten(0, 1), y.repeat(n_exits), reduction="none"
            ).view(n_exits, b)
            loss = (per_exit.mean(dim=1) * weights).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                loss_sum += loss.detach() * b
                correct += (logits.argmax(dim=-1) == y).sum(dim=1)
            seen += b
        self.scheduler.step()
        train_acc = (correct.double() / seen).tolist()  # the one sync of the epoch
        mean_loss = float(loss_sum) / seen
        if not math.isfinite(mean_loss):
            raise TrainingDiverged(
                f"training diverged in epoch {epoch} of {self.config.arch} ({self.config.mode}): "
                f"the loss is {mean_loss}; lower the learning rate (lr {lr:g} now) or its schedule"
            )
        train_seconds = time.perf_counter() - start
        val_acc = self.evaluate(self.splits.val) if len(self.splits.val) else []
        self.epoch = epoch
        metrics = {
            "epoch": epoch,
            "loss": mean_loss,
            "lr": lr,
            "train_acc": train_acc,
            "val_acc": val_acc,
            "seconds": time.perf_counter() - start,
            "images_per_second": seen / train_seconds,
        }
        self.history.append(metrics)
        return metrics

    @torch.inference_mode()
    def evaluate(self, imageset: ImageSet, batch_size: int | None = None) -> list[float]:
        """Accuracy of every exit on ``imageset`` (eval mode, no augmentation)."""
        if len(imageset) == 0:
            raise SDNError("cannot evaluate on an empty image set")
        was_training = self.model.training
        self.model.eval()
        try:
            correct = torch.zeros(self.num_exits, dtype=torch.int64, device=self.device)
            batches = BatchIterator(
                imageset,
                self.splits.info,
                batch_size or max(256, self.config.batch_size),
                device=self.device,
                channels_last=self.channels_last,
            )
            for x, y in batches:
                with self._autocast():
                    logits = torch.stack(model_outputs(self.model, x))
                correct += (logits.argmax(dim=-1) == y).sum(dim=1)
            return (correct.double() / len(imageset)).tolist()
        finally:
            if was_training:
                self._set_train_mode()

    def run(self) -> Iterator[dict[str, Any]]:
        """Train the remaining epochs, yielding each epoch's metrics."""
        while not self.done:
            yield self.train_epoch()

    # -- checkpoints ------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write model.pt, state.pt and meta.json into ``directory`` (atomically replaced).

        Every tensor goes to the CPU first, so a checkpoint written on a GPU loads anywhere, and
        everything loads with ``torch.load(weights_only=True)``.
        """
        directory = Path(directory)
        weights = {k: v.detach().to("cpu").contiguous() for k, v in self.model.state_dict().items()}
        cuda_rng = (
            torch.cuda.get_rng_state_all()
            if self.device.type == "cuda" and torch.cuda.is_available()
            else []
        )
        state = {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": cuda_rng,
            "data_rng": self.generator.get_state(),
            "history": self.history,
        }
        meta = {
            "format": CHECKPOINT_FORMAT,
            "kind": self.model.config["kind"],
            "mode": self.config.mode,
            "epoch": self.epoch,
            "epochs": self.config.epochs,
            "done": self.done,
            "num_exits": self.num_exits,
            "config": self.config.to_dict(),
            "model_config": self.model.config,
            "dataset": self.splits.info.to_dict(),
            "last_metrics": self.history[-1] if self.history else None,
        }

        def write(tmp: Path) -> None:
            torch.save(weights, tmp / "model.pt")
            torch.save(state, tmp / "state.pt")
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")

        _write_dir_atomically(directory, write)
        return directory

    @classmethod
    def restore(
        cls, directory: str | Path, splits: DataSplits | None = None, device: str | None = None
    ) -> Trainer:
        """Rebuild a trainer from :meth:`save`'s directory; training continues where it stopped.

        ``device`` overrides the saved config's device (e.g. analyse a GPU-trained run on the
        CPU). An ic_only checkpoint holds the whole SDN, so its cnn checkpoint is not needed.
        """
        directory = Path(directory)
        meta = _read_meta(directory)
        try:
            config = TrainConfig.from_dict(meta["config"])
        except SDNError as exc:
            raise CheckpointError(f"checkpoint {directory} has an invalid config: {exc}") from None
        if device is not None:
            config = replace(config, device=device)
        trainer = cls.__new__(cls)
        trainer._setup(config, splits)
        info = trainer.splits.info
        mc = meta["model_config"]
        if mc.get("num_classes") != info.num_classes or mc.get("image_size") != info.image_size:
            raise CheckpointError(
                f"checkpoint {directory} is for {mc.get('num_classes')} classes at "
                f"{mc.get('image_size')} px, but the data has {info.num_classes} classes at "
                f"{info.image_size} px"
            )
        model = build_model(mc)
        load_weights(model, directory / "model.pt")
        trainer._attach(model)
        state = _load_file(directory / "state.pt")
        try:
            trainer.optimizer.load_state_dict(state["optimizer"])
            trainer.scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
            if state["cuda_rng"] and trainer.device.type == "cuda":
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            trainer.generator.set_state(state["data_rng"])
            trainer.history = list(state["history"])
            trainer.epoch = int(state["epoch"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"checkpoint file {directory / 'state.pt'} is inconsistent: {exc}"
            ) from None
        return trainer
