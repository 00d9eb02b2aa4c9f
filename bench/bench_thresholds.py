"""How fast is a threshold sweep over collected outputs (``sdn.early_exit.early_exit_curve``)?

Target: 1,000 thresholds over 10,000 samples x 7 exits in <= 0.1 s. Two baselines, both measured in
the same run:

* per-threshold offline replay: ``offline_early_exit`` once per threshold, then accuracy and average
  cost from its answers (what a straightforward loop over thresholds does). Timed over every
  threshold (all 1,000, except at --smoke, where a subset is timed and scaled);
* re-running inference per threshold: one full SDN forward pass (ResNet-56, width 1 except at
  --smoke) is timed on a subset of images, scaled to 10,000 images, then multiplied by 1,000. That
  is an upper bound for a runtime early-exit pass, so a FLOP-scaled estimate (each threshold's pass
  costing its average relative cost from the curve) is reported beside it.

The outputs are synthetic but shaped like a trained SDN's: confidences and accuracy rise with depth
and fall with a per-sample difficulty. The curve's accuracies are checked against the replay.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bench.common import BenchReport, Figure, pick, run_main, time_call, time_once

NAME = "bench_thresholds"
TARGET_S = 0.1


@dataclass
class Settings:
    samples: int
    exits: int
    thresholds: int
    replay_thresholds: int  # thresholds actually replayed one by one (scaled to all)
    inference_images: int  # images actually run through the network (scaled to all)
    width: float
    repeats: int


def settings(size: str, device: torch.device) -> Settings:
    gpu = device.type == "cuda"
    return pick(
        size,
        smoke=Settings(2_000, 7, 200, 20, 16, 0.125, 2),
        quick=Settings(10_000, 7, 1_000, 1_000, 2_560 if gpu else 256, 1.0, 7),
        full=Settings(10_000, 7, 1_000, 1_000, 10_000 if gpu else 1_024, 1.0, 15),
    )


def synthetic_outputs(n: int, e: int, num_classes: int = 10, seed: int = 0):
    """Outputs shaped like a trained SDN's (see the module docstring)."""
    from sdn.results import Outputs

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    difficulty = rng.random(n)
    depth = np.linspace(0.0, 1.0, e)
    logit = 3.0 * depth[None, :] - 4.0 * difficulty[:, None] + 1.0 + rng.normal(0, 0.7, (n, e))
    confidences = (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    correct = rng.random((n, e)) < 0.3 + 0.65 * confidences
    wrong = (labels[:, None] + rng.integers(1, num_classes, (n, e))) % num_classes
    preds = np.where(correct, labels[:, None], wrong).astype(np.int64)
    return Outputs(
        labels=labels.astype(np.int64),
        preds=preds,
        confidences=confidences,
        confusion=rng.random(n).astype(np.float32),
    )


def replay(outputs, costs: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The per-threshold baseline: one ``offline_early_exit`` per threshold."""
    from sdn.early_exit import offline_early_exit

    acc = np.empty(thresholds.size)
    cost = np.empty(thresholds.size)
    for i, q in enumerate(thresholds):
        preds, exit_idx = offline_early_exit(outputs, float(q))
        acc[i] = (preds == outputs.labels).mean()
        cost[i] = costs[exit_idx].mean()
    return acc, cost


def inference_seconds_per_image(s: Settings, device: torch.device) -> tuple[float, list[float]]:
    """Seconds per image of one full SDN forward (ResNet-56), and the model's relative costs."""
    from sdn.models import build_sdn

    torch.manual_seed(0)
    model = build_sdn("resnet56", 10, 32, width=s.width).to(device).eval()
    batch = min(256, s.inference_images)
    x = torch.randn(batch, 3, 32, 32, device=device)
    rounds = max(1, s.inference_images // batch)

    @torch.inference_mode()
    def one_pass() -> None:
        for _ in range(rounds):
            model(x)

    timing = time_call(one_pass, warmup=1, repeats=3 if s.repeats > 2 else 1, device=device)
    return timing.median / (rounds * batch), model.relative_exit_costs()


def run(size: str, device: torch.device) -> BenchReport:
    from sdn.early_exit import early_exit_curve

    s = settings(size, device)
    report = BenchReport(NAME, size, str(device))
    report.details["settings"] = s.__dict__
    per_image_s, rel_costs = inference_seconds_per_image(s, device)
    costs = np.asarray(rel_costs)
    outputs = synthetic_outputs(s.samples, s.exits)
    thresholds = np.linspace(0.0, 1.0, s.thresholds)

    curve_timing = time_call(
        lambda: early_exit_curve(outputs, costs, thresholds), warmup=1, repeats=s.repeats
    )
    curve = early_exit_curve(outputs, costs, thresholds)

    picked = np.linspace(0, s.thresholds - 1, s.replay_thresholds).round().astype(int)
    replay_s = time_once(lambda: replay(outputs, costs, thresholds[picked]))
    replay_all_s = replay_s * s.thresholds / s.replay_thresholds
    acc, cost = replay(outputs, costs, thresholds[picked])
    agree = bool(
        np.allclose(acc, curve.accuracy[picked], atol=1e-12)
        and np.allclose(cost, curve.relative_cost[picked], atol=1e-9)
    )

    inference_all_s = per_image_s * s.samples * s.thresholds
    flop_scaled_s = per_image_s * s.samples * float(np.sum(curve.relative_cost / costs[-1]))
    t = curve_timing.median
    report.details.update(
        curve_s=curve_timing.to_dict(),
        replay_timed_thresholds=int(s.replay_thresholds),
        replay_timed_s=replay_s,
        replay_all_s=replay_all_s,
        inference_s_per_image=per_image_s,
        inference_per_threshold_s=inference_all_s,
        inference_per_threshold_flop_scaled_s=flop_scaled_s,
        curve_matches_replay=agree,
    )
    target = TARGET_S if size != "smoke" else None
    report.add(
        Figure(
            name=f"early_exit_curve: {s.thresholds} thresholds x {s.samples} samples x {s.exits} exits",
            value=t,
            unit="s",
            baseline=replay_all_s,
            baseline_label=f"offline_early_exit per threshold ({s.replay_thresholds} timed)",
            ratio=replay_all_s / t,
            target_op="<=" if target else None,
            target=target,
            target_on="value",
            note=f"ratio = baseline / curve (x faster); matches replay: {agree}",
        )
    )
    report.add(
        Figure(
            name="early_exit_curve vs re-running inference per threshold (estimate)",
            value=t,
            unit="s",
            baseline=inference_all_s,
            baseline_label=(
                f"ResNet-56 w{s.width:g} forward, {s.inference_images} images timed, "
                f"x{s.samples} images x{s.thresholds} thresholds"
            ),
            ratio=inference_all_s / t,
            note=f"FLOP-scaled early-exit estimate {flop_scaled_s:.3g} s (ratio {flop_scaled_s / t:.3g})",
        )
    )
    if not agree:
        report.notes.append("early_exit_curve disagrees with the per-threshold replay!")
    return report


def main(argv: Sequence[str] | None = None) -> BenchReport:
    return run_main(NAME, __doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    main()
