"""Process details: pid -> ProcessInfo, and process trees.

On Linux this reads ``/proc`` directly (cheap, and no psutil import on the fast path);
elsewhere it asks psutil. A process that vanished returns None; a detail we may not see
(another user's cwd) is None, never a guess.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from functools import lru_cache

from portside.models import ProcessInfo, ProcessState

_PROC = "/proc"

_LINUX_STATES = {
    "R": ProcessState.RUNNING,
    "S": ProcessState.SLEEPING,
    "D": ProcessState.DISK_SLEEP,
    "T": ProcessState.STOPPED,
    "t": ProcessState.TRACED,
    "Z": ProcessState.ZOMBIE,
    "X": ProcessState.DEAD,
    "x": ProcessState.DEAD,
    "I": ProcessState.IDLE,
}


def parse_stat(text: str) -> tuple[str, ProcessState, int, int]:
    """``/proc/PID/stat`` -> (comm, state, ppid, start time in clock ticks since boot).

    The comm sits in parentheses and may itself contain spaces and parentheses, so the
    fields are split after the *last* ``)``.
    """
    open_paren = text.index("(")
    close_paren = text.rindex(")")
    comm = text[open_paren + 1 : close_paren]
    fields = text[close_paren + 2 :].split()
    state = _LINUX_STATES.get(fields[0], ProcessState.UNKNOWN)
    return comm, state, int(fields[1]), int(fields[19])


@lru_cache(maxsize=1)
def _boot_time() -> float:
    with open(f"{_PROC}/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    return 0.0


@lru_cache(maxsize=256)
def user_name(uid: int) -> str:
    """The login name for ``uid``, or the number as text when it has none."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC


def _read(path: str) -> str | None:
    # os.open/os.read rather than open(): no buffered file object (nor its fstat, ioctl
    # and lseek) for a file read once, whole, a few times per owner.
    try:
        fd = os.open(path, _READ_FLAGS)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


def _linux_process_info(pid: int) -> ProcessInfo | None:
    base = f"{_PROC}/{pid}"
    stat = _read(f"{base}/stat")
    if stat is None:
        return None
    comm, state, ppid, start_ticks = parse_stat(stat)
    raw_cmdline = _read(f"{base}/cmdline") or ""
    cmdline = tuple(part for part in raw_cmdline.split("\0") if part) if raw_cmdline else ()
    if len(cmdline) == 1 and " " in cmdline[0]:
        # A process that rewrote its title (redis-server, postgres) shows one string.
        cmdline = tuple(cmdline[0].split())
    try:
        uid: int | None = os.stat(base).st_uid
    except OSError:
        uid = None
    try:
        cwd: str | None = os.readlink(f"{base}/cwd")
    except OSError:
        cwd = None  # another user's process, or a zombie
    start = _boot_time() + start_ticks / os.sysconf("SC_CLK_TCK")
    return ProcessInfo(
        pid=pid,
        ppid=ppid or None,
        name=comm,
        cmdline=cmdline,
        user=None if uid is None else user_name(uid),
        uid=uid,
        cwd=cwd,
        start_time=round(start, 2),
        state=state,
    )


def _psutil_process_info(pid: int) -> ProcessInfo | None:
    import psutil

    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            name = proc.name()
            ppid = proc.ppid()
            status = str(proc.status())
            start = proc.create_time()
            try:
                cmdline: tuple[str, ...] = tuple(proc.cmdline())
            except psutil.AccessDenied:
                cmdline = ()
            try:
                user: str | None = proc.username()
            except psutil.AccessDenied:
                user = None
            try:
                cwd: str | None = proc.cwd()
            except psutil.AccessDenied:
                cwd = None
            try:
                uid: int | None = proc.uids().real  # type: ignore[attr-defined,unused-ignore]
            except (AttributeError, psutil.AccessDenied):
                uid = None
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    states = {
        "running": ProcessState.RUNNING,
        "sleeping": ProcessState.SLEEPING,
        "disk-sleep": ProcessState.DISK_SLEEP,
        "stopped": ProcessState.STOPPED,
        "tracing-stop": ProcessState.TRACED,
        "zombie": ProcessState.ZOMBIE,
        "dead": ProcessState.DEAD,
        "idle": ProcessState.IDLE,
    }
    return ProcessInfo(
        pid=pid,
        ppid=ppid or None,
        name=name,
        cmdline=cmdline,
        user=user,
        uid=uid,
        cwd=cwd,
        start_time=round(start, 2),
        state=states.get(status, ProcessState.UNKNOWN),
    )


def process_info(pid: int) -> ProcessInfo | None:
    """Details of ``pid``, or None when it no longer exists."""
    if sys.platform == "linux":
        return _linux_process_info(pid)
    else:
        return _psutil_process_info(pid)


def ancestors(process: ProcessInfo, *, limit: int = 32) -> tuple[ProcessInfo, ...]:
    """The chain of parents of ``process``, nearest first, up to (excluding) pid 1's parent."""
    chain: list[ProcessInfo] = []
    seen = {process.pid}
    ppid = process.ppid
    while ppid and ppid not in seen and len(chain) < limit:
        parent = process_info(ppid)
        if parent is None:
            break
        chain.append(parent)
        seen.add(ppid)
        ppid = parent.ppid
    return tuple(chain)


def all_pids() -> list[int]:
    """Every pid we can see."""
    if sys.platform == "linux":
        return [int(name) for name in os.listdir(_PROC) if name.isdigit()]
    else:
        import psutil

        return psutil.pids()


def processes(pids: Iterable[int]) -> list[ProcessInfo]:
    """Details of every pid that still exists."""
    return [info for info in map(process_info, pids) if info is not None]
