"""A faulty network link in front of a service, for tests: portside's forwarder with
fault injection, run on an event loop in a background thread so that synchronous test
code can start it, change its faults while traffic flows, and stop it.

::

    with start_flaky_link(5432, latency="50ms") as link:
        connect(link.host, link.port)        # every byte now takes 50 ms each way
        link.update_faults(reset_after="1KiB")
        link.clear()

Faults (the mapping form of :mod:`portside.net.faults`; text with a unit, or numbers:
seconds for ``latency``/``jitter``/``timeout_after``, bytes for ``slice``/``reset_after``):

``latency`` ``jitter`` (``"50ms"``), ``bandwidth`` (``"1mbit"``, ``"100kbps"``),
``slice`` (deliver at most this many bytes per write), ``reset_after`` (a TCP reset after
this many bytes), ``timeout_after`` (go silent after a time or a size), ``refuse``
(accept, then close at once). Top-level values apply to both directions; ``up={...}``
(client -> service) and ``down={...}`` (service -> client) to one.

The loop is the stock asyncio loop unless ``PORTSIDE_LOOP`` asks for another.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, TypeVar

from portside.models import Endpoint
from portside.testing._teardown import end_all

if TYPE_CHECKING:
    from portside.net.faults import Faults
    from portside.net.forward import Forwarder, ForwardStats

__all__ = ["FaultValue", "FlakyLink", "FlakyLinks", "start_flaky_link"]

T = TypeVar("T")

FaultValue = str | int | float
#: How long a call into the link's loop may take before it counts as hung.
CALL_TIMEOUT_S = 10.0


class HasAddress(Protocol):
    """Anything with ``address = (host, port)``: a LocalService, another FlakyLink."""

    @property
    def address(self) -> tuple[str, int]: ...


Target = int | str | tuple[str, int] | HasAddress


def _upstream(target: Target) -> tuple[str, int]:
    if isinstance(target, bool):
        raise TypeError(f"not a target: {target!r}")
    if isinstance(target, int):
        return "127.0.0.1", target
    if isinstance(target, str):
        from portside.net.forward import parse_upstream

        return parse_upstream(target)
    if isinstance(target, tuple):
        return target
    return target.address


def fault_mapping(
    *,
    latency: FaultValue | None = None,
    jitter: FaultValue | None = None,
    bandwidth: str | None = None,
    slice: FaultValue | None = None,  # noqa: A002 -- the fault's name everywhere else
    reset_after: FaultValue | None = None,
    timeout_after: FaultValue | None = None,
    refuse: bool | None = None,
    up: Mapping[str, FaultValue] | None = None,
    down: Mapping[str, FaultValue] | None = None,
) -> dict[str, object]:
    """The keyword arguments given (not None) as the faults mapping form."""
    given: dict[str, object] = {
        "latency": latency,
        "jitter": jitter,
        "bandwidth": bandwidth,
        "slice": slice,
        "reset_after": reset_after,
        "timeout_after": timeout_after,
        "refuse": refuse,
        "up": up,
        "down": down,
    }
    return {key: value for key, value in given.items() if value is not None}


class FlakyLink:
    """A running faulty link: connect to ``address`` instead of the service.

    Thread-safe: every method hands its work to the link's own event loop.
    """

    def __init__(
        self,
        forwarder: Forwarder,
        loop: asyncio.AbstractEventLoop,
        thread: threading.Thread,
    ) -> None:
        self._forwarder = forwarder
        self._loop = loop
        self._thread = thread
        self._closed = False
        self.endpoint: Endpoint = forwarder.address
        self.target: tuple[str, int] = forwarder.target

    @property
    def host(self) -> str:
        return self.endpoint.ip

    @property
    def port(self) -> int:
        return self.endpoint.port

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` where the link listens, as ``socket.create_connection`` takes it."""
        return self.endpoint.ip, self.endpoint.port

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` through the link (no trailing slash)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def faults(self) -> dict[str, object]:
        """The faults in force, in the mapping form (``{"refuse": …, "up": {…}, "down": {…}}``)."""
        from portside.net.faults import faults_to_mapping

        current = self._call(lambda: self._forwarder.faults)
        assert current is not None  # noqa: S101 -- always opened with fault injection on
        return faults_to_mapping(current)

    def set_faults(
        self,
        *,
        latency: FaultValue | None = None,
        jitter: FaultValue | None = None,
        bandwidth: str | None = None,
        slice: FaultValue | None = None,  # noqa: A002 -- the fault's name everywhere else
        reset_after: FaultValue | None = None,
        timeout_after: FaultValue | None = None,
        refuse: bool | None = None,
        up: Mapping[str, FaultValue] | None = None,
        down: Mapping[str, FaultValue] | None = None,
    ) -> None:
        """Replace the faults: those given, and no others. Open connections follow from
        their next byte on.

        Raises:
            UsageError: a value that does not parse (``"50"`` without a unit, …).
        """
        from portside.net.faults import faults_from_mapping

        mapping = fault_mapping(
            latency=latency,
            jitter=jitter,
            bandwidth=bandwidth,
            slice=slice,
            reset_after=reset_after,
            timeout_after=timeout_after,
            refuse=refuse,
            up=up,
            down=down,
        )
        self._apply(faults_from_mapping(mapping))

    def update_faults(
        self,
        *,
        latency: FaultValue | None = None,
        jitter: FaultValue | None = None,
        bandwidth: str | None = None,
        slice: FaultValue | None = None,  # noqa: A002 -- the fault's name everywhere else
        reset_after: FaultValue | None = None,
        timeout_after: FaultValue | None = None,
        refuse: bool | None = None,
        up: Mapping[str, FaultValue] | None = None,
        down: Mapping[str, FaultValue] | None = None,
    ) -> None:
        """Change only the faults given (``"off"`` removes one); the others stay."""
        from portside.net.faults import faults_from_mapping

        mapping = fault_mapping(
            latency=latency,
            jitter=jitter,
            bandwidth=bandwidth,
            slice=slice,
            reset_after=reset_after,
            timeout_after=timeout_after,
            refuse=refuse,
            up=up,
            down=down,
        )

        def change() -> None:
            self._forwarder.set_faults(faults_from_mapping(mapping, base=self._forwarder.faults))

        self._call(change)

    def clear(self) -> None:
        """No faults any more: bytes pass as they come."""
        from portside.net.faults import Faults

        self._apply(Faults())

    def stats(self) -> ForwardStats:
        """The forwarder's counters: connections, bytes each way, how each one ended
        (``"fault-reset"``, ``"done"`` …)."""
        return self._call(self._forwarder.stats)

    def _apply(self, faults: Faults) -> None:
        self._call(lambda: self._forwarder.set_faults(faults))

    def _call(self, function: Callable[[], T]) -> T:
        if self._closed:
            raise RuntimeError("this flaky link is closed")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(function())
            except Exception as exc:
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return future.result(timeout=CALL_TIMEOUT_S)

    def close(self) -> None:
        """Stop listening, end the open connections, stop the loop and its thread."""
        if self._closed:
            return
        self._closed = True
        try:
            closing = asyncio.run_coroutine_threadsafe(
                self._forwarder.aclose(drain_timeout_s=0), self._loop
            )
            closing.result(timeout=CALL_TIMEOUT_S)
        finally:
            _stop_loop(self._loop, self._thread)

    def __enter__(self) -> FlakyLink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        host, port = self.target
        return f"<FlakyLink {self.host}:{self.port} -> {host}:{port}>"


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=CALL_TIMEOUT_S)
    if not thread.is_alive():
        loop.close()


def start_flaky_link(
    target: Target,
    *,
    listen: str = "127.0.0.1:0",
    name: str = "flaky-link",
    latency: FaultValue | None = None,
    jitter: FaultValue | None = None,
    bandwidth: str | None = None,
    slice: FaultValue | None = None,  # noqa: A002 -- the fault's name everywhere else
    reset_after: FaultValue | None = None,
    timeout_after: FaultValue | None = None,
    refuse: bool | None = None,
    up: Mapping[str, FaultValue] | None = None,
    down: Mapping[str, FaultValue] | None = None,
) -> FlakyLink:
    """Listen on ``listen`` (port 0: the kernel picks one) and forward every connection
    to ``target`` through the faults given (none: a clean link whose faults can be set
    later). Returns once listening.

    ``target``: a port on 127.0.0.1, ``"host:port"``, ``(host, port)``, or anything with
    an ``address`` (a :class:`~portside.testing.service.LocalService`, another link).

    Raises:
        UsageError: a fault value that does not parse, a bad listen address.
        ForwardError: ``listen`` cannot be bound.
    """
    from portside.net._loop import LOOP_ENV, loop_factory
    from portside.net.faults import faults_from_mapping
    from portside.net.forward import open_forwarder

    faults = faults_from_mapping(
        fault_mapping(
            latency=latency,
            jitter=jitter,
            bandwidth=bandwidth,
            slice=slice,
            reset_after=reset_after,
            timeout_after=timeout_after,
            refuse=refuse,
            up=up,
            down=down,
        )
    )
    upstream = _upstream(target)
    loop = loop_factory(os.environ.get(LOOP_ENV, "asyncio"))()
    thread = threading.Thread(target=loop.run_forever, name=f"portside-{name}", daemon=True)
    thread.start()
    try:
        opening = asyncio.run_coroutine_threadsafe(
            open_forwarder(listen, upstream, faults=faults, data_path="copy", name=name), loop
        )
        forwarder = opening.result(timeout=CALL_TIMEOUT_S)
    except BaseException:
        _stop_loop(loop, thread)
        raise
    return FlakyLink(forwarder, loop, thread)


class FlakyLinks:
    """The ``flaky_link`` fixture: call it like :func:`start_flaky_link`; every link it
    started is closed at the end of the test (:meth:`close`)."""

    def __init__(self) -> None:
        self.started: list[FlakyLink] = []

    def __call__(
        self,
        target: Target,
        *,
        listen: str = "127.0.0.1:0",
        name: str = "flaky-link",
        latency: FaultValue | None = None,
        jitter: FaultValue | None = None,
        bandwidth: str | None = None,
        slice: FaultValue | None = None,  # noqa: A002 -- the fault's name everywhere else
        reset_after: FaultValue | None = None,
        timeout_after: FaultValue | None = None,
        refuse: bool | None = None,
        up: Mapping[str, FaultValue] | None = None,
        down: Mapping[str, FaultValue] | None = None,
    ) -> FlakyLink:
        link = start_flaky_link(
            target,
            listen=listen,
            name=name,
            latency=latency,
            jitter=jitter,
            bandwidth=bandwidth,
            slice=slice,
            reset_after=reset_after,
            timeout_after=timeout_after,
            refuse=refuse,
            up=up,
            down=down,
        )
        self.started.append(link)
        return link

    def close(self) -> None:
        """Close every link, the last started first; raise the first failure after
        trying them all."""
        end_all(self.started, FlakyLink.close)
