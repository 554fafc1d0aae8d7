"""The scan figure: ``portside scan -p 1-65535 127.0.0.1`` against ``nmap -p- -T5 127.0.0.1``.

Opens a few TCP listeners on 127.0.0.1 (one helper process, ended by pid afterwards),
checks that both tools find the same set of open ports, then times both with hyperfine:
the same number of runs each, in alternating batches (nmap first in even batches,
portside first in odd ones) so that drift in the machine's load hits both alike.
Medians and their ratio go to stdout and to bench/results/scan.json.

Run as root for the figure (both then send raw SYNs; unprivileged, nmap and portside
fall back to connect scans). Needs nmap and hyperfine:
``flock /tmp/apt.lock apt-get install -y -q nmap hyperfine``.

    .venv/bin/python bench/bench_scan.py [--runs 30] [--batches 6] [--listeners 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results" / "scan.json"
TARGET = "127.0.0.1"

HOLDER = """
import socket, sys
held = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(128)
    held.append(s)
print(" ".join(str(s.getsockname()[1]) for s in held), flush=True)
sys.stdin.read()  # until the benchmark closes our stdin
"""

#: ``portside scan`` through its own argument definitions, for as long as the subcommand
#: is not wired into cli._parser (same imports and work as the command).
FALLBACK = """
import argparse, sys
from portside.cli._scan import add_arguments, run_scan
parser = argparse.ArgumentParser(prog="portside scan")
add_arguments(parser)
parser.add_argument("--json", action="store_true")
parser.add_argument("--no-color", action="store_true")
sys.exit(run_scan(parser.parse_args(sys.argv[1:])))
"""


def scan_is_wired() -> bool:
    done = subprocess.run(
        [str(BIN / "portside"), "scan", "--help"], capture_output=True, text=True, check=False
    )
    return done.returncode == 0 and "RANGE" in done.stdout


def portside_command(wired: bool, *args: str) -> list[str]:
    if wired:
        return [str(BIN / "portside"), "scan", *args]
    return [str(BIN / "python"), "-c", FALLBACK, *args]


def nmap_open(argv: list[str]) -> set[int]:
    out = subprocess.run([*argv, "-oG", "-"], capture_output=True, text=True, check=True).stdout
    ports: set[int] = set()
    for match in re.finditer(r"(\d+)/open/tcp", out):
        ports.add(int(match.group(1)))
    return ports


def portside_open(argv: list[str]) -> tuple[set[int], str]:
    done = subprocess.run([*argv, "--json"], capture_output=True, text=True, check=True)
    document = json.loads(done.stdout)
    return {int(item["port"]) for item in document["open"]}, str(document["method"])


def listener_state(port: int) -> str:
    """What ``ss`` shows on ``port`` now (a listener that came, went, or whose accept queue
    is full explains a difference between the two scans)."""
    done = subprocess.run(
        ["ss", "-tlnpH", f"sport = :{port}"], capture_output=True, text=True, check=False
    )
    return " | ".join(line.strip() for line in done.stdout.splitlines()) or "no listener now"


def hyperfine_times(argv: list[str], runs: int, out: Path) -> list[float]:
    subprocess.run(
        [
            "hyperfine",
            "-N",
            "--warmup",
            "1",
            "--runs",
            str(runs),
            "--export-json",
            str(out),
            "--style",
            "none",
            shlex.join(argv),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    result = json.loads(out.read_text())["results"][0]
    return [float(t) for t in result["times"]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=30, help="runs of each command in all")
    parser.add_argument("--batches", type=int, default=6, help="alternating hyperfine batches")
    parser.add_argument("--listeners", type=int, default=5)
    options = parser.parse_args()
    missing = [tool for tool in ("nmap", "hyperfine") if shutil.which(tool) is None]
    if missing:
        print(
            f"needs {' and '.join(missing)}:"
            " flock /tmp/apt.lock apt-get install -y -q nmap hyperfine",
            file=sys.stderr,
        )
        return 2
    if os.geteuid() != 0:
        print("note: not root, so both tools run connect scans, not SYN scans", file=sys.stderr)
    wired = scan_is_wired()
    nmap = ["nmap", "-p-", "-T5", TARGET]
    portside = portside_command(wired, "-p", "1-65535", TARGET)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(options.listeners)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        ours = {int(p) for p in holder.stdout.readline().split()}  # printed once listening
        # Other processes may open or close listeners meanwhile: compare a few times.
        for _attempt in range(5):
            by_nmap = nmap_open(nmap)
            by_portside, method = portside_open(portside)
            if by_nmap == by_portside:
                break
            for port in sorted(by_nmap ^ by_portside)[:10]:
                print(f"differs on port {port}: {listener_state(port)}", file=sys.stderr)
        same = by_nmap == by_portside
        per_batch = max(1, options.runs // options.batches)
        times: dict[str, list[float]] = {"nmap": [], "portside": []}
        with tempfile.TemporaryDirectory() as tmp:
            for batch in range(options.batches):
                order = ["nmap", "portside"] if batch % 2 == 0 else ["portside", "nmap"]
                for name in order:
                    argv = nmap if name == "nmap" else portside
                    times[name].extend(
                        hyperfine_times(argv, per_batch, Path(tmp) / f"{name}-{batch}.json")
                    )
    finally:
        if holder.stdin is not None:
            holder.stdin.close()
        holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["portside"] / medians["nmap"]
    document = {
        "commands": {"nmap": shlex.join(nmap), "portside": "portside scan -p 1-65535 127.0.0.1"},
        "portside_invocation": "portside scan"
        if wired
        else "python -c <cli._scan.add_arguments + run_scan> (scan not wired into cli._parser yet)",
        "root": os.geteuid() == 0,
        "portside_method": method,
        "runs_each": len(times["nmap"]),
        "batches": options.batches,
        "median_s": medians,
        "min_s": {name: min(values) for name, values in times.items()},
        "ratio_portside_to_nmap": ratio,
        "same_open_set": same,
        "open_ports": {"nmap": len(by_nmap), "portside": len(by_portside)},
        "difference": sorted(by_nmap ^ by_portside),
        "our_listeners_found": ours <= by_portside and ours <= by_nmap,
        "machine": {
            "kernel": platform.release(),
            "cpus": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "load_average": os.getloadavg(),
        },
        "times_s": times,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    print(f"open ports: nmap {len(by_nmap)}, portside {len(by_portside)}, same set: {same}")
    print(f"median over {len(times['nmap'])} runs each:")
    print(f"  {shlex.join(nmap):40} {medians['nmap'] * 1000:8.1f} ms")
    print(f"  {'portside scan -p 1-65535 127.0.0.1':40} {medians['portside'] * 1000:8.1f} ms")
    print(f"  ratio portside / nmap: {ratio:.2f} (goal <= 1.00)")
    print(f"written to {RESULTS.relative_to(ROOT)}")
    return 0 if same and ours <= by_portside else 1


if __name__ == "__main__":
    sys.exit(main())
