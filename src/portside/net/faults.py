"""Network faults for ``portside forward``: their text forms, and when each byte goes out.

Pure: no sockets, no asyncio, no clock. The forwarder's asyncio shell feeds a
:class:`Schedule` the times at which bytes arrive and performs the :class:`Step` it
answers (write so many bytes at such a time, reset, go silent); tests drive the same
object with made-up times.

Text forms (case-insensitive, as ``tc`` writes them):

* durations: ``250us``, ``50ms``, ``1.5s``, ``2min``, ``1h`` (a unit is required; ``0`` is
  allowed alone);
* sizes: ``1500``, ``64k``/``64kb`` (1000s), ``64ki``/``64KiB`` (1024s), ``m``/``mi``,
  ``g``/``gi``; a bare number is bytes;
* rates: ``bit``, ``kbit``, ``mbit``, ``gbit`` (bits per second, 1000s), ``kibit`` …
  (1024s); ``bps``, ``kbps``, ``mbps``, ``gbps`` are *bytes* per second, as in ``tc``.

Each fault applies to one direction, ``up`` (client -> target) or ``down``
(target -> client); a command-line value may start with ``up:`` or ``down:``, and without
one it applies to both.

Theory of operation (one direction). A chunk that arrives at time *t* becomes *ready* at
``t + latency ± jitter``, never before the previous chunk (TCP keeps order). It then
leaves as pieces: at most ``slice`` bytes each (at least ``SLICE_GAP_S`` apart, so
that the receiver reads them one by one), and with a bandwidth the link is busy
``size / rate`` seconds per piece, so a piece leaves when the link is free again.
``reset_after`` and ``timeout_after`` (a size) cut the stream at an exact byte count;
``timeout_after`` (a duration) cuts it at a time since the connection began. After a
reset the whole connection is aborted; after a timeout the direction is silent: bytes are
swallowed, nothing (not even the end of the stream) is passed on.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import random
import re
from collections.abc import Mapping

from portside.errors import UsageError

__all__ = [
    "Action",
    "Direction",
    "Faults",
    "LinkFaults",
    "Schedule",
    "Step",
    "faults_from_mapping",
    "faults_to_mapping",
    "format_duration",
    "format_rate",
    "format_size",
    "parse_duration",
    "parse_rate",
    "parse_size",
    "parse_timeout_after",
    "split_direction",
]

#: Longest latency, jitter or timeout accepted (a day): beyond that it is a typo.
MAX_DURATION_S = 86_400.0
#: Largest size accepted (1 PiB).
MAX_SIZE_BYTES = 1 << 50
#: With a bandwidth limit a piece carries at most this much link time, so that a slow
#: link drips steadily instead of releasing a large chunk in one burst.
BANDWIDTH_QUANTUM_S = 0.01
#: With a slice size, pieces leave at least this far apart, so that the receiver reads
#: them apart (written back to back, they would meet again in its socket buffer).
SLICE_GAP_S = 0.001

_NUMBER = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zµ/]*)\s*$", re.IGNORECASE)

_DURATION_UNITS: dict[str, float] = {
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "min": 60.0,
    "h": 3600.0,
}
_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "ki": 1024,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mi": 1024**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gi": 1024**3,
    "gib": 1024**3,
}
_RATE_UNITS: dict[str, float] = {  # -> bytes per second
    "bit": 1 / 8,
    "kbit": 1000 / 8,
    "mbit": 1000**2 / 8,
    "gbit": 1000**3 / 8,
    "kibit": 1024 / 8,
    "mibit": 1024**2 / 8,
    "gibit": 1024**3 / 8,
    "bps": 1.0,
    "kbps": 1000.0,
    "mbps": 1000.0**2,
    "gbps": 1000.0**3,
    "kibps": 1024.0,
    "mibps": 1024.0**2,
    "gibps": 1024.0**3,
}


def _split_number(text: str, what: str, example: str) -> tuple[float, str]:
    match = _NUMBER.match(text)
    if not match:
        raise UsageError(f"{text!r} is not a {what}; write e.g. {example}")
    return float(match.group(1)), match.group(2).lower()


def parse_duration(text: str) -> float:
    """``"50ms"`` -> ``0.05`` seconds. A unit is required, except for ``0``.

    Raises:
        UsageError: not a duration, or longer than a day.
    """
    value, unit = _split_number(text, "duration", "50ms, 1.5s or 2min")
    if not unit:
        if value == 0:
            return 0.0
        raise UsageError(f"{text!r} needs a unit; write e.g. {text.strip()}ms or {text.strip()}s")
    scale = _DURATION_UNITS.get(unit)
    if scale is None:
        raise UsageError(f"{text!r}: unknown time unit {unit!r}; use us, ms, s, min or h")
    seconds = value * scale
    if seconds > MAX_DURATION_S:
        raise UsageError(f"{text!r} is longer than a day; faults are for seconds, not days")
    return seconds


def parse_size(text: str) -> int:
    """``"64KiB"`` -> ``65536``; a bare number is bytes.

    Raises:
        UsageError: not a size, not a whole number of bytes, or absurdly large.
    """
    value, unit = _split_number(text, "size", "1500, 64KiB or 1MB")
    scale = _SIZE_UNITS.get(unit)
    if scale is None:
        raise UsageError(f"{text!r}: unknown size unit {unit!r}; use k, ki, m, mi, g or gi")
    exact = value * scale
    size = round(exact)
    if not math.isclose(size, exact, rel_tol=0.0, abs_tol=1e-6):
        raise UsageError(f"{text!r} is not a whole number of bytes")
    if size > MAX_SIZE_BYTES:
        raise UsageError(f"{text!r} is too large (at most 1 PiB)")
    return size


def parse_rate(text: str) -> float:
    """``"1mbit"`` -> ``125000.0`` bytes per second. A unit is required and the rate > 0.

    Raises:
        UsageError: not a rate, no unit (bits or bytes?), or zero.
    """
    value, unit = _split_number(text, "rate", "1mbit or 500kbps")
    if not unit:
        raise UsageError(
            f"{text!r} needs a unit: {text.strip()}kbit (bits/s) or {text.strip()}kbps (bytes/s)"
        )
    scale = _RATE_UNITS.get(unit)
    if scale is None:
        raise UsageError(f"{text!r}: unknown rate unit {unit!r}; use bit, kbit, mbit, gbit or bps…")
    if value <= 0:
        raise UsageError(f"{text!r}: a bandwidth must be more than zero")
    return value * scale


def parse_timeout_after(text: str) -> tuple[float | None, int | None]:
    """``"5s"`` -> ``(5.0, None)``; ``"64KiB"`` -> ``(None, 65536)``. A unit is required.

    Raises:
        UsageError: neither a duration nor a size with a unit.
    """
    _, unit = _split_number(text, "duration or size", "5s or 64KiB")
    if unit in _DURATION_UNITS:
        return parse_duration(text), None
    if unit:
        return None, parse_size(text)
    raise UsageError(f"{text!r} needs a unit: {text.strip()}s (after a time) or {text.strip()}KiB")


def _short(value: float) -> str:
    return f"{value:.15g}"


def format_duration(seconds: float) -> str:
    """``0.05`` -> ``"50ms"``; :func:`parse_duration` reads it back exactly."""
    if seconds == 0:
        return "0s"
    for unit, scale in (("h", 3600.0), ("min", 60.0), ("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale or unit == "us":
            text = f"{_short(seconds / scale)}{unit}"
            if parse_duration(text) == seconds:
                return text
            break
    return f"{seconds!r}s"


def format_size(size: int) -> str:
    """``65536`` -> ``"64KiB"``, ``1500`` -> ``"1500"``; :func:`parse_size` reads it back."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


def format_rate(bytes_per_s: float) -> str:
    """``125000.0`` -> ``"1mbit"``; :func:`parse_rate` reads it back exactly."""
    bits = bytes_per_s * 8
    for unit, scale in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3), ("bit", 1.0)):
        if bits >= scale or unit == "bit":
            text = f"{_short(bits / scale)}{unit}"
            if parse_rate(text) == bytes_per_s:
                return text
            break
    return f"{bytes_per_s!r}bps"


class Direction(enum.StrEnum):
    UP = "up"  # client -> target
    DOWN = "down"  # target -> client


def split_direction(text: str) -> tuple[tuple[Direction, ...], str]:
    """``"up:50ms"`` -> ``((UP,), "50ms")``; without a prefix, both directions."""
    head, sep, rest = text.partition(":")
    if sep:
        key = head.strip().lower()
        if key in ("up", "down"):
            return (Direction(key),), rest
        raise UsageError(f"{text!r}: the direction is 'up' or 'down', e.g. up:{rest.strip()}")
    return (Direction.UP, Direction.DOWN), text


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LinkFaults:
    """The faults of one direction. Zero / None means "not this fault"."""

    latency_s: float = 0.0
    jitter_s: float = 0.0
    bandwidth_bytes_per_s: float | None = None
    slice_bytes: int | None = None
    reset_after_bytes: int | None = None
    timeout_after_bytes: int | None = None
    timeout_after_s: float | None = None

    def __post_init__(self) -> None:
        if not (0 <= self.latency_s <= MAX_DURATION_S and 0 <= self.jitter_s <= MAX_DURATION_S):
            raise ValueError("latency and jitter are 0 .. 86400 seconds")
        if self.bandwidth_bytes_per_s is not None and not self.bandwidth_bytes_per_s > 0:
            raise ValueError("bandwidth must be > 0 bytes per second")
        if self.slice_bytes is not None and self.slice_bytes < 1:
            raise ValueError("slice must be at least one byte")
        for count in (self.reset_after_bytes, self.timeout_after_bytes):
            if count is not None and count < 0:
                raise ValueError("byte counts are >= 0")
        if self.timeout_after_s is not None and not 0 <= self.timeout_after_s <= MAX_DURATION_S:
            raise ValueError("timeout_after_s is 0 .. 86400 seconds")

    @property
    def is_clean(self) -> bool:
        """No fault at all: bytes pass as they come."""
        return self == _CLEAN


_CLEAN = LinkFaults()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Faults:
    """Faults of a forward: one :class:`LinkFaults` per direction, and ``refuse``
    (accept every connection, then close it at once)."""

    up: LinkFaults = _CLEAN
    down: LinkFaults = _CLEAN
    refuse: bool = False

    @property
    def is_clean(self) -> bool:
        return not self.refuse and self.up.is_clean and self.down.is_clean

    def link(self, direction: Direction) -> LinkFaults:
        return self.up if direction is Direction.UP else self.down


# -- the mapping form: TOML config, the control API, --json ------------------------------

_LINK_KEYS = ("latency", "jitter", "bandwidth", "slice", "reset_after", "timeout_after")


_CLEARED: dict[str, dict[str, object]] = {
    "latency": {"latency_s": 0.0},
    "jitter": {"jitter_s": 0.0},
    "bandwidth": {"bandwidth_bytes_per_s": None},
    "slice": {"slice_bytes": None},
    "reset_after": {"reset_after_bytes": None},
    "timeout_after": {"timeout_after_s": None, "timeout_after_bytes": None},
}


def _link_changes(key: str, value: object) -> dict[str, object]:
    """One user-facing key (``"latency"``) and its value -> LinkFaults field values."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UsageError(f"{key}: expected text such as '50ms', got {value!r}")
    if isinstance(value, str) and value.strip().lower() in ("off", "none"):
        return _CLEARED[key]
    text = str(value)
    if key in ("latency", "jitter"):
        seconds = parse_duration(text) if isinstance(value, str) else float(value)
        if not 0 <= seconds <= MAX_DURATION_S:
            raise UsageError(f"{key}: {value!r} is not 0 .. 86400 seconds")
        return {f"{key}_s": seconds}
    if key == "bandwidth":
        if not isinstance(value, str):
            raise UsageError(f"bandwidth: write a unit, e.g. '1mbit' (got {value!r})")
        return {"bandwidth_bytes_per_s": parse_rate(text)}
    if key in ("slice", "reset_after"):
        if isinstance(value, float):
            raise UsageError(f"{key}: {value!r} is not a whole number of bytes")
        size = value if isinstance(value, int) else parse_size(text)
        if size < (1 if key == "slice" else 0):
            raise UsageError(f"{key}: {value!r} is too small")
        return {f"{key}_bytes": size}
    # timeout_after: a number is seconds in JSON/TOML; text needs its unit.
    if isinstance(value, str):
        seconds_or_none, size_or_none = parse_timeout_after(text)
    else:
        seconds_or_none, size_or_none = float(value), None
        if not 0 <= seconds_or_none <= MAX_DURATION_S:
            raise UsageError(f"timeout_after: {value!r} is not 0 .. 86400 seconds")
    return {"timeout_after_s": seconds_or_none, "timeout_after_bytes": size_or_none}


def _apply(link: LinkFaults, key: str, value: object) -> LinkFaults:
    changes = _link_changes(key, value)
    try:
        return dataclasses.replace(link, **changes)  # type: ignore[arg-type]  # keys are fields
    except ValueError as exc:
        raise UsageError(f"{key}: {exc}") from exc


def faults_from_mapping(data: Mapping[str, object], *, base: Faults | None = None) -> Faults:
    """Faults from the mapping form used by the config file and the control API.

    ``{"latency": "50ms", "down": {"bandwidth": "1mbit"}, "refuse": false}``: keys at the
    top apply to both directions, ``up``/``down`` tables to one. Values are text with a
    unit; numbers are seconds (``latency``, ``jitter``, ``timeout_after``) or bytes
    (``slice``, ``reset_after``). ``"off"`` removes a fault. With *base*, only
    the keys given change (PATCH); without it, everything else is clean (PUT).

    Raises:
        UsageError: an unknown key or a value that does not parse.
    """
    up = base.up if base else _CLEAN
    down = base.down if base else _CLEAN
    refuse = base.refuse if base else False
    for key, value in data.items():
        if key == "refuse":
            if not isinstance(value, bool):
                raise UsageError(f"refuse: expected true or false, got {value!r}")
            refuse = value
        elif key in ("up", "down"):
            if not isinstance(value, Mapping):
                raise UsageError(f"{key}: expected a table of faults, got {value!r}")
            for sub_key, sub_value in value.items():
                if sub_key not in _LINK_KEYS:
                    raise UsageError(_unknown(f"{key}.{sub_key}"))
                if key == "up":
                    up = _apply(up, sub_key, sub_value)
                else:
                    down = _apply(down, sub_key, sub_value)
        elif key in _LINK_KEYS:
            up = _apply(up, key, value)
            down = _apply(down, key, value)
        else:
            raise UsageError(_unknown(key))
    return Faults(up=up, down=down, refuse=refuse)


def _unknown(key: str) -> str:
    known = ", ".join((*_LINK_KEYS, "up", "down", "refuse"))
    return f"unknown fault {key!r}; known: {known}"


def _link_to_mapping(link: LinkFaults) -> dict[str, str]:
    out: dict[str, str] = {}
    if link.latency_s:
        out["latency"] = format_duration(link.latency_s)
    if link.jitter_s:
        out["jitter"] = format_duration(link.jitter_s)
    if link.bandwidth_bytes_per_s is not None:
        out["bandwidth"] = format_rate(link.bandwidth_bytes_per_s)
    if link.slice_bytes is not None:
        out["slice"] = format_size(link.slice_bytes)
    if link.reset_after_bytes is not None:
        out["reset_after"] = format_size(link.reset_after_bytes)
    if link.timeout_after_s is not None:
        out["timeout_after"] = format_duration(link.timeout_after_s)
    elif link.timeout_after_bytes is not None:
        size = format_size(link.timeout_after_bytes)
        out["timeout_after"] = f"{size}B" if size.isdigit() else size
    return out


def faults_to_mapping(faults: Faults) -> dict[str, object]:
    """The mapping form of *faults*; :func:`faults_from_mapping` reads it back."""
    return {
        "refuse": faults.refuse,
        "up": _link_to_mapping(faults.up),
        "down": _link_to_mapping(faults.down),
    }


# -- the schedule ---------------------------------------------------------------------------


class Action(enum.StrEnum):
    DATA = "data"  # write ``size`` bytes
    EOF = "eof"  # pass the end of the stream on (shutdown for writing)
    RESET = "reset"  # abort the whole connection with a TCP reset
    SILENCE = "silence"  # from now on swallow everything, pass nothing on


@dataclasses.dataclass(frozen=True, slots=True)
class Step:
    """What to do, and when (the caller's clock)."""

    at: float
    action: Action
    size: int = 0


class Schedule:
    """When the bytes of one direction go out, given when they came in.

    Call :meth:`arrive` once per chunk as it comes in (it answers the chunk's *ready*
    time), then :meth:`next_piece` for the chunk's bytes in order, until they are all
    sent; :meth:`end` for the end of the stream. Steps come out in non-decreasing ``at``.
    After a RESET or SILENCE step, :attr:`ended` is true and nothing more is sent.

    ``link`` may be replaced at any time; new values apply to bytes not yet planned.
    """

    def __init__(self, link: LinkFaults, *, start: float, rng: random.Random | None = None):
        self.link = link
        self.start = start
        self.planned_bytes = 0  # bytes handed out in DATA steps
        self.ended = False
        self._rng = rng or random.Random()  # noqa: S311 -- jitter, not cryptography
        self._last_at = start
        self._link_free_at = start
        self._last_piece_at = -math.inf

    def arrive(self, now: float) -> float:
        """A chunk came in at *now*: when it is ready to go (latency, jitter, order)."""
        delay = self.link.latency_s
        if self.link.jitter_s:
            delay += self._rng.uniform(-self.link.jitter_s, self.link.jitter_s)
        ready = max(now + max(delay, 0.0), self._last_at)
        self._last_at = ready
        return ready

    def _cut(self, ready: float) -> Step | None:
        """A RESET or SILENCE due before any more bytes, if there is one."""
        link = self.link
        if link.reset_after_bytes is not None and self.planned_bytes >= link.reset_after_bytes:
            return self._end(Step(max(ready, self._last_at), Action.RESET))
        if link.timeout_after_bytes is not None and self.planned_bytes >= link.timeout_after_bytes:
            return self._end(Step(max(ready, self._last_at), Action.SILENCE))
        if link.timeout_after_s is not None and ready >= self.start + link.timeout_after_s:
            return self._end(Step(max(self.start + link.timeout_after_s, 0.0), Action.SILENCE))
        return None

    def _end(self, step: Step) -> Step:
        self.ended = True
        return step

    def next_piece(self, ready: float, available: int) -> Step:
        """The next step for a chunk that became ready at *ready* with *available* > 0
        bytes left: DATA of 1 .. *available* bytes, or RESET/SILENCE."""
        if available < 1:
            raise ValueError("available must be at least one byte")
        if self.ended:
            raise RuntimeError("the schedule has ended")
        cut = self._cut(ready)
        if cut is not None:
            return cut
        link = self.link
        size = available
        if link.slice_bytes is not None:
            size = min(size, link.slice_bytes)
        for limit in (link.reset_after_bytes, link.timeout_after_bytes):
            if limit is not None:
                size = min(size, limit - self.planned_bytes)
        at = max(ready, self._last_at)
        if link.slice_bytes is not None:
            at = max(at, self._last_piece_at + SLICE_GAP_S)
        rate = link.bandwidth_bytes_per_s
        if rate is not None:
            size = min(size, max(1, int(rate * BANDWIDTH_QUANTUM_S)))
            at = max(at, self._link_free_at) + size / rate
            self._link_free_at = at
        if link.timeout_after_s is not None and at >= self.start + link.timeout_after_s:
            return self._end(Step(self.start + link.timeout_after_s, Action.SILENCE))
        self._last_at = self._last_piece_at = at
        self.planned_bytes += size
        return Step(at, Action.DATA, size)

    def after_data(self) -> Step | None:
        """A RESET or SILENCE due right after the bytes planned so far (a byte count was
        reached exactly), else None. Call it after each DATA step."""
        if self.ended:
            return None
        link = self.link
        for limit, action in (
            (link.reset_after_bytes, Action.RESET),
            (link.timeout_after_bytes, Action.SILENCE),
        ):
            if limit is not None and self.planned_bytes >= limit:
                return self._end(Step(self._last_at, action))
        return None

    def end(self, now: float) -> Step | None:
        """The end of the stream came in at *now*: when to pass it on (None: silent)."""
        if self.ended:
            return None
        ready = self.arrive(now)
        link = self.link
        if link.timeout_after_s is not None and ready >= self.start + link.timeout_after_s:
            return self._end(Step(self.start + link.timeout_after_s, Action.SILENCE))
        at = max(ready, self._link_free_at)
        self._last_at = at
        return Step(at, Action.EOF)
