"""Layering rules: the pure core does no I/O; nothing in the library imports the CLI;
the fast paths (``--version``, ``who PORT --json``) import no heavy module."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "portside"
PURE = [
    "models.py",
    "errors.py",
    "addresses.py",
    "ports.py",
    "kernelports.py",
    "_btf.py",
    "_diagrequests.py",
    "_bpfprograms.py",
    "procfs.py",
    "sockdiag.py",
    "identify.py",
    "sniff.py",
    "portrange.py",
    "services.py",
    "firewall.py",
    "diagnosis/rules.py",
    "diagnosis/facts.py",
    "net/routes.py",
    "frameworks.py",
    "firewall_verdict.py",
    "audit_risk.py",
]
IO_MODULES = {
    "asyncio",
    "selectors",
    "ssl",
    "socket",
    "subprocess",
    "sqlite3",
    "psutil",
    "rich",
    "os",
    "pathlib",
    "shutil",
}
HEAVY = ("rich", "psutil", "asyncio")


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("module", PURE)
def test_the_pure_core_imports_no_io(module):
    path = PKG / module
    if not path.exists():
        pytest.skip(f"{module} not written yet")
    assert imported_roots(path).isdisjoint(IO_MODULES)


def test_nothing_in_the_library_imports_the_cli():
    offenders = [
        str(path.relative_to(PKG))
        for path in PKG.rglob("*.py")
        if "cli" not in path.relative_to(PKG).parts
        and path.name != "__main__.py"
        and any(
            m == "portside.cli" or m.startswith("portside.cli.") for m in imported_modules(path)
        )
    ]
    assert offenders == []


def loaded_after(argv: list[str]) -> tuple[int, set[str], str]:
    probe = (
        "import sys\n"  # not json: it would load re, which the commands avoid
        "from portside.cli import main\n"
        f"code = main({argv!r})\n"
        "sys.stdout.flush()\n"
        "sys.stderr.write('\\n' + ' '.join([str(code), *sorted(sys.modules)]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "NO_COLOR": "1"},
    )
    code, *modules = done.stderr.strip().splitlines()[-1].split()
    return int(code), set(modules), done.stdout


def test_version_imports_nothing_heavy():
    code, modules, out = loaded_after(["--version"])
    assert code == 0
    assert out.startswith("portside ")
    assert not {m for m in modules if m.split(".")[0] in HEAVY}
    assert "argparse" not in modules


@pytest.mark.skipif(sys.platform != "linux", reason="the Linux fast path")
def test_who_json_imports_nothing_heavy():
    code, modules, out = loaded_after(["who", "1", "--json", "--no-netns"])
    assert code in (0, 1)
    assert json.loads(out)["kind"] == "who"
    assert not {m for m in modules if m.split(".")[0] in HEAVY}
    # Nothing holds port 1 here, so no owner needs a pattern: re (~8 ms) stays out.
    assert "re" not in modules


def test_the_cli_names_the_backend_variable_as_the_sockets_package_does():
    """The CLI spells PORTSIDE_BACKEND out (importing it would import the data model
    before the prescan starts): the two must stay one name."""
    from portside import cli
    from portside.sockets import BACKEND_ENV

    assert cli._BACKEND_ENV == BACKEND_ENV
