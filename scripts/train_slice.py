"""Train one model with ``sdn.training.Trainer`` (no Ray) and print a JSON line of what it gave.

A measuring tool for CPU-sized slices of a study: the init comparison and the preset check in
docs/architecture.md ("Initialisation") were made with it. Every setting is on the command line and
echoed in the output, with the wall time of training and the test accuracy of every exit.

    OMP_NUM_THREADS=2 PYTHONPATH=. python scripts/train_slice.py \\
        --dataset folder:/tmp/cifar10 --arch vgg16 --mode cnn --width 0.25 --epochs 15 \\
        --lr 0.1 --train-subset 10000 --val-size 2000 --init reference
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import sys
import time

import torch

from sdn.data import load_dataset, stratified_pick
from sdn.errors import SDNError
from sdn.training import TrainConfig, Trainer


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--arch", required=True)
    p.add_argument("--mode", default="cnn", choices=["cnn", "sdn"])
    p.add_argument("--init", default="reference")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--milestones", type=int, nargs="*", default=None)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--train-subset", type=int, default=10000)
    p.add_argument("--val-size", type=int, default=2000)
    p.add_argument(
        "--test-size",
        type=int,
        default=None,
        help="a stratified N of the test images (default all)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines on stderr")
    args = p.parse_args()
    try:
        splits = load_dataset(args.dataset, val_size=args.val_size, train_subset=args.train_subset)
        cfg = TrainConfig(
            arch=args.arch,
            dataset=args.dataset,
            mode=args.mode,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            milestones=args.milestones,
            width=args.width,
            train_subset=args.train_subset,
            val_size=args.val_size,
            seed=args.seed,
            device="cpu",
            init=args.init,
        )
        trainer = Trainer(cfg, splits)
    except SDNError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    val_curve = []
    start = time.perf_counter()
    for metrics in trainer.run():
        val_curve.append(round(metrics["val_acc"][-1], 4))
        if not args.quiet:
            print(
                f"epoch {metrics['epoch']:3d} loss {metrics['loss']:.4f} "
                f"train {metrics['train_acc'][-1]:.4f} val {metrics['val_acc'][-1]:.4f} "
                f"{metrics['seconds']:.1f}s",
                file=sys.stderr,
                flush=True,
            )
    train_seconds = time.perf_counter() - start
    test = splits.test
    if args.test_size is not None and args.test_size < len(test):
        # Stratified: the test folder is sorted by class, so its first N images are 1-2 classes.
        test = test.subset(stratified_pick(test.labels.numpy(), args.test_size, [0, 3]))
    test_acc = trainer.evaluate(test)
    print(
        json.dumps(
            {
                "config": trainer.config.to_dict(),
                "threads": torch.get_num_threads(),
                "train_seconds": round(train_seconds, 1),
                "val_final_head_per_epoch": val_curve,
                "test_images": len(test),
                "test_acc": [round(a, 4) for a in test_acc],
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
