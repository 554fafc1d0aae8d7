"""TCP forwarding figures: ``portside forward`` side by side with ``socat`` (and no forwarder).

Two workloads, every process on loopback:

* **throughput**: one iperf3 stream (``iperf3 -c … -t DURATION``) straight to the iperf3
  server (``direct``), through ``portside forward`` and through
  ``socat -b262144 TCP-LISTEN:P,fork,reuseaddr TCP:127.0.0.1:IPERF``. Figure: the
  receiver's bits/s. Goals: portside ≥ 0.85 x direct and ≥ 1.0 x socat.
* **requests**: ``wrk -t2 -c64`` keep-alive GETs of a 1 KiB file from nginx (one worker,
  a temporary prefix and config on a free loopback port), through portside and through
  socat (and direct, for reference). Figure: requests/s. Goal: portside ≥ 1.0 x socat.

Fairness: both forwarders are started once per workload and stay up; the runs interleave
(round 1: direct, portside, socat; round 2: socat, portside, direct; …) so that drifts
of a shared machine hit every side alike; one warm-up run per side is discarded. The
figure per side is the median over rounds; ratios are portside ÷ other. Optional
pinning (``--forwarder-cpu``, ``--load-cpu``) applies the same to portside and socat.

``--copy`` adds a ``portside-copy`` side (``--data-path copy``, the path faults use).
Every process started here is ended by its pid. Needs iperf3, socat, wrk and nginx
(``apt-get install -y iperf3 socat wrk nginx``).

    .venv/bin/python bench/bench_forward.py [--rounds 5] [--duration 5] [--copy]
        [--loop uvloop|asyncio] [--only throughput|requests]

Results: a table on stdout and bench/results/forward.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
READY_DEADLINE_S = 20.0

NGINX_CONF = """
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    server {{
        listen {ip}:{port} backlog=4096;
        root {tmp}/www;
        location / {{ }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_DEADLINE_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {port}") from None
            time.sleep(0.05)  # polling interval, not a readiness wait


def pinned(cpus: str | None, argv: list[str]) -> list[str]:
    if cpus is None or shutil.which("taskset") is None:
        return argv
    return ["taskset", "-c", cpus, *argv]


def start(
    argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=cwd
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def run_iperf(port: int, args: argparse.Namespace) -> float:
    argv = ["iperf3", "-c", LOOPBACK, "-p", str(port), "-t", str(args.duration), "-J"]
    done = subprocess.run(pinned(args.load_cpu, argv), capture_output=True, text=True, check=True)
    report = json.loads(done.stdout)
    if "error" in report:  # iperf3 -J says what went wrong here, with exit status 0
        raise RuntimeError(f"iperf3 through port {port}: {report['error']}")
    return float(report["end"]["sum_received"]["bits_per_second"])


def run_wrk(port: int, args: argparse.Namespace) -> float:
    argv = [
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{args.duration}s",
        f"http://{LOOPBACK}:{port}/1k.bin",
    ]
    done = subprocess.run(pinned(args.load_cpu, argv), capture_output=True, text=True, check=True)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+)", done.stdout)
    if rate is None or (errors is not None and any(int(g) for g in errors.groups())):
        raise RuntimeError(f"wrk failed:\n{done.stdout}")
    return float(rate.group(1))


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU of *pid* and its reaped children (socat's forks), in seconds."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def forwarders(
    target: int, args: argparse.Namespace, procs: list[subprocess.Popen[bytes]]
) -> dict[str, tuple[int, int | None]]:
    """Start portside (and portside-copy) and socat towards *target*;
    side -> (port, forwarder pid or None)."""
    sides: dict[str, tuple[int, int | None]] = {"direct": (target, None)}
    env = {**os.environ, "PORTSIDE_LOOP": args.loop}
    variants: list[tuple[str, list[str]]] = [("portside", [])]
    if args.copy:
        variants.append(("portside-copy", ["--data-path", "copy"]))
    for name, extra in variants:
        port = free_port()
        argv = [sys.executable, "-m", "portside", "forward", f"{LOOPBACK}:{port}"]
        argv += [f"{LOOPBACK}:{target}", *extra]
        proc = start(pinned(args.forwarder_cpu, argv), env=env, cwd=ROOT)
        procs.append(proc)
        wait_listening(port, proc)
        sides[name] = (port, proc.pid)
    port = free_port()
    argv = [
        "socat",
        "-b262144",
        f"TCP-LISTEN:{port},bind={LOOPBACK},fork,reuseaddr,backlog=4096",
        f"TCP:{LOOPBACK}:{target}",
    ]
    proc = start(pinned(args.forwarder_cpu, argv))
    procs.append(proc)
    wait_listening(port, proc)
    sides["socat"] = (port, proc.pid)
    return sides


Figures = tuple[dict[str, list[float]], dict[str, list[float]]]


def interleave(
    sides: dict[str, tuple[int, int | None]], run: Callable[[int], float], rounds: int
) -> Figures:
    """(figures, forwarder CPU seconds): side -> one value per round."""
    names = list(sides)
    for name in names:  # warm-up, discarded
        run(sides[name][0])
    figures: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        order = names if round_ % 2 == 0 else list(reversed(names))
        for name in order:
            port, pid = sides[name]
            before = cpu_seconds(pid)
            value = run(port)
            used = cpu_seconds(pid) - before
            figures[name].append(value)
            cpu[name].append(used)
            print(f"  round {round_ + 1} {name:14} {value:16,.0f}   forwarder CPU {used:5.2f}s")
    return figures, cpu


def throughput(args: argparse.Namespace) -> Figures:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        iperf_port = free_port()
        server = start(pinned(args.load_cpu, ["iperf3", "-s", "-p", str(iperf_port)]))
        procs.append(server)
        wait_listening(iperf_port, server)
        sides = forwarders(iperf_port, args, procs)
        return interleave(sides, lambda port: run_iperf(port, args), args.rounds)
    finally:
        for proc in reversed(procs):
            stop(proc)


def requests(args: argparse.Namespace) -> Figures:
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="portside-bench-forward-") as tmp:
        try:
            (Path(tmp) / "www").mkdir()
            (Path(tmp) / "www" / "1k.bin").write_bytes(os.urandom(1024))
            port = free_port()
            conf = Path(tmp) / "nginx.conf"
            conf.write_text(NGINX_CONF.format(tmp=tmp, ip=LOOPBACK, port=port))
            nginx = start(pinned(args.load_cpu, ["nginx", "-p", tmp, "-c", str(conf)]))
            procs.append(nginx)
            wait_listening(port, nginx)
            sides = forwarders(port, args, procs)
            return interleave(sides, lambda p: run_wrk(p, args), args.rounds)
        finally:
            for proc in reversed(procs):
                stop(proc)


def summary(
    name: str, measured: Figures, unit: str, scale: float, work: tuple[str, float]
) -> dict[str, object]:
    """Medians, ratios, and the forwarder's CPU per unit of work (*work*: its name, and
    the factor from figure x duration to it), a cost that drifts less than rates do on
    a shared machine."""
    figures, cpu = measured
    per, factor = work
    medians = {side: statistics.median(values) for side, values in figures.items()}
    # Totals, not a median of per-run ratios: socat's forked children are accounted to it
    # only once reaped, which may fall into the next run.
    cost = {
        side: sum(cpu[side]) / (sum(figures[side]) * factor) for side in figures if side != "direct"
    }
    print(f"\n{name} (median of {len(next(iter(figures.values())))} runs, {unit})")
    for side, value in medians.items():
        extra = f"   forwarder CPU {cost[side] * 1e6:7.2f} us/{per}" if side in cost else ""
        print(f"  {side:14} {value / scale:12,.2f}{extra}")
    ratios: dict[str, float] = {}
    for ours in (s for s in medians if s.startswith("portside")):
        for other in ("direct", "socat"):
            ratio = medians[ours] / medians[other]
            ratios[f"{ours}/{other}"] = round(ratio, 3)
            print(f"  {ours}/{other}: {ratio:.3f}")
    return {
        "unit": unit,
        "runs": figures,
        "forwarder_cpu_s": cpu,
        "medians": medians,
        "ratios": ratios,
        f"forwarder_cpu_us_per_{per}": {side: c * 1e6 for side, c in cost.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5, help="seconds per run")
    parser.add_argument("--connections", type=int, default=64, help="wrk -c")
    parser.add_argument("--threads", type=int, default=2, help="wrk -t")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--copy", action="store_true", help="add portside --data-path copy")
    parser.add_argument("--only", choices=("throughput", "requests"))
    parser.add_argument("--forwarder-cpu", help="taskset CPUs for portside and socat")
    parser.add_argument("--load-cpu", help="taskset CPUs for iperf3/wrk and the servers")
    args = parser.parse_args(argv)
    missing = [t for t in ("iperf3", "socat", "wrk", "nginx") if shutil.which(t) is None]
    if missing:
        print(f"missing: {', '.join(missing)} (apt-get install -y {' '.join(missing)})")
        return 2
    results: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "loop": args.loop},
        "rounds": args.rounds,
        "duration_s": args.duration,
    }
    if args.only in (None, "throughput"):
        print("throughput: iperf3, one stream")
        mb = ("MB", args.duration / 8 / 1e6)  # bits/s x s -> MB
        results["throughput"] = summary("throughput", throughput(args), "Gbit/s", 1e9, mb)
    if args.only in (None, "requests"):
        print(f"requests: wrk -t{args.threads} -c{args.connections} keep-alive, 1 KiB from nginx")
        per_request = ("request", float(args.duration))
        results["requests"] = summary("requests", requests(args), "req/s", 1.0, per_request)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "forward.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten: {out / 'forward.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
