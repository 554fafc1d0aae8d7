"""The user's cache directory, and the dataclass code kept in it between runs: real
files in a private directory, real processes for the "next run"."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from portside import _lean_dataclasses, _usercache


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "portside"


def test_the_directory_follows_xdg_then_home(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere")
    assert _usercache.cache_directory() == "/somewhere/portside"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", "/home/someone")
    assert _usercache.cache_directory() == "/home/someone/.cache/portside"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", "")
    assert _usercache.cache_directory() is None
    assert _usercache.read("anything") is None
    assert not _usercache.write("anything", b"x")


def test_a_file_is_written_whole_and_read_back(cache: Path):
    assert _usercache.write("one", b"first")
    assert _usercache.write("one", b"second")
    assert _usercache.read("one") == b"second"
    assert sorted(p.name for p in cache.iterdir()) == ["one"]  # no temporary left
    assert cache.stat().st_mode & 0o777 == 0o700
    assert (cache / "one").stat().st_mode & 0o777 == 0o600
    assert _usercache.read("missing") is None


def test_a_file_others_may_write_is_not_read(cache: Path):
    assert _usercache.write("shared", b"data")
    (cache / "shared").chmod(0o666)
    assert _usercache.read("shared") is None
    (cache / "shared").chmod(0o600)
    cache.chmod(0o777)
    assert _usercache.read("shared") is None
    assert not _usercache.writable()
    cache.chmod(0o700)
    assert _usercache.read("shared") == b"data"


def test_a_symlink_is_not_followed(cache: Path, tmp_path: Path):
    cache.mkdir(mode=0o700)
    target = tmp_path / "elsewhere"
    target.write_bytes(b"not the cache")
    (cache / "link").symlink_to(target)
    assert _usercache.read("link") is None


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_directory_of_another_user_is_neither_read_nor_written(cache: Path):
    assert _usercache.write("mine", b"data")
    os.chown(cache, 65534, 65534)
    assert _usercache.read("mine") is None
    assert not _usercache.write("mine", b"other")
    os.chown(cache, 0, 0)
    assert _usercache.read("mine") == b"data"


# -- the compiled dataclass code --------------------------------------------------------------


def test_dataclasses_compiles_through_the_kept_code():
    # Python 3.11, this project's: dataclasses' _create_fn calls exec on source text.
    create = getattr(_lean_dataclasses.dataclasses, "_create_fn")  # noqa: B009 -- private
    assert "exec" in create.__code__.co_names
    assert vars(_lean_dataclasses.dataclasses)["exec"] == _lean_dataclasses.compiled_code.exec


def test_kept_code_makes_the_same_methods(cache: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(
        _lean_dataclasses, "compiled_code", kept := _lean_dataclasses._CompiledCode()
    )
    monkeypatch.setattr(_lean_dataclasses.dataclasses, "exec", kept.exec)
    # Records of a portside module (only those are kept): dataclasses compiles their
    # methods in that module's namespace.
    records = types.ModuleType("portside.kept_records_of_a_test")
    monkeypatch.setitem(sys.modules, records.__name__, records)

    def define() -> type:
        @dataclasses.dataclass(frozen=True, kw_only=True)
        class Record:
            __module__ = records.__name__
            name: str
            size: int = 3

        return Record

    @dataclasses.dataclass
    class NotPortsides:
        value: int

    def added() -> bool:
        return bool(kept.added)

    assert not added()  # a test's own dataclass: compiled as usual, not kept
    first = define()
    assert added()
    sources = dict(kept.loaded(records.__name__))
    assert any("def __init__(self" in source for source in sources)
    _lean_dataclasses.save_compiled_code()  # the module's compiled_code: ``kept`` here
    assert not kept.added
    assert (cache / kept.file(records.__name__)).exists()
    assert [path.name for path in cache.iterdir()] == [kept.file(records.__name__)]

    # The next run: the code comes from the file, nothing is compiled.
    again = _lean_dataclasses._CompiledCode()
    monkeypatch.setattr(_lean_dataclasses.dataclasses, "exec", again.exec)
    compiled: list[str] = []
    real_compile = compile

    def spy(*arguments: Any, **keywords: Any) -> Any:
        compiled.append(arguments[0])
        return real_compile(*arguments, **keywords)

    monkeypatch.setattr("builtins.compile", spy)
    second = define()
    assert compiled == []
    assert not again.added
    assert set(again.loaded(records.__name__)) == set(sources)
    a, b = first(name="x"), second(name="x")
    assert (a.name, a.size, repr(a)) == (b.name, b.size, repr(b))
    # The annotations are the fields' (the code is compiled without this or portside's
    # ``from __future__ import annotations``, as dataclasses compiles it).
    assert vars(second)["__init__"].__annotations__ == {
        "name": "str",
        "size": "int",
        "return": None,
    }
    assert second(name="x") == second(name="x")
    assert hash(second(name="x")) == hash(second(name="x"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.name = "y"


def test_a_corrupt_or_foreign_cache_is_compiled_afresh(cache: Path):
    cache.mkdir(mode=0o700)
    kept = _lean_dataclasses._CompiledCode()
    module = "portside.somewhere"
    for content in (b"\x00garbage", b"\xe9\x03\x00\x00\x00", __import__("marshal").dumps({"x": 1})):
        (cache / kept.file(module)).write_bytes(content)
        kept.codes.clear()
        assert kept.loaded(module) == {}
        namespace: dict[str, object] = {"__name__": module}
        kept.exec("value = 6 * 7", namespace, namespace)
        assert namespace["value"] == 42


def test_the_cli_keeps_the_code_for_the_next_run(tmp_path: Path):
    """A real command twice: the first writes one file per module with records, the
    second compiles nothing new (no file is rewritten)."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "PORTSIDE_BPF": "off"}
    command = [sys.executable, "-m", "portside", "who", "1", "--json"]
    subprocess.run(command, env=env, capture_output=True, check=False)
    prefix = _lean_dataclasses._CompiledCode.PREFIX
    written = {
        path.name: (path.stat().st_mtime_ns, path.stat().st_size)
        for path in (tmp_path / "portside").iterdir()
        if path.name.startswith(prefix)
    }
    assert prefix + "portside.models" in written
    # who does not import the registry: its records are not read nor written.
    assert prefix + "portside.registry" not in written
    subprocess.run(command, env=env, capture_output=True, check=False)
    again = {
        path.name: (path.stat().st_mtime_ns, path.stat().st_size)
        for path in (tmp_path / "portside").iterdir()
        if path.name.startswith(prefix)
    }
    assert again == written


def test_a_full_cache_keeps_only_what_the_run_used(cache: Path):
    kept = _lean_dataclasses._CompiledCode()
    stale = compile("pass", "<string>", "exec")
    module = "portside.somewhere"
    other = "portside.elsewhere"
    kept.codes = {
        module: {f"# an older portside's method {n}": stale for n in range(600)},
        other: {"# a method of a module this run did not add to": stale},
    }
    namespace = {"__name__": module}
    kept.exec("def made(): return 1", namespace, namespace)
    assert kept.added == {module}
    kept.save()
    written = __import__("marshal").loads((cache / kept.file(module)).read_bytes())
    assert list(written) == ["def made(): return 1"]
    assert not (cache / kept.file(other)).exists()
