"""CloneJobService: validate → convert → call the engine → convert back."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, TypedDict

import grpc

from clonejob_grpc import clone_job_pb2 as pb
from clonejob_grpc import clone_job_service_pb2 as spb
from clonejob_grpc import clone_job_service_pb2_grpc as spb_grpc
from server.api import access, mapping
from server.api.errors import ApiError, abort, invalid_argument
from server.api.page_tokens import PageTokens
from server.domain.job import TargetSpec
from server.domain.listing import (
    Cursor,
    InvalidQueryError,
    ListQuery,
    parse_filter,
    parse_order_by,
)
from server.domain.names import RFC1035, CloneJobName, MigratingVmName
from server.domain.validation import (
    RFC1035_RULE,
    Violation,
    check_job_name,
    check_page_size,
    check_parent,
    check_request_id,
    check_vm_target,
    disks_target,
)
from server.engine import Engine, Heartbeat
from server.store.records import to_us

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]

log = logging.getLogger("clonejob.api")

# A job stays well below clients' default 4 MiB message limit, and so does a page:
# a List page ends early (with a next_page_token) once it reaches MAX_PAGE_BYTES.
MAX_CLONE_JOB_BYTES = 1024 * 1024
MAX_PAGE_BYTES = 3 * 1024 * 1024


# Parents that parsed, by their text: Creates name the same few migrating VMs over
# and over, and a name that parsed once always parses the same.
_parents: dict[str, MigratingVmName] = {}
MAX_PARENTS = 1024


def _create_parent(value: str, out: list[Violation]) -> MigratingVmName | None:
    parent = _parents.get(value)
    if parent is None:
        parent = check_parent(value, "parent", out)
        if parent is not None:
            if len(_parents) >= MAX_PARENTS:
                _parents.clear()
            _parents[value] = parent
    return parent


class NewJob(TypedDict):
    """A validated Create request, as the engine's `create` takes it."""

    name: CloneJobName
    target: TargetSpec
    request_id: str
    request_hash: str


def new_job(request: spb.CreateCloneJobRequest) -> NewJob:
    """Validate a Create request of either surface (their messages are
    wire-compatible, and parsing Google's with ours keeps the checks its `oneof`
    would hide); INVALID_ARGUMENT naming every bad field."""
    out: list[Violation] = []
    parent = _create_parent(request.parent, out)
    if not request.clone_job_id:
        out.append(Violation("clone_job_id", "is required"))
    elif not RFC1035.fullmatch(request.clone_job_id):
        shown = request.clone_job_id[:80]
        out.append(Violation("clone_job_id", f"{shown!r} {RFC1035_RULE}"))
    check_request_id(request.request_id, out)
    target = None
    clean = mapping.clear_output_only(request.clone_job)
    has_vm = clean.HasField("compute_engine_target_details")
    has_disks = clean.HasField("compute_engine_disks_target_details")
    if not request.HasField("clone_job"):
        out.append(Violation("clone_job", "is required"))
    elif has_vm and has_disks:
        out.append(
            Violation(
                "clone_job.compute_engine_disks_target_details",
                "only one kind of target details may be set: choose"
                " compute_engine_target_details (a VM) or"
                " compute_engine_disks_target_details (disks only)",
            )
        )
    elif not has_vm and not has_disks:
        out.append(
            Violation(
                "clone_job.compute_engine_target_details",
                "is required: set compute_engine_target_details to clone a VM, or"
                " compute_engine_disks_target_details to clone its disks only",
            )
        )
    elif has_vm:
        target = check_vm_target(mapping.to_dict(clean.compute_engine_target_details), parent, out)
    elif parent is not None:
        target = disks_target(
            mapping.to_dict(clean.compute_engine_disks_target_details), parent, out
        )
    if clean.ByteSize() > MAX_CLONE_JOB_BYTES:
        out.append(
            Violation(
                "clone_job",
                f"is {clean.ByteSize()} bytes; at most {MAX_CLONE_JOB_BYTES} are allowed",
            )
        )
    if out or parent is None or target is None:
        raise invalid_argument(out)
    return NewJob(
        name=CloneJobName(parent=parent, clone_job_id=request.clone_job_id),
        target=target,
        request_id=request.request_id.lower(),
        request_hash=mapping.request_hash(request, clean),
    )


def job_name(value: str) -> CloneJobName:
    out: list[Violation] = []
    name = check_job_name(value, "name", out)
    if name is None:
        raise invalid_argument(out)
    return name


class CloneJobService(spb_grpc.CloneJobServiceServicer):
    def __init__(
        self,
        engine: Engine,
        page_tokens: PageTokens,
        *,
        heartbeat_interval: float = 30.0,
        max_watches: int = 10_000,
    ) -> None:
        self._engine = engine
        self._tokens = page_tokens
        self._heartbeat = heartbeat_interval
        self._max_watches = max_watches
        self.open_watches = 0

    # -- Create --

    async def CreateCloneJob(self, request: spb.CreateCloneJobRequest, context: Context) -> bytes:
        try:
            job = await self._engine.create(
                **new_job(request), validate_only=request.validate_only
            )
        except Exception as error:
            await abort(context, error)
        return mapping.job_bytes(job)  # serialized once per revision

    # -- Get, Cancel --

    async def GetCloneJob(self, request: spb.GetCloneJobRequest, context: Context) -> bytes:
        # A cache hit is answered before the name is parsed: only names of stored
        # jobs, which were validated, are in the cache.
        cached = self._engine.current(request.name)
        if cached is not None:
            return mapping.job_bytes(cached)
        try:
            job = await self._engine.get(str(job_name(request.name)))
        except Exception as error:
            await abort(context, error)
        return mapping.job_bytes(job)  # serialized once per revision

    async def CancelCloneJob(self, request: spb.CancelCloneJobRequest, context: Context) -> bytes:
        try:
            job = await self._engine.cancel(str(job_name(request.name)))
        except Exception as error:
            await abort(context, error)
        return mapping.job_bytes(job)  # serialized once per revision

    # -- List --

    async def ListCloneJobs(
        self, request: spb.ListCloneJobsRequest, context: Context
    ) -> spb.ListCloneJobsResponse:
        try:
            return await self.list_page(request)
        except Exception as error:
            await abort(context, error)

    async def list_page(self, request: spb.ListCloneJobsRequest) -> spb.ListCloneJobsResponse:
        """A page of ListCloneJobs, for either surface (their messages are wire-compatible)."""
        out: list[Violation] = []
        # Any id of the parent may be `-`: a List across collections (AIP-159).
        parent = check_parent(request.parent, "parent", out, wildcard=True)
        page_size = check_page_size(request.page_size, out)
        query_filter = order_by = None
        try:
            query_filter = parse_filter(request.filter)
        except InvalidQueryError as error:
            out.append(Violation("filter", str(error)))
        try:
            order_by = parse_order_by(request.order_by)
        except InvalidQueryError as error:
            out.append(Violation("order_by", str(error)))
        cursor = self._tokens.read(
            request.page_token,
            out,
            parent=request.parent,
            filter_text=request.filter,
            order_by=request.order_by,
        )
        if out or parent is None or order_by is None:
            raise invalid_argument(out)
        jobs = list(
            await self._engine.list(
                ListQuery(
                    parent=str(parent),
                    projects=access.readable_projects.get(),
                    filter=query_filter,
                    order_by=order_by,
                    after=cursor,
                    limit=page_size + 1,
                )
            )
        )
        if (
            not jobs
            and cursor is None
            and not parent.wildcard
            and not await self._parent_known(str(parent), parent)
        ):
            raise ApiError(
                grpc.StatusCode.NOT_FOUND,
                "MIGRATING_VM_NOT_FOUND",
                f"migrating VM {str(parent)!r} was not found",
                {"migrating_vm": str(parent)},
            )
        response = spb.ListCloneJobsResponse()
        size = 0
        for count, job in enumerate(jobs[:page_size], start=1):
            data = mapping.job_bytes(job)
            response.clone_jobs.append(pb.CloneJob.FromString(data))
            size += len(data) + 8
            if size >= MAX_PAGE_BYTES and count < len(jobs):
                page_size = count  # a shorter page: the token continues after this job
                break
        if len(jobs) > page_size:
            last = jobs[page_size - 1]
            response.next_page_token = self._tokens.encode(
                Cursor(create_time_us=to_us(last.create_time), name=last.name),
                parent=request.parent,
                filter_text=request.filter,
                order_by=request.order_by,
            )
        return response

    async def _parent_known(self, parent_text: str, parent: MigratingVmName) -> bool:
        """A parent with jobs is known even if its snapshots are gone; one with none is
        known while its migrating VM exists."""
        if await self._engine.list(ListQuery(parent=parent_text, limit=1)):
            return True
        return await self._engine.migrating_vm_exists(parent)

    # -- Watch --

    async def WatchCloneJob(
        self, request: spb.WatchCloneJobRequest, context: Context
    ) -> AsyncIterator[spb.WatchCloneJobResponse]:
        counted = False
        try:
            out: list[Violation] = []
            name = check_job_name(request.name, "name", out)
            if request.after_revision < 0:
                out.append(Violation("after_revision", f"{request.after_revision} is negative"))
            if out or name is None:
                raise invalid_argument(out)
            if self.open_watches >= self._max_watches:
                raise ApiError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "TOO_MANY_WATCHES",
                    f"the server already has {self.open_watches} open watches, its limit;"
                    " retry later or on another server",
                    {"limit": str(self._max_watches)},
                )
            self.open_watches += 1
            counted = True
            changes = self._engine.watch(
                str(name),
                after_revision=request.after_revision,
                heartbeat_interval=self._heartbeat,
            )
            async with contextlib.aclosing(changes):  # unsubscribes the moment we stop
                async for item in changes:
                    if isinstance(item, Heartbeat):
                        yield spb.WatchCloneJobResponse(revision=item.revision, heartbeat=True)
                    else:
                        yield mapping.watch_bytes(item)  # type: ignore[misc]
        except Exception as error:
            await abort(context, error)
        finally:
            if counted:
                self.open_watches -= 1
