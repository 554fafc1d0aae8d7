"""Inspection figures, side by side with ss, in one run on the same machine state.

Sets up about 3,000 TCP listeners on loopback (held by 30 worker processes) and tops the
machine up to about 700 processes (idle ``sleep`` processes), then times:

* ``portside ls --json``               vs  ``ss -tlnpH``
* ``portside who PORT --json``         vs  ``ss -tlnpH 'sport = :PORT'``
* ``portside --version``               vs  ``python -c pass`` (same venv)

(the goals of the issue), and for reference what ss costs for the same sockets portside
lists: ``ss -tulnpH`` (TCP and UDP listeners) and ``ss -tuanpH 'sport = :PORT'`` (every
TCP and UDP socket on the port, in any state: ``who`` lists TIME_WAIT and established
sockets too, which costs a walk of the kernel's whole connection table, and more so on a
machine with many connections),

in three scenarios (``--scenario`` picks; all by default):

* ``worst-case`` (the figures of record): every holder and sleeper runs as root in one
  cgroup, so no owner lookup can be narrowed: every fd table on the machine is read.
* ``holders-as-nobody``: the same, but the 30 listener holders run as ``nobody`` (as
  services run under their own users on a real machine), so the uid narrowing of the
  owner lookup applies to their sockets. The sleepers and the rest of the machine are
  unchanged; any root socket elsewhere still makes ``ls`` read every fd table.
* ``holders-in-cgroups``: the holders run as root, each in a cgroup v2 group of its own
  (as systemd services and containers do), made for the run under the cgroup2 mount and
  removed afterwards; the cgroup narrowing of the owner lookup applies to their sockets.

Fairness: the runs interleave (each round runs every command once, in a rotated order;
3 warm-up rounds), every command runs as the same user against the same sockets, and a
check first makes sure both sides do the same work (ss names the owners, portside finds
them and lists at least ss's TCP listeners). Python bytecode is compiled first, into the
package's ``__pycache__`` as ``make compile`` and pip do (an installed package has it
there), and may be written during the run (``PYTHONDONTWRITEBYTECODE`` is unset for the
commands): a source edited meanwhile is compiled once, not on every run. An earlier
version kept the bytecode in a private ``PYTHONPYCACHEPREFIX``; that costs every Python
start a few milliseconds an installed package does not pay (``python -c pass`` +2 ms,
``portside ls`` +5 ms on one machine state).
The figures are medians of wall time; the CPU time (user + system, from wait4) of each
run is reported beside them, as the machine may be shared.

Every process it starts is ended by pid when it finishes. Results: medians and ratios on
stdout and in bench/results/inspect.json (the worst case at the top level, as before, and
every scenario under ``scenarios``). Exit status 0 when every goal of the worst case is met.

    .venv/bin/python bench/bench_inspect.py [--runs 30] [--listeners 3000] [--processes 700]
        [--scenario worst-case|holders-as-nobody|holders-in-cgroups]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HOLDER = """
import socket, sys, time
n = int(sys.argv[1])
held = []
for _ in range(n):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    held.append(s)
print(held[0].getsockname()[1], flush=True)
sys.stdin.read()  # until the benchmark closes our stdin
"""
NOBODY = 65534
WORST_CASE = "worst-case"
AS_NOBODY = "holders-as-nobody"
IN_CGROUPS = "holders-in-cgroups"
SCENARIOS = (WORST_CASE, AS_NOBODY, IN_CGROUPS)


def _become_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _python_for_nobody() -> str:
    """An interpreter ``nobody`` may run (ours may live under a private home)."""
    for candidate in (sys.executable, "/usr/bin/python3", shutil.which("python3") or ""):
        if not candidate:
            continue
        try:
            done = subprocess.run(
                [candidate, "-c", "pass"],
                preexec_fn=_become_nobody,
                check=False,
                capture_output=True,
            )
        except OSError:  # not executable by nobody
            continue
        if done.returncode == 0:
            return candidate
    raise SystemExit("no Python interpreter that the user nobody may run")


def _cgroup2_root() -> str | None:
    """Where the cgroup v2 hierarchy's root is mounted (None: not mounted), as portside's
    owner lookup finds it."""
    from portside.sockets._owners import cgroup2_mount

    mount = cgroup2_mount()
    return mount[0] if mount is not None else None


def _enter_cgroup(directory: str) -> Callable[[], None]:
    def enter() -> None:
        with open(f"{directory}/cgroup.procs", "w") as handle:
            handle.write(str(os.getpid()))

    return enter


def start_holders(
    listeners: int, workers: int, *, as_nobody: bool = False, cgroups: list[str] | None = None
) -> tuple[list[subprocess.Popen[str]], int]:
    """Holders of ``listeners`` listeners; with ``cgroups`` (a directory per worker), each
    moves into its own before it makes a socket (a socket's cgroup is its creator's)."""
    per_worker = -(-listeners // workers)
    procs: list[subprocess.Popen[str]] = []
    first_port = 0
    python = _python_for_nobody() if as_nobody else sys.executable
    for index in range(workers):
        preexec: Callable[[], None] | None = _become_nobody if as_nobody else None
        if cgroups is not None:
            preexec = _enter_cgroup(cgroups[index])
        proc = subprocess.Popen(
            [python, "-c", HOLDER, str(per_worker)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=preexec,
        )
        procs.append(proc)
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # readiness: the worker prints once every socket listens
        first_port = first_port or int(line)
    return procs, first_port


def start_sleepers(target_total: int) -> list[subprocess.Popen[bytes]]:
    current = sum(1 for name in os.listdir("/proc") if name.isdigit())
    return [subprocess.Popen(["sleep", "3600"]) for _ in range(max(0, target_total - current))]


def _installed_bytecode_env() -> dict[str, str]:
    """The environment every command runs in: portside's bytecode compiled beside its
    sources (``src/**/__pycache__``, ignored by git, as ``make compile`` leaves it), and
    ``PYTHONDONTWRITEBYTECODE`` (set in some environments) removed, so that a module
    edited while this runs is compiled once rather than on every run."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("PYTHONPYCACHEPREFIX", None)
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(ROOT / "src")],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return env


def _run_once(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds user+system, exit status) of one run, output discarded."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        started = time.perf_counter()
        pid = os.posix_spawnp(
            argv[0],
            argv,
            env,
            file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 1), (os.POSIX_SPAWN_DUP2, devnull, 2)],
        )
        _pid, status, usage = os.wait4(pid, 0)
        wall = time.perf_counter() - started
    finally:
        os.close(devnull)
    return wall, usage.ru_utime + usage.ru_stime, os.waitstatus_to_exitcode(status)


def interleaved(
    commands: dict[str, list[str]], runs: int, env: dict[str, str], warmup: int = 3
) -> dict[str, dict[str, float]]:
    """Median wall and CPU time of each command over ``runs`` rounds. Every round runs
    each command once, in an order rotated from round to round, so that whatever else
    the machine does at the time weighs on every command alike."""
    names = list(commands)
    walls: dict[str, list[float]] = {name: [] for name in names}
    cpus: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(warmup + runs):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            wall, cpu, status = _run_once(commands[name], env)
            if status not in (0, 1):  # 1: portside's "nothing found", never expected here
                raise SystemExit(f"{name} failed with exit status {status}")
            if round_ >= warmup:
                walls[name].append(wall)
                cpus[name].append(cpu)
    return {
        name: {"wall": statistics.median(walls[name]), "cpu": statistics.median(cpus[name])}
        for name in names
    }


def _check_same_work(portside: str, port: int, holders: set[int], env: dict[str, str]) -> None:
    """Both sides see the same listeners with their owners (else the figures compare
    different work): ss names a process for the port, portside finds an owner for it,
    and both attribute the same number of listeners to the benchmark's holders (other
    sockets on the machine may come and go meanwhile)."""
    ss_port = subprocess.run(
        ["ss", "-tlnpH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    if "users:((" not in ss_port:
        raise SystemExit(f"ss shows no owner for port {port}: run as root")
    who = json.loads(
        subprocess.run(
            [portside, "who", str(port), "--json"], capture_output=True, text=True, env=env
        ).stdout
    )
    if not any(socket["owners"] for socket in who["sockets"]):
        raise SystemExit(f"portside who {port} found no owner")
    ss_all = subprocess.run(["ss", "-tlnpH"], capture_output=True, text=True, check=True).stdout
    by_ss = sum(1 for line in ss_all.splitlines() if any(f"pid={pid}," in line for pid in holders))
    listed = json.loads(
        subprocess.run([portside, "ls", "--json"], capture_output=True, text=True, env=env).stdout
    )
    by_portside = sum(
        1
        for socket in listed["sockets"]
        if socket["transport"] == "tcp"
        and any(owner["process"]["pid"] in holders for owner in socket["owners"])
    )
    if by_portside != by_ss:
        raise SystemExit(f"the holders' listeners: ss shows {by_ss}, portside ls {by_portside}")


def stop(holders: list[subprocess.Popen[str]], sleepers: list[subprocess.Popen[bytes]]) -> None:
    for proc in holders:
        assert proc.stdin is not None
        proc.stdin.close()
    for sleeper in sleepers:
        sleeper.kill()
    for holder in holders:
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    for sleeper in sleepers:
        sleeper.wait()


def _network_namespaces() -> int:
    """Network namespaces on this machine: of processes, and named (``ip netns``)."""
    seen: set[int] = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                seen.add(os.stat(f"/proc/{name}/ns/net").st_ino)
            except OSError:
                continue
    for name in os.listdir("/run/netns") if os.path.isdir("/run/netns") else ():
        try:
            seen.add(os.stat(f"/run/netns/{name}").st_ino)
        except OSError:
            continue
    return len(seen)


def _time_wait_sockets() -> int:
    """TCP sockets in TIME_WAIT on this machine (``tw`` in /proc/net/sockstat)."""
    with open("/proc/net/sockstat") as handle:
        for line in handle:
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index("tw") + 1])
    return 0


def _make_cgroups(workers: int) -> list[str]:
    """A cgroup per holder, under one made for this run (removed by run_scenario)."""
    root = _cgroup2_root()
    if root is None:
        raise SystemExit(f"{IN_CGROUPS} needs a cgroup v2 mount")
    parent = f"{root}/portside-bench-{os.getpid()}"
    os.mkdir(parent)
    made = []
    for index in range(workers):
        os.mkdir(f"{parent}/holder-{index}")
        made.append(f"{parent}/holder-{index}")
    return made


def run_scenario(name: str, options: argparse.Namespace) -> dict[str, object]:
    portside = str(BIN / "portside")
    python = str(BIN / "python")
    cgroups = _make_cgroups(options.workers) if name == IN_CGROUPS else None
    holders, port = start_holders(
        options.listeners, options.workers, as_nobody=name == AS_NOBODY, cgroups=cgroups
    )
    sleepers = start_sleepers(options.processes)
    try:
        total_procs = sum(1 for name in os.listdir("/proc") if name.isdigit())
        listening = len(
            subprocess.run(
                ["ss", "-tlnH"], capture_output=True, text=True, check=True
            ).stdout.splitlines()
        )
        time_wait = _time_wait_sockets()  # each costs who's walk of the connection table
        namespaces = _network_namespaces()  # portside looks into each (ss does not)
        env = _installed_bytecode_env()
        _check_same_work(portside, port, {holder.pid for holder in holders}, env)
        medians = interleaved(
            {
                "ss -tlnpH": ["ss", "-tlnpH"],
                "portside ls --json": [portside, "ls", "--json"],
                "ss -tlnpH sport": ["ss", "-tlnpH", f"sport = :{port}"],
                "portside who --json": [portside, "who", str(port), "--json"],
                "python -c pass": [python, "-c", "pass"],
                "portside --version": [portside, "--version"],
                # The same sockets portside lists: TCP and UDP listeners; every TCP
                # and UDP socket on the port, in any state.
                "ss -tulnpH": ["ss", "-tulnpH"],
                "ss -tuanpH sport": ["ss", "-tuanpH", f"sport = :{port}"],
            },
            options.runs,
            env,
        )
    finally:
        stop(holders, sleepers)
        if cgroups:
            for directory in cgroups:
                os.rmdir(directory)
            os.rmdir(os.path.dirname(cgroups[0]))
    pairs = {
        "ls_vs_ss": ("portside ls --json", "ss -tlnpH", 1.0),
        "who_vs_ss_filtered": ("portside who --json", "ss -tlnpH sport", 0.7),
        "version_vs_bare_python": ("portside --version", "python -c pass", 3.0),
    }
    # Not goals (the issue names the ss commands above), but what the same listing costs ss.
    same_sockets = {
        "ls_vs_ss_tcp_and_udp": ("portside ls --json", "ss -tulnpH"),
        "who_vs_ss_every_state": ("portside who --json", "ss -tuanpH sport"),
    }
    wall = {name: times["wall"] for name, times in medians.items()}
    cpu = {name: times["cpu"] for name, times in medians.items()}
    return {
        "holders": "nobody" if name == AS_NOBODY else "root",
        "holders_in_own_cgroups": name == IN_CGROUPS,
        "machine": {
            "listeners": listening,
            "processes": total_procs,
            "cpus": os.cpu_count(),
            "tcp_time_wait": time_wait,
            "network_namespaces": namespaces,
        },
        "runs": options.runs,
        "medians_ms": {key: round(value * 1000, 2) for key, value in wall.items()},
        "cpu_medians_ms": {key: round(value * 1000, 2) for key, value in cpu.items()},
        "ratios": {
            key: {
                "measured": round(wall[ours] / wall[theirs], 3),
                "goal": goal,
                "met": wall[ours] / wall[theirs] <= goal,
                "cpu": round(cpu[ours] / cpu[theirs], 3),
            }
            for key, (ours, theirs, goal) in pairs.items()
        },
        "same_sockets_ratios": {
            key: {
                "measured": round(wall[ours] / wall[theirs], 3),
                "cpu": round(cpu[ours] / cpu[theirs], 3),
            }
            for key, (ours, theirs) in same_sockets.items()
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--listeners", type=int, default=3000)
    parser.add_argument("--processes", type=int, default=700)
    parser.add_argument("--workers", type=int, default=30)
    parser.add_argument("--scenario", choices=SCENARIOS, action="append")
    options = parser.parse_args()
    if not shutil.which("ss"):
        print("needs ss (apt-get install iproute2)", file=sys.stderr)
        return 2
    chosen = [name for name in SCENARIOS if name in (options.scenario or SCENARIOS)]
    if AS_NOBODY in chosen and os.geteuid() != 0:
        print(f"{AS_NOBODY} needs root (to start processes as nobody): skipped", file=sys.stderr)
        chosen.remove(AS_NOBODY)
    if IN_CGROUPS in chosen and (os.geteuid() != 0 or _cgroup2_root() is None):
        print(f"{IN_CGROUPS} needs root and a cgroup v2 mount: skipped", file=sys.stderr)
        chosen.remove(IN_CGROUPS)
    scenarios = {name: run_scenario(name, options) for name in chosen}
    report: dict[str, object] = dict(scenarios.get(WORST_CASE, {}))
    report.pop("holders", None)
    report["scenarios"] = scenarios
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "inspect.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    primary = scenarios.get(WORST_CASE) or next(iter(scenarios.values()))
    ratios = primary["ratios"]
    assert isinstance(ratios, dict)
    return 0 if all(r["met"] for r in ratios.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
