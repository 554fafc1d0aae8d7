"""Active health checks: ``GET path`` to each backend on an interval.

A check succeeds when the backend answers with a status in the route's ``expect`` range
within ``timeout_s``; :meth:`Backend.record_check` turns ``rise``/``fall`` runs into the
up/down verdict. Only the status line is read (then the connection is closed), so a
backend that streams a large health page costs nothing.

:class:`HealthChecker` keeps one task per backend that has a check, inside its own
TaskGroup; :meth:`HealthChecker.watch` adds backends as routes appear (the route table
pushes them), and a backend's task ends when the backend is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable

from portside.net.backends import Backend
from portside.net.routes import HealthCheckSpec

_STATUS_LINE = re.compile(rb"^HTTP/1\.[01] ([1-5][0-9]{2})(?: [^\r\n]*)?\r?\n$")
MAX_STATUS_LINE_BYTES = 1024
#: How often a task looks again when its backend has no check configured (any more).
IDLE_POLL_S = 1.0

Listener = Callable[[Backend], None]


async def check_once(
    backend: Backend, spec: HealthCheckSpec
) -> tuple[bool, int | None, str | None]:
    """One check: (success, status or None, reason for a failure or None)."""
    address = backend.address
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(spec.timeout_s):
            reader, writer = await asyncio.open_connection(address.host, address.port)
            host = str(address)
            writer.write(
                f"GET {spec.path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: portside-health\r\n"
                "Accept: */*\r\nConnection: close\r\n\r\n".encode("latin-1")
            )
            await writer.drain()
            line = await reader.readline()
    except TimeoutError:
        return False, None, f"health check timed out after {spec.timeout_s:g} s"
    except (OSError, asyncio.LimitOverrunError, ValueError) as exc:
        return False, None, f"health check: {_reason(exc)}"
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    match = _STATUS_LINE.match(line[:MAX_STATUS_LINE_BYTES])
    if match is None:
        what = "closed without a response" if not line else "not an HTTP/1.x status line"
        return False, None, f"health check: {what}"
    status = int(match.group(1))
    low, high = spec.expect
    if low <= status <= high:
        return True, status, None
    return False, status, f"health check {spec.path} answered {status}, expected {low}-{high}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


class HealthChecker:
    """One checking task per watched backend; run with :meth:`run` (until cancelled)."""

    def __init__(self, on_change: Listener | None = None) -> None:
        self._group: asyncio.TaskGroup | None = None
        self._pending: list[Backend] = []
        self._watched: set[int] = set()
        self._on_change = on_change

    def watch(self, backend: Backend) -> None:
        """Check ``backend`` from now on (if it has a spec) until it is closed."""
        if id(backend) in self._watched:
            return
        self._watched.add(id(backend))
        if self._group is None:
            self._pending.append(backend)
        else:
            self._group.create_task(self._loop(backend))

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            self._group = group
            for backend in self._pending:
                group.create_task(self._loop(backend))
            self._pending.clear()
            try:
                await asyncio.Event().wait()  # until cancelled; the tasks run meanwhile
            finally:
                self._group = None

    async def _loop(self, backend: Backend) -> None:
        try:
            while not backend.is_closed():
                spec = backend.health_spec
                if spec is None:
                    await asyncio.sleep(IDLE_POLL_S)  # nothing to check; look again later
                    continue
                ok, status, reason = await check_once(backend, spec)
                if backend.is_closed():
                    break
                if (
                    backend.record_check(ok, status=status, reason=reason, wall=time.time())
                    and self._on_change
                ):
                    self._on_change(backend)
                await asyncio.sleep(spec.interval_s)  # the check interval itself
        finally:
            self._watched.discard(id(backend))
