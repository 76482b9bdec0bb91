"""The worker: claims jobs for this replica and runs each under its lease.

It claims PENDING jobs, and jobs whose lease expired (their runner died), up
to its slots; jobs asked to cancel are claimed whatever the slots, since
finishing a cancel only deletes. It wakes when the change feed tells of a job
that may need a worker (created, cancelled, released), when one of its own
runners ends, when the earliest lease held elsewhere expires, and otherwise
polls slowly as a safety net.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from server.engine.runner import Runner
from server.store.base import JobStore, Lease, StoreError

log = logging.getLogger("clonejob.engine")

# The safety-net poll, and the wait after the store failed a claim.
POLL_INTERVAL = 5.0
RETRY_INTERVAL = 1.0
# Past the earliest lease's expiry by this much before claiming it.
EXPIRY_MARGIN = 0.05
# CANCELLING jobs claimed at once (whatever the slots: finishing a cancel only deletes).
CANCEL_CLAIM_LIMIT = 64


def replica_id() -> str:
    """This process's name as a lease owner: readable, and unique per start."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Worker:
    def __init__(
        self,
        store: JobStore,
        make_runner: Callable[[Lease], Runner],
        *,
        slots: int,
        ttl: float,
        owner: str | None = None,
    ) -> None:
        self.store = store
        self.slots = slots
        self.ttl = ttl
        self.owner = owner or replica_id()
        self._make_runner = make_runner
        self._runners: dict[str, Runner] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._in_slots: set[str] = set()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._giving_back: set[asyncio.Future[Any]] = set()
        # Whether the next claim looks for CANCELLING jobs no one runs. Not after a
        # runner that ended its job: the wake is for its slot, and a claim is a write.
        self._cancels_due = True

    @property
    def slots_in_use(self) -> int:
        return len(self._in_slots)

    @property
    def free_slots(self) -> int:
        return self.slots - len(self._in_slots)

    def runner(self, name: str) -> Runner | None:
        return self._runners.get(name)

    def running_names(self) -> list[str]:
        return list(self._runners)

    def poke(self) -> None:
        """A job may need a worker: claim soon."""
        self._cancels_due = True
        self._wake.set()

    async def start(self) -> int:
        """Claim what can be run now, then keep claiming; how many were claimed."""
        claimed = 0
        if self.slots > 0:
            claimed = await self._claim_once()
            self._loop_task = asyncio.create_task(self._claim_loop(), name="claim loop")
        return claimed

    async def stop(self) -> None:
        """Stop claiming; running steps stop where they are and their leases are
        given back, so another replica (or the next start) re-runs the steps."""
        self._stopping = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        for runner in self._runners.values():
            runner.stop()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _claim_loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                delay = await self._claim_delay()
            except StoreError as error:
                log.warning("claiming jobs failed: %s", error)
                delay = RETRY_INTERVAL
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                self._cancels_due = True  # the poll, or a lease's expiry

    async def _claim_delay(self) -> float:
        """Claim once; the seconds to wait before the next claim."""
        # A claim that lost a race for a job sees neither that job nor its new
        # lease's expiry: with a TTL shorter than the poll, poll once a TTL.
        delay = min(POLL_INTERVAL, self.ttl)
        if self._cancels_due:
            self._cancels_due = False
            try:
                cancelling = await self.store.claim(
                    self.owner, limit=CANCEL_CLAIM_LIMIT, ttl=self.ttl, cancelling=True
                )
            except BaseException:
                self._cancels_due = True
                raise
            if len(cancelling.leases) == CANCEL_CLAIM_LIMIT:
                self._cancels_due = True  # maybe more to claim: at once
                delay = 0.0
            self._start(cancelling.leases, in_slot=False)
        free = self.free_slots
        if free <= 0:
            return delay
        result = await self.store.claim(self.owner, limit=free, ttl=self.ttl)
        self._start(result.leases, in_slot=True)
        if len(result.leases) == free and self.free_slots <= 0:
            return delay
        if len(result.leases) == free:
            return 0.0  # maybe more to claim
        if result.next_expiry is not None:
            delay = min(delay, result.next_expiry + EXPIRY_MARGIN)
        return max(delay, 0.0)

    async def _claim_once(self) -> int:
        before = len(self._runners)
        try:
            await self._claim_delay()
        except StoreError as error:
            log.warning("claiming jobs failed: %s", error)
        return len(self._runners) - before

    def _start(self, leases: Sequence[Lease], *, in_slot: bool) -> None:
        for lease in leases:
            self._run(lease, in_slot=in_slot)

    def _run(self, lease: Lease, *, in_slot: bool) -> None:
        name = lease.job.name
        if self._stopping:
            log.info("%s: claimed (epoch %d) while stopping; given back", name, lease.epoch)
            task = asyncio.ensure_future(self._give_back(lease))
            self._giving_back.add(task)
            task.add_done_callback(self._giving_back.discard)
            return
        # A runner of an older lease of ours may still be winding down (it lost its
        # lease, which expired, and this claim took the job again): the new one starts
        # once the old one has ended, so the two never run a step at once.
        before = self._tasks.get(name)
        runner = self._runners[name] = self._make_runner(lease)
        if in_slot:
            self._in_slots.add(name)
        log.info("running %s under lease epoch %d", name, lease.epoch)
        task = self._tasks[name] = asyncio.create_task(
            _after(before, runner.run()), name=f"job {name}"
        )

        def done(t: asyncio.Task[None]) -> None:
            if self._runners.get(name) is runner:
                del self._runners[name]
                self._tasks.pop(name, None)
                self._in_slots.discard(name)
            if not t.cancelled() and t.exception() is not None:
                log.error("job %s stopped unexpectedly", name, exc_info=t.exception())
            if not runner.ended:
                self._cancels_due = True  # it may have left a cancellation unfinished
            if not self._stopping:
                self._wake.set()  # a slot is free, or the job may need another claim

        task.add_done_callback(done)

    async def _give_back(self, lease: Lease) -> None:
        """Release a lease claimed while stopping."""
        try:
            await self.store.release(lease.job.name, lease.epoch)
        except StoreError:
            pass  # it expires by itself


async def _after(before: asyncio.Task[None] | None, work: Coroutine[Any, Any, None]) -> None:
    if before is not None:
        try:
            await asyncio.shield(before)
        except BaseException:
            if not before.done():  # we were cancelled, not it
                work.close()
                raise
    await work
