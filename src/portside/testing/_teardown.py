"""Ending everything a fixture factory started."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    _T = TypeVar("_T")


def end_all(started: list[_T], end: Callable[[_T], object]) -> None:
    """End every item of ``started``, the last started first, emptying the list; raise
    the first failure after trying them all."""
    errors: list[BaseException] = []
    while started:
        try:
            end(started.pop())
        except Exception as exc:  # end the others all the same
            errors.append(exc)
    if errors:
        raise errors[0]
