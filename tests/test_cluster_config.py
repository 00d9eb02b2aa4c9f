"""``ray_cluster.yaml`` passes Ray's own cluster-config validation and keeps its promises:
a head that takes no trials, integer resources, the dashboard and MLflow on 127.0.0.1 only, Ray
token authentication on every node, and setup commands that install this project.

Validation runs what ``ray up`` runs before it contacts any cloud: ``prepare_config`` (merge with
the provider's defaults) then ``validate_config`` (the JSON schema in ``ray-schema.json`` plus
the node-type checks). Nothing is launched.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

CONFIG = Path(__file__).resolve().parents[1] / "ray_cluster.yaml"


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(CONFIG.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def prepared(raw: dict[str, Any]) -> dict[str, Any]:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


def _commands(config: dict[str, Any]) -> list[str]:
    keys = (
        "initialization_commands",
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    )
    return [cmd for key in keys for cmd in config.get(key) or []]


def test_ray_validates_the_config(prepared: dict[str, Any]) -> None:
    assert prepared["cluster_name"] == "sdn-workflows"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_ray_rejects_a_broken_copy(raw: dict[str, Any]) -> None:
    """The validation is real: a fractional resource (not an integer) is refused."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = copy.deepcopy(raw)
    broken["available_node_types"]["gpu"]["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_head_takes_no_trials_and_resources_are_integers(prepared: dict[str, Any]) -> None:
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert head["max_workers"] == 0
    workers = [t for name, t in types.items() if name != prepared["head_node_type"]]
    assert any(t["resources"].get("GPU", 0) >= 1 for t in workers)
    for node_type in types.values():
        assert all(isinstance(v, int) for v in node_type["resources"].values())
    assert all(t["max_workers"] >= t.get("min_workers", 0) for t in workers)


def test_dashboard_binds_loopback_only(prepared: dict[str, Any]) -> None:
    head_start = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in " ".join(_commands(prepared))
    assert "--dashboard-host" not in " ".join(prepared["worker_start_ray_commands"])


def test_mlflow_server_on_head_binds_loopback_only(prepared: dict[str, Any]) -> None:
    servers = [c for c in prepared["head_start_ray_commands"] if "mlflow server" in c]
    assert len(servers) == 1
    server = servers[0]
    assert re.search(r"--host[ =]127\.0\.0\.1\b", server)
    assert "--port 5000" in server
    assert "--backend-store-uri sqlite:////home/ubuntu/sdn-home/mlflow.db" in server
    assert "--artifacts-destination /mnt/sdn-shared/" in server
    # schema created once, before the server (and its workers) open the database
    upgrade = next(
        i for i, c in enumerate(prepared["head_start_ray_commands"]) if "db upgrade" in c
    )
    assert upgrade < prepared["head_start_ray_commands"].index(server)
    assert not any("mlflow server" in c for c in prepared["worker_start_ray_commands"])


def test_workers_reach_mlflow_through_a_forward_only_tunnel(prepared: dict[str, Any]) -> None:
    head_setup = " ".join(prepared["head_setup_commands"])
    assert 'restrict,port-forwarding,permitopen=\\"127.0.0.1:5000\\"' in head_setup
    tunnel = " ".join(prepared["worker_start_ray_commands"])
    assert "-L 127.0.0.1:5000:127.0.0.1:5000" in tunnel
    assert "~/.ssh/sdn_mlflow_tunnel" in prepared["cluster_synced_files"]


def test_token_auth_on_every_node(prepared: dict[str, Any]) -> None:
    setup = " ".join(prepared["setup_commands"])
    assert "export RAY_AUTH_MODE=token" in setup
    assert prepared["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in prepared[key] if "ray start" in c]
        assert starts and all("source ~/sdn-cluster.env" in c for c in starts)


def test_setup_installs_this_project_and_mounts_shared_storage(prepared: dict[str, Any]) -> None:
    setup = " ".join(prepared["setup_commands"])
    assert prepared["file_mounts"]["~/sdn-workflows"] == "."
    assert "pip install -e ~/sdn-workflows" in setup
    assert "/mnt/sdn-shared" in setup and "SDN_HOME=/mnt/sdn-shared/" in setup
    assert "SDN_CATALOGUE=/home/ubuntu/" in setup  # SQLite stays on the head's local disk
    assert "SDN_MLFLOW_TRACKING_URI=http://127.0.0.1:5000" in setup
    assert ".venv" in prepared["rsync_exclude"]  # never ship the local virtualenv
    for cmd in prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"]:
        if "ray start" in cmd or "ray stop" in cmd:
            assert "~/sdn-venv/bin/ray" in cmd  # the venv's Ray, so workers run the venv's Python


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_every_command_is_valid_shell(prepared: dict[str, Any]) -> None:
    for cmd in _commands(prepared):
        result = subprocess.run(
            ["bash", "-n", "-c", cmd], capture_output=True, text=True, timeout=10
        )
        assert result.returncode == 0, f"{cmd!r}: {result.stderr}"
