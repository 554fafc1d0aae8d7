"""The proxy's route table: which backends serve a request, by Host and path. Pure: no I/O.

A :class:`Route` maps a host pattern and a path prefix to backends::

    app.localhost          exact host (case-insensitive, port and trailing dot ignored)
    *.example              any name under example (``a.example``, ``b.a.example``), not
                           ``example`` itself
    *                      any host: the default route (``--to`` makes one)

Matching (:meth:`RouteSnapshot.match`) keeps the routes whose host pattern and path prefix
both match, then picks the most specific host (exact, then the longest wildcard suffix, then
``*``) and, among those, the longest path prefix. A prefix matches on segment boundaries:
``/api`` matches ``/api``, ``/api/`` and ``/api/v1?x`` but not ``/apis``.

:class:`RouteTable` is the live table. Every change (add, remove, replace the routes of one
*source*) builds a new immutable :class:`RouteSnapshot` and swaps one reference, so a
request always sees one consistent table, and the routes of one source (``"cli"``,
``"file"`` for the TOML file reloaded on SIGHUP, ``"registry"`` for ``portside run``)
change without touching the others. Listeners registered with :meth:`RouteTable.subscribe`
hear about each new snapshot (the proxy uses this to create and retire backend pools).

:func:`parse_route_spec` reads the ``--route`` flag, :func:`parse_config` the TOML file.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from portside.addresses import HostKind, parse_target
from portside.errors import UsageError

ANY_HOST = "*"
SOURCES = ("cli", "file", "registry")

_NAME = re.compile(
    r"^(?:\*\.)?(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$"
)


class Balance(enum.StrEnum):
    ROUND_ROBIN = "round-robin"
    LEAST_CONNECTIONS = "least-connections"


class ConfigError(UsageError):
    """A route flag or the TOML file is malformed; the message names the place and the fix."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BackendAddress:
    """Where a backend listens: an IP in normal form or a host name, and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class HealthCheckSpec:
    """Active health checks: ``GET path`` every ``interval_s``; a status in ``expect``
    counts as a success. ``rise`` successes in a row mark a backend up, ``fall`` failures
    in a row mark it down."""

    path: str = "/"
    interval_s: float = 2.0
    timeout_s: float = 1.0
    expect: tuple[int, int] = (200, 399)  # inclusive status range
    rise: int = 2
    fall: int = 3


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """Requests for ``host`` under ``path`` go to ``backends``.

    ``preserve_host``: send the client's Host to the backend (the default) rather than the
    backend's address. ``health`` None means no active checks (passive ejection still
    applies). ``source`` says who owns the route: ``"cli"``, ``"file"`` or ``"registry"``.
    """

    host: str
    path: str = "/"
    backends: tuple[BackendAddress, ...]
    balance: Balance = Balance.ROUND_ROBIN
    preserve_host: bool = True
    health: HealthCheckSpec | None = None
    source: str = "cli"

    @property
    def key(self) -> tuple[str, str]:
        """Identity in the table: at most one route per (host pattern, path prefix)."""
        return (self.host, self.path)

    @property
    def name(self) -> str:
        """``app.localhost/api`` (``*`` for the default host)."""
        return self.host + ("" if self.path == "/" else self.path)


_NORMALISED: dict[str, str] = {}  # raw Host value -> normalise_host(value)


def normalise_host(value: str) -> str:
    """A request's Host header as matched: lower case, no port, no trailing dot, IPv6
    without brackets. Returns ``""`` for an empty or unusable value."""
    text = value.strip().lower()
    if text.startswith("["):
        close = text.find("]")
        return text[1:close] if close > 0 else ""
    if text.count(":") == 1:
        text = text.split(":", 1)[0]
    elif text.count(":") > 1:
        return text  # a bare IPv6 address (not valid in Host, but harmless to match)
    return text.rstrip(".")


def _host_rank(pattern: str, host: str) -> int:
    """How specifically ``pattern`` matches ``host``: -1 no match, 0 ``*``, 1+len for a
    wildcard suffix, a large number for an exact match."""
    if pattern == ANY_HOST:
        return 0
    if pattern.startswith("*."):
        suffix = pattern[1:]  # ".example"
        return len(suffix) if host.endswith(suffix) and len(host) > len(suffix) else -1
    return 1 << 16 if pattern == host else -1


def path_matches(prefix: str, path: str) -> bool:
    """Whether the request target ``path`` lies under ``prefix`` (segment boundaries)."""
    if prefix == "/":
        return True
    if not path.startswith(prefix):
        return False
    if prefix.endswith("/") or len(path) == len(prefix):
        return True
    return path[len(prefix)] in "/?#"


@dataclasses.dataclass(frozen=True, slots=True)
class RouteSnapshot:
    """One consistent, immutable version of the table."""

    version: int
    routes: tuple[Route, ...]
    _exact: Mapping[str, tuple[Route, ...]] = dataclasses.field(repr=False)
    _wild: tuple[Route, ...] = dataclasses.field(repr=False)

    @classmethod
    def build(cls, routes: Iterable[Route], version: int = 0) -> RouteSnapshot:
        ordered = sorted(routes, key=lambda r: (r.host, r.path))
        exact: dict[str, list[Route]] = {}
        wild: list[Route] = []
        for route in ordered:
            if route.host == ANY_HOST or route.host.startswith("*."):
                wild.append(route)
            else:
                exact.setdefault(route.host, []).append(route)

        def by_path(items: Iterable[Route]) -> tuple[Route, ...]:
            return tuple(sorted(items, key=lambda r: -len(r.path)))

        return cls(
            version,
            tuple(ordered),
            {host: by_path(items) for host, items in exact.items()},
            tuple(sorted(wild, key=lambda r: (-_wild_rank(r.host), -len(r.path)))),
        )

    def match(self, host: str, path: str) -> Route | None:
        """The route for a request with Host ``host`` (raw header value) and target ``path``."""
        name = _NORMALISED.get(host)
        if name is None:
            name = normalise_host(host)
            if len(_NORMALISED) < 1024:  # Host values repeat: normalised once each
                _NORMALISED[host] = name
        for route in self._exact.get(name, ()):
            if path_matches(route.path, path):
                return route
        for route in self._wild:  # most specific host first, then the longest prefix
            if _host_rank(route.host, name) >= 0 and path_matches(route.path, path):
                return route
        return None

    def hosts(self) -> frozenset[str]:
        """The host patterns of every route (for the Host allowlist)."""
        return frozenset(route.host for route in self.routes)


def _wild_rank(pattern: str) -> int:
    return 0 if pattern == ANY_HOST else len(pattern) - 1


Listener = Callable[[RouteSnapshot], None]


class RouteTable:
    """The live route table: atomic changes, readers never see half an update.

    Routes are kept per source; when two sources hold a route with the same host pattern
    and path, ``cli`` beats ``file`` beats ``registry`` (and the loser comes back if the
    winner goes). Single-threaded by design (the proxy's event loop): every method runs to
    completion without awaiting, so each change is atomic for the requests in flight.
    """

    def __init__(self, routes: Iterable[Route] = ()) -> None:
        self._sources: dict[str, dict[tuple[str, str], Route]] = {}
        for route in _checked(routes):
            self._sources.setdefault(route.source, {})[route.key] = route
        self._snapshot = RouteSnapshot.build(self._effective(), 0)
        self._listeners: list[Listener] = []

    @property
    def snapshot(self) -> RouteSnapshot:
        return self._snapshot

    def match(self, host: str, path: str) -> Route | None:
        return self._snapshot.match(host, path)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with each new snapshot; returns the unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def add(self, route: Route) -> None:
        """Add ``route``, replacing its source's route with the same host pattern and path."""
        _checked([route])
        self._sources.setdefault(route.source, {})[route.key] = route
        self._publish()

    def remove(self, host: str, path: str = "/", *, source: str | None = None) -> bool:
        """Remove the route for (``host``, ``path``) of ``source`` (of every source when
        None); False when there was none."""
        removed = False
        for name, routes in self._sources.items():
            if source in (None, name) and routes.pop((host, path), None) is not None:
                removed = True
        if removed:
            self._publish()
        return removed

    def replace_source(self, source: str, routes: Iterable[Route]) -> None:
        """Replace every route of ``source`` at once (each route must carry that source)."""
        new = _checked(routes)
        if any(r.source != source for r in new):
            raise ValueError(
                f"every route given to replace_source({source!r}) must have that source"
            )
        self._sources[source] = {r.key: r for r in new}
        self._publish()

    def routes_of(self, source: str) -> tuple[Route, ...]:
        return tuple(self._sources.get(source, {}).values())

    def _effective(self) -> list[Route]:
        merged: dict[tuple[str, str], Route] = {}
        for source in sorted(self._sources, key=_precedence, reverse=True):
            merged.update(self._sources[source])  # higher precedence overwrites
        return list(merged.values())

    def _publish(self) -> None:
        self._snapshot = RouteSnapshot.build(self._effective(), self._snapshot.version + 1)
        for listener in list(self._listeners):
            listener(self._snapshot)


def _precedence(source: str) -> int:
    """0 is strongest."""
    return SOURCES.index(source) if source in SOURCES else len(SOURCES)


def _checked(routes: Iterable[Route]) -> list[Route]:
    items = list(routes)
    for route in items:
        if not route.backends:
            raise ValueError(f"route {route.name!r} has no backends")
    return items


# --- parsing: flags and the TOML file -------------------------------------------------


def parse_backend(text: str) -> BackendAddress:
    """``127.0.0.1:3000``, ``[::1]:3000``, ``localhost:3000`` or ``http://127.0.0.1:3000``."""
    try:
        target = parse_target(text.strip(), require_port=True)
    except UsageError as exc:
        raise ConfigError(f"backend {text!r}: {exc}") from exc
    if target.scheme not in (None, "http"):
        raise ConfigError(f"backend {text!r}: only http:// backends are supported")
    if target.host is None or target.port is None or target.port == 0:
        raise ConfigError(f"backend {text!r}: write HOST:PORT, e.g. 127.0.0.1:3000")
    return BackendAddress(host=target.host, port=target.port)


def parse_host_pattern(text: str) -> str:
    """``app.localhost``, ``*.example``, ``*`` or an IP address, in normal form."""
    value = text.strip().lower().rstrip(".")
    if value == ANY_HOST:
        return value
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    try:
        target = parse_target(value)
    except UsageError:
        target = None
    if target is not None and target.host_kind is HostKind.IP and target.host:
        return target.host
    if not _NAME.match(value):
        raise ConfigError(
            f"host {text!r}: write a name (app.localhost), a wildcard (*.example) or * for any host"
        )
    return value


def parse_path_prefix(text: str) -> str:
    if not text.startswith("/") or any(c in text for c in " ?#\t\r\n"):
        raise ConfigError(f"path {text!r}: a path prefix starts with / and has no spaces, ? or #")
    return text


def parse_route_spec(text: str, *, source: str = "cli", **settings: Any) -> Route:
    """The ``--route`` flag: ``HOST[/PATH]=BACKEND[,BACKEND…]``.

    ``app.localhost=127.0.0.1:3000``, ``*.test/api=127.0.0.1:4000,127.0.0.1:4001``.
    ``settings`` are further :class:`Route` fields (``balance``, ``health`` …).
    """
    pattern, sep, backends = text.partition("=")
    if not sep or not pattern or not backends:
        raise ConfigError(
            f"route {text!r}: write HOST[/PATH]=BACKEND[,BACKEND...], e.g. app.localhost=127.0.0.1:3000"
        )
    host, slash, path = pattern.partition("/")
    return Route(
        host=parse_host_pattern(host),
        path=parse_path_prefix("/" + path) if slash else "/",
        backends=tuple(parse_backend(b) for b in backends.split(",") if b.strip()),
        source=source,
        **settings,
    )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ProxyConfig:
    """What the TOML file says: routes, extra allowed hosts, the listen address if given."""

    routes: tuple[Route, ...]
    allow_hosts: tuple[str, ...] = ()
    listen: str | None = None
    access_log: str | None = None  # "common", "json" or "off"


_HEALTH_KEYS = {"path", "interval", "timeout", "expect", "rise", "fall"}
_ROUTE_KEYS = {"host", "path", "backends", "balance", "preserve_host", "health"}
_PROXY_KEYS = {"listen", "allow_hosts", "access_log", "balance"}


def parse_config(text: str, *, source: str = "file") -> ProxyConfig:
    """Read the TOML route file (format in docs/proxy.md). Raises :class:`ConfigError`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}") from exc
    _only(data, {"proxy", "health", "route"}, "the top level")
    proxy = _table(data.get("proxy", {}), "[proxy]")
    _only(proxy, _PROXY_KEYS, "[proxy]")
    default_health = _health(data["health"], "[health]") if "health" in data else None
    default_balance = _balance(proxy.get("balance", Balance.ROUND_ROBIN.value), "[proxy]")
    raw_routes = data.get("route", [])
    if not isinstance(raw_routes, list):
        raise ConfigError("route: write each route as a [[route]] table")
    routes: dict[tuple[str, str], Route] = {}
    for index, raw in enumerate(raw_routes, 1):
        where = f"[[route]] #{index}"
        item = _table(raw, where)
        _only(item, _ROUTE_KEYS, where)
        backends = item.get("backends")
        if isinstance(backends, str):
            backends = [backends]
        if (
            not isinstance(backends, list)
            or not backends
            or not all(isinstance(b, str) for b in backends)
        ):
            raise ConfigError(f'{where}: backends = ["127.0.0.1:3000", ...] is required')
        health = default_health
        if "health" in item:
            health = _health(item["health"], f"{where}.health", base=default_health)
        preserve = item.get("preserve_host", True)
        if not isinstance(preserve, bool):
            raise ConfigError(f"{where}: preserve_host is true or false")
        route = Route(
            host=parse_host_pattern(_string(item.get("host", ANY_HOST), f"{where}: host")),
            path=parse_path_prefix(_string(item.get("path", "/"), f"{where}: path")),
            backends=tuple(parse_backend(b) for b in backends),
            balance=_balance(item.get("balance", default_balance.value), where),
            preserve_host=preserve,
            health=health,
            source=source,
        )
        if route.key in routes:
            raise ConfigError(f"{where}: a second route for {route.name!r}")
        routes[route.key] = route
    allow = proxy.get("allow_hosts", [])
    if not isinstance(allow, list) or not all(isinstance(h, str) for h in allow):
        raise ConfigError('[proxy]: allow_hosts = ["name.test", "*.test"]')
    access_log = proxy.get("access_log")
    if access_log is not None and access_log not in ("common", "json", "off"):
        raise ConfigError('[proxy]: access_log is "common", "json" or "off"')
    listen = proxy.get("listen")
    if listen is not None and not isinstance(listen, str):
        raise ConfigError('[proxy]: listen = "127.0.0.1:8080"')
    return ProxyConfig(
        routes=tuple(routes.values()),
        allow_hosts=tuple(parse_host_pattern(h) for h in allow),
        listen=listen,
        access_log=access_log,
    )


def _only(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(allowed))}"
        )


def _table(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table")
    return value


def _string(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a string")
    return value


def _balance(value: object, where: str) -> Balance:
    try:
        return Balance(str(value))
    except ValueError:
        raise ConfigError(f'{where}: balance is "round-robin" or "least-connections"') from None


def _number(value: object, where: str, *, minimum: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < minimum
    ):
        raise ConfigError(f"{where} must be a number >= {minimum}")
    return float(value)


def _count(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
        raise ConfigError(f"{where} must be a whole number from 1 to 100")
    return value


def parse_status_range(value: object, where: str = "expect") -> tuple[int, int]:
    """``200``, ``"200"``, ``"200-399"`` or ``"2xx"`` -> an inclusive range."""
    text = str(value).strip().lower() if not isinstance(value, bool) else ""
    low_text, dash, high_text = text.partition("-")
    try:
        if len(text) == 3 and text.endswith("xx") and text[0] in "12345":
            low, high = int(text[0]) * 100, int(text[0]) * 100 + 99
        else:
            low = int(low_text)
            high = int(high_text) if dash else low
    except ValueError:
        low = high = 0
    if not 100 <= low <= high <= 599:
        raise ConfigError(f'{where}: a status (200), a range ("200-399") or a class ("2xx")')
    return (low, high)


def _health(value: object, where: str, *, base: HealthCheckSpec | None = None) -> HealthCheckSpec:
    table = _table(value, where)
    _only(table, _HEALTH_KEYS, where)
    spec = base or HealthCheckSpec()
    changes: dict[str, Any] = {}
    if "path" in table:
        path = _string(table["path"], f"{where}: path")
        if not path.startswith("/"):
            raise ConfigError(f"{where}: path starts with /")
        changes["path"] = path
    if "interval" in table:
        changes["interval_s"] = _number(table["interval"], f"{where}: interval", minimum=0.05)
    if "timeout" in table:
        changes["timeout_s"] = _number(table["timeout"], f"{where}: timeout", minimum=0.01)
    if "expect" in table:
        changes["expect"] = parse_status_range(table["expect"], f"{where}: expect")
    if "rise" in table:
        changes["rise"] = _count(table["rise"], f"{where}: rise")
    if "fall" in table:
        changes["fall"] = _count(table["fall"], f"{where}: fall")
    return dataclasses.replace(spec, **changes)
