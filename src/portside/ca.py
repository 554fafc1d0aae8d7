"""A local certificate authority for ``https://NAME.localhost``.

::

    ca = CertificateAuthority.load_or_create()   # $STATE/ca/, created on first use
    ca.cert_path, ca.key_path, ca.fingerprint    # fingerprint: SHA-256, AA:BB:... hex
    ca.issue("app.localhost")                    # a Leaf (certificate + chain PEM)
    context = ca.server_context()                # ssl.SSLContext: a leaf per SNI name

    add_to_system_store(ca)                      # root only: the OS trust store
    add_to_nss_db(ca, Path("~/.pki/nssdb"))      # Chromium's (or a Firefox profile's) db

Theory of operation:

* **Where.** ``$PORTSIDE_HOME/ca/``, else ``ca/`` beside the registry in the user's state
  directory (``~/.local/state/portside/ca`` on Linux). The directory is mode 0700, the key
  ``portside-ca-key.pem`` 0600 (written to a temporary file opened 0600 and renamed into
  place, so it is never readable by others, not even half-written), the certificate
  ``portside-ca.pem`` 0644. Creation holds an exclusive lock on ``ca/.lock``, so two
  processes starting at once create one CA, not two. A key file that others can read is
  refused, with the ``chmod`` that fixes it.
* **The CA.** EC P-256, valid ten years, ``pathLen=0`` and a critical *name constraint*:
  it can only vouch for ``localhost``, ``*.localhost`` (any depth), ``127.0.0.0/8`` and
  ``::1``. Trusting it therefore cannot let anyone who steals its key impersonate
  another site to a client that honours name constraints (OpenSSL, NSS, Chromium, Go do).
* **Leaves.** Issued in memory when a TLS client names a host (SNI): one EC P-256 key per
  process for every leaf, a certificate per name (valid 30 days, re-issued when it nears
  its end), kept in an LRU cache of ready ``SSLContext`` objects. A client that sends no
  name (``https://127.0.0.1:PORT``) gets the ``localhost`` leaf, which also names
  127.0.0.1 and ::1. So does a name outside the constraint (no certificate from this CA
  could be valid for it): the client then fails verification with a clear name mismatch
  ("certificate is for localhost"), rather than an unexplained handshake failure.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import ipaddress
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from portside.errors import PortsideError, UsageError

__all__ = [
    "CA_DIR_NAME",
    "CERT_FILE",
    "KEY_FILE",
    "CAError",
    "CertificateAuthority",
    "Leaf",
    "add_to_nss_db",
    "add_to_system_store",
    "allowed_name",
    "default_ca_dir",
]

CA_DIR_NAME = "ca"
CERT_FILE = "portside-ca.pem"
KEY_FILE = "portside-ca-key.pem"
LOCK_FILE = ".lock"
CA_VALID_DAYS = 3650
LEAF_VALID_DAYS = 30
#: A cached leaf is re-issued when it has less than this left.
LEAF_RENEW_BEFORE = datetime.timedelta(days=1)
#: Clock skew allowed for: certificates start this long before they are made.
BACKDATE = datetime.timedelta(hours=1)
LEAF_CACHE_SIZE = 512
#: The default leaf's name, served to clients that send no SNI.
DEFAULT_NAME = "localhost"
#: Where ``update-ca-certificates`` (Debian, Ubuntu, Alpine) looks for local anchors.
SYSTEM_ANCHORS = Path("/usr/local/share/ca-certificates")
SYSTEM_ANCHOR_NAME = "portside-local-ca.crt"
#: Fedora/RHEL/Arch: ``update-ca-trust`` reads this directory.
P11_ANCHORS = Path("/etc/pki/ca-trust/source/anchors")
ALPN = ["http/1.1"]

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_PERMITTED: tuple[x509.GeneralName, ...] = (
    x509.DNSName("localhost"),  # RFC 5280: localhost and any name ending in .localhost
    x509.IPAddress(ipaddress.ip_network("127.0.0.0/8")),
    x509.IPAddress(ipaddress.ip_network("::1/128")),
)
_DEFAULT_SANS: tuple[x509.GeneralName, ...] = (
    x509.DNSName(DEFAULT_NAME),
    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    x509.IPAddress(ipaddress.ip_address("::1")),
)


class CAError(PortsideError):
    """The CA's files cannot be created, read or trusted; the message names the fix."""


def default_ca_dir() -> Path:
    """``$PORTSIDE_HOME/ca``, else ``ca`` beside the registry in the user state dir."""
    from portside.pick import registry_file

    return Path(registry_file()).parent / CA_DIR_NAME


def allowed_name(name: str) -> str | None:
    """*name* normalised (lower case, no trailing dot) if the CA may issue for it:
    ``localhost`` or a valid DNS name ending in ``.localhost``; else None. Pure."""
    name = name.strip().lower().removesuffix(".")
    if len(name) > 253 or not (name == DEFAULT_NAME or name.endswith("." + DEFAULT_NAME)):
        return None
    if not all(_LABEL.match(label) for label in name.split(".")):
        return None
    return name


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclasses.dataclass(frozen=True, slots=True)
class Leaf:
    """A server certificate: ``chain_pem`` is the leaf then the CA; ``key_pem`` the
    leaf's private key (PKCS#8, shared by the leaves of one CA object, never written)."""

    name: str
    certificate: x509.Certificate
    chain_pem: bytes
    key_pem: bytes = dataclasses.field(repr=False)

    @property
    def not_after(self) -> datetime.datetime:
        return self.certificate.not_valid_after_utc


class CertificateAuthority:
    """The CA's certificate and key, and leaf issuance (thread-safe)."""

    def __init__(
        self, directory: Path, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey
    ) -> None:
        self.directory = directory
        self.certificate = certificate
        self._key = key
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        self._leaf_key_pem = self._leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self._ca_pem = certificate.public_bytes(serialization.Encoding.PEM)
        self._contexts: collections.OrderedDict[str, tuple[Leaf, ssl.SSLContext]] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()
        self.created = False  # set by load_or_create when this call made the files

    # -- files ------------------------------------------------------------------------

    @classmethod
    def load_or_create(cls, directory: Path | None = None) -> CertificateAuthority:
        """The CA in *directory* (default :func:`default_ca_dir`), created if absent."""
        directory = directory or default_ca_dir()
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise CAError(f"cannot create the CA directory {directory}: {exc.strerror}") from exc
        with _locked(directory / LOCK_FILE):
            if (directory / CERT_FILE).exists() or (directory / KEY_FILE).exists():
                return cls.load(directory)
            ca = cls._create(directory)
        ca.created = True
        return ca

    @classmethod
    def load(cls, directory: Path | None = None) -> CertificateAuthority:
        """The existing CA in *directory*; CAError when missing, unsafe or damaged."""
        directory = directory or default_ca_dir()
        cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
        if not cert_path.exists() or not key_path.exists():
            raise CAError(
                f"no local CA in {directory} (missing {CERT_FILE} or {KEY_FILE});"
                " run `portside ca` to create one"
            )
        if sys.platform != "win32":
            mode = key_path.stat().st_mode & 0o777
            if mode & 0o077:
                raise CAError(
                    f"the CA key {key_path} is readable by other users (mode {mode:04o});"
                    f" run `chmod 600 {key_path}`"
                )
        try:
            certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise CAError(
                f"cannot read the local CA in {directory} ({exc}); move the directory"
                " away to make a new CA (and trust the new one)"
            ) from exc
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or (
            key.public_key().public_bytes(*spki) != certificate.public_key().public_bytes(*spki)
        ):
            raise CAError(
                f"{key_path} does not belong to {cert_path}; move {directory} away to make a new CA"
            )
        if certificate.not_valid_after_utc <= _now():
            raise CAError(
                f"the local CA {cert_path} expired on {certificate.not_valid_after_utc:%Y-%m-%d};"
                f" move {directory} away to make a new CA (and trust the new one)"
            )
        return cls(directory, certificate, key)

    @classmethod
    def _create(cls, directory: Path) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        # No ":" in the name: NSS reads "token:nickname" in certutil's -n.
        label = f"{_user()}@{_hostname()} {now:%Y%m%d-%H%M%S}"
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "portside"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"portside local CA {label}"[:64]),
            ]
        )
        public = key.public_key()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=CA_VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.NameConstraints(permitted_subtrees=list(_PERMITTED), excluded_subtrees=None),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # The key first: a certificate without its key is never left behind alone.
        _write_atomically(directory / KEY_FILE, key_pem, 0o600)
        _write_atomically(
            directory / CERT_FILE, certificate.public_bytes(serialization.Encoding.PEM), 0o644
        )
        return cls(directory, certificate, key)

    @property
    def cert_path(self) -> Path:
        return self.directory / CERT_FILE

    @property
    def key_path(self) -> Path:
        return self.directory / KEY_FILE

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the CA certificate, ``AA:BB:...`` (what browsers show)."""
        return self.certificate.fingerprint(hashes.SHA256()).hex(":").upper()

    @property
    def subject(self) -> str:
        return self.certificate.subject.rfc4514_string()

    @property
    def nickname(self) -> str:
        """The certificate's common name (the NSS nickname)."""
        names = self.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = str(names[0].value) if names else "portside local CA"
        return name.replace(":", "-")  # NSS reads "token:nickname"

    # -- leaves -----------------------------------------------------------------------

    def issue(self, name: str) -> Leaf:
        """A fresh leaf for *name* (``localhost`` also names 127.0.0.1 and ::1).

        UsageError for a name outside ``localhost`` / ``*.localhost``.
        """
        normal = allowed_name(name)
        if normal is None:
            raise UsageError(
                f"{name!r}: the local CA only issues for localhost and *.localhost names"
            )
        sans = _DEFAULT_SANS if normal == DEFAULT_NAME else (x509.DNSName(normal),)
        now = _now()
        public = self._leaf_key.public_key()
        ca_public = self._key.public_key()  # load() checked that it is the certificate's
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, normal[:64])]))
            .issuer_name(self.certificate.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=LEAF_VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        chain = certificate.public_bytes(serialization.Encoding.PEM) + self._ca_pem
        return Leaf(normal, certificate, chain, self._leaf_key_pem)

    def leaf_context(self, name: str) -> ssl.SSLContext:
        """A server context holding the leaf for *name*, from the LRU cache when fresh."""
        normal = allowed_name(name)
        if normal is None:
            raise UsageError(
                f"{name!r}: the local CA only issues for localhost and *.localhost names"
            )
        with self._lock:
            cached = self._contexts.get(normal)
            if cached is not None and cached[0].not_after - _now() > LEAF_RENEW_BEFORE:
                self._contexts.move_to_end(normal)
                return cached[1]
        leaf = self.issue(normal)
        context = _server_context()
        _load_chain(context, leaf.chain_pem + leaf.key_pem)
        with self._lock:
            self._contexts[normal] = (leaf, context)
            self._contexts.move_to_end(normal)
            while len(self._contexts) > LEAF_CACHE_SIZE:
                self._contexts.popitem(last=False)
        return context

    def cached_names(self) -> list[str]:
        """The names with a cached leaf, least recently used first."""
        with self._lock:
            return list(self._contexts)

    def server_context(self) -> ssl.SSLContext:
        """The listener's context: TLS 1.2+, ALPN http/1.1, and an SNI callback that
        switches to the leaf of the name the client asked for (see the module doc)."""
        context = _server_context()
        leaf = self.issue(DEFAULT_NAME)
        _load_chain(context, leaf.chain_pem + leaf.key_pem)

        def pick(
            connection: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: object
        ) -> int | None:
            if name is None or allowed_name(name) is None:
                name = DEFAULT_NAME  # outside the constraint: the client sees a name mismatch
            try:
                connection.context = self.leaf_context(name)
            except Exception:  # an exception here would only be printed by OpenSSL's callback
                return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
            return None

        context.sni_callback = pick
        return context


# -- trust stores -----------------------------------------------------------------------


def add_to_system_store(
    ca: CertificateAuthority, *, anchors: Path | None = None
) -> tuple[Path, list[str]]:
    """Install the CA in the OS trust store (root only); returns the anchor file written
    and the command run. Debian/Ubuntu/Alpine: ``update-ca-certificates``;
    Fedora/RHEL/Arch: ``update-ca-trust``. CAError when not root or no tool is found."""
    if sys.platform != "linux":
        raise CAError(
            "`portside ca trust` knows the Linux trust stores only; on macOS run"
            f" `sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain {ca.cert_path}`"
        )
    anchors, command = _system_store("trust", anchors)
    target = anchors / SYSTEM_ANCHOR_NAME
    anchors.mkdir(parents=True, exist_ok=True)
    _write_atomically(target, ca.cert_path.read_bytes(), 0o644)
    _rebuild_system_store(command)
    return target, command


def remove_from_system_store(*, anchors: Path | None = None) -> tuple[Path, list[str]] | None:
    """Take portside's CA out of the OS trust store (root only): the anchor file that
    :func:`add_to_system_store` wrote is removed and the store rebuilt. Returns the file
    removed and the command run; None when it was not there (nothing is run). CAError
    when not root or no tool is found."""
    if sys.platform != "linux":
        raise CAError(
            "`portside ca untrust` knows the Linux trust stores only; on macOS run"
            " `sudo security delete-certificate -c 'portside local CA'"
            " /Library/Keychains/System.keychain`"
        )
    anchors, command = _system_store("untrust", anchors)
    target = anchors / SYSTEM_ANCHOR_NAME
    try:
        target.unlink()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CAError(f"cannot remove {target}: {exc.strerror}") from exc
    _rebuild_system_store(command)
    return target, command


def _system_store(action: str, anchors: Path | None) -> tuple[Path, list[str]]:
    """The anchors directory and the command that rebuilds the store from it."""
    if os.geteuid() != 0:
        raise CAError(
            f"changing the system trust store needs root: run `sudo portside ca {action}`"
        )
    if anchors is None and shutil.which("update-ca-certificates"):
        return SYSTEM_ANCHORS, ["update-ca-certificates"]
    if anchors is None and shutil.which("update-ca-trust"):
        return P11_ANCHORS, ["update-ca-trust", "extract"]
    if anchors is not None:
        return anchors, ["update-ca-certificates"]
    raise CAError(
        "found neither update-ca-certificates nor update-ca-trust; install ca-certificates"
    )


def _rebuild_system_store(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise CAError(
            f"{' '.join(command)} failed (exit {done.returncode}): {detail[-1] if detail else ''}"
        )


def add_to_nss_db(ca: CertificateAuthority, db_dir: Path) -> list[str]:
    """Trust the CA for TLS servers in the NSS database in *db_dir* (created if absent):
    ``$HOME/.pki/nssdb`` for Chromium/Chrome on Linux, a profile directory for Firefox.
    Returns the certutil command run; CAError when certutil is missing or fails."""
    certutil = shutil.which("certutil")
    if certutil is None:
        raise CAError("certutil is missing; install it (Debian: apt-get install libnss3-tools)")
    db_dir = db_dir.expanduser()
    db = f"sql:{db_dir}"
    try:
        db_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CAError(f"cannot create the NSS database directory {db_dir}: {exc.strerror}") from exc
    if not (db_dir / "cert9.db").exists():
        _certutil([certutil, "-N", "-d", db, "--empty-password"])
    command = [certutil, "-A", "-d", db, "-t", "C,,", "-n", ca.nickname, "-i", str(ca.cert_path)]
    _certutil(command)
    return command


def remove_from_nss_db(nickname: str, db_dir: Path) -> list[str] | None:
    """Delete the certificate named *nickname* from the NSS database in *db_dir* (every
    copy). Returns the certutil command run; None when the database or the certificate
    is not there. CAError when certutil is missing or fails otherwise."""
    certutil = shutil.which("certutil")
    if certutil is None:
        raise CAError("certutil is missing; install it (Debian: apt-get install libnss3-tools)")
    db_dir = db_dir.expanduser()
    if not (db_dir / "cert9.db").exists():
        return None
    db = f"sql:{db_dir}"
    command = [certutil, "-D", "-d", db, "-n", nickname]
    removed = False
    for _ in range(16):  # one per copy; a database holds one, unless added by hand too
        listed = subprocess.run(
            [certutil, "-L", "-d", db, "-n", nickname],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if listed.returncode != 0:
            break  # not (or no longer) there
        _certutil(command)
        removed = True
    return command if removed else None


def _certutil(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise CAError(f"certutil failed (exit {done.returncode}): {detail[-1] if detail else ''}")


# -- helpers ----------------------------------------------------------------------------


def _server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(ALPN)
    return context


def _load_chain(context: ssl.SSLContext, pem: bytes) -> None:
    """``load_cert_chain`` from memory: the ssl module reads only files, so the PEM goes
    to an anonymous memory file (Linux) or a private temporary directory."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("portside-leaf", os.MFD_CLOEXEC)
        try:
            os.write(fd, pem)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="portside-tls-") as private:
        path = Path(private) / "leaf.pem"
        _write_atomically(path, pem, 0o600)
        context.load_cert_chain(str(path))


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write *data* to *path* via a temporary file created with *mode*, then rename."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(temporary, flags, mode)
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, mode)  # exactly *mode*, whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        temporary.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise CAError(f"cannot write {path}: {exc.strerror or exc}") from exc
    if hasattr(os, "O_DIRECTORY"):
        with contextlib.suppress(OSError):
            dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on *path* (Unix; a no-op elsewhere)."""
    if sys.platform == "win32":
        yield
        return
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _user() -> str:
    try:
        import getpass

        return getpass.getuser()
    except (ImportError, KeyError, OSError):
        return "user"


def _hostname() -> str:
    import socket

    return socket.gethostname().split(".")[0] or "localhost"
