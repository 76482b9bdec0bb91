"""Wires the store, target, engine, servicer, health and reflection; owns start and stop."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import signal
import socket
from collections.abc import Mapping

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from clonejob_grpc import clone_job_service_pb2 as spb
from server.api import operations, registration, vmmigration
from server.api.operations import OperationsService
from server.api.page_tokens import PageTokens
from server.api.servicer import CloneJobService
from server.api.vmmigration import VmMigrationService
from server.config import Config
from server.domain.job import State
from server.engine import Engine, Hub
from server.observability.logs import flush_logs
from server.observability.metrics import Metrics, parse_listen
from server.observability.rpc_observer import RpcObserver
from server.security import (
    SecurityConfigError,
    TokenAuthorizer,
    check_exposure,
    server_credentials,
)
from server.store import open_store
from server.targets.faults import FaultPlan
from server.targets.local import LocalTarget

log = logging.getLogger("clonejob.server")

SERVICE_NAME = spb.DESCRIPTOR.services_by_name["CloneJobService"].full_name
# Every surface, each with its health status.
SERVED_SERVICES = (SERVICE_NAME, vmmigration.SERVICE_NAME, operations.SERVICE.full_name)

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
    # No SO_REUSEPORT: with it a second server on a taken port starts anyway, and
    # the kernel splits calls between two servers with two databases.
    ("grpc.so_reuseport", 0),
]


# The cyclic garbage collector's first generation runs every GC_YOUNG net
# allocations (Python's default is 700). A call allocates hundreds of objects that
# are freed by reference counting (protobuf messages, dicts, futures), so at the
# default the collector ran every few calls, scanning the young objects of all of
# them: a measurable share of a Create's CPU. Cycles are still collected.
GC_YOUNG = 20_000


def _tune_gc() -> None:
    """Once serving: what is loaded by now (modules, descriptors, handlers) lives as
    long as the process, so it is moved out of the collector's sight (gc.freeze),
    and the young generation is collected less often."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG, middle, old)


class ListenError(OSError):
    """`--listen` is not HOST:PORT, or its port cannot be bound (taken, not ours)."""


def _bind(server: grpc.aio.Server, listen: str, credentials: grpc.ServerCredentials | None) -> int:
    """Bind `listen`; ListenError naming the port when that fails."""
    try:
        host, port = parse_listen(listen)
    except ValueError:
        raise ListenError(
            f"--listen {listen!r} is not HOST:PORT (for example 127.0.0.1:50051)"
        ) from None
    try:
        if credentials is None:
            bound = server.add_insecure_port(listen)
        else:
            bound = server.add_secure_port(listen, credentials)
    except RuntimeError:
        bound = 0
    if bound:
        return bound
    if credentials is not None and _free(host, port):
        raise SecurityConfigError(
            f"cannot serve TLS on {listen}: check that --tls-cert and --tls-key"
            " are PEM files and that the key belongs to the certificate"
        )
    if not _free(host, port):
        raise ListenError(
            f"cannot listen on {listen}: port {port} is already in use (another"
            " clonejob-server, or another program); stop it or choose another --listen"
        )
    raise ListenError(f"cannot listen on {listen}: the address cannot be bound here")


def _free(host: str, port: int) -> bool:
    """Whether a plain socket could bind host:port now (so not taken by anyone)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host if host not in ("", "[::]") else "", port))
        except OSError as error:
            return error.errno != errno.EADDRINUSE
    return True


PAGE_TOKEN_KEY_BYTES = 32
# How long a metrics scrape waits for the store to count jobs.
SCRAPE_COUNT_TIMEOUT = 2.0


class App:
    """The running service. `start` then `stop`; `serve` runs it until a signal."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = open_store(
            config.store,
            config.data_dir,
            revision_retention=config.revision_retention,
            connect_timeout=config.store_connect_timeout,
        )
        faults = FaultPlan.load(config.fault_plan) if config.fault_plan else None
        self.target = LocalTarget(config.data_dir, faults)
        self.metrics = Metrics()
        self.engine = Engine(
            self.store,
            self.target,
            max_concurrent_jobs=config.max_concurrent_jobs,
            hub=Hub(config.watch_buffer),
            observers=[self.metrics],
            lease_ttl=config.lease_ttl,
            on_store_available=self._store_available,
        )
        self.health = HealthServicer()
        self._serving = False
        self._health_tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.server: grpc.aio.Server | None = None
        self.servicer: CloneJobService | None = None
        self.port = 0
        self.metrics_port = 0

    async def start(self) -> int:
        config = self.config
        self._loop = asyncio.get_running_loop()
        # 0. A --listen that is no address (ListenError), then refuse to expose an
        # open server beyond loopback (SecurityConfigError).
        try:
            parse_listen(config.listen)
        except ValueError:
            raise ListenError(
                f"--listen {config.listen!r} is not HOST:PORT (for example 127.0.0.1:50051)"
            ) from None
        check_exposure(
            config.listen,
            tls=config.tls_cert is not None,
            tokens=config.tokens_file is not None,
            insecure=config.insecure,
        )
        config.data_dir.mkdir(parents=True, exist_ok=True)
        # 1. The store: a locked, corrupt, unreachable or newer database stops us
        # here (StoreError).
        await self.store.open()
        # 1b. Metrics: job gauges counted from the store (the whole fleet's jobs)
        # at each scrape; the endpoint.
        self.metrics.count_jobs(await self.store.count_by_state())
        self.metrics.count_jobs_with(self._count_jobs)
        if config.metrics_listen is not None:
            self.metrics_port = await self.metrics.serve(config.metrics_listen)
        # 2. The gRPC server, bound but not yet serving the job service as healthy.
        page_tokens = PageTokens(await self.store.page_token_key(PAGE_TOKEN_KEY_BYTES))
        self.servicer = CloneJobService(
            self.engine,
            page_tokens,
            heartbeat_interval=config.heartbeat_interval,
            max_watches=config.max_watches,
        )
        servicer = self.servicer
        self.metrics.track(
            queued=lambda: self.engine.queued_jobs,
            running=lambda: self.engine.slots_in_use,
            open_watches=lambda: servicer.open_watches,
        )
        # Every call is logged and counted by its method handler's wrapper (no
        # interceptor: it would cost every call one more await).
        observer = RpcObserver(self.metrics)
        server = grpc.aio.server(options=SERVER_OPTIONS)
        authorizer = TokenAuthorizer.load(config.tokens_file) if config.tokens_file else None
        # clonejob.v1, and beside it Google's VmMigration (its clone-job part) with
        # google.longrunning.Operations, on the same jobs and engine.
        registration.add_to_server(self.servicer, server, authorizer, observer)
        registration.add_service(
            server,
            vmmigration.SERVICE,
            VmMigrationService(self.engine, self.servicer, page_tokens),
            vmmigration.REQUEST_TYPES,
            authorizer,
            observer,
        )
        registration.add_service(
            server,
            operations.SERVICE,
            OperationsService(self.engine, page_tokens),
            operations.REQUEST_TYPES,
            authorizer,
            observer,
        )
        registration.add_unserved(
            server,
            vmmigration.SERVICE_NAME,
            vmmigration.all_methods(),
            f"{vmmigration.SERVED} of {vmmigration.SERVICE_NAME},"
            f" and {operations.SERVICE.full_name}",
            authorizer,
            observer,
        )
        health = self.health
        registration.add_generated(
            server,
            lambda target: health_pb2_grpc.add_HealthServicer_to_server(health, target),
            observer,
        )
        reflected = (
            *SERVED_SERVICES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        registration.add_generated(
            server,
            lambda target: reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
                reflection.aio.ReflectionServicer(reflected),  # type: ignore[attr-defined]
                target,
            ),
            observer,
        )
        credentials = server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)
        self.port = _bind(server, config.listen, credentials)
        self.server = server
        await server.start()
        # 3. The engine: hear other replicas' changes, take up waiting jobs (those a
        # previous process left unfinished among them).
        resumed = await self.engine.start()
        # 4. Healthy (and from now on, NOT_SERVING while the store cannot be reached).
        self._serving = True
        await self._set_health(self.engine.feed.available)
        log.info(
            "clonejob-server listening on %s (port %d), data in %s, jobs in %s,"
            " %d jobs taken up, metrics %s",
            config.listen,
            self.port,
            config.data_dir,
            self.store.describe(),
            resumed,
            self.metrics.url or "off",
        )
        flush_logs()  # the start line is in the log before the port file says "ready"
        _tune_gc()
        if config.port_file is not None:
            tmp = config.port_file.with_name(config.port_file.name + ".tmp")
            tmp.write_text(f"{self.port}\n")
            tmp.replace(config.port_file)
        return self.port

    def _store_available(self, available: bool) -> None:
        if not self._serving:
            return
        task = asyncio.create_task(self._set_health(available))
        self._health_tasks.add(task)
        task.add_done_callback(self._health_tasks.discard)

    async def _set_health(self, available: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if available
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", *SERVED_SERVICES):
            await self.health.set(service, status)

    def _count_jobs(self) -> Mapping[State, int] | None:
        """The fleet's jobs by state, read from the store for a scrape (called on
        the metrics endpoint's thread); None when the store does not answer."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return None
        future = asyncio.run_coroutine_threadsafe(self.store.count_by_state(), loop)
        try:
            counts = future.result(SCRAPE_COUNT_TIMEOUT)
        except Exception:
            future.cancel()
            return None
        self.engine.queued_seen = counts.get(State.PENDING, 0)
        return counts

    async def stop(self) -> None:
        # 1. Health says NOT_SERVING, so balancers send new calls elsewhere.
        self._serving = False
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
        if self.server is not None:  # a start that failed has said why, once
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
