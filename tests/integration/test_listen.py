"""Where the server listens: a port already taken, by another clonejob-server or
anything else, stops the start (no silent port sharing: with SO_REUSEPORT both
would bind and the kernel would split calls between two servers and two
databases), and a --listen that is no address says so."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, ServerPool
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.launcher import ServerStartError


def serve(data_dir: Path, listen: str) -> subprocess.CompletedProcess[str]:
    """A server start that is expected to fail at once."""
    return subprocess.run(
        [sys.executable, "-m", "server", "--listen", listen, "--data-dir", str(data_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_listen_second_server_on_a_taken_port_exits_2(
    servers: ServerPool, tmp_path: Path
) -> None:
    first = servers.start(tmp_path / "one")
    port = first.address.rpartition(":")[2]
    second = servers.add(tmp_path / "two", listen=f"127.0.0.1:{port}")
    with pytest.raises(ServerStartError) as failed:
        second.start()
    assert failed.value.returncode == 2
    assert f"port {port} is already in use" in failed.value.log
    # The first server still serves.
    health = health_pb2_grpc.HealthStub(first.channel())
    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_listen_port_taken_by_another_program_exits_2(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = serve(tmp_path / "data", f"127.0.0.1:{port}")
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}: port {port} is already in use" in done.stderr


def test_listen_that_is_not_host_port_says_so(tmp_path: Path) -> None:
    done = serve(tmp_path / "data", "foo")
    assert done.returncode == 2
    assert "--listen 'foo' is not HOST:PORT" in done.stderr
    assert "TLS" not in done.stderr
