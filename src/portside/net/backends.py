"""Backends behind the proxy: health state, balancing, counters and idle connections.

* :class:`Backend` is one ``host:port``, shared by every route that names it, so its
  health, counters and idle keep-alive connections are shared too.

  - *Active* health (``health.py``) moves it between up and down after ``rise``
    successes or ``fall`` failures in a row.
  - *Passive* ejection: a failed connect takes it out of rotation for
    :data:`EJECT_S` seconds (doubling on each failure in a row, up to
    :data:`MAX_EJECT_S`); a successful connect or health check ends the ejection.

* :class:`BackendPool` is the set of backends of one route and its balancing policy:
  round-robin, or least-connections (fewest requests in flight, ties in turn). When no
  backend is available it still offers the others (the least recently failed first)
  rather than refusing outright: on loopback a connect costs little and a fresh failure
  gives the client a precise 502.

* :class:`Backends` owns every :class:`Backend` by address and the pools by route;
  :meth:`Backends.sync` follows the route table (new backends appear, unused ones are
  closed).

Time comes from the caller (``now``, a ``time.monotonic()`` value) so that the logic
here is deterministic; this module opens no socket.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Protocol

from portside.net.routes import BackendAddress, Balance, HealthCheckSpec, Route

#: First passive ejection after a failed connect, seconds; doubles per failure in a row.
EJECT_S = 2.0
MAX_EJECT_S = 30.0
#: Idle keep-alive connections kept per backend, and how long one may sit unused.
MAX_IDLE_PER_BACKEND = 256
IDLE_TIMEOUT_S = 30.0


class Health(enum.StrEnum):
    UP = "up"  # passed its checks (or has none and has not failed)
    DOWN = "down"  # failed ``fall`` active checks in a row
    EJECTED = "ejected"  # a connect failed recently (passive)


class Reusable(Protocol):
    """An idle connection the pool can hand out again."""

    def is_reusable(self) -> bool: ...

    def close(self) -> None: ...


@dataclasses.dataclass(slots=True)
class Counters:
    """Monotonic counts since start, plus ``in_flight`` (a gauge)."""

    requests: int = 0
    in_flight: int = 0
    responses_1xx: int = 0
    responses_2xx: int = 0
    responses_3xx: int = 0
    responses_4xx: int = 0
    responses_5xx: int = 0
    errors: int = 0  # 502/504 made by the proxy, truncated responses
    retries: int = 0
    bytes_in: int = 0  # from the client (request bodies)
    bytes_out: int = 0  # to the client (response bodies)

    def count_status(self, status: int) -> None:
        if 100 <= status < 200:
            self.responses_1xx += 1
        elif status < 300:
            self.responses_2xx += 1
        elif status < 400:
            self.responses_3xx += 1
        elif status < 500:
            self.responses_4xx += 1
        else:
            self.responses_5xx += 1

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class Backend:
    """One backend address: its health, counters and idle connections."""

    def __init__(self, address: BackendAddress) -> None:
        self.address = address
        self.counters = Counters()
        self.active_up = True  # the active checks' verdict
        self.health_spec: HealthCheckSpec | None = None
        self.checks_ok_in_row = 0
        self.checks_failed_in_row = 0
        self.last_check_at: float | None = None  # wall clock, for people
        self.last_check_status: int | None = None
        self.connect_failures_in_row = 0
        self.ejected_until = 0.0  # monotonic
        self.last_error: str | None = None
        self.connect_failures = 0
        self.idle: collections.deque[tuple[float, Reusable]] = collections.deque()
        self._closed = False

    def __repr__(self) -> str:
        return f"<Backend {self.address} {self.health(time.monotonic()).value}>"

    # --- state -------------------------------------------------------------------------

    def health(self, now: float) -> Health:
        if not self.active_up:
            return Health.DOWN
        if now < self.ejected_until:
            return Health.EJECTED
        return Health.UP

    def is_closed(self) -> bool:
        """Whether no route uses it any more (its health task then ends)."""
        return self._closed

    def is_available(self, now: float) -> bool:
        return self.active_up and now >= self.ejected_until

    def record_connect_failure(self, reason: str, now: float) -> None:
        """Passive ejection: out of rotation for a while, longer if it keeps failing."""
        self.connect_failures += 1
        self.connect_failures_in_row += 1
        self.last_error = reason
        delay = min(MAX_EJECT_S, EJECT_S * 2 ** (self.connect_failures_in_row - 1))
        self.ejected_until = now + delay
        self.close_idle()

    def record_connect_success(self) -> None:
        self.connect_failures_in_row = 0
        self.ejected_until = 0.0

    def record_check(
        self, ok: bool, *, status: int | None, reason: str | None, wall: float
    ) -> bool:
        """One active check's result; returns True when the up/down verdict changed."""
        spec = self.health_spec or HealthCheckSpec()
        self.last_check_at = wall
        self.last_check_status = status
        if ok:
            self.checks_ok_in_row += 1
            self.checks_failed_in_row = 0
            self.record_connect_success()
            if not self.active_up and self.checks_ok_in_row >= spec.rise:
                self.active_up = True
                return True
            return False
        self.checks_failed_in_row += 1
        self.checks_ok_in_row = 0
        self.last_error = reason
        if self.active_up and self.checks_failed_in_row >= spec.fall:
            self.active_up = False
            self.close_idle()
            return True
        return False

    # --- idle keep-alive connections ----------------------------------------------------

    def take_idle(self, now: float) -> Reusable | None:
        """The most recently used idle connection that is still usable, or None."""
        idle = self.idle
        while idle:
            since, conn = idle.pop()
            if now - since < IDLE_TIMEOUT_S and conn.is_reusable():
                return conn
            conn.close()
        return None

    def give_back(self, conn: Reusable, now: float) -> None:
        if self._closed or len(self.idle) >= MAX_IDLE_PER_BACKEND or not conn.is_reusable():
            conn.close()
            return
        self.idle.append((now, conn))

    def sweep_idle(self, now: float) -> None:
        """Close idle connections that timed out or that the backend closed."""
        kept: collections.deque[tuple[float, Reusable]] = collections.deque()
        for since, conn in self.idle:
            if now - since < IDLE_TIMEOUT_S and conn.is_reusable():
                kept.append((since, conn))
            else:
                conn.close()
        self.idle = kept

    def close_idle(self) -> None:
        while self.idle:
            self.idle.popleft()[1].close()

    def close(self) -> None:
        self._closed = True
        self.close_idle()


class BackendPool:
    """The backends of one route and how to choose among them."""

    def __init__(self, route: Route, backends: Sequence[Backend]) -> None:
        self.route = route
        self.backends = tuple(backends)
        self.balance = route.balance
        self.counters = Counters()
        self._turn = 0

    def pick(self, now: float, exclude: Collection[Backend] = ()) -> Backend | None:
        """The next backend by the route's policy, never one in ``exclude``.

        Available backends first; when none is, the least recently ejected of the others
        (a fresh attempt beats a blind refusal). None when every backend is excluded.
        """
        candidates = [b for b in self.backends if b.is_available(now) and b not in exclude]
        if not candidates:
            rest = [b for b in self.backends if b not in exclude]
            if not rest:
                return None
            return min(rest, key=lambda b: (not b.active_up, b.ejected_until))
        count = len(candidates)
        if count == 1:
            return candidates[0]
        turn = self._turn
        self._turn += 1
        if self.balance is Balance.LEAST_CONNECTIONS:
            fewest = min(b.counters.in_flight for b in candidates)
            ties = [b for b in candidates if b.counters.in_flight == fewest]
            return ties[turn % len(ties)]
        return candidates[turn % count]


class Backends:
    """Every backend by address, and every route's pool; follows the route table."""

    def __init__(self, on_new: Callable[[Backend], None] | None = None) -> None:
        self.by_address: dict[BackendAddress, Backend] = {}
        self.pools: dict[tuple[str, str], BackendPool] = {}
        self._on_new = on_new

    def sync(self, routes: Iterable[Route]) -> list[Backend]:
        """Make pools for ``routes``; returns the backends no route uses any more (closed).

        Counters survive a reload: a route that keeps its key keeps its pool counters, and
        a backend that stays keeps its health and counters.
        """
        routes = list(routes)
        wanted: dict[BackendAddress, HealthCheckSpec | None] = {}
        for route in routes:
            for address in route.backends:
                if wanted.get(address) is None:
                    wanted[address] = route.health
        for address, spec in wanted.items():
            backend = self.by_address.get(address)
            if backend is None:
                backend = self.by_address[address] = Backend(address)
                backend.health_spec = spec
                if self._on_new is not None:
                    self._on_new(backend)
            else:
                backend.health_spec = spec
        pools: dict[tuple[str, str], BackendPool] = {}
        for route in routes:
            pool = BackendPool(route, [self.by_address[a] for a in route.backends])
            old = self.pools.get(route.key)
            if old is not None:
                pool.counters = old.counters
                pool._turn = old._turn
            pools[route.key] = pool
        self.pools = pools
        gone = [b for a, b in self.by_address.items() if a not in wanted]
        for backend in gone:
            del self.by_address[backend.address]
            backend.close()
        return gone

    def pool_for(self, route: Route) -> BackendPool:
        pool = self.pools.get(route.key)
        if pool is None or pool.route is not route:
            # A route object from a snapshot newer than the last sync (cannot happen when
            # sync subscribes to the table) or a replaced route: build it on the spot.
            self.sync([*(p.route for p in self.pools.values() if p.route.key != route.key), route])
            pool = self.pools[route.key]
        return pool

    def sweep_idle(self, now: float) -> None:
        for backend in self.by_address.values():
            backend.sweep_idle(now)

    def close(self) -> None:
        for backend in self.by_address.values():
            backend.close()
