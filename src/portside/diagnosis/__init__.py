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
from portside.models import Diagnosis, SocketEntry, SocketState, Transport

__all__ = ["doctor"]

#: Per-connect budget: loopback answers in microseconds; a drop shows as silence.
CONNECT_BUDGET_S = 1.5
DEFAULT_TIMEOUT_S = 5.0


def _sockets(port: int, *, namespaces: bool, backend_name: str | None) -> tuple[SocketEntry, ...]:
    from portside.inspect import with_identities
    from portside.sockets import port_sockets, select_backend

    return tuple(
        with_identities(
            port_sockets(port, namespaces=namespaces, backend=select_backend(backend_name))
        )
    )


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
        resolution = gather.resolve("localhost", None)
    elif target.host_kind is HostKind.NAME and target.host:
        resolution = gather.resolve(target.host, target.port)
    loopback = gather.loopback(with_route=target is None)
    sockets: tuple[SocketEntry, ...] = ()
    attempts: list[Attempt] = []
    if target is not None and target.port is not None:
        sockets = _sockets(target.port, namespaces=namespaces, backend_name=backend_name)
        addresses = gather.addresses_to_try(target, resolution)
        for ip in addresses:
            remaining = deadline - time.monotonic()
            budget = max(
                0.05, min(CONNECT_BUDGET_S, remaining / max(1, len(addresses) - len(attempts)))
            )
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
        firewall = gather.firewall(target.port)
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
    return diagnose(facts)
