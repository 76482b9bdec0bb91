"""What the current call's caller may read, for the handlers that need it.

The authorizer decides before a handler runs; most handlers then need nothing
more (a name names one project). A List across projects (`projects/-/…`,
AIP-159) does: it must return only the jobs of the projects the caller's token
covers, so that a wildcard never reveals whether another project has jobs. The
guard in `registration` sets this for the call; it is per task, so per call.
"""

from __future__ import annotations

from contextvars import ContextVar

# The projects the caller may read; None when it may read every project (no
# tokens configured, or a token for "*").
readable_projects: ContextVar[frozenset[str] | None] = ContextVar(
    "readable_projects", default=None
)
