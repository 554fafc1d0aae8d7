"""Port lists as users type them for ``portside scan -p``. Pure: no I/O.

::

    22          one port
    1-1024      a range (both ends included)
    -1024       from 1;  60000-  up to 65535;  -  every port (1-65535)
    1-1024,8080,9000-9100   any mix, separated by commas (spaces allowed around them)

:func:`parse_port_ranges` returns sorted, merged, non-overlapping ``range`` objects (so
``-`` costs one object, not 65,535); :func:`format_port_ranges` writes the shortest text
that parses back to the same ports.
"""

from __future__ import annotations

from collections.abc import Iterable

from portside.errors import TargetError

MIN_PORT = 1
MAX_PORT = 65535
#: Every port a scan can target (0 is not a port anything listens on).
ALL_PORTS = range(MIN_PORT, MAX_PORT + 1)
#: Longest text accepted: far beyond any hand-written list, short enough to parse at once.
MAX_TEXT = 100_000

_HINT = "write e.g. 1-1024,8080 or - for all ports"


def _number(item: str, word: str, text: str) -> int:
    if not word:
        raise TargetError(text, f"{item!r} is missing a port number; {_HINT}")
    if not word.isascii() or not word.isdigit():
        raise TargetError(text, f"{word!r} is not a port number; {_HINT}")
    if len(word.lstrip("0")) > 5:
        raise TargetError(text, f"port {word[:12]} is out of range; ports are 1-65535")
    value = int(word)
    if value == 0:
        raise TargetError(text, "port 0 cannot be scanned; ports are 1-65535")
    if value > MAX_PORT:
        raise TargetError(text, f"port {value} is out of range; ports are 1-65535")
    return value


def _item(item: str, text: str) -> range:
    if item == "-":
        return ALL_PORTS
    if item.count("-") > 1:
        raise TargetError(text, f"{item!r} is not a port or a range; {_HINT}")
    if "-" not in item:
        port = _number(item, item, text)
        return range(port, port + 1)
    first, last = item.split("-")
    low = MIN_PORT if first == "" else _number(item, first, text)
    high = MAX_PORT if last == "" else _number(item, last, text)
    if low > high:
        raise TargetError(text, f"range {item} is backwards; write {high}-{low}")
    return range(low, high + 1)


def merge_ranges(ranges: Iterable[range]) -> tuple[range, ...]:
    """Sorted, non-overlapping, non-adjacent ranges covering the same ports (step 1)."""
    merged: list[range] = []
    for current in sorted((r for r in ranges if len(r)), key=lambda r: r.start):
        if merged and current.start <= merged[-1].stop:
            last = merged[-1]
            merged[-1] = range(last.start, max(last.stop, current.stop))
        else:
            merged.append(current)
    return tuple(merged)


def parse_port_ranges(text: str) -> tuple[range, ...]:
    """Parse a port list (see the module docstring) into merged ranges.

    Raises TargetError (a UsageError, exit code 2) with a one-line reason and the fix.
    """
    if len(text) > MAX_TEXT:
        raise TargetError(text[:40] + "...", f"the port list is too long; {_HINT}")
    if not text.strip():
        raise TargetError(text, f"no ports given; {_HINT}")
    ranges: list[range] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            raise TargetError(text, f"an empty item between commas; {_HINT}")
        if any(c.isspace() for c in item):
            raise TargetError(text, f"{item!r} has a space inside; separate ports with commas")
        ranges.append(_item(item, text))
    return merge_ranges(ranges)


def parse_ports(text: str) -> list[int]:
    """The ports of a port list, ascending, each once."""
    return [port for r in parse_port_ranges(text) for port in r]


def ranges_of(ports: Iterable[int]) -> tuple[range, ...]:
    """Ports (any order, repeats allowed, each 1-65535) as merged ranges."""
    ordered = sorted(set(ports))
    if ordered and (ordered[0] < MIN_PORT or ordered[-1] > MAX_PORT):
        raise ValueError("ports are 1-65535")
    ranges: list[range] = []
    start = previous = -2
    for port in ordered:
        if port != previous + 1:
            if start >= 0:
                ranges.append(range(start, previous + 1))
            start = port
        previous = port
    if start >= 0:
        ranges.append(range(start, previous + 1))
    return tuple(ranges)


def format_ranges(ranges: Iterable[range]) -> str:
    """The shortest port list text for ``ranges``: ``"1-3,8080"``, ``"-"`` for every port,
    ``""`` for none. :func:`parse_port_ranges` reads it back."""
    merged = merge_ranges(ranges)
    if merged == (ALL_PORTS,):
        return "-"
    return ",".join(str(r.start) if len(r) == 1 else f"{r.start}-{r.stop - 1}" for r in merged)


def format_ports(ports: Iterable[int]) -> str:
    """:func:`format_ranges` for single ports (any order, repeats allowed)."""
    return format_ranges(ranges_of(ports))


def count_ports(ranges: Iterable[range]) -> int:
    return sum(len(r) for r in ranges)
