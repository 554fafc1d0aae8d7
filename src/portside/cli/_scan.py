"""``portside scan [HOST] [-p RANGE]``: which TCP ports answer, compared with the socket table.

Importing this module is cheap (argparse only): :func:`add_arguments` may be called while
the parser is built; the scan itself, rendering and rich load when :func:`run_scan` runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from portside.models import SocketEntry
    from portside.scan import OpenPort, ScanResult

DESCRIPTION = (
    "Scan the TCP ports of HOST (default 127.0.0.1; a name is scanned on each of its"
    " addresses; networks and ranges are refused). A SYN scan when run as root (or with"
    " CAP_NET_RAW), a connect scan otherwise. Ports of this machine's addresses are compared"
    " with the socket table: a listener the scan cannot reach (firewall, full accept queue)"
    " or an open port nothing listens on (forwarded) is reported."
    " Exit 0 when the scan completed, 2 for bad input."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``portside scan`` (the same lines may be pasted into cli._parser)."""
    parser.add_argument(
        "host", metavar="HOST", nargs="?", default="127.0.0.1", help="default 127.0.0.1"
    )
    parser.add_argument(
        "-p",
        "--ports",
        metavar="RANGE",
        default="-",
        help="ports such as 1-1024,8080,9000-9100; - is all 65535 (the default)",
    )
    parser.add_argument(
        "--method",
        choices=("auto", "syn", "connect"),
        default="auto",
        help="syn needs root or CAP_NET_RAW; auto (default) uses it when allowed",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="wait for answers after each round of probes (default 0.25 s local, 1 s remote)",
    )
    parser.add_argument(
        "--retries", type=int, default=2, metavar="N", help="re-probe silent ports N times (2)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        metavar="N",
        help="probes in flight at most (default 4096 SYN, 512 connect)",
    )
    parser.add_argument(
        "--identify", action="store_true", help="ask each open port what it speaks (slower)"
    )
    parser.add_argument(
        "--no-cross-check",
        dest="cross_check",
        action="store_false",
        help="do not compare with the socket table",
    )


_METHOD_TEXT = {"syn": "a SYN scan", "connect": "a connect scan"}


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr while the scan runs, only when stderr is a terminal."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        "scanning",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
        auto_refresh=False,  # no refresh thread: the scan forks only when single-threaded
    ) as bar:
        task = bar.add_task("scan", total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)
            bar.refresh()

        yield update


def _owners(listeners: tuple[SocketEntry, ...]) -> str:
    from portside.cli import _render as render

    return ",".join(dict.fromkeys(render.owner_text(entry) for entry in listeners))


def _what(listeners: tuple[SocketEntry, ...]) -> str:
    from portside.cli import _render as render

    return next((text for text in map(render.what_text, listeners) if text), "")


def _row(item: OpenPort, *, with_address: bool, local: bool, identify: bool) -> list[str]:
    from portside.cli import _render as render

    row = [render.endpoint_text(item.ip, item.port)] if with_address else []
    row.extend([f"{item.port}/tcp", "open", item.service or ""])
    if local:
        row.extend([_owners(item.listeners) or "(no listener)", _what(item.listeners)])
    if identify:
        found = item.identification
        row.append(found.summary if found is not None else "")
    return row


def summary_line(result: ScanResult) -> str:
    where = ", ".join(result.addresses)
    if result.addresses != (result.host,):
        where = f"{result.host} ({where})"
    ports = "all ports" if result.ports == "-" else f"ports {result.ports}"
    method = _METHOD_TEXT.get(result.method, str(result.method))
    return (
        f"{where}, {ports} ({result.port_count}), {method} in {result.duration:.2f} s:"
        f" {len(result.open)} open, {result.closed} closed, {len(result.filtered)} filtered"
    )


def print_result(result: ScanResult, *, identify: bool, colour: bool) -> None:
    from portside.cli import _render as render
    from portside.portrange import format_ports

    render.print_lines([summary_line(result), ""])
    with_address = len(result.addresses) > 1
    local = bool(result.cross_checked)
    if result.open:
        headers = ["ADDRESS"] if with_address else []
        headers.extend(["PORT", "STATE", "SERVICE"])
        if local:
            headers.extend(["PROCESS", "WHAT"])
        if identify:
            headers.append("SPEAKS")
        rows = [
            _row(item, with_address=with_address, local=local, identify=identify)
            for item in result.open
        ]
        render.print_table(None, headers, rows, colour=colour)
    else:
        render.print_lines(["no open ports"])
    for ip in result.addresses:
        filtered = [e.port for e in result.filtered if e.ip == ip]
        if filtered:
            prefix = f"{ip}: " if with_address else ""
            render.print_lines([f"{prefix}filtered (no answer): {format_ports(filtered)}"])
    if result.discrepancies:
        lines = ["", "differences from the socket table:"]
        for found in result.discrepancies:
            lines.append(f"  ! {found.message}")
            if found.fix:
                lines.append(f"    -> {found.fix}")
        render.print_lines(lines)
    if result.notes:
        render.print_lines(["", *(f"note: {note}" for note in result.notes)])


def run_scan(options: argparse.Namespace) -> int:
    from portside.cli import _render as render
    from portside.errors import ExitCode
    from portside.portrange import parse_port_ranges
    from portside.scan import scan

    ranges = parse_port_ranges(options.ports)
    ports = ranges[0] if len(ranges) == 1 else [port for r in ranges for port in r]
    with _progress_bar(sys.stderr.isatty()) as progress:
        result = scan(
            options.host,
            ports,
            method=options.method,
            concurrency=options.concurrency,
            timeout=options.timeout,
            retries=options.retries,
            progress=progress,
            cross_check=options.cross_check,
            identify=options.identify,
        )
    if options.json:
        render.print_json("scan", result)
    else:
        print_result(result, identify=options.identify, colour=render.use_colour(options.no_color))
    return ExitCode.OK
