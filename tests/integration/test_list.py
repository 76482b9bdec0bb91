"""List: pages, order, filters, and the INVALID_ARGUMENT of each bad parameter."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import pytest
from clonejob_rpc import (
    PREPARING,
    State,
    bad_fields,
    create,
    disks_body,
    error_info,
    list_jobs,
    rpc_error,
    run_to_end,
)

from clonejob_grpc import clone_job_pb2 as pb

if TYPE_CHECKING:
    from conftest import Server, ServerPool

PARENT = "projects/p1/locations/us-central1/sources/s1/migratingVms/vm-list"
EMPTY = "projects/p1/locations/us-central1/sources/s1/migratingVms/vm-empty"
# Creation order differs from name order on purpose.
SUCCEEDING = ["m-job", "c-job", "x-job", "a-job", "k-job"]
FAILING = ["bad-q", "bad-e"]
CREATION_ORDER = ["m-job", "c-job", "bad-q", "x-job", "a-job", "bad-e", "k-job"]


@dataclass
class Listing:
    server: Server
    jobs: list[pb.CloneJob]  # in creation order, finished

    def names(self, ids: list[str]) -> list[str]:
        return [f"{PARENT}/cloneJobs/{i}" for i in ids]


@pytest.fixture(scope="module")
def listing(module_servers: ServerPool, tmp_path_factory: pytest.TempPathFactory) -> Listing:
    from conftest import write_sample_vm

    data_dir = tmp_path_factory.mktemp("list") / "data"
    data_dir.mkdir()
    write_sample_vm(data_dir, PARENT, disks=1, disk_size="1MiB")
    write_sample_vm(data_dir, EMPTY, disks=1, disk_size="1MiB")
    server = module_servers.start(
        data_dir,
        fault_plan=[{"match": "cloneJobs/bad-", "step": PREPARING, "action": "fail"}],
    )
    stub = server.stub()
    created = [create(stub, job_id, disks_body(), parent=PARENT) for job_id in CREATION_ORDER]
    jobs = [run_to_end(stub, job.name) for job in created]
    return Listing(server, jobs)


def all_pages(listing: Listing, page_size: int, **fields: str) -> list[list[pb.CloneJob]]:
    stub = listing.server.stub()
    pages: list[list[pb.CloneJob]] = []
    token = ""
    while True:
        response = list_jobs(stub, PARENT, page_size=page_size, page_token=token, **fields)
        pages.append(list(response.clone_jobs))
        token = response.next_page_token
        if not token:
            return pages
        assert len(pages) < 20, "paging does not end"


@pytest.mark.parametrize(
    ("page_size", "sizes"), [(3, [3, 3, 1]), (6, [6, 1]), (7, [7]), (8, [7]), (1, [1] * 7)]
)
def test_list_pages_of_given_size(listing: Listing, page_size: int, sizes: list[int]) -> None:
    pages = all_pages(listing, page_size)
    assert [len(p) for p in pages] == sizes
    names = [j.name for p in pages for j in p]
    assert len(set(names)) == len(names) == 7
    assert sorted(names) == sorted(j.name for j in listing.jobs)


def test_list_pages_in_name_descending_order(listing: Listing) -> None:
    pages = all_pages(listing, 3, order_by="name desc")
    names = [j.name for p in pages for j in p]
    assert names == sorted(listing.names(CREATION_ORDER), reverse=True)


def test_list_orders_by_create_time(listing: Listing) -> None:
    pages = all_pages(listing, 2, order_by="create_time")
    assert [j.name for p in pages for j in p] == listing.names(CREATION_ORDER)
    jobs = list_jobs(listing.server.stub(), PARENT, order_by="create_time desc").clone_jobs
    assert [j.name for j in jobs] == listing.names(CREATION_ORDER[::-1])


def test_list_returns_the_same_jobs_as_get(listing: Listing) -> None:
    jobs = list_jobs(listing.server.stub(), PARENT, order_by="create_time").clone_jobs
    assert list(jobs) == listing.jobs


def test_list_filter_state_equals(listing: Listing) -> None:
    pages = all_pages(listing, 2, filter="state = SUCCEEDED", order_by="name")
    jobs = [j for p in pages for j in p]
    assert [j.name for j in jobs] == sorted(listing.names(SUCCEEDING))
    assert {j.state for j in jobs} == {State.SUCCEEDED}


def test_list_filter_state_not_equals(listing: Listing) -> None:
    jobs = list_jobs(listing.server.stub(), PARENT, filter="state != SUCCEEDED").clone_jobs
    assert sorted(j.name for j in jobs) == sorted(listing.names(FAILING))
    assert {j.state for j in jobs} == {State.FAILED}


def test_list_filter_create_time_and_name(listing: Listing) -> None:
    stub = listing.server.stub()
    fourth = listing.jobs[3]
    since = fourth.create_time.ToJsonString()
    jobs = list_jobs(
        stub, PARENT, filter=f'create_time > "{since}"', order_by="create_time"
    ).clone_jobs
    assert [j.name for j in jobs] == listing.names(CREATION_ORDER[4:])
    jobs = list_jobs(stub, PARENT, filter=f'name = "{fourth.name}"').clone_jobs
    assert [j.name for j in jobs] == [fourth.name]


def test_list_page_size_zero_returns_all(listing: Listing) -> None:
    response = list_jobs(listing.server.stub(), PARENT, page_size=0)
    assert len(response.clone_jobs) == 7
    assert response.next_page_token == ""


def test_list_page_size_above_maximum_is_coerced(listing: Listing) -> None:
    response = list_jobs(listing.server.stub(), PARENT, page_size=5000)
    assert len(response.clone_jobs) == 7
    assert response.next_page_token == ""


def test_list_of_migrating_vm_without_jobs_is_empty(listing: Listing) -> None:
    response = list_jobs(listing.server.stub(), EMPTY)
    assert list(response.clone_jobs) == []
    assert response.next_page_token == ""


def test_list_of_unknown_migrating_vm_is_not_found(listing: Listing) -> None:
    unknown = "projects/p1/locations/us-central1/sources/s1/migratingVms/nope"
    error = rpc_error(list_jobs, listing.server.stub(), unknown)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(error).reason == "MIGRATING_VM_NOT_FOUND"


def first_token(listing: Listing, **fields: str) -> str:
    token = list_jobs(listing.server.stub(), PARENT, page_size=2, **fields).next_page_token
    assert token
    return token


def tampered(token: str) -> str:
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[len(raw) // 3] ^= 0x01  # inside the payload, not the MAC
    return base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")


@pytest.mark.parametrize(
    ("case", "field"),
    [
        ("negative page_size", "page_size"),
        ("tampered token", "page_token"),
        ("garbage token", "page_token"),
        ("token with another filter", "page_token"),
        ("token with another order", "page_token"),
        ("filter syntax", "filter"),
        ("filter unknown field", "filter"),
        ("filter unknown state", "filter"),
        ("filter bad timestamp", "filter"),
        ("order_by unknown field", "order_by"),
        ("order_by bad direction", "order_by"),
    ],
)
def test_list_bad_parameter_is_invalid_argument(listing: Listing, case: str, field: str) -> None:
    fields: dict[str, object] = {
        "negative page_size": {"page_size": -1},
        "tampered token": {"page_token": tampered(first_token(listing))},
        "garbage token": {"page_token": "not-a-token"},
        "token with another filter": {
            "page_token": first_token(listing),
            "filter": "state = SUCCEEDED",
        },
        "token with another order": {"page_token": first_token(listing), "order_by": "name"},
        "filter syntax": {"filter": "state = "},
        "filter unknown field": {"filter": "color = RED"},
        "filter unknown state": {"filter": "state = DONE"},
        "filter bad timestamp": {"filter": 'create_time > "yesterday"'},
        "order_by unknown field": {"order_by": "size"},
        "order_by bad direction": {"order_by": "name sideways"},
    }[case]

    error = rpc_error(list_jobs, listing.server.stub(), PARENT, **fields)  # type: ignore[arg-type]

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error) == [field]
    assert error_info(error).reason


def test_list_token_of_another_parent_is_invalid_argument(listing: Listing) -> None:
    error = rpc_error(
        list_jobs, listing.server.stub(), EMPTY, page_size=2, page_token=first_token(listing)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error) == ["page_token"]


def test_list_filter_or_and(listing: Listing) -> None:
    stub = listing.server.stub()
    a, q = listing.names(["a-job"])[0], listing.names(["bad-q"])[0]
    jobs = list_jobs(stub, PARENT, filter=f'name = "{a}" OR name = "{q}"').clone_jobs
    assert sorted(j.name for j in jobs) == sorted([a, q])
    jobs = list_jobs(
        stub, PARENT, filter=f'state = SUCCEEDED AND name = "{a}" OR name = "{q}"'
    ).clone_jobs
    assert [j.name for j in jobs] == [a]
