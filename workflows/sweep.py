"""The sweep driver: trains a sweep's cells on Ray Tune, analyses them on Ray tasks, and records
everything in the catalogue (the only process that writes it).

Launching and resuming are the same operation. A cell is done when its ``result.json`` marker
exists on the shared Tune storage; each launch runs a fresh Tune experiment over the cells that are
not done, whose trainables pick up their own checkpoints and MLflow runs. So a driver killed at any
point is recovered by launching the same sweep again (``sdn sweep resume NAME`` does exactly that
with the spec stored in the catalogue), and finished cells are never retrained.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from sdn import errors as sdn_errors
from sdn.errors import SDNError
from sdn.results import RunSummary
from storage.parquet_format import SPLITS
from workflows import layout
from workflows.console import make_console
from workflows.paths import StoragePaths
from workflows.spec import Cell, SweepSpec, sweep_from_dict
from workflows.version import code_version


class SweepError(SDNError):
    """A sweep cannot start or continue for a reason the user can fix."""


class ServiceUnreachable(SweepError, sdn_errors.ServiceUnreachable):
    """Ray or MLflow could not be reached (exit code 3)."""


@dataclass
class SweepOutcome:
    name: str
    total: int
    trained: list[str] = field(default_factory=list)
    analysed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped


# --- preflight: nothing is written before these pass ----------------------------------------------


def check_writable(paths: StoragePaths) -> None:
    """Fail early, naming the path, if a storage location cannot be created or written."""
    for label, path in (
        ("home", paths.home),
        ("tune", paths.tune),
        ("predictions", paths.predictions),
        ("catalogue", paths.catalogue.parent),
        ("reports", paths.reports),
    ):
        probe = Path(path)
        while not probe.exists():
            if probe.parent == probe:
                break
            probe = probe.parent
        if not probe.is_dir():
            raise SweepError(
                f"storage {label} path {path} is under {probe}, which is not a directory"
            )
        if not os.access(probe, os.W_OK | os.X_OK):
            raise SweepError(
                f"storage {label} path {path} is not writable (no write access to {probe})"
            )
    from storage.catalogue.db import check_sqlite_file

    check_sqlite_file(Path(paths.catalogue))  # a damaged catalogue stops the launch, untouched


def _check_tcp(address: str) -> None:
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise SweepError(
            f"Ray address {address!r} is not HOST:PORT (or 'auto', or ray://HOST:PORT)"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            pass
    except OSError as exc:
        raise ServiceUnreachable(
            f"cannot reach Ray at {address} ({exc.strerror or exc}); start it with `ray start --head` "
            "or leave out --address to run on a local Ray instance"
        ) from None


def check_mlflow_server(uri: str) -> None:
    """Fail fast, before Ray is joined or anything is written, when the tracking URI names an
    ``mlflow server`` that does not answer (exit 3, "service unreachable", not a usage error).

    A database URI is left to ``ensure_tracking_store``, which creates it after the preflight.
    """
    from storage.errors import StorageError
    from storage.mlflow_setup import ensure_tracking_store, is_server_uri

    if not is_server_uri(uri):
        return
    try:
        ensure_tracking_store(uri)
    except StorageError as exc:
        raise ServiceUnreachable(str(exc)) from None


#: Variables a trial must see as the driver does, on whichever node it runs: raylets start
#: workers with their own environment, not the driver's. ``SDN_TEST_SLOW_EPOCH_S`` and
#: ``SDN_TEST_PID_DIR`` are the trainable's test hooks (they widen fault-injection windows and
#: tell a test which process runs a trial and which epochs it ran).
# Test hooks, and OpenMP's wait policy (idle threads spinning starve trials on shared cores).
FORWARDED_ENV = ("SDN_TEST_SLOW_EPOCH_S", "SDN_TEST_PID_DIR", "OMP_WAIT_POLICY")


def forwarded_env() -> dict[str, str]:
    """The :data:`FORWARDED_ENV` variables set in this process, for the workers' runtime env."""
    return {key: os.environ[key] for key in FORWARDED_ENV if os.environ.get(key)}


#: A local Ray's own settings, applied before Ray is imported (see :func:`secure_local_ray`).
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
TOKEN_FILE = "ray/auth_token"  # under the sweep's home


def secure_local_ray(token_dir: Path | None) -> dict[str, str]:
    """Settings that keep a new local Ray instance off the network; returns what it set.

    * ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (read by Ray when it is imported) makes Ray take
      127.0.0.1 as the node's address, and with it every listener binds loopback: GCS, raylet,
      object manager, workers, dashboard agent, runtime-env agent and metrics (checked with
      ``ss -ltnp``; without it they bind the machine's addresses). Only for a cluster started by
      this process: nodes of a real cluster must reach each other.
    * Ray's token authentication stays on (``RAY_AUTH_MODE=token``), so other users of the same
      machine, who can reach loopback, cannot submit work either. The token is generated on first
      use, 256 random bits, in ``token_dir/auth_token`` with mode 0600, and handed to Ray with
      ``RAY_AUTH_TOKEN_PATH``.

    A setting the user made (any of these variables, or ``RAY_AUTH_TOKEN``) is left as it is;
    the test suite sets ``RAY_AUTH_MODE=disabled`` for its own clusters. The variables are set in
    this process's environment because Ray reads them there and its processes inherit them.
    """
    applied: dict[str, str] = {}
    for key, value in LOOPBACK_ENV.items():
        if key not in os.environ:
            os.environ[key] = applied[key] = value
    if "RAY_AUTH_MODE" in os.environ:
        return applied
    os.environ["RAY_AUTH_MODE"] = applied["RAY_AUTH_MODE"] = "token"
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return applied
    if token_dir is None:  # Ray generates ~/.ray/auth_token itself
        return applied
    path = ensure_token(Path(token_dir) / "auth_token")
    os.environ["RAY_AUTH_TOKEN_PATH"] = applied["RAY_AUTH_TOKEN_PATH"] = str(path)
    return applied


def ensure_token(path: Path) -> Path:
    """A token file readable by its owner only, created with 256 random bits if missing."""
    import secrets

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
        if not path.read_text(encoding="ascii", errors="replace").strip():
            raise SweepError(
                f"Ray token file {path} is empty; delete it to get a new one"
            ) from None
        return path
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secrets.token_hex(32))
    return path


def connect_ray(
    address: str | None, env_vars: dict[str, str], token_dir: Path | None = None
) -> None:
    """Join the given cluster (or RAY_ADDRESS, or start a local one), with workers' env set.

    A local instance is kept off the network (:func:`secure_local_ray`; its token goes under
    ``token_dir``), has no dashboard (no HTTP server at all), and with ``SDN_RAY_TEMP_DIR`` its own
    session folder, so its processes can be told from any other Ray on the machine.
    """
    if address and address != "auto":  # checked even when joined: never run on another cluster
        _check_tcp(address)
    local = not (address or os.environ.get("RAY_ADDRESS"))
    import sys

    if local and not ("ray" in sys.modules and sys.modules["ray"].is_initialized()):
        secure_local_ray(token_dir)
    import ray

    if ray.is_initialized():
        return
    runtime_env = {"env_vars": env_vars}
    extra = (
        {"_temp_dir": os.environ["SDN_RAY_TEMP_DIR"]}
        if local and os.environ.get("SDN_RAY_TEMP_DIR")
        else {}
    )
    try:
        ray.init(
            address=address,
            runtime_env=runtime_env,
            include_dashboard=False if local else None,
            log_to_driver=os.environ.get("SDN_RAY_LOG_TO_DRIVER", "0") == "1",
            logging_level="ERROR",
            **extra,
        )
    except (ConnectionError, TimeoutError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ServiceUnreachable(
            f"cannot connect to Ray at {address or 'a local instance'}: {first}"
        ) from None


# --- the driver ------------------------------------------------------------------------------------


class SweepDriver:
    """One launch (or resume) of one sweep."""

    def __init__(
        self, spec: SweepSpec, *, address: str | None = None, console: Console | None = None
    ):
        self.spec = spec
        self.address = address
        self.console = console or make_console()
        self.paths = spec.storage_paths()
        self.data_root = spec.data_root()
        self.cells: list[Cell] = spec.cells()
        self.code_version = code_version()
        self.catalogue = None
        self.mlflow_client = None
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None

    # -- setup
    def _prepare(self) -> None:
        from storage.catalogue import Catalogue
        from storage.mlflow_setup import bounded_http_env, ensure_tracking_store, make_client
        from workflows import tracking

        check_writable(self.paths)
        check_mlflow_server(self.paths.mlflow_tracking_uri)
        connect_ray(
            self.address,
            {
                "MLFLOW_TRACKING_URI": self.paths.mlflow_tracking_uri,
                "MLFLOW_DISABLE_TELEMETRY": "true",
                "PYTHONUNBUFFERED": "1",
                **bounded_http_env(),
                **forwarded_env(),
            },
            token_dir=Path(self.paths.home) / Path(TOKEN_FILE).parent,
        )
        for path in (self.paths.home, self.paths.tune, self.paths.predictions, self.paths.reports):
            Path(path).mkdir(parents=True, exist_ok=True)
        ensure_tracking_store(self.paths.mlflow_tracking_uri)
        self.catalogue = Catalogue(self.paths.catalogue)
        self.catalogue.upsert_sweep(
            self.spec.name, self.spec.to_dict(), code_version=self.code_version
        )
        self.mlflow_client = make_client(self.paths.mlflow_tracking_uri)
        self.experiment_id = tracking.ensure_experiment(
            self.mlflow_client, self.spec.name, self.paths.mlflow_artifacts
        )
        self.parent_run_id = tracking.ensure_sweep_run(
            self.mlflow_client,
            self.experiment_id,
            self.spec.name,
            {
                "spec_hash": self.spec.spec_hash(),
                "cells": len(self.cells),
                "code_version": self.code_version,
            },
        )
        # The catalogue is derived data: MLflow keeps what ``rebuild`` needs to restore it.
        self.mlflow_client.log_dict(self.parent_run_id, self.spec.to_dict(), tracking.SPEC_ARTIFACT)
        if self.spec.data.download:
            from sdn.data import load_dataset

            for dataset in self.spec.grid.datasets:
                load_dataset(dataset, root=self.data_root, download=True)

    def trial_config(self, cell: Cell) -> dict[str, Any]:
        return {
            **cell.to_dict(),
            "tune_root": str(self.paths.tune),
            "data_root": self.data_root,
            "checkpoint_every": self.spec.checkpoint.every_epochs,
            "code_version": self.code_version,
            "mlflow": {
                "tracking_uri": self.paths.mlflow_tracking_uri,
                "experiment_id": self.experiment_id,
                "parent_run_id": self.parent_run_id,
            },
        }

    def _record_pending(self) -> None:
        for cell in self.cells:
            existing = self._status(cell.run_id)
            if existing is None:
                self.catalogue.upsert_run(
                    _run_record(
                        cell,
                        status="pending",
                        width=cell.train.get("width"),
                        epochs=cell.train.get("epochs"),
                        code_version=self.code_version,
                        config=self.trial_config(cell),
                    )
                )

    def _status(self, run_id: str) -> str | None:
        df = self.catalogue.sql("SELECT status FROM runs WHERE run_id = ?", (run_id,))
        return None if df.empty else str(df.iloc[0]["status"])

    def set_status(self, run_id: str, status: str, extra: dict[str, Any]) -> None:
        kwargs: dict[str, Any] = {}
        if status == "running":
            kwargs["started_at"] = datetime.now(UTC)
        if "error" in extra:
            kwargs["error"] = extra["error"]
        self.catalogue.set_status(run_id, status, **kwargs)

    def _record_trained(self, cell: Cell, result: dict[str, Any]) -> None:
        cfg = result.get("config", {})
        self.catalogue.upsert_run(
            _run_record(
                cell,
                width=cfg.get("width"),
                epochs=result.get("epochs"),
                status="trained",
                ended_at=datetime.fromtimestamp(result.get("finished_at", time.time()), UTC),
                mlflow_run_id=result.get("mlflow_run_id"),
                model_name=result.get("model_name"),
                model_version=result.get("model_version"),
                code_version=self.code_version,
                config={**self.trial_config(cell), "resolved": cfg},
            )
        )

    # -- phases
    def run(self, progress: bool = True) -> SweepOutcome:
        started = time.time()
        self._prepare()
        self._record_pending()
        outcome = SweepOutcome(name=self.spec.name, total=len(self.cells))
        from workflows.progress import CellProgress, LiveBoard, SweepBoard

        board = SweepBoard(title=f"sweep {self.spec.name}")
        for cell in self.cells:
            board.cells[cell.run_id] = CellProgress(
                cell.run_id,
                cell.arch,
                cell.dataset,
                cell.mode,
                cell.seed,
                int(cell.train.get("epochs") or 0),
            )
        with LiveBoard(board, self.console if progress else Console(quiet=True)) as live:
            self._train(live, outcome)
            self._analyse(live, outcome)
        outcome.seconds = time.time() - started
        self._close_sweep_run(outcome)
        return outcome

    def _close_sweep_run(self, outcome: SweepOutcome) -> None:
        """Mark the sweep's MLflow run finished or failed.

        A tracking server that went away mid-sweep fails the trials that needed it (after bounded
        retries) and then this call: the launch ends with one line naming the server and how to
        continue (exit 3). The failed cells keep their checkpoints and MLflow runs, so a resume
        against the restarted server completes them without recording anything twice.
        """
        from storage.mlflow_setup import is_server_uri, server_reachable
        from workflows import tracking

        uri = self.paths.mlflow_tracking_uri
        try:
            tracking.finish_run(self.mlflow_client, self.parent_run_id, ok=outcome.ok)
        except _mlflow_errors():
            if not is_server_uri(uri) or server_reachable(uri):
                raise
            unfinished = len(set(outcome.failed) | set(outcome.skipped))
            raise ServiceUnreachable(
                f"MLflow tracking server {uri} became unreachable during sweep "
                f"{self.spec.name!r}; {unfinished} of {outcome.total} cells did not finish; "
                f"start it again on the same backend store and run "
                f"`sdn sweep resume {self.spec.name}`"
            ) from None

    def _train(self, live, outcome: SweepOutcome) -> None:
        done = {
            c.run_id for c in self.cells if layout.read_result(self.paths.tune, c.sweep, c.run_id)
        }
        todo = [c for c in self.cells if c.run_id not in done]
        for run_id in done:
            live.board.cells[run_id].status = "trained"
            live.board.cells[run_id].note = "earlier launch"
        if todo:
            self._run_tune(todo, done, live, outcome)
        for cell in self.cells:
            result = layout.read_result(self.paths.tune, cell.sweep, cell.run_id)
            if result is not None:
                live.board.cells[cell.run_id].status = "trained"
                live.board.cells[cell.run_id].epoch = int(result.get("epochs", 0))
                if self._status(cell.run_id) not in ("done",):
                    self._record_trained(cell, result)
                outcome.trained.append(cell.run_id)
            elif cell.run_id not in outcome.skipped:
                outcome.failed.setdefault(cell.run_id, "training did not finish")
                self.catalogue.set_status(cell.run_id, "failed", error=outcome.failed[cell.run_id])
        live.refresh()

    def _run_tune(self, todo: list[Cell], done: set[str], live, outcome: SweepOutcome) -> None:
        import ray
        from ray import tune

        from workflows.progress import ProgressCallback
        from workflows.scheduling import CellSearcher
        from workflows.trainable import train_cell

        gpus = self.spec.resources.gpus_for(float(ray.cluster_resources().get("GPU", 0)))
        trainable = tune.with_resources(
            train_cell, {"cpu": self.spec.resources.cpus_per_trial, "gpu": gpus}
        )
        searcher = CellSearcher([self.trial_config(c) for c in todo], already_done=done)
        launch = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        os.environ.setdefault(
            "RAY_AIR_NEW_OUTPUT", "0"
        )  # our own live table replaces Tune's output
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                num_samples=len(todo),
                max_concurrent_trials=self.spec.resources.max_concurrent_trials,
                # A trial in a fresh process pays its imports (torch, MLflow, scikit-learn) and data
                # loading again: 3.0 s of Tune overhead per trial instead of 1.1 on 2 CPU cores
                # (bench_orchestration). Every trial of a sweep asks for the same resources, so
                # Tune can hand a finished trial's worker to the next one.
                reuse_actors=True,
                trial_name_creator=_trial_name,
                trial_dirname_creator=_trial_name,
            ),
            run_config=tune.RunConfig(
                name=f"launch-{launch}",
                storage_path=str(layout.experiments_dir(self.paths.tune, self.spec.name)),
                failure_config=tune.FailureConfig(max_failures=self.spec.checkpoint.max_failures),
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=self.spec.checkpoint.num_to_keep
                ),
                callbacks=[ProgressCallback(live, self.set_status)],
                verbose=0,
            ),
        )
        results = tuner.fit()
        for result in results:
            if result.error is not None:
                run_id = (result.config or {}).get("run_id")
                if run_id:
                    outcome.failed[run_id] = _one_line(result.error)
        for run_id in searcher.skipped:
            outcome.skipped.append(run_id)
            live.board.cells[run_id].status = "skipped"
            live.board.cells[run_id].note = "its cnn failed"
            self.catalogue.set_status(run_id, "skipped", error="its cnn cell failed")

    def _needs_analysis(self, run_id: str) -> bool:
        from storage.predictions import PredictionStore

        if self._status(run_id) != "done":
            return True
        store = PredictionStore(self.paths.predictions)
        files = store.files_for_run(run_id)
        # Deleted or damaged files are written again, so the catalogue never points at them; a
        # poisoned run also needs its triggered splits.
        cell = next(c for c in self.cells if c.run_id == run_id)
        splits = ("val", "test") if cell.poison is None else SPLITS
        written = {p.name.rsplit(".", 2)[-2] for p in files}
        return not set(splits) <= written or not all(store.readable(f) for f in files)

    def _analyse(self, live, outcome: SweepOutcome) -> None:
        import ray

        from workflows import tracking
        from workflows.analysis import analyse_cell

        todo = [
            c for c in self.cells if c.run_id in outcome.trained and self._needs_analysis(c.run_id)
        ]
        outcome.analysed.extend(
            c.run_id for c in self.cells if c.run_id in outcome.trained and c not in todo
        )
        if not todo:
            return
        gpus = self.spec.analysis.gpus_for(float(ray.cluster_resources().get("GPU", 0)))
        options = {
            **self.spec.analysis.model_dump(mode="json"),
            "predictions_root": str(self.paths.predictions),
            "gpus": gpus,
            # A poisoned run's early exit on triggered inputs reads its own stored choice for the
            # target the end-of-sweep tables show (workflows.summary.summary_target).
            "backdoor_target": self.spec.analysis.headline_target().name,
        }
        remote = ray.remote(analyse_cell).options(num_cpus=1, num_gpus=gpus, max_retries=2)
        pending = {remote.remote(self.trial_config(c), options): c for c in todo}
        for cell in todo:
            live.board.cells[cell.run_id].status = "analysing"
        live.refresh()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(ready[0])
            try:
                answer = ray.get(ready[0])
            except Exception as exc:  # a task error is recorded against its cell, not fatal
                outcome.failed[cell.run_id] = f"analysis failed: {_one_line(exc)}"
                self.catalogue.set_status(cell.run_id, "failed", error=outcome.failed[cell.run_id])
                result = layout.read_result(self.paths.tune, cell.sweep, cell.run_id) or {}
                if result.get("mlflow_run_id"):
                    with contextlib.suppress(*_mlflow_errors()):  # best effort, as in trials
                        self.mlflow_client.set_tag(
                            result["mlflow_run_id"], tracking.ERROR_TAG, outcome.failed[cell.run_id]
                        )
                live.board.cells[cell.run_id].status = "failed"
                live.refresh(f"FAILED   analysis of {cell.run_id}")
                continue
            try:
                self._record_analysis(cell, answer)
            except _mlflow_errors() as exc:  # MLflow went away: resume analyses the cell again
                outcome.failed[cell.run_id] = f"analysis not recorded in MLflow: {_one_line(exc)}"
                self.catalogue.set_status(cell.run_id, "failed", error=outcome.failed[cell.run_id])
                live.board.cells[cell.run_id].status = "failed"
                live.refresh(f"FAILED   recording the analysis of {cell.run_id}")
                continue
            outcome.analysed.append(cell.run_id)
            live.board.cells[cell.run_id].status = "done"
            live.refresh(f"analysed {cell.run_id}")

    def _record_analysis(self, cell: Cell, answer: dict[str, Any]) -> None:
        from workflows import tracking

        summary = RunSummary.from_dict(answer["summary"])
        result = layout.read_result(self.paths.tune, cell.sweep, cell.run_id) or {}
        if result.get("mlflow_run_id"):
            self.mlflow_client.log_dict(
                result["mlflow_run_id"], answer["summary"], tracking.SUMMARY_ARTIFACT
            )
        self.catalogue.record_summary(cell.run_id, summary)
        parquet_dir = str(Path(next(iter(answer["files"].values()))).parent)
        self.catalogue.upsert_run(_run_record(cell, status="done", parquet_path=parquet_dir))


def _run_record(cell: Cell, **fields: Any):
    """A catalogue record for ``cell``: its identity plus the given fields (None keeps stored values)."""
    from storage.catalogue import RunRecord

    return RunRecord(
        run_id=cell.run_id,
        sweep=cell.sweep,
        arch=cell.arch,
        dataset=cell.dataset,
        mode=cell.mode,
        seed=cell.seed,
        poison=cell.poison_tag,
        **fields,
    )


def _trial_name(trial) -> str:
    return str(trial.config.get("run_id", trial.trial_id)).split(".", 1)[-1]


def _mlflow_errors() -> tuple[type[BaseException], ...]:
    """What a call to MLflow raises when its store fails or is out of reach (bounded retries
    exhausted): MLflow's own error, or the HTTP client's for an artifact transfer."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException

    return (MlflowException, RequestException)


def _one_line(error: object) -> str:
    text = str(error).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:1000]  # paths can be long


# --- entry points used by the CLI -----------------------------------------------------------------


def launch(
    spec: SweepSpec,
    *,
    address: str | None = None,
    console: Console | None = None,
    progress: bool = True,
) -> SweepOutcome:
    return SweepDriver(spec, address=address, console=console).run(progress=progress)


def stored_spec(catalogue_path: Path, name: str) -> SweepSpec:
    """The spec a sweep was launched with, from the catalogue (for ``sdn sweep resume``)."""
    from storage.catalogue import Catalogue

    if not Path(catalogue_path).exists():
        raise SweepError(
            f"no catalogue at {catalogue_path}: nothing has been launched there (set SDN_HOME?)"
        )
    with Catalogue(catalogue_path) as cat:
        df = cat.sql("SELECT name, spec FROM sweeps")
    if name not in set(df["name"]):
        known = ", ".join(sorted(df["name"])) or "none"
        raise SweepError(f"unknown sweep {name!r} in {catalogue_path}; known sweeps: {known}")
    import json

    raw = df.loc[df["name"] == name, "spec"].iloc[0]
    data = json.loads(raw) if isinstance(raw, str) else raw
    return sweep_from_dict(data, label=f"stored sweep {name!r}")


OnStatus = Callable[[str, str, dict[str, Any]], None]
