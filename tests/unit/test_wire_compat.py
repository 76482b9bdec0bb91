"""Wire compatibility of clonejob.v1 with the public google.cloud.vmmigration.v1.

Messages are built from the same field spec in our generated classes and in the
official ones (the raw protobuf classes behind the proto-plus types), serialized
on one side, parsed on the other and compared field by field.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from google.cloud.vmmigration_v1 import types
from google.protobuf import any_pb2, unknown_fields
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from clonejob_grpc import clone_job_pb2, clone_job_service_pb2

# Fields of ours that the public v1 CloneJob does not have (v1alpha1 legacy).
LEGACY_FIELDS = {"compute_engine_vm_details", "target_details"}
# Fields of ours that the public v1 requests do not have (extensions: AIP-163).
EXTENSION_FIELDS = {"validate_only", "replication_cycle"}
TARGET_FIELDS = ("compute_engine_target_details", "compute_engine_disks_target_details")
# proto-plus renames fields that clash with Python builtins.
OFFICIAL_RENAMES = {"type": "type_"}

CLONE_JOB_FIELDS = {
    "replication_cycle",
    "compute_engine_target_details",
    "compute_engine_disks_target_details",
    "compute_engine_vm_details",
    "target_details",
    "create_time",
    "end_time",
    "state_time",
    "name",
    "state",
    "error",
    "steps",
}

JOB_NAME = (
    "projects/p1/locations/us-central1/sources/s1/migratingVms/vm1/cloneJobs/job-1"
)
PARENT = "projects/p1/locations/us-central1/sources/s1/migratingVms/vm1"


def _ts(seconds: int) -> dict[str, int]:
    return {"seconds": seconds, "nanos": 123_456_789}


def _error_spec() -> dict[str, Any]:
    detail = error_details_pb2.ErrorInfo(
        reason="DISK_QUOTA_EXCEEDED", domain="clonejob.example.com", metadata={"k": "v"}
    )
    packed = any_pb2.Any()
    packed.Pack(detail)
    return {
        "code": 8,
        "message": "quota exceeded",
        "details": [{"type_url": packed.type_url, "value": packed.value}],
    }


def _steps_spec() -> list[dict[str, Any]]:
    return [
        {
            "preparing_vm_disks": {},
            "start_time": _ts(1_700_000_100),
            "end_time": _ts(1_700_000_200),
        },
        {
            "adapting_os": {},
            "start_time": _ts(1_700_000_200),
            "end_time": _ts(1_700_000_300),
        },
        {
            "instantiating_migrated_vm": {},
            "start_time": _ts(1_700_000_300),
            "end_time": _ts(1_700_000_400),
        },
    ]


def _vm_target_spec() -> dict[str, Any]:
    return {
        "vm_name": "vm-clone",
        "project": "target-project",
        "zone": "us-central1-a",
        "machine_type_series": "n2",
        "machine_type": "n2-standard-4",
        "network_tags": ["web", "prod"],
        "network_interfaces": [
            {
                "network": "projects/target-project/global/networks/default",
                "subnetwork": "projects/target-project/regions/us-central1/subnetworks/sub",
                "internal_ip": "10.0.0.5",
                "external_ip": "34.1.2.3",
                "network_tier": "NETWORK_TIER_STANDARD",
            },
            {
                "network": "net-2",
                "subnetwork": "sub-2",
                "internal_ip": "ephemeral",
                "external_ip": "ephemeral",
                "network_tier": "NETWORK_TIER_PREMIUM",
            },
        ],
        "service_account": "sa@target-project.iam.gserviceaccount.com",
        "disk_type": "COMPUTE_ENGINE_DISK_TYPE_HYPERDISK_BALANCED",
        "labels": {"env": "prod", "team": "infra"},
        "license_type": "COMPUTE_ENGINE_LICENSE_TYPE_BYOL",
        "applied_license": {"type": "PAYG", "os_license": "windows-server-2019"},
        "compute_scheduling": {
            "on_host_maintenance": "MIGRATE",
            "restart_type": "NO_AUTOMATIC_RESTART",
            "node_affinities": [
                {
                    "key": "compute.googleapis.com/node-group-name",
                    "operator": "IN",
                    "values": ["ng1"],
                },
                {"key": "zone", "operator": "NOT_IN", "values": ["a", "b"]},
            ],
            "min_node_cpus": 4,
        },
        "secure_boot": True,
        "enable_vtpm": True,
        "enable_integrity_monitoring": True,
        "boot_option": "COMPUTE_ENGINE_BOOT_OPTION_EFI",
        "metadata": {"startup-script": "echo hi", "k2": "v2"},
        "additional_licenses": ["projects/p/global/licenses/l1"],
        "hostname": "vm-clone.example.com",
        "encryption": {"kms_key": "projects/p/locations/l/keyRings/r/cryptoKeys/k"},
        "boot_conversion": "BIOS_TO_EFI",
        "adaptation_modifiers": [{"modifier": "skip-drivers", "value": "true"}],
        "disk_replica_zones": ["us-central1-b"],
        "storage_pool": "projects/p/zones/us-central1-a/storagePools/pool",
    }


def _disks_target_spec(vm_target: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "disks": [
            {"source_disk_number": 1, "disk_uri": "projects/p/zones/z/disks/d1"},
            {"source_disk_number": 2, "disk_uri": "projects/p/zones/z/disks/d2"},
        ]
    }
    if vm_target == "vm_target_details":
        spec["vm_target_details"] = {"vm_uri": "projects/p/zones/z/instances/vm"}
    else:
        spec["disks_target_details"] = {}
    return spec


def _clone_job_spec(target: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": JOB_NAME,
        "create_time": _ts(1_700_000_000),
        "end_time": _ts(1_700_000_500),
        "state_time": _ts(1_700_000_400),
        "state": "FAILED",
        "error": _error_spec(),
        "steps": _steps_spec(),
    }
    if target == "vm":
        spec["compute_engine_target_details"] = _vm_target_spec()
    else:
        spec["compute_engine_disks_target_details"] = _disks_target_spec(target)
    return spec


def _official_spec(spec: Any) -> Any:
    """Rename keys that proto-plus renamed in the official descriptors."""
    if isinstance(spec, dict):
        return {OFFICIAL_RENAMES.get(k, k): _official_spec(v) for k, v in spec.items()}
    if isinstance(spec, list):
        return [_official_spec(v) for v in spec]
    return copy.deepcopy(spec)


def _official_field(descriptor: Descriptor, name: str) -> FieldDescriptor | None:
    return descriptor.fields_by_name.get(OFFICIAL_RENAMES.get(name, name))


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def assert_same(ours: Message, theirs: Message, path: str = "") -> None:
    """Assert that every field of ours equals the same-numbered field of theirs."""
    assert ours.DESCRIPTOR.name == theirs.DESCRIPTOR.name, path
    for field in ours.DESCRIPTOR.fields:
        where = f"{path}.{field.name}" if path else field.name
        other = _official_field(theirs.DESCRIPTOR, field.name)
        if other is None:
            assert field.name in LEGACY_FIELDS | EXTENSION_FIELDS, (
                f"{where} missing from the official message"
            )
            if field.name in LEGACY_FIELDS:
                assert not ours.HasField(field.name), f"legacy field {where} set"
            continue
        assert other.number == field.number, where
        mine, theirs_value = getattr(ours, field.name), getattr(theirs, other.name)
        if _is_map(field):
            assert dict(mine) == dict(theirs_value), where
        elif field.is_repeated:
            assert len(mine) == len(theirs_value), where
            for i, (a, b) in enumerate(zip(mine, theirs_value, strict=True)):
                if field.message_type is not None:
                    assert_same(a, b, f"{where}[{i}]")
                else:
                    assert a == b, f"{where}[{i}]"
        elif field.message_type is not None:
            assert ours.HasField(field.name) == theirs.HasField(other.name), where
            if ours.HasField(field.name):
                assert_same(mine, theirs_value, where)
        elif field.enum_type is not None:
            assert mine == theirs_value, where
            assert (
                field.enum_type.values_by_number[mine].name
                == other.enum_type.values_by_number[theirs_value].name
            ), where
        else:
            assert mine == theirs_value, where
    for oneof in ours.DESCRIPTOR.oneofs:
        assert ours.WhichOneof(oneof.name) == theirs.WhichOneof(oneof.name), (
            f"{path}:{oneof.name}"
        )


def assert_fully_populated(msg: Message, path: str = "") -> None:
    """Assert every non-legacy field is set to a non-default value (one per oneof)."""
    for field in msg.DESCRIPTOR.fields:
        where = f"{path}.{field.name}" if path else field.name
        if field.name in LEGACY_FIELDS | EXTENSION_FIELDS:
            continue
        if field.containing_oneof is not None:
            if msg.WhichOneof(field.containing_oneof.name) != field.name:
                continue
        elif field.name in TARGET_FIELDS and not msg.HasField(field.name):
            # Public oneof target_vm_details: exactly one is set per job.
            assert any(msg.HasField(name) for name in TARGET_FIELDS), (
                f"{path}: no target"
            )
            continue
        value = getattr(msg, field.name)
        if field.is_repeated:
            assert len(value) > 0, f"{where} is empty"
            if field.message_type is not None and not _is_map(field):
                for i, item in enumerate(value):
                    assert_fully_populated(item, f"{where}[{i}]")
        elif field.message_type is not None:
            assert msg.HasField(field.name), f"{where} is unset"
            assert_fully_populated(value, where)
        else:
            assert value, f"{where} has the default value"


def _assert_no_unknown_fields(msg: Message, path: str = "") -> None:
    assert len(unknown_fields.UnknownFieldSet(msg)) == 0, (
        f"{path or 'root'} has unknown fields"
    )
    for field, value in msg.ListFields():
        if field.message_type is None or _is_map(field):
            continue
        for i, item in enumerate(value if field.is_repeated else [value]):
            _assert_no_unknown_fields(item, f"{path}.{field.name}[{i}]")


def _round_trip(
    ours_cls: type[Message], official_cls: type[Message], spec: dict[str, Any]
) -> None:
    ours = ours_cls(**spec)
    assert_fully_populated(ours)

    theirs = official_cls.FromString(ours.SerializeToString())
    _assert_no_unknown_fields(theirs)
    assert_same(ours, theirs)

    official = official_cls(**_official_spec(spec))
    back = ours_cls.FromString(official.SerializeToString())
    _assert_no_unknown_fields(back)
    assert_same(back, official)
    assert back == ours


TARGETS = ["vm", "disks_target_details", "vm_target_details"]


@pytest.mark.parametrize("target", TARGETS)
def test_clone_job_round_trips_with_official(target: str) -> None:
    _round_trip(clone_job_pb2.CloneJob, types.CloneJob.pb(), _clone_job_spec(target))


@pytest.mark.parametrize("target", TARGETS)
def test_clone_job_target_details_parse_into_official_oneof(target: str) -> None:
    ours = clone_job_pb2.CloneJob(**_clone_job_spec(target))
    theirs = types.CloneJob.pb().FromString(ours.SerializeToString())
    expected = (
        "compute_engine_target_details"
        if target == "vm"
        else "compute_engine_disks_target_details"
    )
    assert theirs.WhichOneof("target_vm_details") == expected


def test_clone_job_error_detail_unpacks_from_official() -> None:
    ours = clone_job_pb2.CloneJob(**_clone_job_spec("vm"))
    theirs = types.CloneJob.pb().FromString(ours.SerializeToString())
    info = error_details_pb2.ErrorInfo()
    assert theirs.error.details[0].Unpack(info)
    assert info.reason == "DISK_QUOTA_EXCEEDED"
    assert dict(info.metadata) == {"k": "v"}


def test_clone_job_state_enum_matches_official() -> None:
    ours = {v.name: v.number for v in clone_job_pb2.CloneJob.State.DESCRIPTOR.values}
    official = {v.name: v.number for v in types.CloneJob.pb().State.DESCRIPTOR.values}
    assert ours == official


def test_clone_job_has_exactly_the_contract_fields() -> None:
    descriptor = clone_job_pb2.CloneJob.DESCRIPTOR
    assert set(descriptor.fields_by_name) == CLONE_JOB_FIELDS
    assert len(descriptor.fields) == 12
    assert not descriptor.oneofs  # target details are deliberately not a oneof
    for name in LEGACY_FIELDS:
        assert descriptor.fields_by_name[name].GetOptions().deprecated


def test_clone_job_legacy_fields_are_ignored_by_official() -> None:
    ours = clone_job_pb2.CloneJob(name=JOB_NAME, target_details={"vm_name": "legacy"})
    theirs = types.CloneJob.pb().FromString(ours.SerializeToString())
    assert theirs.name == JOB_NAME


def test_cancel_clone_job_response_official_parses_clone_job() -> None:
    ours = clone_job_pb2.CloneJob(**_clone_job_spec("vm"))
    types.CancelCloneJobResponse.pb().FromString(ours.SerializeToString())


def _type_key(field: FieldDescriptor) -> tuple[int, str]:
    target = field.message_type or field.enum_type
    name = target.name if target is not None else ""
    return field.type, name


SHARED_MESSAGES = [
    "CloneJob",
    "CloneStep",
    "AdaptingOSStep",
    "PreparingVMDisksStep",
    "InstantiatingMigratedVMStep",
    "ComputeEngineTargetDetails",
    "ComputeEngineDisksTargetDetails",
    "NetworkInterface",
    "AppliedLicense",
    "ComputeScheduling",
    "SchedulingNodeAffinity",
    "Encryption",
    "PersistentDisk",
    "DisksMigrationDisksTargetDetails",
    "DisksMigrationVmTargetDetails",
    "AdaptationModifier",
    "CreateCloneJobRequest",
    "GetCloneJobRequest",
    "ListCloneJobsRequest",
    "ListCloneJobsResponse",
    "CancelCloneJobRequest",
]
SHARED_ENUMS = [
    "ComputeEngineDiskType",
    "ComputeEngineLicenseType",
    "ComputeEngineBootOption",
    "ComputeEngineNetworkTier",
    "BootConversion",
]


def _our_message(name: str) -> Descriptor:
    for module in (clone_job_pb2, clone_job_service_pb2):
        if name in module.DESCRIPTOR.message_types_by_name:
            return module.DESCRIPTOR.message_types_by_name[name]
    raise KeyError(name)


@pytest.mark.parametrize("name", SHARED_MESSAGES)
def test_shared_message_descriptor_matches_official(name: str) -> None:
    ours = _our_message(name)
    official = types.CloneJob.pb().DESCRIPTOR.file.message_types_by_name[name]
    shared = [f for f in ours.fields if f.name not in LEGACY_FIELDS | EXTENSION_FIELDS]
    assert {OFFICIAL_RENAMES.get(f.name, f.name) for f in shared} == set(
        official.fields_by_name
    )
    for field in shared:
        other = _official_field(official, field.name)
        assert other is not None
        assert (field.number, field.is_repeated) == (other.number, other.is_repeated), (
            field.name
        )
        assert _type_key(field) == _type_key(other), field.name
    for enum in official.enum_types:
        mine = ours.enum_types_by_name[enum.name]
        assert [(v.name, v.number) for v in mine.values] == [
            (v.name, v.number) for v in enum.values
        ]


@pytest.mark.parametrize("name", SHARED_ENUMS)
def test_shared_enum_matches_official(name: str) -> None:
    ours = clone_job_pb2.DESCRIPTOR.enum_types_by_name[name]
    official = types.CloneJob.pb().DESCRIPTOR.file.enum_types_by_name[name]
    assert [(v.name, v.number) for v in ours.values] == [
        (v.name, v.number) for v in official.values
    ]


REQUESTS: dict[str, dict[str, Any]] = {
    "CreateCloneJobRequest": {
        "parent": PARENT,
        "clone_job_id": "job-1",
        "clone_job": _clone_job_spec("vm"),
        "request_id": "6f1c1c1e-8d5e-4c55-9a8e-3c1f0a9b2d11",
    },
    "GetCloneJobRequest": {"name": JOB_NAME},
    "CancelCloneJobRequest": {"name": JOB_NAME},
    "ListCloneJobsRequest": {
        "parent": PARENT,
        "page_size": 50,
        "page_token": "opaque-token",
        "filter": 'state = ACTIVE AND create_time > "2024-01-01T00:00:00Z"',
        "order_by": "create_time desc",
    },
    "ListCloneJobsResponse": {
        "clone_jobs": [_clone_job_spec("vm"), _clone_job_spec("vm_target_details")],
        "next_page_token": "next",
        "unreachable": ["us-east1"],
    },
}


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_request_messages_round_trip_with_official(name: str) -> None:
    ours_cls = getattr(clone_job_service_pb2, name)
    official_cls = getattr(types, name).pb()
    _round_trip(ours_cls, official_cls, REQUESTS[name])
