"""The data plane: asyncio servers (static files, reverse proxy, TCP forwarding).

* :mod:`portside.net.http`   -- the HTTP/1.1 connection core (httptools), shared by
  ``serve`` and ``proxy``: framing, limits, timeouts, keep-alive, graceful close.
* :mod:`portside.net.hosts`  -- the Host allowlist against DNS rebinding (pure).
* :mod:`portside.net.static` -- URL path -> file under a root, ranges, ETags (pure).
* :mod:`portside.net.serve`  -- ``open_static`` / ``serve_static``: the static dev server.

Every server binds loopback unless told otherwise; ``open_*`` returns the bound server,
``serve_*`` runs until cancelled and then drains.
"""
