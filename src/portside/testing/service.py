"""A command run on a picked port for a test: started, waited for, and killed with
everything it started.

::

    with start_service(["python", "-m", "http.server", "{port}"],
                       ready="http://127.0.0.1:{port}/") as service:
        service.port, service.url, service.pid

``{port}`` and ``{host}`` are replaced in the command, in ``ready`` and in the values of
``env``; the environment also gets ``PORT``. The command runs in a session (and process
group) of its own, with its output going to a log file (``service.output()``).

Stopping (``stop()``, the end of a ``with`` block, the fixture's teardown): SIGTERM to the
process group and to every descendant seen at that moment (which catches those that moved
to a group of their own), up to ``grace`` seconds for them to exit, then SIGKILL to what is
left. The group leader is reaped last, so its process-group id cannot be reused by another
process while signals are sent to it. POSIX only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from portside.errors import PortsideError, UsageError
from portside.testing._teardown import end_all
from portside.testing.ready import (
    DEFAULT_INTERVAL_S,
    DEFAULT_TIMEOUT_S,
    NotReadyError,
    make_condition,
    wait_until,
)

if TYPE_CHECKING:
    import psutil

__all__ = ["LocalService", "LocalServices", "ServiceExitedError", "start_service"]

LOOPBACK = "127.0.0.1"
#: Seconds between SIGTERM and SIGKILL when stopping.
STOP_GRACE_S = 5.0
#: Seconds to wait for processes to be gone after SIGKILL.
KILL_WAIT_S = 5.0
#: How much of the output an error message quotes.
OUTPUT_TAIL_LINES = 20
_POLL_S = 0.01


class ServiceExitedError(PortsideError):
    """The command exited before it was ready. ``returncode``: its exit status (negative:
    the signal)."""

    def __init__(self, message: str, returncode: int) -> None:
        super().__init__(message)
        self.returncode = returncode


def _substitute(text: str, host: str, port: int) -> str:
    # Not str.format: commands often hold braces of their own (JSON, shell).
    return text.replace("{port}", str(port)).replace("{host}", host)


def _argv(command: Sequence[str | os.PathLike[str]] | str) -> list[str]:
    if isinstance(command, str):
        import shlex

        return shlex.split(command)
    return [os.fspath(part) for part in command]


def _exit_status(process: subprocess.Popen[bytes]) -> int | None:
    """The exit status of ``process`` if it has exited, without reaping it (so that its
    pid, which is also the process-group id, stays reserved); None while it runs."""
    if process.returncode is not None:
        return process.returncode
    if not hasattr(os, "waitid"):  # macOS before Python 3.13: reap, as Popen does
        return process.poll()
    pid = process.pid
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None  # already reaped by Popen
    if info is None or info.si_pid == 0:
        return None
    if info.si_code == os.CLD_EXITED:
        return info.si_status
    return -info.si_status  # killed or dumped: the signal, negated as Popen does


def _alive(proc: psutil.Process) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _tail(text: str) -> str:
    lines = text.rstrip().splitlines()[-OUTPUT_TAIL_LINES:]
    return " | ".join(line.strip() for line in lines if line.strip()) or "(no output)"


class LocalService:
    """A running command, started by :func:`start_service` (or the ``local_service``
    fixture). ``port`` is the port it was given; ``url`` is ``http://HOST:PORT``."""

    def __init__(
        self,
        *,
        argv: list[str],
        host: str,
        port: int,
        ready: str,
        process: subprocess.Popen[bytes],
        log_path: Path,
        keep_log: bool,
    ) -> None:
        self.argv = argv
        self.host = host
        self.port = port
        self.ready = ready
        self.log_path = log_path
        self._process = process
        self._keep_log = keep_log
        self._stopped = False

    @property
    def pid(self) -> int:
        """The pid of the command (the leader of its process group)."""
        return self._process.pid

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``, as ``socket.create_connection`` takes it."""
        return self.host, self.port

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (no trailing slash: ``service.url + "/health"``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def returncode(self) -> int | None:
        """The exit status once it has exited (negative: killed by that signal)."""
        return _exit_status(self._process)

    @property
    def running(self) -> bool:
        return not self._stopped and self.returncode is None

    def output(self) -> str:
        """Everything the command wrote to stdout and stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _check_alive(self) -> None:
        code = _exit_status(self._process)
        if code is not None:
            raise ServiceExitedError(
                f"{self.argv[0]} exited with status {code} before {self.ready} was ready;"
                f" its output: {_tail(self.output())}",
                code,
            )

    def _wait(self, timeout: float, interval: float, status: str | None, body: str | None) -> None:
        try:
            wait_until(
                [self.ready],
                timeout=timeout,
                interval=interval,
                condition=make_condition(status, body),
                still_worth_it=self._check_alive,
            )
        except NotReadyError as exc:
            self._check_alive()  # it may have exited during the last round
            raise NotReadyError(
                f"{self.argv[0]} (pid {self.pid}): {exc}; its output: {_tail(self.output())}",
                exc.result,
            ) from None

    def stop(self, grace: float = STOP_GRACE_S) -> int | None:
        """Stop the command and everything it started (see the module docstring);
        return its exit status. Calling it again does nothing."""
        if self._stopped:
            return self._process.returncode
        self._stopped = True
        try:
            self._kill_tree(grace)
        finally:
            if not self._keep_log:
                with contextlib.suppress(OSError):
                    self.log_path.unlink()
        return self._process.returncode

    def _kill_tree(self, grace: float) -> None:
        import psutil

        members: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            leader = psutil.Process(self.pid)
            members = [leader, *leader.children(recursive=True)]
        self._signal(signal.SIGTERM, members)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self._any_alive(members):
            time.sleep(_POLL_S)  # polling for the exit, bounded by the grace period
        self._signal(signal.SIGKILL, members)
        deadline = time.monotonic() + KILL_WAIT_S
        while time.monotonic() < deadline and self._any_alive(members):
            time.sleep(_POLL_S)
        self._process.wait(timeout=KILL_WAIT_S)  # reap the leader last (see the docstring)

    def _any_alive(self, members: list[psutil.Process]) -> bool:
        return _exit_status(self._process) is None or any(_alive(p) for p in members)

    def _signal(self, signum: signal.Signals, members: list[psutil.Process]) -> None:
        """``signum`` to the process group, and to the descendants that left it."""
        import psutil

        if self._process.returncode is None:  # not reaped: the group id is still ours
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signum)
        for proc in members:
            if proc.pid == self.pid or not _alive(proc):
                continue
            with contextlib.suppress(psutil.Error, OSError):
                if os.getpgid(proc.pid) == self.pid:
                    continue  # the group signal reached it
                proc.send_signal(signum)  # psutil checks it is still the same process

    def __enter__(self) -> LocalService:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<LocalService pid={self.pid} {self.host}:{self.port} {self.argv!r}>"


def start_service(
    command: Sequence[str | os.PathLike[str]] | str,
    *,
    ready: str | None = None,
    port: int | None = None,
    host: str = LOOPBACK,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    interval: float = DEFAULT_INTERVAL_S,
    status: str | None = None,
    body: str | None = None,
    log_dir: str | os.PathLike[str] | None = None,
) -> LocalService:
    """Run ``command`` on a port and return once it is ready.

    Args:
        command: the argv (a string is split as a shell would, but no shell runs it);
            ``{port}`` and ``{host}`` are replaced.
        ready: the target that must be ready (``portside wait`` forms, e.g.
            ``"http://{host}:{port}/health"``, ``"redis://{host}:{port}"``); default
            ``"{host}:{port}"`` (a TCP connect).
        port: the port to give it; default: one picked with :func:`portside.pick.pick_port`.
        env: added to (and overriding) this process's environment, plus ``PORT``.
        timeout, interval: how long to wait for readiness, how often to look.
        status, body: what an ``http(s)://`` ready target must answer (see ``wait_ready``).
        log_dir: where to keep the output log (kept after stop); default: a temporary
            file removed by :meth:`LocalService.stop`.

    Raises:
        ServiceExitedError: the command exited before it was ready (its output is quoted).
        NotReadyError: it did not become ready within ``timeout``; it has been stopped.
        OSError: the command could not be started (not found, not executable).
    """
    if sys.platform == "win32":
        raise UsageError("local services need POSIX process groups; Windows is not supported")
    argv_template = _argv(command)
    if not argv_template:
        raise UsageError(
            "the command is empty; give e.g. ['python', '-m', 'http.server', '{port}']"
        )
    if port is None:
        from portside.pick import pick_port

        port = pick_port()[0]
    argv = [_substitute(part, host, port) for part in argv_template]
    target = _substitute(ready if ready is not None else "{host}:{port}", host, port)
    child_env = dict(os.environ)
    child_env["PORT"] = str(port)
    for key, value in (env or {}).items():
        child_env[key] = _substitute(value, host, port)
    keep_log = log_dir is not None
    if log_dir is not None:
        import tempfile

        fd, log_name = tempfile.mkstemp(
            prefix=f"{Path(argv[0]).name}-{port}-", suffix=".log", dir=log_dir
        )
    else:
        import tempfile

        fd, log_name = tempfile.mkstemp(prefix="portside-service-", suffix=".log")
    log_path = Path(log_name)
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT,
            env=child_env,
            cwd=cwd,
            start_new_session=True,
        )
    except BaseException:
        if not keep_log:
            log_path.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    service = LocalService(
        argv=argv,
        host=host,
        port=port,
        ready=target,
        process=process,
        log_path=log_path,
        keep_log=keep_log,
    )
    try:
        service._wait(timeout, interval, status, body)
    except BaseException:
        service.stop()
        raise
    return service


class LocalServices:
    """The ``local_service`` fixture: call it like :func:`start_service`; every service
    it started is stopped at the end of the test (:meth:`close`)."""

    def __init__(self, *, log_dir: str | os.PathLike[str] | None = None) -> None:
        self.log_dir = log_dir
        self.started: list[LocalService] = []

    def __call__(
        self,
        command: Sequence[str | os.PathLike[str]] | str,
        *,
        ready: str | None = None,
        port: int | None = None,
        host: str = LOOPBACK,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        interval: float = DEFAULT_INTERVAL_S,
        status: str | None = None,
        body: str | None = None,
    ) -> LocalService:
        service = start_service(
            command,
            ready=ready,
            port=port,
            host=host,
            env=env,
            cwd=cwd,
            timeout=timeout,
            interval=interval,
            status=status,
            body=body,
            log_dir=self.log_dir,
        )
        self.started.append(service)
        return service

    def close(self) -> None:
        """Stop every service, the last started first; raise the first failure after
        trying them all."""
        end_all(self.started, LocalService.stop)
