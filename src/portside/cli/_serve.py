"""``portside serve [DIR]``: the static development server.

``add_arguments`` defines the options (only argparse is imported at module level, so
building the parser stays cheap); ``run_serve`` serves until Ctrl-C or SIGTERM, then
drains in-flight responses and exits 0 (130 after Ctrl-C).

The event loop: uvloop when it is installed, asyncio's otherwise (``_run``). Signals
are borrowed for the run and given back afterwards; the library itself only knows
cancellation.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

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
    from portside.net.http import is_loopback_ip
    from portside.net.serve import StaticOptions, StaticServer, serve_static, static_root

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

    listening: list[StaticServer] = []

    def on_start(server: StaticServer) -> None:
        listening.append(server)
        started(server)

    async def main() -> None:
        try:
            await serve_static(root, listen, options=static_options, started=on_start)
        except OSError as exc:
            if listening:
                raise
            raise UsageError(
                f"cannot listen on {listen.ip}:{listen.port}: {exc.strerror or exc};"
                " pick another --listen, or leave it out for a free port"
            ) from None

    received = _run(main, (signal.SIGINT, signal.SIGTERM))
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


def _run(main: Callable[[], Coroutine[Any, Any, None]], signals: tuple[int, ...]) -> int | None:
    """Run *main* on uvloop (asyncio's loop without it) until it ends or a signal comes.

    A signal cancels *main*, which then closes gracefully; returns the signal number,
    or None when *main* ended by itself. The previous signal handlers are restored.
    """
    import asyncio
    import contextlib

    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it exists
        loop_factory = None
    received: list[int] = []

    async def supervised() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()

        def on_signal(number: int) -> None:
            received.append(number)
            if task is not None:
                task.cancel()

        for number in signals:
            loop.add_signal_handler(number, on_signal, number)
        try:
            await main()
        except asyncio.CancelledError:
            if not received:
                raise
        finally:
            for number in signals:
                with contextlib.suppress(ValueError, RuntimeError):
                    loop.remove_signal_handler(number)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(supervised())
    return received[0] if received else None


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
