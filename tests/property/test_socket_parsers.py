"""Hypothesis on the socket-table parsers: they parse what the kernel writes, and reject
everything else with ValueError (and nothing else)."""

import ipaddress
import re
import struct
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portside.addresses import exposure_of, format_ip, normalise_ip
from portside.models import KERNEL_TCP_STATES, Endpoint, Family, SocketState, Transport
from portside.procfs import decode_address, parse_proc_net
from portside.sockdiag import AF_INET, AF_INET6, dump_request, parse_dump

LINE_ERROR = re.compile(r"^line [1-9][0-9]*: ")
HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode"

little_endian_only = pytest.mark.skipif(
    sys.byteorder != "little", reason="encodes addresses as a little-endian kernel prints them"
)


def kernel_hex(ip: str, port: int) -> str:
    """How /proc/net prints an address: each 32-bit word as a host-order integer."""
    packed = ipaddress.ip_address(ip).packed
    words = struct.unpack(
        f"<{len(packed) // 4}I", packed
    )  # the bytes as a little-endian CPU reads them
    return "".join(f"{word:08X}" for word in words) + f":{port:04X}"


# --- /proc/net text ---------------------------------------------------------------------

proc_alphabet = st.sampled_from(list("0123456789ABCDEFabcdef: \n\t-xG\u0661\u00a0"))
almost_lines = st.text(alphabet=proc_alphabet, max_size=300)


def problem(text: str, transport: Transport, family: Family) -> str | None:
    """The ValueError message of parsing ``text``, None when it parses (anything else
    escapes and fails the test)."""
    try:
        parse_proc_net(text, transport, family)
    except ValueError as error:
        return str(error)
    return None


@given(text=st.text(max_size=400))
def test_any_text_parses_or_raises_value_error_with_a_line_number(text):
    for transport in Transport:
        for family in Family:
            message = problem(text, transport, family)
            assert message is None or LINE_ERROR.match(message)


@given(body=almost_lines)
def test_hex_like_garbage_parses_or_raises_value_error_with_a_line_number(body):
    message = problem(HEADER + "\n" + body, Transport.TCP, Family.IPV4)
    assert message is None or LINE_ERROR.match(message)


@little_endian_only
@given(
    local=st.ip_addresses(v=4) | st.ip_addresses(v=6),
    ports=st.tuples(st.integers(0, 65535), st.integers(0, 65535)),
    state=st.sampled_from(sorted(KERNEL_TCP_STATES)),
    queues=st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    uid=st.integers(0, 2**32 - 1),
    inode=st.integers(0, 2**63),
    data=st.data(),
)
def test_well_formed_lines_round_trip(local, ports, state, queues, uid, inode, data):
    family = Family.IPV4 if local.version == 4 else Family.IPV6
    remote = data.draw(st.ip_addresses(v=local.version))
    line = (
        f"   0: {kernel_hex(str(local), ports[0])} {kernel_hex(str(remote), ports[1])} {state:02X} "
        f"{queues[0]:08X}:{queues[1]:08X} 00:00000000 00000000 {uid:>5} 0 {inode} 1 0000000000000000"
    )
    [entry] = parse_proc_net(HEADER + "\n" + line + "\n", Transport.TCP, family)
    assert entry.local == Endpoint(ip=format_ip(local), port=ports[0])
    assert entry.local.ip == normalise_ip(str(local))
    if remote.is_unspecified and ports[1] == 0:
        assert entry.remote is None
    else:
        assert entry.remote == Endpoint(ip=format_ip(remote), port=ports[1])
    assert entry.state is KERNEL_TCP_STATES[state]
    assert (entry.uid, entry.inode) == (uid, inode)
    assert entry.exposure is exposure_of(str(local))
    if entry.state is SocketState.LISTEN:
        assert (entry.recv_queue, entry.send_queue) == (queues[1], None)
    else:
        assert (entry.recv_queue, entry.send_queue) == (queues[1], queues[0])


@little_endian_only
@given(ip=st.ip_addresses(v=6), port=st.integers(0, 65535))
def test_ipv6_decode_inverts_kernel_encoding(ip, port):
    assert decode_address(kernel_hex(str(ip), port), Family.IPV6) == Endpoint(
        ip=format_ip(ip), port=port
    )


# --- sock_diag buffers ------------------------------------------------------------------


def nlmsg(kind: int, payload: bytes) -> bytes:
    length = 16 + len(payload)
    return struct.pack("=IHHII", length, kind, 2, 1, 0) + payload + b"\0" * ((4 - length % 4) % 4)


def rtattr(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * ((4 - length % 4) % 4)


attributes = st.lists(
    st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=12)).map(lambda a: rtattr(*a)),
    max_size=4,
).map(b"".join)

messages = st.one_of(
    st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=120)).map(lambda m: nlmsg(*m)),
    st.tuples(
        st.sampled_from([AF_INET, AF_INET6, 0, 7]), st.binary(min_size=70, max_size=70), attributes
    ).map(lambda m: nlmsg(20, bytes([m[0]]) + m[1] + b"\0\0" + m[2])),
    st.integers(-200, 200).map(lambda code: nlmsg(3, struct.pack("=i", code))),
    st.integers(-200, 200).map(lambda code: nlmsg(2, struct.pack("=i", code) + bytes(16))),
)


@given(data=st.binary(max_size=600))
def test_any_bytes_parse_or_raise_value_error(data):
    try:
        chunk = parse_dump(data)
    except ValueError:
        return
    assert chunk.error >= 0


@given(buffer=st.lists(messages, max_size=6).map(b"".join), cut=st.integers(0, 700))
def test_structured_buffers_and_their_truncations_parse_or_raise_value_error(buffer, cut):
    for candidate in (buffer, buffer[:cut]):
        try:
            chunk = parse_dump(candidate)
        except ValueError:
            continue
        assert chunk.error >= 0
        assert all(r.family in (AF_INET, AF_INET6) for r in chunk.records)


@given(
    family=st.sampled_from([AF_INET, AF_INET6]),
    local=st.binary(min_size=16, max_size=16),
    port=st.integers(0, 65535),
    values=st.tuples(*[st.integers(0, 2**32 - 1)] * 5),
    cgroup=st.integers(0, 2**64 - 1),
)
def test_a_well_formed_record_round_trips(family, local, port, values, cgroup):
    ifindex, rqueue, wqueue, uid, inode = values
    payload = (
        struct.pack("=BBBB", family, 10, 0, 0)
        + struct.pack(">HH", port, 0)
        + local
        + bytes(16)
        + struct.pack("=I", ifindex)
        + b"\xff" * 8
        + struct.pack("=IIIII", 0, rqueue, wqueue, uid, inode)
        + rtattr(21, struct.pack("=Q", cgroup))
    )
    [record] = parse_dump(nlmsg(20, payload)).records
    expected_ip = ipaddress.ip_address(local[:4] if family == AF_INET else local)
    assert record.local_ip == format_ip(expected_ip)
    assert (record.local_port, record.ifindex, record.rqueue, record.wqueue) == (
        port,
        ifindex,
        rqueue,
        wqueue,
    )
    assert (record.uid, record.inode, record.cgroup_id) == (uid, inode, cgroup)


@given(
    family=st.sampled_from([AF_INET, AF_INET6]),
    protocol=st.sampled_from([6, 17]),
    states=st.integers(0, 2**32 - 1),
    port=st.none() | st.integers(0, 65535),
    seq=st.integers(0, 2**32 - 1),
)
def test_requests_declare_their_own_length_and_carry_the_port(family, protocol, states, port, seq):
    request = dump_request(family, protocol, states, port=port, seq=seq)
    length, kind, flags, got_seq, _pid = struct.unpack_from("=IHHII", request)
    assert length == len(request)
    assert (kind, flags, got_seq) == (20, 0x301, seq)
    assert struct.unpack_from("=I", request, 20)[0] == states
    if port is None:
        assert len(request) == 72
    else:
        assert struct.unpack_from("=H", request, 82)[0] == port
