"""Wait until every target is ready: the library behind ``portside wait``.

What "ready" means depends on the target's scheme:

==========================  =================================================================
target                      ready when
==========================  =================================================================
``HOST:PORT``, ``tcp://``,  a TCP connection is accepted (a self-connection does not count)
``ws://``
``tcp+tls://``, ``wss://``  a TLS handshake completes (the certificate is not verified)
``http://``, ``https://``   a ``GET`` of the URL's path answers with a status in ``statuses``
                            (default 200-399) and, when ``body`` is set, a body containing it
``redis://``, ``rediss://`` ``PING`` is answered: ``+PONG``, or an error meaning "running but
                            not for you" (``-NOAUTH``, ``-WRONGPASS``, ``-DENIED``); not
                            ``-LOADING``/``-BUSY``/``-MASTERDOWN``/``-TRYAGAIN``
``postgres://``             the SSLRequest is answered with ``S`` or ``N``
``mysql://``                a protocol-10 greeting arrives (not an error packet)
``ssh://``                  an ``SSH-`` banner arrives
==========================  =================================================================

A name is resolved on every attempt and *every* address is tried (IPv4 and IPv6), so a
server listening on 127.0.0.1 only is found even when ``localhost`` resolves to ::1 first;
``:PORT`` means 127.0.0.1 and ::1. The answer says which address and family were ready.
Each attempt at each address is bounded by ``attempt_timeout``, and the whole wait by
``timeout`` (at least one attempt is made at every target).
"""

from __future__ import annotations

import dataclasses
import enum
import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from portside.addresses import HostKind, Target, parse_target
from portside.errors import UsageError
from portside.models import Family
from portside.probe import (
    LOOPBACK_SETTLE_S,
    SETTLE_S,
    errno_name,
    is_loopback,
    open_connection,
    read_answer,
    resolve,
    tls_client_context,
)
from portside.sniff import Probe, Protocol, Sniffer, Verdict, head_length, http_get, probe_bytes

if TYPE_CHECKING:
    import ssl

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_INTERVAL_S = 0.5
#: Bound on one attempt at one address of a target.
ATTEMPT_TIMEOUT_S = 2.0
#: Even when the wait's deadline has come, each address gets this long (a loopback
#: connect or refusal takes well under a millisecond).
_MIN_ADDRESS_S = 0.05
#: Bound on the bytes of an HTTP answer read to look for ``body``.
MAX_HTTP_BYTES = 1024 * 1024
DEFAULT_STATUSES: tuple[tuple[int, int], ...] = ((200, 399),)
#: Redis errors that mean "running, but not for you": the protocol answers.
_REDIS_ANSWERS = ("NOAUTH", "WRONGPASS", "DENIED")


class Readiness(enum.StrEnum):
    TCP = "tcp"
    TLS = "tls"
    HTTP = "http"
    HTTPS = "https"
    REDIS = "redis"
    REDISS = "rediss"
    POSTGRES = "postgres"
    MYSQL = "mysql"
    SSH = "ssh"


_BY_SCHEME = {
    None: Readiness.TCP,
    "tcp": Readiness.TCP,
    "ws": Readiness.TCP,
    "tcp+tls": Readiness.TLS,
    "wss": Readiness.TLS,
    "http": Readiness.HTTP,
    "https": Readiness.HTTPS,
    "redis": Readiness.REDIS,
    "rediss": Readiness.REDISS,
    "postgres": Readiness.POSTGRES,
    "postgresql": Readiness.POSTGRES,
    "mysql": Readiness.MYSQL,
    "ssh": Readiness.SSH,
}
_OVER_TLS = (Readiness.TLS, Readiness.HTTPS, Readiness.REDISS)


def readiness_of(target: Target) -> Readiness:
    return _BY_SCHEME.get(target.scheme, Readiness.TCP)


def parse_statuses(text: str) -> tuple[tuple[int, int], ...]:
    """``"200-299,401"`` -> ((200, 299), (401, 401)); UsageError when malformed."""
    ranges: list[tuple[int, int]] = []
    for part in text.split(","):
        low_text, dash, high_text = part.strip().partition("-")
        try:
            low = int(low_text)
            high = int(high_text) if dash else low
        except ValueError:
            raise UsageError(
                f"--status {text!r}: write codes and ranges such as 200-299,401"
            ) from None
        if not 100 <= low <= high <= 599:
            raise UsageError(f"--status {text!r}: {part.strip()!r} is not a range within 100-599")
        ranges.append((low, high))
    return tuple(ranges)


def statuses_text(statuses: Sequence[tuple[int, int]]) -> str:
    return ",".join(str(low) if low == high else f"{low}-{high}" for low, high in statuses)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Condition:
    """What an HTTP(S) target must answer. Other targets ignore it."""

    statuses: tuple[tuple[int, int], ...] = DEFAULT_STATUSES
    body: str | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    """One attempt at one target. ``detail``: what was seen (ready or not)."""

    ready: bool
    detail: str
    ip: str | None = None
    family: Family | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TargetStatus:
    """Where one target stands. ``last_error``: why the latest attempt was not ready."""

    target: str
    readiness: Readiness
    ready: bool
    attempts: int
    ip: str | None
    family: Family | None
    ready_after_s: float | None
    detail: str | None
    last_error: str | None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WaitResult:
    ready: bool
    elapsed_s: float
    timeout_s: float
    targets: tuple[TargetStatus, ...]


# --------------------------------------------------------------------------- one attempt


class _NotReady(Exception):
    """Internal: the attempt at one address failed; the message says why."""


def _host_header(target: Target, port: int) -> str:
    host = target.host or "localhost"
    if target.host_kind is HostKind.IP and ":" in host:
        host = f"[{host}]"
    default = 443 if target.scheme == "https" else 80
    return host if port == default else f"{host}:{port}"


def _recv(sock: socket.socket, deadline: float) -> bytes:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _NotReady("no answer in time")
    sock.settimeout(left)
    try:
        return sock.recv(65536)
    except TimeoutError:
        raise _NotReady("no answer in time") from None
    except OSError as exc:
        raise _NotReady(f"connection lost ({errno_name(exc)})") from None


def _sniff(sock: socket.socket, probe: Probe, deadline: float) -> Verdict:
    """Send ``probe`` and sniff the answer; _NotReady when nothing came back in time."""
    payload = probe_bytes(probe)
    if payload:
        try:
            sock.sendall(payload)
        except OSError as exc:
            raise _NotReady(f"connection lost ({errno_name(exc)})") from None
    settle = LOOPBACK_SETTLE_S if is_loopback(sock.getpeername()[0]) else SETTLE_S
    wait = max(deadline - time.monotonic(), 0.0)
    verdict, _closed = read_answer(sock, Sniffer(probe), wait=wait, settle=settle)
    if verdict.protocol is Protocol.SILENT:
        raise _NotReady("no answer in time")
    return verdict


def _header(head: bytes, name: str) -> str | None:
    for line in head.decode("latin-1").split("\n")[1:]:
        key, colon, value = line.partition(":")
        if colon and key.strip().lower() == name:
            return value.strip()
    return None


def _read_http(
    sock: socket.socket, condition: Condition, deadline: float
) -> tuple[bytes, int | None]:
    """The answer's bytes: through the head, or through the body when ``body`` is wanted
    (Content-Length, else until the server closes, bounded by MAX_HTTP_BYTES)."""
    data = b""
    head_end: int | None = None
    wanted: int | None = None
    while len(data) < MAX_HTTP_BYTES:
        if head_end is not None and (
            condition.body is None or (wanted is not None and len(data) - head_end >= wanted)
        ):
            break
        try:
            chunk = _recv(sock, deadline)
        except _NotReady:
            if not data:
                raise
            break  # judge what arrived: a keep-alive answer without a length
        if not chunk:
            break
        data += chunk
        if head_end is None:
            head_end = head_length(data)
            if head_end is not None:
                length = _header(data[:head_end], "content-length")
                wanted = int(length) if length and length.isdigit() else None
    return data, head_end


def _http(
    sock: socket.socket, target: Target, port: int, condition: Condition, deadline: float
) -> str:
    try:
        sock.sendall(http_get(_host_header(target, port), target.path or "/"))
    except OSError as exc:
        raise _NotReady(f"connection lost ({errno_name(exc)})") from None
    data, head_end = _read_http(sock, condition, deadline)
    sniffer = Sniffer(Probe.HTTP)
    verdict = sniffer.feed(data) or sniffer.eof()
    if verdict.protocol is not Protocol.HTTP or verdict.status is None:
        shown = f": {verdict.detail}" if verdict.detail else ""
        raise _NotReady(f"no HTTP status line ({verdict.protocol.value}{shown})")
    status_line = f"HTTP {verdict.status}" + (f" {verdict.reason}" if verdict.reason else "")
    if not any(low <= verdict.status <= high for low, high in condition.statuses):
        raise _NotReady(f"{status_line}: status not in {statuses_text(condition.statuses)}")
    if condition.body is not None:
        body = data[head_end if head_end is not None else len(data) :]
        if condition.body.encode("utf-8") not in body:
            raise _NotReady(f"{status_line}, but the body does not contain {condition.body!r}")
    return status_line


def _wrap_tls(sock: socket.socket, target: Target, readiness: Readiness) -> ssl.SSLSocket:
    import ssl

    alpn = ("http/1.1",) if readiness is Readiness.HTTPS else ()
    server_name = target.host if target.host_kind is HostKind.NAME else None
    try:
        return tls_client_context(alpn).wrap_socket(sock, server_hostname=server_name)
    except ssl.SSLError as exc:
        raise _NotReady(f"TLS handshake failed: {exc.reason or exc}") from None
    except TimeoutError:
        raise _NotReady("TLS handshake did not finish in time") from None
    except OSError as exc:
        raise _NotReady(f"TLS handshake failed: connection lost ({errno_name(exc)})") from None


def _redis_ready(verdict: Verdict) -> str:
    if verdict.protocol is not Protocol.REDIS:
        raise _NotReady(f"no Redis answer to PING ({verdict.protocol.value}: {verdict.detail})")
    word = (verdict.detail or "").lstrip("+-").split(" ", 1)[0]
    if verdict.error and word not in _REDIS_ANSWERS:
        raise _NotReady(f"Redis answered {verdict.detail}")
    return f"Redis answered {verdict.detail}"


def _expect(verdict: Verdict, protocol: Protocol, what: str) -> str:
    if verdict.protocol is not protocol:
        shown = (
            f"{verdict.protocol.value}: {verdict.detail}"
            if verdict.detail
            else verdict.protocol.value
        )
        raise _NotReady(f"no {what} answer ({shown})")
    if verdict.error:
        raise _NotReady(f"{what} answered with an error: {verdict.detail}")
    return f"{what}: {verdict.detail}"


def _speak(
    channel: socket.socket, target: Target, port: int, condition: Condition, deadline: float
) -> str:
    """Ask what the scheme implies on a connected channel; raise _NotReady if not ready."""
    readiness = readiness_of(target)
    if readiness is Readiness.TCP:
        return "connected"
    if readiness in (Readiness.HTTP, Readiness.HTTPS):
        return _http(channel, target, port, condition, deadline)
    if readiness in (Readiness.REDIS, Readiness.REDISS):
        return _redis_ready(_sniff(channel, Probe.REDIS, deadline))
    if readiness is Readiness.POSTGRES:
        return _expect(_sniff(channel, Probe.POSTGRES, deadline), Protocol.POSTGRES, "PostgreSQL")
    if readiness is Readiness.MYSQL:
        return _expect(_sniff(channel, Probe.NULL, deadline), Protocol.MYSQL, "MySQL")
    if readiness is Readiness.SSH:
        return _expect(_sniff(channel, Probe.NULL, deadline), Protocol.SSH, "SSH")
    return "TLS handshake completed"  # Readiness.TLS: the handshake was the test


def _check_address(
    target: Target, ip: str, port: int, condition: Condition, deadline: float
) -> str:
    """The detail when ``ip`` is ready; raises _NotReady with the reason otherwise."""
    try:
        sock = open_connection(ip, port, max(deadline - time.monotonic(), 0.001))
    except OSError as exc:
        raise _NotReady(errno_name(exc)) from None
    tls: ssl.SSLSocket | None = None
    try:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        readiness = readiness_of(target)
        if readiness not in _OVER_TLS:
            return _speak(sock, target, port, condition, deadline)
        tls = _wrap_tls(sock, target, readiness)
        return f"{tls.version() or 'TLS'}: " + _speak(tls, target, port, condition, deadline)
    finally:
        if tls is not None:
            tls.close()  # wrap_socket took over the descriptor
        sock.close()


def check(
    target: Target,
    condition: Condition | None = None,
    *,
    timeout: float = ATTEMPT_TIMEOUT_S,
    deadline: float | None = None,
) -> Check:
    """One attempt: every address of ``target`` in resolver order, until one is ready.

    Each address gets its own ``timeout`` (a firewall dropping ::1 must not starve
    127.0.0.1), cut short by ``deadline`` (a ``time.monotonic()`` value) when given.
    """
    condition = condition or Condition()
    if target.port is None:
        raise UsageError(f"{target.text!r}: no port given; write HOST:PORT or a URL")
    resolution = resolve(target)
    if not resolution.addresses:
        return Check(ready=False, detail=resolution.error or "the name does not resolve")
    failures: list[str] = []
    for address in resolution.addresses:
        until = time.monotonic() + timeout
        if deadline is not None:
            until = max(min(until, deadline), time.monotonic() + _MIN_ADDRESS_S)
        try:
            detail = _check_address(target, address.ip, target.port, condition, until)
        except _NotReady as exc:
            failures.append(f"{_shown(address.ip, target.port)} {exc}")
            continue
        return Check(ready=True, detail=detail, ip=address.ip, family=address.family)
    return Check(ready=False, detail="; ".join(failures))


def _shown(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


# --------------------------------------------------------------------------- the loop


def wait_for(
    targets: Sequence[str | Target],
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    interval: float = DEFAULT_INTERVAL_S,
    condition: Condition | None = None,
    attempt_timeout: float = ATTEMPT_TIMEOUT_S,
    on_progress: Callable[[WaitResult], None] | None = None,
) -> WaitResult:
    """Poll every target until all are ready or ``timeout`` passes (at least one attempt).

    Targets still waiting are checked concurrently, one thread each, once per
    ``interval``. ``on_progress`` gets a snapshot after every round.
    Raises UsageError (exit 2) for a target that cannot be parsed or has no port.
    """
    parsed = [parse_target(t, require_port=True) if isinstance(t, str) else t for t in targets]
    if not parsed:
        raise UsageError("give at least one target to wait for")
    if timeout < 0 or interval < 0 or attempt_timeout <= 0:
        raise UsageError("timeouts and the interval must be positive numbers of seconds")
    for target in parsed:
        if target.port is None or target.port == 0:
            raise UsageError(f"{target.text!r}: no port given; write HOST:PORT or a URL")
    condition = condition or Condition()
    started = time.monotonic()
    deadline = started + timeout
    states = [
        TargetStatus(
            target=t.text,
            readiness=readiness_of(t),
            ready=False,
            attempts=0,
            ip=None,
            family=None,
            ready_after_s=None,
            detail=None,
            last_error=None,
        )
        for t in parsed
    ]

    def snapshot() -> WaitResult:
        return WaitResult(
            ready=all(s.ready for s in states),
            elapsed_s=round(time.monotonic() - started, 3),
            timeout_s=timeout,
            targets=tuple(states),
        )

    def attempt(index: int) -> Check:
        return check(parsed[index], condition, timeout=attempt_timeout, deadline=deadline)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(
        max_workers=max(1, len(parsed)), thread_name_prefix="portside-wait"
    ) as pool:
        while True:
            pending = [i for i, s in enumerate(states) if not s.ready]
            results = list(pool.map(attempt, pending))
            for index, result in zip(pending, results, strict=True):
                state = states[index]
                if result.ready:
                    states[index] = dataclasses.replace(
                        state,
                        ready=True,
                        attempts=state.attempts + 1,
                        ip=result.ip,
                        family=result.family,
                        ready_after_s=round(time.monotonic() - started, 3),
                        detail=result.detail,
                    )
                else:
                    states[index] = dataclasses.replace(
                        state, attempts=state.attempts + 1, last_error=result.detail
                    )
            current = snapshot()
            if on_progress is not None:
                on_progress(current)
            if current.ready or time.monotonic() >= deadline:
                return current
            time.sleep(max(0.0, min(interval, deadline - time.monotonic())))  # poll pacing
