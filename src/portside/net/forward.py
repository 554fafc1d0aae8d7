"""TCP forwarding: ``open_forwarder`` / ``serve_forwarder``, zero-copy where Linux allows.

::

    forwarder = await open_forwarder("127.0.0.1:0", "127.0.0.1:5432")
    forwarder.address        # the bound Endpoint (the real port when 0 was asked for)
    forwarder.stats()        # ForwardStats: counters, per-connection bytes
    forwarder.set_faults(…)  # only when opened with faults=Faults(…) (see faults.py)
    await forwarder.aclose() # stop accepting, let connections drain, then close

Two data paths, same behaviour (bytes, half-close, limits, counters, idle timeout):

* **splice** (Linux, no fault injection): the sockets stay raw and non-blocking; when one
  is readable its bytes go ``socket -> pipe -> socket`` with ``os.splice`` and never enter
  user space. A pipe is taken from a small pool only while bytes are in flight, so idle
  connections cost their two sockets and nothing else; when no pipe can be had (file
  limit) the bytes are copied instead. No ``SPLICE_F_MORE``: it held small writes back.
* **copy** (elsewhere, and whenever faults are enabled): ``asyncio.Protocol`` on both
  sockets, backpressure by pausing the reading side while the writing side's buffer is
  above its high-water mark; with faults, each direction goes through a
  :class:`~portside.net.faults.Schedule` (latency, bandwidth, slices, resets …) with a
  bounded queue.

Half-close: the end of one direction becomes ``shutdown(SHUT_WR)`` on the other socket,
and the other direction goes on until it ends too; then both sockets close. A reset from
either peer is passed on as a reset.

Resource handling: the caller owns the :class:`Forwarder` and must ``aclose()`` it (or use
``async with``). Every task it starts (one per connection while the target is being
dialled, the idle sweeper) belongs to it and is cancelled and awaited by ``aclose()``;
the rest runs in loop callbacks that ``aclose()`` stops.

Error handling: a target that cannot be reached resets the client connection and is
counted (``failed``, ``last_error``); running out of file descriptors pauses accepting
for a moment (``ACCEPT_CAPACITY_ERRNOS``); at ``max_connections`` accepting pauses until
a connection ends (new clients wait in the listen backlog).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import errno
import ipaddress
import os
import socket
import struct
import sys
import time
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal, cast

from portside.addresses import HostKind, parse_target
from portside.errors import PortsideError, UsageError
from portside.models import Endpoint
from portside.net._loop import loop_name
from portside.net.faults import (
    Action,
    Direction,
    Faults,
    Schedule,
    Step,
    faults_from_mapping,
    faults_to_mapping,
    parse_duration,
)

__all__ = [
    "ConnectionStats",
    "ForwardConfig",
    "ForwardError",
    "ForwardSpec",
    "ForwardStats",
    "Forwarder",
    "Limits",
    "load_config",
    "open_forwarder",
    "parse_listen",
    "parse_upstream",
    "serve_forwarder",
]

CONNECT_TIMEOUT_S = 10.0
DRAIN_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 10_000
LISTEN_BACKLOG = 4096
#: Pipe capacity asked for (F_SETPIPE_SZ); the kernel may give less.
PIPE_BYTES = 1 << 20
#: Idle pipes kept for reuse; the pool empties when no connection is left.
PIPE_POOL_KEEP = 32
#: Splice rounds per readable event, so that one busy connection cannot starve the rest.
SPLICE_ROUNDS = 4
#: A splice that moved less than this ends the round early (the socket was drained).
SPLICE_SMALL_BYTES = 64 * 1024
COPY_CHUNK_BYTES = 256 * 1024
#: A transport's write buffer above this pauses the peer's reading (backpressure).
WRITE_HIGH_BYTES = 512 * 1024
#: With faults: bytes waiting for their time above HIGH pause reading, below LOW resume.
QUEUE_HIGH_BYTES = 1 << 20
QUEUE_LOW_BYTES = 256 * 1024
ACCEPT_BATCH = 64
#: Fault timers fire this much after their step is due (never before: see _Relay._arm).
TIMER_SLACK_S = 0.0005
#: A ``reset_after`` fault waits up to ROUNDS x S for the bytes before it to be delivered.
RESET_WAIT_S = 0.005
RESET_WAIT_ROUNDS = 400
ACCEPT_RETRY_S = 0.1
#: Closed connections remembered for ``stats()``.
HISTORY = 1000
#: accept() failures that mean "out of resources for now": pause, then retry.
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: accept() failures about one connection that is already gone: skip it.
ACCEPT_SKIP_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR})

DataPath = Literal["auto", "splice", "copy"]

if sys.platform == "linux":
    import fcntl
    import termios

    SPLICE_AVAILABLE = True
    _SPLICE_NONBLOCK: int = os.SPLICE_F_NONBLOCK

    def _splice(src: int, dst: int, count: int) -> int:
        return os.splice(src, dst, count, flags=_SPLICE_NONBLOCK)

    def _new_pipe() -> tuple[int, int]:
        read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # EPERM over the per-user pipe quota: default size
            fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        return read_end, write_end
else:
    SPLICE_AVAILABLE = False

    def _splice(src: int, dst: int, count: int) -> int:
        raise OSError(errno.ENOSYS, "splice is Linux-only")

    def _new_pipe() -> tuple[int, int]:
        raise OSError(errno.ENOSYS, "splice is Linux-only")


class ForwardError(PortsideError):
    """A forward could not be set up (address in use, target unresolvable, …)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Bounds of one forward. Durations in seconds; ``None`` means no idle timeout."""

    max_connections: int = MAX_CONNECTIONS
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    idle_timeout_s: float | None = None
    drain_timeout_s: float = DRAIN_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if self.connect_timeout_s <= 0 or self.drain_timeout_s < 0:
            raise ValueError("timeouts must be positive")
        if self.idle_timeout_s is not None and self.idle_timeout_s <= 0:
            raise ValueError("idle_timeout_s must be positive (or None)")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionStats:
    """One client connection. ``end`` says why it ended (None while open):
    ``done`` (both directions ended), ``closed`` (a peer closed), ``reset`` (a peer reset),
    ``error``, ``fault-reset``, ``idle-timeout``, ``shutdown``, ``upstream-failed``."""

    id: int
    client: Endpoint
    started: float  # seconds since the epoch
    duration_s: float
    bytes_up: int  # client -> target, bytes delivered
    bytes_down: int  # target -> client
    buffered_bytes: int  # held by the forwarder right now (pipe, queue, write buffers)
    state: str  # "connecting", "open", "closed"
    end: str | None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ForwardStats:
    """Counters of one forward; ``connections`` lists the open ones and the last closed
    ones (at most ``HISTORY``), oldest first."""

    name: str
    listen: Endpoint
    target: str
    data_path: str  # "splice" or "copy"
    loop: str
    faults: dict[str, object] | None  # mapping form (faults.py); None: fault injection off
    accepted: int
    active: int
    refused: int  # closed at once by the ``refuse`` fault
    failed: int  # the target could not be reached
    bytes_up: int
    bytes_down: int
    last_error: str | None
    connections: tuple[ConnectionStats, ...]


def parse_listen(text: str) -> Endpoint:
    """``8080``, ``:8080``, ``127.0.0.1:8080``, ``[::1]:0``, ``localhost:8080`` -> Endpoint.

    No host means 127.0.0.1; ``localhost`` is 127.0.0.1. Other names are refused (bind an
    address, not a name).

    Raises:
        TargetError / UsageError: not an address to listen on.
    """
    target = parse_target(text, require_port=True)
    assert target.port is not None  # noqa: S101 -- require_port=True guarantees it
    if target.host_kind is HostKind.NONE or target.host == "localhost":
        return Endpoint(ip="127.0.0.1", port=target.port)
    if target.host_kind is HostKind.NAME or target.host is None:
        raise UsageError(f"{text!r}: listen on an IP address (127.0.0.1, ::1), not a name")
    return Endpoint(ip=target.host, port=target.port)


def parse_upstream(text: str) -> tuple[str, int]:
    """``5432``, ``db.localhost:5432``, ``[::1]:5432``, ``tcp://…`` -> (host, port);
    no host means 127.0.0.1.

    Raises:
        TargetError: not an endpoint with a port.
    """
    target = parse_target(text, require_port=True)
    assert target.port is not None  # noqa: S101 -- require_port=True guarantees it
    if target.port == 0:
        raise UsageError(f"{text!r}: the target needs a real port, not 0")
    return target.host or "127.0.0.1", target.port


def _endpoint_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), quietly."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _nodelay(sock: socket.socket) -> None:
    # Nagle in the middle would hold small writes back a second time.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# -- connections ----------------------------------------------------------------------------


class _Conn:
    """What both data paths share: identity, counters, the end."""

    def __init__(self, forwarder: Forwarder, conn_id: int, client: Endpoint) -> None:
        self.forwarder = forwarder
        self.loop = forwarder.loop
        self.id = conn_id
        self.client = client
        self.started = time.time()
        self.started_mono = time.monotonic()
        self.last_active = self.loop.time()
        self.state = "connecting"
        self.end: str | None = None
        self.ended_mono: float | None = None

    def bytes_up(self) -> int:
        return 0

    def bytes_down(self) -> int:
        return 0

    def buffered(self) -> int:
        return 0

    def close(self, reason: str) -> None:
        """End gracefully: pending bytes go out, then FIN (idle timeout, drain)."""
        self.finish(reason)

    def abort(self, reason: str, *, reset: bool = False) -> None:
        """End now; with *reset*, both peers get a TCP reset."""
        self.finish(reason)

    def finish(self, reason: str) -> None:
        if self.state == "closed":
            return
        self.state = "closed"
        self.end = self.end or reason
        self.ended_mono = time.monotonic()
        self.forwarder._forget(self)

    def snapshot(self) -> ConnectionStats:
        end = self.ended_mono if self.ended_mono is not None else time.monotonic()
        return ConnectionStats(
            id=self.id,
            client=self.client,
            started=self.started,
            duration_s=round(end - self.started_mono, 6),
            bytes_up=self.bytes_up(),
            bytes_down=self.bytes_down(),
            buffered_bytes=self.buffered(),
            state=self.state,
            end=self.end,
        )


class _PipePool:
    """Pipes for splicing, lent only while bytes are in them."""

    def __init__(self) -> None:
        self.free: list[tuple[int, int]] = []

    def acquire(self) -> tuple[int, int] | None:
        if self.free:
            return self.free.pop()
        try:
            return _new_pipe()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                return None  # no file descriptor left: the caller copies instead
            raise

    def release(self, pipe: tuple[int, int]) -> None:
        if len(self.free) < PIPE_POOL_KEEP:
            self.free.append(pipe)
        else:
            self.discard(pipe)

    @staticmethod
    def discard(pipe: tuple[int, int]) -> None:
        for fd in pipe:
            with contextlib.suppress(OSError):
                os.close(fd)

    def clear(self) -> None:
        while self.free:
            self.discard(self.free.pop())


class _SpliceDirection:
    """One direction of a splice connection: readable src -> pipe -> dst."""

    __slots__ = (
        "bytes",
        "conn",
        "done",
        "dst",
        "dst_fd",
        "eof",
        "in_pipe",
        "loop",
        "pending",
        "pipe",
        "reading",
        "src",
        "src_fd",
        "writing",
    )

    def __init__(self, conn: _SpliceConnection, src: socket.socket, dst: socket.socket) -> None:
        self.conn = conn
        self.loop = conn.loop
        self.src, self.dst = src, dst
        self.src_fd, self.dst_fd = src.fileno(), dst.fileno()
        self.pipe: tuple[int, int] | None = None
        self.in_pipe = 0
        self.pending: memoryview | None = None  # copied bytes not yet written (no pipe)
        self.bytes = 0
        self.reading = self.writing = self.eof = self.done = False

    def start(self) -> None:
        self.reading = True
        self.loop.add_reader(self.src_fd, self._on_readable)

    def stop(self) -> None:
        """Unregister from the loop; give back or drop the pipe."""
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.src_fd)
        if self.writing:
            self.writing = False
            self.loop.remove_writer(self.dst_fd)
        if self.pipe is not None:
            pool = self.conn.forwarder._pipes
            if self.in_pipe == 0:
                pool.release(self.pipe)
            else:
                pool.discard(self.pipe)
            self.pipe = None
            self.in_pipe = 0

    def buffered(self) -> int:
        return self.in_pipe + (len(self.pending) if self.pending is not None else 0)

    def _wait_writable(self) -> None:
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.src_fd)
        if not self.writing:
            self.writing = True
            self.loop.add_writer(self.dst_fd, self._on_writable)

    def _on_readable(self) -> None:
        conn = self.conn
        conn.last_active = self.loop.time()
        pool = conn.forwarder._pipes
        try:
            for _ in range(SPLICE_ROUNDS):
                if self.pipe is None:
                    self.pipe = pool.acquire()
                    if self.pipe is None:
                        self._copy_once()
                        return
                try:
                    count = _splice(self.src_fd, self.pipe[1], PIPE_BYTES)
                except BlockingIOError:
                    if not self.in_pipe:  # nothing after all: an idle connection holds no pipe
                        pool.release(self.pipe)
                        self.pipe = None
                    return
                if count == 0:
                    self._end_of_stream()
                    return
                self.in_pipe = count
                if not self._flush():
                    return
                if count < SPLICE_SMALL_BYTES:
                    # Most likely all there was (a request, a reply): asking again would
                    # cost a syscall and an exception; if more came, the loop says so.
                    return
        except OSError as exc:
            conn.failed(exc)

    def _copy_once(self) -> None:
        try:
            data = os.read(self.src_fd, COPY_CHUNK_BYTES)
        except BlockingIOError:
            return
        if not data:
            self._end_of_stream()
            return
        self.pending = memoryview(data)
        self._flush()

    def _flush(self) -> bool:
        """Write what is held; True when nothing is left (else wait until writable)."""
        if self.pending is not None:
            try:
                sent = os.write(self.dst_fd, self.pending)
            except BlockingIOError:
                sent = 0
            self.bytes += sent
            self.pending = self.pending[sent:] if sent < len(self.pending) else None
            if self.pending is not None:
                self._wait_writable()
                return False
        while self.in_pipe:
            assert self.pipe is not None  # noqa: S101 -- bytes in the pipe imply a pipe
            try:
                sent = _splice(self.pipe[0], self.dst_fd, self.in_pipe)
            except BlockingIOError:
                self._wait_writable()
                return False
            self.in_pipe -= sent
            self.bytes += sent
        if self.pipe is not None:
            self.conn.forwarder._pipes.release(self.pipe)
            self.pipe = None
        return True

    def _on_writable(self) -> None:
        self.conn.last_active = self.loop.time()
        try:
            if not self._flush():
                return
        except OSError as exc:
            self.conn.failed(exc)
            return
        self.writing = False
        self.loop.remove_writer(self.dst_fd)
        if self.eof:
            self._end_of_stream()
        else:
            self.reading = True
            self.loop.add_reader(self.src_fd, self._on_readable)

    def _end_of_stream(self) -> None:
        self.eof = True
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.src_fd)
        if self.buffered():
            self._wait_writable()
            return
        with contextlib.suppress(OSError):  # the peer may be gone already
            self.dst.shutdown(socket.SHUT_WR)
        self.done = True
        self.conn.direction_done()


class _SpliceConnection(_Conn):
    def attach(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client_sock, self.upstream_sock = client, upstream
        self.up = _SpliceDirection(self, client, upstream)
        self.down = _SpliceDirection(self, upstream, client)
        self.state = "open"
        self.last_active = self.loop.time()
        self.up.start()
        self.down.start()

    def bytes_up(self) -> int:
        return self.up.bytes if self.state != "connecting" else 0

    def bytes_down(self) -> int:
        return self.down.bytes if self.state != "connecting" else 0

    def buffered(self) -> int:
        if self.state == "connecting":
            return 0
        return self.up.buffered() + self.down.buffered()

    def direction_done(self) -> None:
        if self.up.done and self.down.done:
            self._shut("done", reset=False)

    def failed(self, exc: OSError) -> None:
        reason = "reset" if isinstance(exc, (ConnectionResetError, BrokenPipeError)) else "error"
        self._shut(reason, reset=True)

    def close(self, reason: str) -> None:
        if self.state == "open":
            self._shut(reason, reset=False)
        else:
            self.finish(reason)

    def abort(self, reason: str, *, reset: bool = False) -> None:
        if self.state == "open":
            self._shut(reason, reset=reset)
        else:
            self.finish(reason)

    def _shut(self, reason: str, *, reset: bool) -> None:
        if self.state == "closed":
            return
        self.up.stop()
        self.down.stop()
        # Forgotten first: the last connection empties the pipe pool before its sockets
        # close, so whoever sees the sockets gone sees the pipes gone too.
        self.finish(reason)
        for sock in (self.client_sock, self.upstream_sock):
            _reset(sock) if reset else sock.close()


class _Side(asyncio.Protocol):
    """One socket of a copy connection. Bytes it receives leave through ``out``; the
    relay that writes into it is ``into``."""

    __slots__ = ("conn", "early", "early_eof", "into", "lost", "made", "out", "transport")

    def __init__(self, conn: _CopyConnection) -> None:
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self.out: _Relay | None = None
        self.into: _Relay | None = None
        self.made = self.lost = False
        # uvloop may deliver bytes (or the end) read before pause_reading() took effect,
        # while the other side does not exist yet: kept here until link().
        self.early: list[bytes] = []
        self.early_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.made = True
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_BYTES)
        if not self.conn.linked:
            self.transport.pause_reading()  # until the other side exists

    def data_received(self, data: bytes) -> None:
        if not self.conn.linked:
            self.early.append(data)
            return
        out = self.out
        if out is not None:
            out.feed(data)

    def eof_received(self) -> bool:
        if not self.conn.linked:
            self.early_eof = True
        elif self.out is not None:
            self.out.feed_eof()
        return True  # keep the socket open for the other direction (half-close)

    def replay_early(self) -> None:
        """Pass on what arrived before both sides existed."""
        early, self.early = self.early, []
        for data in early:
            if self.out is not None:
                self.out.feed(data)
        if self.early_eof and self.out is not None:
            self.early_eof = False
            self.out.feed_eof()

    def pause_writing(self) -> None:
        if self.into is not None:
            self.into.hold(_HOLD_DST, True)

    def resume_writing(self) -> None:
        if self.into is not None:
            self.into.hold(_HOLD_DST, False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.conn.side_lost(exc)


_HOLD_DST = 1  # the destination's write buffer is full
_HOLD_QUEUE = 2  # the fault queue is full


class _Relay:
    """One direction of a copy connection; with a schedule, faults shape it."""

    __slots__ = (
        "bytes",
        "clean",
        "conn",
        "dst",
        "eof_sent",
        "finished",
        "held",
        "loop",
        "next_step",
        "queue",
        "queued",
        "schedule",
        "silenced",
        "src",
        "timer",
        "timer_at",
        "waited",
    )

    def __init__(
        self, conn: _CopyConnection, src: _Side, dst: _Side, schedule: Schedule | None
    ) -> None:
        self.conn, self.loop = conn, conn.loop
        self.src, self.dst = src, dst
        self.schedule = schedule
        self.clean = schedule is None or schedule.link.is_clean
        self.bytes = 0
        self.held = 0
        self.finished = self.eof_sent = self.silenced = False
        # With faults: [ready_at, bytes (None: end of stream), offset] in arrival order.
        self.queue: collections.deque[list[object]] = collections.deque()
        self.queued = 0
        self.next_step: Step | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.waited = 0

    # -- input ---------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        conn = self.conn
        conn.last_active = self.loop.time()
        if self.silenced or conn.closing:
            return
        if self.clean and not self.queue:
            self.dst.transport.write(data)  # type: ignore[union-attr]  # linked: both exist
            self.bytes += len(data)
            if self.schedule is not None:
                self.schedule.planned_bytes += len(data)
            return
        assert self.schedule is not None  # noqa: S101 -- not clean implies a schedule
        self.queue.append([self.schedule.arrive(_clock()), data, 0])
        self.queued += len(data)
        if self.queued >= QUEUE_HIGH_BYTES:
            self.hold(_HOLD_QUEUE, True)
        self.pump()

    def feed_eof(self) -> None:
        if self.silenced:
            self.finished = True
            self.conn.direction_done()
            return
        if self.clean and not self.queue:
            self._send_eof()
            return
        assert self.schedule is not None  # noqa: S101 -- not clean implies a schedule
        step = self.schedule.end(_clock())
        if step is None:
            self.finished = True
            self.conn.direction_done()
            return
        if step.action is Action.SILENCE:
            self._silence()
            self.finished = True
            self.conn.direction_done()
            return
        self.queue.append([step.at, None, 0])
        self.pump()

    def _send_eof(self) -> None:
        transport = self.dst.transport
        if transport is not None and not self.dst.lost and transport.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                transport.write_eof()
        self.eof_sent = self.finished = True
        self.conn.direction_done()

    # -- backpressure ----------------------------------------------------------------------

    def hold(self, reason: int, on: bool) -> None:
        before = self.held
        self.held = before | reason if on else before & ~reason
        transport = self.src.transport
        if transport is None or self.src.lost or not self.conn.linked:
            return
        if before == 0 and self.held:
            transport.pause_reading()
        elif before and self.held == 0:
            transport.resume_reading()
        if reason == _HOLD_DST and not on and self.queue:
            self.pump()

    # -- faults ----------------------------------------------------------------------------

    def set_link(self, faults: Faults, direction: Direction) -> None:
        if self.schedule is None:
            return
        self.schedule.link = faults.link(direction)
        self.clean = self.schedule.link.is_clean
        self.next_step = None  # plan again with the new values
        if self.queue:
            self.pump()

    def pump(self) -> None:
        """Send whatever is due; arm the timer for the next step."""
        schedule = self.schedule
        assert schedule is not None  # noqa: S101 -- only the fault path queues
        now = _clock()
        while self.queue and not self.held & _HOLD_DST and not self.silenced:
            head = self.queue[0]
            ready, data, offset = (
                cast(float, head[0]),
                cast(bytes | None, head[1]),
                cast(int, head[2]),
            )
            if data is None:
                if ready > now:
                    self._arm(ready)
                    return
                self.queue.popleft()
                self._send_eof()
                return
            step = self.next_step
            if step is None:
                step = self.next_step = schedule.next_piece(ready, len(data) - offset)
            if step.at > now:
                self._arm(step.at)
                return
            self.next_step = None
            if step.action is Action.RESET:
                self._reset_when_sent()
                return
            if step.action is Action.SILENCE:
                self._silence()
                return
            piece = memoryview(data)[offset : offset + step.size]
            self.dst.transport.write(piece)  # type: ignore[union-attr]  # linked: both exist
            self.bytes += step.size
            self.queued -= step.size
            offset += step.size
            if offset >= len(data):
                self.queue.popleft()
            else:
                head[2] = offset
            after = schedule.after_data()
            if after is not None:
                if after.action is Action.RESET:
                    self._reset_when_sent()
                else:
                    self._silence()
                return
        if self.held & _HOLD_QUEUE and self.queued <= QUEUE_LOW_BYTES:
            self.hold(_HOLD_QUEUE, False)

    def _reset_when_sent(self) -> None:
        """Reset once the bytes written so far have reached the peer: a reset drops
        whatever is still unsent, and ``reset_after`` promises exactly N bytes."""
        self.silenced = True  # nothing more goes out in the meantime
        self.timer = None
        if _unsent(self.dst) and self.waited < RESET_WAIT_ROUNDS and self.conn.state == "open":
            self.waited += 1
            self.timer = self.loop.call_later(RESET_WAIT_S, self._reset_when_sent)
            return
        self.conn.fault_reset()

    def _arm(self, at: float) -> None:
        if self.timer is not None:
            if self.timer_at == at:  # (uvloop's timer handles have no when())
                return
            self.timer.cancel()
        self.timer_at = at
        # On _clock(), not the loop's: uvloop's time is libuv's cached milliseconds and its
        # timers round to the nearest one, so a step could leave early; pump() re-arms
        # (a little late rather than early) when woken before its time.
        delay = at - _clock()
        delay = delay + TIMER_SLACK_S if delay > 0 else 0.0
        self.timer = self.loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        if self.conn.state == "open":
            self.pump()

    def _silence(self) -> None:
        self.silenced = True
        self.queue.clear()
        self.queued = 0
        self.next_step = None
        self.cancel_timer()
        if self.held & _HOLD_QUEUE:
            self.hold(_HOLD_QUEUE, False)

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def _clock() -> float:
    """The clock fault schedules run on (precise, unlike uvloop's loop.time())."""
    return time.monotonic()


def _unsent(side: _Side) -> int:
    """Bytes written to *side* that its peer has not acknowledged yet."""
    transport = side.transport
    if transport is None or side.lost:
        return 0
    pending = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if SPLICE_AVAILABLE and sock is not None:  # Linux: the kernel's send queue too
        with contextlib.suppress(OSError, ValueError):
            raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
            pending += struct.unpack("i", raw)[0]
    return pending


class _CopyConnection(_Conn):
    def __init__(
        self, forwarder: Forwarder, conn_id: int, client: Endpoint, faults: Faults | None
    ) -> None:
        super().__init__(forwarder, conn_id, client)
        self.linked = self.closing = False
        self.client_side = _Side(self)
        self.upstream_side = _Side(self)
        up_schedule = down_schedule = None
        if faults is not None:
            up_schedule = Schedule(faults.up, start=_clock())
            down_schedule = Schedule(faults.down, start=_clock())
        self.up = _Relay(self, self.client_side, self.upstream_side, up_schedule)
        self.down = _Relay(self, self.upstream_side, self.client_side, down_schedule)
        self.client_side.out = self.upstream_side.into = self.up
        self.client_side.into = self.upstream_side.out = self.down

    def link(self) -> None:
        """Both transports exist: start reading; fault timers count from now."""
        self.linked = True
        self.state = "open"
        self.last_active = self.loop.time()
        now = _clock()
        for relay in (self.up, self.down):
            if relay.schedule is not None:
                relay.schedule.start = now
        for side in (self.client_side, self.upstream_side):
            side.replay_early()
        if self.closing or self.state == "closed":
            return
        for side, relay in ((self.client_side, self.up), (self.upstream_side, self.down)):
            if side.transport is not None and not side.lost and not relay.held:
                side.transport.resume_reading()

    def bytes_up(self) -> int:
        return self.up.bytes

    def bytes_down(self) -> int:
        return self.down.bytes

    def buffered(self) -> int:
        total = self.up.queued + self.down.queued
        for side in (self.client_side, self.upstream_side):
            if side.transport is not None and not side.lost:
                total += side.transport.get_write_buffer_size()
        return total

    def set_faults(self, faults: Faults) -> None:
        self.up.set_link(faults, Direction.UP)
        self.down.set_link(faults, Direction.DOWN)

    def direction_done(self) -> None:
        if self.up.finished and self.down.finished:
            self.close("done")

    def close(self, reason: str) -> None:
        if self.closing or self.state == "closed":
            return
        if not self.linked:
            self.abort(reason)
            return
        self.closing = True
        self.end = self.end or reason
        self._stop_timers()
        for side in (self.client_side, self.upstream_side):
            if side.transport is not None and not side.lost:
                side.transport.close()  # pending bytes go out first, then FIN
        self._maybe_finish()

    def abort(self, reason: str, *, reset: bool = False) -> None:
        if self.state == "closed":
            return
        self.closing = True
        self.end = self.end or reason
        self._stop_timers()
        for side in (self.client_side, self.upstream_side):
            if side.transport is not None and not side.lost:
                if reset:
                    sock = side.transport.get_extra_info("socket")
                    with contextlib.suppress(OSError, AttributeError, TypeError):
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                side.transport.abort()
        self._maybe_finish()

    def fault_reset(self) -> None:
        self.abort("fault-reset", reset=True)

    def side_lost(self, exc: Exception | None) -> None:
        if not self.closing:
            if exc is not None:
                reset = isinstance(exc, (ConnectionResetError, BrokenPipeError))
                self.abort("reset" if reset else "error", reset=True)
            else:
                self.close("closed")
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        sides = (self.client_side, self.upstream_side)
        if all(side.lost or not side.made for side in sides):
            self.finish(self.end or "closed")
        # else: connection_lost() of the remaining side calls back here

    def _stop_timers(self) -> None:
        self.up.cancel_timer()
        self.down.cancel_timer()


# -- the forwarder ------------------------------------------------------------------------


class Forwarder:
    """A listening forward: accepts on ``address`` and relays to ``target``.

    Create it with :func:`open_forwarder`; close it with :meth:`aclose`.
    """

    def __init__(
        self,
        *,
        name: str,
        target: tuple[str, int],
        faults: Faults | None,
        limits: Limits,
        data_path: Literal["splice", "copy"],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.name = name
        self.target = target
        self.target_text = _endpoint_text(*target)
        self.limits = limits
        self.data_path = data_path
        self.loop = loop
        self.address = Endpoint(ip="", port=0)
        self._faults = faults
        self._listener: socket.socket | None = None
        self._accepting = False
        self._accept_timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._conns: set[_Conn] = set()
        self._history: collections.deque[ConnectionStats] = collections.deque(maxlen=HISTORY)
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._pipes = _PipePool()
        self._resolved: list[tuple[socket.AddressFamily, tuple[object, ...]]] = []
        self._next_id = 0
        self._closed_up = self._closed_down = 0
        self.accepted = self.refused = self.failed = 0
        self.last_error: str | None = None

    # -- public ----------------------------------------------------------------------------

    @property
    def faults(self) -> Faults | None:
        """The faults in force; None when fault injection is off for this forward."""
        return self._faults

    def set_faults(self, faults: Faults) -> None:
        """Replace the faults, for new connections and for the open ones from now on.

        Raises:
            ForwardError: the forward was opened without fault injection (``faults=None``).
        """
        if self._faults is None:
            raise ForwardError(
                f"forward {self.name!r} runs without fault injection (zero-copy);"
                " start it with a fault option or --control to change faults at run time"
            )
        self._faults = faults
        for conn in list(self._conns):
            if isinstance(conn, _CopyConnection) and conn.state == "open":
                conn.set_faults(faults)

    def stats(self) -> ForwardStats:
        live = sorted(self._conns, key=lambda c: c.id)
        connections = (*self._history, *(c.snapshot() for c in live))
        return ForwardStats(
            name=self.name,
            listen=self.address,
            target=self.target_text,
            data_path=self.data_path,
            loop=loop_name(self.loop),
            faults=faults_to_mapping(self._faults) if self._faults is not None else None,
            accepted=self.accepted,
            active=len(self._conns),
            refused=self.refused,
            failed=self.failed,
            bytes_up=self._closed_up + sum(c.bytes_up() for c in live),
            bytes_down=self._closed_down + sum(c.bytes_down() for c in live),
            last_error=self.last_error,
            connections=connections,
        )

    def abort(self) -> None:
        """End every connection now (the second Ctrl-C); accepting is not affected."""
        for conn in list(self._conns):
            conn.abort("shutdown")
        for task in list(self._tasks):
            task.cancel()

    async def aclose(self, *, drain_timeout_s: float | None = None) -> None:
        """Stop accepting; let open connections end by themselves within the drain
        timeout (``limits.drain_timeout_s`` unless given); then close what is left."""
        if self._closing:
            return
        self._closing = True
        self._stop_accepting()
        if self._listener is not None:
            self._listener.close()
        timeout = self.limits.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._idle.wait()
        finally:
            for conn in list(self._conns):
                conn.close("shutdown") if conn.state == "open" else conn.abort("shutdown")
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=max(timeout, 1.0))
            for conn in list(self._conns):  # anything still open after its close: abort it
                conn.abort("shutdown", reset=True)
            if self._conns:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._idle.wait()
            self._pipes.clear()

    async def serve_forever(self) -> None:
        """Serve until cancelled; then close gracefully and re-raise."""
        try:
            await asyncio.Future()  # only cancellation ends this
        finally:
            await self.aclose()

    async def __aenter__(self) -> Forwarder:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- listening and accepting -----------------------------------------------------------

    async def _start(self, listen: Endpoint) -> None:
        family = socket.AF_INET6 if ":" in listen.ip else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((listen.ip, listen.port))
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            hint = ""
            if exc.errno == errno.EADDRINUSE:
                hint = f"; see what holds it: portside who {listen.port}"
            elif exc.errno == errno.EADDRNOTAVAIL:
                hint = "; that address is not on this machine"
            elif exc.errno == errno.EACCES:
                hint = "; ports below 1024 need privileges"
            where = _endpoint_text(listen.ip, listen.port)
            raise ForwardError(f"cannot listen on {where}: {exc.strerror}{hint}") from exc
        self._listener = sock
        host, port = sock.getsockname()[:2]
        self.address = Endpoint(ip=str(host), port=int(port))
        await self._resolve_numeric()
        self._start_accepting()

    async def _resolve_numeric(self) -> None:
        """Targets given as IP addresses are resolved once, here."""
        host, port = self.target
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return  # a name: resolved for every connection
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        infos = await self.loop.getaddrinfo(
            host, port, family=family, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
        )
        self._resolved = [(info[0], info[4]) for info in infos[:1]]

    def _start_accepting(self) -> None:
        if self._accepting or self._closing or self._listener is None:
            return
        self._accepting = True
        self.loop.add_reader(self._listener.fileno(), self._on_acceptable)

    def _stop_accepting(self) -> None:
        if self._accept_timer is not None:
            self._accept_timer.cancel()
            self._accept_timer = None
        if self._accepting and self._listener is not None:
            self._accepting = False
            self.loop.remove_reader(self._listener.fileno())

    def _retry_accepting(self) -> None:
        self._accept_timer = None
        self._start_accepting()

    def _on_acceptable(self) -> None:
        listener = self._listener
        assert listener is not None  # noqa: S101 -- registered only while listening
        for _ in range(ACCEPT_BATCH):
            if len(self._conns) >= self.limits.max_connections:
                self._stop_accepting()  # resumed by _forget()
                return
            try:
                sock, address = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in ACCEPT_CAPACITY_ERRNOS:
                    self.last_error = f"accept: {exc.strerror}; pausing {ACCEPT_RETRY_S}s"
                    self._stop_accepting()
                    self._accept_timer = self.loop.call_later(ACCEPT_RETRY_S, self._retry_accepting)
                    return
                if exc.errno in ACCEPT_SKIP_ERRNOS:
                    continue
                raise
            self._admit(sock, address)

    def _admit(
        self, sock: socket.socket, address: tuple[str, int] | tuple[str, int, int, int]
    ) -> None:
        self.accepted += 1
        if self._faults is not None and self._faults.refuse:
            self.refused += 1
            sock.close()
            return
        sock.setblocking(False)
        _nodelay(sock)
        self._next_id += 1
        client = Endpoint(ip=str(address[0]), port=int(address[1]))
        conn: _Conn
        if self.data_path == "splice":
            conn = _SpliceConnection(self, self._next_id, client)
        else:
            conn = _CopyConnection(self, self._next_id, client, self._faults)
        self._conns.add(conn)
        self._idle.clear()
        task = self.loop.create_task(self._connect(conn, sock))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _forget(self, conn: _Conn) -> None:
        if conn not in self._conns:
            return
        self._conns.discard(conn)
        self._closed_up += conn.bytes_up()
        self._closed_down += conn.bytes_down()
        self._history.append(conn.snapshot())
        if not self._conns:
            self._idle.set()
            self._pipes.clear()
        if not self._accepting and self._accept_timer is None and not self._closing:
            self._start_accepting()

    # -- per connection --------------------------------------------------------------------

    async def _connect(self, conn: _Conn, client: socket.socket) -> None:
        """Dial the target for one accepted client, then hand both sockets to the path."""
        upstream: socket.socket | None = None
        handed_over = False
        try:
            try:
                async with asyncio.timeout(self.limits.connect_timeout_s):
                    upstream = await self._dial()
            except (OSError, TimeoutError) as exc:
                self.failed += 1
                # asyncio's sock_connect words every failure "Connect call failed": use
                # the errno's own text (Connection refused, No route to host, ...).
                reason = os.strerror(exc.errno) if exc.errno else "timed out"
                self.last_error = f"connect to {self.target_text}: {reason}"
                conn.finish("upstream-failed")
                return
            if conn.state == "closed":  # ended while dialling (shutdown)
                return
            if isinstance(conn, _SpliceConnection):
                conn.attach(client, upstream)
                handed_over = True
                return
            assert isinstance(conn, _CopyConnection)  # noqa: S101 -- the only other path
            client_side, upstream_side = conn.client_side, conn.upstream_side
            async with asyncio.timeout(self.limits.connect_timeout_s):
                await self.loop.connect_accepted_socket(lambda: upstream_side, upstream)
                upstream = None  # the transport owns it now
                await self.loop.connect_accepted_socket(lambda: client_side, client)
            handed_over = True
            if conn.state == "closed" or conn.closing:
                conn.abort("shutdown")
                return
            conn.link()
        finally:
            if not handed_over:
                _reset(client)
                if upstream is not None:
                    upstream.close()
                if isinstance(conn, _CopyConnection):
                    conn.abort(conn.end or "shutdown", reset=True)
                conn.finish("shutdown")

    async def _dial(self) -> socket.socket:
        host, port = self.target
        if self._resolved:
            candidates = self._resolved
        else:
            infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            candidates = [(info[0], info[4]) for info in infos]
        last: OSError = OSError(errno.EHOSTUNREACH, f"no address for {host}")
        for family, sockaddr in candidates:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                await self.loop.sock_connect(sock, sockaddr)
            except OSError as exc:
                sock.close()
                last = exc
                continue
            except BaseException:
                sock.close()
                raise
            _nodelay(sock)
            return sock
        raise last

    async def _sweep_idle(self, idle_s: float) -> None:
        """Close connections without traffic for *idle_s* seconds."""
        interval = max(0.02, min(idle_s / 4, 1.0))
        while True:
            await asyncio.sleep(interval)
            deadline = self.loop.time() - idle_s
            for conn in list(self._conns):
                if conn.state == "open" and conn.last_active <= deadline:
                    conn.close("idle-timeout")


def _choose_path(data_path: DataPath, faults: Faults | None) -> Literal["splice", "copy"]:
    if data_path == "copy":
        return "copy"
    if data_path == "splice":
        if not SPLICE_AVAILABLE:
            raise UsageError("--data-path splice needs Linux (os.splice); use copy or auto")
        if faults is not None:
            raise UsageError("faults need the copy path: drop --data-path splice")
        return "splice"
    return "splice" if SPLICE_AVAILABLE and faults is None else "copy"


async def open_forwarder(
    listen: Endpoint | str,
    target: str | tuple[str, int],
    *,
    faults: Faults | None = None,
    limits: Limits | None = None,
    data_path: DataPath = "auto",
    name: str = "forward",
) -> Forwarder:
    """Listen on *listen* and forward every connection to *target*; returns once listening.

    Args:
        listen: where to accept (port 0: the kernel picks; read ``forwarder.address``).
            Binding a non-loopback address is the caller's explicit choice; the CLI warns.
        target: ``"host:port"`` or ``(host, port)``; a name is resolved per connection.
        faults: None turns fault injection off (and allows zero-copy); a :class:`Faults`
            (even an empty one) turns it on, changeable with :meth:`Forwarder.set_faults`.
        limits: connection limit and timeouts (:class:`Limits`).
        data_path: ``"auto"`` (splice on Linux without faults, else copy), ``"splice"``
            or ``"copy"``.
        name: a label for stats and the control API.

    Raises:
        ForwardError: the address cannot be bound.
        UsageError: bad *listen*/*target* text, or splice asked for where it cannot run.
    """
    endpoint = parse_listen(listen) if isinstance(listen, str) else listen
    upstream = parse_upstream(target) if isinstance(target, str) else target
    path = _choose_path(data_path, faults)
    limits = limits or Limits()
    forwarder = Forwarder(
        name=name,
        target=upstream,
        faults=faults,
        limits=limits,
        data_path=path,
        loop=asyncio.get_running_loop(),
    )
    await forwarder._start(endpoint)
    if limits.idle_timeout_s is not None:
        task = forwarder.loop.create_task(forwarder._sweep_idle(limits.idle_timeout_s))
        forwarder._tasks.add(task)
        task.add_done_callback(forwarder._tasks.discard)
    return forwarder


async def serve_forwarder(
    listen: Endpoint | str,
    target: str | tuple[str, int],
    *,
    faults: Faults | None = None,
    limits: Limits | None = None,
    data_path: DataPath = "auto",
    name: str = "forward",
    on_started: Callable[[Forwarder], None] | None = None,
) -> None:
    """Forward until cancelled, then drain and close (see :func:`open_forwarder`)."""
    forwarder = await open_forwarder(
        listen, target, faults=faults, limits=limits, data_path=data_path, name=name
    )
    if on_started is not None:
        on_started(forwarder)
    await forwarder.serve_forever()


# -- configuration file -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ForwardSpec:
    """One forward as a config file (or the command line) describes it."""

    name: str
    listen: Endpoint
    target: tuple[str, int]
    faults: Faults | None = None
    limits: Limits = dataclasses.field(default_factory=Limits)
    data_path: DataPath = "auto"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ForwardConfig:
    forwards: tuple[ForwardSpec, ...]
    control: Endpoint | None = None


_FAULT_KEYS = frozenset(
    {
        "latency",
        "jitter",
        "bandwidth",
        "slice",
        "reset_after",
        "timeout_after",
        "refuse",
        "up",
        "down",
    }
)
_SPEC_KEYS = frozenset(
    {
        "listen",
        "target",
        "data_path",
        "max_connections",
        "connect_timeout",
        "idle_timeout",
        "drain_timeout",
        "faults",
    }
)


def _seconds(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UsageError(f"{key}: expected a duration such as '30s', got {value!r}")
    seconds = parse_duration(value) if isinstance(value, str) else float(value)
    if seconds <= 0:
        raise UsageError(f"{key}: must be more than zero")
    return seconds


def _spec(
    name: str, table: Mapping[str, object], defaults: Mapping[str, object], *, control: bool
) -> ForwardSpec:
    merged = {**defaults, **table}
    unknown = set(merged) - _SPEC_KEYS - _FAULT_KEYS
    if unknown:
        known = ", ".join(sorted(_SPEC_KEYS | _FAULT_KEYS))
        raise UsageError(f"forward.{name}: unknown key {sorted(unknown)[0]!r}; known: {known}")
    for key in ("listen", "target"):
        if not isinstance(merged.get(key), (str, int)):
            raise UsageError(f"forward.{name}: '{key}' is required (e.g. \"127.0.0.1:15432\")")
    fault_table = {k: v for k, v in merged.items() if k in _FAULT_KEYS}
    armed = bool(fault_table) or control or merged.get("faults") is True
    faults = faults_from_mapping(fault_table) if armed else None
    data_path = merged.get("data_path", "auto")
    if data_path not in ("auto", "splice", "copy"):
        raise UsageError(f"forward.{name}: data_path is 'auto', 'splice' or 'copy'")
    max_connections = merged.get("max_connections", MAX_CONNECTIONS)
    if (
        isinstance(max_connections, bool)
        or not isinstance(max_connections, int)
        or max_connections < 1
    ):
        raise UsageError(f"forward.{name}: max_connections must be a positive integer")
    idle = merged.get("idle_timeout")
    limits = Limits(
        max_connections=max_connections,
        connect_timeout_s=_seconds(
            "connect_timeout", merged.get("connect_timeout", CONNECT_TIMEOUT_S)
        ),
        idle_timeout_s=None if idle in (None, "off", "none") else _seconds("idle_timeout", idle),
        drain_timeout_s=_seconds("drain_timeout", merged.get("drain_timeout", DRAIN_TIMEOUT_S)),
    )
    return ForwardSpec(
        name=name,
        listen=parse_listen(str(merged["listen"])),
        target=parse_upstream(str(merged["target"])),
        faults=faults,
        limits=limits,
        data_path=data_path,
    )


def load_config(text: str, *, source: str = "config") -> ForwardConfig:
    """Parse a forward configuration (TOML; format in docs/forward.md).

    Raises:
        UsageError: not TOML, or a forward that does not parse (the message names it).
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{source}: not valid TOML: {exc}") from exc
    unknown = set(data) - {"control", "defaults", "forward"}
    if unknown:
        raise UsageError(
            f"{source}: unknown top-level key {sorted(unknown)[0]!r}; known: control, defaults, forward"
        )
    control_text = data.get("control")
    control = parse_listen(str(control_text)) if control_text is not None else None
    defaults = data.get("defaults", {})
    forwards = data.get("forward", {})
    if not isinstance(defaults, dict) or not isinstance(forwards, dict) or not forwards:
        raise UsageError(f"{source}: expected [forward.NAME] tables (and optionally [defaults])")
    specs = []
    for name, table in forwards.items():
        if not isinstance(table, dict):
            raise UsageError(f"{source}: forward.{name} must be a table")
        try:
            specs.append(_spec(name, table, defaults, control=control is not None))
        except UsageError as exc:
            raise UsageError(f"{source}: {exc}") from exc
    return ForwardConfig(forwards=tuple(specs), control=control)


def read_config(path: Path) -> ForwardConfig:
    """:func:`load_config` on a file.

    Raises:
        UsageError: the file cannot be read or does not parse.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    return load_config(text, source=str(path))


def is_loopback(endpoint: Endpoint) -> bool:
    """True when *endpoint* only accepts connections from this machine."""
    return _is_loopback(endpoint.ip)
