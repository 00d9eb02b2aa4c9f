"""Run every benchmark and print one summary table: ``python -m bench.run_all [--quick]``.

Each benchmark still writes its own ``bench/results/<name>.json``; this adds
``bench/results/summary.json`` (machine, every figure, pass/miss per target, seconds per benchmark).
They run in one process, one after the other (so that the interpreter and torch start once); a
benchmark that raises is reported as an error and the others still run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import (
    BenchReport,
    Figure,
    describe_machine,
    execute,
    fmt,
    machine_info,
    print_figures,
    resolve_device,
    result_payload,
    set_threads,
    write_json,
)

# In the order; each module has NAME and run(size, device) -> BenchReport.
BENCHMARKS = (
    "bench_early_exit",
    "bench_analysis",
    "bench_thresholds",
    "bench_training",
    "bench_orchestration",
    "bench_catalogue",
    "bench_cli",
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--quick", action="store_true", help="smaller sizes: about 10 minutes in all on 2 CPU cores"
    )
    group.add_argument("--smoke", action="store_true", help="tiny sizes: checks that all run")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument(
        "--only", default="", help="comma-separated benchmark names (e.g. thresholds,catalogue)"
    )
    parser.add_argument("--results-dir", type=Path, default=None, help="default bench/results")
    parser.add_argument(
        "--markdown", action="store_true", help="also print the figures as a Markdown table"
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="run nothing: print the Markdown table of an earlier summary.json",
    )
    args = parser.parse_args(argv)
    args.size = "smoke" if args.smoke else "quick" if args.quick else "full"
    return args


def selected(only: str) -> list[str]:
    """Benchmark module names matching ``--only`` (with or without the ``bench_`` prefix)."""
    if not only:
        return list(BENCHMARKS)
    wanted = {w.strip().removeprefix("bench_") for w in only.split(",") if w.strip()}
    unknown = wanted - {b.removeprefix("bench_") for b in BENCHMARKS}
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {sorted(unknown)}; choose from {BENCHMARKS}")
    return [b for b in BENCHMARKS if b.removeprefix("bench_") in wanted]


def run_all(
    names: Sequence[str], size: str, device: Any, results_dir: Path | None = None
) -> dict[str, Any]:
    """Run the named benchmarks; return the summary document (also written as summary.json)."""
    info = machine_info()
    reports: list[BenchReport] = []
    errors: dict[str, str] = {}
    start = time.perf_counter()
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        print(f"\n=== {name} ({size}, {device}) ===", flush=True)
        try:
            report = execute(module.run, size, device)
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            errors[name] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            traceback.print_exc()
            continue
        reports.append(report)
        print_figures(f"{name} ({size}, {device})", report.figures, describe_machine(info))
        for note in report.notes:
            print(f"  note: {note}")
        write_json(name, result_payload(report, info), results_dir)
    total = time.perf_counter() - start
    targeted = [(r.name, f) for r in reports for f in r.figures if f.passed is not None]
    summary = {
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "size": size,
        "device": str(device),
        "machine": info,
        "seconds": total,
        "seconds_per_benchmark": {r.name: r.seconds for r in reports},
        "passed": sum(1 for _, f in targeted if f.passed),
        "missed": sum(1 for _, f in targeted if not f.passed),
        "errors": errors,
        "figures": [{"benchmark": r.name, **f.to_dict()} for r in reports for f in r.figures],
    }
    write_json("summary", summary, results_dir)
    print_figures(
        f"summary ({size}, {device}, {total:.0f} s): {summary['passed']} pass, "
        f"{summary['missed']} miss, {len(errors)} error",
        [f for _, f in targeted] + [_error_figure(n, e) for n, e in errors.items()],
        describe_machine(info),
    )
    return summary


def _error_figure(name: str, error: str) -> Figure:
    """A summary row for a benchmark that raised."""
    figure = Figure(name=f"{name}: ERROR {error[:80]}", value=float("nan"), unit="")
    figure.passed = False
    return figure


def markdown_table(summary: dict[str, Any]) -> str:
    """The summary's figures as a Markdown table, headed by the machine (for bench/README.md)."""
    lines = [
        f"Machine: {describe_machine(summary['machine'])}; size `{summary['size']}`, device "
        f"`{summary['device']}`, {summary['seconds']:.0f} s in all.",
        "",
        "| benchmark | figure | measured | baseline | ratio | target | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in summary["figures"]:
        base = (
            "-"
            if f["baseline"] is None
            else f"{fmt(f['baseline'], f['unit'])} ({f['baseline_label']})"
        )
        ratio = "-" if f["ratio"] is None else f"{f['ratio']:.3g}"
        result = "" if f["passed"] is None else ("pass" if f["passed"] else "**miss**")
        lines.append(
            f"| {f['benchmark'].removeprefix('bench_')} | {f['name']} | {fmt(f['value'], f['unit'])} "
            f"| {base} | {ratio} | {f['target_text']} | {result} |"
        )
    for name, error in summary.get("errors", {}).items():
        lines.append(f"| {name.removeprefix('bench_')} | ERROR: {error} | | | | | **error** |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.from_json is not None:
        summary = json.loads(args.from_json.read_text())
        print(markdown_table(summary))
        return summary
    device = resolve_device(args.device)
    set_threads(args.threads)
    summary = run_all(selected(args.only), args.size, device, args.results_dir)
    if args.markdown:
        print(markdown_table(summary))
    return summary


if __name__ == "__main__":
    main()
