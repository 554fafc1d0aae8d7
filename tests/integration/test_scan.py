"""``portside scan`` against real sockets: listeners we hold, ports we keep closed, the
socket table as ``ss`` shows it, and private network namespaces with nftables rules.

Scans target only 127.0.0.1 / ::1 of this machine, or addresses inside namespaces these
tests create (``ps-scan-…``, deleted afterwards). Other processes may listen on loopback
meanwhile, so the expected open set is read from ``ss -tlnH`` around each scan, never a
constant: a port whose listener came or went during the scan, or whose accept queue is
full (it drops SYNs, by design), is left out of the comparison, and nothing else is.
Connect scans in this namespace skip ports other processes listen on (a completed
handshake lands in their accept queue); SYN scans leave no connection behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from portside.errors import AccessDeniedError, UsageError
from portside.scan import (
    Mismatch,
    PortState,
    ScanMethod,
    raw_sockets_allowed,
    scan,
    syn_segment,
)
from tests.integration.netns import Namespace

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the scan is Linux-only")

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
RAW = raw_sockets_allowed(socket.AF_INET)
needs_raw = pytest.mark.skipif(
    not RAW, reason="a SYN scan needs root or CAP_NET_RAW (CI runs as root)"
)
needs_ss = pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")


# --------------------------------------------------------------------------- the oracle


def ss_listeners() -> dict[tuple[str, int], tuple[int, int]]:
    """TCP listeners of this namespace per ``ss -tlnH``: (address, port) -> (Recv-Q, Send-Q).

    ``*`` is a dual-stack ``[::]``, ``[::]`` one with IPV6_V6ONLY; ``%dev`` is dropped."""
    done = subprocess.run(["ss", "-tlnH"], capture_output=True, text=True, check=True)
    found: dict[tuple[str, int], tuple[int, int]] = {}
    for line in done.stdout.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        host, port = fields[3].rsplit(":", 1)
        host = host.split("%", 1)[0]
        found[(host, int(port))] = (int(fields[1]), int(fields[2]))
    return found


ANSWERS = {
    "127.0.0.1": {"127.0.0.1", "0.0.0.0", "*", "[::ffff:127.0.0.1]"},
    "::1": {"[::1]", "[::]", "*"},
}


def answering(table: dict[tuple[str, int], tuple[int, int]], ip: str) -> dict[int, bool]:
    """Ports with a listener that accepts connections to ``ip`` -> whether its accept queue
    is full (such a listener drops SYNs: open or filtered is then a matter of timing)."""
    ports: dict[int, bool] = {}
    for (host, port), (recv_q, send_q) in table.items():
        if host in ANSWERS[ip]:
            ports[port] = ports.get(port, False) or recv_q > send_q
    return ports


class Oracle:
    """What ``ss`` says around a scan: the ports certainly open, and those in doubt."""

    def __init__(self, ip: str, scanned: set[int]) -> None:
        self.ip = ip
        self.scanned = scanned
        self.before = answering(ss_listeners(), ip)

    def settle(self) -> tuple[set[int], set[int]]:
        after = answering(ss_listeners(), self.ip)
        changed = set(self.before) ^ set(after)
        full = {p for p, is_full in {**self.before, **after}.items() if is_full}
        doubtful = (changed | full) & self.scanned
        certain = (set(self.before) & set(after) & self.scanned) - doubtful
        return certain, doubtful


# --------------------------------------------------------------------------- our sockets


@contextlib.contextmanager
def held_ports(ip: str, listening: int, closed: int) -> Iterator[tuple[list[int], list[int]]]:
    """``listening`` listeners and ``closed`` bound-but-not-listening sockets on ``ip``
    (ports chosen by the kernel); a bound socket keeps its port closed and ours."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        opened, shut = [], []
        for index in range(listening + closed):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((ip, 0))
            if index < listening:
                sock.listen(128)
                opened.append(sock.getsockname()[1])
            else:
                shut.append(sock.getsockname()[1])
        yield opened, shut
    finally:
        for sock in sockets:
            sock.close()


def window(ports: list[int], width: int = 12) -> set[int]:
    return {p for port in ports for p in range(port - width, port + width + 1) if 1 <= p <= 65535}


def check_scan(ip: str, method: str, *, listening: int = 6, closed: int = 4, **kwargs) -> None:
    with held_ports(ip, listening, closed) as (opened, shut):
        ports = window(opened + shut)
        if method == "connect":
            # Leave other processes' listeners alone: a connect would sit in their queue.
            others = set(answering(ss_listeners(), ip)) - set(opened)
            ports -= others
        oracle = Oracle(ip, ports)
        result = scan(ip, sorted(ports), method=method, **kwargs)
        certain, doubtful = oracle.settle()
        assert result.method == ScanMethod(method)
        assert result.addresses == (ip,)
        assert result.port_count == len(ports)
        found = result.open_ports(ip)
        assert set(opened) <= found
        assert not set(shut) & found
        assert not set(shut) & result.filtered_ports()
        assert found - doubtful == certain | set(opened)
        assert result.filtered_ports() <= doubtful  # only full accept queues stay silent
        assert result.closed == len(ports) - len(found) - len(result.filtered)
        # Every listener we hold answered, so the cross-check finds nothing to say about them.
        assert result.cross_checked == (ip,)
        assert not [d for d in result.discrepancies if d.port in opened or d.port in shut]
        by_port = {item.port: item for item in result.open}
        for port in opened:
            owners = {o.process.pid for e in by_port[port].listeners for o in e.owners}
            assert os.getpid() in owners


# --------------------------------------------------------------------------- loopback


@needs_ss
@needs_raw
def test_syn_scan_finds_exactly_the_listeners():
    check_scan("127.0.0.1", "syn")


@needs_ss
def test_connect_scan_finds_exactly_the_listeners():
    check_scan("127.0.0.1", "connect")


@needs_ss
@needs_raw
@needs_ipv6
def test_syn_scan_of_ipv6_loopback():
    """The IPv6 checksum (pseudo-header) is ours to compute: loopback verifies it."""
    check_scan("::1", "syn")


@needs_ss
@needs_ipv6
def test_connect_scan_of_ipv6_loopback():
    check_scan("::1", "connect")


@needs_ss
@needs_raw
def test_syn_scan_split_over_processes_agrees():
    # The scan forks its workers only from a single-threaded process, and earlier tests
    # may leave threads in this one: run it in a fresh interpreter.
    code = (
        "from portside.scan import _can_fork\n"
        "from tests.integration.test_scan import check_scan\n"
        "assert _can_fork()\n"
        "check_scan('127.0.0.1', 'syn', listening=12, closed=6, workers=3)\n"
    )
    child = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert child.returncode == 0, child.stderr


@needs_ss
@needs_raw
def test_every_port_syn_scan_matches_the_socket_table():
    """The figure's command: all 65,535 ports of 127.0.0.1."""
    with held_ports("127.0.0.1", 5, 2) as (opened, shut):
        oracle = Oracle("127.0.0.1", set(range(1, 65536)))
        result = scan("127.0.0.1", range(1, 65536), method="syn")
        certain, doubtful = oracle.settle()
    assert result.ports == "-"
    assert result.port_count == 65535
    found = result.open_ports()
    assert set(opened) <= found
    assert not set(shut) & found
    assert found - doubtful == certain
    assert result.filtered_ports() <= doubtful
    assert result.closed + len(result.open) + len(result.filtered) == 65535


@needs_raw
@pytest.mark.parametrize("ip", ["127.0.0.1", pytest.param("::1", marks=needs_ipv6)])
def test_loopback_verifies_checksums(ip):
    """Why the scans above prove our checksums right: loopback drops a SYN whose checksum
    is off by one bit, and answers the same SYN with the right one."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    packed = socket.inet_pton(family, ip)
    with (
        held_ports(ip, 1, 1) as ([port], [sport]),
        socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_TCP) as raw,
    ):
        raw.connect((ip, 0))
        raw.settimeout(0.5)

        def answer(segment: bytes) -> int | None:
            raw.send(segment)
            with contextlib.suppress(TimeoutError):
                while True:
                    packet = raw.recv(128)
                    offset = (packet[0] & 0x0F) * 4 if family == socket.AF_INET else 0
                    tcp = packet[offset:]
                    if tcp[0:2] == port.to_bytes(2, "big") and tcp[2:4] == sport.to_bytes(2, "big"):
                        return tcp[13]
            return None

        segment = bytearray(syn_segment(packed, packed, sport, port, 12345))
        corrupted = bytes(segment[:17]) + bytes([segment[17] ^ 0x01]) + bytes(segment[18:])
        assert answer(corrupted) is None
        assert answer(bytes(segment)) == 0x12  # SYN-ACK


def test_a_syn_scan_without_privilege_is_refused_with_the_fix(monkeypatch):
    import portside.scan as module

    monkeypatch.setattr(module, "raw_sockets_allowed", lambda family=None: False)
    with pytest.raises(UsageError, match="--method connect"):
        scan("127.0.0.1", [1], method="syn")
    assert scan("127.0.0.1", [1], method="auto", cross_check=False).method is ScanMethod.CONNECT


def test_an_unreadable_socket_table_leaves_the_scan_standing(monkeypatch):
    import portside.sockets

    def refuse(**_kwargs: object) -> list[object]:
        raise AccessDeniedError("the socket table")

    monkeypatch.setattr(portside.sockets, "listeners", refuse)
    with held_ports("127.0.0.1", 1, 0) as ([port], _):
        result = scan("127.0.0.1", [port], method="connect")
    assert result.open_ports() == {port}
    assert result.cross_checked == ()
    assert any("not compared with the socket table" in note for note in result.notes)


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"ports": []}, "no ports"),
        ({"ports": [0]}, "out of range"),
        ({"ports": [70000]}, "out of range"),
        ({"ports": [1], "method": "ack"}, "unknown scan method"),
        ({"ports": [1], "retries": -1}, "retries"),
        ({"ports": [1], "timeout": 0}, "timeout"),
        ({"ports": [1], "concurrency": 0}, "concurrency"),
    ],
)
def test_bad_arguments_are_usage_errors(kwargs, says):
    with pytest.raises(UsageError, match=says):
        scan("127.0.0.1", **kwargs)


def test_progress_reaches_the_total():
    seen: list[tuple[int, int]] = []
    with held_ports("127.0.0.1", 1, 0) as ([port], _):
        scan(
            "127.0.0.1",
            range(port, port + 1),
            method="connect",
            progress=lambda d, t: seen.append((d, t)),
        )
    assert seen[0] == (0, 1)
    assert seen[-1] == (1, 1)
    assert all(done <= total for done, total in seen)


BANNER = r"""
import socket, sys
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(16)
print(server.getsockname()[1], flush=True)
while True:
    conn, _ = server.accept()
    try:  # the scan's own connection is reset (linger 0) before we greet it
        conn.sendall(b"SSH-2.0-OpenSSH_9.6 portside-test\r\n")
    except OSError:
        pass
    conn.close()
"""


@contextlib.contextmanager
def banner_server() -> Iterator[int]:
    """A server that greets like sshd; its port once it listens (the printed line)."""
    proc = subprocess.Popen(
        [PYTHON, "-c", BANNER], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline())
    finally:
        proc.kill()  # our own child, by its pid
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_identify_asks_each_open_port_what_it_speaks():
    with banner_server() as port:
        result = scan("127.0.0.1", [port], method="connect", identify=True)
    (item,) = result.open
    assert item.identification is not None
    assert item.identification.protocol == "ssh"
    assert item.identification.port == port


def test_identify_in_the_command_adds_a_column():
    with banner_server() as port:
        done = run_cli("127.0.0.1", "-p", str(port), "--method", "connect", "--identify")
    assert done.returncode == 0, done.stderr
    header = next(line for line in done.stdout.splitlines() if line.startswith("PORT"))
    assert header.split()[-1] == "SPEAKS"
    row = next(line for line in done.stdout.splitlines() if line.startswith(f"{port}/tcp"))
    assert "SSH" in row or "ssh" in row


# --------------------------------------------------------------------------- the command


#: ``portside scan ARGS`` through ``portside.cli.main`` once the subcommand is wired into
#: cli._parser; until then the same arguments through :func:`cli._scan.add_arguments`,
#: with main()'s handling of errors.
CLI = (
    "import argparse, sys\n"
    "from portside.cli._parser import build_parser\n"
    "from portside.cli import main\n"
    "wired = any(\n"
    "    isinstance(action, argparse._SubParsersAction) and 'scan' in action.choices\n"
    "    for action in build_parser()._actions\n"
    ")\n"
    "if wired:\n"
    "    sys.exit(main(['scan', *sys.argv[1:]]))\n"
    "from portside.cli._scan import add_arguments, run_scan\n"
    "from portside.errors import PortsideError\n"
    "parser = argparse.ArgumentParser(prog='portside scan')\n"
    "add_arguments(parser)\n"
    "parser.add_argument('--json', action='store_true')\n"
    "parser.add_argument('--no-color', action='store_true')\n"
    "try:\n"
    "    sys.exit(run_scan(parser.parse_args(sys.argv[1:])))\n"
    "except PortsideError as exc:\n"
    "    sys.stderr.write(f'portside: {exc}\\n')\n"
    "    sys.exit(exc.exit_code)\n"
)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-c", CLI, *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "NO_COLOR": "1"},
        cwd=ROOT,
        timeout=60,
    )


def test_the_command_prints_json_and_exits_0():
    with held_ports("127.0.0.1", 2, 1) as (opened, [shut]):
        ports = ",".join(str(p) for p in [*opened, shut])
        done = run_cli("127.0.0.1", "-p", ports, "--method", "connect", "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["kind"] == "scan"
    assert document["method"] == "connect"
    assert {item["port"] for item in document["open"]} == set(opened)
    assert document["closed"] == 1
    assert document["filtered"] == []
    assert document["cross_checked"] == ["127.0.0.1"]
    assert all(item["listeners"] for item in document["open"])


def test_the_command_prints_a_table():
    with held_ports("127.0.0.1", 1, 0) as ([port], _):
        done = run_cli("127.0.0.1", "-p", str(port), "--method", "connect")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"127.0.0.1, ports {port} (1), a connect scan in ")
    assert lines[0].endswith("1 open, 0 closed, 0 filtered")
    assert any(line.startswith(f"{port}/tcp") and f"[{os.getpid()}]" in line for line in lines)
    assert done.stderr == ""  # no progress bar: stderr is not a terminal


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["-p", "1-x"], "'x' is not a port number"),
        (["-p", "100-1"], "write 1-100"),
        (["127.0.0.0/8", "-p", "80"], "is a network"),
        (["0.0.0.0", "-p", "80"], "wildcard"),
        (["127.0.0.1:80"], "ports with -p"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, says):
    done = run_cli(*args)
    assert done.returncode == 2
    assert says in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stdout == ""


# --------------------------------------------------------------------------- namespaces

SCAN = r"""
import json, sys
from portside.models import json_document
from portside.portrange import parse_ports
from portside.scan import scan
host, ports, method, timeout, retries = sys.argv[1:6]
result = scan(host, parse_ports(ports), method=method, timeout=float(timeout), retries=int(retries))
print(json.dumps(json_document("scan", result)))
"""


@contextlib.contextmanager
def scan_namespace() -> Iterator[Namespace]:
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2 (`ip`)")
    ns = Namespace("ps-scan")
    try:
        yield ns
    finally:
        ns.close()


def scan_inside(ns: Namespace, host: str, ports: str, method: str, timeout: float, retries: int):
    done = ns.run(
        [PYTHON, "-c", SCAN, host, ports, method, str(timeout), str(retries)],
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def methods() -> list[object]:
    return [
        pytest.param("syn", marks=pytest.mark.skipif(not RAW, reason="SYN needs CAP_NET_RAW")),
        "connect",
    ]


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")
@pytest.mark.parametrize("method", methods())
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
@pytest.mark.usefixtures("nft")
def test_firewalled_ports_in_a_private_namespace(method, host):
    """lo up, four ports: one listener answering, one behind an nftables ``drop`` (no
    answer: filtered), one behind ``reject`` (ICMP port unreachable: closed), one bound
    but not listening (RST: closed). The cross-check names both firewalled listeners;
    nft's counter shows the dropped port was probed once plus once per retry."""
    retries = 1
    with scan_namespace() as ns:
        _p1, open_port = ns.server(host, 0, "http")
        _p2, dropped = ns.server(host, 0, "http")
        _p3, rejected = ns.server(host, 0, "http")
        _p4, bound = ns.server(host, 0, "bind-only")
        rules = (
            "table inet ps_scan {\n"
            "  chain input {\n"
            "    type filter hook input priority 0; policy accept;\n"
            f"    tcp dport {dropped} counter drop\n"
            f"    tcp dport {rejected} reject\n"
            "  }\n"
            "}\n"
        )
        _nft(ns, rules)
        ports = sorted({open_port, dropped, rejected, bound} | {1, 2, 3})
        text = ",".join(map(str, ports))
        document = scan_inside(ns, host, text, method, timeout=0.3, retries=retries)
        counter = _nft_counter(ns)
    assert document["method"] == method
    assert {item["port"] for item in document["open"]} == {open_port}
    assert {item["port"] for item in document["filtered"]} == {dropped}
    assert document["closed"] == len(ports) - 2  # the reject, the bound port, 1, 2, 3
    assert counter == retries + 1  # one probe, then one per retry, for the silent port
    (item,) = document["open"]
    assert item["listeners"]
    assert item["listeners"][0]["owners"]
    unreachable = {
        d["port"]: d
        for d in document["discrepancies"]
        if d["kind"] == Mismatch.UNREACHABLE_LISTENER
    }
    assert set(unreachable) == {dropped, rejected}
    assert unreachable[dropped]["state"] == PortState.FILTERED
    assert "drops" in unreachable[dropped]["message"]
    assert unreachable[rejected]["state"] == PortState.CLOSED
    assert "rejects" in unreachable[rejected]["message"]
    assert not [d for d in document["discrepancies"] if d["kind"] == Mismatch.OPEN_WITHOUT_LISTENER]


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")
@pytest.mark.parametrize("method", methods())
@pytest.mark.usefixtures("nft")
def test_a_forwarded_port_is_open_without_a_listener(method):
    """An nftables ``redirect`` sends a port nobody listens on to a listener: the scan
    finds both open, and the cross-check says the first one is forwarded."""
    with scan_namespace() as ns:
        _proc, port = ns.server("127.0.0.1", 0, "http")
        forwarded = 20000 if port != 20000 else 20001
        _nft(
            ns,
            "table ip ps_scan_nat {\n"
            "  chain output {\n"
            "    type nat hook output priority -100; policy accept;\n"
            f"    tcp dport {forwarded} redirect to :{port}\n"
            "  }\n"
            "}\n",
        )
        document = scan_inside(ns, "127.0.0.1", f"{forwarded},{port}", method, 0.3, 1)
    assert {item["port"] for item in document["open"]} == {forwarded, port}
    (only,) = document["discrepancies"]
    assert only["kind"] == Mismatch.OPEN_WITHOUT_LISTENER
    assert only["port"] == forwarded
    assert "forwarded" in only["message"]


def _nft(ns: Namespace, rules: str) -> None:
    subprocess.run(
        ["ip", "netns", "exec", ns.name, "nft", "-f", "-"],
        input=rules,
        text=True,
        check=True,
        timeout=30,
    )


def _nft_counter(ns: Namespace) -> int:
    done = ns.run(["nft", "-j", "list", "table", "inet", "ps_scan"])
    for item in json.loads(done.stdout)["nftables"]:
        rule = item.get("rule")
        if rule:
            for expression in rule["expr"]:
                if "counter" in expression:
                    return int(expression["counter"]["packets"])
    raise AssertionError("no counter in the ruleset")


@pytest.fixture
def nft() -> None:
    if shutil.which("nft") is None:
        pytest.skip("needs nftables: flock /tmp/apt.lock apt-get install -y -q nftables")


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")
def test_connect_scan_discards_self_connections():
    """With a one-port ephemeral range (40000) and nothing listening, connect() to
    127.0.0.1:40000 can only pick source port 40000: the kernel connects the socket to
    itself (shown first, without portside). The scan must call that port closed."""
    with scan_namespace() as ns:
        ns.run(["sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=40000 40000"])
        premise = ns.run(
            [
                PYTHON,
                "-c",
                "import socket, struct; s = socket.socket(); s.connect(('127.0.0.1', 40000));"
                " print(s.getsockname()[1], s.getpeername()[1]);"
                # close with an RST: a FIN would leave the only ephemeral port in TIME_WAIT
                " s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))",
            ]
        )
        assert premise.stdout.split() == ["40000", "40000"]
        document = scan_inside(ns, "127.0.0.1", "39990-40010", "connect", timeout=0.5, retries=0)
    assert document["open"] == []
    assert document["filtered"] == []
    assert document["closed"] == 21


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")
def test_connect_scan_of_the_whole_ephemeral_range_finds_nothing_where_nothing_listens():
    """A private namespace has no listener at all: a connect scan of every port of the
    ephemeral range (where the kernel may pick the port it connects to as source port)
    must find nothing open."""
    with scan_namespace() as ns:
        low, high = ns.run(["sysctl", "-n", "net.ipv4.ip_local_port_range"]).stdout.split()
        document = scan_inside(ns, "127.0.0.1", f"{low}-{high}", "connect", timeout=0.5, retries=0)
    assert document["open"] == []
    assert document["filtered"] == []
    assert document["closed"] == int(high) - int(low) + 1


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_a_name_is_scanned_on_each_of_its_addresses(tmp_path):
    """``both.test`` names 127.0.0.1 and ::1 (a private /etc/hosts, in a private mount
    namespace): each address is scanned and reported, with an ADDRESS column."""
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 both.test\n::1 both.test\n")
    with scan_namespace() as ns:
        _p4, port4 = ns.server("127.0.0.1", 0, "http")
        _p6, port6 = ns.server("::1", 0, "http", "v6only")
        script = f'mount --bind {hosts} /etc/hosts && exec "$@"'
        done = ns.run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
                PYTHON,
                "-c",
                CLI,
                "both.test",
                "-p",
                f"{port4},{port6}",
                "--method",
                "connect",
            ],
            check=False,
            env={**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(ROOT / "src")},
        )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("both.test (")
    assert "127.0.0.1" in lines[0]
    assert "::1" in lines[0]
    assert lines[0].endswith("2 open, 2 closed, 0 filtered")
    assert lines[2].split()[0] == "ADDRESS"
    rows = {line.split()[0] for line in lines[3:] if "/tcp" in line}
    assert rows == {f"127.0.0.1:{port4}", f"[::1]:{port6}"}


EMFILE = r"""
import json, os, resource, sys
from portside.models import json_document
from portside.scan import scan
first, last = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (120, hard))
hog = [os.open("/dev/null", os.O_RDONLY) for _ in range(80)]  # about 30 descriptors left
result = scan("127.0.0.1", range(first, last + 1), method="connect", concurrency=512,
              timeout=0.3, retries=0, cross_check=False)
print(json.dumps(json_document("scan", result)))
"""


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")
@pytest.mark.usefixtures("nft")
def test_connect_scan_lowers_concurrency_when_out_of_file_descriptors():
    """200 dropped ports keep 200 connects waiting; with ~30 descriptors left, socket()
    fails with EMFILE and the scan goes on with fewer sockets in flight."""
    with scan_namespace() as ns:
        _nft(
            ns,
            "table inet ps_scan {\n"
            "  chain input {\n"
            "    type filter hook input priority 0; policy accept;\n"
            "    tcp dport 20000-20199 counter drop\n"
            "  }\n"
            "}\n",
        )
        done = ns.run(
            [PYTHON, "-c", EMFILE, "20000", "20199"],
            check=False,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["open"] == []
    assert len(document["filtered"]) == 200
    assert any("concurrency lowered" in note for note in document["notes"])
