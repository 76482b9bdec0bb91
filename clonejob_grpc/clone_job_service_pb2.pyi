from clonejob_grpc import clone_job_pb2 as _clone_job_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateCloneJobRequest(_message.Message):
    __slots__ = ("parent", "clone_job_id", "clone_job", "request_id", "validate_only")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    CLONE_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CLONE_JOB_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    parent: str
    clone_job_id: str
    clone_job: _clone_job_pb2.CloneJob
    request_id: str
    validate_only: bool
    def __init__(self, parent: _Optional[str] = ..., clone_job_id: _Optional[str] = ..., clone_job: _Optional[_Union[_clone_job_pb2.CloneJob, _Mapping]] = ..., request_id: _Optional[str] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class GetCloneJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListCloneJobsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token", "filter", "order_by")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    ORDER_BY_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    filter: str
    order_by: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., filter: _Optional[str] = ..., order_by: _Optional[str] = ...) -> None: ...

class ListCloneJobsResponse(_message.Message):
    __slots__ = ("clone_jobs", "next_page_token", "unreachable")
    CLONE_JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    UNREACHABLE_FIELD_NUMBER: _ClassVar[int]
    clone_jobs: _containers.RepeatedCompositeFieldContainer[_clone_job_pb2.CloneJob]
    next_page_token: str
    unreachable: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, clone_jobs: _Optional[_Iterable[_Union[_clone_job_pb2.CloneJob, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., unreachable: _Optional[_Iterable[str]] = ...) -> None: ...

class CancelCloneJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class WatchCloneJobRequest(_message.Message):
    __slots__ = ("name", "after_revision")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AFTER_REVISION_FIELD_NUMBER: _ClassVar[int]
    name: str
    after_revision: int
    def __init__(self, name: _Optional[str] = ..., after_revision: _Optional[int] = ...) -> None: ...

class WatchCloneJobResponse(_message.Message):
    __slots__ = ("clone_job", "revision", "progress", "heartbeat")
    CLONE_JOB_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    clone_job: _clone_job_pb2.CloneJob
    revision: int
    progress: StepProgress
    heartbeat: bool
    def __init__(self, clone_job: _Optional[_Union[_clone_job_pb2.CloneJob, _Mapping]] = ..., revision: _Optional[int] = ..., progress: _Optional[_Union[StepProgress, _Mapping]] = ..., heartbeat: _Optional[bool] = ...) -> None: ...

class StepProgress(_message.Message):
    __slots__ = ("percent", "bytes_done", "bytes_total", "virtual_bytes", "disks")
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    percent: int
    bytes_done: int
    bytes_total: int
    virtual_bytes: int
    disks: _containers.RepeatedCompositeFieldContainer[DiskProgress]
    def __init__(self, percent: _Optional[int] = ..., bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., virtual_bytes: _Optional[int] = ..., disks: _Optional[_Iterable[_Union[DiskProgress, _Mapping]]] = ...) -> None: ...

class DiskProgress(_message.Message):
    __slots__ = ("source_disk_number", "bytes_done", "bytes_total", "virtual_bytes")
    SOURCE_DISK_NUMBER_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    source_disk_number: int
    bytes_done: int
    bytes_total: int
    virtual_bytes: int
    def __init__(self, source_disk_number: _Optional[int] = ..., bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., virtual_bytes: _Optional[int] = ...) -> None: ...
