"""A cgroup v2 group of the test's own whose IPv4 connects to one port the kernel
refuses (EPERM), as systemd's ``SocketBindDeny=``/``IPAddressDeny=`` and container
sandboxes do: a ``cgroup/connect4`` BPF program attached to that group alone, through a
BPF link that ends with the test. Nothing outside the group is affected."""

from __future__ import annotations

import contextlib
import os
import struct
import uuid
from collections.abc import Iterator

from portside._taskiter import _bpf

_PROG_LOAD, _LINK_CREATE = 5, 28  # enum bpf_cmd
_CGROUP_SOCK_ADDR = 18  # BPF_PROG_TYPE_CGROUP_SOCK_ADDR
_INET4_CONNECT = 10  # BPF_CGROUP_INET4_CONNECT
_USER_PORT = 24  # offsetof(struct bpf_sock_addr, user_port): network byte order


def _deny_port_program(port: int) -> bytes:
    """r0 = ctx->user_port == htons(port) ? 0 (refuse) : 1 (allow)."""
    network_order = int.from_bytes(port.to_bytes(2, "big"), "little")
    instructions = [
        (0x61, 2, 1, _USER_PORT, 0),  # r2 = *(u32 *)(r1 + user_port)
        (0x55, 2, 0, 2, network_order),  # if r2 != port goto allow
        (0xB7, 0, 0, 0, 0),  # r0 = 0: refused
        (0x95, 0, 0, 0, 0),  # exit
        (0xB7, 0, 0, 0, 1),  # allow: r0 = 1
        (0x95, 0, 0, 0, 0),  # exit
    ]
    return b"".join(
        struct.pack("<BBhi", op, dst | src << 4, off, imm)
        for op, dst, src, off, imm in instructions
    )


def _load(program: bytes) -> int:
    from array import array

    code = array("B", program)
    license_ = array("B", b"MIT\0")
    attributes = bytearray(128)
    struct.pack_into(
        "<IIQQ", attributes, 0, _CGROUP_SOCK_ADDR, len(program) // 8,
        code.buffer_info()[0], license_.buffer_info()[0],
    )  # fmt: skip
    struct.pack_into("<I", attributes, 68, _INET4_CONNECT)  # expected_attach_type
    return _bpf(_PROG_LOAD, bytes(attributes))


@contextlib.contextmanager
def connects_refused(mount: str, port: int) -> Iterator[str]:
    """A new cgroup under ``mount`` (yielded: its directory) in which IPv4 connects to
    ``port`` fail with EPERM. Removed afterwards (its processes must have ended)."""
    directory = f"{mount}/ps-test-{uuid.uuid4().hex[:10]}"
    os.mkdir(directory)
    try:
        group = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            program = _load(_deny_port_program(port))
            try:
                link = _bpf(
                    _LINK_CREATE, struct.pack("<IIII16x", program, group, _INET4_CONNECT, 0)
                )
            finally:
                os.close(program)
            try:
                yield directory
            finally:
                os.close(link)  # the program leaves the group with its last link
        finally:
            os.close(group)
    finally:
        os.rmdir(directory)
