"""The HTTP core's repeat path: a request that arrives byte for byte as the last whole
bodiless request, between messages, is taken again instead of parsed again.

Two real connections to a real server (uvloop, loopback) are fed the same pieces, one
with the repeat path and one without; the loop's own reading is paused on both, so the
pieces arrive exactly as cut (``data_received`` called in the loop, one piece each). The
handler answers with every field the core gave it, so the two byte streams the clients
receive (Date aside) must be equal, whatever the requests and however they are cut.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import socket
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portside.models import Endpoint
from portside.net.http import Limits, Request, Response, open_http_server
from tests._loop_thread import LoopThread

T = TypeVar("T")
LIMITS = Limits(max_head_bytes=2048, max_headers=20, max_body_bytes=512)
_DATE = re.compile(rb"\r\ndate: [^\r]*", re.IGNORECASE)

REQUESTS = [
    b"GET /a HTTP/1.1\r\nHost: app.localhost\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: app.localhost\r\n\r\n",  # twice as likely: repeats
    b"GET /b?x=1 HTTP/1.1\r\nHost: app.localhost\r\nAccept: */*\r\n\r\n",
    b"HEAD /a HTTP/1.1\r\nHost: app.localhost\r\n\r\n",
    b"GET /a HTTP/1.0\r\n\r\n",  # HTTP/1.0 without keep-alive: the connection ends
    b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /a HTTP/1.1\r\nHost: a\r\n\r\n",  # pipelined
    b"GET /a HTTP/1.1\r\n\r\n",  # no Host: 400
    b"GET http://app.localhost/abs HTTP/1.1\r\nHost: app.localhost\r\n\r\n",
    b"\r\nGET /a HTTP/1.1\r\nHost: app.localhost\r\n\r\n",  # a leading empty line
]
LAST = b"GET /end HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"


async def describe(request: Request, response: Response) -> None:
    body = await request.body()
    fields = (
        request.method,
        request.target,
        request.path,
        request.query,
        request.http_version,
        request.headers.items,
        request.host,
        request.keep_alive,
        request.upgrade,
        request.content_length,
        request.chunked,
        body,
    )
    response.send(200, (("content-type", "text/plain"),), repr(fields).encode())


class _Server(LoopThread):
    """The server under test, in a thread of its own."""

    def __init__(self) -> None:
        super().__init__(
            lambda: open_http_server(describe, Endpoint(ip="127.0.0.1", port=0), limits=LIMITS)
        )

    def connect(self, *, repeat: bool) -> tuple[socket.socket, Any]:
        """A client socket, and the server's connection for it, its reading paused."""
        http = self.http
        assert self.loop is not None
        before = asyncio.run_coroutine_threadsafe(_call(lambda: set(http.connections)), self.loop)
        known = before.result(10)
        client = socket.create_connection(("127.0.0.1", self.port), timeout=10)

        async def accepted() -> Any:
            # No event to wait on (the core makes connections): polled, bounded below.
            while not (new := set(http.connections) - known):  # noqa: ASYNC110
                await asyncio.sleep(0)
            (conn,) = new
            assert conn.transport is not None
            conn.transport.pause_reading()
            if not repeat:
                conn._remember = lambda data: None  # type: ignore[method-assign]
            return conn

        conn = asyncio.run_coroutine_threadsafe(asyncio.wait_for(accepted(), 10), self.loop).result(
            15
        )
        return client, conn


async def _call(function: Callable[[], T]) -> T:
    return function()


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    with _Server() as running:
        yield running


def _reply(server: _Server, pieces: list[bytes], *, repeat: bool) -> tuple[bytes, bool]:
    """What the client receives until the server closes, and whether the repeat path
    was taken."""
    client, conn = server.connect(repeat=repeat)
    taken = []
    with client:

        def feed() -> None:
            queue_repeat = conn._queue_repeat

            def counted(fields: Any) -> None:
                taken.append(1)
                queue_repeat(fields)

            conn._queue_repeat = counted
            for piece in pieces:
                if conn.lost or conn._dead:
                    break
                conn.data_received(piece)

        assert server.loop is not None
        asyncio.run_coroutine_threadsafe(_call(feed), server.loop).result(10)
        received = bytearray()
        while data := client.recv(65536):
            received += data
    return _DATE.sub(b"", bytes(received)), bool(taken)


@st.composite
def _pieces(draw: st.DrawFn) -> list[bytes]:
    pieces: list[bytes] = []
    for _ in range(draw(st.integers(1, 6))):
        message = draw(st.sampled_from(REQUESTS))
        cuts = sorted(draw(st.lists(st.integers(1, len(message) - 1), max_size=2)))
        bounds = [0, *cuts, len(message)]
        pieces += [message[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    return [*pieces, LAST]


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(_pieces())
def test_the_repeat_path_answers_as_parsing_does(server, pieces):
    with_repeat, _ = _reply(server, pieces, repeat=True)
    without, taken = _reply(server, pieces, repeat=False)
    assert not taken
    assert with_repeat == without


def test_a_whole_request_sent_again_takes_the_repeat_path(server):
    request = REQUESTS[0]
    reply, taken = _reply(server, [request, request, request, LAST], repeat=True)
    assert taken
    assert reply.count(b"HTTP/1.1 200 ") == 4
    answers = re.findall(rb"\('GET', '/a'[^\n]*?\)", reply)
    assert len(answers) == 3
    assert len(set(answers)) == 1  # the same fields each time
    # A request cut in two, or one with a body, is parsed every time.
    body = REQUESTS[6]
    _, taken = _reply(server, [body, body, request[:10], request[10:], LAST], repeat=True)
    assert not taken


def test_no_repeat_after_a_request_that_closes(server):
    """After a request that ends the connection (HTTP/1.0 without keep-alive), httptools
    refuses further bytes: the repeat path must not answer them either."""
    request = REQUESTS[0]
    closing = REQUESTS[4]
    with_repeat, taken = _reply(server, [request, closing, request, LAST], repeat=True)
    without, _ = _reply(server, [request, closing, request, LAST], repeat=False)
    assert not taken
    assert with_repeat == without
