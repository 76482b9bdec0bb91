"""Certificates made at test time for the TLS and mutual-TLS tests.

`make_pki(directory)` writes, as PEM files:

- `ca.pem`: the test CA (the one the server and its clients trust);
- `server.pem` / `server.key`: the server's certificate, signed by the CA, for
  IP 127.0.0.1, IP ::1 and DNS localhost (serverAuth);
- `client.pem` / `client.key`: a client certificate signed by the CA (clientAuth);
- `other-ca.pem`: a second CA that has nothing to do with the first;
- `other-client.pem` / `other-client.key`: a client certificate signed by that
  unrelated CA (well formed, but not trusted by a server that trusts `ca.pem`).

Keys are ECDSA P-256 (fast to make) in unencrypted PKCS#8; certificates are valid
from an hour ago to a day from now.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class Issuer:
    cert: x509.Certificate
    key: PrivateKey


@dataclass(frozen=True, slots=True)
class Pki:
    """Paths of the PEM files written by `make_pki`."""

    directory: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_client_cert: Path
    other_client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "clonejob tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(
        now + datetime.timedelta(days=1)
    )


def make_ca(common_name: str) -> Issuer:
    key = _key()
    name = _name(common_name)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return Issuer(_validity(builder).sign(key, hashes.SHA256()), key)


def make_leaf(
    issuer: Issuer,
    common_name: str,
    *,
    server: bool,
    dns_names: tuple[str, ...] = (),
    ip_addresses: tuple[str, ...] = (),
) -> Issuer:
    """A certificate signed by `issuer`: serverAuth (with SANs) or clientAuth."""
    key = _key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    )
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issuer(_validity(builder).sign(issuer.key, hashes.SHA256()), key)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def make_pki(directory: Path) -> Pki:
    """Write the CA, server, client and unrelated-CA files into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca("clonejob test CA")
    server = make_leaf(
        ca,
        "localhost",
        server=True,
        dns_names=("localhost",),
        ip_addresses=("127.0.0.1", "::1"),
    )
    client = make_leaf(ca, "clonejob test client", server=False)
    other_ca = make_ca("unrelated test CA")
    other_client = make_leaf(other_ca, "clonejob test client", server=False)
    return Pki(
        directory=directory,
        ca=_write(directory / "ca.pem", cert_pem(ca.cert)),
        server_cert=_write(directory / "server.pem", cert_pem(server.cert)),
        server_key=_write(directory / "server.key", key_pem(server.key), 0o600),
        client_cert=_write(directory / "client.pem", cert_pem(client.cert)),
        client_key=_write(directory / "client.key", key_pem(client.key), 0o600),
        other_ca=_write(directory / "other-ca.pem", cert_pem(other_ca.cert)),
        other_client_cert=_write(directory / "other-client.pem", cert_pem(other_client.cert)),
        other_client_key=_write(directory / "other-client.key", key_pem(other_client.key), 0o600),
    )
