"""The HTTP/1.1 connection core on httptools (llhttp), shared by ``serve`` and ``proxy``.

API (stable: the reverse proxy builds on it)
===========================================

Server side::

    server = await open_http_server(handler, Endpoint(ip="127.0.0.1", port=0),
                                    limits=Limits(), allow_remote_clients=False)
    server.address               # models.Endpoint actually bound (the kernel's port for 0)
    server.stats                 # ServerStats: counters (connections, requests, sendfile)
    server.shutting_down         # asyncio.Event, set when a graceful close begins
    await server.serve_forever() # until cancelled; then drains and closes
    await server.aclose()        # stop accepting, finish in-flight responses, close
    server.abort()               # forced stop: abort every connection now

    Handler = Callable[[Request, Response], Awaitable[None] | None]

``handler(request, response)`` is called once per request, in arrival order; the next
request on a connection is handed out only after this response ends (pipelining-safe).
Finish the response before returning ``None`` (the fast path: no task is created), or
return an awaitable (an ``async def`` handler), which the server runs in a task it owns,
or call ``response.defer(on_lost)`` and return ``None`` unfinished: the response is then
finished later from callbacks (``send``/``end``), or handed to a task (``resume``).
A ``ProtocolError`` escaping the handler becomes its ``status_hint`` (if nothing was sent
yet); any other exception becomes 500; in both cases the connection closes afterwards.
If the client goes away, the handler's task is cancelled.

``Request`` (read-only attributes)::

    method: str                  # "GET"
    target: str                  # the request-target as sent ("/a%20b?x=1", "http://h/p", "*")
    path: str                    # percent-encoded path, no query ("/a%20b"); "*" or the
                                 # authority for asterisk-/authority-form
    query: str                   # after "?", without it ("" when absent)
    http_version: str            # "1.1" or "1.0"
    headers: Headers             # names lower-case, values latin-1 text, in received order
    host: str                    # the Host header, or the authority of an absolute-form target
    keep_alive: bool             # what the client asked for
    upgrade: bool                # Connection: upgrade + Upgrade, or CONNECT
    content_length: int | None   # declared length (None: chunked or no body)
    chunked: bool
    client: tuple[str, int]      # peer address
    await request.read(max_bytes=-1) -> bytes   # next body piece; b"" at the end
    await request.body() -> bytes                # the whole body (bounded by Limits)
    async for piece in request: ...              # the body in pieces
    request.body_complete: bool

    Body reads are bounded by ``Limits.body_timeout_s`` (ProtocolError 408), the body by
    ``Limits.max_body_bytes`` (413); a read sends ``100 Continue`` when the client asked.
    Backpressure: reading pauses while more than ``Limits.body_buffer_bytes`` wait unread.

``Response`` (one per request)::

    response.send(status, headers=(), body=b"")          # whole response, no await
    response.start(status, headers=(), content_length=None)
        # head only; then ``await write()`` / ``await sendfile()`` and ``end()``.
        # content_length=None: chunked (HTTP/1.1) or close-delimited (HTTP/1.0)
    await response.write(data)                           # waits for drain (write_timeout_s)
    await response.sendfile(fd, offset, count)           # os.sendfile, zero-copy when plain TCP
    response.end()                                       # last chunk; hands out the next request
    response.detach() -> (transport, leftover_bytes)     # take over after Upgrade/CONNECT
    response.defer(on_lost); response.resume(awaitable); response.fail(exc)  # deferred
    response.started, response.finished: bool
    response.shutting_down: asyncio.Event                # long streams (SSE) end when set

``headers`` are ``(name, value)`` string pairs, or a ``PreparedHeaders(pairs)`` built once
and reused (validated and encoded once: the fast path). The core owns framing: it drops
``Connection``, ``Keep-Alive``, ``Transfer-Encoding`` and ``Content-Length`` passed in and
writes its own, plus ``Date`` and ``Server``. A value containing CR, LF or NUL raises
``ValueError`` (no response splitting). HEAD responses and 1xx/204/304 never carry a body.

Client side, for the proxy's backend connections (sans-I/O)::

    parser = ResponseParser(max_head_bytes=..., max_headers=...)
    parser.expect(method)            # the method of the request this response answers
    for event in parser.feed(data):  # ResponseHead | bytes (body piece) | MessageEnd | Upgraded
        ...
    parser.feed_eof()                # end of a close-delimited body, else ProtocolError(502)
    encode_request_head(method, target, headers) -> bytes
    encode_chunk(data) -> bytes; LAST_CHUNK

Validation (RFC 9112), answered before any handler sees the request, in order after the
responses already due on the connection, then the connection closes: Content-Length
with Transfer-Encoding, duplicate Content-Length, Transfer-Encoding other than
``chunked`` or on HTTP/1.0, obsolete line folding, invalid characters, whitespace before
a colon, bad request-target form, missing or repeated Host on HTTP/1.1, bad Host syntax,
broken chunked framing -> 400; head over ``max_head_bytes`` or more than ``max_headers``
fields -> 431; body over ``max_body_bytes`` -> 413 (declared: at once; chunked: when the
limit is crossed); an ``Expect`` other than 100-continue -> 417; HTTP/2.0 -> 505; a head
not complete ``head_timeout_s`` after its first byte -> 408 (noticed by the connection's
single timer, so at the latest when the idle deadline passes). Error answers close with
a lingering close (FIN, then drain what the client still sends, bounded) so that the
answer is not lost to a reset. An idle keep-alive connection is closed quietly after
``idle_timeout_s``. After a client's half-close (EOF), what it already sent is answered,
then the connection closes.

Structured concurrency: every task is owned by its server (cancelled and awaited on
close), every await is bounded by a ``Limits`` timeout, and protocol timers replace
awaits on the hot path (no task per request for synchronous handlers).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Final, cast

import httptools

from portside.errors import ProtocolError
from portside.models import Endpoint
from portside.net.hosts import parse_host_header

if TYPE_CHECKING:
    import ssl

__all__ = [
    "LAST_CHUNK",
    "ClientDisconnected",
    "HTTPServer",
    "Handler",
    "Headers",
    "Limits",
    "MessageEnd",
    "PreparedHeaders",
    "Request",
    "Response",
    "ResponseHead",
    "ResponseParser",
    "ServerStats",
    "Upgraded",
    "encode_chunk",
    "encode_request_head",
    "is_loopback_ip",
    "open_http_server",
]

log = logging.getLogger("portside.net.http")

SERVER_NAME: Final = "portside"
#: A TLS client that has not finished its handshake by then is dropped.
TLS_HANDSHAKE_TIMEOUT_S: Final = 10.0
_WRITE_HIGH_WATER: Final = 64 * 1024
_WRITE_LOW_WATER: Final = 16 * 1024
_SENDFILE_MAX_CALL: Final = 16 * 1024 * 1024
_FALLBACK_CHUNK: Final = 64 * 1024
_LINGER_S: Final = 2.0  # after an error: how long to drain what the client still sends
_LINGER_MAX_BYTES: Final = 1024 * 1024
_CORE_OWNED: Final = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})
# One regex over the whole block of header lines a handler asked for: tokens, ": ",
# then a value without CR, LF, NUL or other controls (HTAB allowed).
_HEADER_BLOCK: Final = re.compile(
    r"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+: [^\x00-\x08\x0a-\x1f\x7f]*\r\n)*"
)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Bounds on what one connection may cost; every timeout of the core lives here."""

    max_head_bytes: int = 16 * 1024  # request line + header fields -> 431
    max_headers: int = 100  # header fields -> 431
    max_body_bytes: int | None = 16 * 1024 * 1024  # -> 413; None: unbounded (streaming)
    head_timeout_s: float = 10.0  # first byte of a head -> its end (slowloris) -> 408
    idle_timeout_s: float = 15.0  # keep-alive idle, no byte of a next request -> close
    body_timeout_s: float = 30.0  # each body read -> ProtocolError(408)
    write_timeout_s: float = 30.0  # each wait for the client to read -> abort
    drain_timeout_s: float = 5.0  # graceful close: in-flight responses may finish
    max_pipelined: int = 32  # queued requests before reading pauses
    body_buffer_bytes: int = 256 * 1024  # unread body bytes before reading pauses


@dataclasses.dataclass(slots=True)
class ServerStats:
    """Counters of one server (not thread-safe; the loop's thread only)."""

    connections: int = 0
    requests: int = 0
    rejected_clients: int = 0  # non-loopback peers refused
    protocol_errors: int = 0  # 400/408/413/431/505 answered by the core
    sendfile_calls: int = 0  # os.sendfile() calls that moved bytes
    sendfile_bytes: int = 0


class ClientDisconnected(ConnectionError):
    """The client closed the connection (or it was aborted) while a response was due."""


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


_STATUS_LINES: dict[int, bytes] = {}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        if not 100 <= status <= 999:
            raise ValueError(f"HTTP status {status} is outside 100-999")
        line = f"HTTP/1.1 {status} {_reason(status)}\r\n".encode("ascii")
        _STATUS_LINES[status] = line
    return line


_date_second = -1
_date_line = ""


def _date_header() -> str:
    """``date: <IMF-fixdate>\\r\\n``, formatted once per second."""
    global _date_second, _date_line  # a per-second cache
    now = int(time.time())
    if now != _date_second:
        _date_second = now
        _date_line = f"date: {formatdate(now, usegmt=True)}\r\nserver: {SERVER_NAME}\r\n"
    return _date_line


def _no_body_status(status: int) -> bool:
    return status < 200 or status in (204, 304)


def is_loopback_ip(ip: str) -> bool:
    """127.0.0.0/8, ::1 and IPv4-mapped loopback (``::ffff:127.0.0.1``)."""
    return ip.startswith(("127.", "::ffff:127.")) or ip == "::1"


class PreparedHeaders:
    """Response header fields validated and encoded once, for many responses.

    Pass one wherever a response takes ``headers``; iterating gives the pairs back.
    Framing fields (``Connection``, ``Content-Length``, …) are dropped here too.

    Raises:
        ValueError: a name is not a token or a value holds CR, LF, NUL or controls.
    """

    __slots__ = ("block", "pairs")

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self.pairs = tuple(pairs)
        self.block = _header_block(self.pairs)

    def __iter__(self) -> collections.abc.Iterator[tuple[str, str]]:
        return iter(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)


HeaderFields = Iterable[tuple[str, str]] | PreparedHeaders


def _header_block(headers: Iterable[tuple[str, str]]) -> str:
    lines = [f"{name}: {value}\r\n" for name, value in headers if name.lower() not in _CORE_OWNED]
    fields = "".join(lines)
    # One line per field: a value holding "\r\nName: v" would otherwise pass the regex
    # as two well-formed lines (response splitting).
    if fields and (fields.count("\n") != len(lines) or _HEADER_BLOCK.fullmatch(fields) is None):
        raise ValueError("invalid response header name or value (CR, LF, NUL or controls)")
    return fields


class Headers:
    """Header fields in received order; names lower-case, values latin-1 text."""

    __slots__ = ("items",)

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self.items = items

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of *name* (lower-case), or *default*."""
        for key, value in self.items:
            if key == name:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        return [value for key, value in self.items if key == name]

    def __contains__(self, name: object) -> bool:
        return any(key == name for key, _ in self.items)

    def __iter__(self) -> collections.abc.Iterator[tuple[str, str]]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"Headers({self.items!r})"


class Request:
    """One request: its head, and its body as a stream (see the module docstring)."""

    __slots__ = (
        "_body_error",
        "_buffered",
        "_chunks",
        "_complete",
        "_conn",
        "_continue_sent",
        "_expect_continue",
        "_received",
        "_waiter",
        "chunked",
        "client",
        "content_length",
        "headers",
        "host",
        "http_version",
        "keep_alive",
        "method",
        "path",
        "query",
        "target",
        "upgrade",
    )

    def __init__(
        self,
        conn: _Connection,
        *,
        method: str,
        target: str,
        path: str,
        query: str,
        http_version: str,
        headers: Headers,
        host: str,
        keep_alive: bool,
        upgrade: bool,
        content_length: int | None,
        chunked: bool,
        expect_continue: bool,
    ) -> None:
        self._conn = conn
        self.method = method
        self.target = target
        self.path = path
        self.query = query
        self.http_version = http_version
        self.headers = headers
        self.host = host
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.content_length = content_length
        self.chunked = chunked
        self.client = conn.peer
        self._expect_continue = expect_continue
        self._continue_sent = False
        self._chunks: collections.deque[bytes] | None = None  # made when a body arrives
        self._buffered = 0
        self._received = 0
        self._complete = False
        self._body_error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target} HTTP/{self.http_version}>"

    @property
    def body_complete(self) -> bool:
        """The whole body has arrived (it may still be unread)."""
        return self._complete

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    async def read(self, max_bytes: int = -1) -> bytes:
        """The next piece of the body (at most *max_bytes* when positive); ``b""`` at its end.

        Raises:
            ProtocolError: 408 when no byte arrives within ``body_timeout_s``, 413 when
                the body exceeds ``max_body_bytes``, 400 for broken chunked framing.
            ClientDisconnected: the client went away mid-body.
        """
        while not (chunks := self._chunks):
            if self._body_error is not None:
                raise self._body_error
            if self._complete:
                return b""
            self._conn.body_wanted(self)
            waiter = self._waiter = self._conn.loop.create_future()
            try:
                async with asyncio.timeout(self._conn.limits.body_timeout_s):
                    await waiter
            except TimeoutError:
                raise ProtocolError(
                    "the request body stalled (body timeout)", status_hint=408
                ) from None
            finally:
                self._waiter = None
        piece = chunks.popleft()
        if 0 < max_bytes < len(piece):
            chunks.appendleft(piece[max_bytes:])
            piece = piece[:max_bytes]
        self._buffered -= len(piece)
        self._conn.body_consumed(self)
        return piece

    async def body(self) -> bytes:
        """The whole body (bounded by ``Limits.max_body_bytes``)."""
        parts = []
        while piece := await self.read():
            parts.append(piece)
        return b"".join(parts)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while piece := await self.read():
            yield piece

    # -- fed by the connection --------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._received += len(data)
        limit = self._conn.limits.max_body_bytes
        if limit is not None and self._received > limit:
            raise ProtocolError(f"request body over {limit} bytes", status_hint=413)
        if self._chunks is None:
            self._chunks = collections.deque()
        self._chunks.append(data)
        self._buffered += len(data)
        self._wake()

    def _finish(self) -> None:
        self._complete = True
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if not self._complete and self._body_error is None:
            self._body_error = error
        self._wake()


class Response:
    """Writes the response to one request (see the module docstring)."""

    __slots__ = (
        "_chunked",
        "_conn",
        "_head_only",
        "_keep_alive",
        "_on_lost",
        "_remaining",
        "detached",
        "finished",
        "request",
        "started",
        "status",
    )

    def __init__(self, conn: _Connection, request: Request) -> None:
        self._conn = conn
        self.request = request
        self.started = False
        self.finished = False
        self.detached = False
        self.status = 0
        self._chunked = False
        self._head_only = False
        self._keep_alive = False
        self._remaining: int | None = None
        self._on_lost: Callable[[], None] | None = None

    @property
    def shutting_down(self) -> asyncio.Event:
        """Set when the server begins a graceful close; long streams should end then."""
        return self._conn.server.shutting_down

    @property
    def will_close(self) -> bool:
        """The connection closes after this response (decided when the head is written)."""
        return not self._keep_alive

    def _encode_head(
        self,
        status: int,
        headers: HeaderFields,
        content_length: int | None,
    ) -> bytes:
        request = self.request
        conn = self._conn
        no_body = status < 200 or status == 204 or status == 304
        self._head_only = no_body or request.method == "HEAD"
        keep_alive = (
            request.keep_alive
            and not conn.draining
            and not (conn.eof and not conn._queue)
            and (request._complete or not (request.chunked or request.content_length))
            and not (request.upgrade and status != 101)
        )
        framing = ""
        if no_body:
            pass  # 1xx, 204 and 304 have no body and no framing
        elif content_length is not None:
            framing = f"content-length: {content_length}\r\n"
            self._remaining = content_length
        elif request.method == "HEAD":
            pass  # the length of a HEAD response's would-be body is not known
        elif request.http_version == "1.1":
            framing = "transfer-encoding: chunked\r\n"
            self._chunked = True
        else:
            keep_alive = False  # HTTP/1.0 and no length: the close delimits the body
        if status == 101:
            keep_alive = True  # the connection continues as another protocol
        elif not keep_alive:
            framing += "connection: close\r\n"
        elif request.http_version == "1.0":
            framing += "connection: keep-alive\r\n"
        self._keep_alive = keep_alive
        fields = headers.block if type(headers) is PreparedHeaders else _header_block(headers)
        text = f"{fields}{_date_header()}{framing}\r\n"
        return _status_line(status) + text.encode("latin-1")

    def _begin(self) -> None:
        if self.started:
            raise RuntimeError("the response has already started")
        if self._conn.lost:
            raise ClientDisconnected("the client closed the connection")
        self.started = True

    def send(
        self,
        status: int,
        headers: HeaderFields = (),
        body: bytes = b"",
    ) -> None:
        """Write the whole response at once (``Content-Length`` from *body*) and end it."""
        self._begin()
        self.status = status
        head = self._encode_head(status, headers, None if status == 304 else len(body))
        if self._head_only or not body:
            self._conn.write(head)
        elif len(body) <= 16 * 1024:
            self._conn.write(head + body)
        else:
            self._conn.write(head)
            self._conn.write(body)
        self._remaining = None
        self._done()

    def start(
        self,
        status: int,
        headers: HeaderFields = (),
        *,
        content_length: int | None = None,
    ) -> None:
        """Write the head; the body follows with ``write``/``sendfile``, then ``end()``."""
        self._begin()
        self.status = status
        self._conn.write(self._encode_head(status, headers, content_length))

    async def write(self, data: bytes) -> None:
        """Write a piece of the body; waits while the client is slow to read.

        Raises:
            ClientDisconnected: the client went away (or did not read for
                ``write_timeout_s``, and the connection was aborted).
        """
        if not self.started or self.finished:
            raise RuntimeError("write() needs a started, unfinished response")
        if self._head_only or not data:
            return
        self._count(len(data))
        conn = self._conn
        if self._chunked:
            conn.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            conn.write(data)
        await conn.drain()

    async def sendfile(self, fd: int, offset: int, count: int) -> None:
        """Send *count* bytes of the open file *fd* from *offset*.

        ``os.sendfile`` straight from the page cache to the socket when the transport is
        plain TCP (the zero-copy path, counted in ``ServerStats.sendfile_*``); reads and
        writes otherwise (TLS, no socket).
        """
        if not self.started or self.finished:
            raise RuntimeError("sendfile() needs a started, unfinished response")
        if self._head_only or count <= 0:
            return
        self._count(count)
        conn = self._conn
        if self._chunked:
            conn.write(b"%x\r\n" % count)
        await conn.sendfile(fd, offset, count)
        if self._chunked:
            conn.write(b"\r\n")

    def _count(self, size: int) -> None:
        if self._remaining is not None:
            if size > self._remaining:
                raise RuntimeError("more body than the declared Content-Length")
            self._remaining -= size

    def end(self) -> None:
        """Finish the response (the last chunk when chunked); the next request follows."""
        if not self.started:
            raise RuntimeError("end() before start()")
        if self.finished:
            return
        if self._remaining:
            # Fewer bytes than promised: the framing is broken, only a close is honest.
            self._conn.abort()
            self.finished = True
            return
        if self._chunked and not self._conn.lost:
            self._conn.write(b"0\r\n\r\n")
        self._done()

    def _done(self) -> None:
        self.finished = True
        self._on_lost = None  # (a deferring handler's bound method: no cycle left behind)
        self._conn.response_done(self)

    def defer(self, on_lost: Callable[[], None]) -> None:
        """Finish this response later, from callbacks, without a task (the handler then
        returns ``None`` unfinished). *on_lost* is called if the client goes away first;
        after it, nothing may be written. End with ``send``/``end``, ``resume`` or ``fail``.
        """
        if self.finished:
            raise RuntimeError("defer() after the response finished")
        self._on_lost = on_lost

    def resume(self, awaitable: Awaitable[None]) -> None:
        """Carry on a deferred response in a task the server owns, exactly as if the
        handler had returned *awaitable* (cancelled if the client goes away)."""
        self._on_lost = None
        conn = self._conn
        conn._task = conn.server.spawn(conn._run_handler(awaitable, self))

    def fail(self, exc: BaseException) -> None:
        """A deferred response failed: what a handler raising *exc* would cause."""
        self._on_lost = None
        self._conn._handler_failed(self, exc)

    def detach(self) -> tuple[asyncio.Transport, bytes]:
        """Take the connection over after an Upgrade request or CONNECT.

        Returns the transport and the bytes that followed the request head. The core
        stops reading (the transport stays paused), cancels its timers and never touches
        the transport again; the caller must ``transport.set_protocol(...)``, then
        ``transport.resume_reading()``, and owns closing it. Write the ``101`` (or ``200``
        for CONNECT) yourself, on the transport.
        """
        if not self.request.upgrade:
            raise RuntimeError("detach() is only for Upgrade and CONNECT requests")
        if self.started:
            raise RuntimeError("detach() after the response started")
        self.started = self.finished = self.detached = True
        return self._conn.detach()


Handler = Callable[[Request, Response], Awaitable[None] | None]


@dataclasses.dataclass(frozen=True, slots=True)
class _Failure:
    """A request the core answers itself (malformed, too large, timed out)."""

    status: int
    detail: str


#: A request's fields as kept for a repeat: method, target, path, query, HTTP version,
#: header fields, host, Content-Length.
_RequestFields = tuple[str, str, str, str, str, tuple[tuple[str, str], ...], str, "int | None"]

_IDLE: Final = 1
_HEAD: Final = 2
#: Replaces a closed connection's parser (never fed: nothing is read after the loss).
_SPENT_PARSER: Final = httptools.HttpRequestParser(object())


class _Connection(asyncio.Protocol):
    """One client connection: parse, queue, dispatch in order, write, time out."""

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.limits = server.limits
        self._max_head_bytes = server.limits.max_head_bytes
        self._max_headers = server.limits.max_headers
        self.loop = server.loop
        self._handler = server.handler
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.lost = False
        self.draining = False
        self.eof = False  # the client half-closed: no request will follow the queued ones
        self._dead = False  # the parser failed: nothing more is read
        self._paused: set[str] = set()
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._queue: collections.deque[Request | _Failure] = collections.deque()
        self._active: Response | None = None
        self._task: asyncio.Task[None] | None = None
        self._in_dispatch = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._timer_kind = 0
        self._deadline = 0.0
        # parsing state of the message in progress
        self._in_head = False
        self._in_body = False
        self._head_raw = 0
        self._head_size = 0
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._hosts: list[str] = []
        self._te = False
        self._cl: int | None = None
        self._expect = ""
        self._current: Request | None = None
        self._error: ProtocolError | None = None
        self._completed = 0  # requests whose message ended, on this connection
        #: The last request that came whole in one piece, without a body (see
        #: data_received): (its bytes, its fields).
        self._repeat: tuple[bytes, _RequestFields] | None = None
        self._upgrade_leftover: bytes | None = None
        self._sendfile_waiter: asyncio.Future[None] | None = None
        self._lingering = False
        self._linger_bytes = 0
        self._linger_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement it.
        transport = cast("asyncio.Transport", transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = (str(peer[0]), int(peer[1]))
        stats = self.server.stats
        if not self.server.allow_remote_clients and not is_loopback_ip(self.peer[0]):
            stats.rejected_clients += 1
            self.lost = True
            transport.abort()
            return
        stats.connections += 1
        transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER, low=_WRITE_LOW_WATER)
        self.server.connections.add(self)
        if self.server.shutting_down.is_set():
            self.draining = True
            transport.close()
            return
        self._arm(_IDLE)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._stop_timer()
        # The parser holds bound methods of this object: drop it, so that a closed
        # connection is freed by reference counting, not left to the cycle collector.
        self._parser = _SPENT_PARSER
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        self.server.forget(self)
        error = ClientDisconnected("the client closed the connection")
        for request in (self._current, self._active.request if self._active else None):
            if request is not None:
                request._fail(error)
        for waiter in (*self._drain_waiters, self._sendfile_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_exception(error)
        self._drain_waiters.clear()
        task = self._task
        if task is not None and not task.done():
            task.cancel()
        active = self._active
        if active is not None and active._on_lost is not None:
            on_lost, active._on_lost = active._on_lost, None
            if not active.finished:
                try:
                    on_lost()
                except Exception:  # a handler bug must not break the loop's callback
                    log.exception("deferred response's on_lost failed")

    def pause_writing(self) -> None:
        self._write_paused = True
        self._pause("write")

    def resume_writing(self) -> None:
        self._write_paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()
        self._resume("write")
        self._dispatch()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._linger_bytes += len(data)
            if self._linger_bytes > _LINGER_MAX_BYTES:
                self.abort()
            return
        if self._dead or self.lost:
            return
        if self._upgrade_leftover is not None:
            self._upgrade_leftover += data
            return
        if self._timer_kind == _IDLE:
            self._head_begins()
        between = not self._in_head and not self._in_body
        repeat = self._repeat
        if between and repeat is not None and data == repeat[0]:
            # Byte for byte the last whole bodiless request, arriving between messages:
            # httptools would parse it as it did then (same bytes, same state), so its
            # fields are taken again. A new Request all the same: each is answered alone.
            self._queue_repeat(repeat[1])
            self._dispatch()
            return
        if not self._in_body:
            self._head_raw += len(data)
        completed = self._completed
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgrade_leftover = data[upgrade.args[0] :]
            self._pause("upgrade")
        except httptools.HttpParserError as exc:
            self._parse_failed(exc)
        else:
            if self._in_head and self._head_raw > self.limits.max_head_bytes:
                self._error = ProtocolError("request head too large", status_hint=431)
                self._parse_failed(None)
            elif between and self._completed == completed + 1:
                self._remember(data)
        self._dispatch()

    def _remember(self, data: bytes) -> None:
        """Keep ``data``'s request for :meth:`data_received` when it was exactly one whole
        request, between messages, without a body, upgrade or Expect, and kept alive."""
        if self._in_head or self._in_body or self._error is not None or not self._queue:
            return
        request = self._queue[-1]
        if (
            type(request) is not Request
            or request.has_body
            or request.upgrade
            or not request.keep_alive
            or request._expect_continue
            or request.method == "CONNECT"
        ):
            return
        self._repeat = (
            bytes(data),
            (
                request.method,
                request.target,
                request.path,
                request.query,
                request.http_version,
                tuple(request.headers.items),
                request.host,
                request.content_length,
            ),
        )

    def _queue_repeat(self, fields: _RequestFields) -> None:
        """What the callbacks of one whole bodiless request do, from its kept fields."""
        method, target, path, query, version, items, host, length = fields
        self.server.stats.requests += 1
        request = Request(
            self,
            method=method,
            target=target,
            path=path,
            query=query,
            http_version=version,
            headers=Headers(list(items)),
            host=host,
            keep_alive=True,
            upgrade=False,
            content_length=length,
            chunked=False,
            expect_continue=False,
        )
        request._finish()
        self._completed += 1
        self._queue.append(request)

    def eof_received(self) -> bool | None:
        # A half-close: answer what was asked, then close (no keep-alive after EOF).
        if self._lingering or (self._active is None and not self._queue):
            return None  # the transport closes itself
        self.eof = True  # answer everything already received, then close
        return True

    # -- httptools callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_size = 0
        self._url = b""
        self._headers = []
        self._hosts = []
        self._te = False
        self._cl = None
        self._expect = ""
        self.server.stats.requests += 1

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > self.limits.max_head_bytes:
            self._error = ProtocolError("request-target too long", status_hint=431)
            raise self._error

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self._max_head_bytes:
            self._error = ProtocolError("request head too large", status_hint=431)
            raise self._error
        if len(self._headers) >= self._max_headers:
            self._error = ProtocolError("too many header fields", status_hint=431)
            raise self._error
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self._headers.append((key, text))
        if key == "host":
            self._hosts.append(text)
        elif key == "transfer-encoding":
            self._te = True
        elif key == "content-length":
            self._cl = int(text)  # llhttp has already checked digits and duplicates
        elif key == "expect":
            self._expect = text.lower()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_raw = 0
        try:
            request = self._build_request()
        except ProtocolError as exc:
            self._error = exc
            raise
        self._current = request
        self._in_body = True
        self._queue.append(request)

    def on_body(self, body: bytes) -> None:
        request = self._current
        if request is None:
            return
        try:
            request._feed(body)
        except ProtocolError as exc:
            self._error = exc
            raise
        if request._buffered > self.limits.body_buffer_bytes:
            self._pause("body")

    def on_message_complete(self) -> None:
        request = self._current
        if request is not None:
            request._finish()
        self._current = None
        self._in_body = False
        self._in_head = False
        self._completed += 1
        if not self._parser.should_keep_alive():
            self._repeat = None  # httptools refuses what follows: so must the repeat path

    # -- request validation -----------------------------------------------------------

    def _build_request(self) -> Request:
        parser = self._parser
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            if version.startswith("0."):
                raise ProtocolError("HTTP/0.9 is not supported")
            raise ProtocolError(f"HTTP/{version} is not supported", status_hint=505)
        method = parser.get_method().decode("ascii")
        target = self._url.decode("latin-1")
        hosts = self._hosts
        if len(hosts) > 1:
            raise ProtocolError("more than one Host header")
        if not hosts and version == "1.1":
            raise ProtocolError("HTTP/1.1 request without a Host header")
        host = hosts[0] if hosts else ""
        if host and parse_host_header(host) is None:
            raise ProtocolError(f"invalid Host header {host[:80]!r}")
        if self._te and version == "1.0":
            raise ProtocolError("Transfer-Encoding on an HTTP/1.0 request")
        if self._expect and self._expect != "100-continue":
            raise ProtocolError(f"unsupported Expect {self._expect[:40]!r}", status_hint=417)
        limit = self.limits.max_body_bytes
        if self._cl is not None and limit is not None and self._cl > limit:
            raise ProtocolError(f"request body over {limit} bytes", status_hint=413)
        if target[0] == "/" and "?" not in target and "#" not in target:
            path, query = target, ""  # the common case
        elif target.startswith("/"):
            end = len(target)
            for mark in ("?", "#"):
                cut = target.find(mark)
                if 0 <= cut < end:
                    end = cut
            path = target[:end]
            query = target[end + 1 :] if end < len(target) and target[end] == "?" else ""
            if "#" in query:
                query = query.split("#", 1)[0]
        elif target == "*":
            if method != "OPTIONS":
                raise ProtocolError("asterisk-form request-target is only for OPTIONS")
            path, query = "*", ""
        elif method == "CONNECT":
            if parse_host_header(target) is None or ":" not in target:
                raise ProtocolError("CONNECT needs host:port")
            path, query = target, ""
        else:
            path, query, host = _absolute_form(target)
        return Request(
            self,
            method=method,
            target=target,
            path=path,
            query=query,
            http_version=version,
            headers=Headers(self._headers),
            host=host,
            keep_alive=parser.should_keep_alive(),
            upgrade=parser.should_upgrade(),
            content_length=self._cl,
            chunked=self._te,
            expect_continue=self._expect == "100-continue",
        )

    def _parse_failed(self, exc: httptools.HttpParserError | None) -> None:
        """The byte stream broke a rule: answer in order, read nothing more, close."""
        error = self._error
        if error is None:
            detail = str(exc) if exc is not None else "malformed request"
            error = ProtocolError(f"malformed request: {detail}")
        self._dead = True
        self._pause("dead")
        self.server.stats.protocol_errors += 1
        current = self._current
        if self._in_body and current is not None:
            current._fail(error)  # its handler hears of it; the connection closes after
        else:
            self._queue.append(_Failure(error.status_hint, str(error)))

    # -- dispatch in order ------------------------------------------------------------

    def _dispatch(self) -> None:
        if self._in_dispatch:
            return
        self._in_dispatch = True
        try:
            self._dispatch_loop()
        finally:
            self._in_dispatch = False
        if self._active is None and not self._queue and not self.lost:
            if self._dead or self.draining or self.eof:
                self.close()
            elif self._timer_kind == 0:
                self._arm(_HEAD if (self._in_head or self._head_raw) else _IDLE)

    def _dispatch_loop(self) -> None:
        queue = self._queue
        while self._active is None and queue and not self.lost:
            if self._write_paused:
                return  # resume_writing() dispatches again
            if self.draining and self._active is None:
                queue.clear()
                return
            item = queue.popleft()
            self._timer_kind = 0  # busy: the idle/head timer has nothing to watch
            if "pipeline" in self._paused and len(queue) < self.limits.max_pipelined // 2:
                self._resume("pipeline")
            if isinstance(item, _Failure):
                self._answer_failure(item)
                return
            if item._body_error is not None and isinstance(item._body_error, ProtocolError):
                # The body broke a rule before its handler ran (over the size limit,
                # broken chunks): answer for the handler, in order, and close.
                error = item._body_error
                self._answer_failure(_Failure(error.status_hint, str(error)))
                return
            response = Response(self, item)
            self._active = response
            try:
                result = self._handler(item, response)
            except Exception as exc:  # a handler bug becomes 500, not a crash
                self._handler_failed(response, exc)
                continue
            if result is not None:
                self._task = self.server.spawn(self._run_handler(result, response))
                return
            if not response.finished and response._on_lost is None:
                self._handler_failed(
                    response, RuntimeError("handler returned without finishing the response")
                )
        if queue and len(queue) >= self.limits.max_pipelined:
            self._pause("pipeline")

    async def _run_handler(self, awaitable: Awaitable[None], response: Response) -> None:
        try:
            await awaitable
        except asyncio.CancelledError:
            if self.lost:
                return  # we cancelled it: the client went away
            raise
        except Exception as exc:  # a status, never a crash of the server
            self._handler_failed(response, exc)
        else:
            if response.started and not response.finished:
                response.end()
            elif not response.started:
                self._handler_failed(response, RuntimeError("handler returned without a response"))
        finally:
            if self._task is asyncio.current_task():
                self._task = None

    def _handler_failed(self, response: Response, exc: BaseException) -> None:
        if isinstance(exc, ProtocolError):
            status = exc.status_hint
        elif isinstance(exc, ConnectionError):
            status = 0
        else:
            log.error("handler failed on %r", response.request, exc_info=exc)
            status = 500
        self.draining = True  # after a failure, nothing more on this connection
        self._pause("draining")
        if response.finished or self.lost:
            self.close()
        elif response.started or status == 0:
            response.finished = True
            self.abort()
        else:
            response.send(
                status,
                (("content-type", "text/plain; charset=utf-8"),),
                f"{status} {_reason(status)}\n".encode(),
            )

    def _answer_failure(self, failure: _Failure) -> None:
        self.draining = True
        if self.transport is None or self.lost:
            return
        body = f"{failure.status} {_reason(failure.status)}: {failure.detail}\n".encode(
            "utf-8", "replace"
        )
        head = (
            f"content-type: text/plain; charset=utf-8\r\ncontent-length: {len(body)}\r\n"
            f"{_date_header()}connection: close\r\n\r\n"
        )
        self.write(_status_line(failure.status) + head.encode("latin-1") + body)
        self._linger()

    def _linger(self) -> None:
        """Close after an error without destroying the answer: send FIN after it, then
        read and discard what the client is still sending until its EOF (bounded in time
        and bytes). Closing with unread bytes would make the kernel send a reset, which
        can discard the error response before the client reads it."""
        transport = self.transport
        if transport is None or self.lost:
            return
        self._stop_timer()
        self._dead = True
        if not transport.can_write_eof():
            self.close()
            return
        self._lingering = True
        transport.write_eof()
        self._linger_timer = self.loop.call_later(_LINGER_S, self.abort)
        self._paused.clear()
        transport.resume_reading()

    def response_done(self, response: Response) -> None:
        """Called by ``Response`` once its last byte is written."""
        if response is not self._active:
            return
        self._active = None
        if self.lost:
            return
        request = response.request
        if response.will_close:
            self.close()
            return
        if request.upgrade and self._upgrade_leftover is not None:
            # The upgrade was declined: what followed is HTTP again.
            leftover, self._upgrade_leftover = self._upgrade_leftover, None
            self._resume("upgrade")
            if leftover:
                self.data_received(leftover)
        if not self._in_dispatch:
            self._dispatch()

    @property
    def has_queued(self) -> bool:
        return bool(self._queue)

    # -- flow control -----------------------------------------------------------------

    def _pause(self, reason: str) -> None:
        if not self._paused and self.transport is not None and not self.lost:
            self.transport.pause_reading()
        self._paused.add(reason)

    def _resume(self, reason: str) -> None:
        if reason not in self._paused:
            return
        self._paused.discard(reason)
        if not self._paused and self.transport is not None and not self.lost:
            self.transport.resume_reading()

    def body_wanted(self, request: Request) -> None:
        if request._expect_continue and not request._continue_sent:
            request._continue_sent = True
            active = self._active
            if active is not None and active.request is request and not active.started:
                self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if request._buffered <= self.limits.body_buffer_bytes // 2:
            self._resume("body")

    def body_consumed(self, request: Request) -> None:
        if "body" in self._paused and request._buffered <= self.limits.body_buffer_bytes // 2:
            self._resume("body")

    # -- writing ----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is None or self.lost:
            raise ClientDisconnected("the client closed the connection")
        self.transport.write(data)

    async def drain(self) -> None:
        if self.lost:
            raise ClientDisconnected("the client closed the connection")
        if not self._write_paused:
            return
        waiter: asyncio.Future[None] = self.loop.create_future()
        self._drain_waiters.append(waiter)
        try:
            async with asyncio.timeout(self.limits.write_timeout_s):
                await waiter
        except TimeoutError:
            self.abort()
            raise ClientDisconnected("the client stopped reading (write timeout)") from None

    async def _flush(self) -> None:
        """Wait until the transport's own buffer is empty (before writing around it)."""
        transport = self.transport
        if transport is None or self.lost:
            raise ClientDisconnected("the client closed the connection")
        if transport.get_write_buffer_size() == 0:
            return
        transport.set_write_buffer_limits(high=0, low=0)
        try:
            await self.drain()
        finally:
            if not self.lost:
                transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER, low=_WRITE_LOW_WATER)

    async def sendfile(self, fd: int, offset: int, count: int) -> None:
        transport = self.transport
        if transport is None or self.lost:
            raise ClientDisconnected("the client closed the connection")
        sock = transport.get_extra_info("socket")
        if sock is None or transport.get_extra_info("sslcontext") is not None:
            await self._copy_file(fd, offset, count)
            return
        await self._flush()
        # The transport's buffer is empty and stays so (nothing else writes until this
        # response ends): write around it on a duplicate of its descriptor, waiting for
        # writability on the duplicate so the loop's own registration is left alone.
        out = os.dup(sock.fileno())
        stats = self.server.stats
        try:
            while count > 0:
                if self.lost:
                    raise ClientDisconnected("the client closed the connection")
                try:
                    sent = os.sendfile(out, fd, offset, min(count, _SENDFILE_MAX_CALL))
                except BlockingIOError:
                    await self._writable(out)
                    continue
                except InterruptedError:
                    continue
                except OSError as exc:
                    self.abort()
                    raise ClientDisconnected(f"sendfile failed: {exc}") from exc
                if sent == 0:
                    self.abort()  # the file shrank under us: the promised length is a lie
                    raise ClientDisconnected("the file shrank while it was being sent")
                stats.sendfile_calls += 1
                stats.sendfile_bytes += sent
                offset += sent
                count -= sent
        finally:
            os.close(out)

    async def _writable(self, fd: int) -> None:
        waiter: asyncio.Future[None] = self.loop.create_future()
        self._sendfile_waiter = waiter
        self.loop.add_writer(fd, _resolve, waiter)
        try:
            async with asyncio.timeout(self.limits.write_timeout_s):
                await waiter
        except TimeoutError:
            self.abort()
            raise ClientDisconnected("the client stopped reading (write timeout)") from None
        finally:
            self.loop.remove_writer(fd)
            self._sendfile_waiter = None

    async def _copy_file(self, fd: int, offset: int, count: int) -> None:
        while count > 0:
            data = os.pread(fd, min(count, _FALLBACK_CHUNK), offset)
            if not data:
                self.abort()
                raise ClientDisconnected("the file shrank while it was being sent")
            self.write(data)
            await self.drain()
            offset += len(data)
            count -= len(data)

    # -- timers and closing -----------------------------------------------------------

    # One timer handle per connection, rarely rescheduled: ``_timer_kind`` and
    # ``_deadline`` say what is awaited; the handle, when it runs, acts only if that
    # deadline has passed and otherwise re-arms itself for it. Per request this costs a
    # ``loop.time()`` or two instead of creating and cancelling timer handles.

    def _arm(self, kind: int) -> None:
        """Start waiting for the client: ``_IDLE`` (no byte yet) or ``_HEAD``."""
        delay = self.limits.head_timeout_s if kind == _HEAD else self.limits.idle_timeout_s
        self._timer_kind = kind
        self._deadline = deadline = self.loop.time() + delay
        if self._timer is None or self._timer_when > deadline:
            self._schedule(deadline)

    def _head_begins(self) -> None:
        """The first byte of a head arrived on an idle connection (no rescheduling: the
        handle notices the nearer deadline when it runs, at the latest at the idle one)."""
        self._timer_kind = _HEAD
        self._deadline = self.loop.time() + self.limits.head_timeout_s

    def _schedule(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(when, self._on_timer)
        self._timer_when = when

    def _cancel_timer(self) -> None:
        """Stop waiting (a request is being answered); the handle may run and do nothing."""
        self._timer_kind = 0

    def _stop_timer(self) -> None:
        self._timer_kind = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        kind = self._timer_kind
        if kind == 0 or self.lost or self._active is not None or self._queue:
            return
        if self.loop.time() < self._deadline:
            self._schedule(self._deadline)
            return
        self._timer_kind = 0
        if kind == _HEAD or self._in_head or self._head_raw:
            self.server.stats.protocol_errors += 1
            self._dead = True
            self._pause("dead")
            self._answer_failure(_Failure(408, "the request head did not arrive in time"))
        else:
            self.close()

    def shutdown(self) -> None:
        """Graceful close: finish the response in flight (if any), then close."""
        self.draining = True
        if self._active is None:
            self._queue.clear()
            self.close()

    def close(self) -> None:
        self._stop_timer()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        self._stop_timer()
        if self.transport is not None:
            self.transport.abort()

    def detach(self) -> tuple[asyncio.Transport, bytes]:
        transport = self.transport
        if transport is None or self.lost:
            raise ClientDisconnected("the client closed the connection")
        self._stop_timer()
        self._pause("detached")
        leftover = self._upgrade_leftover or b""
        self._upgrade_leftover = None
        self._active = None
        self._queue.clear()
        self._dead = True
        self.lost = True  # from here on, this object never touches the transport
        self.transport = None
        self.server.forget(self)
        return transport, leftover


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _absolute_form(target: str) -> tuple[str, str, str]:
    """``http://host:port/path?q`` -> (path, query, authority); ProtocolError otherwise."""
    lowered = target[:8].lower()
    if not lowered.startswith(("http://", "https://")):
        raise ProtocolError(f"request-target {target[:80]!r} is in no valid form")
    try:
        url = httptools.parse_url(target.encode("latin-1"))
    except httptools.HttpParserInvalidURLError:
        raise ProtocolError(f"invalid absolute-form target {target[:80]!r}") from None
    if not url.host or url.userinfo:
        raise ProtocolError("absolute-form target needs a host and no userinfo")
    host = url.host.decode("latin-1")
    if ":" in host:
        host = f"[{host}]"
    authority = f"{host}:{url.port}" if url.port else host
    if parse_host_header(authority) is None:
        raise ProtocolError(f"invalid authority {authority[:80]!r}")
    path = url.path.decode("latin-1") or "/"
    query = url.query.decode("latin-1") if url.query else ""
    return path, query, authority


class HTTPServer:
    """A listening HTTP/1.1 server; owns its connections and every task they start."""

    def __init__(
        self,
        handler: Handler,
        *,
        limits: Limits,
        allow_remote_clients: bool,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.handler = handler
        self.limits = limits
        self.allow_remote_clients = allow_remote_clients
        self.loop = loop
        self.stats = ServerStats()
        self.connections: set[_Connection] = set()
        self.shutting_down = asyncio.Event()
        self.addresses: list[Endpoint] = []
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False

    @property
    def address(self) -> Endpoint:
        """The (first) bound address; the real port when 0 was asked for."""
        return self.addresses[0]

    def spawn(self, coro: collections.abc.Coroutine[object, object, None]) -> asyncio.Task[None]:
        """Start a task the server owns: cancelled and awaited by ``aclose()``."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def forget(self, conn: _Connection) -> None:
        self.connections.discard(conn)
        if not self.connections:
            self._idle.set()

    def _track(self) -> _Connection:
        self._idle.clear()
        return _Connection(self)

    async def _listen(
        self,
        listen: Endpoint,
        *,
        reuse_port: bool,
        backlog: int,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._server = await self.loop.create_server(
            self._track,
            listen.ip,
            listen.port,
            backlog=backlog,
            reuse_address=True,
            reuse_port=reuse_port or None,
            ssl=tls,
            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S if tls is not None else None,
        )
        for sock in self._server.sockets:
            name = sock.getsockname()
            self.addresses.append(Endpoint(ip=str(name[0]), port=int(name[1])))
        if not self.connections:
            self._idle.set()

    async def serve_forever(self) -> None:
        """Serve until cancelled; then close gracefully (``aclose``) and re-raise."""
        try:
            await asyncio.Future()  # only cancellation ends this
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop accepting; let in-flight responses finish within ``drain_timeout_s``;
        then abort what is left, cancel the tasks and wait for them (bounded)."""
        if self._closed:
            return
        self._closed = True
        self.shutting_down.set()
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.shutdown()
        if not self.connections:
            self._idle.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.limits.drain_timeout_s):
                await self._idle.wait()
        for conn in list(self.connections):
            conn.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.limits.drain_timeout_s)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.limits.drain_timeout_s):
                    await self._server.wait_closed()

    def abort(self) -> None:
        """Stop now: stop accepting and abort every connection (a forced stop; a
        running ``aclose()`` then finds nothing left to drain)."""
        self.shutting_down.set()
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.abort()

    async def __aenter__(self) -> HTTPServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def open_http_server(
    handler: Handler,
    listen: Endpoint,
    *,
    limits: Limits | None = None,
    allow_remote_clients: bool = False,
    reuse_port: bool = False,
    backlog: int = 1024,
    tls: ssl.SSLContext | None = None,
) -> HTTPServer:
    """Bind *listen* and start answering with *handler*; returns once listening.

    ``listen.port == 0`` lets the kernel choose; read it back from ``server.address``.
    Non-loopback clients are refused (connection closed at once) unless
    *allow_remote_clients*. Binding a non-loopback address is the caller's explicit
    choice; the CLI warns about it. With *tls* (a server ``SSLContext``) the listener
    speaks HTTPS: the handler sees the same requests after the handshake.
    """
    server = HTTPServer(
        handler,
        limits=limits or Limits(),
        allow_remote_clients=allow_remote_clients,
        loop=asyncio.get_running_loop(),
    )
    await server._listen(listen, reuse_port=reuse_port, backlog=backlog, tls=tls)
    return server


# -- client side: framing backend responses (for the proxy) -----------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ResponseHead:
    status: int
    reason: str
    http_version: str
    headers: Headers
    keep_alive: bool  # the backend connection may be reused after this response
    content_length: int | None
    chunked: bool


@dataclasses.dataclass(frozen=True, slots=True)
class MessageEnd:
    """The response (or interim 1xx response) is complete."""


@dataclasses.dataclass(frozen=True, slots=True)
class Upgraded:
    """The backend switched protocols (101, or 2xx to CONNECT); *data* followed the head."""

    data: bytes


ResponseEvent = ResponseHead | bytes | MessageEnd | Upgraded


_NAMES: dict[bytes, str] = {}  # raw header name -> lower-case text


class ResponseParser:
    """Sans-I/O framing of the responses on one backend connection (httptools).

    ``feed(data)`` returns the events these bytes complete, in order: a ``ResponseHead``,
    body pieces (``bytes``), then ``MessageEnd``; 1xx interim responses come as a head and
    an end of their own. Call ``expect(method)`` before each response so that a response
    to HEAD is known to have no body. ``ProtocolError(status_hint=502)`` for anything
    malformed or over the limits; the connection must then be dropped.
    """

    def __init__(self, *, max_head_bytes: int = 64 * 1024, max_headers: int = 200) -> None:
        self._max_head_bytes = max_head_bytes
        self._max_headers = max_headers
        self._events: list[ResponseEvent] = []
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = False
        self._buffer = b""  # HEAD mode: bytes of a head still incomplete
        self._in_message = False
        self._head_size = 0
        self._reason = b""
        self._headers: list[tuple[str, str]] = []
        self._length: str | None = None  # the first Content-Length value
        self._te = False
        self._failed = False
        self._close_delimited = False
        self._in_head = False
        self._in_body = False
        self._head_raw = 0
        #: (the raw head, its ResponseHead) of the last response that came whole in one
        #: piece (see :meth:`feed`).
        self._repeat: tuple[bytes, ResponseHead] | None = None

    def expect(self, method: str) -> None:
        """The next response answers a request with *method* (``HEAD``: no body)."""
        self._head_only = method.upper() == "HEAD"

    @property
    def in_message(self) -> bool:
        """A response has begun and not yet ended."""
        return self._in_message

    def feed(self, data: bytes) -> list[ResponseEvent]:
        if self._failed:
            raise ProtocolError("the backend connection already failed", status_hint=502)
        between = not self._in_message and not self._head_only
        repeat = self._repeat
        if repeat is not None and between:
            raw, head = repeat
            size = len(raw)
            if len(data) - size == head.content_length and data.startswith(raw):
                # Byte for byte the head of the last whole response, and exactly its
                # body's length after it: httptools would parse it as it did then (same
                # bytes, same state: between messages), so its result is taken again.
                return (
                    [head, data[size:], MessageEnd()]
                    if head.content_length
                    else [head, MessageEnd()]
                )
        self._events = []
        if self._head_only:
            self._feed_head_only(data)
        else:
            self._feed(data)
        events, self._events = self._events, []
        if between and not self._in_message:
            self._remember(data, events)
        return events

    def _remember(self, data: bytes, events: list[ResponseEvent]) -> None:
        """Keep the head of ``data`` when it was one whole final response with a
        Content-Length body, reusable (a backend repeats its heads: static files, the
        same API answer; only the Date changes, once a second)."""
        if len(events) < 2 or type(events[-1]) is not MessageEnd:
            return
        head = events[0]
        if type(head) is not ResponseHead:
            return
        length = head.content_length
        if (
            length is None
            or head.chunked
            or not head.keep_alive
            or head.status < 200
            or head.status in (204, 304)
        ):
            return
        body = 0
        for piece in events[1:-1]:
            if type(piece) is not bytes:
                return  # a second message, an upgrade: not one whole response
            body += len(piece)
        if body != length or len(data) <= length:
            return
        self._repeat = (bytes(data[: len(data) - length]), head)

    def feed_eof(self) -> list[ResponseEvent]:
        """The backend closed: ends a close-delimited body; mid-message otherwise 502."""
        if not self._in_message:
            return []
        if self._close_delimited:
            self._in_message = self._in_body = False
            return [MessageEnd()]
        self._failed = True
        raise ProtocolError("the backend closed the connection mid-response", status_hint=502)

    # -- internals --------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        if not self._in_body:
            self._head_raw += len(data)  # bytes of a head not yet complete (bounded below)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._events.append(Upgraded(bytes(data[upgrade.args[0] :])))
        except httptools.HttpParserError as exc:
            self._failed = True
            raise ProtocolError(f"malformed backend response: {exc}", status_hint=502) from None
        if self._in_head and self._head_raw > self._max_head_bytes:
            self._failed = True
            raise ProtocolError("backend response head too large", status_hint=502)

    def _feed_head_only(self, data: bytes) -> None:
        # httptools cannot be told that a response answers HEAD: find the end of the
        # head ourselves, parse just the head on a fresh parser, and carry on after it.
        self._buffer += data
        while self._head_only:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > self._max_head_bytes:
                    self._failed = True
                    raise ProtocolError("backend response head too large", status_hint=502)
                return
            head, self._buffer = self._buffer[: end + 4], self._buffer[end + 4 :]
            self._parser = httptools.HttpResponseParser(self)
            before = len(self._events)
            self._feed(head)
            heads = [e for e in self._events[before:] if isinstance(e, ResponseHead)]
            if not heads:
                self._failed = True
                raise ProtocolError("malformed backend response head", status_hint=502)
            if not any(isinstance(e, MessageEnd) for e in self._events[before:]):
                self._events.append(MessageEnd())
            self._in_message = self._in_body = False
            self._parser = httptools.HttpResponseParser(self)
            if heads[-1].status >= 200:
                self._head_only = False
        rest, self._buffer = self._buffer, b""
        if rest:
            self._feed(rest)

    def on_message_begin(self) -> None:
        self._in_message = True
        self._in_head = True
        self._head_size = 0
        self._reason = b""
        self._headers = []
        self._length = None
        self._te = False

    def on_status(self, status: bytes) -> None:
        self._reason += status
        self._head_size += len(status)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        headers = self._headers
        if len(headers) >= self._max_headers or self._head_size > self._max_head_bytes:
            raise ProtocolError("backend response head too large", status_hint=502)
        key = _NAMES.get(name)
        if key is None:
            key = name.decode("latin-1").lower()
            if len(_NAMES) < 1024:  # header names repeat: lower-cased once
                _NAMES[name] = key
        text = value.decode("latin-1")
        headers.append((key, text))
        if key == "content-length":
            if self._length is None:
                self._length = text
        elif key == "transfer-encoding":
            self._te = True

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body = True
        self._head_raw = 0
        parser = self._parser
        headers = Headers(self._headers)
        length = self._length
        chunked = self._te
        status = parser.get_status_code()
        self._close_delimited = (
            length is None and not chunked and not _no_body_status(status) and not self._head_only
        )
        self._events.append(
            ResponseHead(
                status=status,
                reason=self._reason.decode("latin-1"),
                http_version=parser.get_http_version(),
                headers=headers,
                keep_alive=parser.should_keep_alive() and not self._close_delimited,
                content_length=int(length) if length is not None else None,
                chunked=chunked,
            )
        )

    def on_body(self, body: bytes) -> None:
        self._events.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._in_body = False
        self._events.append(MessageEnd())
        if not self._parser.should_keep_alive():
            self._repeat = None  # httptools refuses what follows: so must the repeat path


LAST_CHUNK: Final = b"0\r\n\r\n"

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(r"[\x21-\x7e]+")


def encode_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (empty *data* gives ``b""``; end with ``LAST_CHUNK``)."""
    if not data:
        return b""
    return b"%x\r\n%b\r\n" % (len(data), data)


def encode_request_head(method: str, target: str, headers: Sequence[tuple[str, str]]) -> bytes:
    """``METHOD target HTTP/1.1`` and *headers*, validated (ValueError on CR/LF/NUL)."""
    if _TOKEN.fullmatch(method) is None or _TARGET.fullmatch(target) is None:
        raise ValueError("invalid method or request-target")
    fields = "".join(f"{name}: {value}\r\n" for name, value in headers)
    if fields and (fields.count("\n") != len(headers) or _HEADER_BLOCK.fullmatch(fields) is None):
        raise ValueError("invalid request header name or value (CR, LF, NUL or controls)")
    return f"{method} {target} HTTP/1.1\r\n{fields}\r\n".encode("latin-1")
