"""Everything the CLI writes to the terminal goes through here.

JSON for machines (the one encoder, ``models.json_document``); tables for people, drawn
with rich on a colour terminal and as plain aligned text otherwise (pipes, NO_COLOR),
from the same rows.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

from portside.models import json_document, write_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from portside.models import Container, Hint, Owner, SocketEntry

Row = Sequence[str]


def print_json(kind: str, payload: object) -> None:
    """One JSON document: indented on a terminal, compact in a pipe (written as it is
    made by models.write_json: the same text json.dumps gives, without building the
    document, in chunks)."""
    if sys.stdout.isatty():
        import json

        sys.stdout.write(json.dumps(json_document(kind, payload), indent=2) + "\n")
    else:
        write_json(kind, payload, sys.stdout.write)
        sys.stdout.write("\n")


def write_all(text: str) -> None:
    """Write *text* to stdout in full, going past partial writes.

    After a uvloop run has ended, a blocking write to a pipe whose reader is slow can
    return after 64 KiB, and sys.stdout then loses the rest silently (reproduced with a
    bare ``uvloop.run``; the stock loop does not do it): big output written after a
    server stops (``forward --stats``) goes through here."""
    sys.stdout.flush()
    data = memoryview(text.encode())
    while data:
        data = data[os.write(sys.stdout.fileno(), data) :]


def use_colour(no_color: bool) -> bool:
    """Colour only on a terminal, never with ``--no-color`` or ``NO_COLOR`` set."""
    return not no_color and "NO_COLOR" not in os.environ and sys.stdout.isatty()


def print_table(title: str | None, headers: Row, rows: Sequence[Row], *, colour: bool) -> None:
    """A table: rich on a colour terminal, plain aligned columns otherwise."""
    if colour:
        from rich.console import Console
        from rich.table import Table

        table = Table(
            title=title, title_justify="left", title_style="bold", header_style="bold cyan"
        )
        for header in headers:
            table.add_column(header, overflow="fold")
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    sys.stdout.write("".join(f"{line}\n" for line in table_lines(title, headers, rows)))


def table_lines(title: str | None, headers: Row, rows: Sequence[Row]) -> list[str]:
    """The plain table: aligned columns, the title (if any) above."""
    lines = []
    if title:
        lines.append(title)
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    for row in (headers, *rows):
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return lines


def print_lines(lines: Sequence[str]) -> None:
    sys.stdout.write("".join(f"{line}\n" for line in lines))


def print_hints(hints: Sequence[Hint]) -> None:
    if not hints:
        return
    lines = ["", "hints:"]
    for hint in hints:
        fix = f"  -> {hint.fix}" if hint.fix else ""
        lines.append(f"  ! {hint.message}{fix}")
    print_lines(lines)


def endpoint_text(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def owner_text(entry: SocketEntry) -> str:
    """``nginx[123]`` (several joined), or why there is no owner."""
    if entry.owners:
        return ",".join(f"{o.process.name}[{o.process.pid}]" for o in entry.owners)
    return {
        "not-visible": "(not visible)",
        "kernel": "(kernel)",
        "not-looked-up": "-",
    }.get(entry.owner_status, "-")


def identity_text(owner: Owner) -> str:
    identity = owner.identity
    if identity is None:
        return ""
    text = identity.label
    if identity.target:
        text += f" -> {identity.target}"
    if identity.project_dir:
        text += f" ({identity.project_dir})"
    return text


def container_text(container: Container) -> str:
    """``container web:80 (image nginx:1.25, compose shop)``."""
    port = f":{container.container_port}" if container.container_port is not None else ""
    about = [f"image {container.image}"]
    if container.compose_project:
        about.append(f"compose {container.compose_project}")
    return f"container {container.name}{port} ({', '.join(about)})"


def what_text(entry: SocketEntry) -> str:
    """What the first owner is; for a container's port forwarder, the container."""
    for owner in entry.owners[:1]:
        if owner.container is not None and owner.identity is not None:
            return f"{container_text(owner.container)} via {owner.identity.kind}"
        return identity_text(owner)
    return ""


def user_text(entry: SocketEntry) -> str:
    users = {o.process.user for o in entry.owners if o.process.user}
    if users:
        return ",".join(sorted(users))
    if entry.uid is None:
        return ""
    from portside.processes import user_name

    return user_name(entry.uid)


def netns_text(entry: SocketEntry) -> str:
    if entry.netns is None or entry.netns.is_current:
        return ""
    return entry.netns.name


def socket_row(entry: SocketEntry, *, with_state: bool) -> list[str]:
    row = [entry.transport.value, endpoint_text(entry.local.ip, entry.local.port)]
    if with_state:
        row.append(entry.state.value)
        row.append(endpoint_text(entry.remote.ip, entry.remote.port) if entry.remote else "")
    row.extend([owner_text(entry), user_text(entry), what_text(entry), netns_text(entry)])
    return row


def socket_headers(*, with_state: bool) -> list[str]:
    headers = ["PROTO", "LOCAL"]
    if with_state:
        headers.extend(["STATE", "REMOTE"])
    headers.extend(["PROCESS", "USER", "WHAT", "NETNS"])
    return headers


def since_text(start_time: float | None) -> str:
    if start_time is None:
        return "?"
    seconds = max(0, int(time.time() - start_time))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    if seconds < 172800:
        return f"{seconds // 3600}h ago"
    return f"{seconds // 86400}d ago"
