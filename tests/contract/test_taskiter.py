"""The kernel's task iterators (BPF) against the /proc walks they replace: real
processes holding real loopback sockets, a real network namespace, the layout cache in
a private directory, and the switch that turns them off."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from portside import _early, _fdtables, _taskiter
from portside.sockets import _owners
from tests.contract._holders import start_holder, stop_holder

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="BPF task iterators are Linux's"),
    pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root"),
    pytest.mark.skipif(not os.access(_taskiter.BTF_PATH, os.R_OK), reason="this kernel has no BTF"),
]


@pytest.fixture
def fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The module as in a new process, with its layout cache in a private directory
    (returned); the module's state is put back afterwards."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(_taskiter.ENV, raising=False)
    for name in ("_links", "_read_cache"):
        monkeypatch.setattr(_taskiter, name, [])
    _early.end()  # no answers of an earlier start
    return tmp_path / "portside" / _taskiter.CACHE_NAME


@pytest.fixture
def shared() -> Iterator[tuple[dict[int, list[int]], int]]:
    """Three listeners of this process, two passed to a child, one also dup'ed here:
    (inode -> the pids that must hold it, the child's pid)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.create_server(("127.0.0.1", 0))) for _ in range(3)]
        duplicate = os.dup(sockets[0].fileno())
        stack.callback(os.close, duplicate)
        child = start_holder(sockets[:2])
        stack.callback(stop_holder, child)
        me = os.getpid()
        expected = {
            os.fstat(sockets[0].fileno()).st_ino: sorted([me, child.pid]),
            os.fstat(sockets[1].fileno()).st_ino: sorted([me, child.pid]),
            os.fstat(sockets[2].fileno()).st_ino: [me],
        }
        yield expected, child.pid


def test_the_iterator_finds_every_holder_as_the_proc_walk_does(fresh: Path, shared):
    expected, _child = shared
    iterated = _taskiter.socket_holders()
    assert iterated is not None, "the task_file iterator did not run"
    holders, processes = iterated
    walked, _reads = _fdtables.read_tables(
        _fdtables.process_ids(), _fdtables.socket_inode, -1, True
    )
    for inode, pids in expected.items():
        assert holders[inode] == pids  # the dup'ed fd counts once
        assert sorted(walked[inode]) == pids
    # The whole machine: the same sockets with the same holders, less what came and
    # went between the two reads.
    common = set(holders) & set(walked)
    assert len(common) >= 0.9 * max(len(holders), len(walked))
    agreeing = sum(1 for inode in common if holders[inode] == sorted(walked[inode]))
    assert agreeing >= 0.95 * len(common)
    assert processes >= 2


def test_the_task_iterator_finds_every_namespace_with_its_lowest_pid(fresh: Path):
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is not installed")
    child = subprocess.Popen(
        [unshare, "--net", "--", "sh", "-c", "echo ready; exec sleep 60"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"  # the shell runs in the new namespace
        namespace = os.stat(f"/proc/{child.pid}/ns/net").st_ino
        assert namespace != os.stat("/proc/self/ns/net").st_ino
        iterated = _taskiter.namespace_pids()
        walked = _fdtables.namespace_pids()
        assert iterated is not None
        assert iterated[namespace] == child.pid == walked[namespace]
        assert (
            iterated[os.stat("/proc/self/ns/net").st_ino]
            == walked[os.stat("/proc/self/ns/net").st_ino]
        )
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()


def test_the_layout_is_cached_whole_and_read_back(fresh: Path):
    assert not fresh.exists()
    assert _taskiter.namespace_pids() is not None
    key, values, end = fresh.read_text().split("\n")
    assert end == ""
    assert key == _taskiter._cache_key()
    from portside._btf import kernel_layout

    with open(_taskiter.BTF_PATH, "rb") as handle:
        assert tuple(map(int, values.split())) == kernel_layout(handle.read()).values()
    assert list(fresh.parent.iterdir()) == [fresh]  # no temporary file left behind
    assert fresh.parent.stat().st_mode & 0o777 == 0o700
    # A new process reads it back without walking the BTF.
    for name in ("_links", "_read_cache"):
        getattr(_taskiter, name).clear()
    assert _taskiter.known_to_work()


def test_a_cache_of_another_kernel_or_shape_is_found_again(fresh: Path):
    fresh.parent.mkdir(mode=0o700, parents=True)
    fresh.write_text(f"{_taskiter._cache_key()}\n1 2 3\n")  # too few values
    assert _taskiter.socket_holders() is not None
    assert len(fresh.read_text().split("\n")[1].split()) == 12
    _taskiter._links.clear()
    _taskiter._read_cache.clear()
    fresh.write_text("1 another-kernel\n1 2 3 4 5 6 7 8 9 10 11 12\n")
    assert not _taskiter.known_to_work()
    assert _taskiter.socket_holders() is not None
    assert fresh.read_text().split("\n")[0] == _taskiter._cache_key()


def test_a_kernel_that_refused_is_not_asked_again(fresh: Path):
    fresh.parent.mkdir(mode=0o700, parents=True)
    fresh.write_text(f"{_taskiter._cache_key()}\nrefused\n")
    assert not _taskiter.known_to_work()
    assert _taskiter.socket_holders() is None
    assert _taskiter.namespace_pids() is None
    assert fresh.read_text().split("\n")[1] == "refused"


def test_a_wrong_layout_is_refused_by_the_verifier_and_remembered(fresh: Path):
    """Offsets that do not match this kernel: the verifier refuses the programs (a
    pointer read where the kernel has none), nothing runs, and the refusal is cached."""
    fresh.parent.mkdir(mode=0o700, parents=True)
    from portside._btf import kernel_layout

    with open(_taskiter.BTF_PATH, "rb") as handle:
        values = list(kernel_layout(handle.read()).values())
    values[4] += 1  # file->f_inode, one byte off: no pointer there
    fresh.write_text(f"{_taskiter._cache_key()}\n{' '.join(map(str, values))}\n")
    assert _taskiter.socket_holders() is None
    assert fresh.read_text().split("\n")[1] == "refused"


def test_a_cache_directory_of_another_user_is_not_written_and_proc_is_used(
    fresh: Path, monkeypatch: pytest.MonkeyPatch
):
    fresh.parent.mkdir(mode=0o755, parents=True)
    os.chown(fresh.parent, 65534, 65534)  # nobody's, as a home sudo kept would be
    assert _taskiter.socket_holders() is None
    assert not fresh.exists()


def test_off_switch(fresh: Path, monkeypatch: pytest.MonkeyPatch, shared):
    expected, _child = shared
    assert _taskiter.socket_holders() is not None
    monkeypatch.setenv(_taskiter.ENV, "off")
    assert not _taskiter.usable()
    assert _taskiter.socket_holders() is None  # asked every time, links made or not
    assert _taskiter.namespace_pids() is None
    scan = _owners.scan_holders(dict.fromkeys(expected, (0, None)))
    assert scan.processes_read > 0  # the /proc walk answered
    assert {inode: list(pids) for inode, pids in scan.holders.items()} == expected


def test_scan_holders_takes_the_iterators_answer(fresh: Path, shared):
    expected, _child = shared
    scan = _owners.scan_holders(dict.fromkeys(expected, (0, None)))
    assert scan.processes_read == 0  # no fd table read through /proc
    assert {inode: list(pids) for inode, pids in scan.holders.items()} == expected


def test_the_early_run_answers_once_then_each_call_runs_afresh(fresh: Path):
    assert _taskiter.socket_holders() is not None  # the layout is cached now
    _taskiter._links.clear()
    _early.start([_taskiter.early_jobs()])
    with socket.create_server(("127.0.0.1", 0)) as late:
        inode = os.fstat(late.fileno()).st_ino
        early = _taskiter.socket_holders()
        again = _taskiter.socket_holders()
    assert early is not None
    assert again is not None
    # The early answer was taken before the socket existed, unless the thread was slower
    # than this one: either way the second call, a fresh run, sees it.
    assert again[0][inode] == [os.getpid()]
    tasks, files = (_taskiter._early_key(which) for which in (_taskiter._TASKS, _taskiter._FILES))
    assert set(_early._answers) == {tasks}  # the files' answer taken, once
    assert _early.take(files) == (False, None)
    assert _taskiter.namespace_pids() is not None
    assert _early._answers == {}
    _early.end()


def test_a_socket_younger_than_the_early_run_is_still_found(fresh: Path):
    """The early snapshot does not know a socket made after it: asked for that socket,
    the iterator runs again rather than call it held by nobody."""
    assert _taskiter.socket_holders() is not None
    _early.start([_taskiter.early_jobs()])
    done, answer = _early._answers[_taskiter._early_key(_taskiter._FILES)]
    with done:  # the run has ended
        pass
    [timed] = answer
    assert isinstance(timed, tuple)
    started, snapshot = timed
    assert isinstance(snapshot, bytes)
    with socket.create_server(("127.0.0.1", 0)) as late:
        inode = os.fstat(late.fileno()).st_ino
        assert inode.to_bytes(8, "little") not in snapshot  # younger than the snapshot
        read = time.monotonic()  # its table, read after the snapshot began
        assert read > started
        found = _taskiter.socket_holders([inode], table_read=read)
    assert found is not None
    assert found[0] == {inode: [os.getpid()]}
    _early.end()


@pytest.mark.parametrize("table_read", ["before the snapshot", "after it", "unknown"])
def test_a_socket_the_early_run_lacks_is_looked_for_again_unless_its_table_is_older(
    fresh: Path, table_read: str, monkeypatch: pytest.MonkeyPatch
):
    """A socket of a table read before the early snapshot began, which the snapshot does
    not show held, was held by nobody: no second run. Read after it, or at an unknown
    moment, it may be younger: the iterator runs again."""
    assert _taskiter.socket_holders() is not None
    with socket.create_server(("127.0.0.1", 0)) as gone:
        inode = os.fstat(gone.fileno()).st_ino  # closed before the snapshot: no holder
    read_at = time.monotonic()
    _early.start([_taskiter.early_jobs()])
    done, answer = _early._answers[_taskiter._early_key(_taskiter._FILES)]
    with done:
        pass
    [timed] = answer
    assert isinstance(timed, tuple)
    started = timed[0]
    assert started > read_at
    runs: list[int] = []
    real_run = _taskiter._run

    def counted_run(link: int) -> bytes | None:
        runs.append(link)
        return real_run(link)

    monkeypatch.setattr(_taskiter, "_run", counted_run)
    moment = {"before the snapshot": read_at, "after it": time.monotonic(), "unknown": None}
    found = _taskiter.socket_holders([inode], table_read=moment[table_read])
    _early.end()
    assert found is not None
    assert inode not in found[0]
    assert len(runs) == (0 if table_read == "before the snapshot" else 1)


def test_who_names_the_same_owners_with_and_without_the_iterators(shared):
    expected, child = shared
    inode = next(i for i, pids in expected.items() if len(pids) == 2)
    from portside.sockets import socket_table

    for entry in socket_table():
        if entry.inode == inode:
            port = entry.local.port
            break
    else:
        pytest.fail("the shared listener is not in the socket table")
    answers = []
    for switch in ("on", "off"):
        env = {**os.environ, _taskiter.ENV: switch}
        result = subprocess.run(
            [sys.executable, "-m", "portside", "who", str(port), "--json"],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        [found] = json.loads(result.stdout)["sockets"]
        answers.append(sorted(owner["process"]["pid"] for owner in found["owners"]))
    assert answers[0] == answers[1] == sorted([os.getpid(), child])
