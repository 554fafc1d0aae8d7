"""Which processes hold a socket, on Linux: ``/proc/PID/fd/N -> socket:[INODE]``.

The kernel does not say which process holds a socket; the only way is to read the fd
tables, which is what ``ss -p`` and ``lsof`` do for *every* process. We read fewer:

* A socket's uid is the (fs)uid of the process that created it. A socket of a non-root
  user is first looked for in that user's processes (``/proc/PID`` belongs to the
  process's uid).
* A socket's cgroup v2 id is the inode of the cgroup directory of its creator. When the
  kernel gave one (netlink) and it is not the root cgroup, the socket is first looked
  for in the processes of that cgroup (``0::/path`` in ``/proc/PID/cgroup``, resolved
  under the cgroup2 mount).
* Reading a process's fds stops as soon as every socket it could matter for was found.

Narrowing is a search order, not a verdict: a socket not found among its likely holders
is looked for in every other process before it is called not visible (fds can be passed
over unix sockets, inherited across setuid, or outlive a cgroup move). The one thing the
narrowing can miss is a *further* holder outside the likely set when one inside was
found (a socket passed to a process of another user or cgroup and still open in its
creator); we accept that for a scan that reads a few processes instead of all.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

from portside.models import Owner, OwnerStatus, ProcessInfo, SocketEntry, SocketState

assert sys.platform == "linux"  # noqa: S101 -- mypy skips this module on other platforms

_PROC = "/proc"
_FD_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
#: Above this many inodes per process, early stopping is left to "all of them found":
#: building a set per process would cost more than it saves.
_EARLY_STOP_LIMIT = 64


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class OwnerScan:
    """The result of a scan: ``holders`` maps each found inode to the pids holding it
    (ascending); ``processes_read`` counts the fd tables read (a process read twice
    counts twice) and ``processes_seen`` the processes listed."""

    holders: dict[int, tuple[int, ...]]
    processes_read: int
    processes_seen: int


def _unescape_mount(path: str) -> str:
    """mountinfo writes space, tab, newline and backslash as ``\\ooo``."""
    if "\\" not in path:
        return path
    return path.encode().decode("unicode_escape").encode("latin-1").decode("utf-8", "replace")


@lru_cache(maxsize=1)
def cgroup2_mount() -> tuple[str, int] | None:
    """(mount point, inode of its root) of the cgroup v2 hierarchy, or None.

    Only a mount of the hierarchy's root ("/") is used: the paths in
    ``/proc/PID/cgroup`` are relative to it.
    """
    try:
        with open(f"{_PROC}/self/mountinfo") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    for line in lines:
        head, separator, tail = line.partition(" - ")
        fields = head.split()
        if not separator or len(fields) < 5 or not tail.startswith("cgroup2 "):
            continue
        if fields[3] != "/":
            continue
        mount_point = _unescape_mount(fields[4])
        try:
            return mount_point, os.stat(mount_point).st_ino
        except OSError:
            continue
    return None


class _CgroupResolver:
    """pid -> inode of its cgroup v2 directory, caching each path's inode."""

    def __init__(self, mount_point: str) -> None:
        self._mount = mount_point
        self._inodes: dict[str, int | None] = {}

    def inode_of(self, pid: int) -> int | None:
        """None when unknown (unreadable, or the cgroup was removed): never a guess."""
        try:
            with open(f"{_PROC}/{pid}/cgroup", "rb") as handle:
                text = handle.read().decode("utf-8", "replace")
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("0::"):
                path = line[3:]
                break
        else:
            return None
        if path not in self._inodes:
            try:
                self._inodes[path] = os.stat(self._mount + path).st_ino
            except OSError:
                self._inodes[path] = None
        return self._inodes[path]


def _pids() -> list[int]:
    return [int(name) for name in os.listdir(_PROC) if name.isdigit()]


def _passing(
    pid: int,
    narrowed: Sequence[tuple[tuple[int | None, int | None], list[int]]],
    resolver: _CgroupResolver | None,
    need_uid: bool,
) -> list[int] | None:
    """The narrowed inodes ``pid`` may hold (its uid and cgroup match, or the cgroup is
    unknown); None when the process is gone."""
    st_uid: int | None = None
    if need_uid:
        try:
            st_uid = os.stat(f"{_PROC}/{pid}").st_uid
        except OSError:
            return None
    extra: list[int] = []
    cgroup_inode: int | None = None
    cgroup_known = False
    for (uid, cgroup), inodes in narrowed:
        if uid is not None and st_uid != uid:
            continue
        if cgroup is not None and resolver is not None:
            if not cgroup_known:
                cgroup_inode = resolver.inode_of(pid)
                cgroup_known = True
            if cgroup_inode is not None and cgroup_inode != cgroup:
                continue
        extra.extend(inodes)
    return extra


def _read_fds(
    pid: int, links: Mapping[str, int], relevant: Sequence[int] | None
) -> tuple[list[int], bool] | None:
    """Inodes of ``links`` among ``pid``'s fds, and whether every fd was read.

    Stops early once every inode in ``relevant`` (all of ``links`` when None) was seen:
    the rest of the table cannot matter. None when the fd table cannot be read (gone, or
    another user's process without root).
    """
    try:
        directory = os.open(f"{_PROC}/{pid}/fd", _FD_DIR_FLAGS)
    except OSError:
        return None
    found: set[int] = set()
    wanted = set(relevant) if relevant is not None else None
    remaining = len(wanted) if wanted is not None else len(links)
    try:
        try:
            names = os.listdir(directory)
        except OSError:
            return None
        for name in names:
            try:
                link = os.readlink(name, dir_fd=directory)
            except OSError:
                continue  # closed meanwhile
            inode = links.get(link)
            if inode is None or inode in found:
                continue
            found.add(inode)
            if wanted is None or inode in wanted:
                remaining -= 1
                if remaining == 0:
                    return list(found), False
    finally:
        os.close(directory)
    return list(found), True


def scan_holders(wanted: Mapping[int, tuple[int | None, int | None]]) -> OwnerScan:
    """The pids holding each socket inode in ``wanted`` (inode -> (uid, cgroup id), either
    None when unknown). Inodes no visible process holds are absent from ``holders``."""
    holders: dict[int, list[int]] = {}
    if not wanted:
        return OwnerScan(holders={}, processes_read=0, processes_seen=0)
    links = {f"socket:[{inode}]": inode for inode in wanted}
    mount = cgroup2_mount()

    # Partition the inodes by what narrows them: (uid or None, cgroup inode or None).
    groups: dict[tuple[int | None, int | None], list[int]] = {}
    for inode, (uid, cgroup_id) in wanted.items():
        uid_key = uid if uid else None  # root's sockets may be held by anyone
        cgroup_key = (
            cgroup_id if mount is not None and cgroup_id and cgroup_id != mount[1] else None
        )
        groups.setdefault((uid_key, cgroup_key), []).append(inode)
    free = groups.pop((None, None), [])
    narrowed = list(groups.items())
    resolver = _CgroupResolver(mount[0]) if mount is not None else None
    need_uid = any(uid is not None for (uid, _cgroup), _inodes in narrowed)

    pids = _pids()
    complete: set[int] = set()
    unreadable: set[int] = set()
    reads = 0

    def record(pid: int, found: Iterable[int]) -> None:
        for inode in found:
            holders.setdefault(inode, []).append(pid)

    # Phase 1: each process is read for the un-narrowed inodes plus those whose
    # narrowing it passes; the others wait for phase 2.
    for pid in pids:
        relevant: list[int] | None = None
        if narrowed:
            extra = _passing(pid, narrowed, resolver, need_uid)
            if extra is None:
                unreadable.add(pid)
                continue  # exited
            if not extra and not free:
                continue
            if len(free) + len(extra) <= _EARLY_STOP_LIMIT:
                relevant = free + extra
        reads += 1
        result = _read_fds(pid, links, relevant)
        if result is None:
            unreadable.add(pid)
            continue
        found, whole = result
        record(pid, found)
        if whole:
            complete.add(pid)

    # Phase 2: narrowed inodes nobody likely held are looked for everywhere else.
    missing = [inode for _key, inodes in narrowed for inode in inodes if inode not in holders]
    if missing:
        missing_links = {f"socket:[{inode}]": inode for inode in missing}
        for pid in pids:
            if pid in complete or pid in unreadable:
                continue
            reads += 1
            result = _read_fds(pid, missing_links, None)
            if result is not None:
                record(pid, result[0])
    return OwnerScan(
        holders={inode: tuple(sorted(pids_)) for inode, pids_ in holders.items()},
        processes_read=reads,
        processes_seen=len(pids),
    )


def _needs_lookup(entry: SocketEntry) -> bool:
    return entry.owner_status is OwnerStatus.NOT_LOOKED_UP


def attach_owners(entries: Sequence[SocketEntry]) -> list[SocketEntry]:
    """``entries`` with ``owners`` and ``owner_status`` filled in (identity and ancestors
    are left for the layer above). Entries that already have an owner status are kept."""
    wanted: dict[int, tuple[int | None, int | None]] = {}
    for entry in entries:
        if _needs_lookup(entry) and entry.state is not SocketState.TIME_WAIT and entry.inode:
            wanted[entry.inode] = (entry.uid, entry.cgroup_id)
    holders = scan_holders(wanted).holders
    from portside.processes import process_info

    infos: dict[int, ProcessInfo | None] = {}
    result: list[SocketEntry] = []
    for entry in entries:
        if not _needs_lookup(entry):
            result.append(entry)
            continue
        if entry.state is SocketState.TIME_WAIT or entry.inode == 0:
            result.append(dataclasses.replace(entry, owner_status=OwnerStatus.KERNEL))
            continue
        owners: list[Owner] = []
        for pid in holders.get(entry.inode or 0, ()):
            if pid not in infos:
                infos[pid] = process_info(pid)
            info = infos[pid]
            if info is not None:  # exited since the scan: it holds nothing any more
                owners.append(Owner(process=info, identity=None))
        status = OwnerStatus.FOUND if owners else OwnerStatus.NOT_VISIBLE
        result.append(dataclasses.replace(entry, owner_status=status, owners=tuple(owners)))
    return result
