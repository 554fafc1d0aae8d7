"""``portside run NAME -- CMD…``: run an app on NAME's reserved port and route
``NAME.localhost`` to it while it runs.

::

    run_command("web", ["npm", "run", "dev"], scope=project_scope(), on_event=print)

One run, start to end:

1. **Port.** NAME's reservation in ``scope`` (made if absent, :meth:`Registry.reserve`);
   refused when something already listens there. The port is leased to this process.
2. **Command.** ``PORT`` and ``HOST=127.0.0.1`` are added to the environment, and the dev
   server's own flags where it ignores ``PORT`` (:mod:`portside.frameworks`; a
   ``package.json`` script is read to see what ``npm run dev`` starts).
3. **Process.** CMD runs in its own process group. On Linux it gets
   ``PR_SET_PDEATHSIG`` (SIGTERM), so it ends even when portside is killed with SIGKILL,
   and a guardian process (its own session, :data:`GUARDIAN_MARK` in its command line)
   then ends the rest of the group (what CMD started: ``npm run dev`` -> node),
   and portside becomes a child subreaper (with ``reap_orphans``), so descendants that
   leave the group still come back to it. On a terminal, the group gets the foreground
   (Ctrl-C and Ctrl-Z reach the app as under a shell; portside follows a stop).
   SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 sent to portside are forwarded
   to the group; a second SIGINT/SIGTERM/SIGQUIT kills it.
4. **Ready.** The ports the process tree listens on are read from the socket table
   (``/proc/PID/fd`` inodes matched to the listeners). When the assigned port listens
   and accepts a connection (:func:`portside.wait.check`), the app is ready. When the
   tree listens elsewhere and not on the assigned port for :data:`DRIFT_SETTLE_S`, that
   is drift: reported with both numbers, and the route goes where it really listens.
5. **Route.** ``NAME.localhost -> HOST:PORT`` is published in the registry (owned by
   this process) for ``portside proxy`` to serve at once; withdrawn when CMD ends.
6. **End.** What is left of the group (and orphans that came back) gets SIGTERM, then
   SIGKILL after ``grace_s``; the lease ends; CMD's exit status is returned (128+N
   when a signal N ended it).

Off Linux, readiness is a connect to the assigned port and drift is not detected.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from portside.errors import PortsideError, UsageError
from portside.frameworks import Adjustment, adjust, package_script_name
from portside.registry import (
    ROUTE_SUFFIX,
    Registry,
    RouteConflictError,
    normalise_name,
    process_start_token,
)

__all__ = [
    "DRIFT_SETTLE_S",
    "GRACE_S",
    "HOST",
    "PortBusyError",
    "RunDrift",
    "RunEvent",
    "RunExited",
    "RunNote",
    "RunReady",
    "RunResult",
    "RunStarted",
    "exit_status",
    "listening_ports",
    "run_command",
]

HOST = "127.0.0.1"
#: Seconds the tree must listen elsewhere, and not on the assigned port, to call it drift.
DRIFT_SETTLE_S = 1.5
#: Seconds between looks at the process tree until the app is ready.
POLL_S = 0.1
#: Seconds between two reads of the whole listener table (drift) until the app is ready.
FULL_SCAN_S = 0.5
#: Seconds between SIGTERM and SIGKILL for what is left of the tree at the end.
GRACE_S = 5.0
_FORWARDED = tuple(
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
    if hasattr(signal, name)  # the module imports anywhere; running needs POSIX
)
_ESCALATING = frozenset(s for s in _FORWARDED if s.name in ("SIGINT", "SIGTERM", "SIGQUIT"))
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


class PortBusyError(PortsideError):
    """NAME's port is held by something else before CMD starts."""


# --------------------------------------------------------------------------- events


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RunStarted:
    """CMD started: its pid, the port, and the flags added for its framework."""

    name: str
    port: int
    pid: int
    argv: tuple[str, ...]
    framework: str | None
    added: tuple[str, ...]
    note: str | None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RunDrift:
    """CMD listens on ``actual``, not on the ``assigned`` port."""

    name: str
    assigned: int
    actual: int
    backend_host: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RunReady:
    """CMD accepts connections at ``url``; ``route`` is ``NAME.localhost`` or None;
    ``proxy_urls``: the route's URLs on the running proxies (``http://NAME.localhost:P/``)."""

    name: str
    url: str
    backend_host: str
    port: int
    route: str | None
    proxy_urls: tuple[str, ...]
    after_s: float


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RunNote:
    """Something worth a line on stderr (a route conflict, a leftover process)."""

    message: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RunExited:
    """CMD ended; ``exit_code`` is what ``portside run`` exits with."""

    name: str
    exit_code: int
    signal: str | None


RunEvent = RunStarted | RunDrift | RunReady | RunNote | RunExited


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    exit_code: int
    port: int
    actual_port: int | None
    routed: bool


def event_json(event: RunEvent) -> str:
    """One JSON line for ``--json`` (schema in docs/run.md)."""
    kinds = {
        RunStarted: "run-started",
        RunDrift: "run-drift",
        RunReady: "run-ready",
        RunNote: "run-note",
        RunExited: "run-exited",
    }
    document: dict[str, Any] = {"schema": 1, "kind": kinds[type(event)]}
    document.update(dataclasses.asdict(event))
    return json.dumps(document)


# --------------------------------------------------------------------------- the process tree


def exit_status(returncode: int) -> int:
    """A shell's view of a child's end: the code, or 128+N for signal N."""
    return 128 - returncode if returncode < 0 else returncode


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _all_pids() -> list[int]:
    try:
        names = os.listdir("/proc")  # noqa: PTH208 -- polled: os.listdir is the cheap call
    except OSError:
        return []
    return [int(name) for name in names if name.isdigit()]


def tree_pids(root: int) -> set[int]:
    """``root``, its process group and every descendant of either (Linux ``/proc``)."""
    parents: dict[int, int] = {}
    found = {root}
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if fields is None or fields[0] in ("Z", "X"):
            continue
        parents[pid] = int(fields[1])
        if int(fields[2]) == root:
            found.add(pid)
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in found and pid not in found:
                found.add(pid)
                grew = True
    return {pid for pid in found if pid in parents or pid == root}


def _socket_inodes(pids: set[int]) -> set[int]:
    inodes: set[int] = set()
    for pid in pids:
        directory = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(directory)  # noqa: PTH208 -- polled, see _all_pids
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{directory}/{fd}")  # noqa: PTH115 -- polled
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def descendants(root: int) -> set[int]:
    """``root`` and its descendants, from ``/proc/PID/task/TID/children`` (cheap: only
    the tree is read, not every process)."""
    found = {root}
    stack = [root]
    while stack:
        pid = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{pid}/task")  # noqa: PTH208 -- polled, see _all_pids
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as handle:
                    children = handle.read().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    stack.append(child)
    return found


def _listening(inodes: set[int], port: int | None = None) -> dict[int, set[str]]:
    """TCP ports (only ``port`` when given) listened on by the sockets ``inodes``, each
    with its addresses. The kernel filters by state (it walks only its listening hash)
    and by port."""
    from portside.models import SocketState, Transport
    from portside.sockets import SocketQuery, select_backend

    if not inodes:
        return {}
    query = SocketQuery(
        transports=frozenset({Transport.TCP}), states=frozenset({SocketState.LISTEN}), port=port
    )
    ports: dict[int, set[str]] = {}
    for entry in select_backend().entries(query):
        if entry.inode in inodes and entry.state is SocketState.LISTEN:
            ports.setdefault(entry.local.port, set()).add(entry.local.ip)
    return ports


def listening_ports(root: int) -> dict[int, set[str]]:
    """TCP ports the process tree of ``root`` listens on, each with its addresses (Linux)."""
    return _listening(_socket_inodes(descendants(root)))


class _Watch:
    """Where the tree listens, cheaply: the assigned port is asked of the kernel with a
    port filter on every poll; the whole listener table (thousands of rows on a busy
    machine) at most every :data:`FULL_SCAN_S`, and only once the tree has sockets."""

    def __init__(self, root: int, assigned: int) -> None:
        self.root = root
        self.assigned = assigned
        self.next_full = 0.0

    def ports(self) -> dict[int, set[str]]:
        if sys.platform != "linux":
            return {self.assigned: {HOST}} if _ready(HOST, self.assigned) else {}
        inodes = _socket_inodes(descendants(self.root))
        try:
            found = _listening(inodes, self.assigned)
            now = time.monotonic()
            if not found and inodes and now >= self.next_full:
                self.next_full = now + FULL_SCAN_S
                found = _listening(inodes)
        except PortsideError:  # the socket table cannot be read here: connect instead
            return {self.assigned: {HOST}} if _ready(HOST, self.assigned) else {}
        return found


def backend_host(addresses: set[str]) -> str:
    """Where to connect for a listener bound to ``addresses``: 127.0.0.1 when IPv4
    loopback reaches it, else ::1, else its own address."""
    if addresses & {"127.0.0.1", "0.0.0.0", "::"} or not addresses:  # noqa: S104 -- matching, not binding
        return HOST
    if "::1" in addresses:
        return "::1"
    return sorted(addresses)[0]


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


# --------------------------------------------------------------------------- guardian

#: The guardian: a small process in a session of its own that outlives portside. It reads
#: its stdin, a pipe only portside holds: "d" when portside ended the group itself; end of
#: file without it when portside died (SIGKILL, a crash). Then it ends CMD's process group:
#: SIGTERM, SIGKILL after the grace period. PR_SET_PDEATHSIG reaches CMD alone; this
#: reaches what CMD started in its group (``npm run dev`` -> node).
_GUARDIAN = r"""
import os, signal, sys, time
group, grace = int(sys.argv[2]), float(sys.argv[3])
if sys.stdin.buffer.read(1) == b"d":
    sys.exit(0)
def alive():
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
try:
    os.killpg(group, signal.SIGTERM)
except ProcessLookupError:
    sys.exit(0)
deadline = time.monotonic() + grace
while alive() and time.monotonic() < deadline:
    time.sleep(0.05)
if alive():
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass
"""
#: In the guardian's command line, so that it can be told apart (``ps``, tests).
GUARDIAN_MARK = "portside-run-guardian"


def _start_guardian(group: int, grace_s: float) -> subprocess.Popen[bytes] | None:
    """A guardian for process group *group* (None when it cannot start: CMD still gets
    PR_SET_PDEATHSIG)."""
    try:
        return subprocess.Popen(
            [sys.executable, "-S", "-c", _GUARDIAN, GUARDIAN_MARK, str(group), str(grace_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # no terminal: Ctrl-C and SIGHUP are for portside and CMD
        )
    except OSError:
        return None


# --------------------------------------------------------------------------- supervisor


class _Supervisor:
    """CMD's process group: start, forward signals, follow stops, clean up."""

    def __init__(self, *, reap_orphans: bool, grace_s: float) -> None:
        self.child: subprocess.Popen[bytes] | None = None
        self.grace_s = grace_s
        self.reap_orphans = reap_orphans and sys.platform == "linux"
        self.stops = 0
        self.exit_code: int | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self._tty: int | None = None
        self._prctl: Callable[..., int] | None = None
        self._guardian: subprocess.Popen[bytes] | None = None

    # -- start

    def start(self, argv: Sequence[str], env: Mapping[str, str], cwd: str | None) -> int:
        if sys.platform == "linux":
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            self._prctl = libc.prctl
            if self.reap_orphans:
                self._prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        self._tty = self._foreground_tty()
        parent = os.getpid()
        prctl = self._prctl
        tty = self._tty

        def preexec() -> None:  # in the child, between fork and exec
            os.setpgid(0, 0)
            if prctl is not None:
                prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
                if os.getppid() != parent:  # portside died before the line above
                    os._exit(128 + int(signal.SIGTERM))
            if tty is not None:
                _give_terminal(tty, os.getpgrp())

        try:
            self.child = subprocess.Popen(list(argv), env=dict(env), cwd=cwd, preexec_fn=preexec)
        except OSError as exc:
            self._unset_subreaper()
            raise UsageError(f"cannot run {argv[0]!r}: {exc.strerror or exc}") from exc
        with contextlib.suppress(OSError):
            os.setpgid(self.child.pid, self.child.pid)  # also here: no race either way
        if sys.platform == "linux":
            self._guardian = _start_guardian(self.child.pid, self.grace_s)
        if tty is not None:
            _give_terminal(tty, self.child.pid)
        if threading.current_thread() is threading.main_thread():  # only there in Python
            for sig in _FORWARDED:
                self._previous[sig] = signal.signal(sig, self._forward)
        return self.child.pid

    @staticmethod
    def _foreground_tty() -> int | None:
        try:
            fd = sys.stdin.fileno()
            if os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp():
                return fd
        except (OSError, ValueError, AttributeError):
            pass
        return None

    # -- signals

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if sig in _ESCALATING:
            self.stops += 1
            if self.stops > 1:
                sig = signal.SIGKILL
        self.signal_group(sig)

    def signal_group(self, sig: signal.Signals) -> None:
        if self.child is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.child.pid, sig)

    # -- waiting

    def poll(self, *, block: bool) -> int | None:
        """CMD's exit status once it has ended (None while it runs); follows a stop
        (Ctrl-Z) by stopping portside too, and resumes the group with it."""
        child = self.child
        assert child is not None  # noqa: S101 -- started first
        if self.exit_code is not None:
            return self.exit_code
        flags = os.WUNTRACED | (0 if block else os.WNOHANG)
        while True:
            try:
                pid, status = os.waitpid(child.pid, flags)
            except ChildProcessError:
                self.exit_code = 0
                child.returncode = 0
                return 0
            if pid == 0:
                return None
            if os.WIFSTOPPED(status):
                if self._tty is not None:  # Ctrl-Z: the user's shell should see a stop
                    self._follow_stop()
                if not block:
                    return None
                continue
            child.returncode = os.waitstatus_to_exitcode(status)
            self.exit_code = exit_status(child.returncode)
            return self.exit_code

    def _follow_stop(self) -> None:
        assert self.child is not None  # noqa: S101
        if self._tty is not None:
            _give_terminal(self._tty, os.getpgrp())
        os.kill(os.getpid(), signal.SIGSTOP)  # the shell sees its job stop; `fg` resumes us
        if self._tty is not None:
            _give_terminal(self._tty, self.child.pid)
        self.signal_group(signal.SIGCONT)

    # -- the end

    def finish(self) -> list[int]:
        """Stop what is left of the tree (group, descendants, returned orphans); restore
        signals and the terminal. The pids that had to be stopped."""
        for sig, previous in self._previous.items():
            with contextlib.suppress(TypeError, ValueError):
                signal.signal(sig, previous)
        self._previous.clear()
        if self._tty is not None:
            _give_terminal(self._tty, os.getpgrp())
        child = self.child
        if child is None:
            return []
        if child.returncode is None:  # portside itself is ending (an exception)
            self.signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(self.grace_s)
            if child.returncode is None:
                self.signal_group(signal.SIGKILL)
                child.wait()
        left = self._leftovers(child.pid)
        if left:
            self._stop(left)
        self._dismiss_guardian()
        self._unset_subreaper()
        return sorted(left)

    def _dismiss_guardian(self) -> None:
        """The group was ended here: the guardian leaves without touching it."""
        guardian, self._guardian = self._guardian, None
        if guardian is None or guardian.stdin is None:
            return
        with contextlib.suppress(OSError):
            guardian.stdin.write(b"d")
            guardian.stdin.close()
        try:
            guardian.wait(5.0)
        except subprocess.TimeoutExpired:
            guardian.kill()
            guardian.wait()

    def _leftovers(self, root: int) -> dict[int, str]:
        if sys.platform != "linux":
            return {}
        pids = tree_pids(root) - {root}
        if self.reap_orphans:
            mine = os.getpid()
            for pid in _all_pids():
                fields = _stat_fields(pid)
                if fields is not None and int(fields[1]) == mine:
                    pids.add(pid)
        if self._guardian is not None:
            pids.discard(self._guardian.pid)  # a child of ours, but not CMD's: dismissed after
        tokens = {pid: process_start_token(pid) for pid in pids}
        return {pid: token for pid, token in tokens.items() if token is not None}

    def _stop(self, left: dict[int, str]) -> None:
        assert self.child is not None  # noqa: S101
        self.signal_group(signal.SIGTERM)
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        alive = dict(left)
        while alive and time.monotonic() < deadline:
            self._reap(alive)
            alive = {p: t for p, t in alive.items() if process_start_token(p) == t}
            if alive:
                time.sleep(0.02)  # polling for the processes' ends, bounded by grace_s
        for pid, token in alive.items():
            if process_start_token(pid) == token:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        self.signal_group(signal.SIGKILL)
        end = time.monotonic() + 2.0
        while alive and time.monotonic() < end:
            self._reap(alive)
            alive = {p: t for p, t in alive.items() if process_start_token(p) == t}
            if alive:
                time.sleep(0.01)  # SIGKILL takes effect within milliseconds

    @staticmethod
    def _reap(pids: Mapping[int, str]) -> None:
        for pid in pids:  # only our own children (returned orphans) can be reaped
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)

    def _unset_subreaper(self) -> None:
        if self.reap_orphans and self._prctl is not None:
            self._prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def _give_terminal(fd: int, pgid: int) -> None:
    """``tcsetpgrp`` from any process group (SIGTTOU blocked for the call)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
    try:
        with contextlib.suppress(OSError):
            os.tcsetpgrp(fd, pgid)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# --------------------------------------------------------------------------- run


def _package_script(argv: Sequence[str], cwd: str | None) -> str | None:
    name = package_script_name(argv)
    if name is None:
        return None
    try:
        data = json.loads((Path(cwd or ".") / "package.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    scripts = data.get("scripts") if isinstance(data, dict) else None
    script = scripts.get(name) if isinstance(scripts, dict) else None
    return script if isinstance(script, str) else None


def _ready(host: str, port: int) -> bool:
    from portside.addresses import parse_target
    from portside.wait import check

    target = parse_target(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return check(target, timeout=0.5).ready


def run_command(
    name: str,
    command: Sequence[str],
    *,
    scope: str,
    port: int | None = None,
    route: bool = True,
    registry_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    on_event: Callable[[RunEvent], None] | None = None,
    grace_s: float = GRACE_S,
    reap_orphans: bool = False,
) -> RunResult:
    """Run ``command`` as NAME until it ends (see the module docstring); its exit status
    in the result. ``reap_orphans``: become a child subreaper (for a process of its own,
    like the CLI; a library caller's other children are left alone without it).

    Raises:
        UsageError: no command, a malformed name or port, or CMD cannot be started.
        PortBusyError: something already listens on NAME's port.
        RouteConflictError: another live process routes ``NAME.localhost``.
        ReservationConflictError, LeaseConflictError: from the registry.
    """
    if not command:
        raise UsageError("give the command to run after --, e.g. portside run web -- npm run dev")
    if sys.platform == "win32":
        raise UsageError("portside run needs process groups and POSIX signals (Linux, macOS)")
    name = normalise_name(name)
    emit = on_event or (lambda event: None)
    with Registry.open(registry_path) as registry:
        if route:
            owner = registry.route(name)
            if owner is not None and owner.pid != os.getpid():
                raise RouteConflictError(
                    f"{owner.host} is routed to {owner.backend_host}:{owner.backend_port} by"
                    f" pid {owner.pid}, which is still running; stop it, or use another name"
                    " (or --no-route)"
                )
        reserved = registry.reserve(name, scope=scope, port=port)
        assigned = reserved.reservation.port
        if not reserved.bindable:
            raise PortBusyError(
                f"port {assigned} of {name!r} is in use already; see `portside who {assigned}`,"
                f" stop it (`portside kill {assigned}`) or choose another port with --port"
            )
        registry.lease(assigned)
        try:
            return _supervise(
                registry,
                name,
                command,
                assigned,
                scope=scope,
                route=route,
                env=env,
                cwd=cwd,
                emit=emit,
                grace_s=grace_s,
                reap_orphans=reap_orphans,
            )
        finally:
            with contextlib.suppress(PortsideError):
                registry.end_lease(assigned)


def _supervise(
    registry: Registry,
    name: str,
    command: Sequence[str],
    assigned: int,
    *,
    scope: str,
    route: bool,
    env: Mapping[str, str] | None,
    cwd: str | None,
    emit: Callable[[RunEvent], None],
    grace_s: float,
    reap_orphans: bool,
) -> RunResult:
    adjustment: Adjustment = adjust(
        command, port=assigned, host=HOST, script=_package_script(command, cwd)
    )
    environment = dict(os.environ if env is None else env)
    environment.update(PORT=str(assigned), HOST=HOST)
    supervisor = _Supervisor(reap_orphans=reap_orphans, grace_s=grace_s)
    started = time.monotonic()
    routed = False
    actual: int | None = None
    try:
        pid = supervisor.start(adjustment.argv, environment, cwd)
        emit(
            RunStarted(
                name=name,
                port=assigned,
                pid=pid,
                argv=adjustment.argv,
                framework=adjustment.framework,
                added=adjustment.added,
                note=adjustment.reason,
            )
        )
        first_elsewhere: float | None = None
        watch = _Watch(pid, assigned)
        code = supervisor.poll(block=False)
        while code is None and actual is None:
            ports = watch.ports()
            candidate: int | None = None
            if assigned in ports:
                candidate = assigned
            elif ports:
                now = time.monotonic()
                first_elsewhere = first_elsewhere or now
                if now - first_elsewhere >= DRIFT_SETTLE_S:
                    candidate = min(ports)
            if candidate is not None:
                host = backend_host(ports[candidate])
                if _ready(host, candidate):
                    actual = candidate
                    if candidate != assigned:
                        emit(
                            RunDrift(
                                name=name, assigned=assigned, actual=candidate, backend_host=host
                            )
                        )
                    routed = route and _publish(registry, name, scope, host, candidate, emit)
                    emit(
                        RunReady(
                            name=name,
                            url=_url(host, candidate),
                            backend_host=host,
                            port=candidate,
                            route=name + ROUTE_SUFFIX if routed else None,
                            proxy_urls=_proxy_urls(registry, name) if routed else (),
                            after_s=round(time.monotonic() - started, 3),
                        )
                    )
                    break
            time.sleep(POLL_S)  # the readiness poll period
            code = supervisor.poll(block=False)
        while code is None:
            code = supervisor.poll(block=True)
    finally:
        if routed:
            with contextlib.suppress(PortsideError):
                registry.remove_route(name)
        left = supervisor.finish()
    if left:
        emit(RunNote(message=f"stopped {len(left)} leftover process(es): pids {left}"))
    child = supervisor.child
    signal_name = None
    if child is not None and child.returncode is not None and child.returncode < 0:
        with contextlib.suppress(ValueError):
            signal_name = signal.Signals(-child.returncode).name
    emit(RunExited(name=name, exit_code=code, signal=signal_name))
    return RunResult(exit_code=code, port=assigned, actual_port=actual, routed=routed)


def _proxy_urls(registry: Registry, name: str) -> tuple[str, ...]:
    try:
        proxies = registry.proxies()
    except PortsideError:
        return ()
    return tuple(dict.fromkeys(f"{p.scheme}://{name}{ROUTE_SUFFIX}:{p.port}/" for p in proxies))


def _publish(
    registry: Registry,
    name: str,
    scope: str,
    host: str,
    port: int,
    emit: Callable[[RunEvent], None],
) -> bool:
    try:
        registry.set_route(name, scope=scope, backend_host=host, backend_port=port)
    except RouteConflictError as exc:
        emit(RunNote(message=f"not routed: {exc}"))
        return False
    return True
