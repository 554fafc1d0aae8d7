"""Real forwarders for end-to-end tests: sshd + an ``ssh -L`` tunnel, and a paused QEMU
with a user-network host forward.

Everything listens on 127.0.0.1 only and is started as a child process of the test, so
its pid is known; readiness is a successful connect polled against a deadline, never a
bare sleep. On exit each context manager ends exactly the pids it started (SIGTERM, then
SIGKILL after a grace period) and removes its temporary directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import os
import shutil
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

LOOPBACK = "127.0.0.1"
#: Generous: QEMU and sshd start in well under a second on the CI machines.
READY_DEADLINE = 30.0
STOP_GRACE = 10.0
_SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/local/sbin"])


def find_binary(name: str) -> str:
    """Absolute path of ``name`` (sbin included), or skip the test saying what is missing."""
    found = shutil.which(name, path=_SBIN_PATH)
    if found is None:
        package = {"qemu-system-x86_64": "qemu-system-x86"}.get(name, "openssh-server/client")
        pytest.skip(f"`{name}` is not installed (Debian package {package}; CI installs it)")
    return found


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def accepts(port: int) -> bool:
    """Whether something on 127.0.0.1:``port`` completes a TCP handshake."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


class ExitedEarly(RuntimeError):
    """The child exited before it listened (most often: the port was taken meanwhile)."""


def wait_until_listening(
    port: int, proc: subprocess.Popen[bytes], *, log: Path | None = None
) -> None:
    """Poll until 127.0.0.1:``port`` accepts; fail at once if ``proc`` exits, or at the deadline."""
    deadline = time.monotonic() + READY_DEADLINE
    while True:
        if proc.poll() is not None:
            detail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise ExitedEarly(f"{proc.args!r} exited with {proc.returncode}: {detail}")
        if accepts(port):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing accepted on {LOOPBACK}:{port} within {READY_DEADLINE} s")
        time.sleep(0.05)  # polling interval, not a wait for readiness


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End the one process we started: SIGTERM, then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_listening(argv: Sequence[str], *, port: int, log: Path) -> subprocess.Popen[bytes]:
    """Run ``argv`` as our child (output to ``log``); return it once ``port`` accepts.
    On failure the child is stopped before the error propagates."""
    with log.open("wb") as output:
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        wait_until_listening(port, proc, log=log)
    except BaseException:
        stop(proc)
        raise
    return proc


@contextlib.contextmanager
def child_on_free_port(
    make_argv: Callable[[int], Sequence[str]], *, log_dir: Path, label: str, attempts: int = 3
) -> Iterator[tuple[subprocess.Popen[bytes], int, tuple[str, ...]]]:
    """Start ``make_argv(port)`` on a free port until it listens (a port picked free can be
    taken before the child binds it, so a child that exits early is retried on another);
    yield (process, port, argv); stop the process on exit."""
    failures: list[str] = []
    for attempt in range(attempts):
        port = free_port()
        argv = tuple(make_argv(port))
        try:
            proc = start_listening(argv, port=port, log=log_dir / f"{label}-{attempt}.log")
        except ExitedEarly as exc:
            failures.append(str(exc))
            continue
        try:
            yield proc, port, argv
        finally:
            stop(proc)
        return
    raise RuntimeError(f"{label} did not start in {attempts} attempts: {failures}")


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- a target


class _Banner(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(self.server.banner)  # type: ignore[attr-defined]


class _BannerServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextlib.contextmanager
def banner_server(banner: bytes) -> Iterator[int]:
    """A TCP server on 127.0.0.1 that sends ``banner`` to every client; yields its port."""
    server = _BannerServer((LOOPBACK, 0), _Banner)
    server.banner = banner  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=STOP_GRACE)


def read_through(port: int, size: int) -> bytes:
    """Connect to 127.0.0.1:``port`` and read ``size`` bytes (or until EOF)."""
    data = b""
    with socket.create_connection((LOOPBACK, port), timeout=10) as client:
        while len(data) < size:
            chunk = client.recv(size - len(data))
            if not chunk:
                break
            data += chunk
    return data


# --------------------------------------------------------------------------- ssh


@dataclasses.dataclass(frozen=True)
class Sshd:
    pid: int
    port: int
    user: str
    client_key: Path
    workdir: Path


@dataclasses.dataclass(frozen=True)
class SshTunnel:
    pid: int  # the ssh client, which holds the listening socket
    listen_port: int
    target_port: int
    argv: tuple[str, ...]


def _keygen(keygen: str, path: Path) -> None:
    subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


def _privsep_dir() -> None:
    """Debian's sshd wants /run/sshd (its privilege-separation directory)."""
    privsep = Path("/run/sshd")
    if privsep.is_dir():
        return
    try:
        privsep.mkdir(mode=0o755, parents=True)
    except PermissionError:
        pytest.skip("sshd needs /run/sshd, which only root can create")


@contextlib.contextmanager
def running_sshd() -> Iterator[Sshd]:
    """A private sshd on 127.0.0.1 with its own host key, config and authorized key."""
    sshd = find_binary("sshd")
    keygen = find_binary("ssh-keygen")
    _privsep_dir()
    user = getpass.getuser()
    with temp_dir("portside-sshd-") as workdir:
        _keygen(keygen, workdir / "host_ed25519")
        _keygen(keygen, workdir / "client_ed25519")
        shutil.copyfile(workdir / "client_ed25519.pub", workdir / "authorized_keys")
        config = workdir / "sshd_config"

        def argv(port: int) -> list[str]:
            config.write_text(
                "\n".join(
                    [
                        f"Port {port}",
                        f"ListenAddress {LOOPBACK}",
                        f"HostKey {workdir / 'host_ed25519'}",
                        f"PidFile {workdir / 'sshd.pid'}",
                        f"AuthorizedKeysFile {workdir / 'authorized_keys'}",
                        "PermitRootLogin prohibit-password",
                        "PasswordAuthentication no",
                        "KbdInteractiveAuthentication no",
                        "UsePAM no",
                        "StrictModes no",
                        "AllowTcpForwarding yes",
                        "",
                    ]
                )
            )
            subprocess.run([sshd, "-t", "-f", str(config)], check=True)
            return [sshd, "-D", "-e", "-f", str(config)]

        with child_on_free_port(argv, log_dir=workdir, label="sshd") as (proc, port, _):
            yield Sshd(
                pid=proc.pid,
                port=port,
                user=user,
                client_key=workdir / "client_ed25519",
                workdir=workdir,
            )


@contextlib.contextmanager
def ssh_tunnel(server: Sshd, target_port: int) -> Iterator[SshTunnel]:
    """``ssh -N -L 127.0.0.1:P:127.0.0.1:target_port`` through ``server``; P is picked free."""
    ssh = find_binary("ssh")

    def argv(listen_port: int) -> tuple[str, ...]:
        return (
            ssh,
            "-F", "/dev/null",
            "-i", str(server.client_key),
            "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no",
            "-o", f"UserKnownHostsFile={server.workdir / 'known_hosts'}",
            "-o", "BatchMode=yes",
            "-o", "ExitOnForwardFailure=yes",
            "-N",
            "-L", f"{LOOPBACK}:{listen_port}:{LOOPBACK}:{target_port}",
            "-p", str(server.port),
            f"{server.user}@{LOOPBACK}",
        )  # fmt: skip

    with child_on_free_port(argv, log_dir=server.workdir, label="ssh") as (proc, port, used):
        yield SshTunnel(pid=proc.pid, listen_port=port, target_port=target_port, argv=used)


# --------------------------------------------------------------------------- qemu


@dataclasses.dataclass(frozen=True)
class QemuVm:
    pid: int
    host_port: int
    guest_port: int
    argv: tuple[str, ...]


@contextlib.contextmanager
def qemu_with_hostfwd(*, guest_port: int = 22, process_name: str | None = None) -> Iterator[QemuVm]:
    """A paused (``-S``), diskless QEMU whose user network forwards 127.0.0.1:P to the
    guest's ``guest_port``. Runs in the foreground as our child, so its pid is ours."""
    qemu = find_binary("qemu-system-x86_64")
    name = ["-name", f"portside-test,process={process_name}"] if process_name else []

    def argv(host_port: int) -> tuple[str, ...]:
        return (
            qemu,
            "-nodefaults", "-nographic", "-S", "-display", "none",
            "-machine", "q35", "-m", "64",
            *name,
            "-netdev", f"user,id=n0,hostfwd=tcp:{LOOPBACK}:{host_port}-:{guest_port}",
            "-device", "virtio-net-pci,netdev=n0",
        )  # fmt: skip

    with (
        temp_dir("portside-qemu-") as workdir,
        child_on_free_port(argv, log_dir=workdir, label="qemu") as (proc, port, used),
    ):
        yield QemuVm(pid=proc.pid, host_port=port, guest_port=guest_port, argv=used)
