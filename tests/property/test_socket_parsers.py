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
from portside.sockdiag import AF_INET, AF_INET6, dump_request, parse_dump, tcp_dump_request

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


@given(
    states=st.integers(0, 2**32 - 1),
    port=st.none() | st.integers(0, 65535),
    seq=st.integers(0, 2**32 - 1),
)
def test_tcp_requests_of_both_families_carry_the_states_and_the_port(states, port, seq):
    request = tcp_dump_request(states, port=port, seq=seq)
    length, kind, flags, got_seq, _pid = struct.unpack_from("=IHHII", request)
    assert length == len(request)
    assert (kind, flags, got_seq) == (18, 0x301, seq)
    assert request[16] == 0  # idiag_family: AF_UNSPEC is the kernel's choice for this request
    assert struct.unpack_from("=I", request, 68)[0] == states
    if port is None:
        assert len(request) == 76
    else:
        assert struct.unpack_from("=HH", request, 76) == (12, 1)  # INET_DIAG_REQ_BYTECODE
        assert struct.unpack_from("=H", request, 86)[0] == port


# --- sock_diag in bulk: dump_entries is parse_dump + to_entry -----------------------------


def reference_entries(buffer: bytes, transport: Transport):
    """What parse_dump + to_entry give (the careful way), or the ValueError's text."""
    from portside.sockdiag import to_entry

    try:
        chunk = parse_dump(buffer)
    except ValueError as error:
        return str(error)
    entries = []
    for record in chunk.records:
        name = f"if{record.ifindex}" if record.ifindex else None
        found = to_entry(record, transport, interface=name, netns=NAMESPACE)
        if found is not None:
            entries.append(found)
    return entries, chunk.done, chunk.error


def bulk_entries(buffer: bytes, transport: Transport):
    from portside.sockdiag import dump_entries

    try:
        entries, finished, code = dump_entries(
            buffer, transport, netns=NAMESPACE, interface_name=lambda index: f"if{index}"
        )
    except ValueError as error:
        return str(error)
    return entries, finished, code


def same_outcome(buffer: bytes, transport: Transport) -> None:
    expected = reference_entries(buffer, transport)
    got = bulk_entries(buffer, transport)
    if isinstance(expected, str) or isinstance(got, str):
        assert got == expected
        return
    assert got[1:] == expected[1:]
    assert got[0] == expected[0]
    assert [repr(entry) for entry in got[0]] == [repr(entry) for entry in expected[0]]


NAMESPACE = None

# One shape of message (family and attributes), many messages of it: what the kernel sends.
attribute_shapes = st.lists(
    st.tuples(st.sampled_from([8, 11, 15, 21, 22, 1, 0x8015]), st.integers(0, 12)), max_size=5
)


def shaped_message(family: int, shape, values, data, kind: int = 20) -> bytes:
    state, sport, dport, ifindex, rqueue, wqueue, uid, inode = values
    size = 16 if family == AF_INET6 else 4
    src = data.draw(
        st.one_of(
            st.just(bytes(size)),
            st.just(bytes(size - 1) + b"\x01"),
            st.just(bytes([127, 0, 0, 1]) + bytes(size - 4)),
            st.just(bytes(10) + b"\xff\xff\x7f\x00\x00\x01" if size == 16 else bytes(4)),
            st.binary(min_size=size, max_size=size),
        )
    ).ljust(16, b"\0")
    dst = data.draw(st.one_of(st.just(bytes(16)), st.binary(min_size=16, max_size=16)))
    attrs = b"".join(
        rtattr(kind, data.draw(st.binary(min_size=n, max_size=n))) for kind, n in shape
    )
    payload = (
        struct.pack("=BBBB", family, state, 0, 0)
        + struct.pack(">HH", sport, dport)
        + src
        + dst
        + struct.pack("=I", ifindex)
        + b"\xff" * 8
        + struct.pack("=IIIII", 0, rqueue, wqueue, uid, inode)
        + attrs
    )
    return nlmsg(kind, payload)


message_values = st.tuples(
    st.sampled_from([1, 7, 10, 6, 13, 0, 99]),
    st.integers(0, 65535),
    st.sampled_from([0, 0, 443]),
    st.sampled_from([0, 0, 3]),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
)


@given(
    family=st.sampled_from([AF_INET, AF_INET6]),
    shape=attribute_shapes,
    other_shape=attribute_shapes,
    values=st.lists(message_values, min_size=1, max_size=12),
    odd_at=st.none() | st.integers(0, 12),
    ending=st.sampled_from(["done", "error", "none", "noop"]),
    transport=st.sampled_from([Transport.TCP, Transport.UDP]),
    cut=st.none() | st.integers(0, 2000),
    kind=st.sampled_from([20, 18]),  # SOCK_DIAG_BY_FAMILY, TCPDIAG_GETSOCK replies
    data=st.data(),
)
def test_runs_of_one_shape_are_read_as_the_careful_parser_reads_them(
    family, shape, other_shape, values, odd_at, ending, transport, cut, kind, data
):
    messages = [shaped_message(family, shape, v, data, kind) for v in values]
    if odd_at is not None and odd_at <= len(messages):
        odd_family = data.draw(st.sampled_from([AF_INET, AF_INET6, 7]))
        odd_kind = data.draw(st.sampled_from([20, 18]))
        messages.insert(odd_at, shaped_message(odd_family, other_shape, values[0], data, odd_kind))
    if ending == "done":
        messages.append(nlmsg(3, struct.pack("=i", 0)))
    elif ending == "error":
        messages.append(nlmsg(2, struct.pack("=i", -16) + bytes(16)))
    elif ending == "noop":
        messages.append(nlmsg(1, b""))
    buffer = b"".join(messages)
    same_outcome(buffer, transport)
    if cut is not None:
        same_outcome(buffer[:cut], transport)


@given(buffer=st.lists(messages, max_size=8).map(b"".join), cut=st.integers(0, 900))
def test_any_structured_buffer_reads_the_same_in_bulk(buffer, cut):
    for transport in (Transport.TCP, Transport.UDP):
        same_outcome(buffer, transport)
        same_outcome(buffer[:cut], transport)


@given(data=st.binary(max_size=700))
def test_any_bytes_read_the_same_in_bulk(data):
    same_outcome(data, Transport.TCP)


# --- addresses from raw bytes --------------------------------------------------------------

raw_ipv6 = st.one_of(
    st.binary(min_size=16, max_size=16),
    st.lists(st.sampled_from([0, 0, 0, 1, 0xFFFF, 0xABCD]), min_size=8, max_size=8).map(
        lambda groups: struct.pack(">8H", *groups)
    ),
    st.binary(min_size=4, max_size=4).map(lambda v4: bytes(10) + b"\xff\xff" + v4),
)


@given(raw=raw_ipv6)
def test_ipv6_text_is_ipaddress_text_without_ipaddress(raw):
    from portside.procfs import ipv6_text

    assert ipv6_text.__wrapped__(raw) == format_ip(ipaddress.IPv6Address(raw))


@given(raw=st.one_of(raw_ipv6, st.binary(min_size=4, max_size=4), st.just(bytes([127, 9, 9, 9]))))
def test_exposure_from_raw_bytes_is_exposure_of_the_text(raw):
    from portside.procfs import ipv4_text, ipv6_text, raw_exposure

    text = ipv4_text(raw) if len(raw) == 4 else ipv6_text(raw)
    assert raw_exposure(raw) is exposure_of(text)


@pytest.mark.parametrize("kind", [20, 18])
def test_a_run_is_read_in_bulk_after_its_first_message(kind, monkeypatch):
    """The careful parser reads only the first message of a run of one shape (else the
    bulk reader silently stopped working: same answers, several times slower)."""
    import portside.sockdiag as sockdiag

    careful = []
    record = sockdiag._record

    def counted(*args):
        careful.append(args)
        return record(*args)

    monkeypatch.setattr(sockdiag, "_record", counted)
    payload = (
        struct.pack("=BBBB", AF_INET, 10, 0, 0)
        + struct.pack(">HH", 8080, 0)
        + bytes([127, 0, 0, 1]).ljust(16, b"\0")
        + bytes(16)
        + struct.pack("=I", 0)
        + b"\xff" * 8
        + struct.pack("=IIIII", 0, 0, 128, 0, 4242)
        + rtattr(21, struct.pack("=Q", 1))
    )
    buffer = nlmsg(kind, payload) * 50 + nlmsg(3, struct.pack("=i", 0))
    entries, finished, error = sockdiag.dump_entries(buffer, Transport.TCP)
    assert (len(entries), finished, error) == (50, True, 0)
    assert len(careful) == 1
