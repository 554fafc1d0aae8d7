"""The reverse proxy against real backends on loopback: routing, balancing, headers,
bodies both ways, keep-alive, 100-continue, errors, health, reload, WebSocket, dashboard.

The proxy runs on its own event loop in a thread (``ProxyThread``) so that the clients can
be plain blocking sockets that see exactly the bytes on the wire.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import threading

import pytest

from portside.net.proxy import ProxyOptions
from portside.net.routes import ConfigError, HealthCheckSpec, Route, parse_backend, parse_route_spec
from tests.integration.test_proxy_kit import (
    LOOPBACK,
    Backend,
    ProxyThread,
    encode_request,
    read_head,
    read_response,
    request,
    wait_for,
    ws_accept,
    ws_echo_server,
    ws_frame,
)

LOOPS = ["uvloop", "asyncio"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def route(spec: str, **settings: object) -> Route:
    return parse_route_spec(spec, **settings)  # type: ignore[arg-type]


@pytest.fixture
def two_backends():
    with Backend("b1") as b1, Backend("b2") as b2:
        yield b1, b2


@pytest.mark.parametrize("loop", LOOPS)
def test_round_robin_spreads_requests_and_reuses_backend_connections(two_backends, loop):
    b1, b2 = two_backends
    with ProxyThread([route(f"*={b1.address},{b2.address}")], loop=loop) as proxy:
        with socket.create_connection((LOOPBACK, proxy.port), timeout=10) as sock:
            seen = []
            rest = b""
            for _ in range(6):  # one client connection, keep-alive
                sock.sendall(encode_request("GET", "/info"))
                response, rest = read_response(sock, buffered=rest)
                assert response.status == 200
                info = response.json()
                seen.append((info["backend"], info["client_port"]))
        assert [name for name, _ in seen] == ["b1", "b2"] * 3
        # Pooled keep-alive: each backend saw one proxy connection for its three requests.
        assert len({port for name, port in seen if name == "b1"}) == 1
        assert len({port for name, port in seen if name == "b2"}) == 1
        status = proxy.status()
        assert status["totals"]["requests"] == 6
        assert status["totals"]["responses_2xx"] == 6


def test_hop_by_hop_headers_go_and_forwarding_headers_come(two_backends):
    b1, _ = two_backends
    with ProxyThread([route(f"app.localhost={b1.address}")]) as proxy:
        response = request(
            proxy.port,
            "/info?q=1",
            host="app.localhost:8080",
            headers=[
                ("Connection", "keep-alive, X-Private"),
                ("X-Private", "secret"),
                ("Keep-Alive", "timeout=5"),
                ("TE", "trailers"),
                ("Proxy-Authorization", "Basic eDp5"),
                ("X-Forwarded-For", "10.9.8.7"),
                ("X-Custom", "kept"),
            ],
        )
    assert response.status == 200
    info = response.json()
    headers: dict[str, list[str]] = {}
    for key, value in info["headers"]:
        headers.setdefault(key.lower(), []).append(value)
    assert info["target"] == "/info?q=1"
    assert headers["host"] == ["app.localhost:8080"]  # the client's Host, preserved
    for gone in ("x-private", "keep-alive", "te", "proxy-authorization", "connection"):
        assert gone not in headers, gone
    assert headers["x-custom"] == ["kept"]
    assert headers["x-forwarded-for"] == ["10.9.8.7, 127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-forwarded-host"] == ["app.localhost:8080"]
    assert headers["forwarded"] == ['for=127.0.0.1;proto=http;host="app.localhost:8080"']
    assert response.header("server") == "portside"  # one Server header, the proxy's


def test_the_backend_address_is_sent_as_host_when_asked(two_backends):
    b1, _ = two_backends
    with ProxyThread([route(f"app.localhost={b1.address}", preserve_host=False)]) as proxy:
        info = request(proxy.port, "/info").json()
    assert {k.lower(): v for k, v in info["headers"]}["host"] == b1.address


def test_routes_by_host_and_longest_path_prefix(two_backends):
    b1, b2 = two_backends
    routes = [route(f"app.localhost={b1.address}"), route(f"app.localhost/api={b2.address}")]
    with ProxyThread(routes) as proxy:
        assert request(proxy.port, "/x").json()["backend"] == "b1"
        assert request(proxy.port, "/api/v1").json()["backend"] == "b2"
        assert request(proxy.port, "/apis").json()["backend"] == "b1"
        missing = request(proxy.port, "/", host="other.localhost")
        assert missing.status == 404
        assert b"No route" in missing.body


def test_routes_added_at_run_time_serve_at_once(two_backends):
    b1, b2 = two_backends
    with ProxyThread([route(f"app.localhost={b1.address}")]) as proxy:
        assert request(proxy.port, "/", host="new.localhost").status == 404
        proxy.in_loop(
            lambda: proxy.proxy.routes.add(route(f"new.localhost={b2.address}", source="registry"))
        )
        assert request(proxy.port, "/info", host="new.localhost").json()["backend"] == "b2"
        proxy.in_loop(lambda: proxy.proxy.routes.remove("new.localhost", "/"))
        assert request(proxy.port, "/", host="new.localhost").status == 404


def test_a_chunked_upload_streams_through_and_a_chunked_answer_comes_back(two_backends):
    b1, _ = two_backends
    body = os.urandom(300_000)
    with (
        ProxyThread([route(f"*={b1.address}")]) as proxy,
        socket.create_connection((LOOPBACK, proxy.port), timeout=10) as sock,
    ):
        sock.sendall(
            b"PUT /echo HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        for start in range(0, len(body), 70_000):
            piece = body[start : start + 70_000]
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        sock.sendall(b"0\r\n\r\n")
        response, _ = read_response(sock)
        assert response.header("transfer-encoding") == "chunked"
        assert response.body == body


def test_keep_alive_holds_after_uploads_answered_once_the_body_is_in(two_backends):
    b1, _ = two_backends
    with (
        ProxyThread([route(f"*={b1.address}")]) as proxy,
        socket.create_connection((LOOPBACK, proxy.port), timeout=10) as sock,
    ):
        rest = b""
        for size in (0, 10, 200_000):
            sock.sendall(encode_request("POST", "/info", body=os.urandom(size)))
            response, rest = read_response(sock, buffered=rest)
            assert response.json()["body_length"] == size
            assert response.header("connection") is None
        sock.sendall(b"PUT /echo HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 5\r\n\r\nhello")
        echoed, _ = read_response(sock, buffered=rest)
        assert echoed.body == b"hello"


def test_expect_100_continue_is_answered_before_the_body_is_sent(two_backends):
    b1, _ = two_backends
    with (
        ProxyThread([route(f"*={b1.address}")]) as proxy,
        socket.create_connection((LOOPBACK, proxy.port), timeout=10) as sock,
    ):
        sock.sendall(
            b"PUT /echo HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        interim, rest = read_head(sock)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"hello")
        response, _ = read_response(sock, buffered=rest)
        assert response.status == 200
        assert response.body == b"hello"


def test_head_responses_keep_the_backends_length_and_the_connection(two_backends):
    b1, _ = two_backends
    with (
        ProxyThread([route(f"*={b1.address}")]) as proxy,
        socket.create_connection((LOOPBACK, proxy.port), timeout=10) as sock,
    ):
        sock.sendall(encode_request("HEAD", "/info"))
        head, rest = read_response(sock, method="HEAD")
        assert head.status == 200
        assert int(head.header("content-length") or 0) > 0
        sock.sendall(encode_request("GET", "/health"))
        after, _ = read_response(sock, buffered=rest)
        assert after.body == b"ok\n"


def test_an_unreachable_backend_gives_a_502_naming_it_and_why():
    dead = f"{LOOPBACK}:{free_port()}"
    with ProxyThread([route(f"*={dead}")]) as proxy:
        response = request(proxy.port, "/")
        status = proxy.status()
    assert response.status == 502
    assert dead.encode() in response.body
    assert b"connection refused" in response.body.lower()
    assert status["backends"][0]["health"] == "ejected"
    assert status["routes"][0]["counters"]["errors"] == 1


def test_a_request_moves_to_another_backend_when_the_connect_fails(two_backends):
    b1, _ = two_backends
    dead = f"{LOOPBACK}:{free_port()}"
    with ProxyThread([route(f"*={dead},{b1.address}")]) as proxy:
        answers = [request(proxy.port, "/info", method="POST", body=b"x") for _ in range(4)]
        status = proxy.status()
    assert [a.status for a in answers] == [200] * 4
    assert {a.json()["backend"] for a in answers} == {"b1"}
    health = {b["address"]: b["health"] for b in status["backends"]}
    assert health == {dead: "ejected", b1.address: "up"}
    assert status["routes"][0]["counters"]["retries"] >= 1


def test_a_silent_backend_gives_a_504():
    silent = socket.socket()
    silent.bind((LOOPBACK, 0))
    silent.listen(8)  # accepts (in the kernel) and never answers
    address = f"{LOOPBACK}:{silent.getsockname()[1]}"
    try:
        with ProxyThread(
            [route(f"*={address}")], ProxyOptions(access_log="off", response_timeout_s=0.3)
        ) as proxy:
            response = request(proxy.port, "/")
    finally:
        silent.close()
    assert response.status == 504
    assert address.encode() in response.body


class OneShotBackend:
    """Answers the first request of each connection and closes on the second, unanswered:
    a pooled connection that the backend dropped just as the proxy reused it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(64)
        self.address = f"{LOOPBACK}:{self.sock.getsockname()[1]}"
        self.connections = 0
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
        with conn:
            try:
                head, _ = read_head(conn)
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                while length > 0:
                    length -= len(conn.recv(length))
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
                read_head(conn)  # the second request: dropped unanswered
            except (ConnectionError, OSError):
                return

    def close(self) -> None:
        self.sock.close()


def test_a_pooled_connection_the_backend_dropped_is_retried_only_when_safe():
    backend = OneShotBackend()
    try:
        with ProxyThread([route(f"*={backend.address}")]) as proxy:
            assert request(proxy.port, "/").body == b"first"
            again = request(proxy.port, "/")  # pooled connection dropped: GET retried
            assert (again.status, again.body) == (200, b"first")
            assert backend.connections == 2
            posted = request(proxy.port, "/", method="POST", body=b"data")
            assert posted.status == 502  # sent once, never replayed
            assert backend.connections == 2
            assert proxy.status()["routes"][0]["counters"]["retries"] == 1
    finally:
        backend.close()


def test_disallowed_hosts_are_refused_and_allowed_ones_pass(two_backends):
    b1, _ = two_backends
    options = ProxyOptions(access_log="off", allow_hosts=("dev.test",))
    with ProxyThread(
        [route(f"*={b1.address}"), route(f"*.example={b1.address}")], options
    ) as proxy:
        assert request(proxy.port, "/", host="evil.com").status == 403
        assert request(proxy.port, "/", host="evil.com:80").status == 403
        assert request(proxy.port, "/info", host="dev.test").status == 200
        assert request(proxy.port, "/info", host="a.example").status == 200
        assert request(proxy.port, "/info", host="localhost:1234").status == 200
        assert request(proxy.port, "/info", host="127.0.0.1").status == 200
        assert request(proxy.port, "/info", host="[::1]:80").status == 200
        assert b1.server.requests == 5  # the refused ones never reached the backend


def test_the_dashboard_answers_on_its_name_and_under_the_prefix(two_backends):
    b1, _ = two_backends
    with ProxyThread([route(f"app.localhost={b1.address}")]) as proxy:
        page = request(proxy.port, "/", host="portside.localhost")
        assert page.status == 200
        assert b"<title>portside proxy</title>" in page.body
        assert "script-src 'self'" in (page.header("content-security-policy") or "")
        status = request(proxy.port, "/_portside/status.json").json()
        assert status["kind"] == "proxy-status"
        assert status["routes"][0]["name"] == "app.localhost"
        moved = request(proxy.port, "/_portside")
        assert moved.status == 308
        assert moved.header("location") == "/_portside/"
        assert request(proxy.port, "/_portside/dashboard.js").status == 200
        assert b1.server.requests == 0


def test_the_access_log_writes_one_json_line_per_request(two_backends):
    b1, _ = two_backends
    stream = io.StringIO()
    with ProxyThread(
        [route(f"*={b1.address}")], ProxyOptions(access_log="json", log_stream=stream)
    ) as proxy:
        request(proxy.port, "/info?a=1", method="POST", body=b"abc")
    line = json.loads(stream.getvalue().splitlines()[0])
    assert line["method"] == "POST"
    assert line["target"] == "/info?a=1"
    assert line["status"] == 200
    assert line["backend"] == b1.address
    assert line["bytes"] > 0


def test_active_checks_mark_a_backend_down_and_up_again(two_backends):
    b1, b2 = two_backends
    spec = HealthCheckSpec(path="/health", interval_s=0.05, timeout_s=1.0, rise=2, fall=2)
    with ProxyThread([route(f"*={b1.address},{b2.address}", health=spec)]) as proxy:

        def health_of(address: str) -> str:
            return str({b["address"]: b["health"] for b in proxy.status()["backends"]}[address])

        b1.server.health_status = 503
        wait_for(lambda: health_of(b1.address) == "down", what="b1 marked down")
        assert {request(proxy.port, "/info").json()["backend"] for _ in range(4)} == {"b2"}
        b1.server.health_status = 200
        wait_for(lambda: health_of(b1.address) == "up", what="b1 marked up")
        assert {request(proxy.port, "/info").json()["backend"] for _ in range(4)} == {"b1", "b2"}


def test_the_config_file_is_read_and_reloaded_without_dropping_connections(tmp_path, two_backends):
    b1, b2 = two_backends
    config = tmp_path / "routes.toml"
    config.write_text(f'[[route]]\nhost = "app.localhost"\nbackends = ["{b1.address}"]\n')
    options = ProxyOptions(access_log="off", config_path=config)
    with (
        ProxyThread([], options) as proxy,
        socket.create_connection((LOOPBACK, proxy.port), timeout=10) as sock,
    ):
        sock.sendall(encode_request("GET", "/info"))
        before, rest = read_response(sock)
        assert before.json()["backend"] == "b1"
        config.write_text(f'[[route]]\nhost = "app.localhost"\nbackends = ["{b2.address}"]\n')
        proxy.in_loop(proxy.proxy.reload)
        sock.sendall(encode_request("GET", "/info"))  # the same client connection
        after, rest = read_response(sock, buffered=rest)
        assert after.json()["backend"] == "b2"
        config.write_text("[[route]]\nhost = 1\n")
        with pytest.raises(ConfigError, match="is required"):
            proxy.in_loop(proxy.proxy.reload)
        sock.sendall(encode_request("GET", "/info"))
        kept, _ = read_response(sock, buffered=rest)
        assert kept.json()["backend"] == "b2"  # a bad file leaves the routes alone


@pytest.mark.parametrize("loop", LOOPS)
def test_websocket_echo_through_the_proxy(loop):
    ready = threading.Event()
    holder: dict[str, object] = {}

    def serve() -> None:
        async def main() -> None:
            server = await ws_echo_server()
            holder["port"] = server.sockets[0].getsockname()[1]
            holder["stop"] = asyncio.get_running_loop().create_future()
            ready.set()
            async with server:
                await holder["stop"]  # type: ignore[misc]

        holder["loop"] = None
        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        with (
            ProxyThread([route(f"*={LOOPBACK}:{holder['port']}")], loop=loop) as proxy,
            socket.create_connection((LOOPBACK, proxy.port), timeout=10) as sock,
        ):
            key = "dGhlIHNhbXBsZSBub25jZQ=="
            sock.sendall(
                encode_request(
                    "GET",
                    "/chat",
                    headers=[
                        ("Connection", "Upgrade"),
                        ("Upgrade", "websocket"),
                        ("Sec-WebSocket-Key", key),
                        ("Sec-WebSocket-Version", "13"),
                    ],
                )
            )
            head, rest = read_head(sock)
            assert head.startswith(b"HTTP/1.1 101")
            assert f"sec-websocket-accept: {ws_accept(key)}".lower() in head.decode().lower()
            for payload in (b"hello", os.urandom(70_000)):
                sock.sendall(ws_frame(0x2, payload, masked=True))
                expected = ws_frame(0x2, payload, masked=False)
                while len(rest) < len(expected):
                    more = sock.recv(65536)
                    assert more
                    rest += more
                assert rest[: len(expected)] == expected
                rest = rest[len(expected) :]
            sock.sendall(ws_frame(0x8, b"\x03\xe8", masked=True))
            closing = rest
            while more := sock.recv(65536):
                closing += more
            assert closing == ws_frame(0x8, b"\x03\xe8", masked=False)
    finally:
        stop = holder.get("stop")
        if isinstance(stop, asyncio.Future):
            stop.get_loop().call_soon_threadsafe(stop.set_result, None)
        thread.join(10)


def test_a_proxy_made_from_flags_equals_one_made_from_backends(two_backends):
    b1, _ = two_backends
    made = Route(host="*", backends=(parse_backend(b1.address),))
    assert made == route(f"*={b1.address}")
