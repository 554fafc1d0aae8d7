"""The contract every socket-table backend honours, and the choice of backend."""

from __future__ import annotations

import _thread
import dataclasses
import os
import sys

from portside.errors import UsageError
from portside.models import (
    NetNamespace,
    SocketEntry,
    SocketState,
    Transport,
    methods_compiled_on_first_use,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol as _Protocol
else:
    _Protocol = object  # a Protocol for type checkers; at run time typing is not imported

#: Environment variable that selects a backend (same as the hidden ``--backend`` option).
BACKEND_ENV = "PORTSIDE_BACKEND"
BACKEND_NAMES = ("netlink", "procfs", "psutil")


with methods_compiled_on_first_use():

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class SocketQuery:
        """What to list. ``states`` None means every state; ``port`` filters the local port
        (pushed into the kernel request by the netlink backend)."""

        transports: frozenset[Transport] = frozenset({Transport.TCP, Transport.UDP})
        states: frozenset[SocketState] | None = None
        port: int | None = None


class SocketBackend(_Protocol):
    """What every platform backend provides. Keep it this small."""

    name: str

    def entries(self, query: SocketQuery) -> list[SocketEntry]:
        """Sockets of the current network namespace matching ``query``, without owners
        (``owner_status`` NOT_LOOKED_UP) unless the backend learns owners for free."""

    def entries_in_namespace(
        self, namespace: NetNamespace, pid: int | None, query: SocketQuery
    ) -> list[SocketEntry]:
        """The same for another network namespace (``pid``: one process inside it, if any).

        Raises BackendUnavailableError when this backend cannot look inside namespaces.
        """


class _TableReads(_thread._local):
    """The ends of the socket-table reads made for the tables this thread is gathering
    (``portside.sockets``), innermost last: one list of ``time.monotonic`` moments each."""

    def __init__(self) -> None:
        self.lists: list[list[float]] = []


_TABLE_READS = _TableReads()


def note_table_read(ended: float) -> None:
    """What a backend says as each read of the kernel's socket table ends: ``ended`` is
    when (``time.monotonic``; earlier than now for a dump made as the command started,
    portside._early). The owners of a table read before the task iterators' snapshot
    need no second run of them (portside._taskiter.socket_holders)."""
    lists = _TABLE_READS.lists
    if lists:
        lists[-1].append(ended)


def gather_reads() -> list[float]:
    """A new list that :func:`note_table_read` fills, in this thread, until
    :func:`end_reads`."""
    reads: list[float] = []
    _TABLE_READS.lists.append(reads)
    return reads


def end_reads() -> None:
    """Stop filling the list this thread's latest :func:`gather_reads` made."""
    _TABLE_READS.lists.pop()


def select_backend(name: str | None = None) -> SocketBackend:
    """The backend called ``name`` (or ``$PORTSIDE_BACKEND``), else the best for this platform."""
    name = name or os.environ.get(BACKEND_ENV) or None
    if name is not None and name not in BACKEND_NAMES:
        raise UsageError(
            f"unknown socket backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}"
        )
    if sys.platform == "linux":
        if name in (None, "netlink"):
            from portside.sockets._netlink import NetlinkBackend

            backend = NetlinkBackend()
            if name == "netlink" or backend.is_available():
                return backend
            name = "procfs"
        if name == "procfs":
            from portside.sockets._procfs import ProcfsBackend

            return ProcfsBackend()
    elif name in ("netlink", "procfs"):
        raise UsageError(f"the {name} backend needs Linux; use psutil")
    from portside.sockets._psutil import PsutilBackend

    return PsutilBackend()
