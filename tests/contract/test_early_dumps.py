"""The socket-table dumps an inspection command sends as it starts (portside._early):
real sock_diag dumps of this machine, the same entries as the usual way, and every one
the CLI starts is the one the library then asks for."""

import json
import socket
import sys
import time
from collections.abc import Iterator

import pytest

from portside import _early
from portside._diagrequests import (
    ALL_TCP_STATES,
    ALL_UDP_STATES,
    IPPROTO_TCP,
    IPPROTO_UDP,
    table_requests,
)
from portside._diagsocket import dump_jobs, early_key
from portside.cli import main
from portside.models import Transport
from portside.sockdiag import dump_entries
from portside.sockets import SocketQuery
from portside.sockets._backend import end_reads, gather_reads

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="sock_diag is Linux's")

EVERY_STATE = [(IPPROTO_TCP, ALL_TCP_STATES), (IPPROTO_UDP, ALL_UDP_STATES)]


@pytest.fixture
def port() -> Iterator[int]:
    """A TCP listener and a UDP socket of this test on one loopback port."""
    with socket.create_server(("127.0.0.1", 0)) as tcp:
        number = tcp.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("127.0.0.1", number))
            except OSError:
                pytest.skip("the port is taken for UDP")
            yield number
    _early.end()


def _kept(entries) -> set[tuple[str, str, int, str, int]]:
    return {(e.transport, e.local.ip, e.local.port, e.state, e.inode) for e in entries}


def test_a_raw_dump_ends_with_the_dump_and_holds_the_sockets(port: int):
    jobs = dump_jobs(EVERY_STATE, port)
    requests = table_requests(EVERY_STATE, port)
    assert [key for key, _job in jobs] == [early_key(request) for _p, _f, request in requests]
    before = time.monotonic()
    timed = jobs[0][1]()  # TCP, both families; when the dump ended
    assert isinstance(timed, tuple)
    datagrams, ended = timed
    assert before <= ended <= time.monotonic()
    assert isinstance(datagrams, list)
    found = []
    for index, datagram in enumerate(datagrams):
        entries, done, error = dump_entries(datagram, Transport.TCP)
        found.extend(entries)
        assert done is (index == len(datagrams) - 1)
        assert error == 0
    assert [(e.local.ip, e.local.port, e.state) for e in found] == [("127.0.0.1", port, "listen")]


def test_the_table_takes_the_early_dumps_and_finds_what_a_fresh_one_finds(port: int):
    from portside.sockets._netlink import query_entries

    query = SocketQuery(port=port)
    fresh = query_entries(query)
    _early.start([dump_jobs(EVERY_STATE, port)])
    started = set(_early._answers)
    assert len(started) == 3  # TCP of both families, UDP of each
    early = query_entries(query)
    assert _early._answers == {}  # every one taken
    assert _kept(early) == _kept(fresh)
    assert {(e.transport, e.state) for e in early} == {("tcp", "listen"), ("udp", "unconnected")}
    # Taken once: the next query dumps afresh, and finds the same.
    assert _kept(query_entries(query)) == _kept(fresh)


def test_a_table_read_from_the_early_dumps_is_dated_by_them(port: int):
    """The owners' lookup learns when the table was read: as the early dumps ended, not
    when they were taken; a fresh dump, as it ends."""
    from portside.sockets._netlink import query_entries

    query = SocketQuery(port=port)
    _early.start([dump_jobs(EVERY_STATE, port)])
    ends = []
    for done, answer in list(_early._answers.values()):
        with done:  # every dump has ended
            pass
        [timed] = answer
        assert isinstance(timed, tuple)
        ends.append(timed[1])
    taken_at = time.monotonic()
    reads = gather_reads()
    try:
        query_entries(query)
    finally:
        end_reads()
    assert sorted(reads) == sorted(ends)
    assert max(reads) < taken_at
    reads = gather_reads()
    try:
        query_entries(query)  # afresh: nothing early is left
    finally:
        end_reads()
    assert len(reads) == 3
    assert min(reads) > taken_at


@pytest.mark.parametrize(
    "argv",
    [
        ["who", "{port}", "--json"],
        ["who", "127.0.0.1:{port}", "--json"],
        ["ls", "--json"],
        ["ls", "--all", "--port", "{port}", "--json"],
        ["ls", "--proto", "udp", "--json"],
        ["--json"],
    ],
    ids=lambda argv: " ".join(argv),
)
def test_the_cli_starts_the_dumps_its_command_takes(
    argv: list[str], port: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.delenv("PORTSIDE_BACKEND", raising=False)
    started: list[object] = []
    left: list[object] = []
    real_start, real_end = _early.start, _early.end

    def start(groups):
        started.extend(key for jobs in groups for key, _job in jobs if key[0] == "sock_diag")
        real_start(groups)

    def end():
        left.extend(
            key for key in _early._answers if isinstance(key, tuple) and key[0] == "sock_diag"
        )
        real_end()

    monkeypatch.setattr(_early, "start", start)
    monkeypatch.setattr(_early, "end", end)
    status = main([arg.format(port=port) for arg in argv])
    assert status == 0
    document = json.loads(capsys.readouterr().out)
    assert started  # the command's table was dumped early
    assert left == []  # and every early dump was the one asked for
    if argv[0] == "who":
        assert {(s["transport"], s["state"]) for s in document["sockets"]} >= {
            ("tcp", "listen"),
            ("udp", "unconnected"),
        }


def test_the_owners_snapshot_runs_after_the_dumps_in_their_thread(
    monkeypatch: pytest.MonkeyPatch,
):
    """ls's early jobs: the dumps, then the task_file iterator, in one thread (so its
    snapshot is newer than the table); the task iterator in the other."""
    from portside import _taskiter
    from portside._diagrequests import LISTENING_TCP_STATES, LISTENING_UDP_STATES
    from portside.cli import _early_jobs, _fast_options

    monkeypatch.delenv("PORTSIDE_BACKEND", raising=False)
    monkeypatch.setattr(_taskiter, "known_to_work", lambda: True)  # the arrangement only
    options = _fast_options(["ls", "--json"])
    assert options is not None
    listening = [(IPPROTO_TCP, LISTENING_TCP_STATES), (IPPROTO_UDP, LISTENING_UDP_STATES)]
    dumps = [key for key, _job in dump_jobs(listening, None)]
    files, tasks = (_taskiter._early_key(which) for which in (_taskiter._FILES, _taskiter._TASKS))
    groups = [[key for key, _job in jobs] for jobs in _early_jobs(options)]
    assert groups == [[*dumps, files], [tasks]]
