"""Fingerprints: what real servers answered to each probe -> the verdict.

Bytes marked "captured" were recorded on loopback from the named server (Debian 12:
Python 3.11.7 http.server and ssl, redis-server 7.0.15, PostgreSQL 15.18, OpenSSH 9.2p1,
nginx 1.22.1). The others follow the published formats (RFC 9113 §3.4 and §6.5, the
MySQL client/server protocol, RFC 5321/959/9051/1939) and the nmap fingerprints cited in
failure-modes.md §3.D.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from portside.errors import ProtocolError
from portside.sniff import (
    MAX_SNIFF_BYTES,
    Probe,
    Protocol,
    Sniffer,
    Verdict,
    head_length,
    http_get,
    parse_certificate,
    probe_bytes,
    sniff,
)

# captured: Python ssl server (TLS 1.3 negotiated), the first record of its answer
SERVER_HELLO_TLS13 = bytes.fromhex(
    "160303007a020000760303787f8e93972633410f11a448d4bbc766e04d1e692b068a63ad5d7b2aa16486"
    "10205af0a83ed6df48b2b8eed7df17fbf67bd60c92482f66535589e65dcc656698a0130200002e002b00"
    "02030400330024001d0020f161b209d62fd000732b8260936ba25b50eb42813885b99c2c8fb9a8c49de219"
)
# captured: the same server with the client capped at TLS 1.2 (ALPN h2 visible in clear)
SERVER_HELLO_TLS12 = bytes.fromhex(
    "160303004a0200004603038201bc6aa7265a08328834185b590dc47d70bb54f94878fd444f574e475244"
    "0100c02c00001eff01000100000b0004030001020023000000100005000302683200170000"
)
# captured: Python ssl server whose SNI callback refuses the name
TLS_ALERT_UNRECOGNIZED_NAME = b"\x15\x03\x03\x00\x02\x02\x70"
# captured: Python http.server answering a TLS ClientHello (an HTTP/0.9-style error page)
HTML_TO_CLIENT_HELLO = (
    b'<!DOCTYPE HTML>\n<html lang="en">\n    <head>\n        <meta charset="utf-8">\n'
    b"        <title>Error response</title>\n    </head>\n    <body>\n"
    b"        <h1>Error response</h1>\n        <p>Error code: 400</p>\n"
)
# captured: Python http.server answering GET / HTTP/1.0
PYTHON_HTTP_200 = (
    b"HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6 Python/3.11.7\r\n"
    b"Date: Sun, 22 Nov 2026 08:08:36 GMT\r\nContent-type: text/html; charset=utf-8\r\n"
    b'Content-Length: 306\r\n\r\n<!DOCTYPE HTML>\n<html lang="en">\n'
)
# captured: nginx answering a TLS ClientHello on a plain-HTTP port
NGINX_400 = (
    b"HTTP/1.1 400 Bad Request\r\nServer: nginx/1.22.1\r\nDate: Sun, 22 Nov 2026 08:09:32 GMT\r\n"
    b"Content-Type: text/html\r\nContent-Length: 157\r\nConnection: close\r\n\r\n<html>\r\n"
)
# captured: OpenSSH, server-first
SSH_BANNER = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u10\r\n"
# captured: redis-server 7.0.15
REDIS_PONG = b"+PONG\r\n"
REDIS_NOAUTH = b"-NOAUTH Authentication required.\r\n"
REDIS_TO_H2_PREFACE = (
    b"-ERR unknown command 'PRI', with args beginning with: '*' 'HTTP/2.0' \r\n"
    b"-ERR unknown command 'SM', with args beginning with: \r\n"
)
REDIS_DENIED = (
    b"-DENIED Redis is running in protected mode because protected mode is enabled and no"
    b" password is set for the default user.\r\n"
)
# captured: PostgreSQL 15 answering the SSLRequest with ssl=off
POSTGRES_NO_SSL = b"N"
POSTGRES_SSL = b"S"
POSTGRES_STARTING = (  # an ErrorResponse: severity, code, message
    b"E\x00\x00\x00\x4bSFATAL\x00VFATAL\x00C57P03\x00Mthe database system is starting up\x00"
    b"Fpostmaster.c\x00\x00"
)
# nghttpd --no-tls sends SETTINGS at once (failure-modes.md FM-23, measured)
H2C_SETTINGS = b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x64"
MYSQL_GREETING = b"J\x00\x00\x00\x0a8.0.36\x00\x08\x00\x00\x00abcdefgh\x00\xff\xff"
MARIADB_GREETING = b"Z\x00\x00\x00\x0a5.5.5-10.11.6-MariaDB-0+deb12u1\x00\x03\x00\x00\x00"
_BLOCKED = b"\xff\x69\x04Host '10.0.0.2' is blocked because of many connection errors"
MYSQL_HOST_BLOCKED = len(_BLOCKED).to_bytes(3, "little") + b"\x00" + _BLOCKED
SMTP_BANNER = b"220 mail.example.test ESMTP Postfix (Debian/GNU)\r\n"
FTP_BANNER = b"220 (vsFTPd 3.0.3)\r\n"
UNNAMED_220 = b"220 ready\r\n"
IMAP_BANNER = b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS] Dovecot ready.\r\n"
POP3_BANNER = b"+OK Dovecot ready.\r\n"

FINGERPRINTS = [
    pytest.param(
        Probe.TLS,
        SERVER_HELLO_TLS13,
        Verdict(protocol=Protocol.TLS, version="TLSv1.3", detail="ServerHello, cipher 0x1302"),
        id="python-ssl-tls13",
    ),
    pytest.param(
        Probe.TLS,
        SERVER_HELLO_TLS12,
        Verdict(
            protocol=Protocol.TLS, version="TLSv1.2", detail="ServerHello, cipher 0xc02c, ALPN h2"
        ),
        id="python-ssl-tls12-alpn",
    ),
    pytest.param(
        Probe.TLS,
        TLS_ALERT_UNRECOGNIZED_NAME,
        Verdict(
            protocol=Protocol.TLS,
            version="TLSv1.2",
            detail="alert: fatal unrecognized_name",
            error=True,
        ),
        id="tls-alert",
    ),
    pytest.param(
        Probe.TLS,
        HTML_TO_CLIENT_HELLO,
        Verdict(
            protocol=Protocol.HTTP,
            version="HTTP/0.9",
            detail="HTML without a status line (an HTTP/0.9-style answer)",
        ),
        id="python-http-server-to-client-hello",
    ),
    pytest.param(
        Probe.HTTP,
        PYTHON_HTTP_200,
        Verdict(
            protocol=Protocol.HTTP,
            version="HTTP/1.0",
            status=200,
            reason="OK",
            server="SimpleHTTP/0.6 Python/3.11.7",
            detail="HTTP/1.0 200 OK",
        ),
        id="python-http-server-get",
    ),
    pytest.param(
        Probe.TLS,
        NGINX_400,
        Verdict(
            protocol=Protocol.HTTP,
            version="HTTP/1.1",
            status=400,
            reason="Bad Request",
            server="nginx/1.22.1",
            detail="HTTP/1.1 400 Bad Request",
        ),
        id="nginx-to-client-hello",
    ),
    pytest.param(
        Probe.NULL,
        SSH_BANNER,
        Verdict(
            protocol=Protocol.SSH,
            version="2.0",
            server="OpenSSH_9.2p1",
            detail="SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u10",
        ),
        id="openssh",
    ),
    pytest.param(
        Probe.REDIS, REDIS_PONG, Verdict(protocol=Protocol.REDIS, detail="+PONG"), id="redis-pong"
    ),
    pytest.param(
        Probe.REDIS,
        REDIS_NOAUTH,
        Verdict(protocol=Protocol.REDIS, detail="-NOAUTH Authentication required.", error=True),
        id="redis-noauth",
    ),
    pytest.param(
        Probe.H2,
        REDIS_TO_H2_PREFACE,
        Verdict(
            protocol=Protocol.REDIS,
            detail="-ERR unknown command 'PRI', with args beginning with: '*' 'HTTP/2.0'",
            error=True,
        ),
        id="redis-to-h2-preface",
    ),
    pytest.param(
        Probe.REDIS,
        REDIS_DENIED,
        Verdict(protocol=Protocol.REDIS, detail=REDIS_DENIED.decode().strip(), error=True),
        id="redis-protected-mode",
    ),
    pytest.param(
        Probe.POSTGRES,
        POSTGRES_NO_SSL,
        Verdict(protocol=Protocol.POSTGRES, detail="SSL not supported (N)"),
        id="postgres-n",
    ),
    pytest.param(
        Probe.POSTGRES,
        POSTGRES_STARTING,
        Verdict(
            protocol=Protocol.POSTGRES,
            detail="FATAL: the database system is starting up (57P03)",
            error=True,
        ),
        id="postgres-error",
    ),
    pytest.param(
        Probe.NULL,
        H2C_SETTINGS,
        Verdict(protocol=Protocol.H2C, version="h2", detail="SETTINGS frame (1 settings)"),
        id="h2c-settings",
    ),
    pytest.param(
        Probe.NULL,
        MYSQL_GREETING,
        Verdict(protocol=Protocol.MYSQL, version="8.0.36", server="MySQL", detail="MySQL 8.0.36"),
        id="mysql",
    ),
    pytest.param(
        Probe.NULL,
        MARIADB_GREETING,
        Verdict(
            protocol=Protocol.MYSQL,
            version="10.11.6-MariaDB-0+deb12u1",
            server="MariaDB",
            detail="MariaDB 10.11.6-MariaDB-0+deb12u1",
        ),
        id="mariadb",
    ),
    pytest.param(
        Probe.NULL,
        MYSQL_HOST_BLOCKED,
        Verdict(
            protocol=Protocol.MYSQL,
            detail="error 1129: Host '10.0.0.2' is blocked because of many connection errors",
            error=True,
        ),
        id="mysql-error-packet",
    ),
    pytest.param(
        Probe.NULL,
        SMTP_BANNER,
        Verdict(protocol=Protocol.SMTP, detail=SMTP_BANNER.decode().strip()),
        id="smtp",
    ),
    pytest.param(
        Probe.NULL,
        FTP_BANNER,
        Verdict(protocol=Protocol.FTP, detail="220 (vsFTPd 3.0.3)"),
        id="ftp",
    ),
    pytest.param(
        Probe.NULL,
        UNNAMED_220,
        Verdict(protocol=Protocol.SMTP_OR_FTP, detail="220 ready"),
        id="smtp-or-ftp",
    ),
    pytest.param(
        Probe.NULL,
        IMAP_BANNER,
        Verdict(protocol=Protocol.IMAP, detail=IMAP_BANNER.decode().strip()),
        id="imap",
    ),
    pytest.param(
        Probe.NULL,
        POP3_BANNER,
        Verdict(protocol=Protocol.POP3, detail="+OK Dovecot ready."),
        id="pop3",
    ),
    pytest.param(
        Probe.NULL,
        b"\x01\x02\x03\x04\x05\x06hello",
        Verdict(protocol=Protocol.UNKNOWN, detail="\\x01\\x02\\x03\\x04\\x05\\x06hello"),
        id="unknown-bytes",
    ),
]


@pytest.mark.parametrize(("probe", "answer", "expected"), FINGERPRINTS)
def test_each_fingerprint_gives_its_verdict(probe, answer, expected):
    assert sniff(answer, probe) == expected


@pytest.mark.parametrize(("probe", "answer", "expected"), FINGERPRINTS)
def test_each_fingerprint_gives_the_same_verdict_byte_by_byte(probe, answer, expected):
    sniffer = Sniffer(probe)
    verdicts = [sniffer.feed(answer[i : i + 1]) for i in range(len(answer))]
    decided = [v for v in verdicts if v is not None]
    final = decided[-1] if decided else sniffer.eof()
    assert final == expected
    assert all(v == expected for v in decided)  # sticky once given


def test_a_server_that_closes_without_a_byte_is_tcpwrapped():
    assert Sniffer(Probe.NULL).eof() == Verdict(protocol=Protocol.TCPWRAPPED)


def test_a_server_that_sends_nothing_before_the_deadline_is_silent():
    assert Sniffer(Probe.NULL).timeout() == Verdict(protocol=Protocol.SILENT)


def test_silence_is_not_sticky_bytes_can_still_arrive():
    sniffer = Sniffer(Probe.NULL)
    assert sniffer.timeout().protocol is Protocol.SILENT
    assert sniffer.feed(SSH_BANNER) is not None
    assert sniffer.verdict is not None
    assert sniffer.verdict.protocol is Protocol.SSH


def test_postgres_s_is_decided_only_when_nothing_follows():
    sniffer = Sniffer(Probe.POSTGRES)
    assert sniffer.feed(POSTGRES_SSL) is None  # an SSH banner also starts with "S"
    assert sniffer.timeout() == Verdict(protocol=Protocol.POSTGRES, detail="SSL supported (S)")
    assert sniff(SSH_BANNER, Probe.POSTGRES).protocol is Protocol.SSH


def test_redis_replies_mean_redis_only_to_client_first_probes():
    assert sniff(REDIS_NOAUTH, Probe.NULL).protocol is Protocol.UNKNOWN
    assert sniff(REDIS_PONG, Probe.NULL).protocol is Protocol.UNKNOWN
    assert sniff(REDIS_PONG, Probe.TLS).protocol is Protocol.REDIS


def test_s_and_n_mean_postgres_only_to_the_ssl_request():
    assert sniff(b"N", Probe.NULL).protocol is Protocol.UNKNOWN
    assert sniff(b"N", Probe.POSTGRES).protocol is Protocol.POSTGRES


def test_a_partial_http_head_is_judged_at_eof_with_what_arrived():
    sniffer = Sniffer(Probe.HTTP)
    assert sniffer.feed(b"HTTP/1.1 503 Service Unavailable\r\nServer: x") is None
    verdict = sniffer.eof()
    assert (verdict.protocol, verdict.status, verdict.server) == (Protocol.HTTP, 503, "x")


def test_a_server_first_banner_is_recognised_whatever_probe_was_sent():
    # sshd sends its banner before reading, so it arrives ahead of any answer to a probe
    captured = SSH_BANNER + b"Invalid SSH identification string.\r\n"
    for probe in Probe:
        assert sniff(captured, probe).protocol is Protocol.SSH


def test_the_buffer_is_bounded_and_a_full_buffer_decides():
    sniffer = Sniffer(Probe.HTTP, max_bytes=1024)
    verdict = sniffer.feed(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 5000)
    assert verdict is not None
    assert verdict.status == 200
    assert len(sniffer.received) == 1024
    big = Sniffer(Probe.NULL)
    big.feed(b"\x00" * 2)
    for _ in range(10):
        big.feed(b"x" * MAX_SNIFF_BYTES)
    assert len(big.received) <= MAX_SNIFF_BYTES


def test_verdicts_are_sticky():
    sniffer = Sniffer(Probe.REDIS)
    first = sniffer.feed(REDIS_PONG)
    assert sniffer.feed(b"-ERR something else\r\n") == first
    assert sniffer.eof() == first
    assert sniffer.timeout() == first


def test_head_length_finds_the_empty_line_with_or_without_cr():
    assert head_length(b"HTTP/1.0 200 OK\r\nA: b\r\n\r\nbody") == len(
        b"HTTP/1.0 200 OK\r\nA: b\r\n\r\n"
    )
    assert head_length(b"HTTP/1.0 200 OK\nA: b\n\nbody") == len(b"HTTP/1.0 200 OK\nA: b\n\n")
    assert head_length(b"HTTP/1.0 200 OK\r\nA: b\r\n") is None


def test_http_get_is_a_minimal_http_1_0_request():
    request = http_get("app.localhost:8080", "/health check?x=1#frag")
    assert request.startswith(b"GET /health%20check?x=1 HTTP/1.0\r\nHost: app.localhost:8080\r\n")
    assert request.endswith(b"\r\n\r\n")
    assert probe_bytes(Probe.POSTGRES) == b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
    assert probe_bytes(Probe.REDIS) == b"*1\r\n$4\r\nPING\r\n"
    with pytest.raises(ValueError, match="ClientHello"):
        probe_bytes(Probe.TLS)


# --------------------------------------------------------------------------- certificates


def _openssl_certificate(tmp_path: Path, *extra: str) -> bytes:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.der"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", str(key), "-outform", "DER", "-out", str(cert),
            "-days", "2", "-subj", "/O=portside, test/CN=localhost", *extra,
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert.read_bytes()


@pytest.fixture
def openssl_available():
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed (Debian package openssl)")


@pytest.mark.usefixtures("openssl_available")
def test_a_certificate_made_by_openssl_is_read_back(tmp_path):
    der = _openssl_certificate(
        tmp_path, "-addext", "subjectAltName=DNS:localhost,DNS:*.app.localhost,IP:127.0.0.1,IP:::1"
    )
    text = subprocess.run(
        ["openssl", "x509", "-inform", "DER", "-noout", "-enddate", "-serial"],
        input=der,
        capture_output=True,
        check=True,
    ).stdout.decode()
    cert = parse_certificate(der)
    assert cert.subject == "O=portside\\, test, CN=localhost"
    assert cert.common_name == "localhost"
    assert cert.san == ("DNS:localhost", "DNS:*.app.localhost", "IP:127.0.0.1", "IP:::1")
    assert cert.self_issued
    assert cert.not_before is not None
    assert cert.not_after is not None
    assert cert.not_before < cert.not_after
    assert int(cert.serial, 16) == int(text.split("serial=")[1].strip(), 16)
    # openssl prints "notAfter=Nov 24 08:09:12 2026 GMT"
    year = text.split("notAfter=")[1].split()[3]
    assert cert.not_after.startswith(year)


@pytest.mark.usefixtures("openssl_available")
def test_a_certificate_without_extensions_has_no_sans(tmp_path):
    cert = parse_certificate(_openssl_certificate(tmp_path, "-addext", "basicConstraints=CA:FALSE"))
    assert cert.san == ()
    assert cert.common_name == "localhost"


@pytest.mark.parametrize(
    "der", [b"", b"\x30", b"\x30\x03\x02\x01\x01", b"\x04\x00", b"\x30\x84\xff\xff\xff\xff"]
)
def test_garbage_is_not_a_certificate(der):
    with pytest.raises(ProtocolError):
        parse_certificate(der)


def test_sniff_is_sans_io():
    from tests.test_architecture import IO_MODULES, PKG, imported_roots

    assert imported_roots(PKG / "sniff.py").isdisjoint(IO_MODULES)
