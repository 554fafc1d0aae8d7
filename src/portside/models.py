"""The data model: frozen records that every command returns, renders and encodes.

The same objects feed the tables for people, ``--json`` (through :func:`to_jsonable`)
and the tests. Addresses are normalised text (``"127.0.0.1"``, ``"::1"``) so that JSON is
trivial and sorting is stable. This module does no I/O.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence

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


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    ip: str  # normalised text form, e.g. "127.0.0.1" or "::1"
    port: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NetNamespace:
    """A network namespace; ``inode`` is its identity (``/proc/PID/ns/net``)."""

    inode: int
    name: str  # "host", an ``ip netns`` name, or "pid:1234 (comm)"
    is_current: bool  # the namespace portside itself runs in


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ProcessInfo:
    pid: int
    ppid: int | None
    name: str
    cmdline: tuple[str, ...]
    user: str | None
    uid: int | None
    cwd: str | None  # None when not permitted to see
    start_time: float | None  # seconds since the epoch
    state: ProcessState


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
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


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Owner:
    """A process holding a socket, what it is, and its ancestry (parent first)."""

    process: ProcessInfo
    identity: Identity | None
    ancestors: tuple[ProcessInfo, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
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


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Hint:
    """A one-line observation about something odd, with what to do."""

    code: str
    message: str
    fix: str | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PortHolders:
    """Everything on one port: the answer of ``portside who``."""

    port: int
    ip: str | None  # the address asked about, if one was given
    sockets: tuple[SocketEntry, ...]
    hints: tuple[Hint, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Overview:
    """The machine at a glance: listeners grouped by exposure, with hints."""

    loopback: tuple[SocketEntry, ...]
    specific: tuple[SocketEntry, ...]
    all_interfaces: tuple[SocketEntry, ...]
    hints: tuple[Hint, ...]


JSONValue = None | bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"]


def to_jsonable(obj: object) -> JSONValue:
    """The one encoder: dataclasses -> dicts, StrEnums -> str, tuples -> lists.

    Records are frozen, so one object met many times in a document (the process that
    holds a hundred sockets) is encoded once.
    """
    return _encode(obj, {})


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _encode(obj: object, memo: dict[int, JSONValue]) -> JSONValue:
    cls = type(obj)
    if cls in _SCALARS:
        return obj  # type: ignore[return-value]
    if isinstance(obj, enum.Enum):
        return _encode(obj.value, memo)
    names = _FIELD_NAMES.get(cls)
    if names is None and dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(obj))
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


class Severity(enum.StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    INFO = "info"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One conclusion: a catalogue code (``FM-01`` …, or ``OK``), what was seen, what to do.

    ``fix`` holds commands or steps the user can paste, in order of preference.
    """

    code: str
    severity: Severity
    title: str
    evidence: tuple[str, ...] = ()
    fix: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Diagnosis:
    """The answer of ``portside doctor``: the one most specific verdict, then the rest."""

    target: str | None
    verdict: Finding
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return self.verdict.code == "OK"
