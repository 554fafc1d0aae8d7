"""The proxy's callback-driven fast path (a bodiless request on a pooled backend
connection, a small whole response) and its hand-over to the general path: every case
where the fast path must step aside keeps the general path's behaviour.

The backend is scripted on raw sockets: it answers request N of a connection with
``script(N)``, so the second request of a keep-alive client is the pooled (fast) one.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable

import pytest

from portside.net.proxy import ProxyOptions
from portside.net.routes import Route, parse_route_spec
from tests.integration.test_proxy_kit import (
    LOOPBACK,
    ProxyThread,
    encode_request,
    read_response,
    wait_for,
)

LOOPS = ["uvloop", "asyncio"]
BODY = b"0123456789abcdef" * 64  # 1 KiB


def _ok(body: bytes = BODY) -> list[bytes]:
    return [
        b'HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nETag: "e1"\r\n'
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    ]


Script = Callable[[int], list[bytes] | None]  # request index -> pieces to send (None: silence)


class ScriptedBackend:
    """Answers request N (from 0) of each connection with ``script(N)``'s pieces."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.sock = socket.socket()
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(64)
        self.address = f"{LOOPBACK}:{self.sock.getsockname()[1]}"
        self.connections = 0
        self.closed_by_peer = 0
        self.requests: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        data = b""
        index = 0
        with conn:
            while True:
                while b"\r\n\r\n" not in data:
                    try:
                        more = conn.recv(65536)
                    except OSError:
                        more = b""
                    if not more:
                        self.closed_by_peer += 1
                        return
                    data += more
                head, _, data = data.partition(b"\r\n\r\n")
                self.requests.append(head)
                pieces = self.script(index)
                index += 1
                for piece in pieces or ():
                    conn.sendall(piece)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ScriptedBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _route(backend: ScriptedBackend) -> list[Route]:
    return [parse_route_spec(f"*={backend.address}")]


def _two_requests(port: int, second: bytes) -> tuple[int, bytes, int, bytes]:
    """A keep-alive client: the first request fills the pool, the second is the fast one."""
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.sendall(encode_request("GET", "/a"))
        first, rest = read_response(sock)
        sock.sendall(second)
        answer, _ = read_response(sock, buffered=rest)
    return first.status, first.body, answer.status, answer.body


@pytest.mark.parametrize("loop", LOOPS)
def test_pooled_requests_and_pipelined_ones_are_answered_in_order(loop):
    with (
        ScriptedBackend(lambda n: _ok(b"answer %d" % n)) as backend,
        ProxyThread(_route(backend), loop=loop) as proxy,
    ):
        with socket.create_connection((LOOPBACK, proxy.port), timeout=10) as sock:
            sock.sendall(encode_request("GET", "/warm"))
            warm, rest = read_response(sock)
            sock.sendall(b"".join(encode_request("GET", f"/p{i}") for i in range(3)))
            bodies = []
            for _ in range(3):
                response, rest = read_response(sock, buffered=rest)
                assert response.status == 200
                assert response.header("ETag") == '"e1"'
                assert response.header("Server") == "portside"
                bodies.append(response.body)
        status = proxy.status()
    assert warm.body == b"answer 0"
    assert bodies == [b"answer 1", b"answer 2", b"answer 3"]
    assert backend.connections == 1  # every later request went over the pooled connection
    assert status["totals"]["requests"] == 4
    assert status["totals"]["responses_2xx"] == 4
    assert status["routes"][0]["counters"]["in_flight"] == 0


def test_a_pooled_backend_that_stops_answering_gives_a_504():
    with (
        ScriptedBackend(lambda n: _ok() if n == 0 else None) as backend,
        ProxyThread(
            _route(backend), ProxyOptions(access_log="off", response_timeout_s=0.3)
        ) as proxy,
    ):
        first, _, second, body = _two_requests(proxy.port, encode_request("GET", "/b"))
    assert (first, second) == (200, 504)
    assert b"took longer than 0.3 s" in body
    assert backend.connections == 1


def test_a_response_split_after_its_head_is_relayed_whole():
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY)
    with (
        ScriptedBackend(lambda n: _ok() if n == 0 else [head, BODY[:100], BODY[100:]]) as backend,
        ProxyThread(_route(backend)) as proxy,
    ):
        first, _, second, body = _two_requests(proxy.port, encode_request("GET", "/b"))
    assert (first, second) == (200, 200)
    assert body == BODY


def test_chunked_and_large_answers_on_a_pooled_connection_take_the_general_path():
    large = bytes(range(256)) * 256  # 64 KiB: over the single-write size
    chunked = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"]
    answers = {0: _ok(), 1: chunked, 2: _ok(large)}
    with (
        ScriptedBackend(lambda n: answers.get(n)) as backend,
        ProxyThread(_route(backend)) as proxy,
        socket.create_connection((LOOPBACK, proxy.port), timeout=10) as sock,
    ):
        received = []
        rest = b""
        for target in ("/a", "/b", "/c"):
            sock.sendall(encode_request("GET", target))
            response, rest = read_response(sock, buffered=rest)
            received.append((response.status, response.body))
    assert received == [(200, BODY), (200, b"hello"), (200, large)]
    assert backend.connections == 1


def test_a_pooled_connection_the_backend_closed_is_replaced_by_a_fresh_one():
    with (
        ScriptedBackend(lambda n: _ok()) as backend,
        ProxyThread(_route(backend)) as proxy,
        socket.create_connection((LOOPBACK, proxy.port), timeout=10) as sock,
    ):
        sock.sendall(encode_request("GET", "/a"))
        first, rest = read_response(sock)
        # The backend's side of the pooled connection ends (it sees EOF and closes).
        proxy.in_loop(lambda: [u.transport.write_eof() for u in proxy.proxy._upstreams])
        wait_for(lambda: backend.closed_by_peer == 1, what="the backend saw the EOF")
        sock.sendall(encode_request("GET", "/b"))
        second, _ = read_response(sock, buffered=rest)
    assert (first.status, second.status) == (200, 200)
    assert backend.connections == 2


def test_a_client_leaving_mid_exchange_frees_the_backend_connection():
    with (
        ScriptedBackend(lambda n: _ok() if n == 0 else None) as backend,
        ProxyThread(_route(backend)) as proxy,
    ):
        with socket.create_connection((LOOPBACK, proxy.port), timeout=10) as sock:
            sock.sendall(encode_request("GET", "/a"))
            read_response(sock)
            sock.sendall(encode_request("GET", "/b"))
            wait_for(lambda: len(backend.requests) == 2, what="the backend got the request")
            # A reset, not a half-close (after which the answer would still be due).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # The client is gone: the half-used backend connection must not go back to the pool.
        wait_for(lambda: backend.closed_by_peer == 1, what="the proxy closed the backend")
        wait_for(
            lambda: proxy.status()["routes"][0]["counters"]["in_flight"] == 0,
            what="the exchange ended",
        )
