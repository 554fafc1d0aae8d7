"""The ``probe`` and ``wait`` subcommands, until they are wired into cli/_parser.py.

:func:`add_probe_and_wait` is, line for line, the argparse code handed over for
``build_parser()``. :func:`main` uses the real ``portside.cli.main`` once the real parser
knows ``wait``, else a parser built here with the same code and the same error funnel.
Run as ``python -m tests.integration._probe_cli wait …`` from the repository root.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from collections.abc import Sequence

from portside.cli._parser import _common, _ErrorParser, _lazy, build_parser
from portside.errors import PortsideError


def add_probe_and_wait(commands, common: argparse.ArgumentParser) -> None:
    # --- the code for cli/_parser.py build_parser(), after `doctor` -------------------
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
        "-i",
        "--interval",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between rounds (default 1)",
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
        "--timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="give up after S seconds (default 30)",
    )
    wait.add_argument(
        "--interval",
        type=float,
        default=0.5,
        metavar="S",
        help="seconds between attempts (default 0.5)",
    )
    wait.add_argument(
        "--status",
        default="200-399",
        metavar="LIST",
        help="HTTP statuses that count as ready, e.g. 200-299,401 (default 200-399)",
    )
    wait.add_argument("--body", metavar="TEXT", help="the HTTP body must contain TEXT")
    # REMAINDER: argparse cannot split TARGET... -- CMD... itself; run_wait splits at "--"
    # and also reads options written after the targets.
    wait.add_argument("words", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    wait.set_defaults(handler=_lazy("_probe", "run_wait"))
    # --- end ------------------------------------------------------------------------


def is_wired() -> bool:
    """Whether the real parser already has the ``wait`` command."""
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            options = build_parser().parse_args(["wait", "127.0.0.1:1"])
        except SystemExit:
            return False
    return getattr(options, "words", None) is not None or hasattr(options, "targets")


def local_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = _ErrorParser(prog="portside")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_ErrorParser)
    add_probe_and_wait(commands, common)
    return parser


def main(argv: Sequence[str]) -> int:
    if is_wired():
        from portside.cli import main as real_main

        return real_main(list(argv))
    try:
        options = local_parser().parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        return int(options.handler(options))
    except PortsideError as exc:
        sys.stderr.write(f"portside: {exc}\n")
        return int(exc.exit_code)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
