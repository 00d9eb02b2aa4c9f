"""``python -m sdn``: train one SDN end to end on the CPU and show what the paper is about.

Trains an ``sdn``-mode ResNet-56 at width 0.5 on the offline ``digits`` data (no download, a few
minutes on 2 cores), prints every epoch, then every exit's test accuracy and an early-exit table:
thresholds chosen on the validation split, their accuracy and cost measured on the test split.
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. On 2 shared cores the
# spinning made a 2-thread epoch burn 9x the CPU of a 1-thread one and run 6x slower (measured);
# a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from sdn.data import load_dataset
from sdn.errors import SDNError
from sdn.results import RunSummary
from sdn.training import TrainConfig, Trainer

# Tuned on digits: ResNet-56 at width 0.5 reaches >= 90 % at the final head in this budget.
DEMO_EPOCHS = 15
DEMO_BATCH = 64
DEMO_LR = 0.05
TABLE_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sdn", description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet56", help="vgg16, resnet56, wrn32_4 or mobilenet")
    p.add_argument("--dataset", default="digits", help="digits, cifar10, ..., folder:<path>")
    p.add_argument("--width", type=float, default=0.5, help="channel width multiplier")
    p.add_argument("--epochs", type=int, default=DEMO_EPOCHS)
    p.add_argument("--batch-size", type=int, default=DEMO_BATCH)
    p.add_argument("--lr", type=float, default=DEMO_LR)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:<n>")
    p.add_argument("--data-root", default=None, help="where CIFAR / Tiny ImageNet live")
    p.add_argument("--download", action="store_true", help="fetch CIFAR / Tiny ImageNet")
    p.add_argument("--save", type=Path, default=None, help="write the final checkpoint here")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice); 1 is faster on a busy shared machine",
    )
    return p.parse_args(argv)


def _acc(values: Sequence[float]) -> str:
    return " ".join(f"{100 * v:5.1f}" for v in values)


def print_exit_table(summary: RunSummary) -> None:
    names = [f"IC{k + 1}" for k in range(summary.num_exits - 1)] + ["final"]
    print("\nexit    rel. cost  val acc  test acc")
    val, test = summary.per_exit_accuracy["val"], summary.per_exit_accuracy["test"]
    for name, cost, v, t in zip(names, summary.relative_costs, val, test, strict=True):
        print(f"{name:<6} {cost:10.3f}  {100 * v:6.1f}%  {100 * t:7.1f}%")


def print_early_exit_table(summary: RunSummary) -> None:
    """Fixed thresholds on test, then the thresholds chosen on validation for each target."""
    test_points = {
        round(p.threshold, 6): p
        for p in summary.operating_points
        if p.split == "test" and p.policy == "confidence" and p.threshold is not None
    }
    print("\nearly exit on test (exit at the first IC with max softmax >= q)")
    print("q        test acc  rel. cost  exits per output")
    for q in TABLE_THRESHOLDS:
        p = test_points.get(round(q, 6))
        if p is not None:
            counts = " ".join(f"{c:4d}" for c in p.exit_counts)
            print(f"{q:<7}  {100 * p.accuracy:7.1f}%  {p.relative_cost:9.3f}  {counts}")
    chosen = [c for c in summary.choices if c.policy == "confidence" and c.test is not None]
    if chosen:
        print("\nthreshold chosen on val for a target (empirical, or certified at delta), on test")
        print("target          method         q        test acc  rel. cost  status")
        for c in chosen:
            assert c.test is not None
            q = "off" if c.val.threshold is None else f"{c.val.threshold:.4g}"
            method = c.method if c.delta is None else f"{c.method} {c.delta:g}"
            print(
                f"{c.target:<14}  {method:<13}  {q:<7}  {100 * c.test.accuracy:7.1f}%  "
                f"{c.test.relative_cost:9.3f}  {c.status}"
            )
    ot = summary.overthinking
    if ot is not None:
        print(
            f"\noverthinking: oracle cost {ot.oracle_relative_cost:.3f}, "
            f"{100 * ot.destructive_fraction:.0f}% of final-head errors were right at some IC"
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except SDNError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from sdn.analysis import summarise

    if args.threads is not None:
        if args.threads < 1:
            raise SDNError(f"--threads {args.threads} must be >= 1")
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    splits = load_dataset(args.dataset, args.data_root, download=args.download)
    config = TrainConfig(
        arch=args.arch,
        dataset=args.dataset,
        mode="sdn",
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        width=args.width,
        seed=args.seed,
        device=args.device,
        data_root=args.data_root,
    )
    trainer = Trainer(config, splits)
    cfg = trainer.config
    print(
        f"sdn-mode {cfg.arch} (width {cfg.width:g}) on {cfg.dataset}: {len(splits.train)} train, "
        f"{len(splits.val)} val, {len(splits.test)} test images; {cfg.epochs} epochs, batch "
        f"{cfg.batch_size}, SGD lr {cfg.lr:g} (x{cfg.gamma:g} at {cfg.milestones}), "
        f"device {trainer.device}"
    )
    print("epoch  loss    lr      train acc (final)  val acc per exit (ICs..., final)   time")
    for m in trainer.run():
        print(
            f"{m['epoch']:>3}/{cfg.epochs:<3} {m['loss']:6.3f}  {m['lr']:<7.4g} "
            f"{100 * m['train_acc'][-1]:6.1f}%            {_acc(m['val_acc'])}  "
            f"{m['seconds']:5.1f}s",
            flush=True,
        )
    train_time = time.perf_counter() - start
    if args.save is not None:
        print(f"checkpoint: {trainer.save(args.save)}")

    summary = summarise(
        trainer.model,
        splits,
        splits.info,
        max_accuracy_drops=(0.0, 0.01, 0.02),
        cost_budgets=(0.5, 0.75),
        device=trainer.device,
    )
    print_exit_table(summary)
    print_early_exit_table(summary)
    final = summary.per_exit_accuracy["test"][-1]
    print(
        f"\nfinal-head test accuracy {100 * final:.1f}%; trained in {train_time:.0f} s, "
        f"total {time.perf_counter() - start:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
