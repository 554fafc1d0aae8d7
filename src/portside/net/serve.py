"""``portside serve``: a static development server on the shared HTTP core.

::

    server = await open_static("site", Endpoint(ip="127.0.0.1", port=0), options=StaticOptions())
    server.address          # the bound Endpoint (the kernel's port when 0 was asked for)
    await server.aclose()   # or: await serve_static("site", listen) until cancelled

What it does: GET/HEAD of files under the root (small files from a stat-validated
cache in one write, others with ``os.sendfile``), single and multiple ``Range``
(``multipart/byteranges``), ``ETag``/``Last-Modified`` with ``If-None-Match``/
``If-Modified-Since`` (304) and ``If-Match``/``If-Unmodified-Since`` (412), ``index.html``,
directory listings (HTML, or JSON with ``?format=json``), an optional single-page-app
fallback, optional CORS, and optional live reload (server-sent events on file change,
a script injected into HTML pages).

Safety: the path rules of :mod:`portside.net.static` (nothing outside the root, ever);
the Host allowlist of :mod:`portside.net.hosts` (403 otherwise, against DNS rebinding);
loopback clients only unless ``allow_remote_clients``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from portside.errors import UsageError
from portside.models import Endpoint
from portside.net import static
from portside.net.hosts import HostAllowlist
from portside.net.http import (
    ClientDisconnected,
    HTTPServer,
    Limits,
    PreparedHeaders,
    Request,
    Response,
    is_loopback_ip,
    open_http_server,
)

__all__ = [
    "LIVE_RELOAD_PATH",
    "StaticOptions",
    "StaticServer",
    "open_static",
    "serve_static",
]

LIVE_RELOAD_PATH: Final = "/__portside/live-reload"
SMALL_FILE_BYTES: Final = 64 * 1024  # at most this: one write from the cache
CACHE_BUDGET_BYTES: Final = 32 * 1024 * 1024
INJECT_MAX_BYTES: Final = 8 * 1024 * 1024  # bigger HTML pages get no live-reload script
SSE_PING_S: Final = 15.0
WATCH_INTERVAL_S: Final = 0.3
WATCH_MAX_ENTRIES: Final = 50_000
WATCH_SCAN_TIMEOUT_S: Final = 30.0
WATCH_SKIP_DIRS: Final = frozenset({"node_modules", "__pycache__"})
SERVE_LIMITS: Final = Limits(max_body_bytes=64 * 1024)
_METHODS: Final = "GET, HEAD, OPTIONS"
_EXPOSE: Final = "content-length, content-range, accept-ranges, etag, last-modified"
_LIVE_SCRIPT: Final = (
    "<script>/* portside live reload */(()=>{const s=new EventSource("
    f"{json.dumps(LIVE_RELOAD_PATH)});"
    's.addEventListener("change",()=>location.reload());})();</script>'
).encode()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StaticOptions:
    listing: bool = True  # directory listings when there is no index.html
    index: str = "index.html"
    spa: str | None = None  # fallback file (relative to the root) for unknown paths
    cors: str | None = None  # Access-Control-Allow-Origin value ("*" or an origin)
    live_reload: bool = False
    follow_symlinks: bool = False
    dotfiles: bool = False
    allow_hosts: tuple[str, ...] = ()  # besides loopback names, *.localhost, loopback IPs
    allow_remote_clients: bool = False
    cache_control: str = "no-cache"  # a dev server: always revalidate (cheap with 304s)
    limits: Limits = SERVE_LIMITS
    reuse_port: bool = False


@dataclasses.dataclass(slots=True)
class _Cached:
    key: tuple[int, int, int, int]  # ino, size, mtime_ns, ctime_ns
    body: bytes
    headers: PreparedHeaders  # content-type, etag, last-modified, …
    not_modified: PreparedHeaders  # the same without content-type, for 304
    etag: str
    mtime: float


class _FileCache:
    """Small files by real path, valid while (ino, size, mtime_ns, ctime_ns) match."""

    def __init__(self, budget: int) -> None:
        self._entries: dict[str, _Cached] = {}
        self._bytes = 0
        self._budget = budget

    def get(self, path: str, info: os.stat_result) -> _Cached | None:
        entry = self._entries.get(path)
        if entry is None:
            return None
        if entry.key != (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns):
            self._bytes -= len(entry.body)
            del self._entries[path]
            return None
        return entry

    def put(self, path: str, entry: _Cached) -> None:
        if len(entry.body) > self._budget // 4:
            return
        old = self._entries.pop(path, None)
        if old is not None:
            self._bytes -= len(old.body)
        while self._entries and self._bytes + len(entry.body) > self._budget:
            _, evicted = self._entries.popitem()  # newest-first eviction keeps it O(1)
            self._bytes -= len(evicted.body)
        self._entries[path] = entry
        self._bytes += len(entry.body)


def _key(info: os.stat_result) -> tuple[int, int, int, int]:
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


_OPEN_FLAGS: Final = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _open_same(path: str, info: os.stat_result) -> tuple[int, os.stat_result] | None:
    """Open *path* without following a last-moment symlink; None if it changed identity."""
    try:
        fd = os.open(path, _OPEN_FLAGS | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        now = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    if not stat.S_ISREG(now.st_mode) or (now.st_ino, now.st_dev) != (info.st_ino, info.st_dev):
        os.close(fd)
        return None
    return fd, now


class _Watcher:
    """Polls the tree for changes and tells every live-reload subscriber."""

    def __init__(self, root: str, *, follow_symlinks: bool, dotfiles: bool) -> None:
        self._root = root
        self._dotfiles = dotfiles
        self._follow = follow_symlinks
        self._snapshot: dict[str, tuple[int, int, int]] = {}
        self._subscribers: set[asyncio.Queue[str | None]] = set()

    def scan(self) -> dict[str, tuple[int, int, int]]:
        seen: dict[str, tuple[int, int, int]] = {}
        pending = [""]
        while pending and len(seen) < WATCH_MAX_ENTRIES:
            relative = pending.pop()
            try:
                with os.scandir(f"{self._root}/{relative}" if relative else self._root) as entries:
                    for entry in entries:
                        name = entry.name
                        if name.startswith(".") and not self._dotfiles:
                            continue
                        path = f"{relative}/{name}" if relative else name
                        try:
                            info = entry.stat(follow_symlinks=self._follow)
                        except OSError:
                            continue
                        seen[path] = (info.st_mtime_ns, info.st_size, info.st_ino)
                        if stat.S_ISDIR(info.st_mode) and name not in WATCH_SKIP_DIRS:
                            pending.append(path)
            except OSError:
                continue
        return seen

    def prime(self) -> None:
        self._snapshot = self.scan()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WATCH_INTERVAL_S):
                    await stop.wait()
            if stop.is_set():
                break
            if not self._subscribers:
                continue
            async with asyncio.timeout(WATCH_SCAN_TIMEOUT_S):
                current = await asyncio.to_thread(self.scan)
            previous, self._snapshot = self._snapshot, current
            changed = sorted(
                {path for path, key in current.items() if previous.get(path) != key}
                | (previous.keys() - current.keys())
            )
            if changed:
                self.publish(changed[0] if len(changed) == 1 else f"{len(changed)} files")
        self.publish(None)

    def subscribe(self) -> asyncio.Queue[str | None]:
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=8)
        if not self._subscribers:
            self._snapshot = self.scan()  # changes count from the first subscriber on
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[str | None]) -> None:
        self._subscribers.discard(queue)

    def publish(self, what: str | None) -> None:
        for queue in self._subscribers:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(what)


class _StaticApp:
    """The request handler: everything per request happens here."""

    def __init__(self, root: str, options: StaticOptions, hosts: HostAllowlist) -> None:
        self.root = root
        self.options = options
        self.hosts = hosts
        self.cache = _FileCache(CACHE_BUDGET_BYTES)
        self.watcher = (
            _Watcher(root, follow_symlinks=options.follow_symlinks, dotfiles=options.dotfiles)
            if options.live_reload
            else None
        )
        extra: list[tuple[str, str]] = [("x-content-type-options", "nosniff")]
        if options.cors is not None:
            extra.append(("access-control-allow-origin", options.cors))
            extra.append(("access-control-expose-headers", _EXPOSE))
            if options.cors != "*":
                extra.append(("vary", "origin"))
        self.extra = tuple(extra)
        self.common = (("cache-control", options.cache_control), *self.extra)

    # -- dispatch --------------------------------------------------------------------

    def __call__(self, request: Request, response: Response) -> Awaitable[None] | None:
        if request.host and not self.hosts.allows(request.host):
            self._text(
                response,
                403,
                f"Host {request.host!r} is not allowed here (DNS-rebinding protection);"
                " allow it with --allow-host\n",
            )
            return None
        method = request.method
        if method != "GET" and method != "HEAD":
            self._other_method(request, response)
            return None
        path = request.path
        if self.watcher is not None and path == LIVE_RELOAD_PATH:
            return self._live_reload(response, self.watcher)
        found = static.resolve_static_path(
            self.root,
            path,
            follow_symlinks=self.options.follow_symlinks,
            dotfiles=self.options.dotfiles,
        )
        if type(found) is static.Found:
            if not found.is_dir:
                if path.endswith("/"):
                    self._not_found(response)
                    return None
                return self._file(request, response, found)
            return self._directory(request, response, found)
        if type(found) is static.NotFound and self.options.spa is not None:
            return self._spa(request, response)
        self._not_found(response)
        return None

    def _text(
        self,
        response: Response,
        status: int,
        text: str,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        response.send(
            status,
            (("content-type", "text/plain; charset=utf-8"), *self.extra, *headers),
            text.encode(),
        )

    def _not_found(self, response: Response) -> None:
        self._text(response, 404, "404 Not Found\n")

    def _other_method(self, request: Request, response: Response) -> None:
        if request.method == "OPTIONS":
            if self.options.cors is not None and "access-control-request-method" in request.headers:
                headers = [
                    ("access-control-allow-methods", _METHODS),
                    ("access-control-max-age", "600"),
                ]
                asked = request.headers.get("access-control-request-headers")
                if asked and all(part.strip().isascii() for part in asked.split(",")):
                    headers.append(("access-control-allow-headers", asked))
                response.send(204, (*self.extra, *headers))
                return
            response.send(204, (("allow", _METHODS), *self.extra))
            return
        self._text(response, 405, "405 Method Not Allowed\n", (("allow", _METHODS),))

    # -- directories -----------------------------------------------------------------

    def _directory(
        self, request: Request, response: Response, found: static.Found
    ) -> Awaitable[None] | None:
        path = request.path
        if not path.endswith("/"):
            location = path + "/" + (f"?{request.query}" if request.query else "")
            self._text(response, 301, f"moved to {location}\n", (("location", location),))
            return None
        index = static.resolve_static_path(
            self.root,
            path + self.options.index,
            follow_symlinks=self.options.follow_symlinks,
            dotfiles=self.options.dotfiles,
        )
        if type(index) is static.Found and not index.is_dir:
            return self._file(request, response, index)
        if not self.options.listing:
            self._not_found(response)
            return None
        listing = self._listing(found.path, path)
        if "format=json" in request.query.split("&"):
            body, media = static.listing_json(listing), "application/json"
        else:
            body, media = static.listing_html(listing), "text/html; charset=utf-8"
        response.send(200, (("content-type", media), *self.common), body.encode())
        return None

    def _listing(self, directory: str, url_path: str) -> static.Listing:
        entries = []
        with contextlib.suppress(OSError), os.scandir(directory) as scan:
            for entry in scan:
                name = entry.name
                if name.startswith(".") and not self.options.dotfiles:
                    continue
                try:
                    info = entry.stat(follow_symlinks=True)
                except OSError:
                    continue  # a dangling link
                if entry.is_symlink() and not self.options.follow_symlinks:
                    real = os.path.realpath(entry.path)
                    if not (real == self.root or real.startswith(self.root + "/")):
                        continue  # it would not be served: do not show it
                if not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
                    continue
                is_dir = stat.S_ISDIR(info.st_mode)
                entries.append(
                    static.ListingEntry(
                        name=name,
                        is_dir=is_dir,
                        size=None if is_dir else info.st_size,
                        modified=info.st_mtime,
                    )
                )
        segments = static.url_path_segments(url_path, dotfiles=True)
        names = () if isinstance(segments, static.Refused) else segments
        decoded = "/" + "".join(f"{name}/" for name in names)
        return static.Listing(path=decoded, entries=static.sorted_entries(entries))

    def _spa(self, request: Request, response: Response) -> Awaitable[None] | None:
        spa = self.options.spa or self.options.index
        accept = request.headers.get("accept", "")
        last = request.path.rsplit("/", 1)[-1]
        if "." in last and "text/html" not in (accept or ""):
            self._not_found(response)  # a missing asset stays a 404
            return None
        fallback = static.resolve_static_path(
            self.root,
            "/" + spa.lstrip("/"),
            follow_symlinks=self.options.follow_symlinks,
            dotfiles=self.options.dotfiles,
        )
        if type(fallback) is static.Found and not fallback.is_dir:
            return self._file(request, response, fallback)
        self._not_found(response)
        return None

    # -- files -----------------------------------------------------------------------

    def _file(
        self, request: Request, response: Response, found: static.Found
    ) -> Awaitable[None] | None:
        info = found.stat
        cached = self.cache.get(found.path, info)
        inject = self.watcher is not None and static.content_type(found.path).startswith(
            "text/html"
        )
        if cached is not None:
            etag, mtime, headers, not_modified = (
                cached.etag,
                cached.mtime,
                cached.headers,
                cached.not_modified,
            )
        else:
            etag = static.etag_for(info)
            if inject:
                etag = etag[:-1] + '-lr"'
            mtime = info.st_mtime
            headers = PreparedHeaders(
                (
                    ("content-type", static.content_type(found.path)),
                    ("etag", etag),
                    ("last-modified", static.http_date(mtime)),
                    ("accept-ranges", "none" if inject else "bytes"),
                    *self.common,
                )
            )
            not_modified = PreparedHeaders(headers.pairs[1:])
        get = request.headers.get
        if _has_preconditions(request):
            verdict = static.evaluate_preconditions(
                request.method, get, etag=etag, last_modified=mtime
            )
            if verdict is not None:
                response.send(verdict, not_modified if verdict == 304 else self.extra)
                return None
        if cached is not None and (request.method == "HEAD" or get("range") is None):
            response.send(200, headers, cached.body)
            return None
        size = info.st_size
        if inject or size <= SMALL_FILE_BYTES:
            opened = _open_same(found.path, info)
            if opened is None:
                self._not_found(response)
                return None
            fd, now = opened
            try:
                body = _read_all(fd, now.st_size)
            finally:
                os.close(fd)
            if inject and len(body) <= INJECT_MAX_BYTES:
                body = _inject_live_reload(body)
            if _key(now) == _key(info) and len(body) <= SMALL_FILE_BYTES * 2:
                self.cache.put(
                    found.path, _Cached(_key(info), body, headers, not_modified, etag, mtime)
                )
            if not inject and request.method == "GET":
                ranges = self._ranges(request, etag, mtime, len(body))
                if ranges is not None:
                    self._send_ranges_from_bytes(response, headers, body, ranges)
                    return None
            response.send(200, headers, body)
            return None
        ranges = self._ranges(request, etag, mtime, size) if request.method == "GET" else None
        return self._send_large(response, found, headers, ranges)

    def _ranges(self, request: Request, etag: str, mtime: float, size: int) -> static.RangeResult:
        header = request.headers.get("range")
        if header is None:
            return None
        if not static.if_range_allows(
            request.headers.get("if-range"), etag=etag, last_modified=mtime
        ):
            return None
        return static.parse_range(header, size)

    def _send_ranges_from_bytes(
        self,
        response: Response,
        headers: PreparedHeaders,
        body: bytes,
        ranges: static.RangeResult,
    ) -> None:
        size = len(body)
        if not isinstance(ranges, tuple):
            response.send(416, (("content-range", f"bytes */{size}"), *self.extra))
            return
        media = headers.pairs[0][1]
        if len(ranges) == 1:
            only = ranges[0]
            response.send(
                206,
                (*headers.pairs, ("content-range", f"bytes {only.start}-{only.end}/{size}")),
                body[only.start : only.end + 1],
            )
            return
        boundary = secrets.token_hex(12)
        parts, closing, _total = static.multipart_layout(ranges, size, media, boundary)
        payload = b"".join(pre + body[r.start : r.end + 1] for pre, r in parts) + closing
        response.send(
            206,
            (("content-type", f"multipart/byteranges; boundary={boundary}"), *headers.pairs[1:]),
            payload,
        )

    async def _send_large(
        self,
        response: Response,
        found: static.Found,
        headers: PreparedHeaders,
        ranges: static.RangeResult,
    ) -> None:
        opened = _open_same(found.path, found.stat)
        if opened is None:
            self._not_found(response)
            return
        fd, info = opened
        try:
            size = info.st_size
            if ranges is None:
                response.start(200, headers, content_length=size)
                await response.sendfile(fd, 0, size)
            elif not isinstance(ranges, tuple):
                response.send(416, (("content-range", f"bytes */{size}"), *self.extra))
                return
            else:
                await self._sendfile_ranges(response, fd, size, headers, ranges)
                return
            response.end()
        finally:
            os.close(fd)

    async def _sendfile_ranges(
        self,
        response: Response,
        fd: int,
        size: int,
        headers: PreparedHeaders,
        ranges: tuple[static.ByteRange, ...],
    ) -> None:
        if len(ranges) == 1:
            only = ranges[0]
            response.start(
                206,
                (*headers.pairs, ("content-range", f"bytes {only.start}-{only.end}/{size}")),
                content_length=only.length,
            )
            await response.sendfile(fd, only.start, only.length)
            response.end()
            return
        boundary = secrets.token_hex(12)
        parts, closing, total = static.multipart_layout(ranges, size, headers.pairs[0][1], boundary)
        response.start(
            206,
            (("content-type", f"multipart/byteranges; boundary={boundary}"), *headers.pairs[1:]),
            content_length=total,
        )
        for preamble, byte_range in parts:
            await response.write(preamble)
            await response.sendfile(fd, byte_range.start, byte_range.length)
        await response.write(closing)
        response.end()

    # -- live reload -----------------------------------------------------------------

    async def _live_reload(self, response: Response, watcher: _Watcher) -> None:
        queue = watcher.subscribe()
        try:
            response.start(
                200,
                (
                    ("content-type", "text/event-stream"),
                    ("cache-control", "no-store"),
                    *self.extra,
                ),
            )
            await response.write(b"retry: 1000\n: connected\n\n")
            shutting_down = response.shutting_down
            while not shutting_down.is_set():
                try:
                    async with asyncio.timeout(SSE_PING_S):
                        what = await queue.get()
                except TimeoutError:
                    await response.write(b": ping\n\n")
                    continue
                if what is None:
                    break
                data = json.dumps({"changed": what})
                await response.write(f"event: change\ndata: {data}\n\n".encode())
        except ClientDisconnected:
            return
        finally:
            watcher.unsubscribe(queue)
        response.end()


def _has_preconditions(request: Request) -> bool:
    return any(name.startswith("if-") for name, _ in request.headers.items)


def _read_all(fd: int, size: int) -> bytes:
    chunks = []
    remaining = size
    while remaining > 0:
        data = os.read(fd, remaining)
        if not data:
            break
        chunks.append(data)
        remaining -= len(data)
    return b"".join(chunks)


def _inject_live_reload(body: bytes) -> bytes:
    at = body.lower().rfind(b"</body>")
    if at < 0:
        return body + _LIVE_SCRIPT
    return body[:at] + _LIVE_SCRIPT + body[at:]


class StaticServer:
    """A running static server: ``address``, ``root``, ``http`` (the core server)."""

    def __init__(self, http: HTTPServer, app: _StaticApp) -> None:
        self.http = http
        self._app = app
        self._stop = asyncio.Event()

    @property
    def address(self) -> Endpoint:
        return self.http.address

    @property
    def root(self) -> str:
        return self._app.root

    @property
    def url(self) -> str:
        address = self.address
        host = f"[{address.ip}]" if ":" in address.ip else address.ip
        return f"http://{host}:{address.port}/"

    def _start(self) -> None:
        watcher = self._app.watcher
        if watcher is not None:
            self.http.spawn(watcher.run(self._stop))

    async def aclose(self) -> None:
        """Graceful: live-reload streams end, in-flight responses finish, then close."""
        self._stop.set()
        await self.http.aclose()

    async def serve_forever(self) -> None:
        try:
            await asyncio.Future()  # only cancellation ends this
        finally:
            await self.aclose()

    async def __aenter__(self) -> StaticServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def static_root(directory: str | os.PathLike[str]) -> str:
    """The real path of *directory*, or UsageError saying what is wrong with it."""
    path = os.fspath(directory)
    real = os.path.realpath(path)
    if not Path(real).is_dir():
        raise UsageError(f"{path!r} is not a directory; pass the directory to serve")
    return real


async def open_static(
    directory: str | os.PathLike[str],
    listen: Endpoint,
    *,
    options: StaticOptions | None = None,
) -> StaticServer:
    """Serve *directory* on *listen* (port 0: the kernel picks); returns once listening.

    Raises:
        UsageError: *directory* is not a directory, or an ``allow_hosts`` entry is invalid.
        OSError: the address cannot be bound.
    """
    options = options or StaticOptions()
    root = static_root(directory)
    hosts = HostAllowlist()
    for entry in options.allow_hosts:
        try:
            hosts.add(entry)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if not is_loopback_ip(listen.ip) and listen.ip not in ("0.0.0.0", "::"):  # noqa: S104
        hosts.add(listen.ip)  # the address itself, which the user chose to expose
    app = _StaticApp(root, options, hosts)
    http = await open_http_server(
        app,
        listen,
        limits=options.limits,
        allow_remote_clients=options.allow_remote_clients,
        reuse_port=options.reuse_port,
    )
    server = StaticServer(http, app)
    server._start()
    return server


async def serve_static(
    directory: str | os.PathLike[str],
    listen: Endpoint,
    *,
    options: StaticOptions | None = None,
    started: Callable[[StaticServer], None] | None = None,
) -> None:
    """Serve until cancelled, then close gracefully; *started* hears the bound server."""
    server = await open_static(directory, listen, options=options)
    if started is not None:
        started(server)
    await server.serve_forever()
