"""The registry on a real SQLite file: stable ports, scopes from real git worktrees,
leases tied to real processes, and files that are not ours left untouched."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from portside.cli import main as portside
from portside.kernel import port_settings
from portside.pick import hashed_start, make_policy
from portside.registry import (
    APPLICATION_ID,
    GLOBAL_SCOPE,
    MIGRATIONS,
    ForeignFileError,
    LeaseConflictError,
    Registry,
    RegistryDamagedError,
    RegistryVersionError,
    ReservationConflictError,
    process_start_token,
    project_scope,
    registry_path,
)


@pytest.fixture
def home(tmp_path, monkeypatch):
    path = tmp_path / "home"
    monkeypatch.setenv("PORTSIDE_HOME", str(path))
    return path


@pytest.fixture
def registry(home):
    with Registry.open() as opened:
        yield opened


def test_the_file_lives_under_portside_home_in_wal_mode(home, registry):
    assert registry_path() == home / "registry.sqlite3"
    assert registry.path == registry_path()
    with sqlite3.connect(registry.path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert raw.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_the_same_name_gets_the_same_port_after_reopening_and_releasing(home):
    with Registry.open() as first:
        port = first.reserve("web", scope=GLOBAL_SCOPE).reservation.port
    with Registry.open() as second:
        again = second.reserve("web", scope=GLOBAL_SCOPE)
        assert (again.reservation.port, again.created) == (port, False)
        assert second.release("web", scope=GLOBAL_SCOPE) is not None
        assert second.reserve("web", scope=GLOBAL_SCOPE).reservation.port == port


def test_the_port_is_the_hashed_start_when_that_is_free(registry):
    expected = hashed_start(f"{GLOBAL_SCOPE}\0api", make_policy(port_settings()))
    # the hashed start is free on almost any machine; if it is held, probing moves on.
    got = registry.reserve("API", scope=GLOBAL_SCOPE)
    assert got.reservation.name == "api"  # names are case-insensitive
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", expected))
        except OSError:
            pytest.skip(f"the hashed port {expected} is in use here")
    assert got.reservation.port == expected


def test_a_port_that_cannot_be_bound_is_passed_over(registry):
    expected = hashed_start(f"{GLOBAL_SCOPE}\0busy", make_policy(port_settings()))
    with socket.socket() as holder:
        try:
            holder.bind(("127.0.0.1", expected))
        except OSError:
            pytest.skip(f"the hashed port {expected} is already in use here")
        holder.listen()
        got = registry.reserve("busy", scope=GLOBAL_SCOPE)
    assert got.reservation.port != expected
    assert got.bindable


def test_two_worktrees_of_one_repository_get_different_ports(tmp_path, registry):
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    main = tmp_path / "repo"
    main.mkdir()
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
        "HOME": str(tmp_path),
        "PATH": "/usr/bin:/bin",
    }
    subprocess.run([git, "init", "-q", str(main)], check=True, env=env)
    subprocess.run(
        [git, "-C", str(main), "commit", "-q", "--allow-empty", "-m", "x"], check=True, env=env
    )
    linked = tmp_path / "linked"
    subprocess.run(
        [git, "-C", str(main), "worktree", "add", "-q", str(linked)], check=True, env=env
    )
    (main / "sub" / "dir").mkdir(parents=True)
    assert project_scope(main / "sub" / "dir") == str(main.resolve())
    assert project_scope(linked) == str(linked.resolve())
    a = registry.reserve("web", scope=project_scope(main / "sub" / "dir")).reservation
    b = registry.reserve("web", scope=project_scope(linked)).reservation
    assert a.port != b.port
    assert {a.scope, b.scope} == {str(main.resolve()), str(linked.resolve())}


def test_explicit_ports_conflict_with_other_names_and_moves_need_a_release(registry):
    mine = registry.reserve("one", scope=GLOBAL_SCOPE).reservation.port
    with pytest.raises(ReservationConflictError, match="reserved for 'one'"):
        registry.reserve("two", scope="/elsewhere", port=mine)
    with pytest.raises(ReservationConflictError, match="release one"):
        registry.reserve("one", scope=GLOBAL_SCOPE, port=mine + 1)
    assert registry.reserve("one", scope=GLOBAL_SCOPE, port=mine).created is False


def test_an_explicit_dev_default_port_is_reserved_with_a_warning(registry):
    result = registry.reserve("vite", scope=GLOBAL_SCOPE, port=5173)
    assert result.reservation.port == 5173
    assert any("development default" in w for w in result.warnings)


def test_release_of_an_unknown_name_is_none(registry):
    assert registry.release("ghost", scope=GLOBAL_SCOPE) is None


@pytest.mark.parametrize("bad", ["", "-x", "a b", "x" * 64, "é"])
def test_bad_names_are_usage_errors(registry, bad):
    from portside.errors import UsageError

    with pytest.raises(UsageError, match="name"):
        registry.reserve(bad, scope=GLOBAL_SCOPE)


# --------------------------------------------------------------------------- leases


SLEEPER = "import sys; print('ready', flush=True); sys.stdin.read()"


def _close(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()


def _sleeper() -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SLEEPER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    return proc


def test_a_lease_lives_as_long_as_its_process(registry):
    port = registry.reserve("leased", scope=GLOBAL_SCOPE).reservation.port
    proc = _sleeper()
    try:
        lease = registry.lease(port, pid=proc.pid)
        assert lease.start_token == process_start_token(proc.pid)
        assert registry.get("leased", scope=GLOBAL_SCOPE).lease == lease
        with pytest.raises(LeaseConflictError, match=str(proc.pid)):
            registry.lease(port)  # this process may not take it
        assert registry.lease(port, pid=proc.pid).pid == proc.pid  # renewal is fine
    finally:
        _close(proc)
        proc.wait()
    assert registry.leases() == []
    assert registry.reservations()[0].lease is None
    reclaimed = registry.reclaim()
    assert [r.pid for r in reclaimed] == [proc.pid]
    assert registry.lease(port).pid == registry.lease(port).pid  # free to take now


def test_a_recycled_pid_does_not_keep_a_lease(registry):
    """A lease written for an earlier process that had this pid (another start time)."""
    proc = _sleeper()
    try:
        with sqlite3.connect(registry.path) as raw:
            raw.execute(
                "INSERT INTO leases (port, pid, start_token, acquired) VALUES (?, ?, ?, 0)",
                (23999, proc.pid, "ticks:1"),
            )
        assert registry.leases() == []
        assert 23999 not in registry.taken_ports()
        assert [lease.port for lease in registry.reclaim()] == [23999]
    finally:
        _close(proc)
        proc.wait()


def test_leased_ports_are_not_handed_out(registry):
    proc = _sleeper()
    try:
        registry.lease(23998, pid=proc.pid)
        assert 23998 in registry.taken_ports()
        with pytest.raises(ReservationConflictError, match="leased"):
            registry.reserve("x", scope=GLOBAL_SCOPE, port=23998)
    finally:
        _close(proc)
        proc.wait()


# --------------------------------------------------------------------------- files not ours


def test_a_text_file_is_refused_and_left_alone(home):
    home.mkdir()
    path = home / "registry.sqlite3"
    path.write_text("my notes\n" * 100)
    before = path.read_bytes()
    for _ in range(2):
        with pytest.raises(ForeignFileError, match="not an SQLite database"):
            Registry.open()
    assert path.read_bytes() == before


def test_another_programs_database_is_refused_and_left_alone(home):
    home.mkdir()
    path = home / "registry.sqlite3"
    with sqlite3.connect(path) as other:
        other.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, blob BLOB)")
        other.execute("INSERT INTO photos (blob) VALUES (x'00ff')")
    other.close()
    before = path.read_bytes()
    with pytest.raises(ForeignFileError, match="another program's SQLite database"):
        Registry.open()
    assert path.read_bytes() == before


def test_a_database_with_another_application_id_is_refused(home):
    home.mkdir()
    path = home / "registry.sqlite3"
    with sqlite3.connect(path) as other:
        other.execute("PRAGMA application_id = 1234")
    other.close()
    with pytest.raises(ForeignFileError, match="0x4d2"):
        Registry.open()


def test_a_newer_schema_is_refused_and_an_older_one_migrated(home):
    newer = (*MIGRATIONS, "CREATE TABLE later (x TEXT)")
    with Registry.open(migrations=MIGRATIONS) as old:
        old.reserve("kept", scope=GLOBAL_SCOPE)
    with Registry.open(migrations=newer) as migrated:  # one version up, data kept
        assert [r.name for r in migrated.reservations()] == ["kept"]
    with sqlite3.connect(registry_path()) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == len(newer)
    raw.close()
    with pytest.raises(RegistryVersionError, match="upgrade portside"):
        Registry.open()


def test_a_damaged_file_gives_a_clear_error_and_is_not_overwritten(home):
    with Registry.open() as registry:
        for i in range(300):
            registry.reserve(f"n{i}", scope=GLOBAL_SCOPE)
    with sqlite3.connect(registry_path()) as raw:
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = raw.execute("PRAGMA page_size").fetchone()[0]
    raw.close()
    path = registry_path()
    data = bytearray(path.read_bytes())
    assert len(data) >= 3 * page_size
    data[page_size : 3 * page_size] = b"\xa5" * (2 * page_size)  # pages 2-3: table b-trees
    path.write_bytes(bytes(data))
    damaged = path.read_bytes()

    def use() -> None:
        with Registry.open() as registry:
            registry.reservations()
            registry.reserve("more", scope=GLOBAL_SCOPE)

    with pytest.raises(RegistryDamagedError, match="damaged") as info:
        use()
    assert str(path) in str(info.value)
    assert path.read_bytes() == damaged


def test_a_directory_in_the_way_is_refused(home):
    (home / "registry.sqlite3").mkdir(parents=True)
    with pytest.raises(ForeignFileError, match="a directory"):
        Registry.open()


# --------------------------------------------------------------------------- CLI


def test_cli_reserve_prints_the_port_and_is_stable(home, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert portside(["reserve", "web"]) == 0
    first = capsys.readouterr()
    assert "reserved in" in first.err
    assert portside(["reserve", "web"]) == 0
    second = capsys.readouterr()
    assert first.out == second.out
    assert "already reserved" in second.err
    assert portside(["reserve", "web", "--global"]) == 0
    assert capsys.readouterr().out != first.out  # another scope, another port


def test_cli_reservations_json_and_release_exit_codes(home, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert portside(["reserve", "api", "--global"]) == 0
    port = int(capsys.readouterr().out)
    assert portside(["reservations", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["kind"] == "reservations"
    assert document["reservations"][0]["port"] == port
    assert document["reservations"][0]["scope"] == "global"
    assert portside(["reservations"]) == 0
    assert "api" in capsys.readouterr().out
    assert portside(["release", "api", "--global"]) == 0
    assert f"released port {port}" in capsys.readouterr().out
    assert portside(["release", "api", "--global"]) == 1


def test_cli_foreign_file_is_one_line_exit_2(home, capsys):
    home.mkdir()
    (home / "registry.sqlite3").write_text("not a database, but precious\n" * 10)
    assert portside(["reservations"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("portside: ")
    assert err.count("\n") == 1
    assert "left untouched" in err


def test_the_default_location_is_platformdirs_state_dir(monkeypatch):
    import platformdirs

    monkeypatch.delenv("PORTSIDE_HOME", raising=False)
    expected = Path(platformdirs.user_state_dir("portside", appauthor=False)) / "registry.sqlite3"
    assert registry_path() == expected
    monkeypatch.setenv("XDG_STATE_HOME", "/tmp/ps-xdg-state")
    expected = Path(platformdirs.user_state_dir("portside", appauthor=False)) / "registry.sqlite3"
    assert registry_path() == expected == Path("/tmp/ps-xdg-state/portside/registry.sqlite3")


# -- pick's read of the registry (SQLite's C module, without the registry module) ----------


def test_the_schema_version_pick_reads_is_the_registry_s():
    from portside.pick import REGISTRY_APPLICATION_ID, REGISTRY_SCHEMA_VERSION

    assert (APPLICATION_ID, len(MIGRATIONS)) == (REGISTRY_APPLICATION_ID, REGISTRY_SCHEMA_VERSION)


def test_pick_s_peek_sees_what_taken_ports_sees(registry):
    """Reservations, a live lease and a dead one (an ended process)."""
    from portside.pick import _peek_registry_ports

    reserved = registry.reserve("kept", scope=GLOBAL_SCOPE).reservation.port
    live_port = registry.reserve("live", scope=GLOBAL_SCOPE).reservation.port
    registry.release("live", scope=GLOBAL_SCOPE)
    dead = _sleeper()
    _close(dead)
    dead.wait()
    alive = _sleeper()
    try:
        registry.lease(live_port, pid=alive.pid)
        with sqlite3.connect(registry.path) as raw:
            raw.execute(
                "INSERT INTO leases (port, pid, start_token, acquired) VALUES (?, ?, ?, 0)",
                (23998, dead.pid, "ticks:1"),
            )
        raw.close()
        expected = registry.taken_ports()
        assert expected == {reserved, live_port}
        assert _peek_registry_ports(str(registry.path)) == expected
    finally:
        _close(alive)
        alive.wait()
    assert _peek_registry_ports(str(registry.path)) == frozenset({reserved})


def test_pick_s_peek_leaves_anything_unexpected_to_the_registry(home):
    from portside.pick import _peek_registry_ports

    path = home / "registry.sqlite3"
    home.mkdir()
    assert _peek_registry_ports(str(path)) is None
    assert not path.exists()  # looking never creates it
    path.write_text("not a database\n")
    assert _peek_registry_ports(str(path)) is None
    path.unlink()
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE other (x)")
    raw.close()
    assert _peek_registry_ports(str(path)) is None  # another program's database
    path.unlink()
    Registry.open(path, migrations=MIGRATIONS[:1]).close()
    assert _peek_registry_ports(str(path)) is None  # an older schema: migrated by open
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 1  # not by the peek
    raw.close()


def test_pick_avoids_reserved_ports_through_the_peek(home, capsys):
    """``portside pick --range`` of two ports, one reserved: the other is picked."""
    with Registry.open() as opened:
        taken = opened.reserve("held", scope=GLOBAL_SCOPE).reservation.port
    free = taken + 1 if taken < 65535 else taken - 1
    low, high = min(taken, free), max(taken, free)
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", free))
        except OSError:
            pytest.skip(f"port {free} is in use here")
    assert portside(["pick", "--range", f"{low}-{high}"]) == 0
    assert capsys.readouterr().out.strip() == str(free)
