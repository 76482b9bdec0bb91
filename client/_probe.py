"""What answers at HOST:PORT, asked only after a call could not connect.

gRPC reports a TLS client talking to a plaintext server, and the reverse, as
UNAVAILABLE with a message from deep inside its core ("Socket closed", "Tls
handshake failed"), much like a server that is not running at all. One short
look at the port tells them apart: a refused connection (nothing listens), a
completed TLS handshake (a TLS server), or an HTTP/2 SETTINGS frame in answer to
the plaintext HTTP/2 preface (a plaintext gRPC server). The CLI turns the answer
into a hint.
"""

from __future__ import annotations

import enum
import socket

__all__ = ["Listener", "probe"]

# The HTTP/2 client connection preface (RFC 9113 §3.4) and an empty SETTINGS frame.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_H2_SETTINGS = 0x04


class Listener(enum.Enum):
    """What answered at an address."""

    NOTHING = "nothing"  # refused, unreachable or unknown host
    TLS = "tls"  # completed a TLS handshake
    PLAINTEXT = "plaintext"  # answered the plaintext HTTP/2 preface
    UNKNOWN = "unknown"  # accepted the connection, then neither probe got an answer


def probe(address: str, *, timeout: float) -> Listener:
    """Look at `address` (HOST:PORT, [V6]:PORT, optionally dns:///) for at most
    about `timeout` seconds."""
    where = _host_port(address)
    if where is None:
        return Listener.UNKNOWN
    half = max(timeout / 2, 0.05)
    try:
        if _speaks_tls(where, half):
            return Listener.TLS
    except OSError:
        return Listener.NOTHING
    try:
        return Listener.PLAINTEXT if _speaks_h2(where, half) else Listener.UNKNOWN
    except OSError:
        return Listener.UNKNOWN


def _host_port(address: str) -> tuple[str, int] | None:
    address = address.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:")
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def _speaks_tls(where: tuple[str, int], timeout: float) -> bool:
    """True after a TLS handshake (certificates not checked: only the protocol
    matters here); False if the connection was accepted but the handshake failed;
    OSError if the connection itself failed."""
    import ssl  # only ever on a failed connect

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(where, timeout=timeout) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=where[0]):
                return True
        except (ssl.SSLError, OSError):
            return False


def _speaks_h2(where: tuple[str, int], timeout: float) -> bool:
    """True if the server answers the HTTP/2 preface with a SETTINGS frame."""
    with socket.create_connection(where, timeout=timeout) as sock:
        sock.sendall(_H2_PREFACE)
        header = b""
        while len(header) < 9:
            chunk = sock.recv(9 - len(header))
            if not chunk:
                break
            header += chunk
        return len(header) >= 4 and header[3] == _H2_SETTINGS
