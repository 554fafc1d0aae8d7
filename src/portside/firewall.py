"""Firewall rules as portside reads them: ``nft -j list ruleset`` and ``iptables-save``.

Pure parsing into one small model (chains with hook, policy and rules; each rule with the
matches portside understands and its verdict). Anything a rule matches that is not
understood is kept in ``unknown`` so that callers can say "unknown" rather than "safe".
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from collections.abc import Iterable, Mapping
from typing import Any


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PortMatch:
    """Destination ports a rule matches: single ports and inclusive ranges."""

    ports: frozenset[int] = frozenset()
    ranges: tuple[tuple[int, int], ...] = ()
    negated: bool = False

    def matches(self, port: int) -> bool:
        inside = port in self.ports or any(low <= port <= high for low, high in self.ranges)
        return inside != self.negated


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Condition:
    """A match decided by facts of the packet rather than by its addresses.

    ``key``: ``"ct-state"`` (new, established, related, invalid, untracked),
    ``"dst-type"`` (iptables addrtype: local, unicast, broadcast …), ``"nfproto"``
    (ipv4/ipv6), ``"rt-type"`` (IPv6 routing header types), ``"tcp-flags"`` (``syn``: a
    first SYN). The rule matches when the packet has one of ``values`` (or none, negated).
    """

    key: str
    values: frozenset[str]
    negated: bool = False


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    source: str  # "nft", "iptables", "ip6tables", "iptables-legacy" …
    family: str  # "ip", "ip6", "inet", …
    table: str
    chain: str
    protocol: str | None  # "tcp", "udp", or None (any)
    dport: PortMatch | None  # None: any port
    in_interface: str | None  # "lo", … (a leading "!" negates)
    verdict: str  # "accept", "drop", "reject", "jump", "goto", "return", "continue"
    jump_target: str | None
    established: bool  # matches ct state established/related only
    unknown: tuple[str, ...]  # matches not understood
    text: str
    conditions: tuple[Condition, ...] = ()  # matches decided by the packet's state and type
    effects: tuple[str, ...] = ()  # statements that change the packet or its path (dnat, vmap)
    state_map: tuple[tuple[str, str], ...] = ()  # ``ct state vmap``: (state, verdict)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Chain:
    source: str
    family: str
    table: str
    name: str
    hook: str | None  # "input", "output", "forward", "prerouting", … or None (regular chain)
    priority: int | None
    policy: str | None  # "accept" / "drop" for base chains
    rules: tuple[Rule, ...]
    type: str | None = None  # nftables chain type: "filter", "nat", "route"


# --- nftables JSON ----------------------------------------------------------------------------

_VERDICTS = ("accept", "drop", "reject", "jump", "goto", "return", "continue", "queue")


def _port_values(right: Any) -> PortMatch | None:
    if isinstance(right, int):
        return PortMatch(ports=frozenset({right}))
    if isinstance(right, dict):
        if "set" in right:
            ports: set[int] = set()
            ranges: list[tuple[int, int]] = []
            for item in right["set"]:
                if isinstance(item, int):
                    ports.add(item)
                elif isinstance(item, dict) and "range" in item and len(item["range"]) == 2:
                    ranges.append((int(item["range"][0]), int(item["range"][1])))
                else:
                    return None
            return PortMatch(ports=frozenset(ports), ranges=tuple(ranges))
        if "range" in right and len(right["range"]) == 2:
            return PortMatch(ranges=((int(right["range"][0]), int(right["range"][1])),))
    return None


def _nft_rule(rule: Mapping[str, Any], sets: Mapping[tuple[str, str, str], PortMatch]) -> Rule:
    protocol: str | None = None
    dport: PortMatch | None = None
    iif: str | None = None
    verdict = "continue"
    target: str | None = None
    established = False
    unknown: list[str] = []
    conditions: list[Condition] = []
    effects: list[str] = []
    state_map: list[tuple[str, str]] = []
    for expression in rule.get("expr", []):
        if not isinstance(expression, dict):
            unknown.append(str(expression))
            continue
        if "match" in expression:
            match = expression["match"]
            left, right, op = match.get("left"), match.get("right"), match.get("op", "==")
            payload = left.get("payload") if isinstance(left, dict) else None
            meta = left.get("meta") if isinstance(left, dict) else None
            ct = left.get("ct") if isinstance(left, dict) else None
            if (
                payload
                and payload.get("field") == "dport"
                and payload.get("protocol") in ("tcp", "udp")
            ):
                protocol = payload["protocol"]
                if isinstance(right, str) and right.startswith("@"):
                    dport = sets.get((rule.get("family", ""), rule.get("table", ""), right[1:]))
                else:
                    dport = _port_values(right)
                if dport is None:
                    unknown.append(f"dport {json.dumps(right)}")
                elif op == "!=":
                    dport = dataclasses.replace(dport, negated=True)
            elif meta and meta.get("key") in ("l4proto", "protocol") and isinstance(right, str):
                protocol = right
            elif meta and meta.get("key") in ("iifname", "iif") and isinstance(right, str):
                iif = right if op == "==" else f"!{right}"
            elif meta and meta.get("key") == "nfproto" and isinstance(right, str):
                conditions.append(
                    Condition(key="nfproto", values=frozenset({right}), negated=op == "!=")
                )
            elif ct and ct.get("key") == "state" and (states := _words(right)) is not None:
                if op in ("==", "in") and set(states) <= {"established", "related"}:
                    established = True
                if op in ("==", "in", "!="):
                    conditions.append(
                        Condition(key="ct-state", values=frozenset(states), negated=op == "!=")
                    )
                else:
                    unknown.append(f"ct state {op} {states}")
            else:
                unknown.append(json.dumps(match, sort_keys=True)[:120])
            continue
        key = next(iter(expression))
        if key in _VERDICTS:
            verdict = key
            value = expression[key]
            if key in ("jump", "goto") and isinstance(value, dict):
                target = value.get("target")
        elif key in ("counter", "log", "comment", "mangle"):
            continue
        elif key == "vmap" and (pairs := _state_vmap(expression[key])) is not None:
            state_map.extend(pairs)
        elif key in ("limit", "quota") or (
            key == "xt" and (expression[key] or {}).get("type") == "match"
        ):
            unknown.append(key)  # a condition portside does not evaluate
        else:
            unknown.append(key)
            effects.append(key)
    return Rule(
        source="nft",
        family=str(rule.get("family", "")),
        table=str(rule.get("table", "")),
        chain=str(rule.get("chain", "")),
        protocol=protocol,
        dport=dport,
        in_interface=iif,
        verdict=verdict,
        jump_target=target,
        established=established,
        unknown=tuple(unknown),
        text=str(rule.get("comment") or _nft_summary(protocol, dport, iif, verdict, target)),
        conditions=tuple(conditions),
        effects=tuple(effects),
        state_map=tuple(state_map),
    )


def _words(right: Any) -> list[str] | None:
    """``"new"``, ``["new", "invalid"]`` or ``{"set": [...]}`` -> the words; else None."""
    if isinstance(right, str):
        return [right]
    if isinstance(right, dict) and isinstance(right.get("set"), list):
        right = right["set"]
    if isinstance(right, list) and all(isinstance(word, str) for word in right):
        return list(right)
    return None


def _state_vmap(body: Any) -> list[tuple[str, str]] | None:
    """``ct state vmap { established : accept, invalid : drop }`` -> (state, verdict) pairs."""
    if not isinstance(body, dict) or body.get("key") != {"ct": {"key": "state"}}:
        return None
    data = body.get("data")
    entries = data.get("set") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return None
    pairs: list[tuple[str, str]] = []
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], dict)):
            return None
        verdict = next(iter(entry[1]), None)
        states = _words(entry[0])
        if verdict not in ("accept", "drop", "reject", "continue", "return") or states is None:
            return None
        pairs.extend((state, str(verdict)) for state in states)
    return pairs


def _nft_summary(
    protocol: str | None, dport: PortMatch | None, iif: str | None, verdict: str, target: str | None
) -> str:
    parts = []
    if iif:
        parts.append(f"iifname {iif}")
    if protocol and dport:
        listed = [str(p) for p in sorted(dport.ports)] + [f"{a}-{b}" for a, b in dport.ranges]
        parts.append(f"{protocol} dport {'!= ' if dport.negated else ''}{{{', '.join(listed)}}}")
    elif protocol:
        parts.append(f"meta l4proto {protocol}")
    parts.append(f"{verdict} {target}" if target else verdict)
    return " ".join(parts)


def parse_nft_json(text: str) -> list[Chain]:
    """``nft -j list ruleset`` output -> chains with their rules (in order).

    Raises ValueError when the text is not nftables JSON.
    """
    try:
        document = json.loads(text) if text.strip() else {"nftables": []}
    except json.JSONDecodeError as exc:
        raise ValueError(f"not nftables JSON: {exc}") from exc
    items = document.get("nftables") if isinstance(document, dict) else None
    if not isinstance(items, list):
        raise ValueError("not nftables JSON: no 'nftables' list")
    sets: dict[tuple[str, str, str], PortMatch] = {}
    for item in items:
        if isinstance(item, dict) and "set" in item and isinstance(item["set"], dict):
            body = item["set"]
            if body.get("type") == "inet_service":
                match = _port_values({"set": body.get("elem", [])})
                if match is not None:
                    sets[(body.get("family", ""), body.get("table", ""), body.get("name", ""))] = (
                        match
                    )
    chains: dict[tuple[str, str, str], dict[str, Any]] = {}
    rules: dict[tuple[str, str, str], list[Rule]] = {}
    for item in items:
        if not isinstance(item, dict):
            continue
        if "chain" in item and isinstance(item["chain"], dict):
            body = item["chain"]
            key = (
                str(body.get("family", "")),
                str(body.get("table", "")),
                str(body.get("name", "")),
            )
            chains[key] = body
            rules.setdefault(key, [])
        elif "rule" in item and isinstance(item["rule"], dict):
            body = item["rule"]
            key = (
                str(body.get("family", "")),
                str(body.get("table", "")),
                str(body.get("chain", "")),
            )
            rules.setdefault(key, []).append(_nft_rule(body, sets))
    result = []
    for key, found in rules.items():
        body = chains.get(key, {})
        priority = body.get("prio")
        result.append(
            Chain(
                source="nft",
                family=key[0],
                table=key[1],
                name=key[2],
                hook=body.get("hook"),
                priority=priority if isinstance(priority, int) else None,
                policy=body.get("policy"),
                rules=tuple(found),
                type=body.get("type"),
            )
        )
    return result


# --- iptables-save ---------------------------------------------------------------------------

_BUILTIN_HOOKS = {
    "INPUT": "input",
    "OUTPUT": "output",
    "FORWARD": "forward",
    "PREROUTING": "prerouting",
    "POSTROUTING": "postrouting",
}
_IPT_VERDICTS = {"ACCEPT": "accept", "DROP": "drop", "REJECT": "reject", "RETURN": "return"}


def _ipt_ports(text: str) -> PortMatch:
    ports: set[int] = set()
    ranges: list[tuple[int, int]] = []
    for part in text.split(","):
        low, sep, high = part.partition(":")
        if sep:
            ranges.append((int(low or 0), int(high or 65535)))
        else:
            ports.add(int(low))
    return PortMatch(ports=frozenset(ports), ranges=tuple(ranges))


def _ipt_rule(words: list[str], source: str, family: str, table: str) -> Rule:
    chain = words[1]
    protocol: str | None = None
    dport: PortMatch | None = None
    iif: str | None = None
    verdict = "continue"
    target: str | None = None
    established = False
    unknown: list[str] = []
    conditions: list[Condition] = []
    negate = False
    index = 2
    after_target = False
    while index < len(words):
        word = words[index]
        value = words[index + 1] if index + 1 < len(words) else ""
        if word == "!":
            negate = True
            index += 1
            continue
        if word in ("-p", "--protocol"):
            protocol = value
        elif word in ("--dport", "--destination-port", "--dports", "--destination-ports"):
            try:
                dport = dataclasses.replace(_ipt_ports(value), negated=negate)
            except ValueError:
                unknown.append(f"{word} {value}")
        elif word in ("-i", "--in-interface"):
            iif = f"!{value}" if negate else value
        elif word in ("-j", "--jump", "-g", "--goto"):
            after_target = True
            if value in _IPT_VERDICTS:
                verdict = _IPT_VERDICTS[value]
            else:
                verdict = "goto" if word in ("-g", "--goto") else "jump"
                target = value
        elif word in ("--ctstate", "--state"):
            if set(value.split(",")) <= {"ESTABLISHED", "RELATED"} and not negate:
                established = True
            states = frozenset(value.lower().split(","))
            conditions.append(Condition(key="ct-state", values=states, negated=negate))
        elif word in ("--dst-type", "--rt-type"):
            key = "dst-type" if word == "--dst-type" else "rt-type"
            values = frozenset(value.lower().split(","))
            conditions.append(Condition(key=key, values=values, negated=negate))
        elif word == "--syn":
            conditions.append(Condition(key="tcp-flags", values=frozenset({"syn"}), negated=negate))
            index += 1
            negate = False
            continue
        elif word == "--tcp-flags":
            flags = words[index + 2] if index + 2 < len(words) else ""
            unknown.append(f"{'! ' if negate else ''}{word} {value} {flags}".strip())
            index += 1  # two values: the mask and the flags
        elif word in ("-m", "--match", "--comment", "--reject-with", "-c", "--set-counters"):
            if word in ("-c", "--set-counters"):
                index += 1  # two values: packets and bytes
        elif word.startswith("-") and not after_target:  # target options are not matches
            unknown.append(f"{'! ' if negate else ''}{word} {value}".strip())
        else:
            index += 1
            negate = False
            continue
        index += 2
        negate = False
    return Rule(
        source=source,
        family=family,
        table=table,
        chain=chain,
        protocol=protocol,
        dport=dport,
        in_interface=iif,
        verdict=verdict,
        jump_target=target,
        established=established,
        unknown=tuple(unknown),
        text=" ".join(words),
        conditions=tuple(conditions),
    )


def parse_iptables_save(text: str, *, source: str = "iptables", family: str = "ip") -> list[Chain]:
    """``iptables-save`` (or ``ip6tables-save``) output -> chains with their rules."""
    table = ""
    policies: dict[tuple[str, str], str | None] = {}
    rules: dict[tuple[str, str], list[Rule]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":"):
            name, policy = [*line[1:].split(), "-"][:2]
            policies[(table, name)] = None if policy == "-" else policy.lower()
            rules.setdefault((table, name), [])
        elif line.startswith("-A "):
            try:
                words = shlex.split(line)
            except ValueError:
                words = line.split()
            if len(words) >= 2:
                rules.setdefault((table, words[1]), []).append(
                    _ipt_rule(words, source, family, table)
                )
    return [
        Chain(
            source=source,
            family=family,
            table=key[0],
            name=key[1],
            hook=_BUILTIN_HOOKS.get(key[1]),
            priority=0 if key[1] in _BUILTIN_HOOKS else None,
            policy=policies.get(key),
            rules=tuple(found),
        )
        for key, found in rules.items()
    ]


def rules_for_port(
    chains: Iterable[Chain], port: int, *, protocol: str = "tcp"
) -> list[tuple[Chain, Rule]]:
    """Rules with a drop/reject/accept verdict that can apply to ``protocol`` ``port``."""
    found = []
    for chain in chains:
        for rule in chain.rules:
            if rule.protocol not in (None, protocol):
                continue
            if rule.dport is not None and not rule.dport.matches(port):
                continue
            if rule.verdict in ("drop", "reject", "accept") and not rule.established:
                found.append((chain, rule))
    return found
