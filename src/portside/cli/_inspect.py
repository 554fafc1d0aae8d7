"""``portside`` (overview), ``portside ls`` and ``portside who``."""

from __future__ import annotations

from portside.cli import _render as render
from portside.errors import ExitCode
from portside.inspect import SocketFilter, list_sockets, overview, who
from portside.models import SocketEntry, Transport

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import TypeVar

    _R = TypeVar("_R")


def _replace(record: _R, **changes: object) -> _R:
    import dataclasses

    return dataclasses.replace(record, **changes)  # type: ignore[type-var]


def _forwarded(entries: Sequence[SocketEntry]) -> bool:
    """Whether a container's port forwarder holds one of the sockets (no I/O; the
    containers module is imported only when an owner may be one)."""
    seen: set[int] = set()  # sockets of the same processes share one tuple of owners
    for entry in entries:
        owners = entry.owners
        if not owners or id(owners) in seen:
            continue
        seen.add(id(owners))
        for owner in owners:
            identity = owner.identity
            if identity is not None and (
                identity.kind == "docker-proxy" or identity.kind.startswith("podman-")
            ):
                from portside.containers import needs_engine

                return needs_engine(entries)
    return False


def _with_containers(*groups: Sequence[SocketEntry]) -> list[tuple[SocketEntry, ...]]:
    """Each group with the container behind each forwarder's socket (one Engine API
    listing for all; call it only when :func:`_forwarded`)."""
    from portside.containers import ANNOTATE_TIMEOUT, annotate, published_ports

    ports = published_ports(timeout=ANNOTATE_TIMEOUT, identify=False)
    return [tuple(annotate(group, ports=ports)) for group in groups]


def run_overview(options: argparse.Namespace) -> int:
    result = overview(namespaces=options.namespaces, backend_name=options.backend)
    if (
        _forwarded(result.specific)
        or _forwarded(result.all_interfaces)
        or _forwarded(result.loopback)
    ):
        loopback, specific, everywhere = _with_containers(
            result.loopback, result.specific, result.all_interfaces
        )
        result = _replace(result, loopback=loopback, specific=specific, all_interfaces=everywhere)
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
    if _forwarded(entries):
        [annotated] = _with_containers(entries)
        entries = list(annotated)
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
        container = owner.container
        if container is not None:
            port = (
                ""
                if container.container_port is None
                else f", container port {container.container_port}"
            )
            project = (
                f", compose project {container.compose_project}"
                if container.compose_project
                else ""
            )
            lines.append(
                f"    container: {container.name} ({container.id[:12]}), image {container.image}{project}{port}"
            )
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
    if _forwarded(result.sockets):
        [sockets] = _with_containers(result.sockets)
        result = _replace(result, sockets=sockets)
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
