"""Choosing a free port: a pure policy (which numbers may be handed out, and in which
order) and a small shell that proves a candidate can be bound on both loopbacks.

The policy (:func:`make_policy`, :func:`rule_out`, :func:`walk`, :func:`hashed_start`)
does no I/O: the kernel's settings and the registry's ports are passed in. Only
:func:`bind_check` and :func:`explain_pick` / :func:`pick_port` touch sockets.

A port is handed out when it is, in this order:

1. inside the requested range (default 10000-65535: the crowded low registered ports
   hold too many services);
2. not privileged (below ``ip_unprivileged_port_start``);
3. outside this kernel's ephemeral range (where outgoing connections take their local
   port, so a server can lose its port after a restart). Where the OS does not say
   (macOS, Windows) the IANA dynamic range 49152-65535 is assumed, which they use;
4. not in ``ip_local_reserved_ports``;
5. not a browser "bad port" (ERR_UNSAFE_PORT) and not a well-known development default;
6. not reserved or leased in the registry;
7. bindable right now on 127.0.0.1 *and* [::1] (when the machine has IPv6 loopback),
   without SO_REUSEADDR, so a socket in TIME_WAIT counts as "in use".
"""

from __future__ import annotations

# _socket, not socket: socket.py builds four enums and imports selectors (~15 ms of
# pick's start-up) for nothing this module uses.
import _socket
import enum
import errno
import os
import sys
from collections.abc import Iterable, Iterator

from portside._lean_dataclasses import dataclasses, methods_compiled_on_first_use
from portside.errors import PortsideError, UsageError
from portside.ports import BROWSER_BAD_PORTS, DEV_DEFAULTS, KernelPortSettings

TYPE_CHECKING = False
if TYPE_CHECKING:
    import random

    from portside.registry import Registry

__all__ = [
    "ASSUMED_EPHEMERAL_RANGE",
    "DEFAULT_RANGE",
    "BindResult",
    "NoFreePortError",
    "PickExplanation",
    "PickPolicy",
    "Rejected",
    "Rejection",
    "bind_check",
    "explain_pick",
    "hashed_start",
    "make_policy",
    "parse_range",
    "pick_port",
    "registry_file",
    "rule_out",
    "walk",
]

#: Overrides the directory of portside's state (the registry file).
HOME_ENV = "PORTSIDE_HOME"
REGISTRY_FILE_NAME = "registry.sqlite3"
#: The registry file's ``PRAGMA application_id`` ("PSRG") and the schema version this
#: portside writes (``PRAGMA user_version``; :data:`portside.registry.MIGRATIONS`).
REGISTRY_APPLICATION_ID = 0x50535247
REGISTRY_SCHEMA_VERSION = 2
DEFAULT_RANGE: tuple[int, int] = (10000, 65535)
#: The IANA dynamic range: the ephemeral range of macOS and Windows, assumed when the OS
#: does not report its own.
ASSUMED_EPHEMERAL_RANGE: tuple[int, int] = (49152, 65535)
#: How many candidates to try before giving up (each costs two bind() calls).
MAX_ATTEMPTS = 4096


class NoFreePortError(PortsideError):
    """Every candidate in the range was ruled out or in use."""


class Rejection(enum.StrEnum):
    """Why a port number was not handed out."""

    OUT_OF_RANGE = "out-of-range"
    PRIVILEGED = "privileged"
    EPHEMERAL = "ephemeral"
    KERNEL_RESERVED = "kernel-reserved"
    BROWSER_BAD_PORT = "browser-bad-port"
    DEV_DEFAULT = "dev-default"
    REGISTRY = "registry"
    IN_USE_IPV4 = "in-use-ipv4"
    IN_USE_IPV6 = "in-use-ipv6"
    NOT_BINDABLE = "not-bindable"  # bind() failed for another reason (EACCES, …)


with methods_compiled_on_first_use():

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class PickPolicy:
        """Which numbers may be handed out. ``ephemeral_assumed``: the OS did not say."""

        port_range: tuple[int, int]
        ephemeral_range: tuple[int, int]
        ephemeral_assumed: bool
        kernel_reserved: frozenset[int]
        unprivileged_port_start: int
        registry_ports: frozenset[int] = frozenset()

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class Rejected:
        """A candidate that was looked at and passed over, and why."""

        port: int
        reason: Rejection
        detail: str | None = None

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class PickExplanation:
        """The answer of ``portside pick --why``: the ports, the rules, and what was skipped.

        ``tried`` lists only candidates that were actually visited; whole blocks skipped by
        arithmetic (the ephemeral range) are described in ``rules``.
        """

        ports: tuple[int, ...]
        transport: str  # "tcp" or "udp" (models.Transport values; models is not imported here)
        port_range: tuple[int, int]
        ephemeral_range: tuple[int, int]
        ephemeral_source: str  # "kernel" or "assumed"
        ipv6_checked: bool
        rules: tuple[str, ...]
        tried: tuple[Rejected, ...]


def parse_range(text: str) -> tuple[int, int]:
    """``"20000-20999"`` -> (20000, 20999); UsageError with the fix otherwise."""
    low_text, sep, high_text = text.strip().partition("-")
    if not sep or not low_text.strip().isdigit() or not high_text.strip().isdigit():
        raise UsageError(f"range {text!r}: write LOW-HIGH, e.g. --range 20000-20999")
    low, high = int(low_text), int(high_text)
    if not 1 <= low <= high <= 65535:
        raise UsageError(f"range {text!r}: need 1 <= LOW <= HIGH <= 65535")
    return low, high


def make_policy(
    kernel: KernelPortSettings,
    *,
    port_range: tuple[int, int] | None = None,
    registry_ports: Iterable[int] = (),
) -> PickPolicy:
    """The policy for this machine (pure: ``kernel`` comes from ``kernel.port_settings()``)."""
    low, high = port_range or DEFAULT_RANGE
    if not 1 <= low <= high <= 65535:
        raise UsageError(f"range {low}-{high}: need 1 <= LOW <= HIGH <= 65535")
    ephemeral = kernel.ephemeral_range
    return PickPolicy(
        port_range=(low, high),
        ephemeral_range=ephemeral or ASSUMED_EPHEMERAL_RANGE,
        ephemeral_assumed=ephemeral is None,
        kernel_reserved=kernel.reserved_ports,
        unprivileged_port_start=(
            1024 if kernel.unprivileged_port_start is None else kernel.unprivileged_port_start
        ),
        registry_ports=frozenset(registry_ports),
    )


def rule_out(port: int, policy: PickPolicy) -> Rejection | None:
    """Why ``port`` may not be handed out under ``policy``, or None when it may (pure)."""
    low, high = policy.port_range
    if not low <= port <= high:
        return Rejection.OUT_OF_RANGE
    if 0 < port < policy.unprivileged_port_start:
        return Rejection.PRIVILEGED
    eph_low, eph_high = policy.ephemeral_range
    if eph_low <= port <= eph_high:
        return Rejection.EPHEMERAL
    if port in policy.kernel_reserved:
        return Rejection.KERNEL_RESERVED
    if port in BROWSER_BAD_PORTS:
        return Rejection.BROWSER_BAD_PORT
    if port in DEV_DEFAULTS:
        return Rejection.DEV_DEFAULT
    if port in policy.registry_ports:
        return Rejection.REGISTRY
    return None


def _blocks(policy: PickPolicy) -> list[tuple[int, int]]:
    """The requested range minus the privileged ports and the ephemeral range, as
    inclusive intervals in ascending order (at most two)."""
    low, high = policy.port_range
    low = max(low, policy.unprivileged_port_start)
    eph_low, eph_high = policy.ephemeral_range
    blocks = [(low, min(high, eph_low - 1)), (max(low, eph_high + 1), high)]
    return [(a, b) for a, b in blocks if a <= b]


def allowed_span(policy: PickPolicy) -> int:
    """How many numbers lie in the range outside the privileged and ephemeral blocks."""
    return sum(b - a + 1 for a, b in _blocks(policy))


def hashed_start(key: str, policy: PickPolicy) -> int:
    """A stable starting port for ``key``: the same key gives the same port on every run
    and machine with the same policy, spread evenly over the usable blocks (pure).

    Raises:
        NoFreePortError: the range holds no usable number at all.
    """
    import hashlib

    digest = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    return _nth_usable(digest, policy)


def _nth_usable(index: int, policy: PickPolicy) -> int:
    span = allowed_span(policy)
    if span == 0:
        low, high = policy.port_range
        raise NoFreePortError(
            f"range {low}-{high} lies wholly in the privileged or ephemeral ports; choose another --range"
        )
    offset = index % span
    for a, b in _blocks(policy):
        if offset <= b - a:
            return a + offset
        offset -= b - a + 1
    raise AssertionError("unreachable: offset < span")  # pragma: no cover


def walk(policy: PickPolicy, start: int) -> Iterator[int]:
    """Every usable-block number once, from ``start`` upwards, wrapping round (pure).
    The ephemeral and privileged blocks are jumped over, not visited."""
    blocks = _blocks(policy)
    for a, b in blocks:
        if b >= start:
            yield from range(max(a, start), b + 1)
    for a, b in blocks:
        if a < start:
            yield from range(a, min(b, start - 1) + 1)


# --------------------------------------------------------------------------- the shell


with methods_compiled_on_first_use():

    @dataclasses.dataclass(slots=True)
    class BindResult:
        """What binding one port on both loopbacks showed. ``sockets`` stay open (and keep
        the port) until :meth:`close`."""

        port: int
        rejection: Rejected | None
        sockets: list[_socket.socket]

        def close(self) -> None:
            for sock in self.sockets:
                sock.close()
            self.sockets.clear()


_LOOPBACKS: tuple[tuple[int, str], ...] = (
    (_socket.AF_INET, "127.0.0.1"),
    (_socket.AF_INET6, "::1"),
)


def ipv6_loopback_available() -> bool:
    """Whether [::1] can be bound here (no IPv6, or ``lo`` without ::1, says no)."""
    if not _socket.has_ipv6:
        return False
    try:
        probe = _socket.socket(_socket.AF_INET6, _socket.SOCK_STREAM)
    except OSError:
        return False
    try:
        probe.bind(("::1", 0))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def bind_check(port: int, *, udp: bool = False, ipv6: bool = True) -> BindResult:
    """Bind ``port`` on 127.0.0.1 and (with ``ipv6``) on [::1], v6only, without
    SO_REUSEADDR; the sockets are kept open in the result on success.

    Resource handling: on failure every socket is closed before returning; on success
    the caller closes them (:meth:`BindResult.close`).
    """
    kind = _socket.SOCK_DGRAM if udp else _socket.SOCK_STREAM
    held: list[_socket.socket] = []
    for family, host in _LOOPBACKS if ipv6 else _LOOPBACKS[:1]:
        sock = _socket.socket(family, kind)
        try:
            if family == _socket.AF_INET6:
                sock.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            for other in held:
                other.close()
            if exc.errno == errno.EADDRINUSE:
                reason = (
                    Rejection.IN_USE_IPV6 if family == _socket.AF_INET6 else Rejection.IN_USE_IPV4
                )
                return BindResult(
                    port=port,
                    rejection=Rejected(port=port, reason=reason, detail=f"{host} is in use"),
                    sockets=[],
                )
            detail = f"bind {host}: {exc.strerror or exc}"
            return BindResult(
                port=port,
                rejection=Rejected(port=port, reason=Rejection.NOT_BINDABLE, detail=detail),
                sockets=[],
            )
        held.append(sock)
    return BindResult(port=port, rejection=None, sockets=held)


def _rules_text(policy: PickPolicy, transport: str, ipv6: bool) -> tuple[str, ...]:
    low, high = policy.port_range
    eph_low, eph_high = policy.ephemeral_range
    source = (
        "assumed: the OS does not report one, IANA dynamic range"
        if policy.ephemeral_assumed
        else "net.ipv4.ip_local_port_range"
    )
    families = "127.0.0.1 and [::1]" if ipv6 else "127.0.0.1 (no IPv6 loopback here)"
    rules = [
        f"range {low}-{high}",
        f"not privileged (below {policy.unprivileged_port_start})",
        f"outside the ephemeral range {eph_low}-{eph_high} ({source}): outgoing connections take ports there",
    ]
    if policy.kernel_reserved:
        rules.append(
            f"not in net.ipv4.ip_local_reserved_ports ({len(policy.kernel_reserved)} ports)"
        )
    rules.append(f"not a browser bad port ({len(BROWSER_BAD_PORTS)} ports, ERR_UNSAFE_PORT)")
    rules.append(f"not a common development default ({len(DEV_DEFAULTS)} ports, e.g. 3000, 8080)")
    rules.append(f"not reserved or leased in the registry ({len(policy.registry_ports)} ports)")
    rules.append(f"bindable now over {transport} on {families}, without SO_REUSEADDR")
    return tuple(rules)


def registry_file() -> str:
    """Where the registry lives: ``$PORTSIDE_HOME/registry.sqlite3``, else the user's
    state directory as platformdirs names it (``$XDG_STATE_HOME/portside`` or
    ``~/.local/state/portside`` on Linux, computed without importing platformdirs).

    It is defined here, not in :mod:`portside.registry`, so that ``pick`` can see that
    there is no registry without importing SQLite, pathlib and platformdirs (~30 ms).
    """
    home = os.environ.get(HOME_ENV)
    if home:
        return os.path.join(os.path.expanduser(home), REGISTRY_FILE_NAME)  # noqa: PTH111, PTH118
    if sys.platform == "linux":
        # platformdirs' Unix.user_state_dir rule (a test checks that they agree).
        base = os.environ.get("XDG_STATE_HOME", "").strip()
        base = base or os.path.expanduser("~/.local/state")  # noqa: PTH111
        return os.path.join(base, "portside", REGISTRY_FILE_NAME)  # noqa: PTH118
    else:
        import platformdirs

        state = platformdirs.user_state_dir("portside", appauthor=False)
        return os.path.join(state, REGISTRY_FILE_NAME)  # noqa: PTH118


def _registry_ports(registry: Registry | None) -> frozenset[int]:
    if registry is not None:
        return registry.taken_ports()
    path = registry_file()
    try:
        if os.path.getsize(path) == 0:  # noqa: PTH202 -- see registry_file
            return frozenset()
    except OSError:
        return frozenset()  # no registry yet: picking never creates one
    peeked = _peek_registry_ports(path)
    if peeked is not None:
        return peeked
    from portside.registry import default_registry_ports

    return default_registry_ports()


def _peek_registry_ports(path: str) -> frozenset[int] | None:
    """What :meth:`Registry.taken_ports` says of the registry at ``path``, read with
    SQLite's C module alone (``sqlite3``'s Python half imports datetime, and the registry
    module is the rest of the cost of a ``pick`` with a registry). None whenever the file
    is not exactly the current schema of ours, or anything fails: then the registry is
    opened properly (which migrates, or says what is wrong)."""
    try:
        import _sqlite3
    except ImportError:
        return None
    uri = path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")
    try:
        # mode=rw: never creates the file (it may have gone since it was seen).
        db = _sqlite3.connect(f"file:{uri}?mode=rw", uri=True, timeout=30.0)
    except _sqlite3.Error:
        return None
    try:
        db.isolation_level = None
        db.execute("BEGIN")  # one snapshot for the reads below
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if (app_id, version) != (REGISTRY_APPLICATION_ID, REGISTRY_SCHEMA_VERSION):
            return None
        reserved = {int(row[0]) for row in db.execute("SELECT port FROM reservations")}
        leases = db.execute("SELECT port, pid, start_token FROM leases").fetchall()
        db.execute("COMMIT")
    except _sqlite3.Error:
        return None
    finally:
        db.close()
    if leases:
        from portside.registry import process_start_token

        reserved.update(
            int(port) for port, pid, token in leases if process_start_token(int(pid)) == token
        )
    return frozenset(reserved)


def explain_pick(
    *,
    count: int = 1,
    port_range: tuple[int, int] | None = None,
    udp: bool = False,
    registry: Registry | None = None,
    kernel: KernelPortSettings | None = None,
    rng: random.Random | None = None,
) -> PickExplanation:
    """Pick ``count`` distinct free ports and say why these (see the module docstring).

    ``registry``: whose reserved and leased ports to avoid; None reads the default
    registry if it exists (it is never created by picking). ``kernel``: this machine's
    settings unless given. ``rng``: where the random starting point comes from.

    Raises:
        UsageError: ``count`` < 1 or a bad range.
        NoFreePortError: fewer than ``count`` ports passed every rule.
    """
    if count < 1:
        raise UsageError(f"--count {count}: ask for at least one port")
    if kernel is None:
        from portside.kernel import port_settings

        kernel = port_settings()
    policy = make_policy(kernel, port_range=port_range, registry_ports=_registry_ports(registry))
    transport = "udp" if udp else "tcp"
    ipv6 = ipv6_loopback_available()
    span = allowed_span(policy)
    if span == 0:
        _nth_usable(0, policy)  # raises the explanatory NoFreePortError
    # A random start (os.urandom: no need to import random on this path), then upwards.
    index = int.from_bytes(os.urandom(8), "big") if rng is None else rng.randrange(span)
    start = _nth_usable(index, policy)
    chosen: list[BindResult] = []
    tried: list[Rejected] = []
    try:
        for attempts, port in enumerate(walk(policy, start)):
            if len(chosen) == count or attempts >= MAX_ATTEMPTS:
                break
            reason = rule_out(port, policy)
            if reason is not None:
                tried.append(Rejected(port=port, reason=reason))
                continue
            result = bind_check(port, udp=udp, ipv6=ipv6)
            if result.rejection is not None:
                tried.append(result.rejection)
                continue
            chosen.append(result)
    finally:
        for result in chosen:
            result.close()
    if len(chosen) < count:
        low, high = policy.port_range
        raise NoFreePortError(
            f"found {len(chosen)} of {count} free ports in {low}-{high} after {len(tried)} candidates;"
            " widen --range or free some ports"
        )
    return PickExplanation(
        ports=tuple(result.port for result in chosen),
        transport=transport,
        port_range=policy.port_range,
        ephemeral_range=policy.ephemeral_range,
        ephemeral_source="assumed" if policy.ephemeral_assumed else "kernel",
        ipv6_checked=ipv6,
        rules=_rules_text(policy, transport, ipv6),
        tried=tuple(tried),
    )


def pick_port(
    *,
    count: int = 1,
    port_range: tuple[int, int] | None = None,
    udp: bool = False,
    registry: Registry | None = None,
) -> list[int]:
    """``count`` distinct ports that are free now and safe to serve on (see the module
    docstring for the rules). The ports are released before returning, so bind them
    soon: the check proves they were free, not that they stay free.

    Raises:
        UsageError: ``count`` < 1 or a bad range.
        NoFreePortError: not enough ports passed every rule.
    """
    explanation = explain_pick(count=count, port_range=port_range, udp=udp, registry=registry)
    return list(explanation.ports)
