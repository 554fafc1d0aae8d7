"""doctor against situations built for real: every verdict from real sockets, real
namespaces, real firewall rules, real servers. Changes (loopback down, firewall rules,
/etc/hosts) happen only inside private network and mount namespaces made here."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from portside.cli import main
from tests.integration.netns import PYTHON, SERVER, free_port_everywhere, namespace

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux sockets and namespaces")


def doctor(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    code = main(["doctor", *args, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def codes(document: Any) -> list[str]:
    return [f["code"] for f in document["findings"]]


class Server:
    """The shared test server as a child process in this namespace (readiness: its port line)."""

    def __init__(self, host: str, mode: str = "http", *options: str) -> None:
        self.proc = subprocess.Popen(
            [PYTHON, "-c", SERVER, host, "0", mode, *options],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def server_factory() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.close()


def start(started: list[Server], host: str, mode: str = "http", *options: str) -> Server:
    server = Server(host, mode, *options)
    started.append(server)
    return server


def test_a_healthy_http_server_is_ok_and_exit_0(capsys, server_factory):
    server = start(server_factory, "127.0.0.1")
    code, document = doctor(capsys, f"http://127.0.0.1:{server.port}/health")
    assert code == 0
    assert document["verdict"]["code"] == "OK"
    assert "200" in document["verdict"]["title"]
    assert "FM-14" in codes(document), "a port from the kernel's ephemeral range is flagged"


def test_nothing_listening_is_fm01(capsys):
    port = free_port_everywhere()
    code, document = doctor(capsys, f"127.0.0.1:{port}")
    assert code == 1
    assert document["verdict"]["code"] == "FM-01"
    assert any("ECONNREFUSED" in line for line in document["verdict"]["evidence"])


def test_a_listener_on_another_loopback_address_is_fm02(capsys, server_factory):
    server = start(server_factory, "127.0.0.2")
    code, document = doctor(capsys, f"127.0.0.1:{server.port}")
    assert code == 1
    assert document["verdict"]["code"] == "FM-02"
    assert any(f"127.0.0.2:{server.port}" in fix for fix in document["verdict"]["fix"])
    assert any(f"[{server.proc.pid}]" in line for line in document["verdict"]["evidence"])


def test_ipv6_only_listener_asked_over_ipv4_and_the_reverse_are_fm03(capsys, server_factory):
    v6 = start(server_factory, "::1")
    code, document = doctor(capsys, f"127.0.0.1:{v6.port}")
    assert (code, document["verdict"]["code"]) == (1, "FM-03")
    v4 = start(server_factory, "127.0.0.1")
    code, document = doctor(capsys, f"[::1]:{v4.port}")
    assert (code, document["verdict"]["code"]) == (1, "FM-03")


def test_v6only_wildcard_asked_over_ipv4_is_fm03(capsys, server_factory):
    server = start(server_factory, "::", "http", "v6only")
    code, document = doctor(capsys, f"127.0.0.1:{server.port}")
    assert (code, document["verdict"]["code"]) == (1, "FM-03")


def test_localhost_with_an_ipv4_only_server_is_the_family_trap(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n")
    with namespace("ps-trap") as ns:
        _, port = ns.server("127.0.0.1")
        code, document = ns.portside("doctor", f"localhost:{port}", mount_hosts=hosts)
        assert code == 1
        assert document["verdict"]["code"] == "FM-04"
        assert "::1 first" in document["verdict"]["title"]
        _, both = ns.server("::")
        code, document = ns.portside("doctor", f"localhost:{both}", mount_hosts=hosts)
        assert (code, document["verdict"]["code"]) == (0, "OK")


def test_a_stopped_server_is_fm18(capsys, server_factory):
    server = start(server_factory, "127.0.0.1")
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        code, document = doctor(capsys, f"http://127.0.0.1:{server.port}/", "--timeout", "2")
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    assert code == 1
    assert document["verdict"]["code"] == "FM-18"
    assert document["verdict"]["fix"][0] == f"kill -CONT {server.proc.pid}"


def test_a_full_accept_queue_is_fm17(capsys, server_factory):
    server = start(server_factory, "127.0.0.1", "no-accept")
    clients = []
    try:
        # listen(1): the kernel completes backlog+1 handshakes, then drops SYNs.
        for _ in range(2):
            clients.append(socket.create_connection(("127.0.0.1", server.port), timeout=2))
        code, document = doctor(capsys, f"127.0.0.1:{server.port}", "--timeout", "2")
    finally:
        for client in clients:
            client.close()
    assert code == 1
    assert document["verdict"]["code"] == "FM-17"
    assert any("accept queue" in line for line in document["verdict"]["evidence"])


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[int]:
    if not shutil.which("openssl"):
        pytest.skip("needs the openssl command to make a test certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(2)
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1024)
                    tls.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
            except (ssl.SSLError, OSError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    stop.set()
    listener.close()
    thread.join(timeout=5)


def test_a_tls_server_asked_with_http_is_fm22(capsys, tls_server):
    code, document = doctor(capsys, f"http://127.0.0.1:{tls_server}/")
    assert code == 1
    assert document["verdict"]["code"] == "FM-22"
    assert any(fix.startswith("use https://") for fix in document["verdict"]["fix"])


def test_the_same_tls_server_asked_with_https_is_ok(capsys, tls_server):
    code, document = doctor(capsys, f"https://127.0.0.1:{tls_server}/")
    assert (code, document["verdict"]["code"]) == (0, "OK")
    assert "TLS" in document["verdict"]["title"]


def test_proxy_variables_are_reported(capsys, server_factory, monkeypatch):
    server = start(server_factory, "127.0.0.1")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9/")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    code, document = doctor(capsys, f"http://127.0.0.1:{server.port}/")
    assert code == 0, "doctor's own probe never goes through the proxy"
    assert "FM-35" in codes(document)


# --- in private network namespaces ------------------------------------------------------


def test_loopback_down_is_fm28():
    with namespace("ps-lo", lo_up=False) as ns:
        code, document = ns.portside("doctor", "127.0.0.1:8080", "--timeout", "2")
        assert code == 1
        assert document["verdict"]["code"] == "FM-28"
        assert "sudo ip link set lo up" in document["verdict"]["fix"]
        code, machine = ns.portside("doctor")
        assert (code, machine["verdict"]["code"]) == (1, "FM-28")


def test_the_machine_check_is_ok_in_a_healthy_namespace():
    with namespace("ps-ok") as ns:
        code, document = ns.portside("doctor")
        assert code == 0, document
        assert document["verdict"]["code"] == "OK"
        assert document["target"] is None


def test_a_privileged_port_with_nothing_listening():
    with namespace("ps-priv") as ns:
        code, document = ns.portside("doctor", "127.0.0.1:81")
        assert (code, document["verdict"]["code"]) == (1, "FM-01")
        assert "FM-13" in codes(document)


def nft(ns, *rule: str) -> None:
    ns.run(["nft", *rule])


@pytest.fixture
def nft_available() -> None:
    if not shutil.which("nft"):
        pytest.skip("needs nftables (`make test` installs it)")


def test_an_nftables_reject_is_fm26_with_the_rule(nft_available):
    with namespace("ps-rej") as ns:
        _, port = ns.server("127.0.0.1")
        nft(ns, "add", "table", "inet", "pstest")
        nft(
            ns,
            "add",
            "chain",
            "inet",
            "pstest",
            "input",
            "{ type filter hook input priority 0; policy accept; }",
        )
        nft(
            ns,
            "add",
            "rule",
            "inet",
            "pstest",
            "input",
            "tcp",
            "dport",
            str(port),
            "reject",
            "with",
            "tcp",
            "reset",
            "comment",
            '"ps-reject"',
        )
        code, document = ns.portside("doctor", f"127.0.0.1:{port}")
        assert code == 1
        assert document["verdict"]["code"] == "FM-26"
        assert any("ps-reject" in line for line in document["verdict"]["evidence"])
        assert "reject" in document["verdict"]["title"]


def test_an_nftables_drop_is_fm26_timeout(nft_available):
    with namespace("ps-drop") as ns:
        _, port = ns.server("127.0.0.1")
        nft(ns, "add", "table", "inet", "pstest")
        nft(
            ns,
            "add",
            "chain",
            "inet",
            "pstest",
            "input",
            "{ type filter hook input priority 0; policy accept; }",
        )
        nft(ns, "add", "rule", "inet", "pstest", "input", "tcp", "dport", str(port), "drop")
        code, document = ns.portside("doctor", f"127.0.0.1:{port}", "--timeout", "1")
        assert code == 1
        assert document["verdict"]["code"] == "FM-26"
        assert "drop" in document["verdict"]["title"]


def test_a_listener_only_in_another_namespace_is_fm29(capsys):
    port = free_port_everywhere()
    with namespace("ps-other") as ns:
        _, bound = ns.server("127.0.0.1", port)
        assert bound == port
        code, document = doctor(capsys, f"127.0.0.1:{port}")
    assert code == 1
    assert document["verdict"]["code"] == "FM-29"
    assert ns.name in document["verdict"]["title"]


def test_etc_hosts_without_localhost_is_fm07(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.1.1 portside-test-box\n")
    nsswitch = Path("/etc/nsswitch.conf").read_text() if Path("/etc/nsswitch.conf").exists() else ""
    if "myhostname" in nsswitch:
        pytest.skip("nss-myhostname synthesises localhost here")
    with namespace("ps-hosts") as ns:
        _, port = ns.server("127.0.0.1")
        code, document = ns.portside("doctor", f"localhost:{port}", mount_hosts=hosts)
        assert code == 1
        assert document["verdict"]["code"] == "FM-07"
        code, machine = ns.portside("doctor", mount_hosts=hosts)
        assert machine["verdict"]["code"] == "FM-07"
