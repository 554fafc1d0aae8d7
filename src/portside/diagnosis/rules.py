"""The reasoning of ``doctor``: Facts -> Diagnosis. Pure, table-tested without I/O.

The codes are those of the failure-mode catalogue (FM-01 … FM-36). One verdict comes
first (the most specific explanation of why the target does not answer, or ``OK``);
secondary findings follow (proxy variables, exposure, port-range risks, …).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Sequence

from portside.addresses import HostKind, exposure_of
from portside.diagnosis.facts import AfterConnect, Attempt, Facts, Outcome, RuleVerdict
from portside.models import (
    Diagnosis,
    Exposure,
    Finding,
    Identity,
    Owner,
    ProcessState,
    Severity,
    SocketEntry,
    SocketState,
    Transport,
)
from portside.ports import BROWSER_BAD_PORTS

_SEVERITY_ORDER = [Severity.CRITICAL, Severity.HIGH, Severity.MEDIUM, Severity.LOW, Severity.INFO]
_FORWARDER_CODES = {
    "docker-proxy": "FM-30",
    "podman-conmon": "FM-30",
    "podman-rootlessport": "FM-30",
    "podman-slirp4netns": "FM-30",
    "podman-pasta": "FM-30",
    "ssh-local-forward": "FM-33",
    "qemu-hostfwd": "FM-32",
    "kubectl-port-forward": "FM-34",
    "wsl-relay": "FM-31",
    "socat": "FM-25",
}
_NOT_SERVERS = frozenset(
    {"sleep", "bash", "sh", "zsh", "fish", "dash", "cat", "tail", "less", "make", "tmux", "screen"}
)
#: Programs that hold a listener and start the service on connections: by process name
#: (the kernel's comm, 15 characters at most) or by the program in the command line.
_SOCKET_ACTIVATORS = frozenset({"systemd", "inetd", "xinetd", "systemd-socket-activate"})
_CLIENT_FIRST = frozenset(
    {"http", "https", "ws", "wss", "redis", "rediss", "postgres", "postgresql", "tcp+tls"}
)
_EXPECTED_PROTOCOL = {
    "http": "http",
    "ws": "http",
    "https": "tls",
    "wss": "tls",
    "tcp+tls": "tls",
    "rediss": "tls",
    "redis": "redis",
    "postgres": "postgresql",
    "postgresql": "postgresql",
    "mysql": "mysql",
    "ssh": "ssh",
}


def _endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _is_v6(ip: str) -> bool:
    return ":" in ip and not ip.startswith("::ffff:")


def _owner_words(owners: Sequence[Owner]) -> str:
    if not owners:
        return "an owner that is not visible"
    return ", ".join(
        f"{o.process.name}[{o.process.pid}] ({' '.join(o.process.cmdline)[:120]})" for o in owners
    )


def _here(entry: SocketEntry) -> bool:
    return entry.netns is None or entry.netns.is_current


def _tcp_listeners(facts: Facts, *, here: bool = True) -> list[SocketEntry]:
    return [
        e
        for e in facts.sockets
        if e.transport is Transport.TCP and e.state is SocketState.LISTEN and _here(e) is here
    ]


def covers(listener: SocketEntry, ip: str, *, bindv6only: bool | None = None) -> bool:
    """Whether a connection to ``ip`` reaches ``listener`` (the kernel's matching rules).

    Exact address, or the wildcard of the family; a dual-stack ``[::]`` also takes IPv4.
    Connecting to 0.0.0.0 / :: reaches the local host (127.0.0.1 / ::1).
    """
    wanted = ipaddress.ip_address(ip)
    if isinstance(wanted, ipaddress.IPv6Address) and wanted.ipv4_mapped is not None:
        wanted = wanted.ipv4_mapped
    if wanted.is_unspecified:
        wanted = ipaddress.ip_address("127.0.0.1" if wanted.version == 4 else "::1")
    bound = ipaddress.ip_address(listener.local.ip)
    if isinstance(bound, ipaddress.IPv6Address) and bound.ipv4_mapped is not None:
        bound = bound.ipv4_mapped
    if bound == wanted:
        return True
    if not bound.is_unspecified:
        return False
    if bound.version == wanted.version:
        return True
    if bound.version == 6 and wanted.version == 4:
        v6only = listener.v6only if listener.v6only is not None else bool(bindv6only)
        return not v6only
    return False


def _where(entry: SocketEntry) -> str:
    text = _endpoint(entry.local.ip, entry.local.port)
    if entry.family == "ipv6" and entry.local.ip == "::":
        text += " (IPv6 only)" if entry.v6only else " (dual-stack)"
    return text


def _stopped(owners: Iterable[Owner]) -> Owner | None:
    return next(
        (o for o in owners if o.process.state in (ProcessState.STOPPED, ProcessState.TRACED)), None
    )


# --- one attempt ------------------------------------------------------------------------


def _refused(facts: Facts, attempt: Attempt, port: int) -> Finding:
    bindv6only = facts.loopback.bindv6only
    here = _tcp_listeners(facts)
    target = _endpoint(attempt.ip, port)
    matching = [e for e in here if covers(e, attempt.ip, bindv6only=bindv6only)]
    if matching:
        return Finding(
            code="FM-26",
            severity=Severity.HIGH,
            title=f"a firewall rejects connections to {target}",
            evidence=(
                f"connect to {target}: ECONNREFUSED after {attempt.elapsed_ms:.1f} ms",
                f"yet {_where(matching[0])} is listening, held by {_owner_words(matching[0].owners)}",
                *_firewall_evidence(facts, port),
            ),
            fix=(
                "find the rule: sudo nft -a list ruleset; sudo iptables-save; sudo ip6tables-save",
                f"allow it, e.g.: sudo nft insert rule inet filter input iif lo tcp dport {port} accept",
            ),
        )
    same_family = [e for e in here if _is_v6(e.local.ip) == _is_v6(attempt.ip)]
    if same_family:
        listener = same_family[0]
        return Finding(
            code="FM-02",
            severity=Severity.HIGH,
            title=f"nothing listens on {target}, but port {port} listens on {listener.local.ip}",
            evidence=(
                f"connect to {target}: ECONNREFUSED",
                *(f"listening: {_where(e)}, held by {_owner_words(e.owners)}" for e in same_family),
                "a connection reaches only a socket bound to its exact address or to the wildcard",
            ),
            fix=(
                f"connect to {_endpoint(listener.local.ip, port)} instead",
                "or make the server listen on 127.0.0.1 (local only) or on 0.0.0.0/:: (all interfaces)",
            ),
        )
    if here:
        listener = here[0]
        want = "IPv6" if _is_v6(attempt.ip) else "IPv4"
        have = "IPv4" if want == "IPv6" else "IPv6"
        wildcard = exposure_of(listener.local.ip) is Exposure.ALL
        literal = ("127.0.0.1" if have == "IPv4" else "::1") if wildcard else listener.local.ip
        return Finding(
            code="FM-03",
            severity=Severity.HIGH,
            title=f"port {port} listens on {have} only; {target} is {want}",
            evidence=(
                f"connect to {target}: ECONNREFUSED",
                *(f"listening: {_where(e)}, held by {_owner_words(e.owners)}" for e in here),
            ),
            fix=(
                f"connect to {_endpoint(literal, port)}",
                "or make the server listen on both families: [::] with IPV6_V6ONLY=0, or one socket per family",
            ),
        )
    elsewhere = _tcp_listeners(facts, here=False)
    if elsewhere:
        entry = elsewhere[0]
        namespace = entry.netns.name if entry.netns else "another namespace"
        holder = entry.owners[0].process.pid if entry.owners else None
        return Finding(
            code="FM-29",
            severity=Severity.HIGH,
            title=f"port {port} listens only in another network namespace ({namespace})",
            evidence=(
                f"connect to {target}: ECONNREFUSED",
                *(
                    f"listening in netns {e.netns.name if e.netns else '?'}: {_where(e)}, held by {_owner_words(e.owners)}"
                    for e in elsewhere
                ),
                "each network namespace has its own loopback",
            ),
            fix=(
                *(
                    (f"run the client there: sudo nsenter -t {holder} -n <client>",)
                    if holder
                    else ()
                ),
                f"or publish the port (docker run -p 127.0.0.1:{port}:{port} …), or use --network host",
            ),
        )
    bound = [
        e
        for e in facts.sockets
        if e.transport is Transport.TCP and e.state is SocketState.BOUND and _here(e)
    ]
    if bound:
        return Finding(
            code="FM-10",
            severity=Severity.HIGH,
            title=f"port {port} is bound but nobody listens on it",
            evidence=(
                f"connect to {target}: ECONNREFUSED",
                *(
                    f"bound, not listening: {_where(e)}, held by {_owner_words(e.owners)}"
                    for e in bound
                ),
            ),
            fix=(
                "the holder called bind() without listen(): stop it or let it listen",
                "portside who " + str(port),
            ),
        )
    udp = [e for e in facts.sockets if e.transport is Transport.UDP and _here(e)]
    evidence = [
        f"connect to {target}: ECONNREFUSED after {attempt.elapsed_ms:.1f} ms",
        f"no TCP socket listens on port {port}",
    ]
    if udp:
        evidence.append(
            f"but UDP {_where(udp[0])} is bound by {_owner_words(udp[0].owners)}: a UDP-only service?"
        )
    return Finding(
        code="FM-01",
        severity=Severity.HIGH,
        title=f"nothing is listening on port {port}",
        evidence=tuple(evidence),
        fix=(
            "start the service and check its log for a bind error",
            "check the port in its configuration",
        ),
    )


def _timeout(facts: Facts, attempt: Attempt, port: int) -> Finding:
    target = _endpoint(attempt.ip, port)
    matching = [
        e
        for e in _tcp_listeners(facts)
        if covers(e, attempt.ip, bindv6only=facts.loopback.bindv6only)
    ]
    for listener in matching:
        stopped = _stopped(listener.owners)
        if stopped is not None:
            return _stopped_finding(stopped, listener, target)
        if (
            listener.recv_queue is not None
            and listener.send_queue is not None
            and listener.recv_queue >= listener.send_queue
        ):
            return Finding(
                code="FM-17",
                severity=Severity.HIGH,
                title=f"the accept queue of {_where(listener)} is full: new connections are dropped",
                evidence=(
                    f"connect to {target}: no answer within {attempt.elapsed_ms:.0f} ms",
                    f"accept queue {listener.recv_queue} of backlog {listener.send_queue}",
                    f"held by {_owner_words(listener.owners)}",
                ),
                fix=(
                    "the server does not call accept(): check that it is not blocked or hung",
                    "raise its listen backlog (and net.core.somaxconn)",
                ),
            )
    if matching:
        return Finding(
            code="FM-26",
            severity=Severity.HIGH,
            title=f"a firewall drops connections to {target}",
            evidence=(
                f"connect to {target}: no answer within {attempt.elapsed_ms:.0f} ms",
                f"{_where(matching[0])} listens and its accept queue has room",
                *_firewall_evidence(facts, port),
            ),
            fix=(
                "find the rule: sudo nft -a list ruleset; sudo iptables-save",
                f"allow it: sudo nft insert rule inet filter input iif lo tcp dport {port} accept",
            ),
        )
    return Finding(
        code="FM-26",
        severity=Severity.HIGH,
        title=f"no answer from {target}: packets are dropped",
        evidence=(
            f"connect to {target}: no answer within {attempt.elapsed_ms:.0f} ms",
            f"no local socket listens on port {port}",
            *_firewall_evidence(facts, port),
        ),
        fix=(
            "loopback without a firewall always answers: look for a DROP rule (sudo nft -a list ruleset)",
        ),
    )


def _stopped_finding(owner: Owner, listener: SocketEntry, target: str) -> Finding:
    return Finding(
        code="FM-18",
        severity=Severity.HIGH,
        title=f"the server holding {_where(listener)} is stopped",
        evidence=(
            f"{owner.process.name}[{owner.process.pid}] is in state {owner.process.state.value}",
            f"connections to {target} are accepted by the kernel but never served"
            + (
                f" (accept queue {listener.recv_queue}/{listener.send_queue})"
                if listener.recv_queue is not None
                else ""
            ),
        ),
        fix=(
            f"kill -CONT {owner.process.pid}",
            "or `fg` in its shell; detach a debugger if one is attached",
        ),
    )


def _connected(facts: Facts, attempt: Attempt, port: int) -> Finding | None:
    target = _endpoint(attempt.ip, port)
    scheme = facts.target.scheme if facts.target else None
    matching = [
        e
        for e in _tcp_listeners(facts)
        if covers(e, attempt.ip, bindv6only=facts.loopback.bindv6only)
    ]
    owners = [o for e in matching for o in e.owners]
    for listener in matching:
        stopped = _stopped(listener.owners)
        if stopped is not None:
            return _stopped_finding(stopped, listener, target)
    expected = _EXPECTED_PROTOCOL.get(scheme or "")
    forwarded = next(
        (
            (o, o.identity)
            for o in owners
            if o.identity is not None and o.identity.kind in _FORWARDER_CODES
        ),
        None,
    )
    silent = attempt.after is AfterConnect.SILENT and scheme in _CLIENT_FIRST
    if (
        attempt.protocol is None
        and forwarded is not None
        and (attempt.after is AfterConnect.CLOSED or silent)
    ):
        return _forwarder_finding(*forwarded, attempt, target)
    if attempt.after is AfterConnect.CLOSED and attempt.protocol is None:
        return Finding(
            code="FM-25",
            severity=Severity.HIGH,
            title=f"{target} accepts connections and closes them at once",
            evidence=(
                "connected, then EOF/RST with no data (tcpwrapped)",
                f"held by {_owner_words(owners)}"
                if matching
                else "no local listener matches (NAT or another namespace?)",
            ),
            fix=(
                "a forwarder whose backend is down, or a server refusing this client: read its log",
            ),
        )
    if expected is not None and attempt.protocol is not None and attempt.protocol != expected:
        return _protocol_mismatch(scheme or "", expected, attempt, target)
    if attempt.after is AfterConnect.SILENT:
        # Whatever the scheme: a listener held only by a non-server never answers.
        odd = [o for o in owners if o.process.name in _NOT_SERVERS]
        if odd and len(odd) == len(owners):
            return _orphan_finding(odd, target)
    if expected is not None and silent:
        queued = next((e.recv_queue for e in matching if e.recv_queue), 0)
        odd = [o for o in owners if o.process.name in _NOT_SERVERS]
        if odd:
            return _orphan_finding(odd, target)
        return Finding(
            code="FM-19",
            severity=Severity.HIGH,
            title=f"{target} accepts connections but does not answer",
            evidence=(
                f"connected in {attempt.elapsed_ms:.1f} ms; no reply to our request",
                f"held by {_owner_words(owners)}",
                *((f"{queued} connections wait in its accept queue",) if queued else ()),
            ),
            fix=("the server is hung or busy: py-spy dump / gdb -p PID / jstack; restart it",),
        )
    return None


def _forwarder_finding(
    forwarder: Owner, identity: Identity, attempt: Attempt, target: str
) -> Finding:
    """A forwarder (ssh -L, docker-proxy, QEMU hostfwd, …) accepted, but its far end is dead."""
    kind = identity.kind or ""
    far_end = identity.target or "its backend"
    seen = (
        "then the connection closed with no data"
        if attempt.after is AfterConnect.CLOSED
        else "then no byte came back to our request"
    )
    where = {
        "ssh-local-forward": f"{far_end} is resolved and connected to by the SSH server, not here",
        "qemu-hostfwd": f"{far_end} is inside the guest: a stopped guest or a guest service bound to its own loopback does not answer",
        "docker-proxy": f"{far_end} is inside the container",
    }.get(kind)
    return Finding(
        code=_FORWARDER_CODES.get(kind, "FM-25"),
        severity=Severity.HIGH,
        title=f"{target} is forwarded by {identity.label}, and its far end {far_end} is dead",
        evidence=(
            f"connect to {target} succeeded in {attempt.elapsed_ms:.1f} ms, {seen}",
            f"the listener belongs to {_owner_words([forwarder])}",
            *((where,) if where else ()),
        ),
        fix=_forwarder_fix(kind, identity.target),
    )


def _orphan_finding(odd: Sequence[Owner], target: str) -> Finding:
    return Finding(
        code="FM-20",
        severity=Severity.HIGH,
        title=f"{target} is held by a process that is not a server",
        evidence=(
            f"held by {_owner_words(odd)}: it inherited the listening socket",
            "the real server probably exited and left the socket with a child",
        ),
        fix=(
            *(f"kill {o.process.pid}" for o in odd),
            "close fds on exec in the launcher (FD_CLOEXEC)",
        ),
    )


def _protocol_mismatch(scheme: str, expected: str, attempt: Attempt, target: str) -> Finding:
    got = attempt.protocol or "?"
    if {expected, got} == {"http", "tls"}:
        right = "https://" if got == "tls" else "http://"
        return Finding(
            code="FM-22",
            severity=Severity.HIGH,
            title=f"{target} speaks {'TLS' if got == 'tls' else 'plain HTTP'}, not {scheme}://",
            evidence=(
                f"asked with {scheme}://; the server answered as {got}: {attempt.detail or ''}".rstrip(
                    ": "
                ),
            ),
            fix=(f"use {right}{target}/",),
        )
    if got == "h2c" and expected == "http":
        return Finding(
            code="FM-23",
            severity=Severity.HIGH,
            title=f"{target} speaks HTTP/2 cleartext (prior knowledge) only",
            evidence=("the server sent an HTTP/2 SETTINGS frame",),
            fix=(
                f"curl --http2-prior-knowledge http://{target}/",
                "or enable HTTP/1.1 on the server",
            ),
        )
    return Finding(
        code="FM-24",
        severity=Severity.HIGH,
        title=f"{target} speaks {got}, not {expected}",
        evidence=(f"identified {got}: {attempt.detail or 'no detail'}",),
        fix=(
            "another service owns this port: point the client at the right port, or move one of them",
        ),
    )


def _forwarder_fix(kind: str, target: str | None) -> tuple[str, ...]:
    where = target or "the backend"
    return {
        "docker-proxy": (
            f"check the container is running and its app listens on 0.0.0.0 inside it ({where})",
        ),
        "ssh-local-forward": (
            f"the remote side cannot reach {where}: start it, or fix the -L target",
            "use -o ExitOnForwardFailure=yes",
        ),
        "qemu-hostfwd": (
            f"start the guest service ({where}) and make it listen on the guest's NIC address or 0.0.0.0",
        ),
        "kubectl-port-forward": (
            "re-run kubectl port-forward against a service or deployment; check the pod port",
        ),
        "wsl-relay": ("bind 0.0.0.0 or 127.0.0.1 in WSL; `wsl --shutdown` if the relay is stuck",),
    }.get(kind, (f"start or fix the backend {where}",))


def _address_unavailable(facts: Facts, attempt: Attempt, port: int) -> Finding:
    lo = facts.loopback
    if _is_v6(attempt.ip) and (lo.ipv6_disabled or lo.has_ipv6 is False):
        return Finding(
            code="FM-08",
            severity=Severity.HIGH,
            title="IPv6 is disabled on the loopback interface: ::1 does not exist",
            evidence=(
                f"connect to {_endpoint(attempt.ip, port)}: EADDRNOTAVAIL",
                f"net.ipv6.conf.lo.disable_ipv6 = {int(bool(lo.ipv6_disabled))}",
            ),
            fix=("sudo sysctl -w net.ipv6.conf.lo.disable_ipv6=0", "or connect to 127.0.0.1"),
        )
    if lo.lo_up is False:
        return _loopback_down(attempt, port)
    return Finding(
        code="FM-14",
        severity=Severity.HIGH,
        title="no local address or source port is available",
        evidence=(f"connect to {_endpoint(attempt.ip, port)}: EADDRNOTAVAIL",),
        fix=(
            "the ephemeral ports may be exhausted: reuse connections, or widen net.ipv4.ip_local_port_range",
        ),
    )


def _loopback_down(attempt: Attempt, port: int) -> Finding:
    return Finding(
        code="FM-28",
        severity=Severity.CRITICAL,
        title="the loopback interface is down",
        evidence=(
            f"connect to {_endpoint(attempt.ip, port)}: {attempt.errno_name}",
            "lo is not up",
        ),
        fix=("sudo ip link set lo up",),
    )


def explain_attempt(facts: Facts, attempt: Attempt, port: int) -> Finding | None:
    """Why one attempt failed, or None when it went as the target implies."""
    lo = facts.loopback
    if attempt.outcome is Outcome.CONNECTED:
        return _connected(facts, attempt, port)
    if attempt.outcome is Outcome.REFUSED:
        return _refused(facts, attempt, port)
    if attempt.outcome is Outcome.TIMEOUT:
        return _timeout(facts, attempt, port)
    if attempt.outcome is Outcome.NET_UNREACHABLE:
        if lo.lo_up is False:
            return _loopback_down(attempt, port)
        if not ipaddress.ip_address(attempt.ip.split("%")[0]).is_loopback:
            return Finding(
                code="FM-28",
                severity=Severity.HIGH,
                title=f"no route to {attempt.ip}",
                evidence=(
                    f"connect to {_endpoint(attempt.ip, port)}: ENETUNREACH",
                    "this network namespace has no route to that address",
                ),
                fix=("ip route get " + attempt.ip, "check the address, or the network setup"),
            )
        return Finding(
            code="FM-28",
            severity=Severity.CRITICAL,
            title="no route to the loopback network",
            evidence=(
                f"connect to {_endpoint(attempt.ip, port)}: ENETUNREACH",
                "the local 127.0.0.0/8 route or address is missing",
            ),
            fix=("sudo ip addr add 127.0.0.1/8 dev lo", "sudo ip link set lo up"),
        )
    if attempt.outcome is Outcome.ADDRESS_UNAVAILABLE:
        return _address_unavailable(facts, attempt, port)
    if attempt.outcome in (Outcome.HOST_UNREACHABLE, Outcome.PERMISSION):
        rejecting = any(r.verdict is RuleVerdict.REJECT for r in facts.firewall.rules)
        if (
            attempt.outcome is Outcome.PERMISSION
            and not rejecting
            and attempt.errno_name == "EPERM"
        ):
            return Finding(
                code="FM-27",
                severity=Severity.HIGH,
                title=f"the kernel refused the connect to {_endpoint(attempt.ip, port)} (EPERM)",
                evidence=("not a firewall reject: an LSM, cgroup-BPF or seccomp policy",),
                fix=(
                    "check the unit's SocketBindDeny/IPAddressDeny, seccomp and SELinux/AppArmor denials",
                ),
            )
        return Finding(
            code="FM-26",
            severity=Severity.HIGH,
            title=f"a firewall rejects {_endpoint(attempt.ip, port)} with an ICMP error",
            evidence=(
                f"connect: {attempt.errno_name} after {attempt.elapsed_ms:.0f} ms",
                *_firewall_evidence(facts, port),
            ),
            fix=(
                "find the reject rule: sudo nft -a list ruleset; sudo iptables-save; sudo ip6tables-save",
            ),
        )
    return Finding(
        code="FM-27",
        severity=Severity.HIGH,
        title=f"connect to {_endpoint(attempt.ip, port)} failed: {attempt.errno_name}",
        evidence=(f"{attempt.errno_name} after {attempt.elapsed_ms:.0f} ms",),
        fix=("an unusual error: check local policy (seccomp, LSM) and the client's environment",),
    )


def _socket_activator(name: str, cmdline: Sequence[str]) -> str | None:
    """The socket activator a process is (see :data:`_SOCKET_ACTIVATORS`), or None."""
    if name in _SOCKET_ACTIVATORS:
        return name
    program = cmdline[0].rsplit("/", 1)[-1] if cmdline else ""
    return program if program in _SOCKET_ACTIVATORS else None


def _firewall_evidence(facts: Facts, port: int) -> tuple[str, ...]:
    firewall = facts.firewall
    if not firewall.looked:
        return ()
    if firewall.error:
        return (f"firewall rules could not be read: {firewall.error}",)
    relevant = [
        r
        for r in firewall.rules
        if r.verdict in (RuleVerdict.DROP, RuleVerdict.REJECT) and (not r.ports or port in r.ports)
    ]
    lines = [f"{r.source} {r.family} {r.chain}: {r.text}" for r in relevant[:5]]
    lines.extend(f"chain {c} has policy drop" for c in firewall.policy_drop_chains)
    return tuple(lines) or ("no drop/reject rule for this port was found in nftables or iptables",)


# --- secondary findings -------------------------------------------------------------------


def _proxy_finding(facts: Facts) -> Finding | None:
    env = facts.proxy_env
    proxies = {
        k: v
        for k, v in env.items()
        if k.lower() in ("http_proxy", "https_proxy", "all_proxy") and v
    }
    if not proxies:
        return None
    no_proxy = ",".join(v for k, v in env.items() if k.lower() == "no_proxy")
    exempt = {part.strip().lower() for part in no_proxy.split(",") if part.strip()}
    host = facts.target.host if facts.target and facts.target.host else "localhost"
    if facts.target is not None and facts.target.scheme not in (None, "http", "https", "ws", "wss"):
        return None
    if host in exempt or "*" in exempt:
        missing = [
            name
            for name in ("localhost", "127.0.0.1", "::1")
            if name not in exempt and "*" not in exempt
        ]
        if not missing:
            return None
    return Finding(
        code="FM-35",
        severity=Severity.MEDIUM,
        title=f"proxy variables may send requests for {host} to a proxy",
        evidence=(
            *(f"{k}={v}" for k, v in sorted(proxies.items())),
            f"no_proxy={no_proxy or '(unset)'}: matched as text, so localhost, 127.0.0.1 and ::1 must each be listed",
        ),
        fix=(
            "export no_proxy=localhost,127.0.0.1,::1 NO_PROXY=localhost,127.0.0.1,::1",
            "curl --noproxy '*' …",
        ),
    )


def _port_findings(facts: Facts, port: int, nothing_listens: bool) -> list[Finding]:
    found: list[Finding] = []
    kernel = facts.kernel
    scheme = facts.target.scheme if facts.target else None
    low_high = kernel.ephemeral_range
    if low_high and low_high[0] <= port <= low_high[1] and port not in kernel.reserved_ports:
        found.append(
            Finding(
                code="FM-14",
                severity=Severity.LOW,
                title=f"port {port} is inside the ephemeral range {low_high[0]}-{low_high[1]}",
                evidence=(
                    "an outgoing connection may take it as its source port, and a server then fails to bind it",
                ),
                fix=(
                    f"use a port below {low_high[0]} (`portside pick`)",
                    f"or: sudo sysctl -w net.ipv4.ip_local_reserved_ports={port}",
                ),
            )
        )
    start = kernel.unprivileged_port_start
    if nothing_listens and start is not None and 0 < port < start:
        found.append(
            Finding(
                code="FM-13",
                severity=Severity.LOW,
                title=f"port {port} is privileged (below {start})",
                evidence=(
                    "a server without root or CAP_NET_BIND_SERVICE fails to bind it with EACCES",
                ),
                fix=(
                    "use a port >= 1024 behind a proxy",
                    "or: sudo setcap cap_net_bind_service=+ep /path/to/server",
                ),
            )
        )
    if port in BROWSER_BAD_PORTS and scheme in ("http", "https", "ws", "wss"):
        found.append(
            Finding(
                code="FM-15",
                severity=Severity.MEDIUM,
                title=f"browsers refuse port {port} (ERR_UNSAFE_PORT)",
                evidence=(
                    "it is on the WHATWG Fetch bad-port list; curl works, browsers and Node fetch do not",
                ),
                fix=("move the server to another port",),
            )
        )
    return found


def _wsl_forwarded(entry: SocketEntry) -> bool:
    """Whether WSL's NAT-mode relay forwards this listener to Windows (FM-31)."""
    if _is_v6(entry.local.ip):
        return False  # ::1, [::] and dual-stack sockets: microsoft/WSL#4851
    return entry.local.ip.removeprefix("::ffff:") == "127.0.0.1" or entry.exposure is Exposure.ALL


def _socket_findings(facts: Facts, port: int) -> list[Finding]:
    found: list[Finding] = []
    here = _tcp_listeners(facts)
    by_address: dict[str, list[SocketEntry]] = {}
    for entry in here:
        by_address.setdefault(entry.local.ip, []).append(entry)
    groups = {ip: entries for ip, entries in by_address.items() if len(entries) > 1}
    for ip, entries in groups.items():
        found.append(
            Finding(
                code="FM-12",
                severity=Severity.MEDIUM,
                title=f"{len(entries)} sockets listen on {_endpoint(ip, port)} (an SO_REUSEPORT group)",
                evidence=tuple(
                    f"member held by {_owner_words(e.owners)}, accept queue {e.recv_queue}"
                    for e in entries
                ),
                fix=("connections are spread over the members: stop a stale or stuck member",),
            )
        )
    pids = {o.process.pid for e in here for o in e.owners}
    if len(by_address) > 1 and len(pids) > 1:
        found.append(
            Finding(
                code="FM-06",
                severity=Severity.MEDIUM,
                title=f"different servers listen on port {port}",
                evidence=tuple(f"{_where(e)}: {_owner_words(e.owners)}" for e in here),
                fix=(
                    "which one answers depends on the address family the client picks: stop the stale one",
                ),
            )
        )
    if facts.is_wsl and here and not any(_wsl_forwarded(e) for e in here):
        found.append(
            Finding(
                code="FM-31",
                severity=Severity.MEDIUM,
                title=f"Windows cannot reach port {port} through WSL's localhost relay",
                evidence=(
                    *(f"listening: {_where(e)}" for e in here),
                    "in WSL's NAT mode only IPv4 binds on 127.0.0.1 or 0.0.0.0 are forwarded to Windows",
                ),
                fix=(
                    "bind 0.0.0.0 or 127.0.0.1 in WSL, and use 127.0.0.1 from Windows",
                    "or networkingMode=mirrored in .wslconfig; `wsl --shutdown` if the relay is stuck",
                ),
            )
        )
    for entry in here:
        for owner in entry.owners:
            activator = _socket_activator(owner.process.name, owner.process.cmdline)
            if activator is not None:
                found.append(
                    Finding(
                        code="FM-21",
                        severity=Severity.INFO,
                        title=f"{_where(entry)} is socket-activated by {activator}",
                        evidence=("the service starts on the first connection",),
                        fix=("systemctl list-sockets; systemctl status UNIT; journalctl -u UNIT",),
                    )
                )
        if entry.exposure is Exposure.ALL:
            found.append(
                Finding(
                    code="FM-36",
                    severity=Severity.LOW,
                    title=f"{_where(entry)} listens on every interface",
                    evidence=(
                        f"held by {_owner_words(entry.owners)}",
                        "reachable from every network this machine is on, unless a firewall drops it",
                    ),
                    fix=(
                        "bind 127.0.0.1 (or ::1) if only this machine needs it; `portside audit` checks the firewall",
                    ),
                )
            )
    if not here:
        waiting = [e for e in facts.sockets if e.state is SocketState.TIME_WAIT and _here(e)]
        if waiting:
            found.append(
                Finding(
                    code="FM-11",
                    severity=Severity.LOW,
                    title=f"{len(waiting)} TIME_WAIT sockets still use port {port}",
                    evidence=(
                        "a restarted server fails to bind for up to 60 s unless it sets SO_REUSEADDR",
                    ),
                    fix=("set SO_REUSEADDR on the listening socket, or wait a minute",),
                )
            )
        busy = [
            e
            for e in facts.sockets
            if e.transport is Transport.TCP
            and e.state not in (SocketState.TIME_WAIT, SocketState.LISTEN, SocketState.BOUND)
            and _here(e)
        ]
        if busy:
            found.append(
                Finding(
                    code="FM-10",
                    severity=Severity.LOW,
                    title=f"{len(busy)} connections use port {port} as their local port",
                    evidence=tuple(
                        f"{e.state.value} {_where(e)} -> {_endpoint(e.remote.ip, e.remote.port) if e.remote else '?'}, {_owner_words(e.owners)}"
                        for e in busy[:3]
                    ),
                    fix=("a server binding this port gets EADDRINUSE while they exist",),
                )
            )
    return found


def _resolution_findings(facts: Facts, port: int | None) -> list[Finding]:
    resolution = facts.resolution
    if resolution is None:
        return []
    found: list[Finding] = []
    loopbackish = resolution.name == "localhost" or resolution.name.endswith(".localhost")
    if resolution.glibc_error:
        found.append(
            Finding(
                code="FM-07",
                severity=Severity.HIGH,
                title=f"{resolution.name} does not resolve for glibc programs (Python, Node, …)",
                evidence=(
                    f"getaddrinfo({resolution.name!r}): {resolution.glibc_error}",
                    f"/etc/hosts lines for it: {len(resolution.hosts_entries)}",
                    f"nsswitch hosts: {resolution.nsswitch_hosts or '?'}",
                    *(
                        ("curl and browsers resolve *.localhost themselves, so they still work",)
                        if loopbackish
                        else ()
                    ),
                ),
                fix=(
                    (
                        "add to /etc/hosts: 127.0.0.1 localhost and ::1 localhost ip6-localhost ip6-loopback",
                        "or use 127.0.0.1 directly",
                    )
                    if resolution.name == "localhost"
                    else (
                        f"add to /etc/hosts: 127.0.0.1 {resolution.name} and ::1 {resolution.name}",
                        "or add `myhostname` to the hosts: line of /etc/nsswitch.conf (nss-myhostname resolves *.localhost)",
                        "or use 127.0.0.1 directly",
                    )
                    if loopbackish
                    else ("check the name and your DNS", "or use the IP address")
                ),
            )
        )
        return found
    if loopbackish:
        outside = [
            ip for ip in resolution.glibc if not ipaddress.ip_address(ip.split("%")[0]).is_loopback
        ]
        if outside:
            found.append(
                Finding(
                    code="FM-07",
                    severity=Severity.HIGH,
                    title=f"{resolution.name} resolves to a non-loopback address",
                    evidence=(f"getaddrinfo order: {', '.join(resolution.glibc)}",),
                    fix=("fix /etc/hosts: localhost must map to 127.0.0.1 and ::1 only",),
                )
            )
    return found


def _family_trap(
    facts: Facts, attempts: Sequence[Attempt], failures: dict[int, Finding], port: int
) -> Finding:
    """Some resolved addresses work and some do not (FM-04 / FM-05)."""
    name = facts.target.host if facts.target and facts.target.host else "?"
    first = attempts[0]
    good = [a for a in attempts if id(a) not in failures]
    bad = [a for a in attempts if id(a) in failures]
    evidence = [
        f"{name} resolves (glibc order) to {', '.join(a.ip for a in attempts)}",
        *(f"{_endpoint(a.ip, port)}: {failures[id(a)].title}" for a in bad),
        *(f"{_endpoint(a.ip, port)}: {a.outcome.value}" for a in good),
    ]
    listeners = _tcp_listeners(facts)
    localhost_bound = (
        any("localhost" in " ".join(o.process.cmdline) for e in listeners for o in e.owners)
        and len({_is_v6(e.local.ip) for e in listeners}) == 1
    )
    code = "FM-05" if localhost_bound else "FM-04"
    first_fails = id(first) in failures
    title = (
        f"{name} resolves to {first.ip} first, which fails; clients that try only the first address (Node < 20, some tools) fail"
        if first_fails
        else f"{name}:{port} answers on {', '.join(a.ip for a in good)} only"
    )
    if code == "FM-05":
        evidence.append("the server bound 'localhost' and got one family only")
    literal = good[0].ip
    return Finding(
        code=code,
        severity=Severity.MEDIUM if first_fails else Severity.LOW,
        title=title,
        evidence=tuple(evidence),
        fix=(
            "make the server listen on both families ([::] dual-stack, or 127.0.0.1 and ::1)",
            f"or make the client use {_endpoint(literal, port)}",
            "Node: --dns-result-order=ipv4first or net.setDefaultAutoSelectFamily(true)",
        ),
    )


def _machine_findings(facts: Facts) -> list[Finding]:
    lo = facts.loopback
    found: list[Finding] = []
    if lo.lo_up is False:
        found.append(
            Finding(
                code="FM-28",
                severity=Severity.CRITICAL,
                title="the loopback interface is down",
                evidence=("lo is not up",),
                fix=("sudo ip link set lo up",),
            )
        )
    else:
        if lo.has_ipv4 is False or lo.local_route is False:
            found.append(
                Finding(
                    code="FM-28",
                    severity=Severity.CRITICAL,
                    title="127.0.0.1 is missing from the loopback interface",
                    evidence=(
                        f"127.0.0.1 on lo: {lo.has_ipv4}",
                        f"local 127.0.0.0/8 route: {lo.local_route}",
                    ),
                    fix=("sudo ip addr add 127.0.0.1/8 dev lo",),
                )
            )
        if lo.ipv6_disabled or lo.has_ipv6 is False:
            found.append(
                Finding(
                    code="FM-08",
                    severity=Severity.MEDIUM,
                    title="::1 is not available on the loopback interface",
                    evidence=(
                        f"net.ipv6.conf.lo.disable_ipv6 = {int(bool(lo.ipv6_disabled))}",
                        f"::1 on lo: {lo.has_ipv6}",
                    ),
                    fix=(
                        "sudo sysctl -w net.ipv6.conf.lo.disable_ipv6=0",
                        "or remove '::1 localhost' from /etc/hosts",
                    ),
                )
            )
    found.extend(_resolution_findings(facts, None))
    resolution = facts.resolution
    if resolution is not None and not resolution.glibc_error:
        if not resolution.hosts_entries:
            found.append(
                Finding(
                    code="FM-07",
                    severity=Severity.LOW,
                    title="/etc/hosts has no localhost line",
                    evidence=(
                        f"localhost resolves through nsswitch ({resolution.nsswitch_hosts or '?'}) to {', '.join(resolution.glibc)}",
                    ),
                    fix=("add: 127.0.0.1 localhost and ::1 localhost ip6-localhost ip6-loopback",),
                )
            )
        if resolution.glibc and _is_v6(resolution.glibc[0]):
            found.append(
                Finding(
                    code="FM-04",
                    severity=Severity.INFO,
                    title="localhost resolves to ::1 first",
                    evidence=(
                        f"getaddrinfo order: {', '.join(resolution.glibc)}",
                        *(f"gai.conf: {line}" for line in resolution.gai_precedence),
                    ),
                    fix=(
                        "servers should listen on both 127.0.0.1 and ::1 (Node >= 17 tries ::1 first)",
                    ),
                )
            )
    kernel = facts.kernel
    if kernel.ephemeral_range:
        low, high = kernel.ephemeral_range
        found.append(
            Finding(
                code="FM-14",
                severity=Severity.INFO,
                title=f"ephemeral ports are {low}-{high}",
                evidence=(f"{len(kernel.reserved_ports)} reserved ports",),
                fix=(f"give servers ports below {low} (`portside pick`)",),
            )
        )
    if kernel.unprivileged_port_start is not None:
        found.append(
            Finding(
                code="FM-13",
                severity=Severity.INFO,
                title=f"ports below {kernel.unprivileged_port_start} need root or CAP_NET_BIND_SERVICE",
                evidence=(
                    f"net.ipv4.ip_unprivileged_port_start = {kernel.unprivileged_port_start}",
                ),
            )
        )
    return found


def _rank(findings: Iterable[Finding]) -> list[Finding]:
    """Most severe first; a finding said once (the same code and title: e.g. the same
    cause seen on both families keeps the first one's evidence)."""
    unique: dict[tuple[str, str], Finding] = {}
    for finding in findings:
        unique.setdefault((finding.code, finding.title), finding)
    return sorted(unique.values(), key=lambda f: _SEVERITY_ORDER.index(f.severity))


_PROTOCOL_NAMES = {
    "http": "HTTP",
    "tls": "TLS",
    "redis": "Redis",
    "postgresql": "PostgreSQL",
    "ssh": "SSH",
    "h2c": "HTTP/2 cleartext",
    "mysql": "MySQL/MariaDB",
    "smtp-or-ftp": "SMTP or FTP",
    "imap": "IMAP",
    "pop3": "POP3",
}


def _forwarder_of(facts: Facts, ip: str) -> Identity | None:
    """The identity of a forwarder holding the listener that ``ip`` reaches, if any."""
    for entry in _tcp_listeners(facts):
        if covers(entry, ip, bindv6only=facts.loopback.bindv6only):
            for owner in entry.owners:
                if owner.identity is not None and owner.identity.kind in _FORWARDER_CODES:
                    return owner.identity
    return None


def _ok_verdict(facts: Facts, shown: str, good: Sequence[Attempt]) -> Finding:
    """Reachable: name what answered (the protocol identified, and its own words)."""
    first = good[0]
    name = _PROTOCOL_NAMES.get(first.protocol or "", first.protocol)
    if name and first.detail and name.lower() not in first.detail.lower():
        spoken = f": {name} ({first.detail})"
    elif first.detail or name:
        spoken = f": {first.detail or name}"
    else:
        spoken = ""
    families = ", ".join(f"{a.ip} ({a.elapsed_ms:.1f} ms)" for a in good)
    evidence = [f"connected: {families}"]
    if name:
        evidence.append(f"identified {name}" + (f": {first.detail}" if first.detail else ""))
    elif first.after is AfterConnect.SILENT:
        evidence.append(
            "no banner within the wait: a client-first protocol (the target names none)"
        )
        forwarder = _forwarder_of(facts, first.ip)
        if forwarder is not None:
            evidence.append(
                f"the listener is {forwarder.label}"
                + (f", forwarding to {forwarder.target}" if forwarder.target else "")
                + ": name the protocol (e.g. http://) to check that its far end answers"
            )
    return Finding(
        code="OK",
        severity=Severity.INFO,
        title=f"{shown} is reachable{spoken}",
        evidence=tuple(evidence),
    )


def diagnose(facts: Facts) -> Diagnosis:
    """The verdict and the secondary findings for ``facts``."""
    proxy = _proxy_finding(facts)
    target = facts.target
    if target is None or target.port is None:
        findings = _rank([*_machine_findings(facts), *((proxy,) if proxy else ())])
        serious = [f for f in findings if f.severity is not Severity.INFO]
        verdict = (
            serious[0]
            if serious
            else Finding(
                code="OK",
                severity=Severity.INFO,
                title="loopback, localhost and the port settings look healthy",
            )
        )
        return Diagnosis(
            target=None, verdict=verdict, findings=tuple(f for f in findings if f is not verdict)
        )

    port = target.port
    secondary: list[Finding] = []
    resolution_problems = _resolution_findings(facts, port)
    attempts = facts.attempts
    failures: dict[int, Finding] = {}
    for attempt in attempts:
        finding = explain_attempt(facts, attempt, port)
        if finding is not None and finding.code != "OK":
            failures[id(attempt)] = finding
    nothing_listens = not _tcp_listeners(facts)
    unresolved = facts.resolution is not None and facts.resolution.glibc_error is not None
    if unresolved and resolution_problems:
        # Most clients fail before they connect; what curl would reach is evidence.
        reached = [f"{_endpoint(a.ip, port)}: {a.outcome.value}" for a in attempts]
        verdict = resolution_problems[0]
        if reached:
            verdict = Finding(
                code=verdict.code,
                severity=verdict.severity,
                title=verdict.title,
                evidence=(
                    *verdict.evidence,
                    f"what curl and browsers would reach: {'; '.join(reached)}",
                ),
                fix=verdict.fix,
            )
        secondary.extend(failures.values())  # what a curl-like client would meet next
    elif not attempts:
        verdict = (
            resolution_problems[0]
            if resolution_problems
            else Finding(
                code="FM-07", severity=Severity.HIGH, title=f"{target.host} has no address to try"
            )
        )
    elif not failures:
        verdict = _ok_verdict(facts, target.display(), attempts)
    elif len(failures) < len(attempts) and target.host_kind is HostKind.NONE:
        # ``:PORT`` names no family: the port answers on this machine, on one of them.
        verdict = _ok_verdict(
            facts, target.display(), [a for a in attempts if id(a) not in failures]
        )
        secondary.extend(dataclasses.replace(f, severity=Severity.LOW) for f in failures.values())
    elif len(failures) < len(attempts) and target.host_kind is HostKind.NAME:
        verdict = _family_trap(facts, attempts, failures, port)
    elif resolution_problems and id(attempts[0]) in failures:
        # localhost mapped outside loopback: the mapping is the cause, the failure its evidence.
        first = resolution_problems[0]
        verdict = dataclasses.replace(
            first,
            evidence=(
                *first.evidence,
                *(
                    f"{_endpoint(a.ip, port)}: {failures[id(a)].title}"
                    for a in attempts
                    if id(a) in failures
                ),
            ),
        )
        secondary.extend(failures.values())
    else:
        first_failed = next(a for a in attempts if id(a) in failures)
        verdict = failures[id(first_failed)]
        secondary.extend(f for f in failures.values() if f.code != verdict.code)
    secondary.extend(
        p for p in resolution_problems if (p.code, p.title) != (verdict.code, verdict.title)
    )
    secondary.extend(_port_findings(facts, port, nothing_listens))
    secondary.extend(_socket_findings(facts, port))
    if proxy:
        secondary.append(proxy)
    findings = [f for f in _rank(secondary) if (f.code, f.title) != (verdict.code, verdict.title)]
    return Diagnosis(target=target.text, verdict=verdict, findings=tuple(findings))
