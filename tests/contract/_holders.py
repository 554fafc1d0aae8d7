"""Child processes that hold sockets passed to them, for the owner-lookup tests."""

from __future__ import annotations

import socket
import subprocess
import sys


def start_holder(sockets: list[socket.socket]) -> subprocess.Popen[str]:
    """A Python child holding ``sockets`` (passed as fds) until its stdin closes; it has
    them once this returns (it said so)."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        pass_fds=[s.fileno() for s in sockets],
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
    except BaseException:
        child.kill()  # ours, by its pid: never left behind
        child.wait()
        raise
    return child


def stop_holder(child: subprocess.Popen[str]) -> None:
    """End a holder (its stdin closed) and reap it."""
    assert child.stdin is not None
    assert child.stdout is not None
    child.stdin.close()
    child.wait(timeout=10)
    child.stdout.close()
