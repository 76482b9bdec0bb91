"""Validation of client input, field by field, reporting every violation at once.

Input arrives as the protobuf JSON mapping with proto field names, so this module
needs no generated code. Every name that can reach a file path is held to a
pattern that cannot express `..`, `/`, NUL or anything outside ASCII.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from server.domain.job import TargetKind, TargetSpec
from server.domain.names import RFC1035, CloneJobName, InvalidNameError, MigratingVmName

MAX_LABELS = 64
MAX_METADATA_ENTRIES = 128
MAX_METADATA_BYTES = 512 * 1024
MAX_LIST_ITEMS = 64
MAX_NETWORK_INTERFACES = 8

LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
METADATA_KEY = re.compile(r"[A-Za-z0-9_-]{1,128}")
HOSTNAME = re.compile(
    r"(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"
)
RESOURCE_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9/_.:-]{0,1023}")
SERVICE_ACCOUNT = re.compile(r"[A-Za-z0-9._%+-]{1,128}@[A-Za-z0-9.-]{1,128}")
# The canonical 8-4-4-4-12 form only: uuid.UUID() alone also takes braces, "urn:uuid:",
# underscores and non-ASCII digits.
UUID_TEXT = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")


@dataclass(frozen=True, slots=True)
class Violation:
    """One bad field: its proto path and what is wrong with it."""

    field: str
    description: str


RFC1035_RULE = (
    "must be 1 to 63 characters: a lowercase letter, then lowercase letters, digits"
    " or hyphens, not ending in a hyphen (RFC 1035)"
)


N = TypeVar("N")

# List page sizes (AIP-158): 0 means the default, more than the maximum is taken
# as the maximum, negative is refused.
DEFAULT_PAGE_SIZE = 500
MAX_PAGE_SIZE = 1000


def check_name(value: str, field: str, parse: Callable[[str], N], out: list[Violation]) -> N | None:
    """`parse(value)`, or None with the violation added to `out`."""
    if not value:
        out.append(Violation(field, "is required"))
        return None
    try:
        return parse(value)
    except InvalidNameError as error:
        out.append(Violation(field, f"{_shown(value)} {error}"))
        return None


def check_parent(
    value: str, field: str, out: list[Violation], *, wildcard: bool = False
) -> MigratingVmName | None:
    return check_name(
        value, field, functools.partial(MigratingVmName.parse, wildcard=wildcard), out
    )


def check_job_name(value: str, field: str, out: list[Violation]) -> CloneJobName | None:
    return check_name(value, field, CloneJobName.parse, out)


def check_page_size(value: int, out: list[Violation]) -> int:
    """The page size a List uses for the request's `page_size`."""
    if value < 0:
        out.append(Violation("page_size", f"{value} is negative"))
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def check_request_id(value: str, out: list[Violation]) -> None:
    if not value:
        return
    if not UUID_TEXT.fullmatch(value):
        out.append(
            Violation(
                "request_id",
                f"{_shown(value)} is not a UUID in its canonical form"
                " (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, hexadecimal digits)",
            )
        )
        return
    if not value.replace("-", "").strip("0"):  # canonical form: the zero UUID is all 0s
        out.append(Violation("request_id", "must not be the zero UUID"))


def _shown(value: str) -> str:
    """A value quoted for an error message, cut short and free of control characters."""
    text = value if len(value) <= 80 else value[:77] + "..."
    return repr(text)


def _rfc1035(value: Any, field: str, out: list[Violation], *, required: bool) -> str:
    if not value:
        if required:
            out.append(Violation(field, "is required"))
        return ""
    if not isinstance(value, str) or not RFC1035.fullmatch(value):
        out.append(Violation(field, f"{_shown(str(value))} {RFC1035_RULE}"))
        return ""
    return value


def _enum(value: Any, field: str, out: list[Violation]) -> None:
    # The JSON mapping writes enum values it does not know as numbers.
    if isinstance(value, int):
        out.append(Violation(field, f"{value} is not a known value of this enum"))


def _fits(
    items: Any, field: str, out: list[Violation], limit: int = MAX_LIST_ITEMS, noun: str = "items"
) -> bool:
    """True when `items` has at most `limit` entries; otherwise reports the field."""
    if len(items) <= limit:
        return True
    out.append(Violation(field, f"has {len(items)} {noun}; at most {limit} are allowed"))
    return False


def _strings(
    values: Any,
    field: str,
    pattern: re.Pattern[str],
    rule: str,
    out: list[Violation],
    limit: int = MAX_LIST_ITEMS,
) -> None:
    if not _fits(values, field, out, limit):
        return
    for i, item in enumerate(values):
        if not pattern.fullmatch(item):
            out.append(Violation(f"{field}[{i}]", f"{_shown(item)} {rule}"))


def check_vm_target(
    details: Mapping[str, Any], parent: MigratingVmName | None, out: list[Violation]
) -> TargetSpec | None:
    """Validate compute_engine_target_details; returns the spec with defaults filled in."""
    base = "clone_job.compute_engine_target_details"
    before = len(out)
    vm_name = _rfc1035(details.get("vm_name"), f"{base}.vm_name", out, required=True)
    zone = _rfc1035(details.get("zone"), f"{base}.zone", out, required=True)
    machine_type = _rfc1035(details.get("machine_type"), f"{base}.machine_type", out, required=True)
    _rfc1035(details.get("machine_type_series"), f"{base}.machine_type_series", out, required=False)
    project = details.get("project") or ""
    if project:
        project = _rfc1035(project, f"{base}.project", out, required=True)
    elif parent is not None:
        project = parent.project
        if not RFC1035.fullmatch(project):
            out.append(
                Violation(
                    f"{base}.project",
                    f"is empty, and the parent's project {_shown(project)}, its default,"
                    f" {RFC1035_RULE}",
                )
            )
    hostname = details.get("hostname", "")
    if hostname and not HOSTNAME.fullmatch(hostname):
        out.append(Violation(f"{base}.hostname", f"{_shown(hostname)} is not a valid host name"))
    account = details.get("service_account", "")
    if account and not SERVICE_ACCOUNT.fullmatch(account):
        out.append(
            Violation(
                f"{base}.service_account", f"{_shown(account)} is not a service account email"
            )
        )
    _strings(details.get("network_tags", []), f"{base}.network_tags", RFC1035, RFC1035_RULE, out)
    _strings(
        details.get("disk_replica_zones", []),
        f"{base}.disk_replica_zones",
        RFC1035,
        RFC1035_RULE,
        out,
        limit=2,
    )
    _strings(
        details.get("additional_licenses", []),
        f"{base}.additional_licenses",
        RESOURCE_REF,
        "is not a license resource name",
        out,
    )
    _check_labels(details.get("labels", {}), f"{base}.labels", out)
    _check_metadata(details.get("metadata", {}), f"{base}.metadata", out)
    interfaces = details.get("network_interfaces", [])
    if _fits(interfaces, f"{base}.network_interfaces", out, MAX_NETWORK_INTERFACES):
        for i, nic in enumerate(interfaces):
            _check_nic(nic, f"{base}.network_interfaces[{i}]", out)
    for name in ("disk_type", "license_type", "boot_conversion"):
        _enum(details.get(name), f"{base}.{name}", out)
    _check_bounded_fields(details, base, out)
    scheduling = details.get("compute_scheduling", {})
    for name in ("on_host_maintenance", "restart_type"):
        _enum(scheduling.get(name), f"{base}.compute_scheduling.{name}", out)
    for i, affinity in enumerate(scheduling.get("node_affinities", [])):
        _enum(
            affinity.get("operator"),
            f"{base}.compute_scheduling.node_affinities[{i}].operator",
            out,
        )
    if len(out) > before or parent is None:
        return None
    filled = dict(details)
    filled["project"] = project
    return TargetSpec(
        kind=TargetKind.VM,
        project=project,
        zone=zone,
        vm_name=vm_name,
        machine_type=machine_type,
        details=filled,
    )


MAX_TEXT_CHARS = 256


def _text(value: Any, field: str, out: list[Violation], limit: int = MAX_TEXT_CHARS) -> None:
    if isinstance(value, str) and (len(value) > limit or not value.isprintable()):
        out.append(
            Violation(field, f"must be at most {limit} printable characters ({len(value)} given)")
        )


def _check_bounded_fields(details: Mapping[str, Any], base: str, out: list[Violation]) -> None:
    """Fields this service stores but does not act on: bounded, and names checked."""
    for name, value in (
        ("storage_pool", details.get("storage_pool", "")),
        ("encryption.kms_key", details.get("encryption", {}).get("kms_key", "")),
    ):
        if value and not RESOURCE_REF.fullmatch(value):
            out.append(Violation(f"{base}.{name}", f"{_shown(value)} is not a resource name"))
    modifiers = details.get("adaptation_modifiers", [])
    if _fits(modifiers, f"{base}.adaptation_modifiers", out):
        for i, modifier in enumerate(modifiers):
            for key in ("modifier", "value"):
                _text(modifier.get(key), f"{base}.adaptation_modifiers[{i}].{key}", out)
    scheduling = details.get("compute_scheduling", {})
    if scheduling.get("min_node_cpus", 0) < 0:
        out.append(Violation(f"{base}.compute_scheduling.min_node_cpus", "must not be negative"))
    affinities = scheduling.get("node_affinities", [])
    field = f"{base}.compute_scheduling.node_affinities"
    if not _fits(affinities, field, out):
        return
    for i, affinity in enumerate(affinities):
        _text(affinity.get("key"), f"{field}[{i}].key", out)
        values = affinity.get("values", [])
        if _fits(values, f"{field}[{i}].values", out):
            for j, value in enumerate(values):
                _text(value, f"{field}[{i}].values[{j}]", out)


def _check_nic(nic: Mapping[str, Any], field: str, out: list[Violation]) -> None:
    for name in ("network", "subnetwork"):
        value = nic.get(name, "")
        if value and not RESOURCE_REF.fullmatch(value):
            out.append(Violation(f"{field}.{name}", f"{_shown(value)} is not a network name"))
    for name in ("internal_ip", "external_ip"):
        value = nic.get(name, "")
        if not value:
            continue
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if not RFC1035.fullmatch(value):
                out.append(
                    Violation(
                        f"{field}.{name}",
                        f"{_shown(value)} is neither an IP address nor an address name",
                    )
                )
    _enum(nic.get("network_tier"), f"{field}.network_tier", out)


def _check_labels(labels: Mapping[str, str], field: str, out: list[Violation]) -> None:
    if not _fits(labels, field, out, MAX_LABELS, "labels"):
        return
    for key, value in labels.items():
        if not LABEL_KEY.fullmatch(key):
            out.append(
                Violation(
                    f"{field}[{key[:63]!r}]",
                    "label keys must start with a lowercase letter and have at most 63"
                    " lowercase letters, digits, '_' or '-'",
                )
            )
        elif not LABEL_VALUE.fullmatch(value):
            out.append(
                Violation(
                    f"{field}[{key!r}]",
                    f"{_shown(value)}: label values have at most 63 lowercase letters,"
                    " digits, '_' or '-'",
                )
            )


def _check_metadata(metadata: Mapping[str, str], field: str, out: list[Violation]) -> None:
    if not _fits(metadata, field, out, MAX_METADATA_ENTRIES, "entries"):
        return
    size = 0
    for key, value in metadata.items():
        size += len(key.encode()) + len(value.encode())
        if not METADATA_KEY.fullmatch(key):
            out.append(
                Violation(
                    f"{field}[{key[:128]!r}]",
                    "metadata keys have 1 to 128 letters, digits, '_' or '-'",
                )
            )
    if size > MAX_METADATA_BYTES:
        out.append(
            Violation(field, f"is {size} bytes; at most {MAX_METADATA_BYTES} bytes are allowed")
        )


def disks_target(
    details: Mapping[str, Any], parent: MigratingVmName, out: list[Violation]
) -> TargetSpec | None:
    """A disks-only clone goes to the migrating VM's project, in a zone named after
    its location: both must then be RFC 1035 labels, as target names are."""
    bad = [s for s in (parent.project, parent.location) if not RFC1035.fullmatch(s)]
    if bad:
        out.append(
            Violation(
                "clone_job.compute_engine_disks_target_details",
                f"a disks-only clone goes to the parent's project and location, and"
                f" {_shown(bad[0])} {RFC1035_RULE}",
            )
        )
        return None
    return TargetSpec(
        kind=TargetKind.DISKS,
        project=parent.project,
        zone=parent.location,
        details=dict(details),
    )
