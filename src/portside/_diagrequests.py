"""Pure NETLINK_SOCK_DIAG requests: the bytes of the ``inet_diag`` dumps portside asks for.

Apart from :mod:`portside.sockdiag` (which parses the replies, and re-exports all of
this) so that a command can send its dumps as it starts (:mod:`portside._early`), before
the data model is imported. Layouts (include/uapi/linux/)::

    struct nlmsghdr         { u32 len; u16 type; u16 flags; u32 seq; u32 pid; }
    struct inet_diag_req_v2 { u8 family, protocol, ext, pad; u32 states; struct inet_diag_sockid id; }
    struct inet_diag_req    { u8 family, src_len, dst_len, ext; struct inet_diag_sockid id;
                              u32 states; u32 dbs; }
"""

from __future__ import annotations

import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

# Linux numbers (this module is pure, so it does not ask the socket module for them).
AF_INET = 2
AF_INET6 = 10
IPPROTO_TCP = 6
IPPROTO_UDP = 17
NETLINK_SOCK_DIAG = 4

SOCK_DIAG_BY_FAMILY = 20
#: The older request (``struct inet_diag_req``): TCP only, but of both families in one
#: dump (the kernel then filters on AF_UNSPEC), so the shared tables are walked once.
TCPDIAG_GETSOCK = 18
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x01
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH

# Request attributes (enum inet_diag_req_attrs) and bytecode operations.
INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_BC_S_EQ = 11
INET_DIAG_NOCOOKIE = b"\xff" * 8

#: Kernel state numbers (include/net/tcp_states.h) that matter beyond the state names.
TCP_ESTABLISHED = 1
TCP_CLOSE = 7
TCP_LISTEN = 10
#: A pseudo-state (Linux 6.9+) that asks inet_diag for bound-only sockets; they are
#: reported with state TCP_CLOSE.
TCP_BOUND_INACTIVE = 13

#: ``idiag_states`` masks: every TCP state bit the kernel knows (the bound-only
#: pseudo-state included), every UDP one, and the listening sockets of each.
ALL_TCP_STATES = sum(1 << n for n in range(1, TCP_BOUND_INACTIVE + 1))
ALL_UDP_STATES = (1 << TCP_ESTABLISHED) | (1 << TCP_CLOSE)
LISTENING_TCP_STATES = 1 << TCP_LISTEN
LISTENING_UDP_STATES = 1 << TCP_CLOSE  # unconnected (bound) UDP sockets

NLMSGHDR = struct.Struct("=IHHII")
RTATTR = struct.Struct("=HH")
_REQ_V2 = struct.Struct("=BBBxI4s16s16sI8s")
_REQ_V1 = struct.Struct("=BBBB4s16s16sI8sII")
_BC_OP = struct.Struct("=BBH")
_HEAD = struct.Struct("=IH")  # nlmsghdr's length and type
_DONE_SIZE = NLMSGHDR.size + 4  # NLMSG_DONE: the header and an int (the dump's errno)


def port_filter(port: int) -> bytes:
    """Bytecode that accepts sockets whose local port is ``port`` (``sport = :PORT``).

    Two ``struct inet_diag_bc_op {u8 code; u8 yes; u16 no;}``: S_EQ jumps 8 bytes (to the
    end: accept) when the port matches and 12 (past the end: reject) when not; the second
    op only carries the port in its ``no`` field, in host order.
    """
    if not 0 <= port <= 0xFFFF:
        raise ValueError("port out of range")
    return _BC_OP.pack(INET_DIAG_BC_S_EQ, 8, 12) + _BC_OP.pack(0, 0, port)


def align(length: int) -> int:
    """``length`` rounded up to netlink's 4-byte alignment."""
    return (length + 3) & ~3


def dump_request(
    family: int, protocol: int, states: int, *, port: int | None = None, seq: int = 1, ext: int = 0
) -> bytes:
    """One ``SOCK_DIAG_BY_FAMILY`` dump request (``nlmsghdr`` + ``inet_diag_req_v2``
    [+ bytecode]) for ``family`` x ``protocol``, sockets in the ``states`` bitmask,
    optionally only those on local ``port``. Raises ValueError for out-of-range values."""
    if family not in (AF_INET, AF_INET6):
        raise ValueError("family must be AF_INET or AF_INET6")
    if not 0 <= protocol <= 0xFF or not 0 <= ext <= 0xFF:
        raise ValueError("protocol and ext are one byte each")
    if not 0 <= states <= 0xFFFFFFFF or not 0 <= seq <= 0xFFFFFFFF:
        raise ValueError("states and seq are 32-bit")
    body = _REQ_V2.pack(
        family, protocol, ext, states, bytes(4), bytes(16), bytes(16), 0, INET_DIAG_NOCOOKIE
    )
    return _with_header(SOCK_DIAG_BY_FAMILY, body, port, seq)


def _with_header(kind: int, body: bytes, port: int | None, seq: int) -> bytes:
    if port is not None:
        code = port_filter(port)
        body += RTATTR.pack(RTATTR.size + len(code), INET_DIAG_REQ_BYTECODE) + code
    header = NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
    return header + body


def tcp_dump_request(states: int, *, port: int | None = None, seq: int = 1, ext: int = 0) -> bytes:
    """One ``TCPDIAG_GETSOCK`` dump request (``nlmsghdr`` + ``inet_diag_req`` [+ bytecode]):
    TCP sockets of *both* families in the ``states`` bitmask, optionally only those on
    local ``port``. The kernel walks its TCP tables (shared by IPv4 and IPv6) once, where
    two :func:`dump_request` s walk them twice. Replies have the same layout, with the
    request's message type. Raises ValueError for out-of-range values."""
    if not 0 <= ext <= 0xFF:
        raise ValueError("ext is one byte")
    if not 0 <= states <= 0xFFFFFFFF or not 0 <= seq <= 0xFFFFFFFF:
        raise ValueError("states and seq are 32-bit")
    body = _REQ_V1.pack(
        0, 0, 0, ext, bytes(4), bytes(16), bytes(16), 0, INET_DIAG_NOCOOKIE, states, 0
    )
    return _with_header(TCPDIAG_GETSOCK, body, port, seq)


def table_requests(
    masks: Iterable[tuple[int, int]], port: int | None, *, tcp_in_one: bool = True
) -> list[tuple[int, int, bytes]]:
    """The dumps of one socket-table query, in the order they are sent: (protocol,
    family, request) for each, from ``masks``, (protocol, ``idiag_states`` mask) pairs,
    and the local ``port`` filter. TCP is one request of both families (family 0) when
    ``tcp_in_one``, else one per family like UDP's. A zero mask asks for nothing."""
    requests: list[tuple[int, int, bytes]] = []
    for protocol, mask in masks:
        if not mask:
            continue
        if protocol == IPPROTO_TCP and tcp_in_one:
            request = tcp_dump_request(mask, port=port, seq=len(requests) + 1)
            requests.append((protocol, 0, request))
            continue
        for family in (AF_INET, AF_INET6):
            request = dump_request(family, protocol, mask, port=port, seq=len(requests) + 1)
            requests.append((protocol, family, request))
    return requests


def dump_ended(buffer: bytes) -> bool:
    """Whether ``buffer``, one received datagram of a dump, is its last: an NLMSG_ERROR
    (a refused request), or a datagram ending in the 20-byte NLMSG_DONE (the kernel adds
    it to the last datagram of records, or sends it alone). Looks at two headers only,
    whatever the datagram's length (the parser reads every message later, and tells a
    datagram that only looks like the last from the real one: it lacks NLMSG_DONE)."""
    if len(buffer) < NLMSGHDR.size:
        return True  # nothing more can follow a cut datagram
    if _HEAD.unpack_from(buffer, 0)[1] == NLMSG_ERROR:
        return True
    if len(buffer) < _DONE_SIZE:
        return False
    return _HEAD.unpack_from(buffer, len(buffer) - _DONE_SIZE) == (_DONE_SIZE, NLMSG_DONE)
