"""Stopping what holds a port: plan (pure, printable with ``--dry-run``), then execute.

:func:`plan_kill` gathers the facts (the sockets on the port in *this* network
namespace, their owners, the process table for ``--tree``, the container behind a
forwarder) and :func:`make_plan` turns them into a :class:`KillPlan` without I/O.
:func:`execute` carries a plan out: SIGTERM, wait up to the grace period, SIGKILL what
is left. Each process is re-identified by pid *and* start time before it is signalled
(through a pidfd on Linux, so a recycled pid is never hit).

Safety rules (part of the product, see ARCHITECTURE.md):

* never pid 1, portside itself, its parent, or any other ancestor of portside;
* only the exact port (``3000`` never matches ``30001``), only listeners unless asked;
* a container's port forwarder (``docker-proxy``, podman's ``rootlessport`` or
  ``conmon``) is never signalled: killing it breaks the container's networking and
  leaves the container running. The container is stopped through the Engine API
  (Docker's, or podman's compatible socket), and the plan says so;
* a plan with any refusal is not carried out at all: stopping part of the holders
  would not free the port.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import select
import signal
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import quote

from portside.containers import engine_request, engine_sockets, find_container
from portside.errors import PortsideError
from portside.models import (
    Container,
    OwnerStatus,
    ProcessInfo,
    SocketEntry,
    SocketState,
    Transport,
)

__all__ = [
    "FORWARDER_KINDS",
    "ContainerRef",
    "ContainerTarget",
    "KillPlan",
    "KillRefusedError",
    "KillResult",
    "Outcome",
    "ProcessTarget",
    "Refusal",
    "engine_sockets",
    "execute",
    "make_plan",
    "plan_kill",
]

#: Identity kinds (portside.identify) that forward a container's published port.
FORWARDER_KINDS = frozenset({"docker-proxy", "podman-rootlessport", "podman-conmon"})
DEFAULT_GRACE = 5.0
#: After SIGKILL, how long to wait for the kernel to reap the process.
KILL_WAIT = 5.0
if sys.platform == "win32":
    #: Windows has no SIGKILL; os.kill with SIGTERM there is TerminateProcess.
    _SIGKILL = signal.SIGTERM
else:
    _SIGKILL = signal.SIGKILL
#: A container found through an Engine API socket (portside.containers; the record is
#: portside.models.Container).
ContainerRef = Container


class KillRefusedError(PortsideError):
    """The plan holds a refusal (a protected process, an invisible owner, no engine for a
    container, no terminal to confirm): nothing was signalled."""


class Outcome(enum.StrEnum):
    TERMINATED = "terminated"  # exited after SIGTERM, within the grace period
    KILLED = "killed"  # needed SIGKILL
    GONE = "gone"  # had already exited (or the pid now names another process)
    DENIED = "denied"  # the OS refused to signal it (another user's process)
    SURVIVED = "survived"  # still there after SIGKILL (uninterruptible sleep?)
    STOPPED = "stopped"  # container stopped through the Engine API
    FAILED = "failed"  # the Engine API refused or failed


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ProcessTarget:
    """A process the plan signals. ``role``: "holder" holds a socket on the port;
    "descendant" is in a holder's tree (``--tree``); ``via`` is that holder's pid."""

    pid: int
    name: str
    cmdline: tuple[str, ...]
    user: str | None
    start_time: float | None
    role: str
    via: int | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ContainerTarget:
    """A container the plan stops through its engine instead of killing its forwarder."""

    container: ContainerRef
    forwarder_pid: int
    forwarder_kind: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    """Why the plan cannot be carried out (``pid`` None: not about one process)."""

    pid: int | None
    reason: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class KillPlan:
    """What ``kill`` will do. Pure data: printed by ``--dry-run``, run by :func:`execute`."""

    target: str
    port: int
    ip: str | None
    sockets: tuple[SocketEntry, ...]
    processes: tuple[ProcessTarget, ...]
    containers: tuple[ContainerTarget, ...]
    refusals: tuple[Refusal, ...]
    grace: float
    tree: bool
    notes: tuple[str, ...] = ()

    @property
    def has_work(self) -> bool:
        return bool(self.processes or self.containers)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ProcessResult:
    pid: int
    name: str
    outcome: Outcome
    detail: str | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ContainerResult:
    id: str
    name: str
    outcome: Outcome
    detail: str | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class KillResult:
    """What happened. ``port_free``: no listener is left on the port afterwards."""

    plan: KillPlan
    processes: tuple[ProcessResult, ...]
    containers: tuple[ContainerResult, ...]
    port_free: bool

    @property
    def ok(self) -> bool:
        bad = {Outcome.DENIED, Outcome.SURVIVED, Outcome.FAILED}
        outcomes = [r.outcome for r in self.processes] + [r.outcome for r in self.containers]
        return not bad.intersection(outcomes)


# --------------------------------------------------------------------------- pure plan


def _is_listening(entry: SocketEntry) -> bool:
    if entry.transport is Transport.TCP:
        return entry.state is SocketState.LISTEN
    return entry.state is SocketState.UNCONNECTED


def _where(entry: SocketEntry) -> str:
    ip = entry.local.ip
    host = f"[{ip}]" if ":" in ip else ip
    return f"{entry.transport.value} {host}:{entry.local.port}"


def _descendants(root: int, table: Sequence[ProcessInfo]) -> list[ProcessInfo]:
    children: dict[int, list[ProcessInfo]] = {}
    for info in table:
        if info.ppid is not None:
            children.setdefault(info.ppid, []).append(info)
    found: list[ProcessInfo] = []
    queue, seen = [root], {root}
    while queue:
        for child in children.get(queue.pop(0), []):
            if child.pid not in seen:
                seen.add(child.pid)
                found.append(child)
                queue.append(child.pid)
    return found


def _target(info: ProcessInfo, role: str, via: int | None = None) -> ProcessTarget:
    return ProcessTarget(
        pid=info.pid,
        name=info.name,
        cmdline=info.cmdline,
        user=info.user,
        start_time=info.start_time,
        role=role,
        via=via,
    )


def make_plan(
    *,
    target: str,
    port: int,
    ip: str | None,
    sockets: Sequence[SocketEntry],
    grace: float,
    tree: bool,
    protected: Mapping[int, str],
    self_uid: int | None,
    table: Sequence[ProcessInfo] = (),
    containers: Mapping[int, ContainerRef | str] | None = None,
) -> KillPlan:
    """The plan for stopping what holds ``sockets`` (pure).

    ``protected``: pid -> why it must never be signalled (pid 1, portside, its parent
    and ancestors). ``self_uid``: our uid, None when root (may signal anyone).
    ``table``: every process, to find descendants with ``tree``. ``containers``: for each
    forwarder pid, its container, or why it could not be found.
    """
    containers = containers or {}
    refusals: list[Refusal] = []
    notes: list[str] = []
    holders: dict[int, ProcessTarget] = {}
    stops: dict[str, ContainerTarget] = {}
    for entry in sockets:
        if not entry.owners:
            if entry.owner_status is OwnerStatus.KERNEL:
                notes.append(
                    f"{_where(entry)} {entry.state.value} has no process; the kernel ends it"
                )
            else:
                hidden = (
                    "a process this user cannot see; run with sudo"
                    if self_uid is not None
                    else "no visible process (another pid namespace, or a kernel-held socket)"
                )
                refusals.append(Refusal(pid=None, reason=f"{_where(entry)} is held by {hidden}"))
            continue
        for owner in entry.owners:
            info = owner.process
            kind = owner.identity.kind if owner.identity else None
            if kind in FORWARDER_KINDS:
                found = containers.get(info.pid, "no Engine API socket was asked")
                if isinstance(found, ContainerRef):
                    stops.setdefault(
                        found.id,
                        ContainerTarget(
                            container=found, forwarder_pid=info.pid, forwarder_kind=str(kind)
                        ),
                    )
                else:
                    refusals.append(
                        Refusal(
                            pid=info.pid,
                            reason=(
                                f"{info.name}[{info.pid}] is a container's port forwarder ({kind});"
                                f" killing it would break the container's networking, not stop it,"
                                f" and its container was not found through the Engine API ({found});"
                                " stop the container with `docker stop` or `podman stop`"
                            ),
                        )
                    )
                continue
            holders.setdefault(info.pid, _target(info, "holder"))
    targets = dict(holders)
    if tree:
        for holder in holders.values():
            for child in _descendants(holder.pid, table):
                targets.setdefault(child.pid, _target(child, "descendant", via=holder.pid))
    for pid, planned in targets.items():
        if pid in protected:
            refusals.append(Refusal(pid=pid, reason=f"{planned.name}[{pid}] is {protected[pid]}"))
    if self_uid is not None:
        uids = {info.pid: info.uid for info in table}
        for planned in targets.values():
            uid = uids.get(planned.pid)
            if uid is None:
                uid = _owner_uid(sockets, planned.pid)
            if uid is not None and uid != self_uid:
                refusals.append(
                    Refusal(
                        pid=planned.pid,
                        reason=f"{planned.name}[{planned.pid}] belongs to user {planned.user or uid}; run with sudo to stop it",
                    )
                )
    return KillPlan(
        target=target,
        port=port,
        ip=ip,
        sockets=tuple(sockets),
        processes=tuple(targets.values()),
        containers=tuple(stops.values()),
        refusals=tuple(dict.fromkeys(refusals)),
        grace=grace,
        tree=tree,
        notes=tuple(dict.fromkeys(notes)),
    )


def _owner_uid(sockets: Iterable[SocketEntry], pid: int) -> int | None:
    for entry in sockets:
        for owner in entry.owners:
            if owner.process.pid == pid:
                return owner.process.uid
    return None


def plan_lines(plan: KillPlan) -> list[str]:
    """The plan in words, one step a line (what ``--dry-run`` prints)."""
    where = ", ".join(f"{_where(e)} {e.state.value}" for e in plan.sockets)
    lines = [f"port {plan.port}: {where}" if where else f"nothing holds port {plan.port}"]
    for planned in plan.processes:
        command = " ".join(planned.cmdline)[:120] or planned.name
        via = f" (child of {planned.via}, --tree)" if planned.via else ""
        lines.append(f"  SIGTERM {planned.name}[{planned.pid}]{via}: {command}")
    if plan.processes:
        lines.append(f"  wait up to {plan.grace:g} s, then SIGKILL whatever is still running")
    for stop in plan.containers:
        ref = stop.container
        about = [ref.id[:12], f"image {ref.image}"]
        if ref.compose_project:
            about.append(f"compose project {ref.compose_project}")
        if ref.container_port is not None:
            about.append(f"container port {ref.container_port}")
        lines.append(
            f"  stop container {ref.name} ({', '.join(about)}) through the Engine API at"
            f" {ref.engine}, waiting up to {plan.grace:g} s: its forwarder"
            f" {stop.forwarder_kind}[{stop.forwarder_pid}] holds the port, and killing a"
            " forwarder would not stop the container"
        )
    for note in plan.notes:
        lines.append(f"  note: {note}")
    for refusal in plan.refusals:
        lines.append(f"  refused: {refusal.reason}")
    return lines


# --------------------------------------------------------------------------- Engine API


def _stop_container(ref: ContainerRef, grace: float) -> ContainerResult:
    seconds = max(0, round(grace))
    url = f"/containers/{quote(ref.id, safe='')}/stop?t={seconds}"
    try:
        status, body = engine_request(ref.engine, "POST", url, timeout=seconds + 60.0)
    except OSError as exc:
        return ContainerResult(
            id=ref.id, name=ref.name, outcome=Outcome.FAILED, detail=str(exc.strerror or exc)
        )
    if status in (204, 304):
        detail = "already stopped" if status == 304 else None
        return ContainerResult(id=ref.id, name=ref.name, outcome=Outcome.STOPPED, detail=detail)
    message = body.decode("utf-8", "replace").strip()[:200]
    return ContainerResult(
        id=ref.id, name=ref.name, outcome=Outcome.FAILED, detail=f"HTTP {status}: {message}"
    )


# --------------------------------------------------------------------------- facts


def _protected() -> dict[int, str]:
    from portside.processes import ancestors, process_info

    me = os.getpid()
    found = {1: "pid 1 (init): portside never signals it", me: "portside itself"}
    parent = os.getppid()
    found.setdefault(parent, "portside's parent (the shell or program that ran it)")
    info = process_info(me)
    if info is not None:
        for ancestor in ancestors(info):
            found.setdefault(
                ancestor.pid, "an ancestor of portside: stopping it would end this session"
            )
    return found


def _self_uid() -> int | None:
    """Our uid, or None when we may signal anyone (root; Windows decides per process)."""
    if sys.platform == "win32":
        return None
    else:
        uid = os.geteuid()
        return None if uid == 0 else uid


def plan_kill(
    target: str,
    *,
    grace: float = DEFAULT_GRACE,
    tree: bool = False,
    all_sockets: bool = False,
    transport: Transport | None = None,
    engines: Sequence[str] | None = None,
) -> KillPlan:
    """Gather the facts about ``target`` (PORT or ADDRESS:PORT, in this network
    namespace) and plan how to stop what holds it. Signals nothing.

    ``engines``: Engine API sockets to ask about container forwarders (default
    :func:`engine_sockets`).

    Raises:
        UsageError: a malformed target or grace.
    """
    from portside.errors import UsageError
    from portside.inspect import who

    if grace < 0:
        raise UsageError(f"--grace {grace:g}: give seconds >= 0")
    holders = who(target, namespaces=False)
    sockets = [
        entry
        for entry in holders.sockets
        if (all_sockets or _is_listening(entry))
        and (transport is None or entry.transport is transport)
    ]
    containers: dict[int, ContainerRef | str] = {}
    for entry in sockets:
        for owner in entry.owners:
            kind = owner.identity.kind if owner.identity else None
            if kind in FORWARDER_KINDS and owner.process.pid not in containers:
                containers[owner.process.pid] = find_container(
                    entry.local.port,
                    entry.transport.value,
                    entry.local.ip,
                    engine_sockets() if engines is None else engines,
                )
    table: list[ProcessInfo] = []
    if tree:
        from portside.processes import all_pids, processes

        table = processes(all_pids())
    return make_plan(
        target=target,
        port=holders.port,
        ip=holders.ip,
        sockets=sockets,
        grace=grace,
        tree=tree,
        protected=_protected(),
        self_uid=_self_uid(),
        table=table,
        containers=containers,
    )


# --------------------------------------------------------------------------- execution


class _Handle:
    """One planned process, pinned: a pidfd where the OS has them, verified against the
    planned start time, so that a recycled pid is never signalled."""

    def __init__(self, planned: ProcessTarget) -> None:
        self.planned = planned
        self.fd: int | None = None
        self.gone = False
        if sys.platform == "linux" and hasattr(os, "pidfd_open"):
            try:
                self.fd = os.pidfd_open(planned.pid)
            except ProcessLookupError:
                self.gone = True
                return
        if not self._same_process():
            self.gone = True
            self.close()

    def _same_process(self) -> bool:
        from portside.processes import process_info

        info = process_info(self.planned.pid)
        return info is not None and info.start_time == self.planned.start_time

    def signal(self, signum: int) -> None:
        """Raises PermissionError; a process that has exited meanwhile is ignored."""
        try:
            if sys.platform == "linux" and self.fd is not None:
                signal.pidfd_send_signal(self.fd, signum)
            elif self._same_process():
                os.kill(self.planned.pid, signum)
        except ProcessLookupError:
            self.gone = True

    def exited(self) -> bool:
        if self.gone:
            return True
        if self.fd is not None:
            ready, _, _ = select.select([self.fd], [], [], 0)
            return bool(ready)
        from portside.models import ProcessState
        from portside.processes import process_info

        info = process_info(self.planned.pid)
        return (
            info is None
            or info.start_time != self.planned.start_time
            or info.state in (ProcessState.ZOMBIE, ProcessState.DEAD)
        )

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _wait_all(handles: Sequence[_Handle], deadline: float) -> None:
    """Until every handle's process has exited or ``deadline`` (monotonic) passes."""
    while True:
        waiting = [h for h in handles if not h.exited()]
        remaining = deadline - time.monotonic()
        if not waiting or remaining <= 0:
            return
        fds = [h.fd for h in waiting if h.fd is not None]
        if len(fds) == len(waiting):
            select.select(fds, [], [], remaining)  # a pidfd is readable once the process exits
        else:
            time.sleep(min(0.02, remaining))  # no pidfds here: poll the process table


def _port_free(plan: KillPlan) -> bool:
    from portside.inspect import who

    target = plan.target
    remaining = [e for e in who(target, namespaces=False).sockets if _is_listening(e)]
    return not remaining


def execute(plan: KillPlan) -> KillResult:
    """Carry out ``plan``: SIGTERM every process and stop every container, wait up to the
    grace period, SIGKILL what is left, then look whether the port is free.

    Raises:
        KillRefusedError: the plan holds a refusal; nothing was signalled.
    """
    if plan.refusals:
        raise KillRefusedError(
            "; ".join(r.reason for r in plan.refusals) + "; nothing was signalled"
        )
    handles = [_Handle(planned) for planned in plan.processes]
    outcome: dict[int, tuple[Outcome, str | None]] = {}
    try:
        for handle in handles:
            if handle.gone:
                outcome[handle.planned.pid] = (
                    Outcome.GONE,
                    "exited before it was signalled, or its pid now names another process",
                )
                continue
            try:
                handle.signal(signal.SIGTERM)
            except PermissionError:
                outcome[handle.planned.pid] = (Outcome.DENIED, "permission denied; run with sudo")
        container_results = tuple(_stop_container(s.container, plan.grace) for s in plan.containers)
        live = [h for h in handles if h.planned.pid not in outcome]
        _wait_all(live, time.monotonic() + plan.grace)
        for handle in live:
            if handle.exited():
                outcome[handle.planned.pid] = (Outcome.TERMINATED, None)
                continue
            try:
                handle.signal(_SIGKILL)
            except PermissionError:
                outcome[handle.planned.pid] = (Outcome.DENIED, "permission denied for SIGKILL")
        stubborn = [h for h in live if h.planned.pid not in outcome]
        _wait_all(stubborn, time.monotonic() + KILL_WAIT)
        for handle in stubborn:
            if handle.exited():
                outcome[handle.planned.pid] = (
                    Outcome.KILLED,
                    f"still running after {plan.grace:g} s",
                )
            else:
                outcome[handle.planned.pid] = (Outcome.SURVIVED, "still running after SIGKILL")
    finally:
        for handle in handles:
            handle.close()
    results = tuple(
        ProcessResult(pid=p.pid, name=p.name, outcome=outcome[p.pid][0], detail=outcome[p.pid][1])
        for p in plan.processes
    )
    port_free = _port_free(plan)
    if not port_free and plan.containers:
        # A forwarder exits when its container's network is torn down, which the engine
        # may finish just after answering the stop request: look again for a moment.
        deadline = time.monotonic() + 3.0
        while not port_free and time.monotonic() < deadline:
            time.sleep(0.05)
            port_free = _port_free(plan)
    return KillResult(
        plan=plan, processes=results, containers=container_results, port_free=port_free
    )


def result_lines(result: KillResult) -> list[str]:
    """What happened, one line per process or container."""
    lines: list[str] = []
    for item in result.processes:
        detail = f" ({item.detail})" if item.detail else ""
        lines.append(f"{item.outcome.value}: {item.name}[{item.pid}]{detail}")
    for container in result.containers:
        detail = f" ({container.detail})" if container.detail else ""
        lines.append(
            f"{container.outcome.value}: container {container.name} ({container.id[:12]}) through the Engine API{detail}"
        )
    lines.append(
        f"port {result.plan.port} is free"
        if result.port_free
        else f"port {result.plan.port} is still held (`portside who {result.plan.port}`)"
    )
    return lines
