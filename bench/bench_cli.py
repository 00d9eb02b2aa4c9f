"""Read commands as a user runs them: ``sdn catalogue early-exit`` and friends, each a fresh process.

Figure (issue 12): wall time and peak RSS of ``sdn catalogue early-exit`` on the quickstart
catalogue, as a ratio to a bare ``python -c "import sqlite3"`` started in the same run, round by
round (A, B, A, B...): <= 15x in time, and <= 200 MB peak RSS. The other read commands
(``catalogue runs``, ``sweep status``, ``sweep list``, ``catalogue sql``) are measured the same way,
as diagnostics.

Each command is a real subprocess of the product's ``sdn`` console script (``python -m
workflows.cli`` where the script is not installed), with this checkout first on ``PYTHONPATH``.
Peak RSS is the kernel's figure for that one child (``os.wait4``'s ``ru_maxrss``), started by a
small runner process (a child's high-water mark starts at its parent's size). The catalogue is
``bench.quickstart_catalogue``'s (the quickstart's shape) unless ``SDN_BENCH_HOME`` names a real
home, e.g. the one ``scripts/quickstart.sh`` left.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, BenchReport, Figure, paired_ratio, pick, run_main

NAME = "bench_cli"
TIME_TARGET = 15.0  # x the bare interpreter
RSS_TARGET_MB = 200.0
BASELINE = "python -c 'import sqlite3'"
COMMANDS = {
    "catalogue early-exit": ["catalogue", "early-exit"],
    "catalogue runs": ["catalogue", "runs"],
    "sweep status": ["sweep", "status", "quickstart"],
    "sweep list": ["sweep", "list"],
    "catalogue sql": ["catalogue", "sql", "SELECT arch, count(*) FROM runs GROUP BY arch"],
}


def sdn_command() -> list[str]:
    """How a user starts ``sdn``: the console script beside this interpreter, when installed."""
    script = Path(sys.executable).with_name("sdn")
    return [str(script)] if script.exists() else [sys.executable, "-m", "workflows.cli"]


# Peak RSS must come from a small parent: a child's ``ru_maxrss`` starts at its parent's resident
# size when it forks (the kernel copies the high-water mark with the address space), and this
# process has torch loaded. So a small runner process starts every measured command.
RUNNER = """
import json, os, subprocess, sys, time
for line in sys.stdin:
    argv, env = json.loads(line)
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    print(json.dumps([wall, usage.ru_maxrss / 1024, proc.returncode, err[-500:]]), flush=True)
"""


class Runner:
    """The small process that starts each measured command (see RUNNER)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-S", "-c", RUNNER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, argv: list[str], env: dict[str, str]) -> tuple[float, float]:
        """(wall seconds, peak RSS in MiB) of one process, its output discarded."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps([argv, env]) + "\n")
        self.proc.stdin.flush()
        wall, rss, code, err = json.loads(self.proc.stdout.readline())
        if code != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {code}: {err.strip()}")
        return wall, rss

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def measure(home: Path, rounds: int, pycache: Path) -> dict[str, dict[str, list[float]]]:
    """Per action, its wall times and peak RSS, interleaved round by round (order rotating).

    Compiled bytecode is cached under ``pycache`` (``PYTHONPYCACHEPREFIX``), for the baseline and
    the commands alike, as an installed package has its ``.pyc`` files: with
    ``PYTHONDONTWRITEBYTECODE`` set (as the test instructions suggest), every run would compile
    the project's modules again and measure the compiler.
    """
    env = {
        **os.environ,
        "SDN_HOME": str(home),
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        "PYTHONPYCACHEPREFIX": str(pycache),
        "COLUMNS": "100",
    }
    for key in ("SDN_CATALOGUE", "SDN_MLFLOW_TRACKING_URI", "PYTHONDONTWRITEBYTECODE"):
        env.pop(key, None)
    actions = {BASELINE: [sys.executable, "-c", "import sqlite3"]}
    actions.update({name: [*sdn_command(), *args] for name, args in COMMANDS.items()})
    names = list(actions)
    runner = Runner()
    try:
        for name in names:  # warm-up: page cache, .pyc files
            runner.run(actions[name], env)
        out: dict[str, dict[str, list[float]]] = {n: {"wall": [], "rss": []} for n in names}
        for r in range(rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                wall, rss = runner.run(actions[name], env)
                out[name]["wall"].append(wall)
                out[name]["rss"].append(rss)
    finally:
        runner.close()
    return out


def run(size: str, device: Any) -> BenchReport:
    rounds = pick(size, smoke=2, quick=12, full=30)
    report = BenchReport(NAME, size, "cpu")
    check = size != "smoke"
    given = os.environ.get("SDN_BENCH_HOME")
    with tempfile.TemporaryDirectory(prefix="sdn-bench-cli-") as tmp:
        if given:
            home = Path(given)
        else:
            from bench.quickstart_catalogue import build

            home = Path(tmp)
            build(home / "catalogue.db")
        samples = measure(home, rounds, Path(tmp) / "pycache")
    base = samples[BASELINE]
    report.details.update(
        rounds=rounds,
        home=str(given or "bench.quickstart_catalogue"),
        command=" ".join(sdn_command()),
        samples=samples,
    )
    for name in COMMANDS:
        wall, rss = samples[name]["wall"], samples[name]["rss"]
        headline = name == "catalogue early-exit"
        report.add(
            Figure(
                name=f"sdn {name}: wall time / bare interpreter",
                value=statistics.median(wall),
                unit="s",
                baseline=statistics.median(base["wall"]),
                baseline_label=BASELINE,
                ratio=paired_ratio(wall, base["wall"]),
                target_op="<=" if check and headline else None,
                target=TIME_TARGET if check and headline else None,
                note="median of per-round ratios" if headline else "diagnostic",
            )
        )
        report.add(
            Figure(
                name=f"sdn {name}: peak RSS",
                value=max(rss),
                unit="MiB",
                baseline=max(base["rss"]),
                baseline_label=BASELINE,
                ratio=max(rss) / max(base["rss"]),
                target_op="<=" if check and headline else None,
                target=RSS_TARGET_MB if check and headline else None,
                target_on="value",
                note="largest of the rounds" if headline else "diagnostic",
            )
        )
    return report


def main(argv: list[str] | None = None) -> BenchReport:
    return run_main(NAME, __doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    main()
