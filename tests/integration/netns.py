"""Private network namespaces for tests: real "other hosts" and private loopbacks.

Every namespace gets a unique name and is deleted afterwards; every process started in it
is ended by its pid. Nothing here touches the host's own interfaces, firewall or /etc.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

PYTHON = sys.executable

#: A TCP server for tests: binds HOST PORT (0 = any) with options, prints the port once it
#: listens, then serves (or not) as asked. Readiness is the printed line, never a sleep.
SERVER = r"""
import socket, sys, threading
host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if family == socket.AF_INET6:
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if "v6only" in sys.argv[4:] else 0)
s.bind((host, port))
if mode == "bind-only":
    print(s.getsockname()[1], flush=True); sys.stdin.read(); raise SystemExit
s.listen(1 if mode == "no-accept" else 64)
print(s.getsockname()[1], flush=True)
if mode == "no-accept":
    sys.stdin.read(); raise SystemExit
def serve(c):
    with c:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = c.recv(4096)
            if not chunk:
                return
            data += chunk
        body = b"hello from portside tests\n"
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nServer: test\r\nConnection: close\r\n\r\n%s" % (len(body), body))
while True:
    conn, _ = s.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def free_port_everywhere() -> int:
    """A port free on every address of both families right now: a dual-stack bind to
    [::]:0 holds it on 0.0.0.0 and :: at once. Tests that check one family against
    another use it, so that no other process's socket on the other family interferes."""
    import socket

    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        probe.bind(("::", 0))
        return int(probe.getsockname()[1])


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces; CI runs as root")
    if not shutil.which("ip"):
        pytest.skip("needs iproute2 (`ip`); `make test` installs it")


class Namespace:
    """A named network namespace with ``lo`` up (unless asked otherwise)."""

    def __init__(self, prefix: str = "ps-test", *, lo_up: bool = True) -> None:
        self.name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self._procs: list[subprocess.Popen[str]] = []
        if lo_up:
            self.ip("link", "set", "lo", "up")

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.name, *args], check=True)

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        env: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            capture_output=True,
            text=True,
            check=check,
            env=env,
            timeout=timeout,
        )

    def start(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[str]:
        proc: subprocess.Popen[str] = subprocess.Popen(  # type: ignore[call-overload]
            ["ip", "netns", "exec", self.name, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            **kwargs,
        )
        self._procs.append(proc)
        return proc

    def server(
        self, host: str, port: int = 0, mode: str = "http", *options: str
    ) -> tuple[subprocess.Popen[str], int]:
        """Start the test server inside the namespace; returns (process, port) once it listens."""
        proc = self.start([PYTHON, "-c", SERVER, host, str(port), mode, *options])
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip():
            raise RuntimeError(f"test server on {host}:{port} did not start")
        return proc, int(line)

    def portside(
        self, *args: str, env: dict[str, str] | None = None, mount_hosts: Path | None = None
    ) -> tuple[int, Any]:
        """Run ``portside ARGS --json`` inside the namespace; (exit code, document)."""
        command = [PYTHON, "-m", "portside", *args, "--json"]
        if mount_hosts is not None:
            # A private mount namespace: /etc/hosts is replaced for this process only.
            script = f'mount --bind {mount_hosts} /etc/hosts && exec "$@"'
            command = [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
                *command,
            ]
        done = self.run(command, check=False, env={**os.environ, **(env or {})})
        try:
            document = json.loads(done.stdout)
        except json.JSONDecodeError as exc:
            raise AssertionError(
                f"portside printed no JSON (exit {done.returncode}): {done.stdout!r} {done.stderr!r}"
            ) from exc
        return done.returncode, document

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
        subprocess.run(["ip", "netns", "del", self.name], check=False)


@contextlib.contextmanager
def namespace(prefix: str = "ps-test", *, lo_up: bool = True) -> Iterator[Namespace]:
    require_root()
    ns = Namespace(prefix, lo_up=lo_up)
    try:
        yield ns
    finally:
        ns.close()
