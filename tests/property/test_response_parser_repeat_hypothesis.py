"""The response parser's repeat path: a head seen whole before, byte for byte, with
exactly its body after it, is taken again instead of parsed again. Whatever the backend
sends, in whatever pieces, the events must be those of a parser without that path."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from hypothesis import example, given, settings
from hypothesis import strategies as st

from portside.errors import ProtocolError
from portside.net.http import MessageEnd, ResponseHead, ResponseParser, Upgraded

_DATE = b"Date: Wed, 02 Dec 2026 14:00:00 GMT\r\n"
MESSAGES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n" + _DATE + b"\r\nabc",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n" + _DATE + b"\r\nxyz",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n" + _DATE + b"\r\nabcd",
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nnot",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 200 OK\r\n",  # one and a bit
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",  # refused
    b"HTTP/1.1 200 OK\nContent-Length: 3\n\nabc",  # bare LF
]


def _summary(events: Sequence[object]) -> list[object]:
    out: list[object] = []
    for event in events:
        if isinstance(event, ResponseHead):
            out.append(
                (
                    "head",
                    event.status,
                    event.reason,
                    event.http_version,
                    tuple(event.headers.items),
                    event.keep_alive,
                    event.content_length,
                    event.chunked,
                )
            )
        elif isinstance(event, MessageEnd):
            out.append("end")
        elif isinstance(event, Upgraded):
            out.append(("upgraded", event.data))
        elif out and isinstance(out[-1], bytes):
            out[-1] += event  # type: ignore[operator]
        else:
            assert isinstance(event, bytes)
            out.append(event)
    return out


def _run(parser: ResponseParser, feeds: list[tuple[str, list[bytes]]]) -> list[object]:
    """Every event (or the error that ended the connection), response by response."""
    seen: list[object] = []
    for method, pieces in feeds:
        parser.expect(method)
        for piece in pieces:
            try:
                seen.extend(_summary(parser.feed(piece)))
            except ProtocolError as exc:
                seen.append(("error", exc.status_hint))
                return seen
    return seen


def _without_repeat() -> ResponseParser:
    parser = ResponseParser()
    parser._remember = lambda data, events: None  # type: ignore[method-assign]
    return parser


@st.composite
def _exchanges(draw: st.DrawFn) -> list[tuple[str, list[bytes]]]:
    feeds = []
    for _ in range(draw(st.integers(1, 8))):
        message = draw(st.sampled_from(MESSAGES))
        method = draw(st.sampled_from(["GET", "GET", "GET", "HEAD"]))
        cuts = sorted(draw(st.lists(st.integers(1, len(message) - 1), max_size=2)))
        bounds = [0, *cuts, len(message)]
        pieces = [message[a:b] for a, b in itertools.pairwise(bounds) if b > a]
        feeds.append((method, pieces))
    return feeds


@settings(max_examples=400, deadline=None)
@given(_exchanges())
@example(  # found by Hypothesis: after a closing response httptools refuses more bytes
    [("GET", [MESSAGES[0]]), ("GET", [MESSAGES[9]]), ("GET", [MESSAGES[0]])]
)
def test_the_repeat_path_gives_what_parsing_gives(feeds):
    assert _run(ResponseParser(), feeds) == _run(_without_repeat(), feeds)


def test_a_repeated_whole_response_takes_the_path_and_a_different_one_does_not():
    parser = ResponseParser()
    first = parser.feed(MESSAGES[0])
    assert parser._repeat is not None
    again = parser.feed(MESSAGES[1])  # the same head, another body of the same length
    assert again[0] is first[0]  # the head taken again, not parsed again
    assert again[1:2] == [b"xyz"]
    assert isinstance(again[2], MessageEnd)
    longer = parser.feed(MESSAGES[3])  # another head (Content-Length 4): parsed
    assert longer[0] is not first[0]
    assert isinstance(longer[0], ResponseHead)
    assert longer[0].content_length == 4
    # Same head, a body cut in two: parsed, and the same events.
    message = MESSAGES[3]
    split = [*parser.feed(message[:-2]), *parser.feed(message[-2:])]
    assert _summary(split) == _summary(longer)
