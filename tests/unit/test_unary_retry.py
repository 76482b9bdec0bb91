"""UnaryRetry: attempts, and the whole-call deadline of RetryPolicy.deadline (the
CLI's --timeout), on a fake clock."""

from __future__ import annotations

import grpc
import pytest

from client import Backoff, NotFoundError, RetryPolicy, UnavailableError
from client.retry import UnaryRetry


class _Failure(grpc.RpcError):
    """A failed call as the sync stack raises it (an RpcError that is also a Call)."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return f"{self._code.name} from the fake"

    def trailing_metadata(self) -> tuple[()]:
        return ()


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


STEADY = Backoff(initial=1.0, maximum=1.0, multiplier=1.0)  # delays of 0.5 to 1 s


def test_unary_retry_without_a_deadline_stops_after_its_attempts() -> None:
    retry = RetryPolicy(backoff=STEADY, attempts=3).unary(idempotent=True)
    unavailable = _Failure(grpc.StatusCode.UNAVAILABLE)

    delays = [retry.backoff_after(unavailable) for _ in range(2)]

    assert all(0.5 <= d <= 1.0 for d in delays), delays
    assert retry.attempt_timeout(30.0) == 30.0
    with pytest.raises(UnavailableError):
        retry.backoff_after(unavailable)


def test_unary_retry_deadline_shortens_each_attempt_and_ends_the_retries() -> None:
    clock = _Clock()
    policy = RetryPolicy(backoff=STEADY, attempts=100, deadline=2.5)
    retry = UnaryRetry(policy, idempotent=True, clock=clock)
    unavailable = _Failure(grpc.StatusCode.UNAVAILABLE)

    assert retry.attempt_timeout(30.0) == 2.5  # the whole call's budget, not 30 s
    assert retry.attempt_timeout(1.0) == 1.0
    clock.now += 1.0
    delay = retry.backoff_after(unavailable)
    clock.now += delay
    assert retry.attempt_timeout(30.0) == pytest.approx(1.5 - delay)

    clock.now = 100.0 + 2.4  # no time left for another delay and attempt
    with pytest.raises(UnavailableError) as raised:
        retry.backoff_after(unavailable)
    assert raised.value.__cause__ is unavailable
    clock.now = 100.0 + 3.0
    assert retry.attempt_timeout(30.0) == 0.0


def test_unary_retry_never_retries_an_error_of_the_service() -> None:
    retry = RetryPolicy(backoff=STEADY, deadline=60.0).unary(idempotent=True)

    with pytest.raises(NotFoundError):
        retry.backoff_after(_Failure(grpc.StatusCode.NOT_FOUND))
