"""The load generator: a separate process, pinned to its own core, speaking JSON lines.

Parent side: `LoadGenerator(spec, cpus=...)` starts `python -m bench.loadgen`, sends
the spec as one JSON line, and `result()` returns the JSON it answers; the watch
mode answers twice (`ready`, then after `go()` the `result`). The process is
always killed on exit.

Child side, by `spec["mode"]`:
- `unary`: `concurrency` calls in flight over one grpc.aio channel for `warmup`
  + `duration` seconds; calls/s and latency percentiles of the measured window.
- `latency`: one call at a time, cycling through `requests`; latency percentiles.
- `watch`: open `streams` watches (one channel per `per_channel` streams), wait
  for every first message, answer `ready`; on `go`, call Cancel on every name and
  time until each stream received its next message. Cancel goes to
  `cancel_target` when given (another replica), else to `target`; with
  `return_delays` the answer carries every stream's delay.

Requests and replies stay bytes on the client (no protobuf parsing in the loop),
so the client costs the same against the real and the bare server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import selectors
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any

PATH = "/clonejob.v1.CloneJobService/"
CHANNEL_OPTIONS = [
    # Separate connections per channel: without this, channels with equal
    # arguments share one subchannel (one TCP connection).
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


# --- parent side --------------------------------------------------------------


class LoadGeneratorError(RuntimeError):
    pass


class LoadGenerator:
    def __init__(self, spec: dict[str, Any], *, cpus: set[int] | None, log: Path) -> None:
        from bench.processes import PYTHON, ROOT, pin

        self._log = log
        env = dict(os.environ, BENCH_LOADGEN_CPUS=",".join(map(str, sorted(cpus or ()))))
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "bench.loadgen"],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
            )
        pin(self.proc.pid, cpus)
        self._buffer = b""
        self._send(json.dumps(spec))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def go(self) -> None:
        self._send("go")

    def result(self, timeout: float) -> dict[str, Any]:
        """The next JSON line the load generator writes, within `timeout` seconds."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LoadGeneratorError(f"no answer in {timeout:.0f} s: {self._tail()}")
                if sel.select(left):
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        self.proc.wait(5)
                        raise LoadGeneratorError(
                            f"exited with {self.proc.returncode}: {self._tail()}"
                        )
                    self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise LoadGeneratorError(answer["error"])
        return answer

    def _tail(self) -> str:
        try:
            return self._log.read_text(errors="replace")[-2000:]
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> LoadGenerator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def run(
    spec: dict[str, Any], *, cpus: set[int] | None, log: Path, timeout: float
) -> dict[str, Any]:
    """Run a one-answer mode (`unary`, `latency`) and return its JSON."""
    with LoadGenerator(spec, cpus=cpus, log=log) as gen:
        return gen.result(timeout)


# --- child side ---------------------------------------------------------------


def _ms(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far (from /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _create_request(parent: str, job_id: str) -> bytes:
    from clonejob_grpc import clone_job_pb2, clone_job_service_pb2

    job = clone_job_pb2.CloneJob()
    job.compute_engine_disks_target_details.SetInParent()
    return clone_job_service_pb2.CreateCloneJobRequest(
        parent=parent, clone_job_id=job_id, clone_job=job, request_id=str(uuid.uuid4())
    ).SerializeToString()


async def unary(spec: dict[str, Any]) -> dict[str, Any]:
    import grpc

    method = spec["method"]
    fixed = bytes.fromhex(spec["request"]) if spec.get("request") else None
    counter = 0
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    done_in_window = 0
    async with grpc.aio.insecure_channel(spec["target"], options=CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(PATH + method)
        await channel.channel_ready()
        start = time.perf_counter()
        begin = start + spec["warmup"]
        end = begin + spec["duration"]

        async def worker() -> None:
            nonlocal counter, done_in_window
            while True:
                sent = time.perf_counter()
                if sent >= end:
                    return
                if fixed is not None:
                    request = fixed
                else:
                    counter += 1
                    request = _create_request(spec["parent"], f"{spec['prefix']}{counter}")
                try:
                    await call(request, timeout=spec.get("call_timeout", 30.0))
                except grpc.aio.AioRpcError as error:
                    errors[error.code().name] += 1
                    continue
                now = time.perf_counter()
                if begin <= now < end:
                    done_in_window += 1
                    if sent >= begin:
                        latencies.append(now - sent)

        cpu: dict[str, float] = {}

        async def sample() -> None:
            # CPU used by the server and by this process during the measured window.
            await asyncio.sleep(max(0.0, begin - time.perf_counter()))
            cpu["server"] = -cpu_seconds(spec["server_pid"]) if spec.get("server_pid") else 0.0
            cpu["self"] = -cpu_seconds(os.getpid())
            await asyncio.sleep(max(0.0, end - time.perf_counter()))
            if spec.get("server_pid"):
                cpu["server"] += cpu_seconds(spec["server_pid"])
            cpu["self"] += cpu_seconds(os.getpid())

        await asyncio.gather(sample(), *(worker() for _ in range(spec["concurrency"])))
    return {
        "server_cpu_util": cpu["server"] / spec["duration"],
        "server_cpu_us_per_call": 1e6 * cpu["server"] / done_in_window if done_in_window else None,
        "loadgen_cpu_util": cpu["self"] / spec["duration"],
        "calls": done_in_window,
        "seconds": spec["duration"],
        "calls_per_s": done_in_window / spec["duration"],
        "p50_ms": _ms(latencies, 50),
        "p99_ms": _ms(latencies, 99),
        "errors": dict(errors),
        "attempted": counter,
    }


async def latency(spec: dict[str, Any]) -> dict[str, Any]:
    import grpc

    requests = [bytes.fromhex(r) for r in spec["requests"]]
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    async with grpc.aio.insecure_channel(spec["target"], options=CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(PATH + spec["method"])
        await channel.channel_ready()
        for request in requests[: spec.get("warmup_calls", 20)]:
            await call(request, timeout=30.0)
        deadline = time.perf_counter() + spec["duration"]
        i = 0
        while time.perf_counter() < deadline and i < spec["max_calls"]:
            request = requests[i % len(requests)]
            i += 1
            sent = time.perf_counter()
            try:
                await call(request, timeout=30.0)
            except grpc.aio.AioRpcError as error:
                errors[error.code().name] += 1
                continue
            latencies.append(time.perf_counter() - sent)
    return {
        "calls": len(latencies),
        "p50_ms": _ms(latencies, 50),
        "p90_ms": _ms(latencies, 90),
        "p99_ms": _ms(latencies, 99),
        "mean_ms": 1000 * sum(latencies) / len(latencies) if latencies else None,
        "errors": dict(errors),
    }


def _emit(answer: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


async def watch(spec: dict[str, Any]) -> dict[str, Any]:
    import grpc

    from clonejob_grpc import clone_job_service_pb2

    names: list[str] = spec["names"]
    streams: int = spec["streams"]
    per_channel: int = spec.get("per_channel", 100)
    loop = asyncio.get_running_loop()
    stream_names = [names[i % len(names)] for i in range(streams)]
    channels = [
        grpc.aio.insecure_channel(spec["target"], options=CHANNEL_OPTIONS)
        for _ in range(max(1, math.ceil(streams / per_channel)))
    ]
    control = grpc.aio.insecure_channel(
        spec.get("cancel_target") or spec["target"], options=CHANNEL_OPTIONS
    )
    ready = asyncio.Event()
    all_received = asyncio.Event()
    opened = failed = received = lost = 0
    open_errors: Counter[str] = Counter()
    first_states: Counter[str] = Counter()
    received_at: list[float] = []
    events: list[bytes] = []
    tasks: list[asyncio.Task[None]] = []

    def settle() -> None:
        if opened + failed == streams:
            ready.set()
        if received + failed + lost == streams:
            all_received.set()

    async def watcher(index: int) -> None:
        nonlocal opened, failed, received, lost
        channel = channels[index // per_channel]
        request = clone_job_service_pb2.WatchCloneJobRequest(
            name=stream_names[index]
        ).SerializeToString()
        call = channel.unary_stream(PATH + "WatchCloneJob")(
            request, timeout=spec.get("stream_timeout", 600.0)
        )
        try:
            first = await call.read()
            if first is grpc.aio.EOF:
                raise RuntimeError("stream ended before its first message")
        except (grpc.aio.AioRpcError, RuntimeError) as error:
            failed += 1
            key = error.code().name if isinstance(error, grpc.aio.AioRpcError) else str(error)
            open_errors[key] += 1
            settle()
            return
        opened += 1
        first_states[_state(first)] += 1
        settle()
        try:
            message = await call.read()
            # Heartbeats are not the change: wait for the next message with a job.
            while message is not grpc.aio.EOF and _is_heartbeat(message):
                message = await call.read()
        except grpc.aio.AioRpcError as error:
            open_errors["after_open:" + error.code().name] += 1
            message = grpc.aio.EOF
        if message is grpc.aio.EOF:
            lost += 1
            settle()
            return
        received_at.append(time.perf_counter())
        events.append(message)
        received += 1
        settle()
        # Read on to the end of the stream, so that it ends as the server ends it
        # (OK after the terminal state), not by this client going away.
        with contextlib.suppress(grpc.aio.AioRpcError):
            while await call.read() is not grpc.aio.EOF:
                pass

    try:
        await asyncio.gather(*(ch.channel_ready() for ch in [*channels, control]))
        t_open = time.perf_counter()
        tasks = [asyncio.create_task(watcher(i)) for i in range(streams)]
        try:
            await asyncio.wait_for(ready.wait(), spec.get("open_timeout", 120.0))
        except TimeoutError:
            pass
        _emit(
            {
                "event": "ready",
                "opened": opened,
                "failed": failed,
                "open_s": time.perf_counter() - t_open,
                "errors": dict(open_errors),
                "first_states": dict(first_states),
            }
        )
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if line.strip() != "go":
            return {"event": "result", "aborted": True}
        cancel = control.unary_unary(PATH + "CancelCloneJob")
        requests = [
            clone_job_service_pb2.CancelCloneJobRequest(name=n).SerializeToString() for n in names
        ]
        gate = asyncio.Semaphore(spec.get("cancel_concurrency", 64))
        cancel_done: list[float] = []

        async def trigger(request: bytes) -> None:
            async with gate:
                await cancel(request, timeout=60.0)
                cancel_done.append(time.perf_counter())

        t0 = time.perf_counter()
        await asyncio.gather(*(trigger(r) for r in requests))
        t1 = time.perf_counter()
        try:
            await asyncio.wait_for(all_received.wait(), spec.get("event_timeout", 120.0))
        except TimeoutError:
            pass
        # Let the streams end by themselves (bounded), then close.
        await asyncio.wait(tasks, timeout=spec.get("drain_timeout", 30.0))
        states = Counter(_state(m) for m in events)
        delays = [t - t0 for t in received_at]
        extra = {"delays_s": delays} if spec.get("return_delays") else {}
        return {
            **extra,
            "event": "result",
            "opened": opened,
            "received": received,
            "lost": lost,
            "cancel_s": t1 - t0,
            "first_cancel_return_s": min(cancel_done) - t0 if cancel_done else None,
            "fanout_s": max(delays) if delays else None,
            "after_return_s": max(received_at) - t1 if received_at else None,
            "p50_s": _ms(delays, 50) / 1000 if delays else None,
            "states": dict(states),
            "errors": dict(open_errors),
        }
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(ch.close() for ch in [*channels, control]))


def _is_heartbeat(message: bytes) -> bool:
    from clonejob_grpc import clone_job_service_pb2

    return clone_job_service_pb2.WatchCloneJobResponse.FromString(message).heartbeat


def _state(message: bytes) -> str:
    from clonejob_grpc import clone_job_pb2, clone_job_service_pb2

    state = clone_job_service_pb2.WatchCloneJobResponse.FromString(message).clone_job.state
    return clone_job_pb2.CloneJob.State.Name(state)


MODES = {"unary": unary, "latency": latency, "watch": watch}


def main() -> None:
    cpus = os.environ.get("BENCH_LOADGEN_CPUS", "")
    if cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    spec = json.loads(sys.stdin.readline())
    try:
        answer = asyncio.run(MODES[spec["mode"]](spec))
    except Exception as error:  # reported to the parent, which raises it
        answer = {"error": f"{type(error).__name__}: {error}"}
    _emit(answer)


if __name__ == "__main__":
    main()
