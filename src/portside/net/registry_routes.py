"""The proxy's ``registry`` route source: the routes ``portside run`` publishes, live.

:class:`RegistryRoutes` keeps the ``"registry"`` source of a :class:`RouteTable` equal to
the registry's routes whose owner is alive. :meth:`RegistryRoutes.read` is the blocking
part (run it in a thread): it opens the registry once it exists (looking never creates
it), re-reads the routes only when ``PRAGMA data_version`` says another connection
committed, and re-checks the owners' liveness every time (a few ``/proc`` reads), so a
``portside run`` killed with SIGKILL loses its route within one poll. :meth:`apply` runs
on the event loop and swaps the routes in one step when they changed.

With ``advertise``, the proxy also announces where it listens (:meth:`Registry.add_proxy`),
once the registry exists, so ``portside run`` can print ``http://NAME.localhost:PORT/``;
the announcement is withdrawn by :meth:`close` (and ignored once the proxy is gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from portside.net.routes import BackendAddress, ConfigError, Route, RouteTable, parse_host_pattern
from portside.registry import Registry, RegistryError, RouteRecord, process_start_token

#: Seconds between two looks at the registry.
POLL_INTERVAL_S = 0.5
SOURCE = "registry"


def to_route(record: RouteRecord) -> Route | None:
    """The proxy route of a registry record; None when its host is not a valid name."""
    try:
        host = parse_host_pattern(record.host)
    except ConfigError:
        return None
    return Route(
        host=host,
        backends=(BackendAddress(host=record.backend_host, port=record.backend_port),),
        source=SOURCE,
    )


class RegistryRoutes:
    """Follows the registry at ``path`` (default: the user's registry) into ``table``.

    Error handling: a registry that cannot be opened or read (foreign, damaged, newer)
    is reported once on ``errors`` and retried at the next poll; the last good routes
    are dropped, since nobody can vouch for them.
    """

    def __init__(
        self,
        table: RouteTable,
        *,
        path: Path | None = None,
        errors: TextIO | None = None,
        advertise: Callable[[], Sequence[tuple[str, str, int]]] | None = None,
    ) -> None:
        from portside.registry import registry_path

        self.table = table
        self.path = path or registry_path()
        self._errors = errors or sys.stderr
        self._registry: Registry | None = None
        self._version: int | None = None
        self._records: tuple[RouteRecord, ...] = ()
        self._applied: tuple[RouteRecord, ...] | None = None
        self._last_error: str | None = None
        self._advertise = advertise  # () -> [(scheme, ip, port)] of the proxy's listeners
        self._advertised = False

    def read(self) -> tuple[RouteRecord, ...]:
        """The live routes now (blocking: SQLite and ``/proc``)."""
        try:
            registry = self._open()
            if registry is None:
                return ()
            if self._advertise is not None and not self._advertised:
                listening = self._advertise()
                for scheme, ip, port in listening:
                    registry.add_proxy(scheme, ip, port)
                self._advertised = bool(listening)
            version = registry.data_version()
            if version != self._version:
                self._records = tuple(registry.routes())
                self._version = version
        except RegistryError as exc:
            self._report(str(exc))
            self.close()
            return ()
        self._last_error = None
        return tuple(r for r in self._records if process_start_token(r.pid) == r.start_token)

    def apply(self, records: tuple[RouteRecord, ...]) -> bool:
        """Put ``records`` into the table if they differ from the last ones; whether
        they did (event-loop side)."""
        if records == self._applied:
            return False
        self._applied = records
        routes = [route for route in map(to_route, records) if route is not None]
        self.table.replace_source(SOURCE, routes)
        return True

    def poll(self) -> bool:
        """:meth:`read` then :meth:`apply`, in the caller's thread."""
        return self.apply(self.read())

    async def run(self, interval_s: float = POLL_INTERVAL_S) -> None:
        """Poll until cancelled; the blocking part runs in a worker thread."""
        try:
            while True:
                await asyncio.sleep(interval_s)  # the poll period itself
                self.apply(await asyncio.to_thread(self.read))
        finally:
            self.close()

    def close(self) -> None:
        if self._registry is not None:
            if self._advertised:
                with contextlib.suppress(RegistryError):
                    self._registry.remove_proxies()
                self._advertised = False
            self._registry.close()
            self._registry = None
            self._version = None
            self._records = ()

    def _open(self) -> Registry | None:
        if self._registry is None:
            try:
                if os.path.getsize(self.path) == 0:  # noqa: PTH202 -- see registry_file
                    return None
            except OSError:
                return None  # no registry yet: nobody has published a route
            self._registry = Registry.open(self.path)
        return self._registry

    def _report(self, message: str) -> None:
        if message != self._last_error:
            self._last_error = message
            try:
                self._errors.write(f"portside: registry routes unavailable: {message}\n")
                self._errors.flush()
            except (OSError, ValueError):
                pass
