"""Wires the store, target, engine, servicer, health and reflection; owns start and stop."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from clonejob_grpc import clone_job_service_pb2 as spb
from server.api import registration
from server.api.page_tokens import PageTokens
from server.api.servicer import CloneJobService
from server.config import Config
from server.engine import Engine, Hub
from server.observability.interceptor import RpcObserver
from server.observability.metrics import Metrics
from server.security import (
    SecurityConfigError,
    TokenAuthorizer,
    check_exposure,
    server_credentials,
)
from server.store import SqliteJobStore
from server.targets.faults import FaultPlan
from server.targets.local import LocalTarget

log = logging.getLogger("clonejob.server")

SERVICE_NAME = spb.DESCRIPTOR.services_by_name["CloneJobService"].full_name

# Deliberate channel settings for hours-long watches:
# - clients may ping every 60 s or more without data (a watch is often idle);
# - the C core's pending-request limits are raised so that every watcher
#   reconnecting after a restart at once is queued, not refused with CANCELLED.
SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 120_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 60_000),
    ("grpc.http2.max_ping_strikes", 2),
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
    ("grpc.server.max_pending_requests", 65_536),
    ("grpc.server.max_pending_requests_hard_limit", 131_072),
]


PAGE_TOKEN_KEY_BYTES = 32


def page_token_key(data_dir: Path) -> bytes:
    """The key that signs page tokens, made once and kept with the data."""
    path = data_dir / "page-token.key"
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        # Written whole under another name, then renamed: a crash never leaves a
        # short key behind.
        key = secrets.token_bytes(PAGE_TOKEN_KEY_BYTES)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    if len(key) != PAGE_TOKEN_KEY_BYTES:
        raise SecurityConfigError(
            f"{path} holds {len(key)} bytes, not a {PAGE_TOKEN_KEY_BYTES}-byte key: delete it"
            " (page tokens issued before become invalid) and start again"
        )
    return key


class App:
    """The running service. `start` then `stop`; `serve` runs it until a signal."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = SqliteJobStore(config.database, revision_retention=config.revision_retention)
        faults = FaultPlan.load(config.fault_plan) if config.fault_plan else None
        self.target = LocalTarget(config.data_dir, faults)
        self.metrics = Metrics()
        self.engine = Engine(
            self.store,
            self.target,
            max_concurrent_jobs=config.max_concurrent_jobs,
            hub=Hub(config.watch_buffer),
            observers=[self.metrics],
        )
        self.health = HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.servicer: CloneJobService | None = None
        self.port = 0
        self.metrics_port = 0

    async def start(self) -> int:
        config = self.config
        # 0. Refuse to expose an open server beyond loopback (SecurityConfigError).
        check_exposure(
            config.listen,
            tls=config.tls_cert is not None,
            tokens=config.tokens_file is not None,
            insecure=config.insecure,
        )
        config.data_dir.mkdir(parents=True, exist_ok=True)
        # 1. The store: a locked, corrupt or newer database stops us here (StoreError).
        await self.store.open()
        # 1b. Metrics: job gauges from the store before anything changes; the endpoint.
        self.metrics.count_jobs(await self.store.count_by_state())
        if config.metrics_listen is not None:
            self.metrics_port = await self.metrics.serve(config.metrics_listen)
        # 2. The gRPC server, bound but not yet serving the job service as healthy.
        self.servicer = CloneJobService(
            self.engine,
            PageTokens(page_token_key(config.data_dir)),
            heartbeat_interval=config.heartbeat_interval,
            max_watches=config.max_watches,
        )
        servicer = self.servicer
        self.metrics.track(
            queued=lambda: self.engine.queued_jobs,
            running=lambda: self.engine.slots_in_use,
            open_watches=lambda: servicer.open_watches,
        )
        server = grpc.aio.server(interceptors=[RpcObserver(self.metrics)], options=SERVER_OPTIONS)
        authorizer = TokenAuthorizer.load(config.tokens_file) if config.tokens_file else None
        registration.add_to_server(self.servicer, server, authorizer)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        credentials = server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)
        if credentials is None:
            self.port = server.add_insecure_port(config.listen)
        else:
            self.port = server.add_secure_port(config.listen, credentials)
            if self.port == 0:
                raise SecurityConfigError(
                    f"cannot serve TLS on {config.listen}: check that --tls-cert and --tls-key"
                    " are PEM files and that the key belongs to the certificate"
                )
        if self.port == 0:
            raise OSError(f"cannot listen on {config.listen}")
        self.server = server
        await server.start()
        # 3. The engine: resume what a previous process left unfinished.
        resumed = await self.engine.start()
        # 4. Healthy.
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "clonejob-server listening on %s (port %d), data in %s, %d jobs resumed, metrics %s",
            config.listen,
            self.port,
            config.data_dir,
            resumed,
            self.metrics.url or "off",
        )
        if config.port_file is not None:
            tmp = config.port_file.with_name(config.port_file.name + ".tmp")
            tmp.write_text(f"{self.port}\n")
            tmp.replace(config.port_file)
        return self.port

    async def stop(self) -> None:
        # 1. Health says NOT_SERVING, so balancers send new calls elsewhere.
        await self.health.enter_graceful_shutdown()
        # 2. Open watches end with UNAVAILABLE at once: their clients resume elsewhere.
        self.engine.hub.close()
        # 3. No new calls; calls in flight get the grace period to finish.
        if self.server is not None:
            await self.server.stop(self.config.shutdown_grace)
        # 4. Running jobs stop where they are; the next start resumes them.
        await self.engine.stop()
        # 5. The metrics endpoint, kept up until now for a last scrape.
        await self.metrics.close()
        # 6. The store closes last: everything above may still commit.
        await self.store.close()
        log.info("clonejob-server stopped")


async def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    app = App(config)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await app.start()
        await stopping.wait()
        log.info("signal received: shutting down")
    finally:
        await app.stop()
