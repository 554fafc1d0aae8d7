"""This machine's port settings and network interfaces (reads /proc/sys and the OS)."""

from __future__ import annotations

import dataclasses
import sys

from portside.kernelports import KernelPortSettings, parse_port_list

_SYSCTL = "/proc/sys/net/ipv4"


def _read_sysctl(name: str) -> str | None:
    try:
        with open(f"{_SYSCTL}/{name}") as handle:
            return handle.read()
    except OSError:
        return None


def port_settings() -> KernelPortSettings:
    """Ephemeral range, reserved ports and the privileged limit of this kernel."""
    if sys.platform != "linux":
        return KernelPortSettings(
            ephemeral_range=None, reserved_ports=frozenset(), unprivileged_port_start=None
        )
    ephemeral: tuple[int, int] | None = None
    text = _read_sysctl("ip_local_port_range")
    if text:
        low, high = (int(value) for value in text.split())
        ephemeral = (low, high)
    reserved_text = _read_sysctl("ip_local_reserved_ports") or ""
    start_text = _read_sysctl("ip_unprivileged_port_start")
    return KernelPortSettings(
        ephemeral_range=ephemeral,
        reserved_ports=parse_port_list(reserved_text),
        unprivileged_port_start=int(start_text) if start_text else 1024,
    )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class InterfaceAddress:
    interface: str
    ip: str
    prefix_length: int | None
    is_up: bool | None


def interface_addresses() -> list[InterfaceAddress]:
    """Every IP address configured on a local interface (of this network namespace), with
    its prefix length for both families."""
    import ipaddress
    import socket

    import psutil

    stats = psutil.net_if_stats()
    found: list[InterfaceAddress] = []
    for name, addresses in psutil.net_if_addrs().items():
        for address in addresses:
            if address.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = address.address.split("%", 1)[0]
            prefix: int | None = None
            if address.netmask:
                # Counted in bits: ipaddress refuses an IPv6 netmask such as ffff:ffff::.
                try:
                    mask = int(ipaddress.ip_address(address.netmask.split("/", 1)[0]))
                    prefix = mask.bit_count()
                except ValueError:
                    prefix = None
            state = stats.get(name)
            found.append(
                InterfaceAddress(
                    interface=name,
                    ip=ip,
                    prefix_length=prefix,
                    is_up=None if state is None else state.isup,
                )
            )
    return found
