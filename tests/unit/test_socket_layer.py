"""The socket layer's bookkeeping around the backends: owners filled in without
touching a caller's records, and listings in the same order however they are sorted."""

import os
import socket
import sys

import pytest

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
from portside.sockets import SocketQuery, listeners, port_sockets

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the Linux owner scan")


class KeepingBackend:
    """A backend from elsewhere that hands out the same entries every time."""

    name = "keeping"

    def __init__(self, entries: list[SocketEntry]) -> None:
        self.kept = entries

    def entries(self, query: SocketQuery) -> list[SocketEntry]:
        return list(self.kept)

    def entries_in_namespace(
        self, namespace: NetNamespace, pid: int | None, query: SocketQuery
    ) -> list[SocketEntry]:
        return list(self.kept)


def entry_for(sock: socket.socket) -> SocketEntry:
    ip, port = sock.getsockname()[:2]
    return SocketEntry(
        transport=Transport.TCP,
        family=Family.IPV4,
        state=SocketState.LISTEN,
        local=Endpoint(ip=ip, port=port),
        remote=None,
        uid=os.geteuid(),
        inode=os.fstat(sock.fileno()).st_ino,
        exposure=Exposure.LOOPBACK,
    )


def test_a_foreign_backends_entries_are_copied_not_completed_in_place():
    with socket.create_server(("127.0.0.1", 0)) as server:
        kept = entry_for(server)
        backend = KeepingBackend([kept])
        for _ in range(2):
            [found] = port_sockets(kept.local.port, namespaces=False, backend=backend)
            assert found.owner_status is OwnerStatus.FOUND
            assert [owner.process.pid for owner in found.owners] == [os.getpid()]
            assert found is not kept
        assert kept.owner_status is OwnerStatus.NOT_LOOKED_UP
        assert kept.owners == ()


def test_sockets_of_the_same_processes_share_their_owners():
    with (
        socket.create_server(("127.0.0.1", 0)) as first,
        socket.create_server(("127.0.0.1", 0)) as second,
    ):
        ports = {first.getsockname()[1], second.getsockname()[1]}
        mine = [e for e in listeners(namespaces=False) if e.local.port in ports]
        assert len(mine) == 2
        assert mine[0].owners == mine[1].owners
        assert mine[0].owners is mine[1].owners


def test_ls_orders_sockets_as_the_sorted_listeners_would():
    from portside.inspect import SocketFilter, list_sockets

    with (
        socket.create_server(("127.0.0.1", 0)) as tcp,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
    ):
        udp.bind(("127.0.0.1", tcp.getsockname()[1]))
        listed = list_sockets(SocketFilter(), namespaces=False)
        again = sorted(
            listeners(namespaces=False),
            key=lambda e: (e.local.port, e.transport, e.local.ip, e.state),
        )
        key = [(e.transport, e.local, e.inode) for e in listed]
        # Sockets may come and go between the two looks (other tests run meanwhile):
        # compare the ones both saw.
        both = {(e.transport, e.local, e.inode) for e in again} & set(key)
        assert [k for k in key if k in both] == [
            (e.transport, e.local, e.inode)
            for e in again
            if (e.transport, e.local, e.inode) in both
        ]
        assert (Transport.UDP, Endpoint(ip="127.0.0.1", port=tcp.getsockname()[1])) in {
            (k[0], k[1]) for k in key
        }


def test_tcp_of_both_families_in_one_request_is_what_one_request_per_family_gives(monkeypatch):
    """The netlink backend asks for TCP of both families at once (TCPDIAG_GETSOCK); a
    kernel that refuses it gets one request per family, with the same answer."""
    from portside.sockets import _netlink

    if not _netlink.NetlinkBackend().is_available():
        pytest.skip("this kernel does not answer sock_diag requests")
    with (
        socket.create_server(("127.0.0.1", 0)) as v4,
        socket.create_server(("::1", 0), family=socket.AF_INET6) as v6,
        socket.socket(socket.AF_INET6) as bound,
    ):
        bound.bind(("::1", 0))
        ours = {os.fstat(sock.fileno()).st_ino: sock.getsockname()[1] for sock in (v4, v6, bound)}

        def mine() -> list[tuple[object, ...]]:
            # Only our sockets: others may come and go on the same port numbers meanwhile.
            found = []
            for port in sorted(set(ours.values())):
                for entry in _netlink.query_entries(SocketQuery(port=port)):
                    if entry.inode in ours:
                        found.append(
                            (entry.family, entry.state, entry.local, entry.inode, entry.v6only)
                        )
            return sorted(found, key=repr)

        monkeypatch.setattr(_netlink, "_TCP_REQUEST_REFUSED", [])
        together = mine()
        monkeypatch.setattr(_netlink, "_TCP_REQUEST_REFUSED", [True])
        apart = mine()
    assert together == apart
    assert {(family, state) for family, state, *_ in together} == {
        (Family.IPV4, SocketState.LISTEN),
        (Family.IPV6, SocketState.LISTEN),
        (Family.IPV6, SocketState.BOUND),
    }


def test_the_reads_a_table_is_dated_by_are_this_threads_own():
    """A backend's note of a read lands in the list of the table its thread is
    gathering, innermost first; another thread's notes never do."""
    import threading

    from portside.sockets._backend import end_reads, gather_reads, note_table_read

    note_table_read(1.0)  # nobody is gathering: kept nowhere
    outer = gather_reads()
    try:
        note_table_read(2.0)
        inner = gather_reads()
        try:
            note_table_read(3.0)
            elsewhere = threading.Thread(target=note_table_read, args=(4.0,))
            elsewhere.start()
            elsewhere.join()
        finally:
            end_reads()
        note_table_read(5.0)
    finally:
        end_reads()
    assert (outer, inner) == ([2.0, 5.0], [3.0])
