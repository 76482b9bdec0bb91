"""List across collections (AIP-159): `-` for any id of the parent, on the server, with
paging, filter and order as for one parent, and tokens that still see only their
projects."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from clonejob_rpc import bad_fields, create, disks_body, error_info, list_jobs, rpc_error
from conftest import ServerPool

from client.launcher import ServerProcess
from clonejob_grpc import clone_job_service_pb2 as spb

EVERYWHERE = "projects/-/locations/-/sources/-/migratingVms/-"
VMS = {
    "acme-a": "projects/acme/locations/us-central1/sources/vsphere/migratingVms/a",
    "acme-b": "projects/acme/locations/us-central1/sources/vsphere/migratingVms/b",
    "acme-eu": "projects/acme/locations/europe-west1/sources/vsphere/migratingVms/c",
    "other": "projects/other/locations/us-central1/sources/vsphere/migratingVms/a",
}


@pytest.fixture
def jobs_everywhere(
    servers: ServerPool, data_dir: Path, sample_vm: Callable[..., Path]
) -> tuple[ServerProcess, dict[str, str]]:
    for parent in VMS.values():
        sample_vm(data_dir, parent, disks=1, disk_size="1MiB")
    server = servers.start(data_dir)
    stub = server.stub()
    made: dict[str, str] = {}
    for key, parent in VMS.items():
        for n in range(2):
            job_id = f"{key}-{n}"
            made[job_id] = create(stub, job_id, disks_body(), parent=parent).name
    return server, made


def names(response: spb.ListCloneJobsResponse) -> list[str]:
    return [job.name for job in response.clone_jobs]


def every_page(server: ServerProcess, parent: str, **fields: object) -> list[str]:
    seen: list[str] = []
    token = ""
    while True:
        page = list_jobs(server.stub(), parent, page_size=3, page_token=token, **fields)
        assert len(page.clone_jobs) <= 3
        seen += names(page)
        token = page.next_page_token
        if not token:
            return seen


def test_list_wildcard_reads_across_every_collection(
    jobs_everywhere: tuple[ServerProcess, dict[str, str]],
) -> None:
    server, made = jobs_everywhere
    assert sorted(names(list_jobs(server.stub(), EVERYWHERE))) == sorted(made.values())
    acme = names(list_jobs(server.stub(), "projects/acme/locations/-/sources/-/migratingVms/-"))
    assert sorted(acme) == sorted(n for n in made.values() if "/projects/acme/" in "/" + n)
    one_location = "projects/acme/locations/us-central1/sources/vsphere/migratingVms/-"
    assert {
        n.split("/migratingVms/")[1].split("/")[0]
        for n in names(list_jobs(server.stub(), one_location))
    } == {"a", "b"}
    by_vm = names(list_jobs(server.stub(), "projects/-/locations/-/sources/-/migratingVms/a"))
    assert len(by_vm) == 4 and all("/migratingVms/a/" in n for n in by_vm)


@pytest.mark.parametrize("order_by", ["", "create_time desc", "name", "name desc"])
def test_list_wildcard_pages_filter_and_order_across_parents(
    jobs_everywhere: tuple[ServerProcess, dict[str, str]], order_by: str
) -> None:
    server, made = jobs_everywhere
    whole = names(list_jobs(server.stub(), EVERYWHERE, order_by=order_by))
    paged = every_page(server, EVERYWHERE, order_by=order_by)
    assert paged == whole and len(paged) == len(made)
    if order_by.startswith("name"):
        assert paged == sorted(paged, reverse=order_by.endswith("desc"))
    left_out = made["other-1"]
    filtered = every_page(server, EVERYWHERE, order_by=order_by, filter=f'name != "{left_out}"')
    assert filtered == [n for n in whole if n != left_out]


def test_list_wildcard_token_only_for_one_parent(
    jobs_everywhere: tuple[ServerProcess, dict[str, str]],
) -> None:
    server, _ = jobs_everywhere
    page = list_jobs(server.stub(), EVERYWHERE, page_size=2)
    error = rpc_error(
        list_jobs,
        server.stub(),
        "projects/acme/locations/-/sources/-/migratingVms/-",
        page_token=page.next_page_token,
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error) == ["page_token"]


@pytest.mark.parametrize(
    "name",
    [
        "projects/-/locations/l/sources/s/migratingVms/vm/cloneJobs/j",
        "projects/p/locations/l/sources/s/migratingVms/-/cloneJobs/j",
        "projects/p/locations/l/sources/s/migratingVms/vm/cloneJobs/-",
    ],
)
def test_wildcard_is_only_for_list(
    jobs_everywhere: tuple[ServerProcess, dict[str, str]], name: str
) -> None:
    server, _ = jobs_everywhere
    error = rpc_error(server.stub().GetCloneJob, spb.GetCloneJobRequest(name=name), timeout=10)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    parent = name.rsplit("/cloneJobs/")[0]
    if "-" in parent.split("/"):  # no Create under a wildcard parent either
        error = rpc_error(create, server.stub(), "x", disks_body(), parent=parent)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_fields(error) == ["parent"]


def test_list_wildcard_with_tokens_sees_only_the_tokens_projects(
    servers: ServerPool, data_dir: Path, sample_vm: Callable[..., Path]
) -> None:
    for parent in VMS.values():
        sample_vm(data_dir, parent, disks=1, disk_size="1MiB")
    tokens = {role: f"cj-{role}-{secrets.token_urlsafe(16)}" for role in ("acme", "all")}
    grants = {"acme": (["acme"], "write"), "all": (["*"], "write")}
    path = data_dir / "tokens.json"
    path.write_text(
        json.dumps(
            {
                "tokens": [
                    {
                        "sha256": hashlib.sha256(tokens[role].encode()).hexdigest(),
                        "projects": projects,
                        "access": access,
                    }
                    for role, (projects, access) in grants.items()
                ]
            }
        )
    )
    server = servers.start(data_dir, tokens_file=path)

    def call(role: str, parent: str) -> list[str]:
        response = server.stub().ListCloneJobs(
            spb.ListCloneJobsRequest(parent=parent),
            metadata=[("authorization", f"Bearer {tokens[role]}")],
            timeout=10,
        )
        return names(response)

    for key, parent in VMS.items():
        server.stub().CreateCloneJob(
            spb.CreateCloneJobRequest(parent=parent, clone_job_id=key, clone_job=disks_body()),
            metadata=[("authorization", f"Bearer {tokens['all']}")],
            timeout=10,
        )
    assert {n.split("/")[1] for n in call("acme", EVERYWHERE)} == {"acme"}
    assert len(call("acme", EVERYWHERE)) == 3
    assert len(call("all", EVERYWHERE)) == 4
    # Another project named outright is still refused, with or without jobs.
    with pytest.raises(grpc.RpcError) as raised:
        call("acme", "projects/other/locations/-/sources/-/migratingVms/-")
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(raised.value).reason == "PROJECT_ACCESS_DENIED"
