"""A migrating VM as the snapshot store knows it: read-only, never stored by us."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class MigratingVm:
    """A VM whose replication cycles are in the snapshot store."""

    name: str
    # The VM's id in its source (the manifest's `source_vm_id`, else the migrating VM id).
    source_vm_id: str
    # When its first replication cycle was written.
    create_time: datetime
    # When its latest completed cycle was; None while no cycle has completed.
    last_sync: datetime | None
