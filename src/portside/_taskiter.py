"""Which processes hold which sockets, and which network namespace each process is in,
asked of the kernel itself: BPF task iterators, where they can run.

``ss -p`` and ``lsof`` read every process's fd table through ``/proc`` (a ``readlink``
per open file): tens of milliseconds on a busy machine, and most of ``ss -tlnp``'s time.
Linux 5.8+ can instead run a small verified program over every open file of every
process (a *task_file* iterator) and over every task (a *task* iterator), and hand back
what it writes through one ``read``. The two programs (:mod:`portside._bpfprograms`)
write one record per socket (its inode and holder) and one per process (its pid and
network namespace): the same answers as the ``/proc`` walks, in a few milliseconds.

Used only where it can answer for the whole machine: as root (loading the programs
needs CAP_BPF and CAP_PERFMON), in the first pid namespace (the iterators see the pid
namespace they were made in, and give the pids of the first one), on Linux x86-64 or
arm64 with BTF (``/sys/kernel/btf/vmlinux``). ``PORTSIDE_BPF=off`` turns it off. Any
refusal or error falls back to the ``/proc`` walks, silently.

The programs read kernel structures at offsets of this kernel's build, found in its BTF
(:mod:`portside._btf`: reading and walking 5 MB costs about 60 ms). They are kept in a
small cache file per kernel build (``kernel-layout`` in the user's cache directory,
:mod:`portside._usercache`); where no such file can be written the ``/proc`` walks are
used instead. A kernel whose BTF or verifier refuses the programs is remembered there
too, so that it is not asked again.
"""

from __future__ import annotations

import _thread
import os
import sys

ENV = "PORTSIDE_BPF"
BTF_PATH = "/sys/kernel/btf/vmlinux"
CACHE_NAME = "kernel-layout"
_CACHE_VERSION = "1"
_REFUSED = "refused"
_INIT_PID_NAMESPACE = 0xEFFFFFFC  # PROC_PID_INIT_INO: the inode of the first pid namespace
_BPF_SYSCALL = {"x86_64": 321, "aarch64": 280}
_PROG_LOAD, _LINK_CREATE, _ITER_CREATE = 5, 28, 33  # enum bpf_cmd
_PROG_TYPE_TRACING, _TRACE_ITER = 26, 28  # enum bpf_prog_type, enum bpf_attach_type
_EPERM = 1

#: Up to this many sockets are looked for one by one in the iterator's answer, instead of
#: reading all of it.
_FEW_INODES = 64

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection

    from portside._bpfprograms import KernelLayout
    from portside._early import Job

#: The two iterator links once made: [(task_file link fd, task link fd)], or [None]
#: when they cannot be made in this process; empty until first asked.
_links: list[tuple[int, int] | None] = []
_MAKING_LINKS = _thread.allocate_lock()


def usable() -> bool:
    """Whether the iterators may be tried here (see the module's docstring); says
    nothing of whether the kernel will accept them."""
    if sys.platform != "linux" or os.environ.get(ENV, "").lower() in ("off", "0", "no"):
        return False
    if os.geteuid() != 0 or os.uname().machine not in _BPF_SYSCALL:
        return False
    try:
        return os.stat("/proc/self/ns/pid").st_ino == _INIT_PID_NAMESPACE  # noqa: PTH116
    except OSError:
        return False


def known_to_work() -> bool:
    """Whether the iterators may be tried and their layout is already cached for this
    kernel: then a ``/proc`` walk would cost more than asking them (one file read)."""
    return usable() and isinstance(_cached_layout(), tuple)


def socket_holders(
    inodes: Collection[int] | None = None, *, table_read: float | None = None
) -> tuple[dict[int, list[int]], int] | None:
    """(socket inode -> the pids holding it, ascending; how many processes hold a
    socket), for every socket of every process, or for ``inodes`` only; None when the
    iterators cannot run. The early run's answer when one was started (see
    :func:`early_jobs`).

    ``table_read``: when (``time.monotonic``) the reads of the table that named
    ``inodes`` ended, if known. A wanted socket the early answer lacks is looked for
    again in a fresh run, unless that answer was begun after the table was read: then
    the socket is no younger than it, and no process held it.
    """
    data, started = _iterated(_FILES)
    if data is None:
        return None
    found = _holders(data, inodes)
    if started is not None and inodes is not None:
        missing = [inode for inode in inodes if inode not in found[0]]
        if missing and (table_read is None or table_read >= started):
            # A wanted socket the early snapshot does not know may be younger than it:
            # looked for once more, in a fresh run (no older than the caller's table).
            data, _started = _iterated(_FILES)
            if data is not None:
                more, processes = _holders(data, missing)
                found[0].update(more)
                found = found[0], max(found[1], processes)
    return found


def _holders(data: bytes, inodes: Collection[int] | None) -> tuple[dict[int, list[int]], int]:
    """The holders in the task_file iterator's answer ``data``: of ``inodes`` only when
    there are few (looked for one by one), else of every socket."""
    from portside._bpfprograms import holders_from_records, holders_of

    if inodes is not None and len(inodes) <= _FEW_INODES:
        return holders_of(data, inodes)
    return holders_from_records(data)


def namespace_pids() -> dict[int, int] | None:
    """Network namespace inode -> the lowest pid inside it, for every process; None when
    the iterators cannot run. The early run's answer when one was started."""
    data, _started = _iterated(_TASKS)
    if data is None:
        return None
    from portside._bpfprograms import namespaces_from_records

    return namespaces_from_records(data, os.getpid())


_TASKS, _FILES = 1, 0  # which link of _made_links


def early_jobs() -> list[Job]:
    """Jobs for :func:`portside._early.start` that run the task iterator, then the
    task_file one, when they are known to work here; :func:`namespace_pids` and
    :func:`socket_holders` take their answers. The answers are a snapshot taken as the
    command starts, as ``ss -p``'s are: a socket made after it shows no holder."""
    if not known_to_work():
        return []
    return [_early_job(_TASKS), _early_job(_FILES)]


def _early_job(which: int) -> Job:
    return _early_key(which), lambda: _timed_run(which)


def _early_key(which: int) -> tuple[str, int]:
    return ("bpf task iterator", which)


def _timed_run(which: int) -> tuple[float, bytes | None] | None:
    """When (``time.monotonic``) a fresh run of the iterator ``which`` began, and what it
    wrote; None when it cannot run."""
    from time import monotonic

    links = _made_links()
    if links is None:
        return None
    started = monotonic()
    return started, _run(links[which])


def _iterated(which: int) -> tuple[bytes | None, float | None]:
    """What the iterator ``which`` writes, and when the run began if it is the early
    run's answer (taken once; else a fresh run, and None). None when the iterators may
    not or cannot run (asked every time: ``PORTSIDE_BPF`` may change in a long-lived
    process)."""
    if not usable():
        return None, None
    from portside._early import take

    made, answer = take(_early_key(which))
    if made:
        if answer is None:
            return None, None
        timed: tuple[float, bytes | None] = answer  # type: ignore[assignment]  # _timed_run's
        return timed[1], timed[0]
    fresh = _timed_run(which)
    return (fresh[1] if fresh is not None else None), None


# -- the cache of the kernel's layout --------------------------------------------------------


def _cache_key() -> str | None:
    """What names this kernel build: its release, version (build number and date) and
    the size of its BTF; None without BTF."""
    try:
        size = os.stat(BTF_PATH).st_size  # noqa: PTH116 -- on every run: no Path objects
    except OSError:
        return None
    system = os.uname()
    return f"{_CACHE_VERSION} {system.release} {system.version} {size}"


_read_cache: list[tuple[int, ...] | str | None] = []


def _cached_layout() -> tuple[int, ...] | str | None:
    """The cached layout values for this kernel, :data:`_REFUSED` when this kernel
    refused the programs before, None when nothing is cached for it."""
    if not _read_cache:
        from portside._usercache import read

        found: tuple[int, ...] | str | None = None
        data, key = read(CACHE_NAME), _cache_key()
        lines = data.split(b"\n") if data is not None else []
        if key is not None and len(lines) >= 2 and lines[0] == key.encode():
            if lines[1] == _REFUSED.encode():
                found = _REFUSED
            else:
                try:
                    found = tuple(int(word) for word in lines[1].split())
                except ValueError:
                    found = None
        _read_cache.append(found)
    return _read_cache[0]


def _write_cache(value: str) -> None:
    """The cache file, replaced whole by one for this kernel holding ``value``."""
    from portside._usercache import write

    key = _cache_key()
    if key is not None:
        write(CACHE_NAME, f"{key}\n{value}\n".encode())
    _read_cache[:] = []


def _layout() -> KernelLayout | None:
    """This kernel's layout: cached, or found in its BTF and cached (only where the
    cache can be written: walking the BTF on every run would cost more than the
    ``/proc`` walks it replaces). None when unknown or refused."""
    from portside._bpfprograms import KernelLayout

    cached = _cached_layout()
    if cached == _REFUSED:
        return None
    if isinstance(cached, tuple):
        try:
            return KernelLayout(cached)
        except ValueError:
            pass  # a cache from another portside: found again below
    from portside._btf import BtfError, kernel_layout
    from portside._usercache import writable

    if not writable():
        return None
    try:
        with open(BTF_PATH, "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    try:
        layout = kernel_layout(data)
    except BtfError:
        _write_cache(_REFUSED)
        return None
    _write_cache(" ".join(str(value) for value in layout.values()))
    return layout


# -- the bpf system call -----------------------------------------------------------------------


class _BpfError(OSError):
    pass


def _bpf(command: int, attributes: bytes) -> int:
    """bpf(command, attributes): the fd it returns. Raises _BpfError with errno."""
    import array

    from portside._libc import last_errno, libc_function

    syscall = libc_function("syscall", "l", "llll")
    buffer = array.array("B", attributes)
    result = syscall(
        _BPF_SYSCALL[os.uname().machine], command, buffer.buffer_info()[0], len(buffer)
    )
    if result < 0:
        error = last_errno()
        raise _BpfError(error, os.strerror(error))
    return result


def _load(program: bytes, attach_to: int, name: bytes) -> int:
    """The fd of ``program`` loaded as a task iterator attached to BTF function id
    ``attach_to``."""
    import array
    import struct

    from portside._bpfprograms import LICENSE

    code = array.array("B", program)
    license_ = array.array("B", LICENSE)
    attributes = bytearray(128)
    struct.pack_into(
        "<IIQQ", attributes, 0, _PROG_TYPE_TRACING, len(program) // 8,
        code.buffer_info()[0], license_.buffer_info()[0],
    )  # fmt: skip
    attributes[48 : 48 + len(name)] = name  # prog_name: 15 characters at most
    struct.pack_into("<I", attributes, 68, _TRACE_ITER)  # expected_attach_type
    struct.pack_into("<I", attributes, 108, attach_to)  # attach_btf_id
    return _bpf(_PROG_LOAD, bytes(attributes))


def _link(program: int) -> int:
    import struct

    return _bpf(_LINK_CREATE, struct.pack("<IIII16x", program, 0, _TRACE_ITER, 0))


def _made_links() -> tuple[int, int] | None:
    """The two iterator links, made on first use (by one thread: the early jobs run in
    two); None when they cannot be."""
    if _links:
        return _links[0]
    with _MAKING_LINKS:
        return _links[0] if _links else _make_links()


def _make_links() -> tuple[int, int] | None:
    links: tuple[int, int] | None = None
    layout = _layout() if usable() else None
    if layout is not None:
        from portside._bpfprograms import task_file_program, task_program

        made: list[int] = []
        try:
            for program, attach_to, name in (
                (task_file_program(layout), layout.task_file_function, b"portside_files"),
                (task_program(layout), layout.task_function, b"portside_tasks"),
            ):
                loaded = _load(program, attach_to, name)
                try:
                    made.append(_link(loaded))
                finally:
                    os.close(loaded)  # the link keeps the program
            links = (made[0], made[1])
        except _BpfError as error:
            for fd in made:
                os.close(fd)
            # EPERM is a missing capability (a container, a user namespace), which may
            # change from one run to the next; anything else (the verifier's EACCES or
            # EINVAL) is this kernel's answer: it is not asked again.
            if error.errno != _EPERM:
                _write_cache(_REFUSED)
        except (OSError, AttributeError):
            for fd in made:
                os.close(fd)
    _links.append(links)
    return links


def _run(link: int) -> bytes | None:
    """Everything one fresh run of the iterator ``link`` writes; None on an error."""
    import struct

    try:
        iterator = _bpf(_ITER_CREATE, struct.pack("<II", link, 0))
    except OSError:
        return None
    chunks: list[bytes] = []
    try:
        while chunk := os.read(iterator, 1 << 18):
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(iterator)
    return b"".join(chunks)
