"""``portside audit``: which listeners the network can reach, how bad that is, and the fix.

For every listener of this network namespace: its bind scope (loopback, one address,
every interface; a dual-stack ``[::]`` counts for IPv4 too), the interfaces and networks
it is reachable on, and the firewall's verdict for a first packet from outside on each
of them (:mod:`portside.firewall_verdict`, over ``nft -j list ruleset``,
``iptables-nft-save`` and ``iptables-legacy-save``; ufw is read through them). Then what
the service is (:mod:`portside.audit_risk`, from the owner and, for exposed listeners
the owner does not tell about, a protocol probe), and a severity.

Library use::

    from portside.audit import audit
    report = audit()                      # AuditReport
    for finding in report.findings:       # most severe first
        print(finding.severity, finding.address, finding.port, finding.fix)

:func:`assess` is the pure core (listeners, interface addresses and rules in, findings
out); :func:`audit` gathers those facts and runs the probes.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence

from portside import audit_risk
from portside.audit_risk import Service, ServiceGuess, Verdict
from portside.firewall import Chain
from portside.firewall_verdict import Action, Evaluator, FirewallVerdict, Packet
from portside.kernel import InterfaceAddress, interface_addresses
from portside.models import Exposure, Identity, Severity, SocketEntry

TYPE_CHECKING = False
if TYPE_CHECKING:
    from portside.audit_config import IgnoreRule

__all__ = [
    "AuditFinding",
    "AuditReport",
    "FirewallRules",
    "ProbeFacts",
    "Service",
    "Verdict",
    "assess",
    "audit",
    "read_firewall",
]

#: Bound on each protocol probe and on how many run at once.
PROBE_TIMEOUT_S = 2.0
PROBE_WORKERS = 16


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AuditFinding:
    """One listener, judged. The first nine fields are the documented JSON keys.

    ``reachable_from``: ``"eth0 192.168.1.0/24"`` for each interface and network a packet
    from outside reaches it on (for ``unknown``: where the firewall cannot be told).
    ``firewall``: ``accept``, ``none`` (no rules), ``drop``, ``reject``, ``unknown``, or
    ``n/a`` for loopback-only listeners. ``fix``: one line, for exposed listeners only.
    """

    code: str
    severity: Severity
    address: str
    port: int
    proto: str
    process: str | None  # "redis-server[1234]"
    reachable_from: tuple[str, ...]
    firewall: str
    fix: str | None
    verdict: Verdict
    scope: str  # "loopback", "address", "all"
    service: Service
    label: str
    pid: int | None
    firewall_reason: str
    evidence: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AuditReport:
    """The answer of ``portside audit``: findings most severe first, and what was read."""

    findings: tuple[AuditFinding, ...]
    ignored: tuple[AuditFinding, ...] = ()
    firewall_sources: tuple[str, ...] = ()  # "nft", "iptables-nft", "iptables-legacy" …
    firewall_errors: tuple[str, ...] = ()

    def at_least(self, threshold: Severity) -> tuple[AuditFinding, ...]:
        """Findings whose severity reaches ``threshold`` (what ``--fail-on`` counts)."""
        bar = audit_risk.rank(threshold)
        return tuple(f for f in self.findings if audit_risk.rank(f.severity) >= bar)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FirewallRules:
    """The rules read, the tools they came from, and what could not be read."""

    chains: tuple[Chain, ...]
    sources: tuple[str, ...]
    errors: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ProbeFacts:
    """What a probe of one listener saw: the protocol, and whether Redis asked for AUTH."""

    protocol: str | None = None
    auth_required: bool | None = None  # None: not asked, or no Redis answer


# --------------------------------------------------------------------------- pure core


@dataclasses.dataclass(frozen=True, slots=True)
class _Reach:
    interface: str
    ip: str
    network: str
    family: str


def _network(address: InterfaceAddress) -> str:
    if address.prefix_length is None:
        return address.ip
    return str(ipaddress.ip_interface(f"{address.ip}/{address.prefix_length}").network)


def _external(addresses: Iterable[InterfaceAddress]) -> list[_Reach]:
    found = []
    for address in addresses:
        ip = address.ip.split("%", 1)[0]
        try:
            parsed = ipaddress.ip_address(ip)
        except ValueError:
            continue
        if address.is_up is False or address.interface == "lo" or parsed.is_loopback:
            continue
        family = "ipv4" if parsed.version == 4 else "ipv6"
        found.append(_Reach(address.interface, ip, _network(address), family))
    return found


def _candidates(entry: SocketEntry, external: Sequence[_Reach]) -> list[_Reach]:
    """Interface addresses a packet from outside may reach ``entry`` on."""
    ip = entry.local.ip.split("%", 1)[0]
    if ip.startswith("::ffff:"):
        from portside.addresses import unmap

        ip = unmap(ip)
    if entry.exposure is Exposure.ALL:
        families = {"ipv4"}
        if ":" in ip:  # [::]: IPv6, and IPv4 too unless IPV6_V6ONLY
            families = {"ipv6"} if entry.v6only else {"ipv4", "ipv6"}
        found = [r for r in external if r.family in families]
    else:
        found = [r for r in external if r.ip == ip]
    if entry.interface:  # SO_BINDTODEVICE
        found = [r for r in found if r.interface == entry.interface]
    return found


def _owner(entry: SocketEntry) -> tuple[str | None, int | None, tuple[str, ...], Identity | None]:
    if not entry.owners:
        return None, None, (), None
    owner = entry.owners[0]
    process = owner.process
    return process.name, process.pid, process.cmdline, owner.identity


def _judge(
    candidates: Sequence[_Reach], verdicts: Sequence[FirewallVerdict]
) -> tuple[Verdict, tuple[str, ...], FirewallVerdict | None]:
    passing = [(r, v) for r, v in zip(candidates, verdicts, strict=True) if v.passes]
    unknown = [
        (r, v) for r, v in zip(candidates, verdicts, strict=True) if v.action is Action.UNKNOWN
    ]
    if passing:
        chosen, verdict = passing, Verdict.EXPOSED
    elif unknown:
        chosen, verdict = unknown, Verdict.UNKNOWN
    elif candidates:
        return Verdict.FILTERED, (), verdicts[0]
    else:
        return Verdict.LOOPBACK_ONLY, (), None
    places = tuple(dict.fromkeys(f"{r.interface} {r.network}" for r, _ in chosen))
    return verdict, places, chosen[0][1]


def assess(
    entries: Iterable[SocketEntry],
    addresses: Iterable[InterfaceAddress],
    chains: Sequence[Chain],
    *,
    probes: Mapping[tuple[str, int, str], ProbeFacts] | None = None,
    ignore: Sequence[IgnoreRule] = (),
    unreadable: str | None = None,
) -> AuditReport:
    """Findings for listening ``entries`` given the interface ``addresses`` of their
    namespace and its firewall ``chains`` (pure). ``probes``: keyed by (address, port,
    proto) of the listener. ``unreadable``: why the rules could not be read; every
    verdict is then unknown (no rules read is not the same as no rules)."""
    external = _external(addresses)
    evaluator: Evaluator | FirewallVerdict = Evaluator(chains)
    if unreadable is not None:
        evaluator = FirewallVerdict(action=Action.UNKNOWN, reason=unreadable)
    probes = probes or {}
    kept: list[AuditFinding] = []
    dropped: list[AuditFinding] = []
    reach_cache: dict[tuple[str, bool | None, str | None], list[_Reach]] = {}
    for entry in entries:
        finding = _assess_one(entry, external, evaluator, probes, reach_cache)
        if any(
            rule.matches(
                port=finding.port,
                proto=finding.proto,
                process=_process_name(finding),
                address=finding.address,
                code=finding.code,
            )
            for rule in ignore
        ):
            dropped.append(finding)
        else:
            kept.append(finding)
    return AuditReport(findings=tuple(sort_findings(kept)), ignored=tuple(dropped))


def _process_name(finding: AuditFinding) -> str | None:
    return finding.process.rsplit("[", 1)[0] if finding.process else None


def sort_findings(findings: Iterable[AuditFinding]) -> list[AuditFinding]:
    """Most severe first, then by port and address."""
    return sorted(
        findings, key=lambda f: (-audit_risk.rank(f.severity), f.port, f.address, f.proto)
    )


def _assess_one(
    entry: SocketEntry,
    external: Sequence[_Reach],
    evaluator: Evaluator | FirewallVerdict,
    probes: Mapping[tuple[str, int, str], ProbeFacts],
    reach_cache: dict[tuple[str, bool | None, str | None], list[_Reach]],
) -> AuditFinding:
    proto = entry.transport.value
    address, port = entry.local.ip, entry.local.port
    scope = {Exposure.LOOPBACK: "loopback", Exposure.SPECIFIC: "address", Exposure.ALL: "all"}[
        entry.exposure
    ]
    if entry.exposure is Exposure.LOOPBACK or entry.interface == "lo":
        candidates: list[_Reach] = []
    else:
        key = (entry.local.ip, entry.v6only, entry.interface)
        found = reach_cache.get(key)
        if found is None:
            found = reach_cache[key] = _candidates(entry, external)
        candidates = found
    verdicts = [
        evaluator
        if isinstance(evaluator, FirewallVerdict)
        else evaluator.verdict(
            Packet(family=r.family, protocol=proto, port=port, in_interface=r.interface)
        )
        for r in candidates
    ]
    verdict, places, deciding = _judge(candidates, verdicts)
    name, pid, cmdline, identity = _owner(entry)
    facts = probes.get((address, port, proto), ProbeFacts())
    guess = audit_risk.classify(name, cmdline, identity, port=port, protocol=facts.protocol)
    noauth = facts.auth_required is False and verdict in (Verdict.EXPOSED, Verdict.UNKNOWN)
    evidence = []
    if noauth:
        evidence.append("answers PING without AUTH")
    elif facts.auth_required:
        evidence.append("asks for AUTH (or is in protected mode)")
    if facts.protocol and facts.protocol not in ("redis",):
        evidence.append(f"speaks {facts.protocol}")
    if deciding is not None:
        firewall, reason = deciding.action.value, deciding.reason
    elif verdict is Verdict.LOOPBACK_ONLY and entry.exposure is not Exposure.LOOPBACK:
        firewall, reason = "n/a", "no other interface has an address it listens on"
    else:
        firewall, reason = "n/a", "bound to loopback"
    return AuditFinding(
        code=audit_risk.code(guess, verdict, answers_without_auth=noauth),
        severity=audit_risk.severity(guess, verdict, answers_without_auth=noauth),
        address=address,
        port=port,
        proto=proto,
        process=f"{name}[{pid}]" if name is not None else None,
        reachable_from=places,
        firewall=firewall,
        fix=audit_risk.fix(guess, port=port, proto=proto, verdict=verdict),
        verdict=verdict,
        scope=scope,
        service=guess.service,
        label=guess.label,
        pid=pid,
        firewall_reason=reason,
        evidence=tuple(evidence),
    )


# --------------------------------------------------------------------------- gathering


def _run(argv: Sequence[str]) -> tuple[str | None, str | None]:
    """(stdout, None) when the tool ran; (None, why not) otherwise."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
    except FileNotFoundError:
        return None, None  # not installed: nothing to read
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{argv[0]}: {exc}"
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[0]
        return None, f"{argv[0]}: {first}"
    return done.stdout, None


def read_firewall(
    run: Callable[[Sequence[str]], tuple[str | None, str | None]] = _run,
) -> FirewallRules:
    """The rules of nftables, iptables-nft and iptables-legacy of this network namespace.

    Tables that iptables-nft manages are read from ``iptables-nft-save`` (its matches are
    opaque in nft's JSON) and left out of nft's list.
    """
    from portside.firewall import parse_iptables_save, parse_nft_json

    chains: list[Chain] = []
    sources: list[str] = []
    errors: list[str] = []
    ipt_tables: set[tuple[str, str]] = set()
    for tool, source, family in (
        ("iptables-nft-save", "iptables-nft", "ip"),
        ("ip6tables-nft-save", "ip6tables-nft", "ip6"),
        ("iptables-legacy-save", "iptables-legacy", "ip"),
        ("ip6tables-legacy-save", "ip6tables-legacy", "ip6"),
    ):
        text, error = run([tool])
        if error:
            errors.append(error)
        if text and text.strip():
            found = parse_iptables_save(text, source=source, family=family)
            if any(c.rules or (c.policy or "accept") != "accept" for c in found):
                chains.extend(found)
                sources.append(source)
            if source.endswith("-nft"):
                ipt_tables.update((family, c.table) for c in found)
    text, error = run(["nft", "-j", "list", "ruleset"])
    if error:
        errors.append(error)
    if text is not None:
        try:
            found = parse_nft_json(text)
        except ValueError as exc:
            errors.append(f"nft: {exc}")
        else:
            own = [c for c in found if (c.family, c.table) not in ipt_tables]
            if own:
                chains.extend(own)
                sources.append("nft")
    return FirewallRules(chains=tuple(chains), sources=tuple(sources), errors=tuple(errors))


def _redis_ping(ip: str, port: int, timeout: float) -> bool | None:
    try:
        with socket.create_connection((ip, port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = sock.recv(256)
    except OSError:
        return None
    return audit_risk.redis_auth(reply)


def _probe(ip: str, port: int, guess: ServiceGuess, owner: str | None, bound: str) -> ProbeFacts:
    """Redis: PING through ``ip`` (an interface address: Redis answers a loopback client
    even in protected mode). Others: identify the protocol, through loopback when the
    listener is a wildcard (loopback waits are short), else through ``ip``."""
    if guess.program == "redis":
        return ProbeFacts(protocol="redis", auth_required=_redis_ping(ip, port, PROBE_TIMEOUT_S))
    from portside.probe import Hints, identify

    near = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(bound, ip)  # noqa: S104 -- not a bind
    found = identify(
        near, port, timeout=PROBE_TIMEOUT_S, hints=Hints(owners=(owner,) if owner else ())
    )
    protocol = found.protocol.value if found.protocol is not None else None
    if protocol == "redis":
        return ProbeFacts(protocol=protocol, auth_required=_redis_ping(ip, port, PROBE_TIMEOUT_S))
    return ProbeFacts(protocol=protocol)


_Plan = tuple[tuple[str, int, str], str, ServiceGuess, str | None]


def _probe_plan(
    first: AuditReport, external: Sequence[_Reach], entries: Sequence[SocketEntry]
) -> list[_Plan]:
    """The exposed TCP listeners a probe could tell more about, and where to reach them."""
    by_key = {(e.local.ip, e.local.port, e.transport.value): e for e in entries}
    plan = []
    for finding in (*first.findings, *first.ignored):
        if finding.verdict not in (Verdict.EXPOSED, Verdict.UNKNOWN) or finding.proto != "tcp":
            continue
        key = (finding.address, finding.port, finding.proto)
        entry = by_key.get(key)
        if entry is None:
            continue
        name, _, cmdline, identity = _owner(entry)
        guess = audit_risk.classify(name, cmdline, identity, port=finding.port)
        if not audit_risk.needs_probe(guess):
            continue
        reach = _candidates(entry, external)
        # Reach it as a client from another host would: through an interface address.
        place = next(
            (r for r in reach if f"{r.interface} {r.network}" in finding.reachable_from), None
        )
        if place is not None:
            plan.append((key, place.ip, guess, name))
    return plan


def _reassess(
    report: AuditReport,
    entries: Sequence[SocketEntry],
    addresses: Sequence[InterfaceAddress],
    chains: Sequence[Chain],
    probes: Mapping[tuple[str, int, str], ProbeFacts],
    ignore: Sequence[IgnoreRule],
    unreadable: str | None,
) -> AuditReport:
    """``report`` with the probed listeners judged again, knowing what the probes saw."""
    probed = [e for e in entries if (e.local.ip, e.local.port, e.transport.value) in probes]
    redone = assess(probed, addresses, chains, probes=probes, ignore=ignore, unreadable=unreadable)

    def kept(findings: Iterable[AuditFinding]) -> list[AuditFinding]:
        return [f for f in findings if (f.address, f.port, f.proto) not in probes]

    return AuditReport(
        findings=tuple(sort_findings([*kept(report.findings), *redone.findings])),
        ignored=(*kept(report.ignored), *redone.ignored),
    )


def _run_probe(item: _Plan) -> ProbeFacts:
    (bound, port, _), ip, guess, owner = item
    return _probe(ip, port, guess, owner, bound)


def audit(
    *,
    probe: bool = True,
    ignore: Sequence[IgnoreRule] = (),
    backend_name: str | None = None,
    firewall: FirewallRules | None = None,
) -> AuditReport:
    """Audit the listeners of this network namespace (see the module docstring).

    ``probe``: run protocol probes on exposed listeners whose owner does not tell what
    they are, and PING exposed Redis servers (at most ``PROBE_WORKERS`` at once, each
    bounded by ``PROBE_TIMEOUT_S``). ``firewall``: rules already read (default: read them).
    """
    from portside.inspect import _with_identities
    from portside.sockets import listeners, select_backend

    entries = _with_identities(listeners(namespaces=False, backend=select_backend(backend_name)))
    addresses = interface_addresses()
    rules = firewall if firewall is not None else read_firewall()
    unreadable = None
    if rules.errors and not rules.chains:
        unreadable = f"the firewall rules could not be read ({rules.errors[0]}); run as root"
    report = assess(entries, addresses, rules.chains, ignore=ignore, unreadable=unreadable)
    if probe:
        plan = _probe_plan(report, _external(addresses), entries)
        if plan:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=min(PROBE_WORKERS, len(plan))) as pool:
                results = list(pool.map(_run_probe, plan))
            probes = {item[0]: facts for item, facts in zip(plan, results, strict=True)}
            report = _reassess(report, entries, addresses, rules.chains, probes, ignore, unreadable)
    from portside.containers import audit_published

    report = audit_published(report, rules.chains)  # published ports pass NAT + FORWARD
    return dataclasses.replace(report, firewall_sources=rules.sources, firewall_errors=rules.errors)
