"""portside: the localhost toolkit.

What holds each local port, why an address does not answer and how to fix it.
The public API is imported lazily so that ``import portside`` stays cheap::

    import portside
    portside.who("127.0.0.1:8080")      # -> PortHolders
    portside.listeners()                # -> list[SocketEntry]
    portside.explain("62893")           # -> Explanation
"""

from __future__ import annotations

from portside._version import __version__

TYPE_CHECKING = False  # typing itself is not imported: it costs a third of `--version`
if TYPE_CHECKING:
    from typing import Any

    from portside.addresses import parse_target
    from portside.errors import PortsideError
    from portside.explain import explain
    from portside.inspect import list_sockets, overview, who
    from portside.sockets import listeners, port_sockets, socket_table

__all__ = [
    "PortsideError",
    "__version__",
    "explain",
    "list_sockets",
    "listeners",
    "overview",
    "parse_target",
    "port_sockets",
    "socket_table",
    "who",
]

_LAZY = {
    "PortsideError": "portside.errors",
    "explain": "portside.explain",
    "list_sockets": "portside.inspect",
    "listeners": "portside.sockets",
    "overview": "portside.inspect",
    "parse_target": "portside.addresses",
    "port_sockets": "portside.sockets",
    "socket_table": "portside.sockets",
    "who": "portside.inspect",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'portside' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
