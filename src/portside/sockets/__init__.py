"""The kernel socket table: every TCP and UDP socket, its state, and who holds it.

One façade over three backends (:func:`select_backend`): Linux netlink
(``NETLINK_SOCK_DIAG``, the fast path, with the port filter run in the kernel), Linux
procfs (``/proc/net/*``, the fallback) and psutil (macOS, Windows). On Linux the owners
come from the ``/proc/PID/fd`` tables, read only as far as needed
(:mod:`portside.sockets._owners`), and other network namespaces are entered with setns
in a short-lived thread (:mod:`portside.sockets._namespaces`, root needed).

Importing this package is cheap: backends, psutil and ctypes load only when used.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Iterable

from portside.errors import AccessDeniedError, BackendUnavailableError, UsageError
from portside.models import SocketEntry, SocketState, Transport
from portside.sockets._backend import (
    BACKEND_ENV,
    BACKEND_NAMES,
    SocketBackend,
    SocketQuery,
    end_reads,
    gather_reads,
    select_backend,
)

__all__ = [
    "ALL_SOCKETS",
    "BACKEND_ENV",
    "BACKEND_NAMES",
    "SocketBackend",
    "SocketQuery",
    "listeners",
    "port_sockets",
    "select_backend",
    "socket_table",
]

#: The default query: every TCP and UDP socket in every state.
ALL_SOCKETS = SocketQuery()
_BOTH_TRANSPORTS = frozenset({Transport.TCP, Transport.UDP})
_LISTENING = frozenset({SocketState.LISTEN, SocketState.UNCONNECTED})


def _gather(backend: SocketBackend, query: SocketQuery, namespaces: bool) -> list[SocketEntry]:
    """The backend's entries; with ``namespaces`` labelled, plus every other visible
    namespace's (what cannot be entered is skipped quietly). Namespaces are Linux's."""
    if sys.platform == "linux":
        if namespaces:
            return _gather_namespaces(backend, query)
    return backend.entries(query)


if sys.platform == "linux":  # network namespaces are Linux's; mypy skips this elsewhere

    def _gather_namespaces(backend: SocketBackend, query: SocketQuery) -> list[SocketEntry]:
        from portside.sockets._namespaces import current_namespace, other_namespaces

        host = current_namespace()
        if host is None:
            return backend.entries(query)
        try:
            entries = backend.entries_in_namespace(host, None, query)
        except BackendUnavailableError:
            # This backend cannot look into namespaces (psutil): label ours, and stop there.
            return [dataclasses.replace(entry, netns=host) for entry in backend.entries(query)]
        if os.geteuid() != 0:
            return entries  # entering another namespace needs CAP_SYS_ADMIN: do not look
        for namespace, pid in other_namespaces(host):
            try:
                entries.extend(backend.entries_in_namespace(namespace, pid, query))
            except (AccessDeniedError, BackendUnavailableError, OSError):
                continue  # not ours to see (no root), or gone meanwhile
        return entries


def _table(
    query: SocketQuery,
    *,
    owners: bool,
    namespaces: bool,
    backend: SocketBackend | None,
    keep: Callable[[SocketEntry], bool] | None = None,
) -> list[SocketEntry]:
    chosen = backend or select_backend()
    reads = gather_reads()
    try:
        entries = _gather(chosen, query, namespaces)
    finally:
        end_reads()
    if keep is not None:
        entries = [entry for entry in entries if keep(entry)]
    if sys.platform == "linux":
        if owners:
            from portside.sockets._owners import attach_owners

            # Our backends make new entries for every call: completed in place. Entries
            # of a backend from elsewhere may be kept by it, so those are copied.
            ours = type(chosen).__module__.startswith("portside.sockets.")
            # When the table was read, if our backend said so for every read.
            read = max(reads) if ours and reads else None
            entries = attach_owners(entries, fresh=ours, table_read=read)
    return entries


def socket_table(
    query: SocketQuery = ALL_SOCKETS,
    *,
    owners: bool = True,
    namespaces: bool = False,
    backend: SocketBackend | None = None,
) -> list[SocketEntry]:
    """Every socket matching ``query``, in the backend's order.

    ``owners``: look up the processes holding each socket (``owner_status`` says whether
    they could be seen). ``namespaces``: also list the sockets of every other network
    namespace we may enter (root), and label every entry with its ``netns``.
    ``backend``: a backend to use instead of :func:`select_backend`'s choice.

    Raises:
        AccessDeniedError: the OS refused to show the socket table.
        BackendUnavailableError: the chosen backend cannot run here.
    """
    return _table(query, owners=owners, namespaces=namespaces, backend=backend)


def _is_listening(entry: SocketEntry) -> bool:
    if entry.transport is Transport.TCP:
        return entry.state is SocketState.LISTEN
    return entry.state is SocketState.UNCONNECTED


def listeners(
    *,
    transports: Iterable[Transport] = _BOTH_TRANSPORTS,
    owners: bool = True,
    namespaces: bool = True,
    backend: SocketBackend | None = None,
) -> list[SocketEntry]:
    """Listening TCP sockets and unconnected (bound) UDP sockets, sorted by (port, ip,
    transport), from every visible network namespace unless ``namespaces=False``."""
    found = _listeners(transports=transports, owners=owners, namespaces=namespaces, backend=backend)
    found.sort(key=lambda entry: (entry.local.port, entry.local.ip, entry.transport))
    return found


def _listeners(
    *,
    transports: Iterable[Transport] = _BOTH_TRANSPORTS,
    owners: bool = True,
    namespaces: bool = True,
    backend: SocketBackend | None = None,
) -> list[SocketEntry]:
    """:func:`listeners` in the backend's order (for callers that sort anyway)."""
    query = SocketQuery(transports=frozenset(transports), states=_LISTENING)
    return _table(query, owners=owners, namespaces=namespaces, backend=backend, keep=_is_listening)


def _port_order(entry: SocketEntry) -> tuple[str, str, str, str, str, int]:
    remote = entry.remote
    return (
        entry.transport,
        entry.family,
        entry.local.ip,
        entry.state,
        "" if remote is None else remote.ip,
        0 if remote is None else remote.port,
    )


def port_sockets(
    port: int,
    *,
    owners: bool = True,
    namespaces: bool = True,
    backend: SocketBackend | None = None,
) -> list[SocketEntry]:
    """Every socket, in any state, whose local port is ``port`` (the kernel filters when
    the backend can), from every visible network namespace unless ``namespaces=False``.

    Raises:
        UsageError: ``port`` is not 0-65535.
    """
    if not 0 <= port <= 65535:
        raise UsageError(f"port {port} is out of range; ports are 1-65535")
    found = _table(SocketQuery(port=port), owners=owners, namespaces=namespaces, backend=backend)
    found.sort(key=_port_order)
    return found
