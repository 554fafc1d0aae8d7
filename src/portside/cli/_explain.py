"""``portside explain PORT|ADDRESS``."""

from __future__ import annotations

import argparse

from portside.cli import _render as render
from portside.errors import ExitCode
from portside.explain import explain
from portside.ports import PortFacts


def _yes_no(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


def _port_lines(facts: PortFacts) -> list[str]:
    lines = [f"port {facts.port}: IANA {facts.iana_class.value}"]
    if facts.services:
        names = ", ".join(
            f"{s.name} ({'/'.join(s.protocols)}: {s.description})" for s in facts.services[:6]
        )
        more = f" and {len(facts.services) - 6} more" if len(facts.services) > 6 else ""
        lines.append(f"  IANA services: {names}{more}")
    else:
        lines.append("  IANA services: none registered")
    if facts.ephemeral_range:
        low, high = facts.ephemeral_range
        lines.append(
            f"  ephemeral range here: {low}-{high} -> inside: {_yes_no(facts.in_ephemeral_range)}"
        )
    others = ", ".join(
        f"{name} {low}-{high}" for name, (low, high) in facts.other_ephemeral_ranges.items()
    )
    lines.append(
        f"  other ephemeral ranges: {others}; inside: {', '.join(facts.in_other_ephemeral_ranges) or 'none'}"
    )
    lines.append(f"  reserved (ip_local_reserved_ports): {_yes_no(facts.reserved)}")
    limit = facts.unprivileged_port_start
    lines.append(
        f"  privileged (below {limit if limit is not None else '?'}): {_yes_no(facts.privileged)}"
    )
    lines.append(f"  browser bad port: {_yes_no(facts.browser_bad_port)}")
    lines.append(f"  development default: {facts.dev_default or 'no'}")
    lines.extend(f"  note: {note}" for note in facts.notes)
    return lines


def run_explain(options: argparse.Namespace) -> int:
    result = explain(options.target)
    if options.json:
        render.print_json("explain", result)
        return ExitCode.OK
    lines: list[str] = []
    if result.address:
        facts = result.address.facts
        lines.append(
            f"address {facts.ip}: {facts.family}, {', '.join(c.value for c in facts.classes)}, exposure {facts.exposure.value}"
        )
        if facts.mapped_ipv4:
            lines.append(f"  IPv4-mapped: {facts.mapped_ipv4}")
        lines.append(
            f"  carried by: {', '.join(result.address.carried_by) or 'no local interface'}"
        )
        if result.address.on_link:
            lines.append(f"  on the network of: {', '.join(result.address.on_link)}")
        lines.extend(f"  note: {note}" for note in result.address.notes)
    if result.name:
        lines.append(
            f"name {result.name.name}: resolves to {', '.join(result.name.resolves_to) or 'nothing'}"
        )
        lines.extend(f"  note: {note}" for note in result.name.notes)
    if result.port:
        lines.extend(_port_lines(result.port))
    render.print_lines(lines)
    return ExitCode.OK
