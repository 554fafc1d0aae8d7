"""``portside doctor``: why an address does not answer, and how to fix it.

:func:`doctor` gathers facts (the shell in ``gather``) and hands them to the pure rules
(``rules.diagnose``). Codes follow the failure-mode catalogue, FM-01 … FM-36.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping

from portside.addresses import HostKind, parse_target
from portside.diagnosis.facts import AfterConnect, Attempt, Facts, FirewallFacts, Outcome
from portside.diagnosis.rules import covers, diagnose
from portside.errors import UsageError
from portside.models import Diagnosis, Exposure, SocketEntry, SocketState, Transport

__all__ = ["doctor"]

#: Per-connect budget: loopback answers in microseconds; a drop shows as silence.
CONNECT_BUDGET_S = 1.5
DEFAULT_TIMEOUT_S = 5.0
FIREWALL_RESERVE_S = 0.25


def _identified(entry: SocketEntry) -> SocketEntry:
    """``entry`` with what each owner is (a forwarder, and to where); no ancestry, which
    the rules never read."""
    if not entry.owners or all(o.identity is not None for o in entry.owners):
        return entry
    from portside.identify import identify

    owners = tuple(
        o
        if o.identity is not None
        else dataclasses.replace(o, identity=identify(o.process, local_port=entry.local.port))
        for o in entry.owners
    )
    return dataclasses.replace(entry, owners=owners)


def _sockets(
    port: int, *, namespaces: bool, backend_name: str | None
) -> tuple[tuple[SocketEntry, ...], bool]:
    """Every socket on ``port``, and whether their owners are still to be looked up.

    Other network namespaces are read only when no TCP socket listens here, the one case
    where the rules read them (FM-29): entering every namespace costs more than the rest
    of a healthy run. Owners (a walk of every process's fd table, the dearest part of
    a run) are left for later when nothing suggests they matter before the probe, that
    is when no server that must not receive HTTP (Redis, PostgreSQL) runs at all.
    """
    from portside.diagnosis import gather
    from portside.sockets import port_sockets, select_backend

    backend = select_backend(backend_name)
    # A first look without owners: a netlink dump filtered by the kernel, about 1 ms.
    here = port_sockets(port, owners=False, namespaces=False, backend=backend)
    listening = any(e.transport is Transport.TCP and e.state is SocketState.LISTEN for e in here)
    if namespaces and not listening:
        found = port_sockets(port, namespaces=True, backend=backend)
    elif not here:
        return (), False
    elif gather.sensitive_servers_running():
        found = port_sockets(port, namespaces=False, backend=backend)
    else:
        return tuple(here), True
    return tuple(_identified(entry) for entry in found), False


def _owners_matter(diagnosis: Diagnosis, facts: Facts) -> bool:
    """Whether the owners could change or complete what ``diagnosis`` says: always but
    for a plain healthy answer from one loopback-bound listener."""
    if diagnosis.verdict.code != "OK":
        return True
    if any(a.after is not AfterConnect.ANSWERED for a in facts.attempts):
        return True  # silence: an inherited socket (FM-20) or a forwarder's hint
    listeners = [
        s for s in facts.sockets if s.transport is Transport.TCP and s.state is SocketState.LISTEN
    ]
    # Several listeners (FM-06, FM-12) or a wildcard one (FM-36) are described by owner.
    return len(listeners) != 1 or listeners[0].exposure is not Exposure.LOOPBACK


def _needs_firewall(
    attempts: tuple[Attempt, ...], sockets: tuple[SocketEntry, ...], bindv6only: bool | None
) -> bool:
    listeners = [
        s
        for s in sockets
        if s.transport is Transport.TCP
        and s.state is SocketState.LISTEN
        and (s.netns is None or s.netns.is_current)
    ]
    for attempt in attempts:
        if attempt.outcome in (Outcome.HOST_UNREACHABLE, Outcome.PERMISSION):
            return True
        if attempt.outcome in (Outcome.REFUSED, Outcome.TIMEOUT) and any(
            covers(s, attempt.ip, bindv6only=bindv6only) for s in listeners
        ):
            return True
        if attempt.outcome is Outcome.TIMEOUT:
            return True
    return False


def doctor(
    text: str | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    namespaces: bool = True,
    backend_name: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Diagnosis:
    """Diagnose ``text`` (any endpoint the parser accepts), or the machine when None."""
    from portside.diagnosis import gather
    from portside.kernel import port_settings

    if timeout <= 0:
        raise UsageError(f"--timeout must be positive, got {timeout}")
    deadline = time.monotonic() + timeout
    target = None if text is None else parse_target(text)
    if target is not None and target.port is None:
        raise UsageError(
            f"{text!r}: doctor needs a port, e.g. `portside doctor {target.display()}:8080`"
        )
    resolution = None
    if target is None:
        resolution = gather.resolve("localhost", None, timeout)
    elif target.host_kind is HostKind.NAME and target.host:
        resolution = gather.resolve(target.host, target.port, timeout / 2)
    loopback = gather.loopback(with_route=target is None)
    sockets: tuple[SocketEntry, ...] = ()
    owners_pending = False
    attempts: list[Attempt] = []
    if target is not None and target.port is not None:
        sockets, owners_pending = _sockets(
            target.port, namespaces=namespaces, backend_name=backend_name
        )
        addresses = gather.addresses_to_try(target, resolution)
        for ip in addresses:
            remaining = deadline - time.monotonic()
            # Keep some of the deadline for reading the firewall, which a silence calls for.
            left = max(1, len(addresses) - len(attempts))
            budget = max(0.05, min(CONNECT_BUDGET_S, (remaining - FIREWALL_RESERVE_S) / left))
            owners = [
                o.process.name
                for s in sockets
                if s.state is SocketState.LISTEN and covers(s, ip)
                for o in s.owners
            ]
            result = gather.attempt(target, ip, budget, owner_names=owners)
            if result.after is AfterConnect.CLOSED and target.scheme in ("http", "ws"):
                # A TLS server resets a plain request: ask it for a handshake to be sure.
                tls_target = dataclasses.replace(target, scheme="https")
                second = gather.attempt(
                    tls_target, ip, max(0.05, min(CONNECT_BUDGET_S, deadline - time.monotonic()))
                )
                if second.protocol == "tls":
                    result = dataclasses.replace(result, protocol="tls", detail=second.detail)
            attempts.append(result)
        if loopback.lo_up is not None and any(
            a.outcome is Outcome.NET_UNREACHABLE for a in attempts
        ):
            loopback = dataclasses.replace(loopback, local_route=gather.local_route())
    firewall = FirewallFacts(looked=False)
    if (
        target is not None
        and target.port is not None
        and _needs_firewall(tuple(attempts), sockets, loopback.bindv6only)
    ):
        firewall = gather.firewall(target.port, max(0.1, deadline - time.monotonic()))
    facts = Facts(
        target=target,
        resolution=resolution,
        loopback=loopback,
        sockets=sockets,
        attempts=tuple(attempts),
        firewall=firewall,
        proxy_env=gather.proxy_environment(environ),
        kernel=port_settings(),
        is_wsl=gather.is_wsl(),
    )
    diagnosis = diagnose(facts)
    if (
        owners_pending
        and target is not None
        and target.port is not None
        and _owners_matter(diagnosis, facts)
    ):
        from portside.sockets import port_sockets, select_backend

        found = port_sockets(target.port, namespaces=False, backend=select_backend(backend_name))
        facts = dataclasses.replace(facts, sockets=tuple(_identified(e) for e in found))
        diagnosis = diagnose(facts)
    return diagnosis
