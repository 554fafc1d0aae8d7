"""This kernel's port policy as a record (ephemeral range, reserved ports, privileged
limit), and the list format of ``ip_local_reserved_ports``. Pure: no I/O.

:mod:`portside.kernel` reads the settings and :mod:`portside.ports` says what they mean
for one port (and re-exports both names). They live apart from the port tables so that
``portside who``, which needs only these, does not import the tables.
"""

from __future__ import annotations

from portside._lean_dataclasses import dataclasses, methods_compiled_on_first_use


def parse_port_list(text: str) -> frozenset[int]:
    """``"1000-1002,2000"`` (the ``ip_local_reserved_ports`` format) -> {1000, 1001, 1002, 2000}.

    Raises ValueError on anything else.
    """
    ports: set[int] = set()
    for part in text.replace("\n", ",").split(","):
        part = part.strip()
        if not part:
            continue
        low, sep, high = part.partition("-")
        first, last = int(low), int(high) if sep else int(low)
        if not 0 <= first <= last <= 65535:
            raise ValueError(f"bad port range {part!r}")
        ports.update(range(first, last + 1))
    return frozenset(ports)


with methods_compiled_on_first_use():

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class KernelPortSettings:
        """This machine's port policy; None where the platform has no such setting."""

        ephemeral_range: tuple[int, int] | None
        reserved_ports: frozenset[int]
        unprivileged_port_start: int | None  # binding below needs CAP_NET_BIND_SERVICE
