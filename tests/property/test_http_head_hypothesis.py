"""Hypothesis on the HTTP core's head handling, over real loopback sockets.

Invariants:
* any bytes, cut into any pieces: the server answers with well-formed HTTP/1.1
  responses and closes, or closes without a word; it never crashes, never logs a
  handler error, and keeps serving other clients;
* chunking invariance: how the bytes are cut does not change the statuses.
"""

from __future__ import annotations

import itertools
import logging
import re
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portside.models import Endpoint
from portside.net.http import Limits, Request, Response, open_http_server
from tests._loop_thread import LoopThread

LIMITS = Limits(
    max_head_bytes=2048,
    max_headers=20,
    max_body_bytes=512,
    head_timeout_s=2.0,
    idle_timeout_s=2.0,
    body_timeout_s=2.0,
)
KNOWN = {200, 400, 408, 413, 417, 431, 505}
_STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) [A-Za-z -]+\r\n")


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def echo(request: Request, response: Response) -> None:
    body = await request.body()
    response.send(200, (("content-type", "text/plain"),), b"%d\n" % len(body))


@pytest.fixture(scope="module")
def server():
    errors = _Errors()
    logging.getLogger("portside.net.http").addHandler(errors)
    with LoopThread(
        lambda: open_http_server(echo, Endpoint(ip="127.0.0.1", port=0), limits=LIMITS)
    ) as running:
        yield running.http, errors, running.thread
    logging.getLogger("portside.net.http").removeHandler(errors)


def exchange(port: int, pieces: list[bytes], deadline_s: float = 8.0) -> bytes:
    """Send the pieces one by one, half-close, and read until the server closes."""
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=deadline_s) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for piece in pieces:
                sock.sendall(piece)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server answered and closed early (EPIPE, ECONNRESET, ENOTCONN)
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            received += data
        else:
            raise AssertionError("the server neither answered nor closed")
    return bytes(received)


def statuses(reply: bytes) -> list[int]:
    """Statuses of the responses in *reply*, checking each one's framing.

    The echo bodies are digits, so a status line right after a head marks a HEAD answer.
    """
    found = []
    rest = reply
    while rest:
        match = _STATUS_LINE.match(rest)
        assert match, f"not an HTTP/1.1 response: {rest[:120]!r}"
        end = rest.find(b"\r\n\r\n")
        assert end > 0, rest[:200]
        head = rest[:end].decode("latin-1").lower()
        length = re.search(r"\r\ncontent-length: (\d+)", head)
        assert length, head
        found.append(int(match.group(1)))
        rest = rest[end + 4 :]
        if _STATUS_LINE.match(rest):
            continue  # a response to HEAD: its Content-Length describes no body here
        rest = rest[int(length.group(1)) :]
    return found


def cut(data: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(marks) if b > a]


TOKENS = st.sampled_from(
    [
        b"GET",
        b"POST",
        b"get",
        b"CONNECT",
        b"OPTIONS",
        b" ",
        b"  ",
        b"/",
        b"/a?b",
        b"*",
        b"http://localhost/x",
        b"HTTP/1.1",
        b"HTTP/1.0",
        b"HTTP/2.0",
        b"\r\n",
        b"\n",
        b"\r",
        b"Host: localhost",
        b"Host:",
        b"Host : x",
        b"Content-Length: 3",
        b"Content-Length: 99999",
        b"Content-Length: -1",
        b"Transfer-Encoding: chunked",
        b"Transfer-Encoding: gzip",
        b"Expect: 100-continue",
        b"Connection: close",
        b"Connection: keep-alive, Upgrade",
        b"Upgrade: websocket",
        b" folded",
        b"\t",
        b"X-A: v",
        b":",
        b"0\r\n\r\n",
        b"3\r\nabc\r\n",
        b"abc",
        b"\x00",
        b"\xff",
        b"%",
    ]
)
REQUEST_LIKE = st.lists(TOKENS, min_size=1, max_size=40).map(b"".join)
WELL_FORMED = st.builds(
    lambda method, path, headers, close: (
        method
        + b" "
        + path
        + b" HTTP/1.1\r\nHost: localhost\r\n"
        + b"".join(h + b"\r\n" for h in headers)
        + (b"Connection: close\r\n" if close else b"")
        + b"\r\n"
    ),
    st.sampled_from([b"GET", b"HEAD", b"DELETE", b"OPTIONS"]),
    st.sampled_from([b"/", b"/x", b"/a/b?c=d", b"/%41"]),
    st.lists(st.sampled_from([b"X-A: 1", b"Accept: */*", b"X-Long: " + b"v" * 300]), max_size=8),
    st.booleans(),
)
ANY_BYTES = st.one_of(st.binary(max_size=600), REQUEST_LIKE, WELL_FORMED)


def check_alive(port: int) -> None:
    reply = exchange(port, [b"GET /alive HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"])
    assert statuses(reply) == [200]


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=ANY_BYTES, points=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_any_bytes_any_chunking_gives_responses_or_a_clean_close(server, data, points):
    http, errors, thread = server
    port = http.address.port
    reply = exchange(port, cut(data, points))
    for status in statuses(reply):
        assert status in KNOWN
    assert not errors.records, errors.records[0].getMessage()
    assert thread.is_alive()


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.one_of(REQUEST_LIKE, WELL_FORMED, WELL_FORMED.map(lambda b: b * 3)),
    points=st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=12),
)
def test_chunking_does_not_change_the_answer(server, data, points):
    http, _, _ = server
    port = http.address.port
    whole = statuses(exchange(port, [data]))
    pieces = statuses(exchange(port, cut(data, points)))
    assert whole == pieces


def test_the_server_still_serves_after_the_fuzzing(server):
    http, errors, _ = server
    check_alive(http.address.port)
    assert not errors.records
