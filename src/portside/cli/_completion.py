"""``portside completion bash|zsh``: a shell completion script made from the parser itself.

Commands, their options and the values of options that take a fixed set of them all come
from :func:`portside.cli._parser.build_parser`, so the script cannot fall behind the CLI.
Hidden options (``help=SUPPRESS``) are left out. zsh runs the bash script through
``bashcompinit``. Install::

    portside completion bash > ~/.local/share/bash-completion/completions/portside
    portside completion zsh > "${fpath[1]}/_portside"   # or: source <(portside completion zsh)
"""

from __future__ import annotations

import argparse
import sys
from typing import NamedTuple

SHELLS = ("bash", "zsh")

DESCRIPTION = (
    "Print a shell completion script for portside: commands, options and option values,"
    " taken from the parser itself."
)


class Command(NamedTuple):
    """What completes after one command (or, named "", before any)."""

    name: str
    #: its options, and the fixed values of its positional argument if it has them
    options: tuple[str, ...]
    #: option -> its fixed values (``--loop`` -> uvloop, asyncio)
    values: dict[str, tuple[str, ...]]
    #: options whose next word is their value (that word is not a command)
    valued: tuple[str, ...]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``portside completion`` (called by ``cli._parser``)."""
    parser.add_argument("shell", choices=SHELLS, help="the shell to complete in")


def run_completion(options: argparse.Namespace) -> int:
    from portside.cli._parser import build_parser
    from portside.errors import ExitCode

    sys.stdout.write(completion_script(options.shell, build_parser()))
    return ExitCode.OK


def commands_of(parser: argparse.ArgumentParser) -> list[Command]:
    """The top level (named "") and every command, with what completes after each."""
    found = [_command("", parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append(_command(name, sub))
    return found


def _command(name: str, parser: argparse.ArgumentParser) -> Command:
    options: list[str] = []
    values: dict[str, tuple[str, ...]] = {}
    valued: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue  # the commands: listed by commands_of
        if not action.option_strings:
            if action.choices is not None and action.help != argparse.SUPPRESS:
                options.extend(str(choice) for choice in action.choices)  # `ca trust`
            continue
        if action.help == argparse.SUPPRESS:
            if action.nargs != 0:
                valued.extend(action.option_strings)  # hidden, but its value is no command
            continue
        options.extend(action.option_strings)
        if action.nargs != 0:
            valued.extend(action.option_strings)
            if action.choices is not None:
                for option in action.option_strings:
                    values[option] = tuple(str(choice) for choice in action.choices)
    return Command(name, tuple(options), values, tuple(valued))


def completion_script(shell: str, parser: argparse.ArgumentParser) -> str:
    """The script for ``shell`` (one of :data:`SHELLS`)."""
    if shell not in SHELLS:
        raise ValueError(f"no completion for {shell!r}; choose one of {', '.join(SHELLS)}")
    bash = _bash(commands_of(parser))
    if shell == "zsh":
        return (
            "#compdef portside\n"
            "# portside zsh completion (`portside completion zsh`): the bash one, through\n"
            "# bashcompinit.\n"
            "(( $+functions[compdef] )) || { autoload -U +X compinit && compinit -u; }\n"
            "autoload -U +X bashcompinit && bashcompinit\n" + bash
        )
    return bash


def _words(items: tuple[str, ...] | list[str]) -> str:
    return " ".join(items)


def _bash(commands: list[Command]) -> str:
    top, subcommands = commands[0], commands[1:]
    names = [command.name for command in subcommands]
    lines = [
        "# portside bash completion (`portside completion bash`), made from its parser.",
        "_portside() {",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"',
        '    local cmd="" i skip=""',
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        if [[ -n $skip ]]; then skip=""; continue; fi',
        '        case "${COMP_WORDS[i]}" in',
    ]
    if top.valued:
        lines.append(f"            {'|'.join(top.valued)}) skip=1 ;;")
    lines += [
        "            -*) ;;",
        '            *) cmd="${COMP_WORDS[i]}"; break ;;',
        "        esac",
        "    done",
        '    case "$cmd" in',
    ]
    for command in [top, *subcommands]:
        label = '""' if not command.name else command.name
        words = list(command.options) + (names if not command.name else [])
        lines.append(f"        {label})")
        if command.values:
            lines.append('            case "$prev" in')
            for option, choices in command.values.items():
                lines.append(
                    f'                {option}) COMPREPLY=($(compgen -W "{_words(choices)}"'
                    ' -- "$cur")); return ;;'
                )
            lines.append("            esac")
        if command.valued:
            # A value is the user's to type (a port, a path): the shell's default.
            lines.append(f'            case "$prev" in {"|".join(command.valued)}) return ;; esac')
        lines.append(f'            COMPREPLY=($(compgen -W "{_words(words)}" -- "$cur")) ;;')
    lines += [
        "    esac",
        "}",
        "complete -o default -F _portside portside",
        "",
    ]
    return "\n".join(lines)
