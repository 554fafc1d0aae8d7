"""``portside audit`` against what really happens: a "server" namespace joined by a veth
pair to a "LAN host" namespace, listeners on every kind of address, and real nftables,
iptables-legacy and ufw rules inside the server namespace. For every listener the LAN
host connects, and audit's verdict (run inside the server namespace) must agree: nothing
audit calls unreachable may be reachable, and everything it calls reachable answers.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration._components import free_port, temp_dir
from tests.integration.netns import PYTHON, Namespace, require_root

pytestmark = pytest.mark.root

SERVER_V4, LAN_V4 = "10.77.0.1", "10.77.0.2"
SERVER_V6, LAN_V6 = "fd77::1", "fd77::2"

#: Listeners in one process: prints {"name": port} once all listen, then waits on stdin.
LISTENERS = r"""
import json, socket, sys
specs = {
    "any4": ("0.0.0.0", socket.AF_INET, None),
    "dual": ("::", socket.AF_INET6, 0),
    "v6only": ("::", socket.AF_INET6, 1),
    "lo4": ("127.0.0.1", socket.AF_INET, None),
    "lo6": ("::1", socket.AF_INET6, 1),
    "addr4": (sys.argv[1], socket.AF_INET, None),
    "addr6": (sys.argv[2], socket.AF_INET6, 1),
}
held, ports = [], {}
for name, (host, family, v6only) in specs.items():
    s = socket.socket(family, socket.SOCK_STREAM)
    if v6only is not None:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
    s.bind((host, 0))
    s.listen(64)
    held.append(s)
    ports[name] = s.getsockname()[1]
print(json.dumps(ports), flush=True)
sys.stdin.read()
"""

#: Connects to every (ip, port) of argv[1] (JSON) at once; prints {"ip port": outcome}.
CONNECTS = r"""
import json, socket, sys, threading
targets = json.loads(sys.argv[1]); out = {}
def one(ip, port):
    try:
        socket.create_connection((ip, port), timeout=float(sys.argv[2])).close(); out[f"{ip} {port}"] = "ok"
    except ConnectionRefusedError:
        out[f"{ip} {port}"] = "refused"
    except OSError as exc:
        out[f"{ip} {port}"] = type(exc).__name__
threads = [threading.Thread(target=one, args=t) for t in targets]
[t.start() for t in threads]; [t.join() for t in threads]
print(json.dumps(out))
"""

LISTENER_ADDRESS = {
    "any4": "0.0.0.0",
    "dual": "::",
    "v6only": "::",
    "lo4": "127.0.0.1",
    "lo6": "::1",
    "addr4": SERVER_V4,
    "addr6": SERVER_V6,
}
#: What a host on the LAN can try for each listener: (network audit names, address).
TRIES = {
    "any4": [("10.77.0.0/24", SERVER_V4)],
    "dual": [("10.77.0.0/24", SERVER_V4), ("fd77::/64", SERVER_V6)],
    "v6only": [("10.77.0.0/24", SERVER_V4), ("fd77::/64", SERVER_V6)],
    "lo4": [("10.77.0.0/24", SERVER_V4)],
    "lo6": [("fd77::/64", SERVER_V6)],
    "addr4": [("10.77.0.0/24", SERVER_V4)],
    "addr6": [("fd77::/64", SERVER_V6)],
}


class Pair:
    """The server namespace, the LAN host namespace, and the listeners in the server."""

    def __init__(self, server: Namespace, lan: Namespace, ports: dict[str, int]) -> None:
        self.server, self.lan, self.ports = server, lan, ports

    def connect_all(self, timeout: float = 1.5) -> dict[tuple[str, str], bool]:
        """(listener, network) -> whether the LAN host's connect succeeded."""
        targets = [(ip, self.ports[name]) for name, tries in TRIES.items() for _, ip in tries]
        done = self.lan.run([PYTHON, "-c", CONNECTS, json.dumps(targets), str(timeout)])
        outcome = json.loads(done.stdout)
        return {
            (name, network): outcome[f"{ip} {self.ports[name]}"] == "ok"
            for name, tries in TRIES.items()
            for network, ip in tries
        }

    def audit(self, *args: str) -> tuple[int, dict[str, Any]]:
        return self.server.portside("audit", *args)


def _wait_for_address(ns: Namespace, ip: str) -> None:
    """IPv6 addresses are added with nodad; still, wait until the kernel lists them."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        shown = ns.run(["ip", "-o", "addr", "show"]).stdout
        if ip in shown and "tentative" not in shown:
            return
        time.sleep(0.05)
    raise AssertionError(f"{ip} never became usable in {ns.name}")


@contextlib.contextmanager
def pair() -> Iterator[Pair]:
    require_root()
    server = Namespace("ps-audit-srv")
    lan: Namespace | None = None
    try:
        lan = Namespace("ps-audit-lan")
        server.ip("link", "add", "vsrv", "type", "veth", "peer", "name", "vlan", "netns", lan.name)
        server.ip("addr", "add", f"{SERVER_V4}/24", "dev", "vsrv")
        server.ip("addr", "add", f"{SERVER_V6}/64", "dev", "vsrv", "nodad")
        lan.ip("addr", "add", f"{LAN_V4}/24", "dev", "vlan")
        lan.ip("addr", "add", f"{LAN_V6}/64", "dev", "vlan", "nodad")
        server.ip("link", "set", "vsrv", "up")
        lan.ip("link", "set", "vlan", "up")
        _wait_for_address(server, SERVER_V6)
        _wait_for_address(lan, LAN_V6)
        proc = server.start([PYTHON, "-c", LISTENERS, SERVER_V4, SERVER_V6])
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip(), "the listener process did not start"
        yield Pair(server, lan, json.loads(line))
    finally:
        if lan is not None:
            lan.close()
        server.close()


def _findings(document: dict[str, Any], ports: dict[str, int]) -> dict[str, dict[str, Any]]:
    by_key = {(f["address"], f["port"], f["proto"]): f for f in document["findings"]}
    return {name: by_key[(LISTENER_ADDRESS[name], port, "tcp")] for name, port in ports.items()}


def _global(finding: dict[str, Any]) -> list[str]:
    """``reachable_from`` without the link-local network (the LAN host does not try it)."""
    return [place for place in finding["reachable_from"] if " fe80::" not in place]


def check_agreement(p: Pair) -> dict[str, dict[str, Any]]:
    """Audit and reality agree on every listener; returns the findings by listener name."""
    code, document = p.audit("--no-probe")
    assert code == 0, document
    findings = _findings(document, p.ports)
    reality = p.connect_all()
    for (name, network), reached in reality.items():
        finding = findings[name]
        assert finding["verdict"] != "unknown", (name, finding)
        said_reachable = any(place.endswith(f" {network}") for place in finding["reachable_from"])
        assert said_reachable == reached, (name, network, reached, finding)
    for name, finding in findings.items():
        reached_any = any(r for (n, _), r in reality.items() if n == name)
        assert (finding["verdict"] == "exposed") == reached_any, (name, finding)
        if finding["verdict"] == "exposed":
            assert finding["fix"], finding
            assert finding["severity"] != "info"
        else:
            assert finding["severity"] == "info"
    return findings


def _nft(p: Pair, script: str) -> None:
    done = subprocess.run(
        ["ip", "netns", "exec", p.server.name, "nft", "-f", "-"],
        input=script,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_no_firewall_wildcards_and_addresses_are_exposed() -> None:
    with pair() as p:
        findings = check_agreement(p)
        assert findings["any4"]["verdict"] == "exposed"
        assert findings["any4"]["firewall"] == "none"
        assert _global(findings["dual"]) == ["vsrv 10.77.0.0/24", "vsrv fd77::/64"]
        assert _global(findings["v6only"]) == ["vsrv fd77::/64"]
        assert findings["lo4"]["verdict"] == "loopback-only"
        assert findings["lo6"]["verdict"] == "loopback-only"
        assert findings["addr4"]["scope"] == "address"


def test_nftables_policy_drop_with_accepts() -> None:
    if not shutil.which("nft"):
        pytest.skip("nft is not installed (Debian package nftables)")
    with pair() as p:
        ports = p.ports
        _nft(
            p,
            f"""
table inet audit_test {{
  set open {{ type inet_service; elements = {{ {ports["addr4"]} }} }}
  chain allowed {{
    tcp dport {ports["v6only"]} accept
  }}
  chain input {{
    type filter hook input priority 0; policy drop;
    iif lo accept
    ct state established,related accept
    meta l4proto ipv6-icmp accept
    tcp dport @open accept
    meta nfproto ipv6 tcp dport {ports["dual"]} accept
    jump allowed
  }}
}}
""",
        )
        findings = check_agreement(p)
        assert findings["any4"]["verdict"] == "filtered"
        assert findings["any4"]["firewall"] == "drop"
        assert _global(findings["dual"]) == ["vsrv fd77::/64"]
        assert findings["addr4"]["verdict"] == "exposed"
        assert findings["addr6"]["verdict"] == "filtered"


def test_nftables_drop_and_reject_rules() -> None:
    if not shutil.which("nft"):
        pytest.skip("nft is not installed (Debian package nftables)")
    with pair() as p:
        ports = p.ports
        _nft(
            p,
            f"""
table inet audit_test {{
  chain svc {{
    tcp dport {ports["addr4"]} reject with tcp reset
    return
  }}
  chain input {{
    type filter hook input priority 0; policy accept;
    tcp dport {ports["any4"]} drop
    iifname "vsrv" tcp dport {ports["dual"]} reject
    ip6 saddr fd77::/64 tcp dport {ports["lo6"]} drop
    jump svc
  }}
}}
table ip6 audit_six {{
  chain input {{
    type filter hook input priority 10; policy accept;
    tcp dport {ports["addr6"]} drop
  }}
}}
""",
        )
        findings = check_agreement(p)
        assert findings["any4"]["firewall"] == "drop"
        assert findings["dual"]["firewall"] == "reject"
        assert findings["addr4"]["firewall"] == "reject"
        assert findings["addr6"]["firewall"] == "drop"
        assert findings["v6only"]["verdict"] == "exposed"


def test_nftables_too_complex_rule_is_unknown_never_safe() -> None:
    if not shutil.which("nft"):
        pytest.skip("nft is not installed (Debian package nftables)")
    with pair() as p:
        _nft(
            p,
            f"""
table inet audit_test {{
  chain input {{
    type filter hook input priority 0; policy drop;
    ip saddr 10.77.0.0/24 tcp dport {p.ports["any4"]} accept
  }}
}}
""",
        )
        code, document = p.audit("--no-probe")
        assert code == 0
        finding = _findings(document, p.ports)["any4"]
        assert finding["verdict"] == "unknown"
        assert finding["firewall"] == "unknown"
        assert finding["severity"] != "info"
        assert p.connect_all()[("any4", "10.77.0.0/24")], "the LAN host does reach it"


def test_iptables_legacy() -> None:
    if not shutil.which("iptables-legacy"):
        pytest.skip("iptables-legacy is not installed (Debian package iptables)")
    with pair() as p:
        ports = p.ports
        for rule in (
            ["-P", "INPUT", "DROP"],
            ["-A", "INPUT", "-i", "lo", "-j", "ACCEPT"],
            ["-A", "INPUT", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"],
            ["-A", "INPUT", "-p", "tcp", "--dport", str(ports["any4"]), "-j", "ACCEPT"],
            ["-A", "INPUT", "-p", "tcp", "--dport", str(ports["addr4"]), "-j", "REJECT"],
            ["-A", "INPUT", "-p", "tcp", "-m", "multiport", "--dports",
             f"{ports['dual']},{ports['lo4']}", "-j", "ACCEPT"],
        ):  # fmt: skip
            done = p.server.run(["iptables-legacy", *rule], check=False)
            if done.returncode != 0:
                pytest.skip(f"iptables-legacy cannot work here: {done.stderr.strip()}")
        findings = check_agreement(p)
        assert findings["any4"]["verdict"] == "exposed"
        assert findings["addr4"]["firewall"] == "reject"
        assert _global(findings["dual"]) == ["vsrv 10.77.0.0/24", "vsrv fd77::/64"]
        assert findings["addr6"]["verdict"] == "exposed", "ip6tables has no rules"


@contextlib.contextmanager
def _ufw_root() -> Iterator[Path]:
    with temp_dir("portside-ufw-") as root:
        (root / "etc" / "default").mkdir(parents=True)
        (root / "lib").mkdir()
        (root / "usr" / "share").mkdir(parents=True)
        shutil.copytree("/etc/ufw", root / "etc" / "ufw", symlinks=True)
        shutil.copy("/etc/default/ufw", root / "etc" / "default" / "ufw")
        shutil.copytree("/lib/ufw", root / "lib" / "ufw", symlinks=True)
        shutil.copytree("/usr/share/ufw", root / "usr" / "share" / "ufw", symlinks=True)
        yield root


def test_ufw_with_private_config_dirs() -> None:
    if not shutil.which("ufw"):
        pytest.skip("ufw is not installed (Debian package ufw)")
    with pair() as p, _ufw_root() as root:
        ufw = ["ufw", f"--rootdir={root}", f"--datadir={root}"]
        ports = p.ports
        for args in (
            ["--force", "enable"],
            ["allow", f"{ports['any4']}/tcp"],
            ["reject", f"{ports['dual']}/tcp"],
            ["allow", f"{ports['addr6']}/tcp"],
        ):
            done = p.server.run([*ufw, *args], check=False)
            assert done.returncode == 0, (args, done.stdout, done.stderr)
        findings = check_agreement(p)
        assert findings["any4"]["verdict"] == "exposed"
        assert findings["dual"]["verdict"] == "filtered"
        assert findings["addr4"]["verdict"] == "filtered", "ufw's default: deny incoming"
        assert findings["addr6"]["verdict"] == "exposed"


def test_redis_without_auth_is_critical() -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    with pair() as p, temp_dir("portside-audit-redis-") as workdir:
        port = free_port()  # the server namespace is fresh: nothing else holds it there
        p.server.start(
            [binary, "--port", str(port), "--bind", "0.0.0.0", "--protected-mode", "no",
             "--save", "", "--appendonly", "no", "--dir", str(workdir),
             "--logfile", str(workdir / "redis.log")]
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            done = p.lan.run([PYTHON, "-c", CONNECTS, json.dumps([[SERVER_V4, port]]), "1"])
            if json.loads(done.stdout)[f"{SERVER_V4} {port}"] == "ok":
                break
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        code, document = p.audit("--fail-on", "critical")
        finding = next(f for f in document["findings"] if f["port"] == port)
        assert finding["severity"] == "critical", finding
        assert "answers PING without AUTH" in finding["evidence"]
        assert finding["code"] == "exposed-redis-noauth"
        assert finding["process"].startswith("redis-server[")
        assert "requirepass" in finding["fix"]
        assert code == 1, "--fail-on critical exits 1"
        code, _ = p.audit("--fail-on", "critical", "--no-probe")
        assert code == 0, "without the probe nobody knows AUTH is off: high, not critical"


# --------------------------------------------------------------------- CLI options, here


def _portside_here(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "portside", "audit", "--no-probe", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bad_config_exits_2_naming_the_file(tmp_path: Path) -> None:
    config = tmp_path / "audit.toml"
    config.write_text("[[ignore]]\nhost = 'x'\n")
    done = _portside_here("--config", str(config))
    assert done.returncode == 2
    assert str(config) in done.stderr
    assert "unknown key 'host'" in done.stderr


def test_missing_config_exits_2(tmp_path: Path) -> None:
    done = _portside_here("--config", str(tmp_path / "absent.toml"))
    assert done.returncode == 2
    assert "--config" in done.stderr


def test_json_and_fail_on_info(tmp_path: Path) -> None:
    config = tmp_path / "audit.toml"
    config.write_text("[[ignore]]\nproto = 'udp'\n")
    done = _portside_here("--json", "--config", str(config), "--fail-on", "info")
    document = json.loads(done.stdout)
    assert document["kind"] == "audit"
    assert all(f["proto"] == "tcp" for f in document["findings"])
    # Every finding is at least info: exit 1 exactly when there is one.
    assert done.returncode == (1 if document["findings"] else 0)


def test_unknown_severity_is_a_usage_error() -> None:
    done = _portside_here("--fail-on", "severe")
    assert done.returncode == 2
