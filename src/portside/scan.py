"""TCP port scans of one host the user names, and how the answers compare with the socket table.

:func:`scan` probes every port of a port list on each address of ``host`` and sorts the
ports into *open* (the host accepted), *closed* (it refused: RST, or an ICMP
port-unreachable) and *filtered* (no answer after the retries). Two methods:

* **SYN** (root or CAP_NET_RAW): one raw ``IPPROTO_TCP`` socket sends a bare SYN per port
  from one source port and reads the SYN-ACKs and RSTs that come back. The source port is
  reserved by binding (not listening) an ordinary TCP socket to it, so no connection of
  this machine can use it meanwhile; a SYN-ACK that arrives there finds no socket, and
  the kernel answers it with an RST, which tears down the half-open connection on the
  server (what nmap relies on too). The packet is a template patched in place: the
  destination port and the low half of the sequence number are written together, the
  latter chosen as ``0xFFFF - port`` so that their one's-complement sum, and with it the
  checksum, is the same for every port (RFC 1071/1624 arithmetic: the checksum computed
  once, for port 0, holds for all). Each answer's acknowledgement number must be that
  sequence number plus one, so stray packets are not mistaken for answers. A classic BPF
  filter on the raw socket lets through only SYN-ACKs and RSTs to our source port, and
  ICMP errors arrive through the socket's error queue (``IP_RECVERR``). On loopback the
  kernel answers each SYN inside the ``send`` call, so a full 65,535-port scan is a tight
  send/drain loop.
* **connect** (anyone): non-blocking TCP connects. On loopback a refusal is known as soon
  as ``connect`` returns, so a second ``connect`` on the same socket reads the result
  without a poll (and a refused socket is reused for the next port); the rest waits in
  epoll. A connection whose local port equals the port probed is the kernel's TCP
  simultaneous open with itself (loopback, port inside the ephemeral range, nothing
  listening): it is counted as closed, never as open.

Both keep at most ``concurrency`` probes unanswered, retransmit unanswered probes
``retries`` times, and never scan more than the host named: a network (CIDR), a range, a
wildcard, broadcast or multicast address is refused.

For addresses of this machine the result is compared with the socket table: a listener
the scan could not reach (a firewall rule, a full accept queue) and an open port with no
listener (forwarded: NAT, TPROXY) are reported as :class:`Discrepancy` records.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import ipaddress
import os
import re
import select
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from portside.addresses import format_ip, normalise_ip
from portside.errors import BackendError, PortsideError, TargetError, UsageError
from portside.models import Endpoint, SocketEntry, SocketState, Transport
from portside.portrange import ALL_PORTS, format_ports, format_ranges

if TYPE_CHECKING:
    from portside.probe import Identification

#: ``progress(done, total)``: ports answered (or given up) so far, over all addresses.
Progress = Callable[[int, int], None]

#: A name may resolve to a few addresses; more than this is not one host.
MAX_ADDRESSES = 16
#: Default wait for answers after the last probe of a round, local and remote targets.
LOCAL_TIMEOUT_S = 0.25
REMOTE_TIMEOUT_S = 1.0
#: Default bound on unanswered probes (SYN) and on open sockets (connect).
SYN_CONCURRENCY = 4096
CONNECT_CONCURRENCY = 512
#: File descriptors left for everything else when sizing the connect scan.
_FD_MARGIN = 64


class ScanMethod(enum.StrEnum):
    AUTO = "auto"  # SYN when raw sockets are allowed, connect otherwise
    SYN = "syn"
    CONNECT = "connect"


class PortState(enum.StrEnum):
    OPEN = "open"  # the host accepted the connection (SYN-ACK)
    CLOSED = "closed"  # the host refused: RST, or ICMP port unreachable
    FILTERED = "filtered"  # no answer after the retries (dropped), or ICMP prohibited


class Mismatch(enum.StrEnum):
    UNREACHABLE_LISTENER = "unreachable-listener"  # a listener the scan could not reach
    OPEN_WITHOUT_LISTENER = "open-without-listener"  # answers, but nothing here listens


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class OpenPort:
    """An open port. ``listeners``: the sockets of this machine that answer it (with
    owners), when the address is local; ``identification``: what it speaks (``identify``)."""

    ip: str
    port: int
    service: str | None  # the IANA name of the port, e.g. "http-alt"
    listeners: tuple[SocketEntry, ...] = ()
    identification: Identification | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Discrepancy:
    """A difference between the scan and the socket table, with what it likely means."""

    kind: Mismatch
    ip: str
    port: int
    state: PortState  # what the scan saw
    message: str
    fix: str | None = None
    listeners: tuple[SocketEntry, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ScanResult:
    """The answer of :func:`scan`.

    ``ports``: the port list probed on every address (``"-"`` is all 65,535), and
    ``port_count`` its length. ``closed`` counts (address, port) pairs; ``open`` and
    ``filtered`` list them. ``cross_checked``: the addresses compared with the socket
    table (those of this machine). ``duration``: seconds, the whole call.
    """

    host: str
    addresses: tuple[str, ...]
    ports: str
    port_count: int
    method: ScanMethod
    open: tuple[OpenPort, ...]
    closed: int
    filtered: tuple[Endpoint, ...]
    duration: float
    cross_checked: tuple[str, ...] = ()
    discrepancies: tuple[Discrepancy, ...] = ()
    notes: tuple[str, ...] = ()

    def open_ports(self, ip: str | None = None) -> frozenset[int]:
        """The open ports (of ``ip`` only, when given)."""
        return frozenset(o.port for o in self.open if ip is None or o.ip == ip)

    def filtered_ports(self, ip: str | None = None) -> frozenset[int]:
        return frozenset(e.port for e in self.filtered if ip is None or e.ip == ip)


# --------------------------------------------------------------------------- targets


#: nmap-style ranges: ``192.168.1.1-20``, ``10.0-3.0.1``, ``fe80::1-ff`` (not host names).
_ADDRESS_RANGE = re.compile(r"[0-9.\-]+|[0-9A-Fa-f:.\-]*:[0-9A-Fa-f:.\-]*")


def _refuse_sweep(host: str, text: str) -> None:
    if "/" in text:
        raise UsageError(
            f"{host!r} is a network, not a host: portside scans only addresses you name;"
            " give one address such as 127.0.0.1"
        )
    if any(c in text for c in "*,") or ("-" in text and _ADDRESS_RANGE.fullmatch(text)):
        raise UsageError(
            f"{host!r} looks like an address range: portside scans one host at a time;"
            " give one address such as 127.0.0.1"
        )


def _check_address(host: str, ip: str) -> str:
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return _check_address(host, str(address.ipv4_mapped))
    if address.is_unspecified:
        raise UsageError(
            f"{host!r} is the wildcard address (every interface), not a host;"
            " scan 127.0.0.1 for this machine, or one interface address"
        )
    if address.is_multicast or address == ipaddress.IPv4Address("255.255.255.255"):
        raise UsageError(
            f"{host!r} is a broadcast or multicast address (many hosts); give one host's address"
        )
    return ip if "%" in ip else format_ip(address)


def resolve_scan_targets(host: str) -> tuple[str, ...]:
    """The addresses to scan for ``host``: an IP address as given, or every address a
    name resolves to (TCP, both families), each once, in resolver order.

    Raises:
        TargetError: the name does not resolve, or the text is no host at all.
        UsageError: a network, range, wildcard, broadcast or multicast address.
    """
    text = host.strip()
    if not text:
        raise TargetError(host, "no host given; write an address such as 127.0.0.1")
    _refuse_sweep(host, text)
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    ip = normalise_ip(text)
    if ip is not None:
        return (_check_address(host, ip),)
    if ":" in text or text.isdigit():
        raise TargetError(
            host, "give the host alone and the ports with -p, e.g. `scan 127.0.0.1 -p 8080`"
        )
    try:
        infos = socket.getaddrinfo(text, None, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise TargetError(
            host, f"cannot resolve the name ({exc}); check it, or give an IP"
        ) from exc
    found: list[str] = []
    for family, _type, _proto, _name, sockaddr in infos:
        address = str(sockaddr[0])
        if family == socket.AF_INET6 and len(sockaddr) >= 4 and sockaddr[3]:
            address = address.split("%", 1)[0] + f"%{sockaddr[3]}"
        checked = _check_address(host, normalise_ip(address) or address)
        if checked not in found:
            found.append(checked)
    if not found:
        raise TargetError(host, "the name has no IPv4 or IPv6 address; give an IP address")
    if len(found) > MAX_ADDRESSES:
        raise UsageError(
            f"{host!r} resolves to {len(found)} addresses; that is a sweep, not a host:"
            " name one address"
        )
    return tuple(found)


def _family(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _sockaddr(ip: str, port: int) -> tuple[str, int] | tuple[str, int, int, int]:
    if ":" not in ip:
        return (ip, port)
    if "%" in ip:
        address, scope = ip.split("%", 1)
        index = int(scope) if scope.isdigit() else socket.if_nametoindex(scope)
        return (address, port, 0, index)
    return (ip, port, 0, 0)


def is_local_address(ip: str) -> bool:
    """Whether ``ip`` belongs to this machine (this network namespace): it can be bound."""
    try:
        with socket.socket(_family(ip), socket.SOCK_STREAM) as sock:
            sock.bind(_sockaddr(ip, 0))
    except OSError:
        return False
    return True


def raw_sockets_allowed(family: socket.AddressFamily = socket.AF_INET) -> bool:
    """Whether this process may open raw sockets (root, or CAP_NET_RAW)."""
    try:
        socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_TCP).close()
    except PermissionError:
        return False
    except OSError:
        return False  # e.g. IPv6 disabled
    return True


# --------------------------------------------------------------------------- packets

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10
_TCP_HEADER = struct.Struct("!HHIIBBHHH")
_PORT_AND_SEQ = struct.Struct("!HI")  # destination port and sequence number, at offset 2
#: The window our SYNs advertise (what nmap sends).
SYN_WINDOW = 1024


def internet_checksum(data: bytes) -> int:
    """The RFC 1071 checksum: one's complement of the one's-complement sum of 16-bit words."""
    if len(data) % 2:
        data += b"\0"
    total = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pseudo_header(source: bytes, destination: bytes, length: int) -> bytes:
    """The TCP pseudo-header: RFC 793 for IPv4 (4-byte addresses), RFC 8200 §8.1 for IPv6."""
    if len(source) == 4:
        return source + destination + struct.pack("!BBH", 0, socket.IPPROTO_TCP, length)
    return source + destination + struct.pack("!I3xB", length, socket.IPPROTO_TCP)


def syn_sequence(seq_high: int, port: int) -> int:
    """Our sequence number for ``port``: the high half fixed per scan, the low half
    ``0xFFFF - port``, which keeps the checksum the same for every port."""
    return (seq_high << 16) | (0xFFFF - port)


def syn_segment(source: bytes, destination: bytes, sport: int, dport: int, seq: int) -> bytes:
    """A SYN with the checksum computed in full (the reference the template must match)."""
    header = _TCP_HEADER.pack(sport, dport, seq, 0, 5 << 4, TCP_SYN, SYN_WINDOW, 0, 0)
    checksum = internet_checksum(pseudo_header(source, destination, len(header)) + header)
    return header[:16] + struct.pack("!H", checksum) + header[18:]


def syn_template(source: bytes, destination: bytes, sport: int, seq_high: int) -> bytearray:
    """A SYN for port 0 whose checksum stays valid when :func:`patch_syn` sets any port."""
    return bytearray(syn_segment(source, destination, sport, 0, syn_sequence(seq_high, 0)))


def patch_syn(template: bytearray, seq_high: int, port: int) -> bytearray:
    """Make ``template`` the SYN for ``port`` (in place): the port and the low half of the
    sequence number change by +port and -port, so the sum and the checksum do not."""
    _PORT_AND_SEQ.pack_into(template, 2, port, syn_sequence(seq_high, port))
    return template


def segment_checksum_ok(source: bytes, destination: bytes, segment: bytes) -> bool:
    """Whether a TCP segment's checksum verifies (the sum over pseudo-header and segment
    is 0xFFFF, i.e. the checksum of it all is 0)."""
    return internet_checksum(pseudo_header(source, destination, len(segment)) + segment) == 0


# Classic BPF: what the raw socket is allowed to queue (everything else is dropped in the
# kernel, before a copy is made). Codes from linux/filter.h.
_BPF_LD_B_ABS, _BPF_LD_H_ABS, _BPF_LDX_MSH = 0x30, 0x28, 0xB1
_BPF_LD_H_IND, _BPF_LD_B_IND = 0x48, 0x50
_BPF_JEQ, _BPF_JSET, _BPF_AND, _BPF_RET = 0x15, 0x45, 0x54, 0x06
_SNAP = 96  # bytes of each answer kept: the IP and TCP headers


def _bpf(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def answer_filter(sport: int, *, ipv4: bool) -> list[bytes]:
    """BPF accepting TCP segments to ``sport`` that carry RST, or SYN and ACK.

    An IPv4 raw socket sees the IP header first (unfragmented TCP only); an IPv6 one sees
    the TCP header first.
    """
    tail = [
        _bpf(_BPF_LD_H_IND if ipv4 else _BPF_LD_H_ABS, 0, 0, 2),  # destination port
        _bpf(_BPF_JEQ, 0, 5, sport),
        _bpf(_BPF_LD_B_IND if ipv4 else _BPF_LD_B_ABS, 0, 0, 13),  # flags
        _bpf(_BPF_JSET, 2, 0, TCP_RST),
        _bpf(_BPF_AND, 0, 0, TCP_SYN | TCP_ACK),
        _bpf(_BPF_JEQ, 0, 1, TCP_SYN | TCP_ACK),
        _bpf(_BPF_RET, 0, 0, _SNAP),
        _bpf(_BPF_RET, 0, 0, 0),
    ]
    if not ipv4:
        return tail
    return [
        _bpf(_BPF_LD_B_ABS, 0, 0, 9),  # protocol
        _bpf(_BPF_JEQ, 0, 8, socket.IPPROTO_TCP),
        _bpf(_BPF_LD_H_ABS, 0, 0, 6),  # fragment offset
        _bpf(_BPF_JSET, 6, 0, 0x1FFF),
        _bpf(_BPF_LDX_MSH, 0, 0, 0),  # X = IP header length
        *tail,
    ]


_SO_ATTACH_FILTER = 26
_SO_SNDBUFFORCE = 32
_SO_RCVBUFFORCE = 33
_IP_RECVERR = 11
_IPV6_RECVERR = 25
_RAW_BUFFER = 8 << 20


def _attach_filter(sock: socket.socket, program: list[bytes]) -> None:
    import ctypes

    code = b"".join(program)
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("@HP", len(program), ctypes.addressof(buffer))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)


def _grow_buffer(sock: socket.socket, forced: int, plain: int, size: int) -> None:
    """Raise a socket buffer: the FORCE option ignores net.core.*mem_max but needs
    CAP_NET_ADMIN; without it the plain option gets as much as the sysctl allows."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, forced, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)


def _source_for(ip: str) -> str:
    """The address this machine sends from to reach ``ip`` (a route lookup, no packet)."""
    with socket.socket(_family(ip), socket.SOCK_DGRAM) as udp:
        udp.connect(_sockaddr(ip, 9))
        return str(udp.getsockname()[0])


def _packed(ip: str) -> bytes:
    family = _family(ip)
    return socket.inet_pton(family, ip.split("%", 1)[0])


# --------------------------------------------------------------------------- shared

# Per-port outcome in a 65,536-byte table.
_PENDING, _OPEN, _CLOSED, _REFUSED_ICMP, _FILTERED_ICMP = 0, 1, 2, 3, 4
_TICK = 1024  # ports between two progress calls


class _Outcome:
    """What one scan of one address found (a plain class: cheaper to define at import)."""

    __slots__ = ("closed", "filtered", "notes", "open")

    def __init__(
        self, opened: list[int], closed: int, filtered: list[int], notes: list[str]
    ) -> None:
        self.open = opened
        self.closed = closed
        self.filtered = filtered
        self.notes = notes


def _outcome(state: bytearray, ports: Sequence[int], notes: list[str]) -> _Outcome:
    opened = [p for p in ports if state[p] == _OPEN]
    closed = state.count(_CLOSED) + state.count(_REFUSED_ICMP)
    filtered = [p for p in ports if state[p] in (_PENDING, _FILTERED_ICMP)]
    return _Outcome(opened, closed, filtered, notes)


#: connect() errors that mean the network or a firewall stopped the probe: filtered.
_UNREACHABLE = frozenset(
    {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EACCES, errno.EPERM, errno.ETIMEDOUT}
)


def _icmp_state(ee_errno: int) -> int:
    """ICMP port unreachable is a refusal (closed); other unreachables are filtered."""
    return _REFUSED_ICMP if ee_errno == errno.ECONNREFUSED else _FILTERED_ICMP


def _extended_errno(ancdata: Iterable[tuple[int, int, bytes]]) -> int | None:
    for level, kind, data in ancdata:
        if (level, kind) in (
            (socket.IPPROTO_IP, _IP_RECVERR),
            (socket.IPPROTO_IPV6, _IPV6_RECVERR),
        ) and len(data) >= 4:
            return int(struct.unpack_from("=I", data)[0])
    return None


# --------------------------------------------------------------------------- SYN scan


class _SynScan:
    """One SYN scan of one address (see the module docstring)."""

    def __init__(
        self,
        ip: str,
        *,
        timeout: float,
        retries: int,
        concurrency: int,
        tick: Callable[[int], None] | None,
    ) -> None:
        self.ip = ip
        self.timeout = timeout
        self.retries = retries
        self.concurrency = max(1, concurrency)
        self.tick = tick
        self.state = bytearray(65536)
        self.wanted = bytearray(65536)
        self.resolved = 0
        self.ipv4 = _family(ip) == socket.AF_INET
        self.seq_high = int.from_bytes(os.urandom(2), "big")
        self.notes: list[str] = []

    def run(self, ports: Sequence[int]) -> _Outcome:
        family = _family(self.ip)
        source = _source_for(self.ip)
        # Reserve the source port: bound, never listening, so a SYN-ACK there is answered
        # with an RST by the kernel and no connection of ours can take the port meanwhile.
        with (
            socket.socket(family, socket.SOCK_STREAM) as hold,
            socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_TCP) as raw,
        ):
            hold.bind(_sockaddr(source, 0))
            self.sport = int(hold.getsockname()[1])
            _grow_buffer(raw, _SO_RCVBUFFORCE, socket.SO_RCVBUF, _RAW_BUFFER)
            _grow_buffer(raw, _SO_SNDBUFFORCE, socket.SO_SNDBUF, _RAW_BUFFER)
            _attach_filter(raw, answer_filter(self.sport, ipv4=self.ipv4))
            if self.ipv4:
                raw.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
            else:
                raw.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
            raw.bind(_sockaddr(source, 0))
            raw.connect(_sockaddr(self.ip, 0))  # only this host's packets reach the socket
            raw.setblocking(False)
            self.raw = raw
            self.template = syn_template(
                _packed(source), _packed(self.ip), self.sport, self.seq_high
            )
            for port in ports:
                self.wanted[port] = 1
            todo = list(ports)
            for _round in range(self.retries + 1):
                if not todo:
                    break
                self._round(todo)
                todo = [p for p in todo if not self.state[p]]
        return _outcome(self.state, ports, self.notes)

    # The hot loops below bind attributes to locals: each lookup saved is ~65,535 saved.

    def _drain(self) -> None:
        """Read every answer queued on the raw socket (non-blocking)."""
        recv = self.raw.recv
        state, wanted = self.state, self.wanted
        expected = (self.seq_high << 16) + 0x10000  # ack = seq + 1 = (high << 16) + 0x10000 - port
        ipv4 = self.ipv4
        got = 0
        while True:
            try:
                packet = recv(_SNAP)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError:
                got += self._read_errors()  # an ICMP error, reported once on the socket
                continue
            offset = (packet[0] & 0x0F) << 2 if ipv4 else 0
            if len(packet) < offset + 14:
                continue
            port = (packet[offset] << 8) | packet[offset + 1]
            if state[port] or not wanted[port]:
                continue
            if int.from_bytes(packet[offset + 8 : offset + 12], "big") != expected - port:
                continue  # not an answer to our SYN
            state[port] = _CLOSED if packet[offset + 13] & TCP_RST else _OPEN
            got += 1
        self.resolved += got

    def _read_errors(self) -> int:
        """ICMP errors from the error queue (each carries the TCP header of our SYN); the
        number of ports they answered (the caller adds it to ``resolved``)."""
        got = 0
        sport = self.sport
        while True:
            try:
                data, ancdata, _flags, _address = self.raw.recvmsg(64, 1024, socket.MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                return got
            except OSError:
                return got
            ee_errno = _extended_errno(ancdata)
            if ee_errno is None or len(data) < 8:
                continue
            if (data[0] << 8 | data[1]) != sport:
                continue
            port = (data[2] << 8) | data[3]
            if not self.wanted[port] or self.state[port]:
                continue
            if int.from_bytes(data[4:8], "big") != syn_sequence(self.seq_high, port):
                continue
            self.state[port] = _icmp_state(ee_errno)
            got += 1

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            select.select([self.raw], [], [], seconds)
        self._drain()

    def _send_failed(self, exc: OSError) -> bool:
        """A send that did not go out: whether to send the probe again right away (after
        waiting for room, or reading the ICMP error reported on the socket). A probe not
        sent again stays unanswered, for the next round."""
        if isinstance(exc, BlockingIOError) or exc.errno == errno.ENOBUFS:
            select.select([self.raw], [self.raw], [], 0.01)
            self._drain()
            return True
        if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
            self.resolved += self._read_errors()  # an earlier probe's error, not this one's
            return True
        if exc.errno in (errno.EPERM, errno.EACCES):
            return False  # this machine's firewall refused the packet: no answer will come
        raise BackendError(f"SYN scan of {self.ip} failed: {exc}") from exc

    def _round(self, todo: list[int]) -> None:
        send = self.raw.send
        pack_into = _PORT_AND_SEQ.pack_into
        packet = self.template
        high = self.seq_high << 16
        state = self.state
        monotonic = time.monotonic
        concurrency, timeout = self.concurrency, self.timeout
        chunk = min(64, concurrency)
        resolved_before = self.resolved
        stamps: list[float] = []  # send time of each chunk of ``chunk`` probes
        n = len(todo)
        left = 0  # oldest probe that may still be unanswered and unexpired
        i = 0
        next_tick = _TICK
        while i < n:
            end = min(n, i + chunk)
            now = monotonic()
            stamps.append(now)
            while end - left > concurrency:  # too many probes in flight: make room
                while left < i and (state[todo[left]] or stamps[left // chunk] + timeout <= now):
                    left += 1
                if end - left <= concurrency:
                    break
                self._wait(stamps[left // chunk] + timeout - now)
                now = monotonic()
            j = i
            failures = 0
            while j < end:
                try:
                    while j < end:
                        port = todo[j]
                        pack_into(packet, 2, port, high | (0xFFFF - port))
                        send(packet)
                        j += 1
                except OSError as exc:
                    failures += 1
                    if not self._send_failed(exc) or failures > 64:
                        j += 1  # give this probe up for this round
                        failures = 0
            self._drain()
            i = end
            if self.tick is not None and i >= next_tick:
                self.tick(self.resolved)
                next_tick = i + _TICK
        # Stragglers: every port of this round answered, or ``timeout`` after the last send.
        # (All of ``todo`` was unanswered when the round began, so ``resolved`` grows by
        # exactly len(todo) once each has an answer.)
        deadline = monotonic() + timeout
        while True:
            self._drain()
            if self.resolved - resolved_before >= n:
                break
            left_s = deadline - monotonic()
            if left_s <= 0:
                break
            select.select([self.raw], [], [], left_s)
        if self.tick is not None:
            self.tick(self.resolved)


# --------------------------------------------------------------------------- connect scan


class _ConnectScan:
    """One connect scan of one address (see the module docstring)."""

    def __init__(
        self,
        ip: str,
        *,
        timeout: float,
        retries: int,
        concurrency: int,
        tick: Callable[[int], None] | None,
    ) -> None:
        self.ip = ip
        self.family = _family(ip)
        self.timeout = timeout
        self.retries = retries
        self.limit = max(1, concurrency)
        self.tick = tick
        self.state = bytearray(65536)
        self.resolved = 0
        self.notes: list[str] = []
        self.spare: list[socket.socket] = []  # refused sockets, ready to connect again
        self.pending: dict[int, tuple[socket.socket, int]] = {}  # fd -> (socket, port)
        self.order: deque[tuple[float, int, socket.socket]] = deque()  # (deadline, fd, socket)
        self.epoll = select.epoll()

    def run(self, ports: Sequence[int]) -> _Outcome:
        try:
            todo = list(ports)
            for _round in range(self.retries + 1):
                if not todo:
                    break
                self._round(todo)
                todo = [p for p in todo if not self.state[p]]
        finally:
            for sock, _port in self.pending.values():
                sock.close()
            for sock in self.spare:
                sock.close()
            self.pending.clear()
            self.epoll.close()
        return _outcome(self.state, ports, self.notes)

    def _lower_limit(self, reason: str) -> None:
        lowered = max(1, len(self.pending))
        if lowered < self.limit:
            self.notes.append(f"concurrency lowered to {lowered}: {reason}")
            self.limit = lowered

    def _new_socket(self) -> socket.socket | None:
        """A socket to connect with, or None when out of file descriptors (the limit is
        lowered to what is in flight; wait for some to finish)."""
        if self.spare:
            return self.spare.pop()
        try:
            sock = socket.socket(self.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise BackendError(f"cannot open a socket: {exc}") from exc
            if not self.pending:
                raise BackendError(
                    "no file descriptor left for a connect scan (EMFILE);"
                    " raise `ulimit -n` or close other files"
                ) from exc
            self._lower_limit("out of file descriptors")
            return None
        # ICMP errors (a firewall's reject) are queued where epoll reports them at once.
        if self.family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
        return sock

    def _connected(self, sock: socket.socket, port: int) -> None:
        try:
            local = sock.getsockname()
        except OSError:
            local = ("", 0)
        # A connection to itself (source port == port on this address, nothing listening):
        # the kernel's TCP simultaneous open, not a server.
        itself = local[1] == port and str(local[0]).split("%")[0] == self.ip.split("%")[0]
        self.state[port] = _CLOSED if itself else _OPEN
        self.resolved += 1
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # with linger 0: an RST, no TIME_WAIT left behind

    def _failed(self, sock: socket.socket, port: int, err: int, *, reusable: bool) -> None:
        if err == errno.ECONNREFUSED:
            self.state[port] = _CLOSED
        elif err in _UNREACHABLE:
            self.state[port] = _FILTERED_ICMP
        else:
            sock.close()
            raise BackendError(f"connect to {self.ip} port {port} failed: {os.strerror(err)}")
        self.resolved += 1
        if reusable and len(self.spare) < 16:
            self.spare.append(sock)  # the second connect() reset it: ready for another port
        else:
            sock.close()

    def _event(self, fd: int) -> None:
        entry = self.pending.pop(fd, None)
        if entry is None:
            return
        sock, port = entry
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err == 0:
            try:
                sock.getpeername()
            except OSError:
                # Not connected and no error: an ICMP error waits in the error queue.
                self.epoll.unregister(fd)
                try:
                    _data, ancdata, _flags, _address = sock.recvmsg(1, 1024, socket.MSG_ERRQUEUE)
                except OSError:
                    sock.close()  # woken with nothing to tell: unanswered, tried again later
                    return
                icmp = _extended_errno(ancdata) or errno.EHOSTUNREACH
                self.state[port] = _icmp_state(icmp)
                self.resolved += 1
                sock.close()
                return
            self.epoll.unregister(fd)
            self._connected(sock, port)
            return
        self.epoll.unregister(fd)
        self._failed(sock, port, err, reusable=False)

    def _expire(self, now: float) -> None:
        """Give up on sockets whose deadline passed (their ports stay unanswered)."""
        order, pending = self.order, self.pending
        while order:
            deadline, fd, sock = order[0]
            current = pending.get(fd)
            if current is not None and current[0] is sock:
                if deadline > now:
                    return
                del pending[fd]
                self.epoll.unregister(fd)
                sock.close()
            order.popleft()

    def _poll(self, *, block: bool) -> None:
        now = time.monotonic()
        self._expire(now)
        if not self.pending:
            return
        wait = max(0.0, self.order[0][0] - now) if block and self.order else 0.0
        for fd, _events in self.epoll.poll(wait):
            self._event(fd)
        self._expire(time.monotonic())

    def _round(self, todo: list[int]) -> None:
        address = _sockaddr(self.ip, 0)
        host = address[0]
        scope = address[3] if len(address) == 4 else None
        timeout = self.timeout
        pending = self.pending
        queue = deque(todo)
        next_tick = _TICK
        done = 0
        while queue:
            if len(pending) >= self.limit:
                self._poll(block=True)
                continue
            sock = self._new_socket()
            if sock is None:
                self._poll(block=True)
                continue
            port = queue.popleft()
            target: tuple[str, int] | tuple[str, int, int, int] = (
                (host, port) if scope is None else (host, port, 0, scope)
            )
            err = sock.connect_ex(target)
            if err == errno.EINPROGRESS:
                # On loopback the answer is already in: a second connect() reads it
                # (0 connected, ECONNREFUSED refused, EALREADY still waiting).
                err = sock.connect_ex(target)
                if err == errno.EALREADY:
                    fd = sock.fileno()
                    pending[fd] = (sock, port)
                    self.order.append((time.monotonic() + timeout, fd, sock))
                    self.epoll.register(fd, select.EPOLLOUT | select.EPOLLERR)
                    continue
            if err in (0, errno.EISCONN):
                self._connected(sock, port)
            elif err in (errno.EADDRNOTAVAIL, errno.EAGAIN):
                # No local port left (TIME_WAIT, many connections): wait for ours to end.
                sock.close()
                queue.appendleft(port)
                if not pending:
                    raise BackendError(
                        f"connect scan of {self.ip}: no local port left (EADDRNOTAVAIL);"
                        " wait for TIME_WAIT sockets to expire"
                    )
                self._lower_limit("out of local ports")
                self._poll(block=True)
                continue
            else:
                self._failed(sock, port, err, reusable=True)
            done += 1
            if done >= next_tick:
                next_tick = done + _TICK
                self._poll(block=False)
                if self.tick is not None:
                    self.tick(self.resolved)
        while pending:
            self._poll(block=True)
        if self.tick is not None:
            self.tick(self.resolved)


# --------------------------------------------------------------------------- workers

#: At most this many processes scan one address; fewer than this many ports each is not
#: worth a fork.
MAX_WORKERS = 4
_PORTS_PER_WORKER = 8192
_FRAME = struct.Struct("!I")

_Scanner = _SynScan | _ConnectScan


def default_workers(port_count: int) -> int:
    """Processes for a scan of ``port_count`` ports: one per CPU this process may use (at
    most :data:`MAX_WORKERS`), for large scans only. The kernel's half of a probe (the
    loopback round trip, the RST) is most of its cost, so CPUs add up."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cpus, port_count // _PORTS_PER_WORKER))


def _can_fork() -> bool:
    """fork() is safe here: Linux, and no other thread whose locks a child could inherit."""
    import threading

    return hasattr(os, "fork") and threading.active_count() == 1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Worker:
    """A forked process scanning a share of the ports; it reports progress frames
    (``P`` + count) and then its per-port table (``R``) or an error (``E``)."""

    def __init__(self, pid: int, fd: int) -> None:
        self.pid = pid
        self.fd = fd
        self.buffer = bytearray()
        self.done = 0
        self.eof = False
        self.reaped = False

    def poll(self) -> None:
        """Take what the child wrote so far (non-blocking) and note its progress."""
        while not self.eof:
            try:
                chunk = os.read(self.fd, 1 << 17)
            except BlockingIOError:
                break
            if not chunk:
                self.eof = True
                break
            self.buffer += chunk
        buffer = self.buffer
        while len(buffer) >= 5 and buffer[0] == ord("P"):
            self.done = _FRAME.unpack_from(buffer, 1)[0]
            del buffer[:5]

    def finish(self, tick: Callable[[], None] | None) -> tuple[bytes, list[str]]:
        """Wait for the child's answer: its per-port table and notes."""
        while not self.eof:
            select.select([self.fd], [], [], 0.1)
            self.poll()
            if tick is not None:
                tick()
        self.poll()
        _pid, status = os.waitpid(self.pid, 0)
        self.reaped = True
        buffer = bytes(self.buffer)
        if buffer[:1] == b"R" and len(buffer) >= 65537 and os.waitstatus_to_exitcode(status) == 0:
            notes = buffer[65537:].decode("utf-8", "replace")
            return buffer[1:65537], [n for n in notes.split("\n") if n]
        reason = buffer[1:].decode("utf-8", "replace") if buffer[:1] == b"E" else "no answer"
        raise BackendError(f"a scanning process failed: {reason or 'unknown error'}")

    def close(self) -> None:
        if not self.reaped:
            import signal

            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)  # our own child, by its pid
            os.waitpid(self.pid, 0)
            self.reaped = True
        os.close(self.fd)


def _fork_worker(
    make: Callable[[Callable[[int], None] | None], _Scanner], share: list[int]
) -> _Worker:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: scan, report, and leave without running any cleanup
        status = 1
        try:
            os.close(read_fd)
            scanner = make(lambda done: _write_all(write_fd, b"P" + _FRAME.pack(done)))
            scanner.run(share)
            notes = "\n".join(scanner.notes).encode()
            _write_all(write_fd, b"R" + bytes(scanner.state) + notes)
            status = 0
        except BaseException as exc:  # everything must reach the parent
            with contextlib.suppress(OSError):
                _write_all(write_fd, b"E" + str(exc).encode("utf-8", "replace"))
        finally:
            os._exit(status)
    os.close(write_fd)
    os.set_blocking(read_fd, False)
    return _Worker(pid, read_fd)


def _shares(ports: list[int], weights: Sequence[float]) -> list[list[int]]:
    total = sum(weights)
    shares: list[list[int]] = []
    start = 0
    acc = 0.0
    for weight in weights:
        acc += weight
        end = len(ports) if len(shares) == len(weights) - 1 else round(len(ports) * acc / total)
        shares.append(ports[start:end])
        start = end
    return shares


def _probe(
    ip: str,
    ports: list[int],
    *,
    method: ScanMethod,
    timeout: float,
    retries: int,
    concurrency: int,
    workers: int,
    tick: Callable[[int], None] | None,
    meanwhile: Callable[[], list[SocketEntry] | None] | None,
) -> tuple[_Outcome, list[SocketEntry] | None]:
    """Scan ``ports`` of ``ip`` with ``workers`` processes; ``meanwhile`` runs in this
    process once its own share is done (the socket-table read), while the others scan."""
    count = workers if workers > 1 and _can_fork() else 1

    def make(report: Callable[[int], None] | None, share_of: int = count) -> _Scanner:
        per = max(1, concurrency // share_of)
        if method is ScanMethod.SYN:
            return _SynScan(ip, timeout=timeout, retries=retries, concurrency=per, tick=report)
        return _ConnectScan(ip, timeout=timeout, retries=retries, concurrency=per, tick=report)

    if count == 1:
        scanner = make(tick)
        outcome = scanner.run(ports)
        return outcome, meanwhile() if meanwhile is not None else None
    if method is ScanMethod.SYN:
        import ctypes  # noqa: F401 - imported before fork(): children must not import

    # This process also reads the socket table: give it a lighter share.
    weights = [0.5 if meanwhile is not None else 1.0] + [1.0] * (count - 1)
    shares = _shares(ports, weights)
    children: list[_Worker] = []
    try:
        for share in shares[1:]:
            children.append(_fork_worker(make, share))
        parent_tick: Callable[[int], None] | None = None
        if tick is not None:
            report = tick

            def parent_tick(done: int) -> None:
                for child in children:
                    child.poll()
                report(done + sum(child.done for child in children))

        scanner = make(parent_tick)
        scanner.run(shares[0])
        extra = meanwhile() if meanwhile is not None else None
        merged = int.from_bytes(scanner.state, "big")
        notes = list(scanner.notes)
        for child in children:
            own = scanner.resolved

            def waiting(own: int = own) -> None:
                if parent_tick is not None:
                    parent_tick(own)

            state, child_notes = child.finish(waiting if tick is not None else None)
            merged |= int.from_bytes(state, "big")
            notes.extend(child_notes)
        return _outcome(bytearray(merged.to_bytes(65536, "big")), ports, notes), extra
    finally:
        for child in children:
            child.close()


# --------------------------------------------------------------------------- cross-check


def listener_answers(entry: SocketEntry, ip: str) -> bool:
    """Whether the TCP listener ``entry`` accepts connections to ``ip`` (its own address,
    a wildcard of that family, or a dual-stack ``::`` for IPv4)."""
    if entry.transport is not Transport.TCP or entry.state is not SocketState.LISTEN:
        return False
    local = entry.local.ip.split("%", 1)[0]
    target = ip.split("%", 1)[0]
    if local == target:
        return True
    wildcard = ipaddress.ip_address(local).is_unspecified
    if ":" not in target:
        if local == f"::ffff:{target}" or (wildcard and ":" not in local):
            return True
        return wildcard and entry.v6only is not True  # [::] without IPV6_V6ONLY
    return wildcard and ":" in local


def _owners_text(entries: Sequence[SocketEntry]) -> str:
    names = [f"{o.process.name}[{o.process.pid}]" for e in entries for o in e.owners]
    return ", ".join(dict.fromkeys(names)) or "owner not visible"


def _full_queue(entries: Sequence[SocketEntry]) -> SocketEntry | None:
    for entry in entries:
        if (
            entry.recv_queue is not None
            and entry.send_queue is not None
            and entry.recv_queue > entry.send_queue
        ):
            return entry
    return None


def compare_with_listeners(
    ip: str,
    ports: Sequence[int],
    open_ports: frozenset[int],
    filtered_ports: frozenset[int],
    entries: Iterable[SocketEntry],
) -> tuple[dict[int, tuple[SocketEntry, ...]], list[Discrepancy]]:
    """Compare a scan of ``ip`` with the listeners of this machine (pure).

    Returns the listeners answering each scanned port, and the discrepancies: listeners
    the scan could not reach, and open ports no listener explains.
    """
    scanned = set(ports)
    by_port: dict[int, list[SocketEntry]] = {}
    for entry in entries:
        if entry.local.port in scanned and listener_answers(entry, ip):
            by_port.setdefault(entry.local.port, []).append(entry)
    found: list[Discrepancy] = []
    shown = f"[{ip}]" if ":" in ip else ip
    for port in sorted(by_port):
        if port in open_ports:
            continue
        held = tuple(by_port[port])
        owners = _owners_text(held)
        if port in filtered_ports:
            full = _full_queue(held)
            if full is not None:
                message = (
                    f"{shown}:{port} has a listener ({owners}) whose accept queue is full"
                    f" ({full.recv_queue} waiting, backlog {full.send_queue}): new connections"
                    " are dropped"
                )
                fix = "the process does not accept() its connections: it is stuck or overloaded"
            else:
                message = f"{shown}:{port} has a listener ({owners}) but no answer came: a firewall drops it"
                fix = "look for a drop rule: `nft list ruleset` or `iptables -S`"
            state = PortState.FILTERED
        else:
            device = next((e.interface for e in held if e.interface), None)
            if device is not None:
                message = f"{shown}:{port} has a listener ({owners}) bound to device {device} only, and refused"
                fix = "connect through that device's address, or drop SO_BINDTODEVICE"
            else:
                message = (
                    f"{shown}:{port} has a listener ({owners}) but refused: a firewall rejects it"
                )
                fix = "look for a reject rule: `nft list ruleset` or `iptables -S`"
            state = PortState.CLOSED
        found.append(
            Discrepancy(
                kind=Mismatch.UNREACHABLE_LISTENER,
                ip=ip,
                port=port,
                state=state,
                message=message,
                fix=fix,
                listeners=held,
            )
        )
    for port in sorted(open_ports - by_port.keys()):
        found.append(
            Discrepancy(
                kind=Mismatch.OPEN_WITHOUT_LISTENER,
                ip=ip,
                port=port,
                state=PortState.OPEN,
                message=(
                    f"{shown}:{port} answers, but nothing in this network namespace listens on it:"
                    " the traffic is forwarded (NAT/DNAT, TPROXY) or the listener closed meanwhile"
                ),
                fix="`nft list ruleset` shows forwarding rules; `portside who` shows holders",
            )
        )
    return {port: tuple(held) for port, held in by_port.items()}, found


def _table(owners: bool, notes: list[str]) -> list[SocketEntry] | None:
    """This namespace's TCP listeners, or None (with a note) when they cannot be read:
    the scan's answer stands without the comparison."""
    try:
        from portside.sockets import listeners
    except ImportError as exc:  # pragma: no cover - only while portside.sockets is missing
        notes.append(f"not compared with the socket table: portside.sockets is missing ({exc})")
        return None
    try:
        return listeners(transports=frozenset({Transport.TCP}), owners=owners, namespaces=False)
    except PortsideError as exc:
        notes.append(f"not compared with the socket table: {exc}")
        return None


# --------------------------------------------------------------------------- the scan


def _check_ports(ports: Sequence[int] | range) -> tuple[list[int], str]:
    """The ports, ascending and each once, and their text (``1-1024,8080``)."""
    if isinstance(ports, range) and ports.step == 1:
        if len(ports) and (ports.start < 1 or ports.stop > 65536):
            raise UsageError("ports are 1-65535")
        return list(ports), format_ranges([ports])
    chosen = sorted(set(ports))
    if chosen and (chosen[0] < 1 or chosen[-1] > 65535):
        bad = chosen[0] if chosen[0] < 1 else chosen[-1]
        raise UsageError(f"port {bad} is out of range; ports are 1-65535")
    return chosen, format_ports(chosen)


def _choose_method(method: ScanMethod | str, addresses: Sequence[str]) -> ScanMethod:
    try:
        chosen = ScanMethod(method)
    except ValueError:
        raise UsageError(
            f"unknown scan method {method!r}; choose one of auto, syn, connect"
        ) from None
    families = {_family(ip) for ip in addresses}
    allowed = all(raw_sockets_allowed(family) for family in families)
    if chosen is ScanMethod.AUTO:
        return ScanMethod.SYN if allowed else ScanMethod.CONNECT
    if chosen is ScanMethod.SYN and not allowed:
        raise UsageError(
            "a SYN scan needs root or CAP_NET_RAW; run with sudo, or use --method connect"
        )
    return chosen


def _connect_limit(requested: int | None) -> int:
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    room = CONNECT_CONCURRENCY if soft == resource.RLIM_INFINITY else max(1, soft - _FD_MARGIN)
    return max(1, min(requested or CONNECT_CONCURRENCY, room))


def _identify_all(found: list[OpenPort], timeout: float) -> list[OpenPort]:
    try:
        from portside.probe import Hints, identify
    except ImportError as exc:  # pragma: no cover - only while portside.probe is missing
        raise UsageError(f"identification needs portside.probe ({exc})") from exc
    from concurrent.futures import ThreadPoolExecutor

    def one(item: OpenPort) -> OpenPort:
        owners = tuple(dict.fromkeys(o.process.name for e in item.listeners for o in e.owners))
        found_id = identify(item.ip, item.port, timeout=timeout, hints=Hints(owners=owners))
        return dataclasses.replace(item, identification=found_id)

    if not found:
        return found
    with ThreadPoolExecutor(max_workers=min(32, len(found))) as pool:
        return list(pool.map(one, found))


def _ticker(progress: Progress, base: int, total: int) -> Callable[[int], None]:
    def tick(done: int) -> None:
        progress(base + done, total)

    return tick


def scan(
    host: str = "127.0.0.1",
    ports: Sequence[int] | range = ALL_PORTS,
    *,
    method: ScanMethod | str = ScanMethod.AUTO,
    concurrency: int | None = None,
    timeout: float | None = None,
    retries: int = 2,
    progress: Progress | None = None,
    cross_check: bool = True,
    identify: bool = False,
    identify_timeout: float = 3.0,
    workers: int | None = None,
) -> ScanResult:
    """Scan TCP ``ports`` on every address of ``host`` (see the module docstring).

    ``method``: ``"syn"`` needs root or CAP_NET_RAW; ``"auto"`` takes it when allowed.
    ``concurrency``: bound on unanswered probes (SYN, default 4096) or open sockets
    (connect, default 512, lowered to fit the file-descriptor limit). ``timeout``: seconds
    to wait for answers after a round of probes (default 0.25 local, 1.0 remote);
    ``retries``: rounds of retransmission for unanswered ports. ``progress(done, total)``
    is called now and then. ``cross_check``: compare local addresses with the socket
    table. ``identify``: ask each open port what it speaks (``portside.probe``).
    ``workers``: processes sharing the ports of a large scan (default: one per CPU, at
    most 4; 1 for scans under 8,192 ports, and whenever other threads run).

    Raises:
        UsageError: bad ports, a sweep (network, range, wildcard), SYN without privilege.
        TargetError: a name that does not resolve.
        BackendError: the scan could not be carried out (no sockets left, …).
    """
    started = time.perf_counter()
    chosen_ports, ports_text = _check_ports(ports)
    if not chosen_ports:
        raise UsageError("no ports to scan; give e.g. -p 1-1024")
    if retries < 0 or retries > 10:
        raise UsageError("retries must be 0-10")
    if timeout is not None and not 0 < timeout <= 60:
        raise UsageError("the timeout must be more than 0 and at most 60 seconds")
    if concurrency is not None and concurrency < 1:
        raise UsageError("concurrency must be at least 1")
    if workers is not None and not 1 <= workers <= 64:
        raise UsageError("workers must be 1-64")
    addresses = resolve_scan_targets(host)
    chosen = _choose_method(method, addresses)
    total = len(chosen_ports) * len(addresses)
    if progress is not None:
        progress(0, total)
    from portside.services import service_name

    opened: list[OpenPort] = []
    filtered: list[Endpoint] = []
    closed = 0
    notes: list[str] = []
    checked: list[str] = []
    discrepancies: list[Discrepancy] = []
    for index, ip in enumerate(addresses):
        base = index * len(chosen_ports)
        tick = None if progress is None else _ticker(progress, base, total)
        local = is_local_address(ip)
        wait = timeout if timeout is not None else (LOCAL_TIMEOUT_S if local else REMOTE_TIMEOUT_S)
        limit = (
            concurrency or SYN_CONCURRENCY
            if chosen is ScanMethod.SYN
            else _connect_limit(concurrency)
        )
        compare = cross_check and local
        outcome, table = _probe(
            ip,
            chosen_ports,
            method=chosen,
            timeout=wait,
            retries=retries,
            concurrency=limit,
            workers=workers if workers is not None else default_workers(len(chosen_ports)),
            tick=tick,
            meanwhile=(lambda: _table(True, notes)) if compare else None,
        )
        notes.extend(outcome.notes)
        closed += outcome.closed
        filtered.extend(Endpoint(ip=ip, port=port) for port in outcome.filtered)
        held: dict[int, tuple[SocketEntry, ...]] = {}
        if table is not None:
            held, found = compare_with_listeners(
                ip, chosen_ports, frozenset(outcome.open), frozenset(outcome.filtered), table
            )
            discrepancies.extend(found)
            checked.append(ip)
        opened.extend(
            OpenPort(ip=ip, port=port, service=service_name(port), listeners=held.get(port, ()))
            for port in outcome.open
        )
    if progress is not None:
        progress(total, total)
    if identify:
        opened = _identify_all(opened, identify_timeout)
    return ScanResult(
        host=host,
        addresses=addresses,
        ports=ports_text,
        port_count=len(chosen_ports),
        method=chosen,
        open=tuple(opened),
        closed=closed,
        filtered=tuple(filtered),
        duration=round(time.perf_counter() - started, 6),
        cross_checked=tuple(checked),
        discrepancies=tuple(discrepancies),
        notes=tuple(dict.fromkeys(notes)),
    )
