"""``portside audit``: which listeners the network can reach, and the fix.

Importing this module is cheap (argparse only); the audit itself loads in :func:`run_audit`.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from portside.audit import AuditFinding, AuditReport

DESCRIPTION = (
    "For every listener of this network namespace: its bind scope, the interfaces and"
    " networks it is reachable on, the firewall's verdict for a packet from outside"
    " (nftables, iptables-nft, iptables-legacy; ufw through them; 'unknown' when a rule is"
    " too complex, never 'safe'), what the service is, a severity, and the one-line fix."
    " Ignore rules come from a TOML file (--config, default audit.toml in the user config"
    " directory). Exit 1 with --fail-on SEVERITY when a finding reaches it, 0 otherwise,"
    " 2 for bad input."
)

_SEVERITIES = ("critical", "high", "medium", "low", "info")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``portside audit``."""
    parser.add_argument(
        "--fail-on",
        choices=_SEVERITIES,
        metavar="SEVERITY",
        help="exit 1 when a finding is at least this severe (critical, high, medium, low, info)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file with [[ignore]] rules (default: audit.toml in the user config dir)",
    )
    parser.add_argument(
        "--no-probe",
        dest="probe",
        action="store_false",
        help="do not probe exposed listeners (no PING to Redis, no protocol probes)",
    )


_GROUPS = (
    ("exposed", "Exposed: reachable from another host"),
    ("unknown", "Firewall verdict unknown: treated as exposed"),
    ("filtered", "Filtered: a firewall drops or rejects packets from outside"),
    ("loopback-only", "Loopback only"),
)


def _rows(findings: list[AuditFinding], *, with_fix: bool) -> list[list[str]]:
    from portside.cli import _render as render

    rows = []
    for f in findings:
        row = [
            f.severity.value,
            render.endpoint_text(f.address, f.port),
            f.proto,
            f.process or "?",
            f.label + (f" ({'; '.join(f.evidence)})" if f.evidence else ""),
            ", ".join(f.reachable_from) or "-",
            f.firewall,
        ]
        if with_fix:
            row.append(f.fix or "")
        rows.append(row)
    return rows


def _print(report: AuditReport, colour: bool) -> None:
    from portside.cli import _render as render

    headers = ["SEVERITY", "ADDRESS", "PROTO", "PROCESS", "SERVICE", "REACHABLE FROM", "FIREWALL"]
    shown = False
    for verdict, title in _GROUPS:
        group = [f for f in report.findings if f.verdict.value == verdict]
        if not group:
            continue
        if shown:
            render.print_lines([""])
        with_fix = verdict in ("exposed", "unknown")
        render.print_table(
            title,
            [*headers, "FIX"] if with_fix else headers,
            _rows(group, with_fix=with_fix),
            colour=colour,
        )
        shown = True
    if not shown:
        render.print_lines(["nothing is listening"])
    notes = [f"firewall read from: {', '.join(report.firewall_sources) or 'no rules found'}"]
    notes += [f"could not read: {error}" for error in report.firewall_errors]
    if report.ignored:
        notes.append(f"{len(report.ignored)} finding(s) ignored by the config file")
    render.print_lines(["", *notes])


def run_audit(options: argparse.Namespace) -> int:
    from pathlib import Path

    from portside.audit import audit
    from portside.audit_config import load_config
    from portside.cli import _render as render
    from portside.errors import ExitCode
    from portside.models import Severity

    ignore = load_config(Path(options.config) if options.config else None)
    report = audit(probe=options.probe, ignore=ignore, backend_name=options.backend)
    if options.json:
        render.print_json("audit", report)
    else:
        _print(report, render.use_colour(options.no_color))
    if options.fail_on and report.at_least(Severity(options.fail_on)):
        return ExitCode.NEGATIVE
    return ExitCode.OK
