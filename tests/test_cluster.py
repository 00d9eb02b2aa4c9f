"""A tiny sweep on a real two-node Ray cluster on this machine, with MLflow behind a real
``mlflow server``; then the cluster's faults (issue 4's job-submit check, issue 6 scenarios 3
and 6).

One module fixture starts an ``mlflow server`` (SQLite backend and served artifacts in tmp) and
two Ray nodes (``ray start --head`` and ``ray start --address``, both with ``--block``, each in
its own session and ``--temp-dir`` under tmp). Teardown ends exactly the process trees it started,
found through /proc: never ``ray stop``, which ends every Ray process on the machine, other tests'
included. Each node has one CPU, so a sweep with two concurrent trials puts one on each node.

The tests run in file order; the node-death test is last because it kills the worker node (a
later test that needs two nodes starts a new one).

* ``ray job submit`` of the tiny sweep (1 architecture x 3 modes): every cell trained and
  analysed, each model registered once in the server's registry and loadable, Parquet rows =
  samples x exits, and no ``mlflow.db`` anywhere but the server's own backend. Needs Ray's
  dashboard (the ``ray[default]`` extra); skipped, saying so, without it.
* The MLflow server SIGKILLed mid-sweep: the trials fail cleanly after bounded retries and the
  sweep ends with exit 3 and one line naming the server and the resume command; while it is
  down, a launch and a resume fail fast the same way and write nothing; after a restart on the
  same backend store ``sdn sweep resume`` completes the sweep with nothing recorded twice.
* The worker node SIGKILLed mid-sweep (every process of it at once): its trial is retried on
  the head from its checkpoint and the sweep completes with one MLflow run and one registered
  version per cell.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.cluster,
    pytest.mark.timeout(900),
]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: ray, mlflow and sdn live beside python
RAY, MLFLOW, SDN = BIN / "ray", BIN / "mlflow", BIN / "sdn"
START_TIMEOUT_S = 300.0  # a loaded 2-core box took 70 s to start an mlflow server
SWEEP_TIMEOUT_S = 420.0
ARCH, EXITS = "mobilenet", {"cnn": 1, "ic_only": 6, "sdn": 6}

SWEEP = """
name: {name}
grid: {{architectures: [{arch}], datasets: [digits], modes: [cnn, ic_only, sdn], seeds: [0]}}
training: {{epochs: {epochs}, batch_size: 32, width: 0.125, train_subset: 96, val_size: 40, milestones: []}}
resources: {{cpus_per_trial: 1, max_concurrent_trials: 2}}
checkpoint: {{every_epochs: 1, max_failures: {max_failures}}}
analysis: {{batch_size: 128, max_accuracy_drops: [0.01], cost_budgets: [0.5]}}
storage: {{home: "{home}", mlflow_tracking_uri: "{mlflow}"}}
"""


# --- processes, through /proc (no psutil here) ----------------------------------------------------


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every live process."""
    table: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()  # the command name may hold spaces
        table[int(entry.name)] = (int(fields[1]), int(fields[2]))
    return table


def process_tree(root: int) -> list[int]:
    """``root``, its process group, and all their descendants.

    Ray's worker processes get their own process groups but stay children of their node's
    raylet, so a node's processes are the tree under its ``ray start``, not one group.
    """
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    stack = [root, *(pid for pid, (_, pgid) in table.items() if pgid == root)]
    seen: list[int] = []
    while stack:
        pid = stack.pop()
        if pid in seen or pid not in table:
            continue
        seen.append(pid)
        stack.extend(children.get(pid, []))
    return seen


def cmdline(pid: int) -> str:
    """What ``ps`` shows: Ray workers rewrite theirs to ``ray::<what they run>``."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def end_tree(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the tree under ``proc``, SIGKILL what is left after ``grace_s``, reap ``proc``."""
    pids = process_tree(proc.pid)
    signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.2)
    signal_all([*pids, *process_tree(proc.pid)], signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def free_port() -> int:
    """A port nobody listens on right now (bound, read, released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(what: str, check: Callable[[], bool], timeout_s: float, poll_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(poll_s)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return f"({path} unreadable)"


def base_env(**extra: str) -> dict[str, str]:
    """This environment without anything that points at other Ray or MLflow instances or other
    state, with the settings every test process needs (see docs: stack notes)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
        and not k.startswith("SDN_")
    }
    env.update(
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        MLFLOW_DISABLE_TELEMETRY="true",
        # MLflow 3.17's server otherwise starts seven job-runner processes nobody here needs.
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def dashboard_available() -> bool:
    """Whether this Ray install can run its dashboard, which ``ray job submit`` talks to (the
    ``ray[default]`` extra: aiohttp_cors, opencensus, prometheus_client, grpcio, ...)."""
    try:
        import ray.dashboard.optional_deps  # noqa: F401
    except ImportError:
        return False
    return True


# --- the services -------------------------------------------------------------------------------


@dataclass
class Node:
    """One ``ray start --block`` and the tree of Ray processes under it."""

    name: str
    proc: subprocess.Popen
    temp_dir: Path
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> list[int]:
        """SIGKILL every process of the node at once, as a machine dying would."""
        pids = process_tree(self.proc.pid)
        signal_all(pids, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        return pids


@dataclass
class Services:
    root: Path
    gcs_address: str
    gcs_port: int
    dashboard_url: str | None
    mlflow_url: str
    mlflow_port: int
    head: Node
    worker: Node
    ray_root: Path  # the nodes' --temp-dir's (see short_ray_root)
    mlflow: subprocess.Popen | None = None
    workers_started: int = 1

    # -- MLflow
    def start_mlflow(self) -> None:
        """``mlflow server`` on the fixed port, always on the same backend store and artifacts
        (a restart must see what was logged before it went down)."""
        assert self.mlflow is None or self.mlflow.poll() is not None
        store = self.root / "mlflow"
        store.mkdir(exist_ok=True)
        log = store / "server.log"
        command = [
            str(MLFLOW), "server",
            "--host", "127.0.0.1", "--port", str(self.mlflow_port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{store}/mlflow.db",
            "--artifacts-destination", str(store / "artifacts"), "--serve-artifacts",
        ]  # fmt: skip
        with log.open("a") as out:
            self.mlflow = subprocess.Popen(
                command,
                cwd=store,
                env=base_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def mlflow_healthy(self) -> bool:
        if self.mlflow is None or self.mlflow.poll() is not None:
            log = self.root / "mlflow" / "server.log"
            pytest.fail(f"mlflow server is not running:\n{tail(log)}")
        try:
            with urllib.request.urlopen(f"{self.mlflow_url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def wait_mlflow(self) -> None:
        wait_for("the mlflow server's /health", self.mlflow_healthy, START_TIMEOUT_S)

    def stop_mlflow(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """End the server and its uvicorn worker; SIGKILL is the crash, SIGTERM the clean stop."""
        if self.mlflow is None:
            return
        if sig == signal.SIGKILL:
            signal_all(process_tree(self.mlflow.pid), signal.SIGKILL)
        end_tree(self.mlflow, grace_s=10.0)

    # -- Ray
    def status_text(self) -> str:
        """``ray status`` of this cluster (needs no dashboard); empty if it does not answer."""
        try:
            return subprocess.run(
                [str(RAY), "status", "--address", self.gcs_address],
                env=base_env(),
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout
        except subprocess.TimeoutExpired:
            return ""

    def alive_nodes(self) -> int:
        """Nodes the cluster counts as alive, from ``ray status``."""
        out = self.status_text()
        active = out.partition("Active:")[2].partition("Pending:")[0]
        return sum(int(n) for n in re.findall(r"^\s*(\d+) node_[0-9a-f]+", active, re.M))

    def ensure_worker(self) -> None:
        """Start a fresh worker node if an earlier test killed it, and wait for two nodes."""
        if not self.worker.alive():
            self.workers_started += 1
            self.worker = start_worker(
                self.ray_root, self.root, self.gcs_port, self.workers_started
            )

        def two_nodes() -> bool:
            if not self.worker.alive():
                pytest.fail(
                    f"ray worker node exited with {self.worker.proc.returncode}:\n"
                    f"{tail(self.worker.log)}"
                )
            return self.alive_nodes() == 2

        try:
            wait_for("two alive Ray nodes", two_nodes, START_TIMEOUT_S, 1.0)
        except pytest.fail.Exception as exc:
            raylet = self.worker.temp_dir / "session_latest" / "logs" / "raylet.out"
            pytest.fail(
                f"{exc}\n--- {self.worker.log}:\n{tail(self.worker.log)}\n--- {raylet}:\n"
                f"{tail(raylet)}\n--- ray status:\n{self.status_text()}"
            )

    def mlflow_dbs(self) -> list[Path]:
        """Every ``mlflow.db`` under this module's tmp tree except the server's backend store:
        node temp dirs (job working dirs, worker cwd's), sweep homes, driver cwd's."""
        backend = self.root / "mlflow" / "mlflow.db"
        found = [*self.root.rglob("mlflow.db"), *self.ray_root.rglob("mlflow.db")]
        return sorted(p for p in found if p != backend)


def short_ray_root() -> Path:
    """A folder for the nodes' Ray temp dirs with a short path.

    Ray puts AF_UNIX sockets at ``<temp-dir>/session_<date>_<pid>/sockets/dash_MetricsHead``, and
    such a path may not exceed 107 bytes: under pytest's ``/tmp/pytest-of-<user>/pytest-<N>/``
    tree it did (N >= 10), the head's dashboard failed and the worker never joined.
    """
    return Path(tempfile.mkdtemp(prefix="sdn-ray-"))


def start_head(ray_root: Path, root: Path, port: int, dashboard_port: int, dashboard: bool) -> Node:
    temp_dir, log = ray_root / "head", root / "head.log"
    command = [
        str(RAY), "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1", "--num-gpus=0",
        f"--temp-dir={temp_dir}",
        # The fixed default (52365) would collide with any other Ray on this machine.
        f"--dashboard-agent-listen-port={free_port()}",
        f"--include-dashboard={'true' if dashboard else 'false'}",
    ]  # fmt: skip
    if importlib.util.find_spec("grpc") is not None:
        # With grpcio (ray[client]) the head also serves Ray Client, on 10001 unless told.
        command.append(f"--ray-client-server-port={free_port()}")
    if dashboard:
        command += ["--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}"]
    # A dead node is declared dead after about 5 s instead of 15-30 s (GCS health checks).
    env = base_env(
        RAY_health_check_period_ms="1000",
        RAY_health_check_timeout_ms="2000",
        RAY_health_check_failure_threshold="5",
    )
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Node("head", proc, temp_dir, log)


def start_worker(ray_root: Path, root: Path, gcs_port: int, index: int) -> Node:
    temp_dir, log = ray_root / f"worker-{index}", root / f"worker-{index}.log"
    command = [
        str(RAY), "start", "--block", "--disable-usage-stats",
        f"--address=127.0.0.1:{gcs_port}", "--node-ip-address=127.0.0.1",
        "--num-cpus=1", "--num-gpus=0", f"--temp-dir={temp_dir}",
        f"--dashboard-agent-listen-port={free_port()}",
    ]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(
            command,
            cwd=root,
            env=base_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Node(f"worker-{index}", proc, temp_dir, log)


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    root = tmp_path_factory.mktemp("cluster")
    gcs_port, dashboard_port, mlflow_port = free_port(), free_port(), free_port()
    dashboard = dashboard_available()
    ray_root = short_ray_root()
    head = start_head(ray_root, root, gcs_port, dashboard_port, dashboard)
    svc = Services(
        root=root,
        gcs_address=f"127.0.0.1:{gcs_port}",
        gcs_port=gcs_port,
        dashboard_url=f"http://127.0.0.1:{dashboard_port}" if dashboard else None,
        mlflow_url=f"http://127.0.0.1:{mlflow_port}",
        mlflow_port=mlflow_port,
        head=head,
        worker=head,  # replaced below once the head's GCS listens
        ray_root=ray_root,
    )
    svc.start_mlflow()  # starts in parallel with the head
    try:

        def head_up() -> bool:
            if not head.alive():
                pytest.fail(f"ray head exited with {head.proc.returncode}:\n{tail(head.log)}")
            return _port_open(gcs_port)

        wait_for("the Ray head's GCS port", head_up, START_TIMEOUT_S)
        svc.worker = start_worker(ray_root, root, gcs_port, 1)
        svc.wait_mlflow()
        svc.ensure_worker()
        if dashboard:
            wait_for("the Ray dashboard", lambda: _port_open(dashboard_port), START_TIMEOUT_S)
        yield svc
    finally:
        if svc.worker is not head:
            end_tree(svc.worker.proc)
        end_tree(head.proc)
        svc.stop_mlflow()
        shutil.rmtree(ray_root, ignore_errors=True)


# --- sweeps ----------------------------------------------------------------------------------------


def write_sweep(
    path: Path, name: str, home: Path, mlflow_url: str, *, epochs: int = 1, max_failures: int = 1
) -> Path:
    path.write_text(
        SWEEP.format(
            name=name,
            arch=ARCH,
            epochs=epochs,
            max_failures=max_failures,
            home=home,
            mlflow=mlflow_url,
        ),
        encoding="utf-8",
    )
    return path


def spec_of(path: Path):
    from workflows.spec import parse_sweep

    return parse_sweep(path.read_text(encoding="utf-8"), path.name)


@dataclass
class Sdn:
    """One ``sdn`` command in a subprocess, with its output in files."""

    proc: subprocess.Popen
    out: Path
    err: Path

    def wait(self, timeout_s: float = SWEEP_TIMEOUT_S) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            end_tree(self.proc)
            pytest.fail(
                f"sdn did not finish in {timeout_s:.0f} s\n{tail(self.out)}\n{tail(self.err)}"
            )

    @property
    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def report(self) -> str:
        return f"exit {self.proc.returncode}\nstdout:\n{tail(self.out)}\nstderr:\n{tail(self.err)}"


def sdn(args: list[str], cwd: Path, **env: str) -> Sdn:
    cwd.mkdir(parents=True, exist_ok=True)
    n = len(list(cwd.glob("sdn-*.out")))
    out, err = cwd / f"sdn-{n}.out", cwd / f"sdn-{n}.err"
    with out.open("w") as o, err.open("w") as e:
        proc = subprocess.Popen(
            [str(SDN), *args],
            cwd=cwd,
            env=base_env(**env),
            stdout=o,
            stderr=e,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Sdn(proc, out, err)


def statuses(catalogue, sweep: str):
    """The catalogue's (run_id, status, error) rows of a sweep, in run_id order."""
    runs = catalogue.runs(sweep=sweep)[["run_id", "status", "error"]]
    return runs.sort_values("run_id", ignore_index=True)


def trial_events(pid_dir: Path) -> dict[str, list[tuple[int, str]]]:
    """run_id -> [(pid, event), ...] written by the trainable's ``SDN_TEST_PID_DIR`` hook
    (``start epoch=N`` when an attempt begins, ``checkpointed epoch=N`` after each save)."""
    events: dict[str, list[tuple[int, str]]] = {}
    for log in pid_dir.glob("*.log"):
        for line in log.read_text(encoding="utf-8").splitlines():
            pid, _, what = line.partition(" ")
            if pid.isdigit():
                events.setdefault(log.name.removesuffix(".log"), []).append((int(pid), what))
    return events


def any_checkpoint(spec) -> bool:
    """Whether some cell finished an epoch (its checkpoint exists): training is under way."""
    from workflows import layout

    tune = spec.storage_paths().tune
    return any(
        (layout.checkpoint_dir(tune, spec.name, c.run_id) / "meta.json").exists()
        for c in spec.cells()
    )


def assert_sweep_complete(spec, mlflow_url: str, epochs: int) -> None:
    """Every cell trained, analysed and catalogued; one MLflow run per cell with each epoch's
    metrics logged once; one registered version per cell, loadable; Parquet = samples x exits."""
    import torch
    from mlflow import MlflowClient

    from sdn.data import load_dataset
    from storage.catalogue import Catalogue
    from storage.mlflow_layout import KIND_TAG, RUN_ID_TAG, experiment_name
    from storage.predictions import PredictionStore
    from storage.registry import Registry

    paths = spec.storage_paths()
    cells = {c.run_id: c for c in spec.cells()}
    with Catalogue(paths.catalogue) as cat:
        runs = cat.runs(sweep=spec.name)
    assert sorted(runs["run_id"]) == sorted(cells)
    assert set(runs["status"]) == {"done"}, runs[["run_id", "status", "error"]].to_string()
    assert runs["mlflow_run_id"].notna().all() and runs["model_version"].notna().all()
    assert all(Path(p).is_dir() for p in runs["parquet_path"])

    splits = load_dataset("digits", val_size=40, train_subset=96)
    store = PredictionStore(paths.predictions)
    for run_id, cell in cells.items():
        for split, n in (("val", len(splits.val)), ("test", len(splits.test))):
            out = store.read_outputs(run_id, split)
            assert (out.num_samples, out.num_exits) == (n, EXITS[cell.mode]), (run_id, split)

    client = MlflowClient(tracking_uri=mlflow_url)
    experiment = client.get_experiment_by_name(experiment_name(spec.name))
    assert experiment is not None
    mlflow_runs = client.search_runs([experiment.experiment_id], max_results=100)
    kinds = sorted(r.data.tags.get(KIND_TAG, "?") for r in mlflow_runs)
    by_cell = {r.data.tags[RUN_ID_TAG]: r for r in mlflow_runs if r.data.tags.get(RUN_ID_TAG)}
    assert len(mlflow_runs) == 1 + len(cells), kinds  # the sweep's parent run + one per cell
    assert set(by_cell) == set(cells)
    for run_id, run in by_cell.items():
        assert run.info.status == "FINISHED", (run_id, run.info.status)
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
        assert sorted(steps) == list(range(1, epochs + 1)), (run_id, steps)
    assert set(runs["mlflow_run_id"]) == {r.info.run_id for r in by_cell.values()}

    registry = Registry(mlflow_url)
    models = registry.list_models()
    for run_id, run in by_cell.items():
        versions = models[models["run_id"] == run.info.run_id]
        assert len(versions) == 1, (run_id, versions.to_string())
    sdn_run = next(r for r, c in cells.items() if c.mode == "sdn")
    version = models[models["run_id"] == by_cell[sdn_run].info.run_id].iloc[0]
    model = registry.load_module(f"{version['name']}/{int(version['version'])}")
    preds, exit_idx = model.early_exit(torch.randn(4, 3, 32, 32), threshold=0.5)
    assert preds.shape == (4,) and int(exit_idx.max()) < EXITS["sdn"]


# --- a. issue 4: `ray job submit` to the two-node cluster ----------------------------------------


def test_job_submit_runs_a_sweep_on_two_nodes(services: Services, tmp_path: Path) -> None:
    if services.dashboard_url is None:
        pytest.skip(
            "`ray job submit` talks to the Ray dashboard, which this Ray install cannot start "
            "(ray.dashboard.optional_deps does not import: install the ray[default] extra)"
        )
    services.ensure_worker()
    repo_db_before = (REPO / "mlflow.db").exists()
    # What `ray job submit --working-dir .` uploads from a clone: the code, not the venv or state.
    workdir = tmp_path / "job"
    shutil.copytree(
        REPO,
        workdir,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "sdn-home", "bench", "tests", "docs", "__pycache__", "*.egg-info",
            ".pytest_cache", ".ruff_cache", "mlflow.db", "mlruns", "mlartifacts",
        ),
    )  # fmt: skip
    home = tmp_path / "home"
    spec = spec_of(write_sweep(workdir / "tiny.yaml", "jobsweep", home, services.mlflow_url))
    submission = f"sdn-cluster-{os.getpid()}"
    log = tmp_path / "job.log"
    with log.open("w") as out:
        submit = subprocess.run(
            [
                str(RAY), "job", "submit", "--address", services.dashboard_url,
                "--submission-id", submission, "--working-dir", str(workdir), "--",
                # the job runs in the uploaded copy: name the venv's sdn, a bare `sdn` or
                # `python` on the head's PATH need not be this project's
                str(SDN), "sweep", "launch", "tiny.yaml", "--no-progress",
            ],
            cwd=tmp_path,
            env=base_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=SWEEP_TIMEOUT_S,
        )  # fmt: skip
    status = subprocess.run(
        [str(RAY), "job", "status", "--address", services.dashboard_url, submission],
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert submit.returncode == 0 and "succeeded" in status.stdout.lower(), (
        f"{status.stdout}\n{status.stderr}\n{tail(log, 6000)}"
    )
    assert "jobsweep" in log.read_text()  # the driver's final summary table reached the log

    assert_sweep_complete(spec, services.mlflow_url, epochs=1)
    # MLflow was the server: no worker, driver or job directory made a local store.
    assert services.mlflow_dbs() == []
    assert not list(home.rglob("mlflow.db")) and not list(workdir.rglob("mlflow.db"))
    assert (REPO / "mlflow.db").exists() == repo_db_before


# --- c. issue 6 scenario 6: the MLflow server dies mid-sweep, is down at launch, comes back -------


def assert_unreachable_line(run: Sdn, url: str) -> str:
    """Exit 3 ("a service could not be reached") and, last on stderr, one ``error:`` line that
    names the server; returns that line."""
    assert run.proc.returncode == 3, run.report()
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and url in lines[-1], run.report()
    return lines[-1]


def test_mlflow_server_down_mid_sweep_and_at_launch_then_resume_completes(
    services: Services, tmp_path: Path
) -> None:
    from storage.catalogue import Catalogue

    home, cwd = tmp_path / "home", tmp_path / "cwd"
    epochs = 2
    sweep = write_sweep(
        tmp_path / "crash.yaml", "mlflowcrash", home, services.mlflow_url, epochs=epochs
    )
    spec = spec_of(sweep)

    # 1. The server is SIGKILLed while trials train (slow epochs, forwarded to the trials by the
    #    driver, keep them running long enough).
    run = sdn(
        ["sweep", "launch", str(sweep), "--address", services.gcs_address],
        cwd,
        SDN_TEST_SLOW_EPOCH_S="3",
    )
    try:

        def training() -> bool:
            if run.proc.poll() is not None:
                pytest.fail(f"the sweep ended before MLflow was killed:\n{run.report()}")
            return any_checkpoint(spec)

        wait_for("a trial to finish its first epoch", training, SWEEP_TIMEOUT_S)
        services.stop_mlflow(signal.SIGKILL)
        killed = time.monotonic()
        run.wait()
        elapsed = time.monotonic() - killed
        # Bounded retries: MLflow's own client retries each request for about 4 minutes.
        assert elapsed < 240, f"the sweep took {elapsed:.0f} s to give up on MLflow"
        assert "sdn sweep resume mlflowcrash" in assert_unreachable_line(run, services.mlflow_url)
        # The trials that needed MLflow failed cleanly, with its error in the catalogue.
        with Catalogue(spec.storage_paths().catalogue) as cat:
            before = statuses(cat, spec.name)
        failed = before[before["status"] == "failed"]
        assert not failed.empty, before.to_string()
        assert any(services.mlflow_url in str(e) for e in failed["error"]), before.to_string()
        assert services.mlflow_dbs() == []  # never a silent fallback to a local store

        # 2. While it is down, a new launch and a resume fail fast, on one line, writing nothing.
        other_home = tmp_path / "other-home"
        other = write_sweep(tmp_path / "down.yaml", "mlflowdown", other_home, services.mlflow_url)
        for args in (
            ["sweep", "launch", str(other), "--address", services.gcs_address],
            [
                "sweep",
                "resume",
                "mlflowcrash",
                "--home",
                str(home),
                "--address",
                services.gcs_address,
            ],
        ):
            started = time.monotonic()
            attempt = sdn(args, cwd)
            attempt.wait(timeout_s=180)
            took = time.monotonic() - started
            assert_unreachable_line(attempt, services.mlflow_url)
            assert "Traceback" not in attempt.stdout + attempt.stderr, attempt.report()
            assert took < 90, f"{args[1]} took {took:.0f} s to report an unreachable MLflow"
        assert not other_home.exists(), sorted(other_home.rglob("*"))
        with Catalogue(spec.storage_paths().catalogue) as cat:
            after = statuses(cat, spec.name)
        assert after.equals(before)
        assert {p.name for p in cwd.iterdir()} <= {
            f"sdn-{i}.{x}" for i in range(3) for x in ("out", "err")
        }
        assert services.mlflow_dbs() == []
    finally:
        if services.mlflow is None or services.mlflow.poll() is not None:
            services.start_mlflow()

    # 3. Back on the same backend store, a resume completes the sweep, recording nothing twice.
    services.wait_mlflow()
    resume = sdn(
        ["sweep", "resume", "mlflowcrash", "--home", str(home), "--address", services.gcs_address],
        cwd,
    )
    assert resume.wait() == 0, resume.report()
    assert_sweep_complete(spec, services.mlflow_url, epochs=epochs)
    assert services.mlflow_dbs() == []


# --- b. issue 6 scenario 3: a node dies mid-sweep (last: it kills the worker node) ----------------


def test_worker_node_killed_mid_sweep_trials_finish_on_the_head(
    services: Services, tmp_path: Path
) -> None:
    services.ensure_worker()
    home, cwd, pid_dir = tmp_path / "home", tmp_path / "cwd", tmp_path / "pids"
    pid_dir.mkdir()
    epochs = 2
    sweep = write_sweep(
        tmp_path / "node.yaml", "nodedeath", home, services.mlflow_url, epochs=epochs
    )
    spec = spec_of(sweep)
    run = sdn(
        ["sweep", "launch", str(sweep), "--address", services.gcs_address],
        cwd,
        SDN_TEST_SLOW_EPOCH_S="4",
        SDN_TEST_PID_DIR=str(pid_dir),
    )
    worker = services.worker
    victim: dict[str, object] = {}

    def checkpointed_on_worker() -> bool:
        """A trial running in one of the worker node's processes has checkpointed an epoch."""
        if run.proc.poll() is not None:
            pytest.fail(f"the sweep ended before the node was killed:\n{run.report()}")
        on_worker = set(process_tree(worker.proc.pid))
        for run_id, events in trial_events(pid_dir).items():
            for pid, what in events:
                if pid in on_worker and what.startswith("checkpointed"):
                    victim.update(run_id=run_id, pid=pid)
                    return True
        return False

    wait_for("a trial on the worker node to checkpoint", checkpointed_on_worker, SWEEP_TIMEOUT_S)
    killed = worker.kill()
    assert victim["pid"] in killed
    assert run.wait() == 0, run.report()

    assert_sweep_complete(spec, services.mlflow_url, epochs=epochs)
    # The victim's cell ran again in a process that survived (on the head, the only node left),
    # from its checkpoint rather than from scratch.
    again = [(pid, what) for pid, what in trial_events(pid_dir)[str(victim["run_id"])]]
    again = [(pid, what) for pid, what in again if pid not in killed]
    assert any(what.startswith("start epoch=") and what != "start epoch=0" for _, what in again), (
        again
    )
    assert services.mlflow_dbs() == []
