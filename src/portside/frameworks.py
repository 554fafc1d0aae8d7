"""Dev servers that ignore ``PORT``, and the flags that tell them the port. Pure: no I/O.

``portside run`` sets ``PORT`` and ``HOST`` for every command; many dev servers read
neither, so :func:`adjust` also adds the framework's own flags when it recognises the
command::

    adjust(["npx", "vite"], port=13260, host="127.0.0.1").argv
    -> ("npx", "vite", "--port", "13260", "--host", "127.0.0.1", "--strictPort")

A command is recognised by a run of *trigger* words anywhere in it (``vite``,
``ng serve``, ``manage.py runserver``, ``flask run`` …), compared by base name without
``.js``/``.cmd``/``.exe``, so ``node_modules/.bin/vite``, ``python -m flask run`` and
``bundle exec rails s`` all match. The flags go right after the trigger. When the command
already sets the port (any of the entry's ``present`` flags), nothing is added.

``npm run dev`` and friends run a ``package.json`` script: pass the script's text as
``script`` and the flags go after the script name (after ``--`` for npm, which does not
pass flags on otherwise).

To support another server, add a :class:`Framework` to :data:`FRAMEWORKS`.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Mapping, Sequence

__all__ = ["FRAMEWORKS", "Adjustment", "Framework", "adjust", "package_script_name"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Framework:
    """One dev server.

    ``triggers``: word runs that start it. ``args``: what to add, with ``{port}`` and
    ``{host}`` filled in. ``present``: options (or ``--opt=`` prefixes) meaning the
    command already chose its address. ``positional_present``: a non-option word after the
    trigger already is the address (``runserver 0:8000``). ``not_after``: a next word that
    means another subcommand (``vite build``).
    """

    name: str
    triggers: tuple[tuple[str, ...], ...]
    args: tuple[str, ...]
    present: tuple[str, ...] = ()
    positional_present: bool = False
    not_after: tuple[str, ...] = ()


FRAMEWORKS: tuple[Framework, ...] = (
    Framework(
        name="vite",
        triggers=(("vite",),),
        args=("--port", "{port}", "--host", "{host}", "--strictPort"),
        present=("--port",),
        not_after=("build", "optimize"),
    ),
    Framework(
        name="astro",
        triggers=(("astro", "dev"), ("astro", "preview")),
        args=("--port", "{port}", "--host", "{host}"),
        present=("--port",),
    ),
    Framework(
        name="angular",
        triggers=(("ng", "serve"), ("ng", "s")),
        args=("--port", "{port}", "--host", "{host}"),
        present=("--port",),
    ),
    Framework(
        name="next",
        triggers=(("next", "dev"), ("next", "start")),
        args=("--port", "{port}", "--hostname", "{host}"),
        present=("-p", "--port"),
    ),
    Framework(
        name="nuxt",
        triggers=(("nuxi", "dev"), ("nuxt", "dev"), ("nuxi", "preview")),
        args=("--port", "{port}", "--host", "{host}"),
        present=("--port", "-p"),
    ),
    Framework(
        name="sveltekit-preview",
        triggers=(("svelte-kit", "preview"),),
        args=("--port", "{port}", "--host", "{host}"),
        present=("--port",),
    ),
    Framework(
        name="webpack-dev-server",
        triggers=(("webpack", "serve"), ("webpack-dev-server",)),
        args=("--port", "{port}", "--host", "{host}"),
        present=("--port",),
    ),
    Framework(
        name="storybook",
        triggers=(("storybook", "dev"), ("start-storybook",)),
        args=("--port", "{port}", "--host", "{host}"),
        present=("-p", "--port"),
    ),
    Framework(
        name="docusaurus",
        triggers=(("docusaurus", "start"), ("docusaurus", "serve")),
        args=("--port", "{port}", "--host", "{host}"),
        present=("--port",),
    ),
    Framework(
        name="flask",
        triggers=(("flask", "run"),),
        args=("--port", "{port}", "--host", "{host}"),
        present=("-p", "--port"),
    ),
    Framework(
        name="uvicorn",
        triggers=(("uvicorn",),),
        args=("--port", "{port}", "--host", "{host}"),
        present=("--port", "--fd", "--uds"),
    ),
    Framework(
        name="gunicorn",
        triggers=(("gunicorn",),),
        args=("--bind", "{host}:{port}"),
        present=("-b", "--bind"),
    ),
    Framework(
        name="hypercorn",
        triggers=(("hypercorn",),),
        args=("--bind", "{host}:{port}"),
        present=("-b", "--bind"),
    ),
    Framework(
        name="django",
        triggers=(("manage.py", "runserver"), ("django-admin", "runserver")),
        args=("{host}:{port}",),
        positional_present=True,
    ),
    Framework(
        name="rails",
        triggers=(("rails", "server"), ("rails", "s")),
        args=("--port", "{port}", "--binding", "{host}"),
        present=("-p", "--port"),
    ),
    Framework(
        name="jekyll",
        triggers=(("jekyll", "serve"), ("jekyll", "s")),
        args=("--port", "{port}", "--host", "{host}"),
        present=("-P", "--port"),
    ),
    Framework(
        name="hugo",
        triggers=(("hugo", "server"), ("hugo", "serve")),
        args=("--port", "{port}", "--bind", "{host}"),
        present=("-p", "--port"),
    ),
    Framework(
        name="mkdocs",
        triggers=(("mkdocs", "serve"),),
        args=("--dev-addr", "{host}:{port}"),
        present=("-a", "--dev-addr"),
    ),
    Framework(
        name="streamlit",
        triggers=(("streamlit", "run"),),
        args=("--server.port", "{port}", "--server.address", "{host}"),
        present=("--server.port",),
    ),
    Framework(
        name="php-artisan",
        triggers=(("artisan", "serve"),),
        args=("--port={port}", "--host={host}"),
        present=("--port",),
    ),
    Framework(
        name="http.server",
        triggers=(("http.server",),),
        args=("--bind", "{host}", "{port}"),
        present=("-b", "--bind"),
        positional_present=True,
    ),
)

#: Package managers whose ``run SCRIPT`` (or bare ``SCRIPT``) runs a package.json script,
#: and whether flags for the script need a ``--`` before them.
_RUNNERS: Mapping[str, bool] = {"npm": True, "pnpm": False, "yarn": False, "bun": False}
_OWN_COMMANDS = frozenset(
    {"install", "i", "add", "remove", "exec", "dlx", "x", "test", "build", "ci", "create"}
)
_SUFFIXES = (".js", ".mjs", ".cjs", ".cmd", ".exe", ".ps1")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Adjustment:
    """The command to run. ``framework`` None: not recognised (or it chose its own
    address: then ``reason`` says so); ``added``: the words added."""

    argv: tuple[str, ...]
    framework: str | None = None
    added: tuple[str, ...] = ()
    reason: str | None = None


def _word(text: str) -> str:
    base = text.replace("\\", "/").rsplit("/", 1)[-1].lower()
    for suffix in _SUFFIXES:
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def _find(words: Sequence[str]) -> tuple[Framework, int] | None:
    """The first framework whose trigger occurs in ``words``, and the index after it."""
    names = [_word(w) for w in words]
    for start in range(len(names)):
        for framework in FRAMEWORKS:
            for trigger in framework.triggers:
                end = start + len(trigger)
                if tuple(names[start:end]) != trigger:
                    continue
                if end < len(names) and names[end] in framework.not_after:
                    continue
                return framework, end
    return None


def _chose_address(framework: Framework, rest: Sequence[str]) -> str | None:
    for index, word in enumerate(rest):
        if word == "--":
            break
        option = word.split("=", 1)[0]
        if option in framework.present:
            value = rest[index + 1 : index + 2] if option == word else ()
            return " ".join((word, *value))
        if framework.positional_present and not word.startswith("-"):
            return word
    return None


def _fill(framework: Framework, port: int, host: str) -> tuple[str, ...]:
    return tuple(arg.format(port=port, host=host) for arg in framework.args)


def package_script_name(argv: Sequence[str]) -> str | None:
    """The package.json script that ``argv`` runs (``npm run dev`` -> ``dev``,
    ``pnpm dev`` -> ``dev``), or None when it is not a package-manager script run."""
    if len(argv) < 2 or _word(argv[0]) not in _RUNNERS:
        return None
    rest = [w for w in argv[1:] if not w.startswith("-")]
    if not rest:
        return None
    if rest[0] in ("run", "run-script"):
        return rest[1] if len(rest) > 1 else None
    if _word(argv[0]) == "npm" and rest[0] != "start":
        return None  # npm runs only `start` (and a few others) without `run`
    return None if rest[0] in _OWN_COMMANDS else rest[0]


def adjust(argv: Sequence[str], *, port: int, host: str, script: str | None = None) -> Adjustment:
    """``argv`` with the port flags of the dev server it starts (see the module doc).

    ``script``: the text of the package.json script ``argv`` runs, when it does.
    """
    command = tuple(argv)
    found = _find(command)
    if found is not None:
        framework, end = found
        chosen = _chose_address(framework, command[end:])
        if chosen is not None:
            return Adjustment(
                argv=command,
                framework=framework.name,
                reason=f"the command sets its own address ({chosen})",
            )
        added = _fill(framework, port, host)
        return Adjustment(
            argv=(*command[:end], *added, *command[end:]), framework=framework.name, added=added
        )
    if script is None or package_script_name(command) is None:
        return Adjustment(argv=command)
    try:
        words = shlex.split(script)
    except ValueError:
        return Adjustment(argv=command)
    inner = _find(words)
    if inner is None:
        return Adjustment(argv=command)
    framework, end = inner
    chosen = _chose_address(framework, words[end:])
    if chosen is not None:
        return Adjustment(
            argv=command,
            framework=framework.name,
            reason=f"the package script sets its own address ({chosen})",
        )
    added = _fill(framework, port, host)
    needs_separator = _RUNNERS[_word(command[0])] and "--" not in command
    extra = ("--", *added) if needs_separator else added
    return Adjustment(argv=(*command, *extra), framework=framework.name, added=added)
