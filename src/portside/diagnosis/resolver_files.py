"""Pure parsers for the resolver's files: /etc/hosts, /etc/nsswitch.conf, /etc/gai.conf."""

from __future__ import annotations

from portside.addresses import normalise_ip
from portside.diagnosis.facts import HostsEntry


def parse_hosts(text: str) -> list[HostsEntry]:
    """``/etc/hosts`` -> entries (comments and malformed lines skipped)."""
    entries: list[HostsEntry] = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        ip = normalise_ip(fields[0])
        if ip is None:
            continue
        entries.append(HostsEntry(ip=ip, names=tuple(name.lower() for name in fields[1:])))
    return entries


def hosts_for(entries: list[HostsEntry], name: str) -> tuple[HostsEntry, ...]:
    return tuple(entry for entry in entries if name.lower() in entry.names)


def nsswitch_hosts(text: str) -> str | None:
    """The sources of the ``hosts:`` line (``"files myhostname dns"``), or None."""
    for line in text.splitlines():
        stripped = line.split("#", 1)[0].strip()
        if stripped.startswith("hosts:"):
            return " ".join(stripped[len("hosts:") :].split())
    return None


def gai_precedence(text: str) -> tuple[str, ...]:
    """The active ``precedence`` and ``label`` lines of gai.conf."""
    lines = []
    for line in text.splitlines():
        stripped = line.split("#", 1)[0].strip()
        if stripped.startswith(("precedence", "label")):
            lines.append(" ".join(stripped.split()))
    return tuple(lines)
