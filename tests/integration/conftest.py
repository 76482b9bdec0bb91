"""The fixtures that start real clonejob server processes on 127.0.0.1:0.

Every server is a `client.launcher.ServerProcess`: `python -m server` in its own
process, on its own data directory; its output goes to a log file that is
printed when the test ends (pytest shows it only for a failing test).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from clonejob_rpc import VM1

from client.launcher import Fleet, ServerProcess

REPO = Path(__file__).resolve().parents[2]


def write_sample_vm(
    data_dir: Path,
    name: str = VM1,
    *,
    disks: int = 2,
    disk_size: str = "4MiB",
    bios: bool = False,
) -> Path:
    """Write a completed replication cycle with `python -m server sample-vm`; its folder."""
    args = [sys.executable, "-m", "server", "sample-vm", name, "--data-dir", str(data_dir)]
    args += ["--disks", str(disks), "--disk-size", disk_size]
    if bios:
        args.append("--bios")
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    cycles = data_dir / "snapshots" / name / "cycles"
    return cycles / str(max(int(p.name) for p in cycles.iterdir() if p.name.isdigit()))


# The harness of client.launcher, under the names the tests know.
Server = ServerProcess
ServerPool = Fleet


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
    """Servers for one test; their logs live outside the test's tmp_path."""
    pool = ServerPool(tmp_path_factory.mktemp("run"))
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def module_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
    pool = ServerPool(tmp_path_factory.mktemp("run"))
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def sample_vm() -> Callable[..., Path]:
    """`sample_vm(data_dir, name=VM1, disks=2, disk_size="4MiB", bios=False)`."""
    return write_sample_vm


@pytest.fixture
def server(servers: ServerPool, data_dir: Path) -> Server:
    """A plain server with the sample VM `vm1` (two 4 MiB EFI disks)."""
    write_sample_vm(data_dir)
    return servers.start(data_dir)
