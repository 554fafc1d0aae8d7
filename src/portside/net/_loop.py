"""The event loop the servers run on, and the runner the CLI uses for them.

* :func:`loop_factory` picks uvloop where it is installed, unless ``PORTSIDE_LOOP=asyncio``
  asks for the stock loop (kept as the fallback: uvloop 0.23.0 was once seen aborting
  with "double free or corruption" under connection churn). ``PORTSIDE_LOOP=uvloop``
  insists on uvloop.
* :func:`run_until_signalled` runs a main coroutine on that loop and borrows SIGTERM and
  SIGINT while it runs: the first asks for a graceful stop (:attr:`Shutdown.requested`:
  stop accepting, let connections drain), the second forces it (the callbacks given to
  :meth:`Shutdown.on_force` abort what is left), a third cancels the main coroutine.
  The previous handlers come back afterwards. Library code never touches signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from portside.errors import UsageError

T = TypeVar("T")

LOOP_ENV = "PORTSIDE_LOOP"


def loop_factory(choice: str | None = None) -> Callable[[], asyncio.AbstractEventLoop]:
    """The constructor of the loop to run on: uvloop if available and not disabled.

    *choice* (``"auto"``, ``"asyncio"``, ``"uvloop"``) overrides ``PORTSIDE_LOOP``.

    Raises:
        UsageError: an unknown loop, or uvloop asked for when it is missing.
    """
    if choice is None:
        choice = os.environ.get(LOOP_ENV, "auto")
    choice = choice.strip().lower() or "auto"
    if choice not in ("auto", "asyncio", "uvloop"):
        raise UsageError(f"{LOOP_ENV}={choice!r}: use 'asyncio', 'uvloop' or 'auto'")
    if choice == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError as exc:
        if choice == "uvloop":
            raise UsageError(f"{LOOP_ENV}=uvloop but uvloop is not installed") from exc
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def loop_name(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """``"uvloop"`` or ``"asyncio"``: which loop runs (the running one by default)."""
    loop = loop or asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


class Shutdown:
    """What the signals asked for; handed to the main coroutine."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.signal: int | None = None  # the first signal received
        self._force: list[Callable[[], None]] = []
        self._count = 0

    def on_force(self, callback: Callable[[], None]) -> None:
        """Call *callback* (no arguments) on the second signal."""
        self._force.append(callback)

    def receive(self, signum: int, main: asyncio.Task[Any] | None) -> None:
        """Handle one signal: request, then force, then cancel *main*."""
        self._count += 1
        if self._count == 1:
            self.signal = signum
            self.requested.set()
        elif self._count == 2:
            for callback in self._force:
                callback()
        elif main is not None:
            main.cancel()


def raise_fd_limit() -> tuple[int, int] | None:
    """Raise the soft limit on open files to the hard limit (servers hold many sockets);
    returns the (soft, hard) pair now in force, or None where there is no such limit."""
    if sys.platform == "win32":
        return None
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):  # e.g. macOS caps at OPEN_MAX
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def run_until_signalled(
    main: Callable[[Shutdown], Coroutine[Any, Any, T]], *, loop: str | None = None
) -> T:
    """Run ``main(shutdown)`` on a new loop (:func:`loop_factory` with *loop*) with SIGTERM and
    SIGINT borrowed for a graceful stop; return what it returns.

    Off the main thread or where the loop cannot take signal handlers (Windows), the
    signals are left alone and Ctrl-C ends the run with KeyboardInterrupt as usual.
    """
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        return runner.run(_with_signals(main))


async def _with_signals(main: Callable[[Shutdown], Coroutine[Any, Any, T]]) -> T:
    loop = asyncio.get_running_loop()
    shutdown = Shutdown()
    task = asyncio.current_task()
    borrowed: list[tuple[signal.Signals, Any]] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)
        try:
            loop.add_signal_handler(signum, shutdown.receive, signum, task)
        except (NotImplementedError, RuntimeError, ValueError):
            continue  # no signal support here (Windows, not the main thread)
        borrowed.append((signum, previous))
    try:
        return await main(shutdown)
    finally:
        for signum, previous in borrowed:
            loop.remove_signal_handler(signum)
            with contextlib.suppress(TypeError, ValueError, OSError):
                signal.signal(signum, previous)
