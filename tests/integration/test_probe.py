"""connect_times and identify against real servers on loopback, and ``portside probe``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from portside.cli import main as cli
from portside.models import Family
from portside.probe import Hints, connect_times, identify, owner_names
from portside.sniff import Probe, Protocol
from tests.integration import _servers
from tests.integration._components import LOOPBACK, running_sshd, temp_dir


@pytest.fixture
def workdir():
    with temp_dir("portside-probe-test-") as path:
        yield path


@pytest.fixture
def http_port(workdir):
    (workdir / "index.html").write_text("<h1>hello</h1>\n")
    with _servers.http_server(workdir) as port:
        yield port


@pytest.fixture
def tls_port(workdir):
    with _servers.tls_server(workdir) as port:
        yield port


def probes_of(result):
    return [record.probe for record in result.probes]


# --------------------------------------------------------------------------- identify


def test_a_python_http_server_is_identified_with_status_and_server(http_port):
    result = identify(LOOPBACK, http_port, timeout=10)
    assert result.protocol is Protocol.HTTP
    assert result.verdict is not None
    assert result.verdict.status == 200
    assert result.verdict.server is not None
    assert result.verdict.server.startswith("SimpleHTTP/")
    # The ClientHello was answered with HTML (FM-22), then a real GET gave the details.
    assert probes_of(result) == [Probe.NULL, Probe.TLS, Probe.HTTP]
    tls_answer = result.probes[1].verdict
    assert tls_answer is not None
    assert tls_answer.version == "HTTP/0.9"


def test_a_tls_server_reports_version_alpn_and_certificate(tls_port, workdir):
    result = identify(LOOPBACK, tls_port, timeout=10)
    assert result.protocol is Protocol.TLS
    assert result.tls is not None
    assert result.tls.error is None
    assert result.tls.version in ("TLSv1.2", "TLSv1.3")
    assert result.tls.alpn == "h2"
    cert = result.tls.certificate
    assert cert is not None
    assert cert.common_name == "localhost"
    assert cert.san == ("DNS:localhost", "IP:127.0.0.1", "IP:::1")
    expected_end = subprocess.run(
        ["openssl", "x509", "-in", str(workdir / "cert.pem"), "-noout", "-enddate"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout  # notAfter=Nov 24 08:09:12 2026 GMT
    _month, _day, clock, year = expected_end.split("=", 1)[1].split()[:4]
    assert cert.not_after is not None
    assert cert.not_after.startswith(f"{year}-")
    assert cert.not_after.endswith(f"T{clock}Z")
    assert probes_of(result) == [Probe.NULL, Probe.TLS]  # no plain-text probe was needed
    assert "certificate" in result.summary


def test_a_tls_server_without_alpn_still_completes(workdir):
    with _servers.tls_server(workdir, alpn=()) as port:
        result = identify(LOOPBACK, port, timeout=10)
    assert result.protocol is Protocol.TLS
    assert result.tls is not None
    assert result.tls.alpn is None
    assert result.tls.certificate is not None


def test_redis_is_identified_and_never_receives_http():
    with _servers.redis_server() as (port, log):
        result = identify(LOOPBACK, port, timeout=10)
        log_text = log.read_text()
    assert result.protocol is Protocol.REDIS
    assert result.verdict is not None
    assert result.verdict.detail == "+PONG"
    assert Probe.HTTP not in probes_of(result)
    assert "SECURITY ATTACK" not in log_text


def test_redis_named_by_its_owner_is_asked_ping_first():
    with _servers.redis_server() as (port, log):
        owners = owner_names(port)
        if "redis-server" not in owners:
            pytest.skip(f"the owner of port {port} is not visible here: {owners}")
        result = identify(LOOPBACK, port, timeout=10, hints=Hints(owners=owners))
        log_text = log.read_text()
    assert probes_of(result) == [Probe.NULL, Probe.REDIS]
    assert result.protocol is Protocol.REDIS
    assert "SECURITY ATTACK" not in log_text


def test_redis_with_a_password_answers_noauth():
    with _servers.redis_server(auth=True) as (port, log):
        result = identify(LOOPBACK, port, timeout=10, hints=Hints(scheme="redis"))
        log_text = log.read_text()
    assert result.protocol is Protocol.REDIS
    assert result.verdict is not None
    assert result.verdict.detail == "-NOAUTH Authentication required."
    assert probes_of(result) == [Probe.NULL, Probe.REDIS]
    assert "SECURITY ATTACK" not in log_text


def test_postgres_is_identified_by_its_answer_to_the_ssl_request():
    with _servers.postgres_server() as (port, _log):
        result = identify(LOOPBACK, port, timeout=10)
    assert result.protocol is Protocol.POSTGRES
    assert result.verdict is not None
    assert result.verdict.detail == "SSL not supported (N)"
    # Without a hint: the ClientHello met EOF (as PostgreSQL does), then the SSLRequest.
    assert probes_of(result) == [Probe.NULL, Probe.TLS, Probe.POSTGRES]
    assert result.probes[1].closed in ("eof", "reset")


def test_postgres_named_by_its_owner_gets_no_foreign_probe(workdir):
    cert, key = _servers.make_certificate(workdir)
    with _servers.postgres_server(ssl_files=(cert, key)) as (port, log):
        owners = owner_names(port)
        if not {"postgres", "postmaster"} & set(owners):
            pytest.skip(f"the owner of port {port} is not visible here: {owners}")
        result = identify(LOOPBACK, port, timeout=10, hints=Hints(owners=owners))
        log_text = log.read_text()
    assert probes_of(result) == [Probe.NULL, Probe.POSTGRES]
    assert result.verdict is not None
    assert result.verdict.detail == "SSL supported (S)"
    assert "invalid length of startup packet" not in log_text


def test_a_server_that_closes_at_once_is_tcpwrapped():
    with _servers.tcpwrapped_server() as port:
        result = identify(LOOPBACK, port, timeout=10)
    assert result.protocol is Protocol.TCPWRAPPED
    assert probes_of(result) == [Probe.NULL]
    assert result.probes[0].closed in ("eof", "reset")


def test_sshd_is_identified_by_its_banner():
    with running_sshd() as sshd:
        result = identify(LOOPBACK, sshd.port, timeout=10)
    assert result.protocol is Protocol.SSH
    assert result.verdict is not None
    assert result.verdict.version == "2.0"
    assert result.verdict.server is not None
    assert result.verdict.server.startswith("OpenSSH_")


def test_an_h2c_server_is_identified_by_its_settings_frame():
    with _servers.h2c_server() as port:
        result = identify(LOOPBACK, port, timeout=10)
    assert result.protocol is Protocol.H2C
    assert probes_of(result) == [Probe.NULL]


def test_a_refused_port_is_no_connection():
    with _servers.bound_port() as sock:
        port = sock.getsockname()[1]
        result = identify(LOOPBACK, port, timeout=5)
    assert result.protocol is None
    assert result.connect_error == "ECONNREFUSED"
    assert result.summary == "no connection"


# --------------------------------------------------------------------------- connect_times


def test_connect_times_counts_every_attempt(http_port):
    times = connect_times(f"{LOOPBACK}:{http_port}", count=3, interval=0, timeout=2)
    assert times.connected
    assert [a.seq for a in times.attempts] == [1, 2, 3]
    (family,) = times.families
    assert (family.family, family.attempts, family.connected, family.loss_percent) == (
        Family.IPV4,
        3,
        3,
        0.0,
    )
    assert family.min_ms is not None
    assert family.avg_ms is not None
    assert family.max_ms is not None
    assert family.min_ms <= family.avg_ms <= family.max_ms


def test_refused_attempts_are_failures_with_their_errno_and_time():
    with _servers.bound_port() as sock:
        port = sock.getsockname()[1]
        times = connect_times(LOOPBACK, port, count=2, interval=0, timeout=2)
    assert not times.connected
    assert all(a.errno_name == "ECONNREFUSED" and not a.connected for a in times.attempts)
    assert all(a.elapsed_ms >= 0 for a in times.attempts)
    (family,) = times.families
    assert (family.connected, family.loss_percent, family.errors) == (0, 100.0, ("ECONNREFUSED",))
    assert family.min_ms is None


def test_each_address_family_is_timed_separately(http_port):
    if not _servers.has_ipv6_loopback():
        pytest.skip("no IPv6 on loopback here")
    times = connect_times(f":{http_port}", count=2, interval=0, timeout=2)
    by_family = {f.family: f for f in times.families}
    assert by_family[Family.IPV4].connected == 2
    # Nothing listens on [::1]:PORT (the server is IPv4-only), unless that port is in use
    # there by chance, which the assertion would then report.
    assert by_family[Family.IPV6].connected == 0, by_family[Family.IPV6]
    assert by_family[Family.IPV6].errors == ("ECONNREFUSED",)


# --------------------------------------------------------------------------- the command


def test_probe_command_prints_attempts_summary_and_identification(http_port, capsys):
    code = cli(["probe", f"{LOOPBACK}:{http_port}", "-c", "2", "-i", "0", "--identify"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.count(f"connected to {LOOPBACK}:{http_port} (ipv4)") == 2
    assert f"--- {LOOPBACK}:{http_port} (ipv4) ---" in out
    assert "2 attempts, 2 connected, 0% loss" in out
    assert f"{LOOPBACK}:{http_port} speaks http: HTTP/1.0 200 OK" in out


def test_probe_command_json(http_port, capsys):
    code = cli(["probe", f"http://{LOOPBACK}:{http_port}/", "-c", "1", "--identify", "--json"])
    document = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (document["schema"], document["kind"], document["connected"]) == (1, "probe", True)
    assert document["families"][0]["connected"] == 1
    (found,) = document["identifications"]
    assert found["protocol"] == "http"
    assert found["verdict"]["status"] == 200


def test_probe_command_exit_1_when_nothing_connects(capsys):
    with _servers.bound_port() as sock:
        code = cli(["probe", f"{LOOPBACK}:{sock.getsockname()[1]}", "-c", "1"])
    assert code == 1
    assert "ECONNREFUSED" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [["probe", "localhost"], ["probe", "no such host:1"], ["probe", "127.0.0.1:1", "-c", "0"]],
)
def test_probe_command_exit_2_for_bad_input(argv, capsys):
    assert cli(argv) == 2
    assert capsys.readouterr().err.startswith("portside: ")


def test_importing_probe_is_cheap():
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, portside.probe, portside.wait; "
            "print(sorted(m for m in ('ssl', 'asyncio', 'concurrent.futures') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "[]"
