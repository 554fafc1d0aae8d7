"""Command-line interface: parse, call the library, render. Nothing else.

argparse (stdlib) keeps start-up cheap; every command module is imported only when that
command runs, and rich only when a table is drawn on a terminal.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from portside.errors import ExitCode


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``portside = "portside.cli:main"``); returns the exit status.

    The only place that turns exceptions into messages and exit codes.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args in (["--version"], ["-V"]):
        from portside._version import __version__

        sys.stdout.write(f"portside {__version__}\n")
        return ExitCode.OK

    from portside.cli._parser import build_parser
    from portside.errors import PortsideError

    parser = build_parser()
    try:
        options = parser.parse_args(args)
    except SystemExit as exc:  # argparse exits on --help and on bad usage
        return int(exc.code or 0)
    debug = bool(getattr(options, "debug", False))
    try:
        status: int = options.handler(options)
    except PortsideError as exc:
        if debug:
            raise
        sys.stderr.write(f"portside: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``portside ls | head``): not an error of ours.
        sys.stderr.close()
        return ExitCode.OK
    return status
