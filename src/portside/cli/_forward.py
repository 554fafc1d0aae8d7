"""``portside forward LISTEN TARGET``: the TCP forwarder, with optional network faults.

``add_arguments`` defines the options (only argparse is imported at module level, so
building the parser stays cheap); ``run_forward`` forwards until SIGTERM or Ctrl-C, then
stops accepting, lets open connections drain (``--drain-timeout``) and exits 0 (130
after Ctrl-C); a second signal closes what is left at once. ``--stats`` prints the
counters on exit. Start-up prints one line per forward (``forwarding LISTEN -> TARGET``)
and, with ``--control``, the control API's URL; with ``--json`` both are one-line JSON
documents (``forward-started``, then ``forward-stats`` on exit).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from portside.net.forward import Forwarder, ForwardSpec, ForwardStats

DESCRIPTION = (
    "Forward TCP connections from LISTEN (PORT or ADDRESS:PORT; 127.0.0.1 unless an address"
    " is given) to TARGET ([HOST:]PORT), IPv4 or IPv6 on either side, with correct"
    " half-close and backpressure; zero-copy (splice) on Linux unless faults are enabled."
    " Fault options take an optional direction: up: (client to target) or down:"
    " (target to client). Several forwards: --config FILE (TOML; see docs/forward.md)."
)

_FAULT_OPTIONS = (
    ("--latency", "DURATION", "delay every byte (e.g. 50ms)"),
    ("--jitter", "DURATION", "vary the delay by up to ± this (order is kept)"),
    ("--bandwidth", "RATE", "limit the rate (1mbit, 500kbps = bytes/s, as tc)"),
    ("--slice", "SIZE", "write at most SIZE bytes at a time (fragmentation)"),
    ("--reset-after", "SIZE", "reset the connection after SIZE bytes"),
    ("--timeout-after", "DURATION|SIZE", "go silent after a time (5s) or bytes (64KiB)"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``portside forward`` (called by ``cli._parser``)."""
    parser.add_argument("listen", nargs="?", metavar="LISTEN")
    parser.add_argument("target", nargs="?", metavar="TARGET")
    parser.add_argument(
        "--config", metavar="FILE", help="several forwards from a TOML file (docs/forward.md)"
    )
    faults = parser.add_argument_group("faults (each: [up:|down:]VALUE, repeatable)")
    for flag, metavar, text in _FAULT_OPTIONS:
        faults.add_argument(flag, action="append", default=[], metavar=metavar, help=text)
    faults.add_argument(
        "--refuse", action="store_true", help="accept each connection, then close it at once"
    )
    parser.add_argument(
        "--control",
        metavar="ADDR:PORT",
        help="serve the control API (GET/PUT /faults, GET /stats) here, e.g. 127.0.0.1:0;"
        " enables run-time faults (the copy path)",
    )
    parser.add_argument(
        "--stats", action="store_true", help="print per-connection and total bytes on exit"
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=None,
        metavar="N",
        help="at most N at once; more wait in the listen backlog (default 10000)",
    )
    parser.add_argument(
        "--idle-timeout",
        metavar="DURATION",
        help="close connections idle this long (default never)",
    )
    parser.add_argument(
        "--connect-timeout", metavar="DURATION", help="bound on dialling TARGET (default 10s)"
    )
    parser.add_argument(
        "--drain-timeout",
        metavar="DURATION",
        help="on SIGTERM/Ctrl-C, wait this long for connections to end (default 10s)",
    )
    parser.add_argument(
        "--data-path",
        choices=("auto", "splice", "copy"),
        default="auto",
        help="auto: splice on Linux when no fault is enabled, else copy",
    )
    parser.add_argument(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default=None,
        help="event loop (default: uvloop if installed; $PORTSIDE_LOOP too)",
    )
    parser.add_argument("--name", default="forward", help="the forward's name in stats and the API")


def _cli_faults(options: argparse.Namespace) -> dict[str, object] | None:
    """The fault options in the mapping form of faults.py, or None when none was given."""
    from portside.net.faults import split_direction

    mapping: dict[str, object] = {}
    for flag, _, _ in _FAULT_OPTIONS:
        key = flag[2:].replace("-", "_")
        for text in getattr(options, key):
            for direction, value in zip(*_expand(split_direction(text)), strict=True):
                table = mapping.setdefault(direction, {})
                assert isinstance(table, dict)  # noqa: S101 -- built here
                table[key] = value
    if options.refuse:
        mapping["refuse"] = True
    return mapping or None


def _expand(split: tuple[tuple[object, ...], str]) -> tuple[list[str], list[str]]:
    directions, value = split
    return [str(d) for d in directions], [value] * len(directions)


def _specs(options: argparse.Namespace) -> tuple[list[ForwardSpec], object]:
    """(forwards, control endpoint or None) from the command line or --config."""
    from pathlib import Path

    from portside.errors import UsageError
    from portside.net.faults import parse_duration
    from portside.net.forward import ForwardSpec, Limits, parse_listen, parse_upstream, read_config

    fault_mapping = _cli_faults(options)
    control = parse_listen(options.control) if options.control else None
    if options.config:
        if options.listen or options.target or fault_mapping:
            raise UsageError("with --config, put LISTEN, TARGET and faults in the file")
        config = read_config(Path(options.config))
        return list(config.forwards), control or config.control
    if not options.listen or not options.target:
        raise UsageError("give LISTEN and TARGET (e.g. 15432 127.0.0.1:5432), or --config FILE")

    def seconds(text: str | None, default: float | None) -> float | None:
        if text is None:
            return default
        if text.strip().lower() in ("off", "none"):
            return None
        value = parse_duration(text)
        if value <= 0:
            raise UsageError(f"{text!r}: must be more than zero")
        return value

    from portside.net.faults import faults_from_mapping
    from portside.net.forward import CONNECT_TIMEOUT_S, DRAIN_TIMEOUT_S, MAX_CONNECTIONS

    if options.max_connections is not None and options.max_connections < 1:
        raise UsageError("--max-connections must be at least 1")
    armed = fault_mapping is not None or control is not None
    limits = Limits(
        max_connections=options.max_connections or MAX_CONNECTIONS,
        connect_timeout_s=seconds(options.connect_timeout, CONNECT_TIMEOUT_S) or CONNECT_TIMEOUT_S,
        idle_timeout_s=seconds(options.idle_timeout, None),
        drain_timeout_s=seconds(options.drain_timeout, DRAIN_TIMEOUT_S) or 0.0,
    )
    spec = ForwardSpec(
        name=options.name,
        listen=parse_listen(options.listen),
        target=parse_upstream(options.target),
        faults=faults_from_mapping(fault_mapping or {}) if armed else None,
        limits=limits,
        data_path=options.data_path,
    )
    return [spec], control


def _started_line(forwarder: Forwarder) -> str:
    from portside.net._loop import loop_name

    address = forwarder.address
    listen = (
        f"[{address.ip}]:{address.port}" if ":" in address.ip else f"{address.ip}:{address.port}"
    )
    extra = [forwarder.data_path, loop_name(forwarder.loop)]
    if forwarder.faults is not None and not forwarder.faults.is_clean:
        extra.append("faults")
    label = "" if forwarder.name == "forward" else f" [{forwarder.name}]"
    return f"forwarding {listen} -> {forwarder.target_text}{label} ({', '.join(extra)})"


def _print_stats(stats: list[ForwardStats], *, as_json: bool, colour: bool) -> None:
    import json

    from portside.cli import _render as render
    from portside.models import json_document

    if as_json:
        render.write_all(json.dumps(json_document("forward-stats", {"forwards": stats})) + "\n")
        return
    lines: list[str] = []  # without colour: written at once, past partial writes
    for item in stats:
        listen = render.endpoint_text(item.listen.ip, item.listen.port)
        summary = (
            f"{item.name} {listen} -> {item.target}: {item.accepted} connections"
            f" ({item.refused} refused, {item.failed} failed),"
            f" up {item.bytes_up} bytes, down {item.bytes_down} bytes"
            + (f"; last error: {item.last_error}" if item.last_error else "")
        )
        rows = [
            [
                str(c.id),
                render.endpoint_text(c.client.ip, c.client.port),
                f"{c.duration_s:.3f}s",
                str(c.bytes_up),
                str(c.bytes_down),
                c.end or c.state,
            ]
            for c in item.connections
        ]
        headers = ["id", "client", "duration", "up", "down", "end"]
        if colour:
            render.print_lines([summary])
            if rows:
                render.print_table(None, headers, rows, colour=True)
            continue
        lines.append(summary)
        if rows:
            lines.extend(render.table_lines(None, headers, rows))
    if lines:
        render.write_all("".join(f"{line}\n" for line in lines))


def run_forward(options: argparse.Namespace) -> int:
    """Forward until interrupted; 0 after SIGTERM, 130 after Ctrl-C, 2 for bad options."""
    import json
    import signal
    import sys

    from portside.cli import _render as render
    from portside.errors import ExitCode
    from portside.models import Endpoint, json_document
    from portside.net._loop import Shutdown, raise_fd_limit, run_until_signalled
    from portside.net.control import ControlServer, open_control
    from portside.net.forward import ForwardError, is_loopback, open_forwarder

    specs, control_endpoint = _specs(options)
    assert control_endpoint is None or isinstance(control_endpoint, Endpoint)  # noqa: S101
    for spec in specs:
        if not is_loopback(spec.listen):
            where = render.endpoint_text(spec.listen.ip, spec.listen.port)
            sys.stderr.write(
                f"portside: warning: forward {spec.name!r} listens on {where}, beyond loopback:"
                " other machines can connect through it; use 127.0.0.1 to keep it local\n"
            )
    if control_endpoint is not None and not is_loopback(control_endpoint):
        sys.stderr.write(
            "portside: warning: the control API listens beyond loopback: anyone who can"
            " reach it can change faults; use 127.0.0.1\n"
        )
    raise_fd_limit()
    final: list[ForwardStats] = []

    async def main(shutdown: Shutdown) -> int | None:
        forwarders: list[Forwarder] = []
        control: ControlServer | None = None
        try:
            for spec in specs:
                forwarder = await open_forwarder(
                    spec.listen,
                    spec.target,
                    faults=spec.faults,
                    limits=spec.limits,
                    data_path=spec.data_path,
                    name=spec.name,
                )
                forwarders.append(forwarder)
                shutdown.on_force(forwarder.abort)  # a second signal: close what is left
            if control_endpoint is not None:
                try:
                    control = await open_control(control_endpoint, forwarders)
                except OSError as exc:
                    raise ForwardError(f"cannot serve the control API: {exc.strerror}") from exc
            _announce(forwarders, control, as_json=options.json)
            await shutdown.requested.wait()  # the run ends only by a signal
        finally:
            if control is not None:
                await control.aclose()
            for forwarder in forwarders:
                await forwarder.aclose()
            final.extend(f.stats() for f in forwarders)
        return shutdown.signal

    def _announce(
        forwarders: list[Forwarder], control: ControlServer | None, *, as_json: bool
    ) -> None:
        from portside.net._loop import loop_name
        from portside.net.faults import faults_to_mapping

        if as_json:
            items = [
                {
                    "name": f.name,
                    "listen": {"ip": f.address.ip, "port": f.address.port},
                    "target": f.target_text,
                    "data_path": f.data_path,
                    "loop": loop_name(f.loop),
                    "faults": faults_to_mapping(f.faults) if f.faults is not None else None,
                }
                for f in forwarders
            ]
            document = json_document(
                "forward-started",
                {"forwards": items, "control": control.url if control is not None else None},
            )
            sys.stdout.write(json.dumps(document) + "\n")
        else:
            lines = [_started_line(f) for f in forwarders]
            if control is not None:
                lines.append(f"control {control.url}")
            render.print_lines(lines)
        sys.stdout.flush()

    received = run_until_signalled(main, loop=options.loop)
    if options.stats:
        _print_stats(final, as_json=options.json, colour=render.use_colour(options.no_color))
    return ExitCode.INTERRUPTED if received == signal.SIGINT else ExitCode.OK


def main(argv: list[str] | None = None) -> int:
    """``python -m portside.cli._forward``: the command on its own (until the parser has it)."""
    import sys

    from portside.errors import PortsideError

    parser = argparse.ArgumentParser(prog="portside forward", description=DESCRIPTION)
    parser.add_argument("--json", action="store_true", help="print JSON (docs/forward.md)")
    parser.add_argument("--no-color", action="store_true", help="no colour")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    add_arguments(parser)
    options = parser.parse_args(argv)
    try:
        return run_forward(options)
    except PortsideError as exc:
        if options.debug:
            raise
        sys.stderr.write(f"portside: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
