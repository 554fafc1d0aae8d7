"""The local CA (portside.ca): files, name policy, leaves, constraints, the leaf cache.

Every CA lives in a pytest temporary directory; nothing touches the real state directory.
Chains are checked with cryptography's own X.509 path validation (which honours name
constraints); the TLS side is in tests/integration/test_https_proxy.py.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from portside import ca as ca_module
from portside.ca import CERT_FILE, KEY_FILE, CAError, CertificateAuthority, allowed_name
from portside.errors import UsageError


@pytest.fixture
def authority(tmp_path):
    return CertificateAuthority.load_or_create(tmp_path / "ca")


def _verify(authority: CertificateAuthority, leaf: x509.Certificate, name: str) -> None:
    subject: x509.verification.Subject = (
        x509.IPAddress(ipaddress.ip_address(name))
        if name[0].isdigit() or ":" in name
        else x509.DNSName(name)
    )
    verifier = (
        PolicyBuilder()
        .store(Store([authority.certificate]))
        .time(datetime.datetime.now(datetime.UTC))
        .build_server_verifier(subject)
    )
    verifier.verify(leaf, [])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("localhost", "localhost"),
        ("App.Localhost", "app.localhost"),
        ("app.localhost.", "app.localhost"),
        ("a.b-c.localhost", "a.b-c.localhost"),
        ("xn--bcher-kva.localhost", "xn--bcher-kva.localhost"),
        ("example.com", None),
        ("localhost.example.com", None),
        ("evillocalhost", None),
        ("-bad.localhost", None),
        ("bad-.localhost", None),
        ("a..localhost", None),
        ("a_b.localhost", None),
        (".localhost", None),
        ("127.0.0.1", None),
        ("*.localhost", None),
        ("a" * 64 + ".localhost", None),
    ],
)
def test_allowed_name(name, expected):
    assert allowed_name(name) == expected


def test_the_ca_is_created_once_with_a_private_key(tmp_path):
    directory = tmp_path / "state" / "ca"
    first = CertificateAuthority.load_or_create(directory)
    assert first.created
    second = CertificateAuthority.load_or_create(directory)
    assert not second.created
    assert second.fingerprint == first.fingerprint
    assert stat.S_IMODE((directory / KEY_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / CERT_FILE).stat().st_mode) == 0o644
    # Written through temporary files that were renamed: none is left behind.
    assert sorted(p.name for p in directory.iterdir()) == sorted([".lock", CERT_FILE, KEY_FILE])
    digest = first.certificate.fingerprint(hashes.SHA256()).hex(":").upper()
    assert first.fingerprint == digest
    assert len(first.fingerprint.split(":")) == 32


def test_the_key_is_private_even_with_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        authority = CertificateAuthority.load_or_create(tmp_path / "ca")
    finally:
        os.umask(old)
    assert stat.S_IMODE(authority.key_path.stat().st_mode) == 0o600


def test_a_key_readable_by_others_is_refused_with_the_fix(authority):
    authority.key_path.chmod(0o644)
    with pytest.raises(CAError, match=r"chmod 600"):
        CertificateAuthority.load(authority.directory)


def test_a_key_of_another_certificate_is_refused(authority, tmp_path):
    other = CertificateAuthority.load_or_create(tmp_path / "other")
    authority.key_path.write_bytes(other.key_path.read_bytes())
    with pytest.raises(CAError, match="does not belong"):
        CertificateAuthority.load(authority.directory)


def test_a_missing_ca_is_reported_by_load(tmp_path):
    with pytest.raises(CAError, match="portside ca"):
        CertificateAuthority.load(tmp_path / "nothing")


def test_a_damaged_certificate_is_reported(authority):
    authority.cert_path.write_bytes(b"not a certificate")
    with pytest.raises(CAError, match="cannot read"):
        CertificateAuthority.load(authority.directory)


def test_the_default_directory_follows_portside_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PORTSIDE_HOME", str(tmp_path / "home"))
    assert ca_module.default_ca_dir() == tmp_path / "home" / "ca"
    authority = CertificateAuthority.load_or_create()
    assert authority.cert_path == tmp_path / "home" / "ca" / CERT_FILE


def test_the_ca_certificate_is_a_name_constrained_root(authority):
    certificate = authority.certificate
    assert certificate.issuer == certificate.subject
    basic = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca
    assert basic.value.path_length == 0
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    constraints = certificate.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical
    assert set(constraints.value.permitted_subtrees or []) == {
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_network("127.0.0.0/8")),
        x509.IPAddress(ipaddress.ip_network("::1/128")),
    }
    assert isinstance(certificate.public_key(), ec.EllipticCurvePublicKey)


@pytest.mark.parametrize("name", ["app.localhost", "a.b.localhost", "localhost"])
def test_a_leaf_verifies_for_its_name_only(authority, name):
    leaf = authority.issue(name).certificate
    _verify(authority, leaf, name)
    with pytest.raises(VerificationError):
        _verify(authority, leaf, "other.localhost")
    assert leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == (
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    )
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_the_localhost_leaf_also_names_the_loopback_addresses(authority):
    leaf = authority.issue("localhost").certificate
    _verify(authority, leaf, "127.0.0.1")
    _verify(authority, leaf, "::1")


def test_the_chain_is_leaf_then_ca(authority):
    leaf = authority.issue("app.localhost")
    chain = x509.load_pem_x509_certificates(leaf.chain_pem)
    assert [c.fingerprint(hashes.SHA256()) for c in chain] == [
        leaf.certificate.fingerprint(hashes.SHA256()),
        authority.certificate.fingerprint(hashes.SHA256()),
    ]


@pytest.mark.parametrize("name", ["example.com", "app.localhost.example.com", "*.localhost"])
def test_no_leaf_outside_localhost(authority, name):
    with pytest.raises(UsageError, match="only issues for localhost"):
        authority.issue(name)
    with pytest.raises(UsageError):
        authority.leaf_context(name)


def _forged_leaf(authority: CertificateAuthority, name: str) -> x509.Certificate:
    """A leaf for *name* signed with the CA key, bypassing portside's name policy: what
    a thief of the key could make."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                authority._key.public_key()  # the test plays the thief
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(authority._key, hashes.SHA256())
    )


def test_the_name_constraint_stops_a_forged_leaf_for_another_site(authority):
    _verify(authority, _forged_leaf(authority, "fine.localhost"), "fine.localhost")
    with pytest.raises(VerificationError):
        _verify(authority, _forged_leaf(authority, "bank.example"), "bank.example")


def test_leaf_contexts_are_cached_per_name_and_bounded(authority, monkeypatch):
    monkeypatch.setattr(ca_module, "LEAF_CACHE_SIZE", 3)
    first = authority.leaf_context("a.localhost")
    assert authority.leaf_context("A.localhost.") is first
    for name in ("b.localhost", "c.localhost", "d.localhost"):
        authority.leaf_context(name)
    assert authority.cached_names() == ["b.localhost", "c.localhost", "d.localhost"]
    assert authority.leaf_context("a.localhost") is not first  # evicted, issued again


def test_a_leaf_near_its_end_is_issued_again(authority, monkeypatch):
    first = authority.leaf_context("a.localhost")
    monkeypatch.setattr(ca_module, "LEAF_RENEW_BEFORE", datetime.timedelta(days=365))
    assert authority.leaf_context("a.localhost") is not first


def test_the_key_file_is_a_pkcs8_ec_key(authority):
    key = serialization.load_pem_private_key(authority.key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert authority.key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
