"""Opening an MLflow tracking store safely, always through an explicit URI.

Two failure modes motivate this module:

* Many processes opening a *fresh* SQLite file at once all run MLflow's schema migrations and
  fail. :func:`ensure_tracking_store` creates the schema once (call it in the driver before
  starting workers); afterwards concurrent writers only read the schema version.
* MLflow silently falls back to ``./mlflow.db`` when no URI is set, so a worker without the URI
  writes somewhere nobody looks. Everything here takes the URI explicitly and builds
  ``MlflowClient(tracking_uri=..., registry_uri=...)``; nothing touches MLflow's global URI.

A server URI (``http://``) is checked with a few quick ``/health`` probes instead: MLflow's own
HTTP client retries for minutes before reporting an unreachable server. Its retries are bounded
too (:data:`HTTP_RETRY_ENV`), so a server that dies mid-sweep fails a trial in seconds, cleanly,
instead of hanging every call for about four minutes.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from storage.errors import StorageError, StoreUnreachable, one_line

if TYPE_CHECKING:
    from mlflow import MlflowClient

_SQLITE_PREFIX = "sqlite:///"
_ready: set[str] = set()
_ready_lock = threading.Lock()

#: MLflow's HTTP client retries a failed request 7 times with exponential backoff (about four
#: minutes) and waits up to 120 s for each answer. With the server gone, every logging call of
#: every trial would hang that long before failing. These bounds (3 retries after 0, ~2 and ~4 s,
#: 60 s per answer: room for a model upload) apply wherever the user has not set the variable.
HTTP_RETRY_ENV: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}


def bounded_http_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The MLflow HTTP retry settings to hand to other processes (Ray workers): the user's own
    value for each variable where set, else :data:`HTTP_RETRY_ENV`'s."""
    environ = os.environ if environ is None else environ
    return {key: environ.get(key) or value for key, value in HTTP_RETRY_ENV.items()}


def bound_http_retries() -> None:
    """Apply :func:`bounded_http_env` to this process (MLflow reads the variables per request)."""
    for key, value in HTTP_RETRY_ENV.items():
        if not os.environ.get(key):
            os.environ[key] = value


def is_server_uri(uri: str) -> bool:
    """Whether ``uri`` names a tracking server (REST API) rather than a database."""
    return uri.startswith(("http://", "https://"))


def make_client(tracking_uri: str, registry_uri: str | None = None) -> MlflowClient:
    """An MlflowClient bound to explicit URIs (registry defaults to the tracking store), with
    bounded HTTP retries."""
    from mlflow import MlflowClient

    bound_http_retries()
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri or tracking_uri)


def ensure_tracking_store(uri: str, *, attempts: int = 3, timeout_s: float = 2.0) -> None:
    """Make ``uri`` usable before workers open it; raise StorageError naming it otherwise.

    * ``sqlite:///path``: creates the parent directory and MLflow's tracking and registry tables
      (one client call each), once per process. An out-of-date schema is reported with the
      ``mlflow db upgrade`` command that fixes it rather than upgraded behind the user's back.
    * ``http(s)://host:port``: probes ``/health`` up to ``attempts`` times (``timeout_s`` each,
      short backoff), so a wrong port fails in seconds.
    * other database URIs (``postgresql://``...): same as SQLite, without the directory.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise StorageError(f"MLflow tracking URI must be a non-empty string, got {uri!r}")
    with _ready_lock:
        if uri in _ready:
            return
        if is_server_uri(uri):
            _check_server(uri, attempts=attempts, timeout_s=timeout_s)
        elif uri.startswith("databricks"):
            pass  # remote service with its own auth; nothing to create or probe here
        else:
            _create_schema(uri)
        _ready.add(uri)


def server_reachable(uri: str, timeout_s: float = 2.0) -> bool:
    """Whether the ``mlflow server`` at ``uri`` answers ``/health`` now (one try, no cache).

    Tells a server that went away from any other MLflow error after a failed call.
    """
    try:
        _check_server(uri, attempts=1, timeout_s=timeout_s)
    except StoreUnreachable:
        return False
    return True


def _check_server(uri: str, *, attempts: int, timeout_s: float) -> None:
    """GET <uri>/health until it answers 200, with bounded retries."""
    url = uri.rstrip("/") + "/health"
    last = "no attempt made"
    for attempt in range(max(1, attempts)):
        if attempt:
            time.sleep(0.25 * 2**attempt)
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = one_line(getattr(exc, "reason", exc) or exc)
    raise StoreUnreachable(
        f"MLflow tracking server {uri} is unreachable after {max(1, attempts)} tries ({last}); "
        "start it or fix the URI"
    )


def _create_schema(uri: str) -> None:
    """Create (or verify) the tracking and registry tables with one cheap query each."""
    if uri.startswith(_SQLITE_PREFIX):
        path = Path(urllib.parse.unquote(uri[len(_SQLITE_PREFIX) :]))  # as SQLAlchemy reads it
        if path.is_dir():
            raise StorageError(f"MLflow database {uri} is a directory, not a SQLite file")
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        client = make_client(uri)
        client.search_experiments(max_results=1)
        client.search_registered_models(max_results=1)
    except Exception as exc:
        text = one_line(exc)
        if "out-of-date database schema" in text.lower() or "upgrade" in text.lower():
            raise StorageError(
                f"MLflow database {uri} has an out-of-date schema; upgrade it once with: "
                f"mlflow db upgrade {uri}"
            ) from exc
        raise StorageError(f"cannot open MLflow tracking store {uri}: {text}") from exc
