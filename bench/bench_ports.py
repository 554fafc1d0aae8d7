"""Port figures: ``portside pick`` wall time (hyperfine) and the registry's reservation
rate with 8 processes reserving at once.

* ``portside pick``            goal: median <= 60 ms wall (``python -c pass`` for scale)
* reservations per second      goal: >= 500 across 8 concurrent processes (250 names each,
  released barrier start, fresh registry per round; the median of the rounds)

Each run uses a private ``PORTSIDE_HOME`` (a temporary directory, removed afterwards);
every worker process it starts is waited for. Results: stdout and bench/results/ports.json.

    .venv/bin/python bench/bench_ports.py [--runs 30] [--processes 8] [--names 250] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

WORKER = r"""
import sys, time
from portside.registry import Registry
index, count = int(sys.argv[1]), int(sys.argv[2])
registry = Registry.open()
print("ready", flush=True)
sys.stdin.readline()
for j in range(count):
    registry.reserve(f"w{index}-n{j}", scope="global")
registry.close()
print("done", flush=True)
"""


FILL = r"""
import sys
from portside.registry import Registry
with Registry.open() as registry:
    for i in range(int(sys.argv[1])):
        registry.reserve(f"app{i}", scope="global")
"""


def pick_command() -> tuple[list[str], str]:
    """The installed console script, as a user runs it."""
    return [str(BIN / "portside"), "pick"], "portside pick"


def hyperfine_pick(runs: int, env: dict[str, str], home: str) -> dict[str, float]:
    """Median wall times (ms): ``pick`` with no registry file (the common case: nothing
    to read), ``pick`` with a registry of 100 reservations, and ``python -c pass``."""
    command, label = pick_command()
    filled = f"{home}/filled"
    subprocess.run(
        [sys.executable, "-c", FILL, "100"],
        env={**env, "PORTSIDE_HOME": filled},
        check=True,
        cwd=ROOT,
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "hyperfine.json"
        args = ["hyperfine", "-N", "--warmup", "3", "--runs", str(runs), "--style", "basic"]
        args += ["--export-json", str(out)]
        args += ["--command-name", label, shlex.join(command)]
        with_registry = ["env", f"PORTSIDE_HOME={filled}", *command]
        args += ["--command-name", f"{label} (registry of 100)", shlex.join(with_registry)]
        args += ["--command-name", "python -c pass", shlex.join([sys.executable, "-c", "pass"])]
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL, cwd=ROOT, env=env)
        results = json.loads(out.read_text())["results"]
    return {r["command"]: float(r["median"]) * 1000 for r in results}


def reservation_round(processes: int, names: int, env: dict[str, str]) -> float:
    """Reservations per second, all processes released at once on a fresh registry."""
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(i), str(names)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        for i in range(processes)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline() == "ready\n"  # registry open in every worker
        started = time.perf_counter()
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline() == "done\n"
        elapsed = time.perf_counter() - started
    finally:
        for worker in workers:
            if worker.stdin:
                worker.stdin.close()
            worker.wait()
    return processes * names / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--names", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    if not shutil.which("hyperfine"):
        print("needs hyperfine (apt-get install hyperfine)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="ps-bench-") as home:
        env = {**os.environ, "PORTSIDE_HOME": home}
        medians = hyperfine_pick(options.runs, env, home)
        rates = []
        for round_ in range(options.rounds):
            round_env = {**env, "PORTSIDE_HOME": f"{home}/round-{round_}"}
            rates.append(reservation_round(options.processes, options.names, round_env))
    pick_ms = next(v for k, v in medians.items() if k.endswith("pick"))  # no registry file
    rate = statistics.median(rates)
    goals: dict[str, dict[str, float | bool]] = {
        "pick_ms<=60": {"measured": round(pick_ms, 2), "met": pick_ms <= 60},
        "reservations_per_s>=500": {"measured": round(rate), "met": rate >= 500},
    }
    report = {
        "cpus": os.cpu_count(),
        "pick_median_ms": {name: round(value, 2) for name, value in medians.items()},
        "reservations": {
            "processes": options.processes,
            "names_each": options.names,
            "rounds_per_second": [round(r) for r in rates],
            "median_per_second": round(rate),
        },
        "goals": goals,
    }
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "ports.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if all(goal["met"] for goal in goals.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
