"""The backdoor experiment with ``sdn`` alone (no Ray, MLflow or SQL), on the offline digits data.

Trains a poisoned ``cnn``, a clean ``cnn`` of the same settings, and the poisoned cnn's ``ic_only``
twin on CLEAN data; then prints, per exit, the clean accuracy, the triggered accuracy and the attack
success, and early exit on triggered inputs at the threshold chosen on the clean validation split.
About 4 minutes on 2 CPU cores with the defaults (docs/backdoor.md has a measured run).

    OMP_NUM_THREADS=2 PYTHONPATH=. python scripts/backdoor_digits.py --arch resnet56 --width 0.5
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from torch import nn

from sdn.analysis import collect_outputs
from sdn.backdoor import BackdoorSplits, PoisonConfig, make_backdoor_splits
from sdn.backdoor_metrics import BackdoorSummary, backdoor_summary
from sdn.data import load_dataset
from sdn.early_exit import Target, build_frontier
from sdn.models import SDN
from sdn.training import TrainConfig, Trainer


def summarise(model: nn.Module, bd: BackdoorSplits, max_drop: float) -> BackdoorSummary:
    """Outputs on the four evaluation splits -> the backdoor summary at a val-chosen threshold."""
    info = bd.clean.info
    outs = {
        name: collect_outputs(model, images, info, batch_size=256, device="cpu")
        for name, images in bd.evaluation_sets().items()
    }
    costs = model.relative_exit_costs() if isinstance(model, SDN) else [1.0]
    val = outs["val"]
    # The operating point every surface of the project shows: sdn.early_exit's rule on clean val.
    point = build_frontier(val, None, costs).choose(Target("max_drop", max_drop)).val
    return backdoor_summary(
        outs["test"],
        outs["test_triggered"],
        bd.config.target,
        threshold=point.threshold,
        relative_costs=costs,
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet56")
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rate", type=float, default=0.1)
    p.add_argument("--target", type=int, default=5)
    p.add_argument("--max-drop", type=float, default=0.01)
    args = p.parse_args()
    splits = load_dataset("digits")
    bd = make_backdoor_splits(splits, PoisonConfig(rate=args.rate, target=args.target))
    common = {
        "arch": args.arch,
        "dataset": "digits",
        "width": args.width,
        "batch_size": args.batch_size,
        "device": "cpu",
    }
    sgd = {"epochs": args.epochs, "lr": args.lr}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        poisoned = Trainer(TrainConfig(mode="cnn", **sgd, **common), bd.poisoned)
        list(poisoned.run())
        poisoned.save(Path(tmp) / "cnn")
        clean = Trainer(TrainConfig(mode="cnn", **sgd, **common), bd.clean)
        list(clean.run())
        ic_epochs = max(4, args.epochs // 2)
        ic_only = Trainer(
            TrainConfig(mode="ic_only", epochs=ic_epochs, **common),
            bd.clean,  # the ICs learn from clean images only (the paper's setup)
            init_checkpoint=Path(tmp) / "cnn",
        )
        list(ic_only.run())
    seconds = time.perf_counter() - start
    print(f"poisoning {bd.config.tag}: {len(bd.poisoned_indices)} of {len(splits.train)} images")
    print(
        f"training: {seconds:.0f} s; clean cnn test accuracy {clean.evaluate(splits.test)[0]:.3f}"
    )
    for name, model in (("poisoned cnn", poisoned.model), ("its ic_only twin", ic_only.model)):
        summary = summarise(model, bd, args.max_drop)
        print(f"{name}:")
        for row in summary.per_exit_rows():
            print(
                f"  exit {row['exit']}: clean {row['clean_accuracy']:.3f}  "
                f"triggered {row['triggered_accuracy']:.3f}  "
                f"attack success {row['attack_success']:.3f}"
            )
        rest = summary.to_dict()
        for key in ("clean_accuracy", "triggered_accuracy", "attack_success", "clean_target_rate"):
            rest.pop(key)
        print("  " + json.dumps(rest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
