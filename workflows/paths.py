"""Where a sweep's state lives: one ``$SDN_HOME`` by default, each location overridable.

This is the one resolver: the sweep driver and every CLI command use it.

Resolution order for every location: the sweep file's ``storage`` section (for a CLI command: its
options, ``--home``, ``--catalogue``, ``--predictions``, ``--tracking-uri``), then an environment
variable (``SDN_HOME``, ``SDN_TUNE``, ``SDN_PREDICTIONS``, ``SDN_CATALOGUE``,
``SDN_MLFLOW_TRACKING_URI``, ``SDN_MLFLOW_ARTIFACTS``, ``SDN_REPORTS``), then, for the tracking URI
only, MLflow's own ``MLFLOW_TRACKING_URI``, then the default under home. Presets leave ``storage``
empty, so a cluster redirects them with environment variables alone. Relative paths in a file or
the environment are taken relative to home (home itself relative to the working directory); a
relative path typed as a CLI option is relative to the working directory, as a shell user
expects. Every result is absolute, because Ray workers run in other directories than the driver.
Nothing here writes or changes the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

ENV_HOME = "SDN_HOME"
MLFLOW_ENV = "MLFLOW_TRACKING_URI"  # MLflow's own variable: the last fallback before home
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
                from workflows.spec_errors import SweepSpecError, show

                raise SweepSpecError(
                    f"environment {name}: must be a file-system path, not a URI (got {show(value)})"
                )
            return value

        home = _absolute(pick("home") or DEFAULT_HOME, base)

        def under_home(field: str, default: str) -> Path:
            return _absolute(pick(field) or default, home)

        tracking = (
            pick("mlflow_tracking_uri") or env.get(MLFLOW_ENV) or sqlite_uri(home / "mlflow.db")
        )
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


@dataclass(frozen=True)
class CliOptions:
    """The location options a CLI command was given (None: not given); they play the role of
    the sweep file's ``storage`` section in :meth:`StoragePaths.resolve`."""

    home: str | None = None
    tune: str | None = None
    predictions: str | None = None
    catalogue: str | None = None
    mlflow_tracking_uri: str | None = None
    mlflow_artifacts: str | None = None
    reports: str | None = None


_OPTION_NAMES = {
    "home": "--home",
    "predictions": "--predictions",
    "catalogue": "--catalogue",
    "mlflow_tracking_uri": "--tracking-uri",
}


def resolve_cli(
    *,
    home: str | os.PathLike[str] | None = None,
    catalogue: str | os.PathLike[str] | None = None,
    predictions: str | os.PathLike[str] | None = None,
    tracking_uri: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> tuple[StoragePaths, dict[str, str]]:
    """A CLI command's locations (options > environment > home) and, per field, where its value
    came from (``--home``, ``$SDN_HOME``, ``default``...), for messages that name what the user
    typed. Option paths are made absolute against ``cwd`` first."""
    env = os.environ if env is None else env
    base = Path(cwd) if cwd is not None else Path.cwd()

    def option(value: str | os.PathLike[str] | None) -> str | None:
        return None if value is None else str(_absolute(value, base))

    options = CliOptions(
        home=option(home),
        catalogue=option(catalogue),
        predictions=option(predictions),
        mlflow_tracking_uri=tracking_uri or None,
    )
    sources: dict[str, str] = {}
    for field in ("home", "tune", "predictions", "catalogue", "mlflow_tracking_uri", "reports"):
        name = f"SDN_{field.upper()}"
        if getattr(options, field) is not None:
            sources[field] = _OPTION_NAMES[field]
        elif env.get(name):
            sources[field] = f"${name}"
        elif field == "mlflow_tracking_uri" and env.get(MLFLOW_ENV):
            sources[field] = f"${MLFLOW_ENV}"
        else:
            sources[field] = "default" if field == "home" else f"{sources['home']} (under home)"
    return StoragePaths.resolve(options, env=env, cwd=base), sources


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
