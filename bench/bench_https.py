"""HTTPS figures: ``portside proxy --https`` side by side with nginx ``ssl`` + ``proxy_pass``.

Same set-up as bench/bench_proxy.py (one nginx backend serving 1 KiB, both proxies pinned
to the same CPU, wrk and the backend on the other(s), interleaved rounds, medians), with
TLS on the front: portside serves the leaves of its local CA (issued per SNI name, EC
P-256), nginx the *same* ``localhost`` leaf and key written to its temporary prefix, TLS
1.2-1.3, defaults otherwise (session tickets on for both).

Scenarios: ``keepalive`` (persistent TLS connections: record encryption cost) and
``handshake`` (``Connection: close``: a TCP connection and a full TLS handshake per
request, the cost of terminating TLS in Python's ssl module under the event loop).

    .venv/bin/python bench/bench_https.py [--rounds 3] [--duration 5] [--connections 64]
        [--scenario keepalive --scenario handshake]

The CA lives in a temporary PORTSIDE_HOME. Every process is ended by its pid. Results: a
table on stdout and bench/results/https.json. Needs wrk and nginx.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_proxy import (
    BACKEND_CONF,
    LOOPBACK,
    PORTSIDE_LAUNCH,
    ROOT,
    free_port,
    pinned,
    run_wrk,
    stop,
    wait_listening,
)

TLS_PROXY_CONF = """
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
        listen {ip}:{port} ssl backlog=4096;
        ssl_certificate {tmp}/leaf.pem;
        ssl_certificate_key {tmp}/leaf-key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
        }}
    }}
}}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scenario", action="append", choices=("keepalive", "handshake"))
    ncpu = os.cpu_count() or 1
    parser.add_argument("--proxy-cpu", default=str(ncpu - 1) if ncpu > 1 else None)
    parser.add_argument(
        "--client-cpu", default=f"0-{ncpu - 2}" if ncpu > 2 else ("0" if ncpu > 1 else None)
    )
    args = parser.parse_args(argv)
    scenarios = args.scenario or ["keepalive", "handshake"]
    nginx = shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin")
    if nginx is None or shutil.which("wrk") is None:
        print("wrk or nginx is missing: apt-get install -y -q wrk nginx", file=sys.stderr)
        return 2

    from portside.ca import CertificateAuthority

    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, dict[str, list[dict[str, float]]]] = {
        s: {"nginx": [], "portside": []} for s in scenarios
    }
    with tempfile.TemporaryDirectory(prefix="portside-bench-https-") as tmp:
        try:
            os.chmod(tmp, 0o755)  # noqa: S103 - nginx's workers run as an unprivileged user
            www = Path(tmp) / "www"
            www.mkdir(mode=0o755)
            (www / "1k.bin").write_bytes(os.urandom(1024))
            os.chmod(www / "1k.bin", 0o644)
            home = Path(tmp) / "portside-home"
            authority = CertificateAuthority.load_or_create(home / "ca")
            leaf = authority.issue("localhost")
            (Path(tmp) / "leaf.pem").write_bytes(leaf.chain_pem)
            (Path(tmp) / "leaf-key.pem").write_bytes(leaf.key_pem)  # nginx's master reads it
            backend_port, nginx_port, portside_port = free_port(), free_port(), free_port()
            conf = Path(tmp) / "backend.conf"
            conf.write_text(BACKEND_CONF.format(tmp=tmp, ip=LOOPBACK, port=backend_port))
            backend = subprocess.Popen(pinned(args.client_cpu, [nginx, "-p", tmp, "-c", str(conf)]))
            procs.append(backend)
            wait_listening(backend_port, backend)
            conf = Path(tmp) / "proxy.conf"
            conf.write_text(
                TLS_PROXY_CONF.format(tmp=tmp, ip=LOOPBACK, port=nginx_port, backend=backend_port)
            )
            nginx_proxy = subprocess.Popen(
                pinned(args.proxy_cpu, [nginx, "-p", tmp, "-c", str(conf)])
            )
            procs.append(nginx_proxy)
            wait_listening(nginx_port, nginx_proxy)
            portside = subprocess.Popen(
                pinned(
                    args.proxy_cpu,
                    [
                        sys.executable,
                        "-c",
                        PORTSIDE_LAUNCH,
                        "--tls-listen",
                        f"{LOOPBACK}:{portside_port}",
                        "--to",
                        f"{LOOPBACK}:{backend_port}",
                        "--access-log",
                        "off",
                    ],
                ),
                env={**os.environ, "PORTSIDE_HOME": str(home)},
                stdout=subprocess.DEVNULL,
                cwd=ROOT,
            )
            procs.append(portside)
            wait_listening(portside_port, portside)
            sides = {"nginx": nginx_port, "portside": portside_port}
            for scenario in scenarios:
                for port in sides.values():  # warm-up
                    subprocess.run(
                        ["wrk", "-t1", "-c8", "-d1s", f"https://{LOOPBACK}:{port}/1k.bin"],
                        capture_output=True,
                        check=True,
                    )
                for index in range(args.rounds):
                    order = ["nginx", "portside"] if index % 2 == 0 else ["portside", "nginx"]
                    for side in order:
                        figure = run_wrk(
                            sides[side], args, scenario, close_scenario="handshake", scheme="https"
                        )
                        results[scenario][side].append(figure)
                        print(
                            f"{scenario:9} round {index + 1} {side:8} {figure['requests_per_s']:>9.0f} req/s  p99 {figure['p99_ms']:.2f} ms  errors {figure['socket_errors']:.0f} non-2xx {figure['non_2xx']:.0f}",
                            flush=True,
                        )
                    if portside.poll() is not None:
                        raise RuntimeError(f"portside exited with {portside.returncode}")
        finally:
            for proc in reversed(procs):
                stop(proc)
    summary: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "proxy_cpu": args.proxy_cpu},
        "settings": vars(args),
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
        print(f"{scenario:10} ratio     {rate_ratio:>9.2f}x {p99_ratio:>7.2f}x  (portside / nginx)")
        summary[scenario] = {
            "runs": results[scenario],
            "median": medians,
            "rate_ratio": rate_ratio,
            "p99_ratio": p99_ratio,
        }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "https.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
