"""``portside kill`` against real processes: grace then SIGKILL, trees, exact ports, and
every refusal. Each test ends the processes it started, by pid."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from portside.cli import main as portside
from portside.pick import pick_port

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "portside"]

#: Listens on 127.0.0.1:PORT (0: any), then prints "PORT PID [GRANDCHILD_PID]" and waits.
#: Flags: ignore-term (SIGTERM ignored), child (start a grandchild that only sleeps),
#: bind-only (bind without listen: a BOUND socket, not a listener).
LISTENER = r"""
import signal, socket, subprocess, sys, os
port, flags = int(sys.argv[1]), sys.argv[2:]
if "ignore-term" in flags:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
s = socket.socket()
s.bind(("127.0.0.1", port))
if "bind-only" not in flags:
    s.listen()
out = [str(s.getsockname()[1]), str(os.getpid())]
if "child" in flags:
    child = subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL)
    out.append(str(child.pid))
print(" ".join(out), flush=True)
while True:
    signal.pause()
"""


class Listener:
    def __init__(self, *flags: str, port: int = 0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LISTENER, str(port), *flags],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        fields = [int(x) for x in self.proc.stdout.readline().split()]
        if not fields:
            self.stop()
            raise RuntimeError("the listener did not start")
        self.port, self.pid = fields[0], fields[1]
        self.grandchild = fields[2] if len(fields) > 2 else None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.grandchild is not None and _alive(self.grandchild):
            os.kill(self.grandchild, signal.SIGKILL)  # ours: started by our listener
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _wait_gone(pid: int, timeout_s: float = 10.0) -> None:
    """Until ``pid`` has ended (SIGKILL was sent; the kernel takes a moment), bounded."""
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        os.sched_yield()


@contextlib.contextmanager
def listener(*flags: str, port: int = 0) -> Iterator[Listener]:
    started = Listener(*flags, port=port)
    try:
        yield started
    finally:
        started.stop()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def _json_kill(capsys, *argv: str) -> tuple[int, dict[str, Any]]:
    code = portside(["kill", *argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else {}


def test_sigterm_stops_a_listener_and_frees_the_port(capsys):
    with listener() as held:
        code, document = _json_kill(capsys, str(held.port), "--yes")
        assert code == 0
        assert held.proc.wait(timeout=10) == -signal.SIGTERM
        assert [p["outcome"] for p in document["processes"]] == ["terminated"]
        assert document["port_free"] is True
        assert not _listening(held.port)


def test_a_process_that_ignores_sigterm_gets_sigkill_after_the_grace(capsys):
    with listener("ignore-term") as held:
        code, document = _json_kill(capsys, str(held.port), "--yes", "--grace", "0.3")
        assert code == 0
        assert held.proc.wait(timeout=10) == -signal.SIGKILL
        [result] = document["processes"]
        assert result["outcome"] == "killed"
        assert result["pid"] == held.pid


def test_tree_stops_the_descendants_too(capsys):
    with listener("child") as held:
        assert held.grandchild is not None
        assert _alive(held.grandchild)
        code, document = _json_kill(capsys, str(held.port), "--yes", "--tree")
        assert code == 0
        held.proc.wait(timeout=10)
        roles = {p["pid"]: p["role"] for p in document["plan"]["processes"]}
        assert roles == {held.pid: "holder", held.grandchild: "descendant"}
        assert not _alive(held.grandchild)


def test_without_tree_the_descendants_are_left(capsys):
    with listener("child") as held:
        code, document = _json_kill(capsys, str(held.port), "--yes")
        assert code == 0
        held.proc.wait(timeout=10)
        assert [p["pid"] for p in document["plan"]["processes"]] == [held.pid]
        assert held.grandchild is not None
        assert _alive(held.grandchild)


def test_dry_run_changes_nothing_and_says_what_would_happen(capsys):
    with listener("child") as held:
        code = portside(["kill", str(held.port), "--dry-run", "--tree", "--grace", "7"])
        out = capsys.readouterr().out
        assert code == 0
        assert "dry run" in out
        assert f"SIGTERM python3[{held.pid}]" in out or f"[{held.pid}]:" in out
        assert f"[{held.grandchild}]" in out
        assert "wait up to 7 s, then SIGKILL" in out
        assert held.alive()
        assert _listening(held.port)
        assert held.grandchild is not None
        assert _alive(held.grandchild)


def test_only_the_exact_port_matches(capsys):
    """A listener on P*10+1 (3000 -> 30001) is not touched by ``kill P``."""
    for _ in range(100):
        (wide,) = pick_port(port_range=(10241, 65531))
        if wide % 10 == 1 and not _listening(wide // 10):
            break
    else:
        pytest.skip("no port of the form P*10+1 was free")
    with listener(port=wide) as held:
        assert portside(["kill", str(wide // 10), "--yes"]) == 1
        assert "nothing holds" in capsys.readouterr().out
        assert held.alive()
        assert _listening(held.port)


def test_only_listeners_unless_all_sockets(capsys):
    with listener("bind-only") as held:
        assert portside(["kill", str(held.port), "--yes"]) == 1
        assert "nothing holds" in capsys.readouterr().out
        assert held.alive()
        code, document = _json_kill(capsys, str(held.port), "--yes", "--all-sockets")
        assert code == 0
        assert held.proc.wait(timeout=10) == -signal.SIGTERM
        assert document["plan"]["sockets"][0]["state"] == "bound"


def test_nothing_on_the_port_exits_1(capsys):
    (port,) = pick_port()
    assert portside(["kill", str(port), "--yes"]) == 1
    assert f"nothing holds port {port}" in capsys.readouterr().out


# --------------------------------------------------------------------------- refusals


def test_it_refuses_to_signal_itself(capsys):
    with socket.socket() as mine:
        mine.bind(("127.0.0.1", 0))
        mine.listen()
        port = mine.getsockname()[1]
        assert portside(["kill", str(port), "--yes"]) == 2
        err = capsys.readouterr().err
        assert "portside itself" in err
        assert _listening(port)


def test_it_refuses_to_signal_its_parent():
    with socket.socket() as mine:
        mine.bind(("127.0.0.1", 0))
        mine.listen()
        port = mine.getsockname()[1]
        done = subprocess.run(
            [*CLI, "kill", str(port), "--yes"], cwd=ROOT, capture_output=True, text=True
        )
        assert done.returncode == 2
        assert "portside's parent" in done.stderr
        assert _listening(port)


@pytest.mark.root
def test_it_refuses_to_signal_pid_1():
    """In a private pid namespace our listener *is* pid 1; portside runs in there too."""
    unshare, nsenter = shutil.which("unshare"), shutil.which("nsenter")
    if not unshare or not nsenter:
        pytest.skip("needs util-linux unshare and nsenter")
    outer = subprocess.Popen(
        [
            unshare,
            "--pid",
            "--fork",
            "--kill-child",  # unshare's end ends its child too (pid 1 of the namespace)
            "--mount-proc",
            sys.executable,
            "-c",
            LISTENER,
            "0",
        ],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    host_pid = None
    try:
        assert outer.stdout is not None
        port, inner_pid = (int(x) for x in outer.stdout.readline().split())
        assert inner_pid == 1
        children = Path(f"/proc/{outer.pid}/task/{outer.pid}/children").read_text().split()
        host_pid = int(children[0])
        done = subprocess.run(
            [
                nsenter,
                "-t",
                str(host_pid),
                "--pid",
                "--mount",
                f"--wd={ROOT}",
                *CLI,
                "kill",
                str(port),
                "--yes",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 2, done.stderr
        assert "pid 1" in done.stderr
        assert _alive(host_pid)
        assert _listening(port)
    finally:
        if host_pid is not None and _alive(host_pid):
            os.kill(host_pid, signal.SIGKILL)  # ours: the listener our unshare started
        outer.kill()
        outer.wait()
        if host_pid is not None:
            _wait_gone(host_pid)
        assert host_pid is None or not _alive(host_pid), "the listener outlived the test"


def test_without_a_terminal_it_refuses_unless_yes():
    with listener() as held:
        done = subprocess.run(
            [*CLI, "kill", str(held.port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 2
        assert "without a terminal" in done.stderr
        assert "--yes" in done.stderr
        assert held.alive()
        assert _listening(held.port)


def _run_on_a_terminal(argv: list[str], answer: bytes) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as stdin, answer its question, return (rc, stderr)."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            argv, cwd=ROOT, stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        os.close(slave)
        slave = -1
        os.write(master, answer)
        out, err = proc.communicate(timeout=60)
        return proc.returncode, err.decode() + out.decode()
    finally:
        if slave != -1:
            os.close(slave)
        os.close(master)


def test_on_a_terminal_it_asks_and_no_means_no():
    with listener() as held:
        code, text = _run_on_a_terminal([*CLI, "kill", str(held.port)], b"n\n")
        assert code == 2
        assert "Stop them? [y/N]" in text
        assert "nothing was signalled" in text
        assert held.alive()


def test_on_a_terminal_yes_stops_it():
    with listener() as held:
        code, text = _run_on_a_terminal([*CLI, "kill", str(held.port)], b"y\n")
        assert code == 0, text
        assert held.proc.wait(timeout=10) == -signal.SIGTERM
        assert "terminated" in text


@pytest.mark.root
def test_another_users_process_is_refused_with_the_reason():
    """Run portside as ``nobody`` against our (root's) listener."""
    runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")
    if runuser is None:
        pytest.skip("needs util-linux runuser")
    # pyenv's interpreter may live under /root, which nobody cannot enter: fall back to
    # the system's Python 3 with this checkout on its path.
    pythonpath = f"PYTHONPATH={ROOT / 'src'}:{ROOT}"
    for python in (sys.executable, "/usr/bin/python3"):
        as_nobody = [runuser, "-u", "nobody", "--", "env", pythonpath, python]
        probe = subprocess.run(
            [*as_nobody, "-c", "import portside.kill, tests"], cwd=ROOT, capture_output=True
        )
        if probe.returncode == 0:
            break
    else:
        pytest.skip(f"user nobody cannot run portside here: {probe.stderr[-200:]!r}")
    with listener() as held:
        done = subprocess.run(
            [*as_nobody, *CLI[1:], "kill", str(held.port), "--yes"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 2
        assert "run with sudo" in done.stderr
        assert held.alive()


def test_bad_grace_is_a_usage_error(capsys):
    assert portside(["kill", "1", "--grace", "-1"]) == 2
    assert "--grace" in capsys.readouterr().err
