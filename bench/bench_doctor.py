"""doctor's figures: wall time on a refused target (goal <= 300 ms) and on a healthy HTTP
target (goal <= 500 ms), plus a healthy HTTPS target (no goal; it shows the handshake path).

No public tool answers "why does it not answer?", so doctor is set side by side with what
a user runs instead: ``curl`` on the same URL (it says only *that* the connect failed) and
``ss -tanp`` for the port (the socket table with owners); ``python -c pass`` shows the
interpreter's own start-up at that moment (the floor of any Python CLI). All commands of
a scenario run in one hyperfine invocation, so the machine's load hits them alike.
Medians, ratios, the goals and the load average go to stdout and bench/results/doctor.json.

    .venv/bin/python bench/bench_doctor.py [--runs 30]

Needs hyperfine, curl and ss (iproute2); openssl for the HTTPS row.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PORTSIDE = str(Path(sys.executable).parent / "portside")
GOALS_S = {"refused": 0.300, "healthy http": 0.500}


class Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 -- the stdlib's name
        return


@contextlib.contextmanager
def serving(tls_dir: Path | None = None) -> Iterator[int]:
    """A threaded HTTP server on 127.0.0.1 (HTTPS with a throwaway certificate if asked)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    server.daemon_threads = True
    if tls_dir is not None:
        key, cert = tls_dir / "key.pem", tls_dir / "cert.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
             "-subj", "/CN=localhost"],
            check=True,
            capture_output=True,
        )  # fmt: skip
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def scenarios(refused: int, http: int, https: int | None) -> dict[str, dict[str, list[str]]]:
    curl = ["curl", "-sS", "-o", "/dev/null", "--noproxy", "*", "--max-time", "5"]
    table = {
        "refused": {
            "portside doctor": [PORTSIDE, "doctor", f"127.0.0.1:{refused}", "--json"],
            "curl": [*curl, f"http://127.0.0.1:{refused}/"],
            "ss -tanp": ["ss", "-Htanp", f"sport = :{refused}"],
            # The floor under any Python CLI on this machine at this moment.
            "python -c pass": [sys.executable, "-c", "pass"],
        },
        "healthy http": {
            "portside doctor": [PORTSIDE, "doctor", f"http://127.0.0.1:{http}/", "--json"],
            "curl": [*curl, f"http://127.0.0.1:{http}/"],
            "ss -tanp": ["ss", "-Htanp", f"sport = :{http}"],
        },
    }
    if https is not None:
        table["healthy https"] = {
            "portside doctor": [PORTSIDE, "doctor", f"https://127.0.0.1:{https}/", "--json"],
            "curl": [*curl, "-k", f"https://127.0.0.1:{https}/"],
        }
    return table


def measure(commands: dict[str, list[str]], runs: int) -> dict[str, float]:
    """hyperfine medians (seconds) of each command, all in one invocation.

    Bytecode is cached as for an installed package (a user never pays for compiling the
    sources on each run), in a temporary directory: PYTHONDONTWRITEBYTECODE, if set, is
    dropped and PYTHONPYCACHEPREFIX points there, so the warm-up runs fill it and nothing
    is written into the repository."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        out = Path(tmp) / "hyperfine.json"
        args = ["hyperfine", "-N", "-i", "--warmup", "3", "--runs", str(runs)]
        args += ["--export-json", str(out), "--style", "none"]
        for name, argv in commands.items():
            args.extend(["--command-name", name, shlex.join(argv)])
        subprocess.run(
            args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
        )
        return {r["command"]: float(r["median"]) for r in json.loads(out.read_text())["results"]}


def _processes() -> int:
    return sum(1 for name in os.listdir("/proc") if name.isdigit())


def refusing(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    options = parser.parse_args()
    missing = [tool for tool in ("hyperfine", "curl", "ss") if not shutil.which(tool)]
    if missing:
        print(
            f"needs {', '.join(missing)} (apt-get install hyperfine curl iproute2)", file=sys.stderr
        )
        return 2
    with socket.socket() as probe:
        # A port the kernel just handed out and that nothing holds: "nothing listening".
        probe.bind(("127.0.0.1", 0))
        refused = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as tls_dir, serving() as http:
        tls = Path(tls_dir) if shutil.which("openssl") else None
        with serving(tls) if tls else contextlib.nullcontext(None) as https:
            medians = {
                name: measure(commands, options.runs)
                for name, commands in scenarios(refused, http, https).items()
            }
    if refusing(refused) is False:
        print(f"127.0.0.1:{refused} was taken during the run: run again", file=sys.stderr)
        return 2
    report: dict[str, dict[str, object]] = {
        "machine": {"load average (1 min)": os.getloadavg()[0], "processes": _processes()}
    }
    for name, results in medians.items():
        ours = results["portside doctor"]
        row: dict[str, object] = {
            f"{tool} median_ms": round(seconds * 1000, 1) for tool, seconds in results.items()
        }
        row.update(
            {
                f"doctor / {tool}": round(ours / seconds, 2)
                for tool, seconds in results.items()
                if tool != "portside doctor"
            }
        )
        if name in GOALS_S:
            row["goal_ms"] = GOALS_S[name] * 1000
            row["met"] = ours <= GOALS_S[name]
        report[name] = row
    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / "doctor.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"doctor wall time, hyperfine medians of {options.runs} runs")
    for name, row in report.items():
        goal = ""
        if "goal_ms" in row:
            goal = f"  goal <= {row['goal_ms']:.0f} ms: {'met' if row['met'] else 'NOT met'}"
        print(f"{name}:{goal}")
        for key, value in row.items():
            if key not in ("goal_ms", "met"):
                print(f"  {key:28} {value}")
    return 0 if all(row.get("met", True) for row in report.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
