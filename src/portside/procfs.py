"""Pure parsers for the kernel's socket tables as text: ``/proc/net/{tcp,tcp6,udp,udp6}``.

The backend reads the files; this module only turns their text into
:class:`~portside.models.SocketEntry` records. It also holds the conversions that the
netlink parser (:mod:`portside.sockdiag`) shares: kernel state numbers and packed
addresses to text. No I/O happens here.

A line of ``/proc/net/tcp`` looks like this (the header names the columns)::

    sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
     0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 41424 ...

Addresses are hex dumps of the kernel's ``__be32`` words printed as host-order integers,
so on a little-endian machine every 4-byte group is reversed.
"""

from __future__ import annotations

import sys
from functools import lru_cache

from portside._diagrequests import (  # kernel state numbers beyond KERNEL_TCP_STATES
    TCP_BOUND_INACTIVE,
    TCP_CLOSE,
    TCP_ESTABLISHED,
)
from portside.models import (
    KERNEL_TCP_STATES,
    Endpoint,
    Exposure,
    Family,
    NetNamespace,
    SocketEntry,
    SocketState,
    Transport,
)

_LITTLE_ENDIAN = sys.byteorder == "little"


def tcp_state(number: int) -> SocketState | None:
    """A kernel TCP state number as a SocketState (TCP_CLOSE with a port is BOUND)."""
    if number == TCP_BOUND_INACTIVE:
        return SocketState.BOUND
    return KERNEL_TCP_STATES.get(number)


def udp_state(number: int) -> SocketState | None:
    """A UDP socket is TCP_CLOSE (unconnected) or TCP_ESTABLISHED (connected)."""
    if number == TCP_CLOSE:
        return SocketState.UNCONNECTED
    if number == TCP_ESTABLISHED:
        return SocketState.ESTABLISHED
    return None


def ipv4_text(raw: bytes) -> str:
    """Four bytes in network order -> ``"127.0.0.1"`` (cheaper than ipaddress)."""
    return f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}"


_MAPPED_PREFIX = bytes(10) + b"\xff\xff"


@lru_cache(maxsize=4096)
def ipv6_text(raw: bytes) -> str:
    """Sixteen bytes in network order -> portside's normal text form
    (:func:`portside.addresses.format_ip`: ``::1``, ``::ffff:127.0.0.1``).

    The text ``str(ipaddress.IPv6Address(raw))`` gives (RFC 5952: lower-case hex, the
    first longest run of two or more zero groups as ``::``), without importing ipaddress.
    """
    if len(raw) != 16:
        raise ValueError("an IPv6 address is 16 bytes")
    if raw[:12] == _MAPPED_PREFIX:
        return f"::ffff:{raw[12]}.{raw[13]}.{raw[14]}.{raw[15]}"
    groups = [f"{(raw[i] << 8) | raw[i + 1]:x}" for i in range(0, 16, 2)]
    best_start, best_length = -1, 0
    start, length = -1, 0
    for index, group in enumerate(groups):
        if group == "0":
            if start < 0:
                start = index
            length += 1
            if length > best_length:
                best_start, best_length = start, length
        else:
            start, length = -1, 0
    if best_length < 2:
        return ":".join(groups)
    head = ":".join(groups[:best_start])
    tail = ":".join(groups[best_start + best_length :])
    return f"{head}::{tail}"


def raw_exposure(raw: bytes) -> Exposure:
    """:func:`portside.addresses.exposure_of` for an address as the kernel packs it (4 or
    16 bytes in network order), without parsing text: wildcard -> ALL, 127.0.0.0/8 and
    ``::1`` (also IPv4-mapped) -> LOOPBACK, anything else -> SPECIFIC."""
    if len(raw) == 16:
        if raw[:12] == _MAPPED_PREFIX:
            raw = raw[12:]
        elif raw == _IPV6_ANY:
            return Exposure.ALL
        elif raw == _IPV6_LOOPBACK:
            return Exposure.LOOPBACK
        else:
            return Exposure.SPECIFIC
    elif len(raw) != 4:
        raise ValueError("an IP address is 4 or 16 bytes")
    if raw == _IPV4_ANY:
        return Exposure.ALL
    if raw[0] == 127:
        return Exposure.LOOPBACK
    return Exposure.SPECIFIC


_IPV4_ANY = bytes(4)
_IPV6_ANY = bytes(16)
_IPV6_LOOPBACK = bytes(15) + b"\x01"

#: The wildcard addresses as text; a remote endpoint there with port 0 is "no peer".
UNSPECIFIED_IPS = frozenset({ipv4_text(bytes(4)), ipv6_text(bytes(16))})


@lru_cache(maxsize=4096)
def cached_exposure(ip: str) -> Exposure:
    """:func:`portside.addresses.exposure_of`, remembered: the same few local addresses
    recur thousands of times in a socket table, and each answer parses text."""
    from portside.addresses import exposure_of

    return exposure_of(ip)


def _hex_bytes(text: str) -> bytes:
    # bytes.fromhex accepts ASCII hex digits (and spaces, which str.split() removed);
    # anything else raises ValueError, which the caller turns into "line N".
    return bytes.fromhex(text)


def _unswap_words(raw: bytes) -> bytes:
    """The kernel printed each 32-bit word as a host-order integer: undo that."""
    if not _LITTLE_ENDIAN:
        return raw
    return b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))


def decode_address(field: str, family: Family) -> Endpoint:
    """``"0100007F:1F90"`` -> ``Endpoint(ip="127.0.0.1", port=8080)``.

    Raises ValueError when the field is not an address of ``family``.
    """
    hex_ip, colon, hex_port = field.partition(":")
    want = 8 if family is Family.IPV4 else 32
    if not colon or len(hex_ip) != want or len(hex_port) != 4:
        raise ValueError("bad address field")
    raw = _unswap_words(_hex_bytes(hex_ip))
    port = int.from_bytes(_hex_bytes(hex_port), "big")
    ip = ipv4_text(raw) if family is Family.IPV4 else ipv6_text(raw)
    return Endpoint(ip=ip, port=port)


def _decode_remote(field: str, family: Family) -> Endpoint | None:
    endpoint = decode_address(field, family)
    if endpoint.port == 0 and endpoint.ip in UNSPECIFIED_IPS:
        return None
    return endpoint


def _decimal(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ValueError("not a decimal number")
    return int(text)


def _hex_int(text: str, digits: int) -> int:
    if len(text) != digits:
        raise ValueError("bad hex field")
    return int.from_bytes(_hex_bytes(text), "big")


def _parse_line(
    fields: list[str], transport: Transport, family: Family, netns: NetNamespace | None
) -> SocketEntry:
    if len(fields) < 10 or not fields[0].endswith(":"):
        raise ValueError("too few fields")
    local = decode_address(fields[1], family)
    remote = _decode_remote(fields[2], family)
    number = _hex_int(fields[3], 2)
    state = tcp_state(number) if transport is Transport.TCP else udp_state(number)
    if state is None:
        raise ValueError("unknown state")
    tx_text, colon, rx_text = fields[4].partition(":")
    if not colon:
        raise ValueError("bad queue field")
    tx_queue = _hex_int(tx_text, 8)
    rx_queue = _hex_int(rx_text, 8)
    uid = _decimal(fields[7])
    inode = _decimal(fields[9])
    if state is SocketState.LISTEN:
        # rx_queue is the accept queue; the backlog is not in procfs (netlink has it).
        recv_queue, send_queue = rx_queue, None
    else:
        recv_queue, send_queue = rx_queue, tx_queue
    return SocketEntry(
        transport=transport,
        family=family,
        state=state,
        local=local,
        remote=remote,
        uid=uid,
        inode=inode,
        exposure=cached_exposure(local.ip),
        recv_queue=recv_queue,
        send_queue=send_queue,
        v6only=None,  # procfs cannot tell
        cgroup_id=None,
        netns=netns,
    )


def parse_proc_net(
    text: str, transport: Transport, family: Family, *, netns: NetNamespace | None = None
) -> list[SocketEntry]:
    """Every socket in the text of ``/proc/net/{tcp,tcp6,udp,udp6}``, labelled ``netns``.

    The header line (first field ``sl``) and blank lines are skipped. Raises ValueError
    naming the (1-based) line number of the first malformed line, and nothing else.
    """
    entries: list[SocketEntry] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0] == "sl":
            continue
        try:
            entries.append(_parse_line(fields, transport, family, netns))
        except ValueError:
            raise ValueError(f"line {lineno}: malformed /proc/net entry") from None
    return entries


#: The files of /proc/net and what each holds.
PROC_NET_FILES: dict[tuple[Transport, Family], str] = {
    (Transport.TCP, Family.IPV4): "tcp",
    (Transport.TCP, Family.IPV6): "tcp6",
    (Transport.UDP, Family.IPV4): "udp",
    (Transport.UDP, Family.IPV6): "udp6",
}
