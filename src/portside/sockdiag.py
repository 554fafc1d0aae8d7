"""Pure NETLINK_SOCK_DIAG messages: build ``inet_diag`` dump requests, parse the replies.

This is the kernel interface ``ss`` uses. The backend (:mod:`portside.sockets._netlink`)
owns the ``AF_NETLINK`` socket and only moves bytes; everything about the format lives
here and is tested with hand-built buffers. The layouts (include/uapi/linux/)::

    struct nlmsghdr        { u32 len; u16 type; u16 flags; u32 seq; u32 pid; }
    struct inet_diag_req_v2 { u8 family, protocol, ext, pad; u32 states; struct inet_diag_sockid id; }
    struct inet_diag_sockid { be16 sport, dport; be32 src[4], dst[4]; u32 if; u32 cookie[2]; }
    struct inet_diag_msg   { u8 family, state, timer, retrans; struct inet_diag_sockid id;
                             u32 expires, rqueue, wqueue, uid, inode; }   followed by rtattrs

A port filter travels as an ``INET_DIAG_REQ_BYTECODE`` attribute so the kernel drops
the other sockets itself (``ss 'sport = :PORT'`` does the same).
"""

from __future__ import annotations

import struct
import sys
from collections import namedtuple

from portside._diagrequests import (
    AF_INET,
    AF_INET6,
    ALL_TCP_STATES,
    ALL_UDP_STATES,
    INET_DIAG_BC_S_EQ,
    INET_DIAG_NOCOOKIE,
    INET_DIAG_REQ_BYTECODE,
    IPPROTO_TCP,
    IPPROTO_UDP,
    NETLINK_SOCK_DIAG,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_NOOP,
    NLMSGHDR,
    RTATTR,
    SOCK_DIAG_BY_FAMILY,
    TCP_BOUND_INACTIVE,
    TCP_CLOSE,
    TCP_ESTABLISHED,
    TCPDIAG_GETSOCK,
    align,
    dump_request,
    port_filter,
    tcp_dump_request,
)
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
from portside.procfs import (
    UNSPECIFIED_IPS,
    cached_exposure,
    ipv4_text,
    ipv6_text,
    raw_exposure,
    tcp_state,
    udp_state,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import NamedTuple

__all__ = [  # the request side is portside._diagrequests's, offered here with the parser
    "AF_INET",
    "AF_INET6",
    "INET_DIAG_BC_S_EQ",
    "INET_DIAG_CGROUP_ID",
    "INET_DIAG_MARK",
    "INET_DIAG_NOCOOKIE",
    "INET_DIAG_REQ_BYTECODE",
    "INET_DIAG_SHUTDOWN",
    "INET_DIAG_SKV6ONLY",
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "NETLINK_SOCK_DIAG",
    "NLMSG_DONE",
    "NLMSG_ERROR",
    "NLMSG_NOOP",
    "NLM_F_DUMP",
    "NLM_F_REQUEST",
    "SOCK_DIAG_BY_FAMILY",
    "TCPDIAG_GETSOCK",
    "DiagRecord",
    "DumpChunk",
    "dump_entries",
    "dump_request",
    "parse_dump",
    "port_filter",
    "state_mask",
    "tcp_dump_request",
    "to_entry",
]

#: Message types whose replies carry one ``inet_diag_msg`` each.
_RECORD_TYPES = (SOCK_DIAG_BY_FAMILY, TCPDIAG_GETSOCK)

# Reply attributes (enum inet_diag_attrs) this parser reads.
INET_DIAG_SHUTDOWN = 8
INET_DIAG_SKV6ONLY = 11
INET_DIAG_MARK = 15
INET_DIAG_CGROUP_ID = 21

_DIAG_MSG = struct.Struct("=BBBBHH16s16sI8sIIIII")  # ports: network order, swapped below
_U64 = struct.Struct("=Q")
_I32 = struct.Struct("=i")
_NATIVE_LITTLE = sys.byteorder == "little"

#: SocketState -> kernel state number(s) to ask for (the inverse of KERNEL_TCP_STATES).
_TCP_STATE_BITS: dict[SocketState, int] = {
    SocketState.ESTABLISHED: 1 << 1,
    SocketState.SYN_SENT: 1 << 2,
    SocketState.SYN_RECV: 1 << 3,
    SocketState.FIN_WAIT1: 1 << 4,
    SocketState.FIN_WAIT2: 1 << 5,
    SocketState.TIME_WAIT: 1 << 6,
    # A bound-only socket is TCP_CLOSE; Linux 6.9+ lists them only for the pseudo-state.
    SocketState.BOUND: (1 << TCP_CLOSE) | (1 << TCP_BOUND_INACTIVE),
    SocketState.CLOSE_WAIT: 1 << 8,
    SocketState.LAST_ACK: 1 << 9,
    SocketState.LISTEN: 1 << 10,
    SocketState.CLOSING: 1 << 11,
    SocketState.NEW_SYN_RECV: 1 << 12,
}
_UDP_STATE_BITS: dict[SocketState, int] = {
    SocketState.UNCONNECTED: 1 << TCP_CLOSE,
    SocketState.ESTABLISHED: 1 << TCP_ESTABLISHED,
}


def state_mask(transport: Transport, states: Iterable[SocketState] | None) -> int:
    """The ``idiag_states`` bitmask for ``states`` (None: every state). 0 means "none of
    these states exist for this transport": skip the dump."""
    if transport is Transport.TCP:
        if states is None:
            return ALL_TCP_STATES
        return _mask(states, _TCP_STATE_BITS)
    if states is None:
        return ALL_UDP_STATES
    return _mask(states, _UDP_STATE_BITS)


def _mask(states: Iterable[SocketState], bits: dict[SocketState, int]) -> int:
    mask = 0
    for state in states:
        mask |= bits.get(state, 0)
    return mask


if TYPE_CHECKING:

    class DiagRecord(NamedTuple):
        """One socket of a dump: ``struct inet_diag_msg`` plus the attributes portside
        uses. Addresses are text (``"127.0.0.1"``, ``"::1"``); ports are host numbers. For
        a listener ``rqueue`` is the accept-queue length and ``wqueue`` the backlog.
        ``v6only`` is None unless the kernel sent INET_DIAG_SKV6ONLY (IPv6 LISTEN/CLOSE).
        """

        family: int
        state: int
        local_ip: str
        local_port: int
        remote_ip: str
        remote_port: int
        ifindex: int
        rqueue: int
        wqueue: int
        uid: int
        inode: int
        v6only: bool | None
        cgroup_id: int | None
        shutdown: int | None
        mark: int | None

    class DumpChunk(NamedTuple):
        """What one received buffer held. ``done``: the dump ended (NLMSG_DONE, or an
        NLMSG_ERROR). ``error``: the errno the kernel reported, 0 when none."""

        records: list[DiagRecord]
        done: bool
        error: int

else:
    # The same records without typing.NamedTuple's import-time cost (this module is on
    # the path of every `portside who`); the classes above are what type checkers see.
    DiagRecord = namedtuple(
        "DiagRecord",
        "family state local_ip local_port remote_ip remote_port ifindex rqueue wqueue uid inode"
        " v6only cgroup_id shutdown mark",
    )
    DumpChunk = namedtuple("DumpChunk", "records done error")


def _address(family: int, raw: bytes) -> str:
    return ipv4_text(raw) if family == AF_INET else ipv6_text(raw)


def _record(buffer: bytes, start: int, end: int) -> DiagRecord:
    if end - start < _DIAG_MSG.size:
        raise ValueError("inet_diag_msg truncated")
    (
        family,
        state,
        _timer,
        _retrans,
        sport,
        dport,
        src,
        dst,
        ifindex,
        _cookie,
        _expires,
        rqueue,
        wqueue,
        uid,
        inode,
    ) = _DIAG_MSG.unpack_from(buffer, start)
    if family not in (AF_INET, AF_INET6):
        raise ValueError("unknown address family")
    v6only: bool | None = None
    cgroup_id: int | None = None
    shutdown: int | None = None
    mark: int | None = None
    offset = start + _DIAG_MSG.size
    while offset < end:
        if end - offset < RTATTR.size:
            raise ValueError("attribute header truncated")
        length, kind = RTATTR.unpack_from(buffer, offset)
        if length < RTATTR.size or offset + length > end:
            raise ValueError("attribute length out of bounds")
        data = offset + RTATTR.size
        size = length - RTATTR.size
        kind &= 0x3FFF  # drop NLA_F_NESTED / NLA_F_NET_BYTEORDER
        if kind == INET_DIAG_SKV6ONLY:
            if size < 1:
                raise ValueError("short INET_DIAG_SKV6ONLY")
            v6only = buffer[data] != 0
        elif kind == INET_DIAG_CGROUP_ID:
            if size < 8:
                raise ValueError("short INET_DIAG_CGROUP_ID")
            cgroup_id = _U64.unpack_from(buffer, data)[0]
        elif kind == INET_DIAG_SHUTDOWN:
            if size < 1:
                raise ValueError("short INET_DIAG_SHUTDOWN")
            shutdown = buffer[data]
        elif kind == INET_DIAG_MARK:
            if size < 4:
                raise ValueError("short INET_DIAG_MARK")
            mark = int.from_bytes(buffer[data : data + 4], "little" if _NATIVE_LITTLE else "big")
        offset += align(length)
    if _NATIVE_LITTLE:
        sport = ((sport & 0xFF) << 8) | (sport >> 8)
        dport = ((dport & 0xFF) << 8) | (dport >> 8)
    return DiagRecord(
        family,
        state,
        _address(family, src),
        sport,
        _address(family, dst),
        dport,
        ifindex,
        rqueue,
        wqueue,
        uid,
        inode,
        v6only,
        cgroup_id,
        shutdown,
        mark,
    )


def parse_dump(buffer: bytes) -> DumpChunk:
    """Parse one received netlink buffer (any number of messages).

    NLMSG_DONE and NLMSG_ERROR end the dump (an error as its positive errno, also when a
    DONE carries one); NLMSG_NOOP and unknown types are skipped. Raises ValueError, and
    nothing else, for a buffer that breaks the format.
    """
    records: list[DiagRecord] = []
    offset = 0
    total = len(buffer)
    while offset < total:
        if total - offset < NLMSGHDR.size:
            raise ValueError("netlink header truncated")
        length, kind, _flags, _seq, _pid = NLMSGHDR.unpack_from(buffer, offset)
        if length < NLMSGHDR.size or offset + length > total:
            raise ValueError("netlink message length out of bounds")
        body = offset + NLMSGHDR.size
        end = offset + length
        if kind in _RECORD_TYPES:
            records.append(_record(buffer, body, end))
        elif kind == NLMSG_DONE:
            code = _I32.unpack_from(buffer, body)[0] if end - body >= _I32.size else 0
            return DumpChunk(records, True, -code if code < 0 else 0)
        elif kind == NLMSG_ERROR:
            if end - body < _I32.size:
                raise ValueError("NLMSG_ERROR truncated")
            code = _I32.unpack_from(buffer, body)[0]
            return DumpChunk(records, True, -code if code < 0 else 0)
        offset += align(length)
    return DumpChunk(records, False, 0)


def to_entry(
    record: DiagRecord,
    transport: Transport,
    *,
    interface: str | None = None,
    netns: NetNamespace | None = None,
) -> SocketEntry | None:
    """A dump record as a SocketEntry (None for a state portside does not know).

    ``interface`` is the name of ``record.ifindex`` (the caller looks it up: that is
    I/O). For a listener ``recv_queue``/``send_queue`` are the accept queue and the
    backlog, as ``ss`` shows them.
    """
    state = tcp_state(record.state) if transport is Transport.TCP else udp_state(record.state)
    if state is None:
        return None
    remote: Endpoint | None = None
    if record.remote_port or record.remote_ip not in UNSPECIFIED_IPS:
        remote = Endpoint(ip=record.remote_ip, port=record.remote_port)
    is_v6 = record.family == AF_INET6
    return SocketEntry(
        transport=transport,
        family=Family.IPV6 if is_v6 else Family.IPV4,
        state=state,
        local=Endpoint(ip=record.local_ip, port=record.local_port),
        remote=remote,
        uid=record.uid,
        inode=record.inode,
        exposure=cached_exposure(record.local_ip),
        recv_queue=record.rqueue,
        send_queue=record.wqueue,
        v6only=record.v6only if is_v6 else None,
        cgroup_id=record.cgroup_id,
        interface=interface,
        netns=netns,
    )


# --------------------------------------------------------------------------- bulk parsing
#
# A dump is thousands of messages of one shape: the kernel writes the same attributes,
# in the same order and sizes, for every socket of one (family, protocol). dump_entries()
# parses the first message of a run the careful way (_record: every check), derives the
# run's layout from it, and reads the following messages with that layout in C
# (struct.iter_unpack), checking each one's shape (length, type, family, every attribute
# header) against the first; the first message that differs ends the run and is parsed
# the careful way. The result is exactly parse_dump() + to_entry().


class _Layout:
    """How to read a run of messages shaped like one already checked."""

    __slots__ = ("cgroup", "check", "family", "shape", "stride", "v6only", "values")

    def __init__(
        self, buffer: bytes, offset: int, length: int, message_type: int, family: int
    ) -> None:
        attributes: list[tuple[int, int, int]] = []  # (header word, kind, size) in order
        position = offset + NLMSGHDR.size + _DIAG_MSG.size
        end = offset + length
        while position < end:
            size, kind = RTATTR.unpack_from(buffer, position)
            word = _U32.unpack_from(buffer, position)[0]
            attributes.append((word, kind & 0x3FFF, size))
            position += align(size)
        self.stride = align(length)
        self.family = family
        address = "4s12x" if family == AF_INET else "16s"
        check = ["=IH10xB71x"]  # nlmsg_len, nlmsg_type, idiag_family; then each header
        values = [f"=17xB2xHH{address}{address}I8x4xIIII"]
        # Value positions: 0 state, 1 sport, 2 dport, 3 src, 4 dst, 5 ifindex, 6 rqueue,
        # 7 wqueue, 8 uid, 9 inode, then the attributes' values in order.
        index = 10
        self.v6only = self.cgroup = -1
        shape: list[int] = [length, message_type, family]
        start = offset + NLMSGHDR.size + _DIAG_MSG.size
        for word, kind, size in attributes:
            room = min(align(size), end - start) - size  # padding inside the message
            check.append(f"I{size - RTATTR.size + room}x")
            shape.append(word)
            payload = size - RTATTR.size
            if kind == INET_DIAG_SKV6ONLY:
                values.append(f"4xB{payload - 1 + room}x")
                self.v6only = index
                index += 1
            elif kind == INET_DIAG_CGROUP_ID:
                values.append(f"4xQ{payload - 8 + room}x")
                self.cgroup = index
                index += 1
            else:  # SHUTDOWN, MARK and the rest: not part of a SocketEntry
                values.append(f"{size + room}x")
            start += size + room
        tail = f"{self.stride - length}x"
        self.check = struct.Struct("".join(check) + tail)
        self.values = struct.Struct("".join(values) + tail)
        self.shape = tuple(shape)
        if self.check.size != self.stride or self.values.size != self.stride:
            raise AssertionError("layout size mismatch")  # pragma: no cover


_U32 = struct.Struct("=I")
_U16 = struct.Struct("=H")
_LAYOUTS: dict[tuple[int, ...], _Layout] = {}
_ZERO4 = bytes(4)
_ZERO16 = bytes(16)


def _layout(buffer: bytes, offset: int, length: int) -> _Layout:
    """The layout of the (already checked) message at ``offset``, cached by its shape:
    length, type, family and every attribute header."""
    kind = _U16.unpack_from(buffer, offset + 4)[0]
    key = [length, kind, buffer[offset + NLMSGHDR.size]]
    position = offset + NLMSGHDR.size + _DIAG_MSG.size
    end = offset + length
    while position < end:
        word = _U32.unpack_from(buffer, position)[0]
        key.append(word)
        position += align(word & 0xFFFF if _NATIVE_LITTLE else word >> 16)
    shape = tuple(key)
    layout = _LAYOUTS.get(shape)
    if layout is None:
        if len(_LAYOUTS) >= 64:
            _LAYOUTS.clear()
        layout = _LAYOUTS[shape] = _Layout(
            buffer, offset, length, kind, buffer[offset + NLMSGHDR.size]
        )
    return layout


_new = object.__new__


def dump_entries(
    buffer: bytes,
    transport: Transport,
    *,
    netns: NetNamespace | None = None,
    interface_name: Callable[[int], str] | None = None,
) -> tuple[list[SocketEntry], bool, int]:
    """The entries of one received buffer, and (``done``, ``error``) as in
    :func:`parse_dump`: the same as ``to_entry(record, transport, interface=...,
    netns=netns)`` for each record ``parse_dump(buffer)`` gives, in one pass.

    ``interface_name`` names a non-zero ifindex (the caller's I/O, remembered there);
    without it the interface is None. Raises ValueError where parse_dump does.
    """
    entries: list[SocketEntry] = []
    append = entries.append
    addresses: dict[bytes, tuple[str, Exposure]] = {}
    view = memoryview(buffer)
    offset = 0
    total = len(buffer)
    while offset < total:
        if total - offset < NLMSGHDR.size:
            raise ValueError("netlink header truncated")
        length, kind, _flags, _seq, _pid = NLMSGHDR.unpack_from(buffer, offset)
        if length < NLMSGHDR.size or offset + length > total:
            raise ValueError("netlink message length out of bounds")
        body = offset + NLMSGHDR.size
        end = offset + length
        if kind in _RECORD_TYPES:
            record = _record(buffer, body, end)  # the careful way, for the run's first
            layout = _layout(buffer, offset, length)
            count = (total - offset) // layout.stride
            if count:
                taken = _read_run(
                    layout,
                    view[offset : offset + count * layout.stride],
                    transport,
                    netns,
                    interface_name,
                    addresses,
                    append,
                )
                if taken:  # always: the first message has its own shape
                    offset += taken * layout.stride
                    continue
            ifindex = record.ifindex
            found = to_entry(
                record,
                transport,
                interface=interface_name(ifindex) if ifindex and interface_name else None,
                netns=netns,
            )
            if found is not None:
                append(found)
        elif kind == NLMSG_DONE:
            code = _I32.unpack_from(buffer, body)[0] if end - body >= _I32.size else 0
            return entries, True, -code if code < 0 else 0
        elif kind == NLMSG_ERROR:
            if end - body < _I32.size:
                raise ValueError("NLMSG_ERROR truncated")
            code = _I32.unpack_from(buffer, body)[0]
            return entries, True, -code if code < 0 else 0
        offset += align(length)
    return entries, False, 0


def _read_run(
    layout: _Layout,
    run: memoryview,
    transport: Transport,
    netns: NetNamespace | None,
    interface_name: Callable[[int], str] | None,
    addresses: dict[bytes, tuple[str, Exposure]],
    append: Callable[[SocketEntry], None],
) -> int:
    """Entries of the messages at the start of ``run`` shaped like ``layout`` (the first
    one is); returns how many messages were read."""
    states = _TCP_STATES if transport is Transport.TCP else _UDP_STATES
    family = layout.family
    is_v6 = family == AF_INET6
    family_value = Family.IPV6 if is_v6 else Family.IPV4
    zero = _ZERO16 if is_v6 else _ZERO4
    shape = layout.shape
    v6only_at = layout.v6only if is_v6 else -1
    cgroup_at = layout.cgroup
    not_looked_up = OwnerStatus.NOT_LOOKED_UP
    swap = _NATIVE_LITTLE
    new = _new
    taken = 0
    for checked, values in zip(
        layout.check.iter_unpack(run), layout.values.iter_unpack(run), strict=True
    ):
        if checked != shape:
            break
        taken += 1
        state, sport, dport, src, dst, ifindex, rqueue, wqueue, uid, inode = values[:10]
        state = states[state]
        if state is None:
            continue
        if swap:
            sport = ((sport & 0xFF) << 8) | (sport >> 8)
        known = addresses.get(src)
        if known is None:
            known = addresses[src] = _address_facts(family, src)
        # The records' __dict__ filled in place (see models.assemble): a quarter of the
        # cost of their __init__, for thousands of sockets.
        local = new(Endpoint)
        fields = local.__dict__
        fields["ip"] = known[0]
        fields["port"] = sport
        if dport or dst != zero:
            if swap:
                dport = ((dport & 0xFF) << 8) | (dport >> 8)
            remote: Endpoint | None = new(Endpoint)
            fields = remote.__dict__
            fields["ip"] = _address(family, dst)
            fields["port"] = dport
        else:
            remote = None
        entry = new(SocketEntry)
        fields = entry.__dict__
        fields["transport"] = transport
        fields["family"] = family_value
        fields["state"] = state
        fields["local"] = local
        fields["remote"] = remote
        fields["uid"] = uid
        fields["inode"] = inode
        fields["exposure"] = known[1]
        fields["recv_queue"] = rqueue
        fields["send_queue"] = wqueue
        fields["v6only"] = values[v6only_at] != 0 if v6only_at >= 0 else None
        fields["cgroup_id"] = values[cgroup_at] if cgroup_at >= 0 else None
        fields["interface"] = interface_name(ifindex) if ifindex and interface_name else None
        fields["netns"] = netns
        fields["owner_status"] = not_looked_up
        fields["owners"] = ()
        append(entry)
    return taken


def _address_facts(family: int, raw: bytes) -> tuple[str, Exposure]:
    return _address(family, raw), raw_exposure(raw if family == AF_INET6 else raw[:4])


#: Kernel state number -> SocketState for each transport (None: not a state we know).
_TCP_STATES: dict[int, SocketState | None] = {n: tcp_state(n) for n in range(256)}
_UDP_STATES: dict[int, SocketState | None] = {n: udp_state(n) for n in range(256)}
