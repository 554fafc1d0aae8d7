"""The prescan: a forked reader of every fd table and network namespace, started before
portside imports its data model, and what the owner lookup does with it.

Real processes holding real loopback sockets; the prescan's answers are compared with
the ordinary scan's and with /proc itself, and every reader must be reaped.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from portside import _fdtables
from portside.sockets import _owners
from tests.contract._holders import start_holder, stop_holder

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="fd tables and namespaces are Linux's"),
    pytest.mark.skipif(
        os.geteuid() != 0, reason="the prescan runs as root only (other users' fd tables)"
    ),
    # The prescan runs only where the kernel's task iterators do not answer.
    pytest.mark.usefixtures("proc_walks"),
]


@pytest.fixture
def shared_sockets() -> Iterator[tuple[list[int], dict[int, tuple[int, ...]]]]:
    """Four listeners of this process, two of them passed to one child and two (one in
    common) to another: (inodes, inode -> the pids expected to hold it)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.create_server(("127.0.0.1", 0))) for _ in range(4)]
        children = []
        for shared in (sockets[:2], sockets[1:3]):
            child = start_holder(shared)
            stack.callback(stop_holder, child)
            children.append(child.pid)
        inodes = [os.fstat(s.fileno()).st_ino for s in sockets]
        me = os.getpid()
        first, second = children
        yield (
            inodes,
            {
                inodes[0]: tuple(sorted((me, first))),
                inodes[1]: tuple(sorted((me, first, second))),
                inodes[2]: tuple(sorted((me, second))),
                inodes[3]: (me,),
            },
        )


@pytest.fixture
def prescan() -> Iterator[_fdtables.Prescan]:
    """A prescan of every process, as start_prescan makes it (whatever the machine's
    size), installed as the running one; ended and forgotten afterwards."""
    pids = _fdtables.process_ids()
    child = _fdtables.fork_reader(_fdtables._prescan_work(pids, _fdtables.fd_counts_supported()))
    assert child is not None
    running = _fdtables.Prescan(child, len(pids))
    _fdtables._running = running
    try:
        yield running
    finally:
        _fdtables.end_prescan()


def _gone(pid: int) -> bool:
    """Whether ``pid`` no longer exists (reaped: not even a zombie)."""
    return not os.path.exists(f"/proc/{pid}")


def test_the_prescan_finds_the_holders_the_scan_finds(shared_sockets, prescan):
    inodes, expected = shared_sockets
    reader = prescan._child
    assert reader is not None
    namespaces = prescan.namespaces()
    taken = prescan.holders()
    assert taken is not None
    assert namespaces is not None
    holders, tables_read = taken
    assert {inode: tuple(sorted(holders[inode])) for inode in inodes} == expected
    links = _owners._links(inodes)
    scanned = _owners._scan_every_process(
        _fdtables.process_ids(), links, _fdtables.fd_counts_supported()
    )
    assert scanned.holders == expected
    assert tables_read > 0
    # Its namespace list: ours, with a pid that is (or was) inside it.
    ours = os.stat("/proc/self/ns/net").st_ino
    assert ours in namespaces
    assert namespaces[ours] <= min(os.getpid(), *expected[inodes[1]])
    assert _gone(reader[0])  # reaped once its answer was taken
    assert prescan.holders() is None  # taken once


def test_scan_holders_takes_the_prescan_for_sockets_nothing_narrows(shared_sockets, prescan):
    inodes, expected = shared_sockets
    reader = prescan._child
    assert reader is not None
    # Root's sockets, no cgroup: nothing narrows them, so every table is read: the
    # prescan's answer is used.
    result = _owners.scan_holders(dict.fromkeys(inodes, (0, None)))
    assert result.holders == expected
    assert result.processes_seen == prescan.processes
    assert _fdtables.running_prescan() is None
    assert _gone(reader[0])


def test_a_narrowed_lookup_ends_the_prescan_unread(shared_sockets, prescan):
    inodes, expected = shared_sockets
    reader = prescan._child
    assert reader is not None
    # A uid narrows the search: a few tables are read, and the prescan is not waited for.
    result = _owners.scan_holders({inodes[3]: (os.getuid() or 1, None)})
    assert _fdtables.running_prescan() is None
    assert _gone(reader[0])
    if os.getuid() == 0:
        return  # uid 1 holds nothing: the second phase looks everywhere else
    assert result.holders == {inodes[3]: expected[inodes[3]]}


def test_namespace_discovery_takes_the_prescan(prescan):
    from portside.sockets._namespaces import _namespace_pids

    reader = prescan._child
    assert reader is not None
    found = _namespace_pids()
    assert found is prescan.namespaces()  # the prescan's answer, not a walk of its own
    assert os.stat("/proc/self/ns/net").st_ino in found


def test_ending_a_running_prescan_kills_and_reaps_it(prescan):
    reader = prescan._child
    assert reader is not None
    _fdtables.end_prescan()
    assert _gone(reader[0])
    assert _fdtables.running_prescan() is None
    assert prescan.namespaces() is None
    assert prescan.holders() is None


def test_no_prescan_for_few_processes_or_a_threaded_caller(monkeypatch):
    import threading

    monkeypatch.setattr(_fdtables, "PARALLEL_MIN_PROCESSES", 10**9)
    _fdtables.start_prescan()
    assert _fdtables.running_prescan() is None
    monkeypatch.setattr(_fdtables, "PARALLEL_MIN_PROCESSES", 1)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        _fdtables.start_prescan()  # a fork would copy this thread only
        assert _fdtables.running_prescan() is None
    finally:
        stop.set()
        thread.join()


_LS = """
import sys
from portside import _fdtables
_fdtables.PARALLEL_MIN_PROCESSES = int(sys.argv[2])
taken = []
holders = _fdtables.Prescan.holders
_fdtables.Prescan.holders = lambda self: taken.append(1) or holders(self)
from portside.cli import main
status = main(["ls", "--json"])
assert _fdtables.running_prescan() is None
print("prescan taken" if taken else "no prescan", file=sys.stderr)
sys.exit(status)
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the prescan needs two CPUs")
def test_ls_gives_the_same_owners_with_and_without_the_prescan(shared_sockets):
    """End to end through the CLI, in a fresh process: with the threshold lowered the
    prescan runs (root, two CPUs) and is taken when something cannot be narrowed (a
    root socket in the root cgroup: the test's own, or any on the machine); without it,
    the ordinary scan. The same owners either way."""
    inodes, expected = shared_sockets
    port = _port_of(inodes[1])
    root_cgroup = _owners.cgroup2_mount()

    def ls(threshold: int) -> tuple[list[int], bool]:
        done = subprocess.run(
            [sys.executable, "-c", _LS, str(port), str(threshold)],
            capture_output=True,
            text=True,
            check=True,
        )
        listing = json.loads(done.stdout)["sockets"]
        (entry,) = [e for e in listing if e["inode"] == inodes[1]]
        unnarrowed = any(
            e["owner_status"] != "kernel"
            and not e["uid"]
            and (root_cgroup is None or e["cgroup_id"] in (None, root_cgroup[1]))
            for e in listing
        )
        taken = "prescan taken" in done.stderr
        assert taken == (threshold == 1 and unnarrowed), done.stderr
        return sorted(owner["process"]["pid"] for owner in entry["owners"]), taken

    assert ls(1)[0] == list(expected[inodes[1]])
    assert ls(10**9) == (list(expected[inodes[1]]), False)


def _port_of(inode: int) -> int:
    """The port of this process's listener with socket ``inode``."""
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/self/fd/{fd}").st_ino == inode:
                with socket.socket(fileno=os.dup(int(fd))) as found:
                    port: int = found.getsockname()[1]
                    return port
    raise AssertionError(f"no socket {inode} here")
