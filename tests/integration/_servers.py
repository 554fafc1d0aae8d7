"""Real servers on loopback for the probe and wait tests.

Python's own http.server and ssl servers run in threads of the test; redis-server and
PostgreSQL run as child processes (PostgreSQL through ``pg_ctl``, as the ``postgres``
user when the tests run as root, since initdb refuses root). Every port comes from the
kernel (port 0, or a port it just handed out); readiness is a successful connect, never
a sleep; every context manager ends only what it started and removes its directory.
"""

from __future__ import annotations

import contextlib
import glob
import http.client
import http.server
import os
import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from portside.models import Endpoint
from portside.net.serve import StaticOptions, open_static
from tests._loop_thread import LoopThread
from tests.integration._components import (
    LOOPBACK,
    STOP_GRACE,
    child_on_free_port,
    free_port,
    temp_dir,
)


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@contextlib.contextmanager
def serving(server: socketserver.BaseServer) -> Iterator[None]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=STOP_GRACE)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass


class _Threading(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False


class _ThreadingHTTP(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


@contextlib.contextmanager
def http_server(
    directory: Path, *, host: str = LOOPBACK, sock: socket.socket | None = None
) -> Iterator[int]:
    """Python's http.server serving ``directory``; ``sock``: an already bound socket to
    listen on (so a test can start the server on a port it reserved earlier)."""

    def handler(*args: object, **kwargs: object) -> _QuietHandler:
        return _QuietHandler(*args, directory=str(directory), **kwargs)  # type: ignore[arg-type]

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("Server", (_ThreadingHTTP,), {"address_family": family})
    if sock is None:
        server = server_class((host, 0), handler)
    else:
        server = server_class(sock.getsockname()[:2], handler, bind_and_activate=False)
        server.socket.close()
        server.socket = sock
        server.server_activate()  # listen(): from now on it accepts
    with serving(server):
        yield int(server.server_address[1])


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for localhost made with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed (Debian package openssl)")
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", "/O=portside test/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


class _TlsHandler(socketserver.BaseRequestHandler):
    """TLS, then one HTTP/1.1 answer to whatever request comes (or none)."""

    def handle(self) -> None:
        context: ssl.SSLContext = self.server.context  # type: ignore[attr-defined]
        self.request.settimeout(5)
        try:
            with context.wrap_socket(self.request, server_side=True) as tls:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = tls.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                tls.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntls ready"
                )
        except (OSError, ssl.SSLError):
            return  # probes that are not TLS, and clients that leave after the handshake


@contextlib.contextmanager
def tls_server(directory: Path, *, alpn: tuple[str, ...] = ("h2", "http/1.1")) -> Iterator[int]:
    cert, key = make_certificate(directory)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(list(alpn))
    server = _Threading((LOOPBACK, 0), _TlsHandler)
    server.context = context  # type: ignore[attr-defined]
    with serving(server):
        yield int(server.server_address[1])


class _CloseAtOnce(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.close()


@contextlib.contextmanager
def tcpwrapped_server() -> Iterator[int]:
    """Accepts, then closes without a byte (a forwarder whose backend is gone)."""
    server = _Threading((LOOPBACK, 0), _CloseAtOnce)
    with serving(server):
        yield int(server.server_address[1])


class _H2c(socketserver.BaseRequestHandler):
    """An h2c server's first move: a SETTINGS frame (MAX_CONCURRENT_STREAMS=100) at once."""

    def handle(self) -> None:
        self.request.sendall(b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x64")
        self.request.settimeout(2)
        with contextlib.suppress(OSError):
            self.request.recv(4096)


@contextlib.contextmanager
def h2c_server() -> Iterator[int]:
    server = _Threading((LOOPBACK, 0), _H2c)
    with serving(server):
        yield int(server.server_address[1])


@contextlib.contextmanager
def bound_port(host: str = LOOPBACK) -> Iterator[socket.socket]:
    """A socket bound to ``host``:0 but not listening: connects are refused, and the port
    stays ours until the test listens on it (or the socket is closed)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, 0))
        yield sock
    finally:
        sock.close()


# --------------------------------------------------------------------------- redis


@contextlib.contextmanager
def redis_server(*, auth: bool = False) -> Iterator[tuple[int, Path]]:
    """A private redis-server on 127.0.0.1 (``auth``: with a password); yields (port, log)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (Debian package redis-server; CI installs it)")
    with temp_dir("portside-redis-") as workdir:

        def argv(port: int) -> list[str]:
            command = [
                binary, "--port", str(port), "--bind", LOOPBACK, "--save", "",
                "--appendonly", "no", "--dir", str(workdir),
                "--logfile", str(workdir / f"redis-{port}.log"),
            ]  # fmt: skip
            if auth:
                command += ["--requirepass", "portside-test"]
            return command

        with child_on_free_port(argv, log_dir=workdir, label="redis") as (_proc, port, _):
            yield port, workdir / f"redis-{port}.log"


# --------------------------------------------------------------------------- postgres


def _postgres_bin() -> Path:
    for pattern in ("/usr/lib/postgresql/*/bin/pg_ctl", "/usr/local/pgsql/bin/pg_ctl"):
        found = sorted(glob.glob(pattern))
        if found:
            return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is None:
        pytest.skip("PostgreSQL is not installed (Debian package postgresql; CI installs it)")
    return Path(pg_ctl).parent


def _as_postgres(argv: list[str]) -> list[str]:
    """initdb refuses root: run as the postgres user when we are root."""
    if os.geteuid() != 0:
        return argv
    runuser = shutil.which("runuser", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if runuser is None:
        pytest.skip("running PostgreSQL as root needs runuser (util-linux)")
    return [runuser, "-u", "postgres", "--", *argv]


@contextlib.contextmanager
def postgres_server(*, ssl_files: tuple[Path, Path] | None = None) -> Iterator[tuple[int, Path]]:
    """A private PostgreSQL cluster on 127.0.0.1 (initdb + pg_ctl); yields (port, log)."""
    bindir = _postgres_bin()
    with temp_dir("portside-pg-") as workdir:
        if os.geteuid() == 0:
            shutil.chown(workdir, "postgres", "postgres")
        data = workdir / "data"
        subprocess.run(
            _as_postgres(
                [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                 "--no-sync", "-E", "UTF8"]
            ),
            check=True,
            capture_output=True,
        )  # fmt: skip
        settings = ["-c listen_addresses=127.0.0.1", f"-k {workdir}", "-c fsync=off"]
        if ssl_files is not None:
            cert, key = (shutil.copy(path, workdir / path.name) for path in ssl_files)
            if os.geteuid() == 0:
                for path in (cert, key):
                    shutil.chown(path, "postgres", "postgres")
            Path(key).chmod(0o600)
            settings += ["-c ssl=on", f"-c ssl_cert_file={cert}", f"-c ssl_key_file={key}"]
        log = workdir / "postgres.log"
        failures = []
        for _attempt in range(3):
            port = free_port()
            started = subprocess.run(
                _as_postgres(
                    [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "30",
                     "-o", " ".join([*settings, f"-p {port}"]), "start"]
                ),
                capture_output=True,
                text=True,
                check=False,
            )  # fmt: skip
            if started.returncode == 0:
                break
            failures.append(started.stdout + started.stderr)
        else:
            raise RuntimeError(f"PostgreSQL did not start: {failures}")
        try:
            yield port, log
        finally:
            subprocess.run(
                _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                capture_output=True,
                check=False,
            )


class StaticServerThread(LoopThread):
    """A static server on its own event loop in a thread."""

    def __init__(self, root: Path, options: StaticOptions | None = None) -> None:
        chosen = options or StaticOptions()
        super().__init__(
            lambda: open_static(root, Endpoint(ip="127.0.0.1", port=0), options=chosen)
        )

    def get(
        self, path: str, headers: dict[str, str] | None = None, method: str = "GET"
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request(method, path, headers={"Host": "localhost", **(headers or {})})
            response = connection.getresponse()
            body = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, body
        finally:
            connection.close()
