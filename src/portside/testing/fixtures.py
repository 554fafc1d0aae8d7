"""The fixtures of the ``portside`` pytest plugin (see :mod:`portside.testing`).

Each fixture imports what it needs when a test asks for it: a pytest session that uses
none of them pays nothing for the plugin.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from portside.testing.link import FlakyLinks
    from portside.testing.ready import WaitReady
    from portside.testing.service import LocalServices

__all__ = ["flaky_link", "free_port", "local_service", "wait_ready"]


@pytest.fixture
def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 and ::1 right now, outside the ephemeral range
    (``portside pick``'s rules). Bind it soon: it was free, nothing holds it for you."""
    from portside.pick import pick_port

    return pick_port()[0]


@pytest.fixture
def wait_ready() -> WaitReady:
    """``wait_ready(target, ..., timeout=10, status=None, body=None)``: return once every
    target is ready, else raise ``NotReadyError`` naming what was not ready and why."""
    from portside.testing.ready import wait_ready as function

    return function


@pytest.fixture
def local_service(tmp_path: Path) -> Iterator[LocalServices]:
    """``local_service(command, ready=..., ...)`` -> LocalService: run ``command`` on a
    picked port (``{port}`` in it), wait until ``ready``; stopped with its children at the
    end of the test. Output logs are kept in the test's ``tmp_path``."""
    from portside.testing.service import LocalServices

    services = LocalServices(log_dir=tmp_path)
    try:
        yield services
    finally:
        services.close()


@pytest.fixture
def flaky_link() -> Iterator[FlakyLinks]:
    """``flaky_link(target, latency=..., bandwidth=..., reset_after=..., ...)`` -> FlakyLink:
    a forwarder with faults in front of ``target``; faults change at run time with
    ``set_faults`` / ``update_faults`` / ``clear``; closed at the end of the test."""
    from portside.testing.link import FlakyLinks

    links = FlakyLinks()
    try:
        yield links
    finally:
        links.close()
