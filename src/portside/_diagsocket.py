"""The NETLINK_SOCK_DIAG socket, and the raw datagrams of whole dumps.

Light on purpose (``_socket`` and :mod:`portside._diagrequests` only): a command sends
its socket-table dumps from a thread as it starts (:mod:`portside._early`), before the
data model and the parser (:mod:`portside.sockdiag`) are imported.
"""

from __future__ import annotations

import _socket

from portside._diagrequests import NETLINK_SOCK_DIAG, dump_ended, table_requests

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from portside._early import Job

RECV_BYTES = 65536
_RECV_TIMEOUT = 2.0  # seconds: a dump never seen to end does not hold a command up


def open_sock_diag() -> _socket.socket:
    """A bound NETLINK_SOCK_DIAG socket (``_socket``'s: the ``socket`` wrapper module costs
    milliseconds to import and adds nothing to a socket that only sends and receives)."""
    sock = _socket.socket(
        _socket.AF_NETLINK, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG
    )
    try:
        sock.bind((0, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def raw_dump(request: bytes) -> list[bytes]:
    """Every datagram the kernel answers the sock_diag dump ``request`` with, on a socket
    of its own, the last one included (NLMSG_DONE or NLMSG_ERROR)."""
    sock = open_sock_diag()
    try:
        sock.settimeout(_RECV_TIMEOUT)
        sock.send(request)
        datagrams: list[bytes] = []
        while True:
            datagram = sock.recv(RECV_BYTES)
            datagrams.append(datagram)
            if dump_ended(datagram):
                return datagrams
    finally:
        sock.close()


def timed_dump(request: bytes) -> tuple[list[bytes], float]:
    """:func:`raw_dump`'s datagrams, and when (``time.monotonic``) the dump ended."""
    from time import monotonic

    datagrams = raw_dump(request)
    return datagrams, monotonic()


def early_key(request: bytes) -> tuple[str, bytes]:
    """The key of the early job that made the dump ``request`` (see :func:`dump_jobs`)."""
    return ("sock_diag", request)


def dump_jobs(masks: Sequence[tuple[int, int]], port: int | None) -> list[Job]:
    """Jobs for :func:`portside._early.start` that make the dumps of one socket-table
    query in this network namespace (``masks`` and ``port`` as
    :func:`portside._diagrequests.table_requests` takes them), each answering
    :func:`timed_dump` under :func:`early_key` of its request."""
    return [
        (early_key(request), lambda request=request: timed_dump(request))  # type: ignore[misc]
        for _protocol, _family, request in table_requests(masks, port)
    ]
