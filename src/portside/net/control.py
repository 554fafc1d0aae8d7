"""The control API of ``portside forward``: a tiny HTTP/1.1 + JSON endpoint on loopback.

A test (or a person with curl) changes faults while traffic flows and reads counters::

    GET    /forwards                    the forwards: name, listen, target, data path
    GET    /stats                       ForwardStats of every forward
    GET    /forwards/NAME/stats         one forward's stats
    GET    /forwards/NAME/faults        its faults, in the mapping form of faults.py
    PUT    /forwards/NAME/faults        replace them   {"latency": "50ms", "down": {...}}
    PATCH  /forwards/NAME/faults        change only the keys given
    DELETE /forwards/NAME/faults        back to no faults
    GET|PUT|PATCH|DELETE /faults        the same, when there is exactly one forward

Answers are JSON documents ``{"schema": 1, "kind": ..., ...}``; errors are
``{"schema": 1, "kind": "error", "error": "..."}`` with 400/404/405/409/413/403. One
request per connection (``Connection: close``). Documented in docs/forward.md.

Safety: it binds loopback (the CLI warns otherwise), answers only a loopback ``Host``
(DNS rebinding) and no browser ``Origin`` other than a loopback one, sends no CORS
headers, and bounds the head (16 KiB), the body (64 KiB) and the time (5 s) per
connection. Requests are handled in loop callbacks: no task per connection.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import cast

from portside.errors import PortsideError, UsageError
from portside.models import Endpoint, JSONValue, json_document, to_jsonable
from portside.net.faults import Faults, faults_from_mapping, faults_to_mapping
from portside.net.forward import Forwarder
from portside.net.hosts import is_loopback_host, parse_host_header

__all__ = ["ControlServer", "handle_request", "open_control"]

CONTROL_TIMEOUT_S = 5.0
MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024

_REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
}


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _forward_summary(forwarder: Forwarder) -> dict[str, JSONValue]:
    return {
        "name": forwarder.name,
        "listen": to_jsonable(forwarder.address),
        "target": forwarder.target_text,
        "data_path": forwarder.data_path,
        "faults_enabled": forwarder.faults is not None,
    }


def _faults_document(forwarder: Forwarder) -> dict[str, JSONValue]:
    faults = forwarder.faults
    body = cast(JSONValue, faults_to_mapping(faults)) if faults is not None else None
    return json_document("faults", {"name": forwarder.name, "faults": body})


def _pick(forwarders: Mapping[str, Forwarder], name: str | None) -> Forwarder:
    if name is None:
        if len(forwarders) != 1:
            names = ", ".join(sorted(forwarders))
            raise _HTTPError(400, f"several forwards ({names}): use /forwards/NAME/faults")
        return next(iter(forwarders.values()))
    forwarder = forwarders.get(name)
    if forwarder is None:
        raise _HTTPError(404, f"no forward named {name!r}; GET /forwards lists them")
    return forwarder


def _faults_request(forwarder: Forwarder, method: str, body: bytes) -> dict[str, JSONValue]:
    if method == "GET":
        return _faults_document(forwarder)
    current = forwarder.faults
    if current is None:
        raise _HTTPError(
            409,
            f"forward {forwarder.name!r} runs without fault injection (zero-copy);"
            " start it with --control or a fault option",
        )
    if method == "DELETE":
        new = Faults()
    else:
        try:
            data = json.loads(body or b"{}")
        except (ValueError, UnicodeDecodeError) as exc:
            raise _HTTPError(400, f"the body is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise _HTTPError(400, 'the body must be a JSON object, e.g. {"latency": "50ms"}')
        try:
            new = faults_from_mapping(data, base=current if method == "PATCH" else None)
        except UsageError as exc:
            raise _HTTPError(400, str(exc)) from exc
    forwarder.set_faults(new)
    return _faults_document(forwarder)


def handle_request(
    method: str, path: str, body: bytes, forwarders: Mapping[str, Forwarder]
) -> tuple[int, dict[str, JSONValue]]:
    """Answer one request: (status, JSON document). Pure apart from the forwarders."""
    try:
        parts = [p for p in path.split("?", 1)[0].split("/") if p]
        if parts == ["forwards"] or parts == ["stats"]:
            if method != "GET":
                raise _HTTPError(405, f"{method} /{parts[0]}: only GET")
            if parts == ["forwards"]:
                summaries: list[JSONValue] = [_forward_summary(f) for f in forwarders.values()]
                return 200, json_document("forwards", {"forwards": summaries})
            stats = [f.stats() for f in forwarders.values()]
            return 200, json_document("forward-stats", {"forwards": stats})
        name: str | None
        if parts == ["faults"]:
            name, leaf = None, "faults"
        elif len(parts) == 3 and parts[0] == "forwards" and parts[2] in ("faults", "stats"):
            name, leaf = parts[1], parts[2]
        else:
            raise _HTTPError(404, f"no such resource {path!r}; see GET /forwards")
        forwarder = _pick(forwarders, name)
        if leaf == "stats":
            if method != "GET":
                raise _HTTPError(405, "stats: only GET")
            return 200, json_document("forward-stats", {"forwards": [forwarder.stats()]})
        if method not in ("GET", "PUT", "PATCH", "DELETE"):
            raise _HTTPError(405, f"{method} on faults: use GET, PUT, PATCH or DELETE")
        return 200, _faults_request(forwarder, method, body)
    except _HTTPError as exc:
        return exc.status, json_document("error", {"error": str(exc)})
    except PortsideError as exc:
        return 409, json_document("error", {"error": str(exc)})


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes every byte
        raise _HTTPError(400, "bad request head") from exc
    lines = text.split("\r\n")
    request = lines[0].split(" ")
    if len(request) != 3 or not request[2].startswith("HTTP/1."):
        raise _HTTPError(400, "bad request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _HTTPError(400, "bad header line")
        headers[name.lower()] = value.strip()
    return request[0].upper(), request[1], headers


def _check_origin(headers: Mapping[str, str]) -> None:
    host = parse_host_header(headers.get("host", ""))
    if host is None or not is_loopback_host(host[0]):
        raise _HTTPError(403, "the Host must be a loopback name or address (DNS rebinding)")
    origin = headers.get("origin")
    if origin is not None:
        authority = origin.split("://", 1)[-1]
        parsed = parse_host_header(authority)
        if parsed is None or not is_loopback_host(parsed[0]):
            raise _HTTPError(403, "requests from web pages are refused")


class _ControlProtocol(asyncio.Protocol):
    def __init__(self, server: ControlServer) -> None:
        self.server = server
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.head: tuple[str, str, dict[str, str]] | None = None
        self.body_at = 0
        self.length = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(CONTROL_TIMEOUT_S, self.transport.abort)

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.buffer += data
        try:
            if self.head is None:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buffer) > MAX_HEAD_BYTES:
                        raise _HTTPError(413, "request head too large")
                    return
                self.head = _parse_head(bytes(self.buffer[:end]))
                self.body_at = end + 4
                length_text = self.head[2].get("content-length", "0")
                if not length_text.isdigit():
                    raise _HTTPError(400, "bad Content-Length")
                self.length = int(length_text)
                if self.length > MAX_BODY_BYTES:
                    raise _HTTPError(413, "request body too large (64 KiB at most)")
                if "transfer-encoding" in self.head[2]:
                    raise _HTTPError(400, "send a Content-Length, not a chunked body")
            if len(self.buffer) - self.body_at < self.length:
                return
            method, path, headers = self.head
            _check_origin(headers)
            body = bytes(self.buffer[self.body_at : self.body_at + self.length])
            status, document = handle_request(method, path, body, self.server.forwarders)
        except _HTTPError as exc:
            status, document = exc.status, json_document("error", {"error": str(exc)})
        self._respond(status, document)

    def _respond(self, status: int, document: dict[str, JSONValue]) -> None:
        assert self.transport is not None  # noqa: S101 -- set in connection_made
        payload = (json.dumps(document, indent=2) + "\n").encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n"
            "Cache-Control: no-store\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        self.transport.write(head + payload)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.server.connections.discard(self)


class ControlServer:
    """The listening control endpoint; ``address`` is where it listens."""

    def __init__(self, forwarders: Sequence[Forwarder]) -> None:
        self.forwarders = {f.name: f for f in forwarders}
        if len(self.forwarders) != len(forwarders):
            raise UsageError("every forward needs its own name for the control API")
        self.connections: set[_ControlProtocol] = set()
        self.address = Endpoint(ip="", port=0)
        self._server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        host = f"[{self.address.ip}]" if ":" in self.address.ip else self.address.ip
        return f"http://{host}:{self.address.port}/"

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        self.connections.clear()

    async def __aenter__(self) -> ControlServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def open_control(listen: Endpoint, forwarders: Sequence[Forwarder]) -> ControlServer:
    """Serve the control API for *forwarders* on *listen* (port 0: the kernel picks).

    Raises:
        UsageError: two forwards share a name.
        OSError: the address cannot be bound.
    """
    server = ControlServer(forwarders)
    loop = asyncio.get_running_loop()
    server._server = await loop.create_server(
        lambda: _ControlProtocol(server), listen.ip, listen.port, reuse_address=True
    )
    name = server._server.sockets[0].getsockname()
    server.address = Endpoint(ip=str(name[0]), port=int(name[1]))
    return server
