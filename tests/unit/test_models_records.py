"""The records stay frozen dataclasses, however cheaply they are defined and made."""

import copy
import dataclasses
import importlib
import inspect
import json
import pickle
import pkgutil
import subprocess
import sys
import typing

import pytest

import portside
from portside import models
from portside._lean_dataclasses import _plain_signature, methods_compiled_on_first_use
from portside.models import (
    Endpoint,
    Exposure,
    Family,
    Hint,
    OwnerStatus,
    SocketEntry,
    SocketState,
    Transport,
    assemble,
)

RECORDS = [
    models.Endpoint,
    models.NetNamespace,
    models.ProcessInfo,
    models.Identity,
    models.Owner,
    models.SocketEntry,
    models.Hint,
    models.PortHolders,
    models.Overview,
    models.Finding,
    models.Diagnosis,
]


def fields_of(port=8080):
    return {
        "transport": Transport.TCP,
        "family": Family.IPV4,
        "state": SocketState.LISTEN,
        "local": Endpoint(ip="127.0.0.1", port=port),
        "remote": None,
        "uid": 0,
        "inode": 7,
        "exposure": Exposure.LOOPBACK,
        "recv_queue": 0,
        "send_queue": 128,
        "v6only": None,
        "cgroup_id": None,
        "interface": None,
        "netns": None,
        "owner_status": OwnerStatus.NOT_LOOKED_UP,
        "owners": (),
    }


@pytest.mark.parametrize("record", RECORDS, ids=lambda cls: cls.__name__)
def test_records_are_frozen_keyword_only_dataclasses(record: type) -> None:
    name = record.__name__
    doc = record.__doc__
    assert dataclasses.is_dataclass(record)
    params = vars(record)["__dataclass_params__"]
    assert params.frozen
    assert params.eq
    assert params.init
    assert params.repr
    assert all(field.kw_only for field in dataclasses.fields(record))
    assert doc
    assert not doc.startswith(name + "(")  # its own, not the one dataclasses writes


def test_an_assembled_record_is_the_same_as_a_constructed_one():
    made = SocketEntry(**fields_of())
    assembled = assemble(SocketEntry, fields_of())
    assert type(assembled) is SocketEntry
    assert assembled == made
    assert hash(assembled) == hash(made)
    assert repr(assembled) == repr(made)
    assert dataclasses.asdict(assembled) == dataclasses.asdict(made)
    assert dataclasses.replace(assembled, inode=8) == SocketEntry(**{**fields_of(), "inode": 8})
    with pytest.raises(dataclasses.FrozenInstanceError):
        assembled.inode = 9  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del assembled.inode
    assert pickle.loads(pickle.dumps(assembled)) == made  # noqa: S301 -- our own bytes
    assert copy.deepcopy(assembled) == made


def test_methods_compiled_on_first_use_behave_like_the_generated_ones():
    with methods_compiled_on_first_use():

        @dataclasses.dataclass(frozen=True, kw_only=True)
        class Lazy:
            """A record."""

            a: int
            b: tuple[int, ...] = ()

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Eager:
        """A record."""

        a: int
        b: tuple[int, ...] = ()

    assert inspect.signature(Lazy) == inspect.signature(Eager)  # __init__ is never deferred
    one, same, other = Lazy(a=1, b=(2,)), Lazy(a=1, b=(2,)), Lazy(a=2)
    stand_in = Lazy.__eq__
    assert one == same
    assert one != other
    assert (one == Eager(a=1, b=(2,))) is False  # type: ignore[comparison-overlap]
    assert Lazy.__eq__ is not stand_in  # the compiled method took the stand-in's place
    assert hash(one) == hash(same) == hash((1, (2,)))
    assert (
        repr(one)
        == "test_methods_compiled_on_first_use_behave_like_the_generated_ones.<locals>.Lazy(a=1, b=(2,))"
    )
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'a'"):
        one.a = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot delete field 'b'"):
        del one.b
    assert one.__setattr__.__qualname__.endswith("Lazy.__setattr__")
    assert {one, same, other} == {one, other}
    assert dataclasses.replace(one, a=5) == Lazy(a=5, b=(2,))


def test_the_block_leaves_dataclasses_as_it_found_it():
    before = getattr(dataclasses, "_create_fn", None)
    with methods_compiled_on_first_use():
        pass
    assert getattr(dataclasses, "_create_fn", None) is before


def test_importing_the_models_imports_neither_inspect_nor_copy_nor_typing():
    probe = (
        "import sys\n"
        "import portside.models as m\n"
        "e = m.Endpoint(ip='1', port=2)\n"
        "assert e == m.Endpoint(ip='1', port=2) and hash(e) and repr(e)\n"
        "print(' '.join(n for n in ('inspect', 'copy', 'typing') if n in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == []


def test_dataclasses_still_gets_the_real_inspect_and_copy_when_it_needs_them():
    probe = (
        "import sys, dataclasses\n"
        "import portside.models\n"
        "@dataclasses.dataclass\n"
        "class Docless:\n"
        "    a: 'list[int]'\n"
        "@dataclasses.dataclass\n"
        "class Odd:\n"
        "    a: int = dataclasses.field(default_factory=list)\n"
        "    __signature__ = None\n"  # not the plain case: the real inspect answers
        "print(Docless.__doc__)\n"
        "print(dataclasses.asdict(Docless(a=[1]))['a'])\n"
        "print('inspect' in sys.modules, 'copy' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == ["Docless(a: 'list[int]')", "[1]", "True True"]


def _package_dataclasses():
    found = set()
    for info in pkgutil.walk_packages(portside.__path__, "portside."):
        if info.name.endswith("__main__"):
            continue
        try:
            module = importlib.import_module(info.name)
        except Exception:  # noqa: S112 -- optional dependencies of other commands
            continue
        for value in vars(module).values():
            if isinstance(value, type) and dataclasses.is_dataclass(value):
                found.add(value)
    return sorted(found, key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


@dataclasses.dataclass
class Positional:
    x: int
    y: "list[int]" = dataclasses.field(default_factory=list)
    z: str = "a -> None"


@dataclasses.dataclass(kw_only=True, frozen=True)
class Annotated:
    a: typing.Optional[int] = None  # noqa: UP045 -- a typing object on purpose
    b: dict[str, int] = None  # type: ignore[assignment]
    c: type = int


@dataclasses.dataclass
class Child(Positional):
    w: float = 1.5


@dataclasses.dataclass
class Empty:
    pass


class Plain:
    def __init__(self, a, b=2, *, c, d=4):
        pass


def test_the_plain_signature_text_is_the_one_inspect_writes():
    classes = [*_package_dataclasses(), Positional, Annotated, Child, Empty, Plain, Hint]
    assert len(classes) > 20
    written = 0
    for cls in classes:
        text = _plain_signature(cls)
        if text is not None:
            written += 1
            assert text == str(inspect.signature(cls)), cls
    assert written >= len(classes) - 5  # the unusual ones are left to inspect
    assert _plain_signature(Annotated) is None  # typing.Optional: left to inspect
    assert _plain_signature(int) is None
    assert _plain_signature(json.JSONEncoder) == str(inspect.signature(json.JSONEncoder))
