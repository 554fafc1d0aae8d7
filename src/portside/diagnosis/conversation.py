"""Speak what a target implies over a connected socket, and say what came back.

``http://`` sends one GET; ``https://``/``tcp+tls://`` run a TLS handshake through
memory BIOs, so the raw answer of a plain-text server can be seen; ``redis://`` sends
PING; ``postgres://`` the SSLRequest; a bare ``HOST:PORT`` only listens briefly for a
banner. Every read is bounded by the timeout.
"""

from __future__ import annotations

import socket
import time

from portside.addresses import HostKind, Target
from portside.diagnosis.facts import AfterConnect

Answer = tuple[AfterConnect, str | None, str | None, int | None]

_BANNER_WAIT_S = 0.15
_MAX_READ = 16 * 1024
_PG_SSL_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"


def _read_some(
    sock: socket.socket, deadline: float, *, until: bytes | None = None
) -> tuple[bytes, bool]:
    """Bytes received before ``deadline`` (or ``until`` is seen); and whether the peer closed."""
    data = b""
    while len(data) < _MAX_READ:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return data, False
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            return data, False
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
        if until is not None and until in data:
            return data, False
    return data, False


def guess(data: bytes) -> tuple[str | None, str | None]:
    """(protocol, detail) from a server's first bytes."""
    if data.startswith(b"HTTP/"):
        return "http", data.split(b"\r\n", 1)[0].decode("latin-1")
    if len(data) >= 3 and data[0] in (0x15, 0x16) and data[1] == 0x03:
        return "tls", "TLS alert" if data[0] == 0x15 else "TLS handshake"
    if data.startswith(b"SSH-"):
        return "ssh", data.split(b"\r\n", 1)[0].decode("latin-1")
    if data[:1] in (b"+", b"-") and (
        b"PONG" in data[:8] or data.startswith((b"-ERR", b"-NOAUTH", b"-DENIED"))
    ):
        return "redis", data.split(b"\r\n", 1)[0].decode("latin-1")
    if len(data) >= 9 and data[3] == 0x04 and data[5:9] == b"\x00\x00\x00\x00":
        return "h2c", "HTTP/2 SETTINGS frame"
    if len(data) >= 5 and data[3] == 0 and data[4] == 0x0A:
        return "mysql", data[5:].split(b"\x00", 1)[0].decode("latin-1")
    if data.startswith((b"220 ", b"220-")):
        return "smtp-or-ftp", data.split(b"\r\n", 1)[0].decode("latin-1")
    if data.startswith(b"* OK"):
        return "imap", data.split(b"\r\n", 1)[0].decode("latin-1")
    if data.startswith(b"+OK"):
        return "pop3", data.split(b"\r\n", 1)[0].decode("latin-1")
    if data.lstrip()[:1] == b"<":
        return "http", "HTML without a status line (an HTTP/0.9-style answer)"
    return None, None


def _http(sock: socket.socket, target: Target, deadline: float) -> Answer:
    host = (
        target.host
        if target.host_kind is HostKind.NAME
        else (
            f"[{target.host}]" if target.host and ":" in target.host else target.host or "localhost"
        )
    )
    request = (
        f"GET {target.path or '/'} HTTP/1.1\r\nHost: {host}:{target.port}\r\n"
        "User-Agent: portside-doctor\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    ).encode("latin-1", "replace")
    try:
        sock.sendall(request)
    except OSError:
        return AfterConnect.CLOSED, None, None, None
    data, closed = _read_some(sock, deadline, until=b"\r\n\r\n")
    if not data:
        return (AfterConnect.CLOSED if closed else AfterConnect.SILENT), None, None, None
    protocol, detail = guess(data)
    status = None
    if protocol == "http" and data.startswith(b"HTTP/"):
        parts = data.split(b" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    return AfterConnect.ANSWERED, protocol or "unknown", detail, status


def _tls(sock: socket.socket, target: Target, deadline: float) -> Answer:
    import ssl  # only TLS targets pay for it (tens of ms at start-up)

    # No verification, so no CA store either: loading the system's costs tens of ms.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2", "http/1.1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    sni = target.host if target.host_kind is HostKind.NAME else None
    tls = context.wrap_bio(incoming, outgoing, server_hostname=sni)
    first = True
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            pending = outgoing.read()
            if pending:
                try:
                    sock.sendall(pending)
                except OSError:
                    return AfterConnect.CLOSED, None, None, None
            # One chunk at a time: the server waits for our next flight, so reading on
            # until the deadline would stall every handshake for the whole budget.
            data, closed = _read_chunk(sock, deadline)
            if not data:
                return (AfterConnect.CLOSED if closed else AfterConnect.SILENT), None, None, None
            if first and data[0] not in (0x15, 0x16):
                protocol, detail = guess(data)
                return AfterConnect.ANSWERED, protocol or "unknown", detail, None
            first = False
            incoming.write(data)
        except ssl.SSLError as exc:
            return AfterConnect.ANSWERED, "tls", f"TLS handshake failed: {exc.reason or exc}", None
    detail = f"{tls.version()} ALPN {tls.selected_alpn_protocol() or '-'}"
    return AfterConnect.ANSWERED, "tls", detail, None


def _read_chunk(sock: socket.socket, deadline: float) -> tuple[bytes, bool]:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return b"", False
    sock.settimeout(remaining)
    try:
        chunk = sock.recv(_MAX_READ)
    except TimeoutError:
        return b"", False
    except ConnectionResetError:
        return b"", True
    return chunk, not chunk


def _exchange(sock: socket.socket, payload: bytes, deadline: float) -> Answer:
    try:
        sock.sendall(payload)
    except OSError:
        return AfterConnect.CLOSED, None, None, None
    data, closed = _read_chunk(sock, deadline)
    if not data:
        return (AfterConnect.CLOSED if closed else AfterConnect.SILENT), None, None, None
    if payload == _PG_SSL_REQUEST and data[:1] in (b"S", b"N") and len(data) == 1:
        return (
            AfterConnect.ANSWERED,
            "postgresql",
            "SSL " + ("supported" if data == b"S" else "not supported"),
            None,
        )
    protocol, detail = guess(data)
    return AfterConnect.ANSWERED, protocol or "unknown", detail, None


def talk(sock: socket.socket, target: Target, ip: str, timeout: float) -> Answer:
    """Converse as the target's scheme implies; (after, protocol, detail, http status)."""
    del ip  # the socket is already connected to it
    deadline = time.monotonic() + max(timeout, 0.05)
    scheme = target.scheme
    if scheme in ("http", "ws"):
        return _http(sock, target, deadline)
    if scheme in ("https", "wss", "tcp+tls", "rediss"):
        return _tls(sock, target, deadline)
    if scheme == "redis":
        return _exchange(sock, b"*1\r\n$4\r\nPING\r\n", deadline)
    if scheme in ("postgres", "postgresql"):
        return _exchange(sock, _PG_SSL_REQUEST, deadline)
    # A bare HOST:PORT implies nothing: listen briefly for a server-first banner.
    data, closed = _read_some(sock, min(deadline, time.monotonic() + _BANNER_WAIT_S))
    if data:
        protocol, detail = guess(data)
        return AfterConnect.ANSWERED, protocol or "unknown", detail, None
    return (AfterConnect.CLOSED if closed else AfterConnect.SILENT), None, None, None
