"""Where a sweep's state lives: one ``$SDN_HOME`` by default, each location overridable.

Resolution order for every location: the sweep file's ``storage`` section, then an environment
variable (``SDN_HOME``, ``SDN_TUNE``, ``SDN_PREDICTIONS``, ``SDN_CATALOGUE``,
``SDN_MLFLOW_TRACKING_URI``, ``SDN_MLFLOW_ARTIFACTS``, ``SDN_REPORTS``), then the default under
home. Presets leave ``storage`` empty, so a cluster redirects them with environment variables
alone. Relative paths are taken relative to home (home itself relative to the working directory)
and every result is absolute, because Ray workers run in other directories than the driver.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from workflows.spec_errors import SweepSpecError, show

ENV_HOME = "SDN_HOME"
_PATH_FIELDS = ("home", "tune", "predictions", "catalogue", "reports")
DEFAULT_HOME = "sdn-home"


class _StorageSettings(Protocol):
    """What ``resolve`` reads: the sweep file's ``storage`` section (``spec.StorageSpec``)."""

    home: str | None
    tune: str | None
    predictions: str | None
    catalogue: str | None
    mlflow_tracking_uri: str | None
    mlflow_artifacts: str | None
    reports: str | None


@dataclass(frozen=True)
class StoragePaths:
    """Absolute locations of a sweep's state.

    ``tune`` and ``predictions`` must be shared storage on a multi-node cluster (every node mounts
    it at the same path); ``catalogue`` is an SQLite file and must be on the driver's local disk;
    ``mlflow_tracking_uri`` is a URI (``sqlite:///...`` locally, ``http://127.0.0.1:5000`` for the
    head's ``mlflow server``); ``mlflow_artifacts`` is a path or a URI such as ``s3://bucket/x``
    for new experiments, or None when the tracking URI is an HTTP server and nothing was set:
    then the server's own (proxied) artifact store is used, which remote clients can also read.
    """

    home: Path
    tune: Path
    predictions: Path
    catalogue: Path
    mlflow_tracking_uri: str
    mlflow_artifacts: str | None
    reports: Path

    @classmethod
    def resolve(
        cls,
        storage: _StorageSettings | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> StoragePaths:
        """Apply file > environment > default; see the module docstring."""
        env = os.environ if env is None else env
        base = Path(cwd) if cwd is not None else Path.cwd()

        def pick(field: str) -> str | None:
            value = getattr(storage, field, None) if storage is not None else None
            if value:
                return value
            name = f"SDN_{field.upper()}"
            value = env.get(name) or None
            if value is not None and field in _PATH_FIELDS and is_uri(value):
                raise SweepSpecError(
                    f"environment {name}: must be a file-system path, not a URI (got {show(value)})"
                )
            return value

        home = _absolute(pick("home") or DEFAULT_HOME, base)

        def under_home(field: str, default: str) -> Path:
            return _absolute(pick(field) or default, home)

        tracking = pick("mlflow_tracking_uri") or sqlite_uri(home / "mlflow.db")
        return cls(
            home=home,
            tune=under_home("tune", "tune"),
            predictions=under_home("predictions", "predictions"),
            catalogue=under_home("catalogue", "catalogue.db"),
            mlflow_tracking_uri=tracking,
            mlflow_artifacts=_artifacts(pick("mlflow_artifacts"), tracking, home),
            reports=under_home("reports", "reports"),
        )

    def to_dict(self) -> dict[str, str | None]:
        """Plain strings (None stays None), for Tune configs, JSON and logs."""
        return {key: None if value is None else str(value) for key, value in asdict(self).items()}


def is_uri(value: str) -> bool:
    """``scheme://...`` (s3://, gs://, http://, file://): not a local path."""
    head, sep, _ = value.partition("://")
    return bool(sep) and head.isascii() and head.replace("+", "").replace("-", "").isalnum()


def sqlite_uri(path: Path) -> str:
    """The SQLAlchemy URI of an SQLite file at an absolute ``path``.

    Spaces and non-ASCII characters pass through as they are; ``%``, ``?`` and ``#`` are
    percent-encoded because SQLAlchemy decodes ``%XX`` and cuts the path at ``?``.
    """
    text = str(path).replace("%", "%25").replace("?", "%3F").replace("#", "%23")
    return f"sqlite:///{text}"


def _artifacts(value: str | None, tracking_uri: str, home: Path) -> str | None:
    """Explicit URI as is; explicit path made absolute; default: under home for a local
    database, None (the server's proxied store) for an HTTP tracking server."""
    if value and is_uri(value):
        return value
    if value:
        return str(_absolute(value, home))
    if tracking_uri.startswith(("http://", "https://")):
        return None
    return str(home / "mlartifacts")


def _absolute(value: str | Path, base: Path) -> Path:
    """``~`` expanded, joined to ``base`` when relative, ``..`` folded; symlinks are kept."""
    path = Path(value).expanduser()
    return Path(os.path.abspath(path if path.is_absolute() else base / path))
