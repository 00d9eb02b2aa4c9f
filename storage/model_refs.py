"""Registered-model names and the reference syntax users type, parsed without importing MLflow.

Kept apart from ``storage.registry`` so the CLI can validate a name or a reference instantly
(MLflow takes seconds to import).

Reference syntax (one string, accepted by ``Registry.resolve`` / ``load_module`` / ``load_exported``):

    <name>@<alias>        e.g. sdn-resnet56-cifar10-sdn@champion   (``@latest``: highest version)
    <name>/<version>      e.g. sdn-resnet56-cifar10-sdn/3          (``/latest``: highest version)
    models:/<name>@<alias>, models:/<name>/<version>                MLflow's own URI forms
    runs:/<run_id>        the version registered from that MLflow run
    <token>               a registered model name (its highest version) or else an MLflow run id

``/`` separates name and version because MLflow forbids ``/`` and ``:`` in model names, so the
split is never ambiguous and matches MLflow's ``models:/`` URIs.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal

from storage.errors import StorageError

MODES = ("cnn", "ic_only", "sdn")
LATEST = "latest"

# MLflow model names may not contain "/" or ":"; quotes would break its filter strings.
_SAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_VALID_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MAX_DATASET_PART = 80


def sanitise_dataset(dataset: str) -> str:
    """The dataset's part of a registered name: MLflow-safe, short, and unique per dataset.

    Every run of characters outside ``[A-Za-z0-9._-]`` becomes one ``-`` and leading/trailing
    ``-`` are stripped (``folder:/data/My Set`` -> ``folder-data-My-Set``). When that changed the
    text, the first 8 hex digits of the SHA-1 of the original name are appended
    (``folder-data-My-Set-1a2b3c4d``), so two paths that sanitise alike (``/a/b`` and ``/a-b``)
    never share a registered model. Plain names (``cifar10``) are kept as they are. The original
    dataset name is kept in the version's ``dataset`` tag.
    """
    if not isinstance(dataset, str) or not dataset.strip():
        raise StorageError(f"dataset must be a non-empty name, got {dataset!r}")
    cleaned = _SAFE_NAME_CHARS.sub("-", dataset).strip("-.")
    if cleaned == dataset and len(cleaned) <= _MAX_DATASET_PART:
        return cleaned
    digest = hashlib.sha1(dataset.encode("utf-8")).hexdigest()[:8]
    cleaned = cleaned[:_MAX_DATASET_PART].rstrip("-.")
    return f"{cleaned}-{digest}" if cleaned else digest


def registered_model_name(arch: str, dataset: str, mode: str, poison: str | None = None) -> str:
    """``sdn-<arch>-<dataset>-<mode>``, the one registered model per study cell family; a model
    trained on poisoned data (``poison``: its ``sdn.backdoor.PoisonConfig.tag``) is
    ``sdn-<arch>-<dataset>-<mode>-<tag>``, so it never shares a name with a clean model.

    ``arch`` and ``mode`` must already be MLflow-safe tokens (``resnet56``, ``ic_only``);
    ``dataset`` is sanitised by :func:`sanitise_dataset`; ``poison`` must be a plain token.
    """
    if mode not in MODES:
        raise StorageError(f"unknown training mode {mode!r}; choose one of: {', '.join(MODES)}")
    if not isinstance(arch, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", arch):
        raise StorageError(f"architecture {arch!r} is not a plain name like 'resnet56'")
    name = f"sdn-{arch}-{sanitise_dataset(dataset)}-{mode}"
    if not poison:
        return name
    if not isinstance(poison, str) or not re.fullmatch(r"[A-Za-z0-9-]{1,100}", poison):
        raise StorageError(f"poison tag {poison!r} is not a plain token like 'badnets-t5-...'")
    return check_model_name(f"{name}-{poison}")


def check_model_name(name: str) -> str:
    """A name we let into MLflow and its filter strings: letters, digits, ``._-`` only."""
    if not isinstance(name, str) or not _VALID_NAME.fullmatch(name):
        raise StorageError(
            f"invalid registered model name {name!r}: use letters, digits, '.', '_' or '-' "
            "(at most 200 characters, no '/' or ':')"
        )
    return name


def check_run_id(run_id: str) -> str:
    """An MLflow run id safe to put in a filter string (MLflow's are 32 hex digits)."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise StorageError(f"invalid MLflow run id {run_id!r}: expected letters, digits, '-', '_'")
    return run_id


RefKind = Literal["alias", "version", "run", "bare"]


@dataclass(frozen=True)
class ParsedRef:
    """A reference split into its parts; ``value`` is the alias, version text or run id."""

    kind: RefKind
    name: str | None
    value: str


def parse_ref(ref: str) -> ParsedRef:
    """Split a reference string (syntax in the module docstring); raise StorageError if malformed."""
    if not isinstance(ref, str) or not ref.strip():
        raise StorageError(
            f"empty model reference {ref!r}; use name@alias, name/version or a run id"
        )
    text = ref.strip()
    if text.startswith("runs:/"):
        run_id = text[len("runs:/") :].strip("/").split("/", 1)[0]
        return ParsedRef("run", None, check_run_id(run_id))
    if text.startswith("models:/"):
        text = text[len("models:/") :]
        if "@" not in text and "/" not in text:
            raise StorageError(
                f"model URI {ref!r} needs a version or alias: models:/name/3 or @alias"
            )
    if "@" in text:
        name, _, alias = text.partition("@")
        if not alias or "@" in alias or "/" in alias:
            raise StorageError(f"bad model reference {ref!r}; expected name@alias")
        return ParsedRef("alias", check_model_name(name), alias)
    if "/" in text:
        name, _, version = text.partition("/")
        if version.lower() != LATEST and not version.isdigit():
            raise StorageError(f"bad model reference {ref!r}; expected name/<version number>")
        return ParsedRef("version", check_model_name(name), version)
    if ":" in text:
        raise StorageError(
            f"bad model reference {ref!r}; write name/3 for a version or name@alias for an alias"
        )
    return ParsedRef("bare", None, text)
