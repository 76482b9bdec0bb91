"""The one mapping between protos and domain objects."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, cast

from google.protobuf import any_pb2, json_format, timestamp_pb2
from google.rpc import error_details_pb2

from clonejob_grpc import clone_job_pb2 as pb
from clonejob_grpc import clone_job_service_pb2 as spb
from server.api.errors import DOMAIN
from server.domain.job import CloneJob, JobError, Progress, StepKind, TargetKind

# Fields of the target details that only the server sets.
_VM_OUTPUT_ONLY = ("applied_license", "boot_option")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """`Timestamp.FromDatetime` (a naive value is UTC), at a third of its cost."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000
    )


def to_dict(message: Any) -> dict[str, Any]:
    """The protobuf JSON mapping with proto field names; unknown enum values stay numbers."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def clear_output_only(job: pb.CloneJob) -> pb.CloneJob:
    """A copy of a client's CloneJob without the fields only the server sets (AIP-203)."""
    clean = pb.CloneJob()
    clean.CopyFrom(job)
    for name in (
        "name",
        "create_time",
        "end_time",
        "state",
        "state_time",
        "error",
        "steps",
        "replication_cycle",
        "compute_engine_vm_details",
        "target_details",
    ):
        clean.ClearField(name)
    for name in _VM_OUTPUT_ONLY:
        clean.compute_engine_target_details.ClearField(name)
    if not job.HasField("compute_engine_target_details"):
        clean.ClearField("compute_engine_target_details")
    clean.compute_engine_disks_target_details.ClearField("disks")
    if clean.compute_engine_disks_target_details.HasField("vm_target_details"):
        clean.compute_engine_disks_target_details.vm_target_details.ClearField("vm_uri")
    if not job.HasField("compute_engine_disks_target_details"):
        clean.ClearField("compute_engine_disks_target_details")
    return clean


def request_hash(request: spb.CreateCloneJobRequest, clean: pb.CloneJob) -> str:
    """Identifies a create request's meaning, to tell a retry from a reuse of its id."""
    digest = hashlib.sha256()
    for part in (request.parent, request.clone_job_id):
        digest.update(part.encode() + b"\0")
    digest.update(clean.SerializeToString(deterministic=True))
    return digest.hexdigest()


def error_status(error: JobError) -> pb.Status:
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    return pb.Status(code=int(error.code), message=error.message, details=[detail])


class _RevisionCache:
    """Serialized forms of committed revisions, least recently used out first.

    Entries keep the job they were made from and serve only an equal job: a
    revision is unique within one store, not within a process that runs several
    servers (tests), where a stale entry would answer with another job's content.
    Bounded by entries and by bytes, since one job may be up to 1 MiB.
    """

    def __init__(self, build: Callable[[CloneJob], bytes]) -> None:
        self._build = build
        self._entries: OrderedDict[tuple[str, int], tuple[CloneJob, bytes]] = OrderedDict()
        self._bytes = 0

    def get(self, job: CloneJob) -> bytes:
        key = (job.name, job.revision)
        entry = self._entries.get(key)
        if entry is not None and entry[0] == job:
            self._entries.move_to_end(key)
            return entry[1]
        data = self._build(job)
        if entry is not None:
            self._bytes -= len(entry[1])
        self._entries[key] = (job, data)
        self._bytes += len(data)
        while len(self._entries) > CACHE_ENTRIES or self._bytes > CACHE_BYTES:
            _, (_, dropped) = self._entries.popitem(last=False)
            self._bytes -= len(dropped)
        return data


CACHE_ENTRIES = 4096
CACHE_BYTES = 64 * 1024 * 1024
_jobs = _RevisionCache(lambda job: _build_job(job).SerializeToString())


def job_bytes(job: CloneJob) -> bytes:
    """The serialized proto of a job. A revision never changes once committed, so
    each is built once and shared by every Get and watcher that needs it."""
    return _jobs.get(job)


def job_to_proto(job: CloneJob) -> pb.CloneJob:
    return pb.CloneJob.FromString(job_bytes(job))


def _build_job(job: CloneJob) -> pb.CloneJob:
    out = pb.CloneJob(
        name=job.name,
        replication_cycle=job.source_cycle,
        state=cast(Any, int(job.state)),
        create_time=timestamp(job.create_time),
        state_time=timestamp(job.state_time),
    )
    if job.end_time is not None:
        out.end_time.CopyFrom(timestamp(job.end_time))
    for step in job.steps:
        s = out.steps.add()
        s.start_time.CopyFrom(timestamp(step.start_time))
        if step.end_time is not None:
            s.end_time.CopyFrom(timestamp(step.end_time))
        if step.kind is StepKind.PREPARING_VM_DISKS:
            s.preparing_vm_disks.SetInParent()
        elif step.kind is StepKind.ADAPTING_OS:
            s.adapting_os.SetInParent()
        else:
            s.instantiating_migrated_vm.SetInParent()
    if job.error is not None:
        out.error.CopyFrom(error_status(job.error))
    _target_to_proto(job, out)
    return out


def _target_to_proto(job: CloneJob, out: pb.CloneJob) -> None:
    details: Mapping[str, Any] = job.target.details
    if job.target.kind is TargetKind.VM:
        target = out.compute_engine_target_details
        json_format.ParseDict(dict(details), target, ignore_unknown_fields=True)
        target.SetInParent()
        if job.result.boot_option:
            target.boot_option = cast(
                Any,
                pb.ComputeEngineBootOption.Value(
                    f"COMPUTE_ENGINE_BOOT_OPTION_{job.result.boot_option}"
                ),
            )
        if job.result.license_type:
            target.applied_license.type = cast(
                Any, pb.AppliedLicense.Type.Value(job.result.license_type)
            )
        return
    disks = out.compute_engine_disks_target_details
    json_format.ParseDict(dict(details), disks, ignore_unknown_fields=True)
    disks.SetInParent()
    del disks.disks[:]
    for number, uri in job.result.disk_uris:
        disks.disks.add(source_disk_number=number, disk_uri=uri)


def progress_to_proto(progress: Progress | None) -> spb.StepProgress | None:
    if progress is None:
        return None
    return spb.StepProgress(
        percent=progress.percent,
        bytes_done=progress.bytes_done,
        bytes_total=progress.bytes_total,
        virtual_bytes=progress.virtual_bytes,
        disks=[
            spb.DiskProgress(
                source_disk_number=d.source_disk_number,
                bytes_done=d.bytes_done,
                bytes_total=d.bytes_total,
                virtual_bytes=d.virtual_bytes,
            )
            for d in progress.disks
        ],
    )


def watch_response(job: CloneJob) -> spb.WatchCloneJobResponse:
    response = spb.WatchCloneJobResponse(clone_job=job_to_proto(job), revision=job.revision)
    progress = progress_to_proto(job.progress)
    if progress is not None:
        response.progress.CopyFrom(progress)
    return response


_watch_events = _RevisionCache(lambda job: watch_response(job).SerializeToString())


def watch_bytes(job: CloneJob) -> bytes:
    """A serialized watch event, made once per revision however many watchers get it."""
    return _watch_events.get(job)
