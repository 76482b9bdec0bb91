"""Resource names and the identifiers that may end up in file paths."""

from __future__ import annotations

import re
from dataclasses import dataclass

# RFC 1035 label, as Compute Engine names and clone job ids are.
RFC1035 = re.compile(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?")
# A segment of a parent name: letters, digits, '-', '_' and '.', at most 63,
# starting and ending with a letter or digit; so never '.', '..' or a slash.
SEGMENT = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")

PARENT_PATTERN = (
    "projects/{project}/locations/{location}/sources/{source}/migratingVms/{migrating_vm}"
)
JOB_PATTERN = PARENT_PATTERN + "/cloneJobs/{clone_job}"


class InvalidNameError(ValueError):
    """A resource name that does not match its pattern; the message says why."""


WILDCARD = "-"


def _segments(
    value: str, collections: tuple[str, ...], pattern: str, *, wildcard: bool = False
) -> list[str]:
    """The ids of a name made of `collections`, each checked as a SEGMENT (or,
    with `wildcard`, the AIP-159 wildcard `-`)."""
    parts = value.split("/")
    if len(parts) != 2 * len(collections) or tuple(parts[0::2]) != collections:
        raise InvalidNameError(f"must have the form {pattern}")
    for collection, segment in zip(parts[0::2], parts[1::2], strict=True):
        if wildcard and segment == WILDCARD:
            continue
        if not SEGMENT.fullmatch(segment):
            raise InvalidNameError(
                f"the {collection} id must be 1 to 63 letters, digits, '.', '_' or '-',"
                " starting and ending with a letter or digit"
            )
    return parts[1::2]


@dataclass(frozen=True, slots=True, kw_only=True)
class MigratingVmName:
    """`projects/{project}/locations/{location}/sources/{source}/migratingVms/{vm}`."""

    project: str
    location: str
    source: str
    migrating_vm: str

    def __str__(self) -> str:
        return (
            f"projects/{self.project}/locations/{self.location}"
            f"/sources/{self.source}/migratingVms/{self.migrating_vm}"
        )

    def segments(self) -> tuple[str, ...]:
        """The name's path segments, each safe as a single path component."""
        return tuple(str(self).split("/"))

    @classmethod
    def parse(cls, value: str, *, wildcard: bool = False) -> MigratingVmName:
        """The name; with `wildcard`, any id may be `-` (a List across collections)."""
        project, location, source, vm = _segments(
            value,
            ("projects", "locations", "sources", "migratingVms"),
            PARENT_PATTERN,
            wildcard=wildcard,
        )
        return cls(project=project, location=location, source=source, migrating_vm=vm)

    @property
    def wildcard(self) -> bool:
        """Whether any id is the wildcard `-`."""
        return WILDCARD in (self.project, self.location, self.source, self.migrating_vm)


@dataclass(frozen=True, slots=True, kw_only=True)
class CloneJobName:
    """`{migrating VM name}/cloneJobs/{clone_job}`."""

    parent: MigratingVmName
    clone_job_id: str

    def __str__(self) -> str:
        return f"{self.parent}/cloneJobs/{self.clone_job_id}"

    @classmethod
    def parse(cls, value: str) -> CloneJobName:
        head, sep, job_id = value.rpartition("/cloneJobs/")
        if not sep:
            raise InvalidNameError(f"must have the form {JOB_PATTERN}")
        try:
            parent = MigratingVmName.parse(head)
        except InvalidNameError:
            raise InvalidNameError(f"must have the form {JOB_PATTERN}") from None
        if not RFC1035.fullmatch(job_id):
            raise InvalidNameError(
                "the clone job id must be a lowercase letter followed by up to 62 lowercase"
                " letters, digits or hyphens, not ending in a hyphen (RFC 1035)"
            )
        return cls(parent=parent, clone_job_id=job_id)


LOCATION_PATTERN = "projects/{project}/locations/{location}"
SOURCE_PATTERN = LOCATION_PATTERN + "/sources/{source}"
OPERATION_PATTERN = LOCATION_PATTERN + "/operations/{operation}"


@dataclass(frozen=True, slots=True, kw_only=True)
class LocationName:
    """`projects/{project}/locations/{location}`: where operations are listed."""

    project: str
    location: str

    def __str__(self) -> str:
        return f"projects/{self.project}/locations/{self.location}"

    @classmethod
    def parse(cls, value: str) -> LocationName:
        project, location = _segments(value, ("projects", "locations"), LOCATION_PATTERN)
        return cls(project=project, location=location)


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceName:
    """`projects/{project}/locations/{location}/sources/{source}`: a source of migrating VMs."""

    project: str
    location: str
    source: str

    def __str__(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/sources/{self.source}"

    def migrating_vm(self, migrating_vm: str) -> MigratingVmName:
        return MigratingVmName(
            project=self.project,
            location=self.location,
            source=self.source,
            migrating_vm=migrating_vm,
        )

    @classmethod
    def parse(cls, value: str) -> SourceName:
        project, location, source = _segments(
            value, ("projects", "locations", "sources"), SOURCE_PATTERN
        )
        return cls(project=project, location=location, source=source)


@dataclass(frozen=True, slots=True, kw_only=True)
class OperationName:
    """`projects/{project}/locations/{location}/operations/{operation}`."""

    location: LocationName
    operation_id: str

    def __str__(self) -> str:
        return f"{self.location}/operations/{self.operation_id}"

    @classmethod
    def parse(cls, value: str) -> OperationName:
        project, location, operation = _segments(
            value, ("projects", "locations", "operations"), OPERATION_PATTERN
        )
        return cls(
            location=LocationName(project=project, location=location), operation_id=operation
        )
