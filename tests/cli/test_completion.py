"""``portside completion``: the scripts, run by real bash and zsh."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys

import pytest

from portside.cli._completion import commands_of, completion_script
from portside.cli._parser import build_parser

PORTSIDE = [sys.executable, "-m", "portside"]


def _script(shell: str) -> str:
    done = subprocess.run(
        [*PORTSIDE, "completion", shell], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout


@pytest.fixture(scope="module")
def bash_script() -> str:
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    return _script("bash")


def complete(script: str, *words: str) -> list[str]:
    """What bash offers for the command line ``words`` (the last one being typed)."""
    program = (
        f"{script}\n"
        f"COMP_WORDS=({' '.join(shlex.quote(word) for word in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        "_portside\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return [line for line in done.stdout.splitlines() if line]


def test_every_command_of_the_parser_is_offered(bash_script):
    names = {command.name for command in commands_of(build_parser())} - {""}
    assert {"ls", "who", "doctor", "forward", "completion"} <= names
    assert set(complete(bash_script, "portside", "")) >= names


def test_a_command_and_its_options_complete(bash_script):
    assert complete(bash_script, "portside", "l") == ["ls"]
    assert complete(bash_script, "portside", "who", "--j") == ["--json"]
    assert complete(bash_script, "portside", "ls", "--ex") == ["--exposed"]
    assert complete(bash_script, "portside", "ca", "un") == ["untrust"]


def test_option_values_come_from_the_parser(bash_script):
    assert complete(bash_script, "portside", "ls", "--proto", "") == ["tcp", "udp"]
    forward = next(c for c in commands_of(build_parser()) if c.name == "forward")
    assert forward.values  # forward has options with fixed values (--loop, --data-path)
    for option, choices in forward.values.items():
        assert complete(bash_script, "portside", "forward", option, "") == list(choices)


def test_a_value_is_not_taken_for_a_command(bash_script):
    # The hidden --backend takes a value: the word after it is no command.
    assert complete(bash_script, "portside", "--backend", "netlink", "l") == ["ls"]
    # After an option that takes a free value (a port), nothing is offered: the shell's own.
    assert complete(bash_script, "portside", "ls", "--port", "") == []


def test_zsh_loads_the_script_and_registers_it():
    if shutil.which("zsh") is None:
        pytest.skip("zsh is not installed (the Makefile installs it as root)")
    script = _script("zsh")
    done = subprocess.run(
        [
            "zsh",
            "-f",
            "-c",
            f"{script}\n(( $+functions[_portside] )) && print -r -- $_comps[portside]",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "_portside" in done.stdout


def test_an_unknown_shell_is_a_usage_error():
    done = subprocess.run(
        [*PORTSIDE, "completion", "tcsh"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert "bash" in done.stderr
    with pytest.raises(ValueError, match="bash, zsh"):
        completion_script("tcsh", build_parser())
