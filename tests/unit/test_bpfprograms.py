"""The iterator programs as bytes, and their records read back (pure; the kernel's own
verdict on the programs is in tests/contract/test_taskiter.py)."""

from __future__ import annotations

import struct

import pytest

from portside._bpfprograms import (
    FILE_RECORD_SIZE,
    TASK_RECORD_SIZE,
    KernelLayout,
    holders_from_records,
    holders_of,
    namespaces_from_records,
    task_file_program,
    task_program,
)

LAYOUT = KernelLayout((64196, 64191, 127, 113, 32, 0, 64, 1264, 1268, 1840, 40, 176))
JUMPS = {0x15, 0x55, 0x5D}  # the conditional jumps the programs use
CALL, EXIT = 0x85, 0x95


def instructions(program: bytes) -> list[tuple[int, int, int, int, int]]:
    """(opcode, dst, src, offset, immediate) of each instruction."""
    assert len(program) % 8 == 0
    decoded = []
    for opcode, registers, offset, immediate in struct.iter_unpack("<BBhi", program):
        decoded.append((opcode, registers & 0xF, registers >> 4, offset, immediate))
    return decoded


@pytest.mark.parametrize("make", [task_file_program, task_program])
def test_every_jump_lands_on_the_shared_exit(make):
    program = instructions(make(LAYOUT))
    assert program[-1][0] == EXIT
    assert program[-2] == (0xB7, 0, 0, 0, 0)  # r0 = 0
    jumps = [
        (index, offset) for index, (op, _d, _s, offset, _i) in enumerate(program) if op in JUMPS
    ]
    assert jumps
    for index, offset in jumps:
        assert index + 1 + offset == len(program) - 2


@pytest.mark.parametrize("make", [task_file_program, task_program])
def test_the_programs_read_at_the_layouts_offsets_and_call_its_helpers(make):
    program = instructions(make(LAYOUT))
    calls = {immediate for op, _d, _s, _o, immediate in program if op == CALL}
    offsets = {offset for op, _d, _s, offset, _i in program if op in (0x79, 0x61, 0x69)}
    immediates = {immediate for op, _d, _s, _o, immediate in program if op == 0x07}
    assert LAYOUT.seq_write in calls
    if make is task_file_program:
        assert {
            LAYOUT.file_inode,
            LAYOUT.inode_mode,
            LAYOUT.inode_number,
            LAYOUT.task_tgid,
        } <= offsets
    else:
        assert LAYOUT.probe_read_kernel in calls
        assert {LAYOUT.task_pid, LAYOUT.task_tgid} <= offsets
        assert {LAYOUT.task_nsproxy, LAYOUT.nsproxy_net, LAYOUT.net_inode} <= immediates
    other = KernelLayout((1, 2, 127, 113, 40, 0, 72, 1000, 1004, 2000, 48, 184))
    assert make(other) != make(LAYOUT)


def file_records(*pairs: tuple[int, int]) -> bytes:
    return b"".join(struct.pack("<QQ", inode, pid) for inode, pid in pairs)


def test_holders_are_each_listed_once_in_ascending_order():
    data = file_records((10, 300), (11, 300), (10, 300), (10, 100), (12, 2**31 + 5), (10, 200))
    holders, processes = holders_from_records(data)
    assert holders == {10: [100, 200, 300], 11: [300], 12: [2**31 + 5]}
    assert processes == 4
    assert holders_from_records(b"") == ({}, 0)


def test_inodes_beyond_32_bits_survive():
    holders, _ = holders_from_records(file_records((2**40 + 7, 1)))
    assert holders == {2**40 + 7: [1]}


def test_namespaces_keep_the_lowest_pid():
    pairs = [(50, 7), (3, 7), (9, 8), (70, 7)]
    data = b"".join(struct.pack("<II", pid, namespace) for pid, namespace in pairs)
    assert namespaces_from_records(data, 70) == {7: 3, 8: 9}


def test_namespaces_without_the_reader_are_no_answer():
    """Reads that failed write no record (bpf_probe_read_kernel under lockdown): the
    process that ran the program is then missing, and the answer is refused."""
    data = struct.pack("<II", 50, 7)
    assert namespaces_from_records(data, 51) is None
    assert namespaces_from_records(data[:0], 51) is None
    assert namespaces_from_records(struct.pack("<II", 7, 51), 51) is None  # 51 a namespace


@pytest.mark.parametrize(
    ("read", "size"),
    [(holders_from_records, FILE_RECORD_SIZE), (namespaces_from_records, TASK_RECORD_SIZE)],
)
def test_a_record_cut_short_is_refused(read, size):
    arguments = (1,) if read is namespaces_from_records else ()
    with pytest.raises(ValueError, match="cut short"):
        read(bytes(size + 3), *arguments)


def test_a_lookup_of_a_few_inodes_agrees_with_reading_every_record():
    # 0x0102 as an inode; and, unaligned, in the bytes of the pid 0x010200 followed by
    # those of the inode 0x0100 (02 01 00 00 00 00 00 | 00): not a record of it.
    data = file_records(
        (0x0102, 7), (5, 0x0102 << 8), (0x0100, 4), (0x0102, 3), (0x0102, 7), (9, 2), (2**40, 8)
    )
    assert data.find((0x0102).to_bytes(8, "little"), 1) % FILE_RECORD_SIZE  # the trap is set
    everything, processes = holders_from_records(data)
    few, counted = holders_of(data, [0x0102, 9, 2**40, 12345])
    assert few == {inode: everything[inode] for inode in (0x0102, 9, 2**40)}
    assert few[0x0102] == [3, 7]
    assert counted == processes
    with pytest.raises(ValueError, match="cut short"):
        holders_of(data[:-1], [9])
