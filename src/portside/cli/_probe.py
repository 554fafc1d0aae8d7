"""``portside probe TARGET`` (tcping + protocol identification) and ``portside wait``.

``wait``'s positional words are taken with ``argparse.REMAINDER`` (argparse cannot split
``TARGET... -- CMD...`` itself: a ``nargs="+"`` positional swallows the command), so
:func:`run_wait` splits them at the first ``--`` and parses options written after the
targets (``wait localhost:8080 --timeout 5``) with a small parser of its own.

Per-attempt lines, summaries and JSON go to stdout; ``wait``'s live status line and its
"not ready" explanation go to stderr (the status line only when stderr is a terminal).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn, TextIO

from portside.cli import _render as render
from portside.errors import ExitCode, UsageError

if TYPE_CHECKING:
    from portside.probe import ConnectAttempt, ConnectTimes, Identification
    from portside.wait import WaitResult

#: An identification may take this many times ``--timeout`` (it runs several probes).
IDENTIFY_TIMEOUT_FACTOR = 3.0


# --------------------------------------------------------------------------- probe


def _attempt_line(attempt: ConnectAttempt, port: int) -> str:
    where = render.endpoint_text(attempt.ip, port)
    if attempt.connected:
        return f"connected to {where} ({attempt.family}): seq={attempt.seq} time={attempt.elapsed_ms:.3f} ms"
    reason = attempt.errno_name or "failed"
    if attempt.error and attempt.error != attempt.errno_name:
        reason += f" ({attempt.error})"
    return f"failed     {where} ({attempt.family}): seq={attempt.seq} time={attempt.elapsed_ms:.3f} ms {reason}"


def _family_lines(times: ConnectTimes) -> list[str]:
    lines: list[str] = []
    for summary in times.families:
        lines.append(f"--- {render.endpoint_text(summary.ip, times.port)} ({summary.family}) ---")
        text = (
            f"{summary.attempts} attempts, {summary.connected} connected,"
            f" {summary.loss_percent:g}% loss"
        )
        if summary.connected:
            text += (
                f", min/avg/max {summary.min_ms:.3f}/{summary.avg_ms:.3f}/{summary.max_ms:.3f} ms"
            )
        if summary.errors:
            text += f" ({', '.join(summary.errors)})"
        lines.append(text)
    return lines


def _identification_lines(result: Identification) -> list[str]:
    where = render.endpoint_text(result.ip, result.port)
    lines = [f"{where} speaks {result.summary}"]
    if result.connect_error:
        lines = [f"{where}: cannot identify, connect failed ({result.connect_error})"]
    trail = ", ".join(
        f"{record.probe} -> "
        + (record.connect_error or (record.verdict.protocol if record.verdict else "?"))
        for record in result.probes
    )
    if trail:
        lines.append(f"  probes: {trail}")
    return lines


def run_probe(options: argparse.Namespace) -> int:
    from portside.addresses import HostKind, parse_target
    from portside.probe import Hints, connect_times, identify, is_loopback, owner_names

    target = parse_target(options.target, require_port=True)
    if options.timeout <= 0 or options.interval < 0:
        raise UsageError("--timeout must be > 0 and --interval >= 0 seconds")
    port = target.port
    if port is None:  # parse_target(require_port=True) guarantees a port
        raise UsageError(f"{options.target!r}: no port given")
    live = not options.json

    def show(attempt: ConnectAttempt) -> None:
        if live:
            render.print_lines([_attempt_line(attempt, port)])
            sys.stdout.flush()

    times = connect_times(
        target,
        count=options.count,
        interval=options.interval,
        timeout=options.timeout,
        on_attempt=show,
    )
    identifications: list[Identification] = []
    if options.identify:
        for summary in times.families:
            if not summary.connected:
                continue
            hints = Hints(
                scheme=target.scheme,
                server_name=target.host if target.host_kind is HostKind.NAME else None,
                owners=owner_names(port) if is_loopback(summary.ip) else (),
            )
            identifications.append(
                identify(
                    summary.ip, port, timeout=options.timeout * IDENTIFY_TIMEOUT_FACTOR, hints=hints
                )
            )
    if options.json:
        payload = {
            "target": times.target,
            "port": times.port,
            "connected": times.connected,
            "resolved": times.resolved,
            "resolve_error": times.resolve_error,
            "attempts": times.attempts,
            "families": times.families,
            "identifications": identifications,
        }
        render.print_json("probe", payload)
    else:
        lines: list[str] = []
        if times.resolve_error:
            lines.append(f"cannot resolve {target.host}: {times.resolve_error}")
        lines.extend(_family_lines(times))
        for result in identifications:
            lines.extend(_identification_lines(result))
        render.print_lines(lines)
    return ExitCode.OK if times.connected else ExitCode.NEGATIVE


# --------------------------------------------------------------------------- wait


class _LateOptions(argparse.ArgumentParser):
    """Options written after the targets; errors become UsageError (exit 2)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"wait: {message}")


def _wait_arguments(options: argparse.Namespace) -> tuple[argparse.Namespace, list[str], list[str]]:
    """(options, targets, command) from either wiring: ``targets``/``command`` lists, or
    the REMAINDER ``words`` split at the first ``--``."""
    if getattr(options, "targets", None) is not None:
        return options, list(options.targets), list(getattr(options, "command", None) or [])
    words = list(getattr(options, "words", None) or [])
    command: list[str] = []
    if "--" in words:
        cut = words.index("--")
        words, command = words[:cut], words[cut + 1 :]
    late = _LateOptions(prog="portside wait", add_help=False)
    late.add_argument("--timeout", type=float, default=options.timeout)
    late.add_argument("--interval", type=float, default=options.interval)
    late.add_argument("--status", default=options.status)
    late.add_argument("--body", default=options.body)
    late.add_argument("--json", action="store_true", default=options.json)
    late.add_argument(
        "--no-color", action="store_true", default=getattr(options, "no_color", False)
    )
    late.add_argument("--debug", action="store_true", default=getattr(options, "debug", False))
    late.add_argument("targets", nargs="*")
    parsed = late.parse_intermixed_args(words, namespace=argparse.Namespace(**vars(options)))
    return parsed, list(parsed.targets), command


class _StatusLine:
    """One line on stderr, rewritten in place; only when stderr is a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.drawn = False

    def update(self, result: WaitResult) -> None:
        if not self.enabled:
            return
        parts = []
        for state in result.targets:
            if state.ready:
                parts.append(f"{state.target} ready")
            else:
                parts.append(f"{state.target} {state.last_error or 'waiting'}")
        line = f"waiting {result.elapsed_s:.1f}/{result.timeout_s:g} s: " + " | ".join(parts)
        width = shutil.get_terminal_size((100, 24)).columns - 1
        if len(line) > width:
            line = line[: max(width - 1, 10)] + "…"
        self.stream.write(f"\r{line}\x1b[K")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _not_ready_lines(result: WaitResult) -> list[str]:
    lines = [f"portside wait: timed out after {result.timeout_s:g} s; not ready:"]
    for state in result.targets:
        if not state.ready:
            lines.append(
                f"  {state.target}: {state.last_error or 'no attempt'} ({state.attempts} attempts)"
            )
    for state in result.targets:
        if state.ready:
            lines.append(f"  ready: {state.target} via {state.ip} ({state.family}): {state.detail}")
    return lines


def _attempts(count: int) -> str:
    return f"{count} attempt" if count == 1 else f"{count} attempts"


def _ready_lines(result: WaitResult) -> list[str]:
    return [
        f"ready after {state.ready_after_s:.2f} s: {state.target} via"
        f" {state.ip} ({state.family}): {state.detail}"
        for state in result.targets
    ]


def _exec(command: Sequence[str]) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(command[0], list(command))  # noqa: S606 - running CMD is the point of `--`
    except OSError as exc:
        sys.stderr.write(f"portside: cannot run {command[0]!r}: {exc.strerror or exc}\n")
        return 127 if isinstance(exc, FileNotFoundError) else 126


def run_wait(options: argparse.Namespace) -> int:
    from portside.wait import Condition, parse_statuses, wait_for

    options, targets, command = _wait_arguments(options)
    if not targets:
        raise UsageError("wait: give at least one TARGET (HOST:PORT or a URL)")
    condition = Condition(statuses=parse_statuses(options.status), body=options.body)
    status = _StatusLine(sys.stderr)
    try:
        result = wait_for(
            targets,
            timeout=options.timeout,
            interval=options.interval,
            condition=condition,
            on_progress=status.update,
        )
    finally:
        status.close()
    if options.json:
        render.print_json("wait", result)
    if not result.ready:
        sys.stderr.write("".join(f"{line}\n" for line in _not_ready_lines(result)))
        return ExitCode.NEGATIVE
    if status.enabled and not options.json:
        sys.stderr.write("".join(f"{line}\n" for line in _ready_lines(result)))
    if command:
        return _exec(command)
    return ExitCode.OK
