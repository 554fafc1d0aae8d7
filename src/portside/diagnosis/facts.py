"""What ``doctor`` observed: plain records, gathered by the shell, read by the rules.

Pure: no I/O. Every fact is what was seen, never a conclusion; the rules conclude.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import TYPE_CHECKING

from portside.models import methods_compiled_on_first_use

if TYPE_CHECKING:  # annotations only: importing them would cost every doctor run
    from collections.abc import Mapping

    from portside.addresses import Target
    from portside.models import SocketEntry
    from portside.ports import KernelPortSettings


class Outcome(enum.StrEnum):
    """How a TCP connect attempt ended."""

    CONNECTED = "connected"
    REFUSED = "refused"  # ECONNREFUSED: RST or ICMP port-unreachable
    TIMEOUT = "timeout"  # no answer within the budget: SYN dropped
    NET_UNREACHABLE = "net-unreachable"  # ENETUNREACH: lo down, no 127/8 route
    HOST_UNREACHABLE = "host-unreachable"  # EHOSTUNREACH: ICMP reject
    ADDRESS_UNAVAILABLE = "address-unavailable"  # EADDRNOTAVAIL: ::1 missing, ports exhausted
    PERMISSION = "permission"  # EACCES/EPERM: ICMP admin-prohibited, LSM, cgroup-BPF
    ERROR = "error"  # anything else (errno name in the attempt)


class AfterConnect(enum.StrEnum):
    """What the server did once connected (before or after our request)."""

    ANSWERED = "answered"  # sent bytes (a banner, or a reply to our request)
    SILENT = "silent"  # connected, but no byte arrived within the wait
    CLOSED = "closed"  # EOF or RST with no byte: "tcpwrapped"
    NOT_TRIED = "not-tried"


with methods_compiled_on_first_use():

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class Attempt:
        """One connect to one resolved address, and what followed."""

        ip: str
        family: str  # "ipv4" | "ipv6"
        outcome: Outcome
        errno_name: str | None
        elapsed_ms: float
        after: AfterConnect = AfterConnect.NOT_TRIED
        protocol: str | None = None  # identified protocol ("http", "tls", "redis", …)
        detail: str | None = None  # e.g. "HTTP/1.0 200 OK", "TLSv1.3 h2"
        http_status: int | None = None


with methods_compiled_on_first_use():

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class HostsEntry:
        ip: str
        names: tuple[str, ...]


with methods_compiled_on_first_use():

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class Resolution:
        """How each client family resolves the target's name (order matters: FM-04)."""

        name: str
        glibc: tuple[str, ...]  # getaddrinfo order: Python, Node >= 17 (verbatim), most C programs
        glibc_error: str | None
        builtin_loopback: tuple[str, ...]  # what curl >= 7.78 and browsers use for *.localhost
        hosts_entries: tuple[HostsEntry, ...]  # /etc/hosts lines naming it
        nsswitch_hosts: str | None
        gai_precedence: tuple[str, ...]


with methods_compiled_on_first_use():

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class LoopbackFacts:
        """The loopback interface of this network namespace; None = could not tell."""

        lo_up: bool | None
        has_ipv4: bool | None  # 127.0.0.1 configured
        has_ipv6: bool | None  # ::1 configured
        ipv6_disabled: bool | None  # net.ipv6.conf.lo.disable_ipv6
        local_route: bool | None  # "local 127.0.0.0/8 dev lo" in table local
        bindv6only: bool | None


class RuleVerdict(enum.StrEnum):
    ACCEPT = "accept"
    DROP = "drop"
    REJECT = "reject"
    OTHER = "other"


with methods_compiled_on_first_use():

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class FirewallRule:
        """A rule that may apply to the port, in the tool's own words."""

        source: str  # "nft", "iptables", "ip6tables", "iptables-legacy", …
        family: str  # "ip", "ip6", "inet"
        chain: str
        verdict: RuleVerdict
        ports: tuple[int, ...]  # destination ports it matches; () = any
        text: str


with methods_compiled_on_first_use():

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class FirewallFacts:
        looked: bool  # False when not read (not needed, or no tool)
        rules: tuple[FirewallRule, ...] = ()
        policy_drop_chains: tuple[str, ...] = ()  # input/output chains whose policy is drop
        error: str | None = None


with methods_compiled_on_first_use():

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class Facts:
        """Everything the rules may use. ``target`` None: the machine check."""

        target: Target | None
        resolution: Resolution | None
        loopback: LoopbackFacts
        sockets: tuple[SocketEntry, ...]  # every socket on the port, every state and namespace
        attempts: tuple[Attempt, ...]
        firewall: FirewallFacts
        proxy_env: Mapping[str, str]
        kernel: KernelPortSettings
        is_wsl: bool = False
