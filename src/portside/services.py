"""The IANA service names shipped with portside (``data/iana_services.tsv``)."""

from __future__ import annotations

from functools import lru_cache

from portside.ports import Service

_TABLE = "iana_services.tsv"


@lru_cache(maxsize=1)
def _lines() -> tuple[str, ...]:
    from importlib.resources import files

    text = files("portside").joinpath("data", _TABLE).read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line and not line.startswith("#"))


def iana_services(port: int) -> tuple[Service, ...]:
    """The IANA registered services for ``port`` (every transport), in registry order."""
    lines = _lines()
    # The table is sorted by port: bisect on the numeric prefix.
    low, high = 0, len(lines)
    while low < high:
        middle = (low + high) // 2
        if int(lines[middle].split("\t", 1)[0]) < port:
            low = middle + 1
        else:
            high = middle
    found: list[Service] = []
    for line in lines[low:]:
        number, protocols, name, description = line.split("\t")
        if int(number) != port:
            break
        found.append(
            Service(name=name, protocols=tuple(protocols.split(",")), description=description)
        )
    return tuple(found)


def service_name(port: int) -> str | None:
    """The first IANA name for ``port`` (as ``ss`` shows without ``-n``), or None."""
    services = iana_services(port)
    return services[0].name if services else None
