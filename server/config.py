"""Server configuration: one frozen dataclass, from flags and CLONEJOB_* variables."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def default_data_dir(env: Mapping[str, str] = os.environ) -> Path:
    """$CLONEJOB_DATA_DIR, else $XDG_DATA_HOME/clonejob, else ~/.local/share/clonejob."""
    if env.get("CLONEJOB_DATA_DIR"):
        return Path(env["CLONEJOB_DATA_DIR"])
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "clonejob"


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    listen: str = "127.0.0.1:50051"
    data_dir: Path
    store: str | None = None
    store_connect_timeout: float = 30.0
    lease_ttl: float = 15.0
    max_concurrent_jobs: int = 4
    heartbeat_interval: float = 30.0
    max_watches: int = 10_000
    watch_buffer: int = 1024
    revision_retention: int = 1000
    shutdown_grace: float = 10.0
    port_file: Path | None = None
    log_level: str = "INFO"
    log_format: str = "text"
    metrics_listen: str | None = None
    fault_plan: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    tokens_file: Path | None = None
    insecure: bool = False

    @property
    def database(self) -> Path:
        return self.data_dir / "clonejob.db"


_SIZE = re.compile(r"(\d+)\s*(B|KiB|MiB|GiB|TiB|K|M|G|T)?", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str) -> int:
    """`64MiB`, `1GiB`, `512` (bytes) → bytes."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 64MiB or 1GiB")
    unit = (match.group(2) or "").lower()[:1]
    return int(match.group(1)) * _UNITS[unit]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return value


def _lease_ttl(text: str) -> float:
    value = float(text)
    if not 1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text} must be between 1 and 3600 seconds")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
    return value


def _log_level(text: str) -> str:
    value = text.strip().upper()
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise argparse.ArgumentTypeError(f"{text!r} is not DEBUG, INFO, WARNING or ERROR")
    return value


def _log_format(text: str) -> str:
    value = text.strip().lower()
    if value not in ("text", "json"):
        raise argparse.ArgumentTypeError(f"{text!r} is not text or json")
    return value


def _host_port(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return text


# flag, environment variable, type, help
SERVE_OPTIONS: Sequence[tuple[str, str, Callable[[str], Any], str]] = (
    ("--listen", "CLONEJOB_LISTEN", str, "HOST:PORT to serve gRPC on (default 127.0.0.1:50051)"),
    ("--data-dir", "CLONEJOB_DATA_DIR", Path, "where the database, snapshots and targets live"),
    (
        "--store",
        "CLONEJOB_STORE",
        str,
        "postgresql://user@host:5432/db: keep jobs in PostgreSQL, shared by every replica"
        " (default: SQLite in the data dir)",
    ),
    (
        "--store-connect-timeout",
        "CLONEJOB_STORE_CONNECT_TIMEOUT",
        _positive_float,
        "seconds to keep trying to reach PostgreSQL at start before exiting (default 30)",
    ),
    (
        "--lease-ttl",
        "CLONEJOB_LEASE_TTL",
        _lease_ttl,
        "seconds a replica's lease on a running job lasts unrenewed; another replica"
        " takes a job over this long after its runner died (default 15; PostgreSQL only)",
    ),
    (
        "--max-concurrent-jobs",
        "CLONEJOB_MAX_CONCURRENT_JOBS",
        _non_negative_int,
        "jobs this replica runs at once; more wait PENDING; 0: serve RPCs only (default 4)",
    ),
    (
        "--heartbeat-interval",
        "CLONEJOB_HEARTBEAT_INTERVAL",
        _positive_float,
        "seconds between heartbeats on an idle watch (default 30)",
    ),
    (
        "--max-watches",
        "CLONEJOB_MAX_WATCHES",
        _positive_int,
        "open watch streams allowed; more get RESOURCE_EXHAUSTED (default 10000)",
    ),
    (
        "--watch-buffer",
        "CLONEJOB_WATCH_BUFFER",
        _positive_int,
        "changes buffered per watcher before it is cut off as too slow (default 1024)",
    ),
    (
        "--revision-retention",
        "CLONEJOB_REVISION_RETENTION",
        _positive_int,
        "revisions kept per job for watch resume; older ones are OUT_OF_RANGE (default 1000)",
    ),
    (
        "--shutdown-grace",
        "CLONEJOB_SHUTDOWN_GRACE",
        _positive_float,
        "seconds calls in flight get to finish at shutdown (default 10)",
    ),
    (
        "--port-file",
        "CLONEJOB_PORT_FILE",
        Path,
        "write the bound port here once serving (useful with port 0)",
    ),
    (
        "--log-level",
        "CLONEJOB_LOG_LEVEL",
        _log_level,
        "DEBUG, INFO, WARNING or ERROR (default INFO)",
    ),
    (
        "--log-format",
        "CLONEJOB_LOG_FORMAT",
        _log_format,
        "text, or json: one JSON object per line (default text)",
    ),
    (
        "--metrics-listen",
        "CLONEJOB_METRICS_LISTEN",
        _host_port,
        "HOST:PORT to serve Prometheus metrics on at /metrics (default: no metrics endpoint)",
    ),
    ("--tls-cert", "CLONEJOB_TLS_CERT", Path, "PEM certificate chain: serve over TLS"),
    ("--tls-key", "CLONEJOB_TLS_KEY", Path, "PEM private key of --tls-cert"),
    (
        "--tls-client-ca",
        "CLONEJOB_TLS_CLIENT_CA",
        Path,
        "PEM CA bundle: require client certificates signed by it (mutual TLS)",
    ),
    (
        "--tokens-file",
        "CLONEJOB_TOKENS_FILE",
        Path,
        "JSON file of token digests, projects and access: require bearer tokens",
    ),
    (
        "--fault-plan",
        "CLONEJOB_FAULT_PLAN",
        Path,
        "for tests and drills: a JSON file of faults to inject in the local target",
    ),
)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    for flag, env, kind, text in SERVE_OPTIONS:
        parser.add_argument(flag, type=kind, help=f"{text} [env {env}]")
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow listening beyond loopback without TLS and tokens [env CLONEJOB_INSECURE=1]",
    )


def from_args(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> Config:
    """Flags win over environment variables, which win over defaults."""
    values: dict[str, object] = {}
    for flag, variable, kind, _ in SERVE_OPTIONS:
        key = flag[2:].replace("-", "_")
        value = getattr(args, key, None)
        if value is None and env.get(variable):
            try:
                value = kind(env[variable])
            except (ValueError, argparse.ArgumentTypeError) as error:
                raise SystemExit(f"clonejob-server: {variable}: {error}") from None
        if value is not None:
            values[key] = value
    if getattr(args, "insecure", None) or env.get("CLONEJOB_INSECURE", "") in ("1", "true"):
        values["insecure"] = True
    values.setdefault("data_dir", default_data_dir(env))
    return Config(**values)  # type: ignore[arg-type]
