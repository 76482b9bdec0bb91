"""Logging setup: plain text for people, or one JSON object per line for collectors.

A JSON line holds `ts` (RFC 3339, UTC), `level`, `logger` and `msg`, then every
field passed with `extra=` (the RPC line's method, code and duration_ms; the
engine's job, old_state, new_state and revision). Nothing here adds request
bodies or metadata: callers choose what goes into `extra`, and the RPC
observer never passes either.
"""

from __future__ import annotations

import atexit
import json
import logging
import queue
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any, TextIO

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", (), None)).keys()
    | {"message", "asctime", "taskName"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg and the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in line:
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def configure_logging(
    level: str = "INFO", log_format: str = "text", stream: TextIO | None = None
) -> None:
    """Send every logger's records to `stream` (stderr) in the chosen format."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    # Formatting and writing happen on a thread of their own: a slow or blocked
    # stderr never stalls the event loop, which only queues each record.
    # No line names a source file, thread or process: the logging module need not
    # walk the caller's stack, nor look them up, for every record.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    global _rpc_sink
    if _rpc_sink is not None:
        _rpc_sink.stop()
    _rpc_sink = sink = _RpcLineSink(handler)
    logging.basicConfig(level=level.upper(), handlers=[_Enqueue(sink)], force=True)
    grpc_log = logging.getLogger(GRPC_AIO_LOGGER)
    if not any(isinstance(f, _ClientGoneDuringSend) for f in grpc_log.filters):
        grpc_log.addFilter(_ClientGoneDuringSend())


# grpc.aio's server logs here (its Cython module's logger).
GRPC_AIO_LOGGER = "grpc._cython.cygrpc"


class _ClientGoneDuringSend(logging.Filter):
    """grpc.aio's ERROR for a send that failed in the core because the call was
    gone (its client cancelled, its deadline passed, its connection dropped) as the
    server wrote to it is a WARNING here, without grpc's traceback. grpc says
    nothing when it already knows the client closed the call, and logs this ERROR
    when the failed send comes first: a race, seen in the chaos test as a watcher
    was cut off. Nothing of the server failed, so it must not read as a server
    fault. Every other grpc record is left as it is."""

    PREFIX = "ExecuteBatchError raised in core by servicer method"
    MESSAGE = (
        "%s: the call was gone (cancelled by its client, past its deadline or cut off)"
        " as the server sent to it"
    )

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        try:
            text = record.getMessage()
        except Exception:  # not ours to judge: the handler reports it as logging does
            return True
        if text.startswith(self.PREFIX):
            # grpc puts the method in the message: "... servicer method [/pkg.Svc/M]".
            method = text[len(self.PREFIX) :].strip().strip("[]") or "?"
            record.msg = self.MESSAGE
            record.args = (method,)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = None
            record.exc_text = None
        return True


class _Enqueue(logging.Handler):
    """Queues records as they are, on the line thread's queue (so every line, an
    RPC's or another, keeps its order): formatting them here, on the caller's
    thread, is the work this handler moves away."""

    def __init__(self, sink: _RpcLineSink) -> None:
        super().__init__()
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self._sink.put_record(record)
        if record.levelno >= logging.WARNING:
            self._sink.wake()  # trouble is told at once, not in the next batch


class _RpcLineSink:
    """Every log line, written by a thread of its own. The per-RPC lines, the
    busiest log there is, are queued as tuples (the thread makes their records);
    other lines as records. The thread wakes every FLUSH_INTERVAL, formats what
    was queued with the one handler, and writes it in a batch (one write and one
    flush, under the handler's lock, so lines never interleave)."""

    def __init__(self, handler: logging.StreamHandler[TextIO]) -> None:
        self._handler = handler
        formatter = handler.formatter
        # The two formatters configure_logging sets are made directly (see _fast).
        self._kind: str | None = None
        if type(formatter) is JsonFormatter:
            self._kind = "json"
        elif type(formatter) is logging.Formatter and formatter._fmt == TEXT_FORMAT:
            self._kind = "text"
        self._second = -1
        self._stamp = ""
        self._queue: queue.SimpleQueue[_Item | threading.Event | None] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rpc-log", daemon=True)
        self._thread.start()
        atexit.register(self.stop)

    def put(self, msg: str, args: tuple[Any, ...], fields: dict[str, Any]) -> None:
        self._queue.put((time.time(), msg, args, fields))

    def put_record(self, record: logging.LogRecord) -> None:
        self._queue.put(record)

    def wake(self) -> None:
        """Write what is queued now rather than at the next interval."""
        self._wake.set()

    def flush(self, timeout: float = 2.0) -> None:
        """Return once every line queued before this call is written (or `timeout`)."""
        if not self._thread.is_alive():
            return
        written = threading.Event()
        self._queue.put(written)
        self._wake.set()
        written.wait(timeout)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            # Woken by time, not by each line: a line queued costs the event loop no
            # thread hand-off. A line waits at most FLUSH_INTERVAL to be written (a
            # warning, or a flush, wakes the thread at once).
            self._wake.wait(FLUSH_INTERVAL)
            self._wake.clear()
            batch: list[_Item | threading.Event | None] = []
            while len(batch) < 4096:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if not batch:
                continue
            lines: list[str] = []
            flushed: list[threading.Event] = []
            for item in batch:
                if item is None:
                    self._write(lines)
                    for event in flushed:
                        event.set()
                    return
                if isinstance(item, threading.Event):
                    flushed.append(item)
                    continue
                if isinstance(item, logging.LogRecord):
                    if item.levelno >= self._handler.level:
                        try:
                            lines.append(self._record_line(item))
                        except Exception:  # as logging does: a bad line is not fatal
                            continue
                    continue
                created, msg, args, fields = item
                try:
                    fast = self._fast(created, "INFO", RPC_LOGGER, msg % args, fields)
                except Exception:  # a line that cannot be formatted is dropped, not fatal
                    continue
                if fast is not None:
                    lines.append(fast)
                    continue
                record = logging.makeLogRecord(
                    {
                        "name": RPC_LOGGER,
                        "levelno": logging.INFO,
                        "levelname": "INFO",
                        "msg": msg,
                        "args": args,
                        "created": created,
                        "msecs": (created - int(created)) * 1000,
                        **fields,
                    }
                )
                try:
                    lines.append(self._handler.format(record))
                except Exception:  # a line that cannot be formatted is dropped, not fatal
                    continue
            self._write(lines)
            for event in flushed:
                event.set()

    def _record_line(self, record: logging.LogRecord) -> str:
        """A record's line: made directly like an RPC's, unless it carries a traceback."""
        if self._kind is not None and not record.exc_info and not record.stack_info:
            fields = (
                {
                    key: value
                    for key, value in vars(record).items()
                    if key not in _STANDARD and not key.startswith("_")
                }
                if self._kind == "json"
                else {}
            )
            line = self._fast(
                record.created, record.levelname, record.name, record.getMessage(), fields
            )
            if line is not None:
                return line
        return self._handler.format(record)

    def _fast(
        self, created: float, level: str, logger: str, text: str, fields: dict[str, Any]
    ) -> str | None:
        """The line the handler's formatter would make, made directly with the
        timestamp's date and time cached per second; None for another formatter."""
        if self._kind is None:
            return None
        if self._kind == "json":  # as datetime.fromtimestamp rounds
            second, fraction = divmod(round(created * 1_000_000), 1_000_000)
        else:  # as logging.Formatter truncates
            second, fraction = int(created), int((created - int(created)) * 1_000_000)
        if second != self._second:
            self._second = second
            if self._kind == "json":
                stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            else:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._stamp = stamp
        if self._kind == "json":
            line: dict[str, Any] = {
                "ts": f"{self._stamp}.{fraction // 1000:03d}+00:00",
                "level": level,
                "logger": logger,
                "msg": text,
            }
            for key, value in fields.items():
                line.setdefault(key, value)
            return json.dumps(line, default=str, ensure_ascii=False)
        return f"{self._stamp},{fraction // 1000:03d} {level} {logger}: {text}"

    def _write(self, lines: list[str]) -> None:
        if not lines:
            return
        self._handler.acquire()
        try:
            stream = self._handler.stream
            stream.write("\n".join(lines) + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass  # stderr gone (closed pipe): nothing to tell anyone
        finally:
            self._handler.release()


RPC_LOGGER = "clonejob.rpc"
# A queued line: an RPC's (time, message, args, fields), or any other record.
_Item = tuple[float, str, tuple[Any, ...], dict[str, Any]] | logging.LogRecord
# How often the RPC line thread writes what was queued.
FLUSH_INTERVAL = 0.05
_rpc_sink: _RpcLineSink | None = None
_rpc_log = logging.getLogger(RPC_LOGGER)


def flush_logs() -> None:
    """Write every line logged so far before returning (a start line that tools
    read as soon as the port file appears, say)."""
    if _rpc_sink is not None:
        _rpc_sink.flush()


def log_rpc(msg: str, args: tuple[Any, ...], fields: dict[str, Any]) -> None:
    """One line per RPC: through the fast sink once configure_logging has run,
    else (a server embedded in tests) through the logging module as usual."""
    if not _rpc_log.isEnabledFor(logging.INFO):
        return
    if _rpc_sink is not None:
        _rpc_sink.put(msg, args, fields)
    else:
        _rpc_log.info(msg, *args, extra=fields)
