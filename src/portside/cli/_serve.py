"""``portside serve [DIR]``: the static development server.

``add_arguments`` defines the options (only argparse is imported at module level, so
building the parser stays cheap); ``run_serve`` serves until Ctrl-C or SIGTERM, then
drains in-flight responses and exits 0 (130 after Ctrl-C).

The event loop and the signals come from :mod:`portside.net._loop` (uvloop unless
``PORTSIDE_LOOP=asyncio``): the first SIGTERM/SIGINT drains and stops, a second aborts
the connections left. The library itself only knows ``aclose()`` and cancellation.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from portside.models import Endpoint

DESCRIPTION = (
    "Serve DIR (default: the current directory) over HTTP on loopback: sendfile, ranges,"
    " ETag/Last-Modified revalidation, index.html, directory listings (HTML, or JSON with"
    " ?format=json), optional SPA fallback, CORS and live reload. Nothing outside DIR is"
    " ever served; only loopback clients and local Host names are answered unless allowed."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``portside serve`` (called by ``cli._parser``)."""
    parser.add_argument("directory", nargs="?", default=".", metavar="DIR")
    parser.add_argument(
        "--listen",
        metavar="ADDR:PORT",
        default=None,
        help="where to listen (default: 127.0.0.1 on a free port, printed on start);"
        " a non-loopback address is your explicit choice and is warned about",
    )
    parser.add_argument(
        "--spa",
        nargs="?",
        const="index.html",
        default=None,
        metavar="FILE",
        help="single-page app: unknown paths get FILE (default index.html) instead of 404",
    )
    parser.add_argument(
        "--cors",
        nargs="?",
        const="*",
        default=None,
        metavar="ORIGIN",
        help="send Access-Control-Allow-Origin (default *) and answer preflights",
    )
    parser.add_argument(
        "--live-reload",
        action="store_true",
        help="reload open HTML pages when a file changes (server-sent events)",
    )
    parser.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="serve symbolic links that point outside DIR (default: 404)",
    )
    parser.add_argument(
        "--dotfiles", action="store_true", help="serve and list dotfiles (default: 404)"
    )
    parser.add_argument(
        "--no-listing",
        dest="listing",
        action="store_false",
        help="no directory listings (404 for a directory without index.html)",
    )
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="HOST",
        help="also answer this Host (name, *.suffix, IP, or * for any); repeatable",
    )
    parser.add_argument(
        "--allow-remote-clients",
        action="store_true",
        help="answer clients that are not on this machine (default: loopback clients only)",
    )


def run_serve(options: argparse.Namespace) -> int:
    """Serve until interrupted; exit 0 after a clean shutdown, 2 for bad options."""
    import json
    import signal
    import sys

    from portside.errors import ExitCode, UsageError
    from portside.net._loop import Shutdown, run_until_signalled
    from portside.net.http import is_loopback_ip
    from portside.net.serve import StaticOptions, StaticServer, open_static, static_root

    root = static_root(options.directory)
    listen = _listen_endpoint(options.listen)
    static_options = StaticOptions(
        listing=options.listing,
        spa=options.spa,
        cors=options.cors,
        live_reload=options.live_reload,
        follow_symlinks=options.follow_symlinks,
        dotfiles=options.dotfiles,
        allow_hosts=tuple(options.allow_host),
        allow_remote_clients=options.allow_remote_clients,
    )
    if options.spa is not None and ("/" in options.spa.strip("/") or options.spa.startswith(".")):
        raise UsageError(f"--spa {options.spa!r}: name a file directly inside DIR")

    def started(server: StaticServer) -> None:
        address = server.address
        if options.json:
            document = {
                "schema": 1,
                "kind": "serve-started",
                "directory": server.root,
                "listen": {"ip": address.ip, "port": address.port},
                "url": server.url,
            }
            sys.stdout.write(json.dumps(document) + "\n")
        else:
            sys.stdout.write(f"portside serve: {server.root} at {server.url}\n")
        sys.stdout.flush()
        if not is_loopback_ip(address.ip):
            clients = (
                "clients on other machines are answered (--allow-remote-clients)"
                if options.allow_remote_clients
                else "only clients on this machine are answered; add --allow-remote-clients"
            )
            sys.stderr.write(
                f"portside: warning: listening on {address.ip}:{address.port}, beyond loopback;"
                f" {clients}\n"
            )

    async def main(shutdown: Shutdown) -> int | None:
        try:
            server = await open_static(root, listen, options=static_options)
        except OSError as exc:
            raise UsageError(
                f"cannot listen on {listen.ip}:{listen.port}: {exc.strerror or exc};"
                " pick another --listen, or leave it out for a free port"
            ) from None
        shutdown.on_force(server.http.abort)  # a second Ctrl-C / SIGTERM: stop now
        try:
            started(server)
            await shutdown.requested.wait()  # the run ends only by a signal
        finally:
            await server.aclose()  # drains within Limits.drain_timeout_s
        return shutdown.signal

    received = run_until_signalled(main)
    if received == signal.SIGINT:
        return ExitCode.INTERRUPTED
    return ExitCode.OK


def _listen_endpoint(text: str | None) -> Endpoint:
    """``--listen`` -> Endpoint; default 127.0.0.1 on a free port; names must be local."""
    from portside.addresses import HostKind, parse_target
    from portside.errors import UsageError
    from portside.models import Endpoint

    if text is None:
        return Endpoint(ip="127.0.0.1", port=0)
    target = parse_target(text)
    port = target.port if target.port is not None else 0
    if target.host_kind is HostKind.NONE:
        return Endpoint(ip="127.0.0.1", port=port)
    if target.host_kind is HostKind.NAME:
        if target.host == "localhost":
            return Endpoint(ip="127.0.0.1", port=port)
        raise UsageError(
            f"--listen {text!r}: give an IP address (127.0.0.1:8000, [::1]:8000), not a name"
        )
    return Endpoint(ip=target.host or "127.0.0.1", port=port)


def main(argv: list[str] | None = None) -> int:
    """``python -m portside.cli._serve``: the command on its own (until the parser has it)."""
    import sys

    from portside.errors import PortsideError

    parser = argparse.ArgumentParser(prog="portside serve", description=DESCRIPTION)
    parser.add_argument("--json", action="store_true", help="print JSON on start")
    add_arguments(parser)
    options = parser.parse_args(argv)
    try:
        return run_serve(options)
    except PortsideError as exc:
        sys.stderr.write(f"portside: {exc}\n")
        return exc.exit_code
    except OSError as exc:
        sys.stderr.write(f"portside: cannot serve: {exc}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
