"""/proc/net/{tcp,tcp6,udp,udp6} text -> SocketEntry, field by field.

The fixtures in tests/data/proc_net/ are captured from a little-endian Linux machine and
edited to round numbers: port 8080 = 1F90, 8081 = 1F91, 5353 = 14E9, 9999 = 270F.
"""

import sys
from pathlib import Path

import pytest

from portside.models import Endpoint, Exposure, Family, NetNamespace, SocketState, Transport
from portside.procfs import decode_address, parse_proc_net, tcp_state, udp_state

DATA = Path(__file__).resolve().parents[1] / "data" / "proc_net"

pytestmark = pytest.mark.skipif(
    sys.byteorder != "little", reason="fixtures hold little-endian address words"
)


def parse(name: str, transport: Transport, family: Family):
    return parse_proc_net((DATA / name).read_text(), transport, family)


def test_ipv4_tcp_listener_fields():
    entry = parse("tcp.txt", Transport.TCP, Family.IPV4)[0]
    assert entry.transport is Transport.TCP
    assert entry.family is Family.IPV4
    assert entry.state is SocketState.LISTEN
    assert entry.local == Endpoint(ip="127.0.0.1", port=8080)
    assert entry.remote is None
    assert entry.uid == 1000
    assert entry.inode == 41424
    assert entry.exposure is Exposure.LOOPBACK
    assert entry.recv_queue == 3  # the accept queue
    assert entry.send_queue is None  # the backlog is not in procfs
    assert entry.v6only is None
    assert entry.cgroup_id is None
    assert entry.interface is None
    assert entry.netns is None


def test_ipv4_wildcard_listener_is_exposed_to_all():
    entry = parse("tcp.txt", Transport.TCP, Family.IPV4)[1]
    assert entry.local == Endpoint(ip="0.0.0.0", port=2024)
    assert entry.exposure is Exposure.ALL
    assert entry.uid == 0
    assert entry.inode == 1077


def test_an_established_pair_has_both_ends_and_byte_queues():
    entries = parse("tcp.txt", Transport.TCP, Family.IPV4)
    client, server = entries[2], entries[3]
    assert client.state is SocketState.ESTABLISHED
    assert client.local == Endpoint(ip="127.0.0.1", port=54604)
    assert client.remote == Endpoint(ip="127.0.0.1", port=8080)
    assert (client.recv_queue, client.send_queue) == (0, 16)
    assert server.local == Endpoint(ip="127.0.0.1", port=8080)
    assert server.remote == Endpoint(ip="127.0.0.1", port=54604)
    assert (server.recv_queue, server.send_queue) == (5, 0)
    assert server.inode == 41426


def test_a_specific_address_and_a_remote_peer():
    entry = parse("tcp.txt", Transport.TCP, Family.IPV4)[4]
    assert entry.local == Endpoint(ip="192.168.1.10", port=22)
    assert entry.remote == Endpoint(ip="192.168.1.100", port=50000)
    assert entry.exposure is Exposure.SPECIFIC
    assert entry.send_queue == 36


def test_time_wait_has_no_inode():
    entry = parse("tcp.txt", Transport.TCP, Family.IPV4)[5]
    assert entry.state is SocketState.TIME_WAIT
    assert entry.inode == 0
    assert entry.local == Endpoint(ip="127.0.0.1", port=54608)


def test_ipv6_wildcard_loopback_and_global_listeners():
    entries = parse("tcp6.txt", Transport.TCP, Family.IPV6)
    assert [e.local for e in entries] == [
        Endpoint(ip="::", port=8081),
        Endpoint(ip="::1", port=41183),
        Endpoint(ip="::ffff:127.0.0.1", port=8081),
        Endpoint(ip="2001:db8::1", port=443),
    ]
    assert [e.exposure for e in entries] == [
        Exposure.ALL,
        Exposure.LOOPBACK,
        Exposure.LOOPBACK,
        Exposure.SPECIFIC,
    ]
    assert all(e.family is Family.IPV6 for e in entries)
    assert entries[1].recv_queue == 1
    assert entries[3].uid == 33
    assert all(e.v6only is None for e in entries)


def test_v4_mapped_established_keeps_the_ipv6_form():
    entry = parse("tcp6.txt", Transport.TCP, Family.IPV6)[2]
    assert entry.state is SocketState.ESTABLISHED
    assert entry.remote == Endpoint(ip="::ffff:127.0.0.1", port=57786)
    assert (entry.recv_queue, entry.send_queue) == (7, 0)
    assert entry.inode == 13417


def test_udp_states_are_unconnected_and_established():
    bound, connected = parse("udp.txt", Transport.UDP, Family.IPV4)
    assert bound.transport is Transport.UDP
    assert bound.state is SocketState.UNCONNECTED
    assert bound.local == Endpoint(ip="127.0.0.1", port=5353)
    assert bound.remote is None
    assert (bound.recv_queue, bound.send_queue) == (768, 0)
    assert bound.uid == 110
    assert connected.state is SocketState.ESTABLISHED
    assert connected.remote == Endpoint(ip="127.0.0.1", port=5353)
    assert (connected.recv_queue, connected.send_queue) == (0, 512)


def test_udp6_sockets():
    loopback, wildcard = parse("udp6.txt", Transport.UDP, Family.IPV6)
    assert loopback.local == Endpoint(ip="::1", port=5353)
    assert loopback.inode == 13421
    assert wildcard.local == Endpoint(ip="::", port=9999)
    assert wildcard.exposure is Exposure.ALL
    assert wildcard.state is SocketState.UNCONNECTED


def test_entries_carry_the_namespace_they_were_read_in():
    netns = NetNamespace(inode=4026532000, name="t1", is_current=False)
    text = (DATA / "udp.txt").read_text()
    assert {e.netns for e in parse_proc_net(text, Transport.UDP, Family.IPV4, netns=netns)} == {
        netns
    }


def test_header_only_and_empty_text_have_no_sockets():
    header = (DATA / "tcp.txt").read_text().splitlines()[0]
    assert parse_proc_net(header, Transport.TCP, Family.IPV4) == []
    assert parse_proc_net("", Transport.TCP, Family.IPV4) == []


def test_tcp_close_with_a_port_is_bound_and_udp_states_are_their_own():
    assert tcp_state(7) is SocketState.BOUND
    assert tcp_state(13) is SocketState.BOUND
    assert tcp_state(10) is SocketState.LISTEN
    assert tcp_state(99) is None
    assert udp_state(7) is SocketState.UNCONNECTED
    assert udp_state(1) is SocketState.ESTABLISHED
    assert udp_state(10) is None


@pytest.mark.parametrize(
    ("field", "family", "expected"),
    [
        ("0100007F:1F90", Family.IPV4, Endpoint(ip="127.0.0.1", port=8080)),
        ("00000000:0000", Family.IPV4, Endpoint(ip="0.0.0.0", port=0)),
        ("00000000000000000000000001000000:0050", Family.IPV6, Endpoint(ip="::1", port=80)),
        (
            "000080FE00000000FF2302015A0100FE:0001",
            Family.IPV6,
            Endpoint(ip="fe80::102:23ff:fe00:15a", port=1),
        ),
    ],
)
def test_decode_address(field, family, expected):
    assert decode_address(field, family) == expected


@pytest.mark.parametrize(
    "line",
    [
        "   0: 0100007F:1F90 00000000:0000 0A",  # too few fields
        "   0: 0100007F1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1",
        "   0: 0100007G:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1",
        "   0: 0100007F:1F90 00000000:0000 0Z 00000000:00000000 00:00000000 00000000 0 0 1",
        "   0: 0100007F:1F90 00000000:0000 63 00000000:00000000 00:00000000 00000000 0 0 1",
        "   0: 0100007F:1F90 00000000:0000 0A 0000000000000000 00:00000000 00000000 0 0 1",
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 -1 0 1",
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 x",
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 \u0661",
        "   0  0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1",
        "   0: 0100007F:+F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1",
    ],
)
def test_malformed_lines_name_their_line_number(line):
    text = [*(DATA / "tcp.txt").read_text().splitlines()[:2], line]
    with pytest.raises(ValueError, match=r"^line 3: "):
        parse_proc_net("\n".join(text), Transport.TCP, Family.IPV4)


def test_an_ipv6_address_in_an_ipv4_file_is_malformed():
    text = (DATA / "tcp6.txt").read_text()
    with pytest.raises(ValueError, match=r"^line 2: "):
        parse_proc_net(text, Transport.TCP, Family.IPV4)
