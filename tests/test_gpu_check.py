"""bench/gpu_check.sh, the one prepared script a session with a lent GPU runs (issue 14).

The device's minutes are scarce, so everything that can go wrong without a GPU is checked here:
the scripts parse, the GPU plan runs the figures the issue asks for, bad arguments stop at once
with one line, a short dry run goes end to end on the CPU, the collector merges whatever the steps
left (a timed-out step included), and the dry run's stand-in for the device's missing packages
really refuses them. The whole dry run (about 70 s on 2 shared cores) is left to
``bench/gpu_check.sh --dry-run``; here it runs two steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import common, gpu_check, run_all
from sdn.models import ARCHITECTURES

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu_check.sh"
WHEELS = REPO / "bench" / "gpu_wheels.sh"


def sh(*args: str, env: dict[str, str] | None = None, script: Path = SCRIPT):
    return subprocess.run(
        ["bash", str(script), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHON": sys.executable, **(env or {})},
        timeout=100,
        check=False,
    )


def plan(*args: str) -> dict[str, str]:
    done = sh("--print-plan", *args, "unused-results")
    assert done.returncode == 0, done.stderr
    steps = {}
    for line in done.stdout.splitlines()[1:]:
        name, _, command = line.partition(": ")
        steps[name.split(" (")[0]] = command
    return steps


@pytest.mark.parametrize("script", [SCRIPT, WHEELS])
def test_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0


def test_gpu_plan_measures_the_issue_figures():
    steps = plan()
    assert list(steps) == [
        "env", "tests", "early_exit", "analysis", "training", "training_archs", "thresholds",
    ]  # fmt: skip
    assert "--require-cuda" in steps["env"]
    for name in ("early_exit", "analysis", "training", "thresholds"):
        assert f"-m bench.run_all --quick --device cuda --markdown --only {name}" in " ".join(
            steps[name].split()
        )
    # run_all's --quick training measures ResNet-56; the extra step covers the other three.
    archs = steps["training_archs"].split("--archs ")[1].split()[0].split(",")
    assert {"resnet56", *archs} == set(ARCHITECTURES) and "resnet56" not in archs
    # Every test_*cuda* function, by node id, and nothing else (not the CPU twin in its module).
    tests = steps["tests"].split(" -m pytest ")[1].split()
    assert {t for t in tests if "::" in t} == {
        "tests/test_runtime_early_exit.py::test_cuda_matches_offline",
        "tests/test_cuda_paths.py::test_analysis_outputs_cuda_match_cpu",
    }


@pytest.mark.parametrize("how", [("--dry-run",), ()])
def test_dry_run_plan_uses_the_cpu_at_smoke_size(how, monkeypatch):
    env = {} if how else {"GPU_CHECK_DRY_RUN": "1"}
    done = sh("--print-plan", *how, "x", env=env)
    assert done.returncode == 0 and done.stdout.startswith("mode dry-run")
    for line in done.stdout.splitlines()[3:]:  # the benchmark steps
        assert "--smoke --device cpu --threads 1" in line and "cuda " not in line


@pytest.mark.parametrize(
    ("args", "env", "words"),
    [
        (("--bogus", "out"), {}, "unknown option '--bogus'"),
        ((), {}, "RESULTS_DIR missing"),
        (("a", "b"), {}, "one RESULTS_DIR only"),
        (("--budget", "5", "out"), {}, "--budget must be"),
        (("--budget",), {}, "--budget needs"),
        (("--only", "env,nope", "out"), {}, "unknown step 'nope'"),
        (("out",), {"GPU_CHECK_DRY_RUN": "yes"}, "GPU_CHECK_DRY_RUN must be 0 or 1"),
    ],
)
def test_bad_arguments_one_line_nothing_written(tmp_path, args, env, words):
    args = tuple(str(tmp_path / a) if a in ("out", "a", "b") else a for a in args)
    done = sh(*args, env=env)
    assert done.returncode == 2
    assert words in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_results_dir_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    done = sh("--dry-run", str(target))
    assert done.returncode == 2 and "is not a folder" in done.stderr


def test_short_dry_run_end_to_end(tmp_path):
    """Two real steps through the whole machinery: timeouts, step records, collector, files."""
    results = tmp_path / "out"
    done = sh("--dry-run", "--only", "env,thresholds", str(results))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in results.iterdir()) == [
        "gpu_check.json", "gpu_check.log", "gpu_check.md",
    ]  # fmt: skip
    doc = json.loads((results / "gpu_check.json").read_text())
    assert [(s["name"], s["status"]) for s in doc["steps"]] == [("env", "ok"), ("thresholds", "ok")]
    assert doc["mode"] == "dry-run" and doc["env"]["modules"]["torch"]
    # the dry run refuses what the device lacks
    assert doc["env"]["modules"]["ray"] is None and doc["env"]["modules"]["duckdb"] is None
    names = [f["name"] for f in doc["figures"]]
    assert names and all(f["benchmark"] == "bench_thresholds" for f in doc["figures"])
    assert "bench_thresholds" in doc["benchmarks"] and not doc["errors"]
    assert "| thresholds |" in (results / "gpu_check.md").read_text()
    assert "=== thresholds: ok" in (results / "gpu_check.log").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU this would be the real run")
def test_gpu_mode_without_a_gpu_stops_after_env(tmp_path):
    """No device minute is spent on steps that cannot work: the rest is skipped, exit 1."""
    done = sh(str(tmp_path / "out"))
    assert done.returncode == 1, done.stdout[-2000:]
    assert "torch sees no CUDA device" in done.stdout
    doc = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    statuses = [s["status"] for s in doc["steps"]]
    assert statuses[0] == "failed" and set(statuses[1:]) == {"skipped"} and len(statuses) == 7
    assert "env" in doc["errors"] and doc["figures"] == []


# ------------------------------------------------------------------------------------ collector
def write_step_results(work: Path) -> None:
    """What gpu_check.sh leaves in its scratch folder after three steps, one of them cut off."""
    info = {"cpu": "test", "cores": 2, "memory_gib": 1, "torch": "x", "gpu": "NVIDIA H200"}
    report = common.BenchReport("bench_early_exit", "quick", "cuda")
    report.add(common.Figure("ee b1", 1.2, "x", 1.5, "pred", 0.8, ">=", 0.85))
    report.add(common.Figure("ee b128", 1.4, "x", 1.5, "pred", 0.93, ">=", 0.75))
    step = work / "steps" / "early_exit"
    common.write_json("bench_early_exit", common.result_payload(report, info), step)
    summary = {
        "size": "quick", "device": "cuda", "machine": info, "seconds": 9.0, "errors": {},
        "figures": [{"benchmark": "bench_early_exit", **f.to_dict()} for f in report.figures],
    }  # fmt: skip
    common.write_json("summary", summary, step)
    archs = common.BenchReport("bench_training", "quick", "cuda")
    archs.add(common.Figure("vgg16 w1: Trainer / loop", 9.0, "img/s", 10.0, "loop", 0.9))
    common.write_json(
        "bench_training", common.result_payload(archs, info), work / "steps" / "training_archs"
    )
    (work / "env.json").write_text(json.dumps({"gpu": "NVIDIA H200", "torch": "2.11.0"}))
    rows = [
        ("env", 60, 60, 0, 3, "ok"),
        ("early_exit", 150, 150, 0, 40, "ok"),
        ("analysis", 120, 120, 124, 120, "timeout"),
        ("training_archs", 150, 100, 0, 50, "ok"),
        ("thresholds", 45, 0, "", 0, "skipped"),
    ]
    (work / "steps.tsv").write_text(
        "".join("\t".join(map(str, (*r, "cmd --x"))) + "\n" for r in rows)
    )
    (work / "pytest.xml").write_text(
        '<testsuites><testsuite><testcase classname="tests.t" name="test_a_cuda" time="1.5"/>'
        '<testcase classname="tests.t" name="test_b_cuda"><failure message="boom"/></testcase>'
        '<testcase classname="tests.t" name="test_c_cuda"><skipped message="no"/></testcase>'
        "</testsuite></testsuites>"
    )


def test_collector_merges_steps_and_reports_what_is_missing(tmp_path, capsys):
    work, results = tmp_path / "work", tmp_path / "results"
    write_step_results(work)
    doc = gpu_check.collect(work, results, "gpu", 330, 250)
    assert (doc["passed"], doc["missed"]) == (1, 1)  # 0.93 >= 0.75 passes, 0.8 >= 0.85 misses
    assert [f["name"] for f in doc["figures"]] == ["ee b1", "ee b128", "vgg16 w1: Trainer / loop"]
    assert set(doc["benchmarks"]) == {"bench_early_exit", "bench_training[training_archs]"}
    assert "timed out after 120 s" in doc["errors"]["analysis"]
    # skipped for the budget: shown as a step, not an error
    assert "thresholds" not in doc["errors"]
    assert (doc["tests"]["passed"], doc["tests"]["failed"], doc["tests"]["skipped"]) == (1, 1, 1)
    assert doc["figures_dir"] == "bench/figures/h200"
    md = (results / "gpu_check.md").read_text()
    assert (
        "| analysis | timeout | 120 | 120 | 124 |" in md
        and "failed: `tests.t::test_b_cuda` boom" in md
    )
    # the JSON is a run_all summary too: --from-json renders it
    run_all.main(["--from-json", str(results / "gpu_check.json")])
    assert "| early_exit | ee b1 |" in capsys.readouterr().out


def test_collector_without_any_results(tmp_path):
    doc = gpu_check.collect(tmp_path / "empty", tmp_path / "r", "dry-run", 330, 0)
    assert doc["figures"] == [] and doc["steps"] == [] and "error" in doc["tests"]
    assert (tmp_path / "r" / "gpu_check.md").exists()


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("NVIDIA H200", "h200"),
        ("NVIDIA H100 80GB HBM3", "h100"),
        (None, "cpu"),
        ("Tesla V100-SXM2-16GB", "v100"),
    ],
)
def test_gpu_slug(name, slug):
    assert gpu_check.gpu_slug(name) == slug


def test_device_sim_refuses_the_named_modules_only():
    code = (
        "import importlib.util, json\n"
        "try:\n    import ray\n    r = 'imported'\nexcept ModuleNotFoundError as e:\n    r = str(e)\n"
        "import statistics\n"
        "print(json.dumps(r))"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "bench" / "device_sim"),
        "SDN_DEVICE_MISSING": "ray,duckdb",
    }
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert "No module named 'ray'" in json.loads(done.stdout)


# --------------------------------------------------------------------------------------- wheels
def test_wheels_script_needs_nothing_by_default_and_refuses_torch(tmp_path):
    done = sh("--dest", str(tmp_path / "w"), script=WHEELS)
    assert done.returncode == 0 and "needs no wheels" in done.stdout
    for spec, words in (("torch==2.11.0", "already on the device"), ("duckdb", "exact version")):
        done = sh("--dest", str(tmp_path / "w"), spec, script=WHEELS)
        assert done.returncode == 2 and words in done.stderr
    assert not (tmp_path / "w").exists()
