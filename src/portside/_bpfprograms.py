"""The two BPF iterator programs of :mod:`portside._taskiter`, assembled, and the
records they write, read back. Pure: no I/O.

* The *task_file* program runs for every open file of every process (threads sharing
  their process's fd table are skipped by the kernel) and writes, for each socket, one
  16-byte record: the socket's inode (64 bits), the process id (32 bits), 0 (32 bits).
* The *task* program runs for every task and writes, for each process (a task whose pid
  is its thread group id), one 8-byte record: the process id, and the inode of its
  network namespace (32 bits each).

Both read kernel structures at the offsets of a :class:`~portside._btf.KernelLayout`;
the kernel's verifier checks every read against the kernel's own types before the
program may run. Twenty to thirty instructions each, written out below in the kernel's
instruction format (``Documentation/bpf/standardization/instruction-set.rst``).
"""

from __future__ import annotations

import array
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

_INSTRUCTION = struct.Struct("<BBhi")  # opcode, dst | src << 4, offset, immediate

# Opcodes used (class | size/operation | source).
_LOAD_64, _LOAD_32, _LOAD_16 = 0x79, 0x61, 0x69  # dst = *(size *)(src + offset)
_STORE_64, _STORE_32 = 0x7B, 0x63  # *(size *)(dst + offset) = src
_MOVE, _MOVE_CONSTANT = 0xBF, 0xB7  # dst = src; dst = immediate (64-bit registers)
_ADD_CONSTANT, _AND_CONSTANT = 0x07, 0x57
_IF_EQUAL_CONSTANT, _IF_NOT_EQUAL_CONSTANT, _IF_NOT_EQUAL = 0x15, 0x55, 0x5D
_CALL, _EXIT = 0x85, 0x95

# The iterators' context: struct bpf_iter__task_file {meta; task; u32 fd; file} and
# struct bpf_iter__task {meta; task}, each member 8-byte aligned; meta->seq first.
_CONTEXT_META, _CONTEXT_TASK, _CONTEXT_FILE = 0, 8, 24
_S_IFMT, _S_IFSOCK = 0o170000, 0o140000

#: What the iterator programs need, in the order :class:`KernelLayout` keeps it.
LAYOUT_FIELDS = (
    "task_file_function",  # BTF id of the function the task_file iterator attaches to
    "task_function",  # … and the task iterator
    "seq_write",  # helper number of bpf_seq_write
    "probe_read_kernel",  # helper number of bpf_probe_read_kernel
    "file_inode",  # struct file: f_inode (pointer)
    "inode_mode",  # struct inode: i_mode (16 bits)
    "inode_number",  # struct inode: i_ino (64 bits)
    "task_pid",  # struct task_struct: pid (32 bits)
    "task_tgid",  # struct task_struct: tgid (32 bits)
    "task_nsproxy",  # struct task_struct: nsproxy (pointer)
    "nsproxy_net",  # struct nsproxy: net_ns (pointer)
    "net_inode",  # struct net: ns.inum (32 bits)
)


class KernelLayout:
    """The ids and offsets named in :data:`LAYOUT_FIELDS`, as attributes."""

    __slots__ = LAYOUT_FIELDS
    task_file_function: int
    task_function: int
    seq_write: int
    probe_read_kernel: int
    file_inode: int
    inode_mode: int
    inode_number: int
    task_pid: int
    task_tgid: int
    task_nsproxy: int
    nsproxy_net: int
    net_inode: int

    def __init__(self, values: tuple[int, ...]) -> None:
        if len(values) != len(LAYOUT_FIELDS):
            raise ValueError(f"a layout has {len(LAYOUT_FIELDS)} values, not {len(values)}")
        for name, value in zip(LAYOUT_FIELDS, values, strict=True):
            object.__setattr__(self, name, value)

    def values(self) -> tuple[int, ...]:
        """The values, in the order of :data:`LAYOUT_FIELDS`."""
        return tuple(getattr(self, name) for name in LAYOUT_FIELDS)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KernelLayout) and self.values() == other.values()

    def __hash__(self) -> int:
        return hash(self.values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)}" for name in LAYOUT_FIELDS)
        return f"KernelLayout({fields})"


FILE_RECORD_SIZE = 16
TASK_RECORD_SIZE = 8
LICENSE = b"GPL\0"  # bpf_seq_write is offered to GPL-compatible programs only


_EXIT_LABEL = "exit"
_Instruction = tuple[int, int, int, "int | str", int]


def _assemble(instructions: list[_Instruction]) -> bytes:
    """Instructions (opcode, dst, src, offset, immediate) as bytes; a jump's offset may
    be :data:`_EXIT_LABEL`: the program's last two instructions (r0 = 0; exit)."""
    exit_at = len(instructions) - 2
    encoded = bytearray()
    for index, (opcode, destination, source, offset, immediate) in enumerate(instructions):
        jump = exit_at - index - 1 if isinstance(offset, str) else offset
        encoded += _INSTRUCTION.pack(opcode, destination | source << 4, jump, immediate)
    return bytes(encoded)


def _write_record(size: int, seq_write: int) -> list[_Instruction]:
    """The tail of both programs: bpf_seq_write(ctx->meta->seq, r10 - size, size), then
    r0 = 0 and exit. r6 holds the context."""
    return [
        (_LOAD_64, 1, 6, _CONTEXT_META, 0),
        (_LOAD_64, 1, 1, 0, 0),  # meta->seq
        (_MOVE, 2, 10, 0, 0),
        (_ADD_CONSTANT, 2, 0, 0, -size),
        (_MOVE_CONSTANT, 3, 0, 0, size),
        (_CALL, 0, 0, 0, seq_write),
        (_MOVE_CONSTANT, 0, 0, 0, 0),
        (_EXIT, 0, 0, 0, 0),
    ]


def task_file_program(layout: KernelLayout) -> bytes:
    """The task_file program (see the module's docstring)."""
    return _assemble(
        [
            (_MOVE, 6, 1, 0, 0),  # r6 = ctx
            (_LOAD_64, 2, 6, _CONTEXT_TASK, 0),  # r2 = ctx->task
            (_IF_EQUAL_CONSTANT, 2, 0, _EXIT_LABEL, 0),
            (_LOAD_64, 3, 6, _CONTEXT_FILE, 0),  # r3 = ctx->file
            (_IF_EQUAL_CONSTANT, 3, 0, _EXIT_LABEL, 0),
            (_LOAD_64, 4, 3, layout.file_inode, 0),  # r4 = file->f_inode
            (_IF_EQUAL_CONSTANT, 4, 0, _EXIT_LABEL, 0),
            (_LOAD_16, 5, 4, layout.inode_mode, 0),  # r5 = inode->i_mode & S_IFMT
            (_AND_CONSTANT, 5, 0, 0, _S_IFMT),
            (_IF_NOT_EQUAL_CONSTANT, 5, 0, _EXIT_LABEL, _S_IFSOCK),
            (_LOAD_64, 5, 4, layout.inode_number, 0),
            (_STORE_64, 10, 5, -16, 0),  # record: inode
            (_LOAD_32, 5, 2, layout.task_tgid, 0),
            (_STORE_64, 10, 5, -8, 0),  # record: pid, zero-extended to 64 bits
            *_write_record(FILE_RECORD_SIZE, layout.seq_write),
        ]
    )


def _read_kernel(into: int, size: int, helper: int) -> list[_Instruction]:
    """bpf_probe_read_kernel(r10 + into, size, r3), the helper's number being ``helper``:
    r3 holds the address."""
    return [
        (_MOVE, 1, 10, 0, 0),
        (_ADD_CONSTANT, 1, 0, 0, into),
        (_MOVE_CONSTANT, 2, 0, 0, size),
        (_CALL, 0, 0, 0, helper),
    ]


def task_program(layout: KernelLayout) -> bytes:
    """The task program (see the module's docstring).

    The namespace is reached through ``task->nsproxy->net_ns->ns.inum`` with
    bpf_probe_read_kernel rather than typed loads: the verifier checks each typed
    pointer load from a task by looking names up in the kernel's whole BTF, which made
    loading this program take a millisecond and more; a read that faults gives 0."""
    scratch = -16  # where each pointer read lands, below the record
    read = layout.probe_read_kernel
    return _assemble(
        [
            (_MOVE, 6, 1, 0, 0),  # r6 = ctx
            (_LOAD_64, 2, 6, _CONTEXT_TASK, 0),  # r2 = ctx->task
            (_IF_EQUAL_CONSTANT, 2, 0, _EXIT_LABEL, 0),
            (_LOAD_32, 7, 2, layout.task_pid, 0),
            (_LOAD_32, 8, 2, layout.task_tgid, 0),
            (_IF_NOT_EQUAL, 7, 8, _EXIT_LABEL, 0),  # a thread
            (_MOVE, 3, 2, 0, 0),
            (_ADD_CONSTANT, 3, 0, 0, layout.task_nsproxy),
            *_read_kernel(scratch, 8, read),  # task->nsproxy: none while the process exits
            (_LOAD_64, 3, 10, scratch, 0),
            (_IF_EQUAL_CONSTANT, 3, 0, _EXIT_LABEL, 0),
            (_ADD_CONSTANT, 3, 0, 0, layout.nsproxy_net),
            *_read_kernel(scratch, 8, read),  # ->net_ns
            (_LOAD_64, 3, 10, scratch, 0),
            (_IF_EQUAL_CONSTANT, 3, 0, _EXIT_LABEL, 0),
            (_ADD_CONSTANT, 3, 0, 0, layout.net_inode),
            *_read_kernel(-4, 4, read),  # record: namespace inode (->ns.inum)
            (_STORE_32, 10, 8, -8, 0),  # record: pid
            *_write_record(TASK_RECORD_SIZE, layout.seq_write),
        ]
    )


def holders_from_records(data: bytes) -> tuple[dict[int, list[int]], int]:
    """(socket inode -> the pids holding it, ascending, each once; how many processes
    hold a socket) from the task_file program's records."""
    if len(data) % FILE_RECORD_SIZE:
        raise ValueError("a task_file record was cut short")
    words = array.array("Q", data)
    holders: dict[int, list[int]] = {}
    for inode, pid in zip(words[0::2], words[1::2], strict=True):
        found = holders.get(inode)
        if found is None:
            holders[inode] = [pid]
        elif pid not in found:  # several fds of one process (dup, or threads with tables)
            found.append(pid)
    for found in holders.values():
        if len(found) > 1:
            found.sort()  # the kernel walks pids in order, but threads come by thread id
    return holders, len(set(words[1::2]))


def holders_of(data: bytes, inodes: Iterable[int]) -> tuple[dict[int, list[int]], int]:
    """:func:`holders_from_records` for ``inodes`` only (sockets no process holds are
    left out): each is looked for in the records' bytes, a search in C per inode rather
    than a step in Python per record, for a lookup of a few sockets among thousands."""
    if len(data) % FILE_RECORD_SIZE:
        raise ValueError("a task_file record was cut short")
    holders: dict[int, list[int]] = {}
    for inode in inodes:
        needle = inode.to_bytes(8, "little")
        pids: list[int] = []
        at = data.find(needle)
        while at >= 0:
            if at % FILE_RECORD_SIZE:  # the bytes of a pid and the next inode
                at = data.find(needle, at + 1)
                continue
            pid = int.from_bytes(data[at + 8 : at + 16], "little")
            if pid not in pids:
                pids.append(pid)
            at = data.find(needle, at + FILE_RECORD_SIZE)
        if pids:
            holders[inode] = sorted(pids)
    return holders, len(set(array.array("Q", data)[1::2]))


def namespaces_from_records(data: bytes, reader: int) -> dict[int, int] | None:
    """Network namespace inode -> the lowest pid inside it, from the task program's
    records; None when the process ``reader`` (the one that ran the program, which must
    be among them) is not: kernel reads that failed (as under lockdown) write no record."""
    if len(data) % TASK_RECORD_SIZE:
        raise ValueError("a task record was cut short")
    words = array.array("I", data)
    if reader not in words[0::2]:
        return None
    lowest: dict[int, int] = {}
    for pid, namespace in zip(words[0::2], words[1::2], strict=True):
        known = lowest.get(namespace)
        if known is None or pid < known:
            lowest[namespace] = pid
    return lowest
