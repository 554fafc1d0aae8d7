"""sock_diag requests byte by byte, and replies built by hand the way the kernel lays them out."""

import ipaddress
import struct

import pytest

from portside.models import (
    Endpoint,
    Exposure,
    Family,
    NetNamespace,
    SocketEntry,
    SocketState,
    Transport,
)
from portside.sockdiag import (
    AF_INET,
    AF_INET6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    DiagRecord,
    dump_request,
    parse_dump,
    port_filter,
    state_mask,
    to_entry,
)

NOCOOKIE = b"\xff" * 8


# --- building replies the kernel's way (independent of the code under test) -------------


def nlmsg(kind: int, payload: bytes, *, flags: int = 2, seq: int = 1) -> bytes:
    length = 16 + len(payload)
    padding = b"\0" * ((4 - length % 4) % 4)
    return struct.pack("=IHHII", length, kind, flags, seq, 0) + payload + padding


def rtattr(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * ((4 - length % 4) % 4)


def diag_msg(
    *,
    family: int = AF_INET,
    state: int = 10,
    src: str = "127.0.0.1",
    sport: int = 8080,
    dst: str = "0.0.0.0",
    dport: int = 0,
    ifindex: int = 0,
    rqueue: int = 0,
    wqueue: int = 128,
    uid: int = 1000,
    inode: int = 4242,
    attrs: bytes = b"",
) -> bytes:
    def packed(ip: str) -> bytes:
        return ipaddress.ip_address(ip).packed.ljust(16, b"\0")

    head = (
        struct.pack("=BBBB", family, state, 0, 0)
        + struct.pack(">HH", sport, dport)
        + packed(src)
        + packed(dst)
    )
    tail = (
        struct.pack("=I", ifindex) + NOCOOKIE + struct.pack("=IIIII", 0, rqueue, wqueue, uid, inode)
    )
    return nlmsg(20, head + tail + attrs)


def done(code: int = 0) -> bytes:
    return nlmsg(3, struct.pack("=i", code))


def error(code: int) -> bytes:
    return nlmsg(2, struct.pack("=i", code) + b"\0" * 16)


# --- requests ---------------------------------------------------------------------------


def test_a_dump_request_is_a_header_and_an_inet_diag_req_v2():
    request = dump_request(AF_INET, IPPROTO_TCP, 1 << 10, seq=7)
    assert len(request) == 72
    assert request[:16] == struct.pack("=IHHII", 72, 20, 0x301, 7, 0)
    assert request[16:20] == bytes([AF_INET, IPPROTO_TCP, 0, 0])
    assert request[20:24] == struct.pack("=I", 1 << 10)
    assert request[24:64] == bytes(40)  # ports, addresses, interface: any
    assert request[64:72] == NOCOOKIE


def test_a_port_filter_travels_as_inet_diag_req_bytecode():
    request = dump_request(AF_INET6, IPPROTO_UDP, 1 << 7, port=8080)
    assert len(request) == 84
    assert struct.unpack_from("=I", request)[0] == 84
    assert request[16:18] == bytes([AF_INET6, IPPROTO_UDP])
    assert request[72:76] == struct.pack("=HH", 12, 1)  # rtattr INET_DIAG_REQ_BYTECODE
    # op {S_EQ, yes=8, no=12} then op {0, 0, port}: ports in host order
    assert request[76:84] == struct.pack("=BBH", 11, 8, 12) + struct.pack("=BBH", 0, 0, 8080)
    assert request[76:84] == port_filter(8080)


def test_the_ext_byte_asks_for_extra_attributes():
    assert dump_request(AF_INET, IPPROTO_TCP, 2, ext=0x80)[18] == 0x80


@pytest.mark.parametrize(
    "kwargs",
    [
        {"family": 1, "protocol": 6, "states": 1},
        {"family": AF_INET, "protocol": 256, "states": 1},
        {"family": AF_INET, "protocol": 6, "states": -1},
        {"family": AF_INET, "protocol": 6, "states": 1 << 32},
        {"family": AF_INET, "protocol": 6, "states": 1, "port": 65536},
        {"family": AF_INET, "protocol": 6, "states": 1, "port": -1},
    ],
)
def test_out_of_range_requests_are_refused(kwargs):
    with pytest.raises(ValueError, match=r"range|must be|one byte|32-bit"):
        dump_request(**kwargs)


def test_state_masks():
    assert state_mask(Transport.TCP, {SocketState.LISTEN}) == 1 << 10
    assert state_mask(Transport.TCP, {SocketState.BOUND}) == (1 << 7) | (1 << 13)
    assert state_mask(Transport.TCP, None) == sum(1 << n for n in range(1, 14))
    assert state_mask(Transport.TCP, {SocketState.UNCONNECTED}) == 0
    assert state_mask(Transport.UDP, None) == (1 << 1) | (1 << 7)
    assert state_mask(Transport.UDP, {SocketState.UNCONNECTED}) == 1 << 7
    assert state_mask(Transport.UDP, {SocketState.LISTEN}) == 0
    assert state_mask(Transport.UDP, {SocketState.ESTABLISHED, SocketState.LISTEN}) == 1 << 1


# --- replies ----------------------------------------------------------------------------


def test_a_listener_with_its_attributes():
    attrs = (
        rtattr(8, b"\x00")  # INET_DIAG_SHUTDOWN
        + rtattr(15, struct.pack("=I", 7))  # INET_DIAG_MARK
        + rtattr(21, struct.pack("=Q", 0x1234_5678_9A))  # INET_DIAG_CGROUP_ID
        + rtattr(22, b"\x52\x00")  # INET_DIAG_SOCKOPT: not read
    )
    chunk = parse_dump(diag_msg(rqueue=3, wqueue=511, attrs=attrs) + done())
    assert chunk.done
    assert chunk.error == 0
    [record] = chunk.records
    assert record == DiagRecord(
        family=AF_INET,
        state=10,
        local_ip="127.0.0.1",
        local_port=8080,
        remote_ip="0.0.0.0",
        remote_port=0,
        ifindex=0,
        rqueue=3,
        wqueue=511,
        uid=1000,
        inode=4242,
        v6only=None,
        cgroup_id=0x1234_5678_9A,
        shutdown=0,
        mark=7,
    )


def test_ipv6_listeners_say_whether_they_are_v6only():
    buffer = (
        diag_msg(family=AF_INET6, src="::", dst="::", sport=1, attrs=rtattr(11, b"\x01"))
        + diag_msg(family=AF_INET6, src="::", dst="::", sport=2, attrs=rtattr(11, b"\x00"))
        + diag_msg(family=AF_INET6, src="::1", dst="::1", sport=3, dport=9, state=1)
    )
    records = parse_dump(buffer).records
    assert [r.v6only for r in records] == [True, False, None]
    assert [r.local_ip for r in records] == ["::", "::", "::1"]
    assert records[2].remote_ip == "::1"
    assert records[2].remote_port == 9


def test_without_done_the_dump_goes_on():
    chunk = parse_dump(diag_msg() + diag_msg(sport=8081))
    assert not chunk.done
    assert [r.local_port for r in chunk.records] == [8080, 8081]


def test_messages_after_done_are_not_read():
    chunk = parse_dump(done() + diag_msg())
    assert chunk.done
    assert chunk.records == []


def test_an_empty_buffer_is_no_records_and_not_done():
    assert parse_dump(b"") == (([], False, 0))


def test_an_error_message_ends_the_dump_with_its_errno():
    chunk = parse_dump(diag_msg() + error(-1))
    assert chunk.done
    assert chunk.error == 1
    assert len(chunk.records) == 1


def test_an_ack_is_the_end_without_error():
    assert parse_dump(error(0)) == ([], True, 0)


def test_done_may_carry_an_error():
    assert parse_dump(done(-16)).error == 16


def test_noop_and_unknown_messages_are_skipped():
    chunk = parse_dump(nlmsg(1, b"") + nlmsg(0x99, b"abc") + diag_msg() + done())
    assert [r.local_port for r in chunk.records] == [8080]


def test_attribute_type_flags_are_ignored():
    chunk = parse_dump(diag_msg(attrs=rtattr(0x8000 | 21, struct.pack("=Q", 5))))
    assert chunk.records[0].cgroup_id == 5


@pytest.mark.parametrize(
    "buffer",
    [
        b"\x10\x00\x00",  # header cut short
        struct.pack("=IHHII", 8, 20, 0, 0, 0),  # length smaller than the header
        struct.pack("=IHHII", 200, 20, 0, 0, 0) + bytes(60),  # length beyond the buffer
        nlmsg(20, bytes(40)),  # inet_diag_msg cut short
        nlmsg(2, b"\xff\xff"),  # NLMSG_ERROR without its code
        diag_msg(attrs=struct.pack("=HH", 2, 21)),  # attribute shorter than its header
        diag_msg(attrs=struct.pack("=HH", 40, 21) + bytes(4)),  # attribute beyond the message
        diag_msg(attrs=b"\x08\x00"),  # attribute header cut short
        diag_msg(attrs=rtattr(21, b"\x01\x02")),  # cgroup id shorter than u64
        diag_msg(attrs=rtattr(11, b"")),  # v6only without its byte
        diag_msg(attrs=rtattr(8, b"")),  # shutdown without its byte
        diag_msg(attrs=rtattr(15, b"\x01")),  # mark shorter than u32
        diag_msg(family=7),  # an address family sock_diag does not speak
        diag_msg() + b"\x01\x02",  # trailing garbage
    ],
)
def test_malformed_buffers_raise_value_error(buffer):
    with pytest.raises(ValueError, match=r"truncated|out of bounds|short|unknown address family"):
        parse_dump(buffer)


# --- records -> entries -----------------------------------------------------------------


BASE = DiagRecord(
    family=AF_INET,
    state=10,
    local_ip="127.0.0.1",
    local_port=8080,
    remote_ip="0.0.0.0",
    remote_port=0,
    ifindex=0,
    rqueue=2,
    wqueue=128,
    uid=1000,
    inode=77,
    v6only=None,
    cgroup_id=9,
    shutdown=0,
    mark=None,
)


def record(**overrides) -> DiagRecord:
    return BASE._replace(**overrides)


def entry_of(record: DiagRecord, transport: Transport) -> SocketEntry:
    entry = to_entry(record, transport)
    assert entry is not None
    return entry


def test_a_listener_entry_has_accept_queue_and_backlog():
    netns = NetNamespace(inode=1, name="host", is_current=True)
    entry = to_entry(record(), Transport.TCP, interface="lo", netns=netns)
    assert entry is not None
    assert entry.state is SocketState.LISTEN
    assert entry.family is Family.IPV4
    assert entry.local == Endpoint(ip="127.0.0.1", port=8080)
    assert entry.remote is None
    assert (entry.recv_queue, entry.send_queue) == (2, 128)
    assert (entry.uid, entry.inode, entry.cgroup_id) == (1000, 77, 9)
    assert entry.exposure is Exposure.LOOPBACK
    assert entry.interface == "lo"
    assert entry.netns == netns


def test_entry_states_per_transport():
    assert entry_of(record(state=7), Transport.TCP).state is SocketState.BOUND
    assert entry_of(record(state=7), Transport.UDP).state is SocketState.UNCONNECTED
    assert entry_of(record(state=1), Transport.UDP).state is SocketState.ESTABLISHED
    assert entry_of(record(state=6), Transport.TCP).state is SocketState.TIME_WAIT
    assert to_entry(record(state=10), Transport.UDP) is None
    assert to_entry(record(state=42), Transport.TCP) is None


def test_v6only_is_kept_for_ipv6_only():
    v6 = record(family=AF_INET6, local_ip="::", remote_ip="::", v6only=True)
    assert entry_of(v6, Transport.TCP).v6only is True
    assert entry_of(v6, Transport.TCP).exposure is Exposure.ALL
    assert entry_of(record(v6only=True), Transport.TCP).v6only is None


def test_a_peer_on_port_zero_or_a_wildcard_address_is_still_a_peer():
    assert entry_of(record(state=1, remote_port=5), Transport.TCP).remote == Endpoint(
        ip="0.0.0.0", port=5
    )
    assert entry_of(record(state=1, remote_ip="10.0.0.1"), Transport.TCP).remote == Endpoint(
        ip="10.0.0.1", port=0
    )
