"""The HTTP core's hardening, over real loopback sockets: the malformed/smuggling
corpus (tests/data/http_malformed.txt) -> 400/413/417/431/505 and a closed connection;
slowloris -> 408; idle keep-alive -> quiet close; pipelining answered in order;
100-continue; graceful close finishing the response in flight."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from portside.models import Endpoint
from portside.net.http import Limits, Request, Response, open_http_server
from portside.net.serve import StaticOptions, open_static
from tests._loop_thread import LoopThread

CORPUS = Path(__file__).resolve().parents[1] / "data" / "http_malformed.txt"
LIMITS = Limits(
    max_head_bytes=8192,
    max_headers=50,
    max_body_bytes=1024,
    head_timeout_s=0.5,
    idle_timeout_s=0.5,
    body_timeout_s=2.0,
    drain_timeout_s=5.0,
)
_REPEAT = re.compile(r"\{([^{}]*?)\*(\d+)\}")


def _expand(text: str) -> bytes:
    while True:
        expanded = _REPEAT.sub(lambda m: m.group(1) * int(m.group(2)), text)
        if expanded == text:
            break
        text = expanded
    return text.encode("latin-1").decode("unicode_escape").encode("latin-1")


def corpus() -> list[tuple[int, str, str, bytes]]:
    cases = []
    for line in CORPUS.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        status, servers, name, raw = line.split("\t", 3)
        cases.append((int(status), servers, name, _expand(raw)))
    return cases


async def echo(request: Request, response: Response) -> None:
    """Reads the whole body; answers with its length and the request's path."""
    body = await request.body()
    response.send(
        200,
        (("content-type", "text/plain"),),
        f"{request.method} {request.path} {len(body)}\n".encode(),
    )


@pytest.fixture(scope="module")
def echo_server():
    with LoopThread(
        lambda: open_http_server(echo, Endpoint(ip="127.0.0.1", port=0), limits=LIMITS)
    ) as running:
        yield running


@pytest.fixture(scope="module")
def static_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits-root")
    (root / "index.html").write_text("<p>hi</p>\n")
    options = StaticOptions(limits=LIMITS)
    with LoopThread(
        lambda: open_static(root, Endpoint(ip="127.0.0.1", port=0), options=options)
    ) as running:
        yield running


def read_until_close(sock: socket.socket, deadline_s: float = 5.0) -> bytes:
    received = bytearray()
    end = time.monotonic() + deadline_s
    sock.settimeout(deadline_s)
    while time.monotonic() < end:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return bytes(received)
        if not data:
            return bytes(received)
        received += data
    raise AssertionError(f"the server did not close the connection: {bytes(received)[:300]!r}")


def send_raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)  # the server may answer and close before reading it all
        return read_until_close(sock)


def status_of(reply: bytes) -> int:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", reply)
    assert match, reply[:200]
    return int(match.group(1))


def responses_in(reply: bytes) -> int:
    return len(re.findall(rb"(?:^|\n)HTTP/1\.1 \d{3} ", reply))


CASES = corpus()


@pytest.mark.parametrize(
    ("kind", "status", "raw"),
    [
        pytest.param(kind, status, raw, id=f"{kind}-{name}")
        for status, servers, name, raw in CASES
        for kind in ("echo", "static")
        # Cases marked "echo" need a handler that reads the body; the static server does not.
        if servers != "echo" or kind == "echo"
    ],
)
def test_malformed_corpus(kind, status, raw, echo_server, static_server):
    server = echo_server if kind == "echo" else static_server
    reply = send_raw(server.port, raw)  # read_until_close: the connection must close
    assert status_of(reply) == status
    assert responses_in(reply) == 1
    head = reply.split(b"\r\n\r\n", 1)[0].lower()
    assert b"\r\nconnection: close" in head


def test_corpus_covers_the_issue():
    names = {name for _, _, name, _ in CASES}
    for needed in (
        "cl-then-te",
        "duplicate-cl-differing",
        "obs-fold-space",
        "value-ctl",
        "host-missing-http11",
        "header-field-too-long",
        "too-many-fields",
        "cl-over-limit",
        "chunked-over-limit",
    ):
        assert needed in names
    assert len(CASES) >= 60


def test_valid_requests_still_work(echo_server):
    reply = send_raw(
        echo_server.port,
        b"POST /x?y=1 HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n5;ext=1\r\nhello\r\n3\r\nabc\r\n0\r\nTrailer: x\r\n\r\n",
    )
    assert status_of(reply) == 200
    assert reply.endswith(b"POST /x 8\n")


def test_absolute_form_uses_the_authority(echo_server):
    reply = send_raw(
        echo_server.port,
        b"GET http://localhost:1/abs?q HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n",
    )
    assert status_of(reply) == 200
    assert reply.endswith(b"GET /abs 0\n")


def test_slowloris_head_gets_408_and_a_close(echo_server):
    with socket.create_connection(("127.0.0.1", echo_server.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: loc")  # and never the rest
        reply = read_until_close(sock, deadline_s=10)
    assert status_of(reply) == 408


def test_slowloris_dripping_bytes_still_gets_408(echo_server):
    with socket.create_connection(("127.0.0.1", echo_server.port), timeout=5) as sock:
        sock.settimeout(0.1)
        reply = b""
        end = time.monotonic() + 10
        for byte in b"GET / HTTP/1.1\r\nX-Drip: " + b"a" * 10_000:
            assert time.monotonic() < end, "no 408 within 10 s"
            try:
                sock.sendall(bytes([byte]))
                reply = sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if reply:
                break
        reply += read_until_close(sock)
    assert status_of(reply) == 408


def test_idle_keepalive_connection_is_closed_quietly(echo_server):
    with socket.create_connection(("127.0.0.1", echo_server.port), timeout=5) as sock:
        sock.sendall(b"GET /one HTTP/1.1\r\nHost: localhost\r\n\r\n")
        reply = read_until_close(sock, deadline_s=10)  # keep-alive, then the idle close
    assert responses_in(reply) == 1
    assert reply.endswith(b"GET /one 0\n")


def test_pipelined_requests_are_answered_in_order(echo_server, static_server):
    batch = (
        b"".join(b"GET /%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % i for i in range(20))
        + b"GET /last HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    reply = send_raw(echo_server.port, batch)
    bodies = re.findall(rb"GET (/\w+) 0\n", reply)
    assert bodies == [b"/%d" % i for i in range(20)] + [b"/last"]
    reply = send_raw(static_server.port, batch)
    assert responses_in(reply) == 21
    assert reply.count(b"HTTP/1.1 404 ") == 21


def test_an_error_after_good_pipelined_requests_comes_last(echo_server):
    batch = (
        b"GET /a HTTP/1.1\r\nHost: localhost\r\n\r\n"
        b"GET /b HTTP/1.1\r\nHost: localhost\r\n\r\n"
        b"GET /c HTTP/1.1\r\nHost : localhost\r\n\r\n"
    )
    reply = send_raw(echo_server.port, batch)
    statuses = [int(s) for s in re.findall(rb"HTTP/1\.1 (\d{3}) ", reply)]
    assert statuses == [200, 200, 400]
    assert reply.index(b"GET /a 0") < reply.index(b"GET /b 0") < reply.index(b"HTTP/1.1 400")


def test_expect_100_continue_is_sent_when_the_body_is_read(echo_server):
    with socket.create_connection(("127.0.0.1", echo_server.port), timeout=5) as sock:
        sock.sendall(
            b"POST /up HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        interim = sock.recv(100)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        reply = read_until_close(sock)
    assert status_of(reply) == 200
    assert reply.endswith(b"POST /up 5\n")


def test_http10_closes_unless_keep_alive(echo_server):
    reply = send_raw(echo_server.port, b"GET /old HTTP/1.0\r\n\r\n")
    assert status_of(reply) == 200
    assert b"connection: close" in reply.lower()
    with socket.create_connection(("127.0.0.1", echo_server.port), timeout=5) as sock:
        sock.sendall(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\n")
        reply = read_until_close(sock)
    assert responses_in(reply) == 2
    assert b"connection: keep-alive" in reply.lower()


def test_graceful_close_finishes_the_response_in_flight(tmp_path):
    release = asyncio.Event()  # set from this thread through the loop

    async def slow(request: Request, response: Response) -> None:
        response.start(200, (("content-type", "text/plain"),), content_length=10)
        await response.write(b"first")
        async with asyncio.timeout(5):
            await release.wait()
        await response.write(b"-last")
        response.end()

    with LoopThread(
        lambda: open_http_server(slow, Endpoint(ip="127.0.0.1", port=0), limits=LIMITS)
    ) as running:
        sock = socket.create_connection(("127.0.0.1", running.port), timeout=5)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head = b""
        while b"first" not in head:
            head += sock.recv(1024)
        assert running.loop is not None
        closing = asyncio.run_coroutine_threadsafe(running.http.aclose(), running.loop)
        # New connections are refused once closing has begun.
        end = time.monotonic() + 5
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", running.port), timeout=1).close()
            except OSError:
                break
        else:
            raise AssertionError("still accepting after aclose() began")
        running.loop.call_soon_threadsafe(release.set)
        rest = read_until_close(sock)
        sock.close()
        closing.result(10)
    assert (head + rest).endswith(b"first-last")  # finished, then closed (read_until_close)


def test_non_loopback_clients_are_refused_by_default():
    from portside.net.http import is_loopback_ip

    assert is_loopback_ip("127.0.0.1")
    assert is_loopback_ip("127.8.9.10")
    assert is_loopback_ip("::1")
    assert is_loopback_ip("::ffff:127.0.0.1")
    assert not is_loopback_ip("10.0.0.1")
    assert not is_loopback_ip("::ffff:10.0.0.1")
    assert not is_loopback_ip("fe80::1")


# -- the client side: framing backend responses (used by the proxy) -----------------


def _events(parser, data: bytes, *, split: int | None = None) -> list[object]:
    from portside.net.http import ResponseParser

    assert isinstance(parser, ResponseParser)
    if split is None:
        return list(parser.feed(data))
    return [*parser.feed(data[:split]), *parser.feed(data[split:])]


def _summary(events: Sequence[object]) -> list[object]:
    from portside.net.http import MessageEnd, ResponseHead, Upgraded

    out: list[object] = []
    for event in events:
        if isinstance(event, ResponseHead):
            out.append(("head", event.status, event.content_length, event.chunked))
        elif isinstance(event, MessageEnd):
            out.append("end")
        elif isinstance(event, Upgraded):
            out.append(("upgraded", event.data))
        elif out and isinstance(out[-1], bytes):
            out[-1] += event  # type: ignore[operator]
        else:
            out.append(event)
    return out


RESPONSES = (
    b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"
    b"HTTP/1.1 204 No Content\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nxyz\r\n2\r\n!!\r\n0\r\n\r\n"
)
EXPECTED = [
    ("head", 100, None, False),
    "end",
    ("head", 200, 3, False),
    b"abc",
    "end",
    ("head", 304, 10, False),
    "end",
    ("head", 204, None, False),
    "end",
    ("head", 200, None, True),
    b"xyz!!",
    "end",
]


@pytest.mark.parametrize("split", [None, 1, 20, 60, 100, len(RESPONSES) - 3])
def test_response_parser_frames_pipelined_responses(split):
    from portside.net.http import ResponseParser

    assert _summary(_events(ResponseParser(), RESPONSES, split=split)) == EXPECTED


def test_response_parser_knows_head_responses_have_no_body():
    from portside.net.http import ResponseParser

    parser = ResponseParser()
    parser.expect("HEAD")
    events = _events(
        parser,
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        split=30,
    )
    assert _summary(events)[:2] == [("head", 200, 1000, False), "end"]
    assert _summary(events)[2:] == [("head", 200, 2, False), b"ok", "end"]


def test_response_parser_close_delimited_and_truncated():
    from portside.errors import ProtocolError
    from portside.net.http import ResponseParser

    parser = ResponseParser()
    events = _events(parser, b"HTTP/1.1 200 OK\r\n\r\nuntil close")
    assert _summary(events) == [("head", 200, None, False), b"until close"]
    assert _summary(parser.feed_eof()) == ["end"]
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
    with pytest.raises(ProtocolError) as caught:
        parser.feed_eof()
    assert caught.value.status_hint == 502


def test_response_parser_upgrade_and_errors():
    from portside.errors import ProtocolError
    from portside.net.http import ResponseParser

    events = _events(
        ResponseParser(),
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x02hi",
    )
    assert _summary(events)[0] == ("head", 101, None, False)
    assert _summary(events)[-1] == ("upgraded", b"\x81\x02hi")
    for bad in (
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"NOTHTTP\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000,
    ):
        with pytest.raises(ProtocolError) as caught:
            ResponseParser().feed(bad)
        assert caught.value.status_hint == 502


def test_encode_helpers_refuse_splitting():
    from portside.net.http import LAST_CHUNK, encode_chunk, encode_request_head

    assert encode_request_head("GET", "/x?y", [("host", "a"), ("x-b", "c d")]) == (
        b"GET /x?y HTTP/1.1\r\nhost: a\r\nx-b: c d\r\n\r\n"
    )
    for method, target, headers in (
        ("GET", "/x y", []),
        ("G T", "/", []),
        ("GET", "/", [("x", "a\r\nInjected: 1")]),
        ("GET", "/", [("bad name", "v")]),
    ):
        with pytest.raises(ValueError, match="invalid"):
            encode_request_head(method, target, headers)
    assert encode_chunk(b"hello") == b"5\r\nhello\r\n"
    assert encode_chunk(b"") == b""
    assert LAST_CHUNK == b"0\r\n\r\n"


def test_response_headers_refuse_splitting():
    from portside.net.http import PreparedHeaders

    with pytest.raises(ValueError, match="invalid"):
        PreparedHeaders([("x", "a\r\nset-cookie: evil")])
    prepared = PreparedHeaders([("x-a", "1"), ("Content-Length", "99"), ("connection", "close")])
    assert prepared.block == "x-a: 1\r\n"  # the core owns framing fields
