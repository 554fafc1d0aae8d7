"""Seeing what holds each port: the overview, ``ls`` and ``who``.

This layer joins the socket table, the processes and the owner recogniser, and derives
the hints (pure: :func:`hints_for`).
"""

from __future__ import annotations

import dataclasses

from portside.errors import UsageError
from portside.models import (
    Exposure,
    Hint,
    Overview,
    Owner,
    OwnerStatus,
    PortHolders,
    ProcessState,
    SocketEntry,
    SocketState,
    Transport,
    assemble,
    methods_compiled_on_first_use,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from portside.models import Identity, ProcessInfo
    from portside.ports import KernelPortSettings

# Imported where used, to keep `portside ls` and `portside who` quick to start:
# portside.identify (the owner recogniser, its tables), portside.addresses (ipaddress),
# portside.kernel and portside.ports (only hints need them).

#: Kinds of owner that should rarely be reachable from the network.
_SENSITIVE_KINDS = frozenset({"service", "node-inspector", "dev-server"})


_IDENTITY_CACHE: dict[tuple[int, float | None, int | None], Identity | None] = {}


def _base_identity(process: ProcessInfo) -> Identity | None:
    """What ``process`` is, whatever the port (cached: most programs are not recognised,
    and those are not looked at again for their other sockets)."""
    base_key = (process.pid, process.start_time, None)
    if base_key not in _IDENTITY_CACHE:
        from portside.identify import identify

        _IDENTITY_CACHE[base_key] = identify(process)
    return _IDENTITY_CACHE[base_key]


def _identity(owner: Owner, port: int) -> Identity | None:
    """``identify`` with a cache: a program not recognised at all is not looked at again
    for its other sockets (only a forwarder's target depends on the port)."""
    process = owner.process
    if _base_identity(process) is None:
        return None
    key = (process.pid, process.start_time, port)
    if key not in _IDENTITY_CACHE:
        from portside.identify import identify

        _IDENTITY_CACHE[key] = identify(process, local_port=port)
    return _IDENTITY_CACHE[key]


def _with_identity(entry: SocketEntry, *, with_ancestors: bool) -> SocketEntry:
    from portside.processes import ancestors

    if not entry.owners:
        return entry
    owners = []
    changed = False
    for owner in entry.owners:
        identity = owner.identity or _identity(owner, entry.local.port)
        lineage = ancestors(owner.process) if with_ancestors else owner.ancestors
        if identity is owner.identity and lineage is owner.ancestors:
            owners.append(owner)
            continue
        owners.append(Owner(process=owner.process, identity=identity, ancestors=lineage))
        changed = True
    if not changed:
        return entry
    if type(entry) is not SocketEntry:
        return dataclasses.replace(entry, owners=tuple(owners))
    fields = entry.__dict__.copy()  # dataclasses.replace, at a fraction of the cost
    fields["owners"] = tuple(owners)
    return assemble(SocketEntry, fields)


def _with_identities(entries: Iterable[SocketEntry]) -> list[SocketEntry]:
    """``entries`` with each owner's identity filled in (no ancestry): the listing's way.

    Sockets of the same processes share one tuple of owners; when none of them is a
    program we recognise, their entries stay as they are, found out once per tuple.
    """
    unrecognised: dict[int, bool] = {}  # id(owners) -> no owner needs an identity
    result: list[SocketEntry] = []
    for entry in entries:
        owners = entry.owners
        if owners:
            key = id(owners)  # alive while `entries` is: ids cannot be reused meanwhile
            plain = unrecognised.get(key)
            if plain is None:
                plain = unrecognised[key] = all(
                    owner.identity is not None or _base_identity(owner.process) is None
                    for owner in owners
                )
            if not plain:
                entry = _with_identity(entry, with_ancestors=False)
        result.append(entry)
    return result


def with_identities(entries: Iterable[SocketEntry]) -> list[SocketEntry]:
    """``entries`` with each owner's identity and process ancestry filled in."""
    return [_with_identity(e, with_ancestors=True) for e in entries]


def _owner_label(owner: Owner) -> str:
    return f"{owner.process.name}[{owner.process.pid}]"


def hints_for(
    entries: Sequence[SocketEntry], kernel: KernelPortSettings, *, is_root: bool
) -> list[Hint]:
    """One-line observations about anything odd among ``entries`` (pure)."""
    hints: list[Hint] = []
    listening = [e for e in entries if e.state is SocketState.LISTEN]
    for entry in listening:
        where = (
            f"{entry.local.ip}:{entry.local.port}"
            if entry.family == "ipv4"
            else f"[{entry.local.ip}]:{entry.local.port}"
        )
        for owner in entry.owners:
            if owner.process.state is ProcessState.STOPPED:
                hints.append(
                    Hint(
                        code="owner-stopped",
                        message=f"{where} is held by {_owner_label(owner)}, which is stopped: connections hang",
                        fix=f"kill -CONT {owner.process.pid}",
                    )
                )
            elif owner.process.state is ProcessState.ZOMBIE:
                hints.append(
                    Hint(
                        code="owner-zombie",
                        message=f"{where} is held by a zombie {_owner_label(owner)}",
                        fix=None,
                    )
                )
        if (
            entry.transport is Transport.TCP
            and entry.recv_queue is not None
            and entry.send_queue
            and entry.recv_queue > entry.send_queue
        ):
            hints.append(
                Hint(
                    code="accept-queue-full",
                    message=f"{where}: accept queue full ({entry.recv_queue} waiting, backlog {entry.send_queue}); the server is not accepting",
                    fix="check that the server's accept loop runs; raise its backlog",
                )
            )
        rng = kernel.ephemeral_range
        if (
            rng
            and rng[0] <= entry.local.port <= rng[1]
            and entry.local.port not in kernel.reserved_ports
        ):
            owner_names = {o.process.name for o in entry.owners}
            if not owner_names & {"ssh", "sshd"}:
                hints.append(
                    Hint(
                        code="ephemeral-port-listener",
                        message=f"{where} listens inside the ephemeral range {rng[0]}-{rng[1]}: after a restart an outgoing connection may have taken it",
                        fix="choose a port outside it (`portside pick`) or add it to net.ipv4.ip_local_reserved_ports",
                    )
                )
        if entry.exposure is Exposure.ALL and (entry.netns is None or entry.netns.is_current):
            for owner in entry.owners:
                identity = owner.identity
                if identity is not None and identity.kind in _SENSITIVE_KINDS:
                    hints.append(
                        Hint(
                            code="exposed-service",
                            message=f"{where}: {identity.label} listens on all interfaces",
                            fix="bind it to 127.0.0.1 unless the network must reach it (`portside audit` checks the firewall)",
                        )
                    )
    v4_ports = {
        e.local.port for e in listening if e.family == "ipv4" and e.exposure is Exposure.LOOPBACK
    }
    for entry in listening:
        if (
            entry.family == "ipv6"
            and entry.exposure is Exposure.LOOPBACK
            and entry.local.port not in v4_ports
            and entry.transport is Transport.TCP
        ):
            hints.append(
                Hint(
                    code="ipv6-loopback-only",
                    message=f"[::1]:{entry.local.port} listens on IPv6 only: clients that resolve localhost to 127.0.0.1 are refused",
                    fix="listen on both (or on localhost with dual-stack), or connect to [::1] explicitly",
                )
            )
    if not is_root and any(e.owner_status is OwnerStatus.NOT_VISIBLE for e in entries):
        hints.append(
            Hint(
                code="owners-not-visible",
                message="some owners are not visible to this user",
                fix="run with sudo to see every process",
            )
        )
    return list(dict.fromkeys(hints))


def _is_root() -> bool:
    import os

    return hasattr(os, "geteuid") and os.geteuid() == 0


def _kernel() -> KernelPortSettings:
    # The port tables' records too are defined with their methods compiled on first use
    # (when nothing imported them before): `portside who` needs only these settings.
    with methods_compiled_on_first_use():
        from portside.kernel import port_settings

    return port_settings()


def overview(*, namespaces: bool = True, backend_name: str | None = None) -> Overview:
    """Listeners grouped by exposure, with their owners, what they are, and hints."""
    from portside.sockets import listeners, select_backend

    entries = _with_identities(
        listeners(namespaces=namespaces, backend=select_backend(backend_name))
    )
    groups: dict[Exposure, list[SocketEntry]] = {exposure: [] for exposure in Exposure}
    for entry in entries:
        groups[entry.exposure].append(entry)
    return Overview(
        loopback=tuple(groups[Exposure.LOOPBACK]),
        specific=tuple(groups[Exposure.SPECIFIC]),
        all_interfaces=tuple(groups[Exposure.ALL]),
        hints=tuple(hints_for(entries, _kernel(), is_root=_is_root())),
    )


with methods_compiled_on_first_use():

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class SocketFilter:
        """Filters of ``portside ls``; None means "any"."""

        port: int | None = None
        pid: int | None = None
        user: str | None = None
        transport: Transport | None = None
        exposed: bool = False  # only sockets reachable beyond loopback
        connections: bool = False  # include non-listening sockets

        def selects_all(self) -> bool:
            """Whether every socket matches (no filter but ``connections`` is set)."""
            return (
                self.port is None
                and self.pid is None
                and self.user is None
                and self.transport is None
                and not self.exposed
            )

        def matches(self, entry: SocketEntry) -> bool:
            if self.port is not None and entry.local.port != self.port:
                return False
            if self.transport is not None and entry.transport is not self.transport:
                return False
            if self.exposed and entry.exposure is Exposure.LOOPBACK:
                return False
            if self.pid is not None and all(o.process.pid != self.pid for o in entry.owners):
                return False
            if self.user is not None:
                wanted = self.user
                users = {o.process.user for o in entry.owners}
                uid_text = None if entry.uid is None else str(entry.uid)
                if wanted not in users and wanted != uid_text:
                    from portside.processes import user_name

                    if entry.uid is None or user_name(entry.uid) != wanted:
                        return False
            return True


def list_sockets(
    selection: SocketFilter, *, namespaces: bool = True, backend_name: str | None = None
) -> list[SocketEntry]:
    """Listening sockets (and with ``connections`` every socket) matching ``selection``."""
    from portside.sockets import SocketQuery, _listeners, select_backend, socket_table

    backend = select_backend(backend_name)
    transports = (
        frozenset({selection.transport})
        if selection.transport
        else frozenset({Transport.TCP, Transport.UDP})
    )
    if selection.connections:
        found: Iterable[SocketEntry] = socket_table(
            SocketQuery(transports=transports, port=selection.port),
            namespaces=namespaces,
            backend=backend,
        )
    else:
        # Unsorted: the sort below orders them the same way listeners() would have first
        # (its key is a prefix of this one, and both sorts are stable).
        found = _listeners(transports=transports, namespaces=namespaces, backend=backend)
    if selection.selects_all():
        matching = list(found)
    else:
        matching = [e for e in found if selection.matches(e)]
    matching.sort(key=lambda e: (e.local.port, e.transport, e.local.ip, e.state))
    return _with_identities(matching)


def _covers(bound_ip: str, wanted_ip: str) -> bool:
    """Whether a socket bound to ``bound_ip`` receives traffic for ``wanted_ip``."""
    from portside.addresses import exposure_of, unmap

    if bound_ip == wanted_ip or unmap(bound_ip) == unmap(wanted_ip):
        return True
    if exposure_of(bound_ip) is Exposure.ALL:
        wanted_v6 = ":" in unmap(wanted_ip)
        return bound_ip == "::" or not wanted_v6
    return False


def who(text: str, *, namespaces: bool = True, backend_name: str | None = None) -> PortHolders:
    """Everything on one port: every socket using it as local port, with owner trees."""
    from portside.addresses import parse_target
    from portside.sockets import port_sockets, select_backend

    target = parse_target(text)
    if target.port is None:
        raise UsageError(
            f"{text!r}: give a port, e.g. `portside who 3000` or `portside who 127.0.0.1:3000`"
        )
    found = port_sockets(target.port, namespaces=namespaces, backend=select_backend(backend_name))
    if target.ip is not None:
        found = [e for e in found if _covers(e.local.ip, target.ip)]
    order = {SocketState.LISTEN: 0, SocketState.UNCONNECTED: 1, SocketState.BOUND: 2}
    found.sort(key=lambda e: (order.get(e.state, 3), e.transport, e.family, e.local.ip))
    entries = tuple(with_identities(found))
    return PortHolders(
        port=target.port,
        ip=target.ip,
        sockets=entries,
        hints=tuple(hints_for(entries, _kernel(), is_root=_is_root())),
    )
