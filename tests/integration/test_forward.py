"""``portside forward``: real TCP on loopback, through the library API and the CLI.

Data paths: ``splice`` (Linux zero-copy) and ``copy`` (asyncio Protocols, the only one
with faults), on uvloop and on the stock asyncio loop. Every check is on behaviour a
peer can see (bytes, digests, ends of streams, resets) or on the forwarder's own
counters, RSS and file descriptors; timing appears only as lower bounds that a fault
must cause (latency adds at least its delay, a bandwidth cap at least its transfer time).

Covered: 1 GiB of random bytes each way of the data paths (SHA-256 at both ends, random
write sizes, half-closes both ways); half-close in each direction; IPv6 on either side;
the connection limit; the idle timeout; counters; an unreachable target; backpressure
(RSS bound while 200 MiB pass a reader that stalls); every fault (latency, jitter,
bandwidth, slice, reset-after, timeout-after by bytes and by time, refuse); the control
API changing faults mid-connection; --config with two forwards; SIGTERM/SIGINT drain and
--stats; 5,000-connection churn on uvloop and asyncio; 5,000 idle connections held and
descriptors back to the baseline after 10,000; the splice path without a spare
descriptor (copy fallback).

``PORTSIDE_TEST_BIG_BYTES`` shrinks the 1 GiB transfers for a quick local run.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from portside.net.faults import Faults, faults_from_mapping
from portside.net.forward import Forwarder, Limits, open_forwarder
from tests.integration._forward_kit import (
    Backend,
    ForwardProcess,
    LoopThread,
    control_request,
    echo_handler,
    hold_handler,
    nofile_hard_limit,
    raise_nofile,
    recv_all,
    recv_exactly,
    running_forwarder,
    stats_of,
    wait_for,
)
from tests.integration._servers import has_ipv6_loopback

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="splice, /proc/PID/fd: Linux")

BIG = int(os.environ.get("PORTSIDE_TEST_BIG_BYTES", str(1 << 30)))
DOWN_BIG = max(BIG // 16, 1 << 20)
SEED = int(os.environ.get("PORTSIDE_TEST_SEED", "20261202"))
#: (data path, loop) pairs the behaviour tests run on.
VARIANTS = [("splice", "uvloop"), ("copy", "asyncio"), ("copy", "uvloop")]


# -- helpers ----------------------------------------------------------------------------------


@contextlib.contextmanager
def forward_to(
    target: str,
    *,
    path: str = "copy",
    loop: str = "asyncio",
    listen: str = "127.0.0.1:0",
    faults: Faults | None = None,
    limits: Limits | None = None,
) -> Iterator[tuple[LoopThread, Forwarder]]:
    async def opener() -> Forwarder:
        return await open_forwarder(
            listen,
            target,
            faults=faults,
            limits=limits,
            data_path=path,  # type: ignore[arg-type]  # test parameters are valid paths
        )

    with running_forwarder(opener, loop=loop) as pair:
        yield pair


def connect(forwarder: Forwarder, timeout: float = 20.0) -> socket.socket:
    host = forwarder.address.ip
    return socket.create_connection((host, forwarder.address.port), timeout=timeout)


def ends(runner: LoopThread, forwarder: Forwarder) -> list[str | None]:
    return [c.end for c in stats_of(runner, forwarder).connections]


def wait_ended(runner: LoopThread, forwarder: Forwarder, count: int = 1) -> list[str | None]:
    wait_for(
        lambda: (
            stats_of(runner, forwarder).active == 0
            and len(stats_of(runner, forwarder).connections) >= count
        ),
        what="connections to end",
    )
    return ends(runner, forwarder)


def _random_writes(rng: random.Random, pool: memoryview, total: int) -> Iterator[memoryview]:
    """Pieces of *pool* at random offsets, of random sizes (1 byte .. 256 KiB), *total* in all."""
    sent = 0
    while sent < total:
        roll = rng.random()
        if roll < 0.05:
            size = rng.randint(1, 64)
        elif roll < 0.2:
            size = rng.randint(65, 16 << 10)
        else:
            size = rng.randint(16 << 10, 256 << 10)
        size = min(size, total - sent)
        offset = rng.randrange(0, len(pool) - size + 1)
        yield pool[offset : offset + size]
        sent += size


def _send_stream(sock: socket.socket, chunks: Iterator[memoryview]) -> tuple[int, str]:
    digest = hashlib.sha256()
    count = 0
    for chunk in chunks:
        digest.update(chunk)
        sock.sendall(chunk)
        count += len(chunk)
    return count, digest.hexdigest()


def _read_stream(sock: socket.socket) -> tuple[int, str]:
    digest = hashlib.sha256()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    count = 0
    while n := sock.recv_into(buf):
        digest.update(view[:n])
        count += n
    return count, digest.hexdigest()


class _Threaded:
    """Run a function in a thread and keep its result or exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.result = fn()
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def get(self, timeout: float = 120.0) -> Any:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError("thread did not finish")
        if self.error is not None:
            raise self.error
        return self.result


# -- 1 GiB of random bytes, both data paths -----------------------------------------------------


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", ["splice", "copy"])
def test_gib_of_random_bytes_with_half_closes_arrives_intact(path: str) -> None:
    """1 GiB up (random write sizes) while 64 MiB come down; the client half-closes first,
    the target keeps sending, then half-closes too: SHA-256 equal at both ends, both ways."""
    rng = random.Random(f"{SEED}-{path}")  # noqa: S311 -- test data, seeded
    pool = memoryview(rng.randbytes(8 << 20))
    results: dict[str, tuple[int, str]] = {}

    def backend(sock: socket.socket) -> None:
        down_rng = random.Random(rng.random())  # noqa: S311 -- test data
        half = DOWN_BIG // 2
        writes = _random_writes(down_rng, pool, DOWN_BIG)
        first: list[memoryview] = []
        size = 0
        for chunk in writes:  # the first half goes while the upload runs
            first.append(chunk)
            size += len(chunk)
            if size >= half:
                break
        sender = _Threaded(lambda: _send_stream(sock, iter(first)))
        results["up_received"] = _read_stream(sock)  # until the client's half-close
        count, _ = sender.get()
        # ... and the rest after it: the other direction must still flow.
        digest_all = hashlib.sha256()
        for chunk in first:
            digest_all.update(chunk)
        rest = 0
        for chunk in writes:
            digest_all.update(chunk)
            sock.sendall(chunk)
            rest += len(chunk)
        results["down_sent"] = (count + rest, digest_all.hexdigest())
        sock.shutdown(socket.SHUT_WR)

    with (
        Backend(backend) as target,
        ForwardProcess(["127.0.0.1:0", target.target, "--data-path", path, "--stats"]) as fwd,
    ):
        assert fwd.started["forwards"][0]["data_path"] == path
        client = socket.create_connection(("127.0.0.1", fwd.port()), timeout=120)
        up_rng = random.Random(rng.random())  # noqa: S311 -- test data

        def upload() -> tuple[int, str]:
            sent = _send_stream(client, _random_writes(up_rng, pool, BIG))
            client.shutdown(socket.SHUT_WR)
            return sent

        uploader = _Threaded(upload)
        down_received = _read_stream(client)
        up_sent = uploader.get(timeout=240)
        wait_for(lambda: "down_sent" in results, timeout=60, what="the backend to finish")
        client.close()
        code, out, err = fwd.stop()
    assert up_sent[0] == BIG
    assert results["up_received"] == up_sent, f"seed {SEED}"
    assert down_received == results["down_sent"], f"seed {SEED}"
    assert code == 0, err
    stats = json.loads(out)["forwards"][0]
    assert (stats["bytes_up"], stats["bytes_down"]) == (BIG, DOWN_BIG)
    assert stats["connections"][0]["end"] == "done"


# -- half-close, IPv6, limits, idle, stats --------------------------------------------------------


@pytest.mark.parametrize(("path", "loop"), VARIANTS)
def test_client_half_close_then_target_answers(path: str, loop: str) -> None:
    def backend(sock: socket.socket) -> None:
        data = recv_all(sock)  # up to the client's FIN
        sock.sendall(b"got " + str(len(data)).encode() + b" " + data[-5:])
        sock.shutdown(socket.SHUT_WR)
        recv_all(sock)

    with Backend(backend) as target, forward_to(target.target, path=path, loop=loop) as (rt, fw):
        with connect(fw) as client:
            client.sendall(b"x" * 199_995 + b"12345")
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b"got 200000 12345"
        assert wait_ended(rt, fw) == ["done"]


@pytest.mark.parametrize(("path", "loop"), VARIANTS)
def test_target_half_close_then_client_still_sends(path: str, loop: str) -> None:
    received: list[bytes] = []

    def backend(sock: socket.socket) -> None:
        sock.sendall(b"banner\n" * 10_000)
        sock.shutdown(socket.SHUT_WR)
        received.append(recv_all(sock))

    with Backend(backend) as target, forward_to(target.target, path=path, loop=loop) as (rt, fw):
        with connect(fw) as client:
            assert recv_all(client) == b"banner\n" * 10_000  # the end of the stream came
            client.sendall(b"after the target's FIN" * 5000)
            client.shutdown(socket.SHUT_WR)
            wait_for(lambda: bool(received), what="the backend to read to the end")
            assert recv_all(client) == b""
        assert received == [b"after the target's FIN" * 5000]
        assert wait_ended(rt, fw) == ["done"]


@pytest.mark.parametrize(
    ("listen_host", "target_host"), [("::1", "::1"), ("127.0.0.1", "::1"), ("::1", "127.0.0.1")]
)
@pytest.mark.parametrize("path", ["splice", "copy"])
def test_ipv6_on_either_side(listen_host: str, target_host: str, path: str) -> None:
    if not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    listen = f"[{listen_host}]:0" if ":" in listen_host else f"{listen_host}:0"
    with (
        Backend(echo_handler, host=target_host) as target,
        forward_to(target.target, path=path, listen=listen) as (rt, fw),
    ):
        assert fw.address.ip == listen_host
        with connect(fw) as client:
            client.sendall(b"six or four")
            assert recv_exactly(client, 11) == b"six or four"
        stats = stats_of(rt, fw)
        assert stats.connections[-1].client.ip == listen_host
        assert stats.target == target.target


@pytest.mark.parametrize(("path", "loop"), VARIANTS)
def test_connection_limit_holds_the_rest_in_the_backlog(path: str, loop: str) -> None:
    with (
        Backend(echo_handler) as target,
        forward_to(target.target, path=path, loop=loop, limits=Limits(max_connections=2)) as (
            rt,
            fw,
        ),
    ):
        first, second, third = (connect(fw) for _ in range(3))
        with first, second, third:
            wait_for(lambda: target.accepted == 2, what="two connections through")
            third.sendall(b"waiting")
            time.sleep(0.3)  # absence check: the third must not get through meanwhile
            assert target.accepted == 2
            assert stats_of(rt, fw).active == 2
            first.close()
            wait_for(lambda: target.accepted == 3, what="the third once a slot is free")
            assert recv_exactly(third, 7) == b"waiting"
            second.sendall(b"still")
            assert recv_exactly(second, 5) == b"still"


@pytest.mark.parametrize(("path", "loop"), VARIANTS)
def test_idle_timeout_closes_idle_but_not_busy_connections(path: str, loop: str) -> None:
    limits = Limits(idle_timeout_s=0.5)
    with (
        Backend(echo_handler) as target,
        forward_to(target.target, path=path, loop=loop, limits=limits) as (rt, fw),
    ):
        with connect(fw) as idle, connect(fw) as busy:
            idle.sendall(b"hi")
            assert recv_exactly(idle, 2) == b"hi"
            start = time.monotonic()
            while time.monotonic() - start < 1.2:  # busy: traffic every 50 ms
                busy.sendall(b".")
                assert recv_exactly(busy, 1) == b"."
                time.sleep(0.05)
            idle.settimeout(5)
            assert recv_all(idle) == b""  # closed by the forwarder
            busy.sendall(b"alive")
            assert recv_exactly(busy, 5) == b"alive"
        wait_ended(rt, fw, 2)
        assert "idle-timeout" in ends(rt, fw)


@pytest.mark.parametrize(("path", "loop"), VARIANTS)
def test_stats_count_bytes_per_connection_and_in_total(path: str, loop: str) -> None:
    def backend(sock: socket.socket) -> None:
        size = len(recv_all(sock))
        sock.sendall(b"d" * (size * 3))
        sock.shutdown(socket.SHUT_WR)
        recv_all(sock)

    sizes = [1, 1000, 300_000]
    with Backend(backend) as target, forward_to(target.target, path=path, loop=loop) as (rt, fw):
        for size in sizes:
            with connect(fw) as client:
                client.sendall(b"u" * size)
                client.shutdown(socket.SHUT_WR)
                assert len(recv_all(client)) == size * 3
        wait_ended(rt, fw, len(sizes))
        stats = stats_of(rt, fw)
    assert (stats.accepted, stats.active, stats.failed, stats.refused) == (3, 0, 0, 0)
    assert [(c.bytes_up, c.bytes_down, c.end) for c in stats.connections] == [
        (size, size * 3, "done") for size in sizes
    ]
    assert (stats.bytes_up, stats.bytes_down) == (sum(sizes), 3 * sum(sizes))
    assert stats.data_path == path


def test_unreachable_target_resets_the_client_and_counts_it() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        port = unused.getsockname()[1]
        with forward_to(f"127.0.0.1:{port}") as (rt, fw):
            with contextlib.suppress(ConnectionResetError), connect(fw) as client:
                assert client.recv(10) == b""  # (or the reset, often already at connect)
            wait_for(lambda: stats_of(rt, fw).failed == 1, what="the failure counted")
            stats = stats_of(rt, fw)
    assert stats.last_error is not None
    assert "refused" in stats.last_error.lower()
    assert stats.connections[-1].end == "upstream-failed"


# -- backpressure ---------------------------------------------------------------------------------


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "extra", [["--data-path", "splice"], ["--data-path", "copy"], ["--latency", "1ms"]]
)
def test_slow_reader_does_not_grow_forwarder_memory(extra: list[str]) -> None:
    """A target that stops reading: the sender stalls instead of the forwarder buffering;
    200 MiB then pass with the forwarder's RSS within a bound throughout."""
    total = 200 << 20
    go = threading.Event()
    received: list[int] = []

    def backend(sock: socket.socket) -> None:
        go.wait(60)
        received.append(len(recv_all(sock, limit=total + 1)))

    with Backend(backend) as target, ForwardProcess(["127.0.0.1:0", target.target, *extra]) as fwd:
        baseline = fwd.rss_bytes()
        peak = [baseline]
        stop_sampling = threading.Event()

        def sample() -> None:
            while not stop_sampling.is_set():
                with contextlib.suppress(OSError, AssertionError):
                    peak[0] = max(peak[0], fwd.rss_bytes())
                time.sleep(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        sent = [0]
        client = socket.create_connection(("127.0.0.1", fwd.port()), timeout=60)
        chunk = b"\xa5" * (1 << 20)

        def push() -> None:
            for _ in range(total // len(chunk)):
                client.sendall(chunk)
                sent[0] += len(chunk)
            client.shutdown(socket.SHUT_WR)

        pusher = _Threaded(push)
        # Wait until the sender is stuck: no progress for 0.5 s.
        last, still_since = -1, time.monotonic()
        while time.monotonic() - still_since < 0.5:
            if sent[0] != last:
                last, still_since = sent[0], time.monotonic()
            time.sleep(0.02)
        stalled_at = sent[0]
        go.set()
        pusher.get(timeout=120)
        wait_for(lambda: bool(received), timeout=60, what="the target to read everything")
        stop_sampling.set()
        sampler.join()
        client.close()
    assert received == [total]
    assert stalled_at < 64 << 20, f"{stalled_at} bytes went out while nobody read"
    growth = peak[0] - baseline
    assert growth < 48 << 20, f"RSS grew by {growth} bytes"


# -- faults ---------------------------------------------------------------------------------------


def _rtt(sock: socket.socket, payload: bytes = b"p") -> float:
    start = time.monotonic()
    sock.sendall(payload)
    recv_exactly(sock, len(payload))
    return time.monotonic() - start


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("direction", ["up", "down"])
def test_latency_adds_at_least_the_delay(direction: str, loop: str) -> None:
    faults = faults_from_mapping({direction: {"latency": "200ms"}})
    with (
        Backend(echo_handler) as target,
        forward_to(target.target, faults=faults, loop=loop) as (_, fw),
        connect(fw) as client,
    ):
        assert all(_rtt(client) >= 0.2 for _ in range(3))


def test_jitter_varies_the_delay_and_keeps_order() -> None:
    faults = faults_from_mapping({"latency": "50ms", "jitter": "40ms"})
    with (
        Backend(echo_handler) as target,
        forward_to(target.target, faults=faults) as (_, fw),
        connect(fw) as client,
    ):
        rtts = [_rtt(client) for _ in range(12)]
        assert min(rtts) >= 0.02  # 2 x (50 - 40) ms
        assert max(rtts) - min(rtts) > 0.005  # the delay varies
        messages = [struct.pack("!I", i) for i in range(200)]
        for message in messages:
            client.sendall(message)
        assert recv_exactly(client, 800) == b"".join(messages)


def test_bandwidth_bounds_the_bytes_over_time() -> None:
    rate = 250_000  # 2mbit
    size = 150_000

    def backend(sock: socket.socket) -> None:
        sock.sendall(b"b" * size)
        sock.shutdown(socket.SHUT_WR)
        recv_all(sock)

    faults = faults_from_mapping({"down": {"bandwidth": "2mbit"}})
    with Backend(backend) as target, forward_to(target.target, faults=faults) as (_, fw):
        start = time.monotonic()
        with connect(fw) as client:
            total = 0
            while data := client.recv(1 << 16):
                total += len(data)
                allowed = rate * (time.monotonic() - start) + 10_000
                assert total <= allowed, f"{total} bytes after {time.monotonic() - start:.3f}s"
        elapsed = time.monotonic() - start
    assert total == size
    assert elapsed >= 0.9 * size / rate


def test_slice_cuts_writes_to_at_most_size() -> None:
    def backend(sock: socket.socket) -> None:
        sock.sendall(bytes(range(256)) * 12)  # 3072 bytes in one write
        sock.shutdown(socket.SHUT_WR)
        recv_all(sock)

    # The forwarder in a child process: in this one, its loop thread and the reader would
    # take turns at the GIL (5 ms switch interval), longer than the 1 ms between slices.
    with (
        Backend(backend) as target,
        ForwardProcess(["127.0.0.1:0", target.target, "--slice", "down:100"]) as fwd,
        socket.create_connection(("127.0.0.1", fwd.port()), timeout=20) as client,
    ):
        reads = []
        while data := client.recv(1 << 16):
            reads.append(data)
    assert b"".join(reads) == bytes(range(256)) * 12
    # One write of 3072 bytes leaves as 31 pieces of 100 bytes (the last 72), 1 ms apart.
    # A reader descheduled for a moment finds several pieces together (a loaded CI
    # machine), so reads are not all small; but every read ends where a piece ends.
    # Unsliced, the 3072 bytes arrive in one read.
    ends = list(itertools.accumulate(len(r) for r in reads))
    assert all(end % 100 == 0 for end in ends[:-1]), ends
    assert len(reads) >= 4, ends


def _read_until_reset(sock: socket.socket) -> tuple[int, bool]:
    """(bytes read, whether the stream ended with a reset)."""
    total = 0
    try:
        while data := sock.recv(1 << 16):
            total += len(data)
    except ConnectionResetError:
        return total, True
    return total, False


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_reset_after_cuts_upstream_after_exactly_n_bytes(loop: str) -> None:
    seen: list[tuple[int, bool]] = []

    def backend(sock: socket.socket) -> None:
        seen.append(_read_until_reset(sock))

    faults = faults_from_mapping({"up": {"reset_after": 5000}})
    with (
        Backend(backend) as target,
        forward_to(target.target, faults=faults, loop=loop) as (
            rt,
            fw,
        ),
    ):
        with connect(fw) as client:
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                client.sendall(b"r" * 3000)
                client.sendall(b"r" * 17000)
            assert _read_until_reset(client) == (0, True)
        wait_for(lambda: bool(seen), what="the target to see the end")
        assert seen == [(5000, True)]
        assert wait_ended(rt, fw) == ["fault-reset"]


def test_reset_after_cuts_downstream_after_exactly_n_bytes() -> None:
    def backend(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            for _ in range(20):
                sock.sendall(b"d" * 1000)
            recv_all(sock)

    faults = faults_from_mapping({"down": {"reset_after": "4KiB"}})
    with (
        Backend(backend) as target,
        forward_to(target.target, faults=faults) as (rt, fw),
        connect(fw) as client,
    ):
        assert _read_until_reset(client) == (4096, True)
        assert wait_ended(rt, fw) == ["fault-reset"]


def test_timeout_after_bytes_goes_silent_without_an_end() -> None:
    seen: list[int] = []
    silent = threading.Event()

    def backend(sock: socket.socket) -> None:
        seen.append(len(recv_exactly(sock, 4096)))
        sock.settimeout(0.5)
        try:
            sock.recv(1)  # neither more bytes nor the client's FIN may come
        except TimeoutError:
            silent.set()
        sock.sendall(b"ok")
        sock.settimeout(None)
        recv_all(sock)

    faults = faults_from_mapping({"up": {"timeout_after": "4KiB"}})
    with (
        Backend(backend) as target,
        forward_to(target.target, faults=faults) as (rt, fw),
        connect(fw) as client,
    ):
        client.sendall(b"t" * 10_000)
        client.shutdown(socket.SHUT_WR)
        assert recv_exactly(client, 2) == b"ok"  # the other direction still works
        assert silent.is_set()
        assert stats_of(rt, fw).connections[-1].bytes_up == 4096
    assert seen == [4096]


def test_timeout_after_a_time_goes_silent() -> None:
    send_late = threading.Event()

    def backend(sock: socket.socket) -> None:
        sock.sendall(b"a")
        send_late.wait(20)
        sock.sendall(b"b")
        recv_all(sock)

    faults = faults_from_mapping({"down": {"timeout_after": "500ms"}})
    with Backend(backend) as target, forward_to(target.target, faults=faults) as (_, fw):
        start = time.monotonic()
        with connect(fw) as client:
            assert client.recv(1) == b"a"
            while time.monotonic() - start < 0.7:
                time.sleep(0.05)
            send_late.set()
            client.settimeout(0.5)
            with pytest.raises(TimeoutError):
                client.recv(1)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_refuse_closes_at_once_without_dialling(loop: str) -> None:
    with (
        Backend(echo_handler) as target,
        forward_to(target.target, faults=Faults(refuse=True), loop=loop) as (rt, fw),
    ):
        for _ in range(3):
            with connect(fw) as client:
                client.settimeout(5)
                with contextlib.suppress(ConnectionResetError):  # a FIN or a reset
                    assert client.recv(1) == b""
        stats = stats_of(rt, fw)
        assert (stats.accepted, stats.refused) == (3, 3)
        assert target.accepted == 0


# -- the control API and the CLI ------------------------------------------------------------------


def test_control_api_degrades_a_link_mid_connection() -> None:
    with (
        Backend(echo_handler) as target,
        ForwardProcess(["127.0.0.1:0", target.target, "--control", "127.0.0.1:0"]) as fwd,
    ):
        url = fwd.control
        assert fwd.started["forwards"][0]["data_path"] == "copy"
        client = socket.create_connection(("127.0.0.1", fwd.port()), timeout=20)
        with client:
            client.sendall(b"before")
            assert recv_exactly(client, 6) == b"before"

            status, doc = control_request(url, "PATCH", "/faults", {"up": {"latency": "300ms"}})
            assert (status, doc["faults"]["up"]) == (200, {"latency": "300ms"})
            assert _rtt(client) >= 0.3  # the open connection is slower now

            status, doc = control_request(url, "GET", "/forwards/forward/stats")
            assert status == 200
            down_so_far = doc["forwards"][0]["connections"][-1]["bytes_down"]
            assert down_so_far == 7
            status, doc = control_request(
                url, "PUT", "/faults", {"down": {"reset_after": down_so_far + 10}}
            )
            assert (status, doc["faults"]["up"]) == (200, {})  # PUT replaced the latency
            client.sendall(b"x" * 100)
            assert _read_until_reset(client) == (10, True)

        status, doc = control_request(url, "DELETE", "/faults")
        assert (status, doc["faults"]) == (200, {"refuse": False, "up": {}, "down": {}})
        assert control_request(url, "PATCH", "/faults", {"latency": "soon"})[0] == 400
        assert control_request(url, "GET", "/forwards/nope/faults")[0] == 404
        status, doc = control_request(url, "GET", "/stats")
        assert (status, doc["forwards"][0]["connections"][-1]["end"]) == (200, "fault-reset")
        code, _, err = fwd.stop()
        assert code == 0, err


def test_config_file_runs_two_forwards(tmp_path: Path) -> None:
    def banner(sock: socket.socket) -> None:
        sock.sendall(b"second\n")
        sock.shutdown(socket.SHUT_WR)
        recv_all(sock)

    with Backend(echo_handler) as first, Backend(banner) as second:
        config = tmp_path / "forwards.toml"
        config.write_text(
            'control = "127.0.0.1:0"\n'
            '[defaults]\nidle_timeout = "30s"\n'
            f'[forward.echo]\nlisten = "127.0.0.1:0"\ntarget = "{first.target}"\n'
            f'[forward.slow]\nlisten = "127.0.0.1:0"\ntarget = "{second.target}"\n'
            '[forward.slow.down]\nlatency = "150ms"\n'
        )
        with ForwardProcess(["--config", str(config), "--stats"]) as fwd:
            names = [f["name"] for f in fwd.started["forwards"]]
            assert names == ["echo", "slow"]
            assert fwd.started["forwards"][1]["faults"]["down"] == {"latency": "150ms"}
            with socket.create_connection(("127.0.0.1", fwd.port(0)), timeout=20) as client:
                client.sendall(b"one")
                assert recv_exactly(client, 3) == b"one"
            start = time.monotonic()
            with socket.create_connection(("127.0.0.1", fwd.port(1)), timeout=20) as client:
                assert recv_all(client) == b"second\n"
            assert time.monotonic() - start >= 0.15
            _, doc = control_request(fwd.control, "GET", "/forwards")
            assert [f["name"] for f in doc["forwards"]] == ["echo", "slow"]
            assert control_request(fwd.control, "GET", "/faults")[0] == 400  # which one?
            code, out, err = fwd.stop()
    assert code == 0, err
    totals = {f["name"]: (f["accepted"], f["bytes_down"]) for f in json.loads(out)["forwards"]}
    assert totals == {"echo": (1, 3), "slow": (1, 7)}


@pytest.mark.parametrize(
    ("path", "signum", "exit_code"),
    [("splice", signal.SIGTERM, 0), ("copy", signal.SIGINT, 130)],
)
def test_signal_drains_open_connections_and_prints_stats(
    path: str, signum: int, exit_code: int
) -> None:
    go = threading.Event()
    payload = os.urandom(2 << 20)

    def backend(sock: socket.socket) -> None:
        if len(recv_all(sock, limit=100)) < 100:
            sock.close()  # the probe for the closed listener, if it slipped in before
            return
        go.wait(20)
        sock.sendall(payload)
        sock.close()

    with Backend(backend) as target:
        args = ["127.0.0.1:0", target.target, "--stats", "--drain-timeout", "20s"]
        args += ["--data-path", path]
        proc = ForwardProcess(args, json_output=False)
        with proc:
            port = proc.port()
            client = socket.create_connection(("127.0.0.1", port), timeout=20)
            client.sendall(b"q" * 100)
            wait_for(lambda: target.accepted == 1, what="the connection through")
            proc.proc.send_signal(signum)

            def refused() -> bool:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                except ConnectionRefusedError:
                    return True
                except OSError:  # accepted just before the close, then reset
                    return False
                return False

            wait_for(refused, what="the listener to close")
            assert proc.proc.poll() is None  # still draining
            go.set()
            assert recv_all(client) == payload
            client.close()
            code, out, err = proc.stop(None)  # a second signal would force: only wait
    assert code == exit_code, err
    # "forward 127.0.0.1:P -> 127.0.0.1:T: N connections (0 refused, 0 failed), up 100 bytes,
    # down 2097152 bytes" (N is 2 when the listener probe got in before the listener closed)
    assert re.search(rf"^forward 127\.0\.0\.1:{port} -> {target.target}: [12] connections", out)
    assert f"up 100 bytes, down {len(payload)} bytes" in out, out
    assert re.search(rf"\b100\s+{len(payload)}\s+done\b", out), out  # the per-connection row


# -- churn, many idle connections, file descriptors -----------------------------------------------


def _churn_client(port: int, index: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    try:
        sock.sendall(b"%08d" % index)
        mode = index % 4
        if mode == 0:
            assert recv_exactly(sock, 8) == b"%08d" % index
        elif mode == 1:
            sock.shutdown(socket.SHUT_WR)
            with contextlib.suppress(ConnectionResetError):
                recv_all(sock)
        elif mode == 2:  # abort: the forwarder sees a reset
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()


CHURN = 5000


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("loop", "path"), [("uvloop", "copy"), ("asyncio", "copy"), ("uvloop", "splice")]
)
def test_churn_of_short_connections_does_not_crash(loop: str, path: str) -> None:
    with (
        Backend(echo_handler) as target,
        ForwardProcess(
            ["127.0.0.1:0", target.target, "--loop", loop, "--data-path", path, "--stats"]
        ) as fwd,
    ):
        assert fwd.started["forwards"][0]["loop"] == loop
        port = fwd.port()
        workers = 4
        errors: list[BaseException] = []

        def run(worker: int) -> None:
            try:
                for index in range(worker, CHURN, workers):
                    _churn_client(port, index)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(w,)) for w in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(200)
        assert not errors, errors[:3]
        assert fwd.proc.poll() is None, "the forwarder died under churn"
        code, out, err = fwd.stop()
    assert code == 0, err[-2000:]
    stats = json.loads(out)["forwards"][0]
    assert stats["accepted"] == CHURN
    assert stats["failed"] == 0
    assert stats["active"] == 0


def _accepted(target: Backend, count: int) -> bool:
    return target.accepted == count


@pytest.mark.timeout(240)
@pytest.mark.parametrize("path", ["splice", "copy"])
def test_5000_idle_connections_then_descriptors_return_to_baseline(path: str) -> None:
    held = 5000
    if nofile_hard_limit() < 2 * held + 500:
        pytest.skip(f"RLIMIT_NOFILE hard limit {nofile_hard_limit()} < {2 * held + 500}")
    raise_nofile(2 * held + 500)
    with (
        Backend(hold_handler, threads=False) as target,
        ForwardProcess(["127.0.0.1:0", target.target, "--data-path", path]) as fwd,
    ):
        port = fwd.port()
        sockets = fwd.socket_count()  # the listener and the loop's own
        # One connection first: libuv opens /dev/null once, for its EMFILE fallback.
        with socket.create_connection(("127.0.0.1", port), timeout=20):
            wait_for(lambda: target.accepted == 1, what="the warm-up connection")
        target.close_held()
        wait_for(lambda: fwd.socket_count() == sockets, what="the warm-up connection to close")
        baseline = fwd.fd_count()
        target.accepted = 0
        for through in (held, 2 * held):  # 2 x 5,000 = 10,000 connections opened and closed
            clients = [
                socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(held)
            ]
            try:
                wait_for(functools.partial(_accepted, target, through), what="all through")
                wait_for(
                    lambda: fwd.socket_count() == sockets + 2 * held,
                    what=lambda: (
                        f"{sockets + 2 * held} sockets in forward, not {fwd.socket_count()}"
                    ),
                )
                # Idle connections cost their two sockets and nothing else (no pipe).
                assert fwd.fd_count() - baseline == 2 * held
                # Every one of them is still a working connection.
                for sock in (clients[0], clients[held // 2], clients[-1]):
                    sock.sendall(b"?")  # still open: accepted for writing
            finally:
                for sock in clients:
                    sock.close()
                target.close_held()
            wait_for(
                lambda: fwd.fd_count() <= baseline,
                timeout=30,
                what=lambda: f"fds back to baseline {baseline}: {fwd.fd_count()}",
            )
        assert fwd.proc.poll() is None
        code, _, err = fwd.stop()
    assert code == 0, err


def test_splice_without_a_spare_descriptor_falls_back_to_copying() -> None:
    """With one file descriptor left, no pipe can be made: the bytes are copied instead."""
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        pytest.skip("prlimit (util-linux) is not installed")
    held = 10
    with (
        Backend(echo_handler) as target,
        ForwardProcess(["127.0.0.1:0", target.target, "--data-path", "splice"]) as fwd,
    ):
        port = fwd.port()
        sockets = fwd.socket_count()
        with socket.create_connection(("127.0.0.1", port), timeout=20) as warm:
            warm.sendall(b"warm")
            assert recv_exactly(warm, 4) == b"warm"
        wait_for(lambda: fwd.socket_count() == sockets, what="the warm-up connection to close")
        base = fwd.fd_count()
        limit = base + 2 * held + 1
        subprocess.run([prlimit, f"--pid={fwd.pid}", f"--nofile={limit}:{limit}"], check=True)
        clients = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(held)]
        try:
            # Sockets, not all descriptors: the loop may hold a pipe or two of its own.
            wait_for(lambda: fwd.socket_count() == sockets + 2 * held, what="all connections held")
            for index, client in enumerate(clients):
                payload = bytes([index]) * 100_000
                client.sendall(payload)
                assert recv_exactly(client, len(payload)) == payload
            assert fwd.fd_count() <= limit
        finally:
            for client in clients:
                client.close()
        assert fwd.proc.poll() is None
        code, _, err = fwd.stop()
    assert code == 0, err
