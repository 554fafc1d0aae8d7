"""doctor against situations built for real: every verdict from real sockets, real
namespaces, real firewall rules, real servers (Redis, PostgreSQL, sshd + ``ssh -L``, QEMU).
Changes (loopback down, sysctls, firewall rules, /etc/hosts) happen only inside private
network and mount namespaces made here.

Ports are never assumed free: a test that needs "nothing on the other family" holds that
address itself with a bound, non-listening socket (no SO_REUSEADDR, so no other process can
listen there while the test runs), and namespaces have a loopback of their own."""

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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from portside.cli import main
from tests.integration._components import qemu_with_hostfwd, running_sshd, ssh_tunnel
from tests.integration._engines import connects_in, dockerd, published_container
from tests.integration._servers import (
    bound_port,
    h2c_server,
    http_server,
    make_certificate,
    postgres_server,
    redis_server,
    tcpwrapped_server,
)
from tests.integration.netns import PYTHON, SERVER, Namespace, namespace

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux sockets and namespaces")


def doctor(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    code = main(["doctor", *args, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def codes(document: Any) -> list[str]:
    return [f["code"] for f in document["findings"]]


def finding(document: Any, code: str) -> Any:
    return next(f for f in document["findings"] if f["code"] == code)


def text(entry: Any) -> str:
    return " ".join([entry["title"], *entry["evidence"], *entry["fix"]])


class PortTaken(RuntimeError):
    """The test server could not bind the port it was given (someone else has it)."""


class Server:
    """The shared test server as a child process in this namespace (readiness: its port line)."""

    def __init__(self, host: str, mode: str = "http", *options: str, port: int = 0) -> None:
        self.proc = subprocess.Popen(
            [PYTHON, "-c", SERVER, host, str(port), mode, *options],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip():
            self.close()
            raise PortTaken(f"{host}:{port}")
        self.port = int(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


class Started:
    """What a test started: servers (ended by pid) and held sockets (closed)."""

    def __init__(self) -> None:
        self.servers: list[Server] = []
        self.held: list[socket.socket] = []

    def server(self, host: str, mode: str = "http", *options: str, port: int = 0) -> Server:
        server = Server(host, mode, *options, port=port)
        self.servers.append(server)
        return server

    def hold(self, host: str, port: int = 0) -> int:
        """Bind ``host``:``port`` without listening and keep it: connects there are refused,
        and no other process can listen on it (or on its family's wildcard) meanwhile."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        self.held.append(sock)
        return int(sock.getsockname()[1])

    def beside(self, held: str, host: str, mode: str = "http", *options: str) -> Server:
        """A server on ``host`` at a port this test also holds on ``held``."""
        for _ in range(10):
            port = self.hold(held)
            try:
                return self.server(host, mode, *options, port=port)
            except PortTaken:
                self.held.pop().close()
        raise RuntimeError(f"no port free on both {held} and {host} in 10 tries")

    def close(self) -> None:
        for server in self.servers:
            server.close()
        for sock in self.held:
            sock.close()


@pytest.fixture
def started() -> Iterator[Started]:
    things = Started()
    yield things
    things.close()


@pytest.fixture(params=["owners-first", "owners-after-the-probe"])
def owner_lookup(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """doctor looks owners up before probing when a Redis or PostgreSQL runs anywhere on
    the machine, and otherwise only when the answer calls for them: both orders, forced,
    must reach the same verdict and evidence."""
    from portside.diagnosis import gather

    first = request.param == "owners-first"
    monkeypatch.setattr(gather, "sensitive_servers_running", lambda: first)
    return str(request.param)


# --- reachable ------------------------------------------------------------------------


def test_a_healthy_http_server_is_ok_and_exit_0(capsys, started, owner_lookup):
    server = started.server("127.0.0.1")
    code, document = doctor(capsys, f"http://127.0.0.1:{server.port}/health")
    assert code == 0
    assert document["verdict"]["code"] == "OK"
    assert "200" in document["verdict"]["title"]
    assert "FM-14" in codes(document), "a port from the kernel's ephemeral range is flagged"


def test_a_bare_port_answering_on_ipv4_only_is_ok_with_a_note(capsys, started):
    server = started.beside("::1", "127.0.0.1")
    code, document = doctor(capsys, f":{server.port}")
    assert (code, document["verdict"]["code"]) == (0, "OK")
    assert "127.0.0.1" in document["verdict"]["evidence"][0]
    assert finding(document, "FM-03")["severity"] == "low"


# --- nothing there, or somewhere else ---------------------------------------------------


def test_nothing_listening_is_fm01():
    with namespace("ps-none") as ns:
        # --no-netns: a listener on this port in any other namespace of the machine
        # (another test's) would rightly make it FM-29.
        code, document = ns.portside("doctor", "127.0.0.1:8080", "--no-netns")
    assert code == 1
    assert document["verdict"]["code"] == "FM-01"
    assert any("ECONNREFUSED" in line for line in document["verdict"]["evidence"])


def test_a_listener_on_another_loopback_address_is_fm02(capsys, started, owner_lookup):
    server = started.beside("127.0.0.1", "127.0.0.2")
    code, document = doctor(capsys, f"127.0.0.1:{server.port}")
    assert code == 1
    assert document["verdict"]["code"] == "FM-02"
    assert any(f"127.0.0.2:{server.port}" in fix for fix in document["verdict"]["fix"])
    assert any(f"[{server.proc.pid}]" in line for line in document["verdict"]["evidence"])


def test_an_ipv6_only_listener_asked_over_ipv4_is_fm03(capsys, started):
    server = started.beside("127.0.0.1", "::1")
    code, document = doctor(capsys, f"127.0.0.1:{server.port}")
    assert (code, document["verdict"]["code"]) == (1, "FM-03")
    assert "IPv6 only" in document["verdict"]["title"]
    assert f"[::1]:{server.port}" in document["verdict"]["fix"][0]


def test_an_ipv4_only_listener_asked_over_ipv6_is_fm03(capsys, started):
    server = started.beside("::1", "127.0.0.1")
    code, document = doctor(capsys, f"[::1]:{server.port}")
    assert (code, document["verdict"]["code"]) == (1, "FM-03")
    assert "IPv4 only" in document["verdict"]["title"]
    assert f"127.0.0.1:{server.port}" in document["verdict"]["fix"][0]


def test_a_v6only_wildcard_asked_over_ipv4_is_fm03(capsys, started):
    server = started.beside("127.0.0.1", "::", "http", "v6only")
    code, document = doctor(capsys, f"127.0.0.1:{server.port}")
    assert (code, document["verdict"]["code"]) == (1, "FM-03")
    assert any("(IPv6 only)" in line for line in document["verdict"]["evidence"])


def test_a_socket_bound_but_not_listening_is_fm10(capsys, started, owner_lookup):
    server = started.server("127.0.0.1", "bind-only")
    # --no-netns: the catalogue puts a listener in another namespace (FM-29) first.
    code, document = doctor(capsys, f"127.0.0.1:{server.port}", "--no-netns")
    assert (code, document["verdict"]["code"]) == (1, "FM-10")
    assert any(f"[{server.proc.pid}]" in line for line in document["verdict"]["evidence"])


def test_a_listener_only_in_another_namespace_is_fm29(capsys, started):
    # Held here on every address of both families, so only the namespace listens on it.
    port = started.hold("::")
    with namespace("ps-other") as ns:
        _, bound = ns.server("127.0.0.1", port)
        assert bound == port
        code, document = doctor(capsys, f"127.0.0.1:{port}")
    assert code == 1
    assert document["verdict"]["code"] == "FM-29"
    # Every namespace listening on the port is named (another test's may be too).
    assert any(f"netns {ns.name}:" in line for line in document["verdict"]["evidence"])
    assert any("nsenter" in fix for fix in document["verdict"]["fix"])


# --- localhost, /etc/hosts and the loopback interface (namespaces) ---------------------

BOTH = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"


@pytest.fixture
def hosts_both(tmp_path: Path) -> Path:
    hosts = tmp_path / "hosts"
    hosts.write_text(BOTH)
    return hosts


def test_localhost_with_an_ipv4_only_server_is_the_family_trap(hosts_both):
    with namespace("ps-trap") as ns:
        _, port = ns.server("127.0.0.1")
        code, document = ns.portside("doctor", f"localhost:{port}", mount_hosts=hosts_both)
        assert code == 1
        assert document["verdict"]["code"] == "FM-04"
        assert "::1 first" in document["verdict"]["title"]
        _, both = ns.server("::")
        code, document = ns.portside("doctor", f"localhost:{both}", mount_hosts=hosts_both)
        assert (code, document["verdict"]["code"]) == (0, "OK")


def test_localhost_with_an_ipv6_only_server_answers_on_one_family(hosts_both):
    with namespace("ps-trap6") as ns:
        _, port = ns.server("::1")
        code, document = ns.portside("doctor", f"localhost:{port}", mount_hosts=hosts_both)
    assert code == 1
    assert document["verdict"]["code"] == "FM-04"
    assert "::1 only" in document["verdict"]["title"]
    assert any(f"127.0.0.1:{port}" in line for line in document["verdict"]["evidence"])


def test_a_server_that_bound_localhost_and_got_one_family_is_fm05(hosts_both):
    with namespace("ps-bindlh") as ns:
        _, port = ns.server("localhost")
        code, document = ns.portside("doctor", f"localhost:{port}", mount_hosts=hosts_both)
    assert (code, document["verdict"]["code"]) == (1, "FM-05")
    assert any("bound 'localhost'" in line for line in document["verdict"]["evidence"])


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
        assert any(
            "curl and browsers would reach" in line for line in document["verdict"]["evidence"]
        )
        code, machine = ns.portside("doctor", mount_hosts=hosts)
        assert machine["verdict"]["code"] == "FM-07"


def test_a_dot_localhost_name_glibc_cannot_resolve_is_fm07_with_what_curl_reaches(hosts_both):
    if "myhostname" in (
        Path("/etc/nsswitch.conf").read_text() if Path("/etc/nsswitch.conf").exists() else ""
    ):
        pytest.skip("nss-myhostname resolves *.localhost here")
    with namespace("ps-dotlh") as ns:  # only lo: a DNS query cannot leave the namespace
        _, port = ns.server("127.0.0.1")
        code, document = ns.portside(
            "doctor", f"http://app.localhost:{port}/health", mount_hosts=hosts_both
        )
    verdict = document["verdict"]
    assert (code, verdict["code"]) == (1, "FM-07")
    assert any(f"127.0.0.1:{port}: connected" in line for line in verdict["evidence"])
    assert any("127.0.0.1 app.localhost" in fix for fix in verdict["fix"])


def test_localhost_mapped_to_a_non_loopback_address_is_fm07(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("10.99.99.99 localhost\n")
    with namespace("ps-lhout") as ns:
        _, port = ns.server("127.0.0.1")
        code, document = ns.portside("doctor", f"localhost:{port}", mount_hosts=hosts)
    assert (code, document["verdict"]["code"]) == (1, "FM-07")
    assert "non-loopback" in document["verdict"]["title"]
    assert any("10.99.99.99" in line for line in document["verdict"]["evidence"])


def test_loopback_down_is_fm28():
    with namespace("ps-lo", lo_up=False) as ns:
        code, document = ns.portside("doctor", "127.0.0.1:8080", "--timeout", "2")
        assert code == 1
        assert document["verdict"]["code"] == "FM-28"
        assert "sudo ip link set lo up" in document["verdict"]["fix"]
        code, machine = ns.portside("doctor")
        assert (code, machine["verdict"]["code"]) == (1, "FM-28")


def test_127_0_0_1_removed_from_loopback_is_fm28():
    with namespace("ps-noaddr") as ns:
        ns.ip("addr", "del", "127.0.0.1/8", "dev", "lo")
        code, document = ns.portside("doctor", "127.0.0.1:8080")
        assert (code, document["verdict"]["code"]) == (1, "FM-28")
        assert any("ENETUNREACH" in line for line in document["verdict"]["evidence"])
        code, machine = ns.portside("doctor")
        assert (code, machine["verdict"]["code"]) == (1, "FM-28")
        assert "127.0.0.1 is missing" in machine["verdict"]["title"]


def test_ipv6_disabled_on_loopback_is_fm08():
    with namespace("ps-nov6") as ns:
        # A sysctl of this namespace only (net.ipv6.conf.* is per network namespace).
        ns.run(["sysctl", "-q", "-w", "net.ipv6.conf.lo.disable_ipv6=1"])
        _, port = ns.server("127.0.0.1")
        code, document = ns.portside("doctor", f"[::1]:{port}")
        assert (code, document["verdict"]["code"]) == (1, "FM-08")
        assert any("EADDRNOTAVAIL" in line for line in document["verdict"]["evidence"])
        code, machine = ns.portside("doctor")
        assert (code, machine["verdict"]["code"]) == (1, "FM-08")


def test_the_machine_check_is_ok_in_a_healthy_namespace():
    with namespace("ps-ok") as ns:
        code, document = ns.portside("doctor")
        assert code == 0, document
        assert document["verdict"]["code"] == "OK"
        assert document["target"] is None
        assert {"FM-13", "FM-14"} <= set(codes(document)), "port settings are reported"


# --- port settings and sockets around the port (namespaces) ----------------------------


def test_a_privileged_port_with_nothing_listening():
    with namespace("ps-priv") as ns:
        code, document = ns.portside("doctor", "127.0.0.1:81", "--no-netns")
        assert (code, document["verdict"]["code"]) == (1, "FM-01")
        assert "FM-13" in codes(document)


def test_a_browser_bad_port_is_fm15():
    with namespace("ps-badport") as ns:
        # A fixed port is safe here: this namespace's loopback is ours alone.
        _, port = ns.server("127.0.0.1", 6000)
        code, document = ns.portside("doctor", f"http://127.0.0.1:{port}/")
    assert (code, document["verdict"]["code"]) == (0, "OK")
    assert "ERR_UNSAFE_PORT" in finding(document, "FM-15")["title"]


def test_a_wildcard_listener_is_reported_as_exposed():
    with namespace("ps-wild") as ns:
        _, port = ns.server("0.0.0.0")
        code, document = ns.portside("doctor", f"127.0.0.1:{port}")
    assert (code, document["verdict"]["code"]) == (0, "OK")
    assert f"0.0.0.0:{port}" in finding(document, "FM-36")["title"]


CLIENT = r"""
import socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5) as c:
    c.sendall(b"GET / HTTP/1.0\r\n\r\n")
    while c.recv(4096):
        pass
"""


def test_time_wait_left_by_a_stopped_server_is_fm11():
    with namespace("ps-tw") as ns:
        proc, port = ns.server("127.0.0.1")
        # The server closes first, so its side of the connection stays in TIME_WAIT.
        ns.run([PYTHON, "-c", CLIENT, str(port)])
        proc.kill()
        proc.wait()
        code, document = ns.portside("doctor", f"127.0.0.1:{port}", "--no-netns")
    assert (code, document["verdict"]["code"]) == (1, "FM-01")
    assert "TIME_WAIT" in finding(document, "FM-11")["title"]


def test_a_reuseport_group_is_fm12(capsys, owner_lookup):
    members: list[socket.socket] = []
    try:
        for _ in range(2):
            member = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            member.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            member.bind(("127.0.0.1", members[0].getsockname()[1] if members else 0))
            member.listen(8)
            members.append(member)
        port = members[0].getsockname()[1]
        code, document = doctor(capsys, f"127.0.0.1:{port}")
    finally:
        for member in members:
            member.close()
    assert (code, document["verdict"]["code"]) == (0, "OK")
    assert "2 sockets listen" in finding(document, "FM-12")["title"]


def test_two_servers_on_one_port_one_per_family_is_fm06(capsys, started, owner_lookup):
    v4 = started.server("127.0.0.1")
    v6 = None
    for _ in range(10):
        try:
            v6 = started.server("::1", port=v4.port)
            break
        except PortTaken:
            v4 = started.server("127.0.0.1")
    assert v6 is not None, "no port free on both loopbacks in 10 tries"
    code, document = doctor(capsys, f":{v4.port}")
    assert (code, document["verdict"]["code"]) == (0, "OK")
    two = text(finding(document, "FM-06"))
    assert f"[{v4.proc.pid}]" in two
    assert f"[{v6.proc.pid}]" in two


# --- listening, but not serving ---------------------------------------------------------


def test_a_stopped_server_is_fm18(capsys, started, owner_lookup):
    server = started.server("127.0.0.1")
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        code, document = doctor(capsys, f"http://127.0.0.1:{server.port}/", "--timeout", "2")
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    assert code == 1
    assert document["verdict"]["code"] == "FM-18"
    assert document["verdict"]["fix"][0] == f"kill -CONT {server.proc.pid}"


def test_a_full_accept_queue_is_fm17(capsys, started, owner_lookup):
    server = started.server("127.0.0.1", "no-accept")
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


def test_a_server_that_never_answers_is_fm19(capsys, started, owner_lookup):
    server = started.server("127.0.0.1", "no-accept")
    code, document = doctor(capsys, f"http://127.0.0.1:{server.port}/", "--timeout", "2")
    assert (code, document["verdict"]["code"]) == (1, "FM-19")
    assert any(f"[{server.proc.pid}]" in line for line in document["verdict"]["evidence"])


def test_a_listener_inherited_by_a_non_server_is_fm20(capsys, owner_lookup):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    sleeper = subprocess.Popen(["sleep", "120"], pass_fds=[listener.fileno()])
    listener.close()  # now only `sleep` holds it, as after a crashed parent
    try:
        code, document = doctor(capsys, f"http://127.0.0.1:{port}/", "--timeout", "2")
        bare_code, bare = doctor(capsys, f"127.0.0.1:{port}")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert (code, document["verdict"]["code"]) == (1, "FM-20")
    assert f"kill {sleeper.pid}" in document["verdict"]["fix"]
    assert (bare_code, bare["verdict"]["code"]) == (1, "FM-20")


# --- the wrong protocol ------------------------------------------------------------------


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[int]:
    cert, key = make_certificate(tmp_path)
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


def test_a_plain_http_server_asked_with_https_is_fm22(capsys, tmp_path):
    with http_server(tmp_path) as port:
        code, document = doctor(capsys, f"https://127.0.0.1:{port}/")
    assert (code, document["verdict"]["code"]) == (1, "FM-22")
    assert "plain HTTP" in document["verdict"]["title"]
    assert any(fix.startswith("use http://") for fix in document["verdict"]["fix"])


def test_an_h2c_only_server_asked_with_http_1_is_fm23(capsys):
    with h2c_server() as port:
        code, document = doctor(capsys, f"http://127.0.0.1:{port}/")
    assert (code, document["verdict"]["code"]) == (1, "FM-23")
    assert any("--http2-prior-knowledge" in fix for fix in document["verdict"]["fix"])


def test_a_server_that_accepts_then_closes_is_fm25(capsys):
    with tcpwrapped_server() as port:
        code, document = doctor(capsys, f"127.0.0.1:{port}")
    assert (code, document["verdict"]["code"]) == (1, "FM-25")
    assert any("tcpwrapped" in line for line in document["verdict"]["evidence"])


def test_a_real_redis_is_identified_and_never_sent_http(capsys):
    from portside.diagnosis import gather

    with redis_server() as (port, log):
        assert gather.sensitive_servers_running(), "so owners are looked up before the probe"
        code, document = doctor(capsys, f"127.0.0.1:{port}")
        assert (code, document["verdict"]["code"]) == (0, "OK")
        assert "Redis (+PONG)" in document["verdict"]["title"]
        code, asked = doctor(capsys, f"redis://127.0.0.1:{port}")
        assert (code, asked["verdict"]["code"]) == (0, "OK")
        code, wrong = doctor(capsys, f"http://127.0.0.1:{port}/")
        assert (code, wrong["verdict"]["code"]) == (1, "FM-24")
        assert "speaks redis, not http" in wrong["verdict"]["title"]
        logged = log.read_text(errors="replace")
    assert "SECURITY ATTACK" not in logged, "doctor must speak Redis to Redis, never HTTP"


def test_a_real_postgresql_is_identified(capsys):
    with postgres_server() as (port, log):
        code, document = doctor(capsys, f"postgres://127.0.0.1:{port}")
        assert (code, document["verdict"]["code"]) == (0, "OK")
        assert "PostgreSQL" in document["verdict"]["title"]
        code, bare = doctor(capsys, f"127.0.0.1:{port}")
        assert (code, bare["verdict"]["code"]) == (0, "OK")
        assert "PostgreSQL" in bare["verdict"]["title"], "the owner postgres is asked its way"
        code, wrong = doctor(capsys, f"http://127.0.0.1:{port}/")
        assert (code, wrong["verdict"]["code"]) == (1, "FM-24")
        assert "speaks postgresql, not http" in wrong["verdict"]["title"]
        logged = log.read_text(errors="replace")
    assert "invalid length of startup packet" not in logged


# --- forwarders ----------------------------------------------------------------------------


def test_an_ssh_tunnel_whose_far_end_is_dead_is_fm33(capsys, tmp_path):
    with running_sshd() as sshd, bound_port() as dead:
        # The far end is a port this test holds without listening: it refuses, for certain.
        far = dead.getsockname()[1]
        with ssh_tunnel(sshd, far) as tunnel:
            code, document = doctor(capsys, f"127.0.0.1:{tunnel.listen_port}")
            http_code, over_http = doctor(capsys, f"http://127.0.0.1:{tunnel.listen_port}/")
        with http_server(tmp_path) as alive, ssh_tunnel(sshd, alive) as working:
            ok_code, ok = doctor(capsys, f"http://127.0.0.1:{working.listen_port}/")
    verdict = document["verdict"]
    assert (code, verdict["code"]) == (1, "FM-33")
    assert "SSH tunnel" in verdict["title"]
    assert f"its far end 127.0.0.1:{far} is dead" in verdict["title"]
    assert any(f"ssh[{tunnel.pid}]" in line for line in verdict["evidence"])
    assert (http_code, over_http["verdict"]["code"]) == (1, "FM-33")
    assert (ok_code, ok["verdict"]["code"]) == (0, "OK"), "a tunnel to a live server is fine"


def test_a_qemu_forward_to_a_guest_that_does_not_run_is_fm32(capsys):
    with qemu_with_hostfwd(guest_port=80) as vm:
        code, document = doctor(capsys, f"http://127.0.0.1:{vm.host_port}/", "--timeout", "2")
        bare_code, bare = doctor(capsys, f"127.0.0.1:{vm.host_port}")
    assert (code, document["verdict"]["code"]) == (1, "FM-32")
    assert "far end" in document["verdict"]["title"]
    assert any(f"[{vm.pid}]" in line for line in document["verdict"]["evidence"])
    assert (bare_code, bare["verdict"]["code"]) == (0, "OK"), "a bare port names no protocol"
    assert any("forwarding to" in line for line in bare["verdict"]["evidence"])


def test_a_docker_published_port_whose_container_port_is_dead_is_fm30():
    if os.geteuid() != 0:
        pytest.skip("a private dockerd in its own namespace needs root")
    with (
        dockerd() as engine,
        # The image's httpd listens on 80: 81 is published, but nothing answers behind it.
        published_container(engine, "127.0.0.1:{port}:81", "127.0.0.1:{port2}:80") as (_, port),
    ):
        done = engine.portside("doctor", f"http://127.0.0.1:{port}/", "--json")
        dead = json.loads(done.stdout)
        deadline = time.monotonic() + 30
        while not connects_in(engine, port + 1):  # published with the first, polled anyway
            assert time.monotonic() < deadline, "the second published port never answered"
            time.sleep(0.1)  # polling interval
        done_ok = engine.portside("doctor", f"http://127.0.0.1:{port + 1}/", "--json")
        alive = json.loads(done_ok.stdout)
    assert (done.returncode, dead["verdict"]["code"]) == (1, "FM-30")
    assert "Docker port proxy" in dead["verdict"]["title"]
    assert ":81 is dead" in dead["verdict"]["title"]
    assert any("docker-proxy[" in line for line in dead["verdict"]["evidence"])
    assert (done_ok.returncode, alive["verdict"]["code"]) == (0, "OK")


# --- proxies and firewalls ---------------------------------------------------------------------


def test_proxy_variables_are_reported(capsys, started, monkeypatch):
    server = started.server("127.0.0.1")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9/")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    code, document = doctor(capsys, f"http://127.0.0.1:{server.port}/")
    assert code == 0, "doctor's own probe never goes through the proxy"
    assert "FM-35" in codes(document)


@pytest.fixture
def nft_available() -> None:
    if not shutil.which("nft"):
        pytest.skip("needs nftables (`make test` installs it)")


def filter_input(ns: Namespace, port: int, *verdict: str) -> None:
    """One rule in a table of the namespace's own ruleset: ``tcp dport PORT VERDICT…``."""
    ns.run(["nft", "add", "table", "inet", "pstest"])
    chain = "{ type filter hook input priority 0; policy accept; }"
    ns.run(["nft", "add", "chain", "inet", "pstest", "input", chain])
    ns.run(["nft", "add", "rule", "inet", "pstest", "input", "tcp", "dport", str(port), *verdict])


def test_an_nftables_reject_is_fm26_with_the_rule(nft_available):
    with namespace("ps-rej") as ns:
        _, port = ns.server("127.0.0.1")
        filter_input(ns, port, "reject", "with", "tcp", "reset", "comment", '"ps-reject"')
        code, document = ns.portside("doctor", f"127.0.0.1:{port}")
        assert code == 1
        assert document["verdict"]["code"] == "FM-26"
        assert any("ps-reject" in line for line in document["verdict"]["evidence"])
        assert "reject" in document["verdict"]["title"]


def test_an_nftables_drop_is_fm26_timeout(nft_available):
    with namespace("ps-drop") as ns:
        _, port = ns.server("127.0.0.1")
        filter_input(ns, port, "drop")
        code, document = ns.portside("doctor", f"127.0.0.1:{port}", "--timeout", "1")
        assert code == 1
        assert document["verdict"]["code"] == "FM-26"
        assert "drop" in document["verdict"]["title"]
        assert any("drop" in line and "nft" in line for line in document["verdict"]["evidence"])


def test_icmp_rejects_are_fm26_with_their_errno(nft_available):
    with namespace("ps-icmp") as ns:
        _, port = ns.server("127.0.0.1")
        filter_input(ns, port, "reject", "with", "icmpx", "type", "host-unreachable")
        code, document = ns.portside("doctor", f"127.0.0.1:{port}")
        _, v6 = ns.server("::1")
        ns.run(["nft", "add", "rule", "inet", "pstest", "input", "tcp", "dport", str(v6),
                "reject", "with", "icmpx", "type", "admin-prohibited"])  # fmt: skip
        v6_code, v6_document = ns.portside("doctor", f"[::1]:{v6}")
    assert (code, document["verdict"]["code"]) == (1, "FM-26")
    assert "ICMP" in document["verdict"]["title"]
    assert any("EHOSTUNREACH" in line for line in document["verdict"]["evidence"])
    # ICMPv6 admin-prohibited reads as EACCES on connect: a firewall, not an LSM (FM-27).
    assert (v6_code, v6_document["verdict"]["code"]) == (1, "FM-26")
    assert any("EACCES" in line for line in v6_document["verdict"]["evidence"])


# --- refused by local policy ------------------------------------------------------------


@pytest.mark.root
def test_a_connect_refused_by_a_cgroup_bpf_program_is_fm27(tmp_path):
    """A real cgroup/connect4 program (as systemd's SocketBindDeny=/IPAddressDeny= and
    container sandboxes attach) refuses doctor's connect with EPERM, in a cgroup of the
    test's own: FM-27, not a firewall reject, not "nothing listens"."""
    from portside.sockets._owners import cgroup2_mount
    from tests.integration._cgroup_bpf import connects_refused

    mount = cgroup2_mount()
    if mount is None:
        pytest.skip("no cgroup v2 hierarchy mounted")
    with http_server(tmp_path) as port, connects_refused(mount[0], port) as group:
        probe = (
            "import os, sys\n"
            f"open({group + '/cgroup.procs'!r}, 'w').write(str(os.getpid()))\n"
            "from portside.cli import main\n"
            f"sys.exit(main(['doctor', '127.0.0.1:{port}', '--json']))\n"
        )
        inside = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
        )
        # The same doctor outside the group reaches the server.
        outside = subprocess.run(
            [sys.executable, "-m", "portside", "doctor", f"127.0.0.1:{port}", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    document = json.loads(inside.stdout)
    assert inside.returncode != 0
    assert document["verdict"]["code"] == "FM-27", document["verdict"]
    assert "EPERM" in document["verdict"]["title"]
    assert json.loads(outside.stdout)["verdict"]["code"] == "OK"


@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None,
    reason="systemd-socket-activate (package systemd) is not installed",
)
def test_a_socket_activated_port_is_fm21(capsys, free_port):
    """systemd's own socket activator, inetd-style (--accept: it keeps the listener and
    starts one `cat` per connection), holds the port: FM-21 names it. (It takes no port
    0: the port is picked by portside's rules.)"""
    port = free_port
    activator = subprocess.Popen(
        ["systemd-socket-activate", "--accept", "-l", f"127.0.0.1:{port}", "cat"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert activator.stderr is not None
        ready = activator.stderr.readline()  # "Listening on 127.0.0.1:PORT as 3."
        assert ready.startswith(f"Listening on 127.0.0.1:{port} "), ready
        _code, document = doctor(capsys, f"127.0.0.1:{port}")
    finally:
        activator.terminate()
        activator.wait(timeout=10)
        if activator.stderr is not None:
            activator.stderr.close()
    found = finding(document, "FM-21")
    assert "systemd-socket-activate" in found["title"]
    assert f"127.0.0.1:{port}" in found["title"]
