"""Run ``portside`` with the port commands (pick, kill, reserve, release, reservations).

``python -m tests.integration._ports_cli ARGS…`` is ``portside ARGS…``. Until
``cli/_parser.py`` registers these commands itself (``add_port_commands``), this adds
them to the real parser; after that it changes nothing. The real ``portside.cli.main``
runs either way, with its error funnel and exit codes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from portside.cli import _parser, main

_original_build = _parser.build_parser


def _build_with_port_commands() -> argparse.ArgumentParser:
    parser = _original_build()
    subparsers = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    if "pick" not in subparsers.choices:
        from portside.cli._ports import add_port_commands

        add_port_commands(subparsers, _parser._common())
    return parser


def run(argv: Sequence[str]) -> int:
    """``portside.cli.main(argv)`` with the port commands registered."""
    _parser.build_parser = _build_with_port_commands
    try:
        return main(list(argv))
    finally:
        _parser.build_parser = _original_build


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
