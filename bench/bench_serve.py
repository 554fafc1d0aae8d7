"""Static-file figures for ``portside serve``, side by side with its peers, measured with wrk.

Peers, each serving the same temporary directory on its own loopback port:

* ``portside serve``   (this tree, uvloop, one process)
* ``python -m http.server``   (the same interpreter)
* ``nginx``   with a private configuration (``sendfile on``, access log off), once with
  one worker process and once with ``worker_processes auto``

Workloads: a 1 KiB file (requests/s) and a 10 MiB file (bytes/s), ``wrk -t2 -c64``.

Fairness on a small machine: the server under test is pinned to CPU ``--server-cpu``
and wrk to the other CPUs (``taskset``), the same way for every peer; rounds interleave
the peers (``--rounds`` rounds, peer order rotated each round) so that drifts in the
machine's load hit every peer alike; the figure per peer is the median over rounds.
Each measured run follows a 1-second warm-up on the same connection count.

Every process started here is ended by its pid. Results: a table on stdout and
bench/results/serve.json.

    .venv/bin/python bench/bench_serve.py [--rounds 5] [--duration 5] [--no-pin] [--out F]
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
RESULTS = ROOT / "bench" / "results" / "serve.json"
SMALL = "1k.bin"
LARGE = "10m.bin"
NGINX_CONF = """
worker_processes {workers};
daemon off;
master_process on;
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 10000000;
    keepalive_timeout 65;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    types {{ application/octet-stream bin; }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(port: int, process: subprocess.Popen[bytes], deadline_s: float = 15) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)  # polling for readiness, bounded by the deadline
    raise RuntimeError(f"nothing listens on {port} after {deadline_s}s")


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


class Peer:
    def __init__(self, name: str, argv: list[str], port: int, stop_signal: int) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.stop_signal = stop_signal
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, pin: list[str]) -> None:
        self.process = subprocess.Popen(
            [*pin, *self.argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_listening(self.port, self.process)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process, self.stop_signal)


_UNITS = {"": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def run_wrk(
    pin: list[str], url: str, duration: int, threads: int, connections: int
) -> dict[str, float]:
    argv = [*pin, "wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", url]
    out = subprocess.run(
        argv, capture_output=True, text=True, check=True, timeout=duration + 60
    ).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)([KMGT]?B)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if rps is None or transfer is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    return {
        "requests_per_s": float(rps.group(1)),
        "bytes_per_s": float(transfer.group(1)) * _UNITS[transfer.group(2)],
        "socket_errors": float(sum(int(g) for g in errors.groups())) if errors else 0.0,
        "non_2xx": float(non2xx.group(1)) if non2xx else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--threads", type=int, default=2, help="wrk -t")
    parser.add_argument("--connections", type=int, default=64, help="wrk -c")
    parser.add_argument("--server-cpu", default="1", help="taskset CPU list for servers")
    parser.add_argument("--client-cpu", default="0", help="taskset CPU list for wrk")
    parser.add_argument("--no-pin", action="store_true", help="no taskset (both float)")
    parser.add_argument("--skip", action="append", default=[], help="leave a peer out")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON")
    args = parser.parse_args()
    for tool in ("wrk", "nginx", "taskset"):
        if shutil.which(tool) is None:
            sys.stderr.write(
                f"{tool} is missing: flock /tmp/apt.lock apt-get install -y -q wrk nginx util-linux\n"
            )
            return 2
    pin_server = [] if args.no_pin else ["taskset", "-c", args.server_cpu]
    pin_client = [] if args.no_pin else ["taskset", "-c", args.client_cpu]

    with tempfile.TemporaryDirectory(prefix="portside-bench-serve-") as tmp_text:
        tmp = Path(tmp_text)
        root = tmp / "site"
        root.mkdir()
        (root / SMALL).write_bytes(os.urandom(1024))
        (root / LARGE).write_bytes(os.urandom(10 * 1024 * 1024))
        python = sys.executable
        peers: list[Peer] = []
        port = free_port()
        peers.append(
            Peer(
                "portside serve",
                [python, "-m", "portside.cli._serve", str(root), "--listen", f"127.0.0.1:{port}"],
                port,
                signal.SIGTERM,
            )
        )
        port = free_port()
        peers.append(
            Peer(
                "python -m http.server",
                [
                    python,
                    "-m",
                    "http.server",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--directory",
                    str(root),
                ],
                port,
                signal.SIGTERM,
            )
        )
        for workers in ("1", "auto"):
            port = free_port()
            conf_dir = tmp / f"nginx-{workers}"
            conf_dir.mkdir()
            conf = conf_dir / "nginx.conf"
            conf.write_text(NGINX_CONF.format(workers=workers, tmp=conf_dir, port=port, root=root))
            peers.append(
                Peer(
                    f"nginx ({workers} worker{'s' if workers != '1' else ''})",
                    ["nginx", "-p", str(conf_dir), "-c", str(conf)],
                    port,
                    signal.SIGQUIT,  # graceful stop of the master; it ends its workers
                )
            )
        peers = [p for p in peers if p.name.split()[0] not in args.skip and p.name not in args.skip]

        samples: dict[str, dict[str, list[dict[str, float]]]] = {
            p.name: {SMALL: [], LARGE: []} for p in peers
        }
        try:
            for peer in peers:
                peer.start(pin_server)
            for round_index in range(args.rounds):
                order = peers[round_index % len(peers) :] + peers[: round_index % len(peers)]
                for peer in order:
                    for name in (SMALL, LARGE):
                        url = f"http://127.0.0.1:{peer.port}/{name}"
                        run_wrk(pin_client, url, 1, args.threads, args.connections)  # warm-up
                        result = run_wrk(
                            pin_client, url, args.duration, args.threads, args.connections
                        )
                        samples[peer.name][name].append(result)
                        print(
                            f"round {round_index + 1} {peer.name:24} {name:8}"
                            f" {result['requests_per_s']:>10.0f} req/s"
                            f" {result['bytes_per_s'] / 2**20:>9.1f} MiB/s",
                            flush=True,
                        )
        finally:
            for peer in peers:
                peer.stop()

    medians: dict[str, dict[str, dict[str, float]]] = {}
    runs: dict[str, dict[str, list[float]]] = {}
    for peer_name, by_file in samples.items():
        medians[peer_name] = {}
        runs[peer_name] = {}
        for name, results in by_file.items():
            medians[peer_name][name] = {
                "requests_per_s": statistics.median(r["requests_per_s"] for r in results),
                "bytes_per_s": statistics.median(r["bytes_per_s"] for r in results),
                "errors": sum(r["socket_errors"] + r["non_2xx"] for r in results),
            }
            runs[peer_name][name] = [r["requests_per_s"] for r in results]
    ours = medians.get("portside serve")
    ratios: dict[str, dict[str, float]] = {}
    if ours is not None:
        for peer_name, figures in medians.items():
            if peer_name == "portside serve":
                continue
            ratios[peer_name] = {
                "1KiB_requests": ours[SMALL]["requests_per_s"] / figures[SMALL]["requests_per_s"],
                "10MiB_bytes": ours[LARGE]["bytes_per_s"] / figures[LARGE]["bytes_per_s"],
            }
    print()
    print(
        f"{'peer':26} {'1 KiB req/s':>12} {'10 MiB MiB/s':>13}  (medians of {args.rounds} rounds)"
    )
    for peer_name, figures in medians.items():
        print(
            f"{peer_name:26} {figures[SMALL]['requests_per_s']:>12.0f}"
            f" {figures[LARGE]['bytes_per_s'] / 2**20:>13.1f}"
        )
    print()
    for peer_name, ratio in ratios.items():
        print(
            f"portside / {peer_name:24} 1 KiB: {ratio['1KiB_requests']:.2f}x"
            f"   10 MiB: {ratio['10MiB_bytes']:.2f}x"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "schema": 1,
                "kind": "bench-serve",
                "settings": {
                    "rounds": args.rounds,
                    "duration_s": args.duration,
                    "wrk": f"-t{args.threads} -c{args.connections}",
                    "pinning": "none"
                    if args.no_pin
                    else {"server_cpus": args.server_cpu, "wrk_cpus": args.client_cpu},
                    "cpus": os.cpu_count(),
                },
                "medians": medians,
                "runs_requests_per_s": runs,
                "ratios": ratios,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
