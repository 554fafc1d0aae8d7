"""The portable path: the socket table through ``psutil.net_connections("inet")``.

This is what macOS and Windows use; on Linux it runs too, so the contract tests cover
it. psutil reports one row per (socket, process), so it learns the owners for free;
it knows no uid, inode, queues, v6only or cgroup. psutil is imported only when this
backend is used.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

from portside.addresses import normalise_ip
from portside.errors import AccessDeniedError, BackendUnavailableError
from portside.models import (
    Endpoint,
    Family,
    NetNamespace,
    Owner,
    OwnerStatus,
    ProcessInfo,
    SocketEntry,
    SocketState,
    Transport,
)
from portside.procfs import cached_exposure
from portside.sockets._backend import SocketQuery

#: psutil's status strings (psutil.CONN_*) -> SocketState; UDP is "NONE".
_STATES: dict[str, SocketState] = {
    "ESTABLISHED": SocketState.ESTABLISHED,
    "SYN_SENT": SocketState.SYN_SENT,
    "SYN_RECV": SocketState.SYN_RECV,
    "FIN_WAIT1": SocketState.FIN_WAIT1,
    "FIN_WAIT2": SocketState.FIN_WAIT2,
    "TIME_WAIT": SocketState.TIME_WAIT,
    "CLOSE": SocketState.BOUND,
    "CLOSE_WAIT": SocketState.CLOSE_WAIT,
    "LAST_ACK": SocketState.LAST_ACK,
    "LISTEN": SocketState.LISTEN,
    "CLOSING": SocketState.CLOSING,
}

_Key = tuple[Transport, Family, SocketState, Endpoint, Endpoint | None]


def _ip(text: str) -> str:
    return normalise_ip(text) or text


def _endpoint(address: Any) -> Endpoint | None:
    """psutil's ``addr(ip, port)``, or ``()`` when there is none."""
    if not address:
        return None
    return Endpoint(ip=_ip(address[0]), port=int(address[1]))


def _state(transport: Transport, status: str, remote: Endpoint | None) -> SocketState | None:
    if transport is Transport.UDP:
        return SocketState.UNCONNECTED if remote is None else SocketState.ESTABLISHED
    return _STATES.get(status)


def _owner(pid: int, cache: dict[int, ProcessInfo | None]) -> ProcessInfo | None:
    if pid not in cache:
        from portside.processes import process_info

        cache[pid] = process_info(pid)
    return cache[pid]


def _connections() -> Iterable[Any]:
    import psutil

    try:
        return psutil.net_connections("inet")
    except psutil.AccessDenied as error:
        raise AccessDeniedError("the socket table (psutil needs root here)") from error


class PsutilBackend:
    """psutil.net_connections, grouped into one entry per socket with its processes."""

    name = "psutil"

    def is_available(self) -> bool:
        try:
            import psutil  # noqa: F401 -- only whether it imports
        except ImportError:
            return False
        return True

    def entries(self, query: SocketQuery) -> list[SocketEntry]:
        sockets: dict[_Key, list[int]] = {}
        cache: dict[int, ProcessInfo | None] = {}
        for conn in _connections():
            transport = Transport.TCP if conn.type == socket.SOCK_STREAM else Transport.UDP
            if transport not in query.transports:
                continue
            local = _endpoint(conn.laddr)
            if local is None or (query.port is not None and local.port != query.port):
                continue
            remote = _endpoint(conn.raddr)
            state = _state(transport, conn.status, remote)
            if state is None or (query.states is not None and state not in query.states):
                continue
            family = Family.IPV6 if conn.family == socket.AF_INET6 else Family.IPV4
            # Rows of the same socket held by several processes (a pre-fork server)
            # become one entry with several owners.
            pids = sockets.setdefault((transport, family, state, local, remote), [])
            if conn.pid is not None and conn.pid not in pids:
                pids.append(conn.pid)
        entries: list[SocketEntry] = []
        for (transport, family, state, local, remote), pids in sockets.items():
            owners = tuple(
                Owner(process=info, identity=None)
                for info in (_owner(pid, cache) for pid in sorted(pids))
                if info is not None
            )
            if owners:
                status = OwnerStatus.FOUND
            elif state is SocketState.TIME_WAIT:
                status = OwnerStatus.KERNEL
            else:
                status = OwnerStatus.NOT_VISIBLE
            entries.append(
                SocketEntry(
                    transport=transport,
                    family=family,
                    state=state,
                    local=local,
                    remote=remote,
                    uid=None,
                    inode=None,
                    exposure=cached_exposure(local.ip),
                    owner_status=status,
                    owners=owners,
                )
            )
        return entries

    def entries_in_namespace(
        self, namespace: NetNamespace, pid: int | None, query: SocketQuery
    ) -> list[SocketEntry]:
        raise BackendUnavailableError("psutil", "it cannot look inside other network namespaces")
