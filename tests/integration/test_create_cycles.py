"""A Create clones the migrating VM's latest completed replication cycle as the
snapshot store has it at that moment: a cycle completed since the last Create is
used by the very next one, though the server caches what it read before."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from clonejob_rpc import VM1, create, disks_body
from conftest import ServerPool

MANIFEST = "manifest.json"


def test_create_uses_a_cycle_completed_since_the_last_create(
    servers: ServerPool, data_dir: Path, sample_vm: Callable[..., Path]
) -> None:
    sample_vm(data_dir, VM1, disks=1, disk_size="1MiB")
    server = servers.start(data_dir, max_concurrent_jobs=0)
    stub = server.stub()
    assert create(stub, "a", disks_body()).replication_cycle == "1"
    assert create(stub, "b", disks_body()).replication_cycle == "1"
    sample_vm(data_dir, VM1, disks=1, disk_size="1MiB")
    assert create(stub, "c", disks_body()).replication_cycle == "2"


def test_create_uses_a_cycle_whose_manifest_appeared_since_the_last_create(
    servers: ServerPool, data_dir: Path, sample_vm: Callable[..., Path]
) -> None:
    sample_vm(data_dir, VM1, disks=1, disk_size="1MiB")
    uploading = sample_vm(data_dir, VM1, disks=1, disk_size="1MiB")
    manifest = json.loads((uploading / MANIFEST).read_text())
    (uploading / MANIFEST).unlink()  # cycle 2's upload is still under way
    server = servers.start(data_dir, max_concurrent_jobs=0)
    stub = server.stub()
    assert create(stub, "a", disks_body()).replication_cycle == "1"
    (uploading / MANIFEST).write_text(json.dumps(manifest))
    assert create(stub, "b", disks_body()).replication_cycle == "2"
