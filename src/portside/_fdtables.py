"""Reading processes' fd tables and network namespaces from ``/proc``, at the lowest
level, and an early full read (the *prescan*) that runs while the command starts.

Everything here imports only ``os`` and ``sys`` (``array`` and ``signal`` when asked),
so that :func:`start_prescan` can run before portside imports its data model. The
owner lookup (:mod:`portside.sockets._owners`) and the namespace discovery
(:mod:`portside.sockets._namespaces`) are built on these functions.

The prescan: when every fd table on the machine will probably have to be read (as root
on a machine with many processes, where a root socket in the root cgroup narrows
nothing), ``portside ls`` and the overview fork one reader at start-up. It lists every
process's network namespace, then reads every fd table for every socket, and sends both
back through a pipe, while the command imports, asks the kernel for its sockets and
reads the kernel's settings on the other CPU. A command that finds it can narrow its
search (every wanted socket has a uid or a cgroup that says where to look) ends the
reader unread (:func:`end_prescan`). The reader's answer is a snapshot, as
``ss -p``'s is: a socket made after its holder's table was read shows no owner.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

PROC = "/proc"
DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
#: b"0", b"1", b"2" …: the fd names, made once (thousands of fds are read per scan).
#: Names and links are bytes: os.readlink then neither encodes the one nor decodes the
#: other (a third of its cost in Python).
FD_NAMES = [str(number).encode() for number in range(256)]
#: Fewer processes than this are read by one reader: a fork would cost more than it saves.
PARALLEL_MIN_PROCESSES = 200
_WORD = "q"  # what readers send back: signed 64-bit words


def fd_names(count: int) -> list[bytes]:
    """:data:`FD_NAMES`, extended to at least ``count`` names."""
    if count > len(FD_NAMES):
        FD_NAMES.extend(str(number).encode() for number in range(len(FD_NAMES), count))
    return FD_NAMES


_counts_supported: list[bool] = []  # the answer, once known


def fd_counts_supported() -> bool:
    """Whether this kernel reports the number of open fds as the size of /proc/PID/fd
    (Linux 6.2+). The fd opened to ask is itself open, so the answer is never 0 there."""
    if not _counts_supported:
        try:
            directory = os.open(f"{PROC}/self/fd", DIRECTORY_FLAGS)
        except OSError:
            return False
        try:
            _counts_supported.append(os.fstat(directory).st_size > 0)
        finally:
            os.close(directory)
    return _counts_supported[0]


def process_ids() -> list[int]:
    """Every pid in ``/proc``."""
    return [int(name) for name in os.listdir(PROC) if name.isdigit()]  # noqa: PTH208


def socket_inode(link: bytes) -> int | None:
    """The inode of an fd link text ``socket:[INODE]``; None for any other link."""
    if link[:8] == b"socket:[" and link[-1:] == b"]":
        digits = link[8:-1]
        if digits.isdigit():
            return int(digits)
    return None


def read_fds(
    directory: int,
    count: int | None,
    lookup: Callable[[bytes], int | None],
    total: int,
    relevant: Sequence[int] | None,
) -> tuple[list[int], bool] | None:
    """The inodes ``lookup`` gives for the fds in ``directory`` (an open
    ``/proc/PID/fd``), and whether every fd was read.

    ``count`` is the number of open fds when known: then fds 0, 1, 2 … are read by number
    and the directory is listed only after a gap. Stops early once every inode in
    ``relevant`` was seen, or (``relevant`` None) once ``total`` different inodes were:
    the rest of the table cannot matter (a negative ``total`` never stops). None when the
    fd table cannot be read (gone, or another user's process).
    """
    readlink = os.readlink
    found: set[int] = set()
    wanted = set(relevant) if relevant is not None else None
    remaining = len(wanted) if wanted is not None else total

    def last_needed(inode: int) -> bool:
        """Note a new inode; whether it was the last one the table could matter for."""
        nonlocal remaining
        found.add(inode)
        if wanted is None or inode in wanted:
            remaining -= 1
            return remaining == 0
        return False

    names: Iterable[str]
    number = -1
    if count is not None:
        name = b"-1"
        try:
            # The per-fd loop of every scan: kept to a call, a lookup and a test.
            for name in (FD_NAMES if count <= len(FD_NAMES) else fd_names(count))[:count]:
                inode = lookup(readlink(name, dir_fd=directory))
                if inode is not None and inode not in found and last_needed(inode):
                    return list(found), False
            return list(found), True
        except FileNotFoundError:
            number = int(name)  # a gap in the fd numbers (or the process ended): list the rest
        except OSError:
            return None  # PermissionError: another user's process, without root
    try:
        names = os.listdir(directory)
    except OSError:
        return (list(found), False) if found else None
    for listed in names:
        if int(listed) <= number:
            continue  # read by number already
        try:
            link = readlink(listed.encode(), dir_fd=directory)
        except FileNotFoundError:
            continue  # closed meanwhile
        except OSError:
            return None
        inode = lookup(link)
        if inode is not None and inode not in found and last_needed(inode):
            return list(found), False
    return list(found), True


def read_tables(
    pids: Iterable[int], lookup: Callable[[bytes], int | None], total: int, counted: bool
) -> tuple[dict[int, list[int]], int]:
    """(inode -> the pids among ``pids`` holding it, fd tables read), each table read
    whole unless ``total`` inodes (see :func:`read_fds`) were found in it."""
    holders: dict[int, list[int]] = {}
    reads = 0
    open_ = os.open
    fstat = os.fstat
    close = os.close
    flags = DIRECTORY_FLAGS
    for pid in pids:
        try:
            directory = open_(f"{PROC}/{pid}/fd", flags)
        except OSError:
            continue  # ended, or another user's process (without root): not visible
        try:
            count = fstat(directory).st_size if counted else None
            if count == 0:
                continue  # no open fds (a kernel thread, a zombie): nothing to read
            reads += 1
            result = read_fds(directory, count, lookup, total, None)
        finally:
            close(directory)
        if result is not None:
            for inode in result[0]:
                found = holders.get(inode)
                if found is None:
                    holders[inode] = [pid]
                else:
                    found.append(pid)
    return holders, reads


def namespace_pids() -> dict[int, int]:
    """Network namespace inode -> the lowest pid inside it, for every process we may see."""
    # One readlink per process, relative to an open /proc and in bytes (neither the path
    # nor the answer converted): the whole cost of this walk is in that loop.
    lowest: dict[bytes, int] = {}
    try:
        proc = os.open(PROC, DIRECTORY_FLAGS)
    except OSError:
        return {}
    readlink = os.readlink
    try:
        for name in os.listdir(PROC.encode()):  # noqa: PTH208
            if not name.isdigit():
                continue
            try:
                link = readlink(name + b"/ns/net", dir_fd=proc)
            except OSError:
                continue  # another user's process (needs root), a kernel thread, or gone
            known = lowest.get(link)
            if known is None or int(name) < known:
                lowest[link] = int(name)
    finally:
        os.close(proc)
    return {
        int(link[5:-1]): pid
        for link, pid in lowest.items()
        if link.startswith(b"net:[") and link.endswith(b"]") and link[5:-1].isdigit()
    }


def only_thread() -> bool:
    """Whether this process runs a single thread: only then may it fork a reader (a fork
    copies the calling thread alone; locks other threads held would stay held)."""
    try:
        return len(os.listdir(f"{PROC}/self/task")) == 1  # noqa: PTH208
    except OSError:
        return False


# -- forked readers ---------------------------------------------------------------------------


def write_words(fd: int, words: Sequence[int]) -> None:
    """``words`` as 64-bit integers, whole, into ``fd``."""
    import array

    data = memoryview(array.array(_WORD, words).tobytes())
    while data:
        data = data[os.write(fd, data) :]


def _read_exactly(fd: int, size: int) -> bytes | None:
    chunks: list[bytes] = []
    while size:
        chunk = os.read(fd, min(size, 1 << 16))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _words(data: bytes) -> list[int] | None:
    import array

    words = array.array(_WORD)
    if len(data) % words.itemsize:
        return None
    words.frombytes(data)
    return words.tolist()


def holders_from_words(words: Sequence[int]) -> tuple[dict[int, list[int]], int]:
    """(inode -> pids, tables read) from a reader's answer: tables read, then inode, pid…"""
    holders: dict[int, list[int]] = {}
    for index in range(1, len(words) - 1, 2):
        found = holders.get(words[index])
        if found is None:
            holders[words[index]] = [words[index + 1]]
        else:
            found.append(words[index + 1])
    return holders, words[0]


def holders_as_words(holders: dict[int, list[int]], reads: int) -> list[int]:
    """The inverse of :func:`holders_from_words`."""
    words = [reads]
    for inode, holding in holders.items():
        for pid in holding:
            words.append(inode)
            words.append(pid)
    return words


def fork_reader(work: Callable[[int], None]) -> tuple[int, int] | None:
    """(child pid, read end of its pipe) of a forked process that runs ``work(write_end)``
    and ends; None when no process could be forked. The child ends with status 0 only
    when ``work`` returned."""
    try:
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
    except OSError:
        return None
    try:
        child = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        return None
    if child == 0:  # pragma: no cover -- the child (coverage does not follow a fork)
        status = 1
        try:
            os.close(read_end)
            work(write_end)
            status = 0
        finally:
            os._exit(status)  # no exit handlers, no buffers flushed: they are the parent's
    os.close(write_end)
    return child, read_end


def collect_rest(child: tuple[int, int]) -> list[int] | None:
    """The words a forked reader has still to send, once it ended; None when it failed."""
    pid, read_end = child
    chunks: list[bytes] = []
    try:
        while chunk := os.read(read_end, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
    data = b"".join(chunks)
    if status != 0 or not data:
        return None
    return _words(data)


# -- the prescan ------------------------------------------------------------------------------


class Prescan:
    """A forked reader of every process's network namespace and socket fds (see the
    module's docstring). Its answers are taken once each, in order: the namespaces, then
    the holders; :meth:`end` kills and reaps it whatever was taken."""

    __slots__ = ("_child", "_namespaces", "processes")

    def __init__(self, child: tuple[int, int], processes: int) -> None:
        self._child: tuple[int, int] | None = child
        self._namespaces: dict[int, int] | None = None
        self.processes = processes

    def namespaces(self) -> dict[int, int] | None:
        """Network namespace inode -> lowest pid (as :func:`namespace_pids`); None when
        the reader failed or was ended."""
        if self._namespaces is None and self._child is not None:
            header = _read_exactly(self._child[1], 8)
            size = _words(header) if header is not None else None
            data = _read_exactly(self._child[1], 16 * size[0]) if size else None
            words = _words(data) if data is not None else None
            if words is None:
                self.end()
                return None
            self._namespaces = {words[i]: words[i + 1] for i in range(0, len(words), 2)}
        return self._namespaces

    def holders(self) -> tuple[dict[int, list[int]], int] | None:
        """(socket inode -> the pids holding it, fd tables read) once the reader ended;
        None when it failed or was ended. Taken once: the reader is reaped then."""
        if self.namespaces() is None or self._child is None:
            return None
        child, self._child = self._child, None
        words = collect_rest(child)
        return holders_from_words(words) if words else None

    def end(self) -> None:
        """Kill and reap the reader, if it still runs."""
        if self._child is None:
            return
        import signal

        pid, read_end = self._child
        self._child = None
        try:  # noqa: SIM105 -- contextlib is not imported on this path
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.close(read_end)
        os.waitpid(pid, 0)


def _prescan_work(pids: list[int], counted: bool) -> Callable[[int], None]:
    def work(fd: int) -> None:  # pragma: no cover -- runs in the forked reader
        namespaces = namespace_pids()
        words = [len(namespaces)]
        for inode, pid in namespaces.items():
            words += (inode, pid)
        write_words(fd, words)
        holders, reads = read_tables(pids, socket_inode, -1, counted)
        write_words(fd, holders_as_words(holders, reads))

    return work


_running: Prescan | None = None


def start_prescan() -> None:
    """Fork the prescan reader, when it is likely to pay: on Linux, as root (every fd
    table is readable, and root's sockets are the ones nothing narrows), with a CPU to
    spare, a single thread, and many processes to read."""
    global _running
    if _running is not None or sys.platform != "linux" or os.geteuid() != 0:
        return
    from portside._taskiter import known_to_work

    if known_to_work():
        return  # the kernel's task iterators will answer, in a fraction of the time
    try:
        if len(os.sched_getaffinity(0)) < 2 or not only_thread():
            return
        pids = process_ids()
    except OSError:
        return
    if len(pids) < PARALLEL_MIN_PROCESSES:
        return
    child = fork_reader(_prescan_work(pids, fd_counts_supported()))
    if child is not None:
        _running = Prescan(child, len(pids))


def running_prescan() -> Prescan | None:
    """The prescan started by :func:`start_prescan` and not yet ended, if any."""
    return _running


def end_prescan() -> None:
    """End the prescan (killed and reaped if it still runs) and forget it."""
    global _running
    if _running is not None:
        _running.end()
        _running = None
