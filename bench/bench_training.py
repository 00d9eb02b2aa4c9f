"""Training throughput: sdn vs cnn epochs, the project's Trainer vs a minimal loop, and settings.

Figures (all throughputs in training images per second, epochs interleaved round by round so that
load on a shared machine falls on every variant alike; the first round is a warm-up). Each ratio is
the median over rounds of the two variants' ratio within a round (``bench.common.paired_ratio``):
this VM's speed jumps between modes minutes apart, and epochs of one round share the mode. The
absolute numbers shown are each variant's best round; medians are in the JSON.

1. ``sdn``-mode epoch time / ``cnn``-mode epoch time, same architecture (``Trainer``). Target <= 1.10.
2. ``Trainer`` throughput / a minimal hand-written PyTorch loop on the same model and data. Target
   >= 0.95. The minimal loop is the usual one: the images already normalised as one float tensor on
   the device, a random permutation per epoch, a weighted sum of per-exit cross-entropies, SGD. It
   does no augmentation, so it is an upper bound the Trainer (which crops and flips every batch) has
   to come close to.
3. Diagnostics: the minimal loop fed by the project's ``BatchIterator`` (augmentation on), which
   isolates the cost of the data pipeline from that of the loop; ``channels_last`` on vs off; AMP
   (bf16 autocast) on vs off, on CUDA only (the Trainer ignores ``amp`` on the CPU).

Data: synthetic 32x32 uint8 images with CIFAR-10's statistics and 10 classes (the work does not
depend on the pixels). --quick trains ResNet-56 only (width 0.5 on a CPU, 16 rounds of 256-image
epochs: short epochs and many rounds suit this VM, whose speed changes within seconds; width 1 on
5,120 images on a GPU); full size adds VGG-16, at width 1 and with more images. ``--archs`` picks
the architectures instead (bench/gpu_check.sh measures all four on a GPU that way).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from bench.common import (
    BenchReport,
    Figure,
    channels_last_safe,
    paired_ratio,
    pick,
    run_main,
    synchronize,
)

NAME = "bench_training"
SDN_VS_CNN_TARGET = 1.10
TRAINER_VS_LOOP_TARGET = 0.95


@dataclass
class Settings:
    archs: tuple[str, ...]
    width: float
    train_images: int
    batch_size: int
    rounds: int  # timed rounds (one warm-up round comes first)


def settings(size: str, device: torch.device) -> Settings:
    gpu = device.type == "cuda"
    return pick(
        size,
        # VGG at --smoke: ResNet-56 below width 0.5 cannot train channels_last on the CPU
        # (see bench.common.channels_last_safe), and this benchmark compares both settings.
        smoke=Settings(("vgg16",), 0.125, 128, 64, 1),
        quick=Settings(
            ("resnet56",), 1.0 if gpu else 0.5, 5_120 if gpu else 256, 128, 2 if gpu else 16
        ),
        full=Settings(("resnet56", "vgg16"), 1.0, 10_240 if gpu else 4_096, 128, 3),
    )


def synthetic_splits(s: Settings) -> Any:
    """CIFAR-10-like splits in memory: ``train_images`` training images, tiny val and test."""
    from sdn.data import DataSplits, ImageSet, dataset_info

    g = torch.Generator().manual_seed(0)

    def imageset(n: int) -> ImageSet:
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        return ImageSet(images, torch.randint(0, 10, (n,), generator=g))

    return DataSplits(dataset_info("cifar10"), imageset(s.train_images), imageset(32), imageset(32))


# ------------------------------------------------------------------------------------ variants
class TrainerVariant:
    """One ``Trainer``; each call trains one epoch and returns its training images per second."""

    def __init__(self, config: Any, splits: Any) -> None:
        from sdn.training import Trainer

        self.trainer = Trainer(config, splits)

    def __call__(self) -> float:
        return float(self.trainer.train_epoch()["images_per_second"])


class MinimalLoop:
    """The hand-written baseline (see the module docstring); ``feed="batch_iterator"`` swaps its
    pre-normalised tensors for the project's augmenting ``BatchIterator``."""

    def __init__(
        self, config: Any, splits: Any, device: torch.device, feed: str = "tensor"
    ) -> None:
        from sdn.data import BatchIterator
        from sdn.models import build_sdn
        from sdn.training import tau_weights

        cfg = config.resolved()
        info = splits.info
        torch.manual_seed(cfg.seed)
        model = build_sdn(cfg.arch, info.num_classes, info.image_size, cfg.width).to(device)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model = model.to(memory_format=self.memory_format)
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay
        )
        self.weights = [*tau_weights(1, cfg.epochs, model.num_exits - 1), 1.0]
        self.device = device
        self.batch_size = cfg.batch_size
        self.amp = cfg.amp and device.type == "cuda"
        mean = torch.tensor(info.mean).view(1, 3, 1, 1)
        std = torch.tensor(info.std).view(1, 3, 1, 1)
        x = (splits.train.images.float() / 255.0 - mean) / std
        self.x = x.to(device).contiguous(memory_format=self.memory_format)
        self.y = splits.train.labels.to(device)
        self.feed = feed
        self.batches = BatchIterator(
            splits.train,
            info,
            cfg.batch_size,
            shuffle=True,
            augment=True,
            generator=torch.Generator().manual_seed(cfg.seed),
            device=device,
            channels_last=cfg.channels_last,
        )

    def _tensor_batches(self) -> Any:
        perm = torch.randperm(self.x.shape[0], device=self.device)
        for start in range(0, self.x.shape[0], self.batch_size):
            idx = perm[start : start + self.batch_size]
            yield self.x[idx], self.y[idx]

    def __call__(self) -> float:
        model, optimizer = self.model, self.optimizer
        model.train()
        autocast: Callable[[], Any] = (
            (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
            if self.amp
            else contextlib.nullcontext
        )
        batches = self.batches if self.feed == "batch_iterator" else self._tensor_batches()
        synchronize(self.device)
        start = time.perf_counter()
        seen = 0
        for x, y in batches:
            with autocast():
                outputs = model(x)
            loss = sum(
                w * F.cross_entropy(o.float(), y)
                for w, o in zip(self.weights, outputs, strict=True)
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += y.shape[0]
        synchronize(self.device)
        return seen / (time.perf_counter() - start)


# -------------------------------------------------------------------------------------- driver
def throughput_figure(
    name: str,
    samples: dict[str, list[float]],
    variant: str,
    baseline: str,
    baseline_label: str,
    note: str,
    target_op: str | None = None,
    target: float | None = None,
) -> Figure:
    """``variant``'s throughput against ``baseline``'s: the best rounds are shown, the per-round
    (paired) ratio is what is judged."""
    return Figure(
        name=name,
        value=max(samples[variant]),
        unit="img/s",
        baseline=max(samples[baseline]),
        baseline_label=baseline_label,
        ratio=paired_ratio(samples[variant], samples[baseline]),
        target_op=target_op,
        target=target,
        note=note,
    )


def interleave(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """One epoch of each variant per round (rotating the order); round 0 is a warm-up."""
    names = list(variants)
    results: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds + 1):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            ips = variants[name]()
            if r > 0:
                results[name].append(ips)
    return results


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def run(size: str, device: torch.device, archs: Sequence[str] | None = None) -> BenchReport:
    """Measure each architecture of this size (or ``archs``, e.g. all four for per-architecture
    bf16 and channels_last choices on a GPU: ``--archs vgg16,resnet56,wrn32_4,mobilenet``)."""
    from sdn.training import TrainConfig

    s = settings(size, device)
    if archs:
        s = replace(s, archs=tuple(archs))
    report = BenchReport(NAME, size, str(device))
    report.details["settings"] = s.__dict__
    splits = synthetic_splits(s)
    gpu = device.type == "cuda"
    check = size != "smoke"
    for arch in s.archs:
        if not channels_last_safe(arch, s.width, device):
            # Only reachable through --archs: this benchmark trains with channels_last on, which
            # crashes torch on the CPU for this architecture at this width.
            report.notes.append(
                f"{arch} w{s.width:g} skipped: channels_last training is unsafe on {device} "
                "(bench.common.channels_last_safe)"
            )
            continue
        base = TrainConfig(
            arch=arch,
            dataset="cifar10",
            mode="sdn",
            width=s.width,
            epochs=s.rounds + 1,
            batch_size=s.batch_size,
            seed=0,
            device=str(device),
            channels_last=True,
            amp=True,
        )
        variants: dict[str, Callable[[], float]] = {
            "trainer_sdn": TrainerVariant(base, splits),
            "trainer_cnn": TrainerVariant(replace(base, mode="cnn"), splits),
            "loop_sdn": MinimalLoop(base, splits, device),
            "loop_sdn_batch_iterator": MinimalLoop(base, splits, device, feed="batch_iterator"),
            "trainer_sdn_no_channels_last": TrainerVariant(
                replace(base, channels_last=False), splits
            ),
        }
        if gpu:
            variants["trainer_sdn_no_amp"] = TrainerVariant(replace(base, amp=False), splits)
        samples = interleave(variants, s.rounds)
        # Best round per variant for the absolute numbers; the ratios pair rounds (paired_ratio).
        ips = {name: max(v) for name, v in samples.items()}

        report.details.setdefault("median_images_per_second", {})[arch] = {
            name: _median(v) for name, v in samples.items()
        }
        report.details[arch] = {"images_per_second": ips, "samples": samples}
        tag = f"{arch} w{s.width:g}"
        report.add(
            Figure(
                name=f"{tag}: sdn-mode epoch / cnn-mode epoch",
                value=s.train_images / ips["trainer_sdn"],
                unit="s",
                baseline=s.train_images / ips["trainer_cnn"],
                baseline_label="cnn-mode epoch",
                ratio=paired_ratio(samples["trainer_cnn"], samples["trainer_sdn"]),
                target_op="<=" if check else None,
                target=SDN_VS_CNN_TARGET if check else None,
                note=f"{s.train_images} images, batch {s.batch_size}",
            )
        )
        report.add(
            throughput_figure(
                f"{tag}: Trainer / minimal loop throughput",
                samples,
                "trainer_sdn",
                "loop_sdn",
                "minimal loop, pre-normalised tensors",
                "sdn mode; Trainer augments every batch, the minimal loop does not",
                target_op=">=" if check else None,
                target=TRAINER_VS_LOOP_TARGET if check else None,
            )
        )
        diagnostics = [
            ("minimal loop fed by BatchIterator (augmenting) / plain", "loop_sdn_batch_iterator",
             "loop_sdn", "minimal loop, pre-normalised tensors",
             "diagnostic: what the data pipeline costs"),
            ("channels_last on / off (Trainer, sdn)", "trainer_sdn",
             "trainer_sdn_no_channels_last", "channels_last off", "> 1: channels_last helps here"),
        ]  # fmt: skip
        if gpu:
            diagnostics.append(
                ("AMP bf16 on / off (Trainer, sdn)", "trainer_sdn", "trainer_sdn_no_amp",
                 "AMP off (fp32)", "> 1: bf16 autocast helps here")
            )  # fmt: skip
        for what, variant, baseline, label, note in diagnostics:
            report.add(throughput_figure(f"{tag}: {what}", samples, variant, baseline, label, note))
    if not gpu:
        report.notes.append("AMP (bf16 autocast) is CUDA-only in the Trainer: not measured on CPU")
    return report


def main(argv: Sequence[str] | None = None) -> BenchReport:
    """``python -m bench.bench_training [--quick|--smoke] [--archs a,b] [common flags]``."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--archs", default="", help="comma-separated architectures to measure")
    own, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    archs = [a.strip() for a in own.archs.split(",") if a.strip()]
    if archs:
        from sdn.models import ARCHITECTURES

        unknown = sorted(set(archs) - set(ARCHITECTURES))
        if unknown:
            raise SystemExit(f"--archs: unknown {unknown}; choose from {sorted(ARCHITECTURES)}")
    return run_main(NAME, __doc__.splitlines()[0], functools.partial(run, archs=archs), rest)


if __name__ == "__main__":
    main()
