"""The Linux fast path: the socket table through NETLINK_SOCK_DIAG, as ``ss`` reads it.

One dump per protocol (TCP: both families in one request, as the kernel's tables are
shared; UDP: one per family) that the query needs, with the states as the kernel's
bitmask and the port filter as kernel bytecode, so a per-port question costs the kernel
one walk of each table and us a handful of records. All the format code is in
:mod:`portside.sockdiag`; this class only moves the bytes.
"""

from __future__ import annotations

import _socket
import errno
import sys
from collections.abc import Callable
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
    dump_entries,
    dump_request,
    parse_dump,
    state_mask,
    tcp_dump_request,
)
from portside.sockets._backend import SocketQuery

assert sys.platform == "linux"  # noqa: S101 -- mypy skips this module on other platforms

_PROTOCOLS = {Transport.TCP: IPPROTO_TCP, Transport.UDP: IPPROTO_UDP}
_RECV_BYTES = 65536
_NO_IPV6 = (errno.ENOENT, errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT)
#: Not empty once the kernel refused a TCP request of both families (TCPDIAG_GETSOCK).
_TCP_REQUEST_REFUSED: list[bool] = []


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


def _dump_entries(
    sock: _socket.socket,
    request: bytes,
    transport: Transport,
    netns: NetNamespace | None,
    interface_name: Callable[[int], str],
) -> list[SocketEntry]:
    sock.send(request)
    entries: list[SocketEntry] = []
    while True:
        chunk, done, error = dump_entries(
            sock.recv(_RECV_BYTES), transport, netns=netns, interface_name=interface_name
        )
        entries.extend(chunk)
        if done:
            if error:
                raise OSError(error, f"sock_diag dump failed: {error}")
            return entries


def _interface_namer() -> Callable[[int], str]:
    """ifindex -> name for the sockets bound to a device (SO_BINDTODEVICE), remembered;
    looked up in the calling thread's namespace, which is the dumped one."""
    names: dict[int, str] = {}

    def name(index: int) -> str:
        found = names.get(index)
        if found is None:
            try:
                found = _socket.if_indextoname(index)
            except OSError:
                found = str(index)  # the device went away since
            names[index] = found
        return found

    return name


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
    interface_name = _interface_namer()
    try:
        seq = 0
        for transport, mask in plan:
            if transport is Transport.TCP and not _TCP_REQUEST_REFUSED:
                seq += 1
                request = tcp_dump_request(mask, port=query.port, seq=seq)
                try:
                    entries.extend(_dump_entries(sock, request, transport, netns, interface_name))
                    continue
                except OSError:
                    # Not answered by this kernel: one request per family from now on,
                    # on a fresh socket (nothing of this dump can arrive there).
                    _TCP_REQUEST_REFUSED.append(True)
                    sock.close()
                    sock = _open()
            protocol = _PROTOCOLS[transport]
            for family in (AF_INET, AF_INET6):
                seq += 1
                request = dump_request(family, protocol, mask, port=query.port, seq=seq)
                try:
                    found = _dump_entries(sock, request, transport, netns, interface_name)
                except OSError as error:
                    if family == AF_INET6 and error.errno in _NO_IPV6:
                        continue  # IPv6 disabled or not built: nothing to list
                    raise BackendUnavailableError("netlink", str(error)) from error
                entries.extend(found)
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
