"""The argument parser. Handlers are referenced by name and imported when they run.

``portside.cli._fast_options`` gives the same options, without argparse, for the plain
forms of the commands whose start-up counts; keep the two in step (tests/cli checks).
"""

from __future__ import annotations

import argparse

from portside._version import __version__
from portside.cli import Handler

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, told the terminal width: argparse would import shutil (and
    with it zlib, bz2 and lzma) to ask, on every add_argument."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        if width is None:
            width = _terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def _terminal_columns() -> int:
    import os

    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(1).columns
    except OSError:
        return 80


class _ErrorParser(argparse.ArgumentParser):
    """argparse, with one-line errors that name the fix and exit code 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def _lazy(module: str, function: str) -> Handler:
    return Handler(module, function)


def _common(*, top: bool = False) -> _ErrorParser:
    """The options every command takes. On subcommands they default to "not given"
    (SUPPRESS), so that `portside --json ls` keeps the top-level value."""
    unset: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    common = _ErrorParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", help="print JSON (schema in docs/json.md)", **unset
    )
    common.add_argument(
        "--no-color", action="store_true", help="no colour (NO_COLOR is honoured too)", **unset
    )
    common.add_argument("--debug", action="store_true", help="show tracebacks", **unset)
    # Hidden: choose the socket-table backend (netlink, procfs, psutil); $PORTSIDE_BACKEND too.
    common.add_argument("--backend", help=argparse.SUPPRESS, **({"default": None} | unset))
    return common


def _inspection(common: _ErrorParser, *, top: bool = False) -> _ErrorParser:
    unset: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    inspection = _ErrorParser(add_help=False, parents=[common])
    inspection.add_argument(
        "--no-netns",
        dest="namespaces",
        action="store_false",
        help="only this network namespace (default: every namespace visible)",
        **unset,
    )
    return inspection


class _Skipped:
    """Stands in for the parser of a command that will not run: accepts every call."""

    def __getattr__(self, name: str) -> Any:
        return self._accept

    def _accept(self, *args: Any, **kwargs: Any) -> _Skipped:
        return self


class _Commands:
    """The subparsers action, adding only the command that will run when it is known
    (building all twenty parsers costs more than parsing; help and errors get them all)."""

    def __init__(self, action: Any, only: str | None) -> None:
        self.action = action
        self.only = only
        self.matched = False

    def wants(self, *names: str) -> bool:
        return self.only is None or self.only in names

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        if not self.wants(name):
            return _Skipped()
        self.matched = True
        return self.action.add_parser(name, **kwargs)


#: Top-level options that take a value (the word after them is not a command).
_VALUED = frozenset({"--backend"})


def _command_word(argv: Sequence[str]) -> str | None:
    """The first word of ``argv`` that can be a command name, if any."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in _VALUED:
            skip = True
        elif word == "--":
            return None
        elif not word.startswith("-"):
            return word
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given ``argv``, only the parser of the command it names is built."""
    only = None if argv is None else _command_word(argv)
    parser = _build(only)
    if only is not None and not parser._portside_matched:  # type: ignore[attr-defined]
        parser = _build(None)  # not a command: the full parser says so
    return parser


def _build(only: str | None) -> argparse.ArgumentParser:
    common = _common()
    inspection = _inspection(common)
    parser = _ErrorParser(
        prog="portside",
        description="The localhost toolkit: what holds each port, and why an address does not answer.",
        parents=[_inspection(_common(top=True), top=True)],
        epilog="Run `portside COMMAND --help` for a command. Exit codes: 0 yes/ok, 1 no/problem found, 2 error.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"portside {__version__}")
    parser.set_defaults(handler=_lazy("_inspect", "run_overview"))
    commands = _Commands(
        parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_ErrorParser),
        only,
    )

    ls = commands.add_parser(
        "ls",
        parents=[inspection],
        help="listening sockets with their owners",
        description="List listening sockets (TCP and UDP) with owners.",
    )
    ls.add_argument(
        "-a", "--all", action="store_true", help="add connections and every other state"
    )
    ls.add_argument("-p", "--port", type=_port, help="only this local port")
    ls.add_argument("--pid", type=int, help="only sockets held by this process")
    ls.add_argument("-u", "--user", help="only sockets of this user (name or uid)")
    ls.add_argument("--proto", choices=("tcp", "udp"), help="only this transport")
    ls.add_argument("--exposed", action="store_true", help="only sockets reachable beyond loopback")
    ls.set_defaults(handler=_lazy("_inspect", "run_ls"))

    who = commands.add_parser(
        "who",
        parents=[inspection],
        help="everything on one port, with owner process trees",
        description="Show every socket on PORT (or ADDRESS:PORT) in every state, with owners. Exit 1 when nothing holds it.",
    )
    who.add_argument("target", metavar="PORT|ADDRESS")
    who.set_defaults(handler=_lazy("_inspect", "run_who"))

    explain = commands.add_parser(
        "explain",
        parents=[common],
        help="what a port number or an address is",
        description="Classify a port (IANA, kernel ranges, browsers, dev defaults) and an address.",
    )
    explain.add_argument("target", metavar="PORT|ADDRESS")
    explain.set_defaults(handler=_lazy("_explain", "run_explain"))
    doctor = commands.add_parser(
        "doctor",
        parents=[inspection],
        help="why an address does not answer, and the fix",
        description=(
            "Diagnose TARGET (127.0.0.1:62893, localhost:3000, http://app.localhost:8080/health, :62893)"
            " or, without one, the machine's loopback, localhost resolution and proxy settings."
            " Exit 0 when the target answers as it implies, 1 when a problem is found, 2 for bad input."
        ),
    )
    doctor.add_argument("target", metavar="TARGET", nargs="?")
    doctor.add_argument(
        "--timeout", type=float, default=5.0, help="bound on the whole run, seconds (default 5)"
    )
    doctor.set_defaults(handler=_lazy("_doctor", "run_doctor"))
    if commands.wants("ca"):
        from portside.cli import _ca

        ca = commands.add_parser(
            "ca",
            parents=[common],
            help="the local CA for https://NAME.localhost: where, fingerprint, how to trust",
            description=_ca.DESCRIPTION,
        )
        _ca.add_arguments(ca)
        ca.set_defaults(handler=_lazy("_ca", "run_ca"))
    if commands.wants("run"):
        from portside.cli._run import add_run_command

        add_run_command(commands, common)
    _add_probe_and_wait(commands, common)
    _add_network_commands(commands, common)
    if commands.wants("pick", "kill", "reserve", "release", "reservations"):
        from portside.cli._ports import add_port_commands

        add_port_commands(commands, common)
    parser._portside_matched = commands.matched  # type: ignore[attr-defined]
    return parser


def _add_probe_and_wait(commands: _Commands, common: _ErrorParser) -> None:
    probe = commands.add_parser(
        "probe",
        parents=[common],
        help="connect latency per address family (tcping), and what the port speaks",
        description=(
            "Time COUNT TCP connects to TARGET for each address family it resolves to"
            " (min/avg/max, loss, each failure with its errno name); with --identify, also"
            " tell what the port speaks (TLS with its certificate, HTTP, h2c, SSH, Redis,"
            " PostgreSQL, MySQL, ...) without sending HTTP to Redis."
            " Exit 0 when at least one connect succeeded, 1 when none did, 2 for bad input."
        ),
    )
    probe.add_argument("target", metavar="TARGET")
    probe.add_argument(
        "-c", "--count", type=int, default=4, help="connects per address family (default 4)"
    )
    probe.add_argument(
        "-i", "--interval", type=float, default=1.0, metavar="S", help="seconds between rounds"
    )
    probe.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        metavar="S",
        help="seconds per connect (default 2); --identify takes at most 3x this per address",
    )
    probe.add_argument(
        "--identify", action="store_true", help="also identify the protocol (safe probe order)"
    )
    probe.set_defaults(handler=_lazy("_probe", "run_probe"))

    wait = commands.add_parser(
        "wait",
        parents=[common],
        usage="%(prog)s [--timeout S] [--interval S] [--status LIST] [--body TEXT] [--json]"
        " TARGET... [-- CMD...]",
        help="wait until every target is ready, then exit 0 or run CMD",
        description=(
            "Wait until every TARGET is ready: HOST:PORT connects; http(s):// answers with a"
            " status in --status (and a body containing --body); redis:// answers PING;"
            " postgres:// answers the SSLRequest; tcp+tls:// completes a TLS handshake."
            " Names are tried on every address family. Then exit 0, or exec CMD."
            " Exit 1 on timeout (naming what was not ready and why), 2 for bad input."
        ),
    )
    wait.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="give up after S seconds (30)"
    )
    wait.add_argument(
        "--interval", type=float, default=0.5, metavar="S", help="seconds between attempts (0.5)"
    )
    wait.add_argument(
        "--status",
        default="200-399",
        metavar="LIST",
        help="HTTP statuses that count as ready, e.g. 200-299,401 (default 200-399)",
    )
    wait.add_argument("--body", metavar="TEXT", help="the HTTP body must contain TEXT")
    # argparse cannot split TARGET... -- CMD... itself: run_wait splits at "--".
    wait.add_argument("words", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    wait.set_defaults(handler=_lazy("_probe", "run_wait"))


def _add_network_commands(commands: _Commands, common: _ErrorParser) -> None:
    """Commands whose module (``portside.cli._NAME``) declares its own options."""
    import importlib

    declared = (
        ("scan", "which TCP ports answer on a host (127.0.0.1 by default)"),
        ("serve", "a static file server for development"),
        ("proxy", "a reverse proxy with named routes (app.localhost)"),
        ("forward", "forward a port to another, with optional faults"),
        ("audit", "which listeners the network can reach, and the fix"),
        ("exporter", "Prometheus metrics of listeners and findings"),
        ("completion", "a shell completion script (bash, zsh)"),
    )
    for name, summary in declared:
        if not commands.wants(name):
            continue
        module = importlib.import_module(f"portside.cli._{name}")
        command = commands.add_parser(
            name, parents=[common], help=summary, description=module.DESCRIPTION
        )
        module.add_arguments(command)
        command.set_defaults(handler=_lazy(f"_{name}", f"run_{name}"))


def _port(text: str) -> int:
    from portside.addresses import parse_port
    from portside.errors import TargetError

    try:
        return parse_port(text)
    except TargetError as exc:
        raise argparse.ArgumentTypeError(exc.problem) from exc
