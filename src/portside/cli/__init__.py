"""Command-line interface: parse, call the library, render. Nothing else.

argparse (stdlib) keeps start-up cheap; every command module is imported only when that
command runs, and rich only when a table is drawn on a terminal. The commands whose
start-up is measured (``portside ls``, ``portside who PORT``, the overview, ``pick``)
are recognised without argparse when their arguments are plain flags (:func:`_fast_options`
gives what argparse would); anything else goes through the full parser.
"""

from __future__ import annotations

import gc
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

    from portside._early import Job


class Handler:
    """A command's entry point, ``portside.cli.<module>.<function>(options)``, imported
    when the command runs."""

    __slots__ = ("function", "module")

    def __init__(self, module: str, function: str) -> None:
        self.module = module
        self.function = function

    def __call__(self, options: argparse.Namespace) -> int:
        name = f"portside.cli.{self.module}"
        __import__(name)  # importlib.import_module, without importing importlib
        run = getattr(sys.modules[name], self.function)
        status: int = run(options)
        return status

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Handler):
            return NotImplemented
        return (self.module, self.function) == (other.module, other.function)

    def __hash__(self) -> int:
        return hash((self.module, self.function))

    def __repr__(self) -> str:
        return f"Handler({self.module!r}, {self.function!r})"


#: The flags every inspection command takes: option -> (attribute, value when given).
_INSPECTION_FLAGS = {
    "--json": ("json", True),
    "--no-color": ("no_color", True),
    "--debug": ("debug", True),
    "--no-netns": ("namespaces", False),
}
_PICK_FLAGS = {
    "--json": ("json", True),
    "--no-color": ("no_color", True),
    "--debug": ("debug", True),
    "--udp": ("udp", True),
    "--why": ("why", True),
}
_LS_FLAGS = {
    **_INSPECTION_FLAGS,
    "-a": ("all", True),
    "--all": ("all", True),
    "--exposed": ("exposed", True),
}


#: Commands that list every listener: one root socket in the root cgroup among them (a
#: system service's, say) and every fd table is read, so that read starts first.
_LS = Handler("_inspect", "run_ls")
_WHO = Handler("_inspect", "run_who")
_OVERVIEW = Handler("_inspect", "run_overview")
_EVERY_LISTENER = frozenset({_LS, _OVERVIEW})

#: portside.sockets.BACKEND_ENV (not imported here: it costs the data model's import).
_BACKEND_ENV = "PORTSIDE_BACKEND"

#: Commands that run briefly and allocate much (see main).
_BRIEF = frozenset({_LS, _WHO, _OVERVIEW})


def _fast_options(args: list[str]) -> argparse.Namespace | None:
    """What ``build_parser().parse_args(args)`` gives for the overview, ``ls``, ``who
    TARGET`` and ``pick`` with only whole flags (no values, no abbreviations), without importing
    argparse; None for anything else (the parser then decides, errors and help included).
    """
    from types import SimpleNamespace

    values: dict[str, object] = {
        "json": False,
        "no_color": False,
        "debug": False,
        "backend": None,
        "namespaces": True,
    }
    command = args[0] if args else None
    if command == "ls":
        flags = _LS_FLAGS
        values.update(
            handler=Handler("_inspect", "run_ls"),
            all=False,
            port=None,
            pid=None,
            user=None,
            proto=None,
            exposed=False,
        )
        rest = args[1:]
    elif command == "who":
        flags = _INSPECTION_FLAGS
        values["handler"] = Handler("_inspect", "run_who")
        rest = args[1:]
    elif command == "pick":  # judged by its start-up too (a 60 ms budget)
        flags = _PICK_FLAGS
        values.update(
            handler=Handler("_ports", "run_pick"), count=1, port_range=None, udp=False, why=False
        )
        rest = args[1:]
    else:
        flags = _INSPECTION_FLAGS
        values["handler"] = Handler("_inspect", "run_overview")
        rest = args
    positionals: list[str] = []
    for arg in rest:
        flag = flags.get(arg)
        if flag is not None:
            values[flag[0]] = flag[1]
        elif command == "who" and not arg.startswith("-"):
            positionals.append(arg)
        else:
            return None
    if command == "who":
        if len(positionals) != 1:
            return None
        values["target"] = positionals[0]
    # Same attributes as argparse.Namespace, read the same way by the handlers.
    return SimpleNamespace(**values)  # type: ignore[return-value]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``portside = "portside.cli:main"``); returns the exit status.

    The only place that turns exceptions into messages and exit codes.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args in (["--version"], ["-V"]):
        from portside._version import __version__

        sys.stdout.write(f"portside {__version__}\n")
        return 0  # ExitCode.OK

    options = _fast_options(args)
    if options is not None:
        _start_early(options)

    from portside.errors import ExitCode, PortsideError

    if options is None:
        from portside.cli._parser import build_parser

        parser = build_parser(args)
        try:
            options = parser.parse_args(args)
        except SystemExit as exc:  # argparse exits on --help and on bad usage
            return int(exc.code or 0)
        _start_early(options)
    brief = options.handler in _BRIEF
    debug = bool(getattr(options, "debug", False))
    # The inspection commands make tens of thousands of objects in a few milliseconds
    # and then exit: the cyclic garbage collector would only walk them over and over
    # (a tenth of `portside ls`). Reference counting still frees everything.
    pause_gc = brief and gc.isenabled()
    if pause_gc:
        gc.disable()
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
    finally:
        if pause_gc:
            gc.enable()
        if "portside._lean_dataclasses" in sys.modules:
            # What this command compiled for its records, kept for the next one.
            sys.modules["portside._lean_dataclasses"].save_compiled_code()
        if brief:
            from portside._early import end
            from portside._fdtables import end_prescan

            end_prescan()  # not needed after all, or the command failed: killed, reaped
            end()  # what the early jobs saw was this command's only
    if argv is None and brief:
        _exit_now(status)
    return status


def _start_early(options: argparse.Namespace) -> None:
    """For an inspection command: the kernel work it will ask for (its socket table's
    dumps and, where they work, the task iterators) starts now, in threads, while the
    rest of portside is imported (portside._early)."""
    if options.handler in _EVERY_LISTENER and _default_backend(options):
        # Every fd table will probably be read: a forked reader starts on it now, while
        # the rest of portside is imported (portside._fdtables says when it pays; not
        # where the task iterators answer). First: a process with threads never forks.
        from portside._fdtables import start_prescan

        start_prescan()
    if options.handler in _BRIEF:
        from portside._early import start

        start(_early_jobs(options))


def _default_backend(options: argparse.Namespace) -> bool:
    """Whether the command lists sockets with the default backend (neither ``--backend``
    nor ``PORTSIDE_BACKEND`` chose one)."""
    return getattr(options, "backend", None) is None and _BACKEND_ENV not in os.environ


def _early_jobs(options: argparse.Namespace) -> list[list[Job]]:
    """The kernel work an inspection command will ask for, as groups of jobs for
    :func:`portside._early.start`: its socket-table dumps (with the default backend, on
    Linux), and the task iterators' runs. A guess that misses costs a dump nobody takes."""
    if sys.platform != "linux":
        return []
    dumps: list[Job] = []
    table = _early_table(options) if _default_backend(options) else None
    if table is not None:
        from portside._diagsocket import dump_jobs

        dumps = dump_jobs(*table)
    from portside._taskiter import early_jobs

    iterators = early_jobs()  # the task iterator's run, then the task_file one's
    # The owners' snapshot in the dumps' thread, after them: newer than the table, it
    # needs no second run for a socket it does not know (_taskiter.socket_holders).
    return [[*dumps, *iterators[1:]], iterators[:1]]


def _early_table(options: argparse.Namespace) -> tuple[list[tuple[int, int]], int | None] | None:
    """The (protocol, states mask) pairs and port of the socket table the command will
    dump in this namespace, as portside.sockets asks for them; None when unsure."""
    from portside import _diagrequests as diag

    listening = {
        diag.IPPROTO_TCP: diag.LISTENING_TCP_STATES,
        diag.IPPROTO_UDP: diag.LISTENING_UDP_STATES,
    }
    every = {diag.IPPROTO_TCP: diag.ALL_TCP_STATES, diag.IPPROTO_UDP: diag.ALL_UDP_STATES}
    handler = options.handler
    if handler == _WHO:
        port = _plain_port(options.target)
        return (list(every.items()), port) if port is not None else None
    if handler == _LS:
        named = {"tcp": diag.IPPROTO_TCP, "udp": diag.IPPROTO_UDP}.get(options.proto or "")
        masks = every if options.all else listening
        chosen = [(protocol, mask) for protocol, mask in masks.items() if named in (None, protocol)]
        port = options.port if options.all else None
        return (chosen, port) if port is None or 0 <= port <= 0xFFFF else None
    if handler == _OVERVIEW:
        return list(listening.items()), None
    return None


def _plain_port(target: str) -> int | None:
    """The port of a ``who`` target written as ``PORT``, ``:PORT`` or ``HOST:PORT``
    (None for anything else: the address parser decides later)."""
    text = target if target.isdigit() else target.rpartition(":")[2] if "/" not in target else ""
    if text.isdigit() and text.isascii() and len(text) <= 5 and int(text) <= 0xFFFF:
        return int(text)
    return None


def _exit_now(status: int) -> None:
    """End the process now, as the console script would after ``main`` returns, without
    the interpreter's teardown: for an inspection command that is freeing the socket
    table's tens of thousands of objects and a hundred modules one by one, and a last
    garbage collection over all of them (a tenth of `portside ls`, a tenth of `portside
    who`). Nothing else is pending then: the output is flushed here, no thread runs, no
    exit handler is registered on these paths. Only when run as the program (``main()``
    without arguments): a caller of ``main(argv)`` gets the status back. Returns (and
    the interpreter ends as usual) when the output cannot be flushed."""
    import os

    try:
        sys.stdout.flush()
        if not sys.stderr.closed:  # closed after a broken pipe
            sys.stderr.flush()
    except BrokenPipeError:
        status = 0  # ExitCode.OK: the reader went away (``portside ls | head``)
    except OSError:
        return  # a full disk, say: reported on the way out, as before
    os._exit(status)
