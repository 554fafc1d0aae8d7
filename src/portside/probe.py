"""Connect latency per address family (tcping), and what a port speaks (§4 recipe).

The I/O shell around :mod:`portside.sniff`: it opens connections, sends probes, reads
with deadlines and hands the bytes to a sniffer, which decides.

* :func:`connect_times` times ``count`` TCP connects to every address family a target
  resolves to (one address per family): min/avg/max of the connects that succeeded, and
  each failure with its errno name and the time it took (a refusal that takes ~1 s on
  loopback is an ICMP reject, FM-26).
* :func:`identify` runs the probing recipe of failure-modes.md §4, each probe on a fresh
  connection, in an order chosen so that known servers do not log an attack: the NULL
  probe; PING/SSLRequest first when the port, the owner or the URL suggest Redis or
  PostgreSQL; a real TLS ClientHello (completing the handshake when the server speaks
  TLS: version, ALPN, certificate); an HTTP GET only once Redis is ruled out; then the h2
  preface and the remaining probes for servers still silent. Every wait is bounded and
  the whole run is bounded by ``timeout``.

Why synchronous sockets and not asyncio: the recipe is a strict sequence (each probe is
chosen from the previous answers) and ``connect_times`` measures one connect at a time on
purpose, so concurrency would buy nothing; blocking sockets with per-call timeouts keep
every wait visibly bounded. It also keeps ``import portside.probe`` cheap: beyond the
modules every command loads (addresses, models), it needs ``socket`` (~3 ms); ``ssl``
(~17 ms) is imported only when a TLS probe runs, and asyncio (~50 ms) never.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import ipaddress
import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from portside.addresses import HostKind, Target, parse_target
from portside.errors import ProtocolError, UsageError
from portside.models import Family
from portside.sniff import (
    Certificate,
    Probe,
    Protocol,
    Sniffer,
    Verdict,
    http_get,
    parse_certificate,
    preview,
    probe_bytes,
)

if TYPE_CHECKING:
    import ssl

#: Bound on one TCP connect inside :func:`identify` (the caller's timeout bounds it too).
CONNECT_TIMEOUT_S = 2.0
#: How long the NULL probe waits for a server-first banner (nmap waits up to 6 s).
NULL_WAIT_S = 1.5
#: On loopback a banner is sent within milliseconds of the accept; wait less, but not 0.
LOOPBACK_NULL_WAIT_S = 0.3
#: How long a client-first probe waits for its answer.
REPLY_WAIT_S = 2.0
LOOPBACK_REPLY_WAIT_S = 0.6
#: Once some bytes have arrived but do not decide yet, how long to wait for more.
SETTLE_S = 0.3
LOOPBACK_SETTLE_S = 0.1
#: Bound on the TLS handshake bytes kept (certificate chains are a few KiB).
MAX_TLS_BYTES = 256 * 1024
_RECV_BYTES = 4096

#: Owner process names that mean "client-first server that must not receive HTTP".
_REDIS_OWNERS = ("redis-server", "redis-sentinel", "valkey-server", "keydb-server")
_POSTGRES_OWNERS = ("postgres", "postmaster")
_REDIS_PORTS = (6379, 6380)
_POSTGRES_PORTS = (5432, 5433)


# --------------------------------------------------------------------------- addresses


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Address:
    ip: str
    family: Family


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Resolution:
    """The addresses a target stands for, in resolver order; ``error`` when none."""

    addresses: tuple[Address, ...]
    error: str | None = None


def family_of(ip: str) -> Family:
    return Family.IPV6 if ":" in ip else Family.IPV4


def is_loopback(ip: str) -> bool:
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _gai_name(exc: socket.gaierror) -> str:
    for name in dir(socket):
        if name.startswith("EAI_") and getattr(socket, name) == exc.errno:
            return f"{name}: {exc.strerror}"
    return f"getaddrinfo error {exc.errno}: {exc.strerror}"


def resolve(target: Target) -> Resolution:
    """IP -> itself; ``:PORT`` -> 127.0.0.1 and ::1; a name -> every address getaddrinfo
    gives (both families: the "localhost is ::1 first" trap is why)."""
    if target.host_kind is HostKind.IP and target.host is not None:
        return Resolution(addresses=(Address(ip=target.host, family=family_of(target.host)),))
    if target.host_kind is HostKind.NONE or target.host is None:
        return Resolution(
            addresses=(
                Address(ip="127.0.0.1", family=Family.IPV4),
                Address(ip="::1", family=Family.IPV6),
            )
        )
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return Resolution(addresses=(), error=_gai_name(exc))
    seen: list[Address] = []
    for family, _type, _proto, _name, sockaddr in infos:
        ip = str(sockaddr[0])
        address = Address(ip=ip, family=Family.IPV6 if family == socket.AF_INET6 else Family.IPV4)
        if address not in seen:
            seen.append(address)
    if not seen:
        return Resolution(addresses=(), error=f"{target.host} has no IPv4 or IPv6 address")
    return Resolution(addresses=tuple(seen))


def errno_name(exc: OSError) -> str:
    """``ECONNREFUSED``, ``ETIMEDOUT``, …: symbolic, because numbers differ per OS."""
    if isinstance(exc, TimeoutError) and exc.errno is None:
        return "ETIMEDOUT"
    reason = getattr(exc, "reason", None)  # ssl.SSLError: its errno is OpenSSL's, not the OS's
    if isinstance(reason, str) and reason:
        return reason
    if exc.errno is None:
        return type(exc).__name__
    return errno.errorcode.get(exc.errno, f"errno {exc.errno}")


def open_connection(ip: str, port: int, timeout: float) -> socket.socket:
    """A connected TCP socket (the caller closes it).

    Raises OSError, with ECONNREFUSED also for a TCP self-connection: connecting to a free
    port in the ephemeral range can "succeed" by connecting to itself, which is no server.
    """
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(max(timeout, 0.001))
        sock.connect((ip, port))
        if sock.getsockname()[:2] == sock.getpeername()[:2]:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "connected to itself (no listener)")
    except BaseException:
        sock.close()
        raise
    return sock


# --------------------------------------------------------------------------- connect times


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ConnectAttempt:
    """One timed TCP connect. ``elapsed_ms`` is measured for failures too."""

    seq: int
    ip: str
    family: Family
    connected: bool
    elapsed_ms: float
    errno_name: str | None = None
    error: str | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FamilyTimes:
    """Summary for one address family. min/avg/max cover the connects that succeeded."""

    family: Family
    ip: str
    attempts: int
    connected: int
    loss_percent: float
    min_ms: float | None
    avg_ms: float | None
    max_ms: float | None
    errors: tuple[str, ...]  # distinct errno names of the failures, first seen first


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ConnectTimes:
    target: str
    port: int
    resolved: tuple[Address, ...]
    resolve_error: str | None
    attempts: tuple[ConnectAttempt, ...]
    families: tuple[FamilyTimes, ...]

    @property
    def connected(self) -> bool:
        return any(attempt.connected for attempt in self.attempts)


def _target_and_port(target: str | Target, port: int | None) -> tuple[Target, int]:
    parsed = parse_target(target, require_port=port is None) if isinstance(target, str) else target
    chosen = port if port is not None else parsed.port
    if chosen is None:
        raise UsageError(f"{parsed.text!r}: no port given; write HOST:PORT or a URL")
    if not 1 <= chosen <= 65535:
        raise UsageError(
            f"{parsed.text!r}: port {chosen} cannot be connected to; ports are 1-65535"
        )
    return parsed, chosen


def connect_once(seq: int, address: Address, port: int, timeout: float) -> ConnectAttempt:
    started = time.perf_counter()
    try:
        sock = open_connection(address.ip, port, timeout)
    except OSError as exc:
        elapsed = (time.perf_counter() - started) * 1000
        return ConnectAttempt(
            seq=seq,
            ip=address.ip,
            family=address.family,
            connected=False,
            elapsed_ms=round(elapsed, 3),
            errno_name=errno_name(exc),
            error=exc.strerror or str(exc) or errno_name(exc),
        )
    elapsed = (time.perf_counter() - started) * 1000
    sock.close()
    return ConnectAttempt(
        seq=seq, ip=address.ip, family=address.family, connected=True, elapsed_ms=round(elapsed, 3)
    )


def _summary(address: Address, attempts: Sequence[ConnectAttempt]) -> FamilyTimes:
    times = [a.elapsed_ms for a in attempts if a.connected]
    errors: list[str] = []
    for attempt in attempts:
        if attempt.errno_name and attempt.errno_name not in errors:
            errors.append(attempt.errno_name)
    count = len(attempts)
    return FamilyTimes(
        family=address.family,
        ip=address.ip,
        attempts=count,
        connected=len(times),
        loss_percent=round(100.0 * (count - len(times)) / count, 1) if count else 0.0,
        min_ms=min(times) if times else None,
        avg_ms=round(sum(times) / len(times), 3) if times else None,
        max_ms=max(times) if times else None,
        errors=tuple(errors),
    )


def connect_times(
    target: str | Target,
    port: int | None = None,
    *,
    count: int = 4,
    interval: float = 1.0,
    timeout: float = 2.0,
    on_attempt: Callable[[ConnectAttempt], None] | None = None,
) -> ConnectTimes:
    """tcping: ``count`` rounds, one connect per address family per round, rounds
    ``interval`` seconds apart, each connect bounded by ``timeout``.

    ``on_attempt`` is called after each connect (the CLI prints the line there).
    Raises UsageError for a target without a port or a count below 1.
    """
    parsed, chosen_port = _target_and_port(target, port)
    if count < 1:
        raise UsageError(f"count must be at least 1, not {count}")
    if interval < 0 or timeout <= 0:
        raise UsageError("interval must be >= 0 and timeout > 0 seconds")
    resolution = resolve(parsed)
    per_family: dict[Family, Address] = {}
    for address in resolution.addresses:
        per_family.setdefault(address.family, address)
    addresses = list(per_family.values())
    attempts: list[ConnectAttempt] = []
    first_start = time.monotonic()
    for seq in range(1, count + 1 if addresses else 1):
        pause = first_start + (seq - 1) * interval - time.monotonic()
        if pause > 0:
            time.sleep(pause)  # pacing between rounds, as tcping/ping do
        for address in addresses:
            attempt = connect_once(seq, address, chosen_port, timeout)
            attempts.append(attempt)
            if on_attempt is not None:
                on_attempt(attempt)
    families = tuple(
        _summary(address, [a for a in attempts if a.ip == address.ip]) for address in addresses
    )
    return ConnectTimes(
        target=parsed.text,
        port=chosen_port,
        resolved=resolution.addresses,
        resolve_error=resolution.error,
        attempts=tuple(attempts),
        families=families,
    )


# --------------------------------------------------------------------------- identification


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Hints:
    """What is known before probing, used to order the probes.

    ``scheme``: the URL scheme the user typed (``redis``, ``https`` …). ``server_name``:
    a host name for SNI and the ``Host`` header. ``owners``: names of the processes that
    hold the port (``redis-server``, ``postgres`` …).
    """

    scheme: str | None = None
    server_name: str | None = None
    owners: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ProbeRecord:
    """One probe on one fresh connection, and what came back.

    ``closed``: ``"eof"``/``"reset"`` when the peer closed, None when we stopped reading
    (a verdict, or the wait ran out). ``first_bytes``: a preview of the answer.
    """

    probe: Probe
    connect_error: str | None
    sent_bytes: int
    received_bytes: int
    first_bytes: str
    closed: str | None
    elapsed_ms: float
    verdict: Verdict | None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TlsInfo:
    """The TLS session we negotiated (no verification). ``error``: the handshake failed."""

    version: str | None = None
    alpn: str | None = None
    cipher: str | None = None
    certificate: Certificate | None = None
    certificate_error: str | None = None
    error: str | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Identification:
    """What ``ip:port`` speaks. ``protocol`` is None when no connection could be made."""

    ip: str
    port: int
    family: Family
    protocol: Protocol | None
    summary: str
    verdict: Verdict | None
    tls: TlsInfo | None
    connect_error: str | None
    probes: tuple[ProbeRecord, ...]
    elapsed_ms: float


@dataclasses.dataclass(slots=True)
class _Clock:
    deadline: float
    loopback: bool

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def wait(self, loopback_s: float, other_s: float) -> float:
        return min(loopback_s if self.loopback else other_s, max(self.left(), 0.0))

    @property
    def settle(self) -> float:
        return LOOPBACK_SETTLE_S if self.loopback else SETTLE_S


def read_answer(
    sock: socket.socket,
    sniffer: Sniffer,
    *,
    wait: float,
    settle: float,
    keep: bytearray | None = None,
) -> tuple[Verdict, str | None]:
    """Read until the sniffer decides, the peer closes, or the wait runs out; return the
    verdict and how the peer closed (``"eof"``, ``"reset"``, an errno name, or None).

    After bytes that do not decide yet, wait at most ``settle`` for each further chunk
    (PostgreSQL's lone ``S`` is decided that way). Every byte read is appended to
    ``keep`` (bounded by the sniffer, which decides when full).
    """
    hard = time.monotonic() + wait
    until = hard
    while True:
        left = until - time.monotonic()
        if left <= 0:
            return sniffer.timeout(), None
        sock.settimeout(left)
        try:
            chunk = sock.recv(_RECV_BYTES)
        except TimeoutError:
            return sniffer.timeout(), None
        except ConnectionResetError:
            return sniffer.eof(), "reset"
        except OSError as exc:
            return sniffer.eof(), errno_name(exc)
        if not chunk:
            return sniffer.eof(), "eof"
        if keep is not None:
            keep += chunk
        verdict = sniffer.feed(chunk)
        if verdict is not None:
            return verdict, None
        until = min(hard, time.monotonic() + settle)


def _record(
    probe: Probe,
    started: float,
    *,
    sent: int = 0,
    received: bytes = b"",
    closed: str | None = None,
    verdict: Verdict | None = None,
    connect_error: str | None = None,
) -> ProbeRecord:
    return ProbeRecord(
        probe=probe,
        connect_error=connect_error,
        sent_bytes=sent,
        received_bytes=len(received),
        first_bytes=preview(received),
        closed=closed,
        elapsed_ms=round((time.perf_counter() - started) * 1000, 3),
        verdict=verdict,
    )


def _send(sock: socket.socket, payload: bytes) -> int:
    """Send ``payload``; a peer that already closed is not an error here (we read next)."""
    try:
        sock.sendall(payload)
    except OSError:
        return 0
    return len(payload)


def exchange(
    ip: str,
    port: int,
    probe: Probe,
    *,
    payload: bytes | None = None,
    wait: float,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    settle: float = LOOPBACK_SETTLE_S,
) -> ProbeRecord:
    """One probe on a fresh connection: connect, send, sniff the answer (bounded waits)."""
    started = time.perf_counter()
    try:
        sock = open_connection(ip, port, connect_timeout)
    except OSError as exc:
        return _record(probe, started, connect_error=errno_name(exc))
    with sock:
        data = probe_bytes(probe) if payload is None else payload
        sent = _send(sock, data) if data else 0
        kept = bytearray()
        verdict, closed = read_answer(sock, Sniffer(probe), wait=wait, settle=settle, keep=kept)
    return _record(probe, started, sent=sent, received=bytes(kept), closed=closed, verdict=verdict)


def tls_client_context(alpn: Sequence[str] = ("h2", "http/1.1")) -> ssl.SSLContext:
    """A client context for diagnosis: no verification, ALPN set, the ssl module's
    default versions (TLS 1.2+; an older server still shows as TLS by its alert).

    This looks at a server, it does not trust it: nothing sent over it is secret.
    """
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


def _server_name(hints: Hints) -> str | None:
    """SNI is a host name, never an address literal."""
    name = hints.server_name
    return name if name and _not_an_ip(name) else None


def _not_an_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return True
    return False


def _finish_handshake(
    sock: socket.socket,
    session: ssl.SSLObject,
    incoming: ssl.MemoryBIO,
    outgoing: ssl.MemoryBIO,
    deadline: float,
) -> TlsInfo:
    import ssl

    total = 0
    while True:
        try:
            session.do_handshake()
            break
        except ssl.SSLWantReadError:
            _send(sock, outgoing.read())
            left = deadline - time.monotonic()
            if left <= 0:
                return TlsInfo(error="the handshake did not finish in time")
            sock.settimeout(left)
            try:
                data = sock.recv(16384)
            except TimeoutError:
                return TlsInfo(error="the handshake did not finish in time")
            except OSError as exc:
                return TlsInfo(error=f"connection lost during the handshake ({errno_name(exc)})")
            if not data:
                return TlsInfo(error="the server closed the connection during the handshake")
            total += len(data)
            if total > MAX_TLS_BYTES:
                return TlsInfo(error=f"the handshake sent more than {MAX_TLS_BYTES} bytes")
            incoming.write(data)
        except ssl.SSLError as exc:
            _send(sock, outgoing.read())  # our alert, so the server knows why
            return TlsInfo(error=str(exc.reason or exc))
    _send(sock, outgoing.read())  # the client Finished
    cipher = session.cipher()
    certificate: Certificate | None = None
    certificate_error: str | None = None
    der = session.getpeercert(binary_form=True)
    if der:
        try:
            certificate = parse_certificate(der)
        except ProtocolError as exc:
            certificate_error = str(exc)
    else:
        certificate_error = "the server sent no certificate"
    with contextlib.suppress(ssl.SSLError):
        session.unwrap()  # close_notify; the server's answer is not awaited
    _send(sock, outgoing.read())
    return TlsInfo(
        version=session.version(),
        alpn=session.selected_alpn_protocol(),
        cipher=cipher[0] if cipher else None,
        certificate=certificate,
        certificate_error=certificate_error,
    )


def tls_probe(
    ip: str,
    port: int,
    *,
    server_name: str | None = None,
    wait: float,
    deadline: float,
    settle: float = LOOPBACK_SETTLE_S,
) -> tuple[ProbeRecord, TlsInfo | None]:
    """Send a real ClientHello (made by ``ssl.MemoryBIO``); sniff the raw answer, and
    when it is a ServerHello complete the handshake. TlsInfo is None when no handshake
    was attempted."""
    import ssl

    started = time.perf_counter()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    session = tls_client_context().wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        session.do_handshake()
    hello = outgoing.read()
    try:
        sock = open_connection(
            ip, port, min(CONNECT_TIMEOUT_S, max(deadline - time.monotonic(), 0))
        )
    except OSError as exc:
        return _record(Probe.TLS, started, connect_error=errno_name(exc)), None
    with sock:
        sent = _send(sock, hello)
        kept = bytearray()
        sniffer = Sniffer(Probe.TLS)
        verdict, closed = read_answer(sock, sniffer, wait=wait, settle=settle, keep=kept)
        info: TlsInfo | None = None
        if verdict.protocol is Protocol.TLS and not verdict.error and closed is None:
            incoming.write(bytes(kept))
            info = _finish_handshake(sock, session, incoming, outgoing, deadline)
    record = _record(
        Probe.TLS, started, sent=sent, received=bytes(kept), closed=closed, verdict=verdict
    )
    return record, info


def _suspects(port: int, hints: Hints) -> list[Protocol]:
    owners = {name.rsplit("/", 1)[-1].lower() for name in hints.owners}
    scheme = (hints.scheme or "").lower()
    found: list[Protocol] = []
    if scheme in ("redis", "rediss") or owners & set(_REDIS_OWNERS) or port in _REDIS_PORTS:
        found.append(Protocol.REDIS)
    if (
        scheme in ("postgres", "postgresql")
        or owners & set(_POSTGRES_OWNERS)
        or port in _POSTGRES_PORTS
    ):
        found.append(Protocol.POSTGRES)
    return found


def describe(protocol: Protocol | None, verdict: Verdict | None, tls: TlsInfo | None) -> str:
    """One line for people."""
    if protocol is None:
        return "no connection"
    if protocol is Protocol.TCPWRAPPED:
        return "tcpwrapped: accepted, then closed without sending a byte"
    if protocol is Protocol.SILENT:
        return "silent: connected, but no probe got an answer (it waited or closed)"
    if tls is not None and tls.error is None:
        parts = [p for p in (tls.version, f"ALPN {tls.alpn}" if tls.alpn else None) if p]
        text = f"tls ({', '.join(parts)})" if parts else "tls"
        cert = tls.certificate
        if cert is not None:
            text += f", certificate {cert.subject or '(empty subject)'}"
            if cert.san:
                text += f", SAN {' '.join(cert.san)}"
            if cert.not_after:
                text += f", expires {cert.not_after}"
        return text
    if verdict is None:
        return protocol.value
    if tls is not None and tls.error:
        return f"tls ({verdict.version or 'version unknown'}), handshake failed: {tls.error}"
    if protocol is Protocol.HTTP:
        line = verdict.detail or "HTTP"
        return f"http: {line}" + (f", server {verdict.server}" if verdict.server else "")
    return f"{protocol.value}: {verdict.detail}" if verdict.detail else protocol.value


class _Run:
    """The state of one identification: probes run so far, and the clock."""

    def __init__(self, ip: str, port: int, hints: Hints, clock: _Clock) -> None:
        self.ip = ip
        self.port = port
        self.hints = hints
        self.clock = clock
        self.records: list[ProbeRecord] = []
        self.tls: TlsInfo | None = None

    def tried(self, probe: Probe) -> bool:
        return any(record.probe is probe for record in self.records)

    def seen(self, protocol: Protocol) -> bool:
        return any(r.verdict is not None and r.verdict.protocol is protocol for r in self.records)

    def run(self, probe: Probe) -> Verdict | None:
        """Run ``probe`` unless time is up; its verdict (None: not run, or no connection)."""
        if self.clock.left() <= 0.01 or self.tried(probe):
            return None
        if probe is Probe.NULL:
            wait = self.clock.wait(LOOPBACK_NULL_WAIT_S, NULL_WAIT_S)
        else:
            wait = self.clock.wait(LOOPBACK_REPLY_WAIT_S, REPLY_WAIT_S)
        connect_timeout = min(CONNECT_TIMEOUT_S, max(self.clock.left(), 0.001))
        if probe is Probe.TLS:
            record, self.tls = tls_probe(
                self.ip,
                self.port,
                server_name=_server_name(self.hints),
                wait=wait,
                deadline=self.clock.deadline,
                settle=self.clock.settle,
            )
        else:
            payload = None
            if probe is Probe.HTTP:
                payload = http_get(self.hints.server_name or "localhost")
            record = exchange(
                self.ip,
                self.port,
                probe,
                payload=payload,
                wait=wait,
                connect_timeout=connect_timeout,
                settle=self.clock.settle,
            )
        self.records.append(record)
        return record.verdict


def identify(
    ip: str, port: int, *, timeout: float = 5.0, hints: Hints | None = None
) -> Identification:
    """What ``ip:port`` speaks, by the §4 recipe; the whole run takes at most ``timeout``.

    Never sends HTTP to a server identified as Redis (it logs "Possible SECURITY
    ATTACK"), and asks in their own protocol first when hints suggest Redis/PostgreSQL.
    """
    hints = hints or Hints()
    started = time.perf_counter()
    clock = _Clock(deadline=time.monotonic() + timeout, loopback=is_loopback(ip))
    run = _Run(ip, port, hints, clock)
    verdict = _recipe(run)
    protocol = verdict.protocol if verdict is not None else None
    connect_error = None
    if verdict is None and run.records:
        connect_error = run.records[0].connect_error or None
    if verdict is None and not connect_error:
        protocol = Protocol.SILENT
    if run.tls is not None and run.tls.error is None:
        protocol = Protocol.TLS
    return Identification(
        ip=ip,
        port=port,
        family=family_of(ip),
        protocol=protocol,
        summary=describe(protocol, verdict, run.tls),
        verdict=verdict,
        tls=run.tls,
        connect_error=connect_error,
        probes=tuple(run.records),
        elapsed_ms=round((time.perf_counter() - started) * 1000, 3),
    )


def _answered(verdict: Verdict | None) -> bool:
    return verdict is not None and verdict.protocol not in (Protocol.SILENT, Protocol.TCPWRAPPED)


def _conclude(run: _Run, answer: Verdict) -> Verdict:
    """An HTTP server that answered some other probe gets a proper GET for its details."""
    if answer.protocol is Protocol.HTTP and not run.tried(Probe.HTTP):
        http = run.run(Probe.HTTP)
        if http is not None and http.protocol is Protocol.HTTP:
            return http
    return answer


def _recipe(run: _Run) -> Verdict | None:
    """The probes in order; the deciding verdict, or None when nothing answered."""
    null = run.run(Probe.NULL)
    if null is None:
        return None  # refused, unreachable, or no time left
    if null.protocol is not Protocol.SILENT:
        return null  # a server-first banner, tcpwrapped, or unknown bytes
    for suspect in _suspects(run.port, run.hints):
        answer = run.run(Probe.REDIS if suspect is Protocol.REDIS else Probe.POSTGRES)
        if answer is not None and _answered(answer):
            return _conclude(run, answer)
    tls = run.run(Probe.TLS)
    if tls is not None and _answered(tls) and tls.protocol is not Protocol.UNKNOWN:
        return _conclude(run, tls)  # TLS, plain HTTP, Redis's -ERR, h2c …
    if tls is None or tls.protocol is Protocol.SILENT:
        answer = run.run(Probe.REDIS)  # Redis waits silently on a ClientHello: PING first
        if answer is not None and _answered(answer):
            return _conclude(run, answer)
    elif tls.protocol is Protocol.TCPWRAPPED:
        answer = run.run(Probe.POSTGRES)  # PostgreSQL closes on a ClientHello
        if answer is not None and _answered(answer):
            return _conclude(run, answer)
    if not run.seen(Protocol.REDIS):
        http = run.run(Probe.HTTP)
        if http is not None and _answered(http):
            return http
    for probe in (Probe.H2, Probe.POSTGRES, Probe.REDIS):
        answer = run.run(probe)
        if answer is not None and _answered(answer):
            return _conclude(run, answer)
    return tls if tls is not None and tls.protocol is Protocol.UNKNOWN else None


def owner_names(port: int) -> tuple[str, ...]:
    """Names of the processes listening on ``port`` (this network namespace), if visible."""
    from portside.errors import PortsideError
    from portside.inspect import who

    try:
        holders = who(str(port), namespaces=False)
    except PortsideError:
        return ()
    names: list[str] = []
    for entry in holders.sockets:
        for owner in entry.owners:
            if owner.process.name not in names:
                names.append(owner.process.name)
    return tuple(names)
