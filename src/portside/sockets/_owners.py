"""Which processes hold a socket, on Linux: ``/proc/PID/fd/N -> socket:[INODE]``.

The kernel does not say which process holds a socket; the only way is to read the fd
tables, which is what ``ss -p`` and ``lsof`` do for *every* process. We read fewer:

* A socket's uid is the (fs)uid of the process that created it. A socket of a non-root
  user is first looked for in that user's processes (``/proc/PID/fd`` belongs to the
  process's uid).
* A socket's cgroup v2 id is the inode of its creator's cgroup directory. When the
  kernel gave one (netlink) and it is not the root cgroup, the socket is first looked
  for in the processes listed in that directory's ``cgroup.procs`` (found by walking the
  cgroup2 mount: directory entries carry the inode, so no stat is needed).
* Reading a process's fds stops as soon as every socket it could matter for was found;
  a process without fds (kernel threads, zombies) is not read at all. On Linux 6.2+ the
  size of ``/proc/PID/fd`` is the number of open fds, so one stat gives the owner uid
  and the count, and the fds are read by number without listing the directory.
* The fds are read relative to an open ``/proc/PID/fd`` (readlinkat): the kernel walks
  one path component per fd instead of four (about a quarter less kernel time).

Where the kernel can run BPF task iterators for us (as root: :mod:`portside._taskiter`),
none of this is needed: one iterator run lists every holder of every socket, in a few
milliseconds, and the rest of this module is the fallback.

Narrowing is a search order, not a verdict: a socket not found among its likely holders
is looked for in every other process before it is called not visible (fds can be passed
over unix sockets, inherited across setuid, or outlive a cgroup move). What narrowing
can miss is a *further* holder outside the likely set when one inside was found (a
socket passed to a process of another user or cgroup and still open in its creator); we
accept that for a scan that reads a few processes instead of all of them. Sockets of
root in the root cgroup cannot be narrowed: when one is wanted every process is read,
for every wanted socket at once. Such a full scan is shared out among forked readers,
one per CPU (up to four), on a machine with many processes: the reads are system calls
and run in parallel, where threads would wait for each other's interpreter lock. When
the command started a prescan (:mod:`portside._fdtables`: ``ls`` and the overview, as
root), a full scan takes its answer instead, read meanwhile on the other CPU, and a
narrowed one ends it unread.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections import namedtuple
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache

from portside._fdtables import (
    DIRECTORY_FLAGS,
    PARALLEL_MIN_PROCESSES,
    collect_rest,
    end_prescan,
    fd_counts_supported,
    fork_reader,
    holders_as_words,
    holders_from_words,
    only_thread,
    process_ids,
    read_fds,
    read_tables,
    running_prescan,
    write_words,
)
from portside._taskiter import socket_holders
from portside.models import (
    Owner,
    OwnerStatus,
    ProcessInfo,
    SocketEntry,
    SocketState,
    assemble,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple

assert sys.platform == "linux"  # noqa: S101 -- mypy skips this module on other platforms

_PROC = "/proc"
#: Above this many inodes per process, early stopping is left to "all of them found":
#: building a set per process would cost more than it saves.
_EARLY_STOP_LIMIT = 64


if TYPE_CHECKING:

    class OwnerScan(NamedTuple):
        """The result of a scan: ``holders`` maps each found inode to the pids holding it
        (ascending); ``processes_read`` counts the fd tables read (a process read twice
        counts twice) and ``processes_seen`` the processes listed (when the kernel's
        task iterators answered: none read, and the processes holding a socket)."""

        holders: dict[int, tuple[int, ...]]
        processes_read: int
        processes_seen: int

else:
    # The same without typing.NamedTuple's import-time cost; the class above is what
    # type checkers see.
    OwnerScan = namedtuple("OwnerScan", "holders processes_read processes_seen")


def _unescape_mount(path: str) -> str:
    """mountinfo writes space, tab, newline and backslash as ``\\ooo``."""
    if "\\" not in path:
        return path
    return path.encode().decode("unicode_escape").encode("latin-1").decode("utf-8", "replace")


@lru_cache(maxsize=1)
def cgroup2_mount() -> tuple[str, int] | None:
    """(mount point, inode of its root) of the cgroup v2 hierarchy, or None.

    Only a mount of the hierarchy's root ("/") is used, so that a cgroup id found under
    it is the whole story.
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


def _cgroup_directories(mount_point: str, wanted: set[int]) -> dict[int, str]:
    """cgroup id -> directory, for the ids in ``wanted`` (a walk of the cgroup2 tree;
    the directory entries' inodes are the cgroup ids)."""
    found: dict[int, str] = {}
    stack = [mount_point]
    while stack and len(found) < len(wanted):
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue  # removed meanwhile
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if entry.inode() in wanted:
                    found[entry.inode()] = entry.path
                stack.append(entry.path)
    return found


def _cgroup_members(mount_point: str, cgroup_ids: set[int]) -> dict[int, frozenset[int]]:
    """cgroup id -> the pids in it, for the ids whose ``cgroup.procs`` could be read.
    An id missing from the answer cannot narrow anything (removed, or threaded)."""
    members: dict[int, frozenset[int]] = {}
    for cgroup_id, directory in _cgroup_directories(mount_point, cgroup_ids).items():
        try:
            with open(f"{directory}/cgroup.procs", "rb") as handle:
                members[cgroup_id] = frozenset(int(line) for line in handle.read().split())
        except (OSError, ValueError):
            continue
    return members


def _links(inodes: Iterable[int]) -> dict[bytes, int]:
    """The fd link text of each socket inode (``socket:[INODE]``, as bytes) -> inode."""
    return {b"socket:[%d]" % inode: inode for inode in inodes}


def _open_fds(pid: int) -> int | None:
    """An fd of ``/proc/PID/fd`` (the fds are then read relative to it, which spares the
    kernel a path walk per fd), or None when the process ended or is not ours to read."""
    try:
        return os.open(f"{_PROC}/{pid}/fd", DIRECTORY_FLAGS)
    except OSError:
        return None


_Group = tuple[int | None, frozenset[int] | None, list[int]]


def scan_holders(
    wanted: Mapping[int, tuple[int | None, int | None]], *, table_read: float | None = None
) -> OwnerScan:
    """The pids holding each socket inode in ``wanted`` (inode -> (uid, cgroup id), either
    None when unknown). Inodes no visible process holds are absent from ``holders``.
    ``table_read``: when (``time.monotonic``) the table naming them was read, if known
    (portside._taskiter.socket_holders)."""
    holders: dict[int, list[int]] = {}
    if not wanted:
        return OwnerScan(holders={}, processes_read=0, processes_seen=0)
    iterated = socket_holders(wanted.keys(), table_read=table_read)  # from the kernel
    if iterated is not None:
        end_prescan()
        every, holding = iterated
        return OwnerScan(
            holders={inode: tuple(every[inode]) for inode in wanted if inode in every},
            processes_read=0,
            processes_seen=holding,
        )
    links = _links(wanted)

    # What narrows each inode: a non-root uid, a cgroup (other than the root) whose
    # members we can list.
    mount = cgroup2_mount()
    cgroup_ids = {c for _, c in wanted.values() if c and mount is not None and c != mount[1]}
    members = _cgroup_members(mount[0], cgroup_ids) if mount is not None and cgroup_ids else {}
    keyed: dict[tuple[int | None, int | None], list[int]] = {}
    free: list[int] = []
    for inode, (uid, cgroup_id) in wanted.items():
        # Root's sockets may be held by anyone; an unknown uid narrows nothing either.
        if not uid and cgroup_id not in members:
            free.append(inode)
        else:
            cgroup_key = cgroup_id if cgroup_id in members else None
            keyed.setdefault((uid or None, cgroup_key), []).append(inode)
    narrowed: list[_Group] = [
        (uid, None if cgroup_id is None else members[cgroup_id], inodes)
        for (uid, cgroup_id), inodes in keyed.items()
    ]

    prescan = running_prescan()
    if free or not narrowed:
        # A socket nothing narrows is looked for in every process: every table is read
        # anyway, for all of them at once (and in parallel where that pays), or was
        # read already by the prescan.
        taken = prescan.holders() if prescan is not None else None
        end_prescan()
        if prescan is not None and taken is not None:
            every, tables_read = taken
            return OwnerScan(
                holders={inode: tuple(sorted(every[inode])) for inode in wanted if inode in every},
                processes_read=tables_read,
                processes_seen=prescan.processes,
            )
        return _scan_every_process(process_ids(), links, fd_counts_supported())
    end_prescan()  # narrowed: a few tables to read, not every one
    counted = fd_counts_supported()
    pids = process_ids()
    complete: set[int] = set()
    skipped: set[int] = set()  # gone or unreadable
    reads = 0
    open_fds = _open_fds
    close = os.close

    # Groups narrowed by uid alone concern every process; the others, their cgroups' only.
    everyone = [g for g in narrowed if g[1] is None]
    by_cgroup = [(g[1], g) for g in narrowed if g[1] is not None]

    # Phase 1: each process is read for the inodes whose narrowing it passes; the others
    # wait for phase 2.
    for pid in pids:
        groups = (
            everyone + [g for inside, g in by_cgroup if pid in inside] if by_cgroup else everyone
        )
        if not groups:
            continue  # in none of the cgroups: not even a stat
        try:
            status = os.stat(f"{_PROC}/{pid}/fd")  # owner: the process's uid
        except OSError:
            skipped.add(pid)
            continue  # ended
        owner = status.st_uid
        extra = [inodes for uid, _cgroup, inodes in groups if uid is None or uid == owner]
        if not extra:
            continue
        count = status.st_size if counted else None
        if count == 0:
            complete.add(pid)  # no open fds: nothing to read
            continue
        directory = open_fds(pid)
        reads += 1
        if directory is None:
            skipped.add(pid)
            continue
        try:
            # The inodes this process is read for, when few enough to stop early on.
            relevant = (
                [inode for inodes in extra for inode in inodes]
                if sum(map(len, extra)) <= _EARLY_STOP_LIMIT
                else None
            )
            result = read_fds(directory, count, links.get, len(links), relevant)
        finally:
            close(directory)
        if result is None:
            skipped.add(pid)
            continue
        found, whole = result
        for inode in found:
            holders.setdefault(inode, []).append(pid)
        if whole:
            complete.add(pid)

    # Phase 2: narrowed inodes nobody likely held are looked for everywhere else.
    missing = [inode for _u, _c, inodes in narrowed for inode in inodes if inode not in holders]
    if missing:
        missing_links = _links(missing)
        for pid in pids:
            if pid in complete or pid in skipped:
                continue
            reads += 1
            directory = open_fds(pid)
            if directory is None:
                continue
            try:
                result = read_fds(directory, None, missing_links.get, len(missing_links), None)
            finally:
                close(directory)
            if result is not None:
                for inode in result[0]:
                    holders.setdefault(inode, []).append(pid)
    return OwnerScan(
        holders={inode: tuple(sorted(pids_)) for inode, pids_ in holders.items()},
        processes_read=reads,
        processes_seen=len(pids),
    )


def _scan_every_process(pids: list[int], links: Mapping[bytes, int], counted: bool) -> OwnerScan:
    """scan_holders when nothing narrows the search (as ``ss -p`` reads): every fd table
    is read, each once, stopping early only in a table once every inode was found. On a
    machine with several CPUs and many processes the tables are shared out among forked
    readers (:func:`_readers`): the reads are system calls, and they run in parallel."""
    pids.sort()
    readers = _readers(len(pids))
    shares = [pids[index::readers] for index in range(readers)]
    total = len(links)

    def read_share(share: list[int]) -> Callable[[int], None]:
        def work(fd: int) -> None:  # pragma: no cover -- runs in the forked reader
            write_words(fd, holders_as_words(*read_tables(share, links.get, total, counted)))

        return work

    children = [fork_reader(read_share(share)) for share in shares[1:]]
    try:
        found, reads = read_tables(shares[0], links.get, total, counted)
    except BaseException:
        for child in children:
            if child is not None:
                collect_rest(child)  # reaped, not left behind
        raise
    for share, child in zip(shares[1:], children, strict=True):
        words = collect_rest(child) if child is not None else None
        # No fork, or the reader failed: its share is read here.
        more, more_reads = (
            holders_from_words(words) if words else read_tables(share, links.get, total, counted)
        )
        reads += more_reads
        for inode, holding in more.items():
            found.setdefault(inode, []).extend(holding)
    holders = {inode: tuple(sorted(holding)) for inode, holding in found.items()}
    return OwnerScan(holders=holders, processes_read=reads, processes_seen=len(pids))


# -- reading in parallel ---------------------------------------------------------------------

_MAX_READERS = 4


def _readers(processes: int) -> int:
    """How many readers share out ``processes`` fd tables: one per CPU we may run on (at
    most four, and at least 100 tables each), and one only when this process runs other
    threads (a fork copies only the calling thread; what the others hold, locks among
    it, would stay held in the child)."""
    if processes < PARALLEL_MIN_PROCESSES:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except OSError:
        return 1
    if cpus < 2 or not only_thread():
        return 1
    return min(cpus, _MAX_READERS, processes // (PARALLEL_MIN_PROCESSES // 2))


def _with_owners(
    entry: SocketEntry, status: OwnerStatus, owners: tuple[Owner, ...] = ()
) -> SocketEntry:
    if type(entry) is not SocketEntry:
        return dataclasses.replace(entry, owner_status=status, owners=owners)
    # The entry's fields with two of them replaced: dataclasses.replace, at a fraction of
    # the cost.
    fields = entry.__dict__.copy()
    fields["owner_status"] = status
    fields["owners"] = owners
    return assemble(SocketEntry, fields)


def attach_owners(
    entries: Sequence[SocketEntry], *, fresh: bool = False, table_read: float | None = None
) -> list[SocketEntry]:
    """``entries`` with ``owners`` and ``owner_status`` filled in (identity and ancestors
    are left for the layer above). Entries that already have an owner status are kept.

    KERNEL: TIME_WAIT, and sockets without an inode (a connection still in an accept
    queue, an orphan closing down). NOT_VISIBLE: no process we may see holds it. Sockets
    held by the same processes share one tuple of owners (records are immutable).
    ``fresh``: the entries were just made by the caller and nobody else holds them yet,
    so they are completed in place instead of copied. ``table_read``: when the entries
    were read from the kernel, if known (see :func:`scan_holders`).
    """
    not_looked_up = OwnerStatus.NOT_LOOKED_UP
    time_wait = SocketState.TIME_WAIT
    wanted: dict[int, tuple[int | None, int | None]] = {}
    for entry in entries:
        if entry.owner_status is not_looked_up and entry.state is not time_wait and entry.inode:
            wanted[entry.inode] = (entry.uid, entry.cgroup_id)
    holders = scan_holders(wanted, table_read=table_read).holders
    from portside.processes import process_info

    infos: dict[int, ProcessInfo | None] = {}
    shared: dict[tuple[int, ...], tuple[tuple[Owner, ...], OwnerStatus]] = {}
    kernel: tuple[tuple[Owner, ...], OwnerStatus] = ((), OwnerStatus.KERNEL)
    result: list[SocketEntry] = []
    append = result.append
    for entry in entries:
        if entry.owner_status is not not_looked_up:
            append(entry)
            continue
        inode = entry.inode
        if entry.state is time_wait or inode == 0:
            owners, status = kernel
        else:
            pids = holders.get(inode or 0, ())
            known = shared.get(pids)
            if known is None:
                found: list[Owner] = []
                for pid in pids:
                    if pid not in infos:
                        infos[pid] = process_info(pid)
                    info = infos[pid]
                    if info is not None:  # ended since the scan: it holds nothing any more
                        found.append(Owner(process=info, identity=None))
                known = shared[pids] = (
                    tuple(found),
                    OwnerStatus.FOUND if found else OwnerStatus.NOT_VISIBLE,
                )
            owners, status = known
        if fresh and type(entry) is SocketEntry:
            # Made by the caller a moment ago and seen by nobody yet: filling the two
            # fields now is making it with them (thousands of entries; no copy).
            fields = entry.__dict__
            fields["owner_status"] = status
            fields["owners"] = owners
            append(entry)
        else:
            append(_with_owners(entry, status, owners))
    return result
