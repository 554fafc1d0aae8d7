"""The sock_diag requests of a socket-table query, and where a dump's datagrams end."""

import struct

import pytest

from portside._diagrequests import (
    AF_INET,
    AF_INET6,
    ALL_TCP_STATES,
    ALL_UDP_STATES,
    IPPROTO_TCP,
    IPPROTO_UDP,
    LISTENING_TCP_STATES,
    LISTENING_UDP_STATES,
    NLMSG_DONE,
    NLMSG_ERROR,
    SOCK_DIAG_BY_FAMILY,
    dump_ended,
    dump_request,
    table_requests,
    tcp_dump_request,
)
from portside.models import SocketState, Transport
from portside.sockdiag import state_mask


def message(kind: int, payload: bytes) -> bytes:
    length = 16 + len(payload)
    padding = b"\0" * ((4 - length % 4) % 4)
    return struct.pack("=IHHII", length, kind, 2, 1, 0) + payload + padding


RECORD = message(SOCK_DIAG_BY_FAMILY, bytes(72))
DONE = message(NLMSG_DONE, struct.pack("=i", 0))


def test_the_masks_are_the_state_names_masks():
    listening = {SocketState.LISTEN, SocketState.UNCONNECTED}
    assert state_mask(Transport.TCP, listening) == LISTENING_TCP_STATES
    assert state_mask(Transport.UDP, listening) == LISTENING_UDP_STATES
    assert state_mask(Transport.TCP, None) == ALL_TCP_STATES
    assert state_mask(Transport.UDP, None) == ALL_UDP_STATES


def test_a_table_query_is_one_tcp_request_then_one_udp_request_per_family():
    masks = [(IPPROTO_TCP, ALL_TCP_STATES), (IPPROTO_UDP, ALL_UDP_STATES)]
    assert table_requests(masks, 8080) == [
        (IPPROTO_TCP, 0, tcp_dump_request(ALL_TCP_STATES, port=8080, seq=1)),
        (
            IPPROTO_UDP,
            AF_INET,
            dump_request(AF_INET, IPPROTO_UDP, ALL_UDP_STATES, port=8080, seq=2),
        ),
        (
            IPPROTO_UDP,
            AF_INET6,
            dump_request(AF_INET6, IPPROTO_UDP, ALL_UDP_STATES, port=8080, seq=3),
        ),
    ]


def test_tcp_one_family_at_a_time_and_empty_masks_skipped():
    masks = [(IPPROTO_TCP, LISTENING_TCP_STATES), (IPPROTO_UDP, 0)]
    assert table_requests(masks, None, tcp_in_one=False) == [
        (IPPROTO_TCP, AF_INET, dump_request(AF_INET, IPPROTO_TCP, LISTENING_TCP_STATES, seq=1)),
        (IPPROTO_TCP, AF_INET6, dump_request(AF_INET6, IPPROTO_TCP, LISTENING_TCP_STATES, seq=2)),
    ]
    assert table_requests([(IPPROTO_UDP, 0)], None) == []


def test_a_port_out_of_range_is_refused():
    with pytest.raises(ValueError, match="port"):
        table_requests([(IPPROTO_TCP, ALL_TCP_STATES)], 65536)


@pytest.mark.parametrize(
    ("datagram", "ended"),
    [
        (RECORD * 3, False),
        (RECORD * 3 + DONE, True),
        (DONE, True),
        (message(NLMSG_ERROR, struct.pack("=i", -2) + bytes(16)), True),
        (RECORD[:10], True),  # cut short: nothing can follow it
        (RECORD[:19], False),  # a header, and less than a DONE: the parser judges it
        # A record whose last 20 bytes read like a DONE: taken for the last datagram;
        # the parser then finds no DONE in it, and the dump is asked for again.
        (
            message(
                SOCK_DIAG_BY_FAMILY,
                bytes(52) + struct.pack("=IHHII", 20, NLMSG_DONE, 2, 1, 0) + bytes(4),
            ),
            True,
        ),
    ],
    ids=["records", "records then done", "done alone", "error", "cut", "short", "look-alike"],
)
def test_where_a_dump_ends(datagram: bytes, ended: bool):
    assert dump_ended(datagram) is ended
