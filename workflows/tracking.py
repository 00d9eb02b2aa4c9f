"""MLflow runs for sweeps and their cells, found by identity rather than created blindly.

A sweep is one MLflow experiment (``sweep-<name>``) with one parent run; each cell is a run nested
under it and tagged with the cell's ``run_id``. Looking runs up by that tag is what makes a retried
or resumed trial continue its own run instead of opening a duplicate. Every call goes through an
``MlflowClient`` bound to an explicit URI: a worker never falls back to a local ``mlflow.db``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from storage.mlflow_layout import (  # noqa: F401  (re-exported for workflows)
    CODE_VERSION_TAG,
    CONFIG_ARTIFACT,
    ERROR_TAG,
    KIND_TAG,
    RUN_ID_TAG,
    SPEC_ARTIFACT,
    SUMMARY_ARTIFACT,
    SWEEP_TAG,
    experiment_name,
)


def _find_run(
    client: MlflowClient, experiment_id: str, tag: str, value: str, kind: str
) -> str | None:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{tag}` = '{value}' and tags.`{KIND_TAG}` = '{kind}'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def ensure_experiment(client: MlflowClient, sweep: str, artifact_location: str | None) -> str:
    """Experiment id of the sweep's experiment, created on first use."""
    name = experiment_name(sweep)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(
        name, artifact_location=artifact_location, tags={SWEEP_TAG: sweep}
    )


def ensure_sweep_run(
    client: MlflowClient, experiment_id: str, sweep: str, params: Mapping[str, Any]
) -> str:
    """The sweep's parent run: the existing one when the sweep is resumed."""
    found = _find_run(client, experiment_id, SWEEP_TAG, sweep, "sweep")
    if found:
        client.update_run(found, status="RUNNING")
        if params.get("code_version"):  # a resume may run newer code: the tag says which
            client.set_tag(found, CODE_VERSION_TAG, str(params["code_version"]))
        return found
    tags = {SWEEP_TAG: sweep, KIND_TAG: "sweep", MLFLOW_RUN_NAME: sweep}
    if params.get("code_version"):
        tags[CODE_VERSION_TAG] = str(params["code_version"])
    run = client.create_run(experiment_id, tags=tags)
    log_params(client, run.info.run_id, params)
    return run.info.run_id


def ensure_cell_run(
    client: MlflowClient,
    experiment_id: str,
    parent_run_id: str | None,
    run_id: str,
    tags: Mapping[str, str],
) -> tuple[str, bool]:
    """(MLflow run id, created) for one cell, reusing the cell's run if it exists."""
    found = _find_run(client, experiment_id, RUN_ID_TAG, run_id, "cell")
    if found:
        client.update_run(found, status="RUNNING")
        return found, False
    all_tags = {RUN_ID_TAG: run_id, KIND_TAG: "cell", MLFLOW_RUN_NAME: run_id, **tags}
    if parent_run_id:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    run = client.create_run(experiment_id, tags=all_tags)
    return run.info.run_id, True


def log_params(client: MlflowClient, mlflow_run_id: str, params: Mapping[str, Any]) -> None:
    """Log params once; MLflow refuses to change a param, so existing keys are skipped."""
    existing = client.get_run(mlflow_run_id).data.params
    items = [
        Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing and v is not None
    ]
    for start in range(0, len(items), 100):
        client.log_batch(mlflow_run_id, params=items[start : start + 100])


def log_epoch_metrics(
    client: MlflowClient, mlflow_run_id: str, metrics: Mapping[str, Any], step: int
) -> None:
    """Flatten per-exit lists (``val_acc`` -> ``val_acc_exit0`` ...) and log them at ``step``."""
    now = int(time.time() * 1000)
    flat: list[Metric] = []
    for key, value in metrics.items():
        if isinstance(value, list | tuple):
            flat.extend(Metric(f"{key}_exit{i}", float(v), now, step) for i, v in enumerate(value))
        elif isinstance(value, int | float) and key != "epoch":
            flat.append(Metric(key, float(value), now, step))
    client.log_batch(mlflow_run_id, metrics=flat)


def last_logged_step(client: MlflowClient, mlflow_run_id: str, key: str = "loss") -> int:
    """The last epoch whose metrics reached MLflow (0 if none), so a resumed trial skips re-logging."""
    history = client.get_metric_history(mlflow_run_id, key)
    return max((m.step for m in history), default=0)


def record_failure(client: MlflowClient, mlflow_run_id: str, message: str) -> None:
    """Tag a cell's run with why it failed (rebuild reads it back) and mark it FAILED."""
    client.set_tag(mlflow_run_id, ERROR_TAG, message[:4000])
    finish_run(client, mlflow_run_id, ok=False)


def finish_run(client: MlflowClient, mlflow_run_id: str, ok: bool = True) -> None:
    status = RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED)
    client.set_terminated(mlflow_run_id, status=status)
