"""Which protocol a server speaks, from the bytes it sends back to a probe. Pure: no I/O.

A :class:`Sniffer` is made for one :class:`Probe` (what we sent on a fresh connection)
and fed the server's bytes as they arrive::

    sniffer = Sniffer(Probe.NULL)
    verdict = sniffer.feed(chunk)     # None: need more data
    verdict = sniffer.eof()           # the peer closed (or reset): decide now
    verdict = sniffer.timeout()       # we stopped waiting: decide now

Recognised (spec: failure-modes.md §3.D and §4):

==================  ==========================================================================
protocol            first bytes
==================  ==========================================================================
``tls``             a TLS record: ``16 03 0X`` handshake (the ServerHello is parsed for the
                    version and cipher) or ``15 03 0X`` alert (level and description)
``http``            ``HTTP/1.x`` status line and head (status, reason, ``Server``); or HTML
                    without a status line (Python's http.server answering garbage: HTTP/0.9)
``h2c``             an HTTP/2 SETTINGS frame on stream 0 (``00 00 xx 04 00 00 00 00 00``)
``ssh``             ``SSH-2.0-software comments``
``redis``           ``+PONG``, ``-NOAUTH``, ``-DENIED``, ``-ERR`` … (not to the NULL probe)
``postgres``        ``S``/``N``/``E…`` in answer to the SSLRequest (that probe only)
``mysql``           a protocol-10 greeting (version) or an error packet, server-first
``smtp``/``ftp``    ``220`` banner (``smtp-or-ftp`` when the banner names neither)
``imap``            ``* OK`` / ``* PREAUTH`` / ``* BYE``
``pop3``            ``+OK``
``tcpwrapped``      the peer closed without sending a byte
``silent``          connected, but no byte before we stopped waiting
``unknown``         bytes that match nothing above (``detail`` shows them)
==================  ==========================================================================

Invariants (tested with Hypothesis):

* **Chunking does not matter.** Bytes fed in any chunking give the verdict they give fed
  at once. A verdict is given only when no further byte can change it: ``feed`` returns
  None while a longer answer could still mean something else, and ``eof``/``timeout``
  decide with what is there.
* **Sticky.** Once a verdict is given, every later call returns the same verdict.
* **Bounded.** At most ``max_bytes`` (16 KiB) are kept; reaching it decides.
* **Never raises** on any bytes.

:func:`parse_certificate` reads the few fields of an X.509 certificate (DER) that a
diagnosis needs: subject, issuer, SANs, validity.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from collections.abc import Callable, Sequence

from portside.errors import ProtocolError

#: The most bytes a sniffer keeps; reaching it decides.
MAX_SNIFF_BYTES = 16 * 1024

REDIS_PING = b"*1\r\n$4\r\nPING\r\n"
POSTGRES_SSL_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"  # length 8, code 80877103
#: The client connection preface and an empty SETTINGS frame (RFC 9113 §3.4).
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


class Probe(enum.StrEnum):
    """What was sent on the connection whose answer is sniffed."""

    NULL = "null"  # nothing: wait for a server-first banner
    TLS = "tls-client-hello"
    HTTP = "http-get"
    H2 = "h2-preface"
    REDIS = "redis-ping"
    POSTGRES = "postgres-ssl-request"


class Protocol(enum.StrEnum):
    TLS = "tls"
    HTTP = "http"
    H2C = "h2c"
    SSH = "ssh"
    REDIS = "redis"
    POSTGRES = "postgres"
    MYSQL = "mysql"
    SMTP = "smtp"
    FTP = "ftp"
    SMTP_OR_FTP = "smtp-or-ftp"
    IMAP = "imap"
    POP3 = "pop3"
    TCPWRAPPED = "tcpwrapped"  # accepted, then closed with no data
    SILENT = "silent"  # connected, no data before we stopped waiting
    UNKNOWN = "unknown"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """What the answer to one probe says.

    ``version``: TLS version (``"TLSv1.3"``, from the ServerHello, else the record
    version), HTTP version (``"HTTP/1.1"``), SSH protocol version (``"2.0"``) or MySQL
    server version. ``server``: the HTTP ``Server`` header, the SSH software, the MySQL
    flavour. ``detail``: one line for people (a banner, an alert, an error, a preview of
    unknown bytes). ``error``: the server answered with an error (a TLS alert, a Redis
    ``-`` reply, a PostgreSQL or MySQL error packet).
    """

    protocol: Protocol
    version: str | None = None
    status: int | None = None
    reason: str | None = None
    server: str | None = None
    detail: str | None = None
    error: bool = False


def http_get(host: str = "localhost", path: str = "/") -> bytes:
    """A minimal ``GET`` (HTTP/1.0, so no chunked answer and the server closes)."""
    target = "".join(c if "!" <= c <= "~" else _percent(c) for c in path.split("#", 1)[0])
    if not target.startswith("/"):
        target = "/" + target
    host_text = "".join(c for c in host if "!" <= c <= "~")
    return (
        f"GET {target} HTTP/1.0\r\nHost: {host_text}\r\nUser-Agent: portside\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n"
    ).encode("ascii")


def _percent(char: str) -> str:
    return "".join(f"%{b:02X}" for b in char.encode("utf-8"))


def probe_bytes(probe: Probe) -> bytes:
    """The bytes a probe sends. The TLS ClientHello comes from the TLS library instead."""
    payloads = {
        Probe.NULL: b"",
        Probe.HTTP: http_get(),
        Probe.H2: H2_PREFACE,
        Probe.REDIS: REDIS_PING,
        Probe.POSTGRES: POSTGRES_SSL_REQUEST,
    }
    if probe not in payloads:
        raise ValueError("the TLS ClientHello is produced by the TLS library (ssl.MemoryBIO)")
    return payloads[probe]


# --------------------------------------------------------------------------- recognisers


class _Step(enum.Enum):
    MORE = "more"  # the bytes so far could still become this protocol
    NO = "no"  # the bytes so far rule this protocol out, whatever follows


_Result = Verdict | _Step
#: ``(data, final) -> Verdict | MORE | NO``. With ``final`` (no more bytes will come) a
#: recogniser never answers MORE. Contract: NO and a Verdict, once given for some bytes,
#: are given again for every longer input (they depend only on bytes already present).
_Recogniser = Callable[[bytes, bool], _Result]

_MAX_LINE = 512
#: Unknown bytes are shown in the verdict; it waits for this many (or the end) first.
_PREVIEW_BYTES = 32
_TLS_VERSIONS = {
    0x0300: "SSLv3",
    0x0301: "TLSv1",
    0x0302: "TLSv1.1",
    0x0303: "TLSv1.2",
    0x0304: "TLSv1.3",
}
_TLS_ALERTS = {
    0: "close_notify",
    10: "unexpected_message",
    20: "bad_record_mac",
    22: "record_overflow",
    40: "handshake_failure",
    42: "bad_certificate",
    43: "unsupported_certificate",
    44: "certificate_revoked",
    45: "certificate_expired",
    46: "certificate_unknown",
    47: "illegal_parameter",
    48: "unknown_ca",
    49: "access_denied",
    50: "decode_error",
    51: "decrypt_error",
    70: "protocol_version",
    71: "insufficient_security",
    80: "internal_error",
    86: "inappropriate_fallback",
    90: "user_canceled",
    109: "missing_extension",
    110: "unsupported_extension",
    112: "unrecognized_name",
    116: "certificate_required",
    120: "no_application_protocol",
}


def _starts(data: bytes, signature: bytes) -> _Step | None:
    """None when ``data`` starts with ``signature``; MORE while it is a prefix; else NO."""
    if data.startswith(signature):
        return None
    return _Step.MORE if signature.startswith(data) else _Step.NO


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace").strip()


def _first_line(data: bytes, final: bool) -> bytes | _Step:
    """The first line (without its end), once complete, cut at _MAX_LINE; MORE before."""
    end = data.find(b"\n", 0, _MAX_LINE)
    if end >= 0:
        return data[:end].rstrip(b"\r")
    if len(data) >= _MAX_LINE:
        return data[:_MAX_LINE]
    return data.rstrip(b"\r") if final else _Step.MORE


def preview(data: bytes, limit: int = 32, *, ellipsis: bool = True) -> str:
    """Bytes shown to people: printable ASCII as is, the rest as ``\\xNN``."""
    shown = "".join(
        chr(b) if 0x20 <= b < 0x7F and b != 0x5C else f"\\x{b:02x}" for b in data[:limit]
    )
    return shown + ("…" if ellipsis and len(data) > limit else "")


def _tls(data: bytes, final: bool) -> _Result:
    if not data or data[0] not in (0x15, 0x16):
        return _Step.NO if data else _Step.MORE
    if len(data) >= 2 and data[1] != 0x03:
        return _Step.NO
    if len(data) >= 3 and data[2] > 0x04:
        return _Step.NO
    if len(data) < 3:
        return _Step.NO if final else _Step.MORE
    record_version = _TLS_VERSIONS.get(0x0300 | data[2])
    if len(data) < 5:
        return Verdict(protocol=Protocol.TLS, version=record_version) if final else _Step.MORE
    record_length = int.from_bytes(data[3:5], "big")
    if record_length == 0 or record_length > 2**14 + 2048:
        return _Step.NO
    if data[0] == 0x15:
        return _tls_alert(data, final, record_version)
    return _tls_handshake(data, final, record_version, record_length)


def _tls_alert(data: bytes, final: bool, record_version: str | None) -> _Result:
    if len(data) < 7:
        if final:
            return Verdict(
                protocol=Protocol.TLS, version=record_version, detail="alert", error=True
            )
        return _Step.MORE
    level = {1: "warning", 2: "fatal"}.get(data[5], f"level {data[5]}")
    description = _TLS_ALERTS.get(data[6], f"alert {data[6]}")
    return Verdict(
        protocol=Protocol.TLS,
        version=record_version,
        detail=f"alert: {level} {description}",
        error=True,
    )


def _tls_handshake(
    data: bytes, final: bool, record_version: str | None, record_length: int
) -> _Result:
    plain = Verdict(protocol=Protocol.TLS, version=record_version, detail="handshake")
    if len(data) < 9:
        return plain if final else _Step.MORE
    if data[5] != 0x02:  # not a ServerHello
        return dataclasses.replace(plain, detail=f"handshake message type {data[5]}")
    hello_length = int.from_bytes(data[6:9], "big")
    if 4 + hello_length > record_length:  # fragmented over records: do not parse
        return dataclasses.replace(plain, detail="ServerHello")
    if len(data) < 9 + hello_length:
        return dataclasses.replace(plain, detail="ServerHello") if final else _Step.MORE
    return _server_hello(data[9 : 9 + hello_length], plain)


def _server_hello(body: bytes, plain: Verdict) -> Verdict:
    """Version (supported_versions wins over legacy_version), cipher and ALPN if visible."""
    fallback = dataclasses.replace(plain, detail="ServerHello")
    if len(body) < 35:
        return fallback
    version = int.from_bytes(body[0:2], "big")
    offset = 34 + 1 + body[34]  # legacy_version, random, session id
    if len(body) < offset + 3:
        return fallback
    cipher = int.from_bytes(body[offset : offset + 2], "big")
    offset += 3  # cipher suite, compression method
    alpn: str | None = None
    if len(body) >= offset + 2:
        end = min(len(body), offset + 2 + int.from_bytes(body[offset : offset + 2], "big"))
        offset += 2
        while offset + 4 <= end:
            kind = int.from_bytes(body[offset : offset + 2], "big")
            size = int.from_bytes(body[offset + 2 : offset + 4], "big")
            value = body[offset + 4 : offset + 4 + size]
            if kind == 0x002B and len(value) == 2:  # supported_versions (selected)
                version = int.from_bytes(value, "big")
            elif kind == 0x0010 and len(value) >= 3:  # ALPN: list length, name length, name
                alpn = value[3 : 3 + value[2]].decode("ascii", "replace")
            offset += 4 + size
    detail = f"ServerHello, cipher 0x{cipher:04x}"
    if alpn:
        detail += f", ALPN {alpn}"
    return dataclasses.replace(
        plain, version=_TLS_VERSIONS.get(version, f"0x{version:04x}"), detail=detail
    )


def _h2c(data: bytes, final: bool) -> _Result:
    expected: dict[int, int] = {0: 0x00, 3: 0x04, 4: 0x00, 5: 0x00, 6: 0x00, 7: 0x00, 8: 0x00}
    for index, value in expected.items():
        if index < len(data) and data[index] & (0x7F if index == 5 else 0xFF) != value:
            return _Step.NO
    if len(data) < 9:
        return _Step.NO if final else _Step.MORE
    length = int.from_bytes(data[0:3], "big")
    if length % 6:
        return _Step.NO
    return Verdict(
        protocol=Protocol.H2C, version="h2", detail=f"SETTINGS frame ({length // 6} settings)"
    )


def _ssh(data: bytes, final: bool) -> _Result:
    step = _starts(data, b"SSH-")
    if step is not None:
        return _Step.NO if final and step is _Step.MORE else step
    line = _first_line(data[:256], final or len(data) >= 256)
    if isinstance(line, _Step):
        return line
    text = _text(line)
    identification, _, _comments = text.partition(" ")
    parts = identification.split("-", 2)
    return Verdict(
        protocol=Protocol.SSH,
        version=parts[1] if len(parts) > 1 and parts[1] else None,
        server=parts[2] if len(parts) > 2 and parts[2] else None,
        detail=text,
    )


def head_length(data: bytes) -> int | None:
    """Length of an HTTP head (through its empty line) at the start of ``data``, or None."""
    start = 0
    while True:
        end = data.find(b"\n", start)
        if end < 0:
            return None
        if data[start:end] in (b"", b"\r") and start > 0:
            return end + 1
        start = end + 1


def _http(data: bytes, final: bool) -> _Result:
    step = _starts(data, b"HTTP/")
    if step is not None:
        return _Step.NO if final and step is _Step.MORE else step
    length = head_length(data)
    if length is None and not final:
        return _Step.MORE
    head = data[:length] if length is not None else data
    lines = head.decode("latin-1").split("\n")
    status_line = lines[0].strip()
    version, _, rest = status_line.partition(" ")
    code_text, _, reason = rest.partition(" ")
    status = int(code_text) if len(code_text) == 3 and code_text.isdigit() else None
    server: str | None = None
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon and name.strip().lower() == "server":
            server = value.strip() or None
            break
    return Verdict(
        protocol=Protocol.HTTP,
        version=version or None,
        status=status,
        reason=reason.strip() or None,
        server=server,
        detail=status_line[:_MAX_LINE],
    )


def _html(data: bytes, final: bool) -> _Result:
    stripped = data.lstrip(b" \t\r\n")
    if not stripped:
        return _Step.NO if final else _Step.MORE
    if stripped[:1] != b"<":
        return _Step.NO
    return Verdict(
        protocol=Protocol.HTTP,
        version="HTTP/0.9",
        detail="HTML without a status line (an HTTP/0.9-style answer)",
    )


def _line_protocol(signatures: Sequence[bytes], make: Callable[[str], Verdict]) -> _Recogniser:
    """A recogniser for text banners starting with one of ``signatures``; decides at EOL."""

    def recognise(data: bytes, final: bool) -> _Result:
        steps = [_starts(data, signature) for signature in signatures]
        if None not in steps:
            return _Step.MORE if _Step.MORE in steps and not final else _Step.NO
        line = _first_line(data, final)
        return line if isinstance(line, _Step) else make(_text(line))

    return recognise


def _mail_or_ftp(line: str) -> Verdict:
    lowered = line.lower()
    if "ftp" in lowered:
        protocol = Protocol.FTP
    elif any(word in lowered for word in ("smtp", "mail", "postfix", "exim", "sendmail")):
        protocol = Protocol.SMTP
    else:
        protocol = Protocol.SMTP_OR_FTP
    return Verdict(protocol=protocol, detail=line)


_smtp_ftp = _line_protocol((b"220 ", b"220-"), _mail_or_ftp)
_imap = _line_protocol(
    (b"* OK", b"* PREAUTH", b"* BYE"), lambda line: Verdict(protocol=Protocol.IMAP, detail=line)
)
_pop3 = _line_protocol((b"+OK",), lambda line: Verdict(protocol=Protocol.POP3, detail=line))


def _redis(data: bytes, final: bool) -> _Result:
    if data[:1] == b"-":
        if len(data) >= 2 and not (0x41 <= data[1] <= 0x5A):  # an upper-case error word
            return _Step.NO
        if len(data) < 2:
            return _Step.NO if final else _Step.MORE
        line = _first_line(data, final)
        if isinstance(line, _Step):
            return line
        return Verdict(protocol=Protocol.REDIS, detail=_text(line), error=True)
    step = _starts(data, b"+PONG")
    if step is not None:
        return _Step.NO if final and step is _Step.MORE else step
    line = _first_line(data, final)
    if isinstance(line, _Step):
        return line
    return Verdict(protocol=Protocol.REDIS, detail=_text(line))


def _postgres(data: bytes, final: bool) -> _Result:
    """The answer to the SSLRequest: ``N``, ``S`` (and nothing more) or an ``E`` packet."""
    if not data:
        return _Step.MORE
    first = data[:1]
    if first == b"N":
        return Verdict(protocol=Protocol.POSTGRES, detail="SSL not supported (N)")
    if first == b"S":
        # Decided only when nothing follows: an SSH banner starts with "S" too.
        if len(data) > 1:
            return _Step.NO
        return (
            Verdict(protocol=Protocol.POSTGRES, detail="SSL supported (S)") if final else _Step.MORE
        )
    if first != b"E":
        return _Step.NO
    if len(data) < 5:
        return _Step.NO if final else _Step.MORE
    length = int.from_bytes(data[1:5], "big")
    if not 4 < length <= 8192:
        return _Step.NO
    if len(data) < 1 + length:
        if final:
            return Verdict(protocol=Protocol.POSTGRES, detail="error (truncated)", error=True)
        return _Step.MORE
    fields: dict[str, str] = {}
    for field in data[5 : 1 + length].split(b"\x00"):
        if field:
            fields.setdefault(chr(field[0]), _text(field[1:]))
    severity = fields.get("V") or fields.get("S") or "ERROR"
    message = fields.get("M", "")
    code = f" ({fields['C']})" if "C" in fields else ""
    return Verdict(protocol=Protocol.POSTGRES, detail=f"{severity}: {message}{code}", error=True)


def _mysql(data: bytes, final: bool) -> _Result:
    """A server-first packet: 3-byte length (LE), sequence 0, then 0x0a greeting or 0xff error."""
    length = int.from_bytes(data[0:3], "little")
    if len(data) >= 3 and not 3 <= length <= 8192:
        return _Step.NO
    if len(data) >= 4 and data[3] != 0:
        return _Step.NO
    if len(data) >= 5 and data[4] not in (0x0A, 0xFF):
        return _Step.NO
    if len(data) < 5:
        return _Step.NO if final else _Step.MORE
    payload = data[4 : 4 + length]
    if data[4] == 0xFF:
        if len(payload) < length:
            return _Step.NO if final else _Step.MORE
        code = int.from_bytes(payload[1:3], "little")
        message = payload[3:]
        if message[:1] == b"#":
            message = message[6:]
        return Verdict(
            protocol=Protocol.MYSQL, detail=f"error {code}: {_text(message)}", error=True
        )
    end = payload.find(b"\x00", 1)
    version = payload[1:end] if end >= 0 else payload[1:]
    if not all(0x20 <= b < 0x7F for b in version):
        return _Step.NO
    if end < 0:
        return _Step.NO if final or len(payload) >= length else _Step.MORE
    text = version.decode("ascii")
    flavour = "MariaDB" if "mariadb" in text.lower() else "MySQL"
    if flavour == "MariaDB" and text.startswith("5.5.5-"):
        text = text[len("5.5.5-") :]  # the replication-compatibility prefix
    return Verdict(
        protocol=Protocol.MYSQL, version=text, server=flavour, detail=f"{flavour} {text}"
    )


# Order matters only for speed: a recogniser still saying MORE holds back later ones, so a
# verdict never depends on how the bytes were chunked. MySQL's first byte (a length) can
# be "<", hence before HTML.
_SERVER_FIRST: tuple[_Recogniser, ...] = (_tls, _h2c, _ssh, _http, _smtp_ftp, _imap, _pop3)
_CLIENT_FIRST: tuple[_Recogniser, ...] = (*_SERVER_FIRST, _redis, _mysql, _html)
_RECOGNISERS: dict[Probe, tuple[_Recogniser, ...]] = {
    Probe.NULL: (*_SERVER_FIRST, _mysql, _html),
    Probe.TLS: _CLIENT_FIRST,
    Probe.HTTP: _CLIENT_FIRST,
    Probe.H2: _CLIENT_FIRST,
    Probe.REDIS: _CLIENT_FIRST,
    Probe.POSTGRES: (_postgres, *_CLIENT_FIRST),
}


def _decide(data: bytes, recognisers: Sequence[_Recogniser], *, final: bool) -> Verdict | None:
    for recognise in recognisers:
        result = recognise(data, final)
        if isinstance(result, Verdict):
            return result
        if result is _Step.MORE:
            return None  # this signature might still match: later ones must wait
    if not data or (len(data) < _PREVIEW_BYTES and not final):
        return None  # matches nothing; collect the bytes shown in the verdict first
    return Verdict(protocol=Protocol.UNKNOWN, detail=preview(data[:_PREVIEW_BYTES], ellipsis=False))


class Sniffer:
    """Identify a server from its answer to one probe (see the module docstring)."""

    def __init__(self, probe: Probe = Probe.NULL, *, max_bytes: int = MAX_SNIFF_BYTES) -> None:
        if max_bytes < 256:
            raise ValueError("max_bytes must be at least 256")
        self.probe = probe
        self._recognisers = _RECOGNISERS[probe]
        self._buffer = bytearray()
        self._max_bytes = max_bytes
        self._verdict: Verdict | None = None

    @property
    def verdict(self) -> Verdict | None:
        return self._verdict

    @property
    def received(self) -> bytes:
        """The bytes kept so far (at most ``max_bytes``)."""
        return bytes(self._buffer)

    def feed(self, data: bytes) -> Verdict | None:
        """Add ``data``; the verdict once it is certain, else None (need more data)."""
        if self._verdict is not None:
            return self._verdict
        self._buffer += data[: self._max_bytes - len(self._buffer)]
        full = len(self._buffer) >= self._max_bytes
        self._verdict = _decide(bytes(self._buffer), self._recognisers, final=full)
        return self._verdict

    def eof(self) -> Verdict:
        """The peer closed or reset the connection: decide with the bytes received."""
        return self._finish(Protocol.TCPWRAPPED)

    def timeout(self) -> Verdict:
        """We stopped waiting, the connection still open: decide with the bytes received."""
        return self._finish(Protocol.SILENT)

    def _finish(self, nothing: Protocol) -> Verdict:
        if self._verdict is not None:
            return self._verdict
        if not self._buffer:
            return Verdict(protocol=nothing)  # not sticky: bytes may still come after a timeout
        verdict = _decide(bytes(self._buffer), self._recognisers, final=True)
        # With final=True every recogniser answers NO or a verdict, and non-empty bytes
        # that match nothing are UNKNOWN: _decide cannot return None here.
        self._verdict = verdict or Verdict(
            protocol=Protocol.UNKNOWN, detail=preview(bytes(self._buffer))
        )
        return self._verdict


def sniff(data: bytes, probe: Probe = Probe.NULL, *, closed: bool = True) -> Verdict:
    """One-shot: the verdict for a complete answer (``closed``: the peer closed after it)."""
    sniffer = Sniffer(probe)
    verdict = sniffer.feed(data)
    if verdict is not None:
        return verdict
    return sniffer.eof() if closed else sniffer.timeout()


# --------------------------------------------------------------------------- X.509 (DER)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Certificate:
    """The fields of a peer certificate that a diagnosis uses. Times are ISO 8601 UTC."""

    subject: str
    issuer: str
    common_name: str | None
    san: tuple[str, ...]  # "DNS:localhost", "IP:127.0.0.1", "email:…", "URI:…"
    not_before: str | None
    not_after: str | None
    serial: str  # hexadecimal
    self_issued: bool  # issuer == subject (the signature is not checked)


_ATTRIBUTE_NAMES = {
    "2.5.4.3": "CN",
    "2.5.4.5": "serialNumber",
    "2.5.4.6": "C",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "1.2.840.113549.1.9.1": "emailAddress",
    "0.9.2342.19200300.100.1.25": "DC",
}
_SAN_OID = "2.5.29.17"


def _tlv(data: bytes, offset: int, end: int) -> tuple[int, int, int]:
    """(tag, value start, value end) of the DER element at ``offset``."""
    if offset + 2 > end:
        raise ProtocolError("truncated DER element")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise ProtocolError("multi-byte DER tags are not used in certificates")
    first = data[offset + 1]
    start = offset + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if not 1 <= count <= 4 or start + count > end:
            raise ProtocolError("bad DER length")
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    if start + length > end:
        raise ProtocolError("DER element runs past its container")
    return tag, start, start + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    found = []
    while start < end:
        element = _tlv(data, start, end)
        found.append(element)
        start = element[2]
    return found


def _expect(element: tuple[int, int, int], tag: int, what: str) -> tuple[int, int, int]:
    if element[0] != tag:
        raise ProtocolError(f"{what}: expected DER tag 0x{tag:02x}, found 0x{element[0]:02x}")
    return element


def _oid(value: bytes) -> str:
    if not value:
        raise ProtocolError("empty OID")
    numbers: list[int] = []
    current = 0
    for byte in value:
        current = (current << 7) | (byte & 0x7F)
        if not byte & 0x80:
            numbers.append(current)
            current = 0
    if not numbers:
        raise ProtocolError("unterminated OID")
    first = min(numbers[0] // 40, 2)
    return ".".join(str(n) for n in (first, numbers[0] - 40 * first, *numbers[1:]))


def _string(tag: int, value: bytes) -> str:
    if tag == 0x1E:  # BMPString
        return value.decode("utf-16-be", "replace")
    if tag == 0x1C:  # UniversalString
        return value.decode("utf-32-be", "replace")
    if tag == 0x14:  # T61String: latin-1 is what every library does in practice
        return value.decode("latin-1")
    return value.decode("utf-8", "replace")


def _name(data: bytes, element: tuple[int, int, int]) -> tuple[str, str | None]:
    """RDNs in encoded order, ``"CN=localhost, O=Acme"``; and the (last) common name."""
    parts: list[str] = []
    common_name: str | None = None
    for rdn in _children(data, element[1], element[2]):
        _expect(rdn, 0x31, "relative distinguished name")
        for pair in _children(data, rdn[1], rdn[2]):
            _expect(pair, 0x30, "attribute")
            inner = _children(data, pair[1], pair[2])
            if len(inner) != 2:
                raise ProtocolError("an attribute is an OID and a value")
            oid = _oid(data[inner[0][1] : inner[0][2]])
            value = _string(inner[1][0], data[inner[1][1] : inner[1][2]])
            key = _ATTRIBUTE_NAMES.get(oid, oid)
            if key == "CN":
                common_name = value
            escaped = value.replace(",", "\\,")
            parts.append(f"{key}={escaped}")
    return ", ".join(parts), common_name


def _time(tag: int, value: bytes) -> str | None:
    text = value.decode("ascii", "replace")
    if tag == 0x17 and len(text) == 13 and text.endswith("Z") and text[:12].isdigit():
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif not (tag == 0x18 and len(text) == 15 and text.endswith("Z") and text[:14].isdigit()):
        return None
    return f"{text[0:4]}-{text[4:6]}-{text[6:8]}T{text[8:10]}:{text[10:12]}:{text[12:14]}Z"


def _general_names(data: bytes, start: int, end: int) -> tuple[str, ...]:
    names: list[str] = []
    sequence = _expect(_tlv(data, start, end), 0x30, "subjectAltName")
    for tag, begin, finish in _children(data, sequence[1], sequence[2]):
        value = data[begin:finish]
        if tag == 0x82:
            names.append(f"DNS:{value.decode('ascii', 'replace')}")
        elif tag == 0x87 and len(value) in (4, 16):
            names.append(f"IP:{ipaddress.ip_address(value)}")
        elif tag == 0x81:
            names.append(f"email:{value.decode('ascii', 'replace')}")
        elif tag == 0x86:
            names.append(f"URI:{value.decode('ascii', 'replace')}")
    return tuple(names)


def parse_certificate(der: bytes) -> Certificate:
    """Subject, issuer, SANs, validity and serial of an X.509 certificate in DER.

    Raises:
        ProtocolError: ``der`` is not a certificate this parser understands.
    """
    try:
        return _parse_certificate(der)
    except (IndexError, ValueError) as exc:  # defensive: the parser checks bounds itself
        raise ProtocolError(f"not a DER certificate: {exc}") from exc


def _parse_certificate(der: bytes) -> Certificate:
    certificate = _expect(_tlv(der, 0, len(der)), 0x30, "certificate")
    tbs = _expect(_tlv(der, certificate[1], certificate[2]), 0x30, "tbsCertificate")
    fields = _children(der, tbs[1], tbs[2])
    if fields and fields[0][0] == 0xA0:  # [0] EXPLICIT version
        fields = fields[1:]
    if len(fields) < 6:
        raise ProtocolError("tbsCertificate is too short")
    serial = _expect(fields[0], 0x02, "serial number")
    issuer, _ = _name(der, _expect(fields[2], 0x30, "issuer"))
    validity = _children(der, *_expect(fields[3], 0x30, "validity")[1:])
    if len(validity) != 2:
        raise ProtocolError("validity is two times")
    subject, common_name = _name(der, _expect(fields[4], 0x30, "subject"))
    san: tuple[str, ...] = ()
    for field in fields[6:]:
        if field[0] != 0xA3:  # [3] EXPLICIT extensions
            continue
        extensions = _expect(_tlv(der, field[1], field[2]), 0x30, "extensions")
        for extension in _children(der, extensions[1], extensions[2]):
            parts = _children(der, *_expect(extension, 0x30, "extension")[1:])
            if len(parts) < 2 or parts[0][0] != 0x06:
                raise ProtocolError("an extension starts with its OID")
            if _oid(der[parts[0][1] : parts[0][2]]) == _SAN_OID:
                value = _expect(parts[-1], 0x04, "extension value")
                san = _general_names(der, value[1], value[2])
    return Certificate(
        subject=subject,
        issuer=issuer,
        common_name=common_name,
        san=san,
        not_before=_time(validity[0][0], der[validity[0][1] : validity[0][2]]),
        not_after=_time(validity[1][0], der[validity[1][1] : validity[1][2]]),
        serial=der[serial[1] : serial[2]].hex(),
        self_issued=issuer == subject,
    )
