"""The per-RPC log lines made directly (the fast path of the RPC line thread) are
exactly what the configured formatter makes of the same record."""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import time
from collections.abc import Iterator

import pytest

from server.observability import logs

MSG = "%s/%s %s %s %.1f ms %s"
ARGS = ("clonejob.v1.CloneJobService", "GetCloneJob", "OK", "projects/p/x", 0.25, "ipv4:1")
FIELDS = {
    "service": ARGS[0],
    "method": ARGS[1],
    "job": ARGS[3],
    "code": "OK",
    "duration_ms": 0.25,
    "peer": "ipv4:1",
}


@contextlib.contextmanager
def configured(log_format: str, stream: io.StringIO) -> Iterator[logs._RpcLineSink]:
    """configure_logging into `stream`; the root logger as it was afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.configure_logging("INFO", log_format, stream)
    assert logs._rpc_sink is not None
    try:
        yield logs._rpc_sink
    finally:
        logs._rpc_sink.stop()
        logs._rpc_sink = None
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


@pytest.fixture(params=["text", "json"])
def sink(request: pytest.FixtureRequest) -> Iterator[logs._RpcLineSink]:
    with configured(request.param, io.StringIO()) as configured_sink:
        yield configured_sink


@pytest.mark.parametrize(
    "created",
    [time.time(), 1_796_000_000.0, 1_796_000_000.0009996, 1_796_000_000.9999996, 1_796_000_001.5],
)
def test_rpc_log_line_fast_path_matches_the_formatter(
    sink: logs._RpcLineSink, created: float
) -> None:
    record = logging.makeLogRecord(
        {
            "name": logs.RPC_LOGGER,
            "levelno": logging.INFO,
            "levelname": "INFO",
            "msg": MSG,
            "args": ARGS,
            "created": created,
            "msecs": (created - int(created)) * 1000,
            **FIELDS,
        }
    )
    line = sink._fast(created, "INFO", logs.RPC_LOGGER, MSG % ARGS, dict(FIELDS))
    assert line == sink._handler.format(record)


@pytest.mark.parametrize("created", [time.time(), 1_796_000_000.0009996, 1_796_000_001.5])
def test_other_log_lines_made_directly_match_the_formatter(
    sink: logs._RpcLineSink, created: float
) -> None:
    record = logging.getLogger("clonejob.engine").makeRecord(
        "clonejob.engine",
        logging.WARNING,
        "",
        0,
        "%s: %s -> %s (revision %d)",
        ("projects/p/x", "PENDING", "ACTIVE", 2),
        None,
        extra={"job": "projects/p/x", "old_state": "PENDING", "new_state": "ACTIVE"},
    )
    record.created, record.msecs = created, (created - int(created)) * 1000
    assert sink._record_line(record) == sink._handler.format(record)


def test_a_log_line_with_a_traceback_is_formatted_whole(sink: logs._RpcLineSink) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("clonejob.engine").makeRecord(
            "clonejob.engine", logging.ERROR, "", 0, "failed", (), sys.exc_info()
        )
    line = sink._record_line(record)
    assert line == sink._handler.format(record)
    assert "ValueError: boom" in line


def test_flush_writes_every_line_logged_before_it() -> None:
    stream = io.StringIO()
    with configured("text", stream):
        logging.getLogger("clonejob.server").info("listening on %s", "127.0.0.1:1")
        logs.log_rpc("%s ok", ("Get",), {})
        logs.flush_logs()
        lines = stream.getvalue().splitlines()
        assert [line.split(" ", 2)[2] for line in lines] == [
            "INFO clonejob.server: listening on 127.0.0.1:1",
            "INFO clonejob.rpc: Get ok",
        ]


def _grpc_logs_a_failed_send(method: str) -> None:
    """What grpc.aio's server logs when a send fails in the core before it has seen
    the client close the call (its message, its logger, its traceback)."""
    try:
        raise RuntimeError('Failed "execute_batch": (SendMessageOperation,)')
    except RuntimeError:
        logging.getLogger(logs.GRPC_AIO_LOGGER).exception(
            "ExecuteBatchError raised in core by servicer method [%s]" % method  # noqa: UP031
        )


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_send_on_a_call_its_client_left_is_a_warning_not_a_server_error(
    log_format: str,
) -> None:
    stream = io.StringIO()
    with configured(log_format, stream):
        _grpc_logs_a_failed_send("/clonejob.v1.CloneJobService/WatchCloneJob")
        # Anything else grpc logs keeps its level and its traceback.
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger(logs.GRPC_AIO_LOGGER).exception(
                "Unexpected [ValueError] raised by servicer method [/x.Y/Z]"
            )
        logs.flush_logs()
    text = stream.getvalue()
    first, *rest = text.splitlines()
    assert "WARNING" in first and "ERROR" not in first
    assert "/clonejob.v1.CloneJobService/WatchCloneJob: the call was gone" in first
    assert "execute_batch" not in text  # the first line's traceback is left out
    assert "ERROR" in rest[0] and "Unexpected [ValueError]" in rest[0]
    assert "ValueError: boom" in text


def test_configuring_logging_twice_filters_grpc_once() -> None:
    with configured("text", io.StringIO()):
        logs.configure_logging("INFO", "json", io.StringIO())
        filters = logging.getLogger(logs.GRPC_AIO_LOGGER).filters
        assert sum(isinstance(f, logs._ClientGoneDuringSend) for f in filters) == 1
