"""Request smuggling and malformed requests through the proxy: 400 or 431, never forwarded.

Each case goes on a fresh connection. The backend counts every request line it reads,
so "never forwarded" is checked at the backend, not inferred from the proxy's answer.
"""

from __future__ import annotations

import contextlib
import socket

import pytest

from portside.net.routes import parse_route_spec
from tests.integration.test_proxy_kit import LOOPBACK, Backend, ProxyThread, read_response, wait_for

H = b"Host: app.localhost\r\n"

CORPUS: list[tuple[str, bytes, int]] = [
    (
        "CL and TE together",
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "TE and CL together",
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "two different CL",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        400,
    ),
    ("CL list", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 4, 5\r\n\r\nabcde", 400),
    ("negative CL", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", 400),
    ("signed CL", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +4\r\n\r\nabcd", 400),
    ("CL with a space inside", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1 2\r\n\r\n", 400),
    ("TE identity", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: identity\r\n\r\n", 400),
    (
        "TE chunked not last",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\n",
        400,
    ),
    (
        "TE xchunked",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "space before colon",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "obs-fold TE",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    ("obs-fold other", b"GET / HTTP/1.1\r\n" + H + b"X-A: 1\r\n  2\r\n\r\n", 400),
    (
        "TE on HTTP/1.0",
        b"POST / HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    ("no Host on 1.1", b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", 400),
    ("two Hosts", b"GET / HTTP/1.1\r\n" + H + H + b"\r\n", 400),
    ("bad Host", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    ("Host with userinfo", b"GET / HTTP/1.1\r\nHost: u@app.localhost\r\n\r\n", 400),
    ("NUL in a value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", 400),
    ("CR in a value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\rb\r\n\r\n", 400),
    ("bad header name", b"GET / HTTP/1.1\r\n" + H + b"Bad[Name]: x\r\n\r\n", 400),
    ("space in the target", b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("control in the target", b"GET /a\x01 HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("garbage line", b"HELLO\r\n\r\n", 400),
    ("lowercase version", b"GET / http/1.1\r\n" + H + b"\r\n", 400),
    ("absolute-form with userinfo", b"GET http://u@app.localhost/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("asterisk-form with GET", b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("unsupported Expect", b"GET / HTTP/1.1\r\n" + H + b"Expect: 200-ok\r\n\r\n", 417),
    ("huge header", b"GET / HTTP/1.1\r\n" + H + b"X-A: " + b"a" * 40_000 + b"\r\n\r\n", 431),
    ("huge target", b"GET /" + b"a" * 40_000 + b" HTTP/1.1\r\n" + H + b"\r\n", 431),
    (
        "too many headers",
        b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%d: 1\r\n" % i for i in range(300)) + b"\r\n",
        431,
    ),
]


@pytest.fixture(scope="module")
def proxied():
    with Backend("b") as backend, ProxyThread([parse_route_spec(f"*={backend.address}")]) as proxy:
        yield backend, proxy


def exchange(port: int, data: bytes) -> tuple[int, bytes]:
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        with contextlib.suppress(ConnectionError):
            sock.sendall(data)  # may be answered and closed before everything was sent
        response, _ = read_response(sock)
        tail = b""
        try:
            while more := sock.recv(65536):
                tail += more
        except ConnectionError:
            pass
        return response.status, tail


@pytest.mark.parametrize(("name", "data", "status"), CORPUS, ids=[c[0] for c in CORPUS])
def test_malformed_requests_are_refused_and_never_forwarded(proxied, name, data, status):
    backend, proxy = proxied
    before = backend.server.requests
    exchanges = proxy.status()["totals"]["requests"]
    answered, tail = exchange(proxy.port, data)
    assert answered == status, name
    assert tail == b"", "the connection must close after a refusal, with nothing more"
    # The proxy never began an exchange (counted before anything is sent to a backend) ...
    assert proxy.status()["totals"]["requests"] == exchanges
    # ... and the backend saw no request line.
    assert backend.server.requests == before


def test_a_smuggled_second_request_in_a_body_is_not_a_request(proxied):
    backend, proxy = proxied
    before = backend.server.requests
    smuggled = b"GET /admin HTTP/1.1\r\n" + H + b"\r\n"
    data = b"POST /info HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % len(smuggled) + smuggled
    with socket.create_connection((LOOPBACK, proxy.port), timeout=10) as sock:
        sock.sendall(data + b"GET /health HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
        first, rest = read_response(sock)
        second, _ = read_response(sock, buffered=rest)
    assert first.json()["body_length"] == len(smuggled)
    assert first.json()["target"] == "/info"
    assert second.body == b"ok\n"
    assert backend.server.requests == before + 2


def test_a_broken_chunked_body_is_cut_at_the_backend_and_answered_400(proxied):
    backend, proxy = proxied
    data = (
        b"POST /info HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"
    )
    answered = backend.server.answered
    status, _ = exchange(proxy.port, data)
    assert status == 400
    # The head may have reached the backend, but never a complete request: the proxy cut
    # that backend connection, so the backend read a short body and answered nothing.
    wait_for(lambda: backend.server.requests > 0, what="backend saw the head")
    assert backend.server.answered == answered
