"""Sweep files: what a sweep trains and where its state goes, validated before anything runs.

A sweep YAML names a grid (architectures x datasets x modes x seeds), training settings with
ordered per-cell overrides, per-trial resources, checkpointing, analysis and storage, and
optionally a ``backdoor`` section that adds cells trained on poisoned data (docs/backdoor.md).
Every model forbids unknown keys and checks its values, so a typo fails on load with the key's
name instead of being silently ignored after an hour of training. ``SweepSpec.cells()`` expands
the grid into ``Cell`` objects, the identity every other part of the workflow keys on
(``run_id``; a poisoned cell's ends with its poisoning tag).

Presets are package data in ``workflows/presets/``; ``load_preset`` / ``list_presets`` find them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    field_validator,
    model_validator,
)

from sdn.backdoor import PoisonConfig, Trigger
from sdn.data import FOLDER_PREFIX, check_dataset_name
from sdn.early_exit import Target
from sdn.errors import SDNError
from sdn.models.registry import ARCHITECTURES
from sdn.training import MODES
from workflows.paths import StoragePaths, is_uri
from workflows.spec_errors import SweepSpecError, format_validation_error, show
from workflows.yamlio import parse_yaml, read_text

__all__ = [
    "ARCHITECTURE_NAMES",
    "MODES",
    "Cell",
    "StoragePaths",
    "SweepSpec",
    "SweepSpecError",
    "dataset_slug",
    "list_presets",
    "load_preset",
    "load_sweep",
    "parse_sweep",
    "sweep_from_dict",
]

ARCHITECTURE_NAMES: tuple[str, ...] = tuple(ARCHITECTURES)
MAX_CELLS = 5000  # far beyond any study here; a bigger grid is a typo (seeds: [0..99999])
ENV_DATA_ROOT = "SDN_DATA_ROOT"
_PRESET_PACKAGE = "workflows"
_PRESET_DIR = "presets"


class _Strict(BaseModel):
    """Every section: unknown keys are errors, no type coercion ("4" is not 4), no NaN/inf."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


# --- field types ------------------------------------------------------------------------------


def _unique(values: Sequence[Any]) -> Sequence[Any]:
    seen: set[Any] = set()
    for value in values:
        key = _dataset_key(value) if isinstance(value, str) else value
        if key in seen:
            raise ValueError(f"duplicate entry {show(value)}")
        seen.add(key)
    return values


def _check_architecture(name: str) -> str:
    if name not in ARCHITECTURES:
        allowed = ", ".join(repr(a) for a in ARCHITECTURE_NAMES)
        raise ValueError(f"unknown architecture {show(name)}; choose one of: {allowed}")
    return name


def _check_mode(name: str) -> str:
    if name not in MODES:
        raise ValueError(f"unknown mode {show(name)}; choose one of: {', '.join(map(repr, MODES))}")
    return name


def _check_dataset(name: str) -> str:
    if "\n" in name or "\r" in name or "\x00" in name:
        raise ValueError(f"dataset {show(name)} contains a line break or NUL character")
    try:
        check_dataset_name(name)
    except SDNError as exc:
        raise ValueError(str(exc)) from None
    return name


def _dataset_key(name: str) -> str:
    """Equal for spellings of the same data set (``folder:a/b`` and ``folder:a/b/``)."""
    if name.startswith(FOLDER_PREFIX):
        return FOLDER_PREFIX + os.path.normpath(name[len(FOLDER_PREFIX) :].strip())
    return name


Architecture = Annotated[str, AfterValidator(_check_architecture)]
Dataset = Annotated[str, AfterValidator(_check_dataset)]
Mode = Annotated[str, AfterValidator(_check_mode)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
CostBudget = Annotated[float, Field(gt=0.0, le=1.0)]
Milestone = Annotated[int, Field(ge=1, le=10000)]
PathText = Annotated[str, Field(min_length=1, max_length=4096)]


def _gpu_amount(value: object) -> float | Literal["auto"]:
    """A GPU share: 0, a fraction in (0, 1), a whole number up to 64, or ``auto``."""
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number of GPUs or 'auto' (got {show(value)})")
    amount = float(value)
    if not 0.0 <= amount <= 64.0:
        raise ValueError(f"must be between 0 and 64 (got {show(value)})")
    if amount > 1.0 and not amount.is_integer():
        raise ValueError(f"must be a fraction below 1 or a whole number (got {show(value)})")
    return amount


GpuAmount = Annotated[float | Literal["auto"], PlainValidator(_gpu_amount)]


def _names(check: Callable[[str], str]) -> Callable[[object], list[str] | None]:
    """A validator accepting null, one name or a list of names, each passed through ``check``."""

    def validate(value: object) -> list[str] | None:
        if value is None:
            return None
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not items:
            raise ValueError(f"must be a name or a non-empty list of names (got {show(value)})")
        for item in items:
            if not isinstance(item, str):
                raise ValueError(f"must be a name or a list of names (got {show(item)})")
            check(item)
        return list(items)

    return validate


# --- sections ---------------------------------------------------------------------------------


class GridSpec(_Strict):
    """The cells to train: the product of these four lists."""

    architectures: list[Architecture] = Field(min_length=1, max_length=16)
    datasets: list[Dataset] = Field(min_length=1, max_length=64)
    modes: list[Mode] = Field(min_length=1, max_length=3)
    seeds: list[Seed] = Field(default=[0], min_length=1, max_length=1000)

    @field_validator("architectures", "datasets", "modes", "seeds")
    @classmethod
    def _no_duplicates(cls, values: list[Any]) -> list[Any]:
        return list(_unique(values))

    @field_validator("modes")
    @classmethod
    def _ic_only_needs_cnn(cls, modes: list[str]) -> list[str]:
        if "ic_only" in modes and "cnn" not in modes:
            raise ValueError(
                "'ic_only' needs 'cnn' in modes too: ic_only trains ICs on the cnn of the same cell"
            )
        return modes


class TrainingSpec(_Strict):
    """``sdn.training.TrainConfig`` fields a sweep may set; null keeps TrainConfig's default."""

    epochs: int | None = Field(None, ge=1, le=10000)
    batch_size: int | None = Field(None, ge=1, le=65536)
    lr: float | None = Field(None, gt=0.0, le=10.0)
    weight_decay: float | None = Field(None, ge=0.0, le=1.0)
    milestones: list[Milestone] | None = Field(None, max_length=100)
    gamma: float | None = Field(None, gt=0.0, le=1.0)
    width: float | None = Field(None, gt=0.0, le=4.0)
    train_subset: int | None = Field(None, ge=1, le=10_000_000)
    val_size: int | None = Field(None, ge=1, le=1_000_000)
    channels_last: bool | None = None
    amp: bool | None = None
    # Weight initialisation (sdn.models.weight_init): left out of the dumped spec while unset,
    # so that adding it changed no existing sweep's spec_hash.
    init: Literal["reference", "pytorch"] | None = None

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, values: list[int] | None) -> list[int] | None:
        if values and any(b <= a for a, b in itertools.pairwise(values)):
            raise ValueError(f"must be strictly increasing epoch numbers (got {values})")
        return values

    def explicit(self) -> dict[str, Any]:
        """The keys this section sets (null included: in an override, null restores the default)."""
        return {
            key: getattr(self, key)
            for key in type(self).model_fields
            if key in self.model_fields_set
        }


class MatchSpec(_Strict):
    """Which cells an override applies to; a missing key matches every value."""

    architecture: Annotated[list[str] | None, PlainValidator(_names(_check_architecture))] = None
    dataset: Annotated[list[str] | None, PlainValidator(_names(_check_dataset))] = None
    mode: Annotated[list[str] | None, PlainValidator(_names(_check_mode))] = None

    def matches(self, arch: str, dataset: str, mode: str) -> bool:
        return (
            (self.architecture is None or arch in self.architecture)
            and (self.dataset is None or _dataset_key(dataset) in map(_dataset_key, self.dataset))
            and (self.mode is None or mode in self.mode)
        )


class OverrideSpec(_Strict):
    """``set`` these training fields on the cells that ``match``; later overrides win."""

    match: MatchSpec = MatchSpec()
    set_: TrainingSpec = Field(alias="set")

    @field_validator("set_")
    @classmethod
    def _not_empty(cls, value: TrainingSpec) -> TrainingSpec:
        if not value.model_fields_set:
            raise ValueError("is empty: name at least one training field to set")
        return value


class ResourcesSpec(_Strict):
    """What one trial asks Ray for, and how many run at once (null: as many as fit)."""

    cpus_per_trial: float = Field(1.0, ge=0.1, le=1024.0)
    gpus_per_trial: GpuAmount = 0.0
    max_concurrent_trials: int | None = Field(None, ge=1, le=10000)

    def gpus_for(self, available_gpus: float) -> float:
        """The GPUs per trial to request on a cluster that has ``available_gpus`` in all.

        ``auto`` means: none on a CPU-only cluster, else an equal share so that
        ``max_concurrent_trials`` trials fit on the GPUs (at most 1 each). Rounded down to
        4 decimals because Ray keeps fractional resources to that precision.
        """
        return _resolve_gpus(self.gpus_per_trial, available_gpus, self.max_concurrent_trials)


class CheckpointSpec(_Strict):
    """Trial checkpoints: how often, how many kept, how many retries from the latest."""

    every_epochs: int = Field(2, ge=1, le=10000)
    num_to_keep: int = Field(2, ge=2, le=100)  # Tune warns on every snapshot with 1
    max_failures: int = Field(2, ge=0, le=100)


class AnalysisSpec(_Strict):
    """Post-training analysis: batch size, GPU share per task, and the early-exit operating points
    stored for every run (``sdn.early_exit``): the exit policies, the targets (accuracy drops and
    cost budgets), the confidence grid of the stored curves, and the risk level ``delta`` of the
    certified choices stored next to the empirical ones (null: empirical only)."""

    batch_size: int = Field(256, ge=1, le=65536)
    gpus: GpuAmount = 0.0
    max_accuracy_drops: list[Fraction] = Field(
        default=[0.0, 0.01, 0.02, 0.05], min_length=1, max_length=100
    )
    cost_budgets: list[CostBudget] = Field(default=[0.25, 0.5, 0.75], min_length=1, max_length=100)
    thresholds: list[Fraction] | None = Field(None, min_length=1, max_length=1000)
    policies: list[Literal["confidence", "entropy", "patience"]] = Field(
        default=["confidence", "entropy", "patience"], min_length=1, max_length=3
    )
    delta: float | None = Field(0.1, gt=0.0, lt=1.0)
    keep_logits: bool = False

    @field_validator("max_accuracy_drops", "cost_budgets", "thresholds", "policies")
    @classmethod
    def _no_duplicates(cls, values: list[Any] | None) -> list[Any] | None:
        return None if values is None else list(_unique(values))

    def gpus_for(self, available_gpus: float) -> float:
        """GPUs per analysis task (``auto``: a quarter GPU where there are GPUs, else none)."""
        return _resolve_gpus(self.gpus, available_gpus, 4)

    def headline_target(self) -> Target:
        """The one target the end-of-sweep tables and a poisoned run's early exit on triggered
        inputs read: a 1-point drop if the sweep stores it, else the sweep's first drop (a
        stored choice, never one made up for display)."""
        drops = self.max_accuracy_drops
        return Target("max_drop", 0.01 if 0.01 in drops else drops[0])


class StorageSpec(_Strict):
    """Where state goes; null: ``$SDN_<KEY>`` from the environment, else under home."""

    home: PathText | None = None
    tune: PathText | None = None
    predictions: PathText | None = None
    catalogue: PathText | None = None
    mlflow_tracking_uri: PathText | None = None
    mlflow_artifacts: PathText | None = None
    reports: PathText | None = None

    @field_validator("home", "tune", "predictions", "catalogue", "reports", "mlflow_artifacts")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is not None and any(ch in value for ch in "\n\r\x00"):
            raise ValueError(f"contains a line break or NUL character (got {show(value)})")
        return value

    @field_validator("home", "tune", "predictions", "catalogue", "reports")
    @classmethod
    def _filesystem_path(cls, value: str | None) -> str | None:
        if value is not None and is_uri(value):
            raise ValueError(
                f"must be a file-system path (mount shared storage at the same path on every node), not a URI (got {show(value)})"
            )
        return value

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _tracking_uri(cls, value: str | None) -> str | None:
        if value is not None and not re.match(
            r"^(sqlite|postgresql|mysql|mssql|https?|databricks)[+\w]*:", value
        ):
            raise ValueError(
                "must be a tracking URI such as 'sqlite:////abs/path/mlflow.db' or "
                f"'http://127.0.0.1:5000' (got {show(value)})"
            )
        return value


class DataSpec(_Strict):
    """Where data sets live (null: ``$SDN_DATA_ROOT`` or sdn's default) and whether to fetch."""

    root: PathText | None = None
    download: bool = False


class TriggerSpec(_Strict):
    """The BadNets trigger (``sdn.backdoor.Trigger``): a solid square, by default 5x5 white with
    its top-left corner at (26, 26) of a 32-px image (scaled to the data set's image size)."""

    size: int = Field(5, ge=1, le=1024)
    row: int = Field(26, ge=0, le=1024)
    col: int = Field(26, ge=0, le=1024)
    color: str | Annotated[list[int], Field(min_length=3, max_length=3)] = "white"
    scale: bool = True

    def trigger(self) -> Trigger:
        return Trigger(
            size=self.size,
            row=self.row,
            col=self.col,
            color=self.color if isinstance(self.color, str) else tuple(self.color),
            scale=self.scale,
        )


class BackdoorSpec(_Strict):
    """Cells trained on BadNets-poisoned data (``sdn.backdoor.PoisonConfig``), added to the grid.

    For every architecture x data set x seed of the grid, each mode in ``modes`` gets a poisoned
    cell next to the grid's clean ones (which stay as they are: keep ``cnn`` in ``grid.modes``
    for the clean twin that the clean accuracy is compared with). A poisoned ``cnn`` and ``sdn``
    train on the poisoned training split; a poisoned ``ic_only`` starts from the poisoned
    ``cnn`` of its cell and trains its ICs on CLEAN data (the paper's setup), so ``ic_only``
    needs ``cnn`` here too. Poisoned cells take the same training settings as the clean cells of
    their mode (overrides match them alike). The poisoning is part of each cell's identity.
    """

    rate: float = Field(0.1, gt=0.0, le=1.0)
    target: int = Field(5, ge=0, le=100_000)
    seed: Seed = 0
    trigger: TriggerSpec = TriggerSpec()
    modes: list[Mode] = Field(default=["cnn", "ic_only"], min_length=1, max_length=3)

    @field_validator("modes")
    @classmethod
    def _modes(cls, modes: list[str]) -> list[str]:
        _unique(modes)
        if "ic_only" in modes and "cnn" not in modes:
            raise ValueError(
                "'ic_only' needs 'cnn' too: a poisoned ic_only starts from the poisoned cnn"
            )
        return modes

    @model_validator(mode="after")
    def _poisoning(self) -> BackdoorSpec:
        try:
            self.poison_config()
        except SDNError as exc:
            raise ValueError(str(exc)) from None
        return self

    def poison_config(self) -> PoisonConfig:
        """The ``PoisonConfig`` every poisoned cell of the sweep uses."""
        return PoisonConfig(
            rate=self.rate, target=self.target, seed=self.seed, trigger=self.trigger.trigger()
        )


class SweepSpec(_Strict):
    """A whole sweep file. ``cells()`` is its expansion; ``spec_hash()`` its fingerprint."""

    name: str = Field(min_length=1, max_length=64)
    description: str | None = Field(None, max_length=4000)
    grid: GridSpec
    training: TrainingSpec = TrainingSpec()
    overrides: list[OverrideSpec] = Field(default=[], max_length=100)
    resources: ResourcesSpec = ResourcesSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()
    analysis: AnalysisSpec = AnalysisSpec()
    storage: StorageSpec = StorageSpec()
    data: DataSpec = DataSpec()
    backdoor: BackdoorSpec | None = None

    @field_validator("name", mode="before")
    @classmethod
    def _name_chars(cls, value: object) -> object:
        if isinstance(value, str) and value and not re.fullmatch(r"[A-Za-z0-9_-]+", value):
            raise ValueError(f"may only hold letters, digits, '_' and '-' (got {show(value)})")
        return value

    @model_validator(mode="after")
    def _cells_are_consistent(self) -> SweepSpec:
        grid = self.grid
        modes = len(grid.modes) + (len(self.backdoor.modes) if self.backdoor else 0)
        count = len(grid.architectures) * len(grid.datasets) * modes * len(grid.seeds)
        if count > MAX_CELLS:
            raise ValueError(f"grid: {count} cells is more than {MAX_CELLS}; split the sweep")
        cells = {cell.run_id: cell for cell in self._expand()}
        for cell in cells.values():
            _check_schedule(cell)
            parent = cells.get(cell.cnn_parent) if cell.cnn_parent else None
            if parent is not None:
                _check_same_model(cell, parent)
        if self.backdoor is not None:
            _check_poisoning(self.backdoor.poison_config(), grid.datasets)
        return self

    # --- expansion ----------------------------------------------------------------------------

    def cells(self) -> list[Cell]:
        """Every cell, in grid order (architecture, dataset, mode, seed), overrides applied."""
        return self._expand()

    def _expand(self) -> list[Cell]:
        """Per architecture and data set: the grid's clean cells, then the poisoned ones."""
        base = {k: v for k, v in self.training.model_dump().items() if v is not None}
        poison = self.backdoor.poison_config() if self.backdoor is not None else None
        kinds: list[tuple[str, PoisonConfig | None]] = [(m, None) for m in self.grid.modes]
        if self.backdoor is not None:
            kinds += [(m, poison) for m in self.backdoor.modes]
        out = []
        for arch in self.grid.architectures:
            for dataset in self.grid.datasets:
                for mode, poisoning in kinds:
                    train = dict(base)
                    for override in self.overrides:
                        if override.match.matches(arch, dataset, mode):
                            train.update(override.set_.explicit())
                    train = {k: _plain(v) for k, v in train.items() if v is not None}
                    for seed in self.grid.seeds:
                        out.append(
                            Cell(self.name, arch, dataset, mode, seed, dict(train), poisoning)
                        )
        return out

    # --- traceability -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The full spec, defaults filled in, as plain YAML/JSON data.

        Overrides keep only the keys they set: an explicit null in ``set`` means "back to the
        default", so dumping unset keys as null would change the spec on reload.
        """
        data = self.model_dump(mode="json", by_alias=True)
        # Sections and keys added later are left out while unused, so that a sweep that does not
        # use them keeps the spec_hash it had before they existed.
        if data.get("backdoor") is None:
            data.pop("backdoor", None)
        if data["training"].get("init") is None:
            data["training"].pop("init", None)
        data["overrides"] = [
            {
                "match": o.match.model_dump(mode="json", exclude_none=True),
                "set": o.set_.model_dump(mode="json", exclude_unset=True),
            }
            for o in self.overrides
        ]
        return _plain(data)

    def to_yaml(self) -> str:
        """The full spec as YAML; loading it gives an equal spec (and the same ``spec_hash``)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=100)

    def spec_hash(self) -> str:
        """16 hex digits of SHA-256 over the canonical JSON of the full spec."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]

    # --- resolved locations -------------------------------------------------------------------

    def storage_paths(
        self, env: Mapping[str, str] | None = None, cwd: str | Path | None = None
    ) -> StoragePaths:
        """Absolute storage locations: file > ``$SDN_*`` environment > under home."""
        return StoragePaths.resolve(self.storage, env=env, cwd=cwd)

    def data_root(
        self, env: Mapping[str, str] | None = None, cwd: str | Path | None = None
    ) -> str | None:
        """``data.root`` or ``$SDN_DATA_ROOT``, absolute (workers run elsewhere); None: sdn's default."""
        env = os.environ if env is None else env
        value = self.data.root or env.get(ENV_DATA_ROOT) or None
        if value is None:
            return None
        path = Path(value).expanduser()
        base = Path(cwd) if cwd is not None else Path.cwd()
        return os.path.abspath(path if path.is_absolute() else base / path)


def _check_schedule(cell: Cell) -> None:
    epochs, milestones = cell.train.get("epochs"), cell.train.get("milestones")
    if epochs is not None and milestones and milestones[-1] >= epochs:
        raise ValueError(
            f"cell {cell.run_id}: milestones {milestones} must all be below epochs ({epochs}); "
            "override milestones together with epochs"
        )


def _check_same_model(child: Cell, parent: Cell) -> None:
    """An ic_only cell loads its cnn parent's weights: the model shape and splits must agree."""
    for key in ("width", "val_size"):
        if child.train.get(key) != parent.train.get(key):
            raise ValueError(
                f"cell {child.run_id}: {key} {child.train.get(key)} differs from its cnn parent's "
                f"({parent.train.get(key)}); ic_only starts from that cnn, so {key} must match"
            )


def _check_poisoning(poison: PoisonConfig, datasets: list[str]) -> None:
    """The target is a class and the trigger fits the image, for each data set whose shape is
    known without reading it (``folder:`` data sets are checked when their cells load them)."""
    from sdn.data import dataset_info

    for dataset in datasets:
        if dataset.startswith(FOLDER_PREFIX):
            continue
        info = dataset_info(dataset)
        try:
            poison.check_classes(info.num_classes)
            poison.trigger.box(info.image_size)
        except SDNError as exc:
            raise ValueError(f"backdoor on {dataset}: {exc}") from None


def _resolve_gpus(amount: float | str, available: float, share: int | None) -> float:
    if amount != "auto":
        return float(amount)
    if available <= 0:
        return 0.0
    per = min(1.0, available / max(1, share or 1))
    return int(per * 10_000) / 10_000


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively, so cells and dumps are plain JSON/YAML data."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# --- cells ------------------------------------------------------------------------------------


def dataset_slug(dataset: str) -> str:
    """A file-name-safe token for a data set: the name itself, or for ``folder:<path>``
    ``folder-<ascii basename>-<8 hex of the path's hash>`` (no dots, spaces or non-ASCII, so
    ``run_id`` stays one dot-separated identifier; the hash keeps distinct folders distinct)."""
    if not dataset.startswith(FOLDER_PREFIX):
        return dataset
    path = _dataset_key(dataset)[len(FOLDER_PREFIX) :]
    digest = hashlib.sha256(path.encode("utf-8")).hexdigest()[:8]
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", os.path.basename(path)).strip("_-")[:24] or "data"
    return f"folder-{base}-{digest}"


@dataclass(frozen=True)
class Cell:
    """One model to train: a point of the grid plus its resolved training overrides.

    ``train`` holds only the ``TrainConfig`` fields the sweep sets (after overrides, nulls
    dropped), so TrainConfig's own defaults apply to the rest. ``poison`` is the poisoning of a
    backdoor cell (None: clean data). Identity is ``run_id``:
    ``<sweep>.<arch>.<dataset>.<mode>.s<seed>``, followed by ``.<poison tag>`` for a poisoned
    cell, so a poisoned and a clean cell never share it.
    """

    sweep: str
    arch: str
    dataset: str
    mode: str
    seed: int
    train: dict[str, Any] = field(default_factory=dict, hash=False)
    poison: PoisonConfig | None = None

    @property
    def dataset_slug(self) -> str:
        return dataset_slug(self.dataset)

    @property
    def poison_tag(self) -> str | None:
        """The poisoning tag (``badnets-t5-r0p10-s0-sq5at26x26-white``), None for clean data."""
        return None if self.poison is None else self.poison.tag

    def _identity(self, mode: str) -> str:
        text = f"{self.sweep}.{self.arch}.{self.dataset_slug}.{mode}.s{self.seed}"
        return text if self.poison is None else f"{text}.{self.poison.tag}"

    @property
    def run_id(self) -> str:
        return self._identity(self.mode)

    @property
    def cnn_parent(self) -> str | None:
        """The ``run_id`` of the cnn cell an ic_only cell starts from (the poisoned cnn for a
        poisoned ic_only); None for other modes."""
        if self.mode != "ic_only":
            return None
        return self._identity("cnn")

    def train_kwargs(self, data_root: str | None = None) -> dict[str, Any]:
        """Keyword arguments for ``sdn.training.TrainConfig`` (identity + overrides)."""
        kwargs = dict(self.train)
        kwargs.update(arch=self.arch, dataset=self.dataset, mode=self.mode, seed=self.seed)
        if data_root is not None:
            kwargs["data_root"] = data_root
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe, with ``run_id`` and ``cnn_parent`` spelled out (for Tune configs, logs)."""
        return {
            "sweep": self.sweep,
            "arch": self.arch,
            "dataset": self.dataset,
            "mode": self.mode,
            "seed": self.seed,
            "train": _plain(dict(self.train)),
            "poison": None if self.poison is None else self.poison.to_dict(),
            "poison_tag": self.poison_tag,
            "run_id": self.run_id,
            "cnn_parent": self.cnn_parent,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Cell:
        """Inverse of ``to_dict`` (derived keys ignored)."""
        return cls(
            sweep=data["sweep"],
            arch=data["arch"],
            dataset=data["dataset"],
            mode=data["mode"],
            seed=int(data["seed"]),
            train=dict(data.get("train") or {}),
            poison=PoisonConfig.from_dict(data["poison"]) if data.get("poison") else None,
        )


# --- loading ----------------------------------------------------------------------------------


def sweep_from_dict(data: object, label: str = "sweep") -> SweepSpec:
    """Validate already-parsed data (a mapping) as a sweep; errors are one-line SweepSpecErrors."""
    if data is None:
        raise SweepSpecError(f"{label}: file is empty; a sweep needs at least 'name' and 'grid'")
    if not isinstance(data, Mapping):
        kinds = {
            list: "a list",
            str: "a string",
            int: "a number",
            float: "a number",
            bool: "true/false",
        }
        kind = kinds.get(type(data), f"a {type(data).__name__}")
        raise SweepSpecError(f"{label}: top level must be a mapping of sweep settings (got {kind})")
    try:
        return SweepSpec.model_validate(dict(data))
    except ValidationError as exc:
        raise SweepSpecError(format_validation_error(label, exc, SweepSpec)) from None
    except RecursionError:
        raise SweepSpecError(f"{label}: nested too deeply") from None


def parse_sweep(text: str, label: str = "sweep") -> SweepSpec:
    """A sweep from YAML text (``label`` names it in errors)."""
    return sweep_from_dict(parse_yaml(text, label), label)


def load_sweep(path: str | os.PathLike[str]) -> SweepSpec:
    """A sweep from a YAML file; any problem is a one-line ``SweepSpecError`` naming the file."""
    label = os.fspath(path)
    return parse_sweep(read_text(Path(label), label), label)


def list_presets() -> list[str]:
    """Names of the presets shipped in ``workflows/presets/``."""
    folder = resources.files(_PRESET_PACKAGE) / _PRESET_DIR
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> SweepSpec:
    """A shipped preset by name; an unknown name lists the known ones."""
    names = list_presets()
    if name not in names:
        allowed = ", ".join(repr(n) for n in names)
        raise SweepSpecError(f"unknown preset {show(name)}; choose one of: {allowed}")
    text = (resources.files(_PRESET_PACKAGE) / _PRESET_DIR / f"{name}.yaml").read_text(
        encoding="utf-8"
    )
    return parse_sweep(text, f"preset {name!r}")
