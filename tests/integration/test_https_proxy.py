"""HTTPS through the proxy with the local CA, against real TLS clients on loopback.

* Python's ssl client trusting *only* our CA completes TLS to app.localhost and gets the
  backend's answer (X-Forwarded-Proto https); the system store alone does not trust it.
* A leaf per SNI name; a name outside the constraint gets the localhost leaf and fails
  verification; a leaf forged with the CA key for another site fails in OpenSSL too.
* The CLI: ``portside proxy --https``, ``portside ca [--json] [--nss-db]``, the CA
  created once even by processes racing, and ``portside ca trust`` inside a private
  mount namespace (tmpfs over the trust store: the host's store is never touched).

Every CA lives in a temporary PORTSIDE_HOME.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from portside.ca import KEY_FILE, CertificateAuthority
from portside.models import Endpoint
from portside.net.proxy import ProxyOptions
from portside.net.routes import parse_route_spec
from tests.integration.test_proxy_kit import (
    LOOPBACK,
    ROOT,
    Backend,
    ChildProxy,
    ProxyThread,
    encode_request,
    read_head,
    read_response,
    ws_accept,
    ws_echo_server,
    ws_frame,
)

PORTSIDE = [sys.executable, "-m", "portside"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    path = tmp_path / "portside-home"
    monkeypatch.setenv("PORTSIDE_HOME", str(path))
    return path


@pytest.fixture
def authority(home):
    return CertificateAuthority.load_or_create()


@pytest.fixture
def served(authority) -> Iterator[tuple[ProxyThread, Backend]]:
    options = ProxyOptions(
        access_log="off",
        tls_listen=Endpoint(ip=LOOPBACK, port=0),
        tls_context=authority.server_context(),
    )
    with (
        Backend("web") as web,
        ProxyThread(
            [
                parse_route_spec(f"app.localhost={web.address}"),
                parse_route_spec(f"*.localhost={web.address}"),
            ],
            options,
        ) as proxy,
    ):
        yield proxy, web


def https_port(proxy: ProxyThread) -> int:
    assert proxy.proxy.tls_server is not None
    return int(proxy.proxy.tls_server.address.port)


def https_get(
    port: int, context: ssl.SSLContext, name: str | None, host: str = "app.localhost"
) -> tuple[Any, Any]:
    """GET /info over TLS with SNI *name*; the peer certificate and the response JSON."""
    with (
        socket.create_connection((LOOPBACK, port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=name) as tls,
    ):
        tls.sendall(f"GET /info HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        response, _ = read_response(tls)
        assert response.status == 200
        return tls.getpeercert() or {}, response.json()


def only_our_ca(authority: CertificateAuthority) -> ssl.SSLContext:
    # With cafile, create_default_context loads that file and not the system store.
    context = ssl.create_default_context(cafile=str(authority.cert_path))
    assert len(context.get_ca_certs()) == 1
    return context


def test_a_client_trusting_only_our_ca_gets_the_apps_answer(served, authority):
    proxy, _ = served
    certificate, info = https_get(https_port(proxy), only_our_ca(authority), "app.localhost")
    assert info["backend"] == "web"
    assert info["target"] == "/info"
    headers = dict(info["headers"])
    assert headers["x-forwarded-proto"] == "https"
    assert "proto=https" in headers["forwarded"]
    assert certificate["subjectAltName"] == (("DNS", "app.localhost"),)
    issuer = dict(item[0] for item in certificate["issuer"])
    assert issuer["commonName"].startswith("portside local CA")
    # The plain HTTP listener still says http.
    assert proxy.proxy.https_url == f"https://127.0.0.1:{https_port(proxy)}/"


def test_the_system_store_alone_does_not_trust_the_proxy(served):
    proxy, _ = served
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        https_get(https_port(proxy), ssl.create_default_context(), "app.localhost")


def test_each_name_gets_its_own_leaf_and_no_name_gets_localhost(served, authority):
    proxy, _ = served
    port = https_port(proxy)
    context = only_our_ca(authority)
    for name in ("one.localhost", "two.localhost", "deep.sub.localhost", "localhost"):
        certificate, _ = https_get(port, context, name)
        sans = certificate["subjectAltName"]
        assert ("DNS", name) in sans
    # An IP literal sends no SNI: the localhost leaf, valid for 127.0.0.1 too.
    certificate, _ = https_get(port, context, "127.0.0.1")
    assert ("IP Address", "127.0.0.1") in certificate["subjectAltName"]
    assert {"one.localhost", "two.localhost", "deep.sub.localhost"} <= set(authority.cached_names())


def test_a_name_outside_the_constraint_fails_verification(served, authority):
    proxy, _ = served
    with pytest.raises(ssl.SSLCertVerificationError, match=r"mismatch|match"):
        https_get(https_port(proxy), only_our_ca(authority), "example.com")
    assert "example.com" not in authority.cached_names()


def test_tls_1_1_is_refused(served, authority):
    proxy, _ = served
    context = only_our_ca(authority)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the point of the test
        context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.minimum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # this client can speak TLS 1.1 (checked below)
    with pytest.raises(ssl.SSLError) as refused:
        https_get(https_port(proxy), context, "app.localhost")
    assert "NO_CIPHERS_AVAILABLE" not in str(refused.value)  # refused by the server


def test_a_websocket_over_tls_is_spliced_to_the_backend(authority):
    ready = threading.Event()
    holder: dict[str, Any] = {}

    def serve() -> None:
        async def main() -> None:
            server = await ws_echo_server()
            holder["port"] = server.sockets[0].getsockname()[1]
            holder["stop"] = asyncio.get_running_loop().create_future()
            ready.set()
            async with server:
                await holder["stop"]

        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    options = ProxyOptions(
        access_log="off",
        tls_listen=Endpoint(ip=LOOPBACK, port=0),
        tls_context=authority.server_context(),
    )
    try:
        with (
            ProxyThread(
                [parse_route_spec(f"app.localhost={LOOPBACK}:{holder['port']}")], options
            ) as proxy,
            socket.create_connection((LOOPBACK, https_port(proxy)), timeout=10) as raw,
            only_our_ca(authority).wrap_socket(raw, server_hostname="app.localhost") as tls,
        ):
            key = "dGhlIHNhbXBsZSBub25jZQ=="
            tls.sendall(
                encode_request(
                    "GET",
                    "/chat",
                    headers=[
                        ("Connection", "Upgrade"),
                        ("Upgrade", "websocket"),
                        ("Sec-WebSocket-Key", key),
                        ("Sec-WebSocket-Version", "13"),
                    ],
                )
            )
            head, rest = read_head(tls)
            assert head.startswith(b"HTTP/1.1 101")
            assert f"sec-websocket-accept: {ws_accept(key)}".lower() in head.decode().lower()
            for payload in (b"hello", os.urandom(70_000)):
                tls.sendall(ws_frame(0x2, payload, masked=True))
                expected = ws_frame(0x2, payload, masked=False)
                while len(rest) < len(expected):
                    more = tls.recv(65536)
                    assert more
                    rest += more
                assert rest[: len(expected)] == expected
                rest = rest[len(expected) :]
    finally:
        stop = holder.get("stop")
        if isinstance(stop, asyncio.Future):
            stop.get_loop().call_soon_threadsafe(stop.set_result, None)
        thread.join(10)


def _forged(authority: CertificateAuthority, directory: Path, name: str) -> Path:
    """A leaf for *name* signed with the CA's key, bypassing portside: what a thief of
    the key could make. Returns a PEM file with the chain and the key."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    signer = authority._key  # the test plays the thief
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(signer, hashes.SHA256())
    )
    path = directory / f"{name}.pem"
    path.write_bytes(
        leaf.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


@contextlib.contextmanager
def _tls_server(chain: Path) -> Iterator[int]:
    """A one-connection-at-a-time TLS server presenting *chain*."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(chain))
    listener = socket.create_server((LOOPBACK, 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with contextlib.suppress(OSError), conn:
                conn.settimeout(5)
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1024)
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        listener.close()
        thread.join(5)


def test_openssl_enforces_the_name_constraint_on_a_forged_leaf(authority, tmp_path):
    context = only_our_ca(authority)
    with (
        _tls_server(_forged(authority, tmp_path, "fine.localhost")) as port,
        socket.create_connection((LOOPBACK, port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="fine.localhost") as tls,
    ):
        tls.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert tls.recv(100).startswith(b"HTTP/1.1 200")
    with (
        _tls_server(_forged(authority, tmp_path, "bank.example")) as port,
        socket.create_connection((LOOPBACK, port), timeout=10) as raw,
        pytest.raises(ssl.SSLCertVerificationError, match="permitted subtree violation"),
    ):
        context.wrap_socket(raw, server_hostname="bank.example")


# --- the CLI ------------------------------------------------------------------------------


def test_portside_proxy_https_serves_the_route(home):
    with (
        Backend("web") as web,
        ChildProxy(
            "--https",
            "--route",
            f"app.localhost={web.address}",
            env={"PORTSIDE_HOME": str(home)},
        ) as child,
    ):
        started = child.started
        assert started["ca"] == str(home / "ca" / "portside-ca.pem")
        port = int(started["https_url"].rstrip("/").rsplit(":", 1)[1])
        context = ssl.create_default_context(cafile=started["ca"])
        _, info = https_get(port, context, "app.localhost")
        assert info["backend"] == "web"
        assert stat.S_IMODE((home / "ca" / KEY_FILE).stat().st_mode) == 0o600


def test_portside_proxy_tls_listen_takes_an_address(home):
    with (
        Backend("web") as web,
        ChildProxy(
            "--tls-listen",
            "127.0.0.1:0",
            "--route",
            f"app.localhost={web.address}",
            env={"PORTSIDE_HOME": str(home)},
        ) as child,
    ):
        assert child.started["https_url"].startswith("https://127.0.0.1:")


def test_portside_proxy_rejects_a_bad_tls_listen(home):
    done = subprocess.run(
        [*PORTSIDE, "proxy", "--tls-listen", "nowhere", "--to", "127.0.0.1:9"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "--tls-listen" in done.stderr


def _portside(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PORTSIDE, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )


def test_portside_ca_prints_path_fingerprint_and_trust_hints(home):
    first = _portside("ca", "--json")
    assert first.returncode == 0, first.stderr
    document = json.loads(first.stdout)
    assert document["kind"] == "ca"
    assert document["created"] is True
    assert document["cert"] == str(home / "ca" / "portside-ca.pem")
    assert set(document["trust"]) >= {"curl", "python", "node", "chromium", "firefox", "system"}
    assert document["cert"] in document["trust"]["node"]
    again = json.loads(_portside("ca", "--json").stdout)
    assert again["created"] is False
    assert again["fingerprint_sha256"] == document["fingerprint_sha256"]
    loaded = CertificateAuthority.load(home / "ca")
    assert loaded.fingerprint == document["fingerprint_sha256"]
    text = _portside("ca")
    assert text.returncode == 0
    assert document["fingerprint_sha256"] in text.stdout
    assert "NODE_EXTRA_CA_CERTS=" in text.stdout
    assert "--nss-db" in text.stdout


def test_portside_ca_refuses_a_key_others_can_read(home):
    CertificateAuthority.load_or_create()
    (home / "ca" / KEY_FILE).chmod(0o640)
    done = _portside("ca")
    assert done.returncode == 2
    assert "chmod 600" in done.stderr


def test_racing_processes_create_one_ca(home):
    script = (
        "from portside.ca import CertificateAuthority as C; print(C.load_or_create().fingerprint)"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        for _ in range(4)
    ]
    prints = {p.communicate(timeout=60)[0].strip() for p in processes}
    assert all(p.returncode == 0 for p in processes)
    assert len(prints) == 1
    assert prints == {CertificateAuthority.load(home / "ca").fingerprint}


@pytest.mark.skipif(shutil.which("certutil") is None, reason="certutil missing (libnss3-tools)")
def test_portside_ca_nss_db_trusts_the_ca_in_that_database(home, tmp_path):
    db = tmp_path / "nssdb"
    done = _portside("ca", "--nss-db", str(db), "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["installed"][0]["store"] == "nss"
    listed = subprocess.run(
        ["certutil", "-L", "-d", f"sql:{db}", "-n", CertificateAuthority.load().nickname],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert "Is a CA" in listed or "CA" in listed
    trust = subprocess.run(
        ["certutil", "-L", "-d", f"sql:{db}"], capture_output=True, text=True, check=True
    ).stdout
    assert "C,," in trust
    # Idempotent: adding again leaves one entry.
    assert _portside("ca", "--nss-db", str(db)).returncode == 0
    trust = subprocess.run(
        ["certutil", "-L", "-d", f"sql:{db}"], capture_output=True, text=True, check=True
    ).stdout
    assert trust.count("portside local CA") == 1


@pytest.mark.skipif(shutil.which("certutil") is None, reason="certutil missing (libnss3-tools)")
def test_portside_ca_untrust_removes_the_ca_from_that_nss_database(home, tmp_path):
    db = tmp_path / "nssdb"
    assert _portside("ca", "--nss-db", str(db)).returncode == 0
    nickname = CertificateAuthority.load().nickname

    def listed() -> str:
        return subprocess.run(
            ["certutil", "-L", "-d", f"sql:{db}"], capture_output=True, text=True, check=True
        ).stdout

    assert nickname in listed()
    done = _portside("ca", "untrust", "--nss-db", str(db), "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["kind"] == "ca-untrust"
    assert document["stores"] == [{"store": "nss", "path": str(db), "removed": True}]
    assert nickname not in listed()
    # Again: nothing left to remove, still exit 0 (the state asked for holds).
    again = _portside("ca", "untrust", "--nss-db", str(db))
    assert again.returncode == 0, again.stderr
    assert "was not in the NSS database" in again.stdout
    # A database that does not exist is left alone (not created).
    missing = tmp_path / "no-such-db"
    assert _portside("ca", "untrust", "--nss-db", str(missing)).returncode == 0
    assert not missing.exists()


def test_portside_ca_untrust_without_a_ca_names_the_problem(home, tmp_path):
    done = _portside("ca", "untrust", "--nss-db", str(tmp_path / "nssdb"))
    assert done.returncode == 2
    assert "no local CA" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_portside_ca_trust_refuses_without_root(home):
    if os.geteuid() == 0:
        pytest.skip("runs as root here; the root path is tested in a mount namespace")
    done = _portside("ca", "trust")
    assert done.returncode == 2
    assert "root" in done.stderr


SYSTEM_TRUST_SCRIPT = textwrap.dedent(
    """
    set -eu
    for dir in /usr/local/share/ca-certificates /etc/ssl/certs /etc/ca-certificates/update.d; do
        mkdir -p "$dir"
        mount -t tmpfs -o size=64m,mode=0755 portside-test "$dir"
        mountpoint -q "$dir"
    done
    # Under sudo, `ca trust` means the invoking user's CA, and never creates one for them.
    if SUDO_USER=nobody PORTSIDE_HOME= "$PYTHON" -m portside ca trust 2> "$OUT.sudo"; then
        exit 3
    fi
    grep -q "no local CA in $(getent passwd nobody | cut -d: -f6)" "$OUT.sudo"
    # The bundle of the system CAs, rebuilt in the private tmpfs only.
    "$PYTHON" -m portside ca trust --json > "$OUT"
    test -s /etc/ssl/certs/ca-certificates.crt
    "$PYTHON" - <<'EOF'
    import os, socket, ssl
    context = ssl.create_default_context()  # the system store, now with our CA
    with socket.create_connection(("127.0.0.1", int(os.environ["HTTPS_PORT"])), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="app.localhost") as tls:
            tls.sendall(b"GET /info HTTP/1.1\\r\\nHost: app.localhost\\r\\nConnection: close\\r\\n\\r\\n")
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:100]
    print("system-store-ok")
    EOF
    # And out again: the anchor file goes, the rebuilt bundle no longer has the CA.
    "$PYTHON" -m portside ca untrust --json > "$OUT.untrust"
    test ! -e /usr/local/share/ca-certificates/portside-local-ca.crt
    "$PYTHON" - <<'EOF'
    import os, socket, ssl
    context = ssl.create_default_context()
    with socket.create_connection(("127.0.0.1", int(os.environ["HTTPS_PORT"])), timeout=10) as raw:
        try:
            context.wrap_socket(raw, server_hostname="app.localhost").close()
        except ssl.SSLCertVerificationError:
            print("system-store-untrusted")
    EOF
    "$PYTHON" -m portside ca untrust > "$OUT.again"
    """
)


@pytest.mark.root
@pytest.mark.skipif(
    shutil.which("unshare") is None or shutil.which("update-ca-certificates") is None,
    reason="needs unshare (util-linux) and update-ca-certificates (ca-certificates)",
)
def test_portside_ca_trust_installs_into_a_private_system_store(served, authority, tmp_path):
    proxy, _ = served
    real_bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    before = real_bundle.read_bytes() if real_bundle.exists() else None
    out = tmp_path / "trust.json"
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", SYSTEM_TRUST_SCRIPT],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHON": sys.executable,
            "OUT": str(out),
            "HTTPS_PORT": str(https_port(proxy)),
        },
        timeout=120,
        check=False,
    )
    if done.returncode != 0 and "unshare failed" in done.stderr:
        pytest.skip(f"no mount namespaces here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr + done.stdout
    assert "system-store-ok" in done.stdout
    assert "system-store-untrusted" in done.stdout
    untrusted = json.loads((tmp_path / "trust.json.untrust").read_text())
    assert untrusted["stores"] == [
        {
            "store": "system",
            "path": "/usr/local/share/ca-certificates/portside-local-ca.crt",
            "removed": True,
        }
    ]
    assert "was not in the system trust store" in (tmp_path / "trust.json.again").read_text()
    document = json.loads(out.read_text())
    assert document["installed"][0]["store"] == "system"
    assert document["installed"][0]["path"].startswith("/usr/local/share/ca-certificates/")
    assert document["fingerprint_sha256"] == authority.fingerprint
    # The host's own store is untouched.
    assert not Path("/usr/local/share/ca-certificates/portside-local-ca.crt").exists()
    if before is not None:
        assert real_bundle.read_bytes() == before
