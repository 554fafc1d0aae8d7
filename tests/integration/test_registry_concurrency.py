"""The registry under real concurrency: 8 processes reserving at once, and writers killed
with SIGKILL in the middle of their work."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from portside.registry import GLOBAL_SCOPE, Registry

PROCESSES = 8
NAMES_EACH = 250
SHARED = 50  # names every process reserves, to race on the same rows

#: Reserves this process's names once every worker is ready (the parent writes "go"),
#: then prints {name: port} as JSON.
WORKER = r"""
import json, sys
from portside.registry import Registry
index, each, shared = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
names = [f"shared-{k}" for k in range(shared)] + [f"p{index}-n{j}" for j in range(each - shared)]
if index % 2:
    names.reverse()
registry = Registry.open()
print("ready", flush=True)
assert sys.stdin.readline() == "go\n"
got = {name: registry.reserve(name, scope="global").reservation.port for name in names}
registry.close()
print(json.dumps(got), flush=True)
"""

#: Reserves names forever, printing each one after its transaction committed.
FOREVER = r"""
import sys
from portside.registry import Registry
registry = Registry.open()
prefix = sys.argv[1]
i = 0
while True:
    port = registry.reserve(f"{prefix}-{i}", scope="global").reservation.port
    print(f"{prefix}-{i} {port}", flush=True)
    i += 1
"""

#: Opens a write transaction, writes enough rows that SQLite spills pages to the WAL
#: before commit, says so, and waits (to be killed) without committing.
MID_TRANSACTION = r"""
import sys, time
from portside.registry import Registry
registry = Registry.open()
registry._db.execute("PRAGMA cache_size = 8")
with registry._write() as db:
    for i in range(1, 9000):  # ports below 10000: never the kept reservation's
        db.execute(
            "INSERT INTO reservations (scope, name, port, created) VALUES ('global', ?, ?, 0)",
            (f"uncommitted-{i}", i),
        )
    print("in-transaction", flush=True)
    sys.stdin.read()
"""


#: Opens (creating, on the first of them) the registry the moment the parent says "go".
OPENER = r"""
import sys
from portside.registry import Registry
print("ready", flush=True)
assert sys.stdin.readline() == "go\n"
with Registry.open() as registry:
    registry.reserve("opener-" + sys.argv[1], scope="global")
"""


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    path: Path = tmp_path / "home"
    monkeypatch.setenv("PORTSIDE_HOME", str(path))
    return path


def _spawn(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )


def _check_consistent(path: Path) -> dict[str, int]:
    """integrity_check is ok, ports are unique; returns name -> port."""
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = raw.execute("SELECT name, port FROM reservations WHERE scope = 'global'").fetchall()
    raw.close()
    ports = Counter(port for _, port in rows)
    assert not [port for port, n in ports.items() if n > 1]
    return dict(rows)


def test_eight_processes_reserving_at_once_lose_nothing_and_share_no_port(home):
    workers = [_spawn(WORKER, str(i), str(NAMES_EACH), str(SHARED)) for i in range(PROCESSES)]
    try:
        for worker in workers:  # readiness: each has opened (and maybe created) the file
            assert worker.stdout is not None
            assert worker.stdout.readline() == "ready\n"
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        results = []
        for worker in workers:
            out, _ = worker.communicate(timeout=120)
            assert worker.returncode == 0
            results.append(json.loads(out))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    stored = _check_consistent(home / "registry.sqlite3")
    expected_names = {f"shared-{k}" for k in range(SHARED)} | {
        f"p{i}-n{j}" for i in range(PROCESSES) for j in range(NAMES_EACH - SHARED)
    }
    assert set(stored) == expected_names
    for got in results:
        assert len(got) == NAMES_EACH
        for name, port in got.items():
            assert stored[name] == port  # every process saw the one port of each name


@pytest.mark.parametrize("after", [1, 40, 400])
def test_a_writer_killed_with_sigkill_leaves_the_database_consistent(home, after):
    with Registry.open() as registry:
        registry.reserve("before", scope=GLOBAL_SCOPE)
    writer = _spawn(FOREVER, "w")
    committed: dict[str, int] = {}
    try:
        assert writer.stdout is not None
        while len(committed) < after:
            name, port_text = writer.stdout.readline().split()
            committed[name] = int(port_text)
        os.kill(writer.pid, signal.SIGKILL)  # mid-loop: most often inside a transaction
    finally:
        if writer.poll() is None:
            writer.kill()
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    stored = _check_consistent(home / "registry.sqlite3")
    for name, port in committed.items():
        assert stored[name] == port  # nothing that was committed is lost
    with Registry.open() as registry:  # and the registry goes on working
        assert registry.integrity_check() == "ok"
        assert registry.reserve("after", scope=GLOBAL_SCOPE).created


def test_a_writer_killed_inside_an_open_transaction_leaves_no_trace(home):
    with Registry.open() as registry:
        kept = registry.reserve("kept", scope=GLOBAL_SCOPE).reservation.port
    writer = _spawn(MID_TRANSACTION)
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline() == "in-transaction\n"
        wal = home / "registry.sqlite3-wal"
        assert wal.stat().st_size > 0  # pages of the open transaction reached the WAL
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        if writer.poll() is None:
            writer.kill()
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    stored = _check_consistent(home / "registry.sqlite3")
    assert stored == {"kept": kept}
    with Registry.open() as registry:  # the write lock died with the writer
        assert registry.reserve("next", scope=GLOBAL_SCOPE).created
        assert registry.integrity_check() == "ok"


@pytest.mark.parametrize("round_", range(8))
def test_eight_processes_creating_the_registry_at_once_all_succeed(tmp_path, monkeypatch, round_):
    """The first migration races with the others' identity checks: none may mistake the
    half-created file for another program's database."""
    monkeypatch.setenv("PORTSIDE_HOME", str(tmp_path / f"home-{round_}"))
    openers = [_spawn(OPENER, str(i)) for i in range(PROCESSES)]
    try:
        for opener in openers:
            assert opener.stdout is not None
            assert opener.stdout.readline() == "ready\n"
        for opener in openers:
            assert opener.stdin is not None
            opener.stdin.write("go\n")
            opener.stdin.flush()
        for opener in openers:
            opener.communicate(timeout=60)
            assert opener.returncode == 0
    finally:
        for opener in openers:
            if opener.poll() is None:
                opener.kill()
                opener.wait()
    stored = _check_consistent(tmp_path / f"home-{round_}" / "registry.sqlite3")
    assert set(stored) == {f"opener-{i}" for i in range(PROCESSES)}
