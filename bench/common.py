"""Shared plumbing of the benchmarks: timing, machine description, figures, tables and JSON.

Why ratios: the machines these run on are shared and their load changes from minute to minute, so
an absolute time measured today says little next to one measured yesterday. Every figure is
therefore a ratio against a baseline measured *in the same run, interleaved with it* (A, B, A, B,
...), so that a burst of load hits both sides; the absolute numbers are kept beside the ratio.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent
SIZES = ("smoke", "quick", "full")


# --------------------------------------------------------------------------------------- devices
def resolve_device(name: str = "auto") -> Any:
    """``auto`` -> CUDA when present, else the CPU; anything else as given (``cpu``, ``cuda:1``)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine")
    return device


def channels_last_safe(arch: str, width: float, device: Any) -> bool:
    """Whether training with ``channels_last`` is safe here.

    torch 2.14.1 on the CPU corrupts the heap (abort or segfault) in the backward pass of a 1x1,
    stride-2 convolution on a channels_last input with 4 or fewer input channels: ResNet-56's
    projection shortcuts at width <= 0.25. Benchmarks train such tiny models without it.
    """
    on_cpu = getattr(device, "type", str(device)) == "cpu"
    return not (on_cpu and arch in ("resnet56", "wrn32_4") and width < 0.5)


def synchronize(device: Any) -> None:
    """Wait for queued device work, so a timer stops when the work has really finished."""
    if device is not None and getattr(device, "type", str(device)).startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------- timing
@dataclass
class Timing:
    """Wall-clock samples of one measured action, in seconds, with the process CPU time of each.

    CPU time (all threads of this process) is kept because on a loaded machine a single-threaded
    action's wall time stretches with the load while its CPU time mostly does not: for such
    actions, CPU time close to wall time means the figure was not inflated by waiting for a core.
    """

    samples: list[float]
    cpu_samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def cpu_median(self) -> float | None:
        return statistics.median(self.cpu_samples) if self.cpu_samples else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "median_s": self.median,
            "min_s": self.min,
            "samples_s": self.samples,
            "cpu_median_s": self.cpu_median,
            "cpu_samples_s": self.cpu_samples,
        }


def _time_once(fn: Callable[[], Any], device: Any = None) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call, the device synchronised around it."""
    synchronize(device)
    cpu = time.process_time()
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu


def time_once(fn: Callable[[], Any], device: Any = None) -> float:
    """Seconds of one call of ``fn``, with the device synchronised before and after."""
    return _time_once(fn, device)[0]


def time_call(
    fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 5, device: Any = None
) -> Timing:
    """Time ``fn`` ``repeats`` times after ``warmup`` untimed calls (allocator, caches, cuDNN)."""
    for _ in range(warmup):
        _time_once(fn, device)
    pairs = [_time_once(fn, device) for _ in range(repeats)]
    return Timing([w for w, _ in pairs], [c for _, c in pairs])


def compare(
    actions: dict[str, Callable[[], Any]],
    *,
    warmup: int = 1,
    rounds: int = 5,
    device: Any = None,
) -> dict[str, Timing]:
    """Time several actions interleaved (one call of each per round, the order rotating).

    Interleaving is what makes the ratios trustworthy on a shared machine: load that comes and
    goes falls on every action alike instead of on whichever happened to run during the burst.
    """
    names = list(actions)
    for _ in range(warmup):
        for name in names:
            time_once(actions[name], device)
    timings = {name: Timing([], []) for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            wall, cpu = _time_once(actions[name], device)
            timings[name].samples.append(wall)
            timings[name].cpu_samples.append(cpu)
    return timings


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median over rounds of ``numerator[r] / denominator[r]`` for interleaved samples.

    On these shared VMs an action's speed jumps between modes (the same epoch took 2.7 or 3.6 s of
    CPU time, minutes apart), and a ratio of two medians can pair a fast-mode median with a
    slow-mode one. Samples taken in the same round ran seconds apart, in the same mode, so the
    per-round ratio cancels the mode.
    """
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError("paired_ratio needs two equally long, non-empty sample lists")
    return statistics.median(n / d for n, d in zip(numerator, denominator, strict=True))


# ---------------------------------------------------------------------------------------- memory
def _status_kib(field_name: str) -> int:
    """A ``VmRSS``/``VmHWM`` field of /proc/self/status in KiB (0 where there is no /proc)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where that is refused."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@dataclass
class PeakMemory:
    """Resident memory at the start of a block and its peak inside it, in MiB."""

    start_mib: float = 0.0
    peak_mib: float = 0.0
    method: str = ""

    @property
    def growth_mib(self) -> float:
        return max(0.0, self.peak_mib - self.start_mib)


@contextmanager
def peak_rss() -> Iterator[PeakMemory]:
    """Measure the peak resident set size of this process inside the block.

    Uses the kernel's own peak mark (reset through /proc/self/clear_refs, so no spike is missed)
    and falls back to sampling VmRSS every millisecond in a thread where the reset is refused.
    (tracemalloc would miss most of it: torch and Arrow allocate outside Python's allocator.)
    """
    result = PeakMemory(start_mib=_status_kib("VmRSS") / 1024)
    if _reset_peak_rss():
        result.method = "VmHWM after clear_refs"
        try:
            yield result
        finally:
            result.peak_mib = _status_kib("VmHWM") / 1024
        return
    result.method = "VmRSS sampled every 1 ms"
    stop = threading.Event()
    peak = [result.start_mib]

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _status_kib("VmRSS") / 1024)
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result.peak_mib = max(peak[0], _status_kib("VmRSS") / 1024)


# ------------------------------------------------------------------------------------- machine
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """What the figures came from: CPU, cores usable, memory, library versions, GPU, load."""
    import torch

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    mem_kib = 0
    try:
        with open("/proc/meminfo") as fh:
            mem_kib = int(fh.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": cores,
        "memory_gib": round(mem_kib / 2**20, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else [],
        "gpu": None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def describe_machine(info: dict[str, Any]) -> str:
    """One line for tables and the README."""
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ", no GPU"
    load = info.get("load_average") or []
    load_text = f", load {load[0]:.1f}" if load else ""
    return (
        f"{info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB{gpu}, "
        f"torch {info['torch']}{load_text}"
    )


# ------------------------------------------------------------------------------------- figures
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
}


@dataclass
class Figure:
    """One reported figure: an absolute value, the baseline measured beside it, their ratio, and
    (optionally) the issue's target, checked either on the ratio or on the absolute value.

    ``ratio`` is whatever quotient the figure is about (e.g. measured speed-up / predicted
    speed-up); it is given explicitly because "value / baseline" is not always the right one.
    """

    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    ratio: float | None = None
    target_op: str | None = None
    target: float | None = None
    target_on: str = "ratio"  # "ratio" or "value"
    note: str = ""
    passed: bool | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.target_op is not None and self.target is not None:
            checked = self.ratio if self.target_on == "ratio" else self.value
            if checked is None or not math.isfinite(checked):
                self.passed = False
            else:
                self.passed = _OPS[self.target_op](checked, self.target)

    @property
    def target_text(self) -> str:
        if self.target_op is None or self.target is None:
            return ""
        what = "ratio" if self.target_on == "ratio" else self.unit or "value"
        return f"{what} {self.target_op} {self.target:g}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target_text"] = self.target_text
        return d


@dataclass
class BenchReport:
    """What one benchmark module returns: its figures, the details behind them, its settings."""

    name: str
    size: str
    device: str
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size": self.size,
            "device": self.device,
            "seconds": self.seconds,
            "figures": [f.to_dict() for f in self.figures],
            "details": self.details,
            "notes": self.notes,
        }


def fmt(value: float | None, unit: str = "") -> str:
    """Compact human formatting: 3 significant digits, seconds shown in ms below 1 s."""
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    if unit == "s" and abs(value) < 1.0:
        return f"{value * 1e3:.3g} ms"
    text = f"{value:.3g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return f"{text} {unit}".rstrip() if unit else text


def print_figures(title: str, figures: Sequence[Figure], machine: str = "") -> None:
    """The figures as a table (rich when it is importable, plain text otherwise)."""
    header = ["figure", "measured", "baseline", "ratio", "target", "pass"]
    rows = []
    for f in figures:
        base = f"{fmt(f.baseline, f.unit)} ({f.baseline_label})" if f.baseline is not None else "-"
        verdict = "" if f.passed is None else ("PASS" if f.passed else "MISS")
        ratio = "-" if f.ratio is None else f"{f.ratio:.3g}"
        rows.append([f.name, fmt(f.value, f.unit), base, ratio, f.target_text, verdict])
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is a project dependency
        print(f"\n{title}" + (f"  [{machine}]" if machine else ""))
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        for r in [header, *rows]:
            print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
        return
    table = Table(title=title, caption=machine or None)
    for h in header:
        table.add_column(h, overflow="fold")
    for r in rows:
        style = "red" if r[-1] == "MISS" else None
        table.add_row(*r, style=style)
    Console(width=max(120, _terminal_width())).print(table)


def _terminal_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 160


def write_json(name: str, payload: dict[str, Any], results_dir: Path | None = None) -> Path:
    """Write ``payload`` as ``<results_dir>/<name>.json`` (bench/results by default)."""
    out_dir = results_dir or RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    return path


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def cache_dir() -> Path:
    """Where benchmarks keep what is slow to rebuild between runs (trained checkpoints)."""
    path = RESULTS_DIR / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ----------------------------------------------------------------------------------------- CLI
def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The flags every benchmark takes: size (--smoke / --quick / full) and --device."""
    parser = argparse.ArgumentParser(description=description)
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--quick", action="store_true", help="smaller sizes: 1-3 minutes on 2 CPU cores"
    )
    group.add_argument("--smoke", action="store_true", help="tiny sizes: checks that it runs")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    parser.add_argument("--results-dir", type=Path, default=None, help="default bench/results")
    args = parser.parse_args(argv)
    args.size = "smoke" if args.smoke else "quick" if args.quick else "full"
    return args


def run_main(
    name: str,
    description: str,
    run: Callable[[str, Any], BenchReport],
    argv: Sequence[str] | None = None,
) -> BenchReport:
    """Entry point shared by ``python -m bench.<name>``: run, print the table, write the JSON."""
    args = parse_args(description, argv)
    device = resolve_device(args.device)
    set_threads(args.threads)
    report = execute(run, args.size, device)
    info = machine_info()
    print_figures(f"{name} ({args.size}, {device})", report.figures, describe_machine(info))
    for note in report.notes:
        print(f"  note: {note}")
    path = write_json(name, result_payload(report, info), args.results_dir)
    print(f"  wrote {path}")
    return report


def set_threads(threads: int | None) -> None:
    """Pin torch's intra-op thread count (on shared cores a spinning second thread can cost more
    than it gains on small models); None leaves torch's default."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def execute(run: Callable[[str, Any], BenchReport], size: str, device: Any) -> BenchReport:
    """Run one benchmark and record its wall time."""
    if size not in SIZES:
        raise ValueError(f"size {size!r}; use one of {SIZES}")
    start = time.perf_counter()
    report = run(size, device)
    report.seconds = time.perf_counter() - start
    return report


def result_payload(report: BenchReport, info: dict[str, Any]) -> dict[str, Any]:
    """The JSON document of one benchmark run."""
    return {
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": info,
        "argv": sys.argv,
        **report.to_dict(),
    }


def pick(size: str, smoke: Any, quick: Any, full: Any) -> Any:
    """The value for this size."""
    return {"smoke": smoke, "quick": quick, "full": full}[size]
