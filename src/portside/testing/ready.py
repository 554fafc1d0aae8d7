"""Waiting for a service from a test: :func:`wait_ready` returns once every target is
ready, or raises :class:`NotReadyError` naming what was not ready and why.

"Ready" is what ``portside wait`` means by it (see :mod:`portside.wait`): a TCP connect
for ``HOST:PORT``, an HTTP status in 200-399 for ``http://`` URLs, ``PING`` answered for
``redis://``, the SSLRequest answered for ``postgres://``, and so on. An ``int`` is a
port on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from portside.errors import PortsideError

if TYPE_CHECKING:
    from portside.wait import Condition, WaitResult

__all__ = ["DEFAULT_INTERVAL_S", "DEFAULT_TIMEOUT_S", "NotReadyError", "WaitReady", "wait_ready"]

DEFAULT_TIMEOUT_S = 10.0
#: Tests want an answer soon after the service is up: poll often (a loopback attempt at a
#: closed port costs well under a millisecond).
DEFAULT_INTERVAL_S = 0.05


class NotReadyError(PortsideError):
    """A target was not ready within the timeout. ``result`` holds every target's state."""

    def __init__(self, message: str, result: WaitResult | None = None) -> None:
        super().__init__(message)
        self.result = result


class WaitReady(Protocol):
    """The type of the ``wait_ready`` fixture (the :func:`wait_ready` function)."""

    def __call__(
        self,
        *targets: str | int,
        timeout: float = ...,
        interval: float = ...,
        status: str | None = ...,
        body: str | None = ...,
    ) -> WaitResult: ...


def target_text(target: str | int) -> str:
    """``8080`` -> ``"127.0.0.1:8080"``; text is kept as it is."""
    if isinstance(target, bool) or not isinstance(target, (str, int)):
        raise TypeError(f"a target is a port number or text such as 'http://…', not {target!r}")
    return f"127.0.0.1:{target}" if isinstance(target, int) else target


def not_ready_message(result: WaitResult) -> str:
    """One line: which targets were not ready after how long, and the last reason."""
    waiting = [t for t in result.targets if not t.ready]
    parts = [
        f"{t.target} ({t.attempts} attempt{'s' if t.attempts != 1 else ''};"
        f" last: {t.last_error or 'no answer'})"
        for t in waiting
    ]
    return f"not ready after {result.timeout_s:g} s: " + "; ".join(parts)


def wait_until(
    targets: list[str],
    *,
    timeout: float,
    interval: float,
    condition: Condition | None,
    still_worth_it: Callable[[], None] | None = None,
) -> WaitResult:
    """:func:`portside.wait.wait_for` raising :class:`NotReadyError` on a timeout.

    ``still_worth_it`` is called after every round and may raise to stop waiting (the
    service being waited for has exited).
    """
    from portside.wait import wait_for

    def progress(_: WaitResult) -> None:
        if still_worth_it is not None:
            still_worth_it()

    result = wait_for(
        targets,
        timeout=timeout,
        interval=interval,
        condition=condition,
        attempt_timeout=max(min(timeout, 2.0), 0.05),
        on_progress=progress,
    )
    if not result.ready:
        raise NotReadyError(not_ready_message(result), result)
    return result


def make_condition(status: str | None, body: str | None) -> Condition | None:
    """The HTTP condition for ``status`` (``"200-299,401"``) and ``body``; None: default."""
    if status is None and body is None:
        return None
    from portside.wait import DEFAULT_STATUSES, Condition, parse_statuses

    statuses = parse_statuses(status) if status is not None else DEFAULT_STATUSES
    return Condition(statuses=statuses, body=body)


def wait_ready(
    *targets: str | int,
    timeout: float = DEFAULT_TIMEOUT_S,
    interval: float = DEFAULT_INTERVAL_S,
    status: str | None = None,
    body: str | None = None,
) -> WaitResult:
    """Poll ``targets`` until every one is ready; return the :class:`~portside.wait.WaitResult`.

    ``status`` (e.g. ``"200-299,401"``) and ``body`` (text the answer must contain) apply
    to ``http(s)://`` targets.

    Raises:
        NotReadyError: a target was still not ready after ``timeout`` seconds; the
            message names it, the attempts made and the last reason (``ECONNREFUSED``,
            ``HTTP 503 …``).
        UsageError: a target that cannot be parsed or has no port.
    """
    if not targets:
        raise TypeError("wait_ready() needs at least one target, e.g. 'http://127.0.0.1:8000/'")
    return wait_until(
        [target_text(t) for t in targets],
        timeout=timeout,
        interval=interval,
        condition=make_condition(status, body),
    )
