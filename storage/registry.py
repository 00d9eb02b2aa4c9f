"""The MLflow model registry for trained SDNs: log, register, alias, find and load them.

Each logged model is stored two ways (see ``storage.model_export``):

* a registered *exported* model (``torch.export`` / pt2 format, all exits as one
  ``[batch, exits, classes]`` tensor) that plain MLflow users load with
  ``mlflow.pytorch.load_model("models:/<name>/<version>")`` or pyfunc, without this project;
* run artifacts ``sdn_model/<name>/state_dict.pt`` + ``model_config.json``, from which
  :meth:`Registry.load_module` rebuilds the real CNN/SDN (``SDN.early_exit`` works).

Names are ``sdn-<arch>-<dataset>-<mode>`` (``-<poison tag>`` appended for a model trained on
poisoned data; :func:`registered_model_name`); reference syntax is
documented in ``storage.model_refs``. ``latest`` is not a stored alias: MLflow 3 reserves that
name and resolves ``models:/<name>/latest`` to the highest version itself, so ``latest`` is always
current without writes; this module resolves ``<name>@latest`` the same way.

No MLflow global state is read or written: every call goes through an ``MlflowClient`` built with
the explicit tracking/registry URIs, so a worker never falls back to a stray ``./mlflow.db``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import TYPE_CHECKING, Any

import pandas as pd

from storage.errors import StorageError, one_line
from storage.mlflow_setup import ensure_tracking_store, make_client
from storage.model_refs import (
    LATEST,
    check_model_name,
    check_run_id,
    parse_ref,
    registered_model_name,
)

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel
    from torch import nn

__all__ = ["ModelVersionRef", "Registry", "registered_model_name"]

WEIGHTS_DIR = "sdn_model"  # run artifact folder: sdn_model/<registered name>/
EXPORTED_NAME = "exported"  # the LoggedModel's name (its artifact folder in the experiment)
WEIGHTS_TAG = "sdn.weights_path"  # version tag: run-relative folder of state dict + config
_ALIAS = re.compile(r"[A-Za-z0-9_-]{1,255}")
_VERSION_LIKE = re.compile(r"[vV]\d+")
_MAX_LISTED_NAMES = 12


@dataclass(frozen=True)
class ModelVersionRef:
    """One registered model version; ``model_uri`` is what plain MLflow loads."""

    name: str
    version: int
    run_id: str
    model_uri: str

    def __str__(self) -> str:
        return f"{self.name}/{self.version}"


class Registry:
    """Registered SDN models in one MLflow tracking store (SQLite file or server)."""

    def __init__(self, tracking_uri: str, registry_uri: str | None = None) -> None:
        """Check the store(s) once (schema created, server reachable) and bind a client."""
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        # MLflow draws tqdm bars on stderr while downloading artifacts; a CLI's stderr is for its
        # one-line errors, and a library user who wants the bars can set the variable.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        ensure_tracking_store(self.tracking_uri)
        if self.registry_uri != self.tracking_uri:
            ensure_tracking_store(self.registry_uri)
        self.client = make_client(self.tracking_uri, self.registry_uri)

    # ---- logging -----------------------------------------------------------------------------

    def log_model(
        self,
        model: nn.Module,
        *,
        run_id: str,
        name: str | None = None,
        tags: Mapping[str, Any],
        aliases: Sequence[str] = (LATEST,),
        input_example: Any = None,
    ) -> ModelVersionRef:
        """Log ``model`` in the existing MLflow run ``run_id`` and register it under ``name``.

        ``name`` defaults to ``sdn-<architecture>-<dataset>-<mode>`` from ``tags`` (with
        ``-<tag>`` appended when ``tags["backdoor"]`` names a poisoning). Every tag is
        set on the version (strings); ``architecture``/``dataset``/``mode``/``seed``/``sweep`` are
        the study's. Idempotent per run: if ``name`` already has a version from ``run_id``, that
        version is returned (its aliases re-applied) and nothing is logged again, so a retried
        task never adds a version. ``input_example`` (an image batch) defaults to random noise of
        the config's image size; it only fixes input shapes for the export.
        """
        config = _export().model_config(model)
        run_id = check_run_id(run_id)
        tags = {str(k): str(v) for k, v in tags.items()}
        tags.setdefault("architecture", str(config.get("arch", "")))
        name = check_model_name(name) if name is not None else self._name_from_tags(tags)
        wanted = _check_aliases(aliases)
        with self._errors(f"logging a model in run {run_id!r}"):
            run = self._get_run(run_id)
            existing = self._versions(f"name = '{name}' and run_id = '{run_id}'")
            if existing:
                mv = min(existing, key=lambda v: int(v.version))
            else:
                weights_path = f"{WEIGHTS_DIR}/{name}"
                self._log_weights(model, run_id, weights_path)
                source, model_id = self._log_exported(model, run, config, tags, input_example)
                self._ensure_registered(name)
                mv = self.client.create_model_version(
                    name,
                    source=source,
                    run_id=run_id,
                    tags={**tags, WEIGHTS_TAG: weights_path},
                    model_id=model_id,
                )
            for alias in wanted:
                self.client.set_registered_model_alias(name, alias, str(mv.version))
        return _ref(mv)

    def _name_from_tags(self, tags: Mapping[str, str]) -> str:
        missing = [k for k in ("architecture", "dataset", "mode") if not tags.get(k)]
        if missing:
            raise StorageError(
                f"tags lack {missing}: give name= or tags with architecture, dataset and mode"
            )
        return registered_model_name(
            tags["architecture"], tags["dataset"], tags["mode"], tags.get("backdoor")
        )

    def _get_run(self, run_id: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id)
        except MlflowException as exc:
            if _not_found(exc):
                raise StorageError(
                    f"unknown MLflow run {run_id!r} in {self.tracking_uri}; log models into an "
                    "existing run"
                ) from exc
            raise

    def _log_weights(self, model: nn.Module, run_id: str, artifact_path: str) -> None:
        """The real module's state dict + config as run artifacts (for ``load_module``)."""
        with TemporaryDirectory() as tmp:
            _export().write_weights(model, Path(tmp))
            self.client.log_artifacts(run_id, tmp, artifact_path=artifact_path)

    def _log_exported(
        self,
        model: nn.Module,
        run: Any,
        config: Mapping[str, Any],
        tags: Mapping[str, str],
        input_example: Any,
    ) -> tuple[str, str]:
        """Save the all-exits model in pt2 format as a LoggedModel of ``run``.

        This is what ``mlflow.pytorch.log_model(..., run_id=...)`` does, done with an explicit
        client: ``log_model`` reads MLflow's *global* tracking URI to create the LoggedModel and
        upload it, and the SQL registry resolves ``models:/m-...`` sources through the global
        URI too (an MLflow TODO). So we create the LoggedModel, write it with
        ``mlflow.pytorch.save_model`` and upload it ourselves, and register its artifact
        location. Returns ``(artifact_location, model_id)``.
        """
        import mlflow.pytorch
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus
        from mlflow.models import Model

        run_id = run.info.run_id
        logged = self.client.create_logged_model(
            experiment_id=run.info.experiment_id,
            name=EXPORTED_NAME,
            source_run_id=run_id,
            tags=dict(tags),
        )
        try:
            with TemporaryDirectory() as tmp:
                local = Path(tmp) / "model"
                mlflow.pytorch.save_model(
                    _export().portable_copy(model),
                    str(local),
                    mlflow_model=Model(
                        artifact_path=logged.artifact_location,
                        run_id=run_id,
                        model_uuid=logged.model_id,
                        model_id=logged.model_id,
                    ),
                    serialization_format="pt2",
                    input_example=_export().example_input(config, input_example),
                    pip_requirements=_pip_requirements(),
                    metadata=_export_metadata(config),
                )
                self.client.log_model_artifacts(logged.model_id, str(local))
            self.client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
            self.client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
        except BaseException:
            self.client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
            raise
        return logged.artifact_location, logged.model_id

    def _ensure_registered(self, name: str) -> None:
        """Create the registered model unless it exists (another worker may race us)."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise

    # ---- aliases and listing -----------------------------------------------------------------

    def set_alias(self, name: str, alias: str, version: int | str) -> ModelVersionRef:
        """Point ``alias`` (e.g. ``champion``) at ``version`` of ``name``; returns that version."""
        (alias,) = _check_aliases([alias], allow_latest=False)
        mv = self._by_version(check_model_name(name), str(version))
        with self._errors(f"setting alias {alias!r} on {name}/{version}"):
            self.client.set_registered_model_alias(name, alias, str(mv.version))
        return _ref(mv)

    def list_models(self) -> pd.DataFrame:
        """Every registered version: name, version, aliases, tags, run_id, created (UTC).

        ``aliases`` includes ``latest`` on each name's highest version, as resolved here and by
        MLflow's ``models:/<name>/latest``.
        """
        with self._errors("listing registered models"):
            versions = self._versions(None)
            alias_map = {
                (rm.name, int(v)): alias
                for rm in self._registered_models()
                for alias, v in (rm.aliases or {}).items()
            }
        top: dict[str, int] = {}
        for mv in versions:
            top[mv.name] = max(top.get(mv.name, 0), int(mv.version))
        rows = []
        for mv in versions:
            version = int(mv.version)
            aliases = sorted(a for (n, v), a in alias_map.items() if n == mv.name and v == version)
            if top[mv.name] == version:
                aliases.append(LATEST)
            rows.append(
                {
                    "name": mv.name,
                    "version": version,
                    "aliases": aliases,
                    "tags": dict(mv.tags or {}),
                    "run_id": mv.run_id,
                    "created": pd.to_datetime(mv.creation_timestamp, unit="ms", utc=True),
                }
            )
        columns = ["name", "version", "aliases", "tags", "run_id", "created"]
        frame = pd.DataFrame(rows, columns=columns)
        return frame.sort_values(["name", "version"], ignore_index=True)

    # ---- resolving and loading ---------------------------------------------------------------

    def resolve(self, ref: str) -> ModelVersionRef:
        """The version a reference names (syntax: ``storage.model_refs``)."""
        parsed = parse_ref(ref)
        if parsed.kind == "alias":
            assert parsed.name is not None
            return _ref(self._by_alias(parsed.name, parsed.value))
        if parsed.kind == "version":
            assert parsed.name is not None
            return _ref(self._by_version(parsed.name, parsed.value))
        if parsed.kind == "run":
            return _ref(self._by_run(parsed.value))
        token = parsed.value
        if _looks_like_name(token) and self._find_registered(token) is not None:
            return _ref(self._latest(token))
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", token):
            raise StorageError(f"unknown model reference {ref!r}{self._known_names()}")
        return _ref(self._by_run(token, ref=ref))

    def version_tags(self, ref: str | ModelVersionRef) -> dict[str, str]:
        """The tags of a version (architecture, dataset, mode, seed, sweep, ...)."""
        return dict(self._version_entity(ref).tags or {})

    def load_module(self, ref: str | ModelVersionRef) -> nn.Module:
        """The real CNN/SDN of a version, rebuilt from its config and strictly loaded weights.

        The state dict is read with ``torch.load(weights_only=True)``; the model is in eval
        mode on the CPU, so ``SDN.early_exit`` and ``sdn.models.model_outputs`` work directly.
        """
        mv = self._version_entity(ref)
        path = (mv.tags or {}).get(WEIGHTS_TAG, f"{WEIGHTS_DIR}/{mv.name}")
        where = f"{mv.name}/{mv.version} (run {mv.run_id}, {path})"
        with TemporaryDirectory() as tmp:
            with self._errors(f"downloading the weights of {where}"):
                local = self.client.download_artifacts(mv.run_id, path, tmp)
            return _export().read_weights(Path(local), where)

    def load_exported(self, ref: str | ModelVersionRef) -> nn.Module:
        """The exported all-exits model (``mlflow.pytorch.load_model``): ``[B, exits, classes]``.

        It is a ``torch.fx`` GraphModule from a pt2 archive; MLflow 3.17 checks that every record
        in the archive is JSON/text or passes torch's ``weights_only`` unpickler before loading.
        """
        import mlflow.artifacts
        import mlflow.pytorch

        mv = self._version_entity(ref)
        with TemporaryDirectory() as tmp, self._errors(f"loading {mv.name}/{mv.version}"):
            location = self.client.get_model_version_download_uri(mv.name, str(mv.version))
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=location, dst_path=tmp, tracking_uri=self.tracking_uri
            )
            return mlflow.pytorch.load_model(local)

    # ---- lookups -----------------------------------------------------------------------------

    def _version_entity(self, ref: str | ModelVersionRef) -> ModelVersion:
        resolved = ref if isinstance(ref, ModelVersionRef) else self.resolve(ref)
        return self._by_version(resolved.name, str(resolved.version))

    def _registered(self, name: str) -> RegisteredModel:
        found = self._find_registered(name)
        if found is None:
            raise StorageError(f"unknown registered model {name!r}{self._known_names()}")
        return found

    def _find_registered(self, name: str) -> RegisteredModel | None:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_registered_model(name)
        except MlflowException as exc:
            if _not_found(exc):
                return None
            raise _storage_error(exc, f"looking up {name!r}", self.registry_uri) from exc

    def _by_version(self, name: str, version: str) -> ModelVersion:
        from mlflow.exceptions import MlflowException

        self._registered(name)
        if version.lower() == LATEST:
            return self._latest(name)
        try:
            return self.client.get_model_version(name, str(int(version)))
        except MlflowException as exc:
            if not _not_found(exc):
                raise _storage_error(exc, f"reading {name}/{version}", self.registry_uri) from exc
        numbers = sorted(int(v.version) for v in self._versions(f"name = '{name}'"))
        listed = ", ".join(map(str, numbers)) or "none"
        raise StorageError(
            f"registered model {name!r} has no version {version}; versions: {listed}"
        )

    def _by_alias(self, name: str, alias: str) -> ModelVersion:
        if alias.lower() == LATEST:
            return self._latest(name)
        aliases = dict(self._registered(name).aliases or {})
        if alias not in aliases:
            listed = ", ".join(sorted([*aliases, LATEST]))
            raise StorageError(
                f"registered model {name!r} has no alias {alias!r}; aliases: {listed}"
            )
        return self._by_version(name, str(aliases[alias]))

    def _latest(self, name: str) -> ModelVersion:
        self._registered(name)
        versions = self._versions(f"name = '{name}'")
        if not versions:
            raise StorageError(f"registered model {name!r} has no versions yet")
        top = max(versions, key=lambda v: int(v.version))
        with self._errors(f"reading {name}/{top.version}"):
            return self.client.get_model_version(name, str(top.version))

    def _by_run(self, run_id: str, ref: str | None = None) -> ModelVersion:
        versions = self._versions(f"run_id = '{check_run_id(run_id)}'")
        if not versions:
            shown = repr(ref) if ref is not None else f"run {run_id!r}"
            raise StorageError(
                f"no registered model version comes from {shown} (not a model name nor an MLflow "
                f"run id with a registered model){self._known_names()}"
            )
        newest = max(versions, key=lambda v: (v.creation_timestamp or 0, int(v.version)))
        return self._by_version(newest.name, str(newest.version))

    def _versions(self, filter_string: str | None) -> list[ModelVersion]:
        """All model versions matching a filter, across result pages."""
        out: list[ModelVersion] = []
        token = None
        with self._errors("searching model versions"):
            while True:
                page = self.client.search_model_versions(filter_string, page_token=token)
                out.extend(page)
                token = page.token
                if not token:
                    return out

    def _registered_models(self) -> Iterator[RegisteredModel]:
        token = None
        while True:
            page = self.client.search_registered_models(page_token=token)
            yield from page
            token = page.token
            if not token:
                return

    def _known_names(self) -> str:
        """``"; known models: a, b"`` for error messages (short lists only)."""
        try:
            names = sorted(rm.name for rm in self._registered_models())
        except Exception:
            return ""
        if not names:
            return "; no models are registered yet"
        if len(names) > _MAX_LISTED_NAMES:
            return f"; {len(names)} models are registered (see list_models())"
        return "; known models: " + ", ".join(names)

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Turn MLflow/connection failures into one-line StorageErrors naming the store."""
        from mlflow.exceptions import MlflowException

        try:
            yield
        except StorageError:
            raise
        except (MlflowException, OSError) as exc:
            raise _storage_error(exc, doing, self.tracking_uri) from exc


def _export() -> Any:
    """``storage.model_export``, imported on first use: it imports torch, which listing models
    does not need."""
    from storage import model_export

    return model_export


def _ref(mv: ModelVersion) -> ModelVersionRef:
    version = int(mv.version)
    return ModelVersionRef(mv.name, version, mv.run_id or "", f"models:/{mv.name}/{version}")


def _looks_like_name(token: str) -> bool:
    try:
        check_model_name(token)
    except StorageError:
        return False
    return True


def _check_aliases(aliases: Iterable[str], *, allow_latest: bool = True) -> list[str]:
    """Aliases to store: ``latest`` is implicit (dropped, or refused where it would be set)."""
    if isinstance(aliases, str):
        aliases = [aliases]
    out: list[str] = []
    for alias in aliases:
        if (
            not isinstance(alias, str)
            or not _ALIAS.fullmatch(alias)
            or _VERSION_LIKE.fullmatch(alias)
        ):
            raise StorageError(
                f"invalid alias {alias!r}: use letters, digits, '_' or '-', not a version like 'v3'"
            )
        if alias.lower() == LATEST:
            if not allow_latest:
                raise StorageError(
                    "alias 'latest' is reserved by MLflow and always means the highest version; "
                    "choose another alias (e.g. 'champion')"
                )
            continue
        if alias not in out:
            out.append(alias)
    return out


def _not_found(exc: Any) -> bool:
    return getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def _storage_error(exc: BaseException, doing: str, uri: str) -> StorageError:
    return StorageError(f"MLflow store {uri}: {doing} failed: {one_line(exc)}")


def _pip_requirements() -> list[str]:
    """Explicit requirements: MLflow's inference of them takes ~7 s per logged model."""
    import numpy
    import torch

    torch_version = torch.__version__.split("+", 1)[0]
    return [f"torch=={torch_version}", f"numpy=={numpy.__version__}"]


def _export_metadata(config: Mapping[str, Any]) -> dict[str, Any]:
    """What a user without this project needs to call the exported model."""
    return {
        "sdn_config": dict(config),
        "input": "float32 [batch, 3, H, W] images normalised with the dataset's mean and std",
        "output": "logits [batch, exits, classes]; exit 0 = first internal classifier, "
        "last exit = final head",
    }
