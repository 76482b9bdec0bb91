"""Load: many concurrent clients against one real server process.

CLONEJOB_LOAD_CLIENTS client tasks (default 200) share ten channels (the typed
asyncio client, retries off so that no error hides) and loop for
CLONEJOB_LOAD_SECONDS (default 8): create a job (disks-only or VM, tiny disks,
a unique id and a request_id), get it, list a page of 50, cancel some, and
watch each to its end. Then: no error but the expected FAILED_PRECONDITION of
cancelling a finished job, every acknowledged job listed exactly once and
terminal, and the server's RSS after the load not far above its RSS after a
warm-up round of the same load.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from clonejob_rpc import TERMINAL, VM1, State, disks_body, vm_body

from client import CloneJobClient, CloneJobError, RetryPolicy

if TYPE_CHECKING:
    from conftest import Server, ServerPool

LOAD_SECONDS = float(os.environ.get("CLONEJOB_LOAD_SECONDS", "8"))
LOAD_CLIENTS = int(os.environ.get("CLONEJOB_LOAD_CLIENTS", "200"))
CHANNELS = 10
WARM_UP_SECONDS = 2.0
RSS_GROWTH_LIMIT_MIB = 100
CALL_TIMEOUT = 60.0  # a unary call under full load
WATCH_TIMEOUT = 120.0  # a job queued behind every other client's
NO_RETRY = RetryPolicy(attempts=1, max_reconnect_time=0.0)


def rss_mib(server: Server) -> float:
    """The server process's resident set size (VmRSS), in MiB."""
    assert server.process is not None
    code = server.process.poll()
    assert code is None, f"the server exited with {code}:\n{server.log_text()[-3000:]}"
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS in /proc/{server.process.pid}/status")


@dataclass
class Load:
    """What the clients did: calls by method, jobs acknowledged, errors."""

    clients: list[CloneJobClient]
    created: set[str] = field(default_factory=set)
    calls: Counter[str] = field(default_factory=Counter)
    expected: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    ends: Counter[str] = field(default_factory=Counter)
    _ids: int = 0

    def next_id(self, phase: str) -> str:
        self._ids += 1
        return f"{phase}-{self._ids}"

    async def run(self, phase: str, clients: int, seconds: float, seed: int) -> float:
        """`clients` tasks looping for `seconds`; the time the phase took."""
        started = time.monotonic()
        end = started + seconds
        async with asyncio.TaskGroup() as group:
            for i in range(clients):
                rng = random.Random(f"{seed}/{phase}/{i}")
                group.create_task(self.client_loop(self.clients[i % CHANNELS], rng, end, phase))
        return time.monotonic() - started

    async def client_loop(
        self, client: CloneJobClient, rng: random.Random, end: float, phase: str
    ) -> None:
        # Bounded by time, and by count in case calls return at once.
        for _ in range(100_000):
            if time.monotonic() >= end:
                return
            try:
                await self.iteration(client, rng, phase)
            except CloneJobError as error:
                self.errors.append(str(error))
            except TimeoutError:
                self.errors.append("a watch did not end in time")

    async def iteration(self, client: CloneJobClient, rng: random.Random, phase: str) -> None:
        job_id = self.next_id(phase)
        body = vm_body(f"{job_id}-vm") if rng.random() < 0.3 else disks_body()
        self.calls["create"] += 1
        job = await client.create(VM1, job_id, body, request_id=str(uuid.uuid4()))
        self.created.add(job.name)
        self.calls["get"] += 1
        got = await client.get(job.name)
        assert got.name == job.name
        self.calls["list"] += 1
        await client.list_page(VM1, page_size=50)
        if rng.random() < 0.2:
            await self.cancel(client, job.name)
        self.calls["watch"] += 1
        last = None
        async with asyncio.timeout(WATCH_TIMEOUT):
            async for change in client.watch(job.name, max_reconnect_time=0.0):
                last = change.clone_job
        if last is None or last.state not in TERMINAL:
            self.errors.append(f"the watch of {job.name} ended before a terminal state")
            return
        self.ends[State.Name(last.state)] += 1
        # Every reader sees the same end.
        self.calls["get"] += 1
        if (await client.get(job.name)).state != last.state:
            self.errors.append(f"{job.name}: Get and Watch disagree on the end")
        if rng.random() < 0.1:
            await self.cancel(client, job.name)

    async def cancel(self, client: CloneJobClient, name: str) -> None:
        self.calls["cancel"] += 1
        try:
            await client.cancel(name)
        except CloneJobError as error:
            if error.code != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            self.expected["cancel: FAILED_PRECONDITION"] += 1


async def list_all(client: CloneJobClient) -> list[str]:
    names: list[str] = []
    token = ""
    for _ in range(10_000):
        page = await client.list_page(VM1, page_size=50, page_token=token)
        names += [job.name for job in page.clone_jobs]
        assert all(job.state in TERMINAL for job in page.clone_jobs), [
            job.name for job in page.clone_jobs if job.state not in TERMINAL
        ]
        token = page.next_page_token
        if not token:
            return names
    raise AssertionError("List did not end")


@pytest.mark.slow
@pytest.mark.timeout(int(150 + 3 * LOAD_SECONDS))
async def test_load_many_clients_no_errors_every_job_listed_and_memory_bounded(
    servers: ServerPool, data_dir: Path, sample_vm: Callable[..., Path]
) -> None:
    sample_vm(data_dir, disks=1, disk_size="2MiB")
    server: Server = servers.start(data_dir, max_concurrent_jobs=8)
    seed = random.SystemRandom().randrange(2**32)
    clients = [
        CloneJobClient(server.address, timeout=CALL_TIMEOUT, retry=NO_RETRY)
        for _ in range(CHANNELS)
    ]
    warm, load = Load(clients), Load(clients)
    try:
        # Warm-up: the same load, briefly, so that caches, pools and the allocator settle.
        await warm.run("warm", LOAD_CLIENTS, WARM_UP_SECONDS, seed)
        rss_start = rss_mib(server)
        took = await load.run("load", LOAD_CLIENTS, LOAD_SECONDS, seed)
        # Every client watched its last job to its end, so the engine has drained.
        rss_end = rss_mib(server)
        listed = await list_all(clients[0])
    finally:
        for client in clients:
            await client.close()

    calls = sum(load.calls.values())
    summary = (
        f"load-test: clients={LOAD_CLIENTS} seconds={took:.1f} calls={calls}"
        f" calls_per_s={calls / took:.0f} errors={len(load.errors)} jobs={len(load.created)}"
        f" rss_start_mib={rss_start:.0f} rss_end_mib={rss_end:.0f}"
    )
    print(summary)
    print(
        f"calls: {dict(load.calls)}; expected errors: {dict(load.expected)};"
        f" jobs ended: {dict(load.ends)}; warm-up: {sum(warm.calls.values())} calls,"
        f" {len(warm.created)} jobs, {len(warm.errors)} errors"
    )
    errors = warm.errors + load.errors
    assert errors == [], f"{len(errors)} errors: {Counter(errors).most_common(5)}"
    counted = Counter(listed)
    assert [name for name, n in counted.items() if n > 1] == [], "listed more than once"
    created = warm.created | load.created
    assert set(listed) == created, (
        f"not listed: {sorted(created - set(listed))[:10]};"
        f" listed but never acknowledged: {sorted(set(listed) - created)[:10]}"
    )
    assert rss_end < rss_start + RSS_GROWTH_LIMIT_MIB, summary
