"""``portside doctor [TARGET]``."""

from __future__ import annotations

import argparse

from portside.cli import _render as render
from portside.diagnosis import doctor
from portside.errors import ExitCode
from portside.models import Finding


def _finding_lines(finding: Finding, *, lead: str) -> list[str]:
    lines = [f"{lead}{finding.code} ({finding.severity.value}): {finding.title}"]
    lines.extend(f"    seen: {line}" for line in finding.evidence if line)
    lines.extend(f"    fix:  {line}" for line in finding.fix)
    return lines


def run_doctor(options: argparse.Namespace) -> int:
    result = doctor(
        options.target,
        timeout=options.timeout,
        namespaces=options.namespaces,
        backend_name=options.backend,
    )
    if options.json:
        render.print_json("doctor", result)
    else:
        lines = _finding_lines(result.verdict, lead="verdict: ")
        if result.findings:
            lines.append("")
            lines.append("also:")
            for finding in result.findings:
                lines.extend(_finding_lines(finding, lead="  "))
        render.print_lines(lines)
    return ExitCode.OK if result.ok else ExitCode.NEGATIVE
