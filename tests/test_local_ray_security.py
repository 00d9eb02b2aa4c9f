"""A local sweep is not open to the network (issue 13).

A real ``sdn sweep launch`` runs the way ``scripts/quickstart.sh`` runs it: the same variables
(``RAY_USAGE_STATS_ENABLED=0``, ``MLFLOW_DISABLE_TELEMETRY=true``, ``OMP_WAIT_POLICY=PASSIVE``) and,
unlike the rest of the test suite, no ``RAY_AUTH_MODE``: Ray's token authentication is whatever the
product sets up. While a trial is training, every TCP socket in LISTEN state owned by the sweep's
processes (the driver, Ray's GCS, raylet, agents and workers, found through ``/proc``) must be on a
loopback address; the GCS must refuse a client without the token (shown with a real gRPC call) and
answer one with it; the token file must be readable by its owner only. The sweep then finishes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
from test_reliability import SdnProcess, ray_session_pids, sweep_text, wait_for


def listening_sockets(pids: set[int]) -> list[tuple[str, int, int, str]]:
    """(address, port, pid, process name) of every TCP socket in LISTEN state owned by ``pids``."""
    owner: dict[int, int] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        owner[int(link[8:-1])] = pid
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or int(fields[9]) not in owner:  # 0A: LISTEN
                continue
            hex_address, hex_port = fields[1].split(":")
            pid = owner[int(fields[9])]
            name = (
                Path(f"/proc/{pid}/comm").read_text().strip()
                if Path(f"/proc/{pid}").exists()
                else "?"
            )
            found.append((_address(hex_address), int(hex_port, 16), pid, name))
    return found


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw[::-1])
    # /proc/net/tcp6 prints four little-endian 32-bit words
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return ipaddress.IPv6Address(words)


def is_loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def quickstart_env(home: Path) -> dict[str, str]:
    """The environment scripts/quickstart.sh gives `sdn sweep launch` (nothing about Ray auth)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", "RAY_ENABLE_WINDOWS", "MLFLOW_TRACKING"))
        and not k.startswith("SDN_")
    }
    env.update(
        RAY_USAGE_STATS_ENABLED="0",
        MLFLOW_DISABLE_TELEMETRY="true",
        OMP_WAIT_POLICY="PASSIVE",
        PYTHONUNBUFFERED="1",
        SDN_HOME=str(home),
    )
    return env


def grpc_status(address: str, token: str | None) -> str:
    """The status of a real GCS call (GetClusterId) made with or without the token."""
    import grpc

    metadata = [("authorization", f"Bearer {token}")] if token else None
    channel = grpc.insecure_channel(address)
    try:
        channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId")(
            b"", timeout=10, metadata=metadata
        )
        return "OK"
    except grpc.RpcError as exc:
        return exc.code().name
    finally:
        channel.close()


@pytest.mark.slow
@pytest.mark.integration
def test_a_local_sweep_listens_on_loopback_only_and_requires_the_token(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(sweep_text("sec", home, epochs=2))
    env = {
        **quickstart_env(home),
        "SDN_TEST_PID_DIR": str(pid_dir),  # says when a trial runs
        "SDN_TEST_SLOW_EPOCH_S": "4",  # keeps it running while the sockets are read
    }
    proc = SdnProcess(["sweep", "launch", str(sweep), "--no-progress"], env, tmp_path / "log")
    try:
        wait_for(
            "a trial to start",
            lambda: any(p.read_text().strip() for p in pid_dir.glob("*.log")),
            600,
            proc.log,
        )
        time.sleep(1.0)  # the trial's worker has its ports open by now
        pids = ray_session_pids(proc.temp_dir, roots=(proc.proc.pid,))
        sockets = listening_sockets(pids)
        shown = "\n".join(f"{a}:{p} pid {pid} {n}" for a, p, pid, n in sockets)
        ss = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout
        names = {n for _, _, _, n in sockets}
        assert {"gcs_server", "raylet"} <= names, f"{shown}\n{ss}"  # Ray's own servers were seen
        exposed = [s for s in sockets if not is_loopback(s[0])]
        assert not exposed, f"listening beyond loopback:\n{shown}\n\nss -ltnp:\n{ss}"

        token_file = home / "ray" / "auth_token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert len(token) == 64
        gcs = next(f"127.0.0.1:{p}" for a, p, _, n in sockets if n == "gcs_server")
        assert grpc_status(gcs, None) == "UNAUTHENTICATED"  # no token: refused
        assert grpc_status(gcs, "0" * 64) == "UNAUTHENTICATED"  # a wrong one too
        assert grpc_status(gcs, token) == "OK"  # the same call with the token is answered
        assert proc.wait() == 0, proc.output()[-3000:]
    finally:
        proc.finish()


def test_readme_security_section_says_what_the_code_does(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Each claim of the README's Security section about local sweeps, against the code that
    makes it true (the sweep test above checks the effect)."""
    import re

    from workflows import sweep

    repo = Path(__file__).resolve().parents[1]
    readme = (repo / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Security") : readme.index("## Layout")]
    flat = " ".join(section.split())
    assert "listens on 127.0.0.1 only" in flat
    ((key, value),) = sweep.LOOPBACK_ENV.items()
    assert f"`{key}={value}`" in flat
    assert f"`$SDN_HOME/{sweep.TOKEN_FILE}` (mode 0600)" in flat
    assert "`RAY_AUTH_MODE=token`" in flat and "`RAY_AUTH_TOKEN_PATH`" in flat
    assert "Only the test suite sets `RAY_AUTH_MODE=disabled`" in flat
    assert "tests/test_local_ray_security.py" in flat
    assert "machine's addresses" not in flat  # what the README said before it was true
    quickstart = (repo / "scripts" / "quickstart.sh").read_text()
    assert not re.search(r"^\s*(export\s+)?RAY_AUTH_MODE=", quickstart, re.M)
    assert not re.search(r"RAY_AUTH_MODE=\$\{?RAY_AUTH_MODE:-disabled", quickstart)
    # What secure_local_ray sets in a clean environment is what the README says.
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", key):
        monkeypatch.delenv(name, raising=False)
    applied = sweep.secure_local_ray(tmp_path / "home" / "ray")
    assert applied == {
        key: value,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(tmp_path / "home" / sweep.TOKEN_FILE),
    }
    token = Path(applied["RAY_AUTH_TOKEN_PATH"])
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text()) == 64
    first = token.read_text()
    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    os.chmod(token, 0o644)
    sweep.secure_local_ray(tmp_path / "home" / "ray")  # reused, permissions repaired
    assert token.read_text() == first and stat.S_IMODE(token.stat().st_mode) == 0o600
