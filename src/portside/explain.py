"""``portside explain``: what a port number and an address are, on this machine."""

from __future__ import annotations

import dataclasses
import ipaddress

from portside.addresses import AddressFacts, HostKind, Target, classify_address, parse_target
from portside.ports import PortFacts, port_facts


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AddressExplanation:
    """An address and where it lives: the interfaces that carry it, or whose network holds it."""

    facts: AddressFacts
    carried_by: tuple[str, ...]  # interfaces with exactly this address (all, for a wildcard)
    on_link: tuple[str, ...]  # interfaces whose network contains it
    notes: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NameExplanation:
    name: str
    resolves_to: tuple[str, ...]
    notes: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Explanation:
    target: Target
    port: PortFacts | None
    address: AddressExplanation | None
    name: NameExplanation | None


def _explain_address(ip: str) -> AddressExplanation:
    from portside.kernel import interface_addresses

    facts = classify_address(ip)
    address = ipaddress.ip_address(facts.mapped_ipv4 or facts.ip)
    local = interface_addresses()
    carried: list[str] = []
    on_link: list[str] = []
    notes: list[str] = []
    for entry in local:
        entry_ip = ipaddress.ip_address(entry.ip)
        if address.is_unspecified or entry_ip == address:
            carried.append(entry.interface)
        elif entry.prefix_length is not None and entry_ip.version == address.version:
            network = ipaddress.ip_network(f"{entry.ip}/{entry.prefix_length}", strict=False)
            if address in network:
                on_link.append(entry.interface)
    if address.version == 4 and address.is_loopback and not carried:
        # 127.0.0.0/8 is routed to lo as a whole, even without an explicit address.
        carried.extend(
            sorted({e.interface for e in local if ipaddress.ip_address(e.ip).is_loopback})
        )
    if facts.mapped_ipv4:
        notes.append(
            f"an IPv4-mapped IPv6 address: IPv6 sockets see IPv4 peer {facts.mapped_ipv4} this way"
        )
    if address.is_unspecified:
        notes.append(
            "a wildcard: a socket bound here listens on every interface (exposed to the network)"
        )
    elif not carried and not address.is_loopback:
        notes.append("no local interface carries this address: binding it fails (EADDRNOTAVAIL)")
    dedupe = tuple(dict.fromkeys(carried))
    on_link_only = tuple(name for name in dict.fromkeys(on_link) if name not in dedupe)
    return AddressExplanation(
        facts=facts, carried_by=dedupe, on_link=on_link_only, notes=tuple(notes)
    )


def _explain_name(name: str) -> NameExplanation:
    import socket

    notes: list[str] = []
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        resolved = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
    except OSError as exc:
        resolved = ()
        notes.append(f"does not resolve here: {exc.strerror or exc}")
    if name == "localhost" or name.endswith(".localhost"):
        notes.append(
            "*.localhost is loopback by RFC 6761: browsers and curl resolve it to 127.0.0.1 and ::1"
            " themselves; other programs ask /etc/hosts and DNS"
        )
    if len({":" in ip for ip in resolved}) == 2:
        notes.append(
            "resolves to both IPv4 and IPv6: a server on only one family answers some clients and not others"
        )
    return NameExplanation(name=name, resolves_to=resolved, notes=tuple(notes))


def explain(text: str) -> Explanation:
    """Explain a port (``62893``), an address (``::1``) or an endpoint (``localhost:3000``)."""
    from portside.kernel import port_settings
    from portside.services import iana_services

    target = parse_target(text)
    port = None
    if target.port is not None:
        port = port_facts(target.port, port_settings(), iana_services(target.port))
    address = (
        _explain_address(target.host) if target.host_kind is HostKind.IP and target.host else None
    )
    name = _explain_name(target.host) if target.host_kind is HostKind.NAME and target.host else None
    return Explanation(target=target, port=port, address=address, name=name)
