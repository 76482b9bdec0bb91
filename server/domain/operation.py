"""Long-running operations (AIP-151): what a Create or Cancel on the Google surface returns.

An operation is a record beside a clone job, stored with the jobs. It is never a
second copy of the job's state: whether it is done, and how it ended, is read
from the job it acts on.

- A create operation is done once its job is stored: its response is the job as
  created (PENDING), kept in the record.
- A cancel operation is done once its job is in a terminal state: CANCELLED is
  its success; FAILED (the job failed while cancelling) is its error.

A job has at most one operation of each verb: a retried Create or a repeated
Cancel gets the operation already made.
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass
from datetime import datetime

from server.domain.job import CloneJob
from server.domain.names import CloneJobName, LocationName, OperationName


class Verb(enum.Enum):
    """What the operation does, as `OperationMetadata.verb` names it."""

    CREATE = "create"
    CANCEL = "cancel"


@dataclass(frozen=True, slots=True, kw_only=True)
class Operation:
    name: str
    # The clone job it acts on (OperationMetadata.target).
    target: str
    verb: Verb
    create_time: datetime
    # A create operation's response: the job as it was created.
    job: CloneJob | None = None

    @property
    def location(self) -> str:
        return str(OperationName.parse(self.name).location)

    @classmethod
    def new(
        cls, *, target: str, verb: Verb, now: datetime, job: CloneJob | None = None
    ) -> Operation:
        """A new operation, named in the location of its clone job."""
        vm = CloneJobName.parse(target).parent
        location = LocationName(project=vm.project, location=vm.location)
        millis = int(now.timestamp() * 1000)
        name = OperationName(
            location=location, operation_id=f"operation-{millis}-{secrets.token_hex(8)}"
        )
        return cls(name=str(name), target=target, verb=verb, create_time=now, job=job)
