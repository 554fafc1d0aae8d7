"""Real container engines for tests, each in its own network namespace with private
storage, and an image built here from busybox-static (no registry is reachable):

* docker.io's dockerd (``--data-root``/``--exec-root`` private): docker-proxy holds the port;
* podman 4 (``--root``/``--runroot`` private, runc and lowered ulimits through a private
  ``CONTAINERS_CONF``, its Docker-compatible API from ``podman system service``): conmon
  holds the port (the netavark bridge).

Every engine process is the test's child, ended by pid; the namespace is deleted and the
directories unmounted and removed. Docker's and podman's iptables/nft rules and sysctls
(ip_forward, route_localnet) stay inside the namespace.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "portside"]
SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin", "/bin"])
READY_DEADLINE = 60.0


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=60)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def api(engine: str, method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    """One Engine API request (the test's own client, independent of portside's)."""
    connection = _Unix(engine)
    try:
        connection.request(method, url, body=body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@dataclasses.dataclass
class Engine:
    kind: str  # "docker" or "podman"
    forwarder: str  # the identity kind of the process that holds published ports
    netns: str
    workdir: Path
    socket: str
    image: str
    cli: list[str]  # the engine's CLI with its private storage options
    env: dict[str, str]

    def nsenter(self) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.netns}"]

    def run_cli(self, *args: str) -> str:
        done = subprocess.run(
            [*self.nsenter(), *self.cli, *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def portside(
        self, *argv: str, docker_host: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``portside ARGV`` inside the engine's namespace, told about the engine's socket."""
        env = {**os.environ, "DOCKER_HOST": docker_host or f"unix://{self.socket}"}
        return subprocess.run(
            [*self.nsenter(), *CLI, *argv], cwd=ROOT, env=env, capture_output=True, text=True
        )

    def state(self, name: str) -> dict[str, Any]:
        status, body = api(self.socket, "GET", f"/containers/{name}/json")
        assert status == 200, body
        state: dict[str, Any] = json.loads(body)["State"]
        return state


def require(binary: str, package: str) -> str:
    found = shutil.which(binary, path=SBIN)
    if found is None:
        pytest.skip(f"`{binary}` is not installed (Debian package {package})")
    return found


def _rootfs_tar(workdir: Path) -> Path:
    """A 2 MB image root: busybox-static and an index page for its httpd."""
    busybox = require("busybox", "busybox-static")
    rootfs = workdir / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "www").mkdir()
    (rootfs / "etc").mkdir()
    shutil.copy(busybox, rootfs / "bin" / "busybox")
    for applet in ("sh", "httpd", "sleep"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "www" / "index.html").write_text("<h1>portside test</h1>\n")
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    tar = workdir / "rootfs.tar"
    with tarfile.open(tar, "w") as archive:
        archive.add(rootfs, arcname=".")
    return tar


def _unmount_under(path: Path) -> None:
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    for point in reversed(points):
        if point.startswith(str(path)):
            subprocess.run(["umount", "-l", point], check=False)


def _wait_for_engine(proc: subprocess.Popen[bytes], engine: str, log: Path) -> None:
    deadline = time.monotonic() + READY_DEADLINE
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the engine exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            if api(engine, "GET", "/_ping")[0] == 200:
                return
        if time.monotonic() > deadline:
            pytest.fail(f"the engine did not answer within {READY_DEADLINE} s")
        time.sleep(0.1)  # polling interval for readiness, not a wait standing in for it


@contextlib.contextmanager
def _namespace_and_workdir(prefix: str) -> Iterator[tuple[str, Path]]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, container engines)")
    require("ip", "iproute2")
    require("nsenter", "util-linux")
    netns = f"{prefix}-{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        yield netns, workdir
    finally:
        _unmount_under(workdir)
        subprocess.run(["ip", "netns", "del", netns], check=False)
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def _engine_process(argv: list[str], engine: str, log: Path, env: dict[str, str]) -> Iterator[None]:
    """Start the engine daemon (nsenter execs it: the pid is the daemon's), wait for its
    API, and end it by pid afterwards."""
    with log.open("wb") as output:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, env=env
        )
    try:
        _wait_for_engine(proc, engine, log)
        yield
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def dockerd() -> Iterator[Engine]:
    """A private dockerd in its own namespace, with the busybox image imported."""
    binary = require("dockerd", "docker.io (apt-get install --no-install-recommends docker.io)")
    docker = require("docker", "docker.io")
    with _namespace_and_workdir("ps-dock") as (netns, workdir):
        engine = str(workdir / "docker.sock")
        env = {**os.environ, "DOCKER_HOST": f"unix://{engine}"}
        argv = [
            "nsenter", f"--net=/run/netns/{netns}", binary,
            "--data-root", str(workdir / "data"),
            "--exec-root", str(workdir / "exec"),
            "--pidfile", str(workdir / "engine.pid"),
            "-H", f"unix://{engine}",
        ]  # fmt: skip
        with _engine_process(argv, engine, workdir / "engine.log", env):
            daemon = Engine(
                kind="docker",
                forwarder="docker-proxy",
                netns=netns,
                workdir=workdir,
                socket=engine,
                image=f"ps-busybox-{uuid.uuid4().hex[:6]}:test",
                cli=[docker],
                env=env,
            )
            daemon.run_cli(
                "import", "-c", 'CMD ["/bin/httpd", "-f", "-p", "80", "-h", "/www"]',
                str(_rootfs_tar(workdir)), daemon.image,
            )  # fmt: skip
            yield daemon


#: test-components.md §3: runc (crun refuses hybrid cgroups here) and ulimits below the
#: hard limits (root lacks CAP_SYS_RESOURCE); the API-created containers use it too.
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


@contextlib.contextmanager
def podman() -> Iterator[Engine]:
    """A private podman API service in its own namespace, with the busybox image."""
    binary = require("podman", "podman")
    require("runc", "runc")
    with _namespace_and_workdir("ps-pod") as (netns, workdir):
        conf = workdir / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        cli = [
            binary,
            "--root", str(workdir / "root"),
            "--runroot", str(workdir / "run"),
            "--tmpdir", str(workdir / "tmp"),
        ]  # fmt: skip
        engine = str(workdir / "podman.sock")
        argv = [
            "nsenter", f"--net=/run/netns/{netns}", *cli,
            "system", "service", "--time=0", f"unix://{engine}",
        ]  # fmt: skip
        with _engine_process(argv, engine, workdir / "service.log", env):
            daemon = Engine(
                kind="podman",
                forwarder="podman-conmon",
                netns=netns,
                workdir=workdir,
                socket=engine,
                image=f"localhost/ps-busybox-{uuid.uuid4().hex[:6]}:test",
                cli=cli,
                env=env,
            )
            daemon.run_cli(
                "import", "--change", 'CMD ["/bin/httpd", "-f", "-p", "80", "-h", "/www"]',
                str(_rootfs_tar(workdir)), daemon.image,
            )  # fmt: skip
            try:
                yield daemon
            finally:
                # Containers are removed by each test; drop the image so that podman
                # unmounts its layers before the directory goes.
                subprocess.run(
                    [*cli, "rmi", "-f", daemon.image], env=env, capture_output=True, check=False
                )


@contextlib.contextmanager
def engine_of(kind: str) -> Iterator[Engine]:
    """``dockerd()`` or ``podman()`` by name (for parametrised fixtures)."""
    with dockerd() if kind == "docker" else podman() as started:
        yield started


def connects_in(daemon: Engine, port: int, host: str = "127.0.0.1") -> bool:
    """Whether HOST:PORT accepts a connection inside the engine's namespace."""
    probe = (
        "import socket,sys\n"
        "try:\n"
        f"    socket.create_connection(({host!r}, {port}), timeout=2).close()\n"
        "except OSError:\n"
        "    sys.exit(1)\n"
    )
    done = subprocess.run([*daemon.nsenter(), sys.executable, "-c", probe], check=False)
    return done.returncode == 0


def _remove(daemon: Engine, name: str) -> None:
    subprocess.run(
        [*daemon.nsenter(), *daemon.cli, "rm", "-f", name],
        env=daemon.env,
        capture_output=True,
        check=False,
    )


@contextlib.contextmanager
def published_container(
    daemon: Engine, *publish: str, labels: dict[str, str] | None = None
) -> Iterator[tuple[str, int]]:
    """A running container publishing ``127.0.0.1:PORT -> 80`` (or each ``publish`` spec,
    with ``{port}`` replaced by PORT and ``{port2}`` by PORT + 1); (name, PORT) once PORT
    answers; removed afterwards."""
    name = f"ps-web-{uuid.uuid4().hex[:8]}"
    port = 23000 + uuid.uuid4().int % 2000  # the netns is ours alone: any port is free
    specs = publish or ("127.0.0.1:{port}:80",)
    args = ["run", "-d", "--name", name]
    for spec in specs:
        args += ["-p", spec.format(port=port, port2=port + 1)]
    for key, value in (labels or {}).items():
        args += ["--label", f"{key}={value}"]
    try:
        daemon.run_cli(*args, daemon.image)
        deadline = time.monotonic() + READY_DEADLINE
        while not connects_in(daemon, port):
            assert time.monotonic() < deadline, "the published port never answered"
            time.sleep(0.1)  # polling interval
        yield name, port
    finally:
        _remove(daemon, name)
