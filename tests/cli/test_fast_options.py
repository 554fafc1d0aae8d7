"""The quick start of ``ls``, ``who`` and the overview: the options they get without
argparse are exactly argparse's, and anything else goes to argparse."""

import pytest

from portside.cli import Handler, _fast_options
from portside.cli._parser import build_parser

PLAIN = [
    [],
    ["--json"],
    ["--no-netns", "--debug", "--no-color"],
    ["ls"],
    ["ls", "--json"],
    ["ls", "--all", "--all"],
    ["ls", "-a", "--no-netns", "--exposed", "--json", "--no-color", "--debug"],
    ["who", "80"],
    ["who", "80", "--json"],
    ["who", "--json", "127.0.0.1:8080"],
    ["who", "--no-netns", "[::1]:53", "--debug"],
    ["who", "http://app.localhost:8080/x"],
    ["who", ""],
    ["pick"],
    ["pick", "--json", "--udp", "--why", "--no-color", "--debug"],
]

NOT_PLAIN = [
    ["--version"],
    ["-h"],
    ["--help"],
    ["ls", "--help"],
    ["ls", "-p", "80"],
    ["ls", "--port=80"],
    ["ls", "--js"],  # an abbreviation: argparse's to expand (or refuse)
    ["ls", "-ap"],
    ["ls", "80"],
    ["ls", "--backend", "procfs"],
    ["who"],
    ["who", "1", "2"],
    ["who", "-5"],
    ["who", "--", "80"],
    ["who", "80", "--proto", "tcp"],
    ["explain", "80"],
    ["pick", "-n", "2"],
    ["pick", "--no-netns"],
    ["pick", "--range", "20000-30000"],
    ["doctor"],
    ["--json", "ls"],
    ["--backend", "procfs", "--json"],
    ["--frobnicate"],
]


@pytest.mark.parametrize("argv", PLAIN, ids=lambda argv: " ".join(argv) or "(none)")
def test_plain_commands_get_what_argparse_gives(argv):
    fast = _fast_options(list(argv))
    assert fast is not None
    assert vars(fast) == vars(build_parser().parse_args(argv))


@pytest.mark.parametrize("argv", NOT_PLAIN, ids=" ".join)
def test_everything_else_is_left_to_argparse(argv):
    assert _fast_options(list(argv)) is None


def test_handlers_are_named_and_compare_by_name():
    assert Handler("_inspect", "run_ls") == Handler("_inspect", "run_ls")
    assert Handler("_inspect", "run_ls") != Handler("_inspect", "run_who")
    assert len({Handler("_inspect", "run_ls"), Handler("_inspect", "run_ls")}) == 1
    assert "run_ls" in repr(Handler("_inspect", "run_ls"))


SLOW_TO_IMPORT = {"argparse", "typing", "inspect", "json", "ipaddress", "shutil", "copy"}


@pytest.mark.parametrize(
    "argv",
    [
        ["ls", "--json", "--no-netns"],
        ["who", "1", "--json", "--no-netns"],
        ["--json", "--no-netns"],
    ],
    ids=" ".join,
)
def test_the_quick_commands_import_none_of_the_slow_modules(argv):
    import json
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from portside.cli import main\n"
        f"main({argv!r})\n"
        "sys.stdout.flush()\n"
        "loaded = sorted(sys.modules)\n"
        "import json\n"  # the probe's own, after main has run
        "sys.stderr.write(json.dumps(loaded))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False
    )
    loaded = set(json.loads(done.stderr.strip().splitlines()[-1]))
    assert not SLOW_TO_IMPORT & loaded


def test_the_garbage_collector_is_paused_only_while_a_listing_runs(capsys, monkeypatch):
    import gc

    from portside.cli import main

    seen: list[bool] = []

    def run_ls(options):
        seen.append(gc.isenabled())
        return 0

    monkeypatch.setattr("portside.cli._inspect.run_ls", run_ls)
    assert gc.isenabled()
    assert main(["ls", "--json", "--no-netns"]) == 0
    assert seen == [False]
    assert gc.isenabled()

    def failing(options):
        raise KeyboardInterrupt

    monkeypatch.setattr("portside.cli._inspect.run_ls", failing)
    assert main(["ls"]) == 130
    assert gc.isenabled()


@pytest.mark.parametrize(
    "target",
    [
        "80",
        ":62893",
        "127.0.0.1:8080",
        "[::1]:53",
        "localhost:3000",
        "app.localhost:8080",
        "http://127.0.0.1:62893/path",
        "https://example.localhost",
        "::1",
        "[::ffff:127.0.0.1]:8000",
        "\uff10\uff18\uff10",  # full-width digits: not guessed
        "70000",
        "",
    ],
)
def test_the_early_guess_of_a_who_port_never_contradicts_the_parser(target: str):
    """The port whose sockets `who` dumps as it starts: none, or the parser's."""
    from portside.addresses import parse_target
    from portside.cli import _plain_port
    from portside.errors import UsageError

    guess = _plain_port(target)
    try:
        parsed = parse_target(target).port
    except UsageError:
        parsed = None
    assert guess is None or guess == parsed or parsed is None
    if target in ("80", ":62893", "127.0.0.1:8080", "[::1]:53"):
        assert guess == parsed
    if not target.isascii():
        assert guess is None
