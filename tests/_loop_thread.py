"""An event loop (uvloop) in a thread of its own, running one server: for tests that
talk to a real server from ordinary blocking sockets."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Self

from portside.net.http import HTTPServer


class LoopThread:
    """An event loop in a thread, running one server made by *start*; a context
    manager: the server is open inside the block and closed (the loop stopped, the
    thread joined) after it."""

    def __init__(self, start: Callable[[], Awaitable[object]]) -> None:
        self._start = start
        self._ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: Any = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import uvloop

        loop = self.loop = uvloop.new_event_loop()
        self.server = loop.run_until_complete(self._start())
        self._ready.set()
        loop.run_forever()
        loop.close()

    def __enter__(self) -> Self:
        self.thread.start()
        assert self._ready.wait(10)
        return self

    def call(self, coro_factory: Callable[[], Awaitable[object]], timeout: float = 10) -> object:
        """``await coro_factory()`` on the loop; its result."""
        assert self.loop is not None

        async def run() -> object:
            return await coro_factory()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def __exit__(self, *exc: object) -> None:
        assert self.loop is not None
        self.call(self.server.aclose)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    @property
    def port(self) -> int:
        port: int = self.server.address.port
        return port

    @property
    def http(self) -> HTTPServer:
        server = self.server
        found: HTTPServer = server if isinstance(server, HTTPServer) else server.http
        return found
