"""Endpoints as users type them, and what an address is. Pure: no I/O.

:func:`parse_target` is the one parser for every way a user names an endpoint::

    62893   :62893   127.0.0.1:62893   [::1]:62893   ::1   localhost:3000
    app.localhost:8080   http://127.0.0.1:62893/path   https://app.localhost
    redis://127.0.0.1   postgres://db.localhost:5433/app   [::ffff:127.0.0.1]:80
"""

from __future__ import annotations

import dataclasses
import enum

from portside.errors import TargetError
from portside.models import Exposure, methods_compiled_on_first_use

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ipaddress

# ipaddress and re are imported by the functions that parse addresses (not at import: a
# port number alone, ``portside who 3000``, needs neither), and the patterns are
# compiled (and cached by re) the first time they are used.

#: Default ports of the URL schemes portside understands.
DEFAULT_PORTS: dict[str, int] = {
    "http": 80,
    "https": 443,
    "ws": 80,
    "wss": 443,
    "tcp": 0,
    "tcp+tls": 443,
    "redis": 6379,
    "rediss": 6379,
    "postgres": 5432,
    "postgresql": 5432,
    "mysql": 3306,
    "ssh": 22,
}

_HOSTNAME_LABEL = r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$"
_SCHEME = r"^([A-Za-z][A-Za-z0-9+.-]*)://"
_FORMAT_HINT = "write PORT, HOST:PORT, [IPv6]:PORT or a URL such as http://127.0.0.1:8080/"


class HostKind(enum.StrEnum):
    NONE = "none"  # only a port was given
    IP = "ip"
    NAME = "name"


with methods_compiled_on_first_use():

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Target:
        """A parsed endpoint. ``port`` is None only when the text named an address alone."""

        text: str
        scheme: str | None
        host: str | None  # an IP in normal form, a lower-case name, or None
        host_kind: HostKind
        port: int | None
        path: str | None = None

        @property
        def ip(self) -> str | None:
            return self.host if self.host_kind is HostKind.IP else None

        def display(self) -> str:
            """``host:port`` with brackets for IPv6; ``:port`` when no host was given."""
            host = self.host or ""
            if self.host_kind is HostKind.IP and ":" in host:
                host = f"[{host}]"
            return host if self.port is None else f"{host}:{self.port}"


def parse_port(text: str, *, original: str | None = None) -> int:
    """A decimal port number 0-65535, or TargetError saying why not."""
    shown = original if original is not None else text
    if not text:
        raise TargetError(shown, f"the port is missing; {_FORMAT_HINT}")
    if not text.isascii() or not text.isdigit():
        raise TargetError(shown, f"port {text!r} is not a number; ports are 1-65535")
    value = int(text)
    if value > 65535:
        raise TargetError(shown, f"port {value} is out of range; ports are 1-65535")
    return value


def format_ip(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Text form as ``ss`` prints it: IPv4-mapped IPv6 keeps its dotted tail (``::ffff:127.0.0.1``)."""
    import ipaddress

    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


def normalise_ip(text: str) -> str | None:
    """The normal text form of an IP address (scope ids kept), or None if it is not one."""
    import ipaddress

    try:
        return format_ip(ipaddress.ip_address(text))
    except ValueError:
        return None


def _parse_host(host: str, original: str) -> tuple[str, HostKind]:
    ip = normalise_ip(host)
    if ip is not None:
        return ip, HostKind.IP
    name = host.rstrip(".").lower()
    labels = name.split(".")
    import re

    if not name or not all(re.match(_HOSTNAME_LABEL, label) for label in labels):
        raise TargetError(original, f"{host!r} is neither an IP address nor a host name")
    if all(label.isdigit() for label in labels):
        raise TargetError(original, f"{host!r} is not a valid IPv4 address")
    return name, HostKind.NAME


def _split_host_port(text: str, original: str) -> tuple[str | None, str | None]:
    """``host:port`` -> (host, port); brackets for IPv6; a bare IPv6 has no port."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise TargetError(original, "missing ']' after the IPv6 address; write [::1]:8080")
        host, rest = text[1:close], text[close + 1 :]
        if normalise_ip(host) is None or ":" not in host:
            raise TargetError(original, f"{host!r} inside brackets is not an IPv6 address")
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise TargetError(original, f"unexpected {rest!r} after ']'; write [::1]:8080")
        return host, rest[1:]
    if text.count(":") > 1:
        if normalise_ip(text) is not None:
            return text, None  # a bare IPv6 address such as ::1
        raise TargetError(original, "an IPv6 address with a port needs brackets: [::1]:8080")
    if ":" in text:
        host, port = text.split(":", 1)
        return host or None, port
    return text, None


def parse_target(text: str, *, require_port: bool = False) -> Target:
    """Parse any way of naming an endpoint (see the module docstring).

    Raises TargetError (a UsageError, exit code 2) with a one-line reason.
    """
    original = text
    text = text.strip()
    if not text:
        raise TargetError(original, f"empty address; {_FORMAT_HINT}")
    scheme: str | None = None
    path: str | None = None
    match = None
    if "://" in text:
        import re

        match = re.match(_SCHEME, text)
    if match:
        scheme = match.group(1).lower()
        if scheme not in DEFAULT_PORTS:
            known = ", ".join(sorted(DEFAULT_PORTS))
            raise TargetError(original, f"unknown scheme {scheme!r}; known schemes: {known}")
        rest = text[match.end() :]
        cut = min(
            (i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0),
            default=len(rest),
        )
        authority, path = rest[:cut], rest[cut:] or "/"
        if "@" in authority:
            authority = authority.rsplit("@", 1)[1]  # user:password@ is not part of the endpoint
        if not authority:
            raise TargetError(original, "the URL has no host; write e.g. http://127.0.0.1:8080/")
        host_text, port_text = _split_host_port(authority, original)
    elif text.isdigit():
        host_text, port_text = None, text
    else:
        host_text, port_text = _split_host_port(text, original)

    host: str | None = None
    kind = HostKind.NONE
    if host_text is not None:
        host, kind = _parse_host(host_text, original)
    if port_text is not None:
        port: int | None = parse_port(port_text, original=original)
    elif scheme is not None and DEFAULT_PORTS[scheme]:
        port = DEFAULT_PORTS[scheme]
    else:
        port = None
    if port is None and (require_port or kind is HostKind.NAME):
        raise TargetError(original, f"no port given; {_FORMAT_HINT}")
    if host is None and port is None:
        raise TargetError(original, f"nothing to look at; {_FORMAT_HINT}")
    return Target(text=original, scheme=scheme, host=host, host_kind=kind, port=port, path=path)


class AddressClass(enum.StrEnum):
    LOOPBACK = "loopback"
    WILDCARD = "wildcard"
    PRIVATE = "private"
    LINK_LOCAL = "link-local"
    MULTICAST = "multicast"
    SHARED = "shared"  # 100.64.0.0/10, carrier-grade NAT (Tailscale uses it)
    RESERVED = "reserved"
    PUBLIC = "public"


with methods_compiled_on_first_use():

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class AddressFacts:
        """What an IP address is. ``mapped_ipv4`` is the IPv4 inside ``::ffff:a.b.c.d``."""

        ip: str
        family: str
        classes: tuple[AddressClass, ...]
        exposure: Exposure
        mapped_ipv4: str | None


def unmap(ip: str) -> str:
    """``::ffff:127.0.0.1`` -> ``127.0.0.1``; anything else unchanged."""
    import ipaddress

    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def exposure_of(ip: str) -> Exposure:
    """How far a socket bound to ``ip`` reaches, from the address alone."""
    import ipaddress

    address = ipaddress.ip_address(unmap(ip.split("%", 1)[0]))
    if address.is_unspecified:
        return Exposure.ALL
    if address.is_loopback:
        return Exposure.LOOPBACK
    return Exposure.SPECIFIC


def classify_address(ip: str) -> AddressFacts:
    """Classify an IP address: loopback, wildcard, private, link-local, v4-mapped …"""
    import ipaddress

    address = ipaddress.ip_address(ip.split("%", 1)[0])
    mapped: str | None = None
    effective: ipaddress.IPv4Address | ipaddress.IPv6Address = address
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        mapped = str(address.ipv4_mapped)
        effective = address.ipv4_mapped
    classes: list[AddressClass] = []
    if effective.is_unspecified:
        classes.append(AddressClass.WILDCARD)
    elif effective.is_loopback:
        classes.append(AddressClass.LOOPBACK)
    elif effective.is_link_local:
        classes.append(AddressClass.LINK_LOCAL)
    elif effective.is_multicast:
        classes.append(AddressClass.MULTICAST)
    elif effective in ipaddress.ip_network("100.64.0.0/10"):
        classes.append(AddressClass.SHARED)
    elif effective.is_private:
        classes.append(AddressClass.PRIVATE)
    elif effective.is_reserved:
        classes.append(AddressClass.RESERVED)
    else:
        classes.append(AddressClass.PUBLIC)
    return AddressFacts(
        ip=format_ip(address),
        family="ipv4" if address.version == 4 else "ipv6",
        classes=tuple(classes),
        exposure=exposure_of(str(address)),
        mapped_ipv4=mapped,
    )
