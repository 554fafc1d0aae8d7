"""The one endpoint parser, and address classification."""

import pytest

from portside.addresses import (
    AddressClass,
    HostKind,
    classify_address,
    exposure_of,
    parse_target,
    unmap,
)
from portside.errors import TargetError, UsageError
from portside.models import Exposure

GOOD = [
    ("62893", None, HostKind.NONE, 62893, None),
    (":62893", None, HostKind.NONE, 62893, None),
    ("127.0.0.1:62893", "127.0.0.1", HostKind.IP, 62893, None),
    ("[::1]:62893", "::1", HostKind.IP, 62893, None),
    ("::1", "::1", HostKind.IP, None, None),
    ("[::1]", "::1", HostKind.IP, None, None),
    ("127.0.0.2", "127.0.0.2", HostKind.IP, None, None),
    ("localhost:3000", "localhost", HostKind.NAME, 3000, None),
    ("LocalHost.:3000", "localhost", HostKind.NAME, 3000, None),
    ("app.localhost:8080", "app.localhost", HostKind.NAME, 8080, None),
    ("http://127.0.0.1:62893/path?q=1", "127.0.0.1", HostKind.IP, 62893, "http"),
    ("http://localhost", "localhost", HostKind.NAME, 80, "http"),
    ("https://app.localhost/", "app.localhost", HostKind.NAME, 443, "https"),
    ("https://[::1]/x", "::1", HostKind.IP, 443, "https"),
    ("redis://user:secret@127.0.0.1", "127.0.0.1", HostKind.IP, 6379, "redis"),
    ("postgres://db.localhost:5433/app", "db.localhost", HostKind.NAME, 5433, "postgres"),
    ("[::ffff:127.0.0.1]:80", "::ffff:127.0.0.1", HostKind.IP, 80, None),
    ("::ffff:7f00:1", "::ffff:127.0.0.1", HostKind.IP, None, None),
    ("0", None, HostKind.NONE, 0, None),
    ("65535", None, HostKind.NONE, 65535, None),
    (" 8080 ", None, HostKind.NONE, 8080, None),
]


@pytest.mark.parametrize(("text", "host", "kind", "port", "scheme"), GOOD)
def test_every_way_of_naming_an_endpoint_parses(text, host, kind, port, scheme):
    target = parse_target(text)
    assert (target.host, target.host_kind, target.port, target.scheme) == (host, kind, port, scheme)


def test_the_path_of_a_url_is_kept():
    assert parse_target("http://127.0.0.1:1/health?x").path == "/health?x"
    assert parse_target("http://127.0.0.1:1").path == "/"


BAD = [
    ("70000", "out of range"),
    ("1.2.3.4:abc", "not a number"),
    ("[::1", "missing ']'"),
    ("", "empty"),
    ("   ", "empty"),
    ("::1:8080:x", "brackets"),
    ("[127.0.0.1]:80", "not an IPv6"),
    ("[::1]x", "unexpected"),
    ("localhost", "no port"),
    ("gopher://x", "unknown scheme"),
    ("http://", "no host"),
    ("host_:-1", "not a number"),
    ("999.1.1.1:80", "not a valid IPv4"),
    ("bad..name:80", "neither an IP"),
    ("\uff11\uff12\uff13", "not a number"),  # full-width digits
]


@pytest.mark.parametrize(("text", "problem"), BAD)
def test_bad_input_names_the_problem(text, problem):
    with pytest.raises(TargetError) as caught:
        parse_target(text)
    assert problem in str(caught.value)
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, UsageError)


def test_require_port_refuses_a_bare_address():
    with pytest.raises(TargetError, match="no port"):
        parse_target("127.0.0.1", require_port=True)


def test_display_brackets_ipv6():
    assert parse_target("[::1]:80").display() == "[::1]:80"
    assert parse_target("127.0.0.1:80").display() == "127.0.0.1:80"
    assert parse_target(":80").display() == ":80"


@pytest.mark.parametrize(
    ("ip", "cls", "exposure"),
    [
        ("127.0.0.1", AddressClass.LOOPBACK, Exposure.LOOPBACK),
        ("127.5.6.7", AddressClass.LOOPBACK, Exposure.LOOPBACK),
        ("::1", AddressClass.LOOPBACK, Exposure.LOOPBACK),
        ("0.0.0.0", AddressClass.WILDCARD, Exposure.ALL),
        ("::", AddressClass.WILDCARD, Exposure.ALL),
        ("10.1.2.3", AddressClass.PRIVATE, Exposure.SPECIFIC),
        ("192.168.1.1", AddressClass.PRIVATE, Exposure.SPECIFIC),
        ("fd00::1", AddressClass.PRIVATE, Exposure.SPECIFIC),
        ("169.254.1.1", AddressClass.LINK_LOCAL, Exposure.SPECIFIC),
        ("fe80::1", AddressClass.LINK_LOCAL, Exposure.SPECIFIC),
        ("100.100.1.1", AddressClass.SHARED, Exposure.SPECIFIC),
        ("8.8.8.8", AddressClass.PUBLIC, Exposure.SPECIFIC),
        ("224.0.0.1", AddressClass.MULTICAST, Exposure.SPECIFIC),
        ("::ffff:127.0.0.1", AddressClass.LOOPBACK, Exposure.LOOPBACK),
        ("::ffff:0.0.0.0", AddressClass.WILDCARD, Exposure.ALL),
    ],
)
def test_addresses_are_classified(ip, cls, exposure):
    facts = classify_address(ip)
    assert facts.classes == (cls,)
    assert facts.exposure is exposure
    assert exposure_of(ip) is exposure


def test_v4_mapped_addresses_name_their_ipv4():
    assert classify_address("::ffff:10.0.0.1").mapped_ipv4 == "10.0.0.1"
    assert classify_address("::1").mapped_ipv4 is None
    assert unmap("::ffff:10.0.0.1") == "10.0.0.1"
    assert unmap("::1") == "::1"
