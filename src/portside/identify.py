"""What is this owner? Recognise a process from its name and command line.

:func:`identify` turns a :class:`~portside.models.ProcessInfo` into an
:class:`~portside.models.Identity`, or None when the program is not one we know. It reads
only ``name`` (the kernel's comm, cut to 15 characters), ``cmdline`` (argv; a rewritten
process title arrives split on spaces) and ``cwd``. It does no I/O, never raises, whatever
the argv holds, and never guesses: a detail that the command line does not show is None.

Interpreters and launchers are looked through: ``node …/node_modules/.bin/vite``,
``python -m uvicorn app:app``, ``/usr/bin/python3 /x/bin/flask run``, ``npx next dev``,
``npm exec``, ``uv run``, ``bundle exec``, ``env``/``nohup``/``nice`` and the like.

Stable ``kind`` values (``target`` is where traffic goes next):

=========================  ===================================================================
kind                       what, and ``target``
=========================  ===================================================================
``docker-proxy``           Docker's userland port proxy; ``"172.17.0.2:80"`` (container ip:port)
``podman-conmon``          podman's container monitor, holder of published ports (rootful);
                           target: the container name (else the short container id)
``podman-rootlessport``    rootless podman's port forwarder; target None (config via a pipe)
``podman-slirp4netns``     slirp4netns user-mode networking; target: short container id if known
``podman-pasta``           pasta (passt) user-mode networking; ``"container:80"`` for a
                           ``-t``/``-u`` port mapping
``ssh-local-forward``      ``ssh -L`` / ``LocalForward``; ``"host:hostport"`` or a remote
                           unix socket path
``ssh-remote-forward``     ``ssh -R`` / ``RemoteForward``; the local ``"host:hostport"`` (or
                           socket path) the remote side's connections reach
``ssh-socks``              ``ssh -D`` / ``DynamicForward``: a SOCKS proxy; target None
``ssh-client``             any other ssh client; ``-W host:port`` gives the target
``ssh-server``             sshd, its listener and its per-session processes
``kubectl-port-forward``   ``kubectl``/``oc port-forward``; ``"svc/x:80"``, ``"pod/p:http"``
``qemu-hostfwd``           QEMU user networking with ``hostfwd=``; ``"guest:22"`` or
                           ``"10.0.2.15:22"`` when the guest address is given
``qemu``                   a QEMU virtual machine without host forwards; target None
``socat``                  a socat relay; the other address, e.g. ``"127.0.0.1:80"``, a unix
                           socket path, or ``"exec:/bin/cat"``
``wsl-relay``              WSL's localhost relay (wslrelay, wslhost)
``node-inspector``         the Node.js/Deno inspector (``--inspect``/``--inspect-brk``); the
                           label names its address
``dev-server``             a development server (vite, next, flask, uvicorn, jupyter, …);
                           ``project_dir`` is the directory it serves
``service``                a well-known daemon (redis-server, postgres, nginx, dockerd, …)
=========================  ===================================================================

Choosing ``target`` when a process has several forwards: the forward whose listening
port equals ``local_port``; otherwise, when the process has exactly one forward of the
reported kind, that one; otherwise None.

``project_dir`` of a development server: a directory named on the command line
(``jupyter --notebook-dir``, ``hugo -s``, ``php -S … -t``, ``python -m http.server -d``,
the location of ``manage.py``, ``vite ROOT``), made absolute against the cwd; else the
process cwd; else the directory that holds the ``node_modules`` the tool runs from.
"""

from __future__ import annotations

import posixpath
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence

from portside.models import Identity, ProcessInfo

TYPE_CHECKING = False
if TYPE_CHECKING:
    import re
    from typing import NamedTuple, TypeVar

    _T = TypeVar("_T")

__all__ = ["identify"]


class _Pattern:
    """A regular expression compiled the first time it is used: this module is imported by
    every listing, and most of its patterns only ever serve rare programs."""

    __slots__ = ("_compiled", "_flags", "_source")

    def __init__(self, source: str, flags: int = 0) -> None:
        self._source = source
        self._flags = flags
        self._compiled: re.Pattern[str] | None = None

    def match(self, text: str) -> re.Match[str] | None:
        compiled = self._compiled
        if compiled is None:
            import re  # here: most listings never need a pattern, and re costs milliseconds

            compiled = self._compiled = re.compile(self._source, self._flags)
        return compiled.match(text)


#: re.IGNORECASE, without importing re.
_IGNORECASE = 2


#: Look no further than this many arguments: a real command line is far shorter.
_MAX_ARGS = 2048
#: How many launchers deep to look (``uv run npx vite`` is three).
_MAX_UNWRAP = 8


# --------------------------------------------------------------------------- helpers


def _port(text: str) -> int | None:
    """``"8080"`` -> 8080; anything that is not a port number -> None."""
    if not text or len(text) > 5 or not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value <= 65535 else None


def _basename(path: str) -> str:
    """The last component of a POSIX or Windows path (``C:\\bin\\node.exe`` -> ``node.exe``)."""
    return path.rstrip("\\/").replace("\\", "/").rpartition("/")[2]


def _prog(word: str) -> str:
    """The program a word names: basename, lower case, no ``.exe``, no title colon."""
    name = _basename(word).lower().rstrip(":")
    return name.removesuffix(".exe")


def _hostport(host: str, port: str) -> str:
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _is_windows_path(path: str) -> bool:
    # A backslash, or a drive letter: ``C:/…``.
    return "\\" in path or (
        len(path) >= 3
        and path[0].isascii()
        and path[0].isalpha()
        and path[1] == ":"
        and path[2] in "\\/"
    )


def _resolve_dir(cwd: str | None, path: str | None) -> str | None:
    """``path`` made absolute against ``cwd``; None when that cannot be done."""
    if not path or "\0" in path:
        return None
    if path.startswith("~"):
        return path  # the home directory is not ours to look up
    if _is_windows_path(path) or (cwd is not None and _is_windows_path(cwd)):
        import ntpath  # Windows paths are rare: imported when one is met

        if ntpath.isabs(path):
            return ntpath.normpath(path)
        return ntpath.normpath(ntpath.join(cwd, path)) if cwd and ntpath.isabs(cwd) else None
    if posixpath.isabs(path):
        return posixpath.normpath(path)
    return posixpath.normpath(posixpath.join(cwd, path)) if cwd and cwd.startswith("/") else None


def _parent_dir(path: str, levels: int = 1) -> str:
    if _is_windows_path(path):
        import ntpath  # Windows paths are rare: imported when one is met

        dirname = ntpath.dirname
    else:
        dirname = posixpath.dirname
    for _ in range(levels):
        path = dirname(path)
    return path or "."


def _option(
    args: Sequence[str], *names: str, glued: bool = False, takes_value: bool = True
) -> str | None:
    """The value of option ``names``: ``--name value``, ``--name=value`` and, with
    ``glued``, ``-nvalue``. Without ``takes_value``, "" when present. None when absent."""
    for i, arg in enumerate(args):
        if arg == "--":
            break
        for name in names:
            if arg == name:
                if not takes_value:
                    return ""
                return args[i + 1] if i + 1 < len(args) else None
            if takes_value and arg.startswith(name + "="):
                return arg[len(name) + 1 :]
            if glued and takes_value and len(name) == 2 and arg.startswith(name) and len(arg) > 2:
                return arg[2:]
    return None


def _positionals(args: Sequence[str], value_options: frozenset[str] = frozenset()) -> list[str]:
    """Arguments that are not options, skipping the values of ``value_options``."""
    found: list[str] = []
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg == "--":
            found.extend(args[i + 1 :])
            break
        if arg.startswith("-") and arg != "-":
            skip = arg in value_options
            continue
        found.append(arg)
    return found


def _only(items: Sequence[_T]) -> _T | None:
    return items[0] if len(items) == 1 else None


# The private records below are named tuples: immutable, and about ten times cheaper
# to define than frozen dataclass classes (this module is imported by every listing).
if TYPE_CHECKING:

    class _Inspector(NamedTuple):
        """A JavaScript runtime's inspector: where it listens."""

        host: str
        port: int
        runtime: str = "Node.js"

    class _CmdFields(NamedTuple):
        prog: str
        args: tuple[str, ...]
        cwd: str | None
        script: str | None = None  # the file an interpreter runs
        inspector: _Inspector | None = None

else:
    _Inspector = namedtuple("_Inspector", "host port runtime", defaults=("Node.js",))
    _CmdFields = namedtuple("_Cmd", "prog args cwd script inspector", defaults=(None, None))


class _Cmd(_CmdFields):
    """The program that matters after looking through launchers, and its arguments."""

    __slots__ = ()

    def to(self, prog: str, args: Sequence[str], *, script: str | None = None) -> _Cmd:
        return self._replace(prog=prog, args=tuple(args), script=script)


def _default_project(cmd: _Cmd, explicit: str | None = None) -> str | None:
    """Directory named on the command line, else the cwd, else above ``node_modules``."""
    chosen = _resolve_dir(cmd.cwd, explicit)
    if chosen is not None:
        return chosen
    if cmd.cwd:
        return cmd.cwd
    if cmd.script:
        parts = cmd.script.replace("\\", "/").split("/")
        if "node_modules" in parts:
            head = parts[: parts.index("node_modules")]
            # <prefix>/lib/node_modules, …/npm/node_modules, the npx cache: a global
            # install, not a project.
            if not head or head[-1] in ("lib", "npm", "") or "_npx" in parts:
                return None
            joined = "\\".join(head) if _is_windows_path(cmd.script) else "/".join(head)
            return _resolve_dir(None, joined)
    return None


# --------------------------------------------------------------------------- launchers

#: What names a Python interpreter: ``^(python|pythonw|pypy)(\d+(\.\d+)*)?[a-z]?$|^py$``,
#: matched without re by :func:`_is_python` (it is asked of every process listed).
_PYTHON_STEMS = ("pythonw", "python", "pypy")


def _is_python(prog: str) -> bool:
    """``python``, ``python3``, ``python3.13t``, ``pythonw``, ``pypy3``, ``py`` …"""
    if prog.endswith("\n"):
        prog = prog[:-1]  # as re's $ allows one newline at the end
    if prog == "py":
        return True
    for stem in _PYTHON_STEMS:
        if prog.startswith(stem) and _is_version_suffix(prog[len(stem) :]):
            return True
    return False


def _is_version_suffix(rest: str) -> bool:
    r"""``(\d+(\.\d+)*)?[a-z]?`` in full: ``""``, ``"3"``, ``"3.13t"``, ``"w"`` …"""
    if rest and "a" <= rest[-1] <= "z":
        rest = rest[:-1]
    return not rest or all(part.isdecimal() for part in rest.split("."))


_NODE_LIKE = frozenset({"node", "nodejs", "tsx", "ts-node", "ts-node-dev", "node-dev", "nodemon"})
_NODE_VALUE_OPTS = frozenset(
    {"-r", "--require", "--loader", "--experimental-loader", "--import", "--input-type"}
    | {"--title", "-C", "--conditions", "--env-file", "--watch-path", "--exec", "-x"}
)
#: Stripped from script names; .exe/.cmd are Windows shims (Scripts\flask.exe, vite.cmd).
_SCRIPT_EXTENSIONS: tuple[str, ...] = (".js", ".mjs", ".cjs", ".ts", ".mts", ".cts", ".jsx")
_SCRIPT_EXTENSIONS += (".tsx", ".py", ".pyw", ".rb", ".exe", ".cmd")
_BIN_ALIASES = {"npx-cli": "npx", "npm-cli": "npm", "pnpm": "pnpm", "yarn": "yarn"}
_PKG_ALIASES = {"@angular/cli": "ng", "@11ty/eleventy": "eleventy", "@sveltejs/kit": "svelte-kit"}
_PYTHON_MODULE_ALIASES = {
    "jupyterlab": "jupyter-lab",
    "notebook": "jupyter-notebook",
    "nbclassic": "jupyter-nbclassic",
    "jupyter_server": "jupyter-server",
    "ipykernel": "ipykernel_launcher",
}


def _script_prog(path: str) -> str:
    """The tool a script path runs: ``…/node_modules/next/dist/bin/next`` -> ``"next"``."""
    base = _basename(path).lower()
    for ext in _SCRIPT_EXTENSIONS:
        if base.endswith(ext) and len(base) > len(ext):
            base = base[: -len(ext)]
            break
    base = base.removesuffix("-script")  # Windows console-script shims
    if base in _BIN_ALIASES:
        return _BIN_ALIASES[base]
    if base in _NATIVE:
        return f"{base}-script"  # `node ssh.js` is not ssh
    if base in _HANDLERS:
        return base
    parts = [p for p in path.replace("\\", "/").split("/") if p]
    indexes = [i for i, part in enumerate(parts) if part == "node_modules"]
    if indexes and indexes[-1] + 1 < len(parts):
        i = indexes[-1]
        package = parts[i + 1]
        if package.startswith("@") and i + 2 < len(parts):
            package = f"{package}/{parts[i + 2]}"
        if package != ".bin":
            return _PKG_ALIASES.get(package, package.lower())
    return base


def _strip_version(spec: str) -> str:
    """``"vite@5.0.0"`` -> ``"vite"``, ``"@angular/cli@17"`` -> ``"@angular/cli"``."""
    at = spec.find("@", 1)
    return spec[:at] if at > 0 else spec


def _package_prog(spec: str) -> str:
    name = _strip_version(spec.removeprefix("npm:")).lower()
    return _PKG_ALIASES.get(name, _prog(name))


def _parse_inspector(
    arg: str, current: _Inspector | None, *, runtime: str = "Node.js"
) -> _Inspector | None:
    flag, _, value = arg.partition("=")
    host = current.host if current else "127.0.0.1"
    port = current.port if current else 9229
    if flag in ("--inspect-port", "--debug-port"):
        parsed = _port(value)
        return _Inspector(host, parsed, runtime) if parsed is not None else current
    if value:
        if value.startswith("[") and "]" in value:
            host, _, rest = value[1:].partition("]")
            parsed = _port(rest.removeprefix(":"))
            port = parsed if parsed is not None else port
        elif _port(value) is not None:
            port = _port(value) or 0
        elif ":" in value:
            host, _, tail = value.rpartition(":")
            parsed = _port(tail)
            port = parsed if parsed is not None else port
        else:
            host = value
    return _Inspector(host, port, runtime)


def _unwrap_node(cmd: _Cmd) -> _Cmd | None:
    args = list(cmd.args)
    if cmd.prog == "tsx" and args[:1] == ["watch"]:
        args = args[1:]
    inspector = cmd.inspector
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-e", "--eval", "-p", "--print", "-") or arg.startswith(("--eval=", "--print=")):
            break
        if arg.startswith(("--inspect", "--debug-port")):
            inspector = _parse_inspector(arg, inspector)
        elif arg == "--":
            if i + 1 < len(args):
                return _script_cmd(cmd, args[i + 1], args[i + 2 :], inspector)
            break
        elif arg in _NODE_VALUE_OPTS:
            i += 1
        elif not arg.startswith("-"):
            return _script_cmd(cmd, arg, args[i + 1 :], inspector)
        i += 1
    if inspector != cmd.inspector:
        return cmd._replace(prog="node", args=(), inspector=inspector)
    return None


def _script_cmd(cmd: _Cmd, script: str, rest: Sequence[str], inspector: _Inspector | None) -> _Cmd:
    return cmd._replace(
        prog=_script_prog(script), args=tuple(rest), script=script, inspector=inspector
    )


def _unwrap_python(cmd: _Cmd) -> _Cmd | None:
    args = cmd.args
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--" or arg == "-":
            return None
        if not arg.startswith("-"):
            return cmd.to(_script_prog(arg), args[i + 1 :], script=arg)
        if arg.startswith("--"):
            i += 2 if arg == "--check-hash-based-pycs" else 1
            continue
        for j, flag in enumerate(arg[1:], start=1):
            rest = arg[j + 1 :]
            if flag == "c":
                return None  # python -c CODE: nothing to recognise
            if flag == "m":
                module = rest or (args[i + 1] if i + 1 < len(args) else "")
                skip = 1 if rest else 2
                if not module:
                    return None
                name = module.lower()
                return cmd.to(_PYTHON_MODULE_ALIASES.get(name, name), args[i + skip :])
            if flag in "WX":
                if not rest:
                    i += 1  # the value is the next argument
                break
        i += 1
    return None


def _unwrap_ruby(cmd: _Cmd) -> _Cmd | None:
    values = frozenset({"-I", "-r", "-C", "-E", "-F", "-i", "-0", "-K", "-T", "-W"})
    i = 0
    args = cmd.args
    while i < len(args):
        arg = args[i]
        if arg.startswith("-e") or arg == "-":
            return None
        if arg in values:
            i += 2
            continue
        if not arg.startswith("-"):
            return cmd.to(_script_prog(arg), args[i + 1 :], script=arg)
        i += 1
    return None


def _unwrap_plain(cmd: _Cmd) -> _Cmd | None:
    """``env``/``nohup``/``nice``/``setsid``/``stdbuf`` and friends: the rest is the command."""
    args = list(cmd.args)
    values = {"env": {"-u", "--unset", "-C", "--chdir"}, "nice": {"-n", "--adjustment"}}
    value_options = values.get(cmd.prog, {"-o", "-e", "-i", "-c", "-n"})
    split = cmd.prog != "env"  # env -S "cmd args" splits one string, once
    i = 0
    while i < len(args):
        arg = args[i]
        if not split and arg in ("-S", "--split-string") and i + 1 < len(args):
            args = args[:i] + args[i + 1].split() + args[i + 2 :]
            split = True
            continue
        if arg == "--":
            i += 1
            break
        if arg in value_options:
            i += 2
        elif arg.startswith("-") or (cmd.prog == "env" and "=" in arg):
            i += 1
        else:
            break
    if i >= len(args):
        return None
    return cmd.to(_prog(args[i]), args[i + 1 :])


def _unwrap_runner(cmd: _Cmd) -> _Cmd | None:
    """``npx X``, ``npm exec X``, ``uv run X``, ``bundle exec X``, ``bun x X``…: X."""
    value_options = frozenset(
        {"-p", "--package", "-c", "--call", "--prefix", "-w", "--workspace", "-C", "--dir"}
        | {"--filter", "-F", "--cwd", "--with", "--python", "--project", "--directory"}
        | {"--extra", "--group", "--env-file", "--index", "--index-url", "-e", "--env"}
    )
    args = list(cmd.args)
    direct = {"npx", "pnpx", "bunx"}
    if cmd.prog not in direct:
        words = _positionals(args, value_options)
        verbs = {"exec", "x", "dlx"} if cmd.prog in _JS_RUNNERS else {"exec", "run"}
        if not words or words[0] not in verbs:
            return None
        args = args[args.index(words[0]) + 1 :]
    rest = _positionals(args, value_options)
    if not rest:
        return None
    target = rest[0]
    tail = args[args.index(target) + 1 :] if target in args else rest[1:]
    prog = _package_prog(target) if cmd.prog in direct or cmd.prog in _JS_RUNNERS else _prog(target)
    return cmd.to(prog, tail)


def _unwrap_bun(cmd: _Cmd) -> _Cmd | None:
    """``bun x vite``, ``bun --bun vite``, ``bun node_modules/.bin/vite``: a tool we know;
    ``bun run dev`` (a package.json script) and ``bun server.ts`` stay bun."""
    args = list(cmd.args)
    words = _positionals(args, _BUN_VALUE_OPTS)
    if words[:1] in (["x"], ["run"]):
        words = words[1:]
    if not words:
        return None
    first = words[0]
    is_path = "/" in first or "\\" in first
    prog = _script_prog(first) if is_path else _package_prog(first)
    if prog in _NATIVE or _handler(prog) is None:
        return None
    return cmd.to(prog, args[args.index(first) + 1 :], script=first if is_path else None)


def _unwrap_deno(cmd: _Cmd) -> _Cmd | None:
    """``deno run -A npm:vite``: the npm package's tool."""
    args = list(cmd.args)
    words = _positionals(args, _DENO_VALUE_OPTS)
    if len(words) < 2 or words[0] != "run" or not words[1].startswith("npm:"):
        return None
    inspector = _inspector_of(args[: args.index(words[1])], None, runtime="Deno")
    nested = cmd.to(_package_prog(words[1]), args[args.index(words[1]) + 1 :])
    return nested._replace(inspector=inspector)


_JS_RUNNERS = frozenset({"npm", "pnpm", "yarn"})
_BUN_VALUE_OPTS = frozenset({"--cwd", "--config", "-c", "--port", "-r", "--preload"})
_DENO_VALUE_OPTS = frozenset({"-c", "--config", "--import-map", "--lock", "--cert", "--location"})
_LAUNCHERS: Mapping[str, Callable[[_Cmd], _Cmd | None]] = {
    **dict.fromkeys(("env", "nohup", "nice", "setsid", "stdbuf", "ionice"), _unwrap_plain),
    **dict.fromkeys(("npx", "pnpx", "bunx", "npm", "pnpm", "yarn"), _unwrap_runner),
    **dict.fromkeys(("uv", "poetry", "pipenv", "pdm", "hatch", "rye", "bundle"), _unwrap_runner),
    **dict.fromkeys(_NODE_LIKE, _unwrap_node),
    "ruby": _unwrap_ruby,
    "bun": _unwrap_bun,
    "deno": _unwrap_deno,
}


def _resolve(argv: Sequence[str], cwd: str | None) -> _Cmd:
    cmd = _Cmd(prog=_prog(argv[0]), args=tuple(argv[1:]), cwd=cwd)
    for _ in range(_MAX_UNWRAP):
        unwrap = _LAUNCHERS.get(cmd.prog)
        if unwrap is None and _is_python(cmd.prog):
            unwrap = _unwrap_python
        nested = unwrap(cmd) if unwrap is not None else None
        if nested is None:
            break
        cmd = nested
    return cmd


# --------------------------------------------------------------------------- containers


def _docker_proxy(cmd: _Cmd, local_port: int | None) -> Identity:
    def flag(name: str) -> str | None:
        return _option(cmd.args, f"-{name}", f"--{name}")

    ip, port, proto = flag("container-ip"), flag("container-port"), flag("proto")
    target = _hostport(ip, port) if ip and port and _port(port) is not None else None
    return Identity(
        kind="docker-proxy", label=f"Docker port proxy ({proto or 'tcp'})", target=target
    )


def _conmon(cmd: _Cmd, local_port: int | None) -> Identity:
    name = _option(cmd.args, "-n", "--name")
    cid = _option(cmd.args, "-c", "--cid")
    target = name or (cid[:12] if cid else None)
    label = f"podman container {target} (conmon)" if target else "podman container monitor (conmon)"
    return Identity(kind="podman-conmon", label=label, target=target)


def _rootlessport(cmd: _Cmd, local_port: int | None) -> Identity:
    return Identity(kind="podman-rootlessport", label="podman rootless port forwarder")


_SLIRP_API = _Pattern(r"([0-9a-f]{12,64})\.net$")


def _slirp4netns(cmd: _Cmd, local_port: int | None) -> Identity:
    api = _option(cmd.args, "--api-socket", "-a") or ""
    found = _SLIRP_API.match(_basename(api))
    return Identity(
        kind="podman-slirp4netns",
        label="slirp4netns user-mode network",
        target=found.group(1)[:12] if found else None,
    )


def _pasta_ranges(item: str) -> tuple[int, int, int] | None:
    """One ``-t`` item -> (first host port, last host port, first guest port)."""
    spec = item.rpartition("/")[2]  # drop "ADDR[%IF]/"
    host, _, guest = spec.partition(":")
    start_text, _, end_text = host.partition("-")
    start = _port(start_text)
    end = _port(end_text) if end_text else start
    if start is None or end is None or end < start:
        return None
    guest_start = _port(guest.partition("-")[0]) if guest else start
    return (start, end, guest_start) if guest_start is not None else None


def _pasta(cmd: _Cmd, local_port: int | None) -> Identity:
    maps: list[tuple[int, int, int]] = []
    args = cmd.args
    for i, arg in enumerate(args):
        value: str | None = None
        if arg in ("-t", "-u", "--tcp-ports", "--udp-ports") and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(("--tcp-ports=", "--udp-ports=")):
            value = arg.partition("=")[2]
        for item in (value or "").split(","):
            parsed = _pasta_ranges(item)
            if parsed is not None:
                maps.append(parsed)
    guest: int | None = None
    for start, end, guest_start in maps:
        if local_port is not None and start <= local_port <= end:
            guest = guest_start + (local_port - start)
            break
    else:
        only = _only(maps)
        if only is not None and only[0] == only[1]:
            guest = only[2]
    target = f"container:{guest}" if guest is not None and guest <= 65535 else None
    return Identity(kind="podman-pasta", label="pasta user-mode network", target=target)


# --------------------------------------------------------------------------- ssh

_SSH_VALUE_FLAGS = frozenset("BbcDEeFIiJLlmOoPpQRSWw")


if TYPE_CHECKING:

    class _Forward(NamedTuple):
        """One forward of an ssh command line: its listening port, and where it leads."""

        listen_port: int | None  # None: a unix socket, or on the far side
        target: str | None

else:
    _Forward = namedtuple("_Forward", "listen_port target")


def _ssh_fields(spec: str) -> list[str]:
    """Split a forward spec on ``:`` (``[v6]`` kept whole); old style ``/`` when no ``:``."""
    if ":" not in spec and "/" in spec and not spec.startswith("/"):
        return spec.split("/")
    fields: list[str] = []
    current = ""
    last_close = spec.rfind("]")
    i = 0
    while i < len(spec):
        char = spec[i]
        if char == "[" and not current and i < last_close:
            end = spec.index("]", i)
            current = spec[i + 1 : end]
            i = end + 1
            continue
        if char == ":":
            fields.append(current)
            current = ""
        else:
            current += char
        i += 1
    fields.append(current)
    return fields


def _local_forward(spec: str) -> _Forward | None:
    """``[bind:]port:host:hostport``, ``[bind:]port:/remote.sock``, ``/local.sock:host:port``…"""
    fields = _ssh_fields(spec)
    if len(fields) == 4 and _port(fields[1]) is not None and _port(fields[3]) is not None:
        return _Forward(_port(fields[1]), _hostport(fields[2], fields[3]))
    if len(fields) == 3:
        first, middle, last = fields
        if _port(first) is not None and _port(last) is not None:
            return _Forward(_port(first), _hostport(middle, last))
        if _port(middle) is not None and last.startswith("/"):
            return _Forward(_port(middle), last)
        if first.startswith("/") and _port(last) is not None:
            return _Forward(None, _hostport(middle, last))
    if (
        len(fields) == 2
        and fields[1].startswith("/")
        and (_port(fields[0]) is not None or fields[0].startswith("/"))
    ):
        return _Forward(_port(fields[0]), fields[1])
    return None


def _remote_forward(spec: str) -> _Forward | None:
    """``[bind:]port:host:hostport``, ``[bind:]port:/local.sock``, ``[bind:]port`` (SOCKS)."""
    fields = _ssh_fields(spec)
    last = fields[-1]
    if len(fields) >= 3 and _port(last) is not None and fields[-2]:
        return _Forward(None, _hostport(fields[-2], last))
    if len(fields) >= 2 and last.startswith("/"):
        return _Forward(None, last)
    if len(fields) <= 2 and _port(last) is not None:
        return _Forward(None, None)  # remote dynamic (SOCKS) forward
    return None


def _dynamic_forward(spec: str) -> _Forward | None:
    port = _port(_ssh_fields(spec)[-1])
    return _Forward(port, None) if port is not None else None


def _ssh_options(args: Sequence[str]) -> tuple[list[tuple[str, str]], str | None]:
    """getopt-style parse of ssh's argv -> ([(flag, value)], destination). Options may
    also follow the destination, as OpenSSH allows; the second word starts the command."""
    options: list[tuple[str, str]] = []
    destination: str | None = None
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--" or not arg.startswith("-") or arg == "-":
            if arg == "--":
                if destination is None and i < len(args):
                    destination = args[i]
                break
            if destination is not None:
                break
            destination = arg
            continue
        for j, flag in enumerate(arg[1:], start=1):
            if flag in _SSH_VALUE_FLAGS:
                value = arg[j + 1 :]
                if not value and i < len(args):
                    value = args[i]
                    i += 1
                options.append((flag, value))
                break
            options.append((flag, ""))
    return options, destination


_SSH_KEYWORD = _Pattern(r"[A-Za-z]+")


def _ssh_config_option(text: str) -> tuple[str, str]:
    """``"LocalForward=8080 host:80"`` -> ("localforward", "8080:host:80")."""
    text = text.strip()
    found = _SSH_KEYWORD.match(text)
    if found is None:
        return "", ""
    rest = text[found.end() :].lstrip()
    words = rest.removeprefix("=").replace('"', " ").split()
    return found.group(0).lower(), ":".join(words)


def _ssh(cmd: _Cmd, local_port: int | None) -> Identity:
    args = list(cmd.args)
    if cmd.prog == "autossh":  # autossh's own -M PORT, then ssh's options
        args = [
            a for i, a in enumerate(args) if not (a.startswith("-M") or args[i - 1 : i] == ["-M"])
        ]
    local: list[_Forward] = []
    remote: list[_Forward] = []
    socks: list[_Forward] = []
    stdio: str | None = None
    options, destination = _ssh_options(args)
    for flag, value in options:
        if flag == "o":
            key, value = _ssh_config_option(value)
            flag = {"localforward": "L", "remoteforward": "R", "dynamicforward": "D"}.get(key, "")
        if flag == "W":
            stdio = value or None
            continue
        parse, into = {
            "L": (_local_forward, local),
            "R": (_remote_forward, remote),
            "D": (_dynamic_forward, socks),
        }.get(flag, (None, []))
        forward = parse(value) if parse is not None else None
        if forward is not None:
            into.append(forward)
    via = f" via {destination}" if destination else ""
    if local_port is not None:
        for forward in local:
            if forward.listen_port == local_port:
                return Identity(
                    kind="ssh-local-forward", label=f"SSH tunnel{via}", target=forward.target
                )
        if any(forward.listen_port == local_port for forward in socks):
            return Identity(kind="ssh-socks", label=f"SSH SOCKS proxy{via}")
    if local:
        only = _only(local)
        return Identity(
            kind="ssh-local-forward", label=f"SSH tunnel{via}", target=only.target if only else None
        )
    if remote:
        only = _only(remote)
        return Identity(
            kind="ssh-remote-forward",
            label=f"SSH reverse tunnel{via}",
            target=only.target if only else None,
        )
    if socks:
        return Identity(kind="ssh-socks", label=f"SSH SOCKS proxy{via}")
    return Identity(
        kind="ssh-client", label=f"SSH client{via.replace(' via', ' to')}", target=stdio
    )


def _sshd(cmd: _Cmd, local_port: int | None) -> Identity:
    first = cmd.args[0] if cmd.args else ""
    if first and not first.startswith(("/", "-", "[")) and cmd.prog in ("sshd", "sshd-session"):
        session = " ".join(cmd.args[:2]) if cmd.args[1:2] == ("[priv]",) else first
        return Identity(kind="ssh-server", label=f"SSH server session ({session})")
    return Identity(kind="ssh-server", label="SSH server")


# --------------------------------------------------------------------------- kubectl

_KUBECTL_VALUE_OPTS = frozenset(
    {"-n", "--namespace", "--address", "--pod-running-timeout", "--context", "--cluster"}
    | {"--kubeconfig", "--user", "-s", "--server", "--token", "--as", "--as-group", "--as-uid"}
    | {"--request-timeout", "--cache-dir", "--certificate-authority", "--client-certificate"}
    | {"--client-key", "--tls-server-name", "-v", "--v", "--log-file", "--profile"}
)


def _kubectl(cmd: _Cmd, local_port: int | None) -> Identity | None:
    args = cmd.args
    if "port-forward" not in args:
        return None
    words = _positionals(args, _KUBECTL_VALUE_OPTS)
    if "port-forward" not in words:
        return None
    words = words[words.index("port-forward") + 1 :]
    namespace = _option(args, "-n", "--namespace", glued=True)
    label = "kubectl port-forward" + (f" (namespace {namespace})" if namespace else "")
    if not words:
        return Identity(kind="kubectl-port-forward", label=label)
    resource = words[0] if "/" in words[0] else f"pod/{words[0]}"
    forwards: list[tuple[int | None, str]] = []
    for spec in words[1:]:
        local_text, colon, remote = spec.partition(":")
        remote = remote if colon else local_text
        if remote:
            forwards.append((_port(local_text), f"{resource}:{remote}"))
    target = next(
        (t for port, t in forwards if local_port is not None and port == local_port), None
    )
    if target is None:
        only = _only(forwards)
        target = only[1] if only else None
    return Identity(kind="kubectl-port-forward", label=label, target=target)


# --------------------------------------------------------------------------- qemu


def _qemu_options(text: str) -> list[tuple[str, str]]:
    """``"user,id=n0,hostfwd=tcp::1-:22"`` -> [("", "user"), ("id", "n0"), …]; ``,,`` is a comma."""
    items = text.replace(",,", "\0").split(",")
    pairs: list[tuple[str, str]] = []
    for item in items:
        key, equals, value = item.replace("\0", ",").partition("=")
        pairs.append((key, value) if equals else ("", key))
    return pairs


_HOSTFWD = _Pattern(
    r"^(?:(?:tcp|udp)?:)?(\[[^\]]*\]|[^:\[\]]*):(\d{1,5})-(\[[^\]]*\]|[^:\[\]]*):(\d{1,5})$",
    _IGNORECASE,
)


def _hostfwds(value: str) -> list[tuple[int, str]]:
    """Host forwards of one ``-netdev``/``-nic``/``-net`` value -> [(host port, target)]."""
    rules: list[str] = []
    if value.lstrip().startswith("{"):
        try:
            import json

            parsed: object = json.loads(value)
        except (ValueError, RecursionError):
            parsed = None
        if isinstance(parsed, dict) and parsed.get("type") == "user":
            listed = parsed.get("hostfwd")
            for entry in listed if isinstance(listed, list) else []:
                if isinstance(entry, dict) and isinstance(entry.get("str"), str):
                    rules.append(entry["str"])
    else:
        pairs = _qemu_options(value)
        if pairs and pairs[0] == ("", "user"):
            rules = [v for k, v in pairs if k == "hostfwd"]
    found: list[tuple[int, str]] = []
    for rule in rules:
        match = _HOSTFWD.match(rule)
        host_port = _port(match.group(2)) if match else None
        guest_port = _port(match.group(4)) if match else None
        if match and host_port is not None and guest_port is not None:
            guest = match.group(3).strip("[]") or "guest"
            found.append((host_port, _hostport(guest, str(guest_port))))
    return found


def _qemu(cmd: _Cmd, local_port: int | None) -> Identity:
    forwards: list[tuple[int, str]] = []
    name: str | None = None
    args = cmd.args
    for i, arg in enumerate(args[:-1]):
        option = arg.lstrip("-")
        if arg.startswith("-") and option in ("netdev", "nic", "net"):
            forwards.extend(_hostfwds(args[i + 1]))
        elif arg.startswith("-") and option == "name":
            pairs = _qemu_options(args[i + 1])
            name = next((v for k, v in pairs if k in ("", "guest") and v), None)
    vm = f"QEMU VM {name}" if name else "QEMU VM"
    if not forwards:
        return Identity(kind="qemu", label=vm)
    target = next((t for port, t in forwards if port == local_port), None)
    if target is None:
        only = _only(forwards)
        target = only[1] if only else None
    return Identity(kind="qemu-hostfwd", label=f"{vm} port forward", target=target)


# --------------------------------------------------------------------------- socat

_SOCAT_VALUE_OPTS = frozenset({"-b", "-t", "-T", "-lf", "-lp", "-L", "-W", "-r", "-R", "-X"})
_SOCAT_LISTEN = _Pattern(
    r"^(TCP[46]?|UDP[46]?|SCTP[46]?|OPENSSL|SSL|DTLS|OPENSSL-DTLS|UNIX|ABSTRACT|VSOCK)-"
    r"(LISTEN|L|RECVFROM|RECV)$",
    _IGNORECASE,
)
_SOCAT_HOSTPORT = _Pattern(
    r"^(TCP[46]?|UDP[46]?|SCTP[46]?)(-CONNECT|-SENDTO)?$|^(OPENSSL|SSL|DTLS|OPENSSL-DTLS-CLIENT"
    r"|OPENSSL-CONNECT|VSOCK|VSOCK-CONNECT)$",
    _IGNORECASE,
)
_SOCAT_VIA = _Pattern(r"^(PROXY|PROXY-CONNECT|SOCKS4A?|SOCKS5|SOCKS5-CONNECT)$", _IGNORECASE)


def _socat_target(address: str) -> str:
    head = address.split(",", 1)[0]
    kind, colon, params = head.partition(":")
    if not colon:
        return head
    upper = kind.upper()
    if _SOCAT_HOSTPORT.match(kind):
        return params
    if _SOCAT_VIA.match(kind):
        fields = _ssh_fields(params)
        return _hostport(fields[-2], fields[-1]) if len(fields) >= 3 else params
    if upper.startswith(("UNIX", "ABSTRACT")):
        return params if not upper.startswith("ABSTRACT") else f"@{params}"
    if upper in ("EXEC", "SYSTEM", "SHELL"):
        return f"{upper.lower()}:{params}"
    return head


def _socat(cmd: _Cmd, local_port: int | None) -> Identity:
    addresses = _positionals(cmd.args, _SOCAT_VALUE_OPTS)[:2]
    listeners: list[tuple[int | None, str]] = []
    if len(addresses) == 2:
        for mine, other in (addresses, addresses[::-1]):
            kind, _, params = mine.split(",", 1)[0].partition(":")
            if _SOCAT_LISTEN.match(kind):
                port = _port(params) if not kind.upper().startswith(("UNIX", "ABSTRACT")) else None
                listeners.append((port, _socat_target(other)))
    target = next((t for port, t in listeners if port is not None and port == local_port), None)
    if target is None:
        only = _only(listeners)
        target = only[1] if only else None
    return Identity(kind="socat", label="socat relay", target=target)


# --------------------------------------------------------------------------- dev servers


if TYPE_CHECKING:

    class _Tool(NamedTuple):
        """A tool whose first word picks what it does: label per subcommand (None: not a
        server), ``default`` when there is no subcommand or an unknown one."""

        labels: Mapping[str, str | None]
        default: str | None = None
        dir_options: tuple[str, ...] = ()
        dir_positional: bool = False  # ``vite ROOT``, ``next dev DIR``

else:
    _Tool = namedtuple(
        "_Tool", "labels default dir_options dir_positional", defaults=(None, (), False)
    )


_JUPYTER_DIRS = (
    "--notebook-dir",
    "--ServerApp.root_dir",
    "--ServerApp.notebook_dir",
    "--NotebookApp.notebook_dir",
    "--root-dir",
)
_TOOLS: Mapping[str, _Tool] = {
    "vite": _Tool(
        {"dev": "vite dev server", "serve": "vite dev server", "preview": "vite preview server"}
        | {"build": None, "optimize": None},
        default="vite dev server",
        dir_positional=True,
    ),
    "vitepress": _Tool(
        {"dev": "VitePress dev server", "preview": "VitePress preview server", "build": None},
        default="VitePress dev server",
        dir_positional=True,
    ),
    "next": _Tool(
        {"dev": "Next.js dev server", "start": "Next.js server"}
        | dict.fromkeys(("build", "lint", "export", "info", "telemetry"), None),
        default="Next.js dev server",
        dir_positional=True,
    ),
    "webpack-dev-server": _Tool({}, default="webpack dev server"),
    "webpack": _Tool(dict.fromkeys(("serve", "server", "s"), "webpack dev server")),
    "webpack-cli": _Tool(dict.fromkeys(("serve", "server", "s"), "webpack dev server")),
    "astro": _Tool(
        {"dev": "Astro dev server", "preview": "Astro preview server"}
        | dict.fromkeys(("build", "check", "add", "sync", "info", "telemetry"), None),
        default="Astro dev server",
        dir_options=("--root",),
    ),
    "ng": _Tool(dict.fromkeys(("serve", "s", "dev-server"), "Angular dev server")),
    "parcel": _Tool(
        {"serve": "Parcel dev server", "watch": "Parcel watcher", "build": None},
        default="Parcel dev server",
    ),
    "nuxt": _Tool({"dev": "Nuxt dev server", "preview": "Nuxt preview server"}),
    "nuxi": _Tool({"dev": "Nuxt dev server", "preview": "Nuxt preview server"}),
    "react-scripts": _Tool({"start": "Create React App dev server"}),
    "vue-cli-service": _Tool({"serve": "Vue CLI dev server"}),
    "gatsby": _Tool({"develop": "Gatsby dev server", "serve": "Gatsby server"}),
    "remix": _Tool({"dev": "Remix dev server", "vite:dev": "Remix dev server"}),
    "svelte-kit": _Tool({"dev": "SvelteKit dev server", "preview": "SvelteKit preview server"}),
    "storybook": _Tool({"dev": "Storybook dev server"}),
    "start-storybook": _Tool({}, default="Storybook dev server"),
    "docusaurus": _Tool({"start": "Docusaurus dev server", "serve": "Docusaurus server"}),
    "http-server": _Tool({}, default="http-server static server", dir_positional=True),
    "live-server": _Tool({}, default="live-server static server", dir_positional=True),
    "rspack": _Tool(dict.fromkeys(("dev", "serve", "server", "s"), "Rspack dev server")),
    "rsbuild": _Tool({"dev": "Rsbuild dev server", "preview": "Rsbuild preview server"}),
    "wrangler": _Tool({"dev": "Wrangler dev server"}),
    "hugo": _Tool(
        dict.fromkeys(("server", "serve", "s"), "Hugo dev server"),
        dir_options=("-s", "--source"),
    ),
    "zola": _Tool({"serve": "Zola dev server"}, dir_options=("-r", "--root")),
    "jekyll": _Tool(dict.fromkeys(("serve", "server", "s"), "Jekyll dev server")),
    "mkdocs": _Tool({"serve": "MkDocs dev server"}),
    "streamlit": _Tool({"run": "Streamlit app"}),
    "fastapi": _Tool({"dev": "FastAPI dev server", "run": "FastAPI server"}),
    "flask": _Tool({"run": "Flask dev server"}),
    "rails": _Tool(dict.fromkeys(("server", "s"), "Rails dev server")),
    "django-admin": _Tool(dict.fromkeys(("runserver", "runserver_plus"), "Django dev server")),
    "django": _Tool(dict.fromkeys(("runserver", "runserver_plus"), "Django dev server")),
    "manage": _Tool(dict.fromkeys(("runserver", "runserver_plus"), "Django dev server")),
    "jupyter": _Tool(
        {"lab": "Jupyter Lab", "notebook": "Jupyter Notebook", "server": "Jupyter Server"}
        | {"nbclassic": "Jupyter Notebook"},
        dir_options=_JUPYTER_DIRS,
    ),
    "symfony": _Tool(dict.fromkeys(("serve", "server:start"), "Symfony local server")),
}
_TOOL_VALUE_OPTS = frozenset(
    {"--port", "-p", "--host", "-H", "--config", "-c", "--mode", "-m", "--app", "-A", "-b"}
    | {"--bind", "--env-file", "-e", "--base", "--log-level", "--logLevel", "-l", "--settings"}
    | {"--pythonpath", "--hostname", "--source", "-s", "--root", "-r", "--filter"}
)


def _tool(cmd: _Cmd, local_port: int | None) -> Identity | None:
    tool = _TOOLS[cmd.prog]
    args = list(cmd.args)
    words = _positionals(args, _TOOL_VALUE_OPTS)
    sub = words[0] if words else None
    directory: str | None = None
    if sub is not None and sub in tool.labels:
        label = tool.labels[sub]
        if tool.dir_positional and len(words) > 1 and args.index(sub) + 1 < len(args):
            following = args[args.index(sub) + 1]
            directory = following if not following.startswith("-") else None
    else:
        label = tool.default
        if tool.dir_positional and sub is not None and _port(sub) is None:
            directory = sub
    if label is None:
        return None
    for option in tool.dir_options:
        found = _option(args, option, glued=option in ("-s", "-r"))
        directory = found if found else directory
    if cmd.prog in ("manage", "django-admin") and cmd.script and directory is None:
        directory = _parent_dir(cmd.script) if cmd.prog == "manage" else None
    if cmd.prog == "rails" and cmd.script and _basename(_parent_dir(cmd.script)) == "bin":
        directory = directory or _parent_dir(cmd.script, 2)
    return Identity(kind="dev-server", label=label, project_dir=_default_project(cmd, directory))


_APP_SPEC = _Pattern(r"^\[?([A-Za-z_][\w.]*:[A-Za-z_][\w.]*(?:\(.*\))?)\]?$")


def _wsgi(cmd: _Cmd, local_port: int | None) -> Identity:
    """uvicorn, gunicorn, hypercorn, daphne, granian: the app spec names the project."""
    app = next((m.group(1) for a in cmd.args if (m := _APP_SPEC.match(a))), None)
    directory = _option(cmd.args, "--chdir") if cmd.prog == "gunicorn" else None
    label = f"{cmd.prog} {app}" if app else cmd.prog
    return Identity(kind="dev-server", label=label, project_dir=_default_project(cmd, directory))


def _jupyter_app(cmd: _Cmd, local_port: int | None) -> Identity:
    labels = {
        "jupyter-lab": "Jupyter Lab",
        "jupyter-notebook": "Jupyter Notebook",
        "jupyter-nbclassic": "Jupyter Notebook",
        "jupyter-server": "Jupyter Server",
        "ipykernel_launcher": "Jupyter kernel",
    }
    directory = next((d for o in _JUPYTER_DIRS if (d := _option(cmd.args, o))), None)
    return Identity(
        kind="dev-server", label=labels[cmd.prog], project_dir=_default_project(cmd, directory)
    )


def _http_server(cmd: _Cmd, local_port: int | None) -> Identity:
    directory = _option(cmd.args, "-d", "--directory")
    return Identity(
        kind="dev-server", label="Python http.server", project_dir=_default_project(cmd, directory)
    )


def _php(cmd: _Cmd, local_port: int | None) -> Identity | None:
    if _option(cmd.args, "-S", glued=True) is not None:
        docroot = _option(cmd.args, "-t", glued=True)
        return Identity(
            kind="dev-server",
            label="PHP built-in server",
            project_dir=_default_project(cmd, docroot),
        )
    words = _positionals(cmd.args, frozenset({"-d", "-c", "-z"}))
    if len(words) >= 2 and _basename(words[0]) == "artisan" and words[1] == "serve":
        project = _resolve_dir(cmd.cwd, _parent_dir(words[0])) or cmd.cwd
        return Identity(kind="dev-server", label="Laravel dev server", project_dir=project)
    return None


def _puma(cmd: _Cmd, local_port: int | None) -> Identity:
    app = next((a[1:-1] for a in cmd.args if a.startswith("[") and a.endswith("]")), None)
    label = f"Puma server [{app}]" if app else "Puma server"
    return Identity(kind="dev-server", label=label, project_dir=_default_project(cmd))


def _next_server(cmd: _Cmd, local_port: int | None) -> Identity:
    return Identity(
        kind="dev-server", label=f"Next.js server ({cmd.prog})", project_dir=_default_project(cmd)
    )


def _inspector_of(
    args: Sequence[str], current: _Inspector | None, *, runtime: str
) -> _Inspector | None:
    for arg in args:
        if arg == "--":
            break
        if arg.startswith("--inspect"):
            current = _parse_inspector(arg, current, runtime=runtime)
    return current


_BUN_NOT_SERVING = frozenset(
    {"install", "i", "add", "a", "remove", "rm", "update", "link", "unlink", "pm", "build"}
    | {"init", "create", "c", "upgrade", "test", "publish", "outdated", "patch", "audit"}
)
_JS_SOURCE = _Pattern(r"(?s).*\.(m|c)?[jt]sx?$")  # app.js, server.mts, index.tsx …
_DEV_SCRIPT = _Pattern(r"^(dev|develop|serve|server|start|preview|watch)\b", _IGNORECASE)


def _bun(cmd: _Cmd, local_port: int | None) -> Identity | None:
    words = _positionals(cmd.args, _BUN_VALUE_OPTS)
    if words[:1] == ["run"]:
        words = words[1:]
    if not words or words[0] in _BUN_NOT_SERVING:
        return None
    first = words[0]
    directory = _option(cmd.args, "--cwd")
    if _JS_SOURCE.match(first) or "/" in first or "\\" in first:
        return Identity(
            kind="dev-server",
            label=f"Bun app {_basename(first)}",
            project_dir=_default_project(cmd, directory),
        )
    if _DEV_SCRIPT.match(first):
        return Identity(
            kind="dev-server",
            label=f"bun run {first}",
            project_dir=_default_project(cmd, directory),
        )
    return None


def _deno(cmd: _Cmd, local_port: int | None) -> Identity | None:
    words = _positionals(cmd.args, _DENO_VALUE_OPTS)
    if not words:
        return None
    sub = words[0]
    if sub == "task" and len(words) > 1:
        label = f"deno task {words[1]}"
    elif sub in ("run", "serve") and len(words) > 1:
        label = (
            f"Deno app {_basename(words[1])}"
            if sub == "run"
            else f"deno serve {_basename(words[1])}"
        )
    else:
        return None
    return Identity(kind="dev-server", label=label, project_dir=_default_project(cmd))


def _js_runner(cmd: _Cmd, local_port: int | None) -> Identity | None:
    """``npm run dev``, ``yarn dev``, ``pnpm start``: the script named in package.json."""
    words = _positionals(cmd.args, frozenset({"--prefix", "-w", "--workspace", "-C", "--dir"}))
    if words[:1] in (["run"], ["run-script"]):
        words = words[1:]
    if not words or not _DEV_SCRIPT.match(words[0]):
        return None
    directory = _option(cmd.args, "--prefix", "-C", "--dir", "--cwd")
    return Identity(
        kind="dev-server",
        label=f"{cmd.prog} run {words[0]}",
        project_dir=_default_project(cmd, directory),
    )


def _eleventy(cmd: _Cmd, local_port: int | None) -> Identity | None:
    if _option(cmd.args, "--serve", takes_value=False) is None:
        return None
    return Identity(
        kind="dev-server", label="Eleventy dev server", project_dir=_default_project(cmd)
    )


def _esbuild(cmd: _Cmd, local_port: int | None) -> Identity | None:
    if not any(a == "--serve" or a.startswith("--serve=") for a in cmd.args):
        return None
    return Identity(
        kind="dev-server", label="esbuild dev server", project_dir=_default_project(cmd)
    )


def _beam(cmd: _Cmd, local_port: int | None) -> Identity | None:
    text = " ".join(cmd.args[:_MAX_ARGS]).lower()
    if "phx.server" in text:
        return Identity(
            kind="dev-server", label="Phoenix dev server", project_dir=_default_project(cmd)
        )
    for needle, label in (
        ("rabbit", "RabbitMQ broker"),
        ("couchdb", "CouchDB"),
        ("ejabberd", "ejabberd"),
    ):
        if needle in text:
            return Identity(kind="service", label=label)
    return None


_JAVA_MAINS = (
    ("org.elasticsearch.bootstrap.elasticsearch", "Elasticsearch"),
    ("org.opensearch.bootstrap.opensearch", "OpenSearch"),
    ("kafka.kafka", "Kafka broker"),
    ("quorumpeermain", "ZooKeeper"),
    ("jenkins.war", "Jenkins"),
)


def _java(cmd: _Cmd, local_port: int | None) -> Identity | None:
    lowered = [a.lower() for a in cmd.args[:_MAX_ARGS]]
    for needle, label in _JAVA_MAINS:
        if any(needle in a for a in lowered):
            return Identity(kind="service", label=label)
    return None


def _caddy(cmd: _Cmd, local_port: int | None) -> Identity:
    target = _option(cmd.args, "--to", "-t")
    return Identity(kind="service", label="Caddy web server", target=target or None)


_SERVICES: Mapping[str, str] = {
    "redis-server": "Redis server",
    "redis-sentinel": "Redis Sentinel",
    "valkey-server": "Valkey server",
    "keydb-server": "KeyDB server",
    "postgres": "PostgreSQL server",
    "postmaster": "PostgreSQL server",
    "mysqld": "MySQL server",
    "mysqld_safe": "MySQL server",
    "mariadbd": "MariaDB server",
    "mongod": "MongoDB server",
    "mongos": "MongoDB router",
    "nginx": "nginx web server",
    "haproxy": "HAProxy load balancer",
    "apache2": "Apache HTTP server",
    "httpd": "HTTP server (httpd)",
    "lighttpd": "lighttpd web server",
    "traefik": "Traefik proxy",
    "envoy": "Envoy proxy",
    "dockerd": "Docker daemon",
    "containerd": "containerd",
    "memcached": "memcached",
    "epmd": "Erlang port mapper (epmd)",
    "etcd": "etcd",
    "consul": "Consul agent",
    "vault": "Vault server",
    "minio": "MinIO server",
    "influxd": "InfluxDB server",
    "prometheus": "Prometheus server",
    "grafana": "Grafana server",
    "grafana-server": "Grafana server",
    "clickhouse-server": "ClickHouse server",
    "mosquitto": "Mosquitto MQTT broker",
    "dnsmasq": "dnsmasq DNS/DHCP server",
    "systemd-resolved": "systemd-resolved DNS stub",
    "named": "BIND DNS server",
    "unbound": "Unbound DNS resolver",
    "cupsd": "CUPS print server",
    "avahi-daemon": "Avahi mDNS daemon",
    "rpcbind": "rpcbind",
    "smbd": "Samba file server",
    "chronyd": "chrony NTP daemon",
    "ntpd": "NTP daemon",
    "squid": "Squid proxy",
    "tor": "Tor",
    "tailscaled": "Tailscale daemon",
    "ollama": "Ollama server",
    "kubelet": "kubelet",
    "kube-apiserver": "Kubernetes API server",
    "k3s": "k3s",
}


def _service(cmd: _Cmd, local_port: int | None) -> Identity:
    return Identity(kind="service", label=_SERVICES[cmd.prog])


def _wsl(cmd: _Cmd, local_port: int | None) -> Identity:
    return Identity(kind="wsl-relay", label=f"WSL localhost relay ({cmd.prog})")


_Handler = Callable[[_Cmd, int | None], Identity | None]
_HANDLERS: Mapping[str, _Handler] = {
    "docker-proxy": _docker_proxy,
    "conmon": _conmon,
    "rootlessport": _rootlessport,
    "slirp4netns": _slirp4netns,
    "ssh": _ssh,
    "autossh": _ssh,
    "sshd": _sshd,
    "sshd-session": _sshd,
    "sshd-auth": _sshd,
    "kubectl": _kubectl,
    "oc": _kubectl,
    "qemu-kvm": _qemu,
    "socat": _socat,
    "wslrelay": _wsl,
    "wslhost": _wsl,
    **dict.fromkeys(_TOOLS, _tool),
    **dict.fromkeys(("uvicorn", "gunicorn", "hypercorn", "daphne", "granian"), _wsgi),
    **dict.fromkeys(
        ("jupyter-lab", "jupyter-notebook", "jupyter-nbclassic", "jupyter-server"), _jupyter_app
    ),
    "ipykernel_launcher": _jupyter_app,
    "http.server": _http_server,
    "php": _php,
    "puma": _puma,
    "bun": _bun,
    "deno": _deno,
    **dict.fromkeys(_JS_RUNNERS, _js_runner),
    "eleventy": _eleventy,
    "esbuild": _esbuild,
    "beam.smp": _beam,
    "beam": _beam,
    "java": _java,
    "caddy": _caddy,
    **dict.fromkeys(_SERVICES, _service),
}


#: Native programs: a script of that name run by an interpreter is something else.
_NATIVE = frozenset(
    {"docker-proxy", "conmon", "rootlessport", "slirp4netns", "ssh", "autossh", "sshd"}
    | {"sshd-session", "sshd-auth", "kubectl", "oc", "qemu-kvm", "socat", "wslrelay", "wslhost"}
    | {"php", "bun", "deno", "beam.smp", "beam", "java", "caddy", "hugo", "zola", "symfony"}
    | set(_SERVICES)
)


def _handler(prog: str) -> _Handler | None:
    found = _HANDLERS.get(prog)
    if found is not None:
        return found
    if prog.startswith("qemu-system-"):
        return _qemu
    if prog.startswith(("pasta", "passt")):
        return _pasta
    if prog.startswith(("next-server", "next-router-worker", "next-render-worker")):
        return _next_server
    return None


def _inspector_identity(inspector: _Inspector) -> Identity:
    where = _hostport(inspector.host, str(inspector.port))
    return Identity(kind="node-inspector", label=f"{inspector.runtime} inspector on {where}")


# --------------------------------------------------------------------------- entry point


def identify(process: ProcessInfo, *, local_port: int | None = None) -> Identity | None:
    """What ``process`` is, from its name and command line; None when unknown.

    Args:
        process: the owner; only ``name``, ``cmdline`` and ``cwd`` are read.
        local_port: the port of the socket being explained. A process with several
            forwards (``ssh -L a -L b``, several QEMU ``hostfwd``) is described by the one
            listening there; a node process with ``--inspect`` is a ``node-inspector``
            when this is its inspector port.

    Returns:
        An :class:`Identity` with a ``kind`` from the table in the module docstring, or
        None. Never raises.

    Examples:
        ``docker-proxy -proto tcp … -container-ip 172.17.0.2 -container-port 80``
        -> ``Identity(kind="docker-proxy", label="Docker port proxy (tcp)",
        target="172.17.0.2:80")``
    """
    argv = list(process.cmdline[:_MAX_ARGS])
    if not argv or not argv[0]:
        argv = [process.name or ""]
    cmd = _resolve(argv, process.cwd or None)
    inspector = cmd.inspector
    if cmd.prog == "deno":
        inspector = _inspector_of(cmd.args, None, runtime="Deno")
    if inspector is not None and local_port is not None and local_port == inspector.port:
        return _inspector_identity(inspector)
    candidates = [cmd.prog]
    comm = _prog(process.name or "")
    if comm and comm != cmd.prog:
        candidates.append(comm)  # a comm may tell more (cut to 15 chars, or renamed)
    for prog in candidates:
        handler = _handler(prog)
        if handler is not None:
            found = handler(cmd if prog == cmd.prog else cmd.to(prog, argv[1:]), local_port)
            if found is not None:
                return found
    if inspector is not None and local_port is None:
        return _inspector_identity(inspector)
    return None
