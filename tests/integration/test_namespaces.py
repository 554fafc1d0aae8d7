"""Sockets in other network namespaces: found, labelled with their namespace, with owners.

Each test makes its own uniquely named namespace (``ip netns add ps-test-…``) or an
unnamed one (``unshare --net``), starts a listener inside it that prints its port (the
readiness signal), and removes everything it made; only the processes it started are
ended, by pid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from portside.models import OwnerStatus, SocketEntry, SocketState, Transport
from portside.sockets import SocketBackend, SocketQuery, listeners, port_sockets, socket_table

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(sys.platform != "linux", reason="network namespaces are Linux"),
    pytest.mark.skipif(
        os.geteuid() != 0, reason="needs root to create and enter network namespaces"
    ),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2 (`ip`)"),
]

#: Binds a TCP listener on 127.0.0.1:0 and a UDP socket on 127.0.0.1:0, prints
#: "PID TCP_PORT UDP_PORT TCP_INODE", then waits for stdin to close.
LISTENER = r"""
import os, socket, sys
tcp = socket.socket(); tcp.bind(("127.0.0.1", 0)); tcp.listen(8)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(("127.0.0.1", 0))
print(os.getpid(), tcp.getsockname()[1], udp.getsockname()[1], os.fstat(tcp.fileno()).st_ino, flush=True)
sys.stdin.read()
"""


class Child:
    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # printed once it listens
        if not line:
            self.stop()
            pytest.fail(f"listener did not start: {argv}")
        pid, tcp_port, udp_port, inode = (int(word) for word in line.split())
        self.pid, self.tcp_port, self.udp_port, self.inode = pid, tcp_port, udp_port, inode

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # our own child, by its pid
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def named_namespace() -> Iterator[str]:
    name = f"ps-test-{uuid.uuid4().hex[:10]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture(scope="module")
def namespace() -> Iterator[str]:
    with named_namespace() as name:
        yield name


@pytest.fixture(scope="module")
def child(namespace: str) -> Iterator[Child]:
    started = Child(["ip", "netns", "exec", namespace, sys.executable, "-c", LISTENER])
    try:
        yield started
    finally:
        started.stop()


def _backend(name: str) -> SocketBackend:
    if name == "netlink":
        from portside.sockets._netlink import NetlinkBackend

        return NetlinkBackend()
    from portside.sockets._procfs import ProcfsBackend

    return ProcfsBackend()


@pytest.fixture(params=["netlink", "procfs"])
def backend(request: pytest.FixtureRequest) -> SocketBackend:
    return _backend(request.param)


def in_namespace(entries: list[SocketEntry], name: str) -> list[SocketEntry]:
    return [e for e in entries if e.netns is not None and e.netns.name == name]


def test_socket_table_finds_the_listener_labelled_with_its_namespace(namespace, child, backend):
    table = socket_table(namespaces=True, backend=backend)
    mine = in_namespace(table, namespace)
    tcp = [e for e in mine if e.transport is Transport.TCP and e.local.port == child.tcp_port]
    assert len(tcp) == 1
    entry = tcp[0]
    assert entry.state is SocketState.LISTEN
    assert entry.local.ip == "127.0.0.1"
    assert entry.inode == child.inode
    assert entry.netns is not None
    assert entry.netns.is_current is False
    assert entry.netns.inode == os.stat(f"/run/netns/{namespace}").st_ino
    assert entry.owner_status is OwnerStatus.FOUND
    assert [o.process.pid for o in entry.owners] == [child.pid]
    # the host's own entries are labelled too, and none of them is this socket
    host = [e for e in table if e.netns is not None and e.netns.is_current]
    assert all(e.netns is not None and e.netns.name == "host" for e in host)
    assert child.inode not in {e.inode for e in host}


def test_without_namespaces_the_listener_is_not_listed(child, backend):
    table = socket_table(SocketQuery(port=child.tcp_port), namespaces=False, backend=backend)
    assert child.inode not in {e.inode for e in table}
    assert all(e.netns is None for e in table)


def test_listeners_include_other_namespaces(namespace, child, backend):
    found = in_namespace(listeners(backend=backend), namespace)
    assert {(e.transport, e.local.port) for e in found} >= {
        (Transport.TCP, child.tcp_port),
        (Transport.UDP, child.udp_port),
    }
    udp = [e for e in found if e.transport is Transport.UDP and e.local.port == child.udp_port]
    assert udp[0].state is SocketState.UNCONNECTED
    assert [o.process.pid for o in udp[0].owners] == [child.pid]


def test_port_sockets_looks_into_namespaces_with_the_kernel_filter(namespace, child, backend):
    found = in_namespace(port_sockets(child.tcp_port, backend=backend), namespace)
    assert [(e.transport, e.state, e.inode) for e in found] == [
        (Transport.TCP, SocketState.LISTEN, child.inode)
    ]


def test_a_socket_made_in_a_setns_thread_is_ours_and_in_that_namespace(namespace, backend):
    from portside.models import NetNamespace
    from portside.sockets._namespaces import run_in_namespace

    target = NetNamespace(
        inode=os.stat(f"/run/netns/{namespace}").st_ino, name=namespace, is_current=False
    )

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.bind(("::1", 0))
        sock.listen(3)
        return sock

    before = os.stat("/proc/thread-self/ns/net").st_ino
    with run_in_namespace(target, None, make) as sock:
        port = sock.getsockname()[1]
        found = in_namespace(port_sockets(port, backend=backend), namespace)
        assert len(found) == 1
        assert found[0].local.ip == "::1"
        assert [o.process.pid for o in found[0].owners] == [os.getpid()]
    # the calling thread never moved
    assert os.stat("/proc/thread-self/ns/net").st_ino == before != target.inode


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_an_unnamed_namespace_is_named_after_a_process_in_it(backend):
    script = f"ip link set lo up && exec {sys.executable} -c '{LISTENER}'"
    started = Child(["unshare", "--net", "sh", "-c", script])
    try:
        found = [
            e
            for e in socket_table(
                SocketQuery(port=started.tcp_port), namespaces=True, backend=backend
            )
            if e.inode == started.inode
        ]
        assert len(found) == 1
        netns = found[0].netns
        assert netns is not None
        assert netns.inode == int(os.readlink(f"/proc/{started.pid}/ns/net")[5:-1])
        assert netns.name.startswith(f"pid:{started.pid} (")
        assert [o.process.pid for o in found[0].owners] == [started.pid]
    finally:
        started.stop()


def test_namespace_discovery_lists_the_named_namespace_with_its_process(namespace, child):
    from portside.sockets._namespaces import current_namespace, other_namespaces

    host = current_namespace()
    assert host is not None
    assert host.name == "host"
    found = {ns.name: (ns, pid) for ns, pid in other_namespaces(host)}
    assert namespace in found
    ns, pid = found[namespace]
    assert ns.inode == os.stat(f"/run/netns/{namespace}").st_ino
    assert pid is not None
    assert int(os.readlink(f"/proc/{pid}/ns/net")[5:-1]) == ns.inode
    assert host.inode not in {ns.inode for ns, _ in other_namespaces(host)}


def test_a_vanished_namespace_yields_nothing(backend):
    from portside.models import NetNamespace

    with named_namespace() as name:
        target = NetNamespace(
            inode=os.stat(f"/run/netns/{name}").st_ino, name=name, is_current=False
        )
    assert backend.entries_in_namespace(target, None, SocketQuery()) == []
