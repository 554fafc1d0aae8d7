"""Every socket-table backend this host can run finds the same real sockets.

The sockets (the "zoo") live in this process, on ports the kernel picks: TCP listeners
on 127.0.0.1, 127.0.0.2, ::1, 0.0.0.0, [::] dual-stack and [::] v6only, UDP on
127.0.0.1 and ::1, a bound-but-not-listening TCP socket, an established pair with unread
bytes, and a connection waiting in an accept queue. Readiness is select(), never a sleep.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from portside.addresses import normalise_ip
from portside.errors import BackendUnavailableError
from portside.models import (
    Endpoint,
    Exposure,
    Family,
    NetNamespace,
    OwnerStatus,
    SocketEntry,
    SocketState,
    Transport,
)
from portside.sockets import SocketBackend, SocketQuery, listeners, port_sockets, socket_table
from tests.contract._holders import start_holder, stop_holder

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the zoo uses Linux socket options")

BACKLOG = 17
UNREAD = b"u" * 100


def _ready(sock: socket.socket) -> None:
    readable, _, _ = select.select([sock], [], [], 5)
    assert readable, "socket did not become readable within 5 s"


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


Where = tuple[Transport, str, int]


def where(sock: socket.socket) -> Where:
    """(transport, normalised local ip, local port) of a socket of ours."""
    transport = Transport.TCP if sock.type == socket.SOCK_STREAM else Transport.UDP
    host, port = sock.getsockname()[:2]
    ip = normalise_ip(host)
    assert ip is not None
    return transport, ip, int(port)


def at(entries: list[SocketEntry], place: Where) -> list[SocketEntry]:
    transport, ip, port = place
    return [
        e for e in entries if e.transport is transport and e.local.ip == ip and e.local.port == port
    ]


@dataclasses.dataclass
class Zoo:
    """Real sockets of this process, by name."""

    sockets: dict[str, socket.socket]
    ipv6: bool

    def port(self, name: str) -> int:
        return int(self.sockets[name].getsockname()[1])

    def where(self, name: str) -> Where:
        return where(self.sockets[name])

    def places(self) -> set[Where]:
        """Where every zoo socket is (ports alone may repeat across addresses and
        transports, and other processes bind ports too)."""
        return {where(sock) for sock in self.sockets.values()}

    def inode(self, name: str) -> int:
        return os.fstat(self.sockets[name].fileno()).st_ino


@contextlib.contextmanager
def open_zoo() -> Iterator[Zoo]:
    ipv6 = _has_ipv6()
    with contextlib.ExitStack() as stack:
        sockets: dict[str, socket.socket] = {}

        def make(
            name: str,
            family: int,
            kind: int,
            address: tuple[str, int],
            *,
            v6only: bool | None = None,
        ) -> socket.socket:
            sock = stack.enter_context(socket.socket(family, kind))
            if v6only is not None:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
            sock.bind(address)
            if kind == socket.SOCK_STREAM and name != "bound":
                sock.listen(BACKLOG)
            sockets[name] = sock
            return sock

        make("tcp4", socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 0))
        make("tcp4b", socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.2", 0))
        make("any4", socket.AF_INET, socket.SOCK_STREAM, ("0.0.0.0", 0))
        make("udp4", socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", 0))
        make("bound", socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 0))
        if ipv6:
            make("tcp6", socket.AF_INET6, socket.SOCK_STREAM, ("::1", 0))
            make("dual", socket.AF_INET6, socket.SOCK_STREAM, ("::", 0), v6only=False)
            make("v6only", socket.AF_INET6, socket.SOCK_STREAM, ("::", 0), v6only=True)
            make("udp6", socket.AF_INET6, socket.SOCK_DGRAM, ("::1", 0))

        # An established pair on tcp4 with unread bytes on the server side ...
        listener = sockets["tcp4"]
        client = stack.enter_context(socket.create_connection(listener.getsockname()))
        _ready(listener)
        server, _ = listener.accept()
        stack.enter_context(server)
        client.sendall(UNREAD)
        _ready(server)
        sockets["client"], sockets["server"] = client, server
        if ipv6:
            # IPv4 into the dual-stack listener: the server side is ::ffff:127.0.0.1.
            dual = sockets["dual"]
            mapped = stack.enter_context(
                socket.create_connection(("127.0.0.1", dual.getsockname()[1]))
            )
            _ready(dual)
            mapped_server, _ = dual.accept()
            sockets["mapped_client"], sockets["mapped_server"] = (
                mapped,
                stack.enter_context(mapped_server),
            )
        # ... and one more connection left waiting in tcp4's accept queue.
        sockets["pending"] = stack.enter_context(socket.create_connection(listener.getsockname()))
        _ready(listener)
        yield Zoo(sockets=sockets, ipv6=ipv6)


@pytest.fixture(scope="module")
def zoo() -> Iterator[Zoo]:
    with open_zoo() as opened:
        yield opened


def available_backends() -> list[str]:
    return ["netlink", "procfs", "psutil"] if sys.platform == "linux" else ["psutil"]


@pytest.fixture(scope="module", params=available_backends())
def backend(request: pytest.FixtureRequest) -> Iterator[SocketBackend]:
    if request.param == "netlink":
        from portside.sockets._netlink import NetlinkBackend

        netlink = NetlinkBackend()
        if not netlink.is_available():
            pytest.skip("sock_diag is not available in this kernel")
        yield netlink  # owners from the kernel's task iterators, as root
    elif request.param == "procfs":
        from portside.sockets._procfs import ProcfsBackend

        # The fallback pair: no netlink, and owners found by walking /proc's fd tables.
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("PORTSIDE_BPF", "off")
            yield ProcfsBackend()
    else:
        from portside.sockets._psutil import PsutilBackend

        yield PsutilBackend()


@pytest.fixture(scope="module")
def table(zoo: Zoo, backend: SocketBackend) -> list[SocketEntry]:
    return socket_table(backend=backend)


def find(
    table: list[SocketEntry], place: Where, *, state: SocketState | None = None
) -> list[SocketEntry]:
    return [e for e in at(table, place) if state is None or e.state is state]


def the_one(table: list[SocketEntry], place: Where, state: SocketState) -> SocketEntry:
    found = find(table, place, state=state)
    assert len(found) == 1, found
    return found[0]


def owned_by_us(entry: SocketEntry) -> None:
    assert entry.owner_status is OwnerStatus.FOUND
    assert [owner.process.pid for owner in entry.owners] == [os.getpid()]
    assert all(owner.identity is None for owner in entry.owners)


LISTENERS = [
    ("tcp4", Family.IPV4, "127.0.0.1", Exposure.LOOPBACK),
    ("tcp4b", Family.IPV4, "127.0.0.2", Exposure.LOOPBACK),
    ("any4", Family.IPV4, "0.0.0.0", Exposure.ALL),
    ("tcp6", Family.IPV6, "::1", Exposure.LOOPBACK),
    ("dual", Family.IPV6, "::", Exposure.ALL),
    ("v6only", Family.IPV6, "::", Exposure.ALL),
]


@pytest.mark.parametrize(("name", "family", "ip", "exposure"), LISTENERS)
def test_tcp_listeners_are_found_with_their_address_and_owner(
    zoo, table, backend, name, family, ip, exposure
):
    if name not in zoo.sockets:
        pytest.skip("IPv6 is not available here")
    entry = the_one(table, zoo.where(name), SocketState.LISTEN)
    assert entry.family is family
    assert entry.local == Endpoint(ip=ip, port=zoo.port(name))
    assert entry.remote is None
    assert entry.exposure is exposure
    owned_by_us(entry)


@pytest.mark.parametrize(("name", "ip"), [("udp4", "127.0.0.1"), ("udp6", "::1")])
def test_udp_sockets_are_unconnected(zoo, table, name, ip):
    if name not in zoo.sockets:
        pytest.skip("IPv6 is not available here")
    entry = the_one(table, zoo.where(name), SocketState.UNCONNECTED)
    assert entry.local.ip == ip
    assert entry.family is (Family.IPV6 if ":" in ip else Family.IPV4)
    assert entry.remote is None
    owned_by_us(entry)


def test_an_established_pair_has_both_ends(zoo, table):
    client_port, server_port = zoo.port("client"), zoo.port("tcp4")
    [client] = [
        e
        for e in find(table, zoo.where("client"), state=SocketState.ESTABLISHED)
        if e.remote == Endpoint(ip="127.0.0.1", port=server_port)
    ]
    assert client.remote == Endpoint(ip="127.0.0.1", port=server_port)
    owned_by_us(client)
    server = [
        e
        for e in find(table, zoo.where("tcp4"), state=SocketState.ESTABLISHED)
        if e.remote == Endpoint(ip="127.0.0.1", port=client_port)
    ]
    assert len(server) == 1
    owned_by_us(server[0])


def test_an_ipv4_peer_of_a_dual_stack_listener_is_v4_mapped(zoo, table):
    if not zoo.ipv6:
        pytest.skip("IPv6 is not available here")
    assert zoo.where("mapped_server") == (Transport.TCP, "::ffff:127.0.0.1", zoo.port("dual"))
    [server] = [
        e
        for e in find(table, zoo.where("mapped_server"), state=SocketState.ESTABLISHED)
        if e.remote == Endpoint(ip="::ffff:127.0.0.1", port=zoo.port("mapped_client"))
    ]
    assert server.family is Family.IPV6
    assert server.exposure is Exposure.LOOPBACK
    owned_by_us(server)


def test_a_bound_tcp_socket_is_bound(zoo, table, backend):
    if backend.name != "netlink":
        pytest.skip(
            f"{backend.name} cannot see bound-only TCP sockets (/proc/net/tcp lists only hashed ones)"
        )
    entry = the_one(table, zoo.where("bound"), SocketState.BOUND)
    assert entry.local == Endpoint(ip="127.0.0.1", port=zoo.port("bound"))
    owned_by_us(entry)


def test_state_filters_keep_only_those_states(zoo, backend):
    port = zoo.port("tcp4")
    found = socket_table(
        SocketQuery(states=frozenset({SocketState.LISTEN}), port=port),
        owners=False,
        backend=backend,
    )
    assert {e.state for e in found} == {SocketState.LISTEN}
    assert [e.state for e in at(found, zoo.where("tcp4"))] == [SocketState.LISTEN]


def test_transport_filters_keep_only_that_transport(zoo, backend):
    found = socket_table(
        SocketQuery(transports=frozenset({Transport.UDP}), port=zoo.port("udp4")),
        owners=False,
        backend=backend,
    )
    assert {e.transport for e in found} == {Transport.UDP}
    assert len(at(found, zoo.where("udp4"))) == 1


def test_port_sockets_has_every_state_on_the_port(zoo, backend):
    port = zoo.port("tcp4")
    everything = port_sockets(port, namespaces=False, backend=backend)
    assert {e.local.port for e in everything} == {port}
    found = at(everything, zoo.where("tcp4"))
    states = sorted(e.state for e in found)
    # the listener, the accepted connection, the one in the accept queue
    assert states == [SocketState.ESTABLISHED, SocketState.ESTABLISHED, SocketState.LISTEN]
    remotes = {e.remote.port for e in found if e.remote is not None}
    assert remotes == {zoo.port("client"), zoo.port("pending")}


def test_listeners_are_tcp_listen_and_udp_unconnected_sorted(zoo, backend):
    ours = {
        zoo.where(name)
        for name in zoo.sockets
        if name not in ("client", "server", "pending", "bound", "mapped_client", "mapped_server")
    }
    found = [
        e
        for e in listeners(namespaces=False, backend=backend)
        if (e.transport, e.local.ip, e.local.port) in ours
    ]
    assert {(e.transport, e.local.ip, e.local.port) for e in found} == ours
    assert all(
        (e.transport, e.state)
        in {(Transport.TCP, SocketState.LISTEN), (Transport.UDP, SocketState.UNCONNECTED)}
        for e in found
    )
    keys = [(e.local.port, e.local.ip, e.transport) for e in found]
    assert keys == sorted(keys)


def test_without_owners_nothing_is_looked_up(zoo, backend):
    found = at(
        socket_table(SocketQuery(port=zoo.port("tcp4b")), owners=False, backend=backend),
        zoo.where("tcp4b"),
    )
    assert len(found) == 1
    if backend.name == "psutil":
        assert found[0].owner_status is OwnerStatus.FOUND  # psutil learns owners for free
    else:
        assert found[0].owner_status is OwnerStatus.NOT_LOOKED_UP
        assert found[0].owners == ()


def test_a_closed_connection_lingers_in_time_wait_held_by_the_kernel(backend):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        _ready(listener)
        server, _ = listener.accept()
        port = client.getsockname()[1]
        place = where(client)
        peer = listener.getsockname()[1]
        client.close()  # the active closer ends in TIME_WAIT
        _ready(server)
        assert server.recv(1) == b""
        server.close()
        deadline = time.monotonic() + 5
        while True:  # polls the kernel's state, not a guess at how long it takes
            # Ours only: an older connection from the same local port to another server
            # may still be in TIME_WAIT (ephemeral ports are reused on a busy machine).
            found = [
                e
                for e in at(socket_table(SocketQuery(port=port), backend=backend), place)
                if e.remote is not None and e.remote.port == peer
            ]
            if [e.state for e in found] == [SocketState.TIME_WAIT] or time.monotonic() > deadline:
                break
    assert [e.state for e in found] == [SocketState.TIME_WAIT]
    assert found[0].owner_status is OwnerStatus.KERNEL
    assert found[0].owners == ()


# --- what only some backends know --------------------------------------------------------


def test_uid_and_inode(zoo, table, backend):
    entry = the_one(table, zoo.where("tcp4"), SocketState.LISTEN)
    if backend.name == "psutil":
        assert (entry.uid, entry.inode) == (None, None)
    else:
        assert entry.uid == os.geteuid()
        assert entry.inode == zoo.inode("tcp4")


def test_listener_queues(zoo, table, backend):
    listener = the_one(table, zoo.where("tcp4"), SocketState.LISTEN)
    client_port = zoo.port("client")
    [server] = [
        e
        for e in find(table, zoo.where("tcp4"), state=SocketState.ESTABLISHED)
        if e.remote and e.remote.port == client_port
    ]
    if backend.name == "psutil":
        assert (listener.recv_queue, listener.send_queue) == (None, None)
        return
    assert listener.recv_queue == 1  # the pending connection
    assert listener.send_queue == (BACKLOG if backend.name == "netlink" else None)
    assert server.recv_queue == len(UNREAD)
    assert server.send_queue == 0


def test_v6only_is_told_apart_by_netlink(zoo, table, backend):
    if not zoo.ipv6:
        pytest.skip("IPv6 is not available here")
    dual = the_one(table, zoo.where("dual"), SocketState.LISTEN)
    v6only = the_one(table, zoo.where("v6only"), SocketState.LISTEN)
    v4 = the_one(table, zoo.where("tcp4"), SocketState.LISTEN)
    assert v4.v6only is None
    if backend.name == "netlink":
        assert (dual.v6only, v6only.v6only) == (False, True)
    else:
        assert (dual.v6only, v6only.v6only) == (None, None)


def _our_cgroup_inode() -> int | None:
    from portside.sockets._owners import cgroup2_mount

    mount = cgroup2_mount()
    if mount is None:
        return None
    with open("/proc/self/cgroup") as handle:
        for line in handle:
            if line.startswith("0::"):
                return os.stat(mount[0] + line[3:].rstrip("\n")).st_ino
    return None


def test_cgroup_id_is_the_cgroup_of_the_creator(zoo, table, backend):
    entry = the_one(table, zoo.where("tcp4"), SocketState.LISTEN)
    if backend.name != "netlink":
        assert entry.cgroup_id is None
        return
    expected = _our_cgroup_inode()
    if expected is None:
        pytest.skip("no cgroup v2 hierarchy mounted")
    assert entry.cgroup_id == expected


def test_a_socket_bound_to_a_device_names_it(backend):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo")
        except PermissionError:
            pytest.skip("SO_BINDTODEVICE needs CAP_NET_RAW here")
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        [entry] = at(
            socket_table(SocketQuery(port=sock.getsockname()[1]), owners=False, backend=backend),
            where(sock),
        )
    assert entry.interface == ("lo" if backend.name == "netlink" else None)


def test_namespaces_label_our_entries_with_the_host_namespace(zoo, backend):
    found = at(
        socket_table(
            SocketQuery(port=zoo.port("tcp4b")), owners=False, namespaces=True, backend=backend
        ),
        zoo.where("tcp4b"),
    )
    assert len(found) == 1
    netns = found[0].netns
    assert isinstance(netns, NetNamespace)
    assert netns.is_current
    assert netns.name == "host"
    assert netns.inode == os.stat("/proc/self/ns/net").st_ino


def test_psutil_cannot_enter_namespaces():
    from portside.sockets._psutil import PsutilBackend

    namespace = NetNamespace(
        inode=os.stat("/proc/self/ns/net").st_ino, name="host", is_current=True
    )
    with pytest.raises(BackendUnavailableError):
        PsutilBackend().entries_in_namespace(namespace, os.getpid(), SocketQuery())


# --- owners: narrowed scans that stay sound ------------------------------------------------


def test_a_socket_in_flight_in_a_unix_message_is_held_by_no_process(backend):
    """SCM_RIGHTS sent but not received: the socket lives, no fd table has it."""
    left, right = socket.socketpair()
    with left, right:
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        place = where(listener)
        socket.send_fds(left, [b"x"], [listener.fileno()])
        listener.close()
        [entry] = at(socket_table(SocketQuery(port=port), backend=backend), place)
    assert entry.state is SocketState.LISTEN
    assert entry.owner_status is OwnerStatus.NOT_VISIBLE
    assert entry.owners == ()


SYSTEM_PYTHON = "/usr/bin/python3"
NOBODY = 65534

#: Run as another user: make a listener, print "PID PORT INODE", then either keep it
#: ("keep") or hand it to the parent over the inherited unix socket (fd in argv[2]) and
#: close it.
OTHER_USER = r"""
import os, socket, sys
s = socket.create_server(("127.0.0.1", 0))
if sys.argv[1] == "give":
    socket.send_fds(socket.socket(fileno=int(sys.argv[2])), [b"x"], [s.fileno()])
    info = f"{os.getpid()} {s.getsockname()[1]} {os.fstat(s.fileno()).st_ino}"
    s.close()
else:
    info = f"{os.getpid()} {s.getsockname()[1]} {os.fstat(s.fileno()).st_ino}"
print(info, flush=True)
sys.stdin.read()
"""


def _as_nobody(
    mode: str, pass_fd: int | None = None
) -> tuple[subprocess.Popen[str], int, int, int]:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a process as another user")
    if not os.access(SYSTEM_PYTHON, os.X_OK) or shutil.which("setpriv") is None:
        pytest.skip("needs /usr/bin/python3 and setpriv to run a child as nobody")
    argv = [
        "setpriv",
        f"--reuid={NOBODY}",
        f"--regid={NOBODY}",
        "--clear-groups",
        SYSTEM_PYTHON,
        "-c",
        OTHER_USER,
        mode,
        str(pass_fd),
    ]
    child = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        pass_fds=() if pass_fd is None else (pass_fd,),
        cwd="/",
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line, "the child did not start"
    pid, port, inode = (int(word) for word in line.split())
    return child, pid, port, inode


@pytest.mark.root
@pytest.mark.usefixtures("proc_walks")  # the narrowed /proc walks, not the iterators
def test_another_users_socket_is_found_reading_only_that_users_processes():
    from portside.sockets._owners import scan_holders

    child, pid, port, inode = _as_nobody("keep")
    try:
        scan = scan_holders({inode: (NOBODY, None)})
        assert scan.holders == {inode: (pid,)}
        others = sum(
            1 for name in os.listdir("/proc") if name.isdigit() and _uid_of(name) == NOBODY
        )
        assert scan.processes_read <= others + 2  # + processes that came and went
        assert scan.processes_read < scan.processes_seen
        [entry] = at(socket_table(SocketQuery(port=port)), (Transport.TCP, "127.0.0.1", port))
        assert entry.uid == NOBODY
        assert [o.process.pid for o in entry.owners] == [pid]
    finally:
        stop_holder(child)


def _uid_of(pid: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


@pytest.mark.root
@pytest.mark.usefixtures("proc_walks")  # the narrowed /proc walks, not the iterators
def test_a_socket_passed_to_another_user_is_still_found():
    """Narrowing by uid is a search order: the holder outside it is found in phase 2."""
    from portside.sockets._owners import scan_holders

    ours, theirs = socket.socketpair()
    with ours:
        child, _pid, port, inode = _as_nobody("give", pass_fd=theirs.fileno())
        theirs.close()
        try:
            _msg, fds, _flags, _addr = socket.recv_fds(ours, 16, 1)
            with socket.socket(fileno=fds[0]) as received:
                assert os.fstat(received.fileno()).st_ino == inode
                scan = scan_holders({inode: (NOBODY, None)})
                assert scan.holders == {inode: (os.getpid(),)}
                [entry] = at(
                    socket_table(SocketQuery(port=port)), (Transport.TCP, "127.0.0.1", port)
                )
                assert entry.uid == NOBODY
                assert entry.owner_status is OwnerStatus.FOUND
                assert [o.process.pid for o in entry.owners] == [os.getpid()]
        finally:
            stop_holder(child)


@pytest.mark.root
@pytest.mark.usefixtures("proc_walks")  # the narrowed /proc walks, not the iterators
def test_a_socket_of_a_child_cgroup_is_found_reading_only_that_cgroup():
    from portside.sockets._owners import cgroup2_mount, scan_holders

    if os.geteuid() != 0:
        pytest.skip("needs root to create a cgroup")
    mount = cgroup2_mount()
    if mount is None:
        pytest.skip("no cgroup v2 hierarchy mounted")
    path = f"{mount[0]}/ps-test-{uuid.uuid4().hex[:10]}"
    os.mkdir(path)
    script = (
        "import os, socket, sys\n"
        "sys.stdin.readline()\n"  # wait until moved into the cgroup
        "s = socket.create_server(('127.0.0.1', 0))\n"
        "print(os.getpid(), s.getsockname()[1], os.fstat(s.fileno()).st_ino, flush=True)\n"
        "sys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdin is not None
        assert child.stdout is not None
        with open(f"{path}/cgroup.procs", "w") as procs:
            procs.write(str(child.pid))
        child.stdin.write("go\n")
        child.stdin.flush()
        pid, port, inode = (int(word) for word in child.stdout.readline().split())
        [entry] = at(
            socket_table(SocketQuery(port=port), owners=False), (Transport.TCP, "127.0.0.1", port)
        )
        assert entry.cgroup_id == os.stat(path).st_ino
        if shutil.which("ss"):  # ss -e names the same cgroup, by path
            shown = subprocess.run(
                ["ss", "-tlnHe", f"sport = :{port}"], capture_output=True, text=True, check=True
            ).stdout
            [cgroup_path] = re.findall(r"cgroup:(\S+)", shown)
            assert os.stat(mount[0] + cgroup_path).st_ino == entry.cgroup_id
        scan = scan_holders({inode: (entry.uid, entry.cgroup_id)})
        assert scan.holders == {inode: (pid,)}
        assert scan.processes_read <= 3  # the child (+ processes that came and went)
        assert scan.processes_read < scan.processes_seen
    finally:
        stop_holder(child)
        os.rmdir(path)


def test_a_socket_shared_with_a_child_process_lists_both_holders(backend):
    """A pre-fork server: the listener is open in the parent and in the child."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        child = subprocess.Popen(
            [sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            pass_fds=(listener.fileno(),),
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == "ready\n"
            port = listener.getsockname()[1]
            [entry] = at(socket_table(SocketQuery(port=port), backend=backend), where(listener))
            assert entry.owner_status is OwnerStatus.FOUND
            pids = [o.process.pid for o in entry.owners]
            if backend.name == "psutil":
                # psutil.net_connections reports one process per socket inode
                assert len(pids) == 1
                assert pids[0] in (os.getpid(), child.pid)
            else:
                assert pids == sorted([os.getpid(), child.pid])
        finally:
            stop_holder(child)


def test_nothing_wanted_reads_nothing():
    from portside.sockets._owners import scan_holders

    assert scan_holders({}) == ({}, 0, 0)


def test_the_facade_and_the_linux_path_import_nothing_heavy():
    probe = (
        "import sys\n"
        "from portside.sockets import port_sockets\n"
        "port_sockets(1, backend=None)\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PORTSIDE_BACKEND": "netlink"},
    )
    loaded = set(done.stdout.split())
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "portside.sockets._netlink" in loaded
    for heavy in ("psutil", "asyncio", "rich"):
        assert heavy not in loaded
        assert heavy not in imported


@pytest.mark.parametrize("readers", [2, 3])
def test_forked_readers_find_what_one_reader_finds(readers, monkeypatch):
    """The full scan shared out among forked readers: the same holders, each reader
    reaped."""
    from portside import _fdtables
    from portside.sockets import _owners

    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.create_server(("127.0.0.1", 0))) for _ in range(4)]
        children = []
        for shared in (sockets[:2], sockets[1:3]):  # socket 1 is in both children
            child = start_holder(shared)
            stack.callback(stop_holder, child)
            children.append(child.pid)
        inodes = [os.fstat(s.fileno()).st_ino for s in sockets]
        links = _owners._links(inodes)
        counted = _fdtables.fd_counts_supported()

        monkeypatch.setattr(_owners, "_readers", lambda processes: 1)
        alone = _owners._scan_every_process(_fdtables.process_ids(), links, counted)
        monkeypatch.setattr(_owners, "_readers", lambda processes: readers)
        shared_out = _owners._scan_every_process(_fdtables.process_ids(), links, counted)

        me = os.getpid()
        first, second = children
        expected = {
            inodes[0]: tuple(sorted((me, first))),
            inodes[1]: tuple(sorted((me, first, second))),
            inodes[2]: tuple(sorted((me, second))),
            inodes[3]: (me,),
        }
        assert alone.holders == expected
        assert shared_out.holders == expected
        assert os.waitpid(-1, os.WNOHANG) == (0, 0)  # no reader left unreaped


def test_one_reader_for_few_processes_or_a_threaded_caller():
    import threading

    from portside.sockets._owners import _readers

    assert _readers(10) == 1
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert _readers(10_000) == 1  # a fork would copy only this thread
    finally:
        stop.set()
        thread.join()


def test_a_single_threaded_process_reads_with_one_reader_per_cpu():
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from portside.sockets._owners import _readers; print(_readers(10_000))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    cpus = len(os.sched_getaffinity(0))
    assert int(done.stdout) == (min(cpus, 4) if cpus >= 2 else 1)
