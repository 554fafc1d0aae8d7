"""Port classification against the IANA ranges, the kernel settings and common usage."""

import pytest

from portside.ports import (
    BROWSER_BAD_PORTS,
    KernelPortSettings,
    PortClass,
    Service,
    parse_port_list,
    port_class,
    port_facts,
)
from portside.services import iana_services, service_name

LINUX = KernelPortSettings(
    ephemeral_range=(32768, 60999), reserved_ports=frozenset({40000}), unprivileged_port_start=1024
)


@pytest.mark.parametrize(
    ("port", "cls"),
    [
        (0, PortClass.WELL_KNOWN),
        (1023, PortClass.WELL_KNOWN),
        (1024, PortClass.REGISTERED),
        (49151, PortClass.REGISTERED),
        (49152, PortClass.DYNAMIC),
        (65535, PortClass.DYNAMIC),
    ],
)
def test_iana_class_boundaries(port, cls):
    assert port_class(port) is cls


def test_a_port_in_the_ephemeral_range_is_flagged():
    facts = port_facts(45000, LINUX, ())
    assert facts.in_ephemeral_range is True
    assert any("ephemeral" in note for note in facts.notes)


def test_a_reserved_port_inside_the_range_is_not_warned_about():
    facts = port_facts(40000, LINUX, ())
    assert facts.reserved is True
    assert not any("ephemeral" in note for note in facts.notes)


def test_62893_is_outside_linux_but_inside_macos_and_windows_ranges():
    facts = port_facts(62893, LINUX, ())
    assert facts.in_ephemeral_range is False
    assert facts.in_other_ephemeral_ranges == ("macos", "windows")


def test_privileged_follows_the_kernel_limit():
    assert port_facts(80, LINUX, ()).privileged is True
    assert port_facts(1024, LINUX, ()).privileged is False
    lowered = KernelPortSettings(
        ephemeral_range=None, reserved_ports=frozenset(), unprivileged_port_start=80
    )
    assert port_facts(80, lowered, ()).privileged is False
    unknown = KernelPortSettings(
        ephemeral_range=None, reserved_ports=frozenset(), unprivileged_port_start=None
    )
    assert port_facts(80, unknown, ()).privileged is None
    assert port_facts(80, unknown, ()).in_ephemeral_range is None


def test_browser_bad_ports_and_dev_defaults():
    assert {22, 6000, 10080} <= BROWSER_BAD_PORTS
    assert 8080 not in BROWSER_BAD_PORTS
    assert port_facts(6666, LINUX, ()).browser_bad_port is True
    assert port_facts(5173, LINUX, ()).dev_default == "Vite"
    assert port_facts(62893, LINUX, ()).dev_default is None


def test_services_are_carried_through():
    service = Service(name="x", protocols=("tcp",), description="y")
    assert port_facts(1, LINUX, [service]).services == (service,)


def test_reserved_port_list_format():
    assert parse_port_list("1000-1002,2000\n") == frozenset({1000, 1001, 1002, 2000})
    assert parse_port_list("") == frozenset()
    with pytest.raises(ValueError, match="bad port range"):
        parse_port_list("5-3")


def test_the_shipped_iana_table_knows_common_ports():
    assert service_name(22) == "ssh"
    assert "postgresql" in {s.name for s in iana_services(5432)}
    assert {"tcp", "udp"} <= set(next(s for s in iana_services(53) if s.name == "domain").protocols)
    assert iana_services(62893) == ()
    assert service_name(65535) is None
    assert all(s.name for s in iana_services(6000))  # a range row (x11 6000-6063) is expanded
    assert "x11" in {s.name for s in iana_services(6063)}
