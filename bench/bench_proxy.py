"""Reverse-proxy figures: ``portside proxy`` side by side with nginx ``proxy_pass``.

One backend (nginx serving a 1 KiB file, keep-alive) is shared by both proxies:

    wrk --> nginx proxy_pass  --\\
                                 >--> backend nginx (1 KiB file)
    wrk --> portside proxy    --/

Fairness: each proxy runs one worker process with keep-alive to the backend (nginx:
``worker_processes 1``, ``upstream { keepalive 64; }``, ``proxy_http_version 1.1``), both
proxies are pinned to the same CPU and wrk plus the backend to the other CPU(s)
(``taskset``; see ``--proxy-cpu``), and the runs interleave (nginx, portside, portside,
nginx, …) so that drifts of the machine hit both sides alike. The figure per side is the
median over rounds of requests/s and of wrk's p99 latency.

Scenarios (``--scenario``): ``keepalive`` (wrk's default, persistent connections: the
issue's figure), ``churn`` (``Connection: close`` on every request: one connection per
request, the load under which uvloop 0.23 was reported to abort) and ``varied`` (keep-alive,
but every request of a connection has another target, ``/1k.bin?n=N``, from a wrk Lua
script: portside's core takes a request byte-identical to the previous one on its
connection without parsing it again, which wrk's identical requests always are; here none
is). ``--loop asyncio`` runs portside on the
stock event loop (``PORTSIDE_LOOP=asyncio``).

Every process started here is ended by its pid; nginx gets a private prefix, config, pid
file and logs in a temporary directory. Needs ``wrk`` and ``nginx``
(``flock /tmp/apt.lock apt-get install -y -q wrk nginx``).

    .venv/bin/python bench/bench_proxy.py [--rounds 3] [--duration 5] [--connections 64]
        [--threads 2] [--scenario keepalive --scenario churn] [--loop uvloop]

Results: a table on stdout and bench/results/proxy.json.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
READY_DEADLINE_S = 20.0

BACKEND_CONF = """
worker_processes 1;
pid {tmp}/backend.pid;
error_log {tmp}/backend-error.log warn;
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

PROXY_CONF = """
worker_processes 1;
pid {tmp}/proxy.pid;
error_log {tmp}/proxy-error.log warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    upstream backend {{ server {ip}:{backend}; keepalive 64; }}
    server {{
        listen {ip}:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_buffering on;
        }}
    }}
}}
"""

#: wrk: every request another target (each wrk thread counts on its own).
VARIED_LUA = """
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "/1k.bin?n=" .. n)
end
"""

PORTSIDE_LAUNCH = """
import argparse, sys
from portside.cli._proxy import add_arguments, run_proxy
parser = argparse.ArgumentParser()
parser.add_argument("--json", action="store_true")
add_arguments(parser)
sys.exit(run_proxy(parser.parse_args(sys.argv[1:])))
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


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


_LATENCY_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_wrk(text: str) -> dict[str, float]:
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if rate is None or p99 is None:
        raise RuntimeError(f"cannot read wrk's output:\n{text}")
    return {
        "requests_per_s": float(rate.group(1)),
        "p99_ms": float(p99.group(1)) * _LATENCY_UNITS[p99.group(2)],
        "socket_errors": float(sum(int(g) for g in errors.groups())) if errors else 0.0,
        "non_2xx": float(non2xx.group(1)) if non2xx else 0.0,
    }


def run_wrk(
    port: int,
    args: argparse.Namespace,
    scenario: str,
    *,
    close_scenario: str = "churn",
    scheme: str = "http",
) -> dict[str, float]:
    """One wrk run at PORT; ``close_scenario`` sends ``Connection: close`` on every request."""
    argv = [
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{args.duration}s",
        "--latency",
        "-H",
        "Host: app.localhost",
    ]
    if scenario == close_scenario:
        argv += ["-H", "Connection: close"]
    if scenario == "varied":
        argv += ["-s", str(args.varied_script)]
    argv.append(f"{scheme}://{LOOPBACK}:{port}/1k.bin")
    done = subprocess.run(pinned(args.client_cpu, argv), capture_output=True, text=True, check=True)
    return parse_wrk(done.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scenario", action="append", choices=("keepalive", "churn", "varied"))
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    ncpu = os.cpu_count() or 1
    parser.add_argument("--proxy-cpu", default=str(ncpu - 1) if ncpu > 1 else None)
    parser.add_argument(
        "--client-cpu", default=f"0-{ncpu - 2}" if ncpu > 2 else ("0" if ncpu > 1 else None)
    )
    args = parser.parse_args(argv)
    scenarios = args.scenario or ["keepalive", "churn", "varied"]
    for tool in ("wrk", "nginx"):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin") is None:
            print(
                f"{tool} is missing: flock /tmp/apt.lock apt-get install -y -q wrk nginx",
                file=sys.stderr,
            )
            return 2
    nginx = shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin") or "nginx"

    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, dict[str, list[dict[str, float]]]] = {
        s: {"nginx": [], "portside": []} for s in scenarios
    }
    with tempfile.TemporaryDirectory(prefix="portside-bench-") as tmp:
        try:
            os.chmod(tmp, 0o755)  # noqa: S103 - nginx's workers run as an unprivileged user
            (Path(tmp) / "www").mkdir(mode=0o755)
            (Path(tmp) / "www" / "1k.bin").write_bytes(os.urandom(1024))
            args.varied_script = Path(tmp) / "varied.lua"
            args.varied_script.write_text(VARIED_LUA)
            os.chmod(Path(tmp) / "www" / "1k.bin", 0o644)
            backend_port, nginx_port, portside_port = free_port(), free_port(), free_port()
            conf = Path(tmp) / "backend.conf"
            conf.write_text(BACKEND_CONF.format(tmp=tmp, ip=LOOPBACK, port=backend_port))
            backend = subprocess.Popen(pinned(args.client_cpu, [nginx, "-p", tmp, "-c", str(conf)]))
            procs.append(backend)
            wait_listening(backend_port, backend)
            conf = Path(tmp) / "proxy.conf"
            conf.write_text(
                PROXY_CONF.format(tmp=tmp, ip=LOOPBACK, port=nginx_port, backend=backend_port)
            )
            nginx_proxy = subprocess.Popen(
                pinned(args.proxy_cpu, [nginx, "-p", tmp, "-c", str(conf)])
            )
            procs.append(nginx_proxy)
            wait_listening(nginx_port, nginx_proxy)
            env = {**os.environ, "PORTSIDE_LOOP": args.loop}
            portside = subprocess.Popen(
                pinned(
                    args.proxy_cpu,
                    [
                        sys.executable,
                        "-c",
                        PORTSIDE_LAUNCH,
                        "--listen",
                        f"{LOOPBACK}:{portside_port}",
                        "--to",
                        f"{LOOPBACK}:{backend_port}",
                        "--access-log",
                        "off",
                    ],
                ),
                env=env,
                stdout=subprocess.DEVNULL,
            )
            procs.append(portside)
            wait_listening(portside_port, portside)
            sides = {"nginx": nginx_port, "portside": portside_port}
            for scenario in scenarios:
                for port in sides.values():  # warm-up: pools filled, code paths hot
                    subprocess.run(
                        [
                            "wrk",
                            "-t1",
                            "-c8",
                            "-d1s",
                            "-H",
                            "Host: app.localhost",
                            f"http://{LOOPBACK}:{port}/1k.bin",
                        ],
                        capture_output=True,
                        check=True,
                    )
                for index in range(args.rounds):
                    order = ["nginx", "portside"] if index % 2 == 0 else ["portside", "nginx"]
                    for side in order:
                        figure = run_wrk(sides[side], args, scenario)
                        results[scenario][side].append(figure)
                        print(
                            f"{scenario:9} round {index + 1} {side:8} {figure['requests_per_s']:>9.0f} req/s  p99 {figure['p99_ms']:.2f} ms  errors {figure['socket_errors']:.0f} non-2xx {figure['non_2xx']:.0f}",
                            flush=True,
                        )
                    if portside.poll() is not None:
                        raise RuntimeError(
                            f"portside proxy exited with {portside.returncode} under {scenario}"
                        )
        finally:
            for proc in reversed(procs):
                stop(proc)
    summary: dict[str, object] = {
        "machine": {
            "cpus": os.cpu_count(),
            "proxy_cpu": args.proxy_cpu,
            "client_cpu": args.client_cpu,
        },
        "settings": {
            "rounds": args.rounds,
            "duration_s": args.duration,
            "connections": args.connections,
            "threads": args.threads,
            "loop": args.loop,
        },
    }
    print()
    print(f"{'scenario':10} {'side':9} {'req/s':>9} {'p99 ms':>8}")
    for scenario in scenarios:
        medians = {
            side: {
                "requests_per_s": statistics.median(r["requests_per_s"] for r in runs),
                "p99_ms": statistics.median(r["p99_ms"] for r in runs),
            }
            for side, runs in results[scenario].items()
        }
        for side, figure in medians.items():
            print(
                f"{scenario:10} {side:9} {figure['requests_per_s']:>9.0f} {figure['p99_ms']:>8.2f}"
            )
        rate_ratio = medians["portside"]["requests_per_s"] / medians["nginx"]["requests_per_s"]
        p99_ratio = medians["portside"]["p99_ms"] / medians["nginx"]["p99_ms"]
        print(
            f"{scenario:10} ratio     {rate_ratio:>9.2f}x {p99_ratio:>7.2f}x  (targets: rate >= 0.5x, p99 <= 2x)"
        )
        summary[scenario] = {
            "runs": results[scenario],
            "median": medians,
            "rate_ratio": rate_ratio,
            "p99_ratio": p99_ratio,
        }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "proxy.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
