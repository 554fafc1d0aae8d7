"""Network namespaces: find them, and run code inside one.

A namespace is known by the inode of its ``nsfs`` file. The current one is
``/proc/self/ns/net`` (named "host"); named ones are bind mounts in ``/run/netns``
(``ip netns add``); the others are seen through the processes inside them
(``/proc/PID/ns/net`` reads ``net:[INODE]``). Seeing other users' processes needs root;
what is not visible is skipped quietly.

Python 3.11 has no ``os.setns``, so :func:`run_in_namespace` calls libc's ``setns``
(through :mod:`portside._libc`: ctypes would cost milliseconds to import) in a
short-lived thread (``_thread``, likewise): setns moves only the calling thread,
sockets created there stay in that namespace, and the rest of the process never moves.
"""

from __future__ import annotations

import os
import sys

from portside._fdtables import namespace_pids, running_prescan
from portside._taskiter import namespace_pids as iterated_namespace_pids
from portside.errors import AccessDeniedError
from portside.models import NetNamespace

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    T = TypeVar("T")

assert sys.platform == "linux"  # noqa: S101 -- mypy skips this module on other platforms

_PROC = "/proc"
NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
HOST_NAME = "host"


class NamespaceGoneError(Exception):
    """The namespace (or the process that showed it) no longer exists. Private: the
    backends turn it into "no sockets"."""


def current_namespace() -> NetNamespace | None:
    """The namespace portside runs in, or None when ``/proc`` cannot tell."""
    try:
        inode = os.stat(f"{_PROC}/self/ns/net").st_ino
    except OSError:
        return None
    return NetNamespace(inode=inode, name=HOST_NAME, is_current=True)


def _named_namespaces() -> dict[int, str]:
    """inode -> name of every ``ip netns`` namespace."""
    found: dict[int, str] = {}
    try:
        names = sorted(os.listdir(NETNS_RUN_DIR))
    except OSError:
        return found
    for name in names:
        try:
            inode = os.stat(f"{NETNS_RUN_DIR}/{name}").st_ino
        except OSError:
            continue  # removed meanwhile, or a stale file that is not an nsfs mount
        found.setdefault(inode, name)
    return found


def _comm(pid: int) -> str:
    try:
        with open(f"{_PROC}/{pid}/comm") as handle:
            return handle.read().strip()
    except OSError:
        return "?"


def _namespace_pids() -> dict[int, int]:
    """inode -> the lowest pid inside each namespace we may see: from the prescan when
    one runs (it walked every process already), else from the kernel's task iterator
    where it runs, else a walk of ``/proc``."""
    prescan = running_prescan()
    found = prescan.namespaces() if prescan is not None else None
    if found is None:
        found = iterated_namespace_pids()
    return found if found is not None else namespace_pids()


def other_namespaces(current: NetNamespace | None = None) -> list[tuple[NetNamespace, int | None]]:
    """Every visible network namespace except the current one, with one process inside
    it (None for a named namespace without processes). Named ones first, by name."""
    if current is None:
        current = current_namespace()
    current_inode = current.inode if current is not None else -1
    named = _named_namespaces()
    pids = _namespace_pids()
    result: list[tuple[NetNamespace, int | None]] = []
    for inode, name in sorted(named.items(), key=lambda item: item[1]):
        if inode != current_inode:
            result.append((NetNamespace(inode=inode, name=name, is_current=False), pids.get(inode)))
    for inode, pid in sorted(pids.items(), key=lambda item: item[1]):
        if inode == current_inode or inode in named:
            continue
        name = f"pid:{pid} ({_comm(pid)})"
        result.append((NetNamespace(inode=inode, name=name, is_current=False), pid))
    return result


def _open_namespace(namespace: NetNamespace, pid: int | None) -> int:
    """An fd of ``namespace``'s nsfs file, checked to be that namespace (a pid may have
    been reused, a name re-created). Raises NamespaceGoneError or AccessDeniedError."""
    candidates = [f"{NETNS_RUN_DIR}/{namespace.name}"] if "/" not in namespace.name else []
    if pid is not None:
        candidates.append(f"{_PROC}/{pid}/ns/net")
    denied: str | None = None
    for path in candidates:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except PermissionError:
            denied = path
            continue
        except OSError:
            continue
        if os.fstat(fd).st_ino == namespace.inode:
            return fd
        os.close(fd)
    if denied is not None:
        raise AccessDeniedError(denied)
    raise NamespaceGoneError(namespace.name)


def _setns(fd: int) -> None:
    from portside._libc import last_errno, libc_function

    if libc_function("setns", "i", "ii")(fd, CLONE_NEWNET) != 0:
        error = last_errno()
        if error == 1:  # EPERM: needs CAP_SYS_ADMIN
            raise AccessDeniedError("another network namespace")
        raise OSError(error, os.strerror(error))


def run_in_namespace(namespace: NetNamespace, pid: int | None, function: Callable[[], T]) -> T:
    """``function()`` run by a thread inside ``namespace`` (reached through
    ``/run/netns/NAME`` or ``/proc/PID/ns/net``); its result or exception is passed on.

    Raises AccessDeniedError without the right to enter, NamespaceGoneError when the
    namespace no longer exists.
    """
    import _thread

    fd = _open_namespace(namespace, pid)
    box: dict[str, T] = {}
    failure: list[BaseException] = []
    finished = _thread.allocate_lock()
    finished.acquire()

    def worker() -> None:
        try:
            _setns(fd)
            box["result"] = function()
        except BaseException as error:  # handed to the caller's thread below
            failure.append(error)
        finally:
            finished.release()

    try:
        _thread.start_new_thread(worker, ())
        finished.acquire()  # the thread's end (it ends right after, in its namespace)
    finally:
        os.close(fd)
    if failure:
        raise failure[0]
    return box["result"]
