"""One in-process broadcast of committed changes, fanned out to watchers.

Each subscription has a bounded buffer: a watcher that falls further behind is
ended (WatcherTooSlowError) instead of growing the server's memory, and can
resume from its last revision. Publishing never waits for a watcher.
"""

from __future__ import annotations

import asyncio
from collections import deque

from server.domain.errors import WatchClosedError, WatcherTooSlowError
from server.domain.job import CloneJob


class Subscription:
    def __init__(self, hub: Hub, name: str, limit: int) -> None:
        self.name = name
        self._hub = hub
        self._limit = limit
        self._pending: deque[CloneJob] = deque()
        self._wake = asyncio.Event()
        self._overflowed = False
        self._closed = False

    def _push(self, job: CloneJob) -> None:
        if self._overflowed:
            return
        if len(self._pending) >= self._limit:
            self._overflowed = True
            self._pending.clear()
        else:
            self._pending.append(job)
        self._wake.set()

    def _close(self) -> None:
        self._closed = True
        self._wake.set()

    async def next(self, idle: float) -> CloneJob | None:
        """The next change, or None when `idle` seconds pass without one."""
        while not self._pending:
            if self._overflowed:
                raise WatcherTooSlowError(self.name, self._limit)
            if self._closed:
                raise WatchClosedError("the server is shutting down")
            self._wake.clear()
            try:
                async with asyncio.timeout(idle):  # no extra task per idle watcher
                    await self._wake.wait()
            except TimeoutError:
                return None
        if self._closed:
            raise WatchClosedError("the server is shutting down")
        return self._pending.popleft()

    def close(self) -> None:
        self._hub.unsubscribe(self)


class Hub:
    def __init__(self, buffer_limit: int = 1024) -> None:
        self._subscribers: dict[str, set[Subscription]] = {}
        self._buffer_limit = buffer_limit
        self._closed = False

    @property
    def open_subscriptions(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    def watched(self, name: str) -> bool:
        """Whether anyone here watches `name`."""
        return name in self._subscribers

    def names(self) -> list[str]:
        """The jobs watched here."""
        return list(self._subscribers)

    def subscribe(self, name: str) -> Subscription:
        sub = Subscription(self, name, self._buffer_limit)
        if self._closed:
            sub._close()
        else:
            self._subscribers.setdefault(name, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subscribers.get(sub.name)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subscribers[sub.name]

    def publish(self, job: CloneJob) -> None:
        for sub in self._subscribers.get(job.name, ()):
            sub._push(job)

    def close(self) -> None:
        """End every subscription; new ones end at once."""
        self._closed = True
        for subs in self._subscribers.values():
            for sub in subs:
                sub._close()
