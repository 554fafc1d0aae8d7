"""The framework table: which commands get which port flags. Pure, no processes."""

from __future__ import annotations

import pytest

from portside.frameworks import FRAMEWORKS, adjust, package_script_name

P = 13260
H = "127.0.0.1"


@pytest.mark.parametrize(
    ("argv", "framework", "expected"),
    [
        (["vite"], "vite", ["vite", "--port", "13260", "--host", H, "--strictPort"]),
        (
            ["npx", "vite", "--open"],
            "vite",
            ["npx", "vite", "--port", "13260", "--host", H, "--strictPort", "--open"],
        ),
        (
            ["node_modules/.bin/vite.js", "dev"],
            "vite",
            ["node_modules/.bin/vite.js", "--port", "13260", "--host", H, "--strictPort", "dev"],
        ),
        (["astro", "dev"], "astro", ["astro", "dev", "--port", "13260", "--host", H]),
        (["ng", "serve"], "angular", ["ng", "serve", "--port", "13260", "--host", H]),
        (
            ["npx", "next", "dev"],
            "next",
            ["npx", "next", "dev", "--port", "13260", "--hostname", H],
        ),
        (
            ["python", "-m", "flask", "run", "--debug"],
            "flask",
            ["python", "-m", "flask", "run", "--port", "13260", "--host", H, "--debug"],
        ),
        (
            ["uvicorn", "main:app", "--reload"],
            "uvicorn",
            ["uvicorn", "--port", "13260", "--host", H, "main:app", "--reload"],
        ),
        (
            ["python", "manage.py", "runserver"],
            "django",
            ["python", "manage.py", "runserver", "127.0.0.1:13260"],
        ),
        (
            ["bundle", "exec", "rails", "s"],
            "rails",
            ["bundle", "exec", "rails", "s", "--port", "13260", "--binding", H],
        ),
        (["gunicorn", "app:app"], "gunicorn", ["gunicorn", "--bind", "127.0.0.1:13260", "app:app"]),
        (
            ["python3", "-m", "http.server"],
            "http.server",
            ["python3", "-m", "http.server", "--bind", H, "13260"],
        ),
        (
            ["streamlit", "run", "app.py"],
            "streamlit",
            ["streamlit", "run", "--server.port", "13260", "--server.address", H, "app.py"],
        ),
    ],
)
def test_a_known_server_gets_its_port_flags_after_its_trigger(argv, framework, expected):
    result = adjust(argv, port=P, host=H)
    assert result.framework == framework
    assert list(result.argv) == expected
    assert result.added
    assert all(word in expected for word in result.added)


@pytest.mark.parametrize(
    "argv",
    [
        ["vite", "--port", "4000"],
        ["vite", "--port=4000"],
        ["next", "dev", "-p", "4000"],
        ["python", "manage.py", "runserver", "0:8000"],
        ["flask", "run", "-p", "5001"],
        ["gunicorn", "-b", "0.0.0.0:9000", "app:app"],
        ["python", "-m", "http.server", "9000"],
    ],
)
def test_a_command_that_sets_its_own_address_is_left_alone_with_a_reason(argv):
    result = adjust(argv, port=P, host=H)
    assert result.argv == tuple(argv)
    assert result.added == ()
    assert result.framework is not None
    assert result.reason is not None
    assert "sets its own address" in result.reason


@pytest.mark.parametrize(
    "argv",
    [
        ["node", "server.js"],
        ["vite", "build"],
        ["astro", "build"],
        ["python", "app.py"],
        ["next", "build"],
        ["echo", "--port"],
    ],
)
def test_other_commands_are_unchanged(argv):
    result = adjust(argv, port=P, host=H)
    assert result.argv == tuple(argv)
    assert result.framework is None
    assert result.added == ()


def test_flags_after_a_double_dash_are_the_apps_not_the_servers():
    result = adjust(["uvicorn", "app:app", "--", "--port", "1"], port=P, host=H)
    assert result.added  # "--port" after "--" does not count as the server's


@pytest.mark.parametrize(
    ("argv", "script"),
    [
        (["npm", "run", "dev"], "dev"),
        (["npm", "start"], "start"),
        (["npm", "install"], None),
        (["npm", "dev"], None),
        (["pnpm", "dev"], "dev"),
        (["pnpm", "run", "dev"], "dev"),
        (["yarn", "dev"], "dev"),
        (["yarn", "add", "vite"], None),
        (["bun", "run", "dev"], "dev"),
        (["vite"], None),
        (["npm"], None),
    ],
)
def test_package_script_names(argv, script):
    assert package_script_name(argv) == script


def test_a_package_script_gets_the_flags_after_a_separator_for_npm_only():
    npm = adjust(["npm", "run", "dev"], port=P, host=H, script="vite --open")
    assert npm.framework == "vite"
    assert npm.argv == ("npm", "run", "dev", "--", "--port", "13260", "--host", H, "--strictPort")
    pnpm = adjust(["pnpm", "dev"], port=P, host=H, script="tsc && vite")
    assert pnpm.argv == ("pnpm", "dev", "--port", "13260", "--host", H, "--strictPort")
    given = adjust(["npm", "run", "dev"], port=P, host=H, script="vite --port 3001")
    assert given.argv == ("npm", "run", "dev")
    assert given.reason is not None
    assert "3001" in given.reason
    unknown = adjust(["npm", "run", "dev"], port=P, host=H, script="node server.js")
    assert unknown.framework is None
    assert unknown.argv == ("npm", "run", "dev")
    broken = adjust(["npm", "run", "dev"], port=P, host=H, script="vite 'unclosed")
    assert broken.argv == ("npm", "run", "dev")


def test_every_entry_fills_the_port_and_has_a_trigger():
    for framework in FRAMEWORKS:
        assert framework.triggers, framework.name
        filled = " ".join(framework.args).format(port=P, host=H)
        assert "13260" in filled, framework.name
        assert "{" not in filled, framework.name
    names = [f.name for f in FRAMEWORKS]
    assert len(names) == len(set(names))
