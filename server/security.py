"""Who may call: TLS credentials, bearer tokens and per-project authorization.

Tokens file (`--tokens-file`)::

    {"tokens": [{"sha256": "<hex SHA-256 of the token>", "projects": ["acme"],
                 "access": "read" | "write"}]}

It holds digests, never tokens (`clonejob-server hash-token` makes one). A caller
sends `authorization: Bearer <token>`. No or an unknown token: UNAUTHENTICATED.
A token used on a project it does not list (`"*"` lists all): PERMISSION_DENIED,
decided from the request's name alone, before anything is looked up, so it says
nothing about whether the job exists. Methods are decided by their full path
(`/package.Service/Method`), deny by default: a read token may call only the
methods that change nothing (`READ_METHODS`), a write token also the ones in
`WRITE_METHODS`, and a method in neither is refused to every token, so a new
surface opens no door by accident. The project checked is the one in the
request's `name` or `parent` (a clone job, migrating VM, source, location or
operation). Digests are compared in constant time and neither tokens nor
digests are logged.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from server.api.errors import ApiError

WILDCARD = "-"
# Methods whose parent may name every project at once (AIP-159).
LIST_ACROSS_PROJECTS = frozenset({"ListCloneJobs"})

_CLONEJOB = "/clonejob.v1.CloneJobService/"
_VMMIGRATION = "/google.cloud.vmmigration.v1.VmMigration/"
_OPERATIONS = "/google.longrunning.Operations/"

# Every method a token may call, by full path: those that change nothing...
READ_METHODS = frozenset(
    {
        _CLONEJOB + "GetCloneJob",
        _CLONEJOB + "ListCloneJobs",
        _CLONEJOB + "WatchCloneJob",
        _VMMIGRATION + "GetCloneJob",
        _VMMIGRATION + "ListCloneJobs",
        _VMMIGRATION + "GetMigratingVm",
        _VMMIGRATION + "ListMigratingVms",
        _OPERATIONS + "GetOperation",
        _OPERATIONS + "ListOperations",
        _OPERATIONS + "WaitOperation",
    }
)
# ...and those that need write access.
WRITE_METHODS = frozenset(
    {
        _CLONEJOB + "CreateCloneJob",
        _CLONEJOB + "CancelCloneJob",
        _VMMIGRATION + "CreateCloneJob",
        _VMMIGRATION + "CancelCloneJob",
        _OPERATIONS + "DeleteOperation",
        _OPERATIONS + "CancelOperation",
    }
)


class SecurityConfigError(ValueError):
    """The TLS or tokens configuration cannot be used; the message says why."""


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    sha256: bytes
    projects: frozenset[str]
    write: bool

    def covers(self, project: str) -> bool:
        return "*" in self.projects or project in self.projects


class TokenAuthorizer:
    def __init__(self, grants: Sequence[Grant]) -> None:
        self._grants = tuple(grants)

    @classmethod
    def load(cls, path: Path) -> TokenAuthorizer:
        try:
            raw = json.loads(path.read_text())
            grants = []
            for i, item in enumerate(raw["tokens"]):
                hexdigest = str(item["sha256"]).lower()
                if len(hexdigest) != 64 or any(c not in "0123456789abcdef" for c in hexdigest):
                    raise SecurityConfigError(f"tokens[{i}].sha256 is not a hex SHA-256 digest")
                access = item.get("access", "read")
                if access not in ("read", "write"):
                    raise SecurityConfigError(f"tokens[{i}].access must be 'read' or 'write'")
                projects = item.get("projects")
                if not isinstance(projects, list) or not projects:
                    raise SecurityConfigError(f"tokens[{i}].projects must be a non-empty list")
                grants.append(
                    Grant(
                        sha256=bytes.fromhex(hexdigest),
                        projects=frozenset(str(p) for p in projects),
                        write=access == "write",
                    )
                )
        except (OSError, ValueError, KeyError, TypeError) as error:
            if isinstance(error, SecurityConfigError):
                raise SecurityConfigError(f"{path}: {error}") from None
            raise SecurityConfigError(f"{path}: not a valid tokens file ({error})") from None
        return cls(grants)

    def _grant(self, metadata: Sequence[tuple[str, Any]]) -> Grant:
        header = next((str(v) for k, v in metadata if k == "authorization"), "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                grpc.StatusCode.UNAUTHENTICATED,
                "MISSING_CREDENTIALS",
                "this server needs a token: send the metadata `authorization: Bearer <token>`",
            )
        presented = hashlib.sha256(token.strip().encode()).digest()
        found: Grant | None = None
        for grant in self._grants:  # every grant compared, in constant time each
            if hmac.compare_digest(grant.sha256, presented):
                found = grant
        if found is None:
            raise ApiError(
                grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN", "the token is not valid"
            )
        return found

    def authenticate(self, metadata: Sequence[tuple[str, Any]]) -> None:
        """Raise ApiError (UNAUTHENTICATED) unless the caller sent a valid token."""
        self._grant(metadata)

    def check(
        self, method: str, request: Any, metadata: Sequence[tuple[str, Any]]
    ) -> frozenset[str] | None:
        """Raise ApiError unless the caller may call `method` (its full path) on the
        request's projects; the projects the caller may read (None: all).

        `request` is None when it could not be parsed: the caller is still
        authenticated first, so a caller without a token learns nothing else. A
        List whose parent's project is the wildcard `-` is allowed, and reads only
        the grant's projects.
        """
        grant = self._grant(metadata)
        short = method.rpartition("/")[2]
        if method not in READ_METHODS and method not in WRITE_METHODS:
            raise ApiError(
                grpc.StatusCode.PERMISSION_DENIED,
                "METHOD_NOT_ALLOWED",
                f"{method[:200]} is not a method any token may call",
                {"method": method[:200]},
            )
        if method in WRITE_METHODS and not grant.write:
            raise ApiError(
                grpc.StatusCode.PERMISSION_DENIED,
                "WRITE_ACCESS_REQUIRED",
                f"{short} needs a token with write access; this one may only read",
                {"method": short},
            )
        readable = None if "*" in grant.projects else grant.projects
        if request is None:
            return readable
        resource = getattr(request, "parent", "") or getattr(request, "name", "")
        projects = [project_of(resource)]
        if short in LIST_ACROSS_PROJECTS and projects[0] == WILDCARD:
            projects = []  # the List itself keeps to the readable projects
        if short == "CreateCloneJob":
            # The target project is written to as well: the token must cover it too.
            projects.append(request.clone_job.compute_engine_target_details.project or None)
        for project in projects:
            # No project: validation answers INVALID_ARGUMENT, revealing nothing.
            if project is not None and not grant.covers(project):
                raise ApiError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    "PROJECT_ACCESS_DENIED",
                    f"the token does not grant access to project {project[:63]!r}",
                    {"project": project[:63]},
                )
        return readable


def project_of(resource: str) -> str | None:
    parts = resource.split("/")
    if len(parts) >= 2 and parts[0] == "projects" and parts[1]:
        return parts[1]
    return None


def server_credentials(
    cert: Path | None, key: Path | None, client_ca: Path | None
) -> grpc.ServerCredentials | None:
    """TLS, and mutual TLS when a client CA is given; None for plaintext."""
    if cert is None and key is None:
        if client_ca is not None:
            raise SecurityConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if cert is None or key is None:
        raise SecurityConfigError("TLS needs both --tls-cert and --tls-key")
    try:
        chain = cert.read_bytes()
        private = key.read_bytes()
        roots = client_ca.read_bytes() if client_ca else None
    except OSError as error:
        raise SecurityConfigError(f"cannot read a TLS file: {error}") from None
    return grpc.ssl_server_credentials(
        [(private, chain)], root_certificates=roots, require_client_auth=roots is not None
    )


def is_loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0] if ":" in listen else listen
    if ":" in host and not host.startswith("["):
        raise SecurityConfigError(
            f"{listen!r}: write an IPv6 address in brackets, as in [::1]:50051"
        )
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(listen: str, *, tls: bool, tokens: bool, insecure: bool) -> None:
    """Refuse to serve beyond loopback without TLS and tokens, unless told --insecure."""
    if is_loopback(listen) or insecure or (tls and tokens):
        return
    missing = " and ".join(
        what
        for what, ok in (("TLS (--tls-cert/--tls-key)", tls), ("tokens (--tokens-file)", tokens))
        if not ok
    )
    raise SecurityConfigError(
        f"refusing to listen on {listen} without {missing}: anyone who can reach it could"
        " create and cancel jobs. Listen on 127.0.0.1, configure both, or pass --insecure"
        " to accept the risk."
    )
