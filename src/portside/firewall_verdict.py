"""The firewall's verdict for one packet from outside: pure evaluation of parsed rules.

The packet is the first one of a new connection (a TCP SYN or a UDP datagram) arriving on
an interface other than ``lo`` for a local address. Every base chain that sees such a
packet is walked in hook and priority order (prerouting, then input; netdev ``ingress``
too), rule by rule, following ``jump``/``goto``/``return``: an ``accept`` ends one base
chain and the packet goes on to the next; ``drop``/``reject`` end its trip.

A rule whose matches portside cannot decide (addresses, marks, rate limits, ``fib`` …) is
followed both ways; when the two ways end differently the verdict is ``unknown``, never
"safe". A rule that changes the packet (``dnat``, ``redirect``, ``queue`` …) and may apply
makes the verdict ``unknown`` too. The ports only matter through the rules' port matches,
so :class:`Evaluator` evaluates each class of equivalent ports once.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
from collections.abc import Iterable, Sequence

from portside.firewall import Chain, Condition, Rule


class Action(enum.StrEnum):
    """What the firewall does with the packet."""

    ACCEPT = "accept"
    DROP = "drop"
    REJECT = "reject"
    UNKNOWN = "unknown"
    NONE = "none"  # no rules see the packet: nothing filters it


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Packet:
    """A first packet from outside: ``in_interface`` None when not known."""

    family: str  # "ipv4" / "ipv6"
    protocol: str  # "tcp" / "udp"
    port: int
    in_interface: str | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FirewallVerdict:
    """The verdict, the one-line reason, and the rule that decided (or made it unknown)."""

    action: Action
    reason: str
    rule: str | None = None

    @property
    def passes(self) -> bool:
        """The packet reaches the socket (accepted, or nothing filters)."""
        return self.action in (Action.ACCEPT, Action.NONE)


#: iptables targets that do not end the walk (the rule's match changes nothing we judge).
NON_TERMINAL_TARGETS = frozenset(
    {"LOG", "NFLOG", "ULOG", "MARK", "CONNMARK", "TCPMSS", "CLASSIFY", "DSCP", "TOS", "TTL",
     "HL", "CT", "AUDIT", "TRACE", "SECMARK", "CONNSECMARK", "IDLETIMER", "LED", "CHECKSUM"}
)  # fmt: skip
#: iptables table -> priority of its hook (netfilter's NF_IP_PRI_*).
_IPT_PRIORITY = {"raw": -300, "mangle": -150, "nat": -100, "filter": 0, "security": 50}
_HOOK_ORDER = {"ingress": 0, "prerouting": 1, "input": 2}
_FAMILIES = {
    "ipv4": frozenset({"ip", "inet", "netdev"}),
    "ipv6": frozenset({"ip6", "inet", "netdev"}),
}
_PROTOCOLS = {"6": "tcp", "17": "udp", "all": None, "0": None}
_MAX_DEPTH = 32

# One way through the rules ends in: an action and the rule (or policy) behind it.
_End = tuple[str, str, str | None]  # (action, reason, rule text)


class _Undecided(Exception):
    pass


def _interface_matches(pattern: str, name: str | None) -> bool | None:
    """``iifname "eth*"`` / ``-i eth+``; None when the interface is not known."""
    negated = pattern.startswith("!")
    pattern = pattern.lstrip("!")
    if name is None:
        return None
    hit = name.startswith(pattern[:-1]) if pattern.endswith(("*", "+")) else name == pattern
    return hit != negated


def _facts(packet: Packet) -> dict[str, frozenset[str]]:
    return {
        "ct-state": frozenset({"new"}),
        "dst-type": frozenset({"local", "unicast"}),
        "nfproto": frozenset({packet.family}),
        "rt-type": frozenset(),
        "tcp-flags": frozenset({"syn"}) if packet.protocol == "tcp" else frozenset(),
    }


def _condition(condition: Condition, facts: dict[str, frozenset[str]]) -> bool | None:
    known = facts.get(condition.key)
    if known is None:
        return None
    return bool(known & condition.values) != condition.negated


def rule_matches(rule: Rule, packet: Packet) -> bool | None:
    """True/False when the rule surely does/does not match ``packet``; None: cannot tell."""
    protocol = _PROTOCOLS.get(rule.protocol or "all", rule.protocol)
    if protocol is not None and protocol != packet.protocol:
        return False
    if rule.dport is not None and not rule.dport.matches(packet.port):
        return False
    if rule.established:
        return False  # only for packets of connections already open
    undecided = False
    if rule.in_interface is not None:
        hit = _interface_matches(rule.in_interface, packet.in_interface)
        if hit is False:
            return False
        undecided = hit is None
    facts = _facts(packet)
    for condition in rule.conditions:
        hit = _condition(condition, facts)
        if hit is False:
            return False
        undecided = undecided or hit is None
    if [u for u in rule.unknown if u not in rule.effects]:
        return None
    return None if undecided else True


@dataclasses.dataclass(slots=True)
class _Walk:
    packet: Packet
    chains: dict[tuple[str, str, str, str], Chain]
    memo: dict[tuple[tuple[str, str, str, str], int], frozenset[_End]]
    undecided: list[str]

    def chain(self, chain: Chain, start: int, depth: int) -> frozenset[_End]:
        """The ends reachable from rule ``start`` of ``chain``; "return" when it runs out."""
        key = (chain.source, chain.family, chain.table, chain.name)
        cached = self.memo.get((key, start))
        if cached is not None:
            return cached
        if depth > _MAX_DEPTH:
            raise _Undecided(f"jumps nested deeper than {_MAX_DEPTH} in {chain.name}")
        ends: set[_End] = set()
        index = start
        while True:
            if index >= len(chain.rules):
                ends.add(("return", "", None))
                break
            rule = chain.rules[index]
            hit = rule_matches(rule, self.packet)
            if hit is False:
                index += 1
                continue
            if hit is None:
                self.undecided.append(rule.text)
            taken, falls_through = self._taken(chain, rule, depth)
            ends |= taken
            if falls_through or hit is None:
                index += 1
                continue
            break
        result = frozenset(ends)
        self.memo[(key, start)] = result
        return result

    def _taken(self, chain: Chain, rule: Rule, depth: int) -> tuple[set[_End], bool]:
        """The ends when ``rule`` matches, and whether the walk may go on after it."""
        where = f"{chain.table}/{chain.name}"
        if rule.effects:
            what = ", ".join(rule.effects)
            return {
                ("unknown", f"rule {rule.text!r} in {where} changes the packet ({what})", rule.text)
            }, False
        verdict = rule.verdict
        if rule.state_map:
            mapped = dict(rule.state_map).get("new")
            if mapped is None:
                return set(), True
            verdict = mapped
        if verdict in ("accept", "drop", "reject"):
            return {(verdict, f"rule {rule.text!r} in {where}", rule.text)}, False
        if verdict == "return":
            return {("return", "", None)}, False
        if verdict == "continue":
            return set(), True
        if verdict in ("jump", "goto") and rule.jump_target:
            target = self.chains.get((chain.source, chain.family, chain.table, rule.jump_target))
            if target is None:
                if rule.jump_target in NON_TERMINAL_TARGETS:
                    return set(), True
                reason = f"rule {rule.text!r} in {where} hands the packet to {rule.jump_target}"
                return {("unknown", reason, rule.text)}, False
            inner = self.chain(target, 0, depth + 1)
            ends = {end for end in inner if end[0] != "return"}
            returns = any(end[0] == "return" for end in inner)
            if verdict == "goto" and returns:
                ends.add(("return", "", None))
                return ends, False
            return ends, returns
        reason = f"rule {rule.text!r} in {where} ends in {verdict}"
        return {("unknown", reason, rule.text)}, False


def _base_chains(chains: Iterable[Chain], family: str) -> list[Chain]:
    wanted = _FAMILIES[family]
    found = [
        c
        for c in chains
        if c.hook in _HOOK_ORDER
        and c.family in wanted
        and (c.source == "nft" or c.table in _IPT_PRIORITY)
    ]

    def order(chain: Chain) -> tuple[int, int]:
        priority = chain.priority or 0
        if chain.source != "nft":
            priority = _IPT_PRIORITY.get(chain.table, 0)
        return (_HOOK_ORDER[chain.hook or "input"], priority)

    return sorted(found, key=order)


def evaluate(chains: Sequence[Chain], packet: Packet) -> FirewallVerdict:
    """The firewall's verdict for ``packet``, from chains of nftables and iptables.

    Every base chain on the path must let the packet through; the first definite drop or
    reject decides; otherwise any way that cannot be told makes the verdict unknown.
    """
    index = {(c.source, c.family, c.table, c.name): c for c in chains}
    base = _base_chains(chains, packet.family)
    if not base:
        return FirewallVerdict(action=Action.NONE, reason="no firewall chain sees the packet")
    unknown: FirewallVerdict | None = None
    accepted: FirewallVerdict | None = None
    for chain in base:
        walk = _Walk(packet=packet, chains=index, memo={}, undecided=[])
        where = f"{chain.source} {chain.family} {chain.table}/{chain.name}"
        try:
            ends = walk.chain(chain, 0, 0)
        except _Undecided as exc:
            unknown = unknown or FirewallVerdict(action=Action.UNKNOWN, reason=str(exc))
            continue
        policy = (chain.policy or "accept").lower()
        resolved = {
            (policy, f"policy {policy} of {where}", None) if end[0] == "return" else end
            for end in ends
        }
        actions = {end[0] for end in resolved}
        if chain.hook == "ingress" and actions & {"drop", "reject"}:
            # netdev chains belong to one device, which the parsed model does not keep.
            unknown = unknown or FirewallVerdict(
                action=Action.UNKNOWN, reason=f"{where} filters some devices"
            )
            continue
        if len(actions) == 1 and actions <= {"drop", "reject"}:
            action, reason, rule = min(resolved, key=lambda end: end[1])
            return FirewallVerdict(action=Action(action), reason=reason, rule=rule)
        if actions == {"accept"}:
            if accepted is None or accepted.rule is None:
                _, reason, rule = min(resolved, key=lambda end: end[1])
                accepted = FirewallVerdict(action=Action.ACCEPT, reason=reason, rule=rule)
            continue
        if actions <= {"drop", "reject"}:
            reason = f"{where} drops or rejects it"
            return FirewallVerdict(action=Action.DROP, reason=reason, rule=None)
        culprit = next((e for e in resolved if e[0] == "unknown"), None)
        if culprit is not None:
            reason, rule = culprit[1], culprit[2]
        else:
            rule = walk.undecided[0] if walk.undecided else None
            reason = f"depends on rule {rule!r} in {where}, which portside cannot evaluate"
        unknown = unknown or FirewallVerdict(action=Action.UNKNOWN, reason=reason, rule=rule)
    if unknown is not None:
        return unknown
    return accepted or FirewallVerdict(action=Action.ACCEPT, reason="every chain accepts it")


class Evaluator:
    """:func:`evaluate` with a cache: ports that every rule treats alike share one walk."""

    def __init__(self, chains: Sequence[Chain]) -> None:
        self.chains = tuple(chains)
        bounds: set[int] = {0, 65536}
        for chain in self.chains:
            for rule in chain.rules:
                if rule.dport is None:
                    continue
                for port in rule.dport.ports:
                    bounds.update((port, port + 1))
                for low, high in rule.dport.ranges:
                    bounds.update((low, high + 1))
        self._bounds = sorted(bounds)
        self._cache: dict[tuple[str, str, int, str | None], FirewallVerdict] = {}

    def verdict(self, packet: Packet) -> FirewallVerdict:
        """The verdict for ``packet`` (cached by the class of its port)."""
        port_class = bisect.bisect_right(self._bounds, packet.port)
        key = (packet.family, packet.protocol, port_class, packet.in_interface)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = evaluate(self.chains, packet)
        return found
