"""The registry through a real ``mlflow server`` on 127.0.0.1, and a server that is not there.

The server runs as a subprocess with a SQLite backend and served artifacts in a temporary
directory; a module fixture starts it once and always terminates it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from sdn.models import SDN, build_sdn, model_outputs
from storage.errors import StorageError

pytestmark = pytest.mark.integration

TAGS = {"architecture": "resnet56", "dataset": "digits", "mode": "sdn", "seed": 3, "sweep": "srv"}
NAME = "sdn-resnet56-digits-sdn"
# MLflow 3.17's server also starts a job runner with seven huey consumer processes (GenAI
# evaluation jobs); the registry needs none of them, and on 2 cores they triple start-up time.
SERVER_ENV = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
START_TIMEOUT_S = 150.0  # generous: a loaded 2-core CI box took 70 s


def free_port() -> int:
    """A port nobody listens on right now (bound, read, released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow server not healthy after {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = root / "server.log"
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
        "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts",
    ]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(
            command,
            cwd=root,
            env=SERVER_ENV,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_healthy(url, proc, log)
        yield SimpleNamespace(url=url, root=root)
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen) -> None:
    """End the server and its uvicorn child: the process group this fixture created.

    SIGTERM first (clean shutdown), SIGKILL for anything still in the group after a grace
    period. The group id stays reserved while any member lives, so this never hits others.
    """
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=20)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)  # anyone left in the group?
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def test_log_register_and_load_through_server(server) -> None:
    from storage.registry import Registry

    registry = Registry(server.url)
    experiment = registry.client.create_experiment("server-test")
    run = registry.client.create_run(experiment)
    torch.manual_seed(0)
    model = build_sdn("resnet56", num_classes=10, image_size=32, width=0.125).eval()

    ref = registry.log_model(
        model, run_id=run.info.run_id, tags=TAGS, aliases=("latest", "champion")
    )
    assert (ref.name, ref.version, ref.run_id) == (NAME, 1, run.info.run_id)
    assert registry.log_model(model, run_id=run.info.run_id, tags=TAGS) == ref  # idempotent
    for text in (f"{NAME}@latest", f"{NAME}@champion", f"{NAME}/1", run.info.run_id):
        assert registry.resolve(text) == ref, text

    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = model_outputs(model, x)
        module = registry.load_module(f"{NAME}@champion")
        assert isinstance(module, SDN)
        for got, expected in zip(model_outputs(module, x), want, strict=True):
            assert torch.equal(got, expected)
        exported = registry.load_exported(ref)
        torch.testing.assert_close(exported(x), torch.stack(want, dim=1), rtol=0, atol=1e-5)

    # The artifacts went through the server into its --artifacts-destination.
    stored = {p.name for p in (server.root / "artifacts").rglob("*") if p.is_file()}
    assert {"state_dict.pt", "model_config.json", "model.pt2", "MLmodel"} <= stored
    with pytest.raises(StorageError, match="unknown registered model 'sdn-x-digits-sdn'"):
        registry.resolve("sdn-x-digits-sdn@latest")


def test_unreachable_server_fails_fast() -> None:
    from storage.mlflow_setup import ensure_tracking_store
    from storage.registry import Registry

    url = f"http://127.0.0.1:{free_port()}"  # closed: nothing listens there
    started = time.monotonic()
    with pytest.raises(StorageError) as err:
        Registry(url)
    assert time.monotonic() - started < 10
    message = str(err.value)
    assert url in message and "unreachable" in message and "\n" not in message
    with pytest.raises(StorageError, match="unreachable after 1 tries"):
        ensure_tracking_store(url, attempts=1)
