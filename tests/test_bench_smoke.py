"""Every benchmark runs at its --smoke sizes and reports well-formed figures.

Benchmarks are not tests: nothing here asserts a time or a ratio, only that each one runs end to
end on the CPU and returns finite numbers (so the scripts do not rot between the rare runs that
measure something). Results go to a temporary directory, not bench/results.
"""

from __future__ import annotations

import importlib
import json
import math

import pytest
import torch

from bench import common, run_all

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Results (and the benchmark cache of trained models) under tmp_path; one torch thread, as
    the other tests use (a second thread only spins on shared CI cores)."""
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path / "results")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", run_all.BENCHMARKS)
def test_benchmark_runs_at_smoke_size(name, request):
    if name == "bench_orchestration":
        # Share the session's Ray instance (conftest's ``ray_local``) instead of paying ray.init
        # again; the benchmark leaves a Ray it did not start running.
        request.getfixturevalue("ray_local")
    module = importlib.import_module(f"bench.{name}")
    report = common.execute(module.run, "smoke", torch.device("cpu"))
    assert report.name == name and report.figures
    for figure in report.figures:
        assert math.isfinite(figure.value), figure
        assert figure.ratio is None or math.isfinite(figure.ratio), figure
        assert figure.passed is None  # smoke sizes carry no targets
    path = common.write_json(name, common.result_payload(report, common.machine_info()))
    assert json.loads(path.read_text())["figures"]


def test_summary_counts_targets_and_errors(tmp_path, monkeypatch):
    """run_all's summary: targeted figures are counted, a raising benchmark becomes an error row."""

    class Fake:
        NAME = "bench_fake"

        @staticmethod
        def run(size, device):
            report = common.BenchReport("bench_fake", size, str(device))
            report.add(common.Figure("ok", 1.0, "s", 2.0, "b", 0.5, "<=", 1.0))
            report.add(common.Figure("miss", 3.0, "s", 1.0, "b", 3.0, "<=", 1.0))
            return report

    class Broken:
        @staticmethod
        def run(size, device):
            raise RuntimeError("boom")

    modules = {"bench.bench_fake": Fake, "bench.bench_broken": Broken}
    monkeypatch.setattr(run_all.importlib, "import_module", lambda n: modules[n])
    summary = run_all.run_all(
        ["bench_fake", "bench_broken"], "smoke", torch.device("cpu"), tmp_path
    )
    assert (summary["passed"], summary["missed"]) == (1, 1)
    assert "boom" in summary["errors"]["bench_broken"]
    assert json.loads((tmp_path / "summary.json").read_text())["missed"] == 1


def test_selection_by_short_name():
    assert run_all.selected("thresholds, bench_catalogue") == [
        "bench_thresholds",
        "bench_catalogue",
    ]
    with pytest.raises(SystemExit):
        run_all.selected("nope")
