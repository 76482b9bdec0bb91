"""Prometheus metrics of one server, on their own registry and their own port.

Each `Metrics` owns a `CollectorRegistry`, so several servers can run in one
process (tests) without their series mixing. The endpoint is prometheus_client's
WSGI server on a daemon thread: scrapes never touch the event loop, and `close`
shuts it down. Job counts by state are the whole fleet's, read from the store
at scrape time (between stores reads, from this server's own committed changes);
queue, slot and watch gauges are read from their owners at scrape time too.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import threading
import time
from collections.abc import Callable, Mapping
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from server.domain.job import CloneJob, State, StepKind

# RPCs: from sub-millisecond Gets to watches that last hours.
RPC_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600, 3600)
# Steps: seconds for small disks to hours for large ones.
STEP_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 600, 1800, 3600, 3 * 3600, 12 * 3600)


def parse_listen(listen: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPv6]:PORT` → (host, port); ValueError when it is neither."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{listen!r} is not HOST:PORT")
    return host.removeprefix("[").removesuffix("]"), int(port)


class Metrics:
    """The service's metrics; the engine's observer and the RPC observer feed them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # RPCs are counted in plain numbers and exported at scrape time by
        # _RpcCounts: an RPC costs a few dict operations, not Prometheus' locks.
        # Method names come from registered handlers only (unknown methods never get
        # here), so these stay as small as the service.
        self._rpc_counts: dict[tuple[str, str, str], list[float]] = {}
        self._rpc_durations: dict[tuple[str, str], _Durations] = {}
        r.register(_RpcCounts(self))
        self._tally: dict[State, int] = dict.fromkeys(State, 0)
        self._count_fn: Callable[[], Mapping[State, int] | None] | None = None
        r.register(_JobCounts(self))
        self.step_duration = Histogram(
            "clonejob_step_duration_seconds",
            "Duration of ended steps (succeeded, failed or cancelled)",
            ["step"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.open_watch_streams = Gauge(
            "clonejob_open_watch_streams", "Open WatchCloneJob streams", registry=r
        )
        self.queue_depth = Gauge(
            "clonejob_engine_queue_depth", "Jobs waiting for a free slot", registry=r
        )
        self.running_jobs = Gauge(
            "clonejob_engine_running_jobs", "Jobs holding a slot, running their steps", registry=r
        )
        self.bytes_copied = Counter(
            "clonejob_bytes_copied",
            "Bytes of disk data copied by preparing_vm_disks: the snapshot disks' allocated"
            " extents, as in the watch's progress (holes are not counted)",
            registry=r,
        )
        for step in StepKind:
            self.step_duration.labels(step=step.value)
        self._copied: dict[str, int] = {}  # bytes counted so far of each job's disk copy
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.url = ""  # of the endpoint, once it serves

    # -- feeds --

    def observe_rpc(self, service: str, method: str, code: str, seconds: float) -> None:
        count = self._rpc_counts.get((service, method, code))
        if count is None:
            count = self._rpc_counts[(service, method, code)] = [0, time.time()]
        count[0] += 1
        durations = self._rpc_durations.get((service, method))
        if durations is None:
            durations = self._rpc_durations[(service, method)] = _Durations()
        durations.observe(seconds)

    def count_jobs(self, counts: Mapping[State, int]) -> None:
        """Start the job gauges from the store, before any change is observed."""
        for state in State:
            self._tally[state] = counts.get(state, 0)

    def count_jobs_with(self, fn: Callable[[], Mapping[State, int] | None]) -> None:
        """Count jobs by state with `fn` at each scrape (on the endpoint's thread);
        when it returns None, the counts kept from this server's changes serve."""
        self._count_fn = fn

    def job_counts(self) -> Mapping[State, int]:
        counts = self._count_fn() if self._count_fn is not None else None
        if counts is None:
            return self._tally
        self._tally = {state: counts.get(state, 0) for state in State}
        return self._tally

    def track(
        self,
        *,
        queued: Callable[[], int],
        running: Callable[[], int],
        open_watches: Callable[[], int],
    ) -> None:
        """Gauges read at scrape time (on the endpoint's thread: reads only)."""
        self.queue_depth.set_function(queued)
        self.running_jobs.set_function(running)
        self.open_watch_streams.set_function(open_watches)

    def on_change(self, old: CloneJob | None, new: CloneJob) -> None:
        """The engine's observer: called after each committed change, in order."""
        if old is None:
            self._tally[new.state] += 1
        elif old.state is not new.state:
            self._tally[old.state] -= 1
            self._tally[new.state] += 1
        for i, step in enumerate(new.steps):
            if step.end_time is None:
                continue
            if old is not None and i < len(old.steps) and old.steps[i].end_time is not None:
                continue  # ended before this change
            seconds = (step.end_time - step.start_time).total_seconds()
            self.step_duration.labels(step=step.kind.value).observe(max(seconds, 0.0))
        self._count_bytes(old, new)

    def _count_bytes(self, old: CloneJob | None, new: CloneJob) -> None:
        # Progress counts data bytes (holes left out). Its commits are coalesced:
        # count their increases as they come and, when the copy ends well, the rest
        # up to its total.
        running = new.running_step
        if running is not None and running.kind is StepKind.PREPARING_VM_DISKS:
            if new.progress is not None:
                self._add_bytes(new.name, new.progress.bytes_done)
            return
        before = None if old is None else old.running_step
        if (
            old is not None
            and before is not None
            and before.kind is StepKind.PREPARING_VM_DISKS
            # The copy ended well: the next step started, or the job succeeded with it.
            and new.state not in (State.CANCELLING, State.CANCELLED, State.FAILED)
            and old.progress is not None
        ):
            self._add_bytes(new.name, old.progress.bytes_total)
        self._copied.pop(new.name, None)

    def _add_bytes(self, name: str, done: int) -> None:
        counted = self._copied.get(name, 0)
        if done < counted:  # the step started over (after a restart): a new copy
            counted = 0
        if done > counted:
            self.bytes_copied.inc(done - counted)
        self._copied[name] = done

    # -- the endpoint --

    async def serve(self, listen: str) -> int:
        """Serve /metrics on `listen` (HOST:PORT; port 0 picks one); the bound port."""
        host, port = parse_listen(listen)
        # Binding resolves the host name: off the event loop.
        httpd, self._thread = await asyncio.to_thread(start_http_server, port, host, self.registry)
        self._httpd = httpd
        self.port = int(httpd.server_port)
        self.url = f"http://{listen.rpartition(':')[0]}:{self.port}/metrics"
        return self.port

    async def close(self) -> None:
        """Stop the endpoint (if it runs) and wait for its thread."""
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is None:
            return

        def shut() -> None:
            httpd.shutdown()  # waits for serve_forever to return
            httpd.server_close()
            if thread is not None:
                thread.join()

        await asyncio.to_thread(shut)


class _Durations:
    """One histogram's numbers: a count per bucket (not cumulative), the sum, and
    when it was created."""

    __slots__ = ("buckets", "created", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(RPC_BUCKETS) + 1)  # the last: above every bound
        self.sum = 0.0
        self.created = time.time()

    def observe(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(RPC_BUCKETS, seconds)] += 1
        self.sum += seconds


def _le(bound: float) -> str:
    """A bucket's `le` label as prometheus_client writes it (`0.001`, `1.0`, `+Inf`)."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


class _RpcCounts(Collector):
    """`clonejob_rpcs_total{service,method,code}` and
    `clonejob_rpc_duration_seconds{service,method}`, from Metrics' plain numbers."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> list[Metric]:
        m = self._metrics
        counter = CounterMetricFamily(
            "clonejob_rpcs",
            "RPCs ended, by service, method and status code",
            labels=["service", "method", "code"],
        )
        # list(...) copies in one step under the GIL: the event loop may add keys.
        for (service, method, code), (count, created) in list(m._rpc_counts.items()):
            counter.add_metric([service, method, code], count, created=created)
        histogram = HistogramMetricFamily(
            "clonejob_rpc_duration_seconds",
            "RPC duration; for streams, the stream's lifetime",
            labels=["service", "method"],
        )
        for (service, method), durations in list(m._rpc_durations.items()):
            counts = list(durations.buckets)
            cumulative, buckets = 0, []
            for bound, n in zip((*RPC_BUCKETS, math.inf), counts, strict=True):
                cumulative += n
                buckets.append((_le(bound), cumulative))
            histogram.add_metric([service, method], buckets, durations.sum, timestamp=None)
            histogram.samples.append(
                Sample(
                    "clonejob_rpc_duration_seconds_created",
                    {"service": service, "method": method},
                    durations.created,
                )
            )
        return [counter, histogram]


class _JobCounts(Collector):
    """`clonejob_jobs{state}`: counted at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> list[Metric]:
        family = GaugeMetricFamily("clonejob_jobs", "Clone jobs by state", labels=["state"])
        for state, count in self._metrics.job_counts().items():
            family.add_metric([state.name], count)
        return [family]
