"""The Node.js clients in tests/interop/ against a real server.

`interop.mjs` (@grpc/grpc-js) loads the stubs from protos/ at run time and checks
create, watch, cancel, rich errors and watch resume on clonejob.v1.
`google_client.mjs` drives the google.cloud.vmmigration.v1 surface through Google's
Node client stack (google-gax, google-proto-files): create and cancel operations,
get, paged list, rich errors, UNIMPLEMENTED. See their headers. They need `node`
and the packages that `.ci/interop-setup` (`npm ci`) installs; without them the
tests skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from clonejob_rpc import VM1

if TYPE_CHECKING:
    from conftest import ServerPool

INTEROP = Path(__file__).resolve().parents[1] / "interop"
NODE = shutil.which("node")
NODE_TIMEOUT = 90.0
# The `hold-` job waits in ADAPTING_OS in the only job slot, so the watched job is
# still PENDING when its watch opens (interop.mjs's header explains).
HOLD = {"match": "cloneJobs/hold-", "step": "adapting_os", "action": "hold"}
# connect, hold, create, cancel, watch, rich error, resume: a script that skipped
# one would print fewer.
CHECKS = 7
# google_client.mjs: create, retry, get, list, cancel, succeeded, error, unimplemented.
GOOGLE_CHECKS = 8
# Its three jobs run one after the other in the only job slot; it polls up to 60 s for each.
GOOGLE_NODE_TIMEOUT = 150.0

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not on PATH"),
    pytest.mark.skipif(
        not (INTEROP / "node_modules").is_dir(),
        reason="tests/interop/node_modules is missing: run .ci/interop-setup (npm ci)",
    ),
]


def run_checks(script: str, server_address: str, checks: int, timeout: float) -> None:
    """Run a Node check script against the server; every one of its checks passes."""
    assert NODE is not None
    args = [NODE, str(INTEROP / script), server_address, VM1]
    try:
        done = subprocess.run(args, cwd=INTEROP, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"{script} ran over {timeout} s:\n{expired.stdout}\n{expired.stderr}")
    output = f"{done.stdout}\n{done.stderr}"
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{output}"
    last = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(rf"{checks} passed, 0 failed", last), output


def test_interop_node_client_passes_every_check(
    servers: ServerPool, data_dir: Path, sample_vm: Callable[..., Path]
) -> None:
    sample_vm(data_dir, VM1)
    server = servers.start(data_dir, fault_plan=[HOLD], max_concurrent_jobs=1)
    run_checks("interop.mjs", server.address, CHECKS, NODE_TIMEOUT)


def test_interop_google_node_client_passes_every_check(
    servers: ServerPool, data_dir: Path, sample_vm: Callable[..., Path]
) -> None:
    sample_vm(data_dir, VM1)
    server = servers.start(data_dir, fault_plan=[HOLD], max_concurrent_jobs=1)
    run_checks("google_client.mjs", server.address, GOOGLE_CHECKS, GOOGLE_NODE_TIMEOUT)
