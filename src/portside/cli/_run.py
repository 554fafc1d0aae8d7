"""``portside run NAME [--port N] [--no-route] [--global] -- CMD...``.

:func:`add_run_command` declares the command for ``cli/_parser.py``; :func:`run_run`
calls :func:`portside.run.run_command` and prints its events on stderr (stdout is the
app's), as lines or, with ``--json``, as JSON lines (docs/run.md).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

DESCRIPTION = (
    "Run CMD on NAME's reserved port (this project's, or --global): PORT and HOST=127.0.0.1"
    " are set, and the dev server's own flags where it ignores PORT (vite, astro, angular,"
    " next, flask, uvicorn, django runserver, rails, ...). Signals are forwarded and CMD's"
    " exit status is passed through; CMD and its children end with portside. Routes"
    " NAME.localhost for `portside proxy` while it runs, prints the URL once the app"
    " accepts connections, and says so when the app listens on another port than assigned."
)


def _declare(parser: argparse.ArgumentParser) -> None:
    from portside.cli._parser import _port

    parser.add_argument(
        "--port", type=_port, default=None, help="this port exactly (reserved for NAME)"
    )
    parser.add_argument(
        "--no-route", dest="route", action="store_false", help="do not route NAME.localhost"
    )
    parser.add_argument(
        "--global", dest="global_scope", action="store_true", help="NAME's global reservation"
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between SIGTERM and SIGKILL for what is left at the end (default 5)",
    )


def add_run_command(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``run`` to ``commands`` (the parser's subparsers action)."""
    from portside.cli._parser import _lazy

    run = commands.add_parser(
        "run",
        parents=[common],
        usage="%(prog)s NAME [--port N] [--no-route] [--global] -- CMD...",
        help="run an app on its reserved port, routed as NAME.localhost",
        description=DESCRIPTION,
    )
    run.add_argument("name", metavar="NAME")
    _declare(run)
    # argparse cannot take options between NAME and "-- CMD...": run_run splits at "--".
    run.add_argument("words", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    run.set_defaults(handler=_lazy("_run", "run_run"))


class _OptionsError(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        from portside.errors import UsageError

        raise UsageError(f"portside run: {message} (see `portside run --help`)")


def split_words(options: argparse.Namespace) -> list[str]:
    """The command after ``--``; the options before it are parsed into ``options``."""
    from portside.errors import UsageError

    words = list(options.words)
    if "--" in words:
        cut = words.index("--")
        head, command = words[:cut], words[cut + 1 :]
    elif words and words[0].startswith("-"):
        head, command = words, []
    else:
        head, command = [], words
    if head:
        parser = _OptionsError(prog="portside run", add_help=False)
        _declare(parser)
        parser.add_argument("--json", action="store_true", default=options.json)
        parser.add_argument("--no-color", action="store_true", default=options.no_color)
        parser.add_argument("--debug", action="store_true", default=options.debug)
        parser.set_defaults(
            port=options.port,
            route=options.route,
            global_scope=options.global_scope,
            grace=options.grace,
        )
        parser.parse_args(head, namespace=options)
    if not command:
        raise UsageError("give the command to run after --, e.g. portside run web -- npm run dev")
    return command


def _text(event: object) -> str | None:
    from portside.run import RunDrift, RunExited, RunNote, RunReady, RunStarted

    if isinstance(event, RunStarted):
        line = f"{event.name}: port {event.port}, PORT={event.port} HOST=127.0.0.1"
        if event.added:
            line += f"; {event.framework}: added {' '.join(event.added)}"
        elif event.note:
            line += f"; {event.framework}: {event.note}, so PORT may be ignored"
        return f"{line} (pid {event.pid})"
    if isinstance(event, RunDrift):
        return (
            f"warning: {event.name} was assigned port {event.assigned} but listens on"
            f" {event.actual}; routing to {event.backend_host}:{event.actual}"
            f" (pass the port to the app, or `portside run {event.name} --port {event.actual}`)"
        )
    if isinstance(event, RunReady):
        if event.proxy_urls:
            return f"{event.name} is ready at {' and '.join(event.proxy_urls)} (app: {event.url})"
        if event.route:
            return (
                f"{event.name} is ready at {event.url}; routed as {event.route} for"
                " `portside proxy` (none is running)"
            )
        return f"{event.name} is ready at {event.url}"
    if isinstance(event, RunNote):
        return event.message
    if isinstance(event, RunExited):
        if event.exit_code == 0:
            return None
        how = f" by {event.signal}" if event.signal else ""
        return f"{event.name} exited with status {event.exit_code}{how}"
    return None


def run_run(options: argparse.Namespace) -> int:
    from portside.errors import UsageError
    from portside.registry import GLOBAL_SCOPE, project_scope
    from portside.run import RunEvent, event_json, run_command

    words = split_words(options)
    if options.grace < 0:
        raise UsageError("--grace is a number of seconds, 0 or more")

    def show(event: RunEvent) -> None:
        line = event_json(event) if options.json else _text(event)
        if line is None:
            return
        try:
            sys.stderr.write(line + "\n" if options.json else f"portside: {line}\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass

    result = run_command(
        options.name,
        words,
        scope=GLOBAL_SCOPE if options.global_scope else project_scope(),
        port=options.port,
        route=options.route,
        on_event=show,
        grace_s=options.grace,
        reap_orphans=True,
    )
    return result.exit_code
