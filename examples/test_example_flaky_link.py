# ruff: noqa: S101
"""How does my client cope with a slow or broken network? (portside's pytest fixtures)

Run it with ``pytest examples/test_example_flaky_link.py`` once portside is installed:
the fixtures come from its pytest plugin, nothing to configure (the imports are
only for type annotations).
"""

import http.client
import sys

import pytest

from portside.testing.link import FlakyLinks
from portside.testing.service import LocalServices

WEB_SERVER = [sys.executable, "-m", "http.server", "{port}", "--bind", "{host}"]


def fetch(host: str, port: int, path: str = "/", timeout: float = 5.0) -> int:
    """The code under test: GET a page, return the status."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_a_slow_link_makes_fetch_time_out(
    local_service: LocalServices, flaky_link: FlakyLinks
) -> None:
    web = local_service(WEB_SERVER, ready="http://{host}:{port}/")
    link = flaky_link(web, latency="300ms")  # each way
    with pytest.raises(TimeoutError):
        fetch(link.host, link.port, timeout=0.1)
    link.clear()  # faults change while the test runs
    assert fetch(link.host, link.port) == 200


def test_a_reset_mid_answer_reaches_fetch(
    local_service: LocalServices, flaky_link: FlakyLinks
) -> None:
    web = local_service(WEB_SERVER, ready="http://{host}:{port}/")
    link = flaky_link(web, down={"reset_after": "100"})  # 100 bytes of the answer, then RST
    with pytest.raises(ConnectionResetError):
        fetch(link.host, link.port)
    assert link.stats().connections[-1].end == "fault-reset"
