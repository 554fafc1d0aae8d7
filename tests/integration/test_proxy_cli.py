"""``portside proxy`` as a user runs it: options, the start line, SIGHUP reload, SIGTERM."""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys

import pytest

from portside.cli._proxy import add_arguments, run_proxy
from portside.errors import UsageError
from tests.integration.test_proxy_kit import (
    LOOPBACK,
    PROXY_LAUNCH,
    ROOT,
    Backend,
    ChildProxy,
    encode_request,
    read_response,
    request,
    wait_for,
)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="signals")


def options(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--no-registry",), "nothing to proxy to"),
        (("--to", "127.0.0.1"), "no port given"),
        (("--route", "app.localhost"), "HOST[/PATH]=BACKEND"),
        (("--to", "127.0.0.1:1", "--health-path", "health"), "starts with /"),
        (("--to", "127.0.0.1:1", "--health-path", "/h", "--rise", "0"), "--rise"),
        (("--to", "127.0.0.1:1", "--timeout", "0"), "positive"),
        (("--to", "127.0.0.1:1", "--listen", "example.com:80"), "IP address"),
        (("--to", "127.0.0.1:1", "--health-path", "/h", "--health-expect", "abc"), "expect"),
    ],
)
def test_bad_options_are_refused_with_the_fix(argv, message):
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        run_proxy(options(*argv))


def test_the_start_line_names_the_address_and_the_dashboard():
    with Backend("b") as backend:
        proc = subprocess.Popen(
            [sys.executable, "-c", PROXY_LAUNCH, "--to", backend.address],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            assert first.startswith("portside proxy listening on http://127.0.0.1:")
            port = int(first.split("http://127.0.0.1:")[1].split("/")[0])
            assert f"dashboard: http://portside.localhost:{port}/" in first
            assert proc.stdout.readline().strip() == f"* -> {backend.address}"
            assert request(port, "/info?x=1").status == 200
            proc.send_signal(signal.SIGTERM)
            rest = proc.stdout.read()  # the access log is flushed on the way out
            assert proc.wait(15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert '"GET /info?x=1 HTTP/1.1" 200' in rest


def test_sighup_reloads_the_file_and_keeps_open_connections(tmp_path):
    with Backend("one") as one, Backend("two") as two:
        config = tmp_path / "routes.toml"
        config.write_text(f'[[route]]\nhost = "app.localhost"\nbackends = ["{one.address}"]\n')
        with (
            ChildProxy("--config", str(config)) as proxy,
            socket.create_connection((LOOPBACK, proxy.port), timeout=10) as sock,
        ):
            assert proxy.started["kind"] == "proxy-started"
            sock.sendall(encode_request("GET", "/info"))
            before, rest = read_response(sock)
            assert before.json()["backend"] == "one"
            version = proxy.status()["routes_version"]
            config.write_text(f'[[route]]\nhost = "app.localhost"\nbackends = ["{two.address}"]\n')
            proxy.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: proxy.status()["routes_version"] > version, what="the reload")
            sock.sendall(encode_request("GET", "/info"))  # the same connection, still open
            after, rest = read_response(sock, buffered=rest)
            assert after.json()["backend"] == "two"
            config.write_text("[[route]]\nbalance = 'nope'\n")
            version = proxy.status()["routes_version"]
            proxy.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "reload failed" in proxy.stderr(), what="the failed reload reported")
            assert proxy.status()["routes_version"] == version
            assert request(proxy.port, "/info").json()["backend"] == "two"
            assert proxy.stop() == 0


def test_the_stock_event_loop_runs_the_proxy_too():
    with (
        Backend("b") as backend,
        ChildProxy("--to", backend.address, env={"PORTSIDE_LOOP": "asyncio"}) as proxy,
    ):
        assert request(proxy.port, "/info").json()["backend"] == "b"
        assert proxy.stop() == 0


def test_an_ipv6_loopback_listener_works_and_forwards_the_client_as_ipv6():
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("::1 cannot be bound here")
    with (
        Backend("b") as backend,
        ChildProxy("--listen", "[::1]:0", "--to", backend.address) as proxy,
    ):
        assert proxy.started["url"].startswith("http://[::1]:")
        port = int(proxy.started["listen"].rsplit(":", 1)[1])
        with socket.create_connection(("::1", port), timeout=10) as sock:
            sock.sendall(encode_request("GET", "/info", host=f"[::1]:{port}", close=True))
            response, _ = read_response(sock)
        headers = dict(response.json()["headers"])
        assert headers["x-forwarded-for"] == "::1"
        assert headers["forwarded"] == f'for="[::1]";proto=http;host="[::1]:{port}"'
