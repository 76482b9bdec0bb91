"""Jobs the service benchmarks start from, made through the real API (blocking client)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator, Sequence

import grpc

from clonejob_grpc import clone_job_pb2, clone_job_service_pb2, clone_job_service_pb2_grpc

PARENT = "projects/bench/locations/us-central1/sources/vsphere/migratingVms/vm-1"
FAN_FAULT_PLAN = {"faults": [{"match": "cloneJobs/fan", "step": "adapting_os", "action": "hold"}]}
State = clone_job_pb2.CloneJob.State


def job_name(job_id: str) -> str:
    return f"{PARENT}/cloneJobs/{job_id}"


def create_request(job_id: str, *, vm: bool = False) -> clone_job_service_pb2.CreateCloneJobRequest:
    """A disks-only job (one step), or with `vm` a VM (three steps, VM named after the job)."""
    job = clone_job_pb2.CloneJob()
    if vm:
        details = job.compute_engine_target_details
        details.vm_name = job_id
        details.zone = "us-central1-a"
        details.machine_type = "n2-standard-4"
    else:
        job.compute_engine_disks_target_details.SetInParent()
    return clone_job_service_pb2.CreateCloneJobRequest(
        parent=PARENT, clone_job_id=job_id, clone_job=job, request_id=str(uuid.uuid4())
    )


@contextlib.contextmanager
def stub(target: str) -> Iterator[clone_job_service_pb2_grpc.CloneJobServiceStub]:
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield clone_job_service_pb2_grpc.CloneJobServiceStub(channel)


def create(target: str, job_id: str, *, vm: bool = False) -> bytes:
    """Create a job; its serialized reply."""
    with stub(target) as s:
        return s.CreateCloneJob(create_request(job_id, vm=vm), timeout=30).SerializeToString()


def create_many(
    target: str, job_ids: Sequence[str], *, in_flight: int = 64, vm: bool = False
) -> None:
    with stub(target) as s:
        pending: list[grpc.Future] = []
        for job_id in job_ids:
            pending.append(s.CreateCloneJob.future(create_request(job_id, vm=vm), timeout=60))
            if len(pending) >= in_flight:
                pending.pop(0).result()
        for future in pending:
            future.result()


def get(target: str, name: str) -> bytes:
    with stub(target) as s:
        return s.GetCloneJob(
            clone_job_service_pb2.GetCloneJobRequest(name=name), timeout=30
        ).SerializeToString()


def wait_state(target: str, name: str, states: set[int], *, timeout: float = 60.0) -> bytes:
    """Watch `name` until it is in one of `states`; its serialized job then."""
    with stub(target) as s:
        stream = s.WatchCloneJob(
            clone_job_service_pb2.WatchCloneJobRequest(name=name), timeout=timeout
        )
        try:
            for message in stream:
                if not message.heartbeat and message.clone_job.state in states:
                    return message.clone_job.SerializeToString()
        finally:
            stream.cancel()
    raise RuntimeError(f"{name} ended without reaching {states}")


def count_states(target: str, names: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    with stub(target) as s:
        for name in names:
            state = s.GetCloneJob(
                clone_job_service_pb2.GetCloneJobRequest(name=name), timeout=30
            ).state
            key = State.Name(state)
            counts[key] = counts.get(key, 0) + 1
    return counts


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """Run this process on `cpus` for the duration (in-process benchmarks)."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
