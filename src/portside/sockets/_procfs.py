"""The Linux fallback: the socket table from ``/proc/net/{tcp,tcp6,udp,udp6}``.

Slower than netlink (the kernel formats every socket as text and we filter in Python)
and it knows less: no backlog, no v6only, no cgroup, no bound device, and bound-only TCP
sockets are missing (the file walks only the listening and established hashes). The
parsing is in :mod:`portside.procfs`; this class only opens files.
"""

from __future__ import annotations

import sys

from portside.errors import AccessDeniedError, BackendUnavailableError
from portside.models import Family, NetNamespace, SocketEntry
from portside.procfs import PROC_NET_FILES, parse_proc_net
from portside.sockets._backend import SocketQuery

assert sys.platform == "linux"  # noqa: S101 -- mypy skips this module on other platforms


def _matches(entry: SocketEntry, query: SocketQuery) -> bool:
    if query.port is not None and entry.local.port != query.port:
        return False
    return query.states is None or entry.state in query.states


def read_entries(
    query: SocketQuery, net_dir: str, netns: NetNamespace | None = None
) -> list[SocketEntry]:
    """The sockets listed under ``net_dir`` (``/proc/net``, ``/proc/PID/net`` …) that
    match ``query``, labelled with ``netns``."""
    entries: list[SocketEntry] = []
    for (transport, family), filename in PROC_NET_FILES.items():
        if transport not in query.transports:
            continue
        path = f"{net_dir}/{filename}"
        try:
            with open(path, "rb") as handle:
                text = handle.read().decode("ascii", "replace")
        except FileNotFoundError:
            if family is Family.IPV6:
                continue  # IPv6 is disabled on this machine
            raise
        except PermissionError as error:
            raise AccessDeniedError(path) from error
        try:
            parsed = parse_proc_net(text, transport, family, netns=netns)
        except ValueError as error:
            raise BackendUnavailableError("procfs", f"{path}: {error}") from error
        entries.extend(entry for entry in parsed if _matches(entry, query))
    return entries


class ProcfsBackend:
    """/proc/net text files, filtered in Python."""

    name = "procfs"

    def __init__(self, proc: str = "/proc") -> None:
        self._proc = proc

    def is_available(self) -> bool:
        import os

        return os.path.exists(f"{self._proc}/net/tcp")

    def entries(self, query: SocketQuery) -> list[SocketEntry]:
        return read_entries(query, f"{self._proc}/net")

    def entries_in_namespace(
        self, namespace: NetNamespace, pid: int | None, query: SocketQuery
    ) -> list[SocketEntry]:
        if namespace.is_current:
            return read_entries(query, f"{self._proc}/net", namespace)
        from portside.sockets._namespaces import NamespaceGoneError, run_in_namespace

        # /proc/thread-self/net is the namespace of the reading thread: enter the
        # namespace in a thread and read there (this also covers named namespaces
        # without any process, which /proc/PID/net cannot reach).
        try:
            return run_in_namespace(
                namespace,
                pid,
                lambda: read_entries(query, f"{self._proc}/thread-self/net", namespace),
            )
        except NamespaceGoneError:
            return []
