"""The pure core of ``portside audit``: scope x interfaces x firewall, risk, config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from portside import audit_risk
from portside.audit import assess, read_firewall
from portside.audit_config import IgnoreRule, load_config, parse_config
from portside.audit_risk import Service, Verdict
from portside.errors import UsageError
from portside.firewall import parse_iptables_save
from portside.kernel import InterfaceAddress
from portside.models import (
    Endpoint,
    Family,
    Identity,
    Owner,
    OwnerStatus,
    ProcessInfo,
    ProcessState,
    Severity,
    SocketEntry,
    SocketState,
    Transport,
)

ADDRESSES = [
    InterfaceAddress(interface="lo", ip="127.0.0.1", prefix_length=8, is_up=True),
    InterfaceAddress(interface="lo", ip="::1", prefix_length=128, is_up=True),
    InterfaceAddress(interface="eth0", ip="192.168.1.5", prefix_length=24, is_up=True),
    InterfaceAddress(interface="eth0", ip="2001:db8::5", prefix_length=64, is_up=True),
    InterfaceAddress(interface="wg0", ip="10.8.0.2", prefix_length=24, is_up=False),
]


def _entry(
    ip: str, port: int, *, name: str = "app", cmdline: tuple[str, ...] = (), v6only: bool | None = None,
    identity: Identity | None = None,
) -> SocketEntry:  # fmt: skip
    from portside.addresses import exposure_of

    process = ProcessInfo(
        pid=42, ppid=1, name=name, cmdline=cmdline or (name,), user="u", uid=1000, cwd=None,
        start_time=None, state=ProcessState.SLEEPING,
    )  # fmt: skip
    return SocketEntry(
        transport=Transport.TCP,
        family=Family.IPV6 if ":" in ip else Family.IPV4,
        state=SocketState.LISTEN,
        local=Endpoint(ip=ip, port=port),
        remote=None,
        uid=1000,
        inode=1,
        exposure=exposure_of(ip),
        v6only=v6only,
        owner_status=OwnerStatus.FOUND,
        owners=(Owner(process=process, identity=identity),),
    )


def test_scopes_and_reachable_networks() -> None:
    report = assess(
        [
            _entry("0.0.0.0", 1000),
            _entry("::", 1001, v6only=False),
            _entry("::", 1002, v6only=True),
            _entry("127.0.0.1", 1003),
            _entry("192.168.1.5", 1004),
            _entry("10.8.0.2", 1005),
        ],
        ADDRESSES,
        [],
    )
    by_port = {f.port: f for f in report.findings}
    assert by_port[1000].reachable_from == ("eth0 192.168.1.0/24",)
    assert by_port[1001].reachable_from == ("eth0 192.168.1.0/24", "eth0 2001:db8::/64")
    assert by_port[1002].reachable_from == ("eth0 2001:db8::/64",)
    assert by_port[1003].verdict is Verdict.LOOPBACK_ONLY
    assert by_port[1003].firewall == "n/a"
    assert by_port[1004].scope == "address"
    assert by_port[1004].verdict is Verdict.EXPOSED
    assert by_port[1005].verdict is Verdict.LOOPBACK_ONLY, "wg0 is down"
    assert by_port[1000].firewall == "none"
    assert [f.port for f in report.findings][:3] == [1000, 1001, 1002]


def test_filtered_and_unknown_from_the_firewall() -> None:
    chains = parse_iptables_save(
        "*filter\n:INPUT DROP [0:0]\n-A INPUT -s 10.0.0.0/8 -p tcp --dport 6379 -j ACCEPT\nCOMMIT\n"
    )
    report = assess(
        [_entry("0.0.0.0", 5432, name="postgres"), _entry("0.0.0.0", 6379, name="redis-server")],
        ADDRESSES,
        chains,
    )
    by_port = {f.port: f for f in report.findings}
    assert by_port[5432].verdict is Verdict.FILTERED
    assert by_port[5432].severity is Severity.INFO
    assert by_port[5432].fix is None
    assert by_port[6379].verdict is Verdict.UNKNOWN
    assert by_port[6379].firewall == "unknown"
    assert by_port[6379].severity is Severity.MEDIUM, "one step below exposed (high)"
    assert by_port[6379].code == "maybe-exposed-database"


def test_redis_without_auth_is_critical_with_probe_facts() -> None:
    from portside.audit import ProbeFacts

    entry = _entry("0.0.0.0", 6379, name="redis-server")
    facts = {("0.0.0.0", 6379, "tcp"): ProbeFacts(protocol="redis", auth_required=False)}
    finding = assess([entry], ADDRESSES, [], probes=facts).findings[0]
    assert finding.severity is Severity.CRITICAL
    assert finding.code == "exposed-redis-noauth"
    assert "answers PING without AUTH" in finding.evidence
    assert finding.fix is not None
    assert "requirepass" in finding.fix


def test_json_has_the_documented_keys() -> None:
    from portside.models import json_document

    report = assess([_entry("0.0.0.0", 8000)], ADDRESSES, [])
    document = json.loads(json.dumps(json_document("audit", report)))
    first = document["findings"][0]
    keys = ["code", "severity", "address", "port", "proto", "process", "reachable_from", "firewall", "fix"]  # fmt: skip
    assert list(first)[: len(keys)] == keys
    assert first["process"] == "app[42]"


@pytest.mark.parametrize(
    ("name", "cmdline", "identity", "port", "service"),
    [
        ("dockerd", ("dockerd", "-H", "tcp://0.0.0.0:2375"), None, 2375, Service.DOCKER_API),
        ("node", ("node", "--inspect=0.0.0.0:9229", "a.js"),
         Identity(kind="node-inspector", label="Node inspector"), 9229, Service.DEBUGGER),
        ("python3", ("python3", "-m", "debugpy", "--listen", "0.0.0.0:5678"), None, 5678, Service.DEBUGGER),
        ("python3", ("python3", "/usr/bin/jupyter-lab"), None, 8888, Service.JUPYTER),
        ("postgres", ("postgres",), None, 5432, Service.DATABASE),
        ("grafana", ("grafana", "server"), None, 3000, Service.ADMIN_CONSOLE),
        ("node", ("node", "vite"), Identity(kind="dev-server", label="Vite"), 5173, Service.DEV_SERVER),
        ("sshd", ("sshd",), None, 22, Service.SSH),
        ("mystery", ("mystery",), None, 4444, Service.UNKNOWN),
        (None, (), None, 6379, Service.DATABASE),
    ],
)  # fmt: skip
def test_classify(
    name: str | None,
    cmdline: tuple[str, ...],
    identity: Identity | None,
    port: int,
    service: Service,
) -> None:
    assert audit_risk.classify(name, cmdline, identity, port=port).service is service


def test_severity_ladder() -> None:
    guess = audit_risk.ServiceGuess(service=Service.DEBUGGER, label="x")
    assert (
        audit_risk.severity(guess, Verdict.EXPOSED, answers_without_auth=False) is Severity.CRITICAL
    )
    assert audit_risk.severity(guess, Verdict.UNKNOWN, answers_without_auth=False) is Severity.HIGH
    assert audit_risk.severity(guess, Verdict.FILTERED, answers_without_auth=False) is Severity.INFO
    assert audit_risk.redis_auth(b"+PONG\r\n") is False
    assert audit_risk.redis_auth(b"-NOAUTH Authentication required.\r\n") is True
    assert audit_risk.redis_auth(b"HTTP/1.1 400") is None


def test_ignore_rules(tmp_path: Path) -> None:
    text = '[[ignore]]\nport = 8000\nreason = "demo"\n\n[[ignore]]\nprocess = "sshd"\n'
    rules = parse_config(text)
    assert rules == (IgnoreRule(port=8000, reason="demo"), IgnoreRule(process="sshd"))
    report = assess(
        [_entry("0.0.0.0", 8000), _entry("0.0.0.0", 22, name="sshd"), _entry("0.0.0.0", 9000)],
        ADDRESSES,
        [],
        ignore=rules,
    )
    assert [f.port for f in report.findings] == [9000]
    assert sorted(f.port for f in report.ignored) == [22, 8000]
    path = tmp_path / "audit.toml"
    path.write_text(text)
    assert load_config(path) == rules


@pytest.mark.parametrize(
    "text",
    ["[[ignore]]\nport = 0\n", "[[ignore]]\nhost = 'x'\n", "[[ignore]]\nreason = 'all'\n", "x = ", "[other]\n"],
)  # fmt: skip
def test_bad_config_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError):
        parse_config(text)


def test_missing_config_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--config"):
        load_config(tmp_path / "nope.toml")


def test_read_firewall_prefers_iptables_save_for_iptables_nft_tables() -> None:
    nft = {
        "nftables": [
            {"chain": {"family": "ip", "table": "filter", "name": "INPUT", "type": "filter",
                       "hook": "input", "prio": 0, "policy": "drop"}},
            {"rule": {"family": "ip", "table": "filter", "chain": "INPUT",
                      "expr": [{"xt": {"type": "match", "name": "addrtype"}}, {"accept": None}]}},
            {"chain": {"family": "inet", "table": "mine", "name": "input", "type": "filter",
                       "hook": "input", "prio": 0, "policy": "accept"}},
        ]
    }  # fmt: skip
    outputs = {
        "iptables-nft-save": "*filter\n:INPUT DROP [0:0]\n-A INPUT -m addrtype --dst-type LOCAL -j ACCEPT\nCOMMIT\n",
        "nft": json.dumps(nft),
    }

    def run(argv: object) -> tuple[str | None, str | None]:
        assert isinstance(argv, list)
        return outputs.get(argv[0]), None

    rules = read_firewall(run)
    assert rules.sources == ("iptables-nft", "nft")
    assert {(c.source, c.table) for c in rules.chains} == {
        ("iptables-nft", "filter"),
        ("nft", "mine"),
    }


def test_unreadable_rules_make_every_reachable_verdict_unknown() -> None:
    report = assess(
        [_entry("0.0.0.0", 8000), _entry("127.0.0.1", 8001)],
        ADDRESSES,
        [],
        unreadable="the firewall rules could not be read (nft: Operation not permitted)",
    )
    by_port = {f.port: f for f in report.findings}
    assert by_port[8000].verdict is Verdict.UNKNOWN
    assert "could not be read" in by_port[8000].firewall_reason
    assert by_port[8001].verdict is Verdict.LOOPBACK_ONLY
