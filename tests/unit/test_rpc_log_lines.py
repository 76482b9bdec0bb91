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
