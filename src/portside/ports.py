"""What a port number is: IANA class, browser bad ports, development defaults,
kernel ranges. Pure: the kernel settings and the IANA rows are passed in.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

from portside._lean_dataclasses import dataclasses, methods_compiled_on_first_use
from portside.kernelports import KernelPortSettings as KernelPortSettings
from portside.kernelports import parse_port_list as parse_port_list


class PortClass(enum.StrEnum):
    """The IANA ranges (RFC 6335 §6)."""

    WELL_KNOWN = "well-known"  # 0-1023, "system ports"
    REGISTERED = "registered"  # 1024-49151, "user ports"
    DYNAMIC = "dynamic"  # 49152-65535, "dynamic and/or private ports"


def port_class(port: int) -> PortClass:
    if port < 1024:
        return PortClass.WELL_KNOWN
    if port < 49152:
        return PortClass.REGISTERED
    return PortClass.DYNAMIC


#: Ports browsers refuse to fetch from (WHATWG Fetch, "bad port"): a dev server there
#: answers curl but the browser shows ERR_UNSAFE_PORT.
BROWSER_BAD_PORTS: frozenset[int] = frozenset(
    {
        1, 7, 9, 11, 13, 15, 17, 19, 20, 21, 22, 23, 25, 37, 42, 43, 53, 69, 77, 79, 87, 95,
        101, 102, 103, 104, 109, 110, 111, 113, 115, 117, 119, 123, 135, 137, 139, 143, 161,
        179, 389, 427, 465, 512, 513, 514, 515, 526, 530, 531, 532, 540, 548, 554, 556, 563,
        587, 601, 636, 989, 990, 993, 995, 1719, 1720, 1723, 2049, 3659, 4045, 4190, 5060,
        5061, 6000, 6566, 6665, 6666, 6667, 6668, 6669, 6679, 6697, 10080,
    }
)  # fmt: skip

#: Ports that development tools take by default: likely to collide on a developer machine.
DEV_DEFAULTS: Mapping[int, str] = {
    1234: "Parcel",
    3000: "React (CRA), Next.js, Rails, Express, Grafana",
    3001: "Next.js / CRA second instance",
    4000: "Phoenix, Jekyll, Gatsby (serve)",
    4200: "Angular (ng serve)",
    4321: "Astro",
    5000: "Flask, ASP.NET Core; macOS AirPlay Receiver",
    5001: "ASP.NET Core (HTTPS)",
    5173: "Vite",
    5174: "Vite (second instance)",
    5432: "PostgreSQL",
    5555: "Prisma Studio",
    6006: "Storybook, TensorBoard",
    6379: "Redis",
    7000: "macOS AirPlay Receiver, Cassandra",
    8000: "Django, uvicorn, python -m http.server, Laravel",
    8008: "alternative HTTP",
    8080: "Tomcat, webpack-dev-server, many HTTP proxies",
    8081: "Metro (React Native), alternative HTTP",
    8443: "alternative HTTPS",
    8787: "Cloudflare Wrangler, RStudio Server",
    8888: "Jupyter",
    9000: "PHP-FPM, SonarQube, MinIO",
    9090: "Prometheus",
    9229: "Node.js inspector (--inspect)",
    9292: "Rack (rackup)",
    19006: "Expo web",
    24678: "Vite HMR websocket",
    27017: "MongoDB",
    3306: "MySQL, MariaDB",
}

#: Default ephemeral (dynamic client) port ranges of other systems, for comparison.
OTHER_EPHEMERAL_RANGES: Mapping[str, tuple[int, int]] = {
    "linux-default": (32768, 60999),
    "macos": (49152, 65535),
    "windows": (49152, 65535),
}


with methods_compiled_on_first_use():

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class Service:
        name: str
        protocols: tuple[str, ...]
        description: str

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class PortFacts:
        """Everything portside knows about one port number."""

        port: int
        iana_class: PortClass
        services: tuple[Service, ...]
        in_ephemeral_range: bool | None
        ephemeral_range: tuple[int, int] | None
        other_ephemeral_ranges: Mapping[str, tuple[int, int]]
        in_other_ephemeral_ranges: tuple[str, ...]
        reserved: bool
        privileged: bool | None
        unprivileged_port_start: int | None
        browser_bad_port: bool
        dev_default: str | None
        notes: tuple[str, ...]


def port_facts(port: int, kernel: KernelPortSettings, services: Iterable[Service]) -> PortFacts:
    """Classify ``port`` against the IANA ranges, this kernel and common usage."""
    low_high = kernel.ephemeral_range
    in_ephemeral = None if low_high is None else low_high[0] <= port <= low_high[1]
    privileged = None
    if kernel.unprivileged_port_start is not None:
        privileged = 0 < port < kernel.unprivileged_port_start
    others = tuple(
        name for name, (low, high) in OTHER_EPHEMERAL_RANGES.items() if low <= port <= high
    )
    notes: list[str] = []
    if port == 0:
        notes.append(
            "port 0 asks the kernel for any free port; nothing can listen on port 0 itself"
        )
    if in_ephemeral and port not in kernel.reserved_ports:
        notes.append(
            "inside the ephemeral range: outgoing connections may take this port at any time,"
            " so a server can fail to bind it (EADDRINUSE); prefer `portside pick`"
        )
    if privileged:
        notes.append(
            f"privileged: binding needs root or CAP_NET_BIND_SERVICE (ports below {kernel.unprivileged_port_start})"
        )
    if port in BROWSER_BAD_PORTS:
        notes.append("browsers refuse this port (ERR_UNSAFE_PORT); curl works, a browser will not")
    if port in DEV_DEFAULTS:
        notes.append(f"a common development default ({DEV_DEFAULTS[port]}): likely to collide")
    return PortFacts(
        port=port,
        iana_class=port_class(port),
        services=tuple(services),
        in_ephemeral_range=in_ephemeral,
        ephemeral_range=low_high,
        other_ephemeral_ranges=OTHER_EPHEMERAL_RANGES,
        in_other_ephemeral_ranges=others,
        reserved=port in kernel.reserved_ports,
        privileged=privileged,
        unprivileged_port_start=kernel.unprivileged_port_start,
        browser_bad_port=port in BROWSER_BAD_PORTS,
        dev_default=DEV_DEFAULTS.get(port),
        notes=tuple(notes),
    )
