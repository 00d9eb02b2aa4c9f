"""What does Ray Tune cost per trial, and do concurrent trials pay off on 2 cores?

1. Fixed overhead per trial: a trivial trainable (it sleeps ``WORK_S`` and reports once) run as N
   trials one at a time, through the same pieces the sweep driver uses (``tune.with_resources``,
   the product's ``CellSearcher``, a ``RunConfig`` with storage). Overhead per trial = (Tuner wall
   time - the trainables' own time) / N; target <= 3 s. The ratio is wall time per trial over the
   trainable's own time.
2. Concurrency: 8 short trials (each trains a small SDN on ``digits`` for an epoch or few with the
   project's ``Trainer``, one thread) as Tune trials, 2 at a time with 1 CPU each, against the same
   8 trainings back to back in this process with 2 torch threads. Target: ratio (concurrent wall /
   back-to-back wall) < 1. ``ray.init`` is timed separately (a sweep pays it once).

Trials run with ``TuneConfig(reuse_actors=True)``, as the sweep driver runs them: a finished
trial's worker process (its imports and ``workflows.trainable``'s data cache) takes the next trial.
Diagnostic: the trivial trials again with ``reuse_actors=False`` (Ray 2.60's default), a fresh
process per trial.

Ray runs locally with ``num_cpus=2`` (the trials run on the CPU even where there is a GPU), with
``RAY_AUTH_MODE=disabled`` and ``RAY_USAGE_STATS_ENABLED=0``, and is shut down afterwards unless it
was already running when the benchmark started.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.common import REPO_ROOT, BenchReport, Figure, pick, run_main

NAME = "bench_orchestration"
OVERHEAD_TARGET_S = 3.0
CONCURRENCY_TARGET = 1.0
WORK_S = 0.5
_SPLITS: dict[tuple[Any, ...], Any] = {}  # per-process data cache, as workflows.trainable keeps


@dataclass
class Settings:
    trivial_trials: int
    short_trials: int
    concurrent: int
    arch: str
    width: float
    train_subset: int
    epochs: int
    work_s: float
    threads_in_process: int  # torch threads for the back-to-back baseline (2 cores: 2)


def settings(size: str) -> Settings:
    return pick(
        size,
        smoke=Settings(1, 2, 2, "vgg16", 0.125, 32, 1, 0.05, 1),
        quick=Settings(3, 8, 2, "resnet56", 0.5, 1024, 1, WORK_S, 2),
        full=Settings(8, 8, 2, "resnet56", 0.5, 512, 3, WORK_S, 2),
    )


# ------------------------------------------------------------------------------- the trainables
def trivial_trial(config: dict[str, Any]) -> None:
    """Sleep ``work_s`` and report once: all else in a trial's wall time is Ray/Tune's."""
    from ray import tune

    start = time.perf_counter()
    time.sleep(float(config["work_s"]))
    tune.report({"own_s": time.perf_counter() - start, "done": True})


def train_short(config: dict[str, Any], report: Callable[[dict[str, Any]], None]) -> float:
    """The work of one short trial; returns its own seconds (including loading digits once per
    process, as ``workflows.trainable`` does)."""
    import torch

    from sdn.data import load_dataset
    from sdn.training import TrainConfig, Trainer

    start = time.perf_counter()
    torch.set_num_threads(int(config["threads"]))
    key = ("digits", config["train_subset"])
    if key not in _SPLITS:
        _SPLITS[key] = load_dataset("digits", train_subset=int(config["train_subset"]))
    cfg = TrainConfig(
        arch=config["arch"],
        dataset="digits",
        mode="sdn",
        width=float(config["width"]),
        epochs=int(config["epochs"]),
        batch_size=64,
        seed=int(config["seed"]),
        device="cpu",
        channels_last=float(config["width"]) >= 0.5 or config["arch"] == "vgg16",
    )
    trainer = Trainer(cfg, _SPLITS[key])
    for metrics in trainer.run():
        report({"epoch": metrics["epoch"], "own_s": time.perf_counter() - start})
    return time.perf_counter() - start


def short_trial(config: dict[str, Any]) -> None:
    """``train_short`` as a Tune function trainable."""
    from ray import tune

    own = train_short(config, lambda m: tune.report({**m, "done": False}))
    tune.report({"own_s": own, "done": True})


# ------------------------------------------------------------------------------------------ Ray
def _ray_env() -> dict[str, str]:
    """Environment for Ray and its workers: no auth token, no usage stats, and ``bench`` importable
    (the project's editable install covers sdn, storage and workflows, not bench)."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": path}


def start_ray() -> tuple[bool, float]:
    """(whether this call started Ray, seconds it took)."""
    env = _ray_env()
    os.environ.update(env)
    import ray

    if ray.is_initialized():
        return False, 0.0
    start = time.perf_counter()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        runtime_env={"env_vars": env},
    )
    return True, time.perf_counter() - start


def tune_fit(
    trainable: Callable[[dict[str, Any]], None],
    configs: list[dict[str, Any]],
    concurrent: int,
    storage: str,
    name: str,
    reuse_actors: bool = True,
) -> tuple[float, list[dict[str, Any]]]:
    """Run ``configs`` as Tune trials the way the sweep driver does; (wall seconds, last results).

    ``reuse_actors=False`` (Ray's default) is the diagnostic: a fresh worker process per trial.
    """
    import ray
    from ray import tune

    from workflows.scheduling import CellSearcher

    # Ship this module's trainables by value, so that workers of a Ray session started elsewhere
    # (a test session, a cluster) need not be able to import ``bench``.
    module = sys.modules[trainable.__module__]
    if module.__name__ != "__main__":
        ray.cloudpickle.register_pickle_by_value(module)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        tune_config=tune.TuneConfig(
            search_alg=CellSearcher(configs),
            num_samples=len(configs),
            max_concurrent_trials=concurrent,
            reuse_actors=reuse_actors,
            trial_name_creator=lambda t: str(t.config.get("run_id", t.trial_id)),
            trial_dirname_creator=lambda t: str(t.config.get("run_id", t.trial_id)),
        ),
        run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0),
    )
    start = time.perf_counter()
    results = tuner.fit()
    wall = time.perf_counter() - start
    errors = [str(r.error) for r in results if r.error is not None]
    if errors:
        raise RuntimeError(f"{len(errors)} trial(s) failed: {errors[0][:500]}")
    return wall, [dict(r.metrics) for r in results]


# -------------------------------------------------------------------------------------- driver
def run(size: str, device: Any) -> BenchReport:
    import torch

    s = settings(size)
    report = BenchReport(NAME, size, "cpu (trials)")
    report.details["settings"] = s.__dict__
    short_configs = [
        {
            "run_id": f"short{i}",
            "arch": s.arch,
            "width": s.width,
            "train_subset": s.train_subset,
            "epochs": s.epochs,
            "seed": i,
            "threads": 1,
        }
        for i in range(s.short_trials)
    ]
    # Back to back in this process, with the two cores the concurrent trials get.
    threads = torch.get_num_threads()
    start = time.perf_counter()
    own_in_process = [
        train_short({**c, "threads": s.threads_in_process}, lambda m: None) for c in short_configs
    ]
    sequential_s = time.perf_counter() - start
    torch.set_num_threads(threads)

    started, init_s = start_ray()
    import ray

    try:
        with tempfile.TemporaryDirectory(prefix="sdn-bench-tune-") as storage:
            trivial = [
                {"run_id": f"trivial{i}", "work_s": s.work_s} for i in range(s.trivial_trials)
            ]
            trivial_wall, trivial_results = tune_fit(trivial_trial, trivial, 1, storage, "trivial")
            concurrent_wall, short_results = tune_fit(
                short_trial, short_configs, s.concurrent, storage, "short"
            )
            fresh_trivial_wall, fresh_trivial = tune_fit(
                trivial_trial, trivial, 1, storage, "trivial_fresh", reuse_actors=False
            )
    finally:
        if started:
            ray.shutdown()

    own = sum(float(r.get("own_s", 0.0)) for r in trivial_results)
    per_trial = trivial_wall / s.trivial_trials
    overhead = (trivial_wall - own) / s.trivial_trials
    own_short = [float(r.get("own_s", 0.0)) for r in short_results]
    fresh_own = sum(float(r.get("own_s", 0.0)) for r in fresh_trivial)
    fresh_overhead = (fresh_trivial_wall - fresh_own) / s.trivial_trials
    report.details.update(
        fresh_process_trivial_wall_s=fresh_trivial_wall,
        ray_init_s=init_s,
        ray_started_here=started,
        trivial_wall_s=trivial_wall,
        trivial_own_s=own,
        short_concurrent_wall_s=concurrent_wall,
        short_sequential_wall_s=sequential_s,
        short_own_s_in_tune=own_short,
        short_own_s_in_process=own_in_process,
    )
    check = size != "smoke"
    report.add(
        Figure(
            name=f"Tune fixed overhead per trial ({s.trivial_trials} trivial trials, one at a time)",
            value=overhead,
            unit="s",
            baseline=own / s.trivial_trials,
            baseline_label="trainable's own time per trial",
            ratio=per_trial / (own / s.trivial_trials),
            target_op="<=" if check else None,
            target=OVERHEAD_TARGET_S if check else None,
            target_on="value",
            note=f"ratio = wall per trial / own time; ray.init {init_s:.2f} s (once per sweep)",
        )
    )
    report.add(
        Figure(
            name=f"{s.short_trials} short trials, {s.concurrent} concurrent (Tune) vs back to back",
            value=concurrent_wall,
            unit="s",
            baseline=sequential_s,
            baseline_label="same trainings back to back in one process, 2 threads",
            ratio=concurrent_wall / sequential_s,
            target_op="<" if check else None,
            target=CONCURRENCY_TARGET if check else None,
            note=(
                f"own time per trial: {sum(own_short) / len(own_short):.2f} s in Tune (1 thread) vs "
                f"{sum(own_in_process) / len(own_in_process):.2f} s in process (2 threads)"
            ),
        )
    )
    report.add(
        Figure(
            name="same trivial trials, a fresh process each (reuse_actors=False)",
            value=fresh_overhead,
            unit="s",
            baseline=overhead,
            baseline_label="overhead per trial with reuse_actors=True (the sweep driver's)",
            ratio=fresh_overhead / overhead if overhead > 0 else None,
            note="diagnostic: what reusing worker processes saves",
        )
    )
    return report


def main(argv: Sequence[str] | None = None) -> BenchReport:
    return run_main(NAME, __doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    main()
