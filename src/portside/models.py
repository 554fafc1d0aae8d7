"""The data model: frozen records that every command returns, renders and encodes.

The same objects feed the tables for people, ``--json`` (through :func:`to_jsonable`)
and the tests. Addresses are normalised text (``"127.0.0.1"``, ``"::1"``) so that JSON is
trivial and sorting is stable. This module does no I/O.

Start-up cost matters here (every command imports this module), hence three choices:

* The records are frozen dataclasses without ``__slots__``: the hot paths that make
  thousands of them (the socket table) fill an instance's ``__dict__`` in one step with
  :func:`assemble`, four times cheaper than the generated ``__init__``, and the result is
  the same object in every respect (fields, equality, hash, repr, immutability).
* ``dataclasses`` comes from :mod:`portside._lean_dataclasses`, without the ``inspect``
  and ``copy`` modules it loads at import time (a third of the start-up of ``portside ls``).
* :func:`json_text` writes the compact JSON text of a document directly, each shared
  record (the process behind a hundred sockets) once.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence

# Re-exported: the record modules define their dataclasses with these.
from portside._lean_dataclasses import dataclasses as dataclasses
from portside._lean_dataclasses import (
    methods_compiled_on_first_use as methods_compiled_on_first_use,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    _R = TypeVar("_R")


#: Version of the JSON documents the CLI prints (``"schema"`` at the top level).
JSON_SCHEMA_VERSION = 1


class Transport(enum.StrEnum):
    TCP = "tcp"
    UDP = "udp"


class Family(enum.StrEnum):
    IPV4 = "ipv4"
    IPV6 = "ipv6"


class SocketState(enum.StrEnum):
    """TCP states as the kernel names them; UDP sockets are ``UNCONNECTED`` or ``ESTABLISHED``.

    ``BOUND`` is a TCP socket that called ``bind()`` but neither ``listen()`` nor
    ``connect()`` (the kernel's TCP_CLOSE with a local port).
    """

    ESTABLISHED = "established"
    SYN_SENT = "syn-sent"
    SYN_RECV = "syn-recv"
    FIN_WAIT1 = "fin-wait-1"
    FIN_WAIT2 = "fin-wait-2"
    TIME_WAIT = "time-wait"
    BOUND = "bound"
    CLOSE_WAIT = "close-wait"
    LAST_ACK = "last-ack"
    LISTEN = "listen"
    CLOSING = "closing"
    NEW_SYN_RECV = "new-syn-recv"
    UNCONNECTED = "unconnected"


#: Kernel TCP state numbers (include/net/tcp_states.h) -> SocketState.
KERNEL_TCP_STATES: Mapping[int, SocketState] = {
    1: SocketState.ESTABLISHED,
    2: SocketState.SYN_SENT,
    3: SocketState.SYN_RECV,
    4: SocketState.FIN_WAIT1,
    5: SocketState.FIN_WAIT2,
    6: SocketState.TIME_WAIT,
    7: SocketState.BOUND,
    8: SocketState.CLOSE_WAIT,
    9: SocketState.LAST_ACK,
    10: SocketState.LISTEN,
    11: SocketState.CLOSING,
    12: SocketState.NEW_SYN_RECV,
}


class Exposure(enum.StrEnum):
    """How far a bound address reaches, judged from the address alone."""

    LOOPBACK = "loopback"  # 127.0.0.0/8, ::1: this machine only
    SPECIFIC = "specific"  # one non-loopback address: the networks of that interface
    ALL = "all"  # 0.0.0.0 or [::]: every interface


class ProcessState(enum.StrEnum):
    RUNNING = "running"
    SLEEPING = "sleeping"
    DISK_SLEEP = "disk-sleep"
    STOPPED = "stopped"
    TRACED = "traced"
    ZOMBIE = "zombie"
    DEAD = "dead"
    IDLE = "idle"
    UNKNOWN = "unknown"


class OwnerStatus(enum.StrEnum):
    """Whether the processes that hold a socket could be seen."""

    FOUND = "found"  # ``owners`` lists them
    NOT_VISIBLE = (
        "not-visible"  # a process holds it, but we may not see which (permissions, pid namespace)
    )
    KERNEL = "kernel"  # no process by nature: TIME_WAIT and other orphaned kernel sockets
    NOT_LOOKED_UP = "not-looked-up"  # the caller asked for sockets without owners


with methods_compiled_on_first_use():

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Endpoint:
        """An address and port."""

        ip: str  # normalised text form, e.g. "127.0.0.1" or "::1"
        port: int

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class NetNamespace:
        """A network namespace; ``inode`` is its identity (``/proc/PID/ns/net``)."""

        inode: int
        name: str  # "host", an ``ip netns`` name, or "pid:1234 (comm)"
        is_current: bool  # the namespace portside itself runs in

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class ProcessInfo:
        """A process, as far as we may see it."""

        pid: int
        ppid: int | None
        name: str
        cmdline: tuple[str, ...]
        user: str | None
        uid: int | None
        cwd: str | None  # None when not permitted to see
        start_time: float | None  # seconds since the epoch
        state: ProcessState

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Identity:
        """What an owner is, recognised from its name and command line.

        ``kind`` is a stable machine name (``"docker-proxy"``, ``"ssh-local-forward"``,
        ``"qemu-hostfwd"``, ``"dev-server"``, …); ``label`` is for people; ``target`` is where
        traffic goes next (container, tunnel or guest address) when the owner forwards it;
        ``project_dir`` is the project a development server serves.
        """

        kind: str
        label: str
        target: str | None = None
        project_dir: str | None = None

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Container:
        """A container, as its engine's API (Docker's, or podman's compatible one) tells.

        ``engine`` is the API's unix socket; ``compose_project`` the Compose project
        (label ``com.docker.compose.project``); ``container_port`` the container's port
        that the socket it annotates forwards to (None when not about one port).
        """

        engine: str
        id: str
        name: str
        image: str
        compose_project: str | None = None
        container_port: int | None = None

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Owner:
        """A process holding a socket, what it is, and its ancestry (parent first).

        ``container``: for a container's port forwarder (docker-proxy, podman's conmon or
        rootlessport), the container it forwards the socket to, when the engine told.
        """

        process: ProcessInfo
        identity: Identity | None
        ancestors: tuple[ProcessInfo, ...] = ()
        container: Container | None = None

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class SocketEntry:
        """One kernel socket with its owners.

        ``recv_queue``/``send_queue``: for a listener, the accept-queue length and the backlog
        (as ``ss`` shows them); otherwise bytes queued. ``v6only`` is None for IPv4 sockets and
        when the backend cannot tell. ``exposure`` is derived from ``local.ip``.
        """

        transport: Transport
        family: Family
        state: SocketState
        local: Endpoint
        remote: Endpoint | None
        uid: int | None
        inode: int | None
        exposure: Exposure
        recv_queue: int | None = None
        send_queue: int | None = None
        v6only: bool | None = None
        cgroup_id: int | None = None
        interface: str | None = None  # SO_BINDTODEVICE, when set
        netns: NetNamespace | None = None
        owner_status: OwnerStatus = OwnerStatus.NOT_LOOKED_UP
        owners: tuple[Owner, ...] = ()

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Hint:
        """A one-line observation about something odd, with what to do."""

        code: str
        message: str
        fix: str | None = None

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class PortHolders:
        """Everything on one port: the answer of ``portside who``."""

        port: int
        ip: str | None  # the address asked about, if one was given
        sockets: tuple[SocketEntry, ...]
        hints: tuple[Hint, ...] = ()

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Overview:
        """The machine at a glance: listeners grouped by exposure, with hints."""

        loopback: tuple[SocketEntry, ...]
        specific: tuple[SocketEntry, ...]
        all_interfaces: tuple[SocketEntry, ...]
        hints: tuple[Hint, ...]


JSONValue = None | bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"]


def assemble(cls: type[_R], fields: dict[str, Any]) -> _R:
    """An instance of the record class ``cls`` made from ``fields``: every field, by name,
    in the order the class declares them (what the generated ``__init__`` would store).

    For the hot paths that make thousands of records; the instance is the same frozen
    dataclass instance ``cls(**fields)`` gives, at a quarter of the cost.
    """
    record = _new(cls)
    _set(record, "__dict__", fields)
    return record


_new = object.__new__
_set = object.__setattr__


def to_jsonable(obj: object) -> JSONValue:
    """The one encoder: dataclasses -> dicts, StrEnums -> str, tuples -> lists.

    Records are frozen, so one object met many times in a document (the process that
    holds a hundred sockets) is encoded once.
    """
    return _encode(obj, {})


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _field_names(obj: object) -> tuple[str, ...] | None:
    """The field names of a dataclass instance (cached per class), None for anything else."""
    cls = type(obj)
    names = _FIELD_NAMES.get(cls)
    if names is None and dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(obj))
    return names


def _encode(obj: object, memo: dict[int, JSONValue]) -> JSONValue:
    cls = type(obj)
    if cls in _SCALARS:
        return obj  # type: ignore[return-value]
    if isinstance(obj, enum.Enum):
        return _encode(obj.value, memo)
    names = _field_names(obj)
    if names is not None:
        key = id(obj)
        cached = memo.get(key)
        if cached is None:
            scalars = _SCALARS
            # Most fields are scalars: test inline and recurse only for the rest.
            cached = memo[key] = {
                name: value if type(value) in scalars else _encode(value, memo)
                for name in names
                for value in (getattr(obj, name),)
            }
        return cached
    if isinstance(obj, (str, int, float)):  # subclasses of the scalars
        return obj
    if isinstance(obj, Mapping):
        return {str(k): _encode(v, memo) for k, v in obj.items()}
    if isinstance(obj, Sequence):
        return [v if type(v) in _SCALARS else _encode(v, memo) for v in obj]
    raise TypeError(f"cannot encode {cls.__name__} as JSON")


def json_document(kind: str, payload: object) -> dict[str, JSONValue]:
    """The top-level object of every ``--json`` output: ``{"schema", "kind", ...payload}``."""
    body = to_jsonable(payload)
    document: dict[str, JSONValue] = {"schema": JSON_SCHEMA_VERSION, "kind": kind}
    if isinstance(body, dict):
        document.update(body)
    else:
        document["items"] = body
    return document


# --------------------------------------------------------------------------- JSON text
#
# json_text() writes exactly what ``json.dumps(json_document(kind, payload),
# separators=(",", ":"))`` writes (ASCII, NaN allowed, keys in field order), without the
# intermediate dicts and with each shared record encoded once: compact JSON is
# compositional, so the text of a record met again is its first text. Anything this
# writer does not know for certain (a Mapping with keys that are not str, a str
# subclass, a Sequence other than a list or tuple) is handed to the reference path,
# json.dumps(to_jsonable(...)), for that value alone.

try:
    from _json import encode_basestring_ascii as _quote
except ImportError:  # pragma: no cover -- Python builds without the C accelerator
    from json.encoder import encode_basestring_ascii as _quote

_int_text = int.__repr__
_float_repr = float.__repr__
_INFINITY = float("inf")


def _float_text(value: float) -> str:
    if value != value:
        return "NaN"
    if value == _INFINITY:
        return "Infinity"
    if value == -_INFINITY:
        return "-Infinity"
    return _float_repr(value)


def _reference_text(value: object) -> str:
    import json

    return json.dumps(_encode(value, {}), separators=(",", ":"))


class _Memo(dict[int, str]):
    """One document's texts: id of a record (or tuple of records) -> its JSON text, and in
    ``strs`` str (StrEnum, None) -> its text. Numbers are never kept in ``strs``: 1, 1.0
    and True compare equal but are written differently."""

    __slots__ = ("shapes", "strs")

    def __init__(self) -> None:
        super().__init__()
        self.strs = _StrTexts(self)
        #: A socket table's rows by what they share (see _socket_entry_parts) -> the
        #: shared parts of their text.
        self.shapes: dict[tuple[object, ...], tuple[str, str, str, str]] = {}


class _StrTexts(dict[object, str]):
    __slots__ = ("memo",)

    def __init__(self, memo: _Memo) -> None:
        super().__init__()
        self.memo = memo

    def __missing__(self, key: object) -> str:
        text = _text(key, self.memo)
        if key is None or isinstance(key, str):
            self[key] = text
        return text


_RECORD_KEYS: dict[type, tuple[tuple[str, str], ...]] = {}


def _text(value: object, memo: _Memo) -> str:
    """The JSON text of ``value``: json.dumps(to_jsonable(value)), compact."""
    cls = type(value)
    if cls is str:
        return _quote(value)  # type: ignore[arg-type]
    if cls is int:
        return _int_text(value)
    if value is None:
        return "null"
    if cls is bool:
        return "true" if value else "false"
    if cls is float:
        return _float_text(value)  # type: ignore[arg-type]
    special = _RECORD_TEXT.get(cls)
    if special is not None:
        try:
            return special(value, memo)
        except TypeError:  # a field holds what its type does not say: the general way
            pass
    elif isinstance(value, enum.Enum):
        return _text(value.value, memo)
    elif cls is tuple or cls is list:
        return "[" + ",".join([_text(item, memo) for item in value]) + "]"  # type: ignore[attr-defined]
    keys = _RECORD_KEYS.get(cls)
    if keys is None:
        names = _field_names(value)
        if names is None:
            return _reference_text(value)
        keys = _RECORD_KEYS[cls] = tuple((name, _quote(name) + ":") for name in names)
    return _record_text(value, memo, keys)


def _record_text(value: object, memo: _Memo, keys: tuple[tuple[str, str], ...]) -> str:
    key = id(value)
    text = memo.get(key)
    if text is None:
        text = memo[key] = (
            "{"
            + ",".join([quoted + _text(getattr(value, name), memo) for name, quoted in keys])
            + "}"
        )
    return text


def _endpoint_text(endpoint: Endpoint, memo: _Memo) -> str:
    ip = endpoint.ip
    port = endpoint.port
    if type(ip) is not str or type(port) is not int:
        raise TypeError("not the types declared")
    return f'{{"ip":{memo.strs[ip]},"port":{port}}}'


def _socket_entry_text(entry: SocketEntry, memo: _Memo) -> str:
    head, owners = _socket_entry_parts(entry, memo, "")
    return head + owners + "}"


def _socket_entry_parts(entry: SocketEntry, memo: _Memo, lead: str) -> tuple[str, str]:
    """``lead`` and the entry's text up to ``"owners":``, and the owners' text (a text
    shared by every socket of the same processes: kept apart, it is not copied)."""
    # The socket table's rows: thousands per document, so the fields are written inline;
    # a value of another type than declared raises TypeError (the general way then).
    strs = memo.strs
    local = entry.local
    if type(local) is not Endpoint:
        raise TypeError("not the types declared")
    ip = local.ip
    port = local.port
    if type(ip) is not str or type(port) is not int:
        raise TypeError("not the types declared")
    remote = entry.remote
    uid = entry.uid
    inode = entry.inode
    recv_queue = entry.recv_queue
    send_queue = entry.send_queue
    v6only: object = entry.v6only
    cgroup_id = entry.cgroup_id
    netns = entry.netns
    owners = entry.owners
    owners_text = memo.get(id(owners))
    if owners_text is None:
        owners_text = _text(owners, memo)
        if type(owners) is tuple:
            memo[id(owners)] = owners_text
    # Typed as what they may hold, not as declared: a row whose fields break their types
    # is written the general way, below.
    transport: object = entry.transport
    family: object = entry.family
    state: object = entry.state
    exposure: object = entry.exposure
    interface: object = entry.interface
    owner_status: object = entry.owner_status
    if (
        remote is None
        and type(uid) is int
        and type(inode) is int
        and type(recv_queue) is int
        and type(send_queue) is int
        and (cgroup_id is None or type(cgroup_id) is int)
        and (v6only is None or type(v6only) is bool)
        and isinstance(transport, str)
        and isinstance(family, str)
        and isinstance(state, str)
        and isinstance(exposure, str)
        and isinstance(owner_status, str)
        and (interface is None or isinstance(interface, str))
    ):
        # A listener: everything but its address, port, inode and queues is shared with
        # many other rows, written once per document.
        shape = (
            transport,
            family,
            state,
            uid,
            exposure,
            v6only,
            cgroup_id,
            interface,
            id(netns),
            owner_status,
        )
        parts = memo.shapes.get(shape)
        if parts is None:
            netns_text = "null" if netns is None else (memo.get(id(netns)) or _text(netns, memo))
            parts = memo.shapes[shape] = (
                f'{{"transport":{strs[transport]},"family":{strs[family]}'
                f',"state":{strs[state]},"local":{{"ip":',
                f'}},"remote":null,"uid":{uid},"inode":',
                f',"exposure":{strs[exposure]},"recv_queue":',
                f',"v6only":{"null" if v6only is None else _text(v6only, memo)}'
                f',"cgroup_id":{"null" if cgroup_id is None else cgroup_id}'
                f',"interface":{strs[interface]},"netns":{netns_text}'
                f',"owner_status":{strs[owner_status]},"owners":',
            )
        return (
            f'{lead}{parts[0]}{strs[ip]},"port":{port}{parts[1]}{inode}{parts[2]}'
            f'{recv_queue},"send_queue":{send_queue}{parts[3]}'
        ), owners_text
    netns_text = "null" if netns is None else (memo.get(id(netns)) or _text(netns, memo))
    return (
        f'{lead}{{"transport":{strs[entry.transport]},"family":{strs[entry.family]}'
        f',"state":{strs[entry.state]},"local":{{"ip":{strs[ip]},"port":{port}}}'
        f',"remote":{"null" if remote is None else _text(remote, memo)}'
        f',"uid":{uid if type(uid) is int else _text(uid, memo)}'
        f',"inode":{inode if type(inode) is int else _text(inode, memo)}'
        f',"exposure":{strs[entry.exposure]}'
        f',"recv_queue":{recv_queue if type(recv_queue) is int else _text(recv_queue, memo)}'
        f',"send_queue":{send_queue if type(send_queue) is int else _text(send_queue, memo)}'
        f',"v6only":{"null" if v6only is None else _text(v6only, memo)}'
        f',"cgroup_id":{cgroup_id if type(cgroup_id) is int else _text(cgroup_id, memo)}'
        f',"interface":{strs[entry.interface]},"netns":{netns_text}'
        f',"owner_status":{strs[entry.owner_status]},"owners":'
    ), owners_text


class _Pieces(list[str]):
    """The text being written, in pieces; handed to ``sink`` (and emptied) every
    ``_CHUNK`` pieces when there is one: megabytes are never held, nor joined, at once
    (fresh memory costs page faults; chunks of the same size reuse theirs)."""

    __slots__ = ("sink",)

    def __init__(self, sink: Callable[[str], object] | None) -> None:
        super().__init__()
        self.sink = sink

    def spill(self) -> None:
        if self.sink is not None and len(self) >= _CHUNK:
            self.sink("".join(self))
            self.clear()


_CHUNK = 768  # pieces: about 100 kB of a socket table


def _pieces(value: object, memo: _Memo, out: _Pieces) -> None:
    """Append the JSON text of ``value`` to ``out``, a list of socket entries piece by
    piece (a table's text is megabytes, most of it the owners' shared text)."""
    if (type(value) is list or type(value) is tuple) and any(
        type(item) is SocketEntry for item in value
    ):
        lead = "["
        append = out.append
        for item in value:
            if type(item) is SocketEntry:
                try:
                    head, owners = _socket_entry_parts(item, memo, lead)
                except TypeError:
                    pass
                else:
                    append(head)
                    append(owners)
                    append("}")
                    lead = ","
                    if len(out) >= _CHUNK:
                        out.spill()
                    continue
            append(lead + _text(item, memo))
            lead = ","
        append("]" if lead == "," else "[]")
    else:
        out.append(_text(value, memo))


def _document(kind: str, payload: object, out: _Pieces) -> bool:
    """Write ``json_document(kind, payload)`` into ``out``; False (nothing written) when
    the payload is of a shape only the reference path handles."""
    memo = _Memo()
    cls = type(payload)
    head = f'{{"schema":{JSON_SCHEMA_VERSION},"kind":{_quote(kind)}'
    if cls is dict:
        items: dict[str, object] = payload  # type: ignore[assignment]
        if "schema" in items or "kind" in items or not all(type(k) is str for k in items):
            return False
        out.append(head)
        for name, value in items.items():
            out.append(f",{_quote(name)}:")
            _pieces(value, memo, out)
    elif cls is list or cls is tuple:
        out.append(head)
        out.append(',"items":')
        _pieces(payload, memo, out)
    else:
        names = _field_names(payload)
        if names is None or isinstance(payload, enum.Enum) or {"schema", "kind"} & set(names):
            return False
        out.append(head)
        for name in names:
            out.append(f",{_quote(name)}:")
            _pieces(getattr(payload, name), memo, out)
    out.append("}")
    return True


def json_text(kind: str, payload: object) -> str:
    """The compact JSON text of ``json_document(kind, payload)``: the very text
    ``json.dumps(json_document(kind, payload), separators=(",", ":"))`` gives, written
    directly (several times faster for a socket table: each process, and each group of
    owners shared by many sockets, is encoded once).
    """
    out = _Pieces(None)
    if not _document(kind, payload, out):
        return _reference_text(json_document(kind, payload))
    return "".join(out)


def write_json(kind: str, payload: object, write: Callable[[str], object]) -> None:
    """:func:`json_text`, handed to ``write`` in chunks of about 100 kB as it is made.

    If the payload holds something that cannot be encoded, TypeError is raised once the
    chunks before it were written (json.dumps would have written nothing).
    """
    out = _Pieces(write)
    if not _document(kind, payload, out):
        write(_reference_text(json_document(kind, payload)))
        return
    if out:
        write("".join(out))


class Severity(enum.StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    INFO = "info"


with methods_compiled_on_first_use():

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Finding:
        """One conclusion: a catalogue code (``FM-01`` …, or ``OK``), what was seen, what to do.

        ``fix`` holds commands or steps the user can paste, in order of preference.
        """

        code: str
        severity: Severity
        title: str
        evidence: tuple[str, ...] = ()
        fix: tuple[str, ...] = ()

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Diagnosis:
        """The answer of ``portside doctor``: the one most specific verdict, then the rest."""

        target: str | None
        verdict: Finding
        findings: tuple[Finding, ...]

        @property
        def ok(self) -> bool:
            return self.verdict.code == "OK"


_RECORD_TEXT: dict[type, Callable[[Any, _Memo], str]] = {
    Endpoint: _endpoint_text,
    SocketEntry: _socket_entry_text,
}
