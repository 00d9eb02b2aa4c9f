"""The Ray Tune trainable: one cell of a sweep, trained epoch by epoch.

A plain function, as Tune's own examples write them. Its identity is the cell (``run_id``), not
Tune's trial id, so that whatever runs it again (a Tune retry after a worker died, or a later
``sdn sweep resume`` in a new Tune experiment) finds the same checkpoint directory and the same
MLflow run, and nothing is trained or recorded twice.

Checkpoints go to the cell's own directory on the shared Tune storage (see ``layout``) every
``checkpoint_every`` epochs, atomically; Tune's checkpoint copying is not used, so one copy serves
both Tune's retries and cross-launch resumes. A finished cell writes its final model and a
``result.json`` marker last: the marker's presence is what "done" means. An epoch's metrics reach
MLflow once that epoch is checkpointed, so a trial killed at any point leaves MLflow with exactly
the epochs its checkpoint holds; the retry logs the rest, each epoch once. A checkpoint that cannot
be read fails the cell with its path and the fix, rather than silently training from scratch.

Test hooks (environment, read on the worker): ``SDN_TEST_SLOW_EPOCH_S`` sleeps after each epoch;
``SDN_TEST_PID_DIR`` makes each attempt append its pid, start epoch and checkpointed epochs to
``<dir>/<run_id>.log``.

A poisoned cell (``config["poison"]``, a ``PoisonConfig`` dict) trains its ``cnn`` or ``sdn`` on
the poisoned training split, and its ``ic_only`` on the CLEAN splits from the poisoned cnn's
weights (the paper's setup); its MLflow run and registered model carry the poisoning's tags.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from ray import tune

from sdn.backdoor import BackdoorSplits, PoisonConfig, make_backdoor_splits
from sdn.data import DataSplits, load_dataset
from sdn.errors import CheckpointError
from sdn.training import TrainConfig, Trainer, recover_checkpoint
from workflows import layout, tracking

# Per-process caches: a Tune worker process that runs several cells reuses decoded data (and the
# poisoned copy of it: a clean and a poisoned cell of one data set share the clean splits).
_DATA_CACHE: dict[tuple, Any] = {}
_BACKDOOR_CACHE: dict[tuple, BackdoorSplits] = {}


def _clean_splits(config: dict[str, Any], train: dict[str, Any]) -> DataSplits:
    key = (
        config["dataset"],
        config.get("data_root"),
        train.get("val_size"),
        train.get("train_subset"),
    )
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _BACKDOOR_CACHE.clear()
        _DATA_CACHE[key] = load_dataset(
            config["dataset"],
            root=config.get("data_root"),
            download=False,
            val_size=train.get("val_size"),
            train_subset=train.get("train_subset"),
        )
    return _DATA_CACHE[key]


def poison_of(config: dict[str, Any]) -> PoisonConfig | None:
    """The cell's poisoning, None for a clean cell."""
    raw = config.get("poison")
    return PoisonConfig.from_dict(raw) if raw else None


def _backdoor_for(config: dict[str, Any], train: dict[str, Any]) -> BackdoorSplits | None:
    """The poisoned and triggered splits of a poisoned cell (None for a clean one)."""
    poison = poison_of(config)
    if poison is None:
        return None
    splits = _clean_splits(config, train)
    key = (id(splits), poison.tag)
    if key not in _BACKDOOR_CACHE:
        _BACKDOOR_CACHE[key] = make_backdoor_splits(splits, poison)
    return _BACKDOOR_CACHE[key]


def _splits_for(config: dict[str, Any], train: dict[str, Any]) -> DataSplits:
    """The splits a cell trains on: a poisoned ``cnn`` / ``sdn`` the poisoned ones (train
    poisoned, val and test clean); every other cell, a poisoned ``ic_only`` included, the clean
    ones."""
    bd = _backdoor_for(config, train)
    if bd is not None and config["mode"] != "ic_only":
        return bd.poisoned
    return _clean_splits(config, train)


def _identity_tags(config: dict[str, Any]) -> dict[str, str]:
    """The cell's grid tags, and for a poisoned cell its poisoning (``PoisonConfig.identity``)."""
    tags = {
        "architecture": config["arch"],
        "dataset": config["dataset"],
        "mode": config["mode"],
        "seed": str(config["seed"]),
    }
    poison = poison_of(config)
    if poison is not None:
        tags.update(poison.identity())
    return tags


def _train_config(config: dict[str, Any]) -> TrainConfig:
    fields = dict(config["train"])
    fields.update(
        arch=config["arch"],
        dataset=config["dataset"],
        mode=config["mode"],
        seed=config["seed"],
        data_root=config.get("data_root"),
    )
    return TrainConfig(**fields)


def _client(config: dict[str, Any]):
    from mlflow import MlflowClient

    uri = config["mlflow"]["tracking_uri"]
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def train_cell(config: dict[str, Any]) -> None:
    """Train one cell to completion, reporting every epoch to Tune and MLflow."""
    tune_root, sweep, run_id = config["tune_root"], config["sweep"], config["run_id"]
    final = layout.final_dir(tune_root, sweep, run_id)
    done = layout.read_result(tune_root, sweep, run_id)
    if done is not None:  # finished in an earlier launch: report it and stop
        tune.report({**done["final_metrics"], "epoch": done["epochs"], "from_earlier_launch": True})
        return

    client = _client(config)
    mlflow_run_id, created = tracking.ensure_cell_run(
        client,
        config["mlflow"]["experiment_id"],
        config["mlflow"].get("parent_run_id"),
        run_id,
        tags={
            **_identity_tags(config),
            tracking.SWEEP_TAG: sweep,
            "code_version": config.get("code_version", "unknown"),
        },
    )
    if created:
        client.log_dict(mlflow_run_id, config, tracking.CONFIG_ARTIFACT)
    try:
        _train(config, client, mlflow_run_id, final)
    except BaseException as exc:
        # Best effort: when the tracking server is what failed, tagging the run fails too (after
        # its bounded retries), and the trial must report its own error, not that one.
        with contextlib.suppress(Exception):
            tracking.record_failure(client, mlflow_run_id, f"training: {type(exc).__name__}: {exc}")
        raise


def _train(config: dict[str, Any], client, mlflow_run_id: str, final: Path) -> None:
    tune_root, sweep, run_id = config["tune_root"], config["sweep"], config["run_id"]
    train_cfg = _train_config(config)
    splits = _splits_for(config, config["train"])
    ckpt = layout.checkpoint_dir(tune_root, sweep, run_id)
    recover_checkpoint(ckpt)
    if (ckpt / "meta.json").exists():
        try:
            trainer = Trainer.restore(ckpt, splits)
        except CheckpointError as exc:
            # Refuse rather than silently retrain: a damaged checkpoint means damaged storage,
            # which the user should see; deleting the folder is their explicit choice to restart.
            raise CheckpointError(
                f"cell {run_id} cannot resume (delete {ckpt} to train it again from scratch): {exc}"
            ) from None
    else:
        init = None
        if config["mode"] == "ic_only":
            init = layout.final_dir(tune_root, sweep, config["cnn_parent"])
        trainer = Trainer(train_cfg, splits, init_checkpoint=init)
    resolved = trainer.config.to_dict()
    tracking.log_params(
        client,
        mlflow_run_id,
        {
            **{f"train.{k}": v for k, v in resolved.items()},
            "run_id": run_id,
            "cnn_parent": config.get("cnn_parent"),
            "code_version": config.get("code_version"),
            "host": socket.gethostname(),
        },
    )
    # MLflow gets an epoch's metrics only once that epoch is checkpointed, and a restarted trial
    # first logs what its checkpoint holds but MLflow lacks (killed between save and log). So
    # after any kill MLflow holds each epoch once, with the values of the epoch that was kept.
    logged_up_to = tracking.last_logged_step(client, mlflow_run_id)
    logged_up_to = _log_checkpointed(client, mlflow_run_id, trainer.history, logged_up_to)
    _test_event(run_id, f"start epoch={trainer.epoch}")
    every = max(1, int(config.get("checkpoint_every", 1)))
    slow = float(os.environ.get("SDN_TEST_SLOW_EPOCH_S", "0"))  # test hook: widen kill windows
    metrics: dict[str, Any] = trainer.history[-1] if trainer.history else {}
    while not trainer.done:
        metrics = trainer.train_epoch()
        if slow:
            time.sleep(slow)
        epoch = metrics["epoch"]
        if epoch % every == 0 or trainer.done:
            trainer.save(ckpt)
            logged_up_to = _log_checkpointed(client, mlflow_run_id, trainer.history, logged_up_to)
            _test_event(run_id, f"checkpointed epoch={epoch}")
        if not trainer.done:
            tune.report(_tune_metrics(metrics, done=False))

    result = _finish(config, client, mlflow_run_id, trainer, final, metrics)
    tune.report(
        {**_tune_metrics(metrics, done=True), "model_version": result.get("model_version") or 0}
    )


def _log_checkpointed(
    client, mlflow_run_id: str, history: list[dict[str, Any]], logged_up_to: int
) -> int:
    """Log the checkpointed epochs (``history``) that MLflow lacks; return the last one it has."""
    for metrics in history:
        if metrics["epoch"] > logged_up_to:
            tracking.log_epoch_metrics(client, mlflow_run_id, metrics, step=metrics["epoch"])
    return max([logged_up_to, *(m["epoch"] for m in history)])


def _test_event(run_id: str, what: str) -> None:
    """Test hook: with ``SDN_TEST_PID_DIR`` set, append ``<pid> <what>`` to ``<run_id>.log``
    there, so fault-injection tests find the trial's process and count the epochs it ran."""
    directory = os.environ.get("SDN_TEST_PID_DIR")
    if directory:
        with open(Path(directory) / f"{run_id}.log", "a", encoding="utf-8") as fh:
            fh.write(f"{os.getpid()} {what}\n")


def _tune_metrics(metrics: dict[str, Any], done: bool) -> dict[str, Any]:
    # Not "done": that key is Tune's own stop signal, and would end the trial before its
    # final model is exported and registered.
    out: dict[str, Any] = {"trained": done}
    for key, value in metrics.items():
        if isinstance(value, list | tuple):
            if value:
                out[f"{key}_final"] = float(value[-1])
                out[f"{key}_first"] = float(value[0])
        else:
            out[key] = value
    return out


def _finish(config, client, mlflow_run_id, trainer, final: Path, metrics) -> dict[str, Any]:
    """Export the final model, register it, then write the done marker (last, atomically)."""
    from storage.registry import Registry

    tmp_final = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp_final, ignore_errors=True)
    if final.exists():
        shutil.rmtree(final)
    trainer.save(final)

    registry = Registry(config["mlflow"]["tracking_uri"])
    ref = registry.log_model(  # a poisoned cell's name ends with its tag (the "backdoor" tag)
        trainer.model,
        run_id=mlflow_run_id,
        tags={**_identity_tags(config), "sweep": config["sweep"]},
    )
    tracking.finish_run(client, mlflow_run_id, ok=True)
    result = {
        "run_id": config["run_id"],
        "epochs": trainer.epoch,
        "mlflow_run_id": mlflow_run_id,
        "model_name": ref.name,
        "model_version": int(ref.version),
        "final_metrics": _tune_metrics(metrics, done=True),
        "history": trainer.history,
        "config": trainer.config.to_dict(),
        "finished_at": time.time(),
    }
    layout.write_json_atomic(final / layout.RESULT_FILE, result)
    return result
