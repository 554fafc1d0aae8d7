"""The HTTP/1.1 reverse proxy, on the shared HTTP core (:mod:`portside.net.http`).

::

    proxy = await open_proxy(Endpoint(ip="127.0.0.1", port=0), routes, options=ProxyOptions())
    proxy.address            # the bound Endpoint
    proxy.routes             # the live RouteTable (add/remove/replace_source at run time)
    proxy.reload()           # re-read options.config_path (what SIGHUP does)
    proxy.status()           # the dashboard's JSON document
    await proxy.aclose()     # stop accepting, let in-flight exchanges finish, close

    await serve_proxy(listen, routes, options=..., on_started=..., reload_on_sighup=True)
    run(listen, routes, options=..., on_started=...)   # the CLI's entry: loop, signals

One request, start to end (``_Exchange``): the client side is the core's ``Request`` and
``Response``; Host allowlist, then the dashboard, then the route table; a backend from the
route's pool (balancing, health, ejection); an idle keep-alive connection to it or a new
one (``_Upstream``, an ``asyncio.Protocol`` framing responses with the core's sans-I/O
``ResponseParser``); the request head with hop-by-hop headers removed and the forwarding
headers added; the body streamed to the backend while the response streams back (full
duplex, back-pressure both ways, nothing buffered whole); then the connection goes back
to the pool when both sides ended cleanly.

The common exchange takes a fast path without a task (``_Exchange.start_fast``): a
request without a body goes out on an idle pooled connection, and when the backend's
whole small response (``Content-Length`` up to ``SMALL_BODY_BYTES``) arrives, the
``_Upstream``'s callback answers the client in one write (``Response.defer``). Anything
else (no idle connection, a streamed, chunked, 1xx or bodiless-by-status response, an
error, the response timeout, a client gone) hands over to the general path, in a task,
from where the exchange stands, so every behaviour below holds for both paths.

Failures: a connect that fails ejects the backend for a while and the request moves to
the next backend (nothing was sent); a pooled connection the backend had closed is
retried once on a fresh one when the request is idempotent and has no body; otherwise
502 (504 when the backend is too slow to answer), with a short page naming the backend
and the reason. Once the response head has gone to the client, a broken backend can only
be reported by closing the client connection before the body's end (the client sees a
truncated body, never a silently short one).

``Upgrade`` requests (WebSocket) go to a fresh backend connection; after the backend's
``101`` both connections are detached and spliced (``_Tunnel``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import gc
import html
import json
import os
import signal
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from pathlib import Path
from typing import Literal, TextIO, cast

from portside.errors import ProtocolError, UsageError
from portside.models import Endpoint
from portside.net import dashboard
from portside.net.backends import Backend, BackendPool, Backends
from portside.net.health import HealthChecker
from portside.net.hosts import HostAllowlist
from portside.net.http import (
    LAST_CHUNK,
    ClientDisconnected,
    HTTPServer,
    Limits,
    MessageEnd,
    PreparedHeaders,
    Request,
    Response,
    ResponseHead,
    ResponseParser,
    Upgraded,
    encode_chunk,
    open_http_server,
)
from portside.net.routes import ConfigError, Route, RouteSnapshot, RouteTable, parse_config

CONNECT_TIMEOUT_S = 5.0
RESPONSE_TIMEOUT_S = 60.0
#: Unread response bytes from a backend before reading from it pauses (slow client).
UPSTREAM_BUFFER_BYTES = 256 * 1024
#: Response bodies up to this size that arrive with their head go out in one write.
SMALL_BODY_BYTES = 16 * 1024
HOUSEKEEPING_S = 1.0
#: Distinct sets of backend response fields kept encoded (cleared when full).
RESPONSE_FIELDS_CACHE = 256
#: The runner's first garbage-collector threshold (CPython's default is 700).
GC_THRESHOLD = 10_000
#: Tunnels: bytes waiting for a slow side before the other side stops being read.
TUNNEL_HIGH_WATER = 256 * 1024

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)
# Set by the proxy itself (framing, Expect handled by the core, forwarding headers).
_REQUEST_DROPPED = HOP_BY_HOP | {
    "host",
    "content-length",
    "expect",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
}
# The core writes its own framing and Date/Server (see the report on the core's API).
_RESPONSE_DROPPED = HOP_BY_HOP | {"content-length", "date", "server"}

AccessLogFormat = Literal["common", "json", "off"]


class UpstreamError(Exception):
    """A backend exchange failed; ``status`` is what the client gets (502 or 504)."""

    def __init__(self, reason: str, *, status: int = 502, sent: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.sent = sent  # some of the request may have reached the backend


class _BrokenResponse(ConnectionError):
    """Raised to the core after the head went out: it closes the client connection."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ProxyOptions:
    """How the proxy behaves; every timeout in seconds.

    ``access_log`` None means: what the TOML file says, else ``access_log_default``
    (``"off"`` for the library, ``"common"`` for the CLI); ``log_stream`` defaults to
    stdout. ``limits`` are the core's (client side); ``max_body_bytes`` is
    unbounded by default because bodies stream through.
    """

    config_path: str | Path | None = None
    allow_hosts: tuple[str, ...] = ()
    access_log: AccessLogFormat | None = None
    access_log_default: AccessLogFormat = "off"
    log_stream: TextIO | None = None
    error_stream: TextIO | None = None
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    response_timeout_s: float = RESPONSE_TIMEOUT_S
    allow_remote_clients: bool = False
    dashboard: bool = True
    #: Follow the routes ``portside run`` publishes in the registry (``registry_path``,
    #: default the user's), live: see :mod:`portside.net.registry_routes`.
    registry_routes: bool = False
    registry_path: str | Path | None = None
    #: HTTPS: a second listener on ``tls_listen`` with ``tls_context`` (both or neither),
    #: e.g. ``portside.ca.CertificateAuthority.load_or_create().server_context()``.
    tls_listen: Endpoint | None = None
    tls_context: ssl.SSLContext | None = None
    limits: Limits = dataclasses.field(
        default_factory=lambda: Limits(max_body_bytes=None, idle_timeout_s=60.0)
    )


def parse_listen(text: str | None) -> Endpoint:
    """``--listen``: None -> 127.0.0.1 on a free port; ``8080``; ``127.0.0.1:8080``;
    ``[::1]:8080``; ``localhost:8080`` (-> 127.0.0.1)."""
    from portside.addresses import HostKind, parse_target

    if text is None:
        return Endpoint(ip="127.0.0.1", port=0)
    target = parse_target(text)
    if target.port is None:
        raise UsageError(f"--listen {text!r}: give a port, e.g. 127.0.0.1:8080")
    if target.host_kind is HostKind.NONE or target.host == "localhost":
        return Endpoint(ip="127.0.0.1", port=target.port)
    if target.host_kind is not HostKind.IP or target.host is None:
        raise UsageError(f"--listen {text!r}: give an IP address (127.0.0.1, ::1), not a name")
    return Endpoint(ip=target.host, port=target.port)


# --- backend connections ------------------------------------------------------------------


class _Upstream(asyncio.Protocol):
    """One keep-alive connection to a backend, framing its responses."""

    def __init__(
        self, backend: Backend, loop: asyncio.AbstractEventLoop, registry: set[_Upstream]
    ) -> None:
        self.backend = backend
        self.loop = loop
        self.registry = registry  # every open backend connection, for closing at the end
        self.transport: asyncio.Transport | None = None
        self.parser = ResponseParser()
        self.events: collections.deque[ResponseHead | bytes | MessageEnd | Upgraded] = (
            collections.deque()
        )
        self.buffered = 0
        self.waiter: asyncio.Future[None] | None = None
        self.error: BaseException | None = None
        self.lost = False
        self.busy = False
        self.got_bytes = False  # of the current exchange's response
        self.reusable = True
        self.read_paused = False
        self.write_paused = False
        self.drain_waiters: list[asyncio.Future[None]] = []
        self.tunnel: _Tunnel | None = None
        self.fast: _Exchange | None = None  # an exchange driven by callbacks (no task)
        self.deadline = 0.0  # of ``fast``'s response
        self.timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)
        self.transport.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
        self.registry.add(self)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_backend(data)
            return
        if not self.busy:
            self.reusable = False  # bytes nobody asked for: this connection is not sane
            self.close()
            return
        self.got_bytes = True
        try:
            events = self.parser.feed(data)
        except ProtocolError as exc:
            self._fail(UpstreamError(f"broke HTTP: {exc}"))
            return
        self.events.extend(events)
        for event in events:
            if type(event) is bytes:
                self.buffered += len(event)
        if self.buffered > UPSTREAM_BUFFER_BYTES and not self.read_paused and self.transport:
            self.read_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        if self.tunnel is not None:
            return self.tunnel.backend_eof()
        self.reusable = False
        if self.busy:
            try:
                self.events.extend(self.parser.feed_eof())
            except ProtocolError:
                self._fail(UpstreamError("closed the connection before the response ended"))
                return None
            if not self.events or not self.got_bytes:
                self._fail(
                    UpstreamError("closed the connection without answering", sent=self.got_bytes)
                )
            self._wake()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.reusable = False
        self.registry.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.tunnel is not None:
            self.tunnel.backend_lost()
        if self.busy and self.error is None:
            reason = f"connection lost: {_reason_text(exc)}" if exc else "closed the connection"
            self.error = UpstreamError(reason)
        self._wake()
        for waiter in self.drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.drain_waiters.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.tunnel is not None:
            self.tunnel.pause_client()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.tunnel is not None:
            self.tunnel.resume_client()
        for waiter in self.drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.drain_waiters.clear()

    # the exchange's side

    def is_reusable(self) -> bool:
        return self.reusable and not self.lost and not self.busy and self.transport is not None

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    def begin(self, method: str) -> None:
        self.busy = True
        self.got_bytes = False
        self.error = None
        self.events.clear()
        self.buffered = 0
        self.parser.expect(method)

    def finish(self) -> None:
        self.busy = False
        if self.read_paused and self.transport is not None and not self.lost:
            self.read_paused = False
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        if self.transport is None or self.lost:
            raise UpstreamError("closed the connection while the request was sent")
        self.transport.write(data)

    async def drain(self, timeout_s: float) -> None:
        if self.lost:
            raise UpstreamError("closed the connection while the request was sent")
        if not self.write_paused:
            return
        waiter = self.loop.create_future()
        self.drain_waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout_s):
                await waiter
        except TimeoutError:
            raise UpstreamError(
                f"stopped reading the request body for {timeout_s:g} s", status=504
            ) from None
        if self.lost:
            raise UpstreamError("closed the connection while the request was sent")

    async def next_event(self, timeout_s: float) -> ResponseHead | bytes | MessageEnd | Upgraded:
        """The next framing event; UpstreamError on failure, 504-flavoured on timeout."""
        events = self.events
        while not events:
            if self.error is not None:
                raise self.error
            if self.lost:
                raise UpstreamError("closed the connection")
            waiter = self.waiter = self.loop.create_future()
            timer = self.loop.call_later(timeout_s, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self.waiter = None
            if waiter.result() is False:
                what = "to answer" if not self.got_bytes else "to send more of the response"
                raise UpstreamError(f"took longer than {timeout_s:g} s {what}", status=504)
        event = events.popleft()
        if type(event) is bytes:
            self.buffered -= len(event)
            if self.read_paused and self.buffered < UPSTREAM_BUFFER_BYTES // 2 and self.transport:
                self.read_paused = False
                self.transport.resume_reading()
        return event

    def take_whole_body(self, length: int) -> bytes | None:
        """The body and its end if they are all here already (and exactly *length*)."""
        events = self.events
        size = 0
        count = 0
        for event in events:
            if type(event) is bytes:
                size += len(event)
                count += 1
            elif type(event) is MessageEnd:
                break
            else:
                return None
        else:
            return None
        if size != length:
            return None
        pieces = [cast("bytes", events.popleft()) for _ in range(count)]
        events.popleft()  # MessageEnd
        self.buffered -= size
        return pieces[0] if count == 1 else b"".join(pieces)

    def _fail(self, error: BaseException) -> None:
        self.error = error
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()
        self._wake()

    def watch(self, timeout_s: float) -> None:
        """Time out ``fast`` after *timeout_s*: one handle per connection, re-armed only
        when it runs (so a request costs a clock read, not a timer)."""
        self.deadline = deadline = self.loop.time() + timeout_s
        if self.timer is None or self.timer.when() > deadline:
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        fast = self.fast
        if fast is None or self.lost:
            return  # idle, or the general path (with its own timeouts) has it
        if self.loop.time() < self.deadline:
            self.timer = self.loop.call_at(self.deadline, self._on_timer)
            return
        fast.fast_timeout()

    def _wake(self) -> None:
        fast = self.fast
        if fast is not None:
            fast.progress()
            return
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _expire(waiter: asyncio.Future[bool | None]) -> None:
    if not waiter.done():
        waiter.set_result(False)


def _reason_text(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


# --- tunnels (Upgrade) --------------------------------------------------------------------


class _ClientSide(asyncio.Protocol):
    """The client's transport after ``detach()``: bytes go to the backend."""

    def __init__(self, tunnel: _Tunnel) -> None:
        self.tunnel = tunnel

    def data_received(self, data: bytes) -> None:
        self.tunnel.from_client(data)

    def eof_received(self) -> bool | None:
        return self.tunnel.client_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.client_lost()

    def pause_writing(self) -> None:
        self.tunnel.pause_backend()

    def resume_writing(self) -> None:
        self.tunnel.resume_backend()


class _Tunnel:
    """Two transports spliced: back-pressure both ways, half-closes passed on."""

    def __init__(self, client: asyncio.Transport, upstream: _Upstream) -> None:
        self.client = client
        self.upstream = upstream
        self.closed = asyncio.get_running_loop().create_future()
        self.bytes_up = 0
        self.bytes_down = 0
        self.client_gone = False
        self.backend_gone = upstream.lost
        client.set_write_buffer_limits(high=TUNNEL_HIGH_WATER)

    def from_client(self, data: bytes) -> None:
        self.bytes_up += len(data)
        if self.upstream.transport is not None and not self.upstream.lost:
            self.upstream.transport.write(data)

    def from_backend(self, data: bytes) -> None:
        self.bytes_down += len(data)
        if not self.client.is_closing():
            self.client.write(data)

    def client_eof(self) -> bool:
        transport = self.upstream.transport
        if transport is not None and not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()
            return True
        self.close()
        return False

    def backend_eof(self) -> bool:
        if not self.client.is_closing() and self.client.can_write_eof():
            self.client.write_eof()
            return True
        self.close()
        return False

    def client_lost(self) -> None:
        self.client_gone = True
        self.upstream.close()
        self._done()

    def backend_lost(self) -> None:
        self.backend_gone = True
        if not self.client.is_closing():
            self.client.close()
        self._done()

    def pause_client(self) -> None:
        self.client.pause_reading()

    def resume_client(self) -> None:
        if not self.client.is_closing():
            self.client.resume_reading()

    def pause_backend(self) -> None:
        if self.upstream.transport is not None and not self.upstream.lost:
            self.upstream.transport.pause_reading()

    def resume_backend(self) -> None:
        if self.upstream.transport is not None and not self.upstream.lost:
            self.upstream.transport.resume_reading()

    def close(self) -> None:
        if not self.client.is_closing():
            self.client.close()
        self.upstream.close()

    def _done(self) -> None:
        if self.client_gone and self.backend_gone and not self.closed.done():
            self.closed.set_result(None)


# --- the proxy ------------------------------------------------------------------------------


class Proxy:
    """A running reverse proxy; close with :meth:`aclose` (or ``async with``)."""

    def __init__(self, routes: RouteTable, options: ProxyOptions) -> None:
        self.routes = routes
        self.options = options
        self.loop = asyncio.get_running_loop()
        self.checker = HealthChecker()
        self.backends = Backends(on_new=self.checker.watch)
        self.server: HTTPServer | None = None
        self.tls_server: HTTPServer | None = None  # the HTTPS listener, when asked for
        self.started = time.monotonic()
        self.allowlist = HostAllowlist()
        self._allowed: dict[str, bool] = {}
        self._config_allow: tuple[str, ...] = ()
        self._log_format: AccessLogFormat = options.access_log or options.access_log_default
        self._log = options.log_stream or sys.stdout
        self._errors = options.error_stream or sys.stderr
        self._tunnels: set[_Tunnel] = set()
        self._upstreams: set[_Upstream] = set()
        self._response_fields: dict[tuple[tuple[str, str], ...], PreparedHeaders] = {}
        self._unsubscribe = routes.subscribe(self._routes_changed)
        self._routes_changed(routes.snapshot)

    # -- public ---------------------------------------------------------------------------

    @property
    def address(self) -> Endpoint:
        if self.server is None:
            raise RuntimeError("the proxy is not listening yet")
        return self.server.address

    @property
    def listen_text(self) -> str:
        address = self.address
        return (
            f"[{address.ip}]:{address.port}"
            if ":" in address.ip
            else f"{address.ip}:{address.port}"
        )

    @property
    def url(self) -> str:
        return f"http://{self.listen_text}/"

    @property
    def dashboard_url(self) -> str:
        return f"http://{dashboard.DASHBOARD_HOST}:{self.address.port}/"

    @property
    def https_url(self) -> str | None:
        """``https://ADDR:PORT/`` of the HTTPS listener; None without one."""
        if self.tls_server is None:
            return None
        address = self.tls_server.address
        host = f"[{address.ip}]" if ":" in address.ip else address.ip
        return f"https://{host}:{address.port}/"

    @property
    def exposed(self) -> bool:
        from portside.net.http import is_loopback_ip

        return not is_loopback_ip(self.address.ip)

    def reload(self) -> None:
        """Re-read the TOML file: replace the ``file`` routes and allowlist at once.

        Raises ConfigError (the old routes stay) when the file cannot be read or parsed.
        """
        path = self.options.config_path
        if path is None:
            return
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: {_reason_text(exc)}") from exc
        try:
            config = parse_config(text)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        if self.options.access_log is None:  # the flag beats the file, the file the default
            self._log_format = cast(
                "AccessLogFormat", config.access_log or self.options.access_log_default
            )
        self._config_allow = config.allow_hosts
        self.routes.replace_source("file", config.routes)

    def status(self) -> dict[str, object]:
        return dashboard.status_document(
            self.routes.snapshot,
            self.backends,
            listen=self.listen_text if self.server else "",
            uptime_s=time.monotonic() - self.started,
            now=time.monotonic(),
        )

    async def aclose(self) -> None:
        """Stop accepting; in-flight exchanges may finish (the core's drain timeout)."""
        self._unsubscribe()
        await asyncio.gather(
            *(server.aclose() for server in (self.server, self.tls_server) if server is not None)
        )
        for tunnel in list(self._tunnels):
            tunnel.close()
        self.backends.close()
        for upstream in list(self._upstreams):
            upstream.abort()
        self._flush_log()

    async def __aenter__(self) -> Proxy:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- internals ------------------------------------------------------------------------

    def _routes_changed(self, snapshot: RouteSnapshot) -> None:
        self.backends.sync(snapshot.routes)
        allow = HostAllowlist()
        for pattern in (*self.options.allow_hosts, *self._config_allow, *snapshot.hosts()):
            if pattern != "*":
                with contextlib.suppress(ValueError):
                    allow.add(pattern)
        for pattern in self.options.allow_hosts:
            if pattern == "*":
                allow.add("*")  # an explicit --allow-host '*' turns the protection off
        self.allowlist = allow
        self._allowed = {}

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)  # the housekeeping period itself
            self.backends.sweep_idle(time.monotonic())
            self._flush_log()

    def _flush_log(self) -> None:
        if self._log is not None and self._log_format != "off":
            with contextlib.suppress(OSError, ValueError):
                self._log.flush()

    def _log_line(
        self,
        request: Request,
        status: int,
        size: int,
        route: Route | None,
        backend: Backend | None,
        started: float,
    ) -> None:
        if self._log_format == "off":
            return
        stream = self._log
        duration_ms = (time.monotonic() - started) * 1000
        if self._log_format == "json":
            line = json.dumps(
                {
                    "time": round(time.time(), 3),
                    "client": request.client[0],
                    "method": request.method,
                    "target": request.target,
                    "host": request.host,
                    "status": status,
                    "bytes": size,
                    "route": route.name if route else None,
                    "backend": str(backend.address) if backend else None,
                    "duration_ms": round(duration_ms, 3),
                }
            )
        else:
            stamp = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime())
            target = request.target.replace('"', "%22")
            host = request.host.replace('"', "%22")
            where = str(backend.address) if backend else "-"
            line = (
                f'{request.client[0]} - - [{stamp}] "{request.method} {target} HTTP/{request.http_version}" '
                f'{status} {size} "{host}" {where} {duration_ms:.3f}ms'
            )
        with contextlib.suppress(OSError, ValueError):
            stream.write(line + "\n")

    # -- the handler ----------------------------------------------------------------------

    def handle(
        self, request: Request, response: Response, *, https: bool = False
    ) -> Awaitable[None] | None:
        """The core's handler: answer simple cases at once, proxy in a task otherwise
        (*https*: the request came over the HTTPS listener)."""
        allowed = self._allowed.get(request.host)
        if allowed is None:
            allowed = self.allowlist.allows(request.host)
            if len(self._allowed) < 4096:  # Host values seen; cleared when routes change
                self._allowed[request.host] = allowed
        if not allowed:
            self._refuse(
                request,
                response,
                403,
                "Host not allowed",
                f"This proxy does not answer for Host {request.host!r} (protection against DNS"
                " rebinding). Use a loopback name (localhost, *.localhost) or start the proxy"
                f" with --allow-host {_host_only(request.host)}.",
            )
            return None
        if self.options.dashboard and (
            request.target.startswith(dashboard.PREFIX) or request.host[:9].lower() == "portside."
        ):
            resource = dashboard.dashboard_path(request.host, request.target)
            if resource is not None:
                self._dashboard(request, response, resource)
                return None
        if request.chunked:
            codings = request.headers.get_all("transfer-encoding")
            if len(codings) != 1 or codings[0].strip().lower() != "chunked":
                # llhttp rejects these only after the head is complete, when the core has
                # already handed the request out: refuse here, before anything is sent.
                raise ProtocolError(f"unsupported Transfer-Encoding {', '.join(codings)[:60]!r}")
        route = self.routes.snapshot.match(request.host, request.path)
        if route is None:
            response.send(404, _PAGE_HEADERS, _no_route_page(self.routes.snapshot, request))
            self._log_line(request, 404, 0, None, None, time.monotonic())
            return None
        if request.method == "CONNECT":
            self._refuse(
                request,
                response,
                405,
                "CONNECT not supported",
                "This is a reverse proxy, not a forward proxy.",
            )
            return None
        exchange = _Exchange(self, request, response, route, https)
        if not request.upgrade and not request.has_body:
            return exchange.start_fast()
        return exchange.run()

    def _refuse(
        self, request: Request, response: Response, status: int, title: str, text: str
    ) -> None:
        response.send(status, _PAGE_HEADERS, _page(status, title, text))
        self._log_line(request, status, 0, None, None, time.monotonic())

    def _dashboard(self, request: Request, response: Response, resource: str) -> None:
        if resource == "redirect":
            response.send(308, (("location", dashboard.PREFIX + "/"), *dashboard.SECURITY_HEADERS))
            return
        if request.method not in ("GET", "HEAD"):
            response.send(
                405, (("allow", "GET, HEAD"), *_PAGE_HEADERS), b"405 Method Not Allowed\n"
            )
            return
        status, content_type, body = dashboard.render(
            resource, self.status() if resource == "status.json" else None
        )
        response.send(status, (("content-type", content_type), *dashboard.SECURITY_HEADERS), body)


_PAGE_HEADERS: tuple[tuple[str, str], ...] = (
    ("content-type", "text/html; charset=utf-8"),
    ("cache-control", "no-store"),
    ("x-content-type-options", "nosniff"),
)


def _page(status: int, title: str, text: str) -> bytes:
    return (
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{status} {html.escape(title)}</title></head>\n'
        f"<body><h1>{status} {html.escape(title)}</h1>\n<p>{html.escape(text)}</p>\n"
        "<p><small>portside proxy</small></p></body></html>\n"
    ).encode()


def _no_route_page(snapshot: RouteSnapshot, request: Request) -> bytes:
    """The 404 page: what was asked, and every known route as a link on this proxy."""
    port = _host_port(request.host)
    items = []
    for route in snapshot.routes:
        backends = ", ".join(str(b) for b in route.backends)
        label = html.escape(route.name)
        if route.host == "*" or route.host.startswith("*."):
            items.append(f"<li>{label} &rarr; {html.escape(backends)}</li>")
        else:  # scheme-relative: the same scheme and port as this request
            href = html.escape(f"//{route.host}{port}{route.path}", quote=True)
            items.append(f'<li><a href="{href}">{label}</a> &rarr; {html.escape(backends)}</li>')
    listing = "<ul>\n" + "\n".join(items) + "\n</ul>" if items else "<p>No routes yet.</p>"
    text = f"No route matches Host {request.host!r} and path {request.path!r}."
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8"><title>404 No route</title></head>\n'
        f"<body><h1>404 No route</h1>\n<p>{html.escape(text)}</p>\n"
        f"<h2>Known routes ({len(items)})</h2>\n{listing}\n"
        "<p><small>portside proxy; `portside run NAME -- CMD` adds NAME.localhost</small></p>"
        "</body></html>\n"
    ).encode()


def _host_port(host: str) -> str:
    """``:8080`` from a Host header value (empty without a port)."""
    from portside.net.hosts import parse_host_header

    parsed = parse_host_header(host)
    return f":{parsed[1]}" if parsed and parsed[1] else ""


def _host_only(host: str) -> str:
    from portside.net.hosts import parse_host_header

    parsed = parse_host_header(host)
    return parsed[0] if parsed else host


def _connection_tokens(values: Iterable[str]) -> set[str]:
    return {
        token.strip().lower() for value in values for token in value.split(",") if token.strip()
    }


class _Exchange:
    """One proxied request, from backend choice to the end of the response."""

    __slots__ = (
        "backend",
        "body_sent",
        "https",
        "out_bytes",
        "pool",
        "proxy",
        "request",
        "response",
        "route",
        "started",
        "status",
        "upstream",
    )

    def __init__(
        self, proxy: Proxy, request: Request, response: Response, route: Route, https: bool = False
    ) -> None:
        self.proxy = proxy
        self.https = https
        self.request = request
        self.response = response
        self.route = route
        self.pool: BackendPool = proxy.backends.pool_for(route)
        self.backend: Backend | None = None
        self.upstream: _Upstream | None = None
        self.started = time.monotonic()
        self.status = 0
        self.out_bytes = 0
        self.body_sent = False

    # -- the fast path: a pooled connection, a small whole response, no task ------------

    def start_fast(self) -> Awaitable[None] | None:
        """Send the request on an idle pooled connection and finish from the backend's
        callbacks when the whole small response arrives; anything else (no idle
        connection, a large, chunked or streamed response, 1xx, errors, timeouts)
        continues in the general path, in a task, from where this one stands."""
        backend = self.pool.pick(time.monotonic())
        if backend is None:
            return self.run()
        idle = backend.take_idle(time.monotonic())
        if idle is None:
            return self.run(backend)
        upstream = cast("_Upstream", idle)
        pool = self.pool
        pool.counters.requests += 1
        pool.counters.in_flight += 1
        counters = backend.counters
        counters.requests += 1
        counters.in_flight += 1
        self.backend = backend
        self.upstream = upstream
        upstream.begin(self.request.method)
        upstream.write(self._request_head(backend))  # the pool only holds live connections
        upstream.fast = self
        upstream.watch(self.proxy.options.response_timeout_s)
        self.response.defer(self._fast_client_lost)
        return None

    def progress(self) -> None:
        """The backend's callbacks: finish if the whole response is here, else hand over."""
        upstream = cast("_Upstream", self.upstream)
        events = upstream.events
        if not events and upstream.error is None and not upstream.lost:
            return  # part of a head, or nothing yet
        head = events[0] if events else None
        if (
            type(head) is ResponseHead
            and type(events[-1]) is MessageEnd
            and head.status >= 200
            and head.status not in (204, 304)
            and not head.chunked
            and head.content_length is not None
            and head.content_length <= SMALL_BODY_BYTES
            and self.request.method != "HEAD"
        ):
            count = len(events)
            if count == 2:
                body = b""
            elif count == 3 and type(events[1]) is bytes:
                body = events[1]
            else:
                pieces = list(events)[1:-1]
                if not all(type(piece) is bytes for piece in pieces):
                    self._to_general()
                    return
                body = b"".join(cast("list[bytes]", pieces))
            if len(body) == head.content_length:
                events.clear()
                upstream.buffered = 0
                self._fast_finish(upstream, head, body)
                return
        self._to_general()

    def _fast_finish(self, upstream: _Upstream, head: ResponseHead, body: bytes) -> None:
        self._fast_stop()
        backend = cast("Backend", self.backend)
        self.status = head.status
        backend.counters.count_status(head.status)
        try:
            self.response.send(head.status, self._prepared_headers(head), body)
        except Exception as exc:  # the client went away, or a header the core refuses
            upstream.abort()
            upstream.busy = False
            self._fast_end()
            self.response.fail(exc)
            return
        self.out_bytes += len(body)
        self._done(upstream, backend, head)
        self._fast_end()

    def _fast_stop(self) -> None:
        if self.upstream is not None:
            self.upstream.fast = None

    def _fast_end(self) -> None:
        """What ``_run`` and ``run`` account at the end of an exchange."""
        backend = cast("Backend", self.backend)
        backend.counters.in_flight -= 1
        backend.counters.bytes_out += self.out_bytes
        self._accounted()

    def _to_general(self) -> None:
        self._fast_stop()
        self.response.resume(self._resumed())

    def fast_timeout(self) -> None:
        """No response within the response timeout: the general path answers 504."""
        upstream = cast("_Upstream", self.upstream)
        timeout_s = self.proxy.options.response_timeout_s
        upstream.error = UpstreamError(f"took longer than {timeout_s:g} s to answer", status=504)
        self._to_general()

    def _fast_client_lost(self) -> None:
        self._fast_stop()
        upstream = cast("_Upstream", self.upstream)
        if upstream.busy and upstream.tunnel is None:
            upstream.abort()  # the client is gone: never reuse a half-used connection
            upstream.busy = False
        self._fast_end()

    async def _resumed(self) -> None:
        """The general path, for an exchange the fast path began (already counted)."""
        try:
            await self._run(cast("Backend", self.backend), cast("_Upstream", self.upstream))
        finally:
            self._accounted()

    def _accounted(self) -> None:
        pool = self.pool
        pool.counters.in_flight -= 1
        if self.status:
            pool.counters.count_status(self.status)
        pool.counters.bytes_out += self.out_bytes
        self.proxy._log_line(
            self.request, self.status, self.out_bytes, self.route, self.backend, self.started
        )

    # -- the general path -----------------------------------------------------------------

    async def run(self, first: Backend | None = None) -> None:
        pool = self.pool
        pool.counters.requests += 1
        pool.counters.in_flight += 1
        try:
            await self._run(first)
        finally:
            self._accounted()

    async def _run(self, first: Backend | None = None, pending: _Upstream | None = None) -> None:
        """*first*: the backend already picked; *pending*: the fast path already sent the
        request on this pooled connection to *first* (and counted it)."""
        request = self.request
        tried: set[Backend] = set()
        retried_stale = False
        while True:
            backend = first if first is not None else self.pool.pick(time.monotonic(), tried)
            first = None
            if backend is None:
                self._fail_page(502, "Bad Gateway", self._last_reasons(tried))
                return
            self.backend = backend
            counters = backend.counters
            sent = pending is not None
            try:
                if pending is not None:
                    upstream, reused, pending = pending, True, None
                else:
                    counters.requests += 1
                    counters.in_flight += 1
                    upstream, reused = await self._connect(backend)
            except UpstreamError as exc:
                counters.in_flight -= 1
                counters.errors += 1
                tried.add(backend)
                if self.pool.pick(time.monotonic(), tried) is not None:
                    self.pool.counters.retries += 1
                    counters.retries += 1
                    continue  # nothing was sent: any method may go elsewhere
                title = "Gateway Timeout" if exc.status == 504 else "Bad Gateway"
                self._fail_page(exc.status, title, self._last_reasons(tried))
                return
            try:
                await self._exchange(upstream, backend, sent=sent)
                return
            except UpstreamError as exc:
                counters.errors += 1
                stale = reused and not upstream.got_bytes and not self.body_sent
                if (
                    stale
                    and not retried_stale
                    and request.method in IDEMPOTENT
                    and not request.has_body
                    and not self.response.started
                    and exc.status == 502
                ):
                    retried_stale = True  # the pooled connection had been closed: once more
                    self.pool.counters.retries += 1
                    counters.retries += 1
                    continue
                if self.response.started:
                    self.status = self.status or self.response.status
                    self.pool.counters.errors += 1  # a truncated response
                    raise _BrokenResponse(f"{backend.address}: {exc.reason}") from None
                title = "Gateway Timeout" if exc.status == 504 else "Bad Gateway"
                self._fail_page(exc.status, title, f"backend {backend.address}: {exc.reason}")
                return
            finally:
                counters.in_flight -= 1
                counters.bytes_out += self.out_bytes

    def _last_reasons(self, tried: set[Backend]) -> str:
        if not tried:
            return f"route {self.route.name}: no backend to try"
        parts = [
            f"{b.address}: {b.last_error or 'unreachable'}"
            for b in sorted(tried, key=lambda b: str(b.address))
        ]
        return f"route {self.route.name}: no backend could be reached ({'; '.join(parts)})"

    def _fail_page(self, status: int, title: str, text: str) -> None:
        self.status = status
        if self.backend is not None and status in (502, 504):
            self.pool.counters.errors += 1
        if not self.response.started:
            self.response.send(status, _PAGE_HEADERS, _page(status, title, text))

    async def _connect(self, backend: Backend) -> tuple[_Upstream, bool]:
        now = time.monotonic()
        idle = backend.take_idle(now)
        if idle is not None and not self.request.upgrade:
            return cast("_Upstream", idle), True
        if idle is not None:
            backend.give_back(idle, now)
        proxy = self.proxy
        address = backend.address
        try:
            async with asyncio.timeout(proxy.options.connect_timeout_s):
                _, upstream = await proxy.loop.create_connection(
                    lambda: _Upstream(backend, proxy.loop, proxy._upstreams),
                    address.host,
                    address.port,
                )
        except TimeoutError:
            reason = f"connect timed out after {proxy.options.connect_timeout_s:g} s"
            backend.record_connect_failure(reason, time.monotonic())
            raise UpstreamError(reason, status=504, sent=False) from None
        except OSError as exc:
            reason = f"connect failed: {_reason_text(exc)}"
            backend.record_connect_failure(reason, time.monotonic())
            raise UpstreamError(reason, sent=False) from None
        backend.record_connect_success()
        return upstream, False

    def _request_head(self, backend: Backend) -> bytes:
        """The head sent to the backend: hop-by-hop headers out, forwarding headers in.

        Names and values come from the core's parser, which refused CR, LF, NUL and other
        controls (RFC 9112), so they are joined here without a second validation pass.
        """
        request = self.request
        host = request.host
        lines = [f"host: {host if self.route.preserve_host and host else backend.address}\r\n"]
        names: list[str] = []
        forwarded_for: str | None = None
        forwarded: str | None = None
        connection: list[str] = []
        for name, value in request.headers.items:
            if name in _REQUEST_DROPPED:
                if name == "x-forwarded-for":
                    forwarded_for = value if forwarded_for is None else f"{forwarded_for}, {value}"
                elif name == "forwarded":
                    forwarded = value if forwarded is None else f"{forwarded}, {value}"
                elif name == "connection":
                    connection.append(value)
                continue
            lines.append(f"{name}: {value}\r\n")
            names.append(name)
        if connection:  # drop the headers that Connection names (hop-by-hop by declaration)
            tokens = _connection_tokens(connection)
            lines = [
                lines[0],
                *(line for line, name in zip(lines[1:], names, strict=True) if name not in tokens),
            ]
        client = request.client[0]
        node = f'"[{client}]"' if ":" in client else client
        element = f"for={node};proto=https" if self.https else f"for={node};proto=http"
        lines.append(
            f"x-forwarded-for: {forwarded_for}, {client}\r\n"
            if forwarded_for
            else f"x-forwarded-for: {client}\r\n"
        )
        lines.append(
            "x-forwarded-proto: https\r\n" if self.https else "x-forwarded-proto: http\r\n"
        )
        if host:
            element += f';host="{host}"'
            lines.append(f"x-forwarded-host: {host}\r\n")
        lines.append(
            f"forwarded: {forwarded}, {element}\r\n" if forwarded else f"forwarded: {element}\r\n"
        )
        if request.upgrade:
            lines.append(
                f"connection: upgrade\r\nupgrade: {request.headers.get('upgrade') or ''}\r\n"
            )
        if request.chunked:
            lines.append("transfer-encoding: chunked\r\n")
        elif request.content_length is not None:
            lines.append(f"content-length: {request.content_length}\r\n")
        target = request.target
        if target[0] != "/" and target != "*":
            target = request.path + (f"?{request.query}" if request.query else "")
        return f"{request.method} {target} HTTP/1.1\r\n{''.join(lines)}\r\n".encode("latin-1")

    async def _exchange(self, upstream: _Upstream, backend: Backend, *, sent: bool = False) -> None:
        try:
            await self._exchange_on(upstream, backend, sent=sent)
        except BaseException:
            if upstream.busy and upstream.tunnel is None:
                upstream.abort()  # failed, timed out or cancelled (client gone): never reuse
                upstream.busy = False
            raise

    async def _exchange_on(self, upstream: _Upstream, backend: Backend, *, sent: bool) -> None:
        request = self.request
        self.upstream = upstream
        if not sent:  # else the fast path sent the head (no body) already
            upstream.begin(request.method)
            upstream.write(self._request_head(backend))
        if not request.has_body:
            await self._relay(upstream, backend)
            return
        body_error: list[BaseException] = []
        relay_error: Exception | None = None
        async with asyncio.TaskGroup() as group:
            sender = group.create_task(self._send_body(upstream, backend, body_error))
            try:
                await self._relay(upstream, backend)
            except Exception as exc:  # re-raised below, outside the group, as it is
                relay_error = exc
            finally:
                if not sender.done():
                    sender.cancel()  # an early response: the rest of the body is not needed
                    upstream.reusable = False
        if body_error and not self.response.started:
            raise body_error[0]  # the client's body failed first (400/408/413, or gone)
        if relay_error is not None:
            raise relay_error

    async def _send_body(
        self, upstream: _Upstream, backend: Backend, errors: list[BaseException]
    ) -> None:
        request = self.request
        chunked = request.chunked
        timeout_s = self.proxy.options.response_timeout_s
        sent = 0
        try:
            while piece := await request.read():
                self.body_sent = True
                upstream.write(encode_chunk(piece) if chunked else piece)
                sent += len(piece)
                await upstream.drain(timeout_s)
            if chunked:
                upstream.write(LAST_CHUNK)
        except (ProtocolError, ClientDisconnected) as exc:
            errors.append(exc)  # the client's fault: 400/408/413 from the core, or gone
            upstream.abort()
        except UpstreamError as exc:
            errors.append(exc)  # the relay sees the same failure from its side
            upstream.abort()
        finally:
            self.pool.counters.bytes_in += sent
            backend.counters.bytes_in += sent

    async def _relay(self, upstream: _Upstream, backend: Backend) -> None:
        response = self.response
        request = self.request
        timeout_s = self.proxy.options.response_timeout_s
        while True:
            event = await upstream.next_event(timeout_s)
            if type(event) is ResponseHead:
                if event.status < 200 and event.status != 101:
                    await upstream.next_event(timeout_s)  # its MessageEnd; 1xx are not relayed
                    continue
                head = event
                break
            raise UpstreamError("sent body bytes before a response head")
        self.status = head.status
        backend.counters.count_status(head.status)
        if head.status == 101:
            if not request.upgrade:
                raise UpstreamError("switched protocols although the request asked for no upgrade")
            await self._tunnel(upstream, head)
            return
        headers = self._response_headers(head)
        length = None if head.chunked else head.content_length
        if request.method == "HEAD" or head.status in (204, 304) or head.status < 200:
            # No body: send the head with the length the backend gave (the core writes it).
            await upstream.next_event(timeout_s)  # MessageEnd
            response.start(head.status, headers, content_length=length)
            if request.method == "HEAD" and length:
                response._remaining = None
            response.end()
            self._done(upstream, backend, head)
            return
        if length is not None and length <= SMALL_BODY_BYTES:
            body = upstream.take_whole_body(length)
            if body is not None:
                # The common small response: the whole body arrived with the head.
                response.send(head.status, headers, body)
                self.out_bytes += length
                self._done(upstream, backend, head)
                return
        response.start(head.status, headers, content_length=length)
        while True:
            event = await upstream.next_event(timeout_s)
            if type(event) is bytes:
                self.out_bytes += len(event)
                await response.write(event)
            elif type(event) is MessageEnd:
                break
            else:
                raise UpstreamError("sent an unexpected message mid-response")
        response.end()
        self._done(upstream, backend, head)

    def _done(self, upstream: _Upstream, backend: Backend, head: ResponseHead) -> None:
        upstream.finish()
        if not head.keep_alive or not upstream.reusable:
            upstream.close()
            return
        if self.request.has_body and not self.request.body_complete:
            upstream.close()  # the request body was cut short: the framing is unknown
            return
        backend.give_back(upstream, time.monotonic())

    def _prepared_headers(self, head: ResponseHead) -> PreparedHeaders:
        """The response's fields to pass on, validated and encoded once per distinct set
        (a backend repeats them: static files, the same API answer)."""
        key = tuple(head.headers.items)
        cache = self.proxy._response_fields
        prepared = cache.get(key)
        if prepared is None:
            prepared = PreparedHeaders(self._response_headers(head))
            if len(cache) >= RESPONSE_FIELDS_CACHE:
                cache.clear()
            cache[key] = prepared
        return prepared

    def _response_headers(self, head: ResponseHead) -> list[tuple[str, str]]:
        tokens = _connection_tokens(head.headers.get_all("connection"))
        return [
            (name, value)
            for name, value in head.headers.items
            if name not in _RESPONSE_DROPPED and name not in tokens
        ]

    async def _tunnel(self, upstream: _Upstream, head: ResponseHead) -> None:
        """Splice the client and the backend after a 101 (both leave the pools)."""
        response = self.response
        upstream.reusable = False
        rest = b"".join(e.data for e in upstream.events if isinstance(e, Upgraded))
        upstream.events.clear()
        try:
            client, leftover = response.detach()
        except ClientDisconnected:
            upstream.close()
            return
        lines = [f"HTTP/1.1 101 {head.reason or 'Switching Protocols'}\r\n"]
        for name, value in head.headers.items:
            if name in ("connection", "upgrade") or name not in HOP_BY_HOP:
                lines.append(f"{name}: {value}\r\n")
        lines.append("\r\n")
        tunnel = _Tunnel(client, upstream)
        upstream.tunnel = tunnel
        self.proxy._tunnels.add(tunnel)
        client.set_protocol(_ClientSide(tunnel))
        client.write("".join(lines).encode("latin-1") + rest)
        if leftover:
            tunnel.from_client(leftover)
        client.resume_reading()
        upstream.finish()
        try:
            await tunnel.closed
        finally:
            self.proxy._tunnels.discard(tunnel)
            self.out_bytes += tunnel.bytes_down
            tunnel.close()


# --- entry points -------------------------------------------------------------------------


async def open_proxy(
    listen: Endpoint,
    routes: RouteTable | Iterable[Route],
    *,
    options: ProxyOptions | None = None,
) -> Proxy:
    """Start proxying on *listen* (port 0: the kernel picks; see ``proxy.address``).

    ``routes`` may be a live :class:`RouteTable` the caller keeps changing. With
    ``options.config_path`` the file's routes are loaded first (ConfigError if it is bad).
    The caller owns the returned proxy and must ``aclose()`` it.
    """
    options = options or ProxyOptions()
    if (options.tls_listen is None) != (options.tls_context is None):
        raise UsageError("HTTPS needs both ProxyOptions.tls_listen and tls_context")
    table = routes if isinstance(routes, RouteTable) else RouteTable(routes)
    proxy = Proxy(table, options)
    proxy.reload()
    proxy.server = await open_http_server(
        proxy.handle,
        listen,
        limits=options.limits,
        allow_remote_clients=options.allow_remote_clients,
        backlog=4096,
    )
    if options.tls_listen is not None:
        try:
            proxy.tls_server = await open_http_server(
                functools.partial(proxy.handle, https=True),
                options.tls_listen,
                limits=options.limits,
                allow_remote_clients=options.allow_remote_clients,
                backlog=4096,
                tls=options.tls_context,
            )
        except BaseException:
            await proxy.aclose()
            raise
    proxy.server.spawn(proxy.checker.run())
    proxy.server.spawn(proxy._housekeeping())
    if options.registry_routes:
        proxy.server.spawn(_follow_registry(proxy)())
    return proxy


def _follow_registry(proxy: Proxy) -> Callable[[], Coroutine[object, object, None]]:
    """The registry's routes, read once now (so the start line lists them); returns
    the poller to run as a task."""
    from portside.net.registry_routes import RegistryRoutes

    path = proxy.options.registry_path

    def listeners() -> list[tuple[str, str, int]]:
        servers = (("http", proxy.server), ("https", proxy.tls_server))
        return [(scheme, s.address.ip, s.address.port) for scheme, s in servers if s is not None]

    following = RegistryRoutes(
        proxy.routes,
        path=Path(path) if path is not None else None,
        errors=proxy.options.error_stream,
        advertise=listeners,
    )
    following.poll()
    return following.run


async def serve_proxy(
    listen: Endpoint,
    routes: RouteTable | Iterable[Route],
    *,
    options: ProxyOptions | None = None,
    on_started: Callable[[Proxy], None] | None = None,
    reload_on_sighup: bool = False,
) -> None:
    """Run the proxy until cancelled; then close it gracefully.

    ``reload_on_sighup`` borrows SIGHUP for :meth:`Proxy.reload` while it runs (main
    thread, Unix) and restores the previous handler afterwards.
    """
    proxy = await open_proxy(listen, routes, options=options)
    loop = asyncio.get_running_loop()
    borrowed = False
    previous: object = None
    errors = (options or ProxyOptions()).error_stream or sys.stderr

    def reload() -> None:
        try:
            proxy.reload()
        except ConfigError as exc:
            errors.write(f"portside: reload failed, keeping the old routes: {exc}\n")
        else:
            errors.write(
                f"portside: reloaded {proxy.options.config_path}: {len(proxy.routes.snapshot.routes)} routes\n"
            )
        with contextlib.suppress(OSError, ValueError):
            errors.flush()

    try:
        if reload_on_sighup and hasattr(signal, "SIGHUP"):
            previous = signal.getsignal(signal.SIGHUP)
            loop.add_signal_handler(signal.SIGHUP, reload)
            borrowed = True
        if on_started is not None:
            on_started(proxy)
        if proxy.server is not None:
            await proxy.server.serve_forever()
    finally:
        if borrowed:
            loop.remove_signal_handler(signal.SIGHUP)
            with contextlib.suppress(TypeError, ValueError):
                signal.signal(signal.SIGHUP, previous)  # type: ignore[arg-type]
        await proxy.aclose()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop unless ``PORTSIDE_LOOP=asyncio`` (or uvloop is missing)."""
    if os.environ.get("PORTSIDE_LOOP", "").lower() != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(
    listen: Endpoint,
    routes: RouteTable | Iterable[Route],
    *,
    options: ProxyOptions | None = None,
    on_started: Callable[[Proxy], None] | None = None,
) -> None:
    """The CLI's runner: its own loop, SIGINT/SIGTERM end it gracefully, SIGHUP reloads.

    While it runs, the objects made so far are frozen out of the garbage collector and its
    youngest generation is collected less often (a request allocates a few containers,
    and little of it is cyclic); both are restored afterwards.
    """
    loop = new_event_loop()
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(thresholds[0], GC_THRESHOLD), *thresholds[1:])
    try:
        main = loop.create_task(
            serve_proxy(
                listen, routes, options=options, on_started=on_started, reload_on_sighup=True
            )
        )
        stops: list[signal.Signals] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, main.cancel)
                stops.append(sig)
        try:
            loop.run_until_complete(main)
        except asyncio.CancelledError:
            pass
        finally:
            for sig in stops:
                loop.remove_signal_handler(sig)
    finally:
        loop.close()
        gc.set_threshold(*thresholds)
        gc.unfreeze()
