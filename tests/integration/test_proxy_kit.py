"""Real backends for the proxy tests, and the tests that the backends themselves behave.

* :class:`Backend` is a threaded stdlib HTTP/1.1 server on 127.0.0.1 (keep-alive, chunked
  and Content-Length bodies), run in a thread of the test or, with
  ``python tests/integration/test_proxy_kit.py``, as a child process that prints its port
  (so a test can kill it mid-response and start it again on the same port).
* :func:`ws_echo_server` is a hand-written WebSocket echo server (RFC 6455 handshake,
  frames echoed), on asyncio.
* :func:`request` is a tiny blocking HTTP/1.1 client over a raw socket, so the tests see
  exactly the bytes the proxy sends.

Endpoints of :class:`Backend`::

    GET  /health          200 "ok", or the status set by POST /health/STATUS
    GET  /info, /anything JSON: backend name, method, target, headers, body length
    PUT  /echo            streams the body back as it arrives; Content-Length from the
                          request's Content-Length or X-Length header, else chunked; the
                          SHA-256 of what it read is kept for GET /digest
    GET  /download?size=N N pseudo-random bytes with Content-Length; SHA-256 kept too
    GET  /digest          JSON {"echo": hex, "download": hex}
    GET  /hang-body       Content-Length 1 MiB, sends 64 KiB, then waits until the
                          server stops (or the process is killed)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import http.server
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

LOOPBACK = "127.0.0.1"
CHUNK = 256 * 1024
READY_DEADLINE_S = 20.0
KIT = Path(__file__).resolve()
ROOT = KIT.parents[2]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # head and body go out in separate writes
    server: _Server

    def parse_request(self) -> bool:
        with self.server.lock:  # counted before any answer goes out
            self.server.requests += 1
        return super().parse_request()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass

    def end_headers(self) -> None:
        self.send_header("X-Backend", self.server.name)
        super().end_headers()

    # --- bodies ------------------------------------------------------------------------

    def _body_chunks(self) -> Iterator[bytes]:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline(1024).split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return
                left = size
                while left:
                    data = self.rfile.read(min(left, CHUNK))
                    if not data:
                        raise ConnectionError("body cut short")
                    left -= len(data)
                    yield data
                self.rfile.readline(16)
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                data = self.rfile.read(min(left, CHUNK))
                if not data:
                    raise ConnectionError("body cut short")
                left -= len(data)
                yield data

    def _send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        with self.server.lock:
            self.server.answered += 1
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # --- endpoints ---------------------------------------------------------------------

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/health":
            self._send(self.server.health_status, b"ok\n")
        elif path == "/digest":
            self._send(200, json.dumps(self.server.digests).encode(), "application/json")
        elif path == "/download":
            self._download()
        elif path == "/hang-body":
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 20))
            self.end_headers()
            self.wfile.write(b"x" * 65536)
            self.wfile.flush()
            self.server.stopping.wait()
            self.close_connection = True
        else:
            self._info()

    do_HEAD = do_GET
    do_DELETE = do_GET
    do_OPTIONS = do_GET

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if path.startswith("/health/"):
            self.server.health_status = int(path.rsplit("/", 1)[1])
            self._send(200, b"set\n")
        elif path == "/echo":
            self._echo()
        else:
            self._info()

    do_PUT = do_POST
    do_PATCH = do_POST

    def _info(self) -> None:
        length = sum(len(c) for c in self._body_chunks())
        info = {
            "backend": self.server.name,
            "method": self.command,
            "target": self.path,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body_length": length,
            "client_port": self.client_address[1],
        }
        self._send(200, json.dumps(info).encode(), "application/json")

    def _echo(self) -> None:
        length = self.headers.get("Content-Length") or self.headers.get("X-Length")
        self.send_response(200)
        if length is not None:
            self.send_header("Content-Length", length)
        else:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        digest = hashlib.sha256()
        for chunk in self._body_chunks():
            digest.update(chunk)
            if length is not None:
                self.wfile.write(chunk)
            else:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        if length is None:
            self.wfile.write(b"0\r\n\r\n")
        self.server.digests["echo"] = digest.hexdigest()

    def _download(self) -> None:
        size = int(parse_qs(urlsplit(self.path).query).get("size", ["0"])[0])
        rng = random.Random(size)  # noqa: S311 - test data, not secrets
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        digest = hashlib.sha256()
        left = size
        while left:
            block = rng.randbytes(min(left, CHUNK))
            digest.update(block)
            self.wfile.write(block)
            left -= len(block)
        self.server.digests["download"] = digest.hexdigest()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, name: str, port: int) -> None:
        super().__init__((LOOPBACK, port), _Handler)
        self.name = name
        self.health_status = 200
        self.digests: dict[str, str] = {}
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.requests = 0  # request lines read (also malformed ones)
        self.answered = 0  # complete responses sent by _send
        self.errors: list[str] = []  # handler failures (cut bodies are expected in tests)

    def handle_error(self, request: object, client_address: object) -> None:
        self.errors.append(repr(sys.exc_info()[1]))  # instead of a traceback on stderr


class Backend:
    """A threaded HTTP/1.1 backend in this process; a context manager."""

    def __init__(self, name: str = "backend", port: int = 0) -> None:
        self.server = _Server(name, port)
        self.port = int(self.server.server_address[1])
        self.address = f"{LOOPBACK}:{self.port}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> Backend:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.server.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


class ChildBackend:
    """The same backend in a child process (its pid is ours to kill)."""

    def __init__(self, name: str = "child", port: int = 0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(KIT), name, str(port)],
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the child prints its port once it listens
        if not line:
            self.proc.wait(5)
            raise RuntimeError(f"backend child exited with {self.proc.returncode}")
        self.port = int(line)
        self.address = f"{LOOPBACK}:{self.port}"

    def __enter__(self) -> ChildBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()


PROXY_LAUNCH = """
import argparse, sys
from portside.cli._proxy import add_arguments, run_proxy
parser = argparse.ArgumentParser()
parser.add_argument("--json", action="store_true")
add_arguments(parser)
sys.exit(run_proxy(parser.parse_args(sys.argv[1:])))
"""


class ChildProxy:
    """``portside proxy`` (its CLI runner) in a child process; stopped by its pid."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        if "--access-log" not in args:
            args = (*args, "--access-log", "off")  # nobody reads stdout after the first line
        self.errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PROXY_LAUNCH, "--json", *args],
            stdout=subprocess.PIPE,
            stderr=self.errors,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # printed once it listens
        if not line:
            self.proc.wait(10)
            raise RuntimeError(f"proxy exited with {self.proc.returncode}: {self.stderr()}")
        self.started = json.loads(line)
        self.port = int(self.started["listen"].rsplit(":", 1)[1])
        self.pid = self.proc.pid

    def stderr(self) -> str:
        self.errors.seek(0)
        return self.errors.read().decode(errors="replace")

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def status(self) -> Any:
        return request(self.port, "/status.json", host="portside.localhost").json()

    def stop(self) -> int:
        """SIGTERM, then wait; SIGKILL only if it hangs. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()
        self.errors.close()
        return self.proc.returncode

    def __enter__(self) -> ChildProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- a raw HTTP/1.1 client ------------------------------------------------------------------


class Response:
    def __init__(
        self, status: int, headers: list[tuple[str, str]], body: bytes, head: bytes
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.head = head

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def json(self) -> dict:  # type: ignore[type-arg]
        return json.loads(self.body)  # type: ignore[no-any-return]


def read_head(sock: socket.socket, buffered: bytes = b"") -> tuple[bytes, bytes]:
    data = buffered
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            raise ConnectionError(f"closed before a full head: {data[:200]!r}")
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def read_response(
    sock: socket.socket, *, method: str = "GET", buffered: bytes = b""
) -> tuple[Response, bytes]:
    """One response from ``sock``; returns it and the bytes read past it."""
    head, rest = read_head(sock, buffered)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
    response = Response(status, headers, b"", head)
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return response, rest
    length = response.header("Content-Length")
    if response.header("Transfer-Encoding") == "chunked":
        body, rest = _read_chunked(sock, rest)
    elif length is not None:
        while len(rest) < int(length):
            more = sock.recv(65536)
            if not more:
                raise ConnectionError("closed in the body")
            rest += more
        body, rest = rest[: int(length)], rest[int(length) :]
    else:
        chunks = [rest]
        while more := sock.recv(65536):
            chunks.append(more)
        body, rest = b"".join(chunks), b""
    response.body = body
    return response, rest


def _read_chunked(sock: socket.socket, data: bytes) -> tuple[bytes, bytes]:
    body: list[bytes] = []
    while True:
        while b"\r\n" not in data:
            data += sock.recv(65536)
        line, _, data = data.partition(b"\r\n")
        size = int(line.split(b";")[0], 16)
        if size == 0:
            while b"\r\n" not in data:
                data += sock.recv(65536)
            while not data.startswith(b"\r\n"):  # trailers
                _, _, data = data.partition(b"\r\n")
                while b"\r\n" not in data:
                    data += sock.recv(65536)
            return b"".join(body), data[2:]
        while len(data) < size + 2:
            more = sock.recv(65536)
            if not more:
                raise ConnectionError("closed in a chunk")
            data += more
        body.append(data[:size])
        data = data[size + 2 :]


def request(
    port: int,
    target: str = "/",
    *,
    method: str = "GET",
    host: str = "app.localhost",
    headers: list[tuple[str, str]] | None = None,
    body: bytes | None = None,
    timeout: float = 10.0,
) -> Response:
    """One request on a fresh connection (Connection: close)."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(
            encode_request(method, target, host=host, headers=headers, body=body, close=True)
        )
        return read_response(sock, method=method)[0]


def encode_request(
    method: str,
    target: str,
    *,
    host: str = "app.localhost",
    headers: list[tuple[str, str]] | None = None,
    body: bytes | None = None,
    close: bool = False,
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers or []]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


# --- WebSocket echo --------------------------------------------------------------------------

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()  # noqa: S324 - RFC 6455


async def _ws_handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        fields = {
            k.strip().lower(): v.strip()
            for k, _, v in (
                line.partition(":") for line in head.decode("latin-1").split("\r\n")[1:] if line
            )
        }
        if fields.get("upgrade", "").lower() != "websocket":
            writer.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            return
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + f"Sec-WebSocket-Accept: {ws_accept(fields['sec-websocket-key'])}\r\n\r\n".encode()
        )
        while True:
            first, second = await reader.readexactly(2)
            opcode, length = first & 0x0F, second & 0x7F
            if length == 126:
                length = int.from_bytes(await reader.readexactly(2), "big")
            elif length == 127:
                length = int.from_bytes(await reader.readexactly(8), "big")
            mask = await reader.readexactly(4) if second & 0x80 else b"\0\0\0\0"
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(await reader.readexactly(length)))
            writer.write(ws_frame(opcode, payload, masked=False))
            await writer.drain()
            if opcode == 0x8:
                return
    except (asyncio.IncompleteReadError, ConnectionError):
        return
    finally:
        writer.close()


def ws_frame(opcode: int, payload: bytes, *, masked: bool) -> bytes:
    head = bytes([0x80 | opcode])
    size = len(payload)
    bit = 0x80 if masked else 0
    if size < 126:
        head += bytes([bit | size])
    elif size < 1 << 16:
        head += bytes([bit | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + size.to_bytes(8, "big")
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def ws_echo_server() -> asyncio.Server:
    return await asyncio.start_server(_ws_handle, LOOPBACK, 0)


class ProxyThread:
    """A proxy on its own event loop in a thread, so that tests can use blocking clients.

    ``call(coroutine)`` runs on the proxy's loop; ``in_loop(fn)`` calls ``fn`` there (the
    route table is single-threaded by design).
    """

    def __init__(self, routes: object, options: object = None, *, loop: str = "uvloop") -> None:
        from portside.models import Endpoint
        from portside.net.proxy import ProxyOptions, open_proxy

        if loop == "uvloop":
            import uvloop

            self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        else:
            self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.proxy = self.call(
            open_proxy(
                Endpoint(ip=LOOPBACK, port=0),
                routes,  # type: ignore[arg-type]
                options=options or ProxyOptions(access_log="off"),  # type: ignore[arg-type]
            )
        )
        self.port = self.proxy.address.port

    def call(self, coroutine: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def in_loop(self, fn: Any) -> Any:
        async def run() -> Any:
            return fn()

        return self.call(run())

    def status(self) -> Any:
        return self.in_loop(self.proxy.status)

    def close(self) -> None:
        try:
            self.call(self.proxy.aclose())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    def __enter__(self) -> ProxyThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_for(
    predicate: object, *, deadline_s: float = READY_DEADLINE_S, what: str = "condition"
) -> None:
    """Poll ``predicate()`` until true or the deadline; a poll interval, not a readiness sleep."""
    assert callable(predicate)
    end = time.monotonic() + deadline_s
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError(f"{what} did not happen within {deadline_s} s")
        time.sleep(0.02)


# --- the kit's own tests -------------------------------------------------------------------


def test_the_backend_answers_keep_alive_and_echoes_chunked_bodies() -> None:
    with (
        Backend("b1") as backend,
        socket.create_connection((LOOPBACK, backend.port), timeout=5) as sock,
    ):
        sock.sendall(encode_request("GET", "/info"))
        first, rest = read_response(sock)
        assert first.json()["backend"] == "b1"
        sock.sendall(
            b"PUT /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n"
        )
        echoed, _ = read_response(sock, buffered=rest)
        assert echoed.body == b"hello"


if __name__ == "__main__":
    server = _Server(sys.argv[1], int(sys.argv[2]))
    sys.stdout.write(f"{server.server_address[1]}\n")
    sys.stdout.flush()
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever(poll_interval=0.05)
