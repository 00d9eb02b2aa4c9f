"""The Python half of ``bench/gpu_check.sh``: record the environment, then merge every step's
results into one JSON document and one Markdown table.

Why a separate collector: the device tool returns at most 8 files from ``$OUT``, while the steps
write a dozen (one JSON per benchmark, a summary per ``run_all`` call, a JUnit file). The shell
script runs each step into a scratch folder and calls ``collect`` after every step, so the results
folder always holds the latest complete picture, even if the call is cut off mid-way:

- ``gpu_check.json``: a superset of ``run_all``'s ``summary.json`` (so ``python -m bench.run_all
  --from-json gpu_check.json`` renders it), plus ``env``, ``steps``, ``tests`` and every
  benchmark's full payload under ``benchmarks``;
- ``gpu_check.md``: the environment, the steps, the CUDA tests and the figures, as Markdown.

Subcommands (no torch import except in ``env``)::

    python -m bench.gpu_check env OUT.json
    python -m bench.gpu_check collect WORK RESULTS_DIR --mode gpu|dry-run --budget S --elapsed S
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Modules the GPU steps import (the four benchmarks, sdn, storage.predictions, the CUDA tests).
NEEDED = ("torch", "numpy", "pandas", "pyarrow", "sklearn", "rich", "pytest", "pytest_timeout")
# Project dependencies the steps do not need; recorded, so a later session knows what is there.
OPTIONAL = ("torchvision", "PIL", "yaml", "typer", "scipy", "hypothesis", "matplotlib", "duckdb",
            "sqlalchemy", "alembic", "pydantic", "mlflow", "ray")  # fmt: skip
DISTRIBUTIONS = ("torch", "numpy", "pandas", "pyarrow", "scikit-learn", "rich", "pytest",
                 "pytest-timeout", "hypothesis", "triton", "torchvision")  # fmt: skip
STEP_FIELDS = ("name", "cap_s", "limit_s", "rc", "seconds", "status", "command")
JSON_NAME, MD_NAME = "gpu_check.json", "gpu_check.md"


# ------------------------------------------------------------------------------------------ env
def _run(cmd: Sequence[str]) -> str | None:
    """A command's stdout, or None where it is missing or fails (nvidia-smi on a CPU machine)."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def importable() -> dict[str, str | None]:
    """Each needed module's version (imported, so a broken install shows), each optional one's
    "present" (only looked up: importing Ray or MLflow would cost seconds); None where missing."""
    found: dict[str, str | None] = {}
    for name in NEEDED:
        try:
            module = importlib.import_module(name)
        except Exception:
            found[name] = None
            continue
        version = getattr(module, "__version__", None)
        if version is None:
            try:
                version = importlib.metadata.version(name.replace("_", "-"))
            except importlib.metadata.PackageNotFoundError:
                version = "?"
        found[name] = str(version)
    for name in OPTIONAL:
        try:
            found[name] = "present" if importlib.util.find_spec(name) is not None else None
        except (ImportError, ValueError):
            found[name] = None
    return found


def environment() -> dict[str, Any]:
    """What the run measured on: GPU, driver, nvidia-smi, torch and CUDA, packages."""
    env: dict[str, Any] = {
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "modules": importable(),
        "distributions": {},
        "missing_needed": [],
    }
    for dist in DISTRIBUTIONS:
        try:
            env["distributions"][dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            env["distributions"][dist] = None
    env["missing_needed"] = [m for m in NEEDED if env["modules"][m] is None]
    env["nvidia_smi"] = _run(["nvidia-smi"])
    env["nvidia_smi_query"] = _run([
        "nvidia-smi",
        "--query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.max.sm,"
        "power.draw,power.limit,temperature.gpu,utilization.gpu,compute_mode,persistence_mode",
        "--format=csv",
    ])  # fmt: skip
    if env["modules"]["torch"] is not None:
        import torch

        env["torch"] = torch.__version__
        env["torch_cuda"] = torch.version.cuda
        env["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            env.update(
                gpu=torch.cuda.get_device_name(0),
                capability=list(torch.cuda.get_device_capability(0)),
                gpu_memory_gib=round(props.total_memory / 2**30, 1),
                multiprocessors=props.multi_processor_count,
                cudnn=torch.backends.cudnn.version(),
                bf16_supported=torch.cuda.is_bf16_supported(),
            )
    return env


def env_command(out: Path, require_cuda: bool) -> int:
    """Write the environment; non-zero when no step can run here (no torch, or no CUDA on the GPU
    run: better to stop at once than spend the lease on steps that all fail)."""
    env = environment()
    out.write_text(json.dumps(env, indent=2) + "\n")
    print(f"python {env['python']} ({env['executable']}); torch {env.get('torch')}, "
          f"CUDA {env.get('torch_cuda')}, cuDNN {env.get('cudnn')}; GPU {env.get('gpu')}")  # fmt: skip
    print(env["nvidia_smi_query"] or "nvidia-smi: not available")
    missing_optional = [m for m in OPTIONAL if env["modules"][m] is None]
    print(f"optional modules missing (not needed by the steps): {missing_optional or 'none'}")
    if env["missing_needed"]:
        # Only torch stops the run: without, say, pytest-timeout the other steps still measure.
        print(f"WARNING: modules the steps import are missing: {env['missing_needed']} (carry "
              "them as wheels in .whl/: bench/gpu_wheels.sh)")  # fmt: skip
    if env["modules"]["torch"] is None:
        return 3
    if require_cuda and not env.get("cuda_available"):
        print("torch sees no CUDA device: stopping before the GPU steps")
        return 4
    return 0


# -------------------------------------------------------------------------------------- collect
def read_steps(work: Path) -> list[dict[str, Any]]:
    """The steps recorded by gpu_check.sh (one tab-separated line each, see STEP_FIELDS)."""
    path = work / "steps.tsv"
    steps: list[dict[str, Any]] = []
    if not path.exists():
        return steps
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) != len(STEP_FIELDS):
            continue
        step: dict[str, Any] = dict(zip(STEP_FIELDS, parts, strict=True))
        for key in ("cap_s", "limit_s", "rc", "seconds"):
            step[key] = int(step[key]) if re.fullmatch(r"-?\d+", step[key]) else None
        steps.append(step)
    return steps


def read_junit(path: Path) -> dict[str, Any]:
    """Pass / fail / skip counts and every case of a pytest JUnit file."""
    result: dict[str, Any] = {"passed": 0, "failed": 0, "skipped": 0, "cases": []}
    if not path.exists():
        result["error"] = "no JUnit file (the test step did not run or was cut off)"
        return result
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome, message = "failed", (child.get("message") or "")[:300]
            elif child.tag == "skipped":
                outcome, message = "skipped", (child.get("message") or "")[:300]
        result[outcome] += 1
        result["cases"].append({
            "test": f"{case.get('classname')}::{case.get('name')}",
            "outcome": outcome,
            "message": message,
            "seconds": float(case.get("time") or 0.0),
        })  # fmt: skip
    return result


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def gpu_slug(name: str | None) -> str:
    """bench/figures/<slug>/ for a GPU name: 'NVIDIA H200' -> 'h200', 'NVIDIA H100 80GB HBM3' ->
    'h100'; 'cpu' without a GPU."""
    if not name:
        return "cpu"
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w and w not in ("nvidia", "tesla")]
    return words[0] if words else "gpu"


def collect(work: Path, results: Path, mode: str, budget: int, elapsed: int) -> dict[str, Any]:
    """Merge what the steps left in ``work`` into ``results``/gpu_check.{json,md}."""
    env = _load(work / "env.json") or {}
    steps = read_steps(work)
    doc: dict[str, Any] = {
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": mode,
        "size": "smoke" if mode == "dry-run" else "quick",
        "device": "cpu" if mode == "dry-run" else "cuda",
        "machine": {},
        "seconds": elapsed,
        "budget_s": budget,
        "figures_dir": f"bench/figures/{gpu_slug(env.get('gpu'))}",
        "passed": 0,
        "missed": 0,
        "errors": {},
        "figures": [],
        "env": env,
        "steps": steps,
        "tests": read_junit(work / "pytest.xml"),
        "benchmarks": {},
    }
    for step in steps:
        folder = work / "steps" / step["name"]
        summary = _load(folder / "summary.json")
        if summary is not None:  # a run_all step
            doc["machine"] = doc["machine"] or summary.get("machine", {})
            doc["figures"].extend(summary.get("figures", []))
            doc["errors"].update(summary.get("errors", {}))
        for path in sorted(folder.glob("bench_*.json")) if folder.is_dir() else []:
            payload = _load(path)
            if payload is None:
                continue
            key = path.stem if summary is not None else f"{path.stem}[{step['name']}]"
            doc["benchmarks"][key] = payload
            doc["machine"] = doc["machine"] or payload.get("machine", {})
            if summary is None:  # a single-module step (e.g. training on more architectures)
                doc["figures"].extend(
                    {"benchmark": payload["name"], **f} for f in payload.get("figures", [])
                )
        if step["status"] not in ("ok", "skipped") and step["name"] != "tests":
            doc["errors"].setdefault(step["name"], _step_error(step))
    targeted = [f for f in doc["figures"] if f.get("passed") is not None]
    doc["passed"] = sum(1 for f in targeted if f["passed"])
    doc["missed"] = len(targeted) - doc["passed"]
    if not doc["machine"]:
        doc["machine"] = {"cpu": "?", "cores": env.get("cores"), "memory_gib": "?",
                          "torch": env.get("torch"), "gpu": env.get("gpu")}  # fmt: skip
    results.mkdir(parents=True, exist_ok=True)
    (results / JSON_NAME).write_text(json.dumps(doc, indent=2) + "\n")
    (results / MD_NAME).write_text(markdown(doc) + "\n")
    return doc


def _step_error(step: dict[str, Any]) -> str:
    if step["status"] == "timeout":
        return f"timed out after {step['limit_s']} s (cut off: what it had not written is missing)"
    return f"{step['status']}: exit code {step['rc']} (see gpu_check.log)"


def markdown(doc: dict[str, Any]) -> str:
    """Environment, steps, CUDA tests and the figures (run_all's table) as Markdown."""
    from bench.run_all import markdown_table

    env = doc["env"]
    lines = [
        f"## gpu_check ({doc['mode']}, {doc['written_at']})",
        "",
        f"GPU {env.get('gpu') or 'none'} (capability {env.get('capability')}, "
        f"{env.get('gpu_memory_gib')} GiB); torch {env.get('torch')}, CUDA {env.get('torch_cuda')}, "
        f"cuDNN {env.get('cudnn')}; Python {env.get('python')}; {doc['seconds']} s of a "
        f"{doc['budget_s']} s budget. "
        + (
            "Dry run: nothing to commit."
            if doc["mode"] == "dry-run"
            else f"Commit `gpu_check.json` to `{doc['figures_dir']}/`."
        ),
        "",
    ]
    query = env.get("nvidia_smi_query")
    if query:
        lines += ["```", query, "```", ""]
    lines += ["| step | status | seconds | limit s | exit code |", "|---|---|---|---|---|"]
    lines += [
        f"| {s['name']} | {s['status']} | {s['seconds']} | {s['limit_s']} | {s['rc']} |"
        for s in doc["steps"]
    ]
    tests = doc["tests"]
    lines += [
        "",
        f"CUDA tests: {tests['passed']} passed, {tests['failed']} failed, "
        f"{tests['skipped']} skipped{'; ' + tests['error'] if tests.get('error') else ''}",
    ]
    lines += [f"- {c['outcome']}: `{c['test']}` {c['message']}".rstrip() for c in tests["cases"]]
    lines += ["", markdown_table(doc)]
    lines += ["", f"{doc['passed']} targets pass, {doc['missed']} miss, "
              f"{len(doc['errors'])} errors."]  # fmt: skip
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ CLI
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    env_p = sub.add_parser("env", help="record the environment as JSON")
    env_p.add_argument("out", type=Path)
    env_p.add_argument("--require-cuda", action="store_true")
    col = sub.add_parser("collect", help="merge the steps' results into gpu_check.{json,md}")
    col.add_argument("work", type=Path)
    col.add_argument("results", type=Path)
    col.add_argument("--mode", choices=("gpu", "dry-run"), required=True)
    col.add_argument("--budget", type=int, required=True)
    col.add_argument("--elapsed", type=int, required=True)
    col.add_argument("--print", action="store_true", help="print the Markdown when done")
    args = parser.parse_args(argv)
    if args.command == "env":
        return env_command(args.out, args.require_cuda)
    doc = collect(args.work, args.results, args.mode, args.budget, args.elapsed)
    if args.print:
        print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
