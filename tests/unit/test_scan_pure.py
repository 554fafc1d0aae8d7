"""The pure parts of ``portside.scan``: SYN packets and checksums, the BPF answer filter,
which addresses may be scanned, and the comparison with the socket table."""

from __future__ import annotations

import dataclasses
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portside.errors import TargetError, UsageError
from portside.models import (
    Endpoint,
    Exposure,
    Family,
    Owner,
    OwnerStatus,
    ProcessInfo,
    ProcessState,
    SocketEntry,
    SocketState,
    Transport,
)
from portside.scan import (
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    Mismatch,
    PortState,
    answer_filter,
    compare_with_listeners,
    internet_checksum,
    listener_answers,
    patch_syn,
    pseudo_header,
    resolve_scan_targets,
    segment_checksum_ok,
    syn_segment,
    syn_sequence,
    syn_template,
)

# --------------------------------------------------------------------------- checksums


def reference_checksum(data: bytes) -> int:
    """RFC 1071 the slow way: add 16-bit words with end-around carry, one at a time."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return (~total) & 0xFFFF


def test_rfc1071_example():
    # RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2; the checksum is its complement.
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert internet_checksum(data) == (~0xDDF2) & 0xFFFF
    assert reference_checksum(data) == (~0xDDF2) & 0xFFFF


@given(st.binary(max_size=200))
def test_checksum_matches_the_reference(data):
    assert internet_checksum(data) == reference_checksum(data)


v4 = st.ip_addresses(v=4).map(lambda a: a.packed)
v6 = st.ip_addresses(v=6).map(lambda a: a.packed)
addresses = st.one_of(st.tuples(v4, v4), st.tuples(v6, v6))
ports = st.integers(min_value=1, max_value=65535)


def test_pseudo_headers_have_the_rfc_layouts():
    four = pseudo_header(b"\x7f\0\0\x01", b"\x7f\0\0\x02", 20)
    assert four == b"\x7f\0\0\x01\x7f\0\0\x02\x00\x06\x00\x14"
    six = pseudo_header(bytes(16), bytes(15) + b"\x01", 20)
    assert len(six) == 40
    assert six[32:] == b"\0\0\0\x14\0\0\0\x06"  # 32-bit length, 3 zero bytes, next header


@given(addresses, ports, ports, st.integers(min_value=0, max_value=0xFFFF))
def test_a_syn_is_well_formed(pair, sport, dport, high):
    source, destination = pair
    segment = syn_segment(source, destination, sport, dport, syn_sequence(high, dport))
    fields = struct.unpack("!HHIIBBHHH", segment)
    assert fields[0] == sport
    assert fields[1] == dport
    assert fields[2] == (high << 16) | (0xFFFF - dport)
    assert fields[3] == 0  # no acknowledgement number on a SYN
    assert fields[4] >> 4 == 5  # 20-byte header, no options
    assert fields[5] == TCP_SYN
    assert fields[8] == 0  # urgent pointer
    data = pseudo_header(source, destination, len(segment)) + segment
    assert reference_checksum(data) == 0  # verifies with the slow reference
    assert segment_checksum_ok(source, destination, segment)


@given(addresses, ports, st.integers(min_value=0, max_value=0xFFFF), st.lists(ports, max_size=30))
def test_the_patched_template_is_the_full_computation(pair, sport, high, chosen):
    """The checksum computed once for port 0 holds for every port the template is set to."""
    source, destination = pair
    template = syn_template(source, destination, sport, high)
    for port in chosen:
        patched = bytes(patch_syn(template, high, port))
        assert patched == syn_segment(source, destination, sport, port, syn_sequence(high, port))
        assert segment_checksum_ok(source, destination, patched)


def test_every_port_and_extreme_sequence_halves_keep_a_valid_checksum():
    source, destination = socket.inet_aton("127.0.0.1"), socket.inet_aton("127.0.0.1")
    for high in (0, 1, 0x7FFF, 0xFFFF):
        template = syn_template(source, destination, 40000, high)
        for port in range(1, 65536, 7):
            assert segment_checksum_ok(source, destination, bytes(patch_syn(template, high, port)))


def test_a_corrupted_segment_does_not_verify():
    source, destination = socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")
    segment = bytearray(syn_segment(source, destination, 1234, 80, 99))
    segment[17] ^= 0x01
    assert not segment_checksum_ok(source, destination, bytes(segment))


# --------------------------------------------------------------------------- BPF


def run_bpf(program: list[bytes], packet: bytes) -> int:
    """A classic-BPF interpreter for the instructions the filter uses (linux/filter.h):
    returns how many bytes the kernel would keep (0: dropped)."""
    insns = [struct.unpack("=HBBI", insn) for insn in program]
    a = x = pc = 0
    for _ in range(len(insns)):  # no backward jumps in cBPF: bounded
        code, jt, jf, k = insns[pc]
        pc += 1
        cls, size, mode = code & 0x07, code & 0x18, code & 0xE0
        if cls == 0x00:  # BPF_LD
            offset = k if mode == 0x20 else x + k  # BPF_ABS or BPF_IND
            width = {0x00: 4, 0x08: 2, 0x10: 1}[size]
            if offset + width > len(packet):
                return 0  # a load past the end drops the packet
            a = int.from_bytes(packet[offset : offset + width], "big")
        elif cls == 0x01:  # BPF_LDX, only BPF_MSH here
            assert mode == 0xA0
            x = (packet[k] & 0x0F) * 4
        elif cls == 0x04:  # BPF_ALU, only AND K here
            assert code & 0xF0 == 0x50
            a &= k
        elif cls == 0x05:  # BPF_JMP: JEQ or JSET
            taken = a == k if code & 0xF0 == 0x10 else bool(a & k)
            pc += jt if taken else jf
        elif cls == 0x06:  # BPF_RET
            return int(k)
        else:
            raise AssertionError(f"unexpected instruction {code:#x}")
    raise AssertionError("fell off the end of the program")


def tcp(sport: int, dport: int, flags: int) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 2, 5 << 4, flags, 1024, 0, 0)


def ipv4(payload: bytes, *, protocol: int = 6, fragment: int = 0, options: bytes = b"") -> bytes:
    ihl = 5 + len(options) // 4
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x40 | ihl,
        0,
        ihl * 4 + len(payload),
        1,
        fragment,
        64,
        protocol,
        0,
        b"\x7f\0\0\x01",
        b"\x7f\0\0\x01",
    )
    return header + options + payload


OURS = 41000


@pytest.mark.parametrize(
    ("flags", "dport", "kept"),
    [
        (TCP_SYN | TCP_ACK, OURS, True),  # open
        (TCP_RST | TCP_ACK, OURS, True),  # closed
        (TCP_RST, OURS, True),
        (TCP_SYN | TCP_ACK, OURS + 1, False),  # someone else's
        (TCP_RST | TCP_ACK, 80, False),
        (TCP_SYN, OURS, False),  # a SYN (our own, seen on loopback)
        (TCP_ACK, OURS, False),
        (TCP_FIN | TCP_ACK, OURS, False),
    ],
)
@pytest.mark.parametrize("family", [4, 6])
def test_the_filter_keeps_only_answers_to_our_port(flags, dport, kept, family):
    segment = tcp(80, dport, flags)
    packet = ipv4(segment) if family == 4 else segment
    verdict = run_bpf(answer_filter(OURS, ipv4=family == 4), packet)
    assert (verdict > 0) is kept
    if kept:
        assert verdict >= len(packet)  # the headers are kept whole


def test_the_ipv4_filter_reads_past_ip_options():
    packet = ipv4(tcp(80, OURS, TCP_SYN | TCP_ACK), options=b"\x01\x01\x01\x00")
    assert run_bpf(answer_filter(OURS, ipv4=True), packet) > 0


def test_the_ipv4_filter_drops_fragments_and_other_protocols():
    program = answer_filter(OURS, ipv4=True)
    assert run_bpf(program, ipv4(tcp(80, OURS, TCP_RST), fragment=0x0010)) == 0
    assert run_bpf(program, ipv4(tcp(80, OURS, TCP_RST), protocol=17)) == 0
    assert run_bpf(program, ipv4(tcp(80, OURS, TCP_RST), fragment=0x4000)) > 0  # DF is fine
    assert run_bpf(program, b"\x45\x00") == 0  # truncated


# --------------------------------------------------------------------------- targets


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", ("127.0.0.1",)),
        (" 127.0.0.1 ", ("127.0.0.1",)),
        ("::1", ("::1",)),
        ("[::1]", ("::1",)),
        ("0:0:0:0:0:0:0:1", ("::1",)),
        ("::ffff:127.0.0.1", ("127.0.0.1",)),
        ("10.1.2.3", ("10.1.2.3",)),
    ],
)
def test_addresses_are_taken_as_given(host, expected):
    assert resolve_scan_targets(host) == expected


@pytest.mark.parametrize(
    ("host", "says"),
    [
        ("127.0.0.0/8", "is a network"),
        ("10.0.0.0/24", "is a network"),
        ("::1/128", "is a network"),
        ("192.168.1.1-20", "address range"),
        ("192.168.1.*", "address range"),
        ("10.0-3.0.1", "address range"),
        ("fe80::1-ff", "address range"),
        ("10.0.0.1,10.0.0.2", "address range"),
        ("0.0.0.0", "wildcard"),
        ("::", "wildcard"),
        ("255.255.255.255", "broadcast"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
    ],
)
def test_sweeps_are_refused(host, says):
    with pytest.raises(UsageError, match=says):
        resolve_scan_targets(host)


@pytest.mark.parametrize("host", ["", "127.0.0.1:8080", "8080", "[::1]:80"])
def test_things_that_are_not_a_host_are_target_errors(host):
    with pytest.raises(TargetError):
        resolve_scan_targets(host)


def test_localhost_resolves_to_loopback_only():
    found = resolve_scan_targets("localhost")
    assert found
    assert all(ip.startswith("127.") or ip == "::1" for ip in found)


@pytest.mark.parametrize(
    "name", ["no-such-host.invalid", "ps-scan-1-2.invalid", "beef-cafe.invalid"]
)
def test_an_unknown_name_is_a_target_error_not_a_range(name):
    with pytest.raises(TargetError, match="cannot resolve"):
        resolve_scan_targets(name)


# --------------------------------------------------------------------------- cross-check


def listener(
    ip: str,
    port: int,
    *,
    v6only: bool | None = None,
    queue: tuple[int, int] = (0, 128),
    owner: str | None = "server",
    interface: str | None = None,
) -> SocketEntry:
    owners: tuple[Owner, ...] = ()
    if owner is not None:
        process = ProcessInfo(
            pid=4242,
            ppid=1,
            name=owner,
            cmdline=(owner,),
            user="root",
            uid=0,
            cwd=None,
            start_time=None,
            state=ProcessState.SLEEPING,
        )
        owners = (Owner(process=process, identity=None),)
    return SocketEntry(
        transport=Transport.TCP,
        family=Family.IPV6 if ":" in ip else Family.IPV4,
        state=SocketState.LISTEN,
        local=Endpoint(ip=ip, port=port),
        remote=None,
        uid=0,
        inode=1,
        exposure=Exposure.LOOPBACK,
        recv_queue=queue[0],
        send_queue=queue[1],
        v6only=v6only,
        interface=interface,
        owner_status=OwnerStatus.FOUND if owners else OwnerStatus.NOT_VISIBLE,
        owners=owners,
    )


@pytest.mark.parametrize(
    ("local", "v6only", "target", "answers"),
    [
        ("127.0.0.1", None, "127.0.0.1", True),
        ("127.0.0.2", None, "127.0.0.1", False),
        ("0.0.0.0", None, "127.0.0.1", True),
        ("0.0.0.0", None, "::1", False),
        ("::", False, "127.0.0.1", True),  # dual-stack
        ("::", True, "127.0.0.1", False),  # IPV6_V6ONLY
        ("::", True, "::1", True),
        ("::1", True, "127.0.0.1", False),
        ("::ffff:127.0.0.1", False, "127.0.0.1", True),
        ("::1", True, "::1", True),
    ],
)
def test_which_listeners_answer_an_address(local, v6only, target, answers):
    assert listener_answers(listener(local, 80, v6only=v6only), target) is answers


def test_a_udp_socket_or_a_bound_socket_is_no_listener():
    entry = listener("127.0.0.1", 80)
    assert not listener_answers(dataclasses.replace(entry, transport=Transport.UDP), "127.0.0.1")
    assert not listener_answers(dataclasses.replace(entry, state=SocketState.BOUND), "127.0.0.1")


def test_the_comparison_agrees_when_the_scan_saw_every_listener():
    entries = [listener("127.0.0.1", 80), listener("0.0.0.0", 443), listener("127.0.0.1", 9999)]
    held, found = compare_with_listeners(
        "127.0.0.1", list(range(1, 1025)), frozenset({80, 443}), frozenset(), entries
    )
    assert found == []
    assert set(held) == {80, 443}  # 9999 was not scanned


def test_a_dropped_listener_is_reported_as_firewalled():
    _held, found = compare_with_listeners(
        "127.0.0.1", [80, 81], frozenset(), frozenset({80}), [listener("127.0.0.1", 80)]
    )
    (only,) = found
    assert only.kind is Mismatch.UNREACHABLE_LISTENER
    assert only.state is PortState.FILTERED
    assert only.port == 80
    assert "server[4242]" in only.message
    assert "drops" in only.message


def test_a_full_accept_queue_is_named_as_the_reason():
    _held, found = compare_with_listeners(
        "127.0.0.1",
        [80],
        frozenset(),
        frozenset({80}),
        [listener("127.0.0.1", 80, queue=(9, 8))],
    )
    assert "accept queue is full (9 waiting, backlog 8)" in found[0].message


def test_a_rejected_listener_is_reported_as_refused():
    _held, found = compare_with_listeners(
        "::1", [80], frozenset(), frozenset(), [listener("::1", 80, owner=None)]
    )
    (only,) = found
    assert only.state is PortState.CLOSED
    assert "[::1]:80" in only.message
    assert "owner not visible" in only.message
    assert "rejects" in only.message


def test_a_listener_on_another_device_is_explained():
    _held, found = compare_with_listeners(
        "127.0.0.1", [80], frozenset(), frozenset(), [listener("0.0.0.0", 80, interface="eth0")]
    )
    assert "bound to device eth0" in found[0].message


def test_an_open_port_without_listener_is_forwarded():
    _held, found = compare_with_listeners(
        "127.0.0.1", [80, 8080], frozenset({8080}), frozenset(), [listener("127.0.0.1", 80)]
    )
    kinds = {(d.kind, d.port) for d in found}
    assert kinds == {(Mismatch.UNREACHABLE_LISTENER, 80), (Mismatch.OPEN_WITHOUT_LISTENER, 8080)}
