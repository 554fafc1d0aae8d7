"""pytest fixtures for projects that test network code; a pytest plugin, registered by
the ``pytest11`` entry point ``portside``, so installing portside makes them available:

* ``free_port``: a port free right now (``portside pick``'s rules);
* ``wait_ready``: ``wait_ready(target, timeout=...)`` or a ``NotReadyError`` naming it;
* ``local_service``: run a command on a picked port, wait until it is ready, kill it and
  its children at teardown;
* ``flaky_link``: a forwarder with faults (latency, bandwidth, resets …) in front of a
  service, its faults changeable while the test runs.

The same things without pytest: :mod:`portside.testing.ready`,
:mod:`portside.testing.service`, :mod:`portside.testing.link`. Documented in
docs/testing.md.

Importing this module is cheap (pytest loads it in every session of every project that
installs portside): the fixtures import what they use when a test asks for them.
"""

from __future__ import annotations

import sys
from importlib.util import find_spec

__all__ = ["flaky_link", "free_port", "local_service", "wait_ready"]

# The fixtures need pytest; the library modules (ready, service, link) do not.
if "pytest" in sys.modules or find_spec("pytest") is not None:
    from portside.testing.fixtures import flaky_link, free_port, local_service, wait_ready
