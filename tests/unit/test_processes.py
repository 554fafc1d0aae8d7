"""Process details read from /proc, checked against the running processes themselves."""

import os
import signal
import subprocess
import sys
import time

import pytest

from portside.models import ProcessState
from portside.processes import ancestors, parse_stat, process_info

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")


def test_a_comm_with_spaces_and_parentheses_is_split_correctly():
    text = "42 (a (weird) name) T 7 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 12345 0 0"
    assert parse_stat(text) == ("a (weird) name", ProcessState.STOPPED, 7, 12345)


def test_our_own_process_is_described_truly():
    me = process_info(os.getpid())
    assert me is not None
    assert me.pid == os.getpid()
    assert me.ppid == os.getppid()
    assert me.uid == os.geteuid()
    assert me.cwd == os.getcwd()
    assert me.cmdline[0].endswith(("python", "python3", "pytest")) or "python" in me.cmdline[0]
    assert me.state is ProcessState.RUNNING
    assert me.start_time is not None
    assert abs(me.start_time - time.time()) < 24 * 3600


def test_a_stopped_child_reads_as_stopped_and_names_its_parent():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.kill(child.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 10
        info = process_info(child.pid)
        while (
            info is not None
            and info.state is not ProcessState.STOPPED
            and time.monotonic() < deadline
        ):
            info = process_info(child.pid)
        assert info is not None
        assert info.state is ProcessState.STOPPED
        assert info.ppid == os.getpid()
        assert [p.pid for p in ancestors(info)][:1] == [os.getpid()]
    finally:
        child.kill()
        child.wait()


def test_a_vanished_process_is_none():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_info(child.pid) is None
