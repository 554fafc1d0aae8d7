"""Sniffer invariants: chunking never changes a verdict, verdicts are sticky, the buffer
stays bounded, and no input makes it raise. The certificate parser accepts or raises
ProtocolError, nothing else."""

from __future__ import annotations

import contextlib
import itertools

from hypothesis import example, given, settings
from hypothesis import strategies as st

from portside.errors import ProtocolError
from portside.sniff import (
    H2_PREFACE,
    MAX_SNIFF_BYTES,
    Probe,
    Sniffer,
    Verdict,
    parse_certificate,
)

# Real answers and signature fragments, so that random inputs reach deep branches.
SEEDS = [
    b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03" + bytes(32) + b"\x00\x13\x02\x00\x00\x2e"
    b"\x00\x2b\x00\x02\x03\x04\x00\x10\x00\x05\x00\x03\x02h2",
    b"\x15\x03\x03\x00\x02\x02\x70",
    b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\n",
    b"HTTP/1.0 404",
    b"<!DOCTYPE HTML>",
    b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n",
    b"+PONG\r\n",
    b"-NOAUTH Authentication required.\r\n",
    b"-ERR x\r\n",
    b"N",
    b"S",
    b"E\x00\x00\x00\x10SFATAL\x00Mno\x00\x00",
    b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x64",
    b"J\x00\x00\x00\x0a8.0.36\x00",
    b"\x05\x00\x00\x00\xff\x01\x02ab",
    b"220 ftp\r\n",
    b"220-",
    b"* OK ready\r\n",
    b"+OK ready\r\n",
    b"\r\n",
    b"\n\n",
    b"\x00",
    H2_PREFACE,
]
answers = st.one_of(
    st.binary(max_size=600),
    st.lists(st.one_of(st.sampled_from(SEEDS), st.binary(max_size=8)), max_size=5).map(b"".join),
)
probes = st.sampled_from(list(Probe))


def feed_in_chunks(probe: Probe, chunks: list[bytes], *, end: str) -> Verdict | None:
    """Feed the chunks; the verdict, or after the last chunk eof()/timeout()/None."""
    sniffer = Sniffer(probe)
    verdict: Verdict | None = None
    for chunk in chunks:
        got = sniffer.feed(chunk)
        if verdict is not None:
            assert got == verdict  # sticky
        verdict = got
    if verdict is not None or end == "none":
        return verdict
    return sniffer.eof() if end == "eof" else sniffer.timeout()


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=600)
@given(probe=probes, data=answers, cuts=st.lists(st.integers(0, 10_000), max_size=12))
@example(probe=Probe.NULL, data=b"\x01\x02\x03\x04\x05\x06hello", cuts=[1, 2, 3])
@example(probe=Probe.POSTGRES, data=b"SSH-2.0-x\r\n", cuts=[1])
def test_chunking_never_changes_the_verdict(probe, data, cuts):
    chunks = cut(data, cuts)
    for end in ("eof", "timeout", "none"):
        assert feed_in_chunks(probe, chunks, end=end) == feed_in_chunks(probe, [data], end=end)


@settings(max_examples=300)
@given(probe=probes, data=answers, more=st.binary(max_size=64))
def test_a_verdict_never_changes_when_more_bytes_arrive(probe, data, more):
    sniffer = Sniffer(probe)
    verdict = sniffer.feed(data)
    if verdict is not None:
        assert Sniffer(probe).feed(data + more) == verdict
        assert sniffer.feed(more) == verdict


@settings(max_examples=200)
@given(probe=probes, chunks=st.lists(st.binary(min_size=1, max_size=4096), max_size=12))
def test_the_buffer_stays_bounded(probe, chunks):
    sniffer = Sniffer(probe)
    for chunk in chunks:
        sniffer.feed(chunk)
        assert len(sniffer.received) <= MAX_SNIFF_BYTES
    if sum(map(len, chunks)) >= MAX_SNIFF_BYTES:
        assert sniffer.verdict is not None  # a full buffer decides


@given(probe=probes, data=answers)
def test_eof_and_timeout_always_give_a_verdict(probe, data):
    for finish in ("eof", "timeout"):
        sniffer = Sniffer(probe)
        sniffer.feed(data)
        verdict = sniffer.eof() if finish == "eof" else sniffer.timeout()
        assert isinstance(verdict, Verdict)


DER_SEEDS = [
    b"\x30\x82\x01\x00",
    b"\x30\x03\x02\x01\x01",
    b"\xa0\x03\x02\x01\x02",
    b"\x06\x03\x55\x1d\x11",
    b"\x04\x05\x30\x03\x82\x01a",
    b"\x17\x0d251122080912Z",
    b"\x31\x0b\x30\x09\x06\x03\x55\x04\x03\x0c\x02ab",
]


@settings(max_examples=500)
@given(
    der=st.one_of(
        st.binary(max_size=300),
        st.lists(st.one_of(st.sampled_from(DER_SEEDS), st.binary(max_size=6)), max_size=8).map(
            b"".join
        ),
    )
)
def test_certificate_parser_accepts_or_raises_protocol_error_only(der):
    with contextlib.suppress(ProtocolError):
        parse_certificate(der)


# openssl req -x509 -newkey ec … -subj /O=portside/CN=localhost
#   -addext subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1   (valid 2026-11-22 .. 2036-11-19)
REAL_CERTIFICATE = bytes.fromhex(
    "308201d230820178a00302010202140b43374f1d5f622136121dfe4ae5bf301d1f17f8300a06082a8648ce3d"
    "04030230273111300f060355040a0c08706f7274736964653112301006035504030c096c6f63616c686f7374"
    "301e170d3236313132323038313630345a170d3336313131393038313630345a30273111300f060355040a0c"
    "08706f7274736964653112301006035504030c096c6f63616c686f73743059301306072a8648ce3d02010608"
    "2a8648ce3d03010703420004bd5e182ab18988a6d46197ad96c2d663e0fde015373e4b5cb96d1bd03d6cf9f8"
    "3e1cf5fed05d670ec93ae5f9d2bd5c35e634ba2af15e01d1bd4be595997bede1a38181307f301d0603551d0e"
    "04160414501c063bd8b4e1a0abb7ac91e17b772bdee89c7a301f0603551d23041830168014501c063bd8b4e1"
    "a0abb7ac91e17b772bdee89c7a300f0603551d130101ff040530030101ff302c0603551d110425302382096c"
    "6f63616c686f737487047f000001871000000000000000000000000000000001300a06082a8648ce3d040302"
    "0348003045022100b7ca89a9cb9c0ca9be1b5c55bcdae833968c1c546ce6fe09a46b7ed7ab597a0902202452"
    "00e43e009ea2964228e894ec61f1c0b03a99ac27abf2877f7a6525d74982"
)


def test_the_real_certificate_parses():
    cert = parse_certificate(REAL_CERTIFICATE)
    assert cert.subject == "O=portside, CN=localhost"
    assert cert.san == ("DNS:localhost", "IP:127.0.0.1", "IP:::1")
    assert (cert.not_before, cert.not_after) == ("2026-11-22T08:16:04Z", "2036-11-19T08:16:04Z")


@settings(max_examples=1000)
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(REAL_CERTIFICATE) - 1), st.integers(0, 255)), max_size=4
    ),
    keep=st.integers(0, len(REAL_CERTIFICATE)),
)
def test_a_damaged_certificate_parses_or_raises_protocol_error_only(edits, keep):
    damaged = bytearray(REAL_CERTIFICATE)
    for index, value in edits:
        damaged[index] = value
    with contextlib.suppress(ProtocolError):
        parse_certificate(bytes(damaged[:keep]))
