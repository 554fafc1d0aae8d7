"""The BTF reader: hand-built type sections (kinds, anonymous members, qualifiers, bit
fields, corrupt data), and this machine's own kernel BTF when it has one."""

from __future__ import annotations

import os
import struct

import pytest

from portside._bpfprograms import LAYOUT_FIELDS, KernelLayout
from portside._btf import BtfError, kernel_layout

INT, PTR, ARRAY, STRUCT, UNION, ENUM, TYPEDEF, CONST, FUNC, FUNC_PROTO = (
    1, 2, 3, 4, 5, 6, 8, 10, 12, 13,
)  # fmt: skip


class Btf:
    """A BTF blob under construction: add types, get their ids, then ``bytes()``."""

    def __init__(self) -> None:
        self.strings = bytearray(b"\0")
        self.types = bytearray()
        self.count = 0

    def name(self, text: str) -> int:
        if not text:
            return 0
        encoded = text.encode() + b"\0"
        found = self.strings.find(b"\0" + encoded)
        if found >= 0:
            return found + 1
        offset = len(self.strings)
        self.strings += encoded
        return offset

    def add(
        self, name: str, kind: int, vlen: int, size_or_type: int, extra: bytes = b"", flag: int = 0
    ) -> int:
        info = (flag << 31) | (kind << 24) | vlen
        self.types += struct.pack("<III", self.name(name), info, size_or_type) + extra
        self.count += 1
        return self.count

    def int_(self, name: str, size: int) -> int:
        return self.add(name, INT, 0, size, struct.pack("<I", size * 8))

    def pointer(self, to: int) -> int:
        return self.add("", PTR, 0, to)

    def struct(
        self,
        name: str,
        size: int,
        members: list[tuple[str, int, int]],
        *,
        kind: int = STRUCT,
        flag: int = 0,
    ) -> int:
        extra = b"".join(struct.pack("<III", self.name(m), t, bits) for m, t, bits in members)
        return self.add(name, kind, len(members), size, extra, flag)

    def enum(self, name: str, values: dict[str, int]) -> int:
        extra = b"".join(struct.pack("<Ii", self.name(n), v) for n, v in values.items())
        return self.add(name, ENUM, len(values), 4, extra)

    def function(self, name: str) -> int:
        proto = self.add("", FUNC_PROTO, 0, 0)
        return self.add(name, FUNC, 1, proto)

    def __bytes__(self) -> bytes:
        header = struct.pack(
            "<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(self.types), len(self.types), len(self.strings)
        )
        return header + bytes(self.types) + bytes(self.strings)


def kernel_like(
    *, ino_size: int = 8, anonymous_inode: bool = True, leave_out: str = ""
) -> tuple[Btf, dict[str, int]]:
    """A small BTF with every type the layout needs, at known offsets; the ids of the
    two iterator functions in the second value."""
    btf = Btf()
    u16 = btf.int_("unsigned short", 2)
    u32 = btf.int_("unsigned int", 4)
    u64 = btf.int_("unsigned long", ino_size)
    int_ = btf.int_("int", 4)
    pid_t = btf.add("pid_t", TYPEDEF, 0, int_)
    umode = btf.add("umode_t", TYPEDEF, 0, u16)
    const_umode = btf.add("", CONST, 0, umode)
    # A forward twin with no members first: it must not be taken for the struct.
    btf.struct("inode", 0, [])
    inode = btf.struct(
        "inode", 128, [("i_mode", const_umode, 0), ("i_opflags", u16, 16), ("i_ino", u64, 64 * 8)]
    )
    inode_pointer = btf.pointer(inode)
    if anonymous_inode:
        inner = btf.struct(
            "", 16, [("f_lock", u32, 0), ("f_inode", inode_pointer, 8 * 8)], kind=UNION
        )
        btf.struct("file", 256, [("f_count", u64, 0), ("", inner, 24 * 8)])
    else:
        btf.struct("file", 256, [("f_count", u64, 0), ("f_inode", inode_pointer, 32 * 8)])
    ns_common = btf.struct("ns_common", 32, [("stashed", u64, 0), ("inum", u32, 24 * 8)])
    net = btf.struct("net", 512, [("passive", u32, 0), ("ns", ns_common, 152 * 8)])
    nsproxy = btf.struct("nsproxy", 64, [("count", u32, 0), ("net_ns", btf.pointer(net), 40 * 8)])
    bits = btf.struct(
        "task_struct", 4096,
        [("flags", u32, (3 << 24) | 0), ("pid", pid_t, 1264 * 8), ("tgid", pid_t, 1268 * 8), ("nsproxy", btf.pointer(nsproxy), 1840 * 8)],
        flag=1,
    )  # fmt: skip
    assert bits
    helpers = {"BPF_FUNC_unspec": 0, "BPF_FUNC_probe_read_kernel": 113, "BPF_FUNC_seq_write": 127}
    helpers.pop(leave_out, None)
    btf.enum("bpf_func_id", helpers)
    functions = {}
    for name in ("bpf_iter_task", "bpf_iter_task_file"):
        if name != leave_out:
            functions[name] = btf.function(name)
    return btf, functions


def test_every_value_is_found_where_the_types_put_it():
    btf, functions = kernel_like()
    layout = kernel_layout(bytes(btf))
    assert layout == KernelLayout(
        (functions["bpf_iter_task_file"], functions["bpf_iter_task"], 127, 113,
         24 + 8, 0, 64, 1264, 1268, 1840, 40, 152 + 24)
    )  # fmt: skip
    assert layout.file_inode == 32  # inside the anonymous union at 24, 8 bytes in
    assert layout.net_inode == 176


def test_a_direct_member_is_found_as_well_as_one_in_an_anonymous_union():
    btf, _ = kernel_like(anonymous_inode=False)
    assert kernel_layout(bytes(btf)).file_inode == 32


def test_layout_values_round_trip_in_field_order():
    btf, _ = kernel_like()
    layout = kernel_layout(bytes(btf))
    assert KernelLayout(layout.values()) == layout
    assert len(layout.values()) == len(LAYOUT_FIELDS)
    with pytest.raises(ValueError, match="values"):
        KernelLayout(layout.values()[:-1])


@pytest.mark.parametrize(
    "missing",
    ["bpf_iter_task_file", "bpf_iter_task", "BPF_FUNC_seq_write", "BPF_FUNC_probe_read_kernel"],
)
def test_something_missing_is_an_error_naming_it(missing: str):
    btf, _ = kernel_like(leave_out=missing)
    with pytest.raises(BtfError):
        kernel_layout(bytes(btf))


def test_a_member_of_another_size_is_refused():
    btf, _ = kernel_like(ino_size=4)  # a 32-bit i_ino: the program reads 64 bits
    with pytest.raises(BtfError, match="i_ino"):
        kernel_layout(bytes(btf))


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda data: data[:10],  # shorter than the header
        lambda data: b"\x00\x00" + data[2:],  # bad magic
        lambda data: data[:24] + data[24:-40],  # the sections run past the end
        lambda data: (
            data[:16] + struct.pack("<I", struct.unpack_from("<I", data, 16)[0] - 4) + data[20:]
        ),  # a record cut
    ],
    ids=["short", "magic", "truncated", "cut-record"],
)
def test_corrupt_data_is_a_btf_error_not_a_crash(corrupt):
    btf, _ = kernel_like()
    with pytest.raises(BtfError):
        kernel_layout(corrupt(bytes(btf)))


def test_an_unknown_kind_is_refused():
    btf, _ = kernel_like()
    btf.add("future", 31, 0, 0)
    with pytest.raises(BtfError, match="unknown kind"):
        kernel_layout(bytes(btf))


@pytest.mark.skipif(not os.access("/sys/kernel/btf/vmlinux", os.R_OK), reason="no kernel BTF here")
def test_this_kernels_btf_gives_a_plausible_layout():
    with open("/sys/kernel/btf/vmlinux", "rb") as handle:
        layout = kernel_layout(handle.read())
    assert layout.task_file_function > 0
    assert layout.task_function > 0
    assert layout.task_file_function != layout.task_function
    assert layout.seq_write == 127  # UAPI numbers, fixed since Linux 5.7 and 5.5
    assert layout.probe_read_kernel == 113
    assert layout.task_tgid == layout.task_pid + 4  # declared side by side in task_struct
