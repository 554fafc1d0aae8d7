"""The Host allowlist that protects ``serve`` and ``proxy`` from DNS rebinding. Pure.

A page on ``evil.example`` can make its name resolve to 127.0.0.1 and then talk to a
local server from the victim's browser; the browser still sends ``Host: evil.example``.
A local server must therefore answer only Host values it knows to be local:

* ``localhost`` and any ``*.localhost`` name (RFC 6761: always loopback);
* loopback IP literals: ``127.0.0.0/8``, ``[::1]``, ``[::ffff:127.x.y.z]``;
* names and IP literals the user configured (routes, ``--allow-host``); a leading
  ``*.`` matches any subdomain (``*.test`` allows ``a.test``, not ``test``), and ``*``
  alone allows every Host (an explicit opt-out).

The port in a Host value is ignored (the attacker controls the name, not the port).
Names compare case-insensitively and without a trailing dot.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable

__all__ = ["HostAllowlist", "is_loopback_host", "normalise_host_name", "parse_host_header"]

# RFC 3986 host: IP-literal in brackets, or reg-name (unreserved, pct-encoded, sub-delims);
# then an optional port of digits.
_HOST_HEADER = re.compile(
    r"(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9\-._~!$&'()*+,;=%]+))(?::(?P<port>[0-9]{0,5}))?"
)


@functools.lru_cache(maxsize=512)
def parse_host_header(value: str) -> tuple[str, int | None] | None:
    """``"App.localhost:8080"`` -> ``("app.localhost", 8080)``; None when malformed.

    The host part comes back lower-case without a trailing dot; IPv6 literals without
    brackets in normal form; an empty port (``"host:"``) is None. Memoised (bounded):
    a client sends the same Host on every request.
    """
    match = _HOST_HEADER.fullmatch(value)
    if match is None:
        return None
    port_text = match.group("port")
    port = int(port_text) if port_text else None
    if port is not None and port > 65535:
        return None
    ip6 = match.group("ip6")
    if ip6 is not None:
        try:
            address = ipaddress.IPv6Address(ip6)
        except ValueError:
            return None
        mapped = address.ipv4_mapped
        return (f"::ffff:{mapped}" if mapped is not None else str(address)), port
    name = normalise_host_name(match.group("name"))
    if not name:
        return None
    return name, port


def normalise_host_name(name: str) -> str:
    """Lower-case, without one trailing dot."""
    name = name.lower()
    return name[:-1] if name.endswith(".") else name


def _ipv4_literal(name: str) -> ipaddress.IPv4Address | None:
    if not name or not name[0].isdigit():
        return None
    try:
        return ipaddress.IPv4Address(name)
    except ValueError:
        return None


def is_loopback_host(host: str) -> bool:
    """Whether *host* (as returned by :func:`parse_host_header`) is always loopback."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    if ":" in host:
        try:
            address = ipaddress.IPv6Address(host)
        except ValueError:
            return False
        mapped = address.ipv4_mapped
        return address.is_loopback or (mapped is not None and mapped.is_loopback)
    ipv4 = _ipv4_literal(host)
    return ipv4 is not None and ipv4.is_loopback


class HostAllowlist:
    """Which Host values a local server answers (see the module docstring)."""

    __slots__ = ("_any", "_decided", "_exact", "_suffixes")

    def __init__(self, extra: Iterable[str] = ()) -> None:
        self._decided: dict[str, bool] = {}  # Host value -> verdict, bounded
        self._any = False
        self._exact: set[str] = set()
        self._suffixes: list[str] = []
        for entry in extra:
            self.add(entry)

    def add(self, entry: str) -> None:
        """Allow *entry*: a name, ``*.suffix``, an IP literal (``[::1]`` or ``::1``) or ``*``.

        Raises:
            ValueError: *entry* is none of these.
        """
        self._decided.clear()
        text = entry.strip()
        if text == "*":
            self._any = True
            return
        if text.startswith("*."):
            suffix = normalise_host_name(text[1:])
            if parse_host_header(suffix[1:]) is None:
                raise ValueError(f"{entry!r} is not a valid host pattern; write *.example.test")
            self._suffixes.append(suffix)
            return
        if ":" in text and not text.startswith("["):
            text = f"[{text}]"  # a bare IPv6 literal
        parsed = parse_host_header(text)
        if parsed is None or parsed[1] is not None:
            raise ValueError(
                f"{entry!r} is not a host name or IP address (no port); write app.test or 10.0.0.5"
            )
        self._exact.add(parsed[0])

    @property
    def allows_any(self) -> bool:
        return self._any

    def allows_host(self, host: str) -> bool:
        """*host* is already parsed (lower-case, no port, IPv6 without brackets)."""
        if self._any or host in self._exact or is_loopback_host(host):
            return True
        return any(host.endswith(suffix) for suffix in self._suffixes)

    def allows(self, header_value: str) -> bool:
        """Whether a request with ``Host: header_value`` may be answered."""
        if self._any:
            return True
        verdict = self._decided.get(header_value)
        if verdict is None:
            parsed = parse_host_header(header_value)
            verdict = parsed is not None and self.allows_host(parsed[0])
            if len(self._decided) >= 512:
                self._decided.clear()
            self._decided[header_value] = verdict
        return verdict
