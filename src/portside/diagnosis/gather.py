"""The I/O shell of ``doctor``: observe resolver, loopback, sockets, probes, firewall.

Each function returns facts; none concludes anything. Every wait is bounded by the
deadline the caller passes.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
import time
from collections.abc import Mapping, Sequence

from portside.addresses import HostKind, Target
from portside.diagnosis.facts import (
    AfterConnect,
    Attempt,
    FirewallFacts,
    FirewallRule,
    LoopbackFacts,
    Outcome,
    Resolution,
    RuleVerdict,
)
from portside.diagnosis.resolver_files import gai_precedence, hosts_for, nsswitch_hosts, parse_hosts

_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
_OUTCOMES = {
    errno.ECONNREFUSED: Outcome.REFUSED,
    errno.ETIMEDOUT: Outcome.TIMEOUT,
    errno.ENETUNREACH: Outcome.NET_UNREACHABLE,
    errno.EHOSTUNREACH: Outcome.HOST_UNREACHABLE,
    errno.EADDRNOTAVAIL: Outcome.ADDRESS_UNAVAILABLE,
    errno.EACCES: Outcome.PERMISSION,
    errno.EPERM: Outcome.PERMISSION,
}
_SIOCGIFFLAGS = 0x8913
_SIOCGIFADDR = 0x8915
_IFF_UP = 0x1


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def proxy_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The proxy variables of the environment, both cases."""
    source = os.environ if environ is None else environ
    return {k: v for k, v in source.items() if k.lower() in _PROXY_VARIABLES}


def is_wsl() -> bool:
    release = (_read("/proc/sys/kernel/osrelease") or "").lower()
    return "microsoft" in release or "wsl" in release or "WSL_DISTRO_NAME" in os.environ


def _getaddrinfo(name: str, port: int | None, timeout: float) -> tuple[list[str], str | None]:
    """glibc's answer for ``name`` in its order, or the error; a resolver that hangs (a
    DNS server that does not answer) is given up on after ``timeout`` seconds."""
    import threading

    answer: list[tuple[list[str], str | None]] = []

    def ask() -> None:
        order: list[str] = []
        try:
            for info in socket.getaddrinfo(
                name, port or None, socket.AF_UNSPEC, socket.SOCK_STREAM
            ):
                ip = str(info[4][0])
                if ip not in order:
                    order.append(ip)
        except socket.gaierror as exc:
            answer.append(([], f"{exc.strerror} (EAI {exc.errno})"))
            return
        answer.append((order, None))

    # Even *.localhost goes to DNS when neither /etc/hosts nor nss-myhostname knows it.
    worker = threading.Thread(target=ask, name="portside-resolve", daemon=True)
    worker.start()
    worker.join(max(timeout, 0.05))
    if not answer:
        return [], f"no answer from the resolver within {timeout:.1f} s (EAI_AGAIN-like: DNS?)"
    return answer[0]


def resolve(name: str, port: int | None, timeout: float = 5.0) -> Resolution:
    """How glibc orders ``name``'s addresses, and what the resolver files say about it."""
    order, error = _getaddrinfo(name, port, timeout)
    builtin: tuple[str, ...] = ()
    if name == "localhost" or name.endswith(".localhost"):
        builtin = ("::1", "127.0.0.1")
    hosts = parse_hosts(_read("/etc/hosts") or "")
    return Resolution(
        name=name,
        glibc=tuple(order),
        glibc_error=error,
        builtin_loopback=builtin,
        hosts_entries=hosts_for(hosts, name),
        nsswitch_hosts=nsswitch_hosts(_read("/etc/nsswitch.conf") or ""),
        gai_precedence=gai_precedence(_read("/etc/gai.conf") or ""),
    )


def _ioctl_flags(name: str) -> int | None:
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            result = fcntl.ioctl(
                probe.fileno(), _SIOCGIFFLAGS, struct.pack("16sH14x", name.encode(), 0)
            )
        except OSError:
            return None
    return int(struct.unpack_from("16sH", result)[1])


def _ioctl_ipv4(name: str) -> str | None:
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            result = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, struct.pack("16s16x", name.encode()))
        except OSError:
            return None
    return socket.inet_ntoa(result[20:24])


def local_route() -> bool | None:
    import subprocess  # only the machine check and an unreachable loopback need it

    try:
        done = subprocess.run(
            ["ip", "-4", "route", "show", "table", "local", "type", "local", "dev", "lo"],
            capture_output=True,
            text=True,
            timeout=2,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return any(
        line.split()[:2] in (["local", "127.0.0.0/8"], ["127.0.0.0/8"])
        for line in done.stdout.splitlines()
    )


def loopback(*, with_route: bool) -> LoopbackFacts:
    """The state of ``lo`` in this network namespace (ioctl, not /sys: see FM-28)."""
    if sys.platform != "linux":
        return LoopbackFacts(
            lo_up=None,
            has_ipv4=None,
            has_ipv6=None,
            ipv6_disabled=None,
            local_route=None,
            bindv6only=None,
        )
    flags = _ioctl_flags("lo")
    ipv4 = _ioctl_ipv4("lo")
    inet6 = _read("/proc/net/if_inet6")
    has_ipv6 = (
        None
        if inet6 is None
        else any(
            line.split()[0] == "0" * 31 + "1" and line.split()[-1] == "lo"
            for line in inet6.splitlines()
            if line.strip()
        )
    )
    disabled = _read("/proc/sys/net/ipv6/conf/lo/disable_ipv6")
    v6only = _read("/proc/sys/net/ipv6/bindv6only")
    return LoopbackFacts(
        lo_up=None if flags is None else bool(flags & _IFF_UP),
        has_ipv4=None if flags is None else (ipv4 is not None and ipv4.startswith("127.")),
        has_ipv6=has_ipv6,
        ipv6_disabled=None if disabled is None else disabled.strip() == "1",
        local_route=local_route() if with_route else None,
        bindv6only=None if v6only is None else v6only.strip() == "1",
    )


def addresses_to_try(target: Target, resolution: Resolution | None) -> list[str]:
    """The addresses a client would try, in glibc order (``:PORT`` means 127.0.0.1 and ::1)."""
    if target.host_kind is HostKind.IP and target.host:
        return [target.host]
    if target.host_kind is HostKind.NONE:
        return ["127.0.0.1", "::1"]
    if resolution is None:
        return []
    if resolution.glibc:
        return list(resolution.glibc)
    return list(resolution.builtin_loopback)


def connect(
    ip: str, port: int, timeout: float
) -> tuple[Outcome, str | None, float, socket.socket | None]:
    """One TCP connect, timed; the socket is returned when connected."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(max(timeout, 0.001))
    started = time.perf_counter()
    try:
        sock.connect((ip, port))
    except TimeoutError:
        sock.close()
        return Outcome.TIMEOUT, "ETIMEDOUT", (time.perf_counter() - started) * 1000, None
    except OSError as exc:
        sock.close()
        number = exc.errno or 0
        return (
            _OUTCOMES.get(number, Outcome.ERROR),
            errno.errorcode.get(number, str(number)),
            (time.perf_counter() - started) * 1000,
            None,
        )
    elapsed = (time.perf_counter() - started) * 1000
    if sock.getsockname()[1] == port and sock.getpeername()[0] == sock.getsockname()[0]:
        sock.close()  # a TCP self-connection, not a server
        return Outcome.REFUSED, "ECONNREFUSED", elapsed, None
    return Outcome.CONNECTED, None, elapsed, sock


def converse(
    sock: socket.socket, target: Target, ip: str, timeout: float
) -> tuple[AfterConnect, str | None, str | None, int | None]:
    """Speak what the target implies; returns (after, protocol, detail, http status)."""
    from portside.diagnosis.conversation import talk

    return talk(sock, target, ip, timeout)


#: Servers that log an attack when they receive HTTP: speak their own protocol to them.
_SENSITIVE_OWNERS = {"redis-server": "redis", "postgres": "postgres", "postmaster": "postgres"}


def sensitive_servers_running() -> bool:
    """Whether any process of this machine is a server that must not receive HTTP
    (``/proc/PID/comm``: one small read a process, far cheaper than the fd tables).
    True when it cannot tell (not Linux, no /proc)."""
    try:
        names = os.listdir("/proc")  # noqa: PTH208 -- hundreds of names: the str API
    except OSError:
        return True
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/comm", "rb") as handle:
                comm = handle.read().rstrip(b"\n").decode("utf-8", "replace")
        except OSError:
            continue  # ended meanwhile
        if comm in _SENSITIVE_OWNERS:
            return True
    return sys.platform != "linux"


def safe_scheme(target: Target, owner_names: Sequence[str]) -> Target:
    """The target to converse as: a known server that must not receive HTTP is asked in
    its own protocol (Redis logs "Possible SECURITY ATTACK" on an HTTP request)."""
    import dataclasses

    for name in owner_names:
        scheme = _SENSITIVE_OWNERS.get(name)
        if scheme is not None and target.scheme not in (scheme, "postgresql"):
            return dataclasses.replace(target, scheme=scheme)
    return target


def attempt(target: Target, ip: str, timeout: float, *, owner_names: Sequence[str] = ()) -> Attempt:
    """Connect to ``ip`` and, when connected, check the protocol the target implies."""
    if target.port is None:
        raise ValueError("attempt() needs a target with a port")
    outcome, errno_name, elapsed, sock = connect(ip, target.port, timeout)
    family = "ipv6" if ":" in ip and not ip.startswith("::ffff:") else "ipv4"
    if sock is None:
        return Attempt(
            ip=ip,
            family=family,
            outcome=outcome,
            errno_name=errno_name,
            elapsed_ms=round(elapsed, 2),
        )
    try:
        after, protocol, detail, status = converse(
            sock, safe_scheme(target, owner_names), ip, timeout
        )
    finally:
        sock.close()
    return Attempt(
        ip=ip,
        family=family,
        outcome=outcome,
        errno_name=None,
        elapsed_ms=round(elapsed, 2),
        after=after,
        protocol=protocol,
        detail=detail,
        http_status=status,
    )


def _run(argv: Sequence[str], timeout: float) -> str | None:
    import subprocess  # only a silence or a matching listener that refuses needs it

    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=max(timeout, 0.05), check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def firewall(port: int, timeout: float = 5.0) -> FirewallFacts:
    """Rules of nftables and iptables (both backends) that may apply to TCP ``port``;
    every tool run ends within ``timeout`` seconds in all."""
    from portside.firewall import Chain, parse_iptables_save, parse_nft_json, rules_for_port

    chains: list[Chain] = []
    errors: list[str] = []
    looked = False
    deadline = time.monotonic() + timeout
    nft = _run(["nft", "-j", "list", "ruleset"], timeout)
    if nft is not None:
        looked = True
        try:
            chains.extend(parse_nft_json(nft))
        except ValueError as exc:
            errors.append(str(exc))
    for tool, family in (("iptables-legacy-save", "ip"), ("ip6tables-legacy-save", "ip6")):
        text = _run([tool], deadline - time.monotonic())
        if text:
            looked = True
            chains.extend(
                parse_iptables_save(text, source=tool.removesuffix("-save"), family=family)
            )
    if not looked:
        return FirewallFacts(
            looked=False, error="neither nft nor iptables-legacy-save could be run"
        )
    rules = tuple(
        FirewallRule(
            source=rule.source,
            family=rule.family,
            chain=f"{chain.table}/{chain.name}",
            verdict=RuleVerdict(rule.verdict)
            if rule.verdict in ("accept", "drop", "reject")
            else RuleVerdict.OTHER,
            ports=tuple(sorted(rule.dport.ports)) if rule.dport else (),
            text=rule.text,
        )
        for chain, rule in rules_for_port(chains, port)
    )
    policy_drop = tuple(
        f"{c.source} {c.family} {c.table}/{c.name}"
        for c in chains
        if c.hook in ("input", "output") and c.policy == "drop"
    )
    return FirewallFacts(
        looked=True, rules=rules, policy_drop_chains=policy_drop, error="; ".join(errors) or None
    )
