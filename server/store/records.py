"""Clone jobs to and from the JSON records the store keeps."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from server.domain.job import (
    CloneJob,
    DiskProgress,
    ErrorCode,
    JobError,
    Progress,
    State,
    Step,
    StepKind,
    TargetKind,
    TargetResult,
    TargetSpec,
)
from server.domain.operation import Operation, Verb


def _time(value: datetime | None) -> int | None:
    return None if value is None else to_us(value)


def to_us(value: datetime) -> int:
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(value: int) -> datetime:
    return datetime.fromtimestamp(value // 1_000_000, UTC).replace(microsecond=value % 1_000_000)


def _from(value: int | None) -> datetime | None:
    return None if value is None else from_us(value)


def dump(job: CloneJob) -> str:
    record: dict[str, Any] = {
        "name": job.name,
        "target": {
            "kind": job.target.kind.value,
            "project": job.target.project,
            "zone": job.target.zone,
            "vm_name": job.target.vm_name,
            "machine_type": job.target.machine_type,
            "details": job.target.details,
        },
        "source_cycle": job.source_cycle,
        "state": job.state.name,
        "create_time": _time(job.create_time),
        "state_time": _time(job.state_time),
        "end_time": _time(job.end_time),
        "steps": [
            {"kind": s.kind.value, "start": _time(s.start_time), "end": _time(s.end_time)}
            for s in job.steps
        ],
        "error": None
        if job.error is None
        else {
            "code": int(job.error.code),
            "reason": job.error.reason,
            "message": job.error.message,
            "metadata": dict(job.error.metadata),
        },
        "progress": None
        if job.progress is None
        else {
            "percent": job.progress.percent,
            "bytes_done": job.progress.bytes_done,
            "bytes_total": job.progress.bytes_total,
            "virtual_bytes": job.progress.virtual_bytes,
            "disks": [
                {
                    "source_disk_number": d.source_disk_number,
                    "bytes_done": d.bytes_done,
                    "bytes_total": d.bytes_total,
                    "virtual_bytes": d.virtual_bytes,
                }
                for d in job.progress.disks
            ],
        },
        "result": {
            "boot_option": job.result.boot_option,
            "license_type": job.result.license_type,
            "disk_uris": [list(d) for d in job.result.disk_uris],
        },
        "request_id": job.request_id,
        "request_hash": job.request_hash,
        "revision": job.revision,
    }
    return json.dumps(record, separators=(",", ":"), sort_keys=True)


def insert_values(job: CloneJob, record: str) -> tuple[Any, ...]:
    """The clone_jobs row of a new job, in the order (name, parent, request_id,
    state, create_time_us, revision, record), as both stores insert it."""
    return (
        job.name,
        job.name.rpartition("/cloneJobs/")[0],
        job.request_id or None,
        int(job.state),
        to_us(job.create_time),
        job.revision,
        record,
    )


def load(text: str) -> CloneJob:
    r = json.loads(text)
    t = r["target"]
    e = r["error"]
    p = r["progress"]
    res = r["result"]
    return CloneJob(
        name=r["name"],
        target=TargetSpec(
            kind=TargetKind(t["kind"]),
            project=t["project"],
            zone=t["zone"],
            vm_name=t["vm_name"],
            machine_type=t["machine_type"],
            details=t["details"],
        ),
        source_cycle=r["source_cycle"],
        state=State[r["state"]],
        create_time=from_us(r["create_time"]),
        state_time=from_us(r["state_time"]),
        end_time=_from(r["end_time"]),
        steps=tuple(
            Step(kind=StepKind(s["kind"]), start_time=from_us(s["start"]), end_time=_from(s["end"]))
            for s in r["steps"]
        ),
        error=None
        if e is None
        else JobError(
            code=ErrorCode(e["code"]),
            reason=e["reason"],
            message=e["message"],
            metadata=e["metadata"],
        ),
        progress=None if p is None else _progress(p),
        result=TargetResult(
            boot_option=res["boot_option"],
            license_type=res["license_type"],
            disk_uris=tuple((int(n), str(u)) for n, u in res["disk_uris"]),
        ),
        request_id=r["request_id"],
        request_hash=r["request_hash"],
        revision=r["revision"],
    )


def _progress(p: dict[str, Any]) -> Progress:
    # Records written before progress counted data per disk lack the last two fields.
    return Progress(
        percent=p["percent"],
        bytes_done=p.get("bytes_done", 0),
        bytes_total=p.get("bytes_total", 0),
        virtual_bytes=p.get("virtual_bytes", 0),
        disks=tuple(
            DiskProgress(
                source_disk_number=d["source_disk_number"],
                bytes_done=d["bytes_done"],
                bytes_total=d["bytes_total"],
                virtual_bytes=d["virtual_bytes"],
            )
            for d in p.get("disks", ())
        ),
    )


# The columns of an operations row, in the order both stores write and read them.
OPERATION_COLUMNS = "name, location, target, verb, create_time_us, job_record"


def operation_values(operation: Operation) -> tuple[Any, ...]:
    return (
        operation.name,
        operation.location,
        operation.target,
        operation.verb.value,
        to_us(operation.create_time),
        None if operation.job is None else dump(operation.job),
    )


def load_operation(row: Any) -> Operation:
    name, _, target, verb, create_time_us, job_record = row
    return Operation(
        name=name,
        target=target,
        verb=Verb(verb),
        create_time=from_us(int(create_time_us)),
        job=None if job_record is None else load(job_record),
    )
