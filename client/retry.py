"""Retry and resume policy, shared by the async and the blocking client.

Everything here is free of I/O: the clients ask it whether and after how long
to try again, and do the sleeping and calling themselves. That keeps the one
policy in one place for both flavours.

Only UNAVAILABLE is retried, and only for calls that are safe to repeat (AIP-194):
Get, List, Cancel, and Create because the client always sends a request_id.
One exception: a CANCELLED that the *server* sent with no status details. gRPC's
core cancels calls that reach a server as it shuts down, before any handler runs
(grpc/grpc#41785), where UNAVAILABLE was meant; a call this client cancels itself
never gets here (grpc.aio raises asyncio.CancelledError for that), so a safe call
treats such a CANCELLED as UNAVAILABLE.
A watch resumes from the last revision it yielded after UNAVAILABLE (server
shutdown, dropped connection) or RESOURCE_EXHAUSTED/WATCHER_TOO_SLOW, and
starts afresh from revision 0 after OUT_OF_RANGE/REVISION_COMPACTED.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeAlias

import grpc

from client.errors import CloneJobError, from_grpc_error
from clonejob_grpc.clone_job_pb2 import CloneJob
from clonejob_grpc.clone_job_service_pb2 import WatchCloneJobRequest, WatchCloneJobResponse

__all__ = [
    "TERMINAL_STATES",
    "Backoff",
    "ReconnectHook",
    "RetryPolicy",
    "UnaryRetry",
    "WatchResume",
]

TERMINAL_STATES = frozenset({CloneJob.SUCCEEDED, CloneJob.FAILED, CloneJob.CANCELLED})

WATCHER_TOO_SLOW = "WATCHER_TOO_SLOW"
REVISION_COMPACTED = "REVISION_COMPACTED"

# Told of a watch's reconnects: the error when the stream dropped and is being
# resumed (again at each failed attempt), None once a resumed stream answers.
ReconnectHook: TypeAlias = Callable[[CloneJobError | None], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Exponential backoff with jitter: `initial`, multiplied by `multiplier`
    after each attempt, never above `maximum`; each delay is drawn uniformly
    from the upper half of the current step so that clients reconnecting
    together spread out."""

    initial: float = 0.1
    maximum: float = 5.0
    multiplier: float = 2.0

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """An endless series of jittered delays, in seconds."""
        uniform = (rng or random).uniform
        step = self.initial
        while True:
            yield uniform(step / 2, step)
            step = min(step * self.multiplier, self.maximum)


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How the clients retry: an immutable value, passed to a client.

    `attempts` bounds unary calls (the first try included); `deadline`, when
    set, bounds a unary call's whole time in seconds, every attempt and backoff
    included (the CLI's `--timeout`: a server that cannot be reached fails
    within it); `max_reconnect_time` bounds how long a watch keeps reconnecting
    without receiving anything before it raises the last error.
    """

    backoff: Backoff = field(default_factory=Backoff)
    # 7 attempts wait about 3 to 6 s in all: longer than gRPC's own ~1 s wait before
    # reconnecting after a refused connection, so a call made during a short server
    # restart succeeds instead of failing on the still-refused channel.
    attempts: int = 7
    deadline: float | None = None
    max_reconnect_time: float = 300.0

    def unary(self, *, idempotent: bool) -> UnaryRetry:
        """The retry state of one unary call, its deadline counted from now."""
        return UnaryRetry(self, idempotent=idempotent)

    def watch(
        self,
        name: str,
        *,
        after_revision: int,
        max_reconnect_time: float | None = None,
        on_reconnect: ReconnectHook | None = None,
    ) -> WatchResume:
        """The resume state of one watch."""
        return WatchResume(
            name,
            after_revision=after_revision,
            policy=self,
            max_reconnect_time=max_reconnect_time,
            on_reconnect=on_reconnect,
        )


class UnaryRetry:
    """The retry state of one unary call: `attempt_timeout(timeout)` is the
    deadline of the next attempt, `backoff_after(error)` says how long to wait
    before it, or raises the mapped error."""

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        idempotent: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy
        self._idempotent = idempotent
        self._clock = clock
        self._deadline = None if policy.deadline is None else clock() + policy.deadline
        self._attempt = 1
        self._delays = policy.backoff.delays()

    def attempt_timeout(self, timeout: float) -> float:
        """The deadline of the next attempt: `timeout`, or less if the call's
        whole deadline comes first."""
        if self._deadline is None:
            return timeout
        return max(0.0, min(timeout, self._deadline - self._clock()))

    def backoff_after(self, error: grpc.RpcError) -> float:
        """The delay before the next attempt; raises `CloneJobError` when the
        error is final (not UNAVAILABLE, not safe to repeat, out of attempts,
        or no time left before the call's deadline for another attempt)."""
        mapped = from_grpc_error(error)
        if (
            not self._idempotent
            or not _retryable(mapped)
            or self._attempt >= self._policy.attempts
        ):
            raise mapped from error
        delay = next(self._delays)
        if self._deadline is not None and self._clock() + delay >= self._deadline:
            raise mapped from error
        self._attempt += 1
        return delay


class WatchResume:
    """The state of one self-resuming watch.

    `request()` is the request for the next stream; `accept(response)` says
    whether to yield a response (never a heartbeat, never a revision at or
    below the last one yielded); `done` turns true once a terminal job was
    yielded; `backoff_after(error)` says how long to wait before resuming, or
    raises the mapped error. `on_reconnect`, if given, hears of each resume
    (see `ReconnectHook`).
    """

    def __init__(
        self,
        name: str,
        *,
        after_revision: int,
        policy: RetryPolicy,
        max_reconnect_time: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_reconnect: ReconnectHook | None = None,
    ) -> None:
        self._name = name
        self._policy = policy
        self._max_reconnect_time = (
            policy.max_reconnect_time if max_reconnect_time is None else max_reconnect_time
        )
        self._clock = clock
        self.last_revision = after_revision
        self._resume_from = after_revision
        self._failing_since: float | None = None
        self._delays = policy.backoff.delays()
        self._on_reconnect = on_reconnect
        self.done = False

    def request(self) -> WatchCloneJobRequest:
        """The request that opens (or resumes) the stream."""
        return WatchCloneJobRequest(name=self._name, after_revision=self._resume_from)

    def accept(self, response: WatchCloneJobResponse) -> bool:
        """Whether to yield this response; any message proves the stream alive."""
        if self._failing_since is not None and self._on_reconnect is not None:
            self._on_reconnect(None)
        self._failing_since = None
        self._delays = self._policy.backoff.delays()
        if response.heartbeat or not response.HasField("clone_job"):
            return False
        if response.revision <= self.last_revision:
            return False
        self.last_revision = self._resume_from = response.revision
        self.done = response.clone_job.state in TERMINAL_STATES
        return True

    def backoff_after(self, error: grpc.RpcError) -> float:
        """The delay before resuming; raises `CloneJobError` when the error
        cannot be resumed from, or reconnecting has taken too long."""
        mapped = from_grpc_error(error)
        if not _resumable(mapped):
            raise mapped from error
        if mapped.code == grpc.StatusCode.OUT_OF_RANGE:
            # The server no longer holds our revision: start from the current
            # job; `last_revision` still filters out what was yielded already.
            self._resume_from = 0
        else:
            self._resume_from = self.last_revision
        now = self._clock()
        if self._failing_since is None:
            self._failing_since = now
        delay = next(self._delays)
        if now + delay - self._failing_since > self._max_reconnect_time:
            raise mapped from error
        if self._on_reconnect is not None:
            self._on_reconnect(mapped)
        return delay


def _retryable(error: CloneJobError) -> bool:
    """UNAVAILABLE, or the CANCELLED a shutting-down server's core sends (see above):
    the server's own errors always carry an ErrorInfo, and that one carries none."""
    if error.code == grpc.StatusCode.UNAVAILABLE:
        return True
    return error.code == grpc.StatusCode.CANCELLED and not error.reason


def _resumable(error: CloneJobError) -> bool:
    if _retryable(error):
        return True
    if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return error.reason == WATCHER_TOO_SLOW
    if error.code == grpc.StatusCode.OUT_OF_RANGE:
        return error.reason == REVISION_COMPACTED
    return False
