"""``portside`` (overview), ``portside ls`` and ``portside who``."""

from __future__ import annotations

from portside.cli import _render as render
from portside.errors import ExitCode
from portside.inspect import SocketFilter, list_sockets, overview, who
from portside.models import SocketEntry, Transport

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse


def run_overview(options: argparse.Namespace) -> int:
    result = overview(namespaces=options.namespaces, backend_name=options.backend)
    if options.json:
        render.print_json("overview", result)
        return ExitCode.OK
    colour = render.use_colour(options.no_color)
    groups = (
        ("Loopback only (this machine)", result.loopback),
        ("Specific address (that interface's networks)", result.specific),
        ("All interfaces (exposed to every network)", result.all_interfaces),
    )
    shown = False
    for title, entries in groups:
        if not entries:
            continue
        if shown:
            render.print_lines([""])
        rows = [render.socket_row(e, with_state=False) for e in entries]
        render.print_table(title, render.socket_headers(with_state=False), rows, colour=colour)
        shown = True
    if not shown:
        render.print_lines(["nothing is listening"])
    render.print_hints(result.hints)
    return ExitCode.OK


def run_ls(options: argparse.Namespace) -> int:
    selection = SocketFilter(
        port=options.port,
        pid=options.pid,
        user=options.user,
        transport=Transport(options.proto) if options.proto else None,
        exposed=options.exposed,
        connections=options.all,
    )
    entries = list_sockets(selection, namespaces=options.namespaces, backend_name=options.backend)
    if options.json:
        render.print_json("sockets", {"sockets": entries})
        return ExitCode.OK
    rows = [render.socket_row(e, with_state=options.all) for e in entries]
    render.print_table(
        None,
        render.socket_headers(with_state=options.all),
        rows,
        colour=render.use_colour(options.no_color),
    )
    return ExitCode.OK


def _socket_block(entry: SocketEntry) -> list[str]:
    local = render.endpoint_text(entry.local.ip, entry.local.port)
    head = f"{entry.transport.value} {local} {entry.state.value}"
    if entry.remote:
        head += f" <-> {render.endpoint_text(entry.remote.ip, entry.remote.port)}"
    extras = [f"exposure {entry.exposure.value}"]
    if entry.v6only is not None and entry.family == "ipv6":
        extras.append("v6only" if entry.v6only else "dual-stack")
    if (
        entry.recv_queue is not None
        and entry.send_queue is not None
        and entry.state.value == "listen"
    ):
        extras.append(f"accept queue {entry.recv_queue}/{entry.send_queue}")
    if entry.netns is not None and not entry.netns.is_current:
        extras.append(f"netns {entry.netns.name}")
    lines = [f"{head}  ({', '.join(extras)})"]
    if not entry.owners:
        lines.append(f"  owner: {render.owner_text(entry)}")
    for owner in entry.owners:
        process = owner.process
        what = render.identity_text(owner)
        lines.append(
            f"  {process.name}[{process.pid}] user {process.user or '?'}, {process.state.value}, started {render.since_text(process.start_time)}"
        )
        if what:
            lines.append(f"    is:  {what}")
        if process.cmdline:
            import shlex

            lines.append(f"    cmd: {shlex.join(process.cmdline)}")
        if process.cwd:
            lines.append(f"    cwd: {process.cwd}")
        if owner.ancestors:
            chain = " <- ".join(f"{p.name}[{p.pid}]" for p in owner.ancestors)
            lines.append(f"    parents: {chain}")
    return lines


def run_who(options: argparse.Namespace) -> int:
    result = who(options.target, namespaces=options.namespaces, backend_name=options.backend)
    if options.json:
        render.print_json("who", result)
    elif not result.sockets:
        where = f"{result.ip}:{result.port}" if result.ip else f"port {result.port}"
        render.print_lines([f"nothing holds {where}"])
    else:
        lines: list[str] = []
        for entry in result.sockets:
            lines.extend(_socket_block(entry))
        render.print_lines(lines)
        render.print_hints(result.hints)
    return ExitCode.OK if result.sockets else ExitCode.NEGATIVE
