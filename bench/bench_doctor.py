"""doctor's figures: wall time on a refused target (goal <= 300 ms) and on a healthy HTTP
target (goal <= 500 ms), measured with hyperfine; results in bench/results/doctor.json.

    .venv/bin/python bench/bench_doctor.py [--runs 20]
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PORTSIDE = str(Path(sys.executable).parent / "portside")


class Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 -- the stdlib's name
        return


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    options = parser.parse_args()
    if not shutil.which("hyperfine"):
        print("needs hyperfine (apt-get install hyperfine)", file=sys.stderr)
        return 2
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        refused_port = probe.getsockname()[1]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    commands = {
        "doctor refused": [PORTSIDE, "doctor", f"127.0.0.1:{refused_port}", "--json"],
        "doctor healthy http": [
            PORTSIDE,
            "doctor",
            f"http://127.0.0.1:{server.server_port}/",
            "--json",
        ],
    }
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "hyperfine.json"
            args = [
                "hyperfine",
                "-N",
                "-i",
                "--warmup",
                "3",
                "--runs",
                str(options.runs),
                "--export-json",
                str(out),
                "--style",
                "basic",
            ]
            for name, argv in commands.items():
                args.extend(["--command-name", name, shlex.join(argv)])
            subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
            medians = {
                r["command"]: float(r["median"]) for r in json.loads(out.read_text())["results"]
            }
    finally:
        server.shutdown()
        server.server_close()
    goals = {"doctor refused": 0.300, "doctor healthy http": 0.500}
    report = {
        name: {
            "median_ms": round(medians[name] * 1000, 1),
            "goal_ms": goals[name] * 1000,
            "met": medians[name] <= goals[name],
        }
        for name in commands
    }
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "doctor.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if all(r["met"] for r in report.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
