"""The kernel's type information (BTF), read for the few facts the task iterators need.

``/sys/kernel/btf/vmlinux`` describes every type of the running kernel. A BPF iterator
program (:mod:`portside._taskiter`) must name the kernel function it attaches to by its
BTF type id, and reads kernel structures (``struct file``, ``struct task_struct`` …)
at offsets that differ from one kernel build to the next. :func:`kernel_layout` finds
those ids and offsets in the BTF bytes. Pure: no I/O.

The format (``Documentation/bpf/btf.rst``): a header, a type section of variable-length
records (a type's id is its position, from 1) and a string section. Each record is
``name_off, info, size_or_type`` (three 32-bit words; ``info`` holds the kind in bits
24-28, the member count in bits 0-15 and a flag in bit 31), followed by a kind-specific
part.
"""

from __future__ import annotations

import array
import sys

from portside._bpfprograms import KernelLayout

_MAGIC = 0xEB9F
_HEADER_WORDS = 6  # magic/version/flags, hdr_len, type_off, type_len, str_off, str_len

# Kinds (BTF_KIND_*), and the words each adds after its three: a fixed count, or per member.
_INT, _PTR, _STRUCT, _UNION, _ENUM = 1, 2, 4, 5, 6
_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _FUNC, _TYPE_TAG = 8, 9, 10, 11, 12, 18
_FIXED_WORDS = {1: 1, 2: 0, 3: 3, 7: 0, 8: 0, 9: 0, 10: 0, 11: 0, 12: 0, 14: 1, 16: 0, 17: 1, 18: 0}
_WORDS_PER_MEMBER = {4: 3, 5: 3, 6: 2, 13: 2, 15: 3, 19: 3}
_QUALIFIERS = {_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG}
_POINTER_SIZE = 8


class BtfError(ValueError):
    """The BTF bytes are not what this module understands, or lack what it needs."""


class _Types:
    """Type records by id, and names, over the type and string sections."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 4 * _HEADER_WORDS:
            raise BtfError("shorter than a BTF header")
        header = array.array("I", data[: 4 * _HEADER_WORDS])
        if header[0] & 0xFFFF != _MAGIC:
            raise BtfError("not BTF (or not in this machine's byte order)")
        header_length, type_offset, type_length, string_offset, string_length = header[1:6]
        types_start = header_length + type_offset
        strings_start = header_length + string_offset
        if (
            type_length % 4
            or types_start + type_length > len(data)
            or strings_start + string_length > len(data)
        ):
            raise BtfError("sections outside the data")
        self.words = array.array("I", data[types_start : types_start + type_length])
        self.strings = data[strings_start : strings_start + string_length]
        self.starts = array.array("I", [0])  # word index of each type id; id 0 is void

    def index(self, wanted: dict[bytes, set[int]]) -> dict[tuple[bytes, int], int]:
        """Walk every record (filling :attr:`starts`); (name, kind) -> the first id with
        that name and kind, for the names and kinds in ``wanted``. A struct without
        members (a forward declaration's twin) does not count."""
        by_offset: dict[int, tuple[bytes, set[int]]] = {}
        for name, kinds in wanted.items():
            offset = self.strings.find(b"\0" + name + b"\0")
            if offset >= 0:
                by_offset[offset + 1] = (name, kinds)
        found: dict[tuple[bytes, int], int] = {}
        words, starts = self.words, self.starts
        fixed, per_member = _FIXED_WORDS, _WORDS_PER_MEMBER
        position, end, type_id = 0, len(words), 1
        while position + 3 <= end:
            info = words[position + 1]
            kind = (info >> 24) & 0x1F
            members = info & 0xFFFF
            starts.append(position)
            named = by_offset.get(words[position])
            if named is not None and kind in named[1] and (kind != _STRUCT or members):
                found.setdefault((named[0], kind), type_id)
            extra = fixed.get(kind)
            if extra is None:
                words_each = per_member.get(kind)
                if words_each is None:
                    raise BtfError(f"unknown kind {kind} (type {type_id})")
                extra = members * words_each
            position += 3 + extra
            type_id += 1
        if position != end:
            raise BtfError("the type section ends inside a record")
        return found

    def name(self, offset: int) -> bytes:
        end = self.strings.find(b"\0", offset)
        return self.strings[offset:end] if end >= 0 else b""

    def record(self, type_id: int) -> tuple[int, int, int, int]:
        """(word index, kind, member count, kind flag) of ``type_id``."""
        if not 0 < type_id < len(self.starts):
            raise BtfError(f"no type {type_id}")
        position = self.starts[type_id]
        info = self.words[position + 1]
        return position, (info >> 24) & 0x1F, info & 0xFFFF, info >> 31

    def size(self, type_id: int) -> int:
        """The size in bytes of a member of type ``type_id`` (qualifiers and typedefs
        looked through)."""
        for _ in range(32):  # a chain of qualifiers is short; a loop would be corrupt BTF
            position, kind, _members, _flag = self.record(type_id)
            if kind in _QUALIFIERS:
                type_id = self.words[position + 2]
                continue
            if kind == _PTR:
                return _POINTER_SIZE
            if kind in (_INT, _ENUM, _STRUCT, _UNION):
                return int(self.words[position + 2])
            raise BtfError(f"type {type_id} (kind {kind}) has no size here")
        raise BtfError(f"type {type_id}: qualifiers without end")

    def member(self, struct_id: int, name: bytes) -> tuple[int, int] | None:
        """(byte offset, type id) of member ``name`` of the struct or union
        ``struct_id``, looking into anonymous struct and union members."""
        position, kind, members, flag = self.record(struct_id)
        if kind not in (_STRUCT, _UNION):
            raise BtfError(f"type {struct_id} is not a struct")
        for index in range(members):
            base = position + 3 + 3 * index
            name_offset, member_type, bits = self.words[base : base + 3]
            if flag:
                if bits >> 24:
                    continue  # a bit field: not what is wanted here
                bits &= 0xFFFFFF
            if bits % 8:
                continue
            if name_offset and self.name(name_offset) == name:
                return bits // 8, member_type
            if not name_offset:
                inner = self.unqualified(member_type)
                if self.record(inner)[1] in (_STRUCT, _UNION):
                    found = self.member(inner, name)
                    if found is not None:
                        return bits // 8 + found[0], found[1]
        return None

    def unqualified(self, type_id: int) -> int:
        for _ in range(32):
            position, kind, _members, _flag = self.record(type_id)
            if kind not in _QUALIFIERS:
                return type_id
            type_id = self.words[position + 2]
        raise BtfError(f"type {type_id}: qualifiers without end")

    def enum_value(self, enum_id: int, name: bytes) -> int | None:
        position, _kind, members, _flag = self.record(enum_id)
        for index in range(members):
            base = position + 3 + 2 * index
            if self.name(self.words[base]) == name:
                return int(self.words[base + 1])
        return None


def kernel_layout(data: bytes) -> KernelLayout:
    """The :data:`LAYOUT_FIELDS` of the kernel described by ``data`` (the bytes of
    ``/sys/kernel/btf/vmlinux``). Raises BtfError when something is missing or has
    another size than the programs read, or the data is not BTF it can read."""
    if sys.byteorder != "little":
        raise BtfError("the iterator programs are written for little-endian machines")
    try:
        return _kernel_layout(data)
    except BtfError:
        raise
    except (IndexError, ValueError, OverflowError, RecursionError) as error:
        # Records that point outside the data, or at each other: corrupt, not a crash.
        raise BtfError(f"corrupt BTF ({type(error).__name__})") from error


def _kernel_layout(data: bytes) -> KernelLayout:
    types = _Types(data)
    structs = {_STRUCT}
    found = types.index(
        {
            b"bpf_iter_task_file": {_FUNC},
            b"bpf_iter_task": {_FUNC},
            b"bpf_func_id": {_ENUM},
            b"file": structs,
            b"inode": structs,
            b"task_struct": structs,
            b"nsproxy": structs,
            b"net": structs,
            b"ns_common": structs,
        }
    )

    def type_id(name: bytes, kind: int) -> int:
        if (name, kind) not in found:
            raise BtfError(f"no {name.decode()} in this kernel's BTF")
        return found[name, kind]

    def offset(struct: bytes, member: bytes, size: int) -> int:
        located = types.member(type_id(struct, _STRUCT), member)
        if located is None:
            raise BtfError(f"no {struct.decode()}.{member.decode()} in this kernel")
        if types.size(located[1]) != size:
            raise BtfError(f"{struct.decode()}.{member.decode()} is not {size} bytes long")
        return located[0]

    helpers = type_id(b"bpf_func_id", _ENUM)
    seq_write = types.enum_value(helpers, b"BPF_FUNC_seq_write")
    probe_read_kernel = types.enum_value(helpers, b"BPF_FUNC_probe_read_kernel")
    if seq_write is None or probe_read_kernel is None:
        raise BtfError("this kernel lacks bpf_seq_write or bpf_probe_read_kernel")
    namespace = types.member(type_id(b"net", _STRUCT), b"ns")
    if namespace is None or types.unqualified(namespace[1]) != type_id(b"ns_common", _STRUCT):
        raise BtfError("no net.ns (a struct ns_common) in this kernel")
    return KernelLayout(
        (
            type_id(b"bpf_iter_task_file", _FUNC),
            type_id(b"bpf_iter_task", _FUNC),
            seq_write,
            probe_read_kernel,
            offset(b"file", b"f_inode", _POINTER_SIZE),
            offset(b"inode", b"i_mode", 2),
            offset(b"inode", b"i_ino", 8),
            offset(b"task_struct", b"pid", 4),
            offset(b"task_struct", b"tgid", 4),
            offset(b"task_struct", b"nsproxy", _POINTER_SIZE),
            offset(b"nsproxy", b"net_ns", _POINTER_SIZE),
            namespace[0] + offset(b"ns_common", b"inum", 4),
        )
    )
