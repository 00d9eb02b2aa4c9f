"""Issue 6: faults, interruptions, concurrency and bad input lose nothing (scenarios 1, 2, 4, 5, 7,
8 and 9; the two-node cluster and MLflow outages, 3 and 6, are in ``tests/test_cluster.py``).

Everything is real: ``sdn`` subprocesses with their own local Ray, the session's local Ray for
in-process sweeps, MLflow on SQLite, the SQLite catalogue and Parquet files, all under tmp.

* Killing a process is done by pid. A subprocess sweep gets its own Ray temp folder
  (``SDN_RAY_TEMP_DIR``), so the Ray processes of that sweep are told apart from every other Ray
  on the machine (the session's, other tests', other users') by their command lines and their
  parents; teardown ends exactly those. Never ``ray stop``.
* The trainable's test hooks (``SDN_TEST_PID_DIR``, ``SDN_TEST_SLOW_EPOCH_S``) say which process
  runs a trial and which epochs each attempt checkpointed: that is how "not retrained" is counted.
* One tiny in-process sweep (``swept``: one architecture, cnn + sdn, one epoch, a home whose path
  has a space and non-ASCII letters) serves the checks that need a finished sweep.

``docs/reliability.md`` lists each scenario and how to run it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SDN = Path(sys.executable).parent / "sdn"
ARCH = "mobilenet"  # the cheapest architecture on a CPU at width 0.125
EXITS = {"cnn": 1, "ic_only": 6, "sdn": 6}
SUBPROCESS_SWEEP_TIMEOUT_S = 600.0

SWEEP = """\
name: {name}
grid: {{architectures: [{arch}], datasets: [digits], modes: [{modes}], seeds: [{seeds}]}}
training: {{epochs: {epochs}, batch_size: 32, width: 0.125, train_subset: 96, val_size: 40, milestones: []}}
resources: {{cpus_per_trial: 1, max_concurrent_trials: {concurrent}}}
checkpoint: {{every_epochs: 1, max_failures: {max_failures}}}
analysis: {{batch_size: 128, max_accuracy_drops: [0.01], cost_budgets: [0.5]}}
storage: {{home: "{home}"}}
"""


def sweep_text(
    name: str,
    home: Path,
    *,
    modes: str = "cnn",
    seeds: str = "0",
    epochs: int = 1,
    concurrent: int = 1,
    max_failures: int = 0,
) -> str:
    return SWEEP.format(
        name=name,
        arch=ARCH,
        modes=modes,
        seeds=seeds,
        epochs=epochs,
        concurrent=concurrent,
        max_failures=max_failures,
        home=home,
    )


# --- processes, through /proc -----------------------------------------------------------------


def _parents() -> dict[int, int]:
    """pid -> parent pid of every live process."""
    table: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                table[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    return table


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """Running (a zombie, killed and waiting for its parent to reap it, does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def ray_session_pids(temp_dir: str, roots: tuple[int, ...] = ()) -> set[int]:
    """Processes of the Ray instance living in ``temp_dir`` (their command lines name it), of
    ``roots``, and all their descendants (Ray workers rename themselves ``ray::...``)."""
    parents = _parents()
    found = {pid for pid in parents if temp_dir in _cmdline(pid)} | {
        r for r in roots if r in parents
    }
    grew = True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in found} - found
        found |= more
        grew = bool(more)
    found.discard(os.getpid())
    return found


def kill_pids(pids: set[int], timeout_s: float = 30.0) -> set[int]:
    """SIGKILL each pid and wait until none runs; return those still running (should be none)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    return {p for p in pids if _alive(p)}


def wait_for(
    what: str, check: Callable[[], bool], timeout_s: float, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}\n{tail}")


class SdnProcess:
    """``sdn ARGS`` in its own session (process group) with its own Ray temp folder."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="sdnray-", dir="/tmp")  # short: socket paths
        self.log = log
        self.fh = open(log, "ab")  # noqa: SIM115 - closed in finish()
        self.proc = subprocess.Popen(
            [str(SDN), *args],
            env={**env, "SDN_RAY_TEMP_DIR": self.temp_dir},
            stdout=self.fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=env.get("SDN_HOME", str(REPO)),
        )

    def wait(self, timeout_s: float = SUBPROCESS_SWEEP_TIMEOUT_S) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.finish()
            pytest.fail(f"sdn did not finish in {timeout_s:.0f} s\n{self.output()[-3000:]}")

    def kill_driver(self) -> set[int]:
        """SIGKILL the driver's process group, then every process of its Ray session that
        survived it (Ray's own daemons may outlive their driver); return what was killed."""
        pids = ray_session_pids(self.temp_dir, roots=(self.proc.pid,))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        left = kill_pids(pids | ray_session_pids(self.temp_dir))
        assert not left, f"Ray processes of the killed sweep still run: {sorted(left)}"
        return pids

    def finish(self) -> None:
        """End whatever is left of this sweep's processes and remove its Ray temp folder."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        kill_pids(ray_session_pids(self.temp_dir))
        self.fh.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def sdn_env(home: Path, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "SDN_HOME": str(home),
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "SDN_CATALOGUE", "SDN_DEBUG"):
        env.pop(key, None)
    return env


# --- what a trial did: the SDN_TEST_PID_DIR log ----------------------------------------------


def trial_events(pid_dir: Path, run_id: str) -> list[tuple[int, str, int]]:
    """(pid, "start" | "checkpointed", epoch) for each line the cell's attempts wrote."""
    path = pid_dir / f"{run_id}.log"
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        pid, what, epoch = line.split()
        events.append((int(pid), what, int(epoch.removeprefix("epoch="))))
    return events


def attempts(events: list[tuple[int, str, int]]) -> list[tuple[int, int]]:
    """(pid, epoch it started from) of every attempt at training a cell."""
    return [(pid, epoch) for pid, what, epoch in events if what == "start"]


def checkpointed(events: list[tuple[int, str, int]]) -> list[int]:
    """Every epoch some attempt trained and checkpointed, in order: a retrained epoch twice."""
    return [epoch for _, what, epoch in events if what == "checkpointed"]


# --- what was recorded -------------------------------------------------------------------------


def mlflow_cell_runs(tracking_uri: str, sweep: str) -> dict[str, list[Any]]:
    """run_id tag -> the MLflow runs that carry it, in the sweep's experiment."""
    from mlflow import MlflowClient

    from storage.mlflow_layout import RUN_ID_TAG, experiment_name

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment_name(sweep))
    assert exp is not None
    out: dict[str, list[Any]] = {}
    for run in client.search_runs([exp.experiment_id], max_results=1000):
        tag = run.data.tags.get(RUN_ID_TAG)
        if tag:
            out.setdefault(tag, []).append(run)
    return out


def mlflow_run_count(tracking_uri: str, sweep: str) -> int:
    """Every MLflow run in the sweep's experiment (cells and the sweep's parent run)."""
    from mlflow import MlflowClient

    from storage.mlflow_layout import experiment_name

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment_name(sweep))
    return len(client.search_runs([exp.experiment_id], max_results=1000))


def loss_steps(tracking_uri: str, mlflow_run_id: str) -> list[int]:
    from mlflow import MlflowClient

    history = MlflowClient(tracking_uri).get_metric_history(mlflow_run_id, "loss")
    return sorted(m.step for m in history)


def check_recorded_once(spec_text: str, home: Path, epochs: int) -> None:
    """Every cell: one MLflow run with each epoch's metrics once, one registered version from
    that run, one catalogue row (done) with its per-exit results once, Parquet files present."""
    from storage.catalogue import Catalogue
    from storage.registry import Registry
    from workflows.spec import parse_sweep

    spec = parse_sweep(spec_text, "sweep.yaml")
    paths = spec.storage_paths()
    cells = spec.cells()
    runs = mlflow_cell_runs(paths.mlflow_tracking_uri, spec.name)
    assert sorted(runs) == sorted(c.run_id for c in cells)
    assert mlflow_run_count(paths.mlflow_tracking_uri, spec.name) == len(cells) + 1  # + the sweep's
    versions = Registry(paths.mlflow_tracking_uri).list_models()
    for cell in cells:
        (run,) = runs[cell.run_id]  # exactly one MLflow run per cell
        assert run.info.status == "FINISHED"
        assert loss_steps(paths.mlflow_tracking_uri, run.info.run_id) == list(range(1, epochs + 1))
        assert (versions["run_id"] == run.info.run_id).sum() == 1  # one registered version
    assert len(versions) == len(cells)
    with Catalogue(paths.catalogue) as cat:
        rows = cat.runs(sweep=spec.name)
        assert sorted(rows["run_id"]) == sorted(c.run_id for c in cells)
        assert set(rows["status"]) == {"done"}
        assert all(Path(p).is_dir() for p in rows["parquet_path"])
        exits = cat.exits(sweep=spec.name)
        wanted = sum(3 * EXITS[c.mode] for c in cells)  # train, val and test per exit
        assert len(exits) == wanted
        assert len(cat.overthinking(sweep=spec.name)) == len(cells)
        assert len(cat.sql("SELECT * FROM sweeps WHERE name = ?", (spec.name,))) == 1
    from storage.predictions import PredictionStore

    store = PredictionStore(paths.predictions)
    for cell in cells:
        files = store.files_for_run(cell.run_id)
        assert len(files) == 2 and all(store.readable(f) for f in files)


# --- scenarios 1 and 2: a trial's worker, then the driver, killed with SIGKILL ------------------
# One subprocess sweep serves both (a sweep's startup is the expensive part on 2 cores): two cnn
# cells trained one after the other, two epochs each, every epoch slowed to widen the windows.
#   1. the first cell's worker is killed during its epoch 2: Tune retries it from epoch 1;
#   2. once that cell is done and the second one has checkpointed epoch 1, the driver's process
#      group (and its Ray) is killed; `sdn sweep resume` then completes the sweep.


class KilledSweep:
    """What the fault-injection sweep did, for the two tests that check it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.pid_dir = root / "pids"
        self.text = sweep_text("faults", self.home, seeds="0, 1", epochs=2, max_failures=2)
        self.cells = [f"faults.{ARCH}.digits.cnn.s{s}" for s in (0, 1)]
        self.first = self.second = ""  # in training order
        self.worker = 0  # the pid killed in scenario 1
        self.killed: set[int] = set()  # the pids killed in scenario 2
        self.ray_left: set[int] = set()
        self.first_result_before: dict[str, Any] | None = None
        self.first_events_before: list[tuple[int, str, int]] = []
        self.codes: list[int] = []

    def result(self, run_id: str) -> dict[str, Any] | None:
        from workflows import layout

        return layout.read_result(self.home / "tune", "faults", run_id)

    def events(self, run_id: str) -> list[tuple[int, str, int]]:
        return trial_events(self.pid_dir, run_id)

    def run(self) -> None:
        self.home.mkdir(parents=True)
        self.pid_dir.mkdir()
        (self.root / "sweep.yaml").write_text(self.text)
        env = sdn_env(self.home, SDN_TEST_PID_DIR=str(self.pid_dir), SDN_TEST_SLOW_EPOCH_S="1.5")
        procs: list[SdnProcess] = []
        try:
            launch = SdnProcess(
                ["sweep", "launch", str(self.root / "sweep.yaml"), "--no-progress"],
                env,
                self.root / "launch.log",
            )
            procs.append(launch)
            # Scenario 1: the first cell's worker, killed in epoch 2 (epoch 1 is checkpointed).
            wait_for(
                "a cell to checkpoint epoch 1",
                lambda: any(1 in checkpointed(self.events(c)) for c in self.cells),
                SUBPROCESS_SWEEP_TIMEOUT_S,
                launch.log,
            )
            self.first = next(c for c in self.cells if 1 in checkpointed(self.events(c)))
            (self.second,) = set(self.cells) - {self.first}
            time.sleep(0.5)  # well into epoch 2, which takes about 3 s with the hook
            ((self.worker, _),) = attempts(self.events(self.first))
            assert self.worker != launch.proc.pid  # a Ray worker runs the trial, not the driver
            os.kill(self.worker, signal.SIGKILL)
            assert not kill_pids({self.worker})
            # Scenario 2: the driver, once the first cell is done and the second one mid-way.
            wait_for(
                "the first cell to finish and the second to checkpoint epoch 1",
                lambda: (
                    self.result(self.first) is not None
                    and 1 in checkpointed(self.events(self.second))
                ),
                SUBPROCESS_SWEEP_TIMEOUT_S,
                launch.log,
            )
            self.killed = launch.kill_driver()
            self.ray_left = ray_session_pids(launch.temp_dir)
            self.first_result_before = self.result(self.first)
            self.first_events_before = self.events(self.first)
            resume = SdnProcess(
                ["sweep", "resume", "faults", "--no-progress"], env, self.root / "resume.log"
            )
            procs.append(resume)
            self.codes.append(resume.wait())
            if self.codes[-1] != 0:
                pytest.fail(f"resume failed\n{resume.output()[-3000:]}")
        finally:
            for proc in procs:
                proc.finish()


@pytest.fixture(scope="module")
def killed_sweep(tmp_path_factory: pytest.TempPathFactory) -> KilledSweep:
    sweep = KilledSweep(tmp_path_factory.mktemp("faults"))
    sweep.run()
    return sweep


@pytest.mark.slow
@pytest.mark.integration
def test_worker_killed_mid_epoch_resumes_from_its_checkpoint(killed_sweep: KilledSweep) -> None:
    s = killed_sweep
    events = s.events(s.first)
    first, second = attempts(events)
    assert first == (s.worker, 0)
    assert second[0] != s.worker and second[1] == 1  # the retry resumed from epoch 1's checkpoint
    assert checkpointed(events) == [1, 2]  # epoch 2 died with the worker and ran once more
    result = s.result(s.first)
    assert result is not None and [h["epoch"] for h in result["history"]] == [1, 2]
    check_recorded_once(s.text, s.home, epochs=2)


@pytest.mark.slow
@pytest.mark.integration
def test_driver_killed_mid_sweep_then_resume_completes_it(killed_sweep: KilledSweep) -> None:
    s = killed_sweep
    assert len(s.killed) > 3 and not s.ray_left  # driver, Ray daemons, the trial's worker: gone
    assert s.codes == [0]
    # The finished cell was not retrained: no new attempt, the same result.
    assert s.events(s.first) == s.first_events_before
    assert s.result(s.first) == s.first_result_before
    # The interrupted cell resumed from its checkpoint, each epoch trained once in all.
    resumed = s.events(s.second)
    assert [epoch for _, epoch in attempts(resumed)] == [0, 1]
    assert checkpointed(resumed) == [1, 2]
    check_recorded_once(s.text, s.home, epochs=2)


def test_checkpoint_swap_cut_short_by_a_kill_is_recovered(tmp_path: Path) -> None:
    """A trial killed between the two renames of a checkpoint swap leaves no ``checkpoint`` but
    the previous one under ``.checkpoint.old-*``: the next attempt resumes from that one."""
    from sdn.training import recover_checkpoint

    for name, epoch, age_s in ((".checkpoint.old-1a2b3c4d", 3, 5), (".checkpoint.old-5e6f", 2, 50)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "meta.json").write_text(json.dumps({"epoch": epoch}))
        os.utime(tmp_path / name, (time.time() - age_s,) * 2)  # the newest one is used
    (tmp_path / ".checkpoint.tmp-x").mkdir()  # an unfinished write: never used
    recover_checkpoint(tmp_path / "checkpoint")
    assert json.loads((tmp_path / "checkpoint" / "meta.json").read_text()) == {"epoch": 3}
    recover_checkpoint(tmp_path / "checkpoint")  # nothing to do once it exists
    assert json.loads((tmp_path / "checkpoint" / "meta.json").read_text()) == {"epoch": 3}


# --- the shared in-process sweep ------------------------------------------------------------------


class Swept:
    """A finished tiny sweep in a home whose path holds a space and non-ASCII letters."""

    def __init__(self, home: Path, text: str) -> None:
        from workflows.spec import parse_sweep

        self.home = home
        self.text = text
        self.spec = parse_sweep(text, "rel.yaml")
        self.paths = self.spec.storage_paths()
        self.cells = self.spec.cells()

    def run_id(self, mode: str) -> str:
        return next(c.run_id for c in self.cells if c.mode == mode)


@pytest.fixture(scope="module")
def swept(ray_local: Any, tmp_path_factory: pytest.TempPathFactory) -> Swept:
    from workflows.sweep import launch

    home = tmp_path_factory.mktemp("rel") / "sweep home ü é"  # valid paths that must work
    sweep = Swept(home, sweep_text("rel", home, modes="cnn, sdn", concurrent=2))
    outcome = launch(sweep.spec, progress=False)
    assert outcome.ok, (outcome.failed, outcome.skipped)
    return sweep


def db_digest(path: Path) -> str:
    """A digest of an SQLite file's rows and schema (not its bytes: a WAL checkpoint moves bytes
    without changing a row)."""
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return hashlib.sha256("\n".join(con.iterdump()).encode()).hexdigest()
    finally:
        con.close()


def tree_state(*roots: Path) -> dict[str, str]:
    """Every file and folder under ``roots``: a digest per file, databases by their rows."""
    state: dict[str, str] = {}
    for root in roots:
        if not root.exists():
            continue
        for path in sorted(root.rglob("*")):
            if path.name.endswith(("-wal", "-shm", "-journal")):
                continue  # SQLite's side files come and go with connections
            if path.is_dir():
                state[str(path)] = "dir"
            elif path.suffix == ".db":
                state[str(path)] = db_digest(path)
            else:
                state[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def assert_one_line_error(code: int, stderr: str, expected_code: int, needles: list[str]) -> str:
    """A non-zero exit with exactly one ``error:`` line on stderr, no traceback, naming
    ``needles``."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == expected_code, (code, stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def cli(args: list[str], **env: str) -> Any:
    """``sdn ARGS`` in this process (typer's CliRunner), stdout and stderr apart."""
    from typer.testing import CliRunner

    from workflows.cli import app

    return CliRunner().invoke(app, args, env=env or None, catch_exceptions=False)


# --- scenario 8: a table of bad inputs through the CLI ------------------------------------------
# Each row: id, the arguments, the exit code, words its one error line must hold. ``{yaml:NAME}``
# is a sweep file written from BAD_YAML (in a folder whose name has a space and non-ASCII letters),
# ``{home}`` the shared sweep's home, ``{nowhere}`` a path that does not exist, ``{ref}`` a
# registered model. No row may write a file or a row: both homes are compared before and after.


def _yaml(base: str, old: str, new: str) -> str:
    assert old in base, old
    return base.replace(old, new)


def bad_yaml(base: str, file_parent: Path) -> dict[str, str | bytes]:
    """Sweep files that must be refused (test_spec.py has the full table of the validator; these
    go through the CLI)."""
    return {
        "unknown-key": _yaml(base, "training:", "trainig:"),
        "epochs-word": _yaml(base, "epochs: 1", "epochs: four"),
        "epochs-zero": _yaml(base, "epochs: 1", "epochs: 0"),
        "epochs-negative": _yaml(base, "epochs: 1", "epochs: -2"),
        "epochs-absurd": _yaml(base, "epochs: 1", "epochs: 1000000000"),
        "empty-grid": _yaml(base, base[base.index("grid:") : base.index("\ntraining")], "grid: {}"),
        "no-architectures": _yaml(base, f"[{ARCH}]", "[]"),
        "unknown-architecture": _yaml(base, f"[{ARCH}]", "[resnet57]"),
        "duplicate-cells": _yaml(base, "seeds: [0]", "seeds: [0, 0]"),
        "width-absurd": _yaml(base, "width: 0.125", "width: 1e9"),
        "threshold-1.5": _yaml(
            base, "cost_budgets: [0.5]", "cost_budgets: [0.5], thresholds: [1.5]"
        ),
        "malformed": "name: x\ngrid: [a, b\n",
        "python-tag": "name: !!python/object/apply:os.system ['touch /tmp/sdn-pwned']\n",
        "not-utf8": b"name: caf\xe9\ngrid: {}\n",
        "home-under-a-file": _yaml(
            base,
            base[base.index("storage:") :],
            f'storage: {{home: "{file_parent}/a-file/home"}}\n',
        ),
    }


CLI_ROWS: list[tuple[str, list[str], int, list[str]]] = [
    # sweep files
    ("yaml-unknown-key", ["sweep", "launch", "{yaml:unknown-key}"], 2, ["unknown key 'trainig'"]),
    ("yaml-epochs-wrong-type", ["sweep", "launch", "{yaml:epochs-word}"], 2, ["training.epochs"]),
    ("yaml-epochs-zero", ["sweep", "launch", "{yaml:epochs-zero}"], 2, ["must be >= 1 (got 0)"]),
    ("yaml-epochs-negative", ["sweep", "launch", "{yaml:epochs-negative}"], 2, ["(got -2)"]),
    ("yaml-epochs-absurd", ["sweep", "launch", "{yaml:epochs-absurd}"], 2, ["must be <= 10000"]),
    ("yaml-empty-grid", ["sweep", "launch", "{yaml:empty-grid}"], 2, ["grid"]),
    ("yaml-no-architectures", ["sweep", "launch", "{yaml:no-architectures}"], 2, ["not be empty"]),
    ("yaml-unknown-arch", ["sweep", "launch", "{yaml:unknown-architecture}"], 2, ["'resnet57'"]),
    ("yaml-duplicate-cells", ["sweep", "launch", "{yaml:duplicate-cells}"], 2, ["duplicate"]),
    ("yaml-width-absurd", ["sweep", "launch", "{yaml:width-absurd}"], 2, ["training.width"]),
    ("yaml-threshold-1.5", ["sweep", "launch", "{yaml:threshold-1.5}"], 2, ["(got 1.5)"]),
    ("yaml-malformed", ["sweep", "launch", "{yaml:malformed}"], 2, ["malformed YAML"]),
    ("yaml-python-tag", ["sweep", "launch", "{yaml:python-tag}"], 2, ["python/object"]),
    ("yaml-not-utf8", ["sweep", "launch", "{yaml:not-utf8}"], 2, ["not UTF-8"]),
    ("yaml-missing-file", ["sweep", "launch", "{nowhere}/sweep ü.yaml"], 2, ["sweep ü.yaml"]),
    ("yaml-is-a-directory", ["sweep", "launch", "{yamldir}"], 2, ["is a directory"]),
    ("yaml-home-under-a-file", ["sweep", "launch", "{yaml:home-under-a-file}"], 2, ["a-file"]),
    # sweep commands
    ("launch-file-and-preset", ["sweep", "launch", "{yaml:unknown-key}", "--preset", "paper"], 2, ["not both"]),
    ("launch-nothing", ["sweep", "launch"], 2, ["--preset"]),
    ("launch-unknown-preset", ["sweep", "launch", "--preset", "../quickstart"], 2, ["unknown preset"]),
    ("launch-bad-address", ["sweep", "launch", "{good}", "--address", "no-port"], 2, ["HOST:PORT"]),
    ("launch-unreachable-address", ["sweep", "launch", "{good}", "--address", "127.0.0.1:9"], 3, ["127.0.0.1:9"]),
    ("resume-unknown-sweep", ["sweep", "resume", "nosuch", "--home", "{home}"], 2, ["unknown sweep 'nosuch'", "rel"]),
    ("resume-no-catalogue", ["sweep", "resume", "rel", "--home", "{nowhere}"], 2, ["no catalogue"]),
    ("status-unknown-sweep", ["sweep", "status", "x' OR '1'='1", "--home", "{home}"], 2, ["unknown sweep"]),
    # catalogue
    ("runs-bad-format", ["catalogue", "runs", "--home", "{home}", "--format", "xml"], 2, ["--format"]),
    ("runs-seed-not-int", ["catalogue", "runs", "--home", "{home}", "--seed", "abc"], 2, ["--seed"]),
    ("runs-unknown-option", ["catalogue", "runs", "--home", "{home}", "--archh", "x"], 2, ["--archh"]),
    ("runs-missing-catalogue", ["catalogue", "runs", "--catalogue", "{nowhere}/c ü.db"], 2, ["c ü.db"]),
    ("exits-bad-split", ["catalogue", "exits", "--home", "{home}", "--split", "train"], 2, ["'train'"]),
    ("early-exit-drop-1.5", ["catalogue", "early-exit", "--home", "{home}", "--max-drop", "1.5"], 2, ["--max-drop"]),
    ("early-exit-drop-nan", ["catalogue", "early-exit", "--home", "{home}", "--max-drop", "nan"], 2, ["--max-drop"]),
    ("early-exit-budget-absurd", ["catalogue", "early-exit", "--home", "{home}", "--budget", "1e308"], 2, ["--budget"]),
    ("early-exit-both", ["catalogue", "early-exit", "--home", "{home}", "--max-drop", "0.1", "--budget", "0.5"], 2, ["not both"]),
    ("sql-drop", ["catalogue", "sql", "DROP TABLE runs", "--home", "{home}"], 2, ["only reads"]),
    ("sql-insert", ["catalogue", "sql", "INSERT INTO sweeps (name) VALUES ('x')", "--home", "{home}"], 2, ["only reads"]),
    ("sql-attach", ["catalogue", "sql", "ATTACH '{nowhere}/x.db' AS x", "--home", "{home}"], 2, ["not authorized"]),
    ("sql-pragma-write", ["catalogue", "sql", "PRAGMA user_version = 7", "--home", "{home}"], 2, ["not authorized"]),
    ("sql-two-statements", ["catalogue", "sql", "SELECT 1; DROP TABLE runs", "--home", "{home}"], 2, ["query failed"]),
    ("sql-syntax", ["catalogue", "sql", "SELEKT 1", "--home", "{home}"], 2, ["syntax error"]),
    ("rebuild-no-predictions", ["catalogue", "rebuild", "--home", "{home}", "--predictions", "{nowhere}"], 2, ["no predictions"]),
    # models
    ("predict-threshold-1.5", ["models", "predict", "{ref}", "--dataset", "digits", "--threshold", "1.5", "--home", "{home}"], 2, ["--threshold 1.5", "[0, 1]"]),
    ("predict-threshold-negative", ["models", "predict", "{ref}", "--dataset", "digits", "--threshold", "-0.1", "--home", "{home}"], 2, ["threshold"]),
    ("predict-budget-zero", ["models", "predict", "{ref}", "--dataset", "digits", "--budget", "0", "--home", "{home}"], 2, ["budget"]),
    ("predict-neither", ["models", "predict", "{ref}", "--dataset", "digits", "--home", "{home}"], 2, ["exactly one"]),
    ("predict-limit-zero", ["models", "predict", "{ref}", "--limit", "0", "--home", "{home}"], 2, ["--limit"]),
    ("predict-no-input", ["models", "predict", "{ref}", "--threshold", "0.5", "--home", "{home}"], 2, ["exactly one"]),
    ("predict-missing-image", ["models", "predict", "{ref}", "{nowhere}/ü.png", "--threshold", "0.5", "--home", "{home}"], 2, ["ü.png"]),
    ("get-malformed-ref", ["models", "get", "bad ref!!", "--home", "{home}"], 2, ["bad ref!!"]),
    ("get-unknown-model", ["models", "get", "sdn-vgg16-digits-cnn@latest", "--home", "{home}"], 2, ["sdn-vgg16-digits-cnn"]),
    ("get-out-under-a-file", ["models", "get", "{ref}", "--out", "{yamldir}/a-file/m", "--home", "{home}"], 2, ["a-file/m", "Not a directory"]),
    ("models-no-store", ["models", "list", "--home", "{nowhere}"], 2, ["no MLflow store"]),
    # reports and commands
    ("report-unknown-target", ["report", "nosuch", "--home", "{home}", "--no-mlflow"], 2, ["nosuch"]),
    ("unknown-command", ["trian"], 2, ["No such command"]),
]  # fmt: skip


@pytest.fixture(scope="module")
def cli_inputs(swept: Swept, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Substitutions for CLI_ROWS: the bad sweep files, paths, a registered model."""
    root = tmp_path_factory.mktemp("cli") / "bad inputs ü"
    root.mkdir()
    (root / "a-file").write_text("a regular file, not a folder\n")
    base = sweep_text("badin", root / "never")
    subs = {
        "home": str(swept.home),
        "nowhere": str(root / "nowhere é"),
        "yamldir": str(root),
        "good": str(root / "good.yaml"),
        "ref": "sdn-mobilenet-digits-cnn@latest",
    }
    (root / "good.yaml").write_text(base)
    for name, text in bad_yaml(base, root).items():
        path = root / f"{name} ü.yaml"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        subs[f"yaml:{name}"] = str(path)
    return subs


def test_cli_table_is_big_enough() -> None:
    assert len(CLI_ROWS) >= 30


@pytest.mark.integration
@pytest.mark.parametrize(
    ("args", "code", "needles"), [r[1:] for r in CLI_ROWS], ids=[r[0] for r in CLI_ROWS]
)
def test_bad_cli_input_is_one_line_and_writes_nothing(
    swept: Swept,
    cli_inputs: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    code: int,
    needles: list[str],
) -> None:
    args = [_fill(a, cli_inputs) for a in args]
    needles = [_fill(n, cli_inputs) for n in needles]
    monkeypatch.chdir(tmp_path)  # a fallback mlflow.db or stray file would land here
    roots = (swept.home, Path(cli_inputs["yamldir"]), tmp_path)
    before = tree_state(*roots)
    result = cli(args, SDN_HOME=str(tmp_path / "default home"))
    assert_one_line_error(result.exit_code, result.stderr, code, needles)
    assert result.stdout == ""
    assert tree_state(*roots) == before
    assert not Path("/tmp/sdn-pwned").exists()


def _fill(text: str, subs: dict[str, str]) -> str:
    """``text`` with each ``{key}`` of ``subs`` replaced (other braces, as in SQL, stay)."""
    for key, value in subs.items():
        text = text.replace("{" + key + "}", value)
    return text


# --- scenario 4: an analysis killed mid-write; deleted or damaged Parquet healed by a relaunch ----

WRITER = """
import sys, time
sys.path.insert(0, sys.argv[2])
from storage_factories import make_outputs
from storage.predictions import PredictionStore, RunKey

def batches():
    for i in range(10**6):
        yield make_outputs(n=4096, exits=6, seed=i, start=i * 4096)
        if i == 4:  # 5 x 4096 x 6 rows: the first row group (65536 rows) is on disk
            print("flushed", flush=True)
        if i >= 4:
            time.sleep(0.2)  # an analysis that is still computing outputs

PredictionStore(sys.argv[1]).write(RunKey("rel.mobilenet.digits.sdn.s9", "mobilenet", "digits", "sdn"), "test", batches())
"""


@pytest.mark.slow
def test_analysis_killed_mid_write_leaves_no_partial_parquet(tmp_path: Path) -> None:
    from storage_factories import make_outputs

    from storage.predictions import STALE_TEMP_S, PredictionStore, RunKey

    root = tmp_path / "predictions"
    store = PredictionStore(root)
    key = RunKey("rel.mobilenet.digits.sdn.s9", "mobilenet", "digits", "sdn")
    final = store.path_for(key, "test")
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), str(Path(__file__).parent)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "flushed"
        (temp,) = final.parent.glob(f".{final.name}.tmp-*")
        assert temp.stat().st_size > 0  # half a file, with row groups in it
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait(timeout=30)

    # No reader sees the partial file: not by path, not in the dataset, not through DuckDB.
    assert temp.exists() and not final.exists()
    assert store.files_for_run(key.run_id) == []
    assert store.query().num_rows == 0
    assert store.per_exit_accuracy().empty and store.per_exit_accuracy(engine="duckdb").empty
    assert int(store.duckdb("SELECT count(*) AS n FROM predictions")["n"].iloc[0]) == 0
    assert store.readable(temp) is False

    # A live writer's temporary file (this process) and another host's young one are left alone;
    # an old one of unknown origin is removed with the dead writer's.
    live = final.parent / f".{final.name}.tmp-abc-{os.getpid()}@{os.uname().nodename}"
    foreign = final.parent / f".{final.name}.tmp-abc-1@another-host"
    ancient = final.parent / f".{final.name}.tmp-0123456789abcdef"
    for path in (live, foreign, ancient):
        path.write_bytes(b"partial")
    os.utime(ancient, (time.time() - STALE_TEMP_S - 60,) * 2)

    # Re-running heals: the file is written whole and the dead writer's leftover is gone.
    out = make_outputs(n=300, exits=6)
    assert store.write(key, "test", out) == final
    assert store.read_outputs(key.run_id, "test").num_samples == 300
    assert sorted(p.name for p in final.parent.iterdir()) == sorted(
        [final.name, live.name, foreign.name]
    )


@pytest.mark.slow
@pytest.mark.integration
def test_relaunch_rewrites_deleted_and_damaged_parquet(swept: Swept) -> None:
    """The catalogue never points at a missing file: a relaunch re-analyses (without retraining)
    every run whose Parquet files were deleted or damaged, and records nothing twice."""
    from storage.catalogue import Catalogue
    from storage.predictions import PredictionStore
    from storage.registry import Registry
    from workflows import layout
    from workflows.sweep import launch

    store = PredictionStore(swept.paths.predictions)
    gone, damaged = swept.run_id("sdn"), swept.run_id("cnn")
    for path in store.files_for_run(gone):
        path.unlink()
    (broken,) = [p for p in store.files_for_run(damaged) if p.name.endswith(".test.parquet")]
    broken.write_bytes(broken.read_bytes()[:-64])  # the footer is gone
    results = {c.run_id: layout.read_result(swept.paths.tune, "rel", c.run_id) for c in swept.cells}
    with Catalogue(swept.paths.catalogue) as cat:
        exits_before = len(cat.exits(sweep="rel"))

    outcome = launch(swept.spec, progress=False)
    assert outcome.ok and outcome.trained == [c.run_id for c in swept.cells]
    for cell in swept.cells:  # not retrained
        assert layout.read_result(swept.paths.tune, "rel", cell.run_id) == results[cell.run_id]
    with Catalogue(swept.paths.catalogue) as cat:
        runs = cat.runs(sweep="rel")
        assert set(runs["status"]) == {"done"}
        for parquet_dir in runs["parquet_path"]:
            assert Path(parquet_dir).is_dir()
        assert len(cat.exits(sweep="rel")) == exits_before
    for run_id in (gone, damaged):
        files = store.files_for_run(run_id)
        assert len(files) == 2 and all(store.readable(f) for f in files)
    assert {
        k: len(v) for k, v in mlflow_cell_runs(swept.paths.mlflow_tracking_uri, "rel").items()
    } == {c.run_id: 1 for c in swept.cells}
    assert set(Registry(swept.paths.mlflow_tracking_uri).list_models()["version"].astype(int)) == {
        1
    }


# --- scenario 5: 32 analysis results recorded at once -------------------------------------------

CONCURRENT = """
import json, multiprocessing, sys, traceback
sys.path.insert(0, sys.argv[2])
from storage.catalogue import Catalogue, RunRecord
from storage_factories import make_summary

PATH, N = sys.argv[1], int(sys.argv[3])

def cell(i):
    return RunRecord(f"conc.mobilenet.digits.sdn.s{i}", "conc", "mobilenet", "digits", "sdn", i)

def record(i, barrier, errors):
    # What the driver does with one analysis result: the summary, then the run marked done.
    try:
        cat = Catalogue(PATH)
        summary = make_summary(exits=6, seed=i)
        barrier.wait(timeout=120)
        cat.record_summary(cell(i).run_id, summary)
        done = cell(i)
        done.status, done.parquet_path = "done", f"/predictions/{i}"
        cat.upsert_run(done)
        cat.close()
    except BaseException:
        errors.put(f"writer {i}: {traceback.format_exc()}")

if __name__ == "__main__":
    with Catalogue(PATH) as cat:  # the sweep's runs, recorded pending before any result arrives
        for i in range(N):
            cat.upsert_run(cell(i))
    ctx = multiprocessing.get_context("fork")  # this process runs no Ray: forking is safe
    barrier, errors = ctx.Barrier(N), ctx.Queue()
    procs = [ctx.Process(target=record, args=(i, barrier, errors)) for i in range(N)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    print(json.dumps({"codes": [p.exitcode for p in procs], "failures": failures}))
"""


@pytest.mark.slow
def test_32_results_arriving_at_once_are_all_recorded(tmp_path: Path) -> None:
    from storage_factories import make_summary

    from storage.catalogue import Catalogue, RunRecord

    n, path = 32, tmp_path / "catalogue.db"
    run = subprocess.run(
        [sys.executable, "-c", CONCURRENT, str(path), str(Path(__file__).parent), str(n)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["failures"] == [] and report["codes"] == [0] * n
    assert "database is locked" not in run.stderr

    def table_counts(cat: Catalogue) -> dict[str, int]:
        tables = cat.sql("SELECT name FROM sqlite_master WHERE type = 'table'")["name"]
        return {t: int(cat.sql(f'SELECT count(*) AS n FROM "{t}"')["n"].iloc[0]) for t in tables}

    with Catalogue(tmp_path / "serial.db") as serial:  # the same results, one after another
        for i in range(n):
            rid = f"conc.mobilenet.digits.sdn.s{i}"
            serial.upsert_run(RunRecord(rid, "conc", "mobilenet", "digits", "sdn", i))
            serial.record_summary(rid, make_summary(exits=6, seed=i))
        expected = table_counts(serial)
    with Catalogue(path) as cat:
        runs = cat.runs(sweep="conc")
        assert len(runs) == n and set(runs["status"]) == {"done"}
        assert sorted(runs["seed"]) == list(range(n))
        assert table_counts(cat) == expected  # no lost or doubled rows, table by table
        assert len(cat.overthinking(sweep="conc")) == n


# --- scenario 7: a full disk, unwritable storage, damaged checkpoints, catalogues and Parquet ---


def _mount_tmpfs(where: Path, options: str) -> bool:
    """Mount a tmpfs (root only; a CI container may forbid it): True when it worked."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True
    )
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB file system, or a skip where mounting is not allowed (the RLIMIT_FSIZE test
    below covers a full disk everywhere)."""
    where = tmp_path / "small disk"
    if not _mount_tmpfs(where, "size=4m"):
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill_disk(disk: Path) -> Path:
    """Write a file until the disk is full; return it (delete it to free the space)."""
    filler = disk / "filler"
    with open(filler, "wb") as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 65536)
            fh.flush()
    return filler


@pytest.mark.slow
def test_full_disk_fails_naming_the_file_and_keeps_what_was_there(
    small_disk: Path, tiny_digits: Any
) -> None:
    from storage_factories import make_outputs, make_summary, record

    from sdn.errors import CheckpointError
    from sdn.training import TrainConfig, Trainer
    from storage.catalogue import Catalogue
    from storage.errors import StorageError
    from storage.predictions import PredictionStore, RunKey

    store = PredictionStore(small_disk / "predictions")
    key = RunKey("full.mobilenet.digits.sdn.s0", "mobilenet", "digits", "sdn")
    old_file = store.write(key, "test", make_outputs(n=100, exits=6))
    cat = Catalogue(small_disk / "catalogue.db")
    kept = record(cat, "full", "mobilenet", "digits", "sdn", 0, summary=make_summary(exits=6))
    cfg = TrainConfig(arch="mobilenet", dataset="digits", mode="cnn", width=0.125, epochs=1)
    trainer = Trainer(cfg, tiny_digits)
    ckpt = trainer.save(small_disk / "checkpoint")
    filler = _fill_disk(small_disk)

    big = make_outputs(n=50_000, exits=6, seed=1)
    with pytest.raises(StorageError, match=f"cannot write predictions file {old_file}: .*space"):
        store.write(key, "test", big)
    assert store.read_outputs(key.run_id, "test").num_samples == 100  # the old file, whole
    assert not list(old_file.parent.glob(".*tmp*"))  # no debris
    trainer.train_epoch()
    with pytest.raises(CheckpointError, match=f"cannot write checkpoint {ckpt}"):
        trainer.save(ckpt)
    assert Trainer.restore(ckpt, tiny_digits).epoch == 0  # the old checkpoint, whole
    with pytest.raises(StorageError, match=f"catalogue {cat.path}: .*full"):
        for seed in range(1, 200):  # SQLite may find room in free pages for the first few
            record(cat, "full", "mobilenet", "digits", "sdn", seed, summary=make_summary(exits=6))
    filler.unlink()
    assert kept in set(cat.runs()["run_id"]) and len(cat.overthinking(run_id=kept)) == 1
    record(
        cat, "full", "mobilenet", "digits", "sdn", 999, summary=make_summary(exits=6)
    )  # room again
    cat.close()


FSIZE = """
import json, resource, signal, sys
sys.path.insert(0, sys.argv[2])
from storage.errors import StorageError
from storage.predictions import PredictionStore, RunKey
from storage_factories import make_outputs

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG
store = PredictionStore(sys.argv[1])
key = RunKey("fsize.mobilenet.digits.sdn.s0", "mobilenet", "digits", "sdn")
store.write(key, "test", make_outputs(n=100, exits=6))
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))
try:
    store.write(key, "test", make_outputs(n=50_000, exits=6, seed=1))
    print(json.dumps({"error": None}))
except StorageError as exc:
    print(json.dumps({"error": str(exc), "samples": store.read_outputs(key.run_id, "test").num_samples}))
"""


@pytest.mark.slow
def test_file_size_limit_fails_naming_the_file(tmp_path: Path) -> None:
    """A full disk without root: a file-size limit makes writes fail the same way (EFBIG)."""
    from storage.predictions import PredictionStore, RunKey

    root = tmp_path / "predictions"
    run = subprocess.run(
        [sys.executable, "-c", FSIZE, str(root), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    outcome = json.loads(run.stdout.strip().splitlines()[-1])
    final = PredictionStore(root).path_for(
        RunKey("fsize.mobilenet.digits.sdn.s0", "mobilenet", "digits", "sdn"), "test"
    )
    assert outcome["error"] and outcome["error"].startswith(
        f"cannot write predictions file {final}"
    )
    assert "\n" not in outcome["error"] and outcome["samples"] == 100
    assert not list(final.parent.glob(".*tmp*"))


@pytest.mark.slow
def test_read_only_storage_is_refused_naming_the_path(tmp_path: Path) -> None:
    """Root ignores file modes, so "unwritable" is a read-only mount here (a home under a
    regular file is in the CLI table)."""
    from storage_factories import make_outputs

    from storage.catalogue import Catalogue
    from storage.errors import StorageError
    from storage.predictions import PredictionStore, RunKey

    ro = tmp_path / "read only"
    if not _mount_tmpfs(ro, "ro,size=1m"):
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        sweep = tmp_path / "sweep.yaml"
        sweep.write_text(sweep_text("ro", ro / "home"))
        result = cli(["sweep", "launch", str(sweep), "--no-progress"])
        assert_one_line_error(result.exit_code, result.stderr, 2, [str(ro), "not writable"])
        store = PredictionStore(ro / "predictions")
        key = RunKey("ro.mobilenet.digits.sdn.s0", "mobilenet", "digits", "sdn")
        with pytest.raises(StorageError, match=f"cannot write predictions file {ro}.*Read-only"):
            store.write(key, "test", make_outputs(n=10, exits=6))
        with pytest.raises(Exception, match=str(ro)):
            Catalogue(ro / "catalogue.db")
        assert list(ro.iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


@pytest.mark.slow
@pytest.mark.integration
def test_corrupted_checkpoint_fails_its_cell_naming_it_and_deleting_it_heals(
    swept: Swept, tmp_path: Path
) -> None:
    """Decision: a checkpoint that cannot be read fails its cell with the file's path and the fix
    (delete the folder), rather than silently training from scratch; other sweeps are untouched.
    """
    from sdn.training import Trainer
    from storage.catalogue import Catalogue
    from storage.mlflow_layout import ERROR_TAG
    from storage.registry import Registry
    from workflows import layout
    from workflows.spec import parse_sweep
    from workflows.sweep import SweepDriver
    from workflows.trainable import _splits_for, _train_config

    text = sweep_text("relck", swept.home, epochs=2)
    (tmp_path / "relck.yaml").write_text(text)
    spec = parse_sweep(text, "relck.yaml")
    (cell,) = spec.cells()
    config = SweepDriver(spec).trial_config(cell)
    ckpt = layout.checkpoint_dir(swept.paths.tune, "relck", cell.run_id)
    trainer = Trainer(_train_config(config), _splits_for(config, config["train"]))
    trainer.train_epoch()
    trainer.save(ckpt)  # a half-trained cell, as a killed trial leaves it
    model = ckpt / "model.pt"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    damaged = model.read_bytes()
    others = tree_state(swept.paths.tune / "rel", swept.paths.predictions)
    with Catalogue(swept.paths.catalogue) as cat:
        rel_rows = cat.runs(sweep="rel")[STABLE_RUN_COLUMNS].to_json()

    result = cli(["sweep", "launch", str(tmp_path / "relck.yaml"), "--no-progress"])
    assert result.exit_code == 1, result.stdout + result.stderr
    with Catalogue(swept.paths.catalogue) as cat:
        (error,) = cat.runs(sweep="relck")["error"]
        assert cat.runs(sweep="rel")[STABLE_RUN_COLUMNS].to_json() == rel_rows
    assert f"checkpoint file {model} is corrupted" in error and f"delete {ckpt}" in error
    assert "\n" not in error
    (run,) = mlflow_cell_runs(swept.paths.mlflow_tracking_uri, "relck")[cell.run_id]
    assert str(model) in run.data.tags[ERROR_TAG] and run.info.status == "FAILED"
    status = cli(["sweep", "status", "relck", "--home", str(swept.home), "--format", "json"])
    assert str(model) in json.loads(status.stdout)[0]["error"]
    assert model.read_bytes() == damaged  # left as it was, for the user to look at
    assert tree_state(swept.paths.tune / "rel", swept.paths.predictions) == others

    shutil.rmtree(ckpt)  # what the message says to do
    result = cli(["sweep", "launch", str(tmp_path / "relck.yaml"), "--no-progress"])
    assert result.exit_code == 0, result.stdout + result.stderr
    (run,) = mlflow_cell_runs(swept.paths.mlflow_tracking_uri, "relck")[cell.run_id]
    versions = Registry(swept.paths.mlflow_tracking_uri).list_models()
    assert (versions["run_id"] == run.info.run_id).sum() == 1
    assert loss_steps(swept.paths.mlflow_tracking_uri, run.info.run_id) == [1, 2]
    with Catalogue(swept.paths.catalogue) as cat:
        assert list(cat.runs(sweep="relck")["status"]) == ["done"]


STABLE_RUN_COLUMNS = [
    "run_id",
    "status",
    "epochs",
    "mlflow_run_id",
    "model_version",
    "parquet_path",
]


def _sqlite_copy(source: Path, target: Path) -> None:
    """A consistent copy of a live SQLite database (its WAL included)."""
    src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


@pytest.mark.integration
def test_corrupted_catalogue_is_named_and_left_as_it_was(swept: Swept, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage ü.db"
    garbage.write_bytes(os.urandom(16384))
    torn = tmp_path / "torn.db"  # a real catalogue whose pages after the first are garbage
    _sqlite_copy(swept.paths.catalogue, torn)
    data = bytearray(torn.read_bytes())
    data[4096:] = os.urandom(len(data) - 4096)
    torn.write_bytes(bytes(data))
    for path in (garbage, torn):
        before = path.read_bytes()
        for args in (
            ["catalogue", "runs"],
            ["catalogue", "sql", "SELECT * FROM runs"],
            ["sweep", "status"],
            ["catalogue", "early-exit"],
        ):
            result = cli([*args, "--catalogue", str(path)])
            assert_one_line_error(result.exit_code, result.stderr, 2, [str(path)])
        assert path.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage ü.db", "torn.db"]

    # A launch into a home whose catalogue is damaged stops before it writes anything.
    home = tmp_path / "home"
    home.mkdir()
    (home / "catalogue.db").write_bytes(garbage.read_bytes())
    (tmp_path / "sweep.yaml").write_text(sweep_text("dmg", home))
    result = cli(["sweep", "launch", str(tmp_path / "sweep.yaml"), "--no-progress"])
    assert_one_line_error(result.exit_code, result.stderr, 2, [str(home / "catalogue.db")])
    assert sorted(p.name for p in home.iterdir()) == ["catalogue.db"]
    assert (home / "catalogue.db").read_bytes() == garbage.read_bytes()


@pytest.mark.integration
def test_corrupted_parquet_is_named_and_nothing_else_changes(swept: Swept, tmp_path: Path) -> None:
    from storage.errors import StorageError
    from storage.predictions import PredictionStore

    home = tmp_path / "copy ü"
    shutil.copytree(swept.home, home, ignore=shutil.ignore_patterns("*.db", "*.db-*"))
    for name in ("catalogue.db", "mlflow.db"):
        _sqlite_copy(swept.home / name, home / name)
    store = PredictionStore(home / "predictions")
    (broken,) = [
        p for p in store.files_for_run(swept.run_id("sdn")) if p.name.endswith(".test.parquet")
    ]
    broken.write_bytes(broken.read_bytes()[:-64])
    before = tree_state(home)

    result = cli(["report", "rel", "--home", str(home), "--no-mlflow"])
    assert_one_line_error(result.exit_code, result.stderr, 2, [str(broken)])
    result = cli(["catalogue", "rebuild", "--home", str(home)])
    assert_one_line_error(result.exit_code, result.stderr, 2, [str(broken)])
    with pytest.raises(StorageError, match=str(broken)):
        store.dataset()
    with pytest.raises(StorageError, match=str(broken)):
        store.read_outputs(swept.run_id("sdn"), "test")
    after = tree_state(home)
    reports = str(home / "reports")
    assert {k: v for k, v in after.items() if not k.startswith(reports)} == {
        k: v for k, v in before.items() if not k.startswith(reports)
    }


# --- scenario 9: security --------------------------------------------------------------------

WRITES = [
    "DROP TABLE runs",
    "DELETE FROM runs",
    "UPDATE runs SET status = 'failed'",
    "INSERT INTO sweeps (name, spec, created_at, updated_at) VALUES ('x', '{}', 0, 0)",
    "CREATE TABLE pwned (a)",
    "CREATE TEMP TABLE pwned (a)",
    "ATTACH DATABASE '{dir}/attached.db' AS other",
    "VACUUM",
    "VACUUM INTO '{dir}/vacuumed.db'",
    "REINDEX",
    "ANALYZE",
    "PRAGMA user_version = 7",
    "PRAGMA journal_mode = DELETE",
    "PRAGMA query_only = OFF",
    "PRAGMA writable_schema = ON",
    "SELECT load_extension('/tmp/nothing')",
    "SELECT 1; DROP TABLE runs",
]


@pytest.mark.integration
@pytest.mark.parametrize("statement", WRITES)
def test_adhoc_sql_cannot_write(swept: Swept, tmp_path: Path, statement: str) -> None:
    from storage.catalogue import Catalogue
    from storage.errors import StorageError

    before = tree_state(swept.home)
    with Catalogue(swept.paths.catalogue) as cat, pytest.raises(StorageError):
        cat.sql(statement.replace("{dir}", str(tmp_path)))
    assert tree_state(swept.home) == before
    assert list(tmp_path.iterdir()) == []


INJECTIONS = ["x' OR '1'='1", "'); DROP TABLE runs; --", '" OR ""="', "rel' --", "%", "*"]


@pytest.mark.integration
@pytest.mark.parametrize("value", INJECTIONS)
def test_every_filter_is_a_bound_parameter(swept: Swept, value: str) -> None:
    """A filter value is data, never SQL: it matches nothing, breaks nothing, changes nothing."""
    from storage.catalogue import Catalogue
    from storage.predictions import PredictionStore

    before = tree_state(swept.home)
    with Catalogue(swept.paths.catalogue) as cat:
        for column in ("arch", "dataset", "mode", "status", "sweep", "run_id"):
            assert cat.runs(**{column: value}).empty, column
            assert cat.runs(**{column: [value, "nothing"]}).empty, column
        assert cat.exits(sweep=value).empty and cat.exits(split=value).empty
        assert cat.overthinking(arch=value).empty
        assert cat.best_early_exit(max_accuracy_drop=0.5, dataset=value).empty
        assert cat.best_early_exit(cost_budget=0.5, mode=value, per_run=True).empty
        assert len(cat.runs(sweep="rel")) == 2  # still there
    store = PredictionStore(swept.paths.predictions)
    for engine in ("pyarrow", "duckdb"):
        assert store.per_exit_accuracy(engine=engine, run_id=value).empty
        assert store.per_exit_accuracy(engine=engine, arch=[value, ARCH], split=value).empty
    assert store.query(mode=value).num_rows == 0
    for args in (["catalogue", "runs", "--arch", value], ["catalogue", "exits", "--sweep", value]):
        # --allow-empty: without it a value the catalogue does not hold is refused (exit 2)
        result = cli([*args, "--home", str(swept.home), "--format", "json", "--allow-empty"])
        assert result.exit_code == 0 and json.loads(result.stdout) == [], result.stderr
    assert tree_state(swept.home) == before


class _Trap:
    """Unpickling this opens (creates) a file: the side effect a malicious checkpoint wants."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


@pytest.mark.integration
@pytest.mark.parametrize("target", ["model.pt", "state.pt"])
def test_checkpoint_loading_never_unpickles_code(swept: Swept, tmp_path: Path, target: str) -> None:
    import torch

    from sdn.errors import CheckpointError
    from sdn.training import Trainer
    from workflows import layout
    from workflows.trainable import _splits_for

    source = layout.final_dir(swept.paths.tune, "rel", swept.run_id("sdn"))
    ckpt = tmp_path / "checkpoint"
    shutil.copytree(source, ckpt)
    marker = tmp_path / "pwned"
    state = torch.load(ckpt / target, weights_only=True)
    state["trap"] = _Trap(marker)
    torch.save(state, ckpt / target)
    config = json.loads((source / "result.json").read_text())["config"]
    splits = _splits_for({"dataset": "digits"}, config)
    with pytest.raises(CheckpointError, match=f"{ckpt / target} holds objects other than tensors"):
        Trainer.restore(ckpt, splits)
    assert not marker.exists()


def test_every_load_of_stored_bytes_refuses_code() -> None:
    """``torch.load`` always with ``weights_only=True``; no pickle, joblib or unsafe YAML loads."""
    import ast

    unsafe = {"pickle.load", "pickle.loads", "cloudpickle.load", "joblib.load", "yaml.load"}
    unsafe |= {"yaml.unsafe_load", "yaml.full_load", "torch.serialization.add_safe_globals"}
    files = [p for d in ("sdn", "storage", "workflows") for p in sorted((REPO / d).rglob("*.py"))]
    offenders, torch_loads = [], 0
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            where = f"{path.relative_to(REPO)}:{node.lineno} {name}"
            if name == "torch.load":
                torch_loads += 1
                if not any(
                    k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value
                    for k in node.keywords
                ):
                    offenders.append(where)
            elif name == "yaml.load" and _safe_yaml_loader(path, node):
                continue
            elif name in unsafe:
                offenders.append(where)
    assert torch_loads >= 3 and offenders == []


def _safe_yaml_loader(path: Path, call: Any) -> bool:
    """Whether a ``yaml.load`` call names a ``Loader`` that is a SafeLoader (no Python tags)."""
    import ast
    import importlib

    import yaml

    loader = next((k.value for k in call.keywords if k.arg == "Loader"), None)
    if not isinstance(loader, ast.Name):
        return False
    module = importlib.import_module(".".join(path.relative_to(REPO).with_suffix("").parts))
    cls = getattr(module, loader.id, None)
    return isinstance(cls, type) and issubclass(cls, yaml.SafeLoader)


def test_local_ray_opens_no_dashboard_and_keeps_to_its_temp_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What ``connect_ray`` asks of a local Ray: no dashboard (no HTTP server at all), its own temp
    folder, every listener on loopback, and token authentication on with a token of its own
    (``tests/test_local_ray_security.py`` checks the real sockets and the token's effect)."""
    import ray

    from workflows.sweep import connect_ray

    asked: dict[str, Any] = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: asked.update(kwargs))
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):  # fmt: skip
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SDN_RAY_TEMP_DIR", "/tmp/sdnray-test")
    connect_ray(None, {"X": "1"}, token_dir=tmp_path / "ray")
    assert asked["address"] is None and asked["include_dashboard"] is False
    assert asked["_temp_dir"] == "/tmp/sdnray-test"
    assert asked["runtime_env"] == {"env_vars": {"X": "1"}}
    assert "_system_config" not in asked and "dashboard_host" not in asked
    assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"  # loopback node address
    assert os.environ["RAY_AUTH_MODE"] == "token"
    token = Path(os.environ["RAY_AUTH_TOKEN_PATH"])
    assert token == tmp_path / "ray" / "auth_token" and (token.stat().st_mode & 0o777) == 0o600
    # A setting the user made wins (the test suite's own clusters run without auth).
    asked.clear()
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    connect_ray(None, {}, token_dir=tmp_path / "other")
    assert os.environ["RAY_AUTH_MODE"] == "disabled" and not (tmp_path / "other").exists()
    # Joining a cluster changes nothing about it.
    for key in ("RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
        monkeypatch.delenv(key)
    monkeypatch.setattr("workflows.sweep._check_tcp", lambda address: None)
    connect_ray("10.0.0.1:6379", {}, token_dir=tmp_path / "third")
    assert "RAY_AUTH_MODE" not in os.environ
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ


def _commands(text: str, verb: str) -> list[str]:
    """Lines of ``text`` that run ``verb`` with options (shell continuations and YAML folds
    joined); prose that merely names the command has no ``-option`` after it."""
    import re

    joined = re.sub(r"\\\n\s*|>-\n\s*|\n\s{4,}(?=-)", " ", text)
    pattern = re.compile(re.escape(verb) + r"\s+-")
    return [line for line in joined.splitlines() if pattern.search(line)]


def test_docs_keep_dashboard_and_mlflow_on_loopback_and_explain_token_auth() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    cluster_yaml = (REPO / "ray_cluster.yaml").read_text(encoding="utf-8")
    texts = {
        "README.md": readme,
        "ray_cluster.yaml": cluster_yaml,
        "docs/cluster.md": (REPO / "docs" / "cluster.md").read_text(encoding="utf-8"),
        **{f"scripts/{p.name}": p.read_text() for p in (REPO / "scripts").glob("*.sh")},
    }
    mlflow_servers = 0
    for name, text in texts.items():
        for verb in ("mlflow server", "mlflow ui"):
            for line in _commands(text, verb):
                mlflow_servers += 1
                assert "--host 127.0.0.1" in line, f"{name}: {line.strip()}"
        for line in _commands(text, "ray start --head"):
            assert "--dashboard-host=127.0.0.1" in line, f"{name}: {line.strip()}"
    assert mlflow_servers >= 2
    for name in ("README.md", "ray_cluster.yaml"):
        assert "0.0.0.0" not in texts[name], name
    # The README explains Ray's token authentication, where a cluster's token comes from, and
    # that a local sweep keeps Ray's default (on).
    for words in ("RAY_AUTH_MODE=token", "ray get-auth-token --generate", "token authentication"):
        assert words in readme, words
    assert "export RAY_AUTH_MODE=token" in cluster_yaml
    assert '"~/.ray/auth_token": "~/.ray/auth_token"' in cluster_yaml


REAL_ROWS = [
    ("bad-yaml", ["sweep", "launch", "{yaml:unknown-key}", "--no-progress"], 2, ["trainig"]),
    ("sql-drop", ["catalogue", "sql", "DROP TABLE runs", "--home", "{home}"], 2, ["only reads"]),
    ("unreachable-ray", ["sweep", "launch", "{good}", "--address", "127.0.0.1:9"], 3, [":9"]),
]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize(
    ("args", "code", "needles"), [r[1:] for r in REAL_ROWS], ids=[r[0] for r in REAL_ROWS]
)
def test_bad_input_through_the_real_sdn_command(
    swept: Swept,
    cli_inputs: dict[str, str],
    tmp_path: Path,
    args: list[str],
    code: int,
    needles: list[str],
) -> None:
    """The installed ``sdn`` entry point, as a user runs it (the table above runs in process)."""
    roots = (swept.home, Path(cli_inputs["yamldir"]), tmp_path)
    before = tree_state(*roots)
    run = subprocess.run(
        [str(SDN), *(_fill(a, cli_inputs) for a in args)],
        env=sdn_env(tmp_path / "default home"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_one_line_error(run.returncode, run.stderr, code, [_fill(n, cli_inputs) for n in needles])
    assert run.stdout == ""
    assert tree_state(*roots) == before
