"""Our socket table against ``ss -tanuepH``, field by field, on the same real sockets.

ss reads the same kernel interface (sock_diag) and the same /proc/PID/fd tables, so on
the sockets of this process every field both show must agree: addresses, ports, states,
queues, uid, inode, v6only and the owning pids.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator

import pytest

from portside.addresses import normalise_ip
from portside.models import Endpoint, SocketEntry, SocketState, Transport
from portside.sockets import SocketBackend, port_sockets, socket_table
from tests.contract.test_socket_backends import Zoo, open_zoo

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="ss is the Linux tool"),
    pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)"),
]

SS_STATES = {
    "ESTAB": SocketState.ESTABLISHED,
    "SYN-SENT": SocketState.SYN_SENT,
    "SYN-RECV": SocketState.SYN_RECV,
    "FIN-WAIT-1": SocketState.FIN_WAIT1,
    "FIN-WAIT-2": SocketState.FIN_WAIT2,
    "TIME-WAIT": SocketState.TIME_WAIT,
    "CLOSE-WAIT": SocketState.CLOSE_WAIT,
    "LAST-ACK": SocketState.LAST_ACK,
    "LISTEN": SocketState.LISTEN,
    "CLOSING": SocketState.CLOSING,
}


@dataclasses.dataclass(frozen=True)
class SsRow:
    transport: Transport
    state: SocketState
    recv_queue: int
    send_queue: int
    local: Endpoint
    remote: Endpoint | None
    pids: tuple[int, ...]
    inode: int
    uid: int
    v6only: bool | None


def _endpoint(text: str) -> Endpoint | None:
    """``127.0.0.1:80``, ``[::1]:80``, ``*:80`` (dual-stack any), ``0.0.0.0:*`` …"""
    host, _, port = text.rpartition(":")
    host = host.split("%", 1)[0]  # 127.0.0.1%lo: bound to a device
    if host.startswith("["):
        host = host[1:-1]
    if host == "*":
        host = "::"
    ip = normalise_ip(host)
    assert ip is not None, text
    number = 0 if port == "*" else int(port)
    return Endpoint(ip=ip, port=number)


def parse_ss(text: str) -> list[SsRow]:
    rows = []
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        netid, state_text, recv_queue, send_queue, local, peer, *rest = fields
        transport = Transport(netid)
        if state_text == "UNCONN":
            state = SocketState.UNCONNECTED if transport is Transport.UDP else SocketState.BOUND
        else:
            state = SS_STATES[state_text]
        extra = " ".join(rest)
        remote = _endpoint(peer)
        if (
            remote is not None
            and remote.port == 0
            and ipaddress.ip_address(remote.ip).is_unspecified
        ):
            remote = None
        inode = re.search(r"\bino:(\d+)", extra)
        uid = re.search(r"\buid:(\d+)", extra)
        v6only = re.search(r"\bv6only:([01])", extra)
        local_endpoint = _endpoint(local)
        assert local_endpoint is not None
        rows.append(
            SsRow(
                transport=transport,
                state=state,
                recv_queue=int(recv_queue),
                send_queue=int(send_queue),
                local=local_endpoint,
                remote=remote,
                pids=tuple(sorted({int(pid) for pid in re.findall(r"pid=(\d+)", extra)})),
                inode=int(inode.group(1)) if inode else 0,
                uid=int(uid.group(1)) if uid else 0,  # ss prints the uid only when not 0
                v6only=None if v6only is None else v6only.group(1) == "1",
            )
        )
    return rows


@pytest.fixture(scope="module")
def zoo() -> Iterator[Zoo]:
    with open_zoo() as opened:
        yield opened


def key(transport: Transport, local: Endpoint, remote: Endpoint | None) -> tuple[object, ...]:
    return (transport, local, remote)


def is_ours(zoo: Zoo, inode: int | None, remote: Endpoint | None, local: Endpoint) -> bool:
    """A zoo socket: one of our fds, or the connection still in tcp4's accept queue (no
    inode yet; on tcp4's address, its peer is our "pending" client). The address is
    checked too: other processes' sockets without an inode (TIME_WAIT) may share a port."""
    inodes = {zoo.inode(name) for name in zoo.sockets}
    _transport, ip, port = zoo.where("pending")
    _transport, listen_ip, listen_port = zoo.where("tcp4")
    return inode in inodes or (
        inode == 0
        and remote == Endpoint(ip=ip, port=port)
        and local == Endpoint(ip=listen_ip, port=listen_port)
    )


def compare(zoo: Zoo, backend: SocketBackend | None, *, netlink_fields: bool) -> None:
    table = [e for e in socket_table(backend=backend) if is_ours(zoo, e.inode, e.remote, e.local)]
    done = subprocess.run(["ss", "-tanuepH"], capture_output=True, text=True, check=True)
    rows = [r for r in parse_ss(done.stdout) if is_ours(zoo, r.inode, r.remote, r.local)]
    # ss (iproute2 6.1) does not ask for bound-only TCP sockets; everything else must match.
    ss_by_key = {key(r.transport, r.local, r.remote): r for r in rows}
    mine: dict[tuple[object, ...], SocketEntry] = {
        key(e.transport, e.local, e.remote): e for e in table if e.state is not SocketState.BOUND
    }
    assert len(mine) == len([e for e in table if e.state is not SocketState.BOUND])
    assert set(mine) == set(ss_by_key)
    assert len(rows) == (14 if zoo.ipv6 else 8)
    for k, row in ss_by_key.items():
        entry = mine[k]
        assert entry.state is row.state, k
        assert entry.recv_queue == row.recv_queue, k
        if netlink_fields or entry.state is not SocketState.LISTEN:
            assert entry.send_queue == row.send_queue, k
        assert entry.inode == row.inode, k
        assert entry.uid == row.uid, k
        assert tuple(o.process.pid for o in entry.owners) == row.pids, k
        if netlink_fields:
            assert entry.v6only == row.v6only, k


def test_netlink_table_matches_ss(zoo):
    from portside.sockets._netlink import NetlinkBackend

    compare(zoo, NetlinkBackend(), netlink_fields=True)


def test_procfs_table_matches_ss_where_procfs_knows(zoo):
    from portside.sockets._procfs import ProcfsBackend

    compare(zoo, ProcfsBackend(), netlink_fields=False)


def test_our_sockets_are_held_by_us_in_ss_too(zoo):
    done = subprocess.run(["ss", "-tanuepH"], capture_output=True, text=True, check=True)
    rows = [
        r
        for r in parse_ss(done.stdout)
        if (r.transport, r.local.ip, r.local.port) == zoo.where("tcp4")
    ]
    assert {r.state for r in rows} == {SocketState.LISTEN, SocketState.ESTABLISHED}
    assert all(r.pids in ((os.getpid(),), ()) for r in rows)
    assert any(r.pids == (os.getpid(),) for r in rows)


def test_the_kernel_port_filter_matches_the_ss_filter(zoo):
    port = zoo.port("tcp4")
    found = port_sockets(port, namespaces=False)
    done = subprocess.run(
        ["ss", "-tanuepH", f"sport = :{port}"], capture_output=True, text=True, check=True
    )
    place = zoo.where("tcp4")
    rows = [r for r in parse_ss(done.stdout) if (r.transport, r.local.ip, r.local.port) == place]
    mine = [e for e in found if (e.transport, e.local.ip, e.local.port) == place]
    assert len(rows) == 3  # the listener, the accepted connection, the queued one
    assert Counter((e.state, e.remote, e.inode) for e in mine) == Counter(
        (r.state, r.remote, r.inode) for r in rows
    )
    # everything on the port, whatever its address, in both
    assert {e.inode for e in found} == {r.inode for r in parse_ss(done.stdout)}
