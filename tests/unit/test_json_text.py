"""models.json_text / write_json write exactly what json.dumps writes for the documents
of json_document (the reference), whatever the records hold."""

import dataclasses
import enum
import json
import math
from collections import OrderedDict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portside.models import (
    Endpoint,
    Exposure,
    Family,
    Hint,
    Identity,
    NetNamespace,
    Overview,
    Owner,
    OwnerStatus,
    PortHolders,
    ProcessInfo,
    ProcessState,
    SocketEntry,
    SocketState,
    Transport,
    json_document,
    json_text,
    write_json,
)


def reference(kind, payload):
    return json.dumps(json_document(kind, payload), separators=(",", ":"))


def process(pid=10, **changes):
    fields = {
        "pid": pid,
        "ppid": 1,
        "name": "nginx",
        "cmdline": ("nginx", "-g", "daemon off;", "ünïcode", 'quote " and \\ and \n'),
        "user": "www-data",
        "uid": 33,
        "cwd": "/",
        "start_time": 1718000000.25,
        "state": ProcessState.SLEEPING,
    }
    fields.update(changes)
    return ProcessInfo(**fields)


def entry(port=8080, **changes):
    fields = {
        "transport": Transport.TCP,
        "family": Family.IPV4,
        "state": SocketState.LISTEN,
        "local": Endpoint(ip="127.0.0.1", port=port),
        "remote": None,
        "uid": 0,
        "inode": 1000 + port,
        "exposure": Exposure.LOOPBACK,
        "recv_queue": 0,
        "send_queue": 128,
        "v6only": None,
        "cgroup_id": 1,
        "interface": None,
        "netns": None,
        "owner_status": OwnerStatus.FOUND,
        "owners": (Owner(process=process(), identity=None),),
    }
    fields.update(changes)
    return SocketEntry(**fields)


HOST = NetNamespace(inode=4026531840, name="host", is_current=True)
OTHER = NetNamespace(inode=4026532000, name='pid:7 (we"ird)', is_current=False)
IDENTITY = Identity(kind="service", label="nginx web server", target=None, project_dir="/srv")


def test_a_socket_table_is_written_as_json_dumps_writes_it():
    shared = (Owner(process=process(), identity=IDENTITY, ancestors=(process(1, ppid=None),)),)
    entries = [
        entry(),
        entry(8081, owners=shared, netns=HOST),
        entry(8082, owners=shared, netns=OTHER, interface="eth0", v6only=True),
        entry(
            8083,
            family=Family.IPV6,
            local=Endpoint(ip="::1", port=8083),
            remote=Endpoint(ip="::ffff:127.0.0.1", port=5000),
            state=SocketState.ESTABLISHED,
            v6only=False,
            uid=None,
            inode=None,
            recv_queue=None,
            send_queue=None,
            cgroup_id=None,
            owner_status=OwnerStatus.NOT_VISIBLE,
            owners=(),
        ),
        entry(8084, owners=[Owner(process=process(11), identity=None)]),
    ]
    payloads: list[dict[str, object]] = [
        {"sockets": entries},
        {"sockets": tuple(entries)},
        {"sockets": []},
    ]
    for payload in payloads:
        assert json_text("sockets", payload) == reference("sockets", payload)


def test_every_document_shape_is_written_the_same():
    hint = Hint(code="owner-stopped", message="é held by x", fix="kill -CONT 1")
    payloads = [
        PortHolders(port=80, ip=None, sockets=(entry(80),), hints=(hint,)),
        PortHolders(port=80, ip="::1", sockets=(), hints=()),
        Overview(loopback=(entry(),), specific=(), all_interfaces=(entry(9),), hints=(hint,)),
        {"sockets": [entry()], "extra": {"nested": [1, 2.5, None, True]}},
        [1, "two", entry()],
        (),
        {},
        {1: "int key", "1": "clash"},  # keys made str: the last one wins
        OrderedDict([("a", 1)]),
        {"schema": 2, "kind": "x", "rest": 1},  # the payload overrides in place
        {"floats": [math.nan, math.inf, -math.inf, 0.1, -0.0, 1e300]},
        {"bytes": b"ab", "range": range(3)},
        Transport.UDP,
        "plain text",
    ]
    for payload in payloads:
        assert json_text("kind", payload) == reference("kind", payload)


class Odd(enum.Enum):
    ONE = 1
    TWO = "two"


class Text(str):
    pass


@pytest.mark.parametrize(
    "changes",
    [
        {"uid": True},  # a bool where an int is declared: json says true
        {"inode": 1.5},
        {"recv_queue": Odd.ONE},
        {"send_queue": "12"},
        {"interface": Text("x\ty")},
        {"interface": ["not", "hashable"]},
        {"v6only": 0},
        {"transport": "tcp"},
        {"state": Odd.TWO},
        {"local": Endpoint(ip=Text("127.0.0.1"), port=True)},
        {"local": {"ip": "1.2.3.4", "port": 1}},
        {"remote": Endpoint(ip="1.2.3.4", port=2**70)},
        {"netns": {"inode": 1}},
        {"owners": None},
        {"owner_status": None},
    ],
)
def test_fields_holding_other_types_than_declared_are_still_written_alike(changes):
    payload = {"sockets": [entry(), entry(9, **changes)]}
    assert json_text("sockets", payload) == reference("sockets", payload)


def test_what_cannot_be_encoded_raises_type_error_both_ways():
    payload = {"sockets": [entry(owners=(object(),))]}
    with pytest.raises(TypeError):
        reference("sockets", payload)
    with pytest.raises(TypeError):
        json_text("sockets", payload)


def test_write_json_hands_over_the_same_text_in_chunks():
    owners = (Owner(process=process(), identity=None),)
    payload = {"sockets": [entry(port, owners=owners) for port in range(2000)]}
    chunks: list[str] = []
    write_json("sockets", payload, chunks.append)
    assert len(chunks) > 2
    assert "".join(chunks) == json_text("sockets", payload) == reference("sockets", payload)
    small: list[str] = []
    write_json("x", {1: 2}, small.append)  # the reference path
    assert "".join(small) == reference("x", {1: 2})


@dataclasses.dataclass(frozen=True)
class Other:
    """A record from elsewhere (not one of the model's)."""

    a: int
    b: tuple[SocketEntry, ...] = ()


def test_records_from_elsewhere_are_written_by_their_fields():
    payload = Other(a=1, b=(entry(),))
    assert json_text("x", payload) == reference("x", payload)
    assert json_text("x", {"o": [payload, payload]}) == reference("x", {"o": [payload, payload]})


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    st.sampled_from(list(SocketState) + list(Odd)),
)


@given(
    values=st.fixed_dictionaries(
        dict.fromkeys(
            (
                "uid",
                "inode",
                "recv_queue",
                "send_queue",
                "v6only",
                "cgroup_id",
                "interface",
                "transport",
                "state",
                "owner_status",
            ),
            scalars,
        )
    ),
    ip=st.one_of(st.text(), st.integers()),
    port=scalars,
    shared=st.booleans(),
)
def test_any_field_values_are_written_as_json_dumps_writes_them(values, ip, port, shared):
    owners = (Owner(process=process(), identity=IDENTITY),)
    first = entry(**values, local=Endpoint(ip=ip, port=port), owners=owners)
    second = entry(7, owners=owners if shared else (Owner(process=process(), identity=None),))
    payload = {"sockets": [first, second, first]}
    assert json_text("sockets", payload) == reference("sockets", payload)
