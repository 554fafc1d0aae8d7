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
    from typing import Any


class _ErrorParser(argparse.ArgumentParser):
    """argparse, with one-line errors that name the fix and exit code 2."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def _lazy(module: str, function: str) -> Handler:
    return Handler(module, function)


def _common() -> _ErrorParser:
    common = _ErrorParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON (schema in docs/json.md)")
    common.add_argument(
        "--no-color", action="store_true", help="no colour (NO_COLOR is honoured too)"
    )
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    # Hidden: choose the socket-table backend (netlink, procfs, psutil); $PORTSIDE_BACKEND too.
    common.add_argument("--backend", default=None, help=argparse.SUPPRESS)
    return common


def _inspection(common: _ErrorParser) -> _ErrorParser:
    inspection = _ErrorParser(add_help=False, parents=[common])
    inspection.add_argument(
        "--no-netns",
        dest="namespaces",
        action="store_false",
        help="only this network namespace (default: every namespace visible)",
    )
    return inspection


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    inspection = _inspection(common)
    parser = _ErrorParser(
        prog="portside",
        description="The localhost toolkit: what holds each port, and why an address does not answer.",
        parents=[inspection],
        epilog="Run `portside COMMAND --help` for a command. Exit codes: 0 yes/ok, 1 no/problem found, 2 error.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"portside {__version__}")
    parser.set_defaults(handler=_lazy("_inspect", "run_overview"))
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_ErrorParser)

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
    return parser


def _port(text: str) -> int:
    from portside.addresses import parse_port
    from portside.errors import TargetError

    try:
        return parse_port(text)
    except TargetError as exc:
        raise argparse.ArgumentTypeError(exc.problem) from exc
