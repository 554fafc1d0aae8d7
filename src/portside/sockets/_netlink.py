"""The Linux fast path: the socket table through NETLINK_SOCK_DIAG, as ``ss`` reads it.

One dump per (family, protocol) that the query needs, with the states as the kernel's
bitmask and the port filter as kernel bytecode, so a per-port question costs the kernel
a hash walk and us a handful of records. All the format code is in
:mod:`portside.sockdiag`; this class only moves the bytes.
"""

from __future__ import annotations

import _socket
import errno
import sys
from functools import lru_cache

from portside.errors import AccessDeniedError, BackendUnavailableError
from portside.models import NetNamespace, SocketEntry, Transport
from portside.sockdiag import (
    AF_INET,
    AF_INET6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    NETLINK_SOCK_DIAG,
    DiagRecord,
    dump_request,
    parse_dump,
    state_mask,
    to_entry,
)
from portside.sockets._backend import SocketQuery

assert sys.platform == "linux"  # noqa: S101 -- mypy skips this module on other platforms

_PROTOCOLS = {Transport.TCP: IPPROTO_TCP, Transport.UDP: IPPROTO_UDP}
_RECV_BYTES = 65536
_NO_IPV6 = (errno.ENOENT, errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT)


def _open() -> _socket.socket:
    # _socket, not socket: the wrapper module costs milliseconds to import and adds
    # nothing to a datagram socket that only sends and receives bytes.
    sock = _socket.socket(
        _socket.AF_NETLINK, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG
    )
    try:
        sock.bind((0, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def _dump(sock: _socket.socket, request: bytes) -> list[DiagRecord]:
    sock.send(request)
    records: list[DiagRecord] = []
    while True:
        chunk = parse_dump(sock.recv(_RECV_BYTES))
        records.extend(chunk.records)
        if chunk.done:
            if chunk.error:
                raise OSError(chunk.error, f"sock_diag dump failed: {chunk.error}")
            return records


def _interface_names(records: list[DiagRecord]) -> dict[int, str]:
    """ifindex -> name for the sockets bound to a device (SO_BINDTODEVICE); looked up in
    the calling thread's namespace, which is the dumped one."""
    names: dict[int, str] = {}
    for record in records:
        index = record.ifindex
        if index and index not in names:
            try:
                names[index] = _socket.if_indextoname(index)
            except OSError:
                names[index] = str(index)  # the device went away since
    return names


def query_entries(query: SocketQuery, netns: NetNamespace | None = None) -> list[SocketEntry]:
    """The sockets of the calling thread's namespace that match ``query``."""
    plan: list[tuple[Transport, int]] = []
    for transport in (Transport.TCP, Transport.UDP):
        if transport in query.transports:
            mask = state_mask(transport, query.states)
            if mask:
                plan.append((transport, mask))
    if not plan:
        return []
    entries: list[SocketEntry] = []
    try:
        sock = _open()
    except PermissionError as error:
        raise AccessDeniedError("the kernel socket table (NETLINK_SOCK_DIAG)") from error
    except OSError as error:
        raise BackendUnavailableError("netlink", str(error)) from error
    try:
        seq = 0
        for transport, mask in plan:
            protocol = _PROTOCOLS[transport]
            for family in (AF_INET, AF_INET6):
                seq += 1
                request = dump_request(family, protocol, mask, port=query.port, seq=seq)
                try:
                    records = _dump(sock, request)
                except OSError as error:
                    if family == AF_INET6 and error.errno in _NO_IPV6:
                        continue  # IPv6 disabled or not built: nothing to list
                    raise BackendUnavailableError("netlink", str(error)) from error
                names = _interface_names(records)
                for record in records:
                    entry = to_entry(
                        record, transport, interface=names.get(record.ifindex), netns=netns
                    )
                    if entry is not None:
                        entries.append(entry)
    finally:
        sock.close()
    return entries


@lru_cache(maxsize=1)
def _answers() -> bool:
    try:
        sock = _open()
        try:
            _dump(sock, dump_request(AF_INET, IPPROTO_TCP, 0))  # no states: an empty dump
        finally:
            sock.close()
    except OSError:
        return False
    return True


class NetlinkBackend:
    """sock_diag over AF_NETLINK: every field ``ss -tuanpe`` shows, filtered in the kernel."""

    name = "netlink"

    def is_available(self) -> bool:
        """Whether this kernel answers sock_diag requests (it may be compiled out, or
        blocked by a seccomp filter). Asked once per process."""
        return _answers()

    def entries(self, query: SocketQuery) -> list[SocketEntry]:
        return query_entries(query)

    def entries_in_namespace(
        self, namespace: NetNamespace, pid: int | None, query: SocketQuery
    ) -> list[SocketEntry]:
        if namespace.is_current:
            return query_entries(query, namespace)
        from portside.sockets._namespaces import NamespaceGoneError, run_in_namespace

        try:
            return run_in_namespace(namespace, pid, lambda: query_entries(query, namespace))
        except NamespaceGoneError:
            return []
