"""Tests for server.domain.names and server.domain.validation."""

from __future__ import annotations

from typing import Any

import pytest

from server.domain.job import TargetKind, TargetSpec
from server.domain.names import CloneJobName, InvalidNameError, MigratingVmName
from server.domain.validation import (
    MAX_LABELS,
    MAX_METADATA_BYTES,
    MAX_METADATA_ENTRIES,
    MAX_NETWORK_INTERFACES,
    Violation,
    check_job_name,
    check_parent,
    check_request_id,
    check_vm_target,
    disks_target,
)

PARENT = "projects/my-project/locations/us-central1/sources/src_1.a/migratingVms/vm-1"
JOB = PARENT + "/cloneJobs/job-1"
BASE = "clone_job.compute_engine_target_details"
VALID_DETAILS: dict[str, Any] = {
    "vm_name": "clone-1",
    "zone": "us-central1-a",
    "machine_type": "n2-standard-4",
}


def parent() -> MigratingVmName:
    return MigratingVmName.parse(PARENT)


def vm_target(details: dict[str, Any]) -> tuple[TargetSpec | None, list[Violation]]:
    out: list[Violation] = []
    spec = check_vm_target(details, parent(), out)
    return spec, out


# -- names --


def test_migrating_vm_name_parse_fields_and_round_trip() -> None:
    name = MigratingVmName.parse(PARENT)
    assert (name.project, name.location, name.source, name.migrating_vm) == (
        "my-project",
        "us-central1",
        "src_1.a",
        "vm-1",
    )
    assert str(name) == PARENT
    assert MigratingVmName.parse(str(name)) == name
    assert name.segments() == tuple(PARENT.split("/"))


def test_clone_job_name_parse_fields_and_round_trip() -> None:
    name = CloneJobName.parse(JOB)
    assert name.parent == MigratingVmName.parse(PARENT)
    assert name.clone_job_id == "job-1"
    assert str(name) == JOB
    assert CloneJobName.parse(str(name)) == name


@pytest.mark.parametrize("length", [1, 63])
def test_migrating_vm_name_accepts_segment_lengths(length: int) -> None:
    seg = "a" * length
    value = f"projects/{seg}/locations/{seg}/sources/{seg}/migratingVms/{seg}"
    assert str(MigratingVmName.parse(value)) == value


@pytest.mark.parametrize("length", [1, 63])
def test_clone_job_name_accepts_id_lengths(length: int) -> None:
    job_id = "j" * length
    assert CloneJobName.parse(f"{PARENT}/cloneJobs/{job_id}").clone_job_id == job_id


BAD_SEGMENTS = {
    "dotdot": "..",
    "dot": ".",
    "empty": "",
    "nul": "a\0b",
    "non_ascii": "vé",
    "fullwidth_digit": "\uff11",
    "64_chars": "a" * 64,
    "leading_dot": ".a",
    "trailing_hyphen": "a-",
    "leading_hyphen": "-a",
    "space": "a b",
    "backslash": "a\\b",
    "newline": "a\n",
}


@pytest.mark.parametrize("position", [1, 3, 5, 7])
@pytest.mark.parametrize("segment", list(BAD_SEGMENTS.values()), ids=list(BAD_SEGMENTS))
def test_migrating_vm_name_rejects_unsafe_segment(position: int, segment: str) -> None:
    parts = PARENT.split("/")
    parts[position] = segment
    with pytest.raises(InvalidNameError):
        MigratingVmName.parse("/".join(parts))
    with pytest.raises(InvalidNameError):
        CloneJobName.parse("/".join(parts) + "/cloneJobs/job-1")


@pytest.mark.parametrize(
    "value",
    [
        "projects/a/b/locations/l/sources/s/migratingVms/v",  # slash inside a segment
        "projects/p/locations/l/sources/s/migratingVms/v/",
        "/projects/p/locations/l/sources/s/migratingVms/v",
        "projects/p/locations/l/sources/s/migratingvms/v",
        "projects/p/locations/l/sources/s",
        "",
    ],
)
def test_migrating_vm_name_rejects_wrong_shape(value: str) -> None:
    with pytest.raises(InvalidNameError):
        MigratingVmName.parse(value)


BAD_JOB_IDS = {
    "uppercase": "Job-1",
    "trailing_hyphen": "job-",
    "leading_digit": "1job",
    "64_chars": "j" * 64,
    "dotdot": "..",
    "dot": ".",
    "slash": "a/b",
    "nul": "job\0",
    "non_ascii": "jöb",
    "underscore": "job_1",
    "empty": "",
    "newline": "job\n",
}


@pytest.mark.parametrize("job_id", list(BAD_JOB_IDS.values()), ids=list(BAD_JOB_IDS))
def test_clone_job_name_rejects_bad_id(job_id: str) -> None:
    with pytest.raises(InvalidNameError):
        CloneJobName.parse(f"{PARENT}/cloneJobs/{job_id}")


@pytest.mark.parametrize(
    "value",
    [PARENT, PARENT + "/cloneJobs", PARENT + "/clonejobs/job-1", "cloneJobs/job-1"],
)
def test_clone_job_name_rejects_wrong_shape(value: str) -> None:
    with pytest.raises(InvalidNameError):
        CloneJobName.parse(value)


def test_check_parent_and_job_name_report_field() -> None:
    out: list[Violation] = []
    assert check_parent(PARENT, "parent", out) == parent()
    assert check_job_name(JOB, "name", out) == CloneJobName.parse(JOB)
    assert out == []
    assert check_parent("", "parent", out) is None
    assert check_job_name("nope", "name", out) is None
    assert [v.field for v in out] == ["parent", "name"]
    assert out[0].description == "is required"
    assert "'nope'" in out[1].description


# -- check_vm_target --


def test_check_vm_target_valid_defaults_project_from_parent() -> None:
    details = {**VALID_DETAILS, "labels": {"env": "prod"}, "metadata": {"Startup_Key": "x"}}
    spec, out = vm_target(details)
    assert out == []
    assert spec == TargetSpec(
        kind=TargetKind.VM,
        project="my-project",
        zone="us-central1-a",
        vm_name="clone-1",
        machine_type="n2-standard-4",
        details={**details, "project": "my-project"},
    )
    assert "project" not in details  # the caller's dict is left alone


def test_check_vm_target_keeps_explicit_project() -> None:
    spec, out = vm_target({**VALID_DETAILS, "project": "other-project"})
    assert out == []
    assert spec is not None
    assert spec.project == "other-project"
    assert spec.details["project"] == "other-project"


def test_check_vm_target_rejects_parent_project_that_is_not_rfc1035() -> None:
    out: list[Violation] = []
    odd = MigratingVmName.parse("projects/My_Project/locations/l/sources/s/migratingVms/v")
    assert check_vm_target(dict(VALID_DETAILS), odd, out) is None
    assert [v.field for v in out] == [f"{BASE}.project"]
    assert "'My_Project'" in out[0].description


def test_check_vm_target_without_parent_returns_none() -> None:
    out: list[Violation] = []
    assert check_vm_target(dict(VALID_DETAILS), None, out) is None
    assert out == []


@pytest.mark.parametrize("missing", ["vm_name", "zone", "machine_type"])
def test_check_vm_target_required_field(missing: str) -> None:
    details = {k: v for k, v in VALID_DETAILS.items() if k != missing}
    spec, out = vm_target(details)
    assert spec is None
    assert out == [Violation(f"{BASE}.{missing}", "is required")]


# One bad value per field, with the exact path the violation must carry.
BAD_FIELDS: list[tuple[str, dict[str, Any], str]] = [
    ("vm_name", {"vm_name": "Bad_Name"}, f"{BASE}.vm_name"),
    ("zone", {"zone": "us-central1-"}, f"{BASE}.zone"),
    ("machine_type", {"machine_type": "../etc"}, f"{BASE}.machine_type"),
    ("machine_type_series", {"machine_type_series": "N2"}, f"{BASE}.machine_type_series"),
    ("project", {"project": "a/b"}, f"{BASE}.project"),
    ("hostname", {"hostname": "-bad-.example"}, f"{BASE}.hostname"),
    ("service_account", {"service_account": "not-an-email"}, f"{BASE}.service_account"),
    ("network_tags", {"network_tags": ["ok", "Not Ok"]}, f"{BASE}.network_tags[1]"),
    ("disk_replica_zones", {"disk_replica_zones": ["Z1"]}, f"{BASE}.disk_replica_zones[0]"),
    (
        "additional_licenses",
        {"additional_licenses": ["/abs"]},
        f"{BASE}.additional_licenses[0]",
    ),
    ("label_key", {"labels": {"Bad": "v"}}, f"{BASE}.labels['Bad']"),
    ("label_value", {"labels": {"good": "Bad Value"}}, f"{BASE}.labels['good']"),
    ("metadata_key", {"metadata": {"bad key": "v"}}, f"{BASE}.metadata['bad key']"),
    (
        "nic_network",
        {"network_interfaces": [{"network": "bad network"}]},
        f"{BASE}.network_interfaces[0].network",
    ),
    (
        "nic_subnetwork",
        {"network_interfaces": [{}, {"subnetwork": "-x\0"}]},
        f"{BASE}.network_interfaces[1].subnetwork",
    ),
    (
        "nic_internal_ip",
        {"network_interfaces": [{"internal_ip": "10.0.0.999"}]},
        f"{BASE}.network_interfaces[0].internal_ip",
    ),
    (
        "nic_external_ip",
        {"network_interfaces": [{"external_ip": "Not An Address"}]},
        f"{BASE}.network_interfaces[0].external_ip",
    ),
    (
        "nic_network_tier",
        {"network_interfaces": [{"network_tier": 42}]},
        f"{BASE}.network_interfaces[0].network_tier",
    ),
    ("disk_type", {"disk_type": 99}, f"{BASE}.disk_type"),
    ("license_type", {"license_type": 99}, f"{BASE}.license_type"),
    ("boot_conversion", {"boot_conversion": 99}, f"{BASE}.boot_conversion"),
    (
        "on_host_maintenance",
        {"compute_scheduling": {"on_host_maintenance": 9}},
        f"{BASE}.compute_scheduling.on_host_maintenance",
    ),
    (
        "restart_type",
        {"compute_scheduling": {"restart_type": 9}},
        f"{BASE}.compute_scheduling.restart_type",
    ),
    (
        "node_affinity_operator",
        {"compute_scheduling": {"node_affinities": [{"operator": "IN"}, {"operator": 7}]}},
        f"{BASE}.compute_scheduling.node_affinities[1].operator",
    ),
]


@pytest.mark.parametrize(
    ("bad", "path"), [(b, p) for _, b, p in BAD_FIELDS], ids=[i for i, _, _ in BAD_FIELDS]
)
def test_check_vm_target_bad_field_has_exact_path(bad: dict[str, Any], path: str) -> None:
    spec, out = vm_target({**VALID_DETAILS, **bad})
    assert spec is None
    assert [v.field for v in out] == [path]
    assert out[0].description


def test_check_vm_target_reports_every_violation_at_once() -> None:
    details: dict[str, Any] = {}
    for _, bad, _ in BAD_FIELDS:
        for key, value in bad.items():
            if isinstance(value, dict) and isinstance(details.get(key), dict):
                details[key] = {**details[key], **value}
            elif isinstance(value, list) and key == "network_interfaces":
                merged = details.setdefault(key, [{}, {}])
                for i, nic in enumerate(value):
                    merged[i] = {**merged[i], **nic}
            else:
                details[key] = value
    spec, out = vm_target(details)
    assert spec is None
    assert sorted(v.field for v in out) == sorted(p for _, _, p in BAD_FIELDS)


@pytest.mark.parametrize(
    "details",
    [
        {"hostname": "host.example.com", "service_account": "sa@p.iam.gserviceaccount.com"},
        {"network_interfaces": [{"internal_ip": "10.0.0.2", "external_ip": "2001:db8::1"}]},
        {"network_interfaces": [{"internal_ip": "my-reserved-address", "network": "default"}]},
        {"disk_type": "COMPUTE_ENGINE_DISK_TYPE_SSD", "license_type": "DEFAULT"},
        {"compute_scheduling": {"node_affinities": [{"operator": "IN"}]}},
        {"additional_licenses": ["projects/p/global/licenses/l"]},
        {"labels": {"a" * 63: "b" * 63, "empty": ""}},
    ],
)
def test_check_vm_target_accepts_valid_optional_fields(details: dict[str, Any]) -> None:
    spec, out = vm_target({**VALID_DETAILS, **details})
    assert out == []
    assert spec is not None


@pytest.mark.parametrize(
    ("labels", "path"),
    [
        ({"a" * 64: "v"}, f"{BASE}.labels['{'a' * 63}']"),
        ({"k": "v" * 64}, f"{BASE}.labels['k']"),
        ({"": "v"}, f"{BASE}.labels['']"),
        ({"k\0": "v"}, f"{BASE}.labels['k\\x00']"),
    ],
    ids=["key_64", "value_64", "empty_key", "nul_key"],
)
def test_check_vm_target_label_too_long_or_bad(labels: dict[str, str], path: str) -> None:
    _, out = vm_target({**VALID_DETAILS, "labels": labels})
    assert [v.field for v in out] == [path]


@pytest.mark.parametrize(("count", "ok"), [(MAX_LABELS, True), (MAX_LABELS + 1, False)])
def test_check_vm_target_label_count_limit(count: int, ok: bool) -> None:
    labels = {f"k{i}": "v" for i in range(count)}
    _, out = vm_target({**VALID_DETAILS, "labels": labels})
    assert [v.field for v in out] == ([] if ok else [f"{BASE}.labels"])


@pytest.mark.parametrize(
    ("count", "ok"), [(MAX_METADATA_ENTRIES, True), (MAX_METADATA_ENTRIES + 1, False)]
)
def test_check_vm_target_metadata_count_limit(count: int, ok: bool) -> None:
    metadata = {f"k{i}": "v" for i in range(count)}
    _, out = vm_target({**VALID_DETAILS, "metadata": metadata})
    assert [v.field for v in out] == ([] if ok else [f"{BASE}.metadata"])


@pytest.mark.parametrize(("extra", "ok"), [(0, True), (1, False)])
def test_check_vm_target_metadata_size_limit(extra: int, ok: bool) -> None:
    key = "startup-script"
    metadata = {key: "x" * (MAX_METADATA_BYTES - len(key) + extra)}
    _, out = vm_target({**VALID_DETAILS, "metadata": metadata})
    assert [v.field for v in out] == ([] if ok else [f"{BASE}.metadata"])


def test_check_vm_target_metadata_size_counts_utf8_bytes() -> None:
    key = "k"
    metadata = {key: "é" * (MAX_METADATA_BYTES // 2)}  # 2 bytes each: over by one
    _, out = vm_target({**VALID_DETAILS, "metadata": metadata})
    assert [v.field for v in out] == [f"{BASE}.metadata"]


@pytest.mark.parametrize(
    ("count", "ok"), [(MAX_NETWORK_INTERFACES, True), (MAX_NETWORK_INTERFACES + 1, False)]
)
def test_check_vm_target_network_interface_count_limit(count: int, ok: bool) -> None:
    nics = [{"network": "default"} for _ in range(count)]
    _, out = vm_target({**VALID_DETAILS, "network_interfaces": nics})
    assert [v.field for v in out] == ([] if ok else [f"{BASE}.network_interfaces"])


def test_check_vm_target_disk_replica_zones_limit() -> None:
    _, out = vm_target({**VALID_DETAILS, "disk_replica_zones": ["a", "b", "c"]})
    assert [v.field for v in out] == [f"{BASE}.disk_replica_zones"]


def test_check_vm_target_long_value_is_cut_short_in_message() -> None:
    _, out = vm_target({**VALID_DETAILS, "vm_name": "X" * 1000})
    assert len(out) == 1
    assert "X" * 77 + "..." in out[0].description
    assert "X" * 78 not in out[0].description


def test_disks_target_uses_parent_project_and_location() -> None:
    out: list[Violation] = []
    spec = disks_target({"labels": {"a": "b"}}, parent(), out)
    assert out == []
    assert spec == TargetSpec(
        kind=TargetKind.DISKS,
        project="my-project",
        zone="us-central1",
        details={"labels": {"a": "b"}},
    )


@pytest.mark.parametrize("segments", [("a..b", "us-central1"), ("my-project", "US-Central1")])
def test_disks_target_refuses_a_parent_that_is_not_rfc1035(segments: tuple[str, str]) -> None:
    project, location = segments
    vm = MigratingVmName(project=project, location=location, source="s", migrating_vm="vm")
    out: list[Violation] = []
    assert disks_target({}, vm, out) is None
    assert [v.field for v in out] == ["clone_job.compute_engine_disks_target_details"]


# -- check_request_id --


@pytest.mark.parametrize(
    "value", ["", "6f1c2a3e-8b4d-4c5e-9f60-7a8b9c0d1e2f", "6F1C2A3E-8B4D-4C5E-9F60-7A8B9C0D1E2F"]
)
def test_check_request_id_accepts_empty_or_uuid(value: str) -> None:
    out: list[Violation] = []
    check_request_id(value, out)
    assert out == []


@pytest.mark.parametrize(
    "value",
    [
        "not-a-uuid",
        "1234",
        "6f1c2a3e-8b4d-4c5e-9f60-7a8b9c0d1e2",
        "6f1c2a3e-8b4d-4c5e-9f60-7a8b9c0d1e2fa",
        "\uff16f1c2a3e-8b4d-4c5e-9f60-7a8b9c0d1e2f",
        "6f1c2a3_-8b4d-4c5e-9f60-7a8b9c0d1e2f",
        "6f1c2a3e8b4d4c5e9f607a8b9c0d1e2f",
        "{6f1c2a3e-8b4d-4c5e-9f60-7a8b9c0d1e2f}",
        "urn:uuid:6f1c2a3e-8b4d-4c5e-9f60-7a8b9c0d1e2f",
        " 6f1c2a3e-8b4d-4c5e-9f60-7a8b9c0d1e2f",
        "6f1c2a3e-8b4d-4c5e-9f60-7a8b9c0d1e2f\n",
        "0" * 32,
    ],
    ids=[
        "word",
        "short",
        "one_digit_short",
        "one_digit_long",
        "fullwidth_digit",
        "underscore",
        "no_hyphens",
        "braces",
        "urn",
        "leading_space",
        "trailing_newline",
        "zero_no_hyphens",
    ],
)
def test_check_request_id_rejects_non_uuid(value: str) -> None:
    out: list[Violation] = []
    check_request_id(value, out)
    assert [v.field for v in out] == ["request_id"]
    assert "not a UUID" in out[0].description


def test_check_request_id_rejects_zero_uuid() -> None:
    out: list[Violation] = []
    check_request_id("00000000-0000-0000-0000-000000000000", out)
    assert out == [Violation("request_id", "must not be the zero UUID")]
