"""``portside pick``, ``kill``, ``reserve``, ``release`` and ``reservations``.

Importing this module is cheap (the parser may import it to declare the commands): the
library modules and the renderer load inside each handler.
:func:`add_port_commands` declares the commands' arguments for ``cli/_parser.py``.
"""

from __future__ import annotations

import sys

from portside.errors import ExitCode

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any


def add_port_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add the five commands to ``commands`` (the parser's subparsers action)."""
    from portside.cli._parser import _lazy, _port

    pick = commands.add_parser(
        "pick",
        parents=[common],
        help="a free port that will not collide",
        description=(
            "Print a free TCP port (UDP with --udp) that binds on 127.0.0.1 and [::1] and lies"
            " outside the kernel's ephemeral range and reserved ports; not a browser bad port,"
            " a common development default or reserved in the registry."
        ),
    )
    pick.add_argument("-n", "--count", type=int, default=1, help="how many ports (default 1)")
    pick.add_argument(
        "--range", dest="port_range", metavar="A-B", help="pick within A-B (default 10000-65535)"
    )
    pick.add_argument("--udp", action="store_true", help="UDP ports instead of TCP")
    pick.add_argument("--why", action="store_true", help="explain the rules and the ports skipped")
    pick.set_defaults(handler=_lazy("_ports", "run_pick"))

    kill = commands.add_parser(
        "kill",
        parents=[common],
        help="stop what holds a port (graceful, then forced)",
        description=(
            "Stop the processes listening on PORT (or ADDRESS:PORT) in this network namespace:"
            " SIGTERM, wait --grace seconds, then SIGKILL. A container's port forwarder is not"
            " killed: the container is stopped through the Engine API. Asks on a terminal;"
            " without one, needs --yes. Exit 0 stopped, 1 nothing held the port, 2 error or refused."
        ),
    )
    kill.add_argument("target", metavar="PORT|ADDRESS")
    kill.add_argument(
        "--grace", type=float, default=5.0, help="seconds between SIGTERM and SIGKILL (default 5)"
    )
    kill.add_argument("--tree", action="store_true", help="also stop every descendant process")
    kill.add_argument(
        "--all-sockets",
        action="store_true",
        help="also processes with connections on the port, not only listeners",
    )
    kill.add_argument("--proto", choices=("tcp", "udp"), help="only this transport")
    kill.add_argument(
        "-n", "--dry-run", action="store_true", help="print what would happen; change nothing"
    )
    kill.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    kill.set_defaults(handler=_lazy("_ports", "run_kill"))

    reserve = commands.add_parser(
        "reserve",
        parents=[common],
        help="a stable port for a name",
        description=(
            "Print the port reserved for NAME in this project (the git worktree root) or, with"
            " --global, for the user; reserve one first if there is none. The same name gets the"
            " same port every time. Reservations are advice: the port is checked to bind."
        ),
    )
    reserve.add_argument("name", metavar="NAME")
    reserve.add_argument("port", metavar="PORT", nargs="?", type=_port, help="this port exactly")
    reserve.add_argument(
        "--global", dest="global_scope", action="store_true", help="not tied to a project"
    )
    reserve.set_defaults(handler=_lazy("_ports", "run_reserve"))

    release = commands.add_parser(
        "release",
        parents=[common],
        help="forget a name's reserved port",
        description="Remove NAME's reservation (of this project, or --global). Exit 1 if there was none.",
    )
    release.add_argument("name", metavar="NAME")
    release.add_argument(
        "--global", dest="global_scope", action="store_true", help="the global reservation"
    )
    release.set_defaults(handler=_lazy("_ports", "run_release"))

    reservations = commands.add_parser(
        "reservations",
        parents=[common],
        help="list reserved ports and leases",
        description="List every reservation: name, port, scope, and the process leasing it.",
    )
    reservations.set_defaults(handler=_lazy("_ports", "run_reservations"))


# --------------------------------------------------------------------------- pick


def run_pick(options: argparse.Namespace) -> int:
    # The text path writes directly: models and the renderer cost ~10 ms of imports,
    # and `pick` has a 60 ms budget.
    from portside.pick import explain_pick, parse_range

    port_range = parse_range(options.port_range) if options.port_range else None
    explanation = explain_pick(count=options.count, port_range=port_range, udp=options.udp)
    if options.json:
        from portside.cli import _render as render

        render.print_json("pick", {"ports": explanation.ports, "explanation": explanation})
        return ExitCode.OK
    lines = [str(port) for port in explanation.ports]
    if options.why:
        lines.append("")
        lines.append("rules, in order:")
        lines.extend(f"  - {rule}" for rule in explanation.rules)
        if explanation.tried:
            lines.append(f"skipped on the way ({len(explanation.tried)}):")
            for rejected in explanation.tried[:20]:
                detail = f": {rejected.detail}" if rejected.detail else ""
                lines.append(f"  {rejected.port}  {rejected.reason.value}{detail}")
            if len(explanation.tried) > 20:
                lines.append(f"  … and {len(explanation.tried) - 20} more")
        else:
            lines.append("the first candidate passed every rule")
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    return ExitCode.OK


# --------------------------------------------------------------------------- kill


def _confirm(question: str) -> bool:
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def run_kill(options: argparse.Namespace) -> int:
    from portside.cli import _render as render
    from portside.kill import KillRefusedError, execute, plan_kill, plan_lines, result_lines
    from portside.models import Transport

    plan = plan_kill(
        options.target,
        grace=options.grace,
        tree=options.tree,
        all_sockets=options.all_sockets,
        transport=Transport(options.proto) if options.proto else None,
    )
    if not plan.sockets:
        if options.json:
            render.print_json("kill-plan", plan)
        else:
            where = f"{plan.ip}:{plan.port}" if plan.ip else f"port {plan.port}"
            render.print_lines([f"nothing holds {where}"])
        return ExitCode.NEGATIVE
    if options.dry_run:
        if options.json:
            render.print_json("kill-plan", plan)
        else:
            render.print_lines(["dry run, nothing is signalled:", *plan_lines(plan)])
        return ExitCode.ERROR if plan.refusals else ExitCode.OK
    if plan.refusals:
        if not options.json:
            render.print_lines(plan_lines(plan))
        raise KillRefusedError("; ".join(r.reason for r in plan.refusals))
    if not plan.has_work:
        render.print_lines(plan_lines(plan))
        return ExitCode.NEGATIVE
    if not options.yes:
        count = len(plan.processes) + len(plan.containers)
        if not sys.stdin.isatty():
            raise KillRefusedError(
                f"refusing to stop {count} process(es)/container(s) without a terminal to confirm;"
                " pass --yes (see what would happen with --dry-run)"
            )
        render.print_lines(plan_lines(plan))
        if not _confirm("Stop them?"):
            sys.stderr.write("portside: nothing was signalled\n")
            return ExitCode.ERROR
    elif not options.json:
        render.print_lines(plan_lines(plan))
    result = execute(plan)
    if options.json:
        render.print_json("kill", result)
    else:
        render.print_lines(result_lines(result))
    return ExitCode.OK if result.ok else ExitCode.ERROR


# --------------------------------------------------------------------------- registry


def _scope(options: argparse.Namespace) -> str:
    from portside.registry import GLOBAL_SCOPE, project_scope

    return GLOBAL_SCOPE if options.global_scope else project_scope()


def run_reserve(options: argparse.Namespace) -> int:
    from portside.cli import _render as render
    from portside.registry import Registry

    with Registry.open() as registry:
        result = registry.reserve(options.name, scope=_scope(options), port=options.port)
    if options.json:
        render.print_json("reservation", result)
        return ExitCode.OK
    reservation = result.reservation
    state = "reserved" if result.created else "already reserved"
    sys.stderr.write(f"{reservation.name}: {state} in {reservation.scope}\n")
    for warning in result.warnings:
        sys.stderr.write(f"portside: warning: {warning}\n")
    render.print_lines([str(reservation.port)])
    return ExitCode.OK


def run_release(options: argparse.Namespace) -> int:
    from portside.cli import _render as render
    from portside.registry import Registry

    scope = _scope(options)
    with Registry.open() as registry:
        released = registry.release(options.name, scope=scope)
    if options.json:
        render.print_json("release", {"released": released})
    elif released is None:
        render.print_lines([f"{options.name}: nothing reserved in {scope}"])
    else:
        render.print_lines([f"{released.name}: released port {released.port} ({released.scope})"])
    return ExitCode.OK if released is not None else ExitCode.NEGATIVE


def run_reservations(options: argparse.Namespace) -> int:
    from portside.cli import _render as render
    from portside.registry import Registry

    with Registry.open() as registry:
        found = registry.reservations()
    if options.json:
        render.print_json("reservations", {"reservations": found})
        return ExitCode.OK
    if not found:
        render.print_lines(["no reservations (`portside reserve NAME` makes one)"])
        return ExitCode.OK
    rows = [
        [
            r.name,
            str(r.port),
            r.scope,
            f"pid {r.lease.pid}" if r.lease else "",
            render.since_text(r.created),
        ]
        for r in found
    ]
    render.print_table(
        None,
        ["NAME", "PORT", "SCOPE", "LEASE", "RESERVED"],
        rows,
        colour=render.use_colour(options.no_color),
    )
    return ExitCode.OK
