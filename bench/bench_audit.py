"""``portside audit`` over 3,000 listeners and a 200-rule nftables ruleset (goal: <= 1.5 s).

Everything happens in a private network namespace (``ip netns add``, removed at the end):
a veth pair (both ends inside) with an IPv4 and an IPv6 address (so wildcard listeners face a
network), one helper process holding 3,000 listening TCP sockets (a third each on
0.0.0.0, [::] dual-stack and 127.0.0.1) that answers every connection with an SSH
banner, and a generated ruleset of 200 rules (policy drop; iif lo and established
accepted; a port set; a jump to a user chain; accept, drop and reject rules by port;
16 of the listened ports accepted, so audit probes those 16 unidentified listeners).

Timed, inside the namespace, interleaved round by round (3 warm-up rounds):

* ``portside audit --json``             (the figure of record: probes included)
* ``portside audit --json --no-probe``
* for comparison (no peer tool does this audit): its raw inputs ``ss -tlnpH`` and
  ``nft -j list ruleset``, each timed alone, and ``portside ls --json --no-netns`` (the
  same socket table with owners, without the audit)

Python bytecode is compiled into a temporary cache first (``PYTHONPYCACHEPREFIX``).
Medians of wall time and of CPU time (user + system, from wait4: the machine may be
shared) on stdout and in bench/results/audit.json. Needs root.

    .venv/bin/python bench/bench_audit.py [--runs 15] [--listeners 3000] [--rules 200]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 1.5
OPEN_PORTS = 16

HOLDER = r"""
import json, resource, selectors, socket, sys
n = int(sys.argv[1])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, n + 256), max(hard, n + 256)))
sel = selectors.DefaultSelector()
ports = []
for i in range(n):
    host, family = [("0.0.0.0", socket.AF_INET), ("::", socket.AF_INET6), ("127.0.0.1", socket.AF_INET)][i % 3]
    s = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind((host, 0)); s.listen(16); s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
    ports.append(s.getsockname()[1])
print(json.dumps(ports), flush=True)
while True:
    for key, _ in sel.select():
        try:
            conn, _ = key.fileobj.accept()
        except OSError:
            continue
        try:
            conn.sendall(b"SSH-2.0-bench\r\n")
        except OSError:
            pass
        conn.close()
"""


def ruleset(ports: list[int], rules: int) -> str:
    """A ``rules``-rule inet table: OPEN_PORTS of the wildcard listeners' ports accepted."""
    wildcard = [p for i, p in enumerate(ports) if i % 3 != 2]
    open_ports = wildcard[:: max(1, len(wildcard) // OPEN_PORTS)][:OPEN_PORTS]
    lines = [
        "table inet bench {",
        "  set web { type inet_service; elements = { 80, 443, 8080, 8443 } }",
        "  chain services {",
        "    tcp dport 22 accept",
        "    udp dport 53 accept",
        "    return",
        "  }",
        "  chain input {",
        "    type filter hook input priority 0; policy drop;",
        "    iif lo accept",
        "    ct state established,related accept",
        "    ct state invalid drop",
        "    tcp dport @web accept",
        "    jump services",
    ]
    body = [f"    tcp dport {port} accept" for port in open_ports]
    filler = 20000
    while len(body) + 5 + 3 < rules:  # 5 rules above, 3 in services
        verdict = ("drop", "reject", "reject with tcp reset", "accept")[len(body) % 4]
        if len(body) % 10 == 0:
            body.append(f"    tcp dport {filler}-{filler + 5} {verdict}")
        else:
            body.append(f"    tcp dport {filler} {verdict}")
        filler += 7
    lines += [*body, "  }", "}"]
    return "\n".join(lines) + "\n"


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds user + system) of one run, from wait4."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True
    )
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    error = proc.stderr.read() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{argv} failed: {error[-500:]}")
    return elapsed, usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--listeners", type=int, default=3000)
    parser.add_argument("--rules", type=int, default=200)
    options = parser.parse_args()
    if os.geteuid() != 0 or not shutil.which("nft"):
        print("needs root and nft (Debian package nftables)", file=sys.stderr)
        return 2
    ns = f"ps-bench-audit-{uuid.uuid4().hex[:8]}"
    python = sys.executable
    holder: subprocess.Popen[str] | None = None
    cache = tempfile.mkdtemp(prefix="portside-bench-pyc-")
    env = {**os.environ, "PYTHONPYCACHEPREFIX": cache}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # else every run compiles every module again
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        inside = ["ip", "netns", "exec", ns]
        for args in (
            ["link", "set", "lo", "up"],
            ["link", "add", "bench0", "type", "veth", "peer", "name", "bench1"],
            ["addr", "add", "10.99.0.1/24", "dev", "bench0"],
            ["addr", "add", "fd99::1/64", "dev", "bench0", "nodad"],
            ["link", "set", "bench0", "up"],
            ["link", "set", "bench1", "up"],
        ):
            subprocess.run(["ip", "-n", ns, *args], check=True)
        holder = subprocess.Popen(
            [*inside, python, "-c", HOLDER, str(options.listeners)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None
        ports = json.loads(holder.stdout.readline())
        text = ruleset(ports, options.rules)
        subprocess.run([*inside, "nft", "-f", "-"], input=text, text=True, check=True)
        listed = subprocess.run(
            [*inside, "nft", "-j", "list", "ruleset"], capture_output=True, text=True, check=True
        )
        rule_count = sum("rule" in item for item in json.loads(listed.stdout)["nftables"])
        audit = [*inside, python, "-m", "portside", "audit", "--json"]
        subprocess.run([python, "-m", "compileall", "-q", str(ROOT / "src")], env=env, check=False)
        check = subprocess.run(audit, capture_output=True, text=True, env=env, check=False)
        document = json.loads(check.stdout)
        findings = document["findings"]
        counts: dict[str, int] = {}
        for finding in findings:
            counts[finding["verdict"]] = counts.get(finding["verdict"], 0) + 1
        commands = {
            "portside audit --json": audit,
            "portside audit --json --no-probe": [*audit, "--no-probe"],
            "portside ls --json --no-netns": [
                *inside,
                python,
                "-m",
                "portside",
                "ls",
                "--json",
                "--no-netns",
            ],
            "ss -tlnpH": [*inside, "ss", "-tlnpH"],
            "nft -j list ruleset": [*inside, "nft", "-j", "list", "ruleset"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        names = list(commands)
        for round_number in range(options.runs + 3):
            order = names[round_number % len(names) :] + names[: round_number % len(names)]
            for name in order:
                elapsed, used = _timed(commands[name], env)
                if round_number >= 3:
                    times[name].append(elapsed)
                    cpu[name].append(used)
        medians = {name: statistics.median(values) for name, values in times.items()}
        cpu_medians = {name: statistics.median(values) for name, values in cpu.items()}
        load = os.getloadavg()[0]
        print(f"{options.listeners} listeners, {rule_count} nft rules, namespace {ns}")
        print(f"findings by verdict: {counts}; load average {load:.2f} on {os.cpu_count()} CPUs")
        for name, value in medians.items():
            used = cpu_medians[name] * 1000
            print(f"  {name:36s} median {value * 1000:8.1f} ms wall, {used:8.1f} ms CPU")
        raw = medians["ss -tlnpH"] + medians["nft -j list ruleset"]
        ratio = medians["portside audit --json"] / raw
        print(f"  audit / (ss + nft) = {ratio:.2f}x; goal audit <= {GOAL_S} s:", end=" ")
        met = medians["portside audit --json"] <= GOAL_S
        print("met" if met else "NOT met")
        results = ROOT / "bench" / "results"
        results.mkdir(parents=True, exist_ok=True)
        (results / "audit.json").write_text(
            json.dumps(
                {
                    "listeners": options.listeners,
                    "rules": rule_count,
                    "runs": options.runs,
                    "findings_by_verdict": counts,
                    "median_s": medians,
                    "median_cpu_s": cpu_medians,
                    "load_average": load,
                    "audit_over_raw_inputs": ratio,
                    "goal_s": GOAL_S,
                    "goal_met": met,
                },
                indent=2,
            )
            + "\n"
        )
        return 0 if met else 1
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
            if holder.stdout is not None:
                holder.stdout.close()
        subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
