"""Helpers for the ``portside forward`` tests: real sockets on loopback only.

* :class:`LoopThread` runs a forwarder from the library API on its own event loop in a
  thread, so that tests can talk to it with plain blocking sockets.
* :class:`Backend` is a threaded TCP server whose per-connection handler the test picks.
* :class:`ForwardProcess` runs ``portside forward --json`` as a child process (the CLI,
  signals, RSS and file descriptors of the forwarder alone).

Readiness is always polled with a deadline (:func:`wait_for`), never slept for.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from portside.net._loop import loop_factory
from portside.net.forward import Forwarder, ForwardStats

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 20.0


def wait_for(
    condition: Callable[[], bool],
    *,
    timeout: float = DEADLINE_S,
    what: str | Callable[[], str] = "",
) -> None:
    """Poll *condition* until true; AssertionError after *timeout* seconds (*what*, or
    what it returns, says what was awaited)."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            text = what() if callable(what) else what
            raise AssertionError(f"timed out waiting for {text or condition}")
        time.sleep(0.005)


def raise_nofile(wanted: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE to at least *wanted* (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, wanted), hard) if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def nofile_hard_limit() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 1 << 30 if hard == resource.RLIM_INFINITY else int(hard)


def recv_all(sock: socket.socket, *, limit: int = 1 << 30) -> bytes:
    """Read until the end of the stream."""
    parts = []
    total = 0
    while total < limit:
        data = sock.recv(1 << 16)
        if not data:
            break
        parts.append(data)
        total += len(data)
    return b"".join(parts)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        data = sock.recv(size - len(buf))
        if not data:
            raise AssertionError(f"stream ended after {len(buf)} of {size} bytes")
        buf += data
    return bytes(buf)


# -- the library API in a thread -------------------------------------------------------------


class LoopThread:
    """An event loop (uvloop or asyncio) running in a daemon thread."""

    def __init__(self, loop: str = "asyncio") -> None:
        self.loop = loop_factory(loop)()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = DEADLINE_S) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def call(self, fn: Callable[[], T], timeout: float = DEADLINE_S) -> T:
        async def wrapper() -> T:
            return fn()

        return self.run(wrapper(), timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=DEADLINE_S)
        self.loop.close()


@contextlib.contextmanager
def running_forwarder(
    open_coro: Callable[[], Coroutine[Any, Any, Forwarder]], *, loop: str = "asyncio"
) -> Iterator[tuple[LoopThread, Forwarder]]:
    """Open a forwarder (``open_coro`` calls ``open_forwarder``) on a loop thread; close
    it (drain 1 s at most) and the loop afterwards."""
    runner = LoopThread(loop)
    try:
        forwarder = runner.run(open_coro())
        try:
            yield runner, forwarder
        finally:
            runner.run(forwarder.aclose(drain_timeout_s=1.0))
    finally:
        runner.close()


def stats_of(runner: LoopThread, forwarder: Forwarder) -> ForwardStats:
    return runner.call(forwarder.stats)


# -- a threaded backend -------------------------------------------------------------------------


class Backend:
    """A TCP server on loopback running ``handler(sock)`` in a thread per connection."""

    def __init__(
        self,
        handler: Callable[[socket.socket], None],
        *,
        host: str = "127.0.0.1",
        backlog: int = 4096,
        threads: bool = True,
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, 0))
        self.listener.listen(backlog)
        self.host = host
        self.port = int(self.listener.getsockname()[1])
        self.handler = handler
        self.threads = threads
        self.accepted = 0
        self.held: list[socket.socket] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    @property
    def target(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def _accept_loop(self) -> None:
        poller = select.poll()  # not select(): any descriptor number
        poller.register(self.listener, select.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(50):
                continue
            try:
                sock, _ = self.listener.accept()
            except OSError:
                continue
            with self._lock:
                self.accepted += 1
                self.held.append(sock)
            if self.threads:
                threading.Thread(target=self._run, args=(sock,), daemon=True).start()
            else:
                self._run(sock)

    def _run(self, sock: socket.socket) -> None:
        try:
            self.handler(sock)
        except OSError as exc:
            with self._lock:
                self.errors.append(exc)

    def close_held(self) -> None:
        with self._lock:
            held, self.held = self.held, []
        for sock in held:
            sock.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=DEADLINE_S)
        self.listener.close()
        self.close_held()

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def echo_handler(sock: socket.socket) -> None:
    """Echo every chunk; at the end of the stream, end ours too."""
    with contextlib.suppress(OSError):
        while data := sock.recv(1 << 16):
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)


def hold_handler(sock: socket.socket) -> None:
    """Keep the connection open and idle (the socket stays in ``Backend.held``)."""


# -- the CLI as a child process ---------------------------------------------------------------


class ForwardProcess:
    """``portside forward --json ARGS`` in a child process; ``started`` is the first line
    (the ``forward-started`` document)."""

    def __init__(
        self, args: Sequence[str], *, env: dict[str, str] | None = None, json_output: bool = True
    ) -> None:
        self.json_output = json_output
        argv = [sys.executable, "-m", "portside", "forward", *(["--json"] if json_output else [])]
        argv += args
        child_env = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env,
            cwd=REPO,
        )
        self.started = self._first_line()

    def _first_line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], DEADLINE_S)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=DEADLINE_S)
            raise AssertionError(f"portside forward did not start: {err.decode()[-2000:]}")
        if not self.json_output:  # "forwarding 127.0.0.1:PORT -> TARGET (splice, uvloop)"
            match = re.match(rb"forwarding (\S+):(\d+) -> ", line)
            assert match, line
            ip = match.group(1).decode().strip("[]")
            return {"forwards": [{"listen": {"ip": ip, "port": int(match.group(2))}}]}
        document: dict[str, Any] = json.loads(line)
        return document

    @property
    def pid(self) -> int:
        return self.proc.pid

    def port(self, index: int = 0) -> int:
        return int(self.started["forwards"][index]["listen"]["port"])

    @property
    def control(self) -> str:
        url = self.started["control"]
        assert isinstance(url, str)
        return url

    def rss_bytes(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def socket_count(self) -> int:
        """Open sockets (the listeners among them)."""
        count = 0
        for name in os.listdir(f"/proc/{self.pid}/fd"):
            with contextlib.suppress(OSError):  # closed meanwhile
                count += os.readlink(f"/proc/{self.pid}/fd/{name}").startswith("socket:")
        return count

    def stop(
        self, signum: int | None = signal.SIGTERM, timeout: float = DEADLINE_S
    ) -> tuple[int, str, str]:
        """Send *signum* (None: none, only wait), wait; (exit code, stdout after the first
        line, stderr)."""
        if signum is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out.decode(), err.decode()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.communicate(timeout=DEADLINE_S)

    def __enter__(self) -> ForwardProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def control_request(
    url: str, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    """One request to the control API; (status, JSON document)."""
    host_port = url.split("//", 1)[1].rstrip("/")
    host, _, port = host_port.rpartition(":")
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=DEADLINE_S)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        document: dict[str, Any] = json.loads(response.read())
        return response.status, document
    finally:
        conn.close()
