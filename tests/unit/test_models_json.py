"""One encoder for every record; the top-level document shape is stable."""

import enum
import json

import pytest

from portside.models import (
    JSON_SCHEMA_VERSION,
    Endpoint,
    Exposure,
    Family,
    OwnerStatus,
    SocketEntry,
    SocketState,
    Transport,
    json_document,
    to_jsonable,
)


def entry():
    return SocketEntry(
        transport=Transport.TCP,
        family=Family.IPV4,
        state=SocketState.LISTEN,
        local=Endpoint(ip="127.0.0.1", port=8080),
        remote=None,
        uid=0,
        inode=1,
        exposure=Exposure.LOOPBACK,
    )


def test_a_socket_entry_encodes_to_plain_json():
    encoded = to_jsonable(entry())
    assert json.loads(json.dumps(encoded)) == encoded
    assert isinstance(encoded, dict)
    assert encoded["state"] == "listen"
    assert encoded["local"] == {"ip": "127.0.0.1", "port": 8080}
    assert encoded["owner_status"] == OwnerStatus.NOT_LOOKED_UP.value
    assert encoded["owners"] == []


def test_documents_carry_schema_and_kind():
    document = json_document("sockets", {"sockets": [entry()]})
    assert document["schema"] == JSON_SCHEMA_VERSION
    assert document["kind"] == "sockets"
    assert isinstance(document["sockets"], list)
    assert json_document("x", [1])["items"] == [1]


def test_unknown_objects_are_refused():
    class Thing(enum.Enum):
        A = object()

    with pytest.raises(TypeError, match="cannot encode"):
        to_jsonable(Thing.A)
