"""The proxy under real load, as a child process (``portside proxy``'s own runner):

* 1 GiB of random bytes uploaded chunked and echoed back with Content-Length, full
  duplex, SHA-256 identical at the client (sent and received) and at the backend;
* a backend killed in the middle of a response: the client sees a truncated close or a
  502, the other backend keeps serving, health checks mark it down and, once it is
  back, up;
* 5,000 idle client connections held at once, all still usable;
* 10,000 connections opened and closed: the proxy's descriptors return to the baseline.

``PORTSIDE_TEST_BIG_BYTES`` shrinks the 1 GiB case for a quick local run.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
import sys
import threading

import pytest

from tests.integration.test_proxy_kit import (
    LOOPBACK,
    ChildBackend,
    ChildProxy,
    read_head,
    request,
    wait_for,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/PID/fd")

BIG = int(os.environ.get("PORTSIDE_TEST_BIG_BYTES", str(1 << 30)))
PIECE = 1 << 20


@pytest.mark.timeout(300)
def test_one_gib_goes_through_both_ways_with_identical_sha256():
    with ChildBackend("big") as backend, ChildProxy("--to", backend.address) as proxy:
        sent = hashlib.sha256()
        received = hashlib.sha256()
        failure: list[BaseException] = []
        with socket.create_connection((LOOPBACK, proxy.port), timeout=60) as sock:
            sock.sendall(
                b"PUT /echo HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\n"
                b"X-Length: %d\r\n\r\n" % BIG
            )

            def upload() -> None:
                rng = random.Random(20261122)  # noqa: S311 - test data
                left = BIG
                try:
                    while left:
                        piece = rng.randbytes(min(PIECE, left))
                        sent.update(piece)
                        sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                        left -= len(piece)
                    sock.sendall(b"0\r\n\r\n")
                except BaseException as exc:  # reported by the main thread
                    failure.append(exc)

            uploader = threading.Thread(target=upload)
            uploader.start()
            head, rest = read_head(sock)
            assert head.startswith(b"HTTP/1.1 200")
            assert b"content-length: %d" % BIG in head.lower()
            received.update(rest)
            got = len(rest)
            buffer = bytearray(PIECE)
            while got < BIG:
                n = sock.recv_into(buffer)
                assert n, f"closed after {got} of {BIG} bytes"
                received.update(memoryview(buffer)[:n])
                got += n
            uploader.join(60)
            assert not failure, failure
        assert got == BIG
        backend_digest = request(proxy.port, "/digest").json()["echo"]
        assert sent.hexdigest() == received.hexdigest() == backend_digest


def test_a_backend_killed_mid_response_cuts_that_response_and_the_proxy_carries_on():
    first = ChildBackend("first")
    second = ChildBackend("second")
    revived: ChildBackend | None = None
    try:
        with ChildProxy(
            "--to",
            first.address,
            "--to",
            second.address,
            "--health-path",
            "/health",
            "--health-interval",
            "0.1",
            "--rise",
            "2",
            "--fall",
            "2",
        ) as proxy:
            by_name = {"first": first, "second": second}
            with socket.create_connection((LOOPBACK, proxy.port), timeout=20) as sock:
                sock.sendall(b"GET /hang-body HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
                head, rest = read_head(sock)
                assert head.startswith(b"HTTP/1.1 200")
                name = next(
                    line.split(b":", 1)[1].strip().decode()
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"x-backend:")
                )
                victim = by_name[name]
                survivor = second if victim is first else first
                while len(rest) < 65536:  # the part the backend sent before it hangs
                    more = sock.recv(65536)
                    assert more
                    rest += more
                victim.kill()
                tail = b""
                try:
                    while more := sock.recv(65536):
                        tail += more
                except ConnectionResetError:
                    pass
                assert len(rest) + len(tail) < 1 << 20  # truncated: never a short "complete" body
            answers = [request(proxy.port, "/info") for _ in range(6)]
            assert [a.status for a in answers] == [200] * 6
            assert {a.json()["backend"] for a in answers} == {survivor.proc.args[2]}  # type: ignore[index]

            def health(address: str) -> str:
                return str({b["address"]: b["health"] for b in proxy.status()["backends"]}[address])

            wait_for(
                lambda: health(victim.address) == "down", what="the killed backend marked down"
            )
            assert health(survivor.address) == "up"
            revived = ChildBackend(name, victim.port)
            wait_for(lambda: health(victim.address) == "up", what="the revived backend marked up")
            seen = {request(proxy.port, "/info").json()["backend"] for _ in range(6)}
            assert seen == {"first", "second"}
            assert proxy.stop() == 0
    finally:
        for backend in (first, second, revived):
            if backend is not None:
                backend.kill()


async def _hold(port: int, count: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """Open ``count`` keep-alive connections, one request each, and keep them open."""
    gate = asyncio.Semaphore(256)

    async def one() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with gate:
            reader, writer = await asyncio.open_connection(LOOPBACK, port)
            await _ask(reader, writer)
            return reader, writer

    async with asyncio.timeout(120):
        return list(await asyncio.gather(*(one() for _ in range(count))))


async def _ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"GET /health HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert await reader.readexactly(3) == b"ok\n"


@pytest.mark.timeout(300)
def test_five_thousand_idle_clients_are_held_and_still_served():
    with ChildBackend("b") as backend, ChildProxy("--to", backend.address) as proxy:
        request(proxy.port, "/health")
        baseline = proxy.fd_count()

        async def scenario() -> None:
            held = await _hold(proxy.port, 5000)
            assert proxy.fd_count() >= baseline + 5000
            fresh = request(proxy.port, "/health")  # a newcomer is served meanwhile
            assert fresh.status == 200
            gate = asyncio.Semaphore(256)

            async def again(pair: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
                async with gate:
                    await _ask(*pair)

            async with asyncio.timeout(120):
                await asyncio.gather(*(again(pair) for pair in held))  # every one still open
            for _, writer in held:
                writer.close()

        asyncio.run(scenario())


@pytest.mark.timeout(300)
def test_descriptors_return_to_the_baseline_after_ten_thousand_connections():
    with ChildBackend("b") as backend, ChildProxy("--to", backend.address) as proxy:

        def settled() -> int:
            idle = int(sum(b["idle_connections"] for b in proxy.status()["backends"]))
            return proxy.fd_count() - idle  # pooled backend connections may vary

        request(proxy.port, "/health")
        baseline = settled()

        async def churn() -> None:
            gate = asyncio.Semaphore(64)

            async def one(index: int) -> None:
                async with gate:
                    reader, writer = await asyncio.open_connection(LOOPBACK, proxy.port)
                    if index % 2 == 0:  # half ask something, half just connect and leave
                        await _ask(reader, writer)
                    writer.close()
                    await writer.wait_closed()

            async with asyncio.timeout(240):
                await asyncio.gather(*(one(i) for i in range(10_000)))

        asyncio.run(churn())
        wait_for(lambda: settled() == baseline, what=f"descriptors back to {baseline}")
        assert request(proxy.port, "/health").status == 200
        assert proxy.stop() == 0
