"""``portside audit``'s configuration file: rules for findings to ignore (pure but for
reading the file).

The file is TOML; by default ``audit.toml`` in portside's user configuration directory
(platformdirs: ``$XDG_CONFIG_HOME/portside/audit.toml``, ``~/.config/portside/audit.toml``)::

    [[ignore]]
    port = 22                  # every key is optional; all given must match
    proto = "tcp"
    process = "sshd"           # the owner's process name
    address = "0.0.0.0"        # the bound address
    code = "exposed-ssh"       # a finding code (see docs/audit.md)
    reason = "SSH is meant to face the LAN"
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from portside.errors import UsageError

_KEYS = frozenset({"port", "proto", "process", "address", "code", "reason"})


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class IgnoreRule:
    """Findings matching every given field are left out of the report (and of --fail-on)."""

    port: int | None = None
    proto: str | None = None
    process: str | None = None
    address: str | None = None
    code: str | None = None
    reason: str | None = None

    def matches(
        self, *, port: int, proto: str, process: str | None, address: str, code: str
    ) -> bool:
        return (
            (self.port is None or self.port == port)
            and (self.proto is None or self.proto == proto)
            and (self.process is None or self.process == process)
            and (self.address is None or self.address == address)
            and (self.code is None or self.code == code)
        )


def default_path() -> Path:
    """``audit.toml`` in portside's user configuration directory."""
    import platformdirs

    return platformdirs.user_config_path("portside") / "audit.toml"


def parse_config(text: str, *, where: str = "the audit config") -> tuple[IgnoreRule, ...]:
    """The ignore rules of a config file's text; UsageError naming the problem."""
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{where}: not valid TOML ({exc}); fix the file") from exc
    unknown = set(data) - {"ignore"}
    if unknown:
        raise UsageError(f"{where}: unknown table {sorted(unknown)[0]!r}; only [[ignore]] is read")
    items = data.get("ignore", [])
    if not isinstance(items, list):
        raise UsageError(f"{where}: 'ignore' must be an array of tables: write [[ignore]]")
    rules = []
    for number, item in enumerate(items, 1):
        if not isinstance(item, dict):
            raise UsageError(f"{where}: ignore rule {number} is not a table; write [[ignore]]")
        extra = set(item) - _KEYS
        if extra:
            raise UsageError(
                f"{where}: ignore rule {number} has unknown key {sorted(extra)[0]!r};"
                f" use {', '.join(sorted(_KEYS))}"
            )
        port = item.get("port")
        if port is not None and (not isinstance(port, int) or not 0 < port < 65536):
            raise UsageError(f"{where}: ignore rule {number}: port must be 1-65535")
        for key in ("proto", "process", "address", "code", "reason"):
            if key in item and not isinstance(item[key], str):
                raise UsageError(f"{where}: ignore rule {number}: {key} must be a string")
        if item.get("proto") not in (None, "tcp", "udp"):
            raise UsageError(f"{where}: ignore rule {number}: proto must be tcp or udp")
        if not set(item) - {"reason"}:
            raise UsageError(f"{where}: ignore rule {number} matches everything; give a key")
        rules.append(IgnoreRule(**item))
    return tuple(rules)


def load_config(path: Path | None) -> tuple[IgnoreRule, ...]:
    """The rules from ``path`` (must exist), or from the default file when there is one."""
    if path is None:
        path = default_path()
        if not path.is_file():
            return ()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(
            f"cannot read the audit config {path}: {exc.strerror}; check --config"
        ) from exc
    return parse_config(text, where=str(path))
