"""Every exception portside raises on purpose, and the exit codes of the command.

* PortsideError                 -- ``except portside.PortsideError`` catches all of ours
  + UsageError                  -- the user asked for something malformed (exit 2)
    - TargetError               -- an endpoint/port/address that cannot be parsed
  + BackendError
    - AccessDeniedError         -- the OS refused to show something (pid, path)
    - BackendUnavailableError   -- netlink / procfs / psutil not usable here
  + ProtocolError               -- bytes that break a protocol rule (status_hint)

Every message is one line that names the problem and, where there is one, the fix.
Library code raises; only ``portside.cli.main`` turns these into messages and exit codes.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """The exit codes of ``portside``; documented in docs/cli.md."""

    OK = 0  # done; the answer is yes (something holds the port, target reachable)
    NEGATIVE = 1  # done; the answer is no (nothing holds the port, a problem was found)
    ERROR = 2  # bad input, or an operation that could not be carried out
    INTERRUPTED = 130  # Ctrl-C


class PortsideError(Exception):
    """Base class of every exception portside raises on purpose."""

    exit_code: ExitCode = ExitCode.ERROR


class UsageError(PortsideError, ValueError):
    """The user asked for something malformed."""


class TargetError(UsageError):
    """An endpoint, port or address that cannot be parsed.

    ``text`` is what the user typed; the message says what is wrong and how to write it.
    """

    def __init__(self, text: str, problem: str) -> None:
        super().__init__(f"{text!r}: {problem}")
        self.text = text
        self.problem = problem


class BackendError(PortsideError):
    """The operating system interface behind a capability failed."""


class AccessDeniedError(BackendError):
    """The OS refused to show something; run as root (or the owner) to see it."""

    def __init__(self, what: str) -> None:
        super().__init__(f"permission denied reading {what}; run with sudo to see it")
        self.what = what


class BackendUnavailableError(BackendError):
    """A socket-table backend cannot run on this machine."""

    def __init__(self, backend: str, reason: str) -> None:
        super().__init__(f"backend {backend!r} is unavailable: {reason}")
        self.backend = backend
        self.reason = reason


class ProtocolError(PortsideError):
    """The peer sent bytes that violate the protocol.

    ``status_hint`` is the HTTP status a server could answer with (cf. h11).
    """

    def __init__(self, message: str, *, status_hint: int = 400) -> None:
        super().__init__(message)
        self.status_hint = status_hint
