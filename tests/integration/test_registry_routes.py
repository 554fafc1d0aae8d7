"""Routes in the registry on a real SQLite file: the schema migration, ownership by real
processes (pid + start time), reclaiming dead owners' routes, change detection with
``PRAGMA data_version``, and the proxy's registry source following them into a live
route table."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from portside.net.registry_routes import RegistryRoutes
from portside.net.routes import BackendAddress, Route, RouteTable
from portside.registry import (
    GLOBAL_SCOPE,
    MIGRATIONS,
    Registry,
    RouteConflictError,
    process_start_token,
    registry_path,
)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("PORTSIDE_HOME", str(path))
    return path


@pytest.fixture
def registry(home: Path) -> Iterator[Registry]:
    with Registry.open() as opened:
        yield opened


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A real process to own routes; ended by its pid."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def end(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait(10)
    assert process_start_token(proc.pid) is None


def test_a_version_1_registry_is_migrated_and_keeps_its_reservations(home: Path) -> None:
    from portside.registry import APPLICATION_ID

    home.mkdir()
    port = 4099
    with sqlite3.connect(registry_path()) as raw:  # what the first portside wrote
        raw.executescript(MIGRATIONS[0])
        raw.execute("INSERT INTO reservations VALUES ('global', 'kept', ?, 0)", (port,))
        raw.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        raw.execute("PRAGMA user_version = 1")
    raw.close()
    with Registry.open() as migrated:
        assert [(r.name, r.port) for r in migrated.reservations()] == [("kept", port)]
        migrated.set_route("kept", scope=GLOBAL_SCOPE, backend_host="127.0.0.1", backend_port=port)
        assert [r.host for r in migrated.routes()] == ["kept.localhost"]
    with sqlite3.connect(registry_path()) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) == 2
    raw.close()


def test_a_route_is_owned_by_a_live_process_and_only_the_owner_removes_it(
    registry: Registry, sleeper: subprocess.Popen[bytes]
) -> None:
    record = registry.set_route(
        "Web", scope="/p", backend_host="127.0.0.1", backend_port=4100, pid=sleeper.pid
    )
    assert (record.host, record.name, record.pid) == ("web.localhost", "web", sleeper.pid)
    assert record.start_token == process_start_token(sleeper.pid)
    assert registry.routes() == [record]
    assert registry.route("web") == record
    # The owner may move its own route (drift); another live process may not take it.
    moved = registry.set_route(
        "web", scope="/p", backend_host="127.0.0.1", backend_port=4200, pid=sleeper.pid
    )
    assert registry.route("web") == moved
    assert moved.backend_port == 4200
    with pytest.raises(RouteConflictError, match=rf"pid {sleeper.pid}.*still running"):
        registry.set_route("web", scope="/q", backend_host="127.0.0.1", backend_port=4300)
    assert registry.remove_route("web") is False  # this process does not own it
    assert registry.route("web") == moved
    assert registry.remove_route("web", pid=sleeper.pid) is True
    assert registry.routes() == []


def test_a_dead_owners_route_is_hidden_at_once_and_reclaimed_by_the_next_write(
    registry: Registry, sleeper: subprocess.Popen[bytes]
) -> None:
    registry.set_route(
        "api", scope=GLOBAL_SCOPE, backend_host="127.0.0.1", backend_port=4101, pid=sleeper.pid
    )
    end(sleeper)
    assert registry.routes() == []
    assert registry.route("api") is None
    with sqlite3.connect(registry.path) as raw:  # still in the file until a write
        assert raw.execute("SELECT count(*) FROM routes").fetchone()[0] == 1
    raw.close()
    taken = registry.set_route("api", scope=GLOBAL_SCOPE, backend_host="::1", backend_port=4102)
    assert registry.routes() == [taken]  # the dead owner's route did not block the name


def test_a_recycled_pid_does_not_keep_a_route_alive(registry: Registry) -> None:
    registry.set_route("self", scope=GLOBAL_SCOPE, backend_host="127.0.0.1", backend_port=4103)
    with sqlite3.connect(registry.path) as raw:  # as if our pid had belonged to another process
        raw.execute("UPDATE routes SET start_token = 'ticks:1'")
    raw.close()
    assert registry.routes() == []


def test_bad_routes_are_refused_with_the_fix(registry: Registry) -> None:
    from portside.errors import UsageError

    with pytest.raises(UsageError, match="use 1-63 letters"):
        registry.set_route("-bad", scope=GLOBAL_SCOPE, backend_host="127.0.0.1", backend_port=1)
    with pytest.raises(UsageError, match="out of range"):
        registry.set_route("ok", scope=GLOBAL_SCOPE, backend_host="127.0.0.1", backend_port=70000)
    with pytest.raises(UsageError, match="not a running process"):
        registry.set_route(
            "ok", scope=GLOBAL_SCOPE, backend_host="127.0.0.1", backend_port=1, pid=2**22 + 7
        )


def test_data_version_changes_only_when_another_connection_commits(home: Path) -> None:
    with Registry.open() as watcher, Registry.open() as writer:
        first = watcher.data_version()
        assert watcher.data_version() == first
        watcher.routes()  # reading changes nothing
        assert watcher.data_version() == first
        writer.set_route("w", scope=GLOBAL_SCOPE, backend_host="127.0.0.1", backend_port=4104)
        second = watcher.data_version()
        assert second != first
        writer.reserve("other", scope=GLOBAL_SCOPE)
        assert watcher.data_version() != second


def test_the_registry_source_follows_routes_into_a_live_table(
    home: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    cli = Route(host="fixed.localhost", backends=(BackendAddress(host="127.0.0.1", port=1),))
    table = RouteTable([cli])
    source = RegistryRoutes(table)
    try:
        assert source.poll() is True  # no registry yet: an empty registry source
        assert not registry_path().exists()  # looking did not create it
        assert source.poll() is False
        with Registry.open() as writer:
            writer.set_route(
                "web", scope="/p", backend_host="127.0.0.1", backend_port=4105, pid=sleeper.pid
            )
            assert source.poll() is True
            route = table.match("web.localhost:8080", "/x")
            assert route is not None
            assert route.source == "registry"
            assert [str(b) for b in route.backends] == ["127.0.0.1:4105"]
            assert table.match("fixed.localhost", "/") == cli
            assert source.poll() is False  # nothing changed: the table is left alone
            version = table.snapshot.version
            writer.set_route(
                "web", scope="/p", backend_host="::1", backend_port=4106, pid=sleeper.pid
            )
            assert source.poll() is True
            route = table.match("web.localhost", "/")
            assert route is not None
            assert [str(b) for b in route.backends] == ["[::1]:4106"]
            assert table.snapshot.version == version + 1
            end(sleeper)  # the owner dies without withdrawing: gone at the next poll
            assert source.poll() is True
            assert table.match("web.localhost", "/") is None
            assert table.match("fixed.localhost", "/") == cli
    finally:
        source.close()


def test_a_cli_route_beats_a_registry_route_for_the_same_host(home: Path) -> None:
    cli = Route(host="web.localhost", backends=(BackendAddress(host="127.0.0.1", port=1),))
    table = RouteTable([cli])
    source = RegistryRoutes(table)
    try:
        with Registry.open() as writer:
            writer.set_route("web", scope="/p", backend_host="127.0.0.1", backend_port=4107)
        source.poll()
        assert table.match("web.localhost", "/") == cli
        assert len(table.routes_of("registry")) == 1
        table.remove("web.localhost", source="cli")
        route = table.match("web.localhost", "/")
        assert route is not None
        assert route.backends[0].port == 4107
    finally:
        source.close()


def test_a_foreign_file_is_reported_once_and_no_routes_are_served(
    home: Path, tmp_path: Path
) -> None:
    import io

    home.mkdir()
    registry_path().write_bytes(b"not a database at all" * 100)
    errors = io.StringIO()
    table = RouteTable()
    source = RegistryRoutes(table, errors=errors)
    source.poll()
    source.poll()
    assert table.snapshot.routes == ()
    assert errors.getvalue().count("registry routes unavailable") == 1
    assert "not a portside registry" in errors.getvalue()
    assert registry_path().read_bytes() == b"not a database at all" * 100


def test_a_following_proxy_announces_where_it_listens_until_it_closes(home: Path) -> None:
    table = RouteTable()
    listening = [("http", "127.0.0.1", 8089), ("https", "127.0.0.1", 8449)]
    source = RegistryRoutes(table, advertise=lambda: listening)
    source.poll()  # no registry yet: nothing to announce in, nothing created
    assert not registry_path().exists()
    with Registry.open() as registry:
        assert registry.proxies() == []
        source.poll()
        found = registry.proxies()
        assert [(p.scheme, p.ip, p.port) for p in found] == listening
        assert {p.pid for p in found} == {os.getpid()}
        source.close()
        assert registry.proxies() == []


def test_a_dead_proxys_announcement_is_ignored_and_reclaimed(
    registry: Registry, sleeper: subprocess.Popen[bytes]
) -> None:
    with sqlite3.connect(registry.path) as raw:
        raw.execute(
            "INSERT INTO proxies VALUES ('http', '127.0.0.1', 8090, ?, ?, 0)",
            (sleeper.pid, process_start_token(sleeper.pid)),
        )
    raw.close()
    assert [p.port for p in registry.proxies()] == [8090]
    end(sleeper)
    assert registry.proxies() == []
    registry.add_proxy("http", "127.0.0.1", 8091)
    with sqlite3.connect(registry.path) as raw:
        assert raw.execute("SELECT port FROM proxies").fetchall() == [(8091,)]
    raw.close()
    assert registry.remove_proxies() == 1
