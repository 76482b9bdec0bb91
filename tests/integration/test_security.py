"""Who may call: TLS, mutual TLS, bearer tokens per project, and refusing exposure.

Every server here is a real `python -m server` process of client.launcher,
which checks readiness over TLS (with the test CA, and the client certificate
for mutual TLS) when the server serves TLS. Certificates are made at test time
by `certs.py`; tokens are random per run. The tests talk to the server through
the generated stub and through the `clonejob` command line.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import certs
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from client.launcher import ServerProcess, ServerStartError, TlsConfig
from clonejob_grpc import clone_job_pb2 as pb
from clonejob_grpc import clone_job_service_pb2 as spb
from clonejob_grpc import clone_job_service_pb2_grpc as spb_grpc

if TYPE_CHECKING:
    from conftest import ServerPool

REPO = Path(__file__).resolve().parents[2]
DOMAIN = "clonejob.v1"
RPC_TIMEOUT = 30.0
# A refused configuration must be refused at once, not after binding or a timeout.
REFUSE_TIMEOUT = 30.0

ACME_VM = "projects/acme/locations/us-central1/sources/s/migratingVms/vm1"
OTHER_VM = "projects/other/locations/us-central1/sources/s/migratingVms/vm1"
OTHER_MISSING_VM = "projects/other/locations/us-central1/sources/s/migratingVms/nope"
NOBODY_VM = "projects/nobody/locations/us-central1/sources/s/migratingVms/vm1"

# Jobs whose id starts with hold- wait in preparing_vm_disks until cancelled, so
# that they stay open for Watch and Cancel.
HOLDS = [{"match": "cloneJobs/hold-", "step": "preparing_vm_disks", "action": "hold"}]

CLI = "import sys; from client.cli import main; sys.exit(main(sys.argv[1:]))"

Metadata = Sequence[tuple[str, str]]


# -- processes --------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any CLONEJOB_* setting of the developer's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLONEJOB_")}
    env["NO_COLOR"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"  # a crash of a server shows where in its log
    env.update(extra)
    return env


def run_server_command(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`python -m server ARGS` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=REPO,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or clean_env(),
    )


def write_sample_vm(data_dir: Path, name: str) -> None:
    done = run_server_command(
        "sample-vm", name, "--data-dir", str(data_dir), "--disk-size", "4MiB", "--disks", "1"
    )
    assert done.returncode == 0, done.stderr


def hash_token(token: str) -> str:
    done = run_server_command("hash-token", stdin=token + "\n")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`clonejob ARGS` in its own process."""
    return subprocess.run(
        [sys.executable, "-c", CLI, *args],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        env=env or clean_env(),
    )


def sample_data(fleet: ServerPool, *sample_vms: str) -> Path:
    """A new data directory of the fleet's with these sample VMs."""
    path = fleet.run_dir / f"data{len(list(fleet.run_dir.glob('data*')))}"
    path.mkdir()
    for name in sample_vms:
        write_sample_vm(path, name)
    return path


def start(fleet: ServerPool, data_dir: Path | None = None, **options: Any) -> ServerProcess:
    """A server of the fleet on `data_dir` (else a new empty one), with a 2 s shutdown grace."""
    return fleet.start(data_dir or sample_data(fleet), shutdown_grace=2, **options)


def start_refused(
    run_dir: Path, listen: str = "127.0.0.1:0", **options: Any
) -> tuple[ServerStartError, ServerProcess]:
    """A start on `run_dir/d` that must end by itself: the error (exit code and log)."""
    server = ServerProcess(run_dir / "d", run_dir, listen=listen, **options)
    try:
        with pytest.raises(ServerStartError) as caught:
            server.start(timeout=REFUSE_TIMEOUT)
    finally:
        server.close()  # if it served after all
    return caught.value, server


def server_tls(pki: certs.Pki, *, mutual: bool = False) -> TlsConfig:
    """The server's certificate; with `mutual`, client certificates of the CA required."""
    if not mutual:
        return TlsConfig(cert=pki.server_cert, key=pki.server_key, ca=pki.ca)
    return TlsConfig(
        cert=pki.server_cert,
        key=pki.server_key,
        ca=pki.ca,
        client_ca=pki.ca,
        client_cert=pki.client_cert,
        client_key=pki.client_key,
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> certs.Pki:
    return certs.make_pki(tmp_path_factory.mktemp("pki"))


# -- channels and calls -----------------------------------------------------------


def tls_credentials(
    pki: certs.Pki, *, ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(ca or pki.ca).read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )


def tls_channel(
    address: str, credentials: grpc.ChannelCredentials, server_name: str | None = None
) -> grpc.Channel:
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.secure_channel(address, credentials, options=options)


def disks_body() -> pb.CloneJob:
    return pb.CloneJob(compute_engine_disks_target_details=pb.ComputeEngineDisksTargetDetails())


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


Stub = spb_grpc.CloneJobServiceStub


def create(stub: Stub, parent: str, job_id: str, metadata: Metadata = ()) -> pb.CloneJob:
    return stub.CreateCloneJob(
        spb.CreateCloneJobRequest(parent=parent, clone_job_id=job_id, clone_job=disks_body()),
        metadata=metadata,
        timeout=RPC_TIMEOUT,
    )


def get(stub: Stub, name: str, metadata: Metadata = ()) -> pb.CloneJob:
    return stub.GetCloneJob(
        spb.GetCloneJobRequest(name=name), metadata=metadata, timeout=RPC_TIMEOUT
    )


def list_jobs(stub: Stub, parent: str, metadata: Metadata = ()) -> spb.ListCloneJobsResponse:
    return stub.ListCloneJobs(
        spb.ListCloneJobsRequest(parent=parent), metadata=metadata, timeout=RPC_TIMEOUT
    )


def cancel(stub: Stub, name: str, metadata: Metadata = ()) -> pb.CloneJob:
    return stub.CancelCloneJob(
        spb.CancelCloneJobRequest(name=name), metadata=metadata, timeout=RPC_TIMEOUT
    )


def watch_first(stub: Stub, name: str, metadata: Metadata = ()) -> spb.WatchCloneJobResponse:
    """The first message of a watch, which is then cancelled."""
    call = stub.WatchCloneJob(
        spb.WatchCloneJobRequest(name=name), metadata=metadata, timeout=RPC_TIMEOUT
    )
    try:
        return next(iter(call))
    finally:
        call.cancel()


RPCS = ("Create", "Get", "List", "Watch", "Cancel")


def call_rpc(stub: Stub, rpc: str, parent: str, job_id: str, metadata: Metadata) -> Any:
    """One RPC on the job `parent/cloneJobs/job_id` (List and Create: on `parent`)."""
    name = f"{parent}/cloneJobs/{job_id}"
    if rpc == "Create":
        return create(stub, parent, job_id, metadata)
    if rpc == "Get":
        return get(stub, name, metadata)
    if rpc == "List":
        return list_jobs(stub, parent, metadata)
    if rpc == "Watch":
        return watch_first(stub, name, metadata)
    if rpc == "Cancel":
        return cancel(stub, name, metadata)
    raise AssertionError(rpc)


def rpc_error(call: Callable[..., Any], *args: Any) -> grpc.RpcError:
    try:
        result = call(*args)
    except grpc.RpcError as error:
        return error
    raise AssertionError(f"expected an RPC error, got {result!r}")


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    """The one ErrorInfo of the rich status (google.rpc.Status) of an error."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, f"no rich status (grpc-status-details-bin) in {error}"
    assert status.code == error.code().value[0]  # type: ignore[attr-defined]
    assert status.message == error.details()  # type: ignore[attr-defined]
    infos = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    assert len(infos) == 1, f"expected exactly one ErrorInfo in {status}"
    info = error_details_pb2.ErrorInfo()
    infos[0].Unpack(info)
    assert info.domain == DOMAIN
    assert info.reason
    return info


def expect(
    code: grpc.StatusCode, call: Callable[..., Any], *args: Any, reason: str | None = None
) -> tuple[grpc.RpcError, error_details_pb2.ErrorInfo]:
    """The call fails with `code` and an ErrorInfo (with `reason`, when given)."""
    error = rpc_error(call, *args)
    assert error.code() == code, f"{error.code()}: {error.details()}"  # type: ignore[attr-defined]
    info = error_info(error)
    if reason is not None:
        assert info.reason == reason, info
    return error, info


def expect_unavailable(call: Callable[..., Any], *args: Any) -> None:
    """A transport failure (handshake refused): UNAVAILABLE, promptly, not a deadline."""
    error = rpc_error(call, *args)
    assert error.code() == grpc.StatusCode.UNAVAILABLE, (  # type: ignore[attr-defined]
        f"{error.code()}: {error.details()}"  # type: ignore[attr-defined]
    )


# -- TLS ----------------------------------------------------------------------------


@dataclass
class TlsServer:
    server: ServerProcess
    job: str  # a job in ACME_VM, created over TLS


@pytest.fixture(scope="module")
def tls_server(module_servers: ServerPool, pki: certs.Pki) -> Iterator[TlsServer]:
    data = sample_data(module_servers, ACME_VM)
    server = start(module_servers, data, tls=server_tls(pki), fault_plan=HOLDS)
    with tls_channel(server.address, tls_credentials(pki)) as channel:
        job = create(Stub(channel), ACME_VM, "hold-tls")
    yield TlsServer(server, job.name)
    server.stop()


@pytest.fixture(scope="module")
def mtls_server(module_servers: ServerPool, pki: certs.Pki) -> Iterator[ServerProcess]:
    server = start(
        module_servers, sample_data(module_servers, ACME_VM), tls=server_tls(pki, mutual=True)
    )
    yield server
    server.stop()


@pytest.mark.parametrize("server_name", [None, "localhost"], ids=["ip-san", "dns-san"])
def test_tls_server_answers_a_tls_client(
    tls_server: TlsServer, pki: certs.Pki, server_name: str | None
) -> None:
    with tls_channel(tls_server.server.address, tls_credentials(pki), server_name) as channel:
        stub = Stub(channel)
        assert get(stub, tls_server.job).name == tls_server.job
        assert [j.name for j in list_jobs(stub, ACME_VM).clone_jobs] == [tls_server.job]
        assert watch_first(stub, tls_server.job).clone_job.name == tls_server.job
        # Errors of the service itself come through TLS with their details.
        expect(
            grpc.StatusCode.NOT_FOUND,
            get,
            stub,
            f"{ACME_VM}/cloneJobs/missing",
            reason="CLONE_JOB_NOT_FOUND",
        )


def test_plaintext_client_to_tls_server_is_unavailable(tls_server: TlsServer) -> None:
    with grpc.insecure_channel(tls_server.server.address) as channel:
        expect_unavailable(get, Stub(channel), tls_server.job)


def test_tls_client_rejects_a_server_certificate_from_another_ca(
    tls_server: TlsServer, pki: certs.Pki
) -> None:
    credentials = tls_credentials(pki, ca=pki.other_ca)
    with tls_channel(tls_server.server.address, credentials) as channel:
        expect_unavailable(get, Stub(channel), tls_server.job)


def test_tls_client_rejects_a_server_certificate_for_another_name(
    tls_server: TlsServer, pki: certs.Pki
) -> None:
    with tls_channel(tls_server.server.address, tls_credentials(pki), "example.com") as channel:
        expect_unavailable(get, Stub(channel), tls_server.job)


def test_tls_server_without_client_ca_accepts_a_client_certificate(
    tls_server: TlsServer, pki: certs.Pki
) -> None:
    credentials = tls_credentials(pki, cert=pki.client_cert, key=pki.client_key)
    with tls_channel(tls_server.server.address, credentials) as channel:
        assert get(Stub(channel), tls_server.job).name == tls_server.job


def test_mtls_server_refuses_a_client_without_certificate(
    mtls_server: ServerProcess, pki: certs.Pki
) -> None:
    with tls_channel(mtls_server.address, tls_credentials(pki)) as channel:
        expect_unavailable(list_jobs, Stub(channel), ACME_VM)


def test_mtls_server_refuses_a_client_certificate_from_another_ca(
    mtls_server: ServerProcess, pki: certs.Pki
) -> None:
    credentials = tls_credentials(pki, cert=pki.other_client_cert, key=pki.other_client_key)
    with tls_channel(mtls_server.address, credentials) as channel:
        expect_unavailable(list_jobs, Stub(channel), ACME_VM)


def test_mtls_server_refuses_a_plaintext_client(mtls_server: ServerProcess) -> None:
    with grpc.insecure_channel(mtls_server.address) as channel:
        expect_unavailable(list_jobs, Stub(channel), ACME_VM)


def test_mtls_server_answers_a_client_with_the_right_certificate(
    mtls_server: ServerProcess, pki: certs.Pki
) -> None:
    credentials = tls_credentials(pki, cert=pki.client_cert, key=pki.client_key)
    with tls_channel(mtls_server.address, credentials) as channel:
        stub = Stub(channel)
        job = create(stub, ACME_VM, "mtls")
        assert get(stub, job.name).name == job.name
        assert job.name in [j.name for j in list_jobs(stub, ACME_VM).clone_jobs]


def test_cli_get_over_tls(tls_server: TlsServer, pki: certs.Pki) -> None:
    address = tls_server.server.address
    done = run_cli("--server", address, "--tls-ca", str(pki.ca), "get", tls_server.job)
    assert done.returncode == 0, done.stderr
    assert tls_server.job in done.stdout
    done = run_cli("--server", address, "--tls-ca", str(pki.ca), "--json", "get", tls_server.job)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["name"] == tls_server.job


def test_cli_without_tls_ca_cannot_reach_a_tls_server(tls_server: TlsServer) -> None:
    done = run_cli("--server", tls_server.server.address, "--timeout", "10", "get", tls_server.job)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "UNAVAILABLE" in done.stderr


def test_cli_with_another_ca_cannot_reach_a_tls_server(
    tls_server: TlsServer, pki: certs.Pki
) -> None:
    address = tls_server.server.address
    done = run_cli("--server", address, "--tls-ca", str(pki.other_ca), "get", tls_server.job)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "UNAVAILABLE" in done.stderr


def test_cli_mutual_tls(mtls_server: ServerProcess, pki: certs.Pki) -> None:
    base = ("--server", mtls_server.address, "--tls-ca", str(pki.ca), "--timeout", "10")
    with_cert = (*base, "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key))
    done = run_cli(*with_cert, "list", ACME_VM)
    assert done.returncode == 0, done.stderr
    done = run_cli(*base, "list", ACME_VM)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "UNAVAILABLE" in done.stderr
    # A certificate without its key is a usage error, found before any call.
    done = run_cli(*base, "--tls-cert", str(pki.client_cert), "list", ACME_VM)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "--tls-key" in done.stderr


@pytest.mark.parametrize(
    "files",
    [("key",), ("cert",), ("client_ca",), ("cert", "client_ca"), ("missing_cert", "key")],
)
def test_incomplete_tls_configuration_is_refused(
    tmp_path: Path, pki: certs.Pki, files: tuple[str, ...]
) -> None:
    flags = {
        "cert": ("--tls-cert", str(pki.server_cert)),
        "missing_cert": ("--tls-cert", str(tmp_path / "missing.pem")),
        "key": ("--tls-key", str(pki.server_key)),
        "client_ca": ("--tls-client-ca", str(pki.ca)),
    }
    args = [a for f in files for a in flags[f]]
    done, _ = start_refused(tmp_path, extra_args=args)
    assert done.returncode == 2, done.log
    assert "--tls" in done.log or "TLS" in done.log, done.log
    assert "Traceback" not in done.log


# -- tokens -------------------------------------------------------------------------


@dataclass
class TokenServer:
    server: ServerProcess
    tokens: dict[str, str]  # role → token
    other_job: str  # a held job in OTHER_VM, created with the `other` write token
    acme_job: str  # a held job in ACME_VM, created with the `acme` write token

    def stub_channel(self) -> grpc.Channel:
        return self.server.channel()


TOKEN_GRANTS = {
    "acme-write": (["acme"], "write"),
    "acme-read": (["acme"], "read"),
    "other-write": (["other"], "write"),
    "all-read": (["*"], "read"),
}


def tokens_file(directory: Path, digests: dict[str, str]) -> Path:
    path = directory / "tokens.json"
    entries = [
        {"sha256": digests[role], "projects": projects, "access": access}
        for role, (projects, access) in TOKEN_GRANTS.items()
    ]
    path.write_text(json.dumps({"tokens": entries}))
    return path


def new_tokens() -> dict[str, str]:
    return {role: f"cj-{role}-{secrets.token_urlsafe(24)}" for role in TOKEN_GRANTS}


@pytest.fixture(scope="module")
def token_server(module_servers: ServerPool) -> Iterator[TokenServer]:
    data = sample_data(module_servers, ACME_VM, OTHER_VM)
    tokens = new_tokens()
    digests = {role: hashlib.sha256(t.encode()).hexdigest() for role, t in tokens.items()}
    server = start(
        module_servers,
        data,
        tokens_file=tokens_file(data, digests),
        fault_plan=HOLDS,
        log_level="DEBUG",
    )
    with grpc.insecure_channel(server.address) as channel:
        stub = Stub(channel)
        other = create(stub, OTHER_VM, "hold-existing", bearer(tokens["other-write"]))
        acme = create(stub, ACME_VM, "hold-mine", bearer(tokens["acme-write"]))
    yield TokenServer(server, tokens, other.name, acme.name)
    server.stop()


@pytest.fixture
def stub(token_server: TokenServer) -> Iterator[Stub]:
    with token_server.stub_channel() as channel:
        yield Stub(channel)


@pytest.mark.parametrize(
    "token", ["t", "a-longer token-with-dashes_and_underscores.0123456789", "ünïcode-tökén"]
)
def test_hash_token_prints_the_sha256_of_the_token_on_stdin(token: str) -> None:
    done = run_server_command("hash-token", stdin=token + "\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == hashlib.sha256(token.encode()).hexdigest()
    assert token not in done.stdout


def test_hash_token_without_a_token_fails() -> None:
    done = run_server_command("hash-token", stdin="")
    assert done.returncode == 2
    assert "token" in done.stderr


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ([], "MISSING_CREDENTIALS"),
        ([("authorization", "Bearer not-a-known-token")], "INVALID_TOKEN"),
        ([("authorization", "Basic dXNlcjpwYXNz")], "MISSING_CREDENTIALS"),
        ([("authorization", "Bearer")], "MISSING_CREDENTIALS"),
        ([("x-api-key", "TOKEN:acme-write")], "MISSING_CREDENTIALS"),
        ([("authorization", "TOKEN:acme-write")], "MISSING_CREDENTIALS"),
    ],
    ids=["none", "unknown", "basic", "empty-bearer", "other-header", "no-scheme"],
)
@pytest.mark.parametrize("rpc", RPCS)
def test_no_or_unknown_token_is_unauthenticated_on_every_rpc(
    token_server: TokenServer,
    stub: Stub,
    rpc: str,
    headers: list[tuple[str, str]],
    reason: str,
) -> None:
    # A valid token sent other than as `Bearer <token>` does not count.
    metadata = [
        (k, v.replace("TOKEN:acme-write", token_server.tokens["acme-write"])) for k, v in headers
    ]
    expect(
        grpc.StatusCode.UNAUTHENTICATED,
        call_rpc,
        stub,
        rpc,
        ACME_VM,
        "hold-mine",
        metadata,
        reason=reason,
    )


@pytest.mark.parametrize("role", ["acme-write", "acme-read"])
@pytest.mark.parametrize("rpc", RPCS)
def test_token_for_another_project_is_denied_whether_or_not_the_job_exists(
    token_server: TokenServer, stub: Stub, rpc: str, role: str
) -> None:
    metadata = bearer(token_server.tokens[role])
    targets = {
        "existing": (OTHER_VM, "hold-existing"),
        "missing-job": (OTHER_VM, "hold-nope"),
        "missing-vm": (OTHER_MISSING_VM, "hold-nope"),
        "missing-project": (NOBODY_VM, "hold-nope"),
    }
    seen = {}
    for what, (parent, job_id) in targets.items():
        error, info = expect(
            grpc.StatusCode.PERMISSION_DENIED, call_rpc, stub, rpc, parent, job_id, metadata
        )
        seen[what] = (error.details(), info)  # type: ignore[attr-defined]
    # Nothing in the answer tells an existing job in `other` from a missing one.
    assert seen["existing"] == seen["missing-job"] == seen["missing-vm"]
    # And the existing job was left alone.
    other = get(stub, token_server.other_job, bearer(token_server.tokens["other-write"]))
    assert other.state not in (pb.CloneJob.CANCELLING, pb.CloneJob.CANCELLED)


def test_a_denied_create_creates_nothing(token_server: TokenServer, stub: Stub) -> None:
    owner = bearer(token_server.tokens["other-write"])
    before = [j.name for j in list_jobs(stub, OTHER_VM, owner).clone_jobs]
    for role in ("acme-write", "acme-read", "all-read"):
        expect(
            grpc.StatusCode.PERMISSION_DENIED,
            create,
            stub,
            OTHER_VM,
            f"hold-{role}",
            bearer(token_server.tokens[role]),
        )
    assert [j.name for j in list_jobs(stub, OTHER_VM, owner).clone_jobs] == before


@pytest.mark.parametrize("rpc", ["Get", "List", "Watch"])
@pytest.mark.parametrize("role", ["acme-read", "acme-write", "all-read"])
def test_read_calls_on_own_project(
    token_server: TokenServer, stub: Stub, rpc: str, role: str
) -> None:
    result = call_rpc(stub, rpc, ACME_VM, "hold-mine", bearer(token_server.tokens[role]))
    if rpc == "List":
        assert token_server.acme_job in [j.name for j in result.clone_jobs]
    elif rpc == "Watch":
        assert result.clone_job.name == token_server.acme_job
    else:
        assert result.name == token_server.acme_job


def test_wildcard_read_token_reads_every_project(token_server: TokenServer, stub: Stub) -> None:
    metadata = bearer(token_server.tokens["all-read"])
    assert get(stub, token_server.other_job, metadata).name == token_server.other_job
    assert get(stub, token_server.acme_job, metadata).name == token_server.acme_job


@pytest.mark.parametrize("role", ["acme-read", "all-read"])
def test_read_token_cannot_create_or_cancel(
    token_server: TokenServer, stub: Stub, role: str
) -> None:
    metadata = bearer(token_server.tokens[role])
    writer = bearer(token_server.tokens["acme-write"])
    job_id = f"hold-{uuid.uuid4().hex[:8]}"
    _, info = expect(grpc.StatusCode.PERMISSION_DENIED, create, stub, ACME_VM, job_id, metadata)
    assert info.reason == "WRITE_ACCESS_REQUIRED"
    expect(
        grpc.StatusCode.NOT_FOUND, get, stub, f"{ACME_VM}/cloneJobs/{job_id}", writer
    )  # not created
    _, info = expect(
        grpc.StatusCode.PERMISSION_DENIED, cancel, stub, token_server.acme_job, metadata
    )
    assert info.reason == "WRITE_ACCESS_REQUIRED"
    job = get(stub, token_server.acme_job, writer)
    assert job.state not in (pb.CloneJob.CANCELLING, pb.CloneJob.CANCELLED)  # not cancelled


def test_write_token_creates_and_cancels_in_its_project(
    token_server: TokenServer, stub: Stub
) -> None:
    metadata = bearer(token_server.tokens["acme-write"])
    job = create(stub, ACME_VM, "hold-written", metadata)
    assert job.name == f"{ACME_VM}/cloneJobs/hold-written"
    assert get(stub, job.name, metadata).name == job.name
    assert watch_first(stub, job.name, metadata).clone_job.name == job.name
    cancelled = cancel(stub, job.name, metadata)
    assert cancelled.state in (pb.CloneJob.CANCELLING, pb.CloneJob.CANCELLED)


def test_write_token_cannot_create_a_vm_in_another_target_project(
    token_server: TokenServer, stub: Stub
) -> None:
    metadata = bearer(token_server.tokens["acme-write"])
    body = pb.CloneJob(
        compute_engine_target_details=pb.ComputeEngineTargetDetails(
            vm_name="elsewhere",
            zone="us-central1-a",
            machine_type="n2-standard-2",
            project="other",
        )
    )
    request = spb.CreateCloneJobRequest(parent=ACME_VM, clone_job_id="cross", clone_job=body)
    expect(
        grpc.StatusCode.PERMISSION_DENIED,
        lambda: stub.CreateCloneJob(request, metadata=metadata, timeout=RPC_TIMEOUT),
        reason="PROJECT_ACCESS_DENIED",
    )


def test_a_token_does_not_cross_projects_the_other_way(
    token_server: TokenServer, stub: Stub
) -> None:
    metadata = bearer(token_server.tokens["other-write"])
    for rpc in RPCS:
        expect(
            grpc.StatusCode.PERMISSION_DENIED,
            call_rpc,
            stub,
            rpc,
            ACME_VM,
            "hold-mine",
            metadata,
            reason="PROJECT_ACCESS_DENIED",
        )


def test_cli_sends_the_token_from_flag_and_environment(token_server: TokenServer) -> None:
    address = token_server.server.address
    token = token_server.tokens["acme-read"]
    name = token_server.acme_job

    done = run_cli("--server", address, "get", name)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "UNAUTHENTICATED" in done.stderr

    done = run_cli("--server", address, "--token", token, "get", name)
    assert done.returncode == 0, done.stderr
    assert name in done.stdout

    done = run_cli("--server", address, "get", name, env=clean_env(CLONEJOB_TOKEN=token))
    assert done.returncode == 0, done.stderr
    assert name in done.stdout

    # The flag wins over the environment.
    env = clean_env(CLONEJOB_TOKEN="not-a-known-token")
    done = run_cli("--server", address, "--token", token, "get", name, env=env)
    assert done.returncode == 0, done.stderr
    done = run_cli("--server", address, "get", name, env=env)
    assert done.returncode == 3
    assert "UNAUTHENTICATED" in done.stderr

    # Another project's job: denied, and the token is not echoed back.
    done = run_cli("--server", address, "--token", token, "get", token_server.other_job)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "PERMISSION_DENIED" in done.stderr
    assert token not in done.stdout + done.stderr


def test_tokens_file_made_with_hash_token_works_and_no_token_is_logged(
    servers: ServerPool, pki: certs.Pki
) -> None:
    data = sample_data(servers, ACME_VM, OTHER_VM)
    tokens = new_tokens()
    digests = {role: hash_token(token) for role, token in tokens.items()}
    server = start(
        servers,
        data,
        tokens_file=tokens_file(data, digests),
        tls=server_tls(pki),
        log_level="DEBUG",
        fault_plan=HOLDS,
    )
    with tls_channel(server.address, tls_credentials(pki)) as channel:
        stub = Stub(channel)
        # Every kind of call, allowed and refused, with every token.
        job = create(stub, ACME_VM, "hold-logged", bearer(tokens["acme-write"]))
        for role, token in tokens.items():
            for rpc in RPCS:
                for parent in (ACME_VM, OTHER_VM):
                    try:
                        call_rpc(stub, rpc, parent, f"x-{role}", bearer(token))
                    except grpc.RpcError:
                        pass
        expect(grpc.StatusCode.UNAUTHENTICATED, get, stub, job.name, bearer("Bearer-ish"))
        cancel(stub, job.name, bearer(tokens["acme-write"]))
    for token in tokens.values():
        done = run_cli(
            "--server", server.address, "--tls-ca", str(pki.ca), "--token", token, "get", job.name
        )
        assert token not in done.stdout + done.stderr
    assert server.stop() == 0
    log = server.log_text()
    assert "DEBUG" in log or "INFO" in log, log  # the log is there, and verbose
    for role, token in tokens.items():
        assert token not in log, f"the {role} token is in the server's log"
        assert digests[role] not in log, f"the {role} token's digest is in the server's log"


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("not json", "not a valid tokens file"),
        ('{"tokens": [{"sha256": "abc", "projects": ["acme"]}]}', "sha256"),
        (
            '{"tokens": [{"sha256": "' + "0" * 64 + '", "projects": ["acme"], "access": "admin"}]}',
            "access",
        ),
        ('{"tokens": [{"sha256": "' + "0" * 64 + '", "projects": []}]}', "projects"),
        ('{"tokens": [{"sha256": "' + "0" * 64 + '"}]}', "projects"),
        ('{"nothing": []}', "not a valid tokens file"),
    ],
    ids=["not-json", "bad-digest", "bad-access", "no-projects", "missing-projects", "no-tokens"],
)
def test_invalid_tokens_file_is_refused_at_start(tmp_path: Path, content: str, why: str) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(content)
    done, _ = start_refused(tmp_path, tokens_file=path)
    assert done.returncode == 2, done.log
    assert str(path) in done.log
    assert why in done.log
    assert "Traceback" not in done.log


# -- exposure -----------------------------------------------------------------------


def refused(tmp_path: Path, listen: str, **options: Any) -> ServerStartError:
    started = time.monotonic()
    done, server = start_refused(tmp_path, listen, **options)
    assert done.returncode not in (None, 0), done.log  # None: it neither exited nor served
    assert time.monotonic() - started < REFUSE_TIMEOUT
    assert not server.port_file.exists()
    assert "Traceback" not in done.log
    assert "--insecure" in done.log
    return done


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0"])
def test_open_server_beyond_loopback_is_refused(tmp_path: Path, listen: str) -> None:
    done = refused(tmp_path, listen)
    assert "TLS" in done.log
    assert "token" in done.log


def test_open_server_beyond_loopback_from_environment_is_refused(tmp_path: Path) -> None:
    done = refused(tmp_path, "0.0.0.0:0", env={"CLONEJOB_LISTEN": "0.0.0.0:0"})
    assert "TLS" in done.log and "token" in done.log


def test_tls_without_tokens_beyond_loopback_is_refused(tmp_path: Path, pki: certs.Pki) -> None:
    done = refused(tmp_path, "0.0.0.0:0", tls=server_tls(pki))
    assert "token" in done.log


def test_tokens_without_tls_beyond_loopback_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    tokens_file(tmp_path, {role: "0" * 64 for role in TOKEN_GRANTS})
    done = refused(tmp_path, "0.0.0.0:0", tokens_file=path)
    assert "TLS" in done.log


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_insecure_allows_an_open_server_beyond_loopback(servers: ServerPool, how: str) -> None:
    if how == "flag":
        server = start(servers, insecure=True, listen="0.0.0.0:0")
    else:
        server = start(servers, listen="0.0.0.0:0", env={"CLONEJOB_INSECURE": "1"})
    with grpc.insecure_channel(server.address) as channel:
        expect(
            grpc.StatusCode.NOT_FOUND,
            get,
            Stub(channel),
            f"{ACME_VM}/cloneJobs/none",
            reason="CLONE_JOB_NOT_FOUND",
        )
    assert server.stop() == 0


def test_tls_and_tokens_allow_listening_beyond_loopback(
    servers: ServerPool, pki: certs.Pki
) -> None:
    data = sample_data(servers, ACME_VM)
    tokens = new_tokens()
    digests = {role: hashlib.sha256(t.encode()).hexdigest() for role, t in tokens.items()}
    server = start(
        servers,
        data,
        tls=server_tls(pki),
        tokens_file=tokens_file(data, digests),
        listen="0.0.0.0:0",
    )
    with tls_channel(server.address, tls_credentials(pki)) as channel:
        stub = Stub(channel)
        job = create(stub, ACME_VM, "exposed", bearer(tokens["acme-write"]))
        assert get(stub, job.name, bearer(tokens["acme-read"])).name == job.name
        expect(grpc.StatusCode.UNAUTHENTICATED, get, stub, job.name, reason="MISSING_CREDENTIALS")
    with grpc.insecure_channel(server.address) as channel:
        expect_unavailable(get, Stub(channel), job.name)
    assert server.stop() == 0


@pytest.mark.parametrize(
    ("listen", "connect"),
    [("127.0.0.1:0", "127.0.0.1"), ("[::1]:0", "[::1]"), ("localhost:0", "localhost")],
)
def test_loopback_needs_neither_tls_nor_tokens(
    servers: ServerPool, listen: str, connect: str
) -> None:
    server = start(servers, listen=listen)
    with grpc.insecure_channel(f"{connect}:{server.port}") as channel:
        expect(
            grpc.StatusCode.NOT_FOUND,
            get,
            Stub(channel),
            f"{ACME_VM}/cloneJobs/none",
            reason="CLONE_JOB_NOT_FOUND",
        )
    assert server.stop() == 0


# -- order of checks ------------------------------------------------------------------

# Field 1 (name / parent) as a string of invalid UTF-8: not a valid serialized request.
MALFORMED = b"\x0a\x02\xff\xfe"


@pytest.mark.parametrize("rpc", ["GetCloneJob", "WatchCloneJob"])
def test_malformed_request_without_token_is_unauthenticated(
    token_server: TokenServer, rpc: str
) -> None:
    with token_server.stub_channel() as channel:
        path = f"/clonejob.v1.CloneJobService/{rpc}"
        if rpc == "WatchCloneJob":
            stream = channel.unary_stream(path)

            def call() -> Any:
                return list(stream(MALFORMED, timeout=RPC_TIMEOUT))
        else:
            unary = channel.unary_unary(path)

            def call() -> Any:
                return unary(MALFORMED, timeout=RPC_TIMEOUT)

        expect(grpc.StatusCode.UNAUTHENTICATED, call, reason="MISSING_CREDENTIALS")


def test_malformed_request_with_a_valid_token_is_invalid_argument(
    token_server: TokenServer,
) -> None:
    with token_server.stub_channel() as channel:
        unary = channel.unary_unary("/clonejob.v1.CloneJobService/GetCloneJob")
        metadata = bearer(token_server.tokens["acme-read"])
        expect(
            grpc.StatusCode.INVALID_ARGUMENT,
            unary,
            MALFORMED,
            None,
            metadata,
            reason="MALFORMED_REQUEST",
        )


@pytest.mark.parametrize("problem", ["key-of-another-certificate", "certificate-not-pem"])
def test_unusable_tls_files_are_refused_at_start(
    tmp_path: Path, pki: certs.Pki, problem: str
) -> None:
    cert, key = pki.server_cert, pki.server_key
    if problem == "key-of-another-certificate":
        key = pki.client_key
    else:
        cert = tmp_path / "garbage.pem"
        cert.write_text("not a certificate\n")
    done, server = start_refused(tmp_path, tls=TlsConfig(cert=cert, key=key, ca=pki.ca))
    assert done.returncode == 2, done.log
    assert not server.port_file.exists()
    assert "Traceback" not in done.log
