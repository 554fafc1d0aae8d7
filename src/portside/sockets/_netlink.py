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
from collections.abc import Callable, Iterable
from functools import lru_cache
from time import monotonic

from portside._diagrequests import table_requests
from portside._diagsocket import RECV_BYTES, early_key, open_sock_diag
from portside._early import take
from portside.errors import AccessDeniedError, BackendUnavailableError
from portside.models import NetNamespace, SocketEntry, Transport
from portside.sockdiag import (
    AF_INET,
    AF_INET6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    DiagRecord,
    dump_entries,
    dump_request,
    parse_dump,
    state_mask,
)
from portside.sockets._backend import SocketQuery, note_table_read

assert sys.platform == "linux"  # noqa: S101 -- mypy skips this module on other platforms

_PROTOCOLS = {Transport.TCP: IPPROTO_TCP, Transport.UDP: IPPROTO_UDP}
_TRANSPORTS = {IPPROTO_TCP: Transport.TCP, IPPROTO_UDP: Transport.UDP}
_NO_IPV6 = (errno.ENOENT, errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT)
#: Not empty once the kernel refused a TCP request of both families (TCPDIAG_GETSOCK).
_TCP_REQUEST_REFUSED: list[bool] = []


def _dump(sock: _socket.socket, request: bytes) -> list[DiagRecord]:
    sock.send(request)
    records: list[DiagRecord] = []
    while True:
        chunk = parse_dump(sock.recv(RECV_BYTES))
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
    if netns is None or netns.is_current:
        # Made as the command started, when it did (portside._early): this namespace's.
        made, answer = take(early_key(request))
        if made:
            timed: tuple[list[bytes], float] = answer  # type: ignore[assignment]  # timed_dump's
            entries = _parsed(timed[0], transport, netns, interface_name)
            if entries is not None:
                note_table_read(timed[1])
                return entries
            # Not a whole dump after all: asked again, below.
    sock.send(request)
    received = iter(lambda: sock.recv(RECV_BYTES), None)  # until the dump says it ended
    entries = _parsed(received, transport, netns, interface_name)
    assert entries is not None  # noqa: S101 -- the received datagrams never run out
    note_table_read(monotonic())
    return entries


def _parsed(
    datagrams: Iterable[bytes],
    transport: Transport,
    netns: NetNamespace | None,
    interface_name: Callable[[int], str],
) -> list[SocketEntry] | None:
    """The entries of one dump's ``datagrams``, read up to the one that ends it; None
    when they run out before it. Raises OSError with the errno the kernel reported."""
    entries: list[SocketEntry] = []
    for datagram in datagrams:
        chunk, done, error = dump_entries(
            datagram, transport, netns=netns, interface_name=interface_name
        )
        entries.extend(chunk)
        if done:
            if error:
                raise OSError(error, f"sock_diag dump failed: {error}")
            return entries
    return None


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
    masks: list[tuple[int, int]] = [
        (protocol, state_mask(transport, query.states))
        for transport, protocol in _PROTOCOLS.items()
        if transport in query.transports
    ]
    requests = table_requests(masks, query.port, tcp_in_one=not _TCP_REQUEST_REFUSED)
    if not requests:
        return []
    entries: list[SocketEntry] = []
    try:
        sock = open_sock_diag()
    except PermissionError as error:
        raise AccessDeniedError("the kernel socket table (NETLINK_SOCK_DIAG)") from error
    except OSError as error:
        raise BackendUnavailableError("netlink", str(error)) from error
    interface_name = _interface_namer()
    try:
        for protocol, family, request in requests:
            transport = _TRANSPORTS[protocol]
            if family:
                entries.extend(
                    _family_dump(sock, family, request, transport, netns, interface_name)
                )
                continue
            try:
                entries.extend(_dump_entries(sock, request, transport, netns, interface_name))
            except OSError:
                # The TCP request of both families, not answered by this kernel: one per
                # family from now on, on a fresh socket (nothing of this dump can arrive
                # there).
                _TCP_REQUEST_REFUSED.append(True)
                sock.close()
                sock = open_sock_diag()
                tcp_masks = [(tcp, mask) for tcp, mask in masks if tcp == protocol]
                for _tcp, each, again in table_requests(tcp_masks, query.port, tcp_in_one=False):
                    entries.extend(
                        _family_dump(sock, each, again, transport, netns, interface_name)
                    )
    finally:
        sock.close()
    return entries


def _family_dump(
    sock: _socket.socket,
    family: int,
    request: bytes,
    transport: Transport,
    netns: NetNamespace | None,
    interface_name: Callable[[int], str],
) -> list[SocketEntry]:
    """One family's dump; nothing when it is IPv6 and this kernel has none."""
    try:
        return _dump_entries(sock, request, transport, netns, interface_name)
    except OSError as error:
        if family == AF_INET6 and error.errno in _NO_IPV6:
            return []  # IPv6 disabled or not built: nothing to list
        raise BackendUnavailableError("netlink", str(error)) from error


@lru_cache(maxsize=1)
def _answers() -> bool:
    try:
        sock = open_sock_diag()
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
