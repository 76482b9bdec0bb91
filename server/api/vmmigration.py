"""google.cloud.vmmigration.v1.VmMigration: the clone-job part of Google's API.

Google's Python package carries the v1 messages but no descriptor of the
`VmMigration` service, so the methods served here are declared in code below
(their names and request and response types are facts of the public API), over
the message types the package put in the default descriptor pool. Handlers,
registration and server reflection all read this one service descriptor.

The clone-job requests are parsed with clonejob.v1's classes, which are
wire-compatible with Google's, so both surfaces validate and map through the
same code (`servicer.new_job`, `servicer.job_name`, `CloneJobService.list_page`)
and their errors carry the same details. Create and Cancel answer with
long-running operations (`server.api.operations`); the other methods of
VmMigration answer UNIMPLEMENTED, naming what is served.
"""

from __future__ import annotations

import importlib.resources
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

# Google's package registers the google.cloud.vmmigration.v1 messages in the
# default descriptor pool when imported.
import google.cloud.vmmigration_v1.types  # noqa: F401
import grpc
from google.longrunning import operations_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from clonejob_grpc import clone_job_service_pb2 as spb
from server.api import mapping
from server.api.errors import abort, invalid_argument
from server.api.operations import operation_proto
from server.api.page_tokens import PageTokens
from server.api.servicer import CloneJobService, job_name, new_job
from server.domain.listing import Cursor, ListQuery, OrderBy, parse_filter
from server.domain.migrating_vm import MigratingVm
from server.domain.names import SourceName
from server.domain.validation import Violation, check_name, check_page_size, check_parent
from server.engine import Engine

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]

PACKAGE = "google.cloud.vmmigration.v1"
SERVICE_NAME = f"{PACKAGE}.VmMigration"
# Where proto-plus registered Google's messages, and ours for the service.
_TYPES_FILE = "google/cloud/vmmigration_v1/types/vmmigration.proto"
_SERVICE_FILE = "clonejob/google_vmmigration_v1_service.proto"
_OPERATION = ".google.longrunning.Operation"

# The methods served: name, request type, response type.
METHODS = (
    ("CreateCloneJob", f".{PACKAGE}.CreateCloneJobRequest", _OPERATION),
    ("CancelCloneJob", f".{PACKAGE}.CancelCloneJobRequest", _OPERATION),
    ("ListCloneJobs", f".{PACKAGE}.ListCloneJobsRequest", f".{PACKAGE}.ListCloneJobsResponse"),
    ("GetCloneJob", f".{PACKAGE}.GetCloneJobRequest", f".{PACKAGE}.CloneJob"),
    (
        "ListMigratingVms",
        f".{PACKAGE}.ListMigratingVmsRequest",
        f".{PACKAGE}.ListMigratingVmsResponse",
    ),
    ("GetMigratingVm", f".{PACKAGE}.GetMigratingVmRequest", f".{PACKAGE}.MigratingVm"),
)
SERVED = ", ".join(name for name, _, _ in METHODS)


def _service_file() -> FileDescriptor:
    pool = descriptor_pool.Default()
    try:
        return pool.FindFileByName(_SERVICE_FILE)
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto(
        name=_SERVICE_FILE,
        package=PACKAGE,
        syntax="proto3",
        dependency=[_TYPES_FILE, operations_pb2.DESCRIPTOR.name],
    )
    service = proto.service.add(name="VmMigration")
    for name, request, response in METHODS:
        service.method.add(name=name, input_type=request, output_type=response)
    return pool.AddSerializedFile(proto.SerializeToString())


SERVICE: ServiceDescriptor = _service_file().services_by_name["VmMigration"]


def _google(name: str) -> Any:
    return message_factory.GetMessageClass(
        descriptor_pool.Default().FindMessageTypeByName(f"{PACKAGE}.{name}")
    )


# The clone-job requests are parsed with clonejob.v1's wire-compatible classes.
REQUEST_TYPES: Mapping[str, type[Message]] = {
    "CreateCloneJob": spb.CreateCloneJobRequest,
    "CancelCloneJob": spb.CancelCloneJobRequest,
    "ListCloneJobs": spb.ListCloneJobsRequest,
    "GetCloneJob": spb.GetCloneJobRequest,
    "ListMigratingVms": _google("ListMigratingVmsRequest"),
    "GetMigratingVm": _google("GetMigratingVmRequest"),
}


def all_methods() -> frozenset[str]:
    """Every method of Google's VmMigration service, from the package's own
    gapic metadata (to answer the unserved ones UNIMPLEMENTED)."""
    text = (
        importlib.resources.files("google.cloud.vmmigration_v1") / "gapic_metadata.json"
    ).read_text()
    rpcs = json.loads(text)["services"]["VmMigration"]["clients"]["grpc"]["rpcs"]
    return frozenset(rpcs)


_VIEW_FULL = (
    _google("GetMigratingVmRequest")
    .DESCRIPTOR.fields_by_name["view"]
    .enum_type.values_by_name["MIGRATING_VM_VIEW_FULL"]
    .number
)
_ACTIVE = (
    _google("MigratingVm").DESCRIPTOR.enum_types_by_name["State"].values_by_name["ACTIVE"].number
)
# The clone jobs a full view shows: those running, and the latest one that finished.
_RUNNING = parse_filter(
    "state = PENDING OR state = ACTIVE OR state = ADAPTING_OS OR state = CANCELLING"
)
_FINISHED = parse_filter("state = SUCCEEDED OR state = FAILED OR state = CANCELLED")
RECENT_RUNNING_JOBS = 10


class VmMigrationService:
    """The served methods of google.cloud.vmmigration.v1.VmMigration."""

    def __init__(self, engine: Engine, jobs: CloneJobService, page_tokens: PageTokens) -> None:
        self._engine = engine
        self._jobs = jobs
        self._tokens = page_tokens

    # -- clone jobs --

    async def CreateCloneJob(
        self, request: spb.CreateCloneJobRequest, context: Context
    ) -> operations_pb2.Operation:
        try:
            job, operation = await self._engine.create_with_operation(**new_job(request))
            return operation_proto(operation, job)
        except Exception as error:
            await abort(context, error)

    async def CancelCloneJob(
        self, request: spb.CancelCloneJobRequest, context: Context
    ) -> operations_pb2.Operation:
        try:
            job, operation = await self._engine.cancel_with_operation(str(job_name(request.name)))
            return operation_proto(operation, job)
        except Exception as error:
            await abort(context, error)

    async def GetCloneJob(self, request: spb.GetCloneJobRequest, context: Context) -> bytes:
        # The same request and reply on the wire as clonejob.v1's: the same handler.
        return await self._jobs.GetCloneJob(request, context)

    async def ListCloneJobs(
        self, request: spb.ListCloneJobsRequest, context: Context
    ) -> spb.ListCloneJobsResponse:
        try:
            return await self._jobs.list_page(request)
        except Exception as error:
            await abort(context, error)

    # -- migrating VMs (read-only, from the snapshot store) --

    async def GetMigratingVm(self, request: Any, context: Context) -> Message:
        try:
            out: list[Violation] = []
            name = check_parent(request.name, "name", out)
            if name is None:
                raise invalid_argument(out)
            vm = await self._engine.migrating_vm(name)
            return await self._vm_proto(vm, full=request.view == _VIEW_FULL)
        except Exception as error:
            await abort(context, error)

    async def ListMigratingVms(self, request: Any, context: Context) -> Message:
        try:
            return await self._list_vms(request)
        except Exception as error:
            await abort(context, error)

    async def _list_vms(self, request: Any) -> Message:
        out: list[Violation] = []
        source = check_name(request.parent, "parent", SourceName.parse, out)
        if request.filter:
            out.append(Violation("filter", "is not supported here: leave it empty"))
        if request.order_by not in ("", "name"):
            out.append(Violation("order_by", "migrating VMs are listed by name only"))
        page_size = check_page_size(request.page_size, out)
        query = "migratingVms:" + request.parent
        cursor = self._tokens.read(request.page_token, out, parent=query)
        after = "" if cursor is None else cursor.name
        if out or source is None:
            raise invalid_argument(out)
        vms = [vm for vm in await self._engine.migrating_vms(source) if vm.name > after]
        response = _google("ListMigratingVmsResponse")()
        full = request.view == _VIEW_FULL
        for vm in vms[:page_size]:
            response.migrating_vms.append(await self._vm_proto(vm, full=full))
        if len(vms) > page_size:
            response.next_page_token = self._tokens.encode(
                Cursor(create_time_us=0, name=vms[page_size - 1].name),
                parent=query,
                filter_text="",
                order_by="",
            )
        return response  # type: ignore[no-any-return]

    async def _vm_proto(self, vm: MigratingVm, *, full: bool) -> Message:
        out = _google("MigratingVm")(
            name=vm.name,
            source_vm_id=vm.source_vm_id,
            state=_ACTIVE,
            create_time=mapping.timestamp(vm.create_time),
            update_time=mapping.timestamp(vm.last_sync or vm.create_time),
            state_time=mapping.timestamp(vm.create_time),
        )
        if vm.last_sync is not None:
            out.last_sync.last_sync_time.CopyFrom(mapping.timestamp(vm.last_sync))
        if full:
            newest_first = OrderBy(descending=True)
            running = await self._engine.list(
                ListQuery(
                    parent=vm.name,
                    filter=_RUNNING,
                    order_by=newest_first,
                    limit=RECENT_RUNNING_JOBS,
                )
            )
            finished = await self._engine.list(
                ListQuery(parent=vm.name, filter=_FINISHED, order_by=newest_first, limit=1)
            )
            for job in [*running, *finished]:
                out.recent_clone_jobs.add().MergeFromString(mapping.job_bytes(job))
        return out  # type: ignore[no-any-return]
