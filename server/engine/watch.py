"""A watch: the job's history after a revision, then its live changes.

Live changes come from this replica's broadcast, which hears of changes made
by any replica (through the change feed). A change can reach the broadcast
out of order or after a gap — another replica's commit announced late, or
missed while the feed reconnected — so a watcher that sees a revision more
than one past its last reads the missing ones from the store: every committed
change is delivered once and in order, whichever replica committed it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from server.domain.errors import RevisionOutOfRangeError
from server.domain.job import CloneJob
from server.engine.changes import JobChanges


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Sent on an idle watch: the job is still at `revision`."""

    revision: int


async def watch(
    changes: JobChanges, name: str, *, after_revision: int, heartbeat_interval: float
) -> AsyncGenerator[CloneJob | Heartbeat, None]:
    """Every committed change after `after_revision`, once and in order.

    With `after_revision` 0 the first item is the current job. Ends after
    the job's terminal state; raises WatchClosedError at shutdown and
    WatcherTooSlowError when the reader falls behind.
    """
    sub = changes.hub.subscribe(name)  # before reading, so no change falls in between
    try:
        job = await changes.get(name)
        last = after_revision
        if after_revision > job.revision:
            # Maybe only this replica has not heard of it yet: ask the store.
            job = await changes.fresh(name)
            if after_revision > job.revision:
                raise RevisionOutOfRangeError(name, after_revision, 0, job.revision)
        if after_revision <= 0:
            yield job
            last = job.revision
        elif after_revision < job.revision:
            for past in await _history(changes, name, after_revision, job.revision):
                yield past
                last = past.revision
                if past.state.terminal:  # it may have ended after `job` was read
                    return
        if job.state.terminal and last >= job.revision:
            return
        while True:
            item = await sub.next(heartbeat_interval)
            if item is None:
                yield Heartbeat(last)
                continue
            if item.revision <= last:
                continue
            if item.revision > last + 1:  # a gap: the missing changes are in the store
                for past in await _history(changes, name, last, item.revision):
                    if past.revision <= last:
                        continue
                    yield past
                    last = past.revision
                    if past.state.terminal:
                        return
                continue
            yield item
            last = item.revision
            if item.state.terminal:
                return
    finally:
        sub.close()


async def _history(
    changes: JobChanges, name: str, after: int, current: int
) -> Sequence[CloneJob]:
    """The revisions after `after`, starting right after it; REVISION_COMPACTED
    when the store no longer holds them."""
    store = changes.store
    oldest = await store.oldest_revision(name)
    if after < oldest - 1:
        raise RevisionOutOfRangeError(name, after, oldest, current)
    history = await store.revisions(name, after=after)
    if not history or history[0].revision != after + 1:
        # Compacted between the two reads: resuming would skip changes.
        oldest = history[0].revision if history else current + 1
        raise RevisionOutOfRangeError(name, after, oldest, current)
    for past in history:
        changes.remember(past)
    return history
