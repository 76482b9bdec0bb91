"""Logging setup: plain text for people, or one JSON object per line for collectors.

A JSON line holds `ts` (RFC 3339, UTC), `level`, `logger` and `msg`, then every
field passed with `extra=` (the RPC line's method, code and duration_ms; the
engine's job, old_state, new_state and revision). Nothing here adds request
bodies or metadata: callers choose what goes into `extra`, and the RPC
interceptor never passes either.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import sys
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
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, handler, respect_handler_level=True)
    listener.start()
    atexit.register(listener.stop)  # drains what is queued before the process exits
    logging.basicConfig(level=level.upper(), handlers=[_Enqueue(records)], force=True)


class _Enqueue(logging.handlers.QueueHandler):
    """Queues records as they are: QueueHandler.prepare would format them here,
    on the caller's thread, which is the work this handler moves away."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record
